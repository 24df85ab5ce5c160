"""``solid-color``: a fixed (or learned) colour; optional random solid colours while training."""

from __future__ import annotations

import random

import torch
import torch.nn as nn

import threestudio
from threestudio.models.background.base import BaseBackground
from threestudio.models.background.schema import SolidColorBackgroundConfig


@threestudio.register("solid-color")
class SolidColorBackground(BaseBackground):
    Config = SolidColorBackgroundConfig

    cfg: Config

    def configure(self) -> None:
        color = torch.as_tensor(self.cfg.color, dtype=torch.float32)
        if self.cfg.learned:
            self.env_color = nn.Parameter(color)
        else:
            self.register_buffer("env_color", color)

    def forward(self, dirs: torch.Tensor) -> torch.Tensor:
        color = self.env_color.to(dirs.dtype).expand(*dirs.shape[:-1], -1)
        if self.training and self.cfg.random_aug and random.random() < self.cfg.random_aug_prob:
            color = torch.rand(3, device=dirs.device, dtype=dirs.dtype).expand(*dirs.shape[:-1], -1)
        return color
