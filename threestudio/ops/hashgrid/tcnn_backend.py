"""Multiresolution hash encoding through tiny-cuda-nn (optional; used only with ``backend="tcnn"``).

tcnn keeps a level's parameters in one flat array, level after level, ``size_l * F`` values each (see
:func:`threestudio.ops.hashgrid.grid_levels`); our ``[L, T, F]`` table is gathered into that layout on every call
(differentiably, so the gradient lands in the ``[L, T, F]`` table). Levels ``>= n_active_levels`` are zeroed by a
mask after the encoding, as threestudio's ``ProgressiveBandHashGrid`` does. tcnn computes in the table's precision
(fp16 tables accumulate in fp16), so it agrees with the reference only to that precision.

This path could not be exercised where it was written (tinycudann does not install from a package index); its test
is skipped unless tinycudann is importable.
"""

from __future__ import annotations

import math
from typing import Dict, Optional

import torch

from threestudio.utils.imports import require

from .reference import active_levels, check_inputs, grid_levels

_INSTALL = "pip install git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch"
_ENCODINGS: Dict[tuple, object] = {}


def _encoding(tcnn, L: int, T: int, F: int, base_resolution: float, per_level_scale: float, dtype: torch.dtype):
    key = (L, T, F, float(base_resolution), float(per_level_scale), dtype)
    enc = _ENCODINGS.get(key)
    if enc is None:
        config = {
            "otype": "HashGrid",
            "n_levels": L,
            "n_features_per_level": F,
            "log2_hashmap_size": int(math.log2(T)),
            "base_resolution": base_resolution,
            "per_level_scale": per_level_scale,
            "interpolation": "Linear",
        }
        enc = tcnn.Encoding(3, config, dtype=dtype)
        _ENCODINGS[key] = enc
    return enc


def hash_encode_tcnn(
    x: torch.Tensor,
    table: torch.Tensor,
    *,
    base_resolution: float,
    per_level_scale: float,
    n_active_levels: Optional[int] = None,
) -> torch.Tensor:
    """Same contract as :func:`threestudio.ops.hashgrid.reference.hash_encode_reference`; CUDA tensors only."""
    tcnn = require("tinycudann", "the tiny-cuda-nn hash-grid backend (backend='tcnn')", _INSTALL)
    check_inputs(x, table)
    if not x.is_cuda:
        raise ValueError("hash_encode(backend='tcnn') needs CUDA tensors")
    if float(base_resolution) != int(base_resolution):
        raise ValueError(f"tiny-cuda-nn needs an integer base_resolution (got {base_resolution})")
    L, T, F = table.shape
    lv = grid_levels(L, T, float(base_resolution), float(per_level_scale))
    enc = _encoding(tcnn, L, T, F, int(base_resolution), per_level_scale, table.dtype)
    flat = torch.cat([table[level, : lv.size[level]].reshape(-1) for level in range(L)])
    if flat.numel() != enc.params.numel():
        raise RuntimeError(
            f"tiny-cuda-nn's hash grid has {enc.params.numel()} parameters, the [L, T, F] table maps to "
            f"{flat.numel()}: the level layouts disagree (tcnn version?)"
        )
    N = x.shape[0]
    gran = tcnn.batch_size_granularity()
    pad = (-N) % gran
    xp = torch.cat([x, x.new_zeros(pad, 3)]) if pad else x
    xp = xp.clamp(0.0, 1.0).float().contiguous()
    out = tcnn.modules._module_function.apply(enc.native_tcnn_module, xp, flat.contiguous(), enc.loss_scale)
    out = out[:N, : L * F].float()
    La = active_levels(L, n_active_levels)
    if La < L:
        mask = (torch.arange(L, device=x.device) < La).to(out.dtype).repeat_interleave(F)
        out = out * mask
    return out
