"""Material base: turns geometry features (and view/light directions) into colour."""

from __future__ import annotations

from typing import Any, Dict

import torch

from threestudio.models.materials.schema import BaseMaterialConfig
from threestudio.utils.base import BaseModule


class BaseMaterial(BaseModule):
    __threestudio_family__ = "material"

    Config = BaseMaterialConfig

    cfg: Config
    requires_normal: bool = False
    requires_tangent: bool = False

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise NotImplementedError

    def export(self, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        return {}
