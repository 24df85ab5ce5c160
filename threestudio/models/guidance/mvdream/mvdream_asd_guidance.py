"""``mvdream-asd-guidance``: Asynchronous Score Distillation (ScaleDreamer) with MVDream, as the authors compute it
(reference: ``scaledreamer.md`` 1.3).

For renders ``rgb`` [B, H, W, 3] of N objects x F views (object-major, B = N·F):

1. latents x = VAE-encode(resize(rgb, 256)) [B, 4, 32, 32] (gradients flow through the encoder);
2. ε ~ N(0, I) per view, ONE noise shared by both branches;
3. ONE t ~ U{min_step, ..., max_step} for the whole batch; x_t = add_noise(x, ε, t);
4. ONE Δt for the batch: Δt = floor(u · plus_ratio · (t - min_step)) with u ~ U(0, 1) (``plus_random``; else
   u = 1), the raw shift clamped to [0, T-1-t]; t+ = clamp(t + Δt, 1, T-1); x_{t+} = add_noise(x, ε, t+), where
   ``min_step`` is the current (annealed) lower bound;
5. one batched UNet call (no grad) of 3B rows [x_t·cond, x_t·uncond, x_{t+}·cond] with their cameras
   (num_frames = F); cond/uncond are the plain prompt and the negative prompt;
6. ε̂_1 = ε_u + s (ε_c - ε_u) at t, ε_2 = ε_c(x_{t+}, t+) (no CFG);
7. grad = w(t) (ε̂_1 - ε_2), w(t) = 1 - ᾱ_t (``weighting_strategy: sds``, at t); NaNs zeroed, optional clamp;
8. loss_asd = 0.5 Σ (x - sg(x - grad))² / B.

``t``, ``noise`` and ``u`` may be passed in (tests); otherwise they are drawn on the device.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

import threestudio
from threestudio.models.guidance.mvdream.base import MVDreamGuidanceBase
from threestudio.models.guidance.schema import MVDreamASDGuidanceConfig
from threestudio.ops import score_distillation as sd_ops


@threestudio.register("mvdream-asd-guidance")
class MVDreamASDGuidance(MVDreamGuidanceBase):
    Config = MVDreamASDGuidanceConfig

    cfg: Config

    def __call__(self, rgb: torch.Tensor, prompt_utils: Any, elevation: torch.Tensor, azimuth: torch.Tensor,
                 camera_distances: torch.Tensor, c2w: Optional[torch.Tensor] = None, rgb_as_latents: bool = False,
                 t: Optional[Any] = None, noise: Optional[torch.Tensor] = None, u: Optional[Any] = None,
                 **kwargs: Any) -> Dict[str, Any]:
        b = rgb.shape[0]
        self.check_batch(b)
        latents = self.get_latents(rgb, rgb_as_latents)
        camera = self.camera_rows(b, elevation, azimuth, camera_distances, c2w)
        emb = self.text_embeddings(prompt_utils, elevation, azimuth, camera_distances)
        with torch.no_grad():
            t1 = self.sample_timestep(t)
            noise = torch.randn_like(latents) if noise is None else noise.to(latents)
            if self.cfg.plus_random:
                u = torch.rand(1, device=self.device) if u is None else torch.as_tensor(u, device=self.device)
                u = u.float().reshape(-1)[:1]
            else:
                u = None
            t_plus = sd_ops.asd_t_plus(t1, self.min_step, self.cfg.plus_ratio, u, self.num_train_timesteps)
            tb, tpb = t1.expand(b), t_plus.expand(b)
            x_t = sd_ops.add_noise(latents, noise, tb, self.alphas)
            x_t_plus = sd_ops.add_noise(latents, noise, tpb, self.alphas)  # the same ε
            rows = torch.cat([x_t, x_t, x_t_plus])
            t_rows = torch.cat([t1.expand(2 * b), tpb])
            ctx = torch.cat([emb, emb[:b]])  # cond, uncond, cond
            eps = self.forward_unet(rows, t_rows, ctx, camera.repeat(3, 1))
            eps_hat = sd_ops.classifier_free_guidance(eps[:b], eps[b:2 * b], self.cfg.guidance_scale)
            eps_second = eps[2 * b:]
            w = sd_ops.timestep_weight(tb, self.alphas, self.cfg.weighting_strategy).view(-1, 1, 1, 1)
            grad = w * (eps_hat - eps_second)
        return self.finish(latents, grad, "loss_asd", {"t": tb, "t_plus": tpb})
