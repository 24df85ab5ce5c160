"""The Config dataclasses of the guidances, in a module that imports no torch (see :mod:`threestudio.models.schema`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from threestudio.models.diffusion.compile import CompileSettings
from threestudio.models.diffusion.mvdream import DEFAULT_FILE, DEFAULT_REPO
from threestudio.models.schema import BaseObjectConfig
from threestudio.utils.schedule import Schedule


# ------------------------------------------------------------------------------------------ base.py
@dataclass
class BaseGuidanceConfig(BaseObjectConfig):
    pass


@dataclass
class DiffusionGuidanceConfig(BaseGuidanceConfig, CompileSettings):
    """Config fields every diffusion guidance has: ``compile`` and its typed ``compile_options``."""


# ------------------------------------------------------------------------------------------ stable_diffusion_base.py
@dataclass
class StableDiffusionGuidanceBaseConfig(DiffusionGuidanceConfig):
    pretrained_model_name_or_path: str = "stabilityai/stable-diffusion-2-1-base"
    variant: Optional[str] = None  # weight file variant to load, e.g. "fp16" (half the download)
    half_precision_weights: Optional[bool] = None  # None: fp16 on CUDA, fp32 on CPU
    enable_memory_efficient_attention: bool = False  # xformers, if installed (SDPA otherwise)
    enable_attention_slicing: bool = False
    enable_channels_last_format: bool = False
    keep_vae_decoder: bool = False
    guidance_scale: float = 100.0
    grad_clip: Optional[Schedule] = None  # None: no clipping
    min_step_percent: Schedule = 0.02
    max_step_percent: Schedule = 0.98
    weighting_strategy: str = "sds"  # sds | uniform | fantasia3d
    view_dependent_prompting: bool = True
    guidance_perp_neg: float = -1.0  # Perp-Neg weights = guidance_perp_neg * f(r) (-1: threestudio's)
    image_size: int = 512  # renders are resized to this before the VAE
    latent_size: int = 64  # rgb_as_latents inputs are resized to this


# ----------------------------------------------------------------------------------------- stable_diffusion_guidance.py
@dataclass
class StableDiffusionGuidanceConfig(StableDiffusionGuidanceBaseConfig):
    pass


# ------------------------------------------------------------------------------------- stable_diffusion_asd_guidance.py
@dataclass
class StableDiffusionASDGuidanceConfig(StableDiffusionGuidanceBaseConfig):
    guidance_scale: float = 7.5
    plus_ratio: float = 0.1  # η: Δt ≤ η (t - min_step)
    plus_random: bool = True  # Δt a random fraction of η (t - min_step), else the whole of it


# ------------------------------------------------------------------------------------------ mvdream/base.py
@dataclass
class MVDreamGuidanceBaseConfig(DiffusionGuidanceConfig):
    pretrained_model_name_or_path: str = DEFAULT_REPO  # a .pt file, a folder or a hub id
    checkpoint_file: Optional[str] = DEFAULT_FILE  # the file inside a folder/hub repo; null: diffusers
    n_view: int = 4  # views per object (the UNet's num_frames)
    image_size: int = 256  # renders are resized to this before the VAE (latents: image_size / 8)
    camera_condition_type: str = "rotation"  # rotation (unit-length translation) | extrinsics
    half_precision_weights: Optional[bool] = None  # None: fp16 on CUDA, fp32 on CPU
    guidance_scale: float = 50.0
    grad_clip: Optional[Schedule] = None  # None: no clipping
    min_step_percent: Schedule = 0.02
    max_step_percent: Schedule = 0.98
    weighting_strategy: str = "sds"  # sds | uniform | fantasia3d
    view_dependent_prompting: bool = False  # MVDream: the plain prompt for every view
    num_head_channels: int = 64  # attention head width of the checkpoint's UNet (not visible in its shapes)


# -------------------------------------------------------------------------------------- mvdream/mvdream_sds_guidance.py
@dataclass
class MVDreamSDSGuidanceConfig(MVDreamGuidanceBaseConfig):
    guidance_scale: float = 50.0
    recon_loss: bool = True  # MVDream's x0-reconstruction form of SDS
    recon_std_rescale: float = 0.5  # 0: plain CFG x0; 1: fully rescaled to the unguided x0's std


# -------------------------------------------------------------------------------------- mvdream/mvdream_asd_guidance.py
@dataclass
class MVDreamASDGuidanceConfig(MVDreamGuidanceBaseConfig):
    guidance_scale: float = 7.5
    plus_ratio: float = 0.1  # η: Δt ≤ η (t - min_step)
    plus_random: bool = True  # Δt a random fraction of η (t - min_step), else all of it
