"""Atomic checkpoint writes.

Lightning's default writer streams into the final file name (through a temp file in /tmp, then a copy when /tmp is
another device), so a kill mid-write can leave a truncated ``last.ckpt``. Ours writes ``.<name>.tmp-<pid>`` in the
checkpoint folder, fsyncs it, and renames it over the target: a kill at any moment leaves the previous checkpoint
intact and loadable.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from threestudio.utils.saving import atomic_output


def atomic_torch_save(obj: Any, path: str) -> None:
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: Dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        atomic_torch_save(checkpoint, os.fspath(path))

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
