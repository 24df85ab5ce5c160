"""The Config dataclasses shared by the model families, in a module that imports no torch.

:class:`BaseObjectConfig` and :class:`BaseModuleConfig` (defined in :mod:`threestudio.utils.base_schema`) are the
Configs of :class:`threestudio.utils.base.BaseObject` and :class:`~threestudio.utils.base.BaseModule`;
:class:`EncodingConfig` and :class:`MLPConfig` configure :func:`threestudio.models.networks.get_encoding` and
``get_mlp`` (and keep that import path). Each family's Configs are in its package's ``schema.py``
(``threestudio/models/geometry/schema.py``, ...): config validation imports only those (the registry manifests say
where each Config is), never the modules they configure, so it does not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from threestudio.utils.base_schema import BaseModuleConfig, BaseObjectConfig
from threestudio.utils.config import bounded

__all__ = ["BaseObjectConfig", "BaseModuleConfig", "EncodingConfig", "MLPConfig"]


@dataclass
class EncodingConfig:
    otype: str = "HashGrid"
    # hash grids
    n_levels: int = bounded(16, ge=1)
    n_features_per_level: int = bounded(2, ge=1)
    log2_hashmap_size: int = bounded(19, ge=1, le=30)
    base_resolution: float = bounded(16.0, gt=0)
    per_level_scale: float = 1.447269237440378
    max_resolution: Optional[float] = None  # if set, per_level_scale is derived from it
    start_level: int = 8  # ProgressiveBandHashGrid: levels active at start_step
    start_step: int = 2000
    update_steps: int = 500  # one more level every update_steps
    backend: str = "auto"  # auto | triton | torch | tcnn
    dtype: str = "float32"  # table precision: float32 | float16
    # frequency
    n_frequencies: int = 6
    n_masking_step: int = 4000  # ProgressiveBandFrequency: all bands on after this many steps
    # spherical harmonics
    degree: int = 4
    # all
    include_xyz: bool = False


@dataclass
class MLPConfig:
    otype: str = "VanillaMLP"
    activation: str = "ReLU"
    output_activation: str = "none"
    n_neurons: int = bounded(64, ge=1)
    n_hidden_layers: int = bounded(1, ge=0)
    bias: bool = False
    sphere_init_radius: float = 0.5
    inside_out: bool = False
