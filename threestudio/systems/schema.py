"""The Config dataclasses of the built-in systems and objectives, in a module that imports no Lightning (nor torch).

Config validation (:func:`threestudio.utils.config.validate_config`) reads a system's Config through
:func:`threestudio.registry.find_config`, which imports only this module; the system classes, which derive from
``pl.LightningModule``, set ``Config = <Class>Config`` and are imported when a run builds them. Subclass these (or
``TheSystem.Config``, the same class) for a system of your own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from threestudio.utils.schedule import Schedule


# ------------------------------------------------------------------------------------------ base.py
@dataclass
class BaseSystemConfig:
    loggers: dict = field(default_factory=dict)
    loss: Dict[str, Schedule] = field(default_factory=dict)  # lambda_<term>: a weight (checked at load)
    optimizer: dict = field(default_factory=dict)
    scheduler: Optional[dict] = None
    weights: Optional[str] = None
    weights_ignore_modules: Optional[List[str]] = None
    cleanup_after_validation_step: bool = False
    cleanup_after_test_step: bool = False


@dataclass
class BaseLift3DSystemConfig(BaseSystemConfig):
    geometry_type: str = ""
    geometry: dict = field(default_factory=dict)
    geometry_convert_from: Optional[str] = None
    geometry_convert_inherit_texture: bool = False
    geometry_convert_override: dict = field(default_factory=dict)
    material_type: str = ""
    material: dict = field(default_factory=dict)
    background_type: str = ""
    background: dict = field(default_factory=dict)
    renderer_type: str = ""
    renderer: dict = field(default_factory=dict)
    guidance_type: str = ""
    guidance: dict = field(default_factory=dict)
    prompt_processor_type: str = ""
    prompt_processor: dict = field(default_factory=dict)
    exporter_type: str = "mesh-exporter"
    exporter: dict = field(default_factory=dict)
    export_after_train: bool = False  # --train also runs the export (after the test pass)


# ------------------------------------------------------------------------------------------ text-to-3D
@dataclass
class DreamFusionConfig(BaseLift3DSystemConfig):
    guidance_type: str = "stable-diffusion-guidance"
    prompt_processor_type: str = "stable-diffusion-prompt-processor"
    test_video_fps: int = 30
    release_guidance_after_fit: bool = True  # free UNet/VAE memory before the test pass that follows --train


@dataclass
class ASDSystemConfig(DreamFusionConfig):
    guidance_type: str = "stable-diffusion-asd-guidance"
    prompt_processor_type: str = "stable-diffusion-prompt-processor"


@dataclass
class Magic3DConfig(DreamFusionConfig):
    refinement: bool = False


# ------------------------------------------------------------------------------------------ reconstruction
@dataclass
class TurntableConfig:
    n_views: int = 60
    fps: int = 30
    elevation_deg: Optional[float] = None  # None: the mean elevation of the test cameras
    distance: Optional[float] = None  # None: their mean distance from the origin
    fovy_deg: Optional[float] = None  # None: their mean vertical field of view


@dataclass
class LPIPSConfig:
    backbone_weights: Optional[str] = None  # torchvision's alexnet-owt-7be5be79.pth (or vgg16-397923af.pth)
    linear_weights: Optional[str] = None  # the lpips package's weights/v0.1/alex.pth (or vgg.pth)
    net: str = "alex"  # alex | vgg


@dataclass
class ReconstructionConfig(BaseLift3DSystemConfig):
    turntable: TurntableConfig = field(default_factory=TurntableConfig)
    exporter_type: str = "mesh-exporter"
    # LPIPS on the held-out views, reported only when both weight files are given (no download)
    lpips: LPIPSConfig = field(default_factory=LPIPSConfig)


@dataclass
class NeRFReconstructionConfig(ReconstructionConfig):
    pass


@dataclass
class GaussianLRConfig:
    means: float = 1.6e-4  # times the scene scale
    means_final: float = 1.6e-6  # reached at means_decay_steps (exponential decay; equal to means: constant)
    means_decay_steps: int = 30000
    scales: float = 5e-3
    quats: float = 1e-3
    opacities: float = 5e-2
    sh0: float = 2.5e-3
    shN: float = 1.25e-4  # sh0 / 20
    colors: float = 1e-2  # color_mode rgb (logits)
    eps: float = 1e-15


@dataclass
class DensifyConfig:
    strategy: str = "default"  # default | mcmc | none
    backend: str = "auto"  # auto (gsplat on CUDA, else ours) | gsplat | torch (ours); mcmc needs gsplat
    # the scene size the thresholds (grow_scale3d, prune_scale3d) and the means' learning rate are relative to: a
    # number, None (the geometry's radius), or "cameras" (1.1 x the largest distance of a training camera from their
    # centre, as gsplat's trainer; for captures)
    scene_scale: Any = None
    refine_start_iter: int = 500
    refine_stop_iter: int = 15000
    refine_every: int = 100
    reset_every: int = 3000  # default strategy: opacity reset period
    pause_refine_after_reset: int = 0
    prune_opa: float = 0.005
    grow_grad2d: float = 0.0002
    grow_scale3d: float = 0.01
    prune_scale3d: float = 0.1
    absgrad: bool = False  # needs renderer.absgrad (gsplat)
    revised_opacity: bool = False
    cap_max: int = 1_000_000  # mcmc
    noise_lr: float = 5e5  # mcmc
    min_opacity: float = 0.005  # mcmc


@dataclass
class GaussianSplattingSystemConfig(ReconstructionConfig):
    lr: GaussianLRConfig = field(default_factory=GaussianLRConfig)
    densify: DensifyConfig = field(default_factory=DensifyConfig)
    turntable: TurntableConfig = field(default_factory=TurntableConfig)
    exporter_type: str = ""  # export writes the 3DGS PLY and a turntable video (no mesh exporter)
    export_ply: bool = True
    export_turntable: bool = True
    export_turntable_views: int = 60  # frames of the exported turntable (turntable.* set its camera)
    eval_camera_batch: int = 8  # turntable frames rendered per call


# ------------------------------------------------------------------------------------------ objectives/base.py
@dataclass
class ObjectiveConfig:
    pass


# ------------------------------------------------------------------------------------- objectives/score_distillation.py
@dataclass
class ScoreDistillationConfig(ObjectiveConfig):
    guidance_type: str = "stable-diffusion-guidance"
    guidance: dict = field(default_factory=dict)
    prompt_processor_type: str = "stable-diffusion-prompt-processor"
    prompt_processor: dict = field(default_factory=dict)
    # the prompt processor yields embeddings per batch (prompt libraries): prepare() does not encode a prompt
    prompts_per_batch: bool = False
    # build the prompt processor with view_dependent= the guidance's view_dependent_prompting (prompt libraries)
    view_dependent_from_guidance: bool = False


# ------------------------------------------------------------------------------------------ objectives/photometric.py
@dataclass
class PhotometricConfig(ObjectiveConfig):
    always: List[str] = field(default_factory=lambda: ["rgb"])  # computed (and logged) every step
    defaults: Dict[str, float] = field(default_factory=lambda: {"rgb": 1.0})  # weights when lambda_* is unset
