"""Pure tensor math of the MVDream guidances (no config, no models; static shapes, no host reads).

- :func:`camera_condition`: MVDream's camera input, a camera-to-world matrix [B, 4, 4] flattened row by row to
  [B, 16]; ``rotation`` (MVDream-threestudio's default) first scales the translation to unit length, so only the
  viewing direction matters; ``extrinsics`` passes the matrix as is.
- :func:`predict_x0`: ``x_0 = x_t / sqrt(ᾱ_t) - sqrt(1/ᾱ_t - 1) ε̂`` (ldm's ``predict_start_from_noise``).
- :func:`rescale_x0_std`: MVDream's x0 "std rescale": the CFG reconstruction scaled, per object (its F views
  together), to the standard deviation of the unguided one, then blended: ``r · x0_cfg · σ_cond/σ_cfg +
  (1 - r) · x0_cfg``.

The SDS / ASD weighting, noising, CFG, t+Δt and loss come from :mod:`threestudio.ops.score_distillation`.
"""

from __future__ import annotations

import torch

from threestudio.utils.misc import constant

CAMERA_CONDITIONS = ("rotation", "extrinsics")


def camera_condition(c2w: torch.Tensor, kind: str = "rotation") -> torch.Tensor:
    """[B, 4, 4] (or [B, 3, 4]) camera-to-world -> [B, 16]."""
    if kind not in CAMERA_CONDITIONS:
        raise ValueError(f"unknown camera condition {kind!r}; choose one of {', '.join(CAMERA_CONDITIONS)}")
    if c2w.shape[-2] == 3:
        bottom = constant([0.0, 0.0, 0.0, 1.0], c2w.device, c2w.dtype).expand(c2w.shape[0], 1, 4)
        c2w = torch.cat([c2w, bottom], dim=-2)
    cam = c2w.float().clone()
    if kind == "rotation":
        t = cam[:, :3, 3]
        cam[:, :3, 3] = t / t.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    return cam.reshape(cam.shape[0], 16)


def _bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (x.dim() - 1)))


def predict_x0(x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """``sqrt(1/ᾱ_t) x_t - sqrt(1/ᾱ_t - 1) ε`` per sample (t: [B] integer timesteps)."""
    a = alphas_cumprod.to(device=x_t.device, dtype=torch.float32)[t]
    return _bcast((1.0 / a).sqrt(), x_t) * x_t.float() - _bcast((1.0 / a - 1.0).sqrt(), x_t) * eps.float()


def rescale_x0_std(x0_cfg: torch.Tensor, x0_cond: torch.Tensor, n_view: int, rescale: float) -> torch.Tensor:
    """MVDream's ``recon_std_rescale``: per object (n_view consecutive samples), factor = (std(x0_cond) + 1e-8) /
    (std(x0_cfg) + 1e-8) over all its views and channels; result ``r · x0_cfg · factor + (1 - r) · x0_cfg``."""
    shape = x0_cfg.shape
    a = x0_cfg.reshape(-1, n_view, *shape[1:])
    b = x0_cond.reshape(-1, n_view, *shape[1:])
    dims = list(range(1, a.dim()))
    factor = (b.std(dim=dims, keepdim=True) + 1e-8) / (a.std(dim=dims, keepdim=True) + 1e-8)
    adjusted = (a * factor).reshape(shape)
    return rescale * adjusted + (1.0 - rescale) * x0_cfg
