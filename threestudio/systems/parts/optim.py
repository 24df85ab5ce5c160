"""Optimizers and learning-rate schedulers of a system from ``system.optimizer`` and ``system.scheduler``."""

from __future__ import annotations

from typing import Any, Dict

from threestudio.systems.utils import parse_optimizer, parse_scheduler


class OptimizersFromConfig:
    """Mixin: Lightning's ``configure_optimizers`` from ``cfg.optimizer`` / ``cfg.scheduler``."""

    def configure_optimizers(self):  # type: ignore[override]
        optim = parse_optimizer(self.cfg.optimizer, self)
        ret: Dict[str, Any] = {"optimizer": optim}
        sched = parse_scheduler(self.cfg.scheduler, optim)
        if sched is not None:
            ret["lr_scheduler"] = sched
        return ret
