"""The Config dataclasses of this extension's system and data modules, in a module that imports no Lightning (nor
torch): config validation reads them through the package's manifest without importing the modules they configure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from threestudio.data.schema import BaseDataModuleConfig
from threestudio.systems.schema import BaseSystemConfig
from threestudio.utils.config import bounded

from .model.layout import SD_IMAGE_VARIATIONS


# ------------------------------------------------------------------------------------------ zero1tog-system
@dataclass
class EMAConfig:
    enabled: bool = True
    decay: float = bounded(0.9999, ge=0, le=1)


@dataclass
class Zero1toGSystemConfig(BaseSystemConfig):
    stage: str = "mix"  # "mix" (stage 1) or "joint" (stage 2)
    pretrained_model_name_or_path: str = SD_IMAGE_VARIATIONS  # unet/ vae/ image_encoder/ scheduler/
    unet_name_or_path: Optional[str] = None  # None: pretrained_model_name_or_path
    unet_changes: dict = field(default_factory=dict)  # config overrides when growing a base SD UNet
    init_from: Optional[str] = None  # earlier stage: trial folder, checkpoint or LAST:<exp dir>
    init_from_ema: bool = True  # take the earlier stage's EMA weights
    mapping: str = "wonder3d"  # splatter <-> attribute images (must match the data's)
    cond_size: int = bounded(128, ge=8)  # condition image side before the VAE (the views' size)
    prediction_type: Optional[str] = None  # None: the scheduler's (epsilon for SD-image-variations)
    snr_gamma: float = bounded(5.0, ge=0)  # Min-SNR gamma; 0: plain MSE
    condition_drop: float = bounded(0.05, ge=0, le=1)  # per object: condition latent and CLIP token zeroed
    timestep_offset: int = bounded(100, ge=0)  # stage "joint": per-attribute offset ~ U[-offset, offset)
    trainable: str = "all"  # all | attention | joint
    lr: float = bounded(1e-4, gt=0)
    class_embedding_lr_scale: float = bounded(10.0, gt=0)
    betas: Tuple[float, float] = (0.9, 0.999)
    weight_decay: float = bounded(1e-2, ge=0)
    adam_eps: float = bounded(1e-8, gt=0)
    warmup_steps: int = bounded(100, ge=0)
    ema: EMAConfig = field(default_factory=EMAConfig)
    render_use_weight_t: bool = False  # rendering loss x the object's mean alpha-bar_t
    render_background: Tuple[float, float, float] = (1.0, 1.0, 1.0)  # must match the data's
    render_backend: str = "auto"
    render_tile_size: int = bounded(16, ge=1)
    val_timesteps: List[int] = field(default_factory=lambda: [100, 500, 900])
    val_seed: int = 0
    # ---- inference: with ``image`` set, the test pass turns that image into gaussians (configs/image-to-
    # gaussians.yaml); the sampling defaults are the authors' (inference.py)
    image: Optional[str] = None  # RGBA image (an RGB one needs rembg); relative paths: the working folder
    steps: int = bounded(50, ge=1)  # DDIM steps
    guidance_scale: float = bounded(5.0, ge=0)  # classifier-free guidance; 1: the conditional branch alone
    eta: float = bounded(1.0, ge=0, le=1)  # DDIM eta
    seed: int = 0  # the sampling noise (one CPU generator)
    elevation: float = 15.0  # assumed input camera elevation, degrees (a photo has none)
    view_set: str = "wonder3d"
    input_size: int = bounded(320, ge=8)  # side of the preprocessed condition image
    remove_background: str = "auto"  # auto (rembg only without alpha) | always | never
    use_ema: bool = True  # sample with the EMA UNet when the system has one
    turntable_frames: int = bounded(60, ge=0)  # 0: no video
    turntable_resolution: int = bounded(256, ge=8)
    fps: int = bounded(30, ge=1)
    prune_opacity: float = bounded(0.0, ge=0, le=1)  # PLY: leave out gaussians below this opacity
    vae_batch: int = bounded(30, ge=1)


# ------------------------------------------------------------------------------------------ data modules
@dataclass
class SplatterDataModuleConfig(BaseDataModuleConfig):
    dataroot: str = "???"  # a folder written by make_gt_splatters.py; relative: cwd, else repo root
    mapping: str = "wonder3d"  # attribute mapping (splatter.MAPPINGS)
    batch_size: int = bounded(4, ge=1)  # objects per training step (per rank)
    n_supervision_views: int = bounded(0, ge=0)  # extra views per training object (rendering loss)
    n_val_objects: int = bounded(1, ge=0)  # the last objects by name, held out
    background: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    cache: bool = True  # keep objects in memory once read
    rank: Optional[int] = None  # None: the trainer's (set both to simulate a rank)
    world_size: Optional[int] = None


@dataclass
class ImageDataModuleConfig(BaseDataModuleConfig):
    pass
