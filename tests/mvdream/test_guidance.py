"""The MVDream guidances against hand computations with the tiny UNet loaded through the real checkpoint path:
ASD's w(t)(ε̂_t - ε_cond(x_{t+Δt})) with one t and one Δt for the whole batch and one shared noise; SDS, plain and
in MVDream's x0-reconstruction form; the text side (open_clip tokens, the tiny tower)."""

import os

import pytest
import torch

import threestudio
from threestudio.models.guidance.mvdream.score import camera_condition

B, NV, LAT = 8, 4, 8  # 2 objects x 4 views, 8x8 latents (image_size 64)


@pytest.fixture(scope="module")
def setup(tiny_mvdream):
    os.environ["THREESTUDIO_CACHE"] = tiny_mvdream.cache
    pp = threestudio.find("mvdream-prompt-processor")(
        {"prompt": "a red chair", "pretrained_model_name_or_path": tiny_mvdream.ckpt,
         "tokenizer_name_or_path": tiny_mvdream.tokenizer, "negative_prompt": "blurry"})
    return tiny_mvdream, pp()


def guidance(tiny, name, **cfg):
    return threestudio.find(name, "guidance")({"pretrained_model_name_or_path": tiny.ckpt, "image_size": 64, **cfg})


def cameras():
    from threestudio.ops.cameras import c2w_from_spherical

    elev = torch.tensor([15.0] * 4 + [30.0] * 4)
    azim = torch.tensor([0.0, 90, 180, 270, 45, 135, 225, 315])
    dist = torch.full((B,), 2.5)
    return elev, azim, dist, c2w_from_spherical(elev, azim, dist)


def alphas_bar():
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


def test_text_embeddings(setup):
    tiny, pu = setup
    from transformers import AutoTokenizer

    from threestudio.models.prompt_processors.mvdream_prompt_processor import open_clip_token_ids

    tok = AutoTokenizer.from_pretrained(tiny.tokenizer, subfolder="tokenizer")
    ids = open_clip_token_ids(tok, ["a red chair", "x" * 200])
    n = len("aredchair") + 2  # byte-level toy vocabulary: one token per character (spaces end words)
    assert ids[0, 0] == 512 and ids[0, n - 1] == 513 and (ids[0, n:] == 0).all()  # start, end, padded with 0
    assert ids[1, -1] == 513 and ids.shape == (2, 77)  # truncated to 77 keeping the end token
    encoder = tiny.models.text_encoder
    with torch.no_grad():
        ref = encoder(ids[:1]).last_hidden_state[0]
    assert pu.text_embeddings.shape == (1, 77, 64)
    assert torch.allclose(pu.text_embeddings[0], ref.half().float(), atol=1e-3)  # cached as fp16
    with torch.no_grad():
        neg = encoder(open_clip_token_ids(tok, ["blurry"])).last_hidden_state[0]
    assert torch.allclose(pu.uncond_text_embeddings[0], neg.half().float(), atol=1e-3)


def test_asd_gradient_matches_hand_computation(setup):
    tiny, pu = setup
    g = guidance(tiny, "mvdream-asd-guidance", min_step_percent=0.3, max_step_percent=0.98, guidance_scale=7.5)
    assert g.min_step == 300
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(B, LAT, LAT, 4, generator=gen).requires_grad_()
    noise = torch.randn(B, 4, LAT, LAT, generator=gen)
    elev, azim, dist, c2w = cameras()
    out = g(x, pu, elev, azim, dist, c2w=c2w, rgb_as_latents=True, t=600, noise=noise, u=0.7)
    out["loss_asd"].backward()
    # by hand: Δt = floor(0.7 * 0.1 * (600 - 300)) = 21, both branches noised with the same ε
    assert (out["t"] == 600).all() and (out["t_plus"] == 621).all()
    a = alphas_bar()
    lat = x.detach().permute(0, 3, 1, 2)
    x_t = a[600].sqrt() * lat + (1 - a[600]).sqrt() * noise
    x_tp = a[621].sqrt() * lat + (1 - a[621]).sqrt() * noise
    cam = c2w.clone()
    cam[:, :3, 3] /= cam[:, :3, 3].norm(dim=-1, keepdim=True)
    cam = cam.reshape(B, 16)
    cond, uncond = pu.text_embeddings.expand(B, -1, -1), pu.uncond_text_embeddings.expand(B, -1, -1)
    unet = tiny.models.unet
    with torch.no_grad():
        e_c = unet(x_t, torch.full((B,), 600), cond, cam, num_frames=NV)
        e_u = unet(x_t, torch.full((B,), 600), uncond, cam, num_frames=NV)
        e_2 = unet(x_tp, torch.full((B,), 621), cond, cam, num_frames=NV)
    grad = (1 - a[600]) * (e_u + 7.5 * (e_c - e_u) - e_2)
    expected = (grad / B).permute(0, 2, 3, 1)
    assert torch.allclose(x.grad, expected, atol=1e-4 * expected.abs().max().item()), \
        (x.grad - expected).abs().max()
    # the t+Δt branch matters: without it (plain CFG minus the noise) the gradient differs
    sds_like = ((1 - a[600]) * (e_u + 7.5 * (e_c - e_u) - noise) / B).permute(0, 2, 3, 1)
    assert (x.grad - sds_like).abs().max() > 10 * (x.grad - expected).abs().max()


def test_asd_one_timestep_per_batch_and_dt_range(setup):
    tiny, pu = setup
    g = guidance(tiny, "mvdream-asd-guidance", min_step_percent=[0, 0.5, 0.02, 100],
                 max_step_percent=[0, 0.98, 0.5, 100])
    seen = []

    def fake_unet(latents, t, context, camera):  # records the rows; the network is not needed here
        seen.append(t.clone())
        return torch.zeros_like(latents)

    g._unet_fn = fake_unet
    elev, azim, dist, _ = cameras()
    rgb = torch.rand(B, 16, 16, 3)
    for step in (0, 50, 100):
        g.do_update_step(0, step)
        lo = {0: 500, 50: 260, 100: 20}[step]
        assert g.min_step == lo
        for _ in range(6):
            out = g(rgb, pu, elev, azim, dist)
            t, tp = out["t"], out["t_plus"]
            assert (t == t[0]).all() and (tp == tp[0]).all()  # one t, one t+Δt for every object and view
            t0, dt = int(t[0]), int(tp[0] - t[0])
            assert g.min_step <= t0 <= g.max_step
            assert 0 <= dt <= int(0.1 * (t0 - g.min_step)), (t0, dt, g.min_step)
            rows = seen[-1]
            assert rows.shape == (3 * B,) and (rows[: 2 * B] == t0).all() and (rows[2 * B:] == t0 + dt).all()
    dts = []
    for _ in range(10):
        out = g(rgb, pu, elev, azim, dist, t=990, u=None)
        dts.append(int(out["t_plus"][0] - 990))
    assert len(set(dts)) > 1 and max(dts) <= 9  # random fraction of 0.1 * (990 - 20) = 97, clamped to 999 - 990


def test_sds_recon_and_plain_match_hand_computation(setup):
    tiny, pu = setup
    elev, azim, dist, c2w = cameras()
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(B, LAT, LAT, 4, generator=gen)
    noise = torch.randn(B, 4, LAT, LAT, generator=gen)
    a = alphas_bar()[400]
    lat = x0.permute(0, 3, 1, 2)
    x_t = a.sqrt() * lat + (1 - a).sqrt() * noise
    cam = camera_condition(c2w)
    unet = tiny.models.unet
    with torch.no_grad():
        e_c = unet(x_t, torch.full((B,), 400), pu.text_embeddings.expand(B, -1, -1), cam, num_frames=NV)
        e_u = unet(x_t, torch.full((B,), 400), pu.uncond_text_embeddings.expand(B, -1, -1), cam, num_frames=NV)
    e_hat = e_u + 50.0 * (e_c - e_u)
    # MVDream's x0-reconstruction with std rescale 0.5, per object over its 4 views
    rec = (x_t - (1 - a).sqrt() * e_hat) / a.sqrt()
    rec_c = (x_t - (1 - a).sqrt() * e_c) / a.sqrt()
    factor = torch.stack([(rec_c[i:i + 4].std() + 1e-8) / (rec[i:i + 4].std() + 1e-8) for i in (0, 4)])
    rec = 0.5 * rec * factor.repeat_interleave(4)[:, None, None, None] + 0.5 * rec
    for recon, expected in ((True, lat - rec), (False, (1 - a) * (e_hat - noise))):
        g = guidance(tiny, "mvdream-sds-guidance", recon_loss=recon, recon_std_rescale=0.5, guidance_scale=50.0)
        x = x0.clone().requires_grad_()
        out = g(x, pu, elev, azim, dist, c2w=c2w, rgb_as_latents=True, t=400, noise=noise)
        out["loss_sds"].backward()
        exp = (expected / B).permute(0, 2, 3, 1)
        assert torch.allclose(x.grad, exp, atol=1e-4 * exp.abs().max().item()), (recon, (x.grad - exp).abs().max())
        assert (out["t"] == 400).all()


def test_renders_go_through_the_vae_and_cameras_default_to_the_data_module(setup):
    tiny, pu = setup
    g = guidance(tiny, "mvdream-sds-guidance")
    elev, azim, dist, c2w = cameras()
    rgb = torch.rand(B, 32, 32, 3, requires_grad=True)
    torch.manual_seed(3)
    out = g(rgb, pu, elev, azim, dist)  # no c2w: rebuilt from the angles
    torch.manual_seed(3)
    out2 = g(rgb, pu, elev, azim, dist, c2w=c2w)
    assert torch.equal(out["loss_sds"], out2["loss_sds"])
    out["loss_sds"].backward()
    assert rgb.grad is not None and rgb.grad.abs().sum() > 0  # through the VAE encoder
    with pytest.raises(ValueError, match="multiple of 4"):
        g(rgb[:6], pu, elev[:6], azim[:6], dist[:6])


def test_compiled_step_is_one_static_graph(setup):
    """fullgraph tracing of the UNet call and the VAE encode (dynamo only: backend 'eager'), the same numbers as
    eager, and no recompile when t, Δt, noise and cameras change from step to step."""
    from torch._dynamo.utils import counters

    tiny, pu = setup
    torch._dynamo.reset()
    base = counters["stats"]["unique_graphs"]  # other tests in this process may have compiled before
    g = guidance(tiny, "mvdream-asd-guidance", compile=True, compile_options={"backend": "eager"})
    ref = guidance(tiny, "mvdream-asd-guidance")
    elev, azim, dist, _ = cameras()
    rgb = torch.rand(B, 16, 16, 3, requires_grad=True)
    torch.manual_seed(0)
    a = g(rgb, pu, elev, azim, dist)
    torch.manual_seed(0)
    b = ref(rgb, pu, elev, azim, dist)
    assert torch.allclose(a["loss_asd"], b["loss_asd"], rtol=1e-5)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs - base == 2  # the UNet call and the VAE encode, each one whole graph
    for step in range(3):
        g.do_update_step(0, step * 1000)
        out = g(rgb, pu, elev + step, azim + 10 * step, dist)
        out["loss_asd"].backward()
    assert counters["stats"]["unique_graphs"] == graphs
