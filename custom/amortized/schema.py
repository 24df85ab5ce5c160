"""The Config dataclasses of this extension's system, data module and models, in a module that imports no Lightning (nor
torch): config validation reads them through the package's manifest without importing the modules they configure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from threestudio.data.schema import BaseDataModuleConfig
from threestudio.models.background.schema import BaseBackgroundConfig
from threestudio.models.geometry.schema import BaseGeometryConfig
from threestudio.models.prompt_processors.schema import PromptProcessorConfig
from threestudio.models.renderers.schema import RendererConfig
from threestudio.models.schema import EncodingConfig
from threestudio.systems.schema import DreamFusionConfig


@dataclass
class MultiPromptGeneratorConfig(DreamFusionConfig):
    geometry_type: str = "3dconv-net"
    material_type: str = "no-material"
    background_type: str = "neural-environment-map"
    renderer_type: str = "amortized-volsdf-renderer"
    guidance_type: str = "stable-diffusion-asd-guidance"
    prompt_processor_type: str = "amortized-prompt-library-processor"
    val_video_fps: int = 15
    eval_normals: bool = True


@dataclass
class CameraSettings:
    height: int = 64
    width: int = 64
    n_view: int = 1
    elevation_range: Tuple[float, float] = (-10.0, 45.0)
    azimuth_range: Tuple[float, float] = (-180.0, 180.0)
    camera_distance_range: Tuple[float, float] = (1.0, 1.5)
    fovy_range: Tuple[float, float] = (40.0, 70.0)
    relative_radius: bool = False
    eval_height: int = 512
    eval_width: int = 512
    n_val_views: int = 30
    n_test_views: int = 120
    eval_elevation_deg: float = 15.0
    eval_camera_distance: float = 1.5
    eval_fovy_deg: float = 70.0


@dataclass
class PromptLibraryCameraDataModuleConfig(BaseDataModuleConfig, CameraSettings):
    prompt_library: str = "???"  # recipes interpolate ${system.prompt_processor.prompt_library}
    prompts_per_step: int = 1  # k prompts per rank per step (each with n_view views)
    noise_dim: int = 64  # latent z per prompt (used by 3dconv-net)
    test_mode: str = "split"  # split | interpolate
    interp_source: Optional[str] = None
    interp_target: Optional[str] = None
    n_interp: int = 8
    rank: Optional[int] = None  # None: from torch.distributed / the launcher (set both to simulate ranks)
    world_size: Optional[int] = None
    eval_noise_seed: int = 0


def _channels() -> List[int]:
    return [512, 512, 512, 256, 128, 64]


def _grid() -> EncodingConfig:
    return EncodingConfig(otype="HashGrid", n_levels=16, n_features_per_level=2, log2_hashmap_size=19,
                          base_resolution=16, per_level_scale=1.447269237440378)


def _dir_grid() -> EncodingConfig:
    return EncodingConfig(otype="HashGrid", n_levels=16, n_features_per_level=2, log2_hashmap_size=19,
                          base_resolution=16, per_level_scale=1.0)


# ------------------------------------------------------------------------------------------ prompt_processor.py
@dataclass
class PromptLibraryProcessorConfig(PromptProcessorConfig):
    prompt_library: str = "???"
    encoder_type: str = "stable-diffusion-prompt-processor"  # whose text encoder (and cache) to use
    encoder_config: dict = field(default_factory=dict)  # extra settings of that processor (e.g. tokenizer path)
    store_dir: Optional[str] = None  # default: $THREESTUDIO_CACHE/prompt_stores
    tokens: bool = True  # store token embeddings [L, D] (UNet conditioning, triplane cross-attention)
    view_dependent: Optional[bool] = None  # store side/front/back/overhead variants; null: as the guidance needs
    encode_batch_size: int = 64


# ------------------------------------------------------------------------------------------ models/base.py
@dataclass
class AmortizedGeneratorConfig(BaseGeometryConfig):
    radius: float = 2.0  # the scene box [-radius, radius]^3
    sphere_bias: float = 0.8  # sdf = net + |x| - sphere_bias
    text_dim: int = 1024
    n_feature_dims: int = 3


# ------------------------------------------------------------------------------------------ models/conv3d_net.py
@dataclass
class Conv3DNetConfig(AmortizedGeneratorConfig):
    z_dim: int = 64
    w_dim: int = 256
    n_mapping_layers: int = 2
    resolution: int = 128  # output voxels per side (4 * 2^n)
    channels: List[int] = field(default_factory=_channels)  # per resolution 4, 8, ..., resolution
    channel_multiplier: int = 1  # scales the channels of resolutions >= 32 (CP100k recipe: 2)
    out_channels: int = 32
    bias_volume_max_res: int = 64  # bias volumes in the blocks at 8^3 .. this resolution (never at 4^3)
    head_hidden: int = 64
    noise_mode: str = "random"  # training; evaluation uses "const"
    eval_noise_mode: str = "const"


# ------------------------------------------------------------------------------------------ models/hyper_ingp.py
@dataclass
class HyperINGPConfig(AmortizedGeneratorConfig):
    sphere_bias: float = 0.5
    pos_encoding_config: EncodingConfig = field(default_factory=_grid)
    hyper_dim: int = 64
    head_hidden: int = 64


# ------------------------------------------------------------------------------------------ models/renderer.py
@dataclass
class AmortizedVolSDFRendererConfig(RendererConfig):
    near: float = 0.1
    far: float = 4.0
    n_proposal: int = 128
    n_importance: int = 64
    inv_std: float = 30.0  # 1 / β, fixed
    normal_eps: float = 0.01
    randomized: bool = True
    keep_proposal_samples: bool = True  # final samples = importance + proposal edges (NeuS-style)
    eval_chunk_rays: int = 16384


# ------------------------------------------------------------------------------------------ models/background.py
@dataclass
class TextEnvironmentMapConfig(BaseBackgroundConfig):
    text_dim: int = 1024
    dir_encoding_config: EncodingConfig = field(default_factory=_dir_grid)
    hyper_dim: int = 64
    hidden: int = 64
    n_output_dims: int = 3
    color_activation: str = "sigmoid"
    random_aug: bool = True
    random_aug_prob: float = 0.2
    eval_color: Optional[Tuple[float, float, float]] = None


# --------------------------------------------------------------------------------------- models/triplane_transformer.py
@dataclass
class TriplaneTransformerConfig(AmortizedGeneratorConfig):
    width: int = 768
    n_blocks: int = 12
    n_heads: int = 16
    plane_tokens: int = 32  # P: tokens per plane side (planes are 2P x 2P)
    plane_channels: int = 32
    head_hidden: int = 64
