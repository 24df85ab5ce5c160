"""``neural-environment-map``: colour as a small MLP of the view direction (SH-encoded), with random solid-colour
augmentation while training and an optional fixed colour for evaluation."""

from __future__ import annotations

import random

import torch

import threestudio
from threestudio.models.background.base import BaseBackground
from threestudio.models.background.schema import NeuralEnvironmentMapBackgroundConfig
from threestudio.models.networks import get_encoding, get_mlp
from threestudio.utils.activations import get_color_activation


@threestudio.register("neural-environment-map")
class NeuralEnvironmentMapBackground(BaseBackground):
    Config = NeuralEnvironmentMapBackgroundConfig

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
