"""Trial folders are unique per run; unwritable output folders and full disks give one clear message, keep the last
good checkpoint, and leave no half-written files."""

import os
import shutil
import subprocess

import pytest
import torch

from .conftest import run_launch, start_launch, toy_args, trials


def test_two_runs_started_in_the_same_second_get_their_own_trial_folders(tmp_path):
    out = tmp_path / "out"
    same = {"THREESTUDIO_TRIAL_TIMESTAMP": "20261205-120000"}  # both runs see the same timestamp
    procs = [start_launch(toy_args(out, "system.step_sleep=0.02", steps=12), cwd=tmp_path, env=same)
             for _ in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    folders = trials(out)
    assert [os.path.basename(f) for f in folders] == ["run@20261205-120000", "run@20261205-120000-2"]
    import csv

    for f in folders:
        with open(os.path.join(f, "csv_logs", "metrics.csv")) as fh:
            losses = [r["step"] for r in csv.DictReader(fh) if r.get("train/loss")]
        assert sorted(map(int, losses)) == list(range(12))  # one run's rows only: no interleaving
        assert torch.load(os.path.join(f, "ckpts", "last.ckpt"), weights_only=False)["global_step"] == 12


@pytest.mark.parametrize("how", ["under-a-file", "read-only"])
def test_an_unwritable_output_folder_is_one_message(tmp_path, how):
    if how == "under-a-file":
        (tmp_path / "a-file").write_text("x")
        root = tmp_path / "a-file" / "outputs"
    else:
        root = tmp_path / "ro"
        root.mkdir()
        if os.geteuid() == 0:  # permissions do not stop root: a read-only mount does
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(root)], capture_output=True)
            if r.returncode != 0:
                pytest.skip(f"running as root and cannot mount a read-only tmpfs: {r.stderr.decode()[:200]}")
        else:
            os.chmod(root, 0o555)
    try:
        r = run_launch(toy_args(root, steps=2), cwd=tmp_path)
    finally:
        if how == "read-only" and os.geteuid() == 0:
            subprocess.run(["umount", str(root)], capture_output=True)
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    assert "Cannot write" in out and str(tmp_path) in out and "exp_root_dir" in out
    assert "Traceback" not in out


def test_a_full_disk_while_checkpointing_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    """The write fails with ENOSPC half-way (a fake torch.save): one message naming the path and the space needed,
    exit 1, the previous checkpoint intact and loadable, no temporary file left."""
    from threestudio.launcher import main
    from threestudio.utils import checkpoint as ck

    out = tmp_path / "out"
    assert main(toy_args(out, steps=3)) == 0
    os.environ.pop("THREESTUDIO_TRIAL_TIMESTAMP", None)
    (trial,) = trials(out)
    last = os.path.join(trial, "ckpts", "last.ckpt")
    good = open(last, "rb").read()
    real_save = torch.save

    def full_disk(obj, f):
        f.write(b"\0" * 1000)
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1000 vs 992")

    monkeypatch.setattr(ck.torch, "save", full_disk)
    monkeypatch.setattr(ck, "_free_bytes", lambda path: 500)
    try:
        rc = main(toy_args(out, "--resume", trial, steps=6))
    finally:
        os.environ.pop("THREESTUDIO_TRIAL_TIMESTAMP", None)
        monkeypatch.setattr(ck.torch, "save", real_save)
    assert rc == 1
    assert open(last, "rb").read() == good
    assert not [f for f in os.listdir(os.path.dirname(last)) if ".tmp-" in f]


def test_a_really_full_disk(tmp_path):
    """On a tiny tmpfs (where this machine lets us mount one): a real ENOSPC mid-training is one message."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    # room for the trial's code snapshot (~3 MB) and logs, not for a checkpoint of ~10 MB
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"this machine does not allow mounting a tmpfs here: {r.stderr.decode().strip()[:200]}")
    try:
        res = run_launch(toy_args(mnt / "out", "system.geometry.n_hidden=200000", "checkpoint.every_n_train_steps=2",
                                  steps=4), cwd=tmp_path)
        out = res.stdout + res.stderr
        assert res.returncode == 1, out
        assert "No space left on the device" in out and str(mnt) in out and "MB" in out
        assert "Traceback" not in out
        for dirpath, _, files in os.walk(mnt):
            assert not [f for f in files if ".tmp-" in f], (dirpath, files)
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
