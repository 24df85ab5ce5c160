"""Atomic checkpoint writes.

Lightning's default writer streams into the final file name (through a temp file in /tmp, then a copy when /tmp is
another device), so a kill mid-write can leave a truncated ``last.ckpt``. Ours writes ``.<name>.tmp-<pid>`` in the
checkpoint folder, fsyncs it, and renames it over the target: a kill at any moment leaves the previous checkpoint
intact and loadable.
"""

from __future__ import annotations

import errno
import os
import shutil
from typing import Any, Dict, Optional

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from threestudio.utils.saving import atomic_output


def atomic_torch_save(obj: Any, path: str) -> None:
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a (nested) checkpoint: about the size of the file torch.save writes."""
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: Dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        path = os.fspath(path)
        try:
            atomic_torch_save(checkpoint, path)
        except (OSError, RuntimeError) as e:
            # torch reports a full disk as a RuntimeError ("unexpected pos ...") or an OSError; say what was needed
            full = getattr(e, "errno", None) == errno.ENOSPC or "No space left" in str(e) or (
                isinstance(e, RuntimeError) and "unexpected pos" in str(e) and _free_bytes(path) < tensor_bytes(
                    checkpoint))
            if not full:
                raise
            need, free = tensor_bytes(checkpoint), _free_bytes(path)
            raise OSError(errno.ENOSPC, f"the checkpoint needs about {need / 2**20:.0f} MB and "
                          f"{free / 2**20:.0f} MB are free there; no checkpoint was overwritten", path) from None

    def load_checkpoint(self, path: Any, map_location: Optional[Any] = None, weights_only: Optional[bool] = None
                        ) -> Dict[str, Any]:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Checkpoint not found: {path}")
        return torch.load(path, map_location=map_location or "cpu", weights_only=False)

    def remove_checkpoint(self, path: Any) -> None:
        path = os.fspath(path)
        if os.path.isfile(path):
            os.remove(path)


def _free_bytes(path: str) -> int:
    try:
        return int(shutil.disk_usage(os.path.dirname(os.path.abspath(path)) or ".").free)
    except OSError:
        return 0
