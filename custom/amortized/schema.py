"""The Config dataclasses of this extension's system and data module, in a module that imports no Lightning (nor
torch): config validation reads them through the package's manifest without importing the modules they configure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from threestudio.data.schema import BaseDataModuleConfig
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
