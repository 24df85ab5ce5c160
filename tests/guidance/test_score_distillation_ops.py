"""threestudio.ops.score_distillation against hand computations and diffusers' scheduler."""

import math

import pytest
import torch

from threestudio.ops import score_distillation as ops


def sd_alphas():
    from diffusers import DDPMScheduler

    from threestudio.utils.weights import SD_SCHEDULER

    sched = DDPMScheduler(**{k: v for k, v in SD_SCHEDULER.items() if k not in ("set_alpha_to_one", "steps_offset")})
    return sched, sched.alphas_cumprod


def test_add_noise_matches_diffusers_ddpm():
    sched, alphas = sd_alphas()
    x = torch.randn(3, 4, 8, 8)
    eps = torch.randn(3, 4, 8, 8)
    t = torch.tensor([0, 500, 999])
    ours = ops.add_noise(x, eps, t, alphas)
    assert torch.allclose(ours, sched.add_noise(x, eps, t), atol=1e-6)
    a = float(alphas[500])
    assert torch.allclose(ours[1], math.sqrt(a) * x[1] + math.sqrt(1 - a) * eps[1], atol=1e-6)


def test_timestep_weights_by_hand():
    _, alphas = sd_alphas()
    t = torch.tensor([20, 400, 980])
    a = alphas[t]
    assert torch.allclose(ops.timestep_weight(t, alphas, "sds"), 1 - a)
    assert torch.equal(ops.timestep_weight(t, alphas, "uniform"), torch.ones(3))
    assert torch.allclose(ops.timestep_weight(t, alphas, "fantasia3d"), a.sqrt() * (1 - a))
    with pytest.raises(ValueError, match="unknown weighting strategy 'sdss'.*sds, uniform, fantasia3d"):
        ops.timestep_weight(t, alphas, "sdss")


def test_perpendicular_component_and_perp_neg_by_hand():
    x, y = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    p = ops.perpendicular_component(x, y)
    assert torch.allclose((p * y).sum(dim=(1, 2, 3)), torch.zeros(2), atol=1e-4)
    # x = perp + (x.y / y.y) y
    coef = (x * y).sum(dim=(1, 2, 3)) / (y * y).sum(dim=(1, 2, 3))
    assert torch.allclose(p + coef.view(-1, 1, 1, 1) * y, x, atol=1e-5)

    b, k, s = 2, 2, 7.5
    pos, unc = torch.randn(b, 4, 3, 3), torch.randn(b, 4, 3, 3)
    neg = torch.randn(b * k, 4, 3, 3)  # sample-major
    w = torch.tensor([[-0.3, -1.2], [0.0, -0.7]])
    ours = ops.perp_neg_guidance(pos, unc, neg, w, s)
    for i in range(b):
        e_pos = pos[i] - unc[i]
        acc = torch.zeros_like(e_pos)
        for j in range(k):
            e = neg[i * k + j] - unc[i]
            acc += w[i, j] * (e - (e * e_pos).sum() / (e_pos * e_pos).sum() * e_pos)
        assert torch.allclose(ours[i], unc[i] + s * (e_pos + acc), atol=1e-4)
    assert torch.allclose(ops.classifier_free_guidance(pos, unc, s), unc + s * (pos - unc))


def test_asd_t_plus_by_hand():
    t = torch.tensor([500, 20, 980, 999, 990])
    u = torch.tensor([0.5, 0.9, 0.999, 1.0, 1.0])
    # Δt_raw = 0.1 (t - 20) clamped to [0, 999 - t]; Δt = floor(u Δt_raw); t+ = clamp(t + Δt, 1, 999)
    expected = [500 + math.floor(0.5 * 48.0), 20, 980 + math.floor(0.999 * 19.0), 999, 999]
    assert ops.asd_t_plus(t, 20, 0.1, u).tolist() == expected
    assert ops.asd_t_plus(t, 20, 0.1, None).tolist() == [548, 20, 999, 999, 999]
    # the current (annealed) min step sets the range
    assert ops.asd_t_plus(torch.tensor([600]), 500, 0.1, None).tolist() == [610]


def test_score_distillation_loss_gradient_is_grad_over_batch():
    x = torch.randn(3, 4, 8, 8, requires_grad=True)
    g = torch.randn(3, 4, 8, 8)
    ops.score_distillation_loss(x, g).backward()
    assert torch.allclose(x.grad, g / 3, atol=1e-6)
    assert ops.clip_grad(torch.tensor([float("nan"), 5.0, -5.0]), 2.0).tolist() == [0.0, 2.0, -2.0]


def test_timestep_range():
    assert ops.timestep_range(0.02, 0.98) == (20, 980)
    with pytest.raises(ValueError, match="must satisfy"):
        ops.timestep_range(0.9, 0.5)
