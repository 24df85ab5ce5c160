"""Small helpers shared across the package (threestudio-compatible names)."""

from __future__ import annotations

import gc
import os
from typing import Any, Dict, Optional, Tuple

import torch

from threestudio.utils.log import get_rank  # noqa: F401  (re-exported)
from threestudio.utils.schedule import C as _C


def default_cache_root() -> str:
    """``$THREESTUDIO_CACHE`` or ``~/.cache/threestudio`` (absolute; independent of the working directory)."""
    root = os.environ.get("THREESTUDIO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "threestudio")
    return os.path.abspath(os.path.expanduser(root))


def C(value: Any, epoch: int, global_step: int) -> float:
    """Evaluate a scalar schedule (see :mod:`threestudio.utils.schedule`)."""
    return _C(value, epoch, global_step)


def get_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device(f"cuda:{torch.cuda.current_device()}")
    return torch.device("cpu")


def load_module_weights(
    path: str, module_name: Optional[str] = None, ignore_modules: Optional[list] = None,
    map_location: Any = "cpu",
) -> Tuple[Dict[str, torch.Tensor], int, int]:
    """Load a Lightning checkpoint's state dict, optionally only the ``module_name.`` sub-tree.

    Returns (state_dict, epoch, global_step). Raises FileNotFoundError naming the path.
    """
    if module_name is not None and ignore_modules is not None:
        raise ValueError("module_name and ignore_modules cannot both be set")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Weights file not found: {path} (check the 'weights' or '--resume' value).")
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    state_dict = ckpt.get("state_dict", ckpt)
    if ignore_modules:
        state_dict = {k: v for k, v in state_dict.items()
                      if not any(k.startswith(m + ".") for m in ignore_modules)}
    if module_name is not None:
        prefix = module_name + "."
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if not state_dict:
            raise KeyError(f"No weights under '{module_name}.' in {path}.")
    return state_dict, int(ckpt.get("epoch", 0)), int(ckpt.get("global_step", 0))


def cleanup() -> None:
    """Free cached GPU memory (after validation/test steps, if configured)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def per_rank_states(state: Any) -> Any:
    """For checkpoints of DDP runs: every rank's ``state`` as ``{"per_rank": [state of rank 0, 1, ...]}`` (a
    collective: all ranks must call it, as they all build a checkpoint's contents); ``state`` itself without DDP."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
        return state
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, state)
    return {"per_rank": gathered}


def state_of_this_rank(saved: Any) -> Any:
    """The inverse of :func:`per_rank_states` on loading: this rank's state (rank 0's when the checkpoint has fewer
    ranks than this run, e.g. a 2-rank run resumed on 4: batches then repeat across the extra ranks)."""
    if not (isinstance(saved, dict) and "per_rank" in saved):
        return saved
    states = saved["per_rank"]
    rank = torch.distributed.get_rank() if (torch.distributed.is_available()
                                             and torch.distributed.is_initialized()) else get_rank()
    return states[rank] if rank < len(states) else states[0]


def constant(values: Any, device: Any, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """A small constant tensor on ``device``, sent without a stream synchronisation: ``torch.tensor(values,
    device="cuda")`` copies with a blocking copy, which waits for all the GPU work queued so far (in a training step,
    the host then stops queueing until the GPU has drained). As :func:`tensors_to_device`: from pinned memory, which
    the caching host allocator keeps until the copy is done."""
    t = torch.tensor(values, dtype=dtype)
    device = torch.device(device)
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)


def scale_tensor(dat: torch.Tensor, inp_scale: Any, tgt_scale: Any) -> torch.Tensor:
    """Affinely map values from range ``inp_scale`` to ``tgt_scale`` (each a pair or a [2, D] tensor)."""
    if inp_scale is None:
        inp_scale = (0, 1)
    if tgt_scale is None:
        tgt_scale = (0, 1)
    if isinstance(tgt_scale, torch.Tensor):
        assert dat.shape[-1] == tgt_scale.shape[-1]
    dat = (dat - inp_scale[0]) / (inp_scale[1] - inp_scale[0])
    return dat * (tgt_scale[1] - tgt_scale[0]) + tgt_scale[0]


def tensors_to_device(tensors: Dict[str, Any], device: Any) -> Dict[str, Any]:
    """Move the CPU tensors of a dict to ``device`` in one transfer per dtype, without a host synchronisation.

    ``{k: v.to("cuda")}`` on a dict of small CPU tensors costs one copy each, and a copy from pageable memory waits
    for the GPU to finish all queued work (so the next step could not be queued while the last one runs). Here the
    tensors of each dtype are packed into one pinned buffer and copied with ``non_blocking=True`` (the caching host
    allocator keeps the buffer until the copy is done); the results are views of the device buffer. Values that are
    not CPU tensors are passed through; on a CPU ``device`` the dict is returned unchanged (as a new dict).
    """
    device = torch.device(device)
    if device.type != "cuda":
        return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in tensors.items()}
    return pack_by_dtype(tensors, lambda flat: flat.pin_memory().to(device, non_blocking=True))


def pack_by_dtype(tensors: Dict[str, Any], move: Any) -> Dict[str, Any]:
    """The CPU tensors of ``tensors`` concatenated per dtype, ``move(flat)`` applied to each flat buffer, and the
    values returned as views of the moved buffers (other values passed through)."""
    out = dict(tensors)
    groups: Dict[torch.dtype, list] = {}
    for k, v in out.items():
        if torch.is_tensor(v) and v.device.type == "cpu":
            groups.setdefault(v.dtype, []).append(k)
    for keys in groups.values():
        moved = move(torch.cat([out[k].reshape(-1) for k in keys]))
        offset = 0
        for k in keys:
            n = out[k].numel()
            out[k] = moved[offset : offset + n].view(out[k].shape)
            offset += n
    return out
