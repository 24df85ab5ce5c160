"""Shared machinery of the Stable Diffusion guidance modules (SDS and ASD); not registered itself.

Loading: ``unet/``, ``vae/`` and ``scheduler/`` of ``pretrained_model_name_or_path`` (a hub id or a local diffusers
folder) through :mod:`threestudio.models.diffusion.stable_diffusion`; a missing, gated or misshapen model stops the run
before training with a message that names the model, where it looked and how to fix it. No text encoder is loaded
here: prompt embeddings come from the prompt processor. UNet and VAE are frozen, in fp16 on CUDA
(``half_precision_weights``), with attention through torch's scaled-dot-product attention (diffusers' default
``AttnProcessor2_0``); ``enable_memory_efficient_attention`` switches to xformers when it is installed. The VAE
decoder is dropped unless ``keep_vae_decoder`` (saves ~100 MB; only needed to look at latents).

Compilation (``compile``; default on for CUDA, off on CPU; ``compile_options``, see
:mod:`threestudio.models.diffusion.compile`): the UNet call and the VAE encode are wrapped in
``torch.compile(mode="reduce-overhead", fullgraph=True, dynamic=False)``, i.e. CUDA graphs over static shapes. The
per-step inputs keep fixed shapes (batch, 512^2 images, 64^2 latents, 77 tokens), timesteps are device tensors and
nothing in the step reads a value back to the host, so after the first step nothing recompiles. Inductor's on-disk
caches (FX graph and AOT-autograd caches) live in ``compile_options.cache_dir`` (default ``$THREESTUDIO_CACHE/inductor`` or
``~/.cache/threestudio/inductor``; ``TORCHINDUCTOR_CACHE_DIR`` wins when set), so a second run reuses the compiled
kernels instead of compiling for a minute.

Call contract (threestudio's): ``guidance(rgb [B, H, W, 3] in [0, 1], prompt_utils, elevation, azimuth,
camera_distances, rgb_as_latents=False)`` returns a dict of ``loss_*`` terms plus diagnostics. With
``rgb_as_latents`` the input is [B, H, W, 4] latents, resized to 64^2 instead of VAE-encoded.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from threestudio.models.diffusion import stable_diffusion as sd_models
from threestudio.models.diffusion.cache import configure_compile_cache
from threestudio.models.guidance.base import BaseGuidance, DiffusionGuidanceMixin
from threestudio.models.guidance.schema import StableDiffusionGuidanceBaseConfig
from threestudio.models.prompt_processors.base import PromptProcessorOutput
from threestudio.ops import score_distillation as sd_ops
from threestudio.utils.log import info, warn
from threestudio.utils.misc import cleanup, get_device
from threestudio.utils.weights import PretrainedWeightsError

KEY = "system.guidance.pretrained_model_name_or_path"
# configure_compile_cache lives in threestudio.models.diffusion.cache; re-exported for the old import path
__all__ = ["StableDiffusionGuidanceBase", "configure_compile_cache", "KEY"]


class StableDiffusionGuidanceBase(DiffusionGuidanceMixin, BaseGuidance):
    Config = StableDiffusionGuidanceBaseConfig

    cfg: Config

    # ------------------------------------------------------------------ building
    @classmethod
    def preflight(cls, cfg: Any) -> None:
        """Start-up check without loading weights (the folder/hub id is usable)."""
        from threestudio.utils.config import parse_structured

        c = parse_structured(cls.Config, cfg)
        sd_models.check_denoiser(c.pretrained_model_name_or_path, KEY)

    def configure(self, device: Optional[Any] = None) -> None:
        c = self.cfg
        if c.weighting_strategy not in sd_ops.WEIGHTINGS:
            raise ValueError(f"system.guidance.weighting_strategy: unknown {c.weighting_strategy!r}; choose one of "
                             f"{', '.join(sd_ops.WEIGHTINGS)}")
        self.device = torch.device(device) if device is not None else get_device()
        on_cuda = self.device.type == "cuda"
        half = c.half_precision_weights if c.half_precision_weights is not None else on_cuda
        self.weights_dtype = torch.float16 if half else torch.float32
        name = c.pretrained_model_name_or_path
        self.preflight(c)
        info(f"Loading Stable Diffusion UNet and VAE from {name} ({str(self.weights_dtype).replace('torch.', '')})")
        self.unet, self.vae, self.scheduler = sd_models.load_denoiser(name, KEY, self.weights_dtype, c.variant)
        if not c.keep_vae_decoder:
            self.vae.decoder = None
            self.vae.post_quant_conv = None
        for m in (self.unet, self.vae):
            m.eval().requires_grad_(False)
        if c.enable_memory_efficient_attention:
            from threestudio.utils.imports import available

            if available("xformers"):
                self.unet.enable_xformers_memory_efficient_attention()
            else:
                warn("enable_memory_efficient_attention: xformers is not installed; using torch's "
                     "scaled_dot_product_attention (as fast on torch 2)")
        if c.enable_attention_slicing:
            self.unet.set_attention_slice(1)
        if c.enable_channels_last_format:
            self.unet.to(memory_format=torch.channels_last)
        self.unet.to(self.device)
        self.vae.to(self.device)
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        self.alphas: torch.Tensor = self.scheduler.alphas_cumprod.to(self.device, torch.float32)
        self.cross_attention_dim = int(self.unet.config.cross_attention_dim)
        self.setup_schedule_and_compile(on_cuda, "guidance")
        cleanup()

    def to(self, device: Any) -> "StableDiffusionGuidanceBase":
        self.device = torch.device(device)
        self.unet.to(self.device)
        self.vae.to(self.device)
        self.alphas = self.alphas.to(self.device)
        return self

    # ------------------------------------------------------------------ networks (the compiled parts)
    def _unet_eager(self, latents: torch.Tensor, t: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        return self.unet(latents.to(self.weights_dtype), t, encoder_hidden_states=text_embeddings.to(self.weights_dtype),
                         return_dict=False)[0]

    def _encode_eager(self, imgs: torch.Tensor) -> torch.Tensor:
        posterior = self.vae.encode(imgs.to(self.weights_dtype) * 2.0 - 1.0).latent_dist
        return posterior.sample() * self.vae.config.scaling_factor

    def forward_unet(self, latents: torch.Tensor, t: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """ε̂ for a batch (no grad), returned in float32."""
        # CUDA graph trees start a new iteration on each compiled call unless a backward is pending (the VAE
        # encode's): then the UNet joins the current step's graph tree, as it should; no manual marking needed
        with torch.no_grad():
            # contiguous inputs: the compiled graph is specialised to strides, so a permuted view would recompile
            return self._unet_fn(latents.contiguous(), t.contiguous(), text_embeddings.contiguous()).float()

    def encode_images(self, imgs: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] in [0, 1] -> latents [B, 4, S/8, S/8] (float32), differentiable w.r.t. ``imgs``."""
        return self._encode_fn(imgs.contiguous()).float()

    def get_latents(self, rgb: torch.Tensor, rgb_as_latents: bool = False) -> torch.Tensor:
        x = rgb.permute(0, 3, 1, 2)
        if rgb_as_latents:
            s = self.cfg.latent_size
            if x.shape[-2:] != (s, s):
                x = F.interpolate(x, (s, s), mode="bilinear", align_corners=False)
            return x.contiguous()
        s = self.cfg.image_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, (s, s), mode="bilinear", align_corners=False)
        return self.encode_images(x)

    # ------------------------------------------------------------------ per-step pieces
    def sample_timesteps(self, batch_size: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """t ~ U{min_step, ..., max_step} per sample (a device tensor)."""
        return torch.randint(self.min_step, self.max_step + 1, (batch_size,), dtype=torch.long, device=self.device,
                             generator=generator)

    def text_embeddings_for(self, prompt_utils: PromptProcessorOutput, elevation: torch.Tensor,
                            azimuth: torch.Tensor, camera_distances: torch.Tensor
                            ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(embeddings, perp-neg weights or None). Embeddings: [2B] (cond, uncond) or, with Perp-Neg, [4B]
        (pos, uncond, 2B negatives in sample-major order); the weights [B, 2] are scaled by guidance_perp_neg."""
        if prompt_utils.embedding_dim != self.cross_attention_dim:
            raise PretrainedWeightsError(
                KEY, f"the prompt processor's text embeddings have {prompt_utils.embedding_dim} channels but the UNet "
                f"of '{self.cfg.pretrained_model_name_or_path}' cross-attends to {self.cross_attention_dim}",
                "use the same model for system.prompt_processor.pretrained_model_name_or_path and "
                "system.guidance.pretrained_model_name_or_path")
        if prompt_utils.use_perp_neg and self.cfg.guidance_perp_neg != 0:
            emb, w = prompt_utils.get_text_embeddings_perp_neg(elevation, azimuth, camera_distances,
                                                               self.cfg.view_dependent_prompting)
            # the processor gives -f(r) (threestudio); scale to guidance_perp_neg * f(r)
            return emb, w * (-self.cfg.guidance_perp_neg)
        return prompt_utils.get_text_embeddings(elevation, azimuth, camera_distances,
                                                self.cfg.view_dependent_prompting), None

    def guided_noise(self, eps: torch.Tensor, batch_size: int, neg_weights: Optional[torch.Tensor]) -> torch.Tensor:
        """Combine the first rows of a batched UNet output into the guided ε̂ (CFG or Perp-Neg)."""
        b = batch_size
        eps_cond, eps_uncond = eps[:b], eps[b : 2 * b]
        if neg_weights is None:
            return sd_ops.classifier_free_guidance(eps_cond, eps_uncond, self.cfg.guidance_scale)
        return sd_ops.perp_neg_guidance(eps_cond, eps_uncond, eps[2 * b : 4 * b], neg_weights,
                                        self.cfg.guidance_scale)

    @staticmethod
    def repeat_latents(latents_noisy: torch.Tensor, neg_weights: Optional[torch.Tensor]) -> torch.Tensor:
        """UNet inputs for the guided rows: [x, x] (CFG) or [x, x, x repeated per negative] (Perp-Neg)."""
        rows = [latents_noisy, latents_noisy]
        if neg_weights is not None:
            rows.append(latents_noisy.repeat_interleave(neg_weights.shape[1], dim=0))
        return torch.cat(rows, dim=0)

    def finish(self, latents: torch.Tensor, grad: torch.Tensor, loss_name: str,
               extra: Dict[str, Any]) -> Dict[str, Any]:
        grad = sd_ops.clip_grad(grad, self.grad_clip_val)
        loss = sd_ops.score_distillation_loss(latents, grad)
        return {loss_name: loss, "grad_norm": grad.detach().norm(), "min_step": self.min_step,
                "max_step": self.max_step, **extra}
