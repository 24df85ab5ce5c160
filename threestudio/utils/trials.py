"""Trial folders: ``<exp_root_dir>/<name>/<tag>@<timestamp>/`` with configs/, ckpts/, save/, logs and code/.

Helpers to find a trial's checkpoint from what a user types (``--resume`` or ``geometry_convert_from``): a
checkpoint file, a trial folder, ``last`` (the newest trial of the current experiment) or ``LAST:<exp dir>``.
Paths never depend on the working directory beyond what the user typed.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from typing import List, Optional

from omegaconf import DictConfig, OmegaConf

from threestudio.utils.config import ConfigError, ConfigIssue

CKPT_DIR = "ckpts"
CONFIG_DIR = "configs"
SAVE_DIR = "save"
LAST_CKPT = "last.ckpt"


def trial_of_checkpoint(ckpt: str) -> str:
    """The trial folder holding ``<trial>/ckpts/<file>.ckpt``."""
    return os.path.dirname(os.path.dirname(os.path.abspath(ckpt)))


def is_trial_checkpoint(ckpt: str) -> bool:
    """Whether ``ckpt`` sits in a trial folder written by launch.py (``<trial>/ckpts/<file>``, with ``configs/``)."""
    folder = os.path.dirname(os.path.abspath(ckpt))
    trial = os.path.dirname(folder)
    return os.path.basename(folder) == CKPT_DIR and os.path.isfile(os.path.join(trial, CONFIG_DIR, "raw.yaml"))


def checkpoint_step(ckpt: str) -> Optional[int]:
    """The global step of a checkpoint: from Lightning's file name (``...step=S.ckpt``), else read from the file
    (memory-mapped). None when unreadable."""
    m = re.search(r"step=(\d+)", os.path.basename(ckpt))
    if m:
        return int(m.group(1))
    try:
        import torch

        return int(torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True).get("global_step"))
    except Exception:  # noqa: BLE001 - an unreadable file has no step
        return None


def newer_checkpoint(ckpt: str) -> Optional[str]:
    """A checkpoint of the same trial with a higher step than ``ckpt`` (training on from ``ckpt`` in that trial
    would overwrite its ``last.ckpt`` with less work), or None."""
    folder = os.path.dirname(os.path.abspath(ckpt))
    if os.path.basename(ckpt) == LAST_CKPT:
        return None
    mine = checkpoint_step(ckpt)
    if mine is None:
        return None
    for other in glob.glob(os.path.join(folder, "*.ckpt")):
        if os.path.abspath(other) == os.path.abspath(ckpt):
            continue
        step = checkpoint_step(other)
        if step is not None and step > mine:
            return other
    return None


def list_trials(exp_dir: str, tag: Optional[str] = None) -> List[str]:
    """Trial folders of an experiment that hold a last checkpoint, newest checkpoint last."""
    pattern = os.path.join(exp_dir, "*", CKPT_DIR, LAST_CKPT)
    found = []
    for ckpt in glob.glob(pattern):
        trial = trial_of_checkpoint(ckpt)
        name = os.path.basename(trial)
        if tag and not (name == tag or name.startswith(tag + "@")):
            continue
        found.append((os.path.getmtime(ckpt), trial))
    return [t for _, t in sorted(found)]


def resolve_checkpoint(value: str, key: str = "--resume", exp_dir: Optional[str] = None,
                       tag: Optional[str] = None) -> str:
    """Turn a checkpoint file, a trial folder, 'last' or 'LAST:<exp dir>' into a checkpoint path (or raise)."""
    value = os.path.expanduser(str(value))
    if value.lower() == "last" or value.startswith("LAST:"):
        search = value[len("LAST:"):] if value.startswith("LAST:") else exp_dir
        if not search:
            raise ConfigError([ConfigIssue(key, "'last' needs the experiment's folder", "",
                                           "pass a checkpoint path or a trial folder instead")])
        trials = list_trials(os.path.abspath(search), tag if value.lower() == "last" else None)
        if not trials:
            raise ConfigError([ConfigIssue(key, f"no trial with {CKPT_DIR}/{LAST_CKPT} under {search}"
                                           + (f" with tag '{tag}'" if tag else ""), "",
                                           "train first, or pass a checkpoint path")])
        return os.path.join(trials[-1], CKPT_DIR, LAST_CKPT)
    path = os.path.abspath(value)
    if os.path.isdir(path):
        ckpt = os.path.join(path, CKPT_DIR, LAST_CKPT)
        if os.path.isfile(ckpt):
            return ckpt
        if os.path.isfile(os.path.join(path, LAST_CKPT)):
            return os.path.join(path, LAST_CKPT)
        others = sorted(glob.glob(os.path.join(path, CKPT_DIR, "*.ckpt")))
        hint = f"checkpoints there: {', '.join(os.path.basename(o) for o in others)}" if others else \
            "the folder has no checkpoint yet"
        raise ConfigError([ConfigIssue(key, f"no {CKPT_DIR}/{LAST_CKPT} in trial folder {path}", "", hint)])
    if os.path.isfile(path):
        return path
    raise ConfigError([ConfigIssue(key, f"checkpoint not found: {path}", "",
                                   "pass a .ckpt file, a trial folder, or 'last'")])


def load_trial_config(ckpt: str) -> DictConfig:
    """The resolved config saved with a checkpoint's trial (``configs/parsed.yaml``)."""
    path = os.path.join(trial_of_checkpoint(ckpt), CONFIG_DIR, "parsed.yaml")
    if not os.path.isfile(path):
        raise ConfigError([ConfigIssue("system.geometry_convert_from",
                                       f"the trial of {ckpt} has no {CONFIG_DIR}/parsed.yaml", "",
                                       "point at a checkpoint inside a trial folder written by launch.py")])
    return OmegaConf.load(path)  # type: ignore[return-value]


def snapshot_code(repo_root: str, dest: str, max_file_bytes: int = 1 << 20) -> int:
    """Copy the repository's source files (git's tracked + untracked-not-ignored, else *.py/*.yaml) to ``dest``.

    Skips ``load/`` and files over ``max_file_bytes``. Returns the number of files copied.
    """
    files: List[str] = []
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=repo_root,
                             capture_output=True, text=True, timeout=30, check=True).stdout
        files = [f for f in out.splitlines() if f]
    except (OSError, subprocess.SubprocessError):
        for pattern in ("launch.py", "threestudio/**/*.py", "custom/**/*.py", "custom/**/*.yaml", "configs/**/*.yaml"):
            files += [os.path.relpath(p, repo_root) for p in glob.glob(os.path.join(repo_root, pattern),
                                                                        recursive=True)]
    n = 0
    for rel in sorted(set(files)):
        if rel.startswith(("load/", "outputs/")):
            continue
        src = os.path.join(repo_root, rel)
        if not os.path.isfile(src) or os.path.getsize(src) > max_file_bytes:
            continue
        dst = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(src, dst)
        n += 1
    return n
