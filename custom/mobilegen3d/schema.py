"""The Config dataclasses of this extension's systems, data module and guidance (and of the NeLF student), in a
module that imports no Lightning (nor torch): config validation reads them through the package's manifest without
importing the modules they configure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from threestudio.data.schema import BaseDataModuleConfig
from threestudio.models.guidance.schema import BaseGuidanceConfig
from threestudio.systems.schema import BaseSystemConfig, GaussianSplattingSystemConfig
from threestudio.utils.config import bounded


# ------------------------------------------------------------------------------------------ nelf-student-system
@dataclass
class NeLFConfig:
    n_samples: int = bounded(8, ge=1)  # points per ray
    multires: int = bounded(6, ge=0)  # frequencies 2^0 .. 2^(multires-1)
    width: int = bounded(256, ge=1)  # channels of the 1x1 trunk
    n_blocks: int = bounded(28, ge=0)  # residual blocks of the trunk
    sr_channels: List[int] = field(default_factory=lambda: [64, 64, 16])  # one 2x ConvTranspose stage each
    sr_res_blocks: int = bounded(2, ge=0)  # residual blocks after each upsampling stage
    activation: str = "gelu"  # gelu | relu
    scene_scale: Optional[float] = None  # points are divided by this before encoding (None: the far distance)


@dataclass
class LRScheduleConfig:
    enabled: bool = True
    warmup_from: float = bounded(1e-4, ge=0)  # learning rate at step 0
    warmup_steps: int = bounded(200, ge=0)  # linear warm-up to the optimizer's rate
    decay_rate: float = bounded(0.1, gt=0)
    lrate_decay: float = bounded(500.0, gt=0)  # thousands of steps per decay_rate factor (MobileR2L's --lrate_decay)


@dataclass
class ExportConfig:
    opset: int = bounded(20, ge=17)  # 20: GELU as the standard Gelu operator
    parts: List[str] = field(default_factory=lambda: ["student", "sampler", "embedder", "full"])
    verify: bool = True  # compare onnxruntime with PyTorch on example inputs (intrinsics.json records it)


@dataclass
class NeLFStudentSystemConfig(BaseSystemConfig):
    student: NeLFConfig = field(default_factory=NeLFConfig)
    lr_schedule: LRScheduleConfig = field(default_factory=LRScheduleConfig)
    perturb: bool = True  # stratified random depths in training (MobileR2L); evaluation uses the bin edges
    n_val_images: int = bounded(4, ge=0)  # comparison images saved per validation and kind
    video_fps: int = bounded(10, ge=1)
    export: ExportConfig = field(default_factory=ExportConfig)


# ------------------------------------------------------------------------------------------ nelf-pseudo-data
@dataclass
class NeLFPseudoDataModuleConfig(BaseDataModuleConfig):
    dataroot: str = "???"  # a pseudo-data folder (pseudo.json, rgb.f16, c2w.f32); relative: cwd, else repo root
    batch_size: int = bounded(10, ge=1)  # pseudo views per training step (per rank)
    n_val_views: int = bounded(8, ge=0)  # held-out pseudo views per validation (0: all)
    n_test_views: int = bounded(0, ge=0)  # held-out pseudo views in the test pass (0: all)
    rgb_on_device: bool = False  # copy every render to the training device once (N*H*W*6 bytes)
    photos_dataroot: Optional[str] = None  # a capture (transforms.json) for PSNR against real photos
    # the teacher's trial (folder or checkpoint; "source": pseudo.json's source): its data settings normalise
    # the photos, and its dataroot is the default photos_dataroot
    photos_trial: Optional[str] = None
    photos: Dict[str, Any] = field(default_factory=dict)  # multiview-images settings for the photos
    rank: Optional[int] = None  # None: the trainer's (set both to simulate a rank)
    world_size: Optional[int] = None


# ------------------------------------------------------------------------------------------ in2n-system
@dataclass
class In2NConfig(GaussianSplattingSystemConfig):
    base: str = "auto"  # auto (gaussians when the geometry is a gaussian one) | nerf | gaussians
    source: Optional[str] = None  # the reconstruction: trial folder, checkpoint, or LAST:<experiment folder>
    continue_source_step: bool = True  # modules' schedules continue from the source's step
    prompt: str = ""  # the editing instruction, e.g. "Turn him into a clown"
    edit_rate: int = 10  # training steps between dataset updates
    edit_count: int = 1  # views re-edited at each update
    guidance_scale: float = 7.5  # InstructPix2Pix text guidance
    image_guidance_scale: float = 1.5  # InstructPix2Pix image guidance
    diffusion_steps: int = 20  # DDIM steps per edit
    t_min: float = 0.02  # starting timestep ~ U[t_min, t_max] x 1000
    t_max: float = 0.98
    edit_start_step: int = 0  # first step with a dataset update
    edit_seed: int = 0  # seeds each edit's generator with (edit_seed, step, view)
    edit_render_chunk: Optional[int] = None  # rays per call when rendering a view to edit (None: the renderer's)
    guidance_type: str = "instruct-pix2pix-guidance"
    exporter_type: str = "mesh-exporter"  # NeRF sources (gaussians export their PLY)
    release_guidance_after_fit: bool = True


IP2P_HUB_ID = "timbrooks/instruct-pix2pix"


# ------------------------------------------------------------------------------------------ ip2p.py
@dataclass
class InstructPix2PixGuidanceConfig(BaseGuidanceConfig):
    pretrained_model_name_or_path: str = IP2P_HUB_ID
    variant: Optional[str] = None  # weight file variant, e.g. "fp16"
    half_precision_weights: Optional[bool] = None  # None: fp16 on CUDA, fp32 on the CPU
    enable_attention_slicing: bool = False
    # defaults of edit_image (the in2n-system passes its own settings)
    guidance_scale: float = 7.5
    image_guidance_scale: float = 1.5
    diffusion_steps: int = 20
    t_min: float = 0.02
    t_max: float = 0.98
