"""The Config dataclasses of the prompt processors, in a module that imports no torch
(see :mod:`threestudio.models.schema`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from threestudio.models.diffusion.mvdream import DEFAULT_FILE, DEFAULT_REPO
from threestudio.models.schema import BaseObjectConfig


# MVDream-threestudio's negative prompt
MVDREAM_NEGATIVE_PROMPT = ("ugly, bad anatomy, blurry, pixelated obscure, unnatural colors, poor lighting, dull, and "
                           "unclear, cropped, lowres, low quality, artifacts, duplicate, morbid, mutilated, poorly "
                           "drawn face, deformed, dehydrated, bad proportions")


# ------------------------------------------------------------------------------------------ base.py
@dataclass
class PromptProcessorConfig(BaseObjectConfig):
    prompt: str = "a hamburger"
    negative_prompt: str = ""
    pretrained_model_name_or_path: str = "stabilityai/stable-diffusion-2-1-base"
    # view-dependent prompting
    view_dependent_prompt_front: bool = False  # True: "front view of <p>", False: "<p>, front view"
    front_threshold: float = 45.0
    back_threshold: float = 45.0
    overhead_threshold: float = 60.0
    prompt_side: Optional[str] = None  # replace the generated view-dependent prompt strings
    prompt_front: Optional[str] = None
    prompt_back: Optional[str] = None
    prompt_overhead: Optional[str] = None
    # Perp-Neg (weights -f(r), f(r) = a exp(-b r) + c with (a, b, c) below)
    use_perp_neg: bool = False
    perp_neg_f_sb: Tuple[float, float, float] = (1.0, 0.5, -0.606)
    perp_neg_f_fsb: Tuple[float, float, float] = (1.0, 0.5, 0.967)
    perp_neg_f_fs: Tuple[float, float, float] = (4.0, 0.5, -2.426)
    perp_neg_f_sf: Tuple[float, float, float] = (4.0, 0.5, -2.426)
    # embedding cache
    use_cache: bool = True
    cache_dir: Optional[str] = None  # default: $THREESTUDIO_CACHE/text_embeddings or ~/.cache/threestudio/...
    encode_batch_size: int = 16


# --------------------------------------------------------------------------------- stable_diffusion_prompt_processor.py
@dataclass
class StableDiffusionPromptProcessorConfig(PromptProcessorConfig):
    pass


# ------------------------------------------------------------------------------------------ mvdream_prompt_processor.py
@dataclass
class MVDreamPromptProcessorConfig(PromptProcessorConfig):
    pretrained_model_name_or_path: str = DEFAULT_REPO  # a .pt file, a folder, or a hub id
    checkpoint_file: Optional[str] = DEFAULT_FILE  # inside a folder/hub repo; null: diffusers folder
    tokenizer_name_or_path: Optional[str] = None  # None: <folder>/tokenizer, or SD-2.1-base's for a .pt file
    tokenizer_subfolder: Optional[str] = "tokenizer"
    negative_prompt: str = MVDREAM_NEGATIVE_PROMPT
    front_threshold: float = 30.0
    back_threshold: float = 30.0
