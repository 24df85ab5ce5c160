"""Lightning callbacks: the progress bar, the learning rates and the code snapshot."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any, Dict, Iterable

from pytorch_lightning.callbacks import Callback, RichProgressBar, TQDMProgressBar
from pytorch_lightning.utilities import rank_zero_only

from threestudio.utils.extensions import REPO_ROOT
from threestudio.utils.log import debug


class _SystemValues:
    """Shows the values a system logged with ``BaseSystem.log_progress`` (the main losses), read without waiting for
    the GPU; ``prog_bar=True`` values are shown too, as Lightning does."""

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict:
        items = super().get_metrics(trainer, pl_module)  # type: ignore[misc]
        values = getattr(pl_module, "progress_values", None)
        if callable(values):
            items.update({k: f"{v:.4g}" for k, v in values().items()})
        return items


class StepProgressBar(_SystemValues, RichProgressBar):
    """Rich progress bar that counts optimisation steps (it/s, elapsed and remaining time, and the main losses)."""

    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        if trainer.max_steps and trainer.max_steps > 0:
            return "Train steps"
        return f"Train epoch {current_epoch}"


def ProgressBar() -> Callback:
    try:
        import rich  # noqa: F401

        return StepProgressBar(leave=True)
    except ImportError:  # pragma: no cover - rich is a core dependency
        return _TQDMBar()


def learning_rates(optimizers: Iterable[Any]) -> Dict[str, Any]:
    """Each parameter group's learning rate, under the names Lightning's ``LearningRateMonitor`` gives them:
    ``lr-Adam`` for a single unnamed group, ``lr-Adam/<name>`` for a group with a ``name`` (as
    ``system.optimizer.params`` makes), ``lr-Adam/pg2`` for the second of several unnamed ones; a second optimizer of
    the same class is ``lr-Adam-1``."""
    optimizers = list(optimizers)
    total = Counter(type(o).__name__ for o in optimizers)
    seen: Counter = Counter()
    out: Dict[str, Any] = {}
    for opt in optimizers:
        cls = type(opt).__name__
        base = f"lr-{cls}" + (f"-{seen[cls]}" if total[cls] > 1 and seen[cls] else "")
        seen[cls] += 1
        groups = opt.param_groups
        for i, group in enumerate(groups):
            if "name" in group:
                key = f"{base}/{group['name']}"
            elif len(groups) > 1:
                key = f"{base}/pg{i + 1}"
            else:
                key = base
            out[key] = group["lr"]
    return out


class LearningRates(Callback):
    """Sends the learning rates to the loggers on logging steps, through ``BaseSystem.log_train``.

    Lightning's ``LearningRateMonitor`` does the same but also puts each rate into ``trainer.callback_metrics`` as a
    new CUDA tensor: a copy from the host that waits for all the GPU work queued so far, at the start of every logging
    step (on an H200 that step of dreamfusion-sd took 35-55 ms instead of ~26). Rates logged here are not in
    ``callback_metrics``; nothing in a run monitors them."""

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if not (hasattr(pl_module, "log_train") and pl_module.logging_step()):
            return
        for name, lr in learning_rates(trainer.optimizers).items():
            pl_module.log_train(name, lr)


class CodeSnapshotCallback(Callback):
    """Copies the repository's source files into ``<trial>/code`` when training starts (rank 0)."""

    def __init__(self, dest: str, repo_root: str = REPO_ROOT) -> None:
        self.dest = dest
        self.repo_root = repo_root

    @rank_zero_only
    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        from threestudio.utils.trials import snapshot_code

        if os.path.isdir(self.dest):
            return  # resumed into an existing trial: keep the original snapshot
        n = snapshot_code(self.repo_root, self.dest)
        debug(f"code snapshot: {n} files in {self.dest}")


class _TQDMBar(_SystemValues, TQDMProgressBar):
    pass
