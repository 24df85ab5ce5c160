"""``nerf-reconstruction``: fit a scene to posed images with a photometric loss.

One step: a batch of random rays with their pixel colours -> render -> the ``photometric`` objective
(``lambda_rgb`` MSE, weight 1 unless set; ``lambda_l1``, ``lambda_ssim``, ``lambda_mask`` when set) plus the
regularisers (eikonal, sparsity, and the proposal sampler's ``interlevel`` and ``distortion`` losses when the renderer
returns them).
Validation renders held-out views; the test pass renders every held-out view, writes PSNR/SSIM (and LPIPS when
``lpips`` weights are given) to ``save/metrics.json`` and a turntable MP4; ``--export`` writes a textured mesh
through the exporter.

The scene handshake with the data module, the training clock (``train_time_s``, ``save/psnr_vs_time.csv``) and the
evaluation on held-out views are :mod:`threestudio.systems.parts.reconstruction`'s.
"""

from __future__ import annotations

from typing import Any, Dict

import torch

import threestudio
from threestudio.systems.base import BaseLift3DSystem
from threestudio.systems.objectives import ComposesObjective
from threestudio.systems.parts.clock import TRAIN_TIME_KEY
from threestudio.systems.parts.reconstruction import HeldOutViews, _fovy_deg
from threestudio.systems.schema import LPIPSConfig, NeRFReconstructionConfig, TurntableConfig
from threestudio.utils.metrics import psnr

# the configs and helpers that lived here, at their old import path
__all__ = ["NeRFReconstruction", "TRAIN_TIME_KEY", "LPIPSConfig", "TurntableConfig", "_fovy_deg"]

@threestudio.register("nerf-reconstruction")
class NeRFReconstruction(ComposesObjective, HeldOutViews, BaseLift3DSystem):
    Config = NeRFReconstructionConfig
    cfg: Config

    def configure(self) -> None:
        super().configure()
        self.init_held_out_views()
        self.configure_objective()

    def objective_options(self) -> Dict[str, Any]:
        return {"always": ["rgb"], "defaults": {"rgb": 1.0}}  # MSE, named rgb, weight 1 unless lambda_rgb says

    def forward(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        kwargs: Dict[str, Any] = {}
        if self.training and "image_index" in batch:
            kwargs["image_index"] = batch["image_index"]
        return self.renderer(batch["rays_o"], batch["rays_d"], light_positions=batch.get("light_positions"),
                             bg_color=batch.get("bg_color"), **kwargs)

    # ------------------------------------------------------------------ training
    def regularizers(self, out: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        terms: Dict[str, torch.Tensor] = {}
        if self.loss_weight("eikonal") > 0 and "sdf_grad" in out:
            terms["eikonal"] = ((out["sdf_grad"].norm(dim=-1) - 1.0) ** 2).mean()
        if self.loss_weight("sparsity") > 0:
            terms["sparsity"] = (out["opacity"] ** 2 + 0.01).sqrt().mean()
        if "s_edges" in out:  # proposal sampling (unbounded scenes)
            from threestudio.ops.proposal import distortion_loss, interlevel_loss

            if out["prop_weights"] and self.loss_weight("interlevel") > 0:
                terms["interlevel"] = interlevel_loss(out["s_edges"], out["weights"], out["prop_s_edges"],
                                                      out["prop_weights"])
            if self.loss_weight("distortion") > 0:
                terms["distortion"] = distortion_loss(out["s_edges"], out["weights"])
        return terms

    def training_step(self, batch: Dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self(batch)
        terms = self.objective_terms(out, batch)  # photometric: rgb (MSE), l1, ssim, mask as weighted
        defaults = {name: self.objective.default_weight for name in terms}
        terms.update(self.regularizers(out))
        loss = self.weighted_loss(terms, out["comp_rgb"].device, defaults)
        if self.logging_step():  # per-step tensor logs would read the GPU back every step
            self.log_progress("train/loss", loss)
            self.log_progress("train/psnr", psnr(out["comp_rgb"].detach(), batch["rgb"]))
        return loss
