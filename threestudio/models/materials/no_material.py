"""``no-material``: features are the colour (through an activation, optionally an MLP)."""

from __future__ import annotations

from typing import Any, Dict

import torch

import threestudio
from threestudio.models.materials.base import BaseMaterial
from threestudio.models.materials.schema import NoMaterialConfig
from threestudio.models.networks import get_mlp
from threestudio.utils.activations import get_color_activation


@threestudio.register("no-material")
class NoMaterial(BaseMaterial):
    Config = NoMaterialConfig

    cfg: Config

    def configure(self) -> None:
        self.activation = get_color_activation(self.cfg.color_activation)
        self.network = (get_mlp(self.cfg.input_feature_dims, self.cfg.n_output_dims, self.cfg.mlp_network_config)
                        if self.cfg.input_feature_dims is not None else None)

    def forward(self, features: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        x = self.network(features) if self.network is not None else features[..., : self.cfg.n_output_dims]
        return self.activation(x)

    def export(self, features: torch.Tensor, **kwargs: Any) -> Dict[str, torch.Tensor]:
        return {"albedo": self(features).clamp(0, 1)}
