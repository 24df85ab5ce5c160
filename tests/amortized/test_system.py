"""The tiny recipe trains on CPU through launch.py (Adan, gradient accumulation, schedules) and writes per-prompt
validation and test turntables; the prompt-interpolation test mode renders from the checkpoint."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import torch

from .conftest import EXAMPLE, REPO


def _launch(args, env):
    r = subprocess.run([sys.executable, os.path.join(REPO, "launch.py"), *args], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def _frames(path):
    if path.endswith(".mp4"):
        import imageio.v2 as imageio

        return len(imageio.mimread(path, format="FFMPEG"))
    from PIL import Image

    return Image.open(path).n_frames


def test_tiny_recipe_trains_on_cpu_and_writes_per_prompt_outputs(amz, tiny_sd, tmp_path):
    from PIL import Image

    env = {**os.environ, "THREESTUDIO_CACHE": str(tmp_path / "cache"), "CUDA_VISIBLE_DEVICES": ""}
    out = tmp_path / "out"
    _launch(["--config", "custom/amortized/configs/tiny-cpu.yaml", "--train",
             f"system.guidance.pretrained_model_name_or_path={tiny_sd}", f"exp_root_dir={out}"], env)
    (trial,) = glob.glob(str(out / "amortized-tiny-cpu" / "amortized_example@*"))
    ckpt = torch.load(os.path.join(trial, "ckpts", "last.ckpt"), map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 8
    # 8 optimizer steps of 2 accumulated batches; the losses were logged and are finite
    rows = open(os.path.join(trial, "csv_logs", "metrics.csv")).read().splitlines()
    header = rows[0].split(",")
    col = header.index("train/loss_asd")
    losses = [float(r.split(",")[col]) for r in rows[1:] if r.split(",")[col]]
    assert len(losses) >= 8 and np.isfinite(losses).all()
    library = json.load(open(EXAMPLE))
    save = os.path.join(trial, "save")
    for split, tag, n_views in (("val", "it4-val", 4), ("test", "it8-test", 6)):
        folders = sorted(glob.glob(os.path.join(save, tag, "*", "prompt.txt")))
        assert sorted(open(f).read() for f in folders) == sorted(library[split])  # every prompt of the split
        for f in folders:
            folder = os.path.dirname(f)
            pngs = sorted(glob.glob(os.path.join(folder, "*.png")))
            assert len(pngs) == n_views
            img = np.asarray(Image.open(pngs[0]))
            assert img.shape == (32, 96, 3)  # rgb | normal | opacity at 32^2
            video = [p for p in glob.glob(folder + ".*") if p.endswith((".mp4", ".gif"))]
            assert len(video) == 1 and _frames(video[0]) == n_views
    # the prompts are told apart: two test prompts' renders differ
    a, b = (np.asarray(Image.open(os.path.join(save, "it8-test", n, "0.png")), dtype=np.float32)
            for n in ("a_red_apple", "a_wooden_chair"))
    assert np.abs(a - b).max() > 0

    # test-time interpolation between two prompts (outside the library), from the checkpoint
    _launch(["--config", os.path.join(trial, "configs", "raw.yaml"), "--test", "--resume",
             os.path.join(trial, "ckpts", "last.ckpt"), "data.test_mode=interpolate",
             "data.interp_source=a red apple", "data.interp_target=a tall blue vase", "data.n_interp=3",
             "data.n_test_views=2"], env)
    interp = sorted(glob.glob(os.path.join(trial, "save", "it8-interp", "interp_*", "prompt.txt")))
    assert [open(p).read() for p in interp] == [
        f"a red apple -> a tall blue vase (alpha {a:.3f})" for a in (0.0, 0.5, 1.0)]
    # alpha 0 renders the source prompt as the test pass did (same fixed z), alpha 1 differs from it
    first = np.asarray(Image.open(os.path.join(trial, "save", "it8-interp", "interp_000", "0.png")), dtype=np.float32)
    last = np.asarray(Image.open(os.path.join(trial, "save", "it8-interp", "interp_002", "0.png")), dtype=np.float32)
    assert np.abs(first - a).max() <= 2 and np.abs(last - first).max() > 0


def test_mvdream_triplane_recipe_trains_on_cpu(amz, tmp_path):
    """The DL17k recipe's path (triplane-transformer, 4 views per prompt, mvdream-asd-guidance with the cameras,
    Adan, accumulation 2) on a tiny random MVDream checkpoint, with MVDream's own text encoder (no streaming encode:
    the store is filled chunk-wise)."""
    from threestudio.models.diffusion.mvdream import loading
    from threestudio.utils.weights import save_toy_clip_tokenizer

    ckpt = str(tmp_path / "tiny-4view.pt")
    loading.save_random_mvdream_checkpoint(ckpt, "tiny", seed=0)
    save_toy_clip_tokenizer(str(tmp_path / "tok" / "tokenizer"))
    env = {**os.environ, "THREESTUDIO_CACHE": str(tmp_path / "cache"), "CUDA_VISIBLE_DEVICES": "",
           "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "out"
    _launch(["--config", "custom/amortized/configs/asd-mv-triplane-dl17k.yaml", "--train", f"exp_root_dir={out}",
             "system.prompt_processor.prompt_library=amortized_example",
             "system.prompt_processor.encoder_type=mvdream-prompt-processor",
             f"system.prompt_processor.pretrained_model_name_or_path={ckpt}",
             f"system.prompt_processor.encoder_config.tokenizer_name_or_path={tmp_path / 'tok'}",
             f"system.guidance.pretrained_model_name_or_path={ckpt}", "system.guidance.image_size=32",
             "system.geometry.text_dim=64", "system.geometry.width=32", "system.geometry.n_blocks=1",
             "system.geometry.n_heads=4", "system.geometry.plane_tokens=4", "system.renderer.n_proposal=8",
             "system.renderer.n_importance=8", "data.height=16", "data.width=16", "data.eval_height=16",
             "data.eval_width=16", "data.n_val_views=2", "data.n_test_views=2", "trainer.max_steps=2",
             "trainer.val_check_interval=4", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false"], env)
    (trial,) = glob.glob(str(out / "asd-mv-triplane-dl17k" / "amortized_example@*"))
    ckpt_state = torch.load(os.path.join(trial, "ckpts", "last.ckpt"), map_location="cpu", weights_only=False)
    assert ckpt_state["global_step"] == 2
    states = list(ckpt_state["optimizer_states"][0]["state"].values())
    assert states and all({"m", "v", "n", "g_prev"} <= set(st) for st in states)  # Adan's moments
    rows = open(os.path.join(trial, "csv_logs", "metrics.csv")).read().splitlines()
    col = rows[0].split(",").index("train/loss_asd")
    assert np.isfinite([float(r.split(",")[col]) for r in rows[1:] if r.split(",")[col]]).all()
    tests = sorted(glob.glob(os.path.join(trial, "save", "it2-test", "*", "prompt.txt")))
    assert sorted(open(p).read() for p in tests) == sorted(json.load(open(EXAMPLE))["test"])
