"""stable-diffusion-prompt-processor: embeddings, view-dependent selection, Perp-Neg, the fp16 disk cache."""

import gc
import math
import os

import pytest
import torch

import threestudio
from tests.guidance.conftest import make_prompt_utils


def encode_by_hand(folder, prompts):
    """The CLIP text encoder's last_hidden_state, loaded straight from the folder (fp16-rounded, as cached)."""
    from transformers import AutoTokenizer, CLIPTextModel

    tok = AutoTokenizer.from_pretrained(folder, subfolder="tokenizer")
    enc = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
    ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    with torch.no_grad():
        return enc(ids).last_hidden_state.half().float()


def test_view_dependent_embeddings_picked_by_elevation_and_azimuth(tiny_sd):
    _, pu = make_prompt_utils(tiny_sd, "a red car", front_threshold=30.0, back_threshold=30.0,
                              overhead_threshold=60.0, negative_prompt="blurry")
    names = ["a red car, side view", "a red car, front view", "a red car, back view", "a red car, overhead view"]
    hand = encode_by_hand(tiny_sd, names + ["blurry", "a red car"])
    # (elevation, azimuth) -> expected direction, by the thresholds: front |azi| < 30, back |azi| > 150,
    # overhead elevation > 60 (takes precedence), side otherwise; azimuth wraps around
    cases = [(0.0, 0.0, 1), (10.0, 29.0, 1), (10.0, -29.0, 1), (0.0, 31.0, 0), (0.0, 90.0, 0), (0.0, -149.0, 0),
             (0.0, 151.0, 2), (0.0, -170.0, 2), (0.0, 190.0, 2), (0.0, 335.0, 1), (0.0, 330.0, 0), (61.0, 0.0, 3), (61.0, 180.0, 3),
             (59.0, 180.0, 2)]
    elev = torch.tensor([c[0] for c in cases])
    azim = torch.tensor([c[1] for c in cases])
    emb = pu.get_text_embeddings(elev, azim, torch.ones(len(cases)), view_dependent_prompting=True)
    assert emb.shape == (2 * len(cases), 77, 32)
    for i, (_, _, d) in enumerate(cases):
        assert torch.allclose(emb[i], hand[d], atol=1e-6), cases[i]
        assert torch.allclose(emb[len(cases) + i], hand[4], atol=1e-6)  # negative prompt, same for all views
    plain = pu.get_text_embeddings(elev[:2], azim[:2], None, view_dependent_prompting=False)
    assert torch.allclose(plain[0], hand[5], atol=1e-6) and torch.allclose(plain[1], hand[5], atol=1e-6)
    assert torch.allclose(plain[2], hand[4], atol=1e-6)
    assert pu.global_text_embeddings.shape == (1, 32)


def test_perp_neg_embeddings_and_weights_by_hand(tiny_sd):
    _, pu = make_prompt_utils(tiny_sd, "a cat", use_perp_neg=True)
    side, front, back, over = pu.text_embeddings_vd
    unc = pu.uncond_text_embeddings_vd[0]

    def f(abc, r):
        a, b, c = abc
        return a * math.exp(-b * r) + c

    elev = torch.tensor([0.0, 0.0, 0.0, 0.0, 70.0])
    azim = torch.tensor([0.0, 45.0, 90.0, -135.0, 10.0])
    emb, w = pu.get_text_embeddings_perp_neg(elev, azim, None)
    b = 5
    assert emb.shape == (4 * b, 77, 32) and w.shape == (b, 2)
    # azimuth 0: full front (r = 1); negatives front, side with weights -f_fs(1), -f_sf(0)
    assert torch.allclose(emb[0], front, atol=1e-6)
    assert torch.allclose(emb[2 * b + 0], front) and torch.allclose(emb[2 * b + 1], side)
    assert w[0].tolist() == pytest.approx([-f(pu.perp_neg_f_fs, 1.0), -f(pu.perp_neg_f_sf, 0.0)], abs=1e-5)
    # azimuth 45: halfway front/side
    assert torch.allclose(emb[1], 0.5 * front + 0.5 * side, atol=1e-6)
    assert w[1].tolist() == pytest.approx([-f(pu.perp_neg_f_fs, 0.5), -f(pu.perp_neg_f_sf, 0.5)], abs=1e-5)
    # azimuth 90: the side/back branch with r = 1 (full side); negatives side, front
    assert torch.allclose(emb[2], side, atol=1e-6)
    assert torch.allclose(emb[2 * b + 4], side) and torch.allclose(emb[2 * b + 5], front)
    assert w[2].tolist() == pytest.approx([-f(pu.perp_neg_f_sb, 1.0), -f(pu.perp_neg_f_fsb, 1.0)], abs=1e-5)
    # azimuth -135: r = 2 - 135/90 = 0.5 between side and back
    assert torch.allclose(emb[3], 0.5 * side + 0.5 * back, atol=1e-6)
    # overhead: its own embedding, zero weights, negatives = unconditional
    assert torch.allclose(emb[4], over) and w[4].tolist() == [0.0, 0.0]
    assert torch.allclose(emb[2 * b + 8], unc) and torch.allclose(emb[2 * b + 9], unc)
    assert all(torch.allclose(emb[b + i], unc) for i in range(b))


def test_embeddings_are_cached_as_fp16_and_the_encoder_is_freed(tiny_sd, tmp_path, monkeypatch):
    from transformers import CLIPTextModel

    cache_root = tmp_path / "cache-root"
    monkeypatch.setenv("THREESTUDIO_CACHE", str(cache_root))
    gc.collect()
    # other tests in this worker may hold encoders of their own: only the ones made by this call count
    before = {id(o) for o in gc.get_objects() if type(o) is CLIPTextModel}
    pp, pu = make_prompt_utils(tiny_sd, "a blue teapot")
    gc.collect()
    alive = [o for o in gc.get_objects() if type(o) is CLIPTextModel and id(o) not in before]
    assert not alive, "the text encoder is still alive"
    folder = cache_root / "text_embeddings"
    files = sorted(os.listdir(folder))
    assert len(files) == 6  # prompt, "" and the four view-dependent prompts
    data = torch.load(folder / files[0], weights_only=True)
    assert data["local"].dtype == torch.float16 and data["local"].shape == (77, 32)
    assert data["global"].shape == (32,) and data["model"].startswith(tiny_sd)
    assert os.path.basename(pp.cache_path("a blue teapot")) in files

    # a second processor reads the cache and never encodes
    cls = threestudio.find("stable-diffusion-prompt-processor")
    monkeypatch.setattr(cls, "encode_prompts", lambda self, prompts: pytest.fail(f"encoded {prompts}"))
    _, pu2 = make_prompt_utils(tiny_sd, "a blue teapot")
    assert torch.equal(pu2.text_embeddings_vd, pu.text_embeddings_vd)
    # another prompt, or another model, misses the cache
    with pytest.raises(pytest.fail.Exception, match="encoded"):
        make_prompt_utils(tiny_sd, "a green teapot")


def test_cache_dir_is_configurable_and_independent_of_cwd(tiny_sd, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pp, _ = make_prompt_utils(tiny_sd, "a hat", cache_dir=str(tmp_path / "mine"))
    assert pp.cache_path("a hat").startswith(str(tmp_path / "mine"))
    monkeypatch.delenv("THREESTUDIO_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    from threestudio.models.diffusion.cache import default_cache_root

    assert default_cache_root() == str(tmp_path / "home" / ".cache" / "threestudio")
