"""Keeping a run's work: interrupts, trial folders, and checkpoint checks before a resume.

* **Interrupts** (:class:`StopSignals`, :class:`GracefulStop`). During training, the first Ctrl-C (SIGINT) or SIGTERM
  lets the current step finish, writes ``ckpts/last.ckpt`` (atomically, with the data stream and the random
  generators as they are at the end of that step, so the resumed run continues exactly), stops training, and the
  launcher prints where the checkpoint is and the command that resumes it, then exits 130 (SIGINT) or 143
  (SIGTERM). A second signal exits at once, without touching any checkpoint. Outside training (start-up, the test
  pass) the first Ctrl-C stops the run at once. Under DDP every rank learns of a stop request at the next logging
  step (one collective then, none on the other steps), so all ranks stop at the same step.
* **Trial folders** (:func:`create_trial_dir`): created with ``os.mkdir`` (no ``exist_ok``); a clash (two runs of a
  recipe started in the same second) gets a suffix, so every run has its own folder.
* **Stale temporaries** (:func:`remove_stale_temporaries`): files ``.<name>.tmp-<pid>.<ext>`` that a killed atomic
  write left behind are removed when their process is gone.
* **Checkpoints before a resume** (:func:`inspect_checkpoint`, :func:`check_checkpoint_fits`): the file is opened and
  checked (a readable torch checkpoint, with a state dict and a step, written by the same system) and its tensors are
  loaded into the freshly built system before anything in the trial folder changes; every problem is a
  :class:`CheckpointError` naming the file, what it holds and where it came from.
"""

from __future__ import annotations

import errno
import glob
import os
import re
import signal
import sys
from typing import Any, Dict, List, Optional, Tuple

from pytorch_lightning.callbacks import Callback

from threestudio.utils.config import ConfigError, ConfigIssue

EXIT_SIGINT, EXIT_SIGTERM = 130, 143
RUN_INFO_KEY = "threestudio_run"


class CheckpointError(ConfigError):
    """A checkpoint that cannot be resumed from (unreadable, incomplete, of another recipe or shape). A
    :class:`ConfigError`: the launcher prints it without a traceback and exits with code 2."""

    def __init__(self, key: str, message: str, suggestion: str = "") -> None:
        super().__init__([ConfigIssue(key, message, "", suggestion)], header="Cannot resume")


# ------------------------------------------------------------------------------------------------ interrupts
class StopSignals:
    """SIGINT/SIGTERM handling for one run (see the module docstring). ``armed`` while training steps run."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.armed = False
        self._previous: Dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return EXIT_SIGTERM if self.signum == signal.SIGTERM else EXIT_SIGINT

    def install(self) -> None:
        """Take over SIGINT and SIGTERM (call from the main thread); :meth:`restore` gives them back."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            if sig not in self._previous:
                self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        if self.signum is not None:  # the second one: leave now, write nothing
            sys.stderr.write(f"\n[threestudio] {name} again: stopping at once, without saving.\n")
            sys.stderr.flush()
            os._exit(EXIT_SIGTERM if signum == signal.SIGTERM else EXIT_SIGINT)
        self.signum = signum
        if not self.armed:  # not inside training: there is no step to finish
            raise KeyboardInterrupt
        again = "press Ctrl-C again" if signum == signal.SIGINT else "send it again"
        sys.stderr.write(f"\n[threestudio] {name}: finishing this training step and saving it to ckpts/last.ckpt "
                         f"({again} to stop at once, without saving).\n")
        sys.stderr.flush()


class GracefulStop(Callback):
    """Arms :class:`StopSignals` for the training steps; on a request, saves ``last.ckpt`` after the step and
    stops the trainer. ``saved`` is the checkpoint written (or None)."""

    def __init__(self, signals: StopSignals, ckpt_dir: str, ddp_check_every: int = 10) -> None:
        self.signals = signals
        self.ckpt_dir = ckpt_dir
        self.ddp_check_every = max(1, int(ddp_check_every))
        self.saved: Optional[str] = None
        self.saved_step: Optional[int] = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        # after Lightning's own signal set-up (its SIGTERM handler would raise SystemExit mid-epoch)
        self.signals.install()
        self.signals.armed = True

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        requested = self.signals.requested
        if trainer.world_size > 1:
            if trainer.global_step % self.ddp_check_every != 0:
                return
            requested = bool(trainer.strategy.reduce_boolean_decision(requested, all=False))
        if not requested:
            return
        path = os.path.join(self.ckpt_dir, "last.ckpt")
        trainer.save_checkpoint(path, weights_only=False)
        self.saved, self.saved_step = path, int(trainer.global_step)
        trainer.should_stop = True
        # Lightning validates once more when a run stops early; a stop the user asked for should not wait for that
        # (minutes on a CPU for a capture's held-out views)
        trainer.limit_val_batches = 0
        self.signals.armed = False

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.signals.armed = False


class RunInfo(Callback):
    """Records in every checkpoint which recipe, system and trial wrote it (read back by a resume)."""

    def __init__(self, info: Dict[str, Any]) -> None:
        self.info = dict(info)

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: Dict[str, Any]) -> None:
        checkpoint[RUN_INFO_KEY] = dict(self.info)


# ------------------------------------------------------------------------------------------------ trial folders
def create_trial_dir(trial_dir: str) -> str:
    """Create ``trial_dir`` atomically; if it exists (another run of the same second), ``trial_dir-2``, ``-3``...
    Returns the folder created."""
    os.makedirs(os.path.dirname(trial_dir), exist_ok=True)
    candidate, k = trial_dir, 1
    while True:
        try:
            os.mkdir(candidate)
            return candidate
        except FileExistsError:
            k += 1
            candidate = f"{trial_dir}-{k}"


_TMP = re.compile(r"^\..+\.tmp-(\d+)(\.[^.]*)?$")


def remove_stale_temporaries(folder: str, recursive: bool = False) -> List[str]:
    """Remove ``.<name>.tmp-<pid>[.<ext>]`` files under ``folder`` whose writing process no longer runs."""
    removed: List[str] = []
    if not os.path.isdir(folder):
        return removed
    pattern = os.path.join(folder, "**", ".*.tmp-*") if recursive else os.path.join(folder, ".*.tmp-*")
    for path in glob.glob(pattern, recursive=recursive):
        m = _TMP.match(os.path.basename(path))
        if not m or not os.path.isfile(path):
            continue
        pid = int(m.group(1))
        if pid != os.getpid() and not _alive(pid):
            try:
                os.remove(path)
                removed.append(path)
            except OSError:
                pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # somebody else's process
        return True
    return True


# ------------------------------------------------------------------------------------------------ checkpoints
def inspect_checkpoint(path: str, key: str = "--resume") -> Dict[str, Any]:
    """Open a checkpoint and check that it is one we can resume from. Returns the loaded dict (on the CPU, tensors
    memory-mapped where possible). Raises :class:`CheckpointError` with the reason."""
    import torch

    if not os.path.isfile(path):
        raise CheckpointError(key, f"checkpoint not found: {path}", "pass a .ckpt file, a trial folder, or 'last'")
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(key, f"{path} is empty (0 bytes): a write that never finished",
                              "resume from another checkpoint of the trial (its ckpts/ folder)")
    try:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - torch/pickle/zip raise many types for a damaged file
        raise CheckpointError(key, f"{path} ({size} bytes) cannot be read as a checkpoint: {type(e).__name__}: "
                              f"{str(e).splitlines()[0][:160] if str(e) else ''}",
                              "the file is truncated or not a checkpoint; resume from another checkpoint of the "
                              "trial, or start a new run") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "global_step" not in ckpt:
        have = ", ".join(sorted(map(str, ckpt))[:8]) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(key, f"{path} is not a training checkpoint written by launch.py (it has: {have})",
                              "pass a ckpts/*.ckpt file of a trial")
    return ckpt


def checkpoint_origin(ckpt: Dict[str, Any], path: str) -> str:
    """Words for where a checkpoint came from: its recipe name, system and trial, as far as known."""
    info = ckpt.get(RUN_INFO_KEY) or {}
    if not info:
        from threestudio.utils.trials import CONFIG_DIR, trial_of_checkpoint

        parsed = os.path.join(trial_of_checkpoint(path), CONFIG_DIR, "parsed.yaml")
        if os.path.isfile(parsed):
            from omegaconf import OmegaConf

            try:
                cfg = OmegaConf.load(parsed)
                info = {"name": cfg.get("name"), "system_type": cfg.get("system_type")}
            except Exception:  # noqa: BLE001
                info = {}
    parts = []
    if info.get("name"):
        parts.append(f"recipe '{info['name']}'")
    if info.get("system_type"):
        parts.append(f"system '{info['system_type']}'")
    return " with ".join(parts) if parts else "an unknown recipe"


def check_checkpoint_fits(ckpt: Dict[str, Any], path: str, system: Any, system_type: str, name: str,
                          key: str = "--resume") -> None:
    """Before any file changes: the checkpoint must come from the same system type and its tensors must load into
    ``system`` (names and shapes; modules that resize on load, like gaussians, do so). Raises CheckpointError."""
    info = ckpt.get(RUN_INFO_KEY) or {}
    origin = checkpoint_origin(ckpt, path)
    theirs = info.get("system_type")
    if theirs and theirs != system_type:
        raise CheckpointError(key, f"{path} was written by {origin}, but this run is '{name}' (system "
                              f"'{system_type}')", "resume with that checkpoint's own recipe (leave out --config "
                              "to use its trial's), or pass a checkpoint of this recipe")
    try:
        system.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()][1:6]
        detail = "; ".join(lines)[:600]
        raise CheckpointError(key, f"the weights in {path} (from {origin}) do not fit this run's modules "
                              f"('{name}', system '{system_type}'): {detail}",
                              "resume with the checkpoint's own recipe and settings, or start a new run") from None


def describe_os_error(e: OSError) -> Optional[Tuple[str, int]]:
    """(one line, exit code) for a full disk (1: the run could not finish) and for paths that cannot be written
    (2: bad input, e.g. a read-only or invalid ``exp_root_dir``), or None for other errors."""
    path = getattr(e, "filename", None) or ""
    if e.errno == errno.ENOSPC:
        return (f"No space left on the device while writing {path or 'a file'}"
                f"{': ' + e.strerror if e.strerror and 'space' not in e.strerror.lower() else ''}. Free some space "
                f"there (or set exp_root_dir to another disk) and run again: --resume last continues from the last "
                f"checkpoint saved, if any.", 1)
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG):
        return (f"Cannot write {path or 'a file'}: {e.strerror}. Choose a writable folder for the outputs, e.g. "
                f"exp_root_dir=$HOME/threestudio-outputs.", 2)
    return None
