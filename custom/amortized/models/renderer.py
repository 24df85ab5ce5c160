"""``amortized-volsdf-renderer``: the shared VolSDF renderer of the amortized generators (``scaledreamer.md`` 2.4).

Rays of K prompts x V views (prompt-major rows) are grouped per prompt, so each prompt's field (the generator's
space cache) is queried once for all its views. Per ray, dense and static-shaped (no host sync):

1. proposal: ``n_proposal`` intervals on [near, far] (stratified jitter while training with ``randomized``), no grad:
   VolSDF density σ = (0.5 + 0.5 sign(s) expm1(-|s|/β)) / β with fixed β = 1 / ``inv_std``; α = clamp(σ Δt, 0, 1)
   (the authors' linear form), weights w_i = α_i Π_{j<i}(1 - α_j);
2. importance: ``n_importance`` intervals drawn from those weights by inverse CDF (stratified while training). With
   ``keep_proposal_samples`` (default) the proposal edges are merged in (NeuS-style), so the interior behind the
   surface band is still sampled and solid surfaces reach opacity 1 (importance samples alone cover only the
   band: opacity ~0.8-0.9 at β = 1/30);
3. the final samples are queried with gradients: sdf, features (colour through the material) and, when asked,
   normals by forward differences with ``normal_eps`` (3 extra queries per sample, for the eikonal loss and
   ``comp_normal``); composited, then ``comp_rgb = fg + bg (1 - opacity)`` with a background that may be
   text-conditioned.

Evaluation renders rays in chunks of ``eval_chunk_rays`` without gradients.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F

import threestudio
from threestudio.models.renderers.base import VolumeRenderer
from ..schema import AmortizedVolSDFRendererConfig


def volsdf_density(sdf: torch.Tensor, beta: float) -> torch.Tensor:
    """σ(s) = Ψ_β(-s) / β, Ψ_β the Laplace CDF of scale β (VolSDF)."""
    return (0.5 + 0.5 * torch.sign(sdf) * torch.expm1(-sdf.abs() / beta)) / beta


def weights_from_alpha(alpha: torch.Tensor) -> torch.Tensor:
    """[..., S] -> weights α_i Π_{j<i}(1 - α_j)."""
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1.0 - alpha[..., :-1]], dim=-1), dim=-1)
    return alpha * trans


def sample_pdf(bins: torch.Tensor, weights: torch.Tensor, n: int, deterministic: bool) -> torch.Tensor:
    """Inverse-CDF samples [..., n] from the piecewise-constant density ``weights`` [..., S] on ``bins`` [..., S+1]."""
    pdf = (weights + 1e-5) / (weights + 1e-5).sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[..., :1]), torch.cumsum(pdf, -1)], -1).clamp(max=1.0)
    if deterministic:
        u = (torch.arange(n, device=bins.device, dtype=bins.dtype) + 0.5) / n
        u = u.expand(*cdf.shape[:-1], n).contiguous()
    else:
        u = (torch.arange(n, device=bins.device, dtype=bins.dtype) + torch.rand(*cdf.shape[:-1], n,
                                                                                 device=bins.device)) / n
    idx = torch.searchsorted(cdf, u, right=True).clamp(1, cdf.shape[-1] - 1)
    c0, c1 = cdf.gather(-1, idx - 1), cdf.gather(-1, idx)
    b0, b1 = bins.gather(-1, idx - 1), bins.gather(-1, idx)
    t = ((u - c0) / (c1 - c0).clamp_min(1e-8)).clamp(0.0, 1.0)
    return b0 + t * (b1 - b0)


@threestudio.register("amortized-volsdf-renderer")
class AmortizedVolSDFRenderer(VolumeRenderer):
    Config = AmortizedVolSDFRendererConfig

    cfg: Config

    def _query(self, cache: Any, pts: torch.Tensor) -> Dict[str, torch.Tensor]:
        k = pts.shape[0]
        out = self.geometry.query(cache, pts.reshape(k, -1, 3))
        return {n: v.reshape(*pts.shape[:-1], v.shape[-1]) for n, v in out.items()}

    def render_rays(self, cache: Any, rays_o: torch.Tensor, rays_d: torch.Tensor, text: Optional[torch.Tensor],
                    need_normal: bool) -> Dict[str, torch.Tensor]:
        """rays [K, R, 3] -> per-ray outputs [K, R, C] (+ ``sdf_grad`` [K, R * S, 3] when ``need_normal``)."""
        c = self.cfg
        k, r, _ = rays_o.shape
        jitter = self.training and c.randomized
        edges = torch.linspace(c.near, c.far, c.n_proposal + 1, device=rays_o.device).expand(k, r, -1)
        with torch.no_grad():
            mids = 0.5 * (edges[..., 1:] + edges[..., :-1])
            if jitter:
                mids = mids + (torch.rand_like(mids) - 0.5) * (c.far - c.near) / c.n_proposal
            pts = rays_o[..., None, :] + rays_d[..., None, :] * mids[..., None]
            sdf = self._query(cache, pts)["sdf"][..., 0]
            alpha = (volsdf_density(sdf, 1.0 / c.inv_std) * (edges[..., 1:] - edges[..., :-1])).clamp(0.0, 1.0)
            fine = sample_pdf(edges, weights_from_alpha(alpha), c.n_importance + 1, deterministic=not jitter)
            if c.keep_proposal_samples:
                fine = torch.cat([fine, edges], dim=-1)
            fine, _ = torch.sort(fine, dim=-1)
        t = 0.5 * (fine[..., 1:] + fine[..., :-1])  # [K, R, S]
        delta = fine[..., 1:] - fine[..., :-1]
        pts = rays_o[..., None, :] + rays_d[..., None, :] * t[..., None]  # [K, R, S, 3]
        if need_normal:
            eps = c.normal_eps
            offsets = torch.eye(3, device=pts.device, dtype=pts.dtype) * eps
            all_pts = torch.cat([pts[..., None, :, :], pts[..., None, :, :] + offsets[:, None, :]], dim=-3)
            q = self._query(cache, all_pts.reshape(k, r, -1, 3))  # [K, R, 4 S, ...]
            sdf_all = q["sdf"][..., 0].reshape(k, r, 4, -1)
            sdf = sdf_all[:, :, 0]
            feats = q["features"].reshape(k, r, 4, t.shape[-1], -1)[:, :, 0]
            grad = torch.stack([(sdf_all[:, :, i + 1] - sdf) / eps for i in range(3)], dim=-1)  # [K, R, S, 3]
        else:
            q = self._query(cache, pts)
            sdf, feats = q["sdf"][..., 0], q["features"]
        alpha = (volsdf_density(sdf, 1.0 / c.inv_std) * delta).clamp(0.0, 1.0)
        w = weights_from_alpha(alpha)  # [K, R, S]
        rgb = self.material(features=feats)
        out = {"comp_rgb_fg": (w[..., None] * rgb).sum(-2), "opacity": w.sum(-1, keepdim=True),
               "depth": (w * t).sum(-1, keepdim=True), "weights": w}
        if need_normal:
            normal = F.normalize(grad, dim=-1)
            out["comp_normal"] = (w[..., None] * normal).sum(-2)
            out["sdf_grad"] = grad.reshape(k, -1, 3)
        bg_module = self.background
        bg = bg_module(rays_d, text) if getattr(bg_module, "text_conditioned", False) else bg_module(rays_d)
        out["comp_rgb_bg"] = bg
        out["comp_rgb"] = out["comp_rgb_fg"] + bg * (1.0 - out["opacity"])
        return out

    def forward(self, cache: Any, rays_o: torch.Tensor, rays_d: torch.Tensor, text: Optional[torch.Tensor] = None,
                n_view: int = 1, need_normal: bool = False) -> Dict[str, torch.Tensor]:
        """rays [K * n_view, H, W, 3] (prompt-major) -> images [K * n_view, H, W, C]."""
        b, h, w_, _ = rays_o.shape
        if b % n_view:
            raise ValueError(f"{b} ray images are not a whole number of prompts of n_view={n_view}")
        k = b // n_view
        ro, rd = rays_o.reshape(k, -1, 3), rays_d.reshape(k, -1, 3)
        if self.training:
            out = self.render_rays(cache, ro, rd, text, need_normal)
        else:
            parts = []
            with torch.no_grad():
                for s in range(0, ro.shape[1], self.cfg.eval_chunk_rays):
                    part = self.render_rays(cache, ro[:, s : s + self.cfg.eval_chunk_rays],
                                            rd[:, s : s + self.cfg.eval_chunk_rays], text, need_normal)
                    parts.append({n: v for n, v in part.items() if n not in ("sdf_grad", "weights")})
            out = {n: torch.cat([p[n] for p in parts], dim=1) for n in parts[0]}
        images = {n: v.reshape(b, h, w_, -1) for n, v in out.items() if n not in ("sdf_grad", "weights")}
        if "sdf_grad" in out:
            images["sdf_grad"] = out["sdf_grad"]
        if "weights" in out:
            images["weights"] = out["weights"]
        return images
