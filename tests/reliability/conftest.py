"""Helpers for the fault-injection tests: launch.py in a subprocess, the toy recipe, waiting for a step."""

import hashlib
import os
import subprocess
import sys
import time

import pytest
import torch

from tests.core.conftest import TOY_EXT, TOY_YAML  # noqa: F401  (the toy extension fixture is session-wide there)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAUNCH = os.path.join(REPO, "launch.py")


def launch_env(extra=None):
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env.pop("THREESTUDIO_TRIAL_TIMESTAMP", None)
    env.pop("THREESTUDIO_TRIAL_DIR", None)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def run_launch(args, cwd, env=None, timeout=300):
    """launch.py to the end: CompletedProcess with .returncode, .stdout, .stderr."""
    return subprocess.run([sys.executable, LAUNCH, *args], cwd=str(cwd), env=launch_env(env), capture_output=True,
                          text=True, timeout=timeout)


def start_launch(args, cwd, env=None):
    return subprocess.Popen([sys.executable, LAUNCH, *args], cwd=str(cwd), env=launch_env(env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def toy_args(out, *extra, steps=6):
    return ["--config", TOY_YAML, "--train", "--extensions", TOY_EXT, f"exp_root_dir={out}",
            f"trainer.max_steps={steps}", "trainer.enable_progress_bar=false", *extra]


def wait_for_step(step_file, at_least, proc, timeout=120.0):
    """Poll the toy system's step file until it reports a global step >= at_least."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early (exit {proc.returncode}):\n{proc.stdout.read()[-3000:]}")
        try:
            with open(step_file) as f:
                if int(f.read().strip() or -1) >= at_least:
                    return
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    raise AssertionError(f"step {at_least} not reached in {timeout} s")


def trials(out, name="toy"):
    exp = os.path.join(str(out), name)
    return sorted(os.path.join(exp, t) for t in os.listdir(exp)) if os.path.isdir(exp) else []


def params(ckpt):
    sd = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    return {k: v for k, v in sd.items() if k.startswith("geometry.")}


def file_digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest(), os.stat(path).st_mtime_ns


def listing(folder):
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            p = os.path.join(dirpath, name)
            out[os.path.relpath(p, folder)] = file_digest(p)
    return out


@pytest.fixture
def toy_out(tmp_path):
    return tmp_path / "out"
