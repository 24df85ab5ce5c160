"""Training losses reach the progress bar without a per-step read-back of the GPU: systems log them through
``BaseSystem.log_progress`` (the loggers get every logged value; Lightning's own progress-bar metrics, which it turns
into Python numbers at the end of every step, stay empty)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from threestudio.systems.base import BaseSystem
from threestudio.utils.callbacks import StepProgressBar


class Tiny(BaseSystem):
    @dataclass
    class Config(BaseSystem.Config):
        pass

    def configure(self) -> None:
        self.w = torch.nn.Parameter(torch.tensor([3.0]))
        self.logged = {}
        self.reference_log = False

    def training_step(self, batch, batch_idx):
        loss = (self.w**2).sum() * batch[0]
        if self.logging_step():
            self.log_progress("train/loss", loss)
            self.logged[self.global_step] = float(loss.detach())
            if self.reference_log:  # Lightning's own path, for the step labels
                self.log("train/reference", loss.detach())
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_progress_bar_shows_logged_loss_without_lightning_conversion(tmp_path):
    system = Tiny({})
    seen = []

    class Watch(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            seen.append(dict(trainer.progress_bar_metrics))

    bar = StepProgressBar()
    trainer = pl.Trainer(max_steps=12, log_every_n_steps=5, logger=pl.loggers.CSVLogger(str(tmp_path)),
                         callbacks=[bar, Watch()], enable_checkpointing=False, accelerator="cpu",
                         enable_model_summary=False)
    trainer.fit(system, DataLoader(torch.ones(100, 1), batch_size=None))
    assert sorted(system.logged) == [4, 9]  # logging steps: global_step + 1 divisible by 5
    assert all("train/loss" not in m for m in seen)  # nothing for Lightning to convert at each step end
    values = system.progress_values()
    assert values["train/loss"] == system.logged[9]
    assert bar.get_metrics(trainer, system)["train/loss"] == f"{system.logged[9]:.4g}"
    # the loggers still get every logged value
    import csv
    import glob

    (path,) = glob.glob(str(tmp_path / "**" / "metrics.csv"), recursive=True)
    rows = [r for r in csv.DictReader(open(path)) if r.get("train/loss")]
    assert [float(r["train/loss"]) for r in rows] == [system.logged[4], system.logged[9]]
    assert "train/loss" not in trainer.logged_metrics  # they went straight to the loggers


def test_train_logs_carry_the_step_lightning_gives_its_own(tmp_path):
    """log_train's rows are labelled as Lightning labels what self.log sends on the same step, and every row written
    during training is in the file when fit returns."""
    import csv
    import glob

    system = Tiny({})
    system.reference_log = True
    trainer = pl.Trainer(max_steps=23, log_every_n_steps=5, logger=pl.loggers.CSVLogger(str(tmp_path)),
                         enable_checkpointing=False, accelerator="cpu", enable_model_summary=False,
                         enable_progress_bar=False)
    trainer.fit(system, DataLoader(torch.ones(100, 1), batch_size=None))
    (path,) = glob.glob(str(tmp_path / "**" / "metrics.csv"), recursive=True)
    rows = list(csv.DictReader(open(path)))
    ours = {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}
    theirs = {int(r["step"]): float(r["train/reference"]) for r in rows if r.get("train/reference")}
    assert ours == theirs and sorted(ours) == [4, 9, 14, 19]
    assert ours == {k: system.logged[k] for k in (4, 9, 14, 19)}
    assert all(r["epoch"] == "0" for r in rows if r.get("train/loss"))


def test_progress_value_waits_for_its_copy():
    """A CUDA value is shown only once its non-blocking copy has landed; until then the previous one stays (CPU
    values, as here, land at once; the CUDA event path is exercised on the GPU machine)."""
    system = Tiny({})
    system.log_progress("train/loss", torch.tensor(2.5))  # outside a trainer
    assert system.progress_values() == {"train/loss": 2.5}

    class Pending:
        done = False

        def query(self):
            return self.done

    system.log_progress("train/loss", torch.tensor(7.0))
    system._progress_log._pending[0].event = event = Pending()  # as a CUDA copy still in flight
    assert system.progress_values() == {"train/loss": 2.5}
    event.done = True
    assert system.progress_values() == {"train/loss": 7.0}


@pytest.mark.gpu
def test_progress_value_from_cuda_lands_after_its_copy():
    system = Tiny({})
    x = torch.randn(4096, 4096, device="cuda")
    value = (x @ x).abs().mean()  # queued work: the copy lands after it
    system.log_progress("train/loss", value)
    torch.cuda.synchronize()
    assert system.progress_values() == {"train/loss": pytest.approx(float(value))}


class TwoGroups(Tiny):
    """Two named parameter groups (as system.optimizer.params makes) and a rate that halves every step."""

    def configure(self) -> None:
        super().configure()
        self.v = torch.nn.Parameter(torch.tensor([1.0]))

    def training_step(self, batch, batch_idx):
        return ((self.w**2).sum() + (self.v**2).sum()) * batch[0]

    def configure_optimizers(self):
        opt = torch.optim.Adam([{"params": [self.w], "name": "geometry", "lr": 0.01},
                                {"params": [self.v], "name": "background", "lr": 0.001}])
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _lr_rows(tmp_path, callback):
    import csv
    import glob

    trainer = pl.Trainer(max_steps=12, log_every_n_steps=5, logger=pl.loggers.CSVLogger(str(tmp_path)),
                         callbacks=[callback], enable_checkpointing=False, accelerator="cpu",
                         enable_model_summary=False, enable_progress_bar=False)
    trainer.fit(TwoGroups({}), DataLoader(torch.ones(100, 1), batch_size=None))
    (path,) = glob.glob(str(tmp_path / "**" / "metrics.csv"), recursive=True)
    return {int(r["step"]): {k: float(v) for k, v in r.items() if k.startswith("lr-") and v}
            for r in csv.DictReader(open(path))}


def test_learning_rates_logged_as_lightnings_monitor_logs_them(tmp_path):
    """LearningRates (launch.py's callback) writes the rows LearningRateMonitor would: same names, steps and values;
    without a CUDA tensor per rate in callback_metrics."""
    from pytorch_lightning.callbacks import LearningRateMonitor

    from threestudio.utils.callbacks import LearningRates

    ours = _lr_rows(tmp_path / "ours", LearningRates())
    theirs = _lr_rows(tmp_path / "theirs", LearningRateMonitor(logging_interval="step"))
    assert ours == theirs
    assert sorted(ours) == [4, 9]
    assert ours[9] == {"lr-Adam/geometry": pytest.approx(0.01 * 0.5**9),
                       "lr-Adam/background": pytest.approx(0.001 * 0.5**9)}


def test_learning_rate_names():
    from threestudio.utils.callbacks import learning_rates

    p = [torch.nn.Parameter(torch.zeros(1)) for _ in range(3)]
    one = torch.optim.SGD([p[0]], lr=0.1)
    two = torch.optim.Adam([{"params": [p[1]]}, {"params": [p[2]], "lr": 0.5}], lr=0.2)
    named = torch.optim.Adam([{"params": [p[0]], "name": "geometry.encoding"}], lr=0.3)
    assert learning_rates([one, two, named]) == {"lr-SGD": 0.1, "lr-Adam/pg1": 0.2, "lr-Adam/pg2": 0.5,
                                                 "lr-Adam-1/geometry.encoding": 0.3}


@pytest.mark.gpu
def test_learning_rates_never_wait_for_the_gpu():
    """A rate that is a CUDA tensor (capturable/fused optimizers) is logged without a synchronisation."""
    from threestudio.utils.callbacks import LearningRates

    system = Tiny({}).cuda()
    opt = torch.optim.Adam(system.parameters(), lr=torch.tensor(0.25, device="cuda"))

    class Trainer:
        optimizers = [opt]
        log_every_n_steps = 1

    torch.cuda.set_sync_debug_mode("error")
    try:
        LearningRates().on_train_batch_start(Trainer(), system, None, 0)
        system._scalar_log.close_step(7)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert list(system._scalar_log.ready(wait=True)) == [(7, {"lr-Adam": 0.25})]
