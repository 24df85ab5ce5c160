"""Ctrl-C and SIGTERM: the step finishes, an exact checkpoint is saved as last.ckpt, the run says how to resume and
exits 130 / 143; a second signal exits at once; stale temporaries of killed writes are cleaned at the next start."""

import os
import random
import signal

import pytest
import torch

from .conftest import params, run_launch, start_launch, toy_args, trials, wait_for_step

SLOW = ["system.step_sleep=0.03", "checkpoint.every_n_train_steps=1000"]


def _interrupted_run(tmp_path, out, sig, at_step, steps=60):
    step_file = tmp_path / f"step-{sig}"
    p = start_launch(toy_args(out, *SLOW, f"system.step_file={step_file}", steps=steps), cwd=tmp_path)
    wait_for_step(step_file, at_step, p)
    p.send_signal(sig)
    log, _ = p.communicate(timeout=120)
    return p.returncode, log


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_an_exact_checkpoint_and_resumes_to_the_same_parameters(tmp_path, sig, code):
    at = random.Random(int(sig)).randint(5, 25)  # a different step each signal, reproducibly
    rc, log = _interrupted_run(tmp_path, tmp_path / "stopped", sig, at)
    assert rc == code, log
    (trial,) = trials(tmp_path / "stopped")
    ckpt = os.path.join(trial, "ckpts", "last.ckpt")
    step = torch.load(ckpt, weights_only=False)["global_step"]
    assert at <= step < 60
    assert f"Stopped at step {step}: saved {ckpt}" in log
    assert f"Continue with: python launch.py --train --resume {trial}" in log
    assert "Traceback" not in log
    assert sorted(os.listdir(os.path.join(trial, "ckpts"))) == ["last.ckpt"]
    saved = sorted(os.listdir(os.path.join(trial, "save")))
    assert "it3-0.png" in saved and not [f for f in saved if f.startswith(f"it{step}-")], saved  # no validation after
    import json

    status = json.load(open(os.path.join(trial, "status.json")))
    assert status["status"] == "interrupted" and status["exit_code"] == code and status["ended"]
    # --resume last finds it, and the resumed run ends where an uninterrupted one does
    r = run_launch(toy_args(tmp_path / "stopped", "--resume", "last", "checkpoint.every_n_train_steps=1000",
                            steps=60), cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert trials(tmp_path / "stopped") == [trial]
    r = run_launch(toy_args(tmp_path / "straight", "checkpoint.every_n_train_steps=1000", steps=60), cwd=tmp_path)
    assert r.returncode == 0
    (straight,) = trials(tmp_path / "straight")
    a, b = params(os.path.join(straight, "ckpts", "last.ckpt")), params(ckpt)
    assert torch.load(ckpt, weights_only=False)["global_step"] == 60
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_second_ctrl_c_exits_at_once_without_touching_checkpoints(tmp_path):
    out = tmp_path / "out"
    step_file = tmp_path / "step"
    # a slow step: the second Ctrl-C arrives while the first one waits for the step to finish
    p = start_launch(toy_args(out, "system.step_sleep=1.5", "checkpoint.every_n_train_steps=2",
                              f"system.step_file={step_file}", steps=50), cwd=tmp_path)
    wait_for_step(step_file, 3, p)
    (trial,) = trials(out)
    ckpts = os.path.join(trial, "ckpts")
    before = {f: os.stat(os.path.join(ckpts, f)).st_mtime_ns for f in os.listdir(ckpts)}
    import time

    p.send_signal(signal.SIGINT)
    time.sleep(0.5)  # two signals sent at once would merge into one
    p.send_signal(signal.SIGINT)
    log, _ = p.communicate(timeout=60)
    assert p.returncode == 130
    assert "again: stopping at once, without saving" in log
    after = {f: os.stat(os.path.join(ckpts, f)).st_mtime_ns for f in os.listdir(ckpts) if f.endswith(".ckpt")}
    assert after == before and "last.ckpt" in after


def test_ctrl_c_before_the_first_step_leaves_no_trial_folder(tmp_path):
    out = tmp_path / "out"
    # the toy data module sleeps in setup: the signal arrives before any training step
    p = start_launch(toy_args(out, "data.setup_sleep=20"), cwd=tmp_path)
    import time

    t0 = time.time()
    while not trials(out) and time.time() - t0 < 60:
        time.sleep(0.05)
    assert trials(out), "the run never created its trial folder"
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    log, _ = p.communicate(timeout=60)
    assert p.returncode == 130, log
    assert trials(out) == []
    assert "Traceback" not in log


def test_stale_temporaries_of_killed_writes_are_removed_on_the_next_start(tmp_path):
    out = tmp_path / "out"
    r = run_launch(toy_args(out, steps=3), cwd=tmp_path)
    assert r.returncode == 0
    (trial,) = trials(out)
    ckpts = os.path.join(trial, "ckpts")
    dead = 2**22 + 12345  # no such process
    stale = [os.path.join(ckpts, f".last.tmp-{dead}.ckpt"), os.path.join(trial, "save", f".metrics.tmp-{dead}.json")]
    for f in stale:
        with open(f, "wb") as fh:
            fh.write(b"half a file")
    r = run_launch(toy_args(out, "--resume", trial, steps=6), cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert not any(os.path.exists(f) for f in stale)
