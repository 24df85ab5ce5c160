"""The Config dataclasses of the backgrounds, in a module that imports no torch (see :mod:`threestudio.models.schema`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple

from threestudio.models.schema import BaseModuleConfig, EncodingConfig, MLPConfig


def _sh_config() -> EncodingConfig:
    return EncodingConfig(otype="SphericalHarmonics", degree=3)


def _mlp_config() -> MLPConfig:
    return MLPConfig(n_neurons=16, n_hidden_layers=2)


# ------------------------------------------------------------------------------------------ base.py
@dataclass
class BaseBackgroundConfig(BaseModuleConfig):
    pass


# ------------------------------------------------------------------------------------------ neural_environment_map.py
@dataclass
class NeuralEnvironmentMapBackgroundConfig(BaseBackgroundConfig):
    n_output_dims: int = 3
    color_activation: str = "sigmoid"
    dir_encoding_config: EncodingConfig = field(default_factory=_sh_config)
    mlp_network_config: MLPConfig = field(default_factory=_mlp_config)
    random_aug: bool = False
    random_aug_prob: float = 0.5
    eval_color: Optional[Tuple[float, float, float]] = None


# ------------------------------------------------------------------------------------------ solid_color.py
@dataclass
class SolidColorBackgroundConfig(BaseBackgroundConfig):
    n_output_dims: int = 3
    color: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    learned: bool = False
    random_aug: bool = False
    random_aug_prob: float = 0.5
