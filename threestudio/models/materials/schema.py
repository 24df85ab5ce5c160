"""The Config dataclasses of the materials, in a module that imports no torch (see :mod:`threestudio.models.schema`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple

from threestudio.models.schema import BaseModuleConfig, EncodingConfig, MLPConfig


# ------------------------------------------------------------------------------------------ base.py
@dataclass
class BaseMaterialConfig(BaseModuleConfig):
    pass


# ------------------------------------------------------------------------------------------ diffuse_with_point_light.py
@dataclass
class DiffuseWithPointLightConfig(BaseMaterialConfig):
    ambient_light_color: Tuple[float, float, float] = (0.1, 0.1, 0.1)
    diffuse_light_color: Tuple[float, float, float] = (0.9, 0.9, 0.9)
    ambient_only_steps: int = 1000
    diffuse_prob: float = 0.75
    textureless_prob: float = 0.5
    albedo_activation: str = "sigmoid"
    soft_shading: bool = False


# ------------------------------------------------------------------------------------------ no_material.py
@dataclass
class NoMaterialConfig(BaseMaterialConfig):
    n_output_dims: int = 3
    color_activation: str = "sigmoid"  # sigmoid | scale_-11_01 | none
    input_feature_dims: Optional[int] = None  # set to use an MLP on the features
    mlp_network_config: MLPConfig = field(default_factory=MLPConfig)


# ------------------------------------------------------------------------------------------ neural_radiance.py
@dataclass
class NeuralRadianceMaterialConfig(BaseMaterialConfig):
    input_feature_dims: int = 15
    dir_encoding_config: EncodingConfig = field(
        default_factory=lambda: EncodingConfig(otype="SphericalHarmonics", degree=4))
    mlp_network_config: MLPConfig = field(default_factory=lambda: MLPConfig(n_neurons=64, n_hidden_layers=2))
    appearance_dim: int = 32  # per-image appearance code size (0: none)
    eval_appearance: str = "mean"  # mean | zero: the code of renders that are not of a training image
    color_activation: str = "sigmoid"
