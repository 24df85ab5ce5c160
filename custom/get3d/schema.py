"""The Config dataclasses of this extension's system, data module and generator, in a module that imports no
Lightning (nor torch): config validation reads them through the package's manifest without importing the modules they
configure."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional

from threestudio.data.schema import BaseDataModuleConfig
from threestudio.models.schema import BaseModuleConfig
from threestudio.systems.schema import BaseSystemConfig


@dataclass
class GET3DNadaConfig(BaseSystemConfig):
    checkpoint: str = ""  # official GET3D .pt (the recipes make it mandatory)
    checkpoint_key: str = "G_ema"
    generator: dict = field(default_factory=dict)
    source_text: str = "car"
    target_text: str = "police car"
    clip_models: List[str] = field(default_factory=lambda: ["openai/clip-vit-base-patch32",
                                                             "openai/clip-vit-base-patch16"])
    clip_models_weight: List[float] = field(default_factory=lambda: [1.0, 1.0])
    templates: Optional[List[str]] = None  # None: the ImageNet templates
    lambda_direction: float = 1.0
    geometry_clip: str = "none"  # none | silhouette | normal
    lambda_geometry: float = 1.0
    lambda_sdf_reg: float = 0.0  # GET3D's empty-shape |sdf| term
    lr: float = 0.002
    betas: List[float] = field(default_factory=lambda: [0.9, 0.99])
    auto_layer_k: int = 20
    auto_layer_iters: int = 1
    auto_layer_batch: int = 12
    auto_layer_lr: float = 0.01
    batch: int = 3
    n_views: int = 8
    sample_1st: int = 500
    iter_1st: int = 1
    n_select: int = 50
    iter_2nd: int = 3
    gradient_clip_threshold: float = -1.0
    render_resolution: int = 1024
    selection_resolution: int = 256
    seed: int = 0
    data_camera_mode: str = "shapenet_car"  # camera prior of evaluation renders (training: data module)
    truncation_psi: float = 0.7
    n_test_latents: int = 4
    test_frames: int = 24
    test_resolution: int = 512
    interp_frames: int = 30
    eval_samples: int = 8
    evaluate: bool = True
    n_export: int = 4
    export: dict = field(default_factory=lambda: {"texture_size": 1024, "formats": ["obj", "glb"],
                                                  "xatlas_subprocess": True})


@dataclass
class NadaDataModuleConfig(BaseDataModuleConfig):
    batch: int = 3
    n_views: int = 8
    auto_layer_batch: int = 12
    z_dim: int = 512
    data_camera_mode: str = "shapenet_car"


# ------------------------------------------------------------------------------------------ generator.py
@dataclass
class GET3DGeneratorConfig(BaseModuleConfig):
    z_dim: int = 512
    w_dim: int = 512
    mapping_layers: int = 8
    tri_plane_resolution: int = 256
    channel_base: int = 32768
    channel_max: int = 512
    feat_channel: int = 16
    mlp_latent_channel: int = 32
    n_implicit_layer: int = 1
    iso_surface: str = "dmtet"  # dmtet | flexicubes
    tet_res: int = 90  # our grid: tet_res / 2 cubes per side (90 -> 97,336 vertices, 546,750 tets)
    dmtet_scale: float = 1.0  # 1.0 car / motorbike, 0.8 chair / table
    deformation_multiplier: float = 1.0
    img_resolution: int = 1024
    fovy_deg: float = 2 * math.degrees(math.atan(16 / 35))
    camera_radius: float = 1.2
    fused_modconv: str = "inference_only"  # inference_only | always | never
    rasterize_backend: str = "auto"
