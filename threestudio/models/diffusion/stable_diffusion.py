"""Loading Stable Diffusion (a hub id or a local diffusers folder) through :mod:`threestudio.utils.weights`.

The denoiser side (``unet/``, ``vae/``, ``scheduler/``) serves the guidances, the text side (``tokenizer/``,
``text_encoder/``) the prompt processors. A missing, gated or misshapen model stops the run before training with a
message that names the model, the config key that points at it, where it looked and how to fix it.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

from threestudio.utils.weights import PretrainedWeightsError, check_pretrained, load_pretrained

WHAT = "Stable Diffusion"
DENOISER_PARTS = ("unet", "vae", "scheduler")
TEXT_PARTS = ("tokenizer", "text_encoder")


def check_denoiser(name: str, key: str) -> None:
    """Start-up check without reading weights: ``name`` has a usable ``unet/``, ``vae/`` and ``scheduler/``."""
    check_pretrained(name, DENOISER_PARTS, key, WHAT)


def load_denoiser(name: str, key: str, dtype: Any, variant: Optional[str] = None) -> Tuple[Any, Any, Any]:
    """``(unet, vae, scheduler)`` of ``name`` (diffusers' ``UNet2DConditionModel``, ``AutoencoderKL``,
    ``DDPMScheduler``); UNet and VAE in ``dtype``. Fails if the UNet's latent channels are not the VAE's."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    kw: dict = {"torch_dtype": dtype}
    if variant:
        kw["variant"] = variant
    unet = load_pretrained(UNet2DConditionModel, name, "unet", key, WHAT, **kw)
    vae = load_pretrained(AutoencoderKL, name, "vae", key, WHAT, **kw)
    scheduler = load_pretrained(DDPMScheduler, name, "scheduler", key, WHAT)
    if unet.config.in_channels != vae.config.latent_channels:
        raise PretrainedWeightsError(
            key, f"'{name}': the UNet takes {unet.config.in_channels} latent channels but the VAE makes "
            f"{vae.config.latent_channels}; unet/ and vae/ come from different models",
            "point the key at one complete Stable Diffusion folder")
    return unet, vae, scheduler


def check_text_encoder(name: str, key: str) -> None:
    """Start-up check without reading weights: ``name`` has a usable ``tokenizer/`` and ``text_encoder/``."""
    check_pretrained(name, TEXT_PARTS, key, f"{WHAT} text encoder")


def load_text_encoder(name: str, key: str, device: Any = None) -> Tuple[Any, Any]:
    """``(tokenizer, text encoder)`` of ``name``: transformers' tokenizer and ``CLIPTextModel`` (fp32, eval, frozen,
    on ``device``)."""
    import torch
    from transformers import AutoTokenizer, CLIPTextModel

    tokenizer = load_pretrained(AutoTokenizer, name, "tokenizer", key, WHAT)
    encoder = load_pretrained(CLIPTextModel, name, "text_encoder", key, WHAT, torch_dtype=torch.float32)
    if device is not None:
        encoder = encoder.to(device)
    return tokenizer, encoder.eval().requires_grad_(False)
