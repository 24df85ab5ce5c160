"""Geometry bases (threestudio-compatible names): implicit fields and explicit meshes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Union

import torch

from threestudio.utils.base import BaseModule


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

    @dataclass
    class Config(BaseModule.Config):
        pass

    cfg: Config

    @staticmethod
    def create_from(other: "BaseGeometry", cfg: Optional[Union[dict, Any]] = None, **kwargs: Any) -> "BaseGeometry":
        raise TypeError(f"Cannot create this geometry from {other.__class__.__name__}: conversion not supported.")

    def export(self, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        return {}


class BaseImplicitGeometry(BaseGeometry):
    @dataclass
    class Config(BaseGeometry.Config):
        radius: float = 1.0
        isosurface: bool = True
        isosurface_method: str = "mc"
        isosurface_resolution: int = 128
        isosurface_threshold: Any = 0.0
        isosurface_chunk: int = 0
        isosurface_coarse_to_fine: bool = True
        isosurface_deformable_grid: bool = False
        isosurface_remove_outliers: bool = True
        isosurface_outlier_n_faces_threshold: float = 0.01

    cfg: Config

    def configure(self) -> None:
        self.bbox: torch.Tensor
        self.register_buffer(
            "bbox",
            torch.as_tensor([[-self.cfg.radius] * 3, [self.cfg.radius] * 3], dtype=torch.float32),
        )

    def forward(self, points: torch.Tensor, output_normal: bool = False) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward_field(self, points: torch.Tensor) -> Any:
        raise NotImplementedError

    def forward_level(self, field: torch.Tensor, threshold: float) -> torch.Tensor:
        raise NotImplementedError


class BaseExplicitGeometry(BaseGeometry):
    @dataclass
    class Config(BaseGeometry.Config):
        radius: float = 1.0

    cfg: Config

    def configure(self) -> None:
        self.bbox: torch.Tensor
        self.register_buffer(
            "bbox",
            torch.as_tensor([[-self.cfg.radius] * 3, [self.cfg.radius] * 3], dtype=torch.float32),
        )



