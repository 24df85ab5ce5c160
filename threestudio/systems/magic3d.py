"""``magic3d-system``: Magic3D's coarse-to-fine text-to-3D (threestudio's recipe pair).

* coarse (``refinement: false``): exactly ``dreamfusion-system`` (a NeRF rendered by ray marching, SDS).
* refine (``refinement: true``): the geometry is an explicit mesh (``tetrahedra-sdf-grid``, initialised from the
  coarse trial with ``geometry_convert_from``) rendered by ``mesh-rasterizer`` at high resolution; the camera batch
  (``mvp_mtx``, ``height``, ``width``, ...) goes to the renderer instead of rays. Losses: the guidance's terms plus
  the mesh regularisers, each weighted by ``system.loss.lambda_<name>`` (a schedule; 0 skips it):
  ``normal_consistency`` and ``laplacian_smoothness`` (of the extracted mesh), ``sdf_reg`` (GET3D's SDF sign
  consistency), ``flexicubes_dev`` and ``flexicubes_weight_reg`` (FlexiCubes only).

Chaining: ``geometry_convert_from`` takes a checkpoint, a trial folder, or ``LAST:<experiment folder>``. With
``LAST:`` this system picks the newest trial there whose tag is this run's tag (the prompt with ``_`` for spaces,
as the recipes' ``tag``), so ``configs/magic3d-refine-sd.yaml`` finds the coarse trial of the same prompt without
any path; if none has that tag, the newest trial is used (with a warning). A refine run is resumed like any other
(``--resume``): the converted geometry is then restored from its own checkpoint.
"""

from __future__ import annotations

import os
from typing import Any, Dict

import torch

import threestudio
from threestudio.systems.dreamfusion import DreamFusion
from threestudio.systems.schema import Magic3DConfig
from threestudio.utils.log import warn

MESH_TERMS = ("sdf_reg", "flexicubes_dev", "flexicubes_weight_reg")
CAMERA_KEYS = ("rays_o", "rays_d", "mvp_mtx", "camera_positions", "light_positions", "height", "width", "bg_color")


@threestudio.register("magic3d-system")
class Magic3D(DreamFusion):
    Config = Magic3DConfig
    cfg: Config
    _conversion_error: Any = None

    # ------------------------------------------------------------------ stage chaining
    def _convert_geometry(self, source: str) -> Any:
        if isinstance(source, str) and source.startswith("LAST:"):
            exp_dir = os.path.abspath(os.path.expanduser(source[len("LAST:"):]))
            found = self._last_trial_of_this_prompt(exp_dir)
            if found is None:
                from threestudio.utils.config import ConfigError, ConfigIssue

                # building still works (recipe checks, --help-like uses); training refuses to start
                self._conversion_error = ConfigError([ConfigIssue(
                    "system.geometry_convert_from", f"no trial of the earlier stage under {exp_dir} (looked for "
                    f"<tag>@<time>/ckpts/last.ckpt)", "",
                    "train the coarse stage first (configs/magic3d-coarse-sd.yaml, same prompt), or set "
                    "system.geometry_convert_from to its trial folder or checkpoint")])
                return threestudio.find(self.cfg.geometry_type, "geometry", "system.geometry_type")(self.cfg.geometry)
            source = found
        return super()._convert_geometry(source)

    def on_fit_start(self) -> None:
        if self._conversion_error is not None and not self.resumed:
            raise self._conversion_error
        super().on_fit_start()

    def _last_trial_of_this_prompt(self, exp_dir: str):
        """The newest trial under ``exp_dir`` tagged like this run (else the newest, with a warning; else None)."""
        from threestudio.utils.trials import list_trials

        prompt = str(self.cfg.prompt_processor.get("prompt", "") or "")
        tag = prompt.replace(" ", "_")
        if tag:
            same = list_trials(exp_dir, tag)
            if same:
                return same[-1]
        every = list_trials(exp_dir)
        if every:
            warn(f"system.geometry_convert_from: no trial tagged '{tag}' under {exp_dir}; using the newest trial "
                 f"there, {os.path.basename(every[-1])} (set system.geometry_convert_from to a trial folder to "
                 f"choose one).")
            return every[-1]
        return None

    # ------------------------------------------------------------------ rendering
    def forward(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        if not self.cfg.refinement:
            return super().forward(batch)
        return self.renderer(**{k: batch[k] for k in CAMERA_KEYS if k in batch})

    def render_for_training(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        if not self.cfg.refinement:
            return super().render_for_training(batch)
        return self(batch)  # the mesh rasterizer takes the camera batch (no rays, no samples to prefetch)

    # ------------------------------------------------------------------ losses
    def regularizers(self, out: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        if not self.cfg.refinement:
            return super().regularizers(out)
        terms: Dict[str, torch.Tensor] = {}
        opacity = out["opacity"]
        if self._lambda("sparsity") > 0:
            terms["sparsity"] = (opacity**2 + 0.01).sqrt().mean()
        if self._lambda("opaque") > 0:
            op = opacity.clamp(1e-3, 1.0 - 1e-3)
            terms["opaque"] = torch.nn.functional.binary_cross_entropy(op, op)
        mesh = out["mesh"]
        if self._lambda("normal_consistency") > 0:
            terms["normal_consistency"] = mesh.normal_consistency()
        if self._lambda("laplacian_smoothness") > 0:
            terms["laplacian_smoothness"] = mesh.laplacian()
        for name in MESH_TERMS:
            if name in mesh.extras and self._lambda(name) > 0:
                terms[name] = mesh.extras[name]
        return terms

    def _render_eval(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        with torch.no_grad():
            out = self(batch)
        return {k: v[0] for k, v in out.items() if torch.is_tensor(v) and v.dim() == 4}
