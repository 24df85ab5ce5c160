"""``gaussian-splatting-renderer``: renders a ``gaussian-splatting`` geometry into a batch of pinhole cameras.

It takes the batches of ``random-camera`` (``c2w``, ``fovy_rad``, ``height``, ``width``, ``rays_d``) and of the
``multiview``/``multiview-images`` data modules (``c2w``, ``intrinsics`` = (fx, fy, cx, cy), ``height``, ``width``,
``bg_color``), so it works for text-to-3D and for reconstruction. The splatting op is
:func:`threestudio.ops.splatting.rasterize_gaussians`: gsplat on CUDA (``backend: auto``), our PyTorch reference
elsewhere.

Background: ``bg_color`` from the batch when given ([3], [B, 3] or [B, H, W, 3]), else the system's background
module evaluated on the batch's ray directions. The material is not used (gaussians carry their colour).

Outputs: ``comp_rgb``, ``comp_rgb_fg`` (premultiplied), ``comp_rgb_bg`` [B, H, W, 3]; ``opacity``, ``depth``
(expected camera z), ``depth_accum`` [B, H, W, 1]; ``splat_meta`` (the rasterizer's meta: ``means2d`` with its
gradient for densification, ``radii``, ...).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

import threestudio
from threestudio.models.renderers.base import Rasterizer
from threestudio.models.renderers.schema import GaussianSplattingRendererConfig
from threestudio.ops.cameras import get_ray_directions
from threestudio.ops.splatting import BACKENDS, camera_matrices, intrinsics_from_fovy, rasterize_gaussians


@threestudio.register("gaussian-splatting-renderer")
class GaussianSplattingRenderer(Rasterizer):
    Config = GaussianSplattingRendererConfig

    cfg: Config

    def configure(self, geometry: Any = None, material: Any = None, background: Any = None) -> None:
        super().configure(geometry=geometry, material=material, background=background)
        if self.cfg.backend not in BACKENDS:
            raise ValueError(f"system.renderer.backend: unknown {self.cfg.backend!r} (use {', '.join(BACKENDS)}).")

    def forward(self, c2w: torch.Tensor, height: int, width: int, fovy_rad: Optional[torch.Tensor] = None,
                intrinsics: Optional[torch.Tensor] = None, bg_color: Optional[torch.Tensor] = None,
                rays_d: Optional[torch.Tensor] = None, **kwargs: Any) -> Dict[str, Any]:
        geo = self.geometry
        dev = geo.params["means"].device
        c2w = c2w.to(dev).float()
        if c2w.dim() == 2:
            c2w = c2w[None]
        B, H, W = c2w.shape[0], int(height), int(width)
        if intrinsics is None:
            if fovy_rad is None:
                raise KeyError("gaussian-splatting-renderer needs 'intrinsics' (fx, fy, cx, cy) or 'fovy_rad' in "
                               "the batch to build the cameras.")
            intrinsics = intrinsics_from_fovy(torch.as_tensor(fovy_rad), H, W)
        intrinsics = intrinsics.to(dev).float().reshape(-1, 4).expand(B, 4)
        viewmats, Ks = camera_matrices(c2w, intrinsics)
        args = geo.splat_args()
        out = rasterize_gaussians(
            args["means"], args["quats"], args["scales"], args["opacities"], args["colors"], viewmats, Ks, W, H,
            sh_degree=args["sh_degree"], near_plane=self.cfg.near_plane, far_plane=self.cfg.far_plane,
            eps2d=self.cfg.eps2d, antialiased=self.cfg.antialiased, backend=self.cfg.backend,
            packed=self.cfg.packed, absgrad=self.cfg.absgrad, tile_size=self.cfg.tile_size,
        )
        fg, alpha = out["rgb"], out["alpha"]
        bg = self._background(bg_color, rays_d, c2w, intrinsics, B, H, W, fg)
        return {
            "comp_rgb": fg + (1.0 - alpha) * bg, "comp_rgb_fg": fg, "comp_rgb_bg": bg.expand_as(fg),
            "opacity": alpha, "depth": out["depth"], "depth_accum": out["depth_accum"], "splat_meta": out["meta"],
        }

    def _background(self, bg_color: Optional[torch.Tensor], rays_d: Optional[torch.Tensor], c2w: torch.Tensor,
                    intrinsics: torch.Tensor, B: int, H: int, W: int, like: torch.Tensor) -> torch.Tensor:
        if bg_color is not None:
            bg = torch.as_tensor(bg_color).to(like)
            if bg.dim() == 1:
                return bg.reshape(1, 1, 1, -1)
            if bg.dim() == 2:
                return bg.reshape(B, 1, 1, -1)
            return bg.reshape(B, H, W, -1)
        if self.background is None:
            return torch.zeros(1, 1, 1, like.shape[-1], dtype=like.dtype, device=like.device)
        if rays_d is None or tuple(rays_d.shape[:3]) != (B, H, W):
            rays_d = self._ray_directions(c2w, intrinsics, H, W)
        return self.background(dirs=rays_d.to(like)).reshape(B, H, W, -1)

    @staticmethod
    def _ray_directions(c2w: torch.Tensor, intrinsics: torch.Tensor, H: int, W: int) -> torch.Tensor:
        dirs = []
        for b in range(c2w.shape[0]):
            fx, fy, cx, cy = (float(v) for v in intrinsics[b])
            d = get_ray_directions(H, W, (fx, fy), principal=(cx, cy), device=c2w.device)
            dirs.append(torch.nn.functional.normalize(d @ c2w[b, :3, :3].T, dim=-1))
        return torch.stack(dirs)
