"""The step a system is at, and the schedules that follow it.

While fitting these are Lightning's counters. ``--validate``/``--test``/``--export`` run outside fit, where Lightning
restores no step counter: launch.py then passes the checkpoint's (:meth:`StepCounters.set_resume_status`).
"""

from __future__ import annotations

from typing import Any, Dict

from threestudio.utils.base import Updateable
from threestudio.utils.misc import C


class StepCounters:
    """Mixin for ``pl.LightningModule`` + ``Updateable``: ``true_global_step``, ``true_current_epoch``, ``C()``,
    ``resumed`` and the per-batch schedule update."""

    def init_steps(self, resumed: bool) -> None:
        self._resumed: bool = resumed
        self._resumed_eval: bool = False
        self._resumed_eval_status: Dict[str, int] = {"global_step": 0, "current_epoch": 0}

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

    def update_schedules(self, loader_attr: str) -> None:
        """Before a batch of the loader ``trainer.<loader_attr>``: the data module and this system follow the step."""
        loaders = getattr(self.trainer, loader_attr, None)
        if isinstance(loaders, (list, tuple)):
            loaders = loaders[0] if loaders else None
        self.dataset = getattr(loaders, "dataset", None)  # reached by do_update_step as an attribute
        datamodule = self.trainer.datamodule
        if isinstance(datamodule, Updateable):
            datamodule.do_update_step(self.true_current_epoch, self.true_global_step)
        self.do_update_step(self.true_current_epoch, self.true_global_step)
