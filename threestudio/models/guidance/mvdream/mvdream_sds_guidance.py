"""``mvdream-sds-guidance``: Score Distillation Sampling with MVDream's multi-view diffusion model.

One step, for renders ``rgb`` [B, H, W, 3] of N objects x F views (object-major, B = N·F):

1. latents x = VAE-encode(resize(rgb, 256)) [B, 4, 32, 32] (or ``rgb_as_latents``);
2. ONE t ~ U{min_step, ..., max_step} for the whole batch, ε ~ N(0, I) per view, x_t = sqrt(ᾱ_t) x + sqrt(1-ᾱ_t) ε;
3. one batched UNet call (no grad) of 2B rows [x_t·cond, x_t·uncond], each with its camera, num_frames = F;
4. ε̂ = ε_u + s (ε_c - ε_u);
5. ``recon_loss`` (MVDream's default): x̂_0 = predict_x0(x_t, ε̂), optionally std-rescaled per object towards the
   unguided x̂_0 (``recon_std_rescale``), and grad = x - x̂_0 (the x0-reconstruction loss 0.5 ||x - sg(x̂_0)||² / B);
   else grad = w(t) (ε̂ - ε);
6. loss_sds = 0.5 Σ (x - sg(x - grad))² / B (its gradient w.r.t. x is grad / B).

``t`` and ``noise`` may be passed in (tests); otherwise they are drawn on the device.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

import threestudio
from threestudio.models.guidance.mvdream.base import MVDreamGuidanceBase
from threestudio.models.guidance.mvdream.score import predict_x0, rescale_x0_std
from threestudio.models.guidance.schema import MVDreamSDSGuidanceConfig
from threestudio.ops import score_distillation as sd_ops


@threestudio.register("mvdream-sds-guidance")
class MVDreamSDSGuidance(MVDreamGuidanceBase):
    Config = MVDreamSDSGuidanceConfig

    cfg: Config

    def __call__(self, rgb: torch.Tensor, prompt_utils: Any, elevation: torch.Tensor, azimuth: torch.Tensor,
                 camera_distances: torch.Tensor, c2w: Optional[torch.Tensor] = None, rgb_as_latents: bool = False,
                 t: Optional[Any] = None, noise: Optional[torch.Tensor] = None, **kwargs: Any) -> Dict[str, Any]:
        b = rgb.shape[0]
        self.check_batch(b)
        latents = self.get_latents(rgb, rgb_as_latents)
        camera = self.camera_rows(b, elevation, azimuth, camera_distances, c2w)
        emb = self.text_embeddings(prompt_utils, elevation, azimuth, camera_distances)
        with torch.no_grad():
            t1 = self.sample_timestep(t)
            tb = t1.expand(b)
            noise = torch.randn_like(latents) if noise is None else noise.to(latents)
            x_t = sd_ops.add_noise(latents, noise, tb, self.alphas)
            eps = self.forward_unet(torch.cat([x_t, x_t]), t1.expand(2 * b), emb, camera.repeat(2, 1))
            eps_cond, eps_uncond = eps[:b], eps[b:]
            eps_hat = sd_ops.classifier_free_guidance(eps_cond, eps_uncond, self.cfg.guidance_scale)
            if self.cfg.recon_loss:
                x0 = predict_x0(x_t, tb, eps_hat, self.alphas)
                if self.cfg.recon_std_rescale > 0:
                    x0_cond = predict_x0(x_t, tb, eps_cond, self.alphas)
                    x0 = rescale_x0_std(x0, x0_cond, self.cfg.n_view, self.cfg.recon_std_rescale)
                grad = latents.detach().float() - x0
            else:
                w = sd_ops.timestep_weight(tb, self.alphas, self.cfg.weighting_strategy).view(-1, 1, 1, 1)
                grad = w * (eps_hat - noise)
        return self.finish(latents, grad, "loss_sds", {"t": tb})
