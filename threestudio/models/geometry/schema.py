"""The Config dataclasses of the geometry classes, in a module that imports no torch
(see :mod:`threestudio.models.schema`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Tuple

from threestudio.models.schema import BaseModuleConfig, EncodingConfig, MLPConfig
from threestudio.utils.config import bounded


def _grid_config(**kw: Any) -> EncodingConfig:
    return EncodingConfig(otype="HashGrid", **kw)


# ------------------------------------------------------------------------------------------ base.py
@dataclass
class BaseGeometryConfig(BaseModuleConfig):
    pass


@dataclass
class BaseImplicitGeometryConfig(BaseGeometryConfig):
    radius: float = bounded(1.0, gt=0)
    isosurface: bool = True
    isosurface_method: str = "mc"
    isosurface_resolution: int = bounded(128, ge=4)
    isosurface_threshold: Any = 0.0
    isosurface_chunk: int = 0
    isosurface_coarse_to_fine: bool = True
    isosurface_deformable_grid: bool = False
    isosurface_remove_outliers: bool = True
    isosurface_outlier_n_faces_threshold: float = 0.01


@dataclass
class BaseExplicitGeometryConfig(BaseGeometryConfig):
    radius: float = 1.0


# ------------------------------------------------------------------------------------------ nerfacto_field.py
@dataclass
class NerfactoFieldConfig(BaseImplicitGeometryConfig):
    radius: float = 1.0  # the box [-r, r]^3 kept as it is; the rest of space is contracted around it
    contraction: str = "inf"  # inf (a cube, nerfacto) | 2 (a ball, mip-NeRF 360) | none (bounded scene)
    n_feature_dims: int = 15  # features for the colour head
    density_scale: float = 0.01  # density = density_scale * trunc_exp(raw)
    pos_encoding_config: EncodingConfig = field(default_factory=lambda: _grid_config(
        n_levels=16, n_features_per_level=2, log2_hashmap_size=19, base_resolution=16, max_resolution=2048))
    mlp_network_config: MLPConfig = field(default_factory=lambda: MLPConfig(n_neurons=64, n_hidden_layers=1))
    isosurface_threshold: Any = 10.0


# ------------------------------------------------------------------------------------------ gaussian_splatting.py
@dataclass
class GaussianSplattingConfig(BaseGeometryConfig):
    radius: float = bounded(1.0, gt=0)  # scene bound (bbox [-r, r]^3); also the default scene scale for densification
    color_mode: str = "sh"  # sh (spherical harmonics, view-dependent) | rgb (one colour per gaussian)
    sh_degree: int = 3  # 0..3 (color_mode sh)
    sh_degree_interval: int = 1000  # one more SH band every this many steps (0: all bands from step 0)
    init_type: str = "random"  # random | points | mesh | ply
    init_path: Optional[str] = None  # points: PLY point cloud; mesh: OBJ/GLB/PLY mesh; ply: 3DGS PLY
    init_num_points: int = bounded(5000, ge=1)  # random / mesh / scene without points: how many gaussians
    init_radius: float = 0.5  # random: ball radius
    init_extent: float = 3.0  # scene without points: cube half side, in units of the cameras' extent
    init_color: Optional[Tuple[float, float, float]] = None  # colour when the source has none (None: random)
    init_opacity: float = 0.1
    init_scale: Optional[float] = None  # initial scale (None: mean distance to the 3 nearest neighbours)
    init_scale_multiplier: float = 1.0
    init_seed: int = 0


# ------------------------------------------------------------------------------------------ custom_mesh.py
@dataclass
class CustomMeshConfig(BaseExplicitGeometryConfig):
    mesh_path: Optional[str] = None
    shape_init: Optional[str] = None  # threestudio's form: "mesh:<path>"
    shape_init_params: Optional[float] = 0.9  # farthest vertex at this distance (None: keep the file's scale)
    shape_init_mesh_up: str = "+z"
    shape_init_mesh_front: str = "+x"
    texture: str = "auto"  # auto | mesh | field
    n_input_dims: int = 3
    n_feature_dims: int = 3
    pos_encoding_config: EncodingConfig = field(default_factory=EncodingConfig)
    mlp_network_config: MLPConfig = field(default_factory=MLPConfig)


# ------------------------------------------------------------------------------------------ implicit_sdf.py
@dataclass
class ImplicitSDFConfig(BaseImplicitGeometryConfig):
    n_input_dims: int = 3
    n_feature_dims: int = 3
    pos_encoding_config: EncodingConfig = field(default_factory=EncodingConfig)
    mlp_network_config: MLPConfig = field(default_factory=MLPConfig)
    normal_type: str = "finite_difference"  # finite_difference | analytic
    finite_difference_normal_eps: float = 0.01
    sdf_bias: Any = "sphere"  # sphere | ellipsoid | a number
    sdf_bias_params: Any = 0.5  # the sphere radius, or three ellipsoid radii
    beta_init: float = 0.1  # VolSDF beta (learnable)
    beta_min: float = 1e-4
    isosurface_threshold: Any = 0.0


# ------------------------------------------------------------------------------------------ implicit_volume.py
@dataclass
class ImplicitVolumeConfig(BaseImplicitGeometryConfig):
    n_input_dims: int = 3
    n_feature_dims: int = 3
    density_activation: str = "softplus"
    density_bias: Any = "blob_magic3d"  # blob_magic3d | blob_dreamfusion | a number
    density_blob_scale: float = 10.0
    density_blob_std: float = 0.5
    pos_encoding_config: EncodingConfig = field(default_factory=EncodingConfig)
    mlp_network_config: MLPConfig = field(default_factory=MLPConfig)
    normal_type: Optional[str] = "finite_difference"  # finite_difference | analytic | none
    finite_difference_normal_eps: float = 0.01
    unbounded: bool = False
    isosurface_threshold: Any = 25.0  # a density, or "auto"


# ------------------------------------------------------------------------------------------ tetrahedra_sdf_grid.py
@dataclass
class TetrahedraSDFGridConfig(BaseExplicitGeometryConfig):
    isosurface: str = "dmtet"  # dmtet | flexicubes
    isosurface_resolution: int = bounded(128, ge=4)  # 32 / 64 / 128 (any even number): R / 2 cubes per side
    isosurface_deformable_grid: bool = True
    deformation_scale: float = 0.5  # max vertex offset per axis, as a fraction of the cube edge
    flexicubes_weight_scale: float = 0.5  # FlexiCubes weights stay within 1 +- this (gamma 0.5 +- half)
    isosurface_remove_outliers: bool = False
    isosurface_outlier_n_faces_threshold: float = 0.01
    n_input_dims: int = 3
    n_feature_dims: int = 3
    pos_encoding_config: EncodingConfig = field(default_factory=EncodingConfig)
    mlp_network_config: MLPConfig = field(default_factory=MLPConfig)
    shape_init: Optional[str] = "sphere"  # sphere | ellipsoid | none (all outside) before any conversion
    shape_init_params: Any = 0.5  # the sphere radius, or three ellipsoid radii
    force_shape_init: bool = False  # accepted for threestudio recipes; the shape is initialised at build time
    geometry_only: bool = False  # no texture field (features come from elsewhere)
    fix_geometry: bool = False  # freeze the SDF and offsets (texture-only stages)
    tet_cache_dir: Optional[str] = None  # where grids are cached (default: load/tets under the repository)
