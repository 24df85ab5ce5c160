"""A CSV logger that keeps the rows of earlier runs of a trial.

Lightning's ``CSVLogger`` deletes ``metrics.csv`` when its folder is not empty, so a resumed run would lose the curves
of the steps before the interruption. :class:`ResumableCSVLogger` keeps the file and appends to it (a new column
rewrites the file with the old rows kept, as Lightning does within a run).
"""

from __future__ import annotations

import csv
import os
from typing import Any

from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter


class _AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:  # keep earlier rows instead of deleting them
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="", encoding="utf-8") as f:
                header = next(csv.reader(f), [])
            self.metrics_keys = sorted(set(header))


class ResumableCSVLogger(CSVLogger):
    @property
    def experiment(self) -> Any:
        if self._experiment is not None:
            return self._experiment
        self._fs.makedirs(self.root_dir, exist_ok=True)
        self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
