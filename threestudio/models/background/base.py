"""Background base: colour for rays that leave the scene, as a function of direction."""

from __future__ import annotations


import torch

from threestudio.models.background.schema import BaseBackgroundConfig
from threestudio.utils.base import BaseModule


class BaseBackground(BaseModule):
    __threestudio_family__ = "background"

    Config = BaseBackgroundConfig

    cfg: Config

    def forward(self, dirs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
