"""``stable-diffusion-guidance``: Score Distillation Sampling (DreamFusion) with Stable Diffusion.

One step, for renders ``rgb`` [B, H, W, 3]:

1. latents x = VAE-encode(resize(rgb, 512)) (gradients flow through the encoder), or ``rgb_as_latents``;
2. t ~ U{min_step, ..., max_step} per sample (``min/max_step_percent`` are schedules), ε ~ N(0, I),
   x_t = sqrt(ᾱ_t) x + sqrt(1 - ᾱ_t) ε;
3. one batched UNet call (no grad): [x_t, x_t] with [cond, uncond] embeddings (CFG, 2B rows), or with Perp-Neg
   [x_t, x_t, x_t, x_t] with [pos, uncond, neg1, neg2] (4B rows);
4. ε̂ = ε_u + s (ε_c - ε_u) (or Perp-Neg); grad = w(t) (ε̂ - ε), NaNs zeroed, optionally clamped (``grad_clip``);
5. loss_sds = 0.5 Σ (x - sg(x - grad))² / B, whose gradient w.r.t. x is grad / B.

``t`` and ``noise`` may be passed in (tests, reproducibility); otherwise they are drawn on the device.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

import threestudio
from threestudio.models.guidance.schema import StableDiffusionGuidanceConfig
from threestudio.models.guidance.stable_diffusion_base import StableDiffusionGuidanceBase
from threestudio.models.prompt_processors.base import PromptProcessorOutput
from threestudio.ops import score_distillation as sd_ops


@threestudio.register("stable-diffusion-guidance")
class StableDiffusionGuidance(StableDiffusionGuidanceBase):
    Config = StableDiffusionGuidanceConfig

    cfg: Config

    def __call__(self, rgb: torch.Tensor, prompt_utils: PromptProcessorOutput, elevation: torch.Tensor,
                 azimuth: torch.Tensor, camera_distances: torch.Tensor, rgb_as_latents: bool = False,
                 t: Optional[torch.Tensor] = None, noise: Optional[torch.Tensor] = None,
                 **kwargs: Any) -> Dict[str, Any]:
        b = rgb.shape[0]
        latents = self.get_latents(rgb, rgb_as_latents)
        emb, neg_w = self.text_embeddings_for(prompt_utils, elevation, azimuth, camera_distances)
        with torch.no_grad():
            t = self.sample_timesteps(b) if t is None else t.to(self.device, torch.long)
            noise = torch.randn_like(latents) if noise is None else noise.to(latents)
            x_t = sd_ops.add_noise(latents, noise, t, self.alphas)
            rows = self.repeat_latents(x_t, neg_w)
            t_rows = t.repeat(rows.shape[0] // b) if neg_w is None else torch.cat(
                [t, t, t.repeat_interleave(neg_w.shape[1])])
            eps = self.forward_unet(rows, t_rows, emb)
            eps_hat = self.guided_noise(eps, b, neg_w)
            w = sd_ops.timestep_weight(t, self.alphas, self.cfg.weighting_strategy).view(-1, 1, 1, 1)
            grad = w * (eps_hat - noise)
        return self.finish(latents, grad, "loss_sds", {"t": t})
