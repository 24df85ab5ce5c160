"""Geometry bases (threestudio-compatible names): implicit fields and explicit meshes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Optional, Union

import torch

from threestudio.models.geometry.schema import (
    BaseExplicitGeometryConfig,
    BaseGeometryConfig,
    BaseImplicitGeometryConfig,
)
from threestudio.utils.base import BaseModule

if TYPE_CHECKING:  # pragma: no cover
    from threestudio.models.mesh import Mesh


def contract_to_unisphere(x: torch.Tensor, bbox: torch.Tensor, unbounded: bool = False) -> torch.Tensor:
    """Map points in ``bbox`` [2, 3] to [0, 1]^3; with ``unbounded``, contract the outside (mip-NeRF 360 style)
    so that all of R^3 lands in [0, 1]^3 (|x| <= 1 maps linearly to the inner half)."""
    if unbounded:
        x = (x - bbox[0]) / (bbox[1] - bbox[0]) * 2 - 1  # [-1, 1] inside the box
        mag = x.norm(dim=-1, keepdim=True)
        mask = (mag > 1).expand_as(x)
        x = torch.where(mask, (2 - 1 / mag.clamp_min(1e-12)) * (x / mag.clamp_min(1e-12)), x)
        return x / 4 + 0.5  # [-2, 2] -> [0, 1]
    return (x - bbox[0]) / (bbox[1] - bbox[0])


class BaseGeometry(BaseModule):
    __threestudio_family__ = "geometry"

    Config = BaseGeometryConfig

    cfg: Config

    @staticmethod
    def create_from(other: "BaseGeometry", cfg: Optional[Union[dict, Any]] = None, **kwargs: Any) -> "BaseGeometry":
        raise TypeError(f"Cannot create this geometry from {other.__class__.__name__}: conversion not supported.")

    def export(self, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        return {}

    def register_bbox(self, radius: float) -> None:
        """The scene box [[-r, -r, -r], [r, r, r]] as a buffer (moves with the module, saved in checkpoints)."""
        self.bbox: torch.Tensor
        self.register_buffer("bbox", torch.as_tensor([[-radius] * 3, [radius] * 3], dtype=torch.float32))


def central_difference_grad(fn: Any, points: torch.Tensor, eps: float) -> torch.Tensor:
    """Gradient [..., 3] of a scalar field ``fn`` (points [..., K, 3] -> [..., K, 1]) by central differences."""
    offsets = torch.tensor([[eps, 0, 0], [-eps, 0, 0], [0, eps, 0], [0, -eps, 0], [0, 0, eps], [0, 0, -eps]],
                           dtype=points.dtype, device=points.device)
    d = fn(points[..., None, :] + offsets)[..., 0]  # [..., 6]
    return torch.stack([d[..., 0] - d[..., 1], d[..., 2] - d[..., 3], d[..., 4] - d[..., 5]], dim=-1) / (2 * eps)


class BaseImplicitGeometry(BaseGeometry):
    Config = BaseImplicitGeometryConfig

    cfg: Config

    def configure(self) -> None:
        self.register_bbox(self.cfg.radius)

    # the isosurface convention of forward_field: "above" (density: inside = field > threshold) or "below" (SDF)
    field_inside: str = "above"

    def forward(self, points: torch.Tensor, output_normal: bool = False) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward_field(self, points: torch.Tensor) -> torch.Tensor:
        """The scalar field [N] whose ``isosurface_threshold`` level set is the surface."""
        raise NotImplementedError

    def isosurface_threshold_value(self, field_grid: torch.Tensor) -> float:
        thr = self.cfg.isosurface_threshold
        if isinstance(thr, str):
            if thr != "auto":
                raise ValueError(f"isosurface_threshold must be a number or 'auto', got {thr!r}")
            pos = field_grid[field_grid > 0]
            if pos.numel() == 0:
                raise ValueError("isosurface_threshold 'auto': the field has no positive values (empty scene?)")
            return float(pos.mean())
        return float(thr)

    @torch.no_grad()
    def isosurface(self) -> "Mesh":
        """Marching cubes over ``bbox`` at ``isosurface_resolution``; with ``isosurface_coarse_to_fine``, a second
        pass over the tightened bounds of the first mesh (10% margin). Removes small floaters if configured."""
        from threestudio.models.mesh import Mesh
        from threestudio.ops.marching_cubes import eval_grid, marching_cubes

        res = self.cfg.isosurface_resolution
        bbox = self.bbox.detach().cpu()
        chunk = self.cfg.isosurface_chunk or (1 << 18)
        grid = eval_grid(self.forward_field, bbox, res, chunk=chunk, device=self.device)
        threshold = self.isosurface_threshold_value(grid)
        v, f = marching_cubes(grid, threshold, bbox, inside=self.field_inside)
        if self.cfg.isosurface_coarse_to_fine and v.shape[0] > 0:
            lo, hi = v.min(0).values, v.max(0).values
            margin = (hi - lo) * 0.1 + (bbox[1] - bbox[0]) / res
            tight = torch.stack([torch.maximum(lo - margin, bbox[0]), torch.minimum(hi + margin, bbox[1])])
            grid = eval_grid(self.forward_field, tight, res, chunk=chunk, device=self.device)
            v, f = marching_cubes(grid, threshold, tight, inside=self.field_inside)
        mesh = Mesh(v.to(self.device), f.to(self.device))
        if self.cfg.isosurface_remove_outliers:
            mesh = mesh.remove_outliers(self.cfg.isosurface_outlier_n_faces_threshold)
        return mesh


class BaseExplicitGeometry(BaseGeometry):
    Config = BaseExplicitGeometryConfig

    cfg: Config

    def configure(self) -> None:
        self.register_bbox(self.cfg.radius)



