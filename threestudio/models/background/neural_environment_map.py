"""``neural-environment-map``: colour as a small MLP of the view direction (SH-encoded), with random solid-colour
augmentation while training and an optional fixed colour for evaluation."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Optional, Tuple

import torch

import threestudio
from threestudio.models.background.base import BaseBackground
from threestudio.models.networks import EncodingConfig, MLPConfig, get_encoding, get_mlp
from threestudio.utils.activations import get_color_activation


def _sh_config() -> EncodingConfig:
    return EncodingConfig(otype="SphericalHarmonics", degree=3)


def _mlp_config() -> MLPConfig:
    return MLPConfig(n_neurons=16, n_hidden_layers=2)


@threestudio.register("neural-environment-map")
class NeuralEnvironmentMapBackground(BaseBackground):
    @dataclass
    class Config(BaseBackground.Config):
        n_output_dims: int = 3
        color_activation: str = "sigmoid"
        dir_encoding_config: EncodingConfig = field(default_factory=_sh_config)
        mlp_network_config: MLPConfig = field(default_factory=_mlp_config)
        random_aug: bool = False
        random_aug_prob: float = 0.5
        eval_color: Optional[Tuple[float, float, float]] = None

    cfg: Config

    def configure(self) -> None:
        self.encoding = get_encoding(3, self.cfg.dir_encoding_config)
        self.network = get_mlp(self.encoding.n_output_dims, self.cfg.n_output_dims, self.cfg.mlp_network_config)
        self.activation = get_color_activation(self.cfg.color_activation)

    def forward(self, dirs: torch.Tensor) -> torch.Tensor:
        if not self.training and self.cfg.eval_color is not None:
            return torch.as_tensor(self.cfg.eval_color, dtype=dirs.dtype, device=dirs.device).expand(
                *dirs.shape[:-1], -1)
        d = torch.nn.functional.normalize(dirs, dim=-1)
        color = self.activation(self.network(self.encoding(d.reshape(-1, 3)))).reshape(*dirs.shape[:-1], -1)
        if self.training and self.cfg.random_aug and random.random() < self.cfg.random_aug_prob:
            color = color * 0 + torch.rand(self.cfg.n_output_dims, device=dirs.device, dtype=dirs.dtype)
        return color
