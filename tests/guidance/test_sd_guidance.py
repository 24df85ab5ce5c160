"""SDS and ASD gradients against hand computations with the same tiny UNet, loaded straight from its folder."""

import math

import pytest
import torch

from tests.guidance.conftest import make_guidance, make_prompt_utils


class Hand:
    """An independent reference: the UNet and ᾱ table from the folder, the formulas written out."""

    def __init__(self, folder):
        from diffusers import DDPMScheduler, UNet2DConditionModel

        self.unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet").eval()
        self.alphas = DDPMScheduler.from_pretrained(folder, subfolder="scheduler").alphas_cumprod

    def eps(self, x, t, emb):
        with torch.no_grad():
            return self.unet(x, t, encoder_hidden_states=emb).sample

    def noisy(self, x0, noise, t):
        a = self.alphas[t].view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise


@pytest.fixture(scope="module")
def hand(tiny_sd):
    return Hand(tiny_sd)


CAMS = dict(elevation=torch.tensor([10.0, 20.0, 70.0]), azimuth=torch.tensor([0.0, 100.0, 180.0]),
            camera_distances=torch.tensor([1.5, 1.5, 1.5]))


def latent_input(b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 8, 8, 4, generator=g) * 0.5).requires_grad_(True)  # [B, H, W, 4]: rgb_as_latents


@pytest.mark.parametrize("weighting", ["sds", "uniform", "fantasia3d"])
def test_sds_gradient_equals_weighted_noise_residual(tiny_sd, hand, weighting):
    g = make_guidance("stable-diffusion-guidance", tiny_sd, guidance_scale=7.5, weighting_strategy=weighting,
                      latent_size=8)
    _, pu = make_prompt_utils(tiny_sd, "a red car")
    x = latent_input()
    t = torch.tensor([50, 500, 950])
    noise = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    out = g(x, pu, **CAMS, rgb_as_latents=True, t=t, noise=noise)
    out["loss_sds"].backward()

    x0 = x.detach().permute(0, 3, 1, 2)
    xt = hand.noisy(x0, noise, t)
    idx = [1, 0, 3]  # front, side (azimuth 100), overhead (elevation 70)
    cond, uncond = pu.text_embeddings_vd[idx], pu.uncond_text_embeddings_vd[idx]
    eps_hat = hand.eps(xt, t, uncond) + 7.5 * (hand.eps(xt, t, cond) - hand.eps(xt, t, uncond))
    a = hand.alphas[t].view(-1, 1, 1, 1)
    w = {"sds": 1 - a, "uniform": torch.ones_like(a), "fantasia3d": a.sqrt() * (1 - a)}[weighting]
    grad = w * (eps_hat - noise)
    assert torch.allclose(x.grad.permute(0, 3, 1, 2), grad / 3, rtol=1e-4, atol=1e-5)
    assert float(out["grad_norm"]) == pytest.approx(float(grad.norm()), rel=1e-4)
    assert out["t"].tolist() == t.tolist()


def test_sds_through_the_vae_backpropagates_to_the_image(tiny_sd, hand):
    from diffusers import AutoencoderKL

    g = make_guidance("stable-diffusion-guidance", tiny_sd, guidance_scale=10.0, image_size=64)
    _, pu = make_prompt_utils(tiny_sd, "a red car")
    rgb = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    t = torch.tensor([300, 700])
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(7)  # the VAE posterior sample
    g(rgb, pu, **{k: v[:2] for k, v in CAMS.items()}, t=t, noise=noise)["loss_sds"].backward()

    vae = AutoencoderKL.from_pretrained(tiny_sd, subfolder="vae")
    rgb2 = rgb.detach().clone().requires_grad_(True)
    img = torch.nn.functional.interpolate(rgb2.permute(0, 3, 1, 2), (64, 64), mode="bilinear", align_corners=False)
    torch.manual_seed(7)
    lat = vae.encode(img * 2 - 1).latent_dist.sample() * vae.config.scaling_factor
    xt = hand.noisy(lat.detach(), noise, t)
    cond, uncond = pu.text_embeddings_vd[[1, 0]], pu.uncond_text_embeddings_vd[[1, 0]]
    eps_hat = hand.eps(xt, t, uncond) + 10.0 * (hand.eps(xt, t, cond) - hand.eps(xt, t, uncond))
    grad = (1 - hand.alphas[t]).view(-1, 1, 1, 1) * (eps_hat - noise)
    (expected,) = torch.autograd.grad(lat, rgb2, grad / 2)
    assert rgb.grad.abs().sum() > 0
    assert torch.allclose(rgb.grad, expected, rtol=1e-3, atol=1e-6)


def test_sds_with_perp_neg_matches_hand(tiny_sd, hand):
    g = make_guidance("stable-diffusion-guidance", tiny_sd, guidance_scale=7.5, latent_size=8,
                      guidance_perp_neg=-0.5)
    _, pu = make_prompt_utils(tiny_sd, "a red car", use_perp_neg=True)
    x = latent_input(2)
    t = torch.tensor([400, 600])
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    cams = dict(elevation=torch.tensor([0.0, 0.0]), azimuth=torch.tensor([30.0, 120.0]),
                camera_distances=torch.ones(2))
    g(x, pu, **cams, rgb_as_latents=True, t=t, noise=noise)["loss_sds"].backward()
    emb, w_proc = pu.get_text_embeddings_perp_neg(cams["elevation"], cams["azimuth"])
    w = -0.5 * (-w_proc)  # guidance_perp_neg * f(r), where f = -(the processor's weights)
    xt = hand.noisy(x.detach().permute(0, 3, 1, 2), noise, t)
    for i in range(2):
        xi, ti = xt[i : i + 1], t[i : i + 1]
        e_pos = hand.eps(xi, ti, emb[i : i + 1])
        e_unc = hand.eps(xi, ti, emb[2 + i : 3 + i])
        d_pos = e_pos - e_unc
        acc = 0
        for j in range(2):
            d = hand.eps(xi, ti, emb[4 + 2 * i + j : 5 + 2 * i + j]) - e_unc
            acc = acc + w[i, j] * (d - (d * d_pos).sum() / (d_pos * d_pos).sum() * d_pos)
        eps_hat = e_unc + 7.5 * (d_pos + acc)
        grad = (1 - hand.alphas[ti]).view(-1, 1, 1, 1) * (eps_hat - noise[i : i + 1])
        assert torch.allclose(x.grad[i].permute(2, 0, 1), grad[0] / 2, rtol=1e-4, atol=1e-5)


def test_asd_gradient_uses_shared_noise_and_the_shifted_conditional(tiny_sd, hand):
    g = make_guidance("stable-diffusion-asd-guidance", tiny_sd, latent_size=8, guidance_scale=7.5,
                      min_step_percent=0.2, max_step_percent=0.98, plus_ratio=0.1)
    assert g.min_step == 200
    _, pu = make_prompt_utils(tiny_sd, "a red car")
    x = latent_input()
    t = torch.tensor([250, 600, 980])
    u = torch.tensor([0.3, 0.99, 0.5])
    noise = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    out = g(x, pu, **CAMS, rgb_as_latents=True, t=t, noise=noise, u=u)
    out["loss_asd"].backward()

    # t+ by hand: t + floor(u * 0.1 * (t - 200)), the raw shift clamped to 999 - t
    t_plus = torch.tensor([250 + math.floor(0.3 * 5.0), 600 + math.floor(0.99 * 40.0), 980 + math.floor(0.5 * 19.0)])
    assert out["t_plus"].tolist() == t_plus.tolist()
    x0 = x.detach().permute(0, 3, 1, 2)
    xt, xt_plus = hand.noisy(x0, noise, t), hand.noisy(x0, noise, t_plus)  # one ε for both branches
    idx = [1, 0, 3]
    cond, uncond = pu.text_embeddings_vd[idx], pu.uncond_text_embeddings_vd[idx]
    eps1 = hand.eps(xt, t, uncond) + 7.5 * (hand.eps(xt, t, cond) - hand.eps(xt, t, uncond))
    eps2 = hand.eps(xt_plus, t_plus, cond)  # no CFG at t+
    grad = (1 - hand.alphas[t]).view(-1, 1, 1, 1) * (eps1 - eps2)  # w at t, not t+
    assert torch.allclose(x.grad.permute(0, 3, 1, 2), grad / 3, rtol=1e-4, atol=1e-5)


def test_asd_delta_t_range_follows_the_annealed_min_step(tiny_sd):
    g = make_guidance("stable-diffusion-asd-guidance", tiny_sd, latent_size=8, plus_ratio=0.1,
                      min_step_percent=[0, 0.5, 0.02, 100], max_step_percent=[0, 0.98, 0.5, 100])
    _, pu = make_prompt_utils(tiny_sd, "a red car")
    b = 48
    cams = dict(elevation=torch.zeros(b), azimuth=torch.linspace(-180, 180, b), camera_distances=torch.ones(b))
    torch.manual_seed(0)
    for step, lo, hi in [(0, 500, 980), (50, 260, 740), (100, 20, 500)]:
        g.do_update_step(0, step)
        assert (g.min_step, g.max_step) == (lo, hi)
        out = g(torch.zeros(b, 8, 8, 4), pu, **cams, rgb_as_latents=True)
        t, tp = out["t"], out["t_plus"]
        assert int(t.min()) >= lo and int(t.max()) <= hi
        dt = tp - t
        assert (dt >= 0).all() and (dt <= torch.floor(0.1 * (t - lo).float())).all()
        assert (dt > 0).any() and len(set(dt.tolist())) > 3  # a random fraction, not a fixed shift


def test_asd_with_perp_neg_runs_five_evaluations_per_image(tiny_sd):
    g = make_guidance("stable-diffusion-asd-guidance", tiny_sd, latent_size=8, guidance_perp_neg=-0.5)
    _, pu = make_prompt_utils(tiny_sd, "a red car", use_perp_neg=True)
    seen = []
    unet_fn = g._unet_fn
    g._unet_fn = lambda x, t, c: seen.append((x.shape[0], t.shape[0], c.shape[0])) or unet_fn(x, t, c)
    x = latent_input(2)
    g(x, pu, **{k: v[:2] for k, v in CAMS.items()}, rgb_as_latents=True)["loss_asd"].backward()
    assert seen == [(10, 10, 10)]  # one batched call: pos, uncond, 2 negatives at t; pos at t+
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_embedding_width_mismatch_is_reported(tiny_sd, tmp_path):
    from threestudio.utils.weights import PretrainedWeightsError, save_random_stable_diffusion

    other = save_random_stable_diffusion(str(tmp_path / "wide"), preset="tiny", text_hidden_size=48)
    g = make_guidance("stable-diffusion-guidance", tiny_sd, latent_size=8)
    _, pu = make_prompt_utils(other, "a red car")
    with pytest.raises(PretrainedWeightsError, match="48 channels but the UNet .* cross-attends to 32"):
        g(latent_input(1), pu, **{k: v[:1] for k, v in CAMS.items()}, rgb_as_latents=True)


@pytest.mark.gpu
def test_compiled_guidance_matches_eager_and_does_not_recompile(tiny_sd, tmp_path, monkeypatch):
    import torch._dynamo.utils as dutils

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    _, pu = make_prompt_utils(tiny_sd, "a red car")
    pu = pu.to("cuda")
    eager = make_guidance("stable-diffusion-asd-guidance", tiny_sd, latent_size=8, compile=False)
    comp = make_guidance("stable-diffusion-asd-guidance", tiny_sd, latent_size=8, compile=True,
                         compile_options={"cache_dir": str(tmp_path / "inductor")})
    assert comp.weights_dtype == torch.float16 and comp.compiled
    cams = {k: v.cuda() for k, v in CAMS.items()}
    frames = None
    for i in range(4):
        x = latent_input(3, seed=i).cuda().detach().requires_grad_(True)
        t = torch.tensor([100 + 200 * i, 300, 900], device="cuda")
        noise = torch.randn(3, 4, 8, 8, device="cuda")
        u = torch.rand(3, device="cuda")
        ge = torch.autograd.grad(eager(x, pu, **cams, rgb_as_latents=True, t=t, noise=noise, u=u)["loss_asd"], x)[0]
        gc = torch.autograd.grad(comp(x, pu, **cams, rgb_as_latents=True, t=t, noise=noise, u=u)["loss_asd"], x)[0]
        # fp16 both ways; inductor fuses differently, so compare as a whole (full-size SD-2.1 UNet: 7e-3 on an H200)
        assert float((gc - ge).norm() / ge.norm()) < 3e-2
        if i == 1:
            frames = dutils.counters["stats"]["unique_graphs"]
    assert dutils.counters["stats"]["unique_graphs"] == frames  # no recompiles after the first steps
    assert (tmp_path / "inductor").is_dir() and any((tmp_path / "inductor").iterdir())


def test_skip_known_guards_never_serves_a_graph_for_another_signature():
    """A compiled function whose graph bakes in its input's shape: calls with a known signature skip the guards,
    a new shape still recompiles (its own result), and a known one is served its own graph again."""
    import torch

    from threestudio.models.diffusion.compile import SkipKnownGuards

    torch._dynamo.reset()
    compiled = torch.compile(lambda x: x.sum() * x.shape[0], backend="eager", dynamic=False, fullgraph=True)
    fn = SkipKnownGuards(compiled)
    a, b = torch.ones(3, 2), torch.ones(5, 2)
    assert float(fn(a)) == 18.0 and float(fn(a)) == 18.0  # the second call ran with the guards skipped
    assert len(fn.known) == 1
    assert float(fn(b)) == 50.0  # a new shape: guards evaluated, recompiled, the right graph
    assert float(fn(a)) == 18.0 and float(fn(b)) == 50.0
    with torch.no_grad():  # grad mode is part of the signature
        assert float(fn(a)) == 18.0
    assert len(fn.known) == 3
    # why the wrapper runs new signatures with the guards: under the unsafe stance, torch refuses to recompile
    torch._dynamo.reset()
    single = torch.compile(lambda x: x.sum() * x.shape[0], backend="eager", dynamic=False, fullgraph=True)
    single(a)
    with torch.compiler.set_stance(skip_guard_eval_unsafe=True), pytest.raises(RuntimeError, match="skip_guard_eval"):
        single(b)
