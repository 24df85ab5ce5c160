"""The condition of Zero-1-to-G's UNet from the input image (``../shared/reference/zero1tog.md`` section 3):

- **condition latent**: the image resized to the views' size (128, antialiased), mapped to [-1, 1], VAE-encoded,
  ``latent_dist.mode() * scaling_factor`` (0.18215) -> [B, 4, 16, 16]; the UNet input is
  ``concat(noisy latent, condition latent)``;
- **CLIP tokens**: the image resized to the CLIP encoder's size (224, bicubic, antialiased), normalised with CLIP's
  mean/std, ``CLIPVisionModelWithProjection(...).image_embeds`` [B, 768] as one cross-attention token [B, 1, 768].

:class:`ConditionEncoder` holds the frozen ``AutoencoderKL`` and ``CLIPVisionModelWithProjection`` (both from
``lambdalabs/sd-image-variations-diffusers``' ``vae/`` and ``image_encoder/``, or any folder with them), and
:func:`expand_condition` repeats one object's condition over the folded (D B V) batch.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layout import SD_IMAGE_VARIATIONS

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
KEY = "system.condition.pretrained_model_name_or_path"


class ConditionEncoder(nn.Module):
    """``encode(rgb [B, 3, H, W] in [0, 1]) -> (condition latent [B, 4, s/8, s/8], CLIP tokens [B, 1, D])``,
    ``s = cond_size``. Both encoders are frozen (eval, no grad)."""

    def __init__(self, vae: Any, image_encoder: Any, cond_size: int = 128,
                 clip_mean: Sequence[float] = CLIP_MEAN, clip_std: Sequence[float] = CLIP_STD) -> None:
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        self.image_encoder = image_encoder.eval().requires_grad_(False)
        self.cond_size = int(cond_size)
        self.register_buffer("clip_mean", torch.tensor(clip_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("clip_std", torch.tensor(clip_std).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_pretrained(cls, name_or_path: str = SD_IMAGE_VARIATIONS, cond_size: int = 128,
                        torch_dtype: Optional[torch.dtype] = None, key: str = KEY) -> "ConditionEncoder":
        """``vae/`` and ``image_encoder/`` of a hub id or local folder (missing or misshapen weights raise
        ``PretrainedWeightsError`` naming the folder and how to get it)."""
        from diffusers import AutoencoderKL
        from transformers import CLIPVisionModelWithProjection

        from threestudio.utils.weights import check_pretrained, load_pretrained

        check_pretrained(name_or_path, ("vae", "image_encoder"), key, "SD-image-variations VAE and CLIP image encoder",
                         hub_id=SD_IMAGE_VARIATIONS)
        kw = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
        vae = load_pretrained(AutoencoderKL, name_or_path, "vae", key, "SD-image-variations", SD_IMAGE_VARIATIONS,
                              **kw)
        enc = load_pretrained(CLIPVisionModelWithProjection, name_or_path, "image_encoder", key,
                              "SD-image-variations", SD_IMAGE_VARIATIONS, **kw)
        return cls(vae, enc, cond_size)

    @property
    def clip_size(self) -> int:
        return int(self.image_encoder.config.image_size)

    @torch.no_grad()
    def encode_latent(self, rgb: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(rgb.float(), (self.cond_size, self.cond_size), mode="bilinear", align_corners=False,
                          antialias=True)
        x = (x * 2 - 1).to(self.vae.dtype)
        return self.vae.encode(x).latent_dist.mode() * self.vae.config.scaling_factor

    @torch.no_grad()
    def encode_clip(self, rgb: torch.Tensor) -> torch.Tensor:
        s = self.clip_size
        x = F.interpolate(rgb.float(), (s, s), mode="bicubic", align_corners=False, antialias=True)
        x = ((x - self.clip_mean) / self.clip_std).to(self.image_encoder.dtype)
        return self.image_encoder(pixel_values=x).image_embeds.unsqueeze(1)

    def encode(self, rgb: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if rgb.dim() != 4 or rgb.shape[1] != 3:
            raise ValueError(f"ConditionEncoder: expected RGB images [B, 3, H, W] in [0, 1], got {tuple(rgb.shape)}"
                             " (composite RGBA on the background first)")
        return self.encode_latent(rgb), self.encode_clip(rgb)

    forward = encode


def expand_condition(x: torch.Tensor, num_attributes: int, num_views: int) -> torch.Tensor:
    """Per-object ``x`` [B, ...] repeated for the folded batch [(D B V), ...] (attribute-major, then object, view)."""
    b = x.shape[0]
    return x[None, :, None].expand(num_attributes, b, num_views, *x.shape[1:]).reshape(-1, *x.shape[1:])
