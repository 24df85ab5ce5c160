"""``proposal-volume-renderer``: volume rendering of unbounded scenes with proposal sampling (mip-NeRF 360,
nerfacto), for captured photos.

Per ray, from ``near_plane`` to ``far_plane`` in nerfstudio's "uniform then inverse-depth" spacing
(:mod:`threestudio.ops.proposal`): a jittered uniform grid of ``num_proposal_samples[0]`` intervals is weighted by
the first proposal density field, ``num_proposal_samples[1]`` intervals are drawn from those weights and weighted by
the second, and ``num_samples`` final intervals drawn from those go through the scene's geometry and material. All
tensors are dense ``[rays, samples]``: no custom kernels, no host syncs, static shapes.

The proposal fields (``proposal_networks``, small hash grids over the same contracted space as the geometry) are
this module's own parameters. They learn from ``interlevel_loss`` (the system weights it with
``lambda_interlevel``) on the steps where they take gradients: every step for the first 10, then every
``proposal_update_every`` steps (a schedule; nerfacto ramps 1 -> 5 over 5000 steps); on other steps they run without
a graph. ``lambda_distortion`` weights mip-NeRF 360's distortion loss of the final weights.

Background (``background``): ``last_sample`` (nerfacto's: the last sample's colour fills whatever the rays leave
unoccluded; right for photos of unbounded scenes), ``batch`` (the batch's ``bg_color``, for RGBA/masked objects) or
``module`` (the system's background module). Appearance codes: the batch's ``image_index`` is passed to the
material while training.

Outputs (leading shape of the rays): ``comp_rgb``, ``comp_rgb_fg``, ``opacity``, ``depth`` (expected distance),
and while training the dense ``weights`` [R, K], ``s_edges`` [R, K + 1] and the proposal levels' ``prop_s_edges``,
``prop_weights`` (lists; empty when the proposals took no gradient this step) for the losses.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn as nn

import threestudio
from threestudio.models.geometry.nerfacto_field import ProposalDensityField
from threestudio.models.renderers.base import VolumeRenderer
from threestudio.models.renderers.schema import ProposalNetworkConfig, ProposalVolumeRendererConfig
from threestudio.ops import proposal as P
from threestudio.utils.config import parse_structured
from threestudio.utils.misc import C

BACKGROUNDS = ("last_sample", "batch", "module")
IMAGE_KEYS = ("comp_rgb", "comp_rgb_fg", "opacity", "depth")


@threestudio.register("proposal-volume-renderer")
class ProposalVolumeRenderer(VolumeRenderer):
    Config = ProposalVolumeRendererConfig

    cfg: Config

    def configure(self, geometry: Any = None, material: Any = None, background: Any = None) -> None:
        super().configure(geometry=geometry, material=material, background=background)
        c = self.cfg
        if c.background not in BACKGROUNDS:
            raise ValueError(f"system.renderer.background={c.background!r}: use one of {', '.join(BACKGROUNDS)}.")
        if c.spacing not in P.SPACINGS:
            raise ValueError(f"system.renderer.spacing={c.spacing!r}: use one of {', '.join(P.SPACINGS)}.")
        if len(c.proposal_networks) != len(c.num_proposal_samples):
            raise ValueError(f"system.renderer: {len(c.proposal_networks)} proposal_networks but "
                             f"{len(c.num_proposal_samples)} num_proposal_samples; give one count per network.")
        if not 0.0 < c.near_plane < c.far_plane:
            raise ValueError(f"system.renderer: need 0 < near_plane < far_plane, got {c.near_plane}, {c.far_plane}.")
        r = float(c.radius)
        aabb = torch.tensor([[-r] * 3, [r] * 3])
        nets = [parse_structured(ProposalNetworkConfig, p) for p in c.proposal_networks]
        self.proposal_fields = nn.ModuleList([
            ProposalDensityField(aabb, c.contraction, p.n_levels, p.max_resolution, p.log2_hashmap_size, p.n_neurons,
                                 p.base_resolution) for p in nets])
        self._step = 0
        self._prop_grad = True

    # ------------------------------------------------------------------ schedule
    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        self._step = global_step
        every = max(1, int(C(self.cfg.proposal_update_every, epoch, global_step)))
        # a function of the step alone (a resumed run makes the same choices), decided once per step
        self._prop_grad = global_step < 10 or global_step % every == 0

    # ------------------------------------------------------------------ rendering
    def forward(self, rays_o: torch.Tensor, rays_d: torch.Tensor, bg_color: Optional[torch.Tensor] = None,
                image_index: Optional[torch.Tensor] = None, **kwargs: Any) -> Dict[str, Any]:
        lead = rays_o.shape[:-1]
        o, d = rays_o.reshape(-1, 3), rays_d.reshape(-1, 3)
        bg = None
        if bg_color is not None:
            bg = bg_color.to(o).reshape(-1, 3) if bg_color.numel() > 3 else bg_color.to(o).reshape(1, 3).expand_as(o)
        idx = image_index.reshape(-1) if (image_index is not None and self.training) else None
        n = o.shape[0]
        if self.training or n <= self.cfg.eval_chunk_size:
            out = self._render(o, d, bg, idx)
        else:
            parts = []
            for i in range(0, n, self.cfg.eval_chunk_size):
                sl = slice(i, i + self.cfg.eval_chunk_size)
                chunk = self._render(o[sl], d[sl], None if bg is None else bg[sl], None)
                parts.append({k: chunk[k] for k in IMAGE_KEYS})
            out = {k: torch.cat([p[k] for p in parts], 0) for k in IMAGE_KEYS}
        for k in IMAGE_KEYS:
            out[k] = out[k].reshape(*lead, -1)
        return out

    def _render(self, o: torch.Tensor, d: torch.Tensor, bg: Optional[torch.Tensor],
                image_index: Optional[torch.Tensor]) -> Dict[str, Any]:
        c = self.cfg
        n = o.shape[0]
        d = torch.nn.functional.normalize(d, dim=-1)
        near = torch.full((n, 1), c.near_plane, device=o.device)
        far = torch.full((n, 1), c.far_plane, device=o.device)
        jitter = c.randomized and self.training
        prop_grad = self.training and self._prop_grad

        def density_fn(field: nn.Module) -> Any:
            def fn(t_mid: torch.Tensor) -> torch.Tensor:
                pts = o[:, None, :] + d[:, None, :] * t_mid[..., None]
                with torch.set_grad_enabled(prop_grad and torch.is_grad_enabled()):
                    return field(pts)
            return fn

        s, prop_s, prop_w = P.proposal_bins(
            [density_fn(f) for f in self.proposal_fields], c.num_proposal_samples, c.num_samples, n, near, far,
            c.spacing, jitter, o.device, step=self._step if self.training else 10**9, anneal_steps=c.anneal_steps,
            padding=c.histogram_padding)
        t = P.s_to_t(s, near, far, c.spacing)
        t_mid = 0.5 * (t[:, 1:] + t[:, :-1])
        K = t_mid.shape[1]
        pts = o[:, None, :] + d[:, None, :] * t_mid[..., None]
        geo = self.geometry(pts.reshape(-1, 3))
        sigma = geo["density"].reshape(n, K)
        dirs = d[:, None, :].expand(n, K, 3).reshape(-1, 3)
        sample_index = None if image_index is None else image_index[:, None].expand(n, K).reshape(-1)
        extra = {k: v for k, v in geo.items() if k not in ("density",)}
        rgb = self.material(viewdirs=dirs, image_index=sample_index, **extra).reshape(n, K, 3)
        w, _ = P.weights_from_density(sigma, t)
        acc = w.sum(-1, keepdim=True)
        fg = (w[..., None] * rgb).sum(1)
        depth = (w * t_mid).sum(-1, keepdim=True)
        if c.background == "last_sample":
            comp_bg = rgb[:, -1]
        elif c.background == "batch" and bg is not None:
            comp_bg = bg
        elif self.background is not None:
            comp_bg = self.background(dirs=d)
        else:
            comp_bg = torch.zeros_like(fg)
        out: Dict[str, Any] = {"comp_rgb": fg + (1.0 - acc) * comp_bg, "comp_rgb_fg": fg, "opacity": acc,
                               "depth": depth}
        if self.training:
            out.update({"weights": w, "s_edges": s, "prop_s_edges": prop_s if prop_grad else [],
                        "prop_weights": prop_w if prop_grad else []})
        return out
