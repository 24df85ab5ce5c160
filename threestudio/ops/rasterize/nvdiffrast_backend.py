"""nvdiffrast as an optional backend behind the same API (imported only when asked for).

It uses ``RasterizeCudaContext`` (no OpenGL/EGL), one per device, created on first use.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from threestudio.utils.imports import require

_contexts: Dict[Any, Any] = {}


def _dr():
    return require("nvdiffrast.torch", "the nvdiffrast rasterization backend",
                   "pip install git+https://github.com/NVlabs/nvdiffrast")


def _ctx(device: torch.device):
    key = (device.type, device.index)
    if key not in _contexts:
        _contexts[key] = _dr().RasterizeCudaContext(device=device)
    return _contexts[key]


def rasterize(pos: torch.Tensor, tri: torch.Tensor, resolution: Tuple[int, int],
              grad_db: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    return _dr().rasterize(_ctx(pos.device), pos.float().contiguous(), tri.int().contiguous(), resolution,
                           grad_db=grad_db)


def interpolate(attr, rast, tri, rast_db=None, diff_attrs: Optional[Sequence[int]] = None):
    return _dr().interpolate(attr.float().contiguous(), rast, tri.int().contiguous(), rast_db=rast_db,
                             diff_attrs=diff_attrs)


def antialias(color, rast, pos, tri, topology_hash=None, pos_gradient_boost: float = 1.0):
    th = topology_hash if (topology_hash is not None and not torch.is_tensor(topology_hash)) else None
    return _dr().antialias(color.contiguous(), rast, pos.float().contiguous(), tri.int().contiguous(),
                           topology_hash=th, pos_gradient_boost=pos_gradient_boost)
