"""Training scalars reach the loggers without a wait for the GPU (threestudio.utils.scalar_log): each step's values
leave with one non-blocking copy and are handed out, in step order, once it has landed."""

from __future__ import annotations

import pytest
import torch

from threestudio.utils.scalar_log import ScalarLog


class FakeEvent:
    def __init__(self, done: bool = False) -> None:
        self.done, self.waited = done, False

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        self.waited = self.done = True


def test_cpu_values_are_handed_out_with_their_step():
    log = ScalarLog()
    log.add("train/loss", torch.tensor(2.5))
    log.add("train_params/lambda_sds", 1)
    log.close_step(9)
    log.close_step(10)  # a step that logged nothing leaves no entry
    assert len(log) == 1
    assert list(log.ready()) == [(9, {"train/loss": 2.5, "train_params/lambda_sds": 1.0})]
    assert list(log.ready()) == [] and len(log) == 0  # each once


def test_a_step_in_flight_holds_back_the_later_ones_until_waited_for():
    log = ScalarLog()
    for step, value in ((9, 1.0), (19, 2.0)):
        log.add("train/loss", value)
        log.close_step(step)
    first = log._pending[0]
    first.names, first.host, first.event = ["train/grad_norm"], torch.tensor([4.0]), FakeEvent()
    assert list(log.ready()) == []  # step 9's copy has not landed: step 19 waits behind it
    first.event.done = True
    assert [s for s, _ in log.ready()] == [9, 19]
    log.add("train/loss", 3.0)
    log.close_step(29)
    log._pending[0].event = pending = FakeEvent()
    assert list(log.ready(wait=True)) == [(29, {"train/loss": 3.0})] and pending.waited


def test_values_must_be_scalars():
    log = ScalarLog()
    with pytest.raises(ValueError, match=r"log_train\('train/rgb'\): a scalar is needed, got a tensor of shape \(2,\)"):
        log.add("train/rgb", torch.ones(2))
    with pytest.raises(TypeError, match=r"log_train\('train/name'\): a number or a one-element tensor"):
        log.add("train/name", "abc")
    log.add("train/one", torch.ones(1, 1))  # one element: fine
    log.close_step(0)
    assert list(log.ready()) == [(0, {"train/one": 1.0})]


@pytest.mark.gpu
def test_cuda_values_leave_without_a_sync_and_land_exactly():
    log = ScalarLog()
    x = torch.randn(2048, 2048, device="cuda")
    loss = (x @ x).abs().mean()  # queued work: the copy lands after it
    expected = {"train/loss": loss, "train/grad_norm": x.norm(), "train_params/lambda": 0.5}
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for k, v in expected.items():
            log.add(k, v)
        log.close_step(7)
        got = dict(log.ready())  # not waiting: an event query at most
    finally:
        torch.cuda.set_sync_debug_mode(0)
    got.update(log.ready(wait=True))
    assert len(log) == 0 and list(got) == [7]
    assert got[7] == pytest.approx({k: float(v) for k, v in expected.items()}, rel=1e-6)
