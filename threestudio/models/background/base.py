"""Background base: colour for rays that leave the scene, as a function of direction."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from threestudio.utils.base import BaseModule


class BaseBackground(BaseModule):
    __threestudio_family__ = "background"

    @dataclass
    class Config(BaseModule.Config):
        pass

    cfg: Config

    def forward(self, dirs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
