"""A resume is checked before it writes: bad, foreign or misplaced checkpoints give one clear message and leave every
file as it was; a resume that fails during set-up never overwrites the work it was resuming."""

import os
import shutil
import signal

import pytest
import torch

from .conftest import listing, run_launch, start_launch, toy_args, trials, wait_for_step


@pytest.fixture
def trained(tmp_path):
    """A toy trial trained 6 steps (checkpoints at 3 and 6)."""
    r = run_launch(toy_args(tmp_path / "out"), cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (trial,) = trials(tmp_path / "out")
    return trial


@pytest.mark.parametrize("content, message", [
    (None, "cannot be read as a checkpoint"),  # truncated: the first half of a real checkpoint
    (b"this is not a checkpoint at all" * 10, "cannot be read as a checkpoint"),
    (b"", "is empty (0 bytes): a write that never finished"),
])
def test_a_damaged_checkpoint_is_refused_and_nothing_is_written(tmp_path, trained, content, message):
    ckpts = os.path.join(trained, "ckpts")
    bad = os.path.join(ckpts, "bad.ckpt")
    if content is None:
        data = open(os.path.join(ckpts, "last.ckpt"), "rb").read()
        content = data[: len(data) // 2]
    with open(bad, "wb") as f:
        f.write(content)
    before = listing(trained)
    r = run_launch(toy_args(tmp_path / "out", "--resume", bad, steps=9), cwd=tmp_path)
    assert r.returncode == 2
    out = r.stdout + r.stderr
    assert "Cannot resume" in out and message in out and bad in out
    assert "Traceback" not in out
    assert listing(trained) == before  # no new checkpoint next to the bad file, configs untouched
    assert trials(tmp_path / "out") == [trained]


def test_a_checkpoint_of_another_recipe_names_its_recipe_and_changes_nothing(tmp_path, trained):
    # the same system with a wider network: another recipe's weights do not fit
    r = run_launch(toy_args(tmp_path / "other", "name=wide-toy", "system.geometry.n_hidden=32", steps=3),
                   cwd=tmp_path)
    assert r.returncode == 0
    (wide,) = trials(tmp_path / "other", "wide-toy")
    foreign = os.path.join(wide, "ckpts", "last.ckpt")
    wide_before = listing(wide)
    before = listing(trained)
    raw = open(os.path.join(trained, "configs", "raw.yaml")).read()
    # resume this recipe from the wide one's checkpoint
    r = run_launch(toy_args(tmp_path / "out", "--resume", foreign, steps=12), cwd=tmp_path)
    assert r.returncode == 2
    out = r.stdout + r.stderr
    assert "do not fit this run's modules" in out and "recipe 'wide-toy'" in out and "size mismatch" in out
    assert "Traceback" not in out
    assert listing(trained) == before and open(os.path.join(trained, "configs", "raw.yaml")).read() == raw
    assert listing(wide) == wide_before
    assert len(trials(tmp_path / "other", "wide-toy")) == 1 and trials(tmp_path / "out") == [trained]


def test_a_checkpoint_outside_a_trial_starts_a_new_trial_and_writes_nothing_beside_it(tmp_path, trained):
    mine = tmp_path / "my checkpoints"
    mine.mkdir()
    shutil.copy(os.path.join(trained, "ckpts", "epoch=0-step=3.ckpt"), mine / "model.ckpt")
    before = listing(str(tmp_path / "my checkpoints")), sorted(os.listdir(tmp_path))
    r = run_launch(toy_args(tmp_path / "out", "--resume", str(mine / "model.ckpt"), steps=9), cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert (listing(str(mine)), sorted(os.listdir(tmp_path))) == before  # nothing in the user's folder or its parent
    new = [t for t in trials(tmp_path / "out") if t != trained]
    assert len(new) == 1
    assert open(os.path.join(new[0], "resumed_from.txt")).read().strip() == str(mine / "model.ckpt")
    assert torch.load(os.path.join(new[0], "ckpts", "last.ckpt"), weights_only=False)["global_step"] == 9
    # without --config there is no trial config to reuse: said clearly
    r = run_launch(["--train", "--resume", str(mine / "model.ckpt")], cwd=tmp_path)
    assert r.returncode == 2 and "is not inside a trial folder" in r.stdout + r.stderr


def test_resuming_an_older_checkpoint_branches_instead_of_overwriting_newer_work(tmp_path, trained):
    last = os.path.join(trained, "ckpts", "last.ckpt")
    before = listing(trained)
    r = run_launch(toy_args(tmp_path / "out", "--resume", os.path.join(trained, "ckpts", "epoch=0-step=3.ckpt"),
                            steps=5), cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert listing(trained) == before  # last.ckpt (step 6) untouched
    assert torch.load(last, weights_only=False)["global_step"] == 6
    branch = [t for t in trials(tmp_path / "out") if t != trained]
    assert len(branch) == 1 and branch[0].endswith("-branch")
    assert torch.load(os.path.join(branch[0], "ckpts", "last.ckpt"), weights_only=False)["global_step"] == 5


def test_a_resume_that_fails_during_setup_after_ctrl_c_keeps_the_interrupted_work(tmp_path):
    out = tmp_path / "out"
    step_file = tmp_path / "step"
    p = start_launch(toy_args(out, "system.step_sleep=0.03", "checkpoint.every_n_train_steps=1000",
                              f"system.step_file={step_file}", steps=200), cwd=tmp_path)
    wait_for_step(step_file, 12, p)
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=60)
    assert p.returncode == 130
    (trial,) = trials(out)
    last = os.path.join(trial, "ckpts", "last.ckpt")
    step = torch.load(last, weights_only=False)["global_step"]
    before = listing(os.path.join(trial, "ckpts"))
    # the data moved: set-up fails
    r = run_launch(toy_args(out, "--resume", trial, "data.fail_in_setup=dataroot /data/fox not found", steps=200),
                   cwd=tmp_path)
    assert r.returncode == 2
    assert "dataroot /data/fox not found" in r.stdout + r.stderr and "Traceback" not in r.stdout + r.stderr
    assert listing(os.path.join(trial, "ckpts")) == before
    assert torch.load(last, weights_only=False)["global_step"] == step >= 12
