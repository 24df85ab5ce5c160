"""Multiresolution hash encoding: the PyTorch reference (the spec, and the CPU path).

Conventions (those of tiny-cuda-nn's ``Grid``/``Hash`` encoding with linear interpolation, N_POS_DIMS=3):

* Level ``l`` (0-based) of ``L`` has ``scale_l = 2**(l * log2(b)) * N_min - 1`` (float32, ``b`` = per-level scale,
  ``N_min`` = base resolution) and ``res_l = ceil(scale_l) + 1`` grid vertices per axis.
* A point ``x`` in ``[0, 1]^3`` (clamped into it) maps to ``pos = fma(x, scale_l, 0.5)``; its cell is
  ``floor(pos)`` and the interpolation weights come from ``frac = pos - floor(pos)``. The +0.5 staggers the levels.
  The 8 corners are ``floor(pos) + (bx, by, bz)``, with weight ``prod_d (frac_d if b_d else 1 - frac_d)``.
* Rows used by a level: ``size_l = min(next_multiple_of_8(res_l**3), T)``. A level is *dense* when
  ``res_l**3 <= T`` (then ``size_l = next_multiple_of_8(res_l**3)``), else *hashed* (``size_l = T``).
* Dense index: ``(cx + cy * res_l + cz * res_l**2) % size_l`` (the top corner of the last cell can reach
  ``res_l``, which wraps around, exactly as in tcnn). Hashed index:
  ``(cx * 1 ^ cy * 2654435761 ^ cz * 805459861) mod 2**32 % T``.
* ``table`` is ``[L, T, F]``: level ``l`` uses rows ``table[l, :size_l]`` (dense levels leave the rest unused, where
  tcnn packs the levels into one flat array). Output ``[N, L * F]`` float32, level-major
  (``out[:, l*F:(l+1)*F]`` is level ``l``). Levels ``>= n_active_levels`` output zeros and get no gradient.
"""

from __future__ import annotations

import functools
import math
from typing import Dict, NamedTuple, Optional, Tuple

import numpy as np
import torch

PRIMES = (1, 2654435761, 805459861)


class GridLevels(NamedTuple):
    """Per-level constants of a hash grid (tuples of length L)."""

    scale: tuple  # float32 values: positions are x * scale + 0.5
    resolution: tuple  # vertices per axis
    size: tuple  # rows of the level's table slice that are used (dense: next_multiple_of_8(res^3), hashed: T)
    hashed: tuple  # bool: spatial hash (True) or dense indexing (False)


@functools.lru_cache(maxsize=64)
def grid_levels(n_levels: int, table_size: int, base_resolution: float, per_level_scale: float) -> GridLevels:
    """The per-level scale, resolution, used size and dense/hashed flag, computed as tcnn does (in float32)."""
    log2_b = np.log2(np.float32(per_level_scale))
    scales, ress, sizes, hashed = [], [], [], []
    for level in range(n_levels):
        s = np.float32(np.exp2(np.float32(level) * log2_b) * np.float32(base_resolution) - np.float32(1.0))
        res = int(math.ceil(float(s))) + 1
        dense_rows = res**3
        is_hashed = dense_rows > table_size
        size = table_size if is_hashed else (dense_rows + 7) // 8 * 8
        scales.append(float(s))
        ress.append(res)
        sizes.append(size)
        hashed.append(is_hashed)
    return GridLevels(tuple(scales), tuple(ress), tuple(sizes), tuple(hashed))


def per_level_scale_for(base_resolution: float, max_resolution: float, n_levels: int) -> float:
    """The per-level scale ``b`` for which level ``n_levels - 1`` has ``max_resolution`` (threestudio's formula:
    ``exp(log(max_resolution / base_resolution) / (n_levels - 1))``)."""
    if n_levels < 2:
        return 1.0
    return math.exp(math.log(max_resolution / base_resolution) / (n_levels - 1))


def check_inputs(x: torch.Tensor, table: torch.Tensor) -> None:
    """Raise a ValueError naming the problem if ``x`` [N, 3] / ``table`` [L, T, F] have the wrong shapes."""
    if x.dim() != 2 or x.shape[1] != 3:
        raise ValueError(f"hash_encode: x must have shape [N, 3], got {tuple(x.shape)}")
    if table.dim() != 3:
        raise ValueError(f"hash_encode: table must have shape [L, T, F], got {tuple(table.shape)}")
    T = table.shape[1]
    if T < 8 or T & (T - 1):
        raise ValueError(f"hash_encode: the table size T={T} must be a power of two >= 8")
    if x.device != table.device:
        raise ValueError(f"hash_encode: x is on {x.device} but table is on {table.device}")


def active_levels(n_levels: int, n_active_levels: Optional[int]) -> int:
    """``n_active_levels`` clamped to ``[0, n_levels]`` (None means all levels)."""
    if n_active_levels is None:
        return n_levels
    return max(0, min(int(n_active_levels), n_levels))


_CONSTANTS: Dict[tuple, Tuple[torch.Tensor, ...]] = {}


def _level_constants(L: int, T: int, base_resolution: float, per_level_scale: float, La: int,
                     device: torch.device) -> Tuple[torch.Tensor, ...]:
    """(scale, resolution, size, primes) of the first ``La`` levels as device tensors, made once per device: a
    ``torch.tensor(..., device="cuda")`` per call would be a blocking copy (a host sync) at every encoding."""
    key = (L, T, base_resolution, per_level_scale, La, str(device))
    hit = _CONSTANTS.get(key)
    if hit is None:
        lv = grid_levels(L, T, base_resolution, per_level_scale)
        hit = (torch.tensor(lv.scale[:La], dtype=torch.float64, device=device),
               torch.tensor(lv.resolution[:La], dtype=torch.int64, device=device),
               torch.tensor(lv.size[:La], dtype=torch.int64, device=device),
               torch.tensor(PRIMES, dtype=torch.int64, device=device))
        _CONSTANTS[key] = hit
    return hit


def hash_encode_reference(
    x: torch.Tensor,
    table: torch.Tensor,
    *,
    base_resolution: float,
    per_level_scale: float,
    n_active_levels: Optional[int] = None,
    _gather: str = "index_select",
) -> torch.Tensor:
    """Hash-grid encoding in plain PyTorch, all levels batched (differentiable w.r.t. ``x`` and ``table``).

    Args:
        x: [N, 3] points in [0, 1]^3 (clamped into it), float32 or float64.
        table: [L, T, F] features, float32, float16 or float64 (T a power of two).
        base_resolution, per_level_scale: N_min and b of the module docstring.
        n_active_levels: only levels ``< n_active_levels`` are computed; the others output zeros.
        _gather: "index_select" (backward: index_add_, atomics on CUDA) or "indexing" (``flat[rows]``, whose
            backward is a sort-based index_put_; kept for the benchmark, it is much slower on CUDA).
    Returns:
        [N, L * F] float32 (float64 if ``x`` or ``table`` is float64).
    """
    check_inputs(x, table)
    L, T, F = table.shape
    N = x.shape[0]
    wide = x.dtype == torch.float64 or table.dtype == torch.float64
    dtype = torch.float64 if wide else torch.float32
    La = active_levels(L, n_active_levels)
    if La == 0:
        return torch.zeros(N, L * F, dtype=dtype, device=x.device) + 0 * table.to(dtype).sum()
    lv = grid_levels(L, T, float(base_resolution), float(per_level_scale))
    dev = x.device
    scale, res, size, primes = _level_constants(L, T, float(base_resolution), float(per_level_scale), La, dev)

    # Positions on each level's grid. In float64, x*scale is exact, so rounding once to float32 is the fma of tcnn.
    xc = x.clamp(0.0, 1.0).to(torch.float64)
    pos = xc[:, None, :] * scale[None, :, None] + 0.5  # [N, La, 3]
    pos = pos.to(dtype)
    cell_f = torch.floor(pos)
    frac = pos - cell_f  # differentiable w.r.t. x (floor has zero gradient)
    cell = cell_f.detach().to(torch.int64)
    corner = torch.stack([cell, cell + 1], dim=-1)  # [N, La, 3, 2]: per axis, the low and high corner coordinate

    # Corner indices in the order (bz, by, bx) -> flattened 4*bz + 2*by + bx, as tcnn's corner bits. Levels are
    # ordered coarse to fine, so the dense levels come first: each kind is computed only where it applies.
    n_dense = sum(not h for h in lv.hashed[:La])  # from the host-side list: no device read
    parts = []
    if n_dense > 0:  # dense: cx + cy*res + cz*res^2, wrapped modulo the level's (padded) size
        c = corner[:, :n_dense]
        r = res[:n_dense]
        strides = torch.stack([torch.ones_like(r), r, r * r], dim=-1)  # [Ld, 3]
        t = c * strides[None, :, :, None]
        idx = t[:, :, 2, :, None, None] + t[:, :, 1, None, :, None] + t[:, :, 0, None, None, :]
        parts.append((idx % size[None, :n_dense, None, None, None]).to(torch.int32).reshape(N, n_dense, 8))
    if n_dense < La:  # hashed: (cx*p0 ^ cy*p1 ^ cz*p2) mod 2^32, then mod T (a power of two: a mask)
        # (a ^ b ^ c) mod T == (a mod T) ^ (b mod T) ^ (c mod T) for T a power of two <= 2^32: mask each axis term
        # first, so the 8-corner combination runs on small int32 values
        t = ((corner[:, n_dense:] * primes[None, None, :, None]) & (T - 1)).to(torch.int32)
        idx = t[:, :, 2, :, None, None] ^ t[:, :, 1, None, :, None] ^ t[:, :, 0, None, None, :]
        parts.append(idx.reshape(N, La - n_dense, 8))
    idx = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
    rows = idx + (torch.arange(La, device=dev, dtype=torch.int32) * T)[None, :, None]  # L*T < 2^31

    w1 = torch.stack([1 - frac, frac], dim=-1)  # [N, La, 3, 2]
    w = (w1[:, :, 0, None, None, :] * w1[:, :, 1, None, :, None]) * w1[:, :, 2, :, None, None]
    w = w.reshape(N, La, 8)

    flat = table.to(dtype).reshape(L * T, F)  # fp16 tables are read as fp32: the gradient accumulates in fp32
    if _gather == "indexing":
        vals = flat[rows.reshape(-1).long()].reshape(N, La, 8, F)
        out = (w[..., None] * vals).sum(dim=2).reshape(N, La * F)
    elif x.device.type != "cpu" or (torch.is_grad_enabled() and (x.requires_grad or table.requires_grad)):
        vals = flat.index_select(0, rows.reshape(-1).long()).reshape(N, La, 8, F)  # int64: fast index_add backward
        out = (w[..., None] * vals).sum(dim=2).reshape(N, La * F)
    else:
        # CPU and no gradient needed (occupancy updates, sample pruning, evaluation): the same sum fused into one
        # op, about 1.4x faster on CPU (its backward is slower than index_select's, and on CUDA it is slower)
        out = torch.nn.functional.embedding_bag(rows.reshape(N * La, 8), flat, per_sample_weights=w.reshape(N * La, 8),
                                                mode="sum").reshape(N, La * F)
    if La < L:
        out = torch.cat([out, out.new_zeros(N, (L - La) * F)], dim=1)
    return out
