"""System base classes (threestudio-compatible): :class:`BaseSystem` and :class:`BaseLift3DSystem`.

A system owns the training logic. Each step: the data module yields a batch, the system renders and computes
losses, Lightning steps the optimizer, and ``Updateable`` hooks advance schedules (``self.C(...)``).

``BaseSystem`` is assembled from parts with one job each (``threestudio.systems.parts``): the step counters and
schedules (``steps``), the training RNG stream that makes resumes exact (``rng``), the logging stack that never waits
for the GPU (``logs``), loss weights and their audit (``loss_weights``), optimizers from config (``optim``); the hooks
below call them in order. ``BaseLift3DSystem`` adds geometry, material, background and renderer, and export.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import pytorch_lightning as pl

from threestudio.registry import find
from threestudio.systems.parts.convert import convert_geometry
from threestudio.systems.parts.export import ExportThroughExporter
from threestudio.systems.parts.logs import TrainLogs
from threestudio.systems.parts.loss_weights import LossWeights
from threestudio.systems.parts.optim import OptimizersFromConfig
from threestudio.systems.parts.rng import TrainRNG
from threestudio.systems.parts.steps import StepCounters
from threestudio.systems.schema import BaseLift3DSystemConfig, BaseSystemConfig
from threestudio.utils.base import Updateable
from threestudio.utils.config import config_owner, parse_structured
from threestudio.utils.log import info
from threestudio.utils.misc import cleanup, load_module_weights
from threestudio.utils.saving import SaverMixin


class BaseSystem(StepCounters, TrainLogs, LossWeights, OptimizersFromConfig, pl.LightningModule, Updateable,
                 SaverMixin):
    __threestudio_family__ = "system"
    Config = BaseSystemConfig  # in threestudio.systems.schema, which config validation reads without Lightning
    cfg: Config

    def __init__(self, cfg: Any, resumed: bool = False) -> None:
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg, owner=config_owner(type(self)))
        self._save_dir: Optional[str] = None
        self._rng = TrainRNG()
        self.init_steps(resumed)
        self.init_logs()
        self.init_loss_weights()
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

    # ------------------------------------------------------------------ step hooks
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._rng.enter_batch()
        self.update_schedules("train_dataloader")

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._rng.leave_batch()
        self.do_update_step_end(self.true_current_epoch, self.true_global_step)
        self.audit_loss_weights()
        self.close_train_logs()

    def on_validation_epoch_start(self) -> None:
        self.write_train_logs(wait=True)  # the rows before this validation's, in order

    def on_train_end(self) -> None:
        self.write_train_logs(wait=True)

    def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.update_schedules("val_dataloaders")

    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.update_schedules("test_dataloaders")

    def on_predict_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.update_schedules("predict_dataloaders")

    def on_validation_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.cfg.cleanup_after_validation_step:
            cleanup()

    def on_test_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.cfg.cleanup_after_test_step:
            cleanup()

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        self._rng.save(checkpoint)

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        self._rng.load(checkpoint)
        self._resumed = True

    # ------------------------------------------------------------------ default eval behaviour
    def validation_step(self, batch: Any, batch_idx: int) -> Any:  # pragma: no cover - systems override
        raise NotImplementedError

    def on_fit_start(self) -> None:
        if self._save_dir is not None:
            info(f"Outputs are written to {self._save_dir}")


class BaseLift3DSystem(ExportThroughExporter, BaseSystem):
    """A system built from geometry, material, background and renderer (+ guidance, prompt processor, exporter)."""

    Config = BaseLift3DSystemConfig
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
        return convert_geometry(source, self.cfg)
