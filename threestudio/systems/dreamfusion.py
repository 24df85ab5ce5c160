"""``dreamfusion-system``: text-to-3D by score distillation (DreamFusion, threestudio's recipe).

One training step: the ``random-camera`` data module yields cameras -> the renderer renders the geometry (with
material and background) at the training resolution -> the guidance turns the images and the prompt embeddings into
``loss_*`` terms (``loss_sds`` for SDS) -> regularisers are added -> Lightning steps the optimizer.

Losses (each weighted by ``system.loss.lambda_<name>``, a schedule; a term whose weight is 0 is not computed):

- every ``loss_<name>`` the guidance returns (``lambda_sds``, ``lambda_asd``, ...; weight 1 unless set);
- ``orient``: Σ w_i max(0, n_i · d_i)² / #(rays with opacity > 0), normals facing away from the camera (needs a
  geometry with normals and a material that shades with them);
- ``sparsity``: mean sqrt(opacity² + 0.01);
- ``opaque``: binary entropy of the (clamped) opacity;
- ``z_variance``: mean depth variance along the rays with opacity > 0.5 (HiFA);
- ``eikonal``: mean (‖∇sdf‖ - 1)² for SDF geometry.

Building: geometry, material, background and renderer are built in ``configure()`` (they are checkpointed). The prompt
processor and the guidance are built in ``on_fit_start`` — only for training, never for ``--test``/``--export`` —
in this order: a cheap check that both models can be found (no weights read; a missing, gated or misshapen model stops
the run here, before any step), then the prompt processor (embeddings computed or read from the cache, text encoder
freed), then the guidance (UNet and VAE). Neither is part of the checkpoint.

Evaluation: validation writes ``it<step>-<i>.png`` (rgb | normal | opacity); ``--test`` renders the
``random-camera`` test orbit into ``it<step>-test/<i>.png`` and the turntable ``it<step>-test.mp4``; ``--export``
writes the textured mesh through the exporter (``mesh-exporter``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F

import threestudio
from threestudio.systems.base import BaseLift3DSystem
from threestudio.utils.log import info


@threestudio.register("dreamfusion-system")
class DreamFusion(BaseLift3DSystem):
    @dataclass
    class Config(BaseLift3DSystem.Config):
        guidance_type: str = "stable-diffusion-guidance"
        prompt_processor_type: str = "stable-diffusion-prompt-processor"
        test_video_fps: int = 30
        release_guidance_after_fit: bool = True  # free UNet/VAE memory before the test pass that follows --train

    cfg: Config

    def configure(self) -> None:
        super().configure()
        self.guidance: Optional[Any] = None
        self.prompt_processor: Optional[Any] = None
        self.prompt_utils: Optional[Any] = None

    # ------------------------------------------------------------------ guidance (training only)
    def build_guidance(self) -> None:
        """Preflight both models, then build the prompt processor (encode, free the encoder), then the guidance."""
        cfg = self.cfg
        pp_cls = threestudio.find(cfg.prompt_processor_type, "prompt-processor", "system.prompt_processor_type")
        g_cls = threestudio.find(cfg.guidance_type, "guidance", "system.guidance_type")
        for cls, sub in ((pp_cls, cfg.prompt_processor), (g_cls, cfg.guidance)):
            if hasattr(cls, "preflight"):
                cls.preflight(sub)
        self.prompt_processor = pp_cls(cfg.prompt_processor)
        self.prompt_utils = self.prompt_processor()
        self.guidance = g_cls(cfg.guidance)
        if hasattr(self.guidance, "to"):
            self.guidance.to(self.device)
        self.prompt_utils = self.prompt_utils.to(self.device)
        # follow the schedules from the current step (a resumed run starts mid-way)
        self.guidance.do_update_step(self.true_current_epoch, self.true_global_step)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.guidance is None:
            self.build_guidance()

    def on_fit_end(self) -> None:
        if self.cfg.release_guidance_after_fit and self.guidance is not None:
            self.guidance = None
            from threestudio.utils.misc import cleanup

            cleanup()

    # ------------------------------------------------------------------ rendering
    def forward(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        return self.renderer(batch["rays_o"], batch["rays_d"], light_positions=batch.get("light_positions"),
                             bg_color=batch.get("bg_color"))

    # ------------------------------------------------------------------ training
    def guidance_terms(self, out: Dict[str, torch.Tensor], batch: Dict[str, Any]) -> Dict[str, Any]:
        if self.guidance is None:
            raise RuntimeError("the guidance is built in on_fit_start; training_step ran without it")
        return self.guidance(out["comp_rgb"], self.prompt_utils, batch["elevation"], batch["azimuth"],
                             batch["camera_distances"])

    def _lambda(self, name: str, default: float = 0.0) -> float:
        return self.loss_weight(name, default)

    def regularizers(self, out: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        terms: Dict[str, torch.Tensor] = {}
        opacity = out["opacity"]
        if self._lambda("orient") > 0:
            if "normal" not in out:
                raise ValueError("system.loss.lambda_orient > 0 needs normals: use a geometry with normal_type "
                                 "analytic or finite_difference and a material that shades with normals "
                                 "(e.g. diffuse-with-point-light)")
            n_dot_d = (out["normal"] * out["t_dirs"]).sum(-1)
            terms["orient"] = (out["weights"].detach().reshape(-1) * n_dot_d.clamp_min(0.0) ** 2).sum() / (
                (opacity > 0).sum().clamp_min(1))
        if self._lambda("sparsity") > 0:
            terms["sparsity"] = (opacity**2 + 0.01).sqrt().mean()
        if self._lambda("opaque") > 0:
            op = opacity.clamp(1e-3, 1.0 - 1e-3)
            terms["opaque"] = F.binary_cross_entropy(op, op)
        if self._lambda("z_variance") > 0:
            mask = (opacity > 0.5).float()
            terms["z_variance"] = (out["z_variance"] * mask).sum() / mask.sum().clamp_min(1.0)
        if self._lambda("eikonal") > 0 and "sdf_grad" in out:
            terms["eikonal"] = ((out["sdf_grad"].norm(dim=-1) - 1.0) ** 2).mean()
        return terms

    def prefetch_next_samples(self) -> None:
        """Draw the next step's cameras and let the renderer select their samples now (see
        ``NeRFVolumeRenderer.prefetch``): called once this step's random draws are done and its guidance is queued."""
        renderer, trainer = self.renderer, self._trainer
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        if not (getattr(renderer, "prefetch_enabled", None) and renderer.prefetch_enabled()
                and hasattr(datamodule, "prefetch_train_batch")):
            return
        if trainer.max_steps and trainer.max_steps > 0 and trainer.global_step + 1 >= trainer.max_steps:
            return  # the last step: nothing follows
        with renderer.prefetch_stream():
            batch = datamodule.prefetch_train_batch(self.device, trainer.current_epoch, trainer.global_step + 1)
        if "rays_o" in batch and "rays_d" in batch:
            renderer.prefetch(batch["rays_o"], batch["rays_d"])

    def uses_normals_in_training(self) -> bool:
        """Whether this step's losses read the renderer's normals (orientation, eikonal): when not, the renderer
        skips the normals it would return only for them (``return_comp_normal``; analytic normals cost a double
        backward through the geometry)."""
        return self._lambda("orient") > 0 or self._lambda("eikonal") > 0

    def training_step(self, batch: Dict[str, Any], batch_idx: int) -> torch.Tensor:
        if hasattr(self.renderer, "normals_in_training"):
            self.renderer.normals_in_training = self.uses_normals_in_training()
        out = self(batch)
        guidance_out = self.guidance_terms(out, batch)
        self.prefetch_next_samples()
        terms: Dict[str, torch.Tensor] = {k[len("loss_"):]: v for k, v in guidance_out.items()
                                          if k.startswith("loss_")}
        guidance_names = set(terms)
        terms.update(self.regularizers(out))
        loss = torch.zeros((), device=out["comp_rgb"].device)
        # the per-term logs only on logging steps (see BaseSystem.log_train)
        detail = self.logging_step()
        for name, value in terms.items():
            weight = self._lambda(name, 1.0 if name in guidance_names else 0.0)  # guidance terms default to 1
            if weight != 0:
                loss = loss + weight * value
            if detail:
                self.log_train(f"train/loss_{name}", value)
        if detail:
            for name, value in self.cfg.loss.items():
                if name.startswith("lambda_"):
                    self.log_train(f"train_params/{name}", self.C(value))
            if "grad_norm" in guidance_out:
                self.log_train("train/grad_norm", guidance_out["grad_norm"])
            self.log_progress("train/loss", loss)  # not every step: see BaseSystem.logging_step
        return loss

    # ------------------------------------------------------------------ evaluation
    def _render_eval(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        with torch.no_grad():
            out = self(batch)
        return {k: v[0] for k, v in out.items() if torch.is_tensor(v) and v.dim() == 4}

    def _grid(self, out: Dict[str, torch.Tensor]) -> List[Dict[str, Any]]:
        items: List[Dict[str, Any]] = [{"type": "rgb", "img": out["comp_rgb"].clamp(0, 1)}]
        if "comp_normal" in out:
            items.append({"type": "rgb", "img": (out["comp_normal"] * 0.5 + 0.5).clamp(0, 1)})
        items.append({"type": "grayscale", "img": out["opacity"][..., 0]})
        return items

    def validation_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        out = self._render_eval(batch)
        self.save_image_grid(f"it{self.true_global_step}-{int(batch['index'])}.png", self._grid(out))

    def test_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        out = self._render_eval(batch)
        self.save_image_grid(f"it{self.true_global_step}-test/{int(batch['index'])}.png", self._grid(out))

    def on_test_epoch_end(self) -> None:
        step = self.true_global_step
        path = self.save_img_sequence(f"it{step}-test", f"it{step}-test", r"(\d+)\.png", save_format="mp4",
                                      fps=self.cfg.test_video_fps)
        if path:
            info(f"Turntable video: {path}")
