"""``solid-color``: a fixed (or learned) colour; optional random solid colours while training."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Tuple

import torch
import torch.nn as nn

import threestudio
from threestudio.models.background.base import BaseBackground


@threestudio.register("solid-color")
class SolidColorBackground(BaseBackground):
    @dataclass
    class Config(BaseBackground.Config):
        n_output_dims: int = 3
        color: Tuple[float, float, float] = (1.0, 1.0, 1.0)
        learned: bool = False
        random_aug: bool = False
        random_aug_prob: float = 0.5

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
