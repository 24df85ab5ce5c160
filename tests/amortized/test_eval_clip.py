"""scripts/eval_clip.py on tiny random CLIP weights: images built to match their prompts give R@1 = 1.0; the same
images under permuted prompts give R@1 = 0; JSON and markdown are written and read back."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from .conftest import REPO

SCRIPT = os.path.join(REPO, "custom", "amortized", "scripts", "eval_clip.py")
PROMPTS = ["a red apple", "a blue mug, on a table.", "a wooden chair"]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    from threestudio.utils.weights import save_toy_clip_tokenizer

    folder = str(tmp_path_factory.mktemp("tiny-clip"))
    vocab = save_toy_clip_tokenizer(folder)
    torch.manual_seed(0)
    cfg = CLIPConfig(text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      vocab_size=vocab, max_position_embeddings=77, bos_token_id=vocab - 2,
                                      eos_token_id=vocab - 1, pad_token_id=vocab - 1),
                     vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, image_size=32, patch_size=8), projection_dim=16)
    CLIPModel(cfg).save_pretrained(folder)
    return folder, CLIPModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def _matching_images(model, tokenizer):
    """One 32^2 image per prompt, optimised so that CLIP ranks its own prompt first (a constructed case)."""
    from custom.amortized.scripts.eval_clip import CLIP_MEAN, CLIP_STD, _features

    tok = tokenizer(PROMPTS, padding="max_length", truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        t = torch.nn.functional.normalize(_features(model.get_text_features(**tok)), dim=-1)
    logits_param = torch.zeros(len(PROMPTS), 3, 32, 32, requires_grad=True)
    opt = torch.optim.Adam([logits_param], lr=0.1)
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    for _ in range(150):
        x = torch.sigmoid(logits_param)
        v = torch.nn.functional.normalize(_features(model.get_image_features(pixel_values=(x - mean) / std)), dim=-1)
        loss = torch.nn.functional.cross_entropy(100 * v @ t.t(), torch.arange(len(PROMPTS)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return torch.sigmoid(logits_param).detach()


def _write_run(root, images, prompts, n_views=4):
    from PIL import Image

    from custom.amortized.library import prompt_folder_name

    rng = np.random.default_rng(0)
    for img, prompt in zip(images, prompts):
        folder = root / prompt_folder_name(prompt)
        folder.mkdir(parents=True)
        (folder / "prompt.txt").write_text(prompt)
        rgb = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        for j in range(n_views):
            other = rng.integers(0, 255, (32, 64, 3), dtype=np.uint8)  # normal | opacity panels: ignored
            Image.fromarray(np.concatenate([rgb, other], axis=1)).save(folder / f"{j}.png")


def test_constructed_renders_give_r1_one(amz, tiny_clip, tmp_path):
    folder, model, tokenizer = tiny_clip
    images = _matching_images(model, tokenizer)
    run = tmp_path / "it100-test"
    _write_run(run, images, PROMPTS)
    r = subprocess.run([sys.executable, SCRIPT, str(run), "--clip", folder, "--device", "cpu", "--n-views", "2"],
                       cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": REPO})
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.load(open(run / "clip_metrics.json"))
    assert result["clip_r1"] == 1.0 and result["n_prompts"] == 3 and result["resolution"] == 32
    assert sorted(p["prompt"] for p in result["per_prompt"]) == sorted(PROMPTS)  # exact text, commas included
    assert all(p["n_views"] == 2 for p in result["per_prompt"])
    md = open(run / "clip_metrics.md").read()
    assert f"**{result['clip_similarity']:.4f}** | **1.0000**" in md and "a blue mug, on a table." in md

    # the same renders under the wrong prompts (a cyclic shift): no view retrieves its folder's prompt
    from custom.amortized.scripts.eval_clip import evaluate

    wrong = tmp_path / "wrong"
    _write_run(wrong, images, PROMPTS[1:] + PROMPTS[:1])
    bad = evaluate(str(wrong), folder)
    assert bad["clip_r1"] == 0.0 and bad["clip_similarity"] < result["clip_similarity"]


def test_views_are_resized_like_pil_bilinear(amz, tmp_path):
    """A 512^2 render panel of fine stripes resized to 224: PIL's bilinear filter (the authors' resize) averages them
    to grey; a resize without antialiasing samples the stripes and does not."""
    from PIL import Image

    from custom.amortized.scripts.eval_clip import load_views

    rng = np.random.default_rng(0)
    panel = np.zeros((512, 512, 3), dtype=np.uint8)
    panel[:, ::2] = 255  # one-pixel stripes
    panel[200:300, 100:400] = rng.integers(0, 256, (100, 300, 3), dtype=np.uint8)
    grid = np.concatenate([panel, np.zeros_like(panel)], axis=1)  # rgb | another panel, as the test renders
    path = str(tmp_path / "0.png")
    Image.fromarray(grid).save(path)
    ours = load_views([path], 224, [0.0] * 3, [1.0] * 3)[0].permute(1, 2, 0).numpy()
    pil = np.asarray(Image.fromarray(panel).resize((224, 224), Image.BILINEAR), dtype=np.float32) / 255.0
    assert ours.shape == pil.shape
    assert np.abs(ours - pil).max() < 2.5 / 255  # PIL rounds to uint8
    naive = torch.nn.functional.interpolate(torch.from_numpy(panel).permute(2, 0, 1)[None].float() / 255, size=224,
                                            mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
    assert np.abs(naive - pil).max() > 0.2  # the check tells the two resizes apart
