"""``stable-diffusion-asd-guidance``: Asynchronous Score Distillation (ScaleDreamer) with Stable Diffusion.

Exactly as the authors compute it (reference: ``scaledreamer.md`` 1.2), for renders ``rgb`` [B, H, W, 3]:

1. latents x = VAE-encode(resize(rgb, 512)) (gradients flow through the encoder), or ``rgb_as_latents``;
2. ONE noise ε ~ N(0, I), shared by both branches;
3. t ~ U{min_step, ..., max_step} per sample, x_t = add_noise(x, ε, t);
4. Δt = floor(u · plus_ratio · (t - min_step)) with u ~ U(0, 1) (``plus_random``; else u = 1), the raw shift clamped
   to [0, T-1-t]; t+ = clamp(t + Δt, 1, T-1); x_{t+} = add_noise(x, ε, t+). ``min_step`` is the current (annealed)
   lower bound;
5. one batched UNet call (no grad) of 3B rows [x_t·cond, x_t·uncond, x_{t+}·cond] (cond = the view-dependent
   embedding), or 5B with Perp-Neg [x_t·pos, x_t·uncond, x_t·neg1, x_t·neg2, x_{t+}·pos];
6. ε̂_1 = CFG (or Perp-Neg) at t; ε_2 = the plain conditional prediction at t+ (no CFG);
7. grad = w(t) (ε̂_1 - ε_2) with w(t) = 1 - ᾱ_t (``weighting_strategy: sds``, evaluated at t), NaNs zeroed,
   optional clamp;
8. loss_asd = 0.5 Σ (x - sg(x - grad))² / B.

``t``, ``noise`` and ``u`` (the Δt fraction) may be passed in (tests); otherwise they are drawn on the device.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

import threestudio
from threestudio.models.guidance.schema import StableDiffusionASDGuidanceConfig
from threestudio.models.guidance.stable_diffusion_base import StableDiffusionGuidanceBase
from threestudio.models.prompt_processors.base import PromptProcessorOutput
from threestudio.ops import score_distillation as sd_ops


@threestudio.register("stable-diffusion-asd-guidance")
class StableDiffusionASDGuidance(StableDiffusionGuidanceBase):
    Config = StableDiffusionASDGuidanceConfig

    cfg: Config

    def __call__(self, rgb: torch.Tensor, prompt_utils: PromptProcessorOutput, elevation: torch.Tensor,
                 azimuth: torch.Tensor, camera_distances: torch.Tensor, rgb_as_latents: bool = False,
                 t: Optional[torch.Tensor] = None, noise: Optional[torch.Tensor] = None,
                 u: Optional[torch.Tensor] = None, **kwargs: Any) -> Dict[str, Any]:
        b = rgb.shape[0]
        latents = self.get_latents(rgb, rgb_as_latents)
        emb, neg_w = self.text_embeddings_for(prompt_utils, elevation, azimuth, camera_distances)
        with torch.no_grad():
            t = self.sample_timesteps(b) if t is None else t.to(self.device, torch.long)
            noise = torch.randn_like(latents) if noise is None else noise.to(latents)
            if self.cfg.plus_random and u is None:
                u = torch.rand(b, device=self.device)
            t_plus = sd_ops.asd_t_plus(t, self.min_step, self.cfg.plus_ratio, u if self.cfg.plus_random else None,
                                       self.num_train_timesteps)
            x_t = sd_ops.add_noise(latents, noise, t, self.alphas)
            x_t_plus = sd_ops.add_noise(latents, noise, t_plus, self.alphas)  # the same ε
            rows = torch.cat([self.repeat_latents(x_t, neg_w), x_t_plus], dim=0)
            t_first = t.repeat(2) if neg_w is None else torch.cat([t, t, t.repeat_interleave(neg_w.shape[1])])
            t_rows = torch.cat([t_first, t_plus])
            emb_rows = torch.cat([emb, emb[:b]], dim=0)  # the second branch: the (view-dependent) positive embedding
            eps = self.forward_unet(rows, t_rows, emb_rows)
            eps_hat = self.guided_noise(eps, b, neg_w)
            eps_second = eps[-b:]
            w = sd_ops.timestep_weight(t, self.alphas, self.cfg.weighting_strategy).view(-1, 1, 1, 1)
            grad = w * (eps_hat - eps_second)
        return self.finish(latents, grad, "loss_asd", {"t": t, "t_plus": t_plus})
