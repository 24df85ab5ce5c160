"""System base classes (threestudio-compatible): :class:`BaseSystem` and :class:`BaseLift3DSystem`.

A system owns the training logic. Each step: the data module yields a batch, the system renders and computes
losses, Lightning steps the optimizer, and ``Updateable`` hooks advance schedules (``self.C(...)``).

Reproducible resume: the training steps see one continuous stream of the global RNGs (torch, numpy, python, CUDA).
Its state is captured at the end of every training batch and put back at the start of the next, so whatever runs
in between (validation, data-loader start-up, checkpointing) never disturbs it; it is saved in every checkpoint and
restored before the first batch after a resume. With data modules that draw from their own saved generators, a run
stopped at step k and resumed reaches the same parameters as one that never stopped.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np
import pytorch_lightning as pl
import torch

from threestudio.registry import find
from threestudio.utils.base import Updateable
from threestudio.utils.config import parse_structured
from threestudio.utils.log import info
from threestudio.utils.misc import C, cleanup, load_module_weights, per_rank_states, state_of_this_rank
from threestudio.utils.saving import SaverMixin
from threestudio.utils.schedule import Schedule, ScheduleError, parse_schedule
from threestudio.utils.scalar_log import ScalarLog
from threestudio.systems.utils import parse_optimizer, parse_scheduler

RNG_KEY = "threestudio_rng_states"


def get_rng_states() -> Dict[str, Any]:
    states: Dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: Dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class BaseSystem(pl.LightningModule, Updateable, SaverMixin):
    __threestudio_family__ = "system"

    @dataclass
    class Config:
        loggers: dict = field(default_factory=dict)
        loss: Dict[str, Schedule] = field(default_factory=dict)  # lambda_<term>: a weight (checked at load)
        optimizer: dict = field(default_factory=dict)
        scheduler: Optional[dict] = None
        weights: Optional[str] = None
        weights_ignore_modules: Optional[List[str]] = None
        cleanup_after_validation_step: bool = False
        cleanup_after_test_step: bool = False

    cfg: Config

    def __init__(self, cfg: Any, resumed: bool = False) -> None:
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg)
        self._save_dir: Optional[str] = None
        self._resumed: bool = resumed
        self._resumed_eval: bool = False
        self._resumed_eval_status: Dict[str, int] = {"global_step": 0, "current_epoch": 0}
        self._train_rng: Optional[Dict[str, Any]] = None
        self._in_train_batch = False
        self._consulted_losses: set = set()  # loss names read through loss_weight()
        self._loss_values: Optional[Dict[str, Any]] = None  # system.loss as a plain dict (read every step)
        self._unused_losses_checked = False
        self._progress_log = ScalarLog()  # progress-bar values on their way to the host (log_progress)
        self._progress_shown: Dict[str, float] = {}
        self._scalar_log = ScalarLog()  # training scalars on their way to the loggers (log_train)
        self.configure()
        if self.cfg.weights is not None:
            self.load_weights(self.cfg.weights, self.cfg.weights_ignore_modules)
        self.post_configure()

    # ------------------------------------------------------------------ configuration hooks
    def configure(self) -> None:
        pass

    def post_configure(self) -> None:
        pass

    def load_weights(self, weights: str, ignore_modules: Optional[List[str]] = None) -> None:
        state_dict, epoch, global_step = load_module_weights(weights, ignore_modules=ignore_modules,
                                                             map_location="cpu")
        self.load_state_dict(state_dict, strict=False)
        self.do_update_step(epoch, global_step, on_load_weights=True)

    def set_resume_status(self, current_epoch: int, global_step: int) -> None:
        """Called by launch.py for --validate/--test/--export: Lightning restores no step counter outside fit."""
        self._resumed_eval = True
        self._resumed_eval_status = {"current_epoch": current_epoch, "global_step": global_step}
        self._resumed = True

    @property
    def resumed(self) -> bool:
        return self._resumed

    @property
    def true_global_step(self) -> int:
        if self._resumed_eval:
            return self._resumed_eval_status["global_step"]
        return self.global_step

    @property
    def true_current_epoch(self) -> int:
        if self._resumed_eval:
            return self._resumed_eval_status["current_epoch"]
        return self.current_epoch

    def C(self, value: Any) -> float:
        """Evaluate a scalar schedule at the current epoch and step."""
        return C(value, self.true_current_epoch, self.true_global_step)

    def logging_step(self) -> bool:
        """True on the steps whose metrics Lightning sends to the loggers (every ``trainer.log_every_n_steps``).

        Log per-step values only on these steps, through :meth:`log_train` (and :meth:`log_progress` for the
        progress bar), never ``self.log``: Lightning would read each CUDA value back (and send each number to the
        GPU) with a wait for all queued work, so the backward could not be queued while the forward runs."""
        trainer = self._trainer
        every = getattr(trainer, "log_every_n_steps", 1) if trainer is not None else 1
        return every <= 1 or (self.global_step + 1) % every == 0

    def log_train(self, name: str, value: Any) -> None:
        """Send a training scalar (a number or a one-element tensor) to the loggers, labelled with this step, without
        waiting for the GPU: the value is copied to the host when the step ends and written once the copy has landed
        (a step or so later; all of them by the end of training). Lightning's ``self.log`` would wait for all queued
        work twice per logging step (see :mod:`threestudio.utils.scalar_log`). Call on :meth:`logging_step` steps.
        These values go to the loggers only, not to ``trainer.callback_metrics`` (a ``checkpoint.monitor`` key must
        be a validation metric)."""
        self._scalar_log.add(name, value)

    def _write_train_logs(self, wait: bool = False) -> None:
        epoch = self.current_epoch
        for step, values in self._scalar_log.ready(wait):
            values.setdefault("epoch", epoch)  # as Lightning writes its own rows
            for logger in self.loggers:
                logger.log_metrics(values, step=step)
                logger.save()

    def log_progress(self, name: str, value: Any) -> None:
        """Log ``value`` to the loggers (:meth:`log_train`) and show it in the progress bar, without reading the GPU
        back.

        Lightning converts every ``prog_bar=True`` value into a Python number at the end of *every* step, also on steps
        that logged nothing (it keeps the last value), and reading a CUDA tensor waits for the GPU to finish all the
        work queued so far: the next step could not be queued while this one runs (about 8 ms a step for dreamfusion-sd
        on an H200). Here the value is copied to pinned host memory without waiting; the progress bar shows it once
        the copy has landed (:meth:`progress_values`). Call on logging steps (:meth:`logging_step`)."""
        self.log_train(name, value)
        self._progress_log.add(name, value)
        self._progress_log.close_step(0)  # on its way now, also outside a trainer (the step label is unused)

    def progress_values(self) -> Dict[str, float]:
        """The values logged with :meth:`log_progress` whose copy to the host has finished (a value still in flight
        keeps showing the one before it). Never waits for the GPU."""
        for _, values in self._progress_log.ready():
            self._progress_shown.update(values)
        return dict(self._progress_shown)

    def loss_weight(self, name: str, default: float = 0.0) -> float:
        """``system.loss.lambda_<name>`` at the current step (a number or a schedule), ``default`` when not set.
        Systems read their weights through this, so that a weight that is set but never read (a typo, or a term this
        configuration does not compute) is reported after the first training step."""
        self._consulted_losses.add(name)
        if self._loss_values is None:  # a plain dict: DictConfig.get of an unset key costs an exception and a difflib
            from omegaconf import OmegaConf

            loss = self.cfg.loss
            self._loss_values = (OmegaConf.to_container(loss, resolve=True) if OmegaConf.is_config(loss)
                                 else dict(loss))
        return float(self.C(self._loss_values.get(f"lambda_{name}", default)))

    def _warn_unused_loss_weights(self) -> None:
        """After the first training step: name every non-zero ``lambda_*`` that no loss_weight() call read."""
        self._unused_losses_checked = True
        if not self._consulted_losses:  # this system reads its weights some other way
            return
        import difflib

        from threestudio.utils.log import warn

        def nonzero(v: Any) -> bool:  # the values of a schedule, not its steps
            try:
                return parse_schedule(v).nonzero()
            except ScheduleError:
                return True  # not a schedule: the config loader reports it

        known = sorted(self._consulted_losses)
        for key, value in self.cfg.loss.items():
            if not str(key).startswith("lambda_") or key[len("lambda_"):] in self._consulted_losses:
                continue
            if not nonzero(value):
                continue
            close = difflib.get_close_matches(key[len("lambda_"):], known, n=1)
            hint = (f"did you mean lambda_{close[0]}?" if close else
                    f"the weights this run reads: {', '.join('lambda_' + k for k in known)}")
            warn(f"system.loss.{key} is set but {type(self).__name__} never read it in the first training step, so "
                 f"it has no effect ({hint})")

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):  # type: ignore[override]
        optim = parse_optimizer(self.cfg.optimizer, self)
        ret: Dict[str, Any] = {"optimizer": optim}
        sched = parse_scheduler(self.cfg.scheduler, optim)
        if sched is not None:
            ret["lr_scheduler"] = sched
        return ret

    # ------------------------------------------------------------------ step hooks
    def _dataset_of(self, loader_attr: str) -> Any:
        loaders = getattr(self.trainer, loader_attr, None)
        if loaders is None:
            return None
        if isinstance(loaders, (list, tuple)):
            loaders = loaders[0] if loaders else None
        return getattr(loaders, "dataset", None)

    def _update(self, loader_attr: str) -> None:
        self.dataset = self._dataset_of(loader_attr)  # reached by do_update_step as an attribute
        datamodule = getattr(self.trainer, "datamodule", None)
        if isinstance(datamodule, Updateable):
            datamodule.do_update_step(self.true_current_epoch, self.true_global_step)
        self.do_update_step(self.true_current_epoch, self.true_global_step)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._train_rng is not None:
            set_rng_states(self._train_rng)
        self._in_train_batch = True
        self._update("train_dataloader")

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._train_rng = get_rng_states()
        self._in_train_batch = False
        self.do_update_step_end(self.true_current_epoch, self.true_global_step)
        if not self._unused_losses_checked:
            self._warn_unused_loss_weights()
        # the step Lightning itself labels this batch's logs with (the optimizer steps before this one)
        loop = getattr(getattr(self._trainer, "fit_loop", None), "epoch_loop", None)
        self._scalar_log.close_step(int(getattr(loop, "_batches_that_stepped", self.global_step)))
        self._write_train_logs()

    def on_validation_epoch_start(self) -> None:
        self._write_train_logs(wait=True)  # the rows before this validation's, in order

    def on_train_end(self) -> None:
        self._write_train_logs(wait=True)

    def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._update("val_dataloaders")

    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._update("test_dataloaders")

    def on_predict_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._update("predict_dataloaders")

    def on_validation_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.cfg.cleanup_after_validation_step:
            cleanup()

    def on_test_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.cfg.cleanup_after_test_step:
            cleanup()

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        # callbacks' on_train_batch_end (ModelCheckpoint) runs before ours: then the current state is the one
        rng = get_rng_states() if (self._in_train_batch or self._train_rng is None) else self._train_rng
        checkpoint[RNG_KEY] = per_rank_states(rng)  # under DDP, every rank's streams (each has its own seed)

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        self._train_rng = state_of_this_rank(checkpoint.get(RNG_KEY))
        self._resumed = True

    # ------------------------------------------------------------------ default eval behaviour
    def validation_step(self, batch: Any, batch_idx: int) -> Any:  # pragma: no cover - systems override
        raise NotImplementedError

    def on_fit_start(self) -> None:
        if self._save_dir is not None:
            info(f"Outputs are written to {self._save_dir}")


class BaseLift3DSystem(BaseSystem):
    """A system built from geometry, material, background and renderer (+ guidance, prompt processor, exporter)."""

    @dataclass
    class Config(BaseSystem.Config):
        geometry_type: str = ""
        geometry: dict = field(default_factory=dict)
        geometry_convert_from: Optional[str] = None
        geometry_convert_inherit_texture: bool = False
        geometry_convert_override: dict = field(default_factory=dict)
        material_type: str = ""
        material: dict = field(default_factory=dict)
        background_type: str = ""
        background: dict = field(default_factory=dict)
        renderer_type: str = ""
        renderer: dict = field(default_factory=dict)
        guidance_type: str = ""
        guidance: dict = field(default_factory=dict)
        prompt_processor_type: str = ""
        prompt_processor: dict = field(default_factory=dict)
        exporter_type: str = "mesh-exporter"
        exporter: dict = field(default_factory=dict)
        export_after_train: bool = False  # --train also runs the export (after the test pass)

    cfg: Config

    def configure(self) -> None:
        cfg = self.cfg
        if cfg.geometry_convert_from and not (cfg.weights or self.resumed):
            self.geometry = self._convert_geometry(cfg.geometry_convert_from)
        else:
            self.geometry = find(cfg.geometry_type, "geometry", "system.geometry_type")(cfg.geometry)
        self.material = find(cfg.material_type, "material", "system.material_type")(cfg.material)
        self.background = find(cfg.background_type, "background", "system.background_type")(cfg.background)
        self.renderer = find(cfg.renderer_type, "renderer", "system.renderer_type")(
            cfg.renderer, geometry=self.geometry, material=self.material, background=self.background
        )

    def _convert_geometry(self, source: str) -> Any:
        """Initialise this stage's geometry from an earlier trial (coarse-to-fine). ``source`` is a checkpoint, a
        trial folder, or 'LAST:<exp dir>' (newest trial there)."""
        from threestudio.utils.trials import load_trial_config, resolve_checkpoint

        ckpt = resolve_checkpoint(source, key="system.geometry_convert_from")
        prev_cfg = load_trial_config(ckpt)
        prev_system = prev_cfg.system
        prev_geometry_cfg = prev_system.geometry
        for k, v in self.cfg.geometry_convert_override.items():
            prev_geometry_cfg[k] = v
        prev_cls = find(prev_system.geometry_type, "geometry", "system.geometry_type (of the earlier stage)")
        prev_geometry = prev_cls(prev_geometry_cfg)
        state_dict, epoch, global_step = load_module_weights(ckpt, module_name="geometry", map_location="cpu")
        prev_geometry.load_state_dict(state_dict, strict=False)
        prev_geometry.do_update_step(epoch, global_step, on_load_weights=True)
        new_cls = find(self.cfg.geometry_type, "geometry", "system.geometry_type")
        info(f"Converting {prev_system.geometry_type} from {ckpt} to {self.cfg.geometry_type}")
        return new_cls.create_from(prev_geometry, self.cfg.geometry,
                                   copy_net=self.cfg.geometry_convert_inherit_texture)

    def on_predict_start(self) -> None:
        self.exporter = find(self.cfg.exporter_type, "exporter", "system.exporter_type")(
            self.cfg.exporter, geometry=self.geometry, material=self.material, background=self.background
        )

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        if batch_idx == 0:
            self.export()
        return None

    def export(self) -> List[str]:
        outputs = self.exporter()
        written: List[str] = []
        for out in outputs:
            save_fn = getattr(self, f"save_{out.save_type}")
            result = save_fn(f"it{self.true_global_step}-export/{out.save_name}", **out.params)
            written += result if isinstance(result, list) else [result]
        info(f"Exported: {', '.join(os.path.relpath(p, self.get_save_dir()) for p in written if p)}")
        return written
