"""Score distillation math: SDS (DreamFusion) and ASD (ScaleDreamer), as pure tensor functions.

No config, no models: the guidance modules (``threestudio/models/guidance/``) draw the random timesteps and noise,
run the UNet, and call these. Everything here is elementwise or a small reduction, keeps shapes static and never
reads a value back to the host, so it can sit inside a compiled / CUDA-graphed step.

Conventions: ``alphas_cumprod`` is the scheduler's ``ᾱ`` table [T]; timesteps are integer tensors [B]; latents and
noise predictions are [B, C, H, W].

- :func:`add_noise`: ``x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε`` (DDPM forward process; equals diffusers'
  ``DDPMScheduler.add_noise``).
- :func:`timestep_weight`: ``w(t)`` for the weighting strategies ``sds`` (``1 - ᾱ_t``), ``uniform`` (1) and
  ``fantasia3d`` (``sqrt(ᾱ_t) (1 - ᾱ_t)``).
- :func:`classifier_free_guidance`, :func:`perpendicular_component`, :func:`perp_neg_guidance`: combining noise
  predictions.
- :func:`asd_t_plus`: ASD's shifted timestep ``t + Δt``, ``Δt = floor(u · plus_ratio · (t - min_step))``.
- :func:`score_distillation_loss`: the detached-target MSE whose gradient w.r.t. the latents is ``grad / B``.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

WEIGHTINGS = ("sds", "uniform", "fantasia3d")


def _expand_like(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (x.dim() - 1)))


def add_noise(latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
              alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """``sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε`` per sample (t: [B] integer timesteps)."""
    a = alphas_cumprod.to(device=latents.device, dtype=torch.float32)[t]
    x = _expand_like(a.sqrt(), latents) * latents.float() + _expand_like((1 - a).sqrt(), latents) * noise.float()
    return x.to(latents.dtype)


def timestep_weight(t: torch.Tensor, alphas_cumprod: torch.Tensor, strategy: str = "sds") -> torch.Tensor:
    """``w(t)`` [B] for a weighting strategy: ``sds`` = 1 - ᾱ_t (σ_t²), ``uniform`` = 1,
    ``fantasia3d`` = sqrt(ᾱ_t) (1 - ᾱ_t)."""
    a = alphas_cumprod.to(t.device, torch.float32)[t]
    if strategy == "sds":
        return 1 - a
    if strategy == "uniform":
        return torch.ones_like(a)
    if strategy == "fantasia3d":
        return a.sqrt() * (1 - a)
    raise ValueError(f"unknown weighting strategy {strategy!r}; choose one of {', '.join(WEIGHTINGS)}")


def classifier_free_guidance(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """``ε_u + s (ε_c - ε_u)``."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def perpendicular_component(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The part of ``x`` orthogonal to ``y``, per sample (dot products over all but the first dimension)."""
    dims = list(range(1, x.dim()))
    dot = (x * y).sum(dim=dims)
    norm2 = (y * y).sum(dim=dims).clamp_min(eps)
    return x - _expand_like(dot / norm2, x) * y


def perp_neg_guidance(eps_pos: torch.Tensor, eps_uncond: torch.Tensor, eps_neg: torch.Tensor,
                      neg_weights: torch.Tensor, scale: float) -> torch.Tensor:
    """Perp-Neg: ``ε_u + s ((ε_+ - ε_u) + Σ_i w_i perp(ε_i - ε_u, ε_+ - ε_u))``.

    Args:
        eps_pos, eps_uncond: [B, ...].
        eps_neg: [B * K, ...] in sample-major order (sample b's K negatives are rows b*K .. b*K+K-1), as
            threestudio's ``get_text_embeddings_perp_neg`` orders the negative embeddings.
        neg_weights: [B, K] weights w_i (already signed: negative values push away).
    """
    b, k = neg_weights.shape
    e_pos = eps_pos - eps_uncond
    e_neg = eps_neg.reshape(b, k, *eps_neg.shape[1:]) - eps_uncond[:, None]
    acc = torch.zeros_like(e_pos)
    for i in range(k):
        acc = acc + _expand_like(neg_weights[:, i].to(e_pos.dtype), e_pos) * perpendicular_component(e_neg[:, i],
                                                                                                    e_pos)
    return eps_uncond + scale * (e_pos + acc)


def shifted_exponential_decay(a: float, b: float, c: float, r: torch.Tensor) -> torch.Tensor:
    """``a exp(-b r) + c`` (threestudio's Perp-Neg interpolation weight curves)."""
    return a * torch.exp(-b * r) + c


def asd_t_plus(t: torch.Tensor, min_step: Union[int, torch.Tensor], plus_ratio: float, u: Optional[torch.Tensor],
               num_train_timesteps: int = 1000) -> torch.Tensor:
    """ASD's second timestep, as ScaleDreamer computes it.

    ``Δt_raw = plus_ratio · (t - min_step)`` clamped to ``[0, T-1-t]``; ``Δt = floor(u · Δt_raw)`` with ``u ~ U(0,1)``
    (``plus_random``) or ``floor(Δt_raw)`` when ``u`` is None; result ``clamp(t + Δt, 1, T-1)``. ``min_step`` is the
    *current* (annealed) lower bound of the timestep range.
    """
    raw = plus_ratio * (t - min_step).to(torch.float32)
    raw = torch.minimum(raw.clamp_min(0.0), (num_train_timesteps - 1 - t).to(torch.float32))
    if u is not None:
        raw = u.to(raw) * raw
    dt = raw.floor().to(t.dtype)
    return (t + dt).clamp(1, num_train_timesteps - 1)


def score_distillation_loss(latents: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``0.5 · Σ (x - sg(x - g))² / B``: its gradient w.r.t. ``latents`` is ``grad / B`` (B = latents.shape[0])."""
    target = (latents - grad).detach()
    return 0.5 * F.mse_loss(latents.float(), target.float(), reduction="sum") / latents.shape[0]


def clip_grad(grad: torch.Tensor, clip: Optional[float]) -> torch.Tensor:
    """``nan_to_num`` then an optional symmetric clamp (threestudio's ``grad_clip``)."""
    grad = torch.nan_to_num(grad)
    if clip is not None and clip > 0:
        grad = grad.clamp(-clip, clip)
    return grad


def timestep_range(min_step_percent: float, max_step_percent: float, num_train_timesteps: int = 1000) -> Sequence[int]:
    """(min_step, max_step) as threestudio computes them: ``int(T · percent)``."""
    lo, hi = int(num_train_timesteps * min_step_percent), int(num_train_timesteps * max_step_percent)
    if not (0 <= lo <= hi < num_train_timesteps):
        raise ValueError(f"timestep range [{min_step_percent}, {max_step_percent}] gives steps [{lo}, {hi}], which must "
                         f"satisfy 0 <= min <= max < {num_train_timesteps}")
    return lo, hi

