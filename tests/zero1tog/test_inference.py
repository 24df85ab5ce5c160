"""Zero-1-to-G inference (custom/zero1tog/inference.py, scripts/image_to_gaussians.py) with tiny random models on the
CPU: DDIM + CFG against a hand-written reference, the unconditional branch, input preprocessing, the missing-rembg
message, and the script end to end to a PLY our gaussian geometry loads back, the input folder untouched."""

import json
import os
import sys
import types

import numpy as np
import pytest
import torch

import threestudio
from tests.zero1tog.conftest import load_ext

load_ext()
from custom.zero1tog import inference as I  # noqa: E402
from custom.zero1tog.splatter import splatter_to_gaussians  # noqa: E402
from tests.zero1tog.test_model_unet import tiny  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(I.__file__), "scripts"))
import image_to_gaussians as script  # noqa: E402


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from diffusers import AutoencoderKL
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from threestudio.utils.weights import TINY_VAE

    root = tmp_path_factory.mktemp("z1g_model")
    tiny().save_pretrained(root / "unet")  # sample_size 4 -> 32^2 views with the tiny VAE
    torch.manual_seed(0)
    AutoencoderKL(**TINY_VAE).save_pretrained(root / "vae")
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, projection_dim=16)
    CLIPVisionModelWithProjection(cfg).save_pretrained(root / "image_encoder")
    return str(root)


def rgba_disc(size=48, centre=(30, 18), radius=9):
    yy, xx = np.mgrid[:size, :size]
    inside = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2
    img = np.zeros((size, size, 4), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 200, 40, 90
    img[..., 3] = np.where(inside, 255, 0)
    return img


def save_png(path, arr):
    from PIL import Image

    Image.fromarray(arr).save(path)
    return str(path)


def snapshot(folder):
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, folder)] = (fh.read(), os.stat(p).st_mtime_ns)
    return out


# ------------------------------------------------------------------------------------------------ DDIM + CFG
def hand_alphas_cumprod():
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


def hand_ddim(eps_c, eps_u, x, steps, s, eta, gen):
    """DDIM (Song et al. eq. 12) with 'leading' spacing + steps_offset 1, final alpha = alphas_cumprod[0]."""
    ac = hand_alphas_cumprod()
    ratio = 1000 // steps
    ts = [i * ratio + 1 for i in reversed(range(steps))]
    x = x.double()
    for t in ts:
        e = eps_c(x, t) if s == 1 else eps_u(x, t) + s * (eps_c(x, t) - eps_u(x, t))
        prev = t - ratio
        a, ap = ac[t], (ac[prev] if prev >= 0 else ac[0])
        x0 = (x - (1 - a) ** 0.5 * e) / a ** 0.5
        sigma = eta * ((1 - ap) / (1 - a) * (1 - a / ap)) ** 0.5
        x = ap ** 0.5 * x0 + (1 - ap - sigma ** 2) ** 0.5 * e
        if eta > 0:
            x = x + sigma * torch.randn(x.shape, generator=gen, dtype=torch.float32).double()
    return x, ts


def toy_eps_c(x, t):
    return 0.3 * x + 0.02 * float(t) / 1000.0


def toy_eps_u(x, t):
    return -0.2 * x + 0.1 * torch.cos(x)


def test_scheduler_is_the_base_ddim():
    sch = I.make_scheduler()
    assert type(sch).__name__ == "DDIMScheduler"
    ac = hand_alphas_cumprod()
    assert np.allclose(sch.alphas_cumprod.double().numpy(), ac, rtol=1e-5)
    assert abs(ac[999] - 0.004660) < 2e-5  # SD's well-known terminal alpha_bar
    assert float(sch.final_alpha_cumprod) == pytest.approx(ac[0], rel=1e-6)  # set_alpha_to_one False
    sch.set_timesteps(I.DEFAULT_STEPS)
    assert sch.timesteps.tolist() == list(range(981, 0, -20))
    assert (I.DEFAULT_STEPS, I.DEFAULT_GUIDANCE, I.DEFAULT_ETA) == (50, 5.0, 1.0)


@pytest.mark.parametrize("s,eta,steps", [(5.0, 1.0, 50), (3.0, 0.0, 10), (1.0, 1.0, 20)])
def test_ddim_cfg_matches_hand_reference(s, eta, steps):
    calls = []

    def eps_fn(x, t, branches):
        calls.append(branches)
        fns = {"cond": toy_eps_c, "uncond": toy_eps_u}
        return torch.stack([fns[b](x, t) for b in branches])

    shape = (2, 5, 6, 4, 3, 3)
    got = I.ddim_cfg_sample(eps_fn, shape, I.make_scheduler(), steps, s, eta, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    x0 = torch.randn(shape, generator=g)
    want, ts = hand_ddim(toy_eps_c, toy_eps_u, x0, steps, s, eta, g)
    assert len(calls) == steps
    assert all(c == (("cond",) if s == 1 else ("uncond", "cond")) for c in calls)
    assert torch.allclose(got.double(), want, atol=2e-4, rtol=1e-4), (got.double() - want).abs().max()
    if s == 1:  # guidance 1 is the conditional branch alone, whatever the unconditional one would say
        g2 = torch.Generator().manual_seed(7)
        only_c, _ = hand_ddim(toy_eps_c, lambda x, t: x * 100.0, torch.randn(shape, generator=g2), steps, 1.0, eta, g2)
        assert torch.allclose(got.double(), only_c, atol=2e-4, rtol=1e-4)
    else:  # and guidance changes the result
        g3 = torch.Generator().manual_seed(7)
        no_cfg, _ = hand_ddim(toy_eps_c, toy_eps_u, torch.randn(shape, generator=g3), steps, 1.0, eta, g3)
        assert not torch.allclose(got.double(), no_cfg, atol=1e-2)


# ------------------------------------------------------------------------------------------------ input
def test_preprocess_recentres_rescales_on_white():
    rgb = I.preprocess_rgba(rgba_disc(), size=64, object_fraction=0.75)
    assert rgb.shape == (3, 64, 64)
    obj = (rgb - 1.0).abs().sum(0) > 0.5
    ys, xs = torch.nonzero(obj, as_tuple=True)
    h, w = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
    assert abs(max(h, w) - 48) <= 2  # 0.75 of 64
    assert abs((ys.min() + ys.max()) / 2 - 31.5) <= 1 and abs((xs.min() + xs.max()) / 2 - 31.5) <= 1
    assert torch.allclose(rgb[:, 0, 0], torch.ones(3))  # white background
    assert torch.allclose(rgb[:, 32, 32], torch.tensor([200, 40, 90]) / 255.0, atol=0.02)
    with pytest.raises(ValueError, match="alpha channel is empty"):
        I.preprocess_rgba(np.zeros((8, 8, 4), np.uint8))


def test_missing_rembg_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "rembg", None)  # import rembg -> ImportError
    photo = save_png(tmp_path / "photo.png", rgba_disc()[..., :3].copy())
    with pytest.raises(I.MissingPackageError) as e:
        I.prepare_input(photo)
    msg = str(e.value)
    assert "'rembg'" in msg and "pip install rembg" in msg and "RGBA" in msg and "photo.png" in msg
    # an RGBA image needs no rembg; 'never' uses an RGB image as it is
    assert I.prepare_input(save_png(tmp_path / "cut.png", rgba_disc()), size=32).shape == (3, 32, 32)
    assert I.prepare_input(photo, size=32, remove_bg=False).shape == (3, 32, 32)


def test_missing_rembg_message_from_script(tmp_path, monkeypatch, capsys, model_dir):
    monkeypatch.setitem(sys.modules, "rembg", None)
    photo = save_png(tmp_path / "photo.png", rgba_disc()[..., :3].copy())
    rc = script.main([photo, str(tmp_path / "out"), "--model", model_dir, "--steps", "1", "--device", "cpu"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "rembg" in err and "RGBA" in err
    assert not os.path.exists(tmp_path / "out" / "gaussians.ply")


def test_rembg_is_used_lazily_when_present(tmp_path, monkeypatch):
    from PIL import Image

    fake = types.ModuleType("rembg")
    fake.remove = lambda im: Image.fromarray(rgba_disc())  # noqa: E731
    monkeypatch.setitem(sys.modules, "rembg", fake)
    photo = save_png(tmp_path / "photo.png", np.full((48, 48, 3), 128, np.uint8))
    rgb = I.prepare_input(photo, size=64)
    assert torch.allclose(rgb[:, 32, 32], torch.tensor([200, 40, 90]) / 255.0, atol=0.02)
    assert torch.allclose(rgb[:, 0, 0], torch.ones(3))


# ------------------------------------------------------------------------------------------------ pipeline
def test_unconditional_branch_is_zero_condition(model_dir):
    pipe = I.Zero1toGPipeline.from_pretrained(model_dir, cfg=I.InferenceConfig(num_inference_steps=2))
    seen = []

    def hook(mod, args, kwargs):
        seen.append((args[0].detach().clone(), args[2].detach().clone(), kwargs["class_labels"].detach().clone()))

    h = pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        rgb = I.preprocess_rgba(rgba_disc(), size=32)[None]
        out = pipe(rgb, torch.Generator().manual_seed(0))
        pipe.cfg.guidance_scale = 1.0
        pipe(rgb, torch.Generator().manual_seed(0))
    finally:
        h.remove()
    assert out["splatter"].shape == (1, 6, 14, 32, 32) and out["attribute_images"].shape == (1, 5, 6, 3, 32, 32)
    sample, tok, lab = seen[0]
    assert sample.shape == (60, 8, 4, 4)  # 5 attributes x (uncond, cond) x 6 views, folded
    per = sample.reshape(5, 2, 6, 8, 4, 4)
    t = tok.reshape(5, 2, 6, *tok.shape[1:])
    assert per[:, 0, :, 4:].abs().max() == 0 and t[:, 0].abs().max() == 0  # uncond: zero latent, zero CLIP token
    assert per[:, 1, :, 4:].abs().max() > 0 and t[:, 1].abs().max() > 0
    assert torch.equal(per[:, 0, :, :4], per[:, 1, :, :4])  # the same noisy latents
    lab = lab.reshape(5, 2, 6, -1)
    assert torch.equal(lab[:, 0], lab[:, 1])
    assert seen[-1][0].shape == (30, 8, 4, 4)  # guidance 1: one branch


def test_script_end_to_end_ply_loads_back(tmp_path, model_dir, capsys):
    inp = tmp_path / "input"
    inp.mkdir()
    photo = save_png(inp / "object.png", rgba_disc())
    before = snapshot(inp)
    out = tmp_path / "result"
    rc = script.main([photo, str(out), "--model", model_dir, "--steps", "3", "--guidance-scale", "3", "--seed", "1",
                      "--frames", "3", "--video-resolution", "32", "--input-size", "48", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    assert "seconds per object" in capsys.readouterr().out
    assert snapshot(inp) == before and sorted(os.listdir(inp)) == ["object.png"]
    names = set(os.listdir(out))
    assert {"gaussians.ply", "attributes.png", "input.png", "splatter.pt", "timing.json"} <= names
    assert names & {"turntable.mp4", "turntable.gif"}
    assert not any(n.endswith(".tmp") for n in names)

    splatter = torch.load(out / "splatter.pt")
    assert splatter.shape == (6, 14, 32, 32)
    g = splatter_to_gaussians(splatter)
    geo = threestudio.find("gaussian-splatting")({"init_type": "ply", "init_path": str(out / "gaussians.ply"),
                                                   "sh_degree": 0, "color_mode": "rgb"})
    assert geo.num_gaussians == 6 * 32 * 32
    args = geo.splat_args()
    assert torch.allclose(args["means"], g["means"], atol=1e-6)
    assert torch.allclose(args["scales"], g["scales"], rtol=1e-4)
    assert torch.allclose(args["opacities"], g["opacities"].clamp(1e-6, 1 - 1e-6), atol=1e-5)
    assert torch.allclose(args["colors"], g["colors"].clamp(1e-6, 1 - 1e-6), atol=1e-4)

    from PIL import Image

    assert np.asarray(Image.open(out / "attributes.png")).shape == (5 * 34 - 2, 6 * 34 - 2, 3)
    timing = json.loads((out / "timing.json").read_text())
    assert timing["seconds_per_object"] > 0 and timing["num_gaussians"] == 6 * 32 * 32
    assert timing["config"]["num_inference_steps"] == 3 and timing["config"]["guidance_scale"] == 3.0

    # the same seed gives the same splatter; the pipeline output equals what was written
    pipe = I.Zero1toGPipeline.from_pretrained(model_dir, cfg=I.InferenceConfig(num_inference_steps=3,
                                                                               guidance_scale=3.0))
    again = pipe(I.prepare_input(photo, 48)[None], torch.Generator().manual_seed(1))["splatter"][0]
    assert torch.allclose(again, splatter, atol=1e-5)

    # writing into the input's own folder is refused
    with pytest.raises(ValueError, match="input image's folder"):
        I.image_to_gaussians(photo, str(inp), pipe)
    assert snapshot(inp) == before


def test_turntable_starts_at_the_input_view():
    c2w = I.turntable_cameras(4, elevation_deg=15.0, distance=1.5)
    # frame 0 is splatter view 0 (the input view) = the anchored camera at (0, 0, d), identity rotation
    assert torch.allclose(c2w[0], torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1.5], [0, 0, 0, 1]]),
                          atol=1e-5)
    assert torch.allclose(c2w[:, :3, 3].norm(dim=-1), torch.full((4,), 1.5), atol=1e-5)
