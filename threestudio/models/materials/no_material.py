"""``no-material``: features are the colour (through an activation, optionally an MLP)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch

import threestudio
from threestudio.models.materials.base import BaseMaterial
from threestudio.models.networks import MLPConfig, get_mlp
from threestudio.utils.activations import get_color_activation


@threestudio.register("no-material")
class NoMaterial(BaseMaterial):
    @dataclass
    class Config(BaseMaterial.Config):
        n_output_dims: int = 3
        color_activation: str = "sigmoid"  # sigmoid | scale_-11_01 | none
        input_feature_dims: Optional[int] = None  # set to use an MLP on the features
        mlp_network_config: MLPConfig = field(default_factory=MLPConfig)

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
