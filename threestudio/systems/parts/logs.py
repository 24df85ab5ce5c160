"""The logging stack of a system: training scalars to the loggers and progress-bar values, never waiting for the GPU.

Log per-step values only on :meth:`TrainLogs.logging_step` steps, through :meth:`TrainLogs.log_train` (and
:meth:`TrainLogs.log_progress` for the progress bar), never ``self.log``: Lightning would read each CUDA value back
(and send each number to the GPU) with a wait for all queued work, so the backward could not be queued while the
forward runs (see :mod:`threestudio.utils.scalar_log`).
"""

from __future__ import annotations

from typing import Any, Dict

from threestudio.utils.scalar_log import ScalarLog


class TrainLogs:
    """Mixin for ``pl.LightningModule``: ``logging_step``, ``log_train``, ``log_progress``, ``progress_values``."""

    def init_logs(self) -> None:
        self._progress_log = ScalarLog()  # progress-bar values on their way to the host (log_progress)
        self._progress_shown: Dict[str, float] = {}
        self._scalar_log = ScalarLog()  # training scalars on their way to the loggers (log_train)

    def logging_step(self) -> bool:
        """True on the steps whose metrics Lightning sends to the loggers (every ``trainer.log_every_n_steps``)."""
        trainer = self._trainer
        every = trainer.log_every_n_steps if trainer is not None else 1
        return every <= 1 or (self.global_step + 1) % every == 0

    def log_train(self, name: str, value: Any) -> None:
        """Send a training scalar (a number or a one-element tensor) to the loggers, labelled with this step, without
        waiting for the GPU: the value is copied to the host when the step ends and written once the copy has landed
        (a step or so later; all of them by the end of training). These values go to the loggers only, not to
        ``trainer.callback_metrics`` (a ``checkpoint.monitor`` key must be a validation metric)."""
        self._scalar_log.add(name, value)

    def log_progress(self, name: str, value: Any) -> None:
        """Log ``value`` to the loggers (:meth:`log_train`) and show it in the progress bar, without reading the GPU
        back: Lightning would turn every ``prog_bar=True`` value into a Python number at the end of *every* step, a
        wait for all queued work. Here the value is copied to pinned host memory without waiting; the progress bar
        shows it once the copy has landed (:meth:`progress_values`)."""
        self.log_train(name, value)
        self._progress_log.add(name, value)
        self._progress_log.close_step(0)  # on its way now, also outside a trainer (the step label is unused)

    def progress_values(self) -> Dict[str, float]:
        """The values logged with :meth:`log_progress` whose copy to the host has finished (a value still in flight
        keeps showing the one before it). Never waits for the GPU."""
        for _, values in self._progress_log.ready():
            self._progress_shown.update(values)
        return dict(self._progress_shown)

    def close_train_logs(self) -> None:
        """At the end of a training batch: label this batch's values with the step Lightning labels its own logs
        with (the optimizer steps before this hook), and write the rows that have landed."""
        loop = self._trainer.fit_loop.epoch_loop if self._trainer is not None else None
        self._scalar_log.close_step(int(loop._batches_that_stepped if loop is not None else self.global_step))
        self.write_train_logs()

    def write_train_logs(self, wait: bool = False) -> None:
        epoch = self.current_epoch
        for step, values in self._scalar_log.ready(wait):
            values.setdefault("epoch", epoch)  # as Lightning writes its own rows
            for logger in self.loggers:
                logger.log_metrics(values, step=step)
                logger.save()
