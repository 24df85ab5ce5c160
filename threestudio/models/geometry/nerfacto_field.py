"""``nerfacto-field``: the density field of an unbounded captured scene (nerfstudio's nerfacto, our implementation).

Points are contracted (:mod:`threestudio.ops.contraction`: the scene box ``[-radius, radius]^3`` stays, everything
beyond is pulled into a shell around it) and encoded by a multiresolution hash grid over the contracted cube; a
small MLP gives the density and ``n_feature_dims`` features for the colour head (``neural-radiance-material``).

Density: ``density_scale * trunc_exp(raw)``; nerfacto starts from a nearly empty scene (``density_scale`` 0.01), so
that early samples do not all stop at the camera. Used with ``proposal-volume-renderer``, which also holds the
small proposal density fields (:class:`ProposalDensityField`, defined here).
"""

from __future__ import annotations

from typing import Dict

import torch
import torch.nn as nn

import threestudio
from threestudio.models.geometry.base import BaseImplicitGeometry
from threestudio.models.geometry.implicit_volume import trunc_exp
from threestudio.models.geometry.schema import NerfactoFieldConfig, _grid_config
from threestudio.models.networks import MLPConfig, get_encoding, get_mlp
from threestudio.ops.contraction import ORDERS, contract_to_unit_cube


@threestudio.register("nerfacto-field")
class NerfactoField(BaseImplicitGeometry):
    Config = NerfactoFieldConfig

    cfg: Config

    def configure(self) -> None:
        super().configure()
        if self.cfg.contraction not in ORDERS + ("none",):
            raise ValueError(f"system.geometry.contraction={self.cfg.contraction!r}: use inf, 2 or none.")
        self.encoding = get_encoding(3, self.cfg.pos_encoding_config)
        self.network = get_mlp(self.encoding.n_output_dims, 1 + self.cfg.n_feature_dims, self.cfg.mlp_network_config)

    def normalized(self, points: torch.Tensor) -> torch.Tensor:
        """World points [..., 3] -> the hash grid's [0, 1]^3 (contracted unless ``contraction: none``)."""
        if self.cfg.contraction == "none":
            return ((points - self.bbox[0]) / (self.bbox[1] - self.bbox[0])).clamp(0.0, 1.0)
        return contract_to_unit_cube(points, self.bbox, self.cfg.contraction)

    def _raw(self, points: torch.Tensor) -> torch.Tensor:
        x = self.normalized(points).reshape(-1, 3)
        return self.network(self.encoding(x)).reshape(*points.shape[:-1], -1)

    def forward_density(self, points: torch.Tensor) -> torch.Tensor:
        return self.cfg.density_scale * trunc_exp(self._raw(points)[..., :1])

    def forward(self, points: torch.Tensor, output_normal: bool = False) -> Dict[str, torch.Tensor]:
        h = self._raw(points)
        return {"density": self.cfg.density_scale * trunc_exp(h[..., :1]), "features": h[..., 1:]}

    def forward_field(self, points: torch.Tensor) -> torch.Tensor:
        return self.forward_density(points)[..., 0]


class ProposalDensityField(nn.Module):
    """A small density-only field for proposal sampling: contraction, a coarse hash grid, a tiny MLP."""

    def __init__(self, aabb: torch.Tensor, contraction: str, n_levels: int, max_resolution: int, log2_hashmap_size: int,
                 n_neurons: int, base_resolution: int = 16, density_scale: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("aabb", aabb.clone().float())
        self.contraction = contraction
        self.density_scale = density_scale
        self.encoding = get_encoding(3, _grid_config(n_levels=n_levels, n_features_per_level=2,
                                                     log2_hashmap_size=log2_hashmap_size,
                                                     base_resolution=base_resolution, max_resolution=max_resolution))
        self.network = get_mlp(self.encoding.n_output_dims, 1, MLPConfig(n_neurons=n_neurons, n_hidden_layers=1))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """Density [...] at world points [..., 3]."""
        if self.contraction == "none":
            x = ((points - self.aabb[0]) / (self.aabb[1] - self.aabb[0])).clamp(0.0, 1.0)
        else:
            x = contract_to_unit_cube(points, self.aabb, self.contraction)
        raw = self.network(self.encoding(x.reshape(-1, 3))).reshape(points.shape[:-1])
        return self.density_scale * trunc_exp(raw)
