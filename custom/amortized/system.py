"""``multiprompt-generator``: one text-conditioned 3D generator trained on a whole prompt library (ScaleDreamer).

One training step (``training_step`` is dreamfusion-system's; only the forward pass and the guidance call differ):

1. the data module yields k prompts (rows of this rank's train shard) x v views of cameras, and a latent z per prompt;
2. the prompt processor reads their embeddings from the memory-mapped store: pooled [k, D] and tokens [k, L, D] for
   the generator, and ``prompt_utils`` (per view, view-dependent when the guidance asks) for the guidance;
3. the generator maps (text, z) to each prompt's field; the renderer renders each prompt's views (VolSDF);
4. the guidance (``stable-diffusion-asd-guidance`` or ``mvdream-asd-guidance``) gives ``loss_asd``; the regularisers
   (``lambda_sparsity``, ``lambda_opaque``, ``lambda_eikonal``, schedules) are added; Lightning steps the optimizer
   (Adam or Adan, ``trainer.accumulate_grad_batches`` for gradient accumulation).

Evaluation: every prompt of the rank's val/test shard is rendered as a turntable (rgb | normal | opacity) into
``save/it<step>-val/<prompt>/<i>.png`` (``it<step>-test/`` for ``--test``, 120 views by default) plus
``<prompt>.mp4`` and ``<prompt>/prompt.txt`` (the exact prompt, for the CLIP evaluation). Each DDP rank writes its
own prompts. ``data.test_mode=interpolate`` renders ``it<step>-interp/interp_<j>/`` for embeddings lerped between
``data.interp_source`` and ``data.interp_target``.
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch

import threestudio
from threestudio.systems.dreamfusion import DreamFusion
from threestudio.utils.log import info
from threestudio.utils.saving import atomic_write_text

from .data import rays_for
from .library import prompt_folder_name
from .schema import MultiPromptGeneratorConfig


@threestudio.register("multiprompt-generator")
class MultiPromptGenerator(DreamFusion):
    Config = MultiPromptGeneratorConfig
    cfg: Config

    # ------------------------------------------------------------------ building
    def objective_options(self) -> Dict[str, Any]:
        # embeddings per batch (rows of the prompt library); a view-dependent store when the guidance asks for one
        return {"prompts_per_batch": True, "view_dependent_from_guidance": True}

    def _ensure_prompt_processor(self) -> None:
        if self.prompt_processor is None:
            self.objective.build_prompt_processor(view_dependent=False)

    def on_validation_start(self) -> None:
        self._ensure_prompt_processor()

    def on_test_start(self) -> None:
        self._ensure_prompt_processor()

    @property
    def _is_writer(self) -> bool:
        return True  # evaluation: every rank renders (and writes) only its own shard's prompts

    # ------------------------------------------------------------------ training
    def _needs_normals(self) -> bool:
        return self._lambda("eikonal") > 0 or self._lambda("orient") > 0

    def generate(self, emb: Dict[str, torch.Tensor], noise: torch.Tensor) -> Any:
        dev = self.device
        tokens = emb.get("tokens")
        if tokens is None and emb.get("tokens_vd") is not None:
            tokens = emb["tokens_vd"][:, 0]
        return self.geometry.generate(emb["pooled"].to(dev), None if tokens is None else tokens.to(dev),
                                      noise.to(dev))

    def forward(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        emb = self.prompt_processor.rows_embeddings(batch["split"], batch["prompt_index"])
        self.prompt_utils = self.prompt_processor.output(emb, batch["n_view"], self.device)
        cache = self.generate(emb, batch["noise"])
        return self.renderer(cache, batch["rays_o"], batch["rays_d"], text=emb["pooled"].to(self.device),
                             n_view=batch["n_view"], need_normal=self._needs_normals())

    def render_for_training(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        return self(batch)  # the generator's field, rendered with need_normal (no samples to prefetch)

    def guidance_terms(self, out: Dict[str, torch.Tensor], batch: Dict[str, Any]) -> Dict[str, Any]:
        return self.objective.guide(out["comp_rgb"], batch, c2w=batch["c2w"])

    # ------------------------------------------------------------------ evaluation
    def eval_embeddings(self, item: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        pp = self.prompt_processor
        if item["split"] == "interp":
            return pp.lerp(pp.prompt_embeddings([item["prompt"]]), pp.prompt_embeddings([item["prompt_b"]]),
                           item["alpha"])
        return pp.rows_embeddings(item["split"], [item["prompt_index"]])

    def render_turntable(self, item: Dict[str, Any], folder: str) -> List[str]:
        dev = self.device
        with torch.no_grad():
            emb = self.eval_embeddings(item)
            cache = self.generate(emb, item["noise"])
            pooled = emb["pooled"].to(dev)
            paths = []
            h, w = item["height"], item["width"]
            for j in range(item["c2w"].shape[0]):
                ro, rd = rays_for(item["c2w"][j : j + 1].to(dev), item["fovy_rad"][j : j + 1].to(dev), h, w)
                out = self.renderer(cache, ro, rd, text=pooled, n_view=1, need_normal=self.cfg.eval_normals)
                paths.append(self.save_image_grid(f"{folder}/{j}.png", self._grid({k: v[0] for k, v in out.items()
                                                                                  if v.dim() == 4})))
        atomic_write_text(self.get_save_path(f"{folder}/prompt.txt"), item["prompt"] if item["split"] != "interp"
                          else f"{item['prompt']} -> {item['prompt_b']} (alpha {item['alpha']:.3f})")
        return paths

    def _eval_folder(self, item: Dict[str, Any], tag: str) -> str:
        name = item.get("name") or prompt_folder_name(item["prompt"])
        return f"it{self.true_global_step}-{tag}/{name}"

    def validation_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        folder = self._eval_folder(batch, "val")
        self.render_turntable(batch, folder)
        self.save_img_sequence(folder, folder, r"(\d+)\.png", save_format="mp4", fps=self.cfg.val_video_fps)

    def test_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        folder = self._eval_folder(batch, "interp" if batch["split"] == "interp" else "test")
        self.render_turntable(batch, folder)
        path = self.save_img_sequence(folder, folder, r"(\d+)\.png", save_format="mp4",
                                      fps=self.cfg.test_video_fps)
        info(f"Turntable of '{batch['prompt']}': {path}")

    def on_test_epoch_end(self) -> None:
        pass
