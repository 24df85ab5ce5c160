"""Lightning callbacks: the progress bar and the code snapshot."""

from __future__ import annotations

import os
from typing import Any

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
