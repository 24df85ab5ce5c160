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

Building: geometry, material, background and renderer are built in ``configure()`` (they are checkpointed), with the
``score-distillation`` objective (:mod:`threestudio.systems.objectives`), which builds the prompt processor and the
guidance in ``on_fit_start`` — only for training, never for ``--test``/``--export`` — after a cheap check that both
models can be found. Neither is part of the checkpoint.

Rendering: each training step renders a :class:`~threestudio.models.renderers.base.RenderRequest` made by the data
stage (:class:`~threestudio.systems.train_stage.TrainRayStage`): the batch's rays, whether the step's losses read
normals, and the samples the renderer chose ahead during the step before (the stage's prefetch).

Evaluation: validation writes ``it<step>-<i>.png`` (rgb | normal | opacity); ``--test`` renders the
``random-camera`` test orbit into ``it<step>-test/<i>.png`` and the turntable ``it<step>-test.mp4``; ``--export``
writes the textured mesh through the exporter (``mesh-exporter``).
"""

from __future__ import annotations

import functools
from typing import Any, Dict, List

import torch
import torch.nn.functional as F

import threestudio
from threestudio.systems.base import BaseLift3DSystem
from threestudio.systems.objectives import ComposesObjective
from threestudio.systems.schema import DreamFusionConfig
from threestudio.systems.train_stage import TrainRayStage
from threestudio.utils.log import info


@functools.lru_cache(maxsize=None)
def _defined_below(cls: type, name: str, other: str) -> bool:
    """Whether the class that defines ``name`` for ``cls`` is a strict subclass of the one that defines ``other``."""
    owner = next(k for k in cls.__mro__ if name in vars(k))
    other_owner = next(k for k in cls.__mro__ if other in vars(k))
    return owner is not other_owner and issubclass(owner, other_owner)


@threestudio.register("dreamfusion-system")
class DreamFusion(ComposesObjective, BaseLift3DSystem):
    Config = DreamFusionConfig
    cfg: Config

    def configure(self) -> None:
        super().configure()
        self.configure_objective()
        self.train_stage = TrainRayStage(self.renderer)

    def objective_kind(self) -> str:
        return "score-distillation"

    # ------------------------------------------------------------------ guidance (training only)
    def on_fit_start(self) -> None:
        super().on_fit_start()
        self.prepare_objective()

    def on_fit_end(self) -> None:
        if self.cfg.release_guidance_after_fit:
            self.release_objective()

    # ------------------------------------------------------------------ rendering
    def forward(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        return self.renderer(batch["rays_o"], batch["rays_d"], light_positions=batch.get("light_positions"),
                             bg_color=batch.get("bg_color"))

    def render_for_training(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        """This step's render: the data stage's request for the batch (rays, outputs needed, prefetched samples).
        A subclass that overrides ``forward`` below the class that last defined this method (a threestudio extension
        that only changes ``forward``) renders through its ``forward``."""
        if _defined_below(type(self), "forward", "render_for_training"):
            return self(batch)
        request = self.train_stage.request(batch, self.global_step, normals=self.uses_normals_in_training())
        return self.renderer.render(request)

    # ------------------------------------------------------------------ training
    def guidance_terms(self, out: Dict[str, torch.Tensor], batch: Dict[str, Any]) -> Dict[str, Any]:
        """The guidance's whole output for this step's render (``loss_*`` terms, ``grad_norm``, ...)."""
        return self.objective.guide(out["comp_rgb"], batch)

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

    def uses_normals_in_training(self) -> bool:
        """Whether this step's losses read the renderer's normals (orientation, eikonal): when not, the request says
        so and the renderer skips the normals it would return only for them (``return_comp_normal``; analytic
        normals cost a double backward through the geometry)."""
        return self._lambda("orient") > 0 or self._lambda("eikonal") > 0

    def training_step(self, batch: Dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self.render_for_training(batch)
        guidance_out = self.guidance_terms(out, batch)
        # the next step's batch and samples, now that this step's random draws are done and its guidance is queued
        self.train_stage.prefetch(self._trainer, self.device)
        terms = self.objective.loss_terms(guidance_out)
        defaults = {name: self.objective.default_weight for name in terms}  # the regularisers' default: 0
        terms.update(self.regularizers(out))
        loss = self.weighted_loss(terms, out["comp_rgb"].device, defaults)
        if self.logging_step():  # not every step: see BaseSystem.logging_step
            for name, value in self.cfg.loss.items():
                if name.startswith("lambda_"):
                    self.log_train(f"train_params/{name}", self.C(value))
            if "grad_norm" in guidance_out:
                self.log_train("train/grad_norm", guidance_out["grad_norm"])
            self.log_progress("train/loss", loss)
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
