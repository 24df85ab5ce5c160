"""Several DDP processes on the CPU (--cpu-ranks, gloo): the multi-GPU code path runs end to end without GPUs. Each
rank draws its own batches, one trial folder is written (by rank 0), and a 2-rank run stopped with Ctrl-C and
resumed ends exactly where an uninterrupted 2-rank run does."""

import glob
import os
import signal
from collections import defaultdict

import pytest
import torch

from .conftest import REPO, params, run_launch, start_launch, toy_args, trials, wait_for_step


def _batches(log):
    by_step = defaultdict(dict)
    for row in open(log).read().splitlines():
        rank, step, value = row.split()
        by_step[int(step)][int(rank)] = value
    return by_step


@pytest.mark.slow
def test_two_cpu_ranks_interrupted_and_resumed_end_like_an_uninterrupted_run(tmp_path):
    common = ["--cpu-ranks", "2", "checkpoint.every_n_train_steps=1000", "trainer.log_every_n_steps=2"]
    log = tmp_path / "batches.txt"
    r = run_launch(toy_args(tmp_path / "straight", *common, f"system.batch_log={log}", steps=24), cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (straight,) = trials(tmp_path / "straight")  # one trial folder for both ranks
    seen = _batches(log)
    assert sorted(seen) == list(range(24)) and all(sorted(v) == [0, 1] for v in seen.values())
    assert all(v[0] != v[1] for v in seen.values())  # each rank its own seed and stream
    rows = open(os.path.join(straight, "csv_logs", "metrics.csv")).read().splitlines()
    assert len(rows) == len(set(rows))  # rank 0 alone writes the logs
    # stopped with Ctrl-C (the signal reaches rank 0; all ranks stop at the same step), then resumed
    step_file = tmp_path / "step"
    p = start_launch(toy_args(tmp_path / "stopped", *common, "system.step_sleep=0.05", f"system.step_file={step_file}",
                              steps=24), cwd=tmp_path)
    wait_for_step(step_file, 7, p)
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=180)
    assert p.returncode == 130, out[-3000:]
    (stopped,) = trials(tmp_path / "stopped")
    step = torch.load(os.path.join(stopped, "ckpts", "last.ckpt"), weights_only=False)["global_step"]
    assert 7 <= step < 24 and step % 2 == 0  # stops are agreed on at logging steps
    r = run_launch(toy_args(tmp_path / "stopped", *common, "--resume", stopped, steps=24), cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    a, b = params(os.path.join(straight, "ckpts", "last.ckpt")), params(os.path.join(stopped, "ckpts", "last.ckpt"))
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_the_quick_start_on_two_cpu_ranks(tmp_path):
    from threestudio.data.synthetic_scene import make_scene

    scene = str(tmp_path / "scene")
    make_scene(scene, n_train=8, n_test=2, resolution=24, supersample=1, progress=False)
    r = run_launch(["--config", os.path.join(REPO, "configs", "quickstart.yaml"), "--train", "--cpu-ranks", "2",
                    f"exp_root_dir={tmp_path}/o", f"data.dataroot={scene}", "data.synthetic_scene=null",
                    "trainer.max_steps=6", "trainer.val_check_interval=6", "system.export_after_train=false",
                    "trainer.enable_progress_bar=false"], cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (trial,) = trials(tmp_path / "o", "quickstart")
    import json

    metrics = json.load(open(os.path.join(trial, "save", "metrics.json")))
    assert metrics["test/n_views"] == 2 and metrics["step"] == 6
    assert glob.glob(os.path.join(trial, "save", "it6-test.*"))


@pytest.mark.slow
def test_the_amortized_tiny_recipe_on_two_cpu_ranks(tmp_path):
    from tests.amortized.conftest import load_ext
    from threestudio.utils.weights import save_random_stable_diffusion

    load_ext()
    sd = save_random_stable_diffusion(str(tmp_path / "tiny-sd"), preset="tiny")
    r = run_launch(["--config", os.path.join(REPO, "custom", "amortized", "configs", "tiny-cpu.yaml"), "--train",
                    "--cpu-ranks", "2", f"system.guidance.pretrained_model_name_or_path={sd}",
                    f"exp_root_dir={tmp_path}/o", "trainer.max_steps=4", "trainer.val_check_interval=4",
                    "trainer.enable_progress_bar=false"], cwd=REPO,
                   env={"THREESTUDIO_CACHE": str(tmp_path / "cache"), "CUDA_VISIBLE_DEVICES": ""}, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (trial,) = glob.glob(str(tmp_path / "o" / "amortized-tiny-cpu" / "*"))
    assert torch.load(os.path.join(trial, "ckpts", "last.ckpt"), weights_only=False)["global_step"] == 4
    assert glob.glob(os.path.join(trial, "save", "it4-test", "*", "prompt.txt"))
    # one embedding store, built once (by rank 0)
    stores = [d for d in glob.glob(str(tmp_path / "cache" / "prompt_stores" / "*")) if os.path.isdir(d)]
    assert len(stores) == 1
