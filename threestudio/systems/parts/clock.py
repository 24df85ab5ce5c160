"""Training time of a trial: wall time of training steps only (validation passes inside fit are excluded, the GPU is
synchronised around them), kept across resumes in the checkpoint, for PSNR-vs-time curves and ``train_time_s``."""

from __future__ import annotations

import time
from typing import Any, Dict, Optional

import torch

TRAIN_TIME_KEY = "threestudio_train_time_s"


class TrainingClock:
    """Mixin for a ``pl.LightningModule``: call :meth:`init_clock` in ``configure()``; call :meth:`pause_clock` at the
    start of a validation epoch and :meth:`resume_clock` at its end."""

    def init_clock(self) -> None:
        self._train_time_base = 0.0  # training time of the runs of this trial before this one (from the checkpoint)
        self._train_t0: Optional[float] = None
        self._eval_time = 0.0
        self._val_t0: Optional[float] = None

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def train_time(self) -> float:
        """Seconds spent in training steps in this trial so far (validation excluded)."""
        if self._train_t0 is None:
            return self._train_time_base
        running = self._val_t0 if self._val_t0 is not None else time.perf_counter()
        return self._train_time_base + running - self._train_t0 - self._eval_time

    def pause_clock(self) -> None:
        """A validation starts: inside fit, its time is not training time."""
        if self._train_t0 is not None:
            self._sync()
            self._val_t0 = time.perf_counter()

    def resume_clock(self) -> Optional[float]:
        """A validation ends: the training time it was taken at, or None for a validation outside fit."""
        if self._val_t0 is None:
            return None
        self._sync()
        t = self.train_time()
        self._eval_time += time.perf_counter() - self._val_t0
        self._val_t0 = None
        return t

    def on_train_start(self) -> None:
        self._sync()
        self._train_t0, self._eval_time = time.perf_counter(), 0.0

    def on_train_end(self) -> None:
        super().on_train_end()  # type: ignore[misc]
        self._sync()
        self._train_time_base, self._train_t0 = self.train_time(), None

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)  # type: ignore[misc]
        checkpoint[TRAIN_TIME_KEY] = self.train_time()

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)  # type: ignore[misc]
        self._train_time_base = float(checkpoint.get(TRAIN_TIME_KEY, 0.0))
