"""``gaussian-splatting-system``: 3D gaussian splatting for reconstruction and for text-to-3D (GaussianDreamer-style).

One step: the batch's cameras -> ``gaussian-splatting-renderer`` -> losses -> Adam -> densification.

The system composes an objective (:mod:`threestudio.systems.objectives`) with the gaussians:

* **Reconstruction** (no ``guidance_type``; data ``multiview-images``): ``photometric``, the render against the
  batch's ``rgb``: ``lambda_l1 * L1 + lambda_ssim * (1 - SSIM) + lambda_mse * MSE`` (+ ``lambda_mask`` * BCE of the
  opacity against the mask).
* **Text-to-3D** (``guidance_type`` and ``prompt_processor_type`` set; data ``random-camera``): ``score-distillation``,
  the guidance turns the renders and the prompt into ``loss_*`` terms (SDS, ASD, ...), each weighted by
  ``lambda_<name>``; its models are built when fitting starts.
* Both: ``lambda_opacity_reg`` (mean opacity) and ``lambda_scale_reg`` (mean scale), which MCMC densification wants.

Optimisation: one Adam with a param group per gaussian attribute (learning rates in ``lr``; the means' rate is
multiplied by the scene scale and decays exponentially to ``lr.means_final``) plus one group for any other trainable
parameters (e.g. a learned background; ``optimizer.args.lr``). Densification (``densify``): ``strategy: default``
(3DGS's adaptive density control: gsplat's ``DefaultStrategy`` on CUDA, our PyTorch one elsewhere or with
``backend: torch``), ``mcmc`` (gsplat's ``MCMCStrategy``, CUDA only) or ``none``; its statistics are saved in
checkpoints, and loading a checkpoint resizes the gaussians, so resumed runs continue exactly.

Evaluation is on held-out views, as ``nerf-reconstruction``'s (:mod:`threestudio.systems.parts.reconstruction`: PSNR/SSIM into ``save/metrics.json`` when the views have
images, test frames and MP4). Export (``--export``, or ``export_after_train``) writes ``it<step>-export/gaussians.ply``
(the standard 3DGS layout) and ``it<step>-export/turntable.mp4``.

Multi-GPU (DDP) training is not supported while densification changes the number of gaussians.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import torch

import threestudio
from threestudio.ops import cameras as cam
from threestudio.ops.splatting import intrinsics_from_fovy
from threestudio.ops.splatting.densify import DefaultDensifier, ensure_opacity_reset
from threestudio.models.geometry.gaussian_splatting import GaussianSplatting
from threestudio.systems.base import BaseLift3DSystem
from threestudio.systems.objectives import ComposesObjective
from threestudio.systems.parts.reconstruction import HeldOutViews, _fovy_deg
from threestudio.systems.schema import (  # noqa: F401  (the first two at their old import path)
    DensifyConfig,
    GaussianLRConfig,
    GaussianSplattingSystemConfig,
)
from threestudio.systems.utils import _plain
from threestudio.utils.imports import require
from threestudio.utils.log import info

STRATEGIES = ("default", "mcmc", "none")
GAUSSIAN_KEYS = ("means", "scales", "quats", "opacities", "sh0", "shN", "colors")
DENSIFY_STATE_KEY = "gaussian_densify_state"


class GroupAsOptimizer:
    """One param group of a shared optimizer, seen as an optimizer of its own: densification strategies expect one
    optimizer (with one param group) per gaussian attribute; edits to ``param_groups[0]`` and ``state`` go to the
    shared optimizer."""

    def __init__(self, optimizer: torch.optim.Optimizer, group: Dict[str, Any]) -> None:
        self.optimizer = optimizer
        self.param_groups = [group]

    @property
    def state(self) -> Any:
        return self.optimizer.state


@threestudio.register("gaussian-splatting-system")
class GaussianSplattingSystem(ComposesObjective, HeldOutViews, BaseLift3DSystem):
    Config = GaussianSplattingSystemConfig
    cfg: Config

    def configure(self) -> None:
        super().configure()
        self.init_held_out_views()
        d = self.cfg.densify
        if d.strategy not in STRATEGIES:
            raise ValueError(f"system.densify.strategy={d.strategy!r}: use one of {', '.join(STRATEGIES)}.")
        if d.backend not in ("auto", "gsplat", "torch"):
            raise ValueError(f"system.densify.backend={d.backend!r}: use auto, gsplat or torch.")
        if not isinstance(self.geometry, GaussianSplatting):
            raise ValueError(f"system.geometry_type={self.cfg.geometry_type!r}: the gaussian-splatting-system needs a "
                             f"gaussian geometry (gaussian-splatting).")
        self.configure_objective()
        self._camera_extent: Optional[float] = None  # from the data (on_scene)
        self._strategy: Any = None
        self._strategy_state: Optional[Dict[str, Any]] = None
        self._optimizer: Optional[torch.optim.Optimizer] = None
        self._last_meta: Optional[Dict[str, Any]] = None
        self._last_step = 0

    # ------------------------------------------------------------------ the objective
    def objective_kind(self) -> str:
        """Text-to-3D (``guidance_type`` set): score distillation; else reconstruction against the images."""
        return "score-distillation" if self.cfg.guidance_type else "photometric"

    def objective_options(self) -> Dict[str, Any]:
        if self.objective_kind() != "photometric":
            return {}
        return {"always": ["l1", "mse"], "defaults": {"l1": 1.0}}

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.trainer is not None and self.trainer.world_size > 1 and self.cfg.densify.strategy != "none":
            raise RuntimeError("gaussian-splatting-system: densification changes the number of gaussians, which DDP "
                               "cannot follow; train on one GPU (--gpu 0) or set system.densify.strategy=none.")
        self.prepare_objective()

    def on_fit_end(self) -> None:
        self.release_objective()  # free a diffusion model before the test pass

    # ------------------------------------------------------------------ optimiser and densification
    def on_scene(self, scene: Dict[str, Any]) -> None:
        self._camera_extent = scene.get("camera_extent")

    def _scene_scale(self) -> float:
        s = self.cfg.densify.scene_scale
        if s is None:
            return float(self.geometry.cfg.radius)
        if s == "cameras":
            extent = self._camera_extent
            if extent is None:
                raise ValueError("system.densify.scene_scale=cameras needs a data module that knows its cameras "
                                 "(multiview-images); give a number instead.")
            return 1.1 * float(extent)
        if isinstance(s, str):
            raise ValueError(f"system.densify.scene_scale={s!r}: use a number, null or 'cameras'.")
        return float(s)

    def _means_lr(self, step: int) -> float:
        lr = self.cfg.lr
        start, end = lr.means * self._scene_scale(), lr.means_final * self._scene_scale()
        if lr.means_decay_steps <= 0 or start <= 0 or end <= 0:
            return start
        t = min(max(step / lr.means_decay_steps, 0.0), 1.0)
        return math.exp((1 - t) * math.log(start) + t * math.log(end))

    def configure_optimizers(self):  # type: ignore[override]
        lr = self.cfg.lr
        groups: List[Dict[str, Any]] = []
        for key, p in self.geometry.params.items():
            rate = self._means_lr(0) if key == "means" else getattr(lr, key)
            groups.append({"params": [p], "name": key, "lr": rate})
        gaussian_ids = {id(p) for p in self.geometry.params.values()}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in gaussian_ids]
        opt_cfg = _plain(self.cfg.optimizer) or {}
        args = dict(opt_cfg.get("args", {}) or {})
        if rest:
            groups.append({"params": rest, "name": "other", "lr": float(args.get("lr", 1e-3))})
        name = opt_cfg.get("name", "Adam")
        cls = getattr(torch.optim, name, None)
        if not isinstance(cls, type) or name not in ("Adam", "AdamW"):
            raise ValueError(f"system.optimizer.name={name!r}: the gaussian-splatting-system uses Adam or AdamW "
                             f"(densification edits their per-element moments).")
        extra = {k: (tuple(v) if isinstance(v, list) else v) for k, v in args.items() if k not in ("lr", "eps")}
        self._optimizer = cls(groups, lr=groups[0]["lr"], eps=lr.eps, **extra)
        self._build_strategy()
        return {"optimizer": self._optimizer}

    def _build_strategy(self) -> None:
        d = self.cfg.densify
        self._strategy = None
        if d.strategy == "none":
            return
        use_gsplat = d.backend == "gsplat" or (d.backend == "auto" and self.device.type == "cuda"
                                                and _importable("gsplat"))
        if d.strategy == "mcmc":
            if not use_gsplat or self.device.type != "cuda":
                raise ValueError("system.densify.strategy=mcmc runs on CUDA through gsplat (its relocation kernel); "
                                 f"this run is on {self.device} with densify.backend={d.backend}. Use "
                                 f"densify.strategy=default here (our PyTorch implementation).")
            gs = require("gsplat", "system.densify.strategy=mcmc", "pip install gsplat==1.5.3")
            self._strategy = gs.MCMCStrategy(cap_max=d.cap_max, noise_lr=d.noise_lr,
                                             refine_start_iter=d.refine_start_iter, refine_stop_iter=d.refine_stop_iter,
                                             refine_every=d.refine_every, min_opacity=d.min_opacity)
            state = self._strategy.initialize_state()
        else:
            common = dict(prune_opa=d.prune_opa, grow_grad2d=d.grow_grad2d, grow_scale3d=d.grow_scale3d,
                          prune_scale3d=d.prune_scale3d, refine_start_iter=d.refine_start_iter,
                          refine_stop_iter=d.refine_stop_iter, reset_every=d.reset_every,
                          refine_every=d.refine_every, pause_refine_after_reset=d.pause_refine_after_reset,
                          absgrad=d.absgrad, revised_opacity=d.revised_opacity)
            if use_gsplat:
                if self.device.type != "cuda":
                    raise ValueError(f"system.densify.backend=gsplat: gsplat's strategies are used on CUDA only (this "
                                     f"run is on {self.device}); use backend auto or torch.")
                gs = require("gsplat", "system.densify.backend=gsplat", "pip install gsplat==1.5.3")
                self._strategy = gs.DefaultStrategy(**common)
            else:
                self._strategy = DefaultDensifier(**common)
            state = self._strategy.initialize_state(scene_scale=self._scene_scale())
        if self._strategy_state is None:
            self._strategy_state = state
        else:  # a resumed run restored it already (possibly on another device)
            self._strategy_state = {k: (v.to(self.device) if torch.is_tensor(v) else v)
                                    for k, v in self._strategy_state.items()}
        info(f"densification: {d.strategy} ({type(self._strategy).__module__}.{type(self._strategy).__name__})")

    def _views(self) -> Dict[str, GroupAsOptimizer]:
        assert self._optimizer is not None
        return {g["name"]: GroupAsOptimizer(self._optimizer, g) for g in self._optimizer.param_groups
                if g.get("name") in GAUSSIAN_KEYS}

    # ------------------------------------------------------------------ training
    def forward(self, batch: Dict[str, Any]) -> Dict[str, Any]:  # type: ignore[override]
        return self.renderer(**batch)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        if self._optimizer is not None:
            lr = self._means_lr(self.true_global_step)
            for g in self._optimizer.param_groups:
                if g.get("name") == "means":
                    g["lr"] = lr

    def training_step(self, batch: Dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self(batch)
        meta = out["splat_meta"]
        step = self.true_global_step
        if self._strategy is not None and self.training:
            self._strategy.step_pre_backward(self.geometry.params, self._views(), self._strategy_state, step, meta)
        self._last_meta, self._last_step = meta, step
        terms = self.objective_terms(out, batch)
        defaults = {name: self.objective.default_weight for name in terms}
        if "mse" in terms and self.logging_step():
            with torch.no_grad():
                self.log_progress("train/psnr", -10.0 * torch.log10(terms["mse"].detach().clamp_min(1e-12)))
        args = self.geometry.splat_args()
        terms["opacity_reg"] = args["opacities"].mean()
        terms["scale_reg"] = args["scales"].mean()
        loss = self.weighted_loss(terms, out["comp_rgb"].device, defaults)
        if self.logging_step():  # per-step tensor logs would read the GPU back every step
            self.log_progress("train/loss", loss)
            self.log_progress("train/num_gaussians", float(self.geometry.num_gaussians))
        return loss

    @torch.no_grad()
    def _densify(self) -> None:
        if self._strategy is None or self._last_meta is None:
            return
        n0 = self.geometry.num_gaussians
        views = self._views()
        if self.cfg.densify.strategy == "mcmc":
            self._strategy.step_post_backward(self.geometry.params, views, self._strategy_state, self._last_step,
                                              self._last_meta, lr=self._means_lr(self._last_step))
        else:
            kw = {"packed": bool(getattr(self.renderer.cfg, "packed", False))}
            self._strategy.step_post_backward(self.geometry.params, views, self._strategy_state, self._last_step,
                                              self._last_meta, **kw)
            if not isinstance(self._strategy, DefaultDensifier):  # gsplat 1.5.3 skips its opacity resets
                d = self.cfg.densify
                if ensure_opacity_reset(self.geometry.params, self._views(), self._strategy_state, self._last_step,
                                        d.reset_every, d.refine_stop_iter, d.prune_opa):
                    info(f"step {self._last_step}: opacities reset (gsplat's DefaultStrategy skipped it)")
        self._last_meta = None
        if self.geometry.num_gaussians != n0:
            info(f"step {self._last_step}: {n0} -> {self.geometry.num_gaussians} gaussians")

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # right after the step, inside the batch: a checkpoint written at this step's end (callbacks run before the
        # module's batch-end hook) then holds the densified gaussians and this step's statistics
        self._densify()

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self._strategy_state is not None:
            checkpoint[DENSIFY_STATE_KEY] = {k: v for k, v in self._strategy_state.items() if k != "binoms"}

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get(DENSIFY_STATE_KEY)
        if saved is not None:
            self._strategy_state = dict(saved)
            if self.cfg.densify.strategy == "mcmc":
                self._strategy_state = None  # binoms are rebuilt by initialize_state

    # ------------------------------------------------------------------ evaluation and export
    def _render_view(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        with torch.no_grad():
            out = self(batch)
        return {k: v[0] for k, v in out.items() if torch.is_tensor(v) and v.dim() == 4}

    def _turntable_frames(self, n_views: int, elevation: float, distance: float, fovy_deg: float, height: int,
                          width: int) -> List[torch.Tensor]:
        tt = cam.turntable(n_views, elevation, distance, fovy_deg)
        frames: List[torch.Tensor] = []
        step = max(1, self.cfg.eval_camera_batch)
        for i in range(0, n_views, step):
            c2w = tt["c2w"][i:i + step].to(self.device)
            intr = intrinsics_from_fovy(tt["fovy"][i:i + step], height, width).to(self.device)
            with torch.no_grad():
                out = self.renderer(c2w=c2w, height=height, width=width, intrinsics=intr)
            frames += [f.clamp(0, 1).cpu() for f in out["comp_rgb"]]
        return frames

    def _render_turntable(self, step: int) -> None:
        self.save_video(f"it{step}-turntable.mp4", self._turntable_frames(*self._turntable_params()),
                        fps=self.cfg.turntable.fps)

    def _turntable_params(self, n_views: Optional[int] = None) -> tuple:
        cfg = self.cfg.turntable
        cams = self._test_cameras
        if cams:
            pos = torch.stack([c["c2w"][:3, 3] for c in cams])
            dist = float(pos.norm(dim=-1).mean())
            elev = float(torch.rad2deg(torch.asin((pos[:, 2] / pos.norm(dim=-1)).clamp(-1, 1))).mean())
            fovy = sum(c["fovy_deg"] for c in cams) / len(cams)
            h, w = cams[0]["height"], cams[0]["width"]
        else:
            dist, elev, fovy, h, w = 2.5 * float(self.geometry.cfg.radius), 15.0, 45.0, 256, 256
        n = max(cfg.n_views if n_views is None else n_views, 1)
        return (n, cfg.elevation_deg if cfg.elevation_deg is not None else elev,
                cfg.distance if cfg.distance is not None else dist,
                cfg.fovy_deg if cfg.fovy_deg is not None else fovy, h, w)

    def on_predict_start(self) -> None:  # no mesh exporter: PLY + turntable
        self._test_cameras = []

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        if isinstance(batch, dict) and "c2w" in batch:
            self._test_cameras.append({"c2w": batch["c2w"][0].detach().cpu(), "fovy_deg": _fovy_deg(batch),
                                       "height": int(batch["height"]), "width": int(batch["width"])})
        return None

    def on_predict_epoch_end(self) -> None:
        self.export()

    def export(self) -> List[str]:
        step = self.true_global_step
        written: List[str] = []
        if self.cfg.export_ply and self._is_writer:
            written.append(self.geometry.save_ply(self.get_save_path(f"it{step}-export/gaussians.ply")))
        if self.cfg.export_turntable:
            params = self._turntable_params(self.cfg.export_turntable_views)
            path = self.save_video(f"it{step}-export/turntable.mp4", self._turntable_frames(*params),
                                   fps=self.cfg.turntable.fps)
            if path:
                written.append(path)
        if written:
            info(f"Exported {self.geometry.num_gaussians} gaussians: {', '.join(written)}")
        return written


def _importable(name: str) -> bool:
    from threestudio.utils.imports import available

    return available(name)
