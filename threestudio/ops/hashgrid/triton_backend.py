"""Multiresolution hash encoding: Triton kernels (forward, backward) and their autograd.Function.

Import this module only after checking that triton is importable (``threestudio.ops.hashgrid`` does).

Layout of the work: a program handles ``BLOCK`` points and ``LPP`` consecutive levels; the grid is
``(cdiv(N, BLOCK), L / LPP)`` and CUDA schedules ``program_id(0)`` fastest, so with ``LPP = 1`` all blocks of level
0 run first, then level 1, ...: only one level's slice of the table (and of its gradient) is hot in L2 at a time.
Features move in pairs (F even): an fp32 pair as one int64, an fp16 pair as one int32. The defaults (chosen by
``scripts/bench/bench_hashgrid.py``, notes in ``docs/perf/hashgrid.md``), for F = 2 on sm_90+:

* backward: one ``red.global.add.v2.f32`` per corner (inline PTX) instead of two scalar atomics, and one
  ``red.global.add.v4.f32`` when a cell's two x-corners fall in one aligned pair of rows (the hash multiplies x by
  1, so this happens for about half of the cells); on the dense (coarse) levels, runs of consecutive points in the
  same cell (rays!) are summed with a segmented scan first, so that only the last point of a run adds;
* forward: one 16-byte load for such x-corner pairs, and coalesced stores into an [L, N, F] buffer that is then
  transposed to [N, L * F].

Elsewhere (F = 1 or F > 2, older GPUs, the CPU interpreter) the same kernels fall back to plain loads and
``tl.atomic_add``. The table gradient is accumulated in fp32 (also for fp16 tables) and cast at the end. The
gradient w.r.t. ``x`` (first order) is computed by the backward kernel when asked for.

Double backward (``create_graph=True``, e.g. a loss on analytic normals): the backward is itself an autograd.Function
(:class:`_HashEncodeGrad`) whose backward is one more kernel (``_hash_bwd2_kernel``). For a point on one level, with
the trilinear weights w_c of its 8 corners, the fraction f = fma(x, s, 0.5) - cell and the upstream gradient g of the
level's F outputs, the first-order gradient is gx_d = s Σ_c (g · table[row_c]) ∂w_c/∂f_d. Given ggx (the gradient
w.r.t. gx), with u_c = s Σ_d ggx_d ∂w_c/∂f_d:

* w.r.t. the table: table[row_c] += u_c g (atomics, as the backward);
* w.r.t. g: Σ_c u_c table[row_c] (a gather, as the forward);
* w.r.t. x: s² Σ_c (g · table[row_c]) Σ_{d≠e} ggx_d ∂²w_c/∂f_d∂f_e (trilinear: only the mixed terms are
  non-zero).

The clamp of x to [0, 1] passes all three only where 0 <= x <= 1. The second derivative through the table gradient
(rarely needed) reuses the forward and backward kernels with the table replaced by its incoming gradient.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

import torch
import triton
import triton.language as tl

from .reference import active_levels, check_inputs, grid_levels, hash_encode_reference

# The point count changes every step: without this, Triton compiles each kernel once more for counts divisible by 16
# (its default integer specialisation), a stall of seconds at some random later step.
_VARYING = ("N",)

_P1 = tl.constexpr(-1640531535)  # 2654435761 - 2**32: the same low 32 bits in wrapping int32 arithmetic
_P2 = tl.constexpr(805459861)


@dataclasses.dataclass(frozen=True)
class TritonConfig:
    """Launch parameters and kernel variants (the benchmark compares them; the defaults are the chosen ones)."""

    block: int = 256  # points per forward program
    num_warps: int = 4
    bwd_block: int = 256  # points per backward program
    bwd_num_warps: int = 4
    levels_per_program: int = 1  # 1: level-major grid; L: every program does all levels of its points
    vector_red: bool = True  # one red.global.add.v2.f32 per feature pair (sm_90+, F = 2), else scalar atomics
    pair_x: bool = True  # F = 2: one red.v4.f32 when a cell's two x-corners share an aligned 16-byte pair of rows
    pair_loads: bool = True  # F = 2, forward: one 16-byte (8 for fp16) load for such x-corner pairs (inline PTX)
    aggregate_levels: int = -1  # F = 2: levels < this sum runs of consecutive points in one cell before the
    #                             atomics (-1: all dense levels; 0: off)
    fwd_transposed: bool = True  # forward into an [L, N, F] buffer (coalesced stores), then transpose
    bwd_transposed: bool = False  # transpose the output gradient to [L, N, F] before the backward kernel
    atomic_sem: str = "relaxed"  # memory order of the scalar atomics ("acq_rel": what tl.atomic_add does by default)


DEFAULT_CONFIG = TritonConfig()


# ----------------------------------------------------------------------------------------------------------------
# device helpers


@triton.jit
def _axis(xd, scale):
    """Cell coordinate (int32) and fraction of one axis: pos = fma(x, scale, 0.5)."""
    pos = tl.fma(xd, scale, 0.5)
    fl = tl.floor(pos)
    return fl.to(tl.int32), pos - fl


@triton.jit
def _row(ax, ay, az, hashed, size, T):
    """Row of a corner in its level: hash (xor of per-axis terms, mod T) or dense (sum of terms, mod size)."""
    h = (ax ^ ay ^ az) & (T - 1)
    s = ax + ay + az
    s = tl.where(s >= size, s - size, s)  # dense wrap-around: s < 2 * size always
    return tl.where(hashed, h, s)


@triton.jit
def _unpack(v, PACK: tl.constexpr, HALF: tl.constexpr):
    """A packed feature pair (int64 of two fp32, or int32 of two fp16) -> two fp32 tensors (or one value)."""
    if PACK == 2:
        if HALF:
            lo = v.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
            hi = (v >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        else:
            lo = v.to(tl.int32).to(tl.float32, bitcast=True)
            hi = (v >> 32).to(tl.int32).to(tl.float32, bitcast=True)
    else:
        lo = v.to(tl.float32)
        hi = lo
    return lo, hi


@triton.jit
def _pack_f32(lo, hi):
    """Two fp32 tensors -> int64 bit pairs (lo in the low word)."""
    lo64 = lo.to(tl.int32, bitcast=True).to(tl.uint32, bitcast=True).to(tl.int64)
    hi64 = hi.to(tl.int32, bitcast=True).to(tl.int64) << 32
    return hi64 | lo64


@triton.jit
def _red_add_v2(ptr, a, b, mask):
    """Predicated ``red.global.add.v2.f32 [ptr], {a, b}`` (one 8-byte atomic add; sm_90+)."""
    return tl.inline_asm_elementwise(
        asm="{ .reg .pred %hgp; setp.ne.b32 %hgp, $4, 0; @%hgp red.global.add.v2.f32 [$1], {$2, $3}; mov.b32 $0, 0; }",
        constraints="=r,l,f,f,r",
        args=[ptr.to(tl.int64), a, b, mask.to(tl.int32)],  # an address (triton 3.6 cannot broadcast pointers)
        dtype=tl.int32,
        is_pure=False,
        pack=1,
    )


@triton.jit
def _red_add_v4(ptr, a, b, c, d, mask):
    """Predicated ``red.global.add.v4.f32 [ptr], {a, b, c, d}`` (ptr 16-byte aligned; sm_90+)."""
    return tl.inline_asm_elementwise(
        asm="{ .reg .pred %hgp; setp.ne.b32 %hgp, $6, 0; "
        "@%hgp red.global.add.v4.f32 [$1], {$2, $3, $4, $5}; mov.b32 $0, 0; }",
        constraints="=r,l,f,f,f,f,r",
        args=[ptr.to(tl.int64), a, b, c, d, mask.to(tl.int32)],
        dtype=tl.int32,
        is_pure=False,
        pack=1,
    )


@triton.jit
def _load_pair(ptr, mask, HALF: tl.constexpr):
    """Predicated 16-byte (fp32 rows) or 8-byte (fp16 rows) load of two packed rows at an aligned ``ptr``."""
    if HALF:
        return tl.inline_asm_elementwise(
            asm="{ .reg .pred %hgq; setp.ne.b32 %hgq, $3, 0; mov.b32 $0, 0; mov.b32 $1, 0; "
            "@%hgq ld.global.v2.b32 {$0, $1}, [$2]; }",
            constraints="=r,=r,l,r",
            args=[ptr.to(tl.int64), mask.to(tl.int32)],
            dtype=(tl.int32, tl.int32),
            is_pure=True,
            pack=1,
        )
    else:
        return tl.inline_asm_elementwise(
            asm="{ .reg .pred %hgq; setp.ne.b32 %hgq, $3, 0; mov.b64 $0, 0; mov.b64 $1, 0; "
            "@%hgq ld.global.v2.b64 {$0, $1}, [$2]; }",
            constraints="=l,=l,l,r",
            args=[ptr.to(tl.int64), mask.to(tl.int32)],
            dtype=(tl.int64, tl.int64),
            is_pure=True,
            pack=1,
        )


@triton.jit
def _add_pair(ptr, lo, hi, mask, PACK: tl.constexpr, VEC_RED: tl.constexpr, SEM: tl.constexpr):
    """Atomically add a feature pair (or a single feature, PACK = 1) into the fp32 gradient at ``ptr``."""
    if PACK == 2:
        if VEC_RED:
            _red_add_v2(ptr, lo, hi, mask)
        else:
            tl.atomic_add(ptr, lo, mask=mask, sem=SEM)
            tl.atomic_add(ptr + 1, hi, mask=mask, sem=SEM)
    else:
        tl.atomic_add(ptr, lo, mask=mask, sem=SEM)


@triton.jit
def _seg_sum(a0, a1, a2, a3, af, b0, b1, b2, b3, bf):
    """Segmented sum: b starts a new segment when its flag is set (associative)."""
    keep = bf == 0
    return (
        tl.where(keep, a0 + b0, b0),
        tl.where(keep, a1 + b1, b1),
        tl.where(keep, a2 + b2, b2),
        tl.where(keep, a3 + b3, b3),
        af | bf,
    )


@triton.jit
def _load_x(x_ptr, offs, m):
    x0 = tl.load(x_ptr + offs * 3 + 0, mask=m, other=0.0)
    x1 = tl.load(x_ptr + offs * 3 + 1, mask=m, other=0.0)
    x2 = tl.load(x_ptr + offs * 3 + 2, mask=m, other=0.0)
    return x0, x1, x2


@triton.jit
def _clamp01(v):
    return tl.minimum(tl.maximum(v, 0.0), 1.0)


@triton.jit
def _cell(x0, x1, x2, scale):
    """Integer cell of clamped points on one level."""
    return (
        tl.floor(tl.fma(_clamp01(x0), scale, 0.5)).to(tl.int32),
        tl.floor(tl.fma(_clamp01(x1), scale, 0.5)).to(tl.int32),
        tl.floor(tl.fma(_clamp01(x2), scale, 0.5)).to(tl.int32),
    )


@triton.jit
def _corner_axis(high: tl.constexpr, cell, frac, mult):
    """One axis of a cell corner: its hash/stride term (cell or cell + 1, times ``mult``), its trilinear weight
    (frac or 1 - frac) and the sign of that weight's derivative by frac."""
    if high:
        term = (cell + 1) * mult
        w = frac
        sign = 1.0
    else:
        term = cell * mult
        w = 1.0 - frac
        sign = -1.0
    return term, w, sign


# ----------------------------------------------------------------------------------------------------------------
# kernels


@triton.jit(do_not_specialize=_VARYING)
def _hash_fwd_kernel(
    x_ptr, tab_ptr, out_ptr, scale_ptr, res_ptr, size_ptr, hashed_ptr,
    N, T, n_active, level0, out_sn, out_sl,
    F: tl.constexpr, PACK: tl.constexpr, HALF: tl.constexpr, LPP: tl.constexpr, BLOCK: tl.constexpr,
    PAIR_LD: tl.constexpr,
):  # fmt: skip
    NP: tl.constexpr = F // PACK  # packed elements per table row
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < N
    x0, x1, x2 = _load_x(x_ptr, offs, m)
    x0 = _clamp01(x0)
    x1 = _clamp01(x1)
    x2 = _clamp01(x2)
    kp = tl.arange(0, NP)
    for i in range(LPP):
        level = level0 + tl.program_id(1) * LPP + i
        lm = offs < tl.where(level < n_active, N, 0)  # points, on active levels only
        scale = tl.load(scale_ptr + level)
        res = tl.load(res_ptr + level)
        size = tl.load(size_ptr + level)
        hashed = tl.load(hashed_ptr + level) != 0
        cx, fx = _axis(x0, scale)
        cy, fy = _axis(x1, scale)
        cz, fz = _axis(x2, scale)
        my = tl.where(hashed, _P1, res)
        mz = tl.where(hashed, _P2, res * res)
        ay0 = cy * my
        az0 = cz * mz
        base = level * T
        acc_lo = tl.zeros((BLOCK, NP), dtype=tl.float32)
        acc_hi = tl.zeros((BLOCK, NP), dtype=tl.float32)
        for yz in tl.static_range(4):  # the two x-corners of each (y, z) edge together
            if yz & 1:
                ay = ay0 + my
                wy = fy
            else:
                ay = ay0
                wy = 1.0 - fy
            if yz & 2:
                az = az0 + mz
                wz = fz
            else:
                az = az0
                wz = 1.0 - fz
            row0 = base + _row(cx, ay, az, hashed, size, T)
            row1 = base + _row(cx + 1, ay, az, hashed, size, T)
            w0 = ((1.0 - fx) * wy) * wz
            w1 = (fx * wy) * wz
            if PAIR_LD:  # F == 2 (NP == 1): rows {2k, 2k+1} in one load when both corners fall in them
                e, o = _load_pair(tab_ptr + ((row0 >> 1) << 1), lm, HALF)
                odd = (row0 & 1) != 0
                same = (row0 >> 1) == (row1 >> 1)
                v1s = tl.load(tab_ptr + row1, mask=lm & (same == 0), other=0)
                v0 = tl.where(odd, o, e)[:, None]
                v1 = tl.where(same, tl.where(odd, e, o), v1s)[:, None]
            else:
                v0 = tl.load(tab_ptr + row0[:, None] * NP + kp[None, :], mask=lm[:, None], other=0)
                v1 = tl.load(tab_ptr + row1[:, None] * NP + kp[None, :], mask=lm[:, None], other=0)
            lo0, hi0 = _unpack(v0, PACK, HALF)
            lo1, hi1 = _unpack(v1, PACK, HALF)
            acc_lo += w0[:, None] * lo0 + w1[:, None] * lo1
            if PACK == 2:
                acc_hi += w0[:, None] * hi0 + w1[:, None] * hi1
        optr = out_ptr + offs[:, None] * out_sn + level * out_sl + kp[None, :]
        if PACK == 2:
            tl.store(optr, _pack_f32(acc_lo, acc_hi), mask=m[:, None])
        else:
            tl.store(optr, acc_lo, mask=m[:, None])


@triton.jit
def _bwd_level(
    gtab_ptr, tab_ptr, base, cx, fx, fy, fz, ay0, az0, my, mz, hashed, size, T, g_lo, g_hi, lm, kp, seg_start, seg_end,
    F: tl.constexpr, PACK: tl.constexpr, HALF: tl.constexpr, NEED_DX: tl.constexpr, VEC_RED: tl.constexpr,
    PAIRX: tl.constexpr, SEGMENT: tl.constexpr, SEM: tl.constexpr,
):  # fmt: skip
    """Scatter one level's gradient into the table (and return the level's d/dfrac for x)."""
    NP: tl.constexpr = F // PACK
    gx = tl.zeros(fx.shape, dtype=tl.float32)
    gy = tl.zeros(fx.shape, dtype=tl.float32)
    gz = tl.zeros(fx.shape, dtype=tl.float32)
    for yz in tl.static_range(4):
        if yz & 1:
            ay = ay0 + my
            wy = fy
            sy = 1.0
        else:
            ay = ay0
            wy = 1.0 - fy
            sy = -1.0
        if yz & 2:
            az = az0 + mz
            wz = fz
            sz = 1.0
        else:
            az = az0
            wz = 1.0 - fz
            sz = -1.0
        r0 = _row(cx, ay, az, hashed, size, T)
        r1 = _row(cx + 1, ay, az, hashed, size, T)
        w0 = (((1.0 - fx) * wy) * wz)[:, None]
        w1 = ((fx * wy) * wz)[:, None]
        a_lo = w0 * g_lo
        a_hi = w0 * g_hi
        b_lo = w1 * g_lo
        b_hi = w1 * g_hi
        mask = lm[:, None]
        if SEGMENT:  # sum runs of points in the same cell; the last point of a run adds the run's total
            a_lo, a_hi, b_lo, b_hi, _ = tl.associative_scan((a_lo, a_hi, b_lo, b_hi, seg_start), 0, _seg_sum)
            mask = mask & (seg_end != 0)
        p0 = gtab_ptr + (base + r0)[:, None] * F + kp[None, :] * PACK
        p1 = gtab_ptr + (base + r1)[:, None] * F + kp[None, :] * PACK
        if PAIRX:  # F == 2: rows {2k, 2k+1} are one 16-byte aligned block of the fp32 gradient
            same = ((r0 >> 1) == (r1 >> 1))[:, None]
            odd = ((r0 & 1) != 0)[:, None]
            pe = gtab_ptr + ((base + r0) >> 1 << 1)[:, None] * 2
            _red_add_v4(pe, tl.where(odd, b_lo, a_lo), tl.where(odd, b_hi, a_hi), tl.where(odd, a_lo, b_lo),
                        tl.where(odd, a_hi, b_hi), mask & same)  # fmt: skip
            _red_add_v2(p0, a_lo, a_hi, mask & (same == 0))
            _red_add_v2(p1, b_lo, b_hi, mask & (same == 0))
        else:
            _add_pair(p0, a_lo, a_hi, mask, PACK, VEC_RED, SEM)
            _add_pair(p1, b_lo, b_hi, mask, PACK, VEC_RED, SEM)
        if NEED_DX:
            v0 = tl.load(tab_ptr + (base + r0)[:, None] * NP + kp[None, :], mask=lm[:, None], other=0)
            v1 = tl.load(tab_ptr + (base + r1)[:, None] * NP + kp[None, :], mask=lm[:, None], other=0)
            lo0, hi0 = _unpack(v0, PACK, HALF)
            lo1, hi1 = _unpack(v1, PACK, HALF)
            d0 = g_lo * lo0
            d1 = g_lo * lo1
            if PACK == 2:
                d0 += g_hi * hi0
                d1 += g_hi * hi1
            d0s = tl.sum(d0, axis=1)
            d1s = tl.sum(d1, axis=1)
            mix = (1.0 - fx) * d0s + fx * d1s
            gx += (wy * wz) * (d1s - d0s)
            gy += (sy * wz) * mix
            gz += (sz * wy) * mix
    return gx, gy, gz


@triton.jit(do_not_specialize=_VARYING)
def _hash_bwd_kernel(
    x_ptr, gout_ptr, gtab_ptr, tab_ptr, dx_ptr, scale_ptr, res_ptr, size_ptr, hashed_ptr,
    N, T, n_active, level0, g_sn, g_sl, n_agg,
    F: tl.constexpr, PACK: tl.constexpr, HALF: tl.constexpr, LPP: tl.constexpr, BLOCK: tl.constexpr,
    NEED_DX: tl.constexpr, VEC_RED: tl.constexpr, PAIRX: tl.constexpr, AGG: tl.constexpr, SEM: tl.constexpr,
):  # fmt: skip
    NP: tl.constexpr = F // PACK
    loc = tl.arange(0, BLOCK)
    offs = tl.program_id(0) * BLOCK + loc
    m = offs < N
    xr0, xr1, xr2 = _load_x(x_ptr, offs, m)
    x0 = _clamp01(xr0)
    x1 = _clamp01(xr1)
    x2 = _clamp01(xr2)
    if AGG:  # neighbours, to find runs of points in one cell
        pm = m & (loc > 0)
        nm = (offs + 1 < N) & (loc < BLOCK - 1)
        xp0, xp1, xp2 = _load_x(x_ptr, offs - 1, pm)
        xn0, xn1, xn2 = _load_x(x_ptr, offs + 1, nm)
    kp = tl.arange(0, NP)
    dx0 = tl.zeros((BLOCK,), dtype=tl.float32)
    dx1 = tl.zeros((BLOCK,), dtype=tl.float32)
    dx2 = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in range(LPP):
        level = level0 + tl.program_id(1) * LPP + i
        lm = offs < tl.where(level < n_active, N, 0)
        scale = tl.load(scale_ptr + level)
        res = tl.load(res_ptr + level)
        size = tl.load(size_ptr + level)
        hashed = tl.load(hashed_ptr + level) != 0
        cx, fx = _axis(x0, scale)
        cy, fy = _axis(x1, scale)
        cz, fz = _axis(x2, scale)
        my = tl.where(hashed, _P1, res)
        mz = tl.where(hashed, _P2, res * res)
        ay0 = cy * my
        az0 = cz * mz
        base = level * T
        gv = tl.load(gout_ptr + offs[:, None] * g_sn + level * g_sl + kp[None, :], mask=lm[:, None], other=0)
        if PACK == 2:
            g_lo, g_hi = _unpack(gv, 2, False)
        else:
            g_lo = gv
            g_hi = gv
        if AGG:
            if level < n_agg:
                px, py, pz = _cell(xp0, xp1, xp2, scale)
                nx, ny, nz = _cell(xn0, xn1, xn2, scale)
                start = (~pm) | (px != cx) | (py != cy) | (pz != cz)
                end = (~nm) | (nx != cx) | (ny != cy) | (nz != cz)
                start2 = tl.broadcast_to(start.to(tl.int32)[:, None], (BLOCK, NP))
                end2 = tl.broadcast_to(end.to(tl.int32)[:, None], (BLOCK, NP))
                gx, gy, gz = _bwd_level(
                    gtab_ptr, tab_ptr, base, cx, fx, fy, fz, ay0, az0, my, mz, hashed, size, T, g_lo, g_hi, lm, kp,
                    start2, end2, F, PACK, HALF, NEED_DX, VEC_RED, PAIRX, True, SEM,
                )  # fmt: skip
            else:
                gx, gy, gz = _bwd_level(
                    gtab_ptr, tab_ptr, base, cx, fx, fy, fz, ay0, az0, my, mz, hashed, size, T, g_lo, g_hi, lm, kp,
                    0, 0, F, PACK, HALF, NEED_DX, VEC_RED, PAIRX, False, SEM,
                )  # fmt: skip
        else:
            gx, gy, gz = _bwd_level(
                gtab_ptr, tab_ptr, base, cx, fx, fy, fz, ay0, az0, my, mz, hashed, size, T, g_lo, g_hi, lm, kp,
                0, 0, F, PACK, HALF, NEED_DX, VEC_RED, PAIRX, False, SEM,
            )  # fmt: skip
        if NEED_DX:
            dx0 += scale * gx
            dx1 += scale * gy
            dx2 += scale * gz
    if NEED_DX:
        # clamp(x, 0, 1) passes the gradient where 0 <= x <= 1 (as torch.clamp does)
        dx0 = tl.where((xr0 >= 0.0) & (xr0 <= 1.0), dx0, 0.0)
        dx1 = tl.where((xr1 >= 0.0) & (xr1 <= 1.0), dx1, 0.0)
        dx2 = tl.where((xr2 >= 0.0) & (xr2 <= 1.0), dx2, 0.0)
        dptr = dx_ptr + tl.program_id(1) * N * 3 + offs * 3
        tl.store(dptr + 0, dx0, mask=m)
        tl.store(dptr + 1, dx1, mask=m)
        tl.store(dptr + 2, dx2, mask=m)


@triton.jit(do_not_specialize=_VARYING)
def _hash_bwd2_kernel(
    x_ptr, tab_ptr, gout_ptr, ggx_ptr, gtab_ptr, ggout_ptr, dx_ptr, scale_ptr, res_ptr, size_ptr, hashed_ptr,
    N, T, n_active, g_sn,
    F: tl.constexpr, BLOCK: tl.constexpr, NEED_GT: tl.constexpr, NEED_GOUT: tl.constexpr, NEED_DX: tl.constexpr,
):  # fmt: skip
    """Double backward of one level (program_id(1)) for BLOCK points: see the module docstring."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < N
    level = tl.program_id(1)
    lm = offs < tl.where(level < n_active, N, 0)
    xr0, xr1, xr2 = _load_x(x_ptr, offs, m)
    q0, q1, q2 = _load_x(ggx_ptr, offs, lm)
    in0 = (xr0 >= 0.0) & (xr0 <= 1.0)
    in1 = (xr1 >= 0.0) & (xr1 <= 1.0)
    in2 = (xr2 >= 0.0) & (xr2 <= 1.0)
    q0 = tl.where(in0, q0, 0.0)
    q1 = tl.where(in1, q1, 0.0)
    q2 = tl.where(in2, q2, 0.0)
    scale = tl.load(scale_ptr + level)
    res = tl.load(res_ptr + level)
    size = tl.load(size_ptr + level)
    hashed = tl.load(hashed_ptr + level) != 0
    cx, fx = _axis(_clamp01(xr0), scale)
    cy, fy = _axis(_clamp01(xr1), scale)
    cz, fz = _axis(_clamp01(xr2), scale)
    my = tl.where(hashed, _P1, res)
    mz = tl.where(hashed, _P2, res * res)
    kf = tl.arange(0, F)
    g = tl.load(gout_ptr + offs[:, None] * g_sn + level * F + kf[None, :], mask=lm[:, None], other=0.0).to(tl.float32)
    acc = tl.zeros((BLOCK, F), dtype=tl.float32)
    h0 = tl.zeros((BLOCK,), dtype=tl.float32)
    h1 = tl.zeros((BLOCK,), dtype=tl.float32)
    h2 = tl.zeros((BLOCK,), dtype=tl.float32)
    for c in tl.static_range(8):
        ax, wx, sx = _corner_axis(c & 1, cx, fx, 1)
        ay, wy, sy = _corner_axis(c & 2, cy, fy, my)
        az, wz, sz = _corner_axis(c & 4, cz, fz, mz)
        row = level * T + _row(ax, ay, az, hashed, size, T)
        u = scale * (q0 * (sx * wy * wz) + q1 * (sy * wx * wz) + q2 * (sz * wx * wy))
        ptr = row[:, None] * F + kf[None, :]
        if NEED_GT:
            tl.atomic_add(gtab_ptr + ptr, u[:, None] * g, mask=lm[:, None], sem="relaxed")
        if NEED_GOUT or NEED_DX:
            v = tl.load(tab_ptr + ptr, mask=lm[:, None], other=0.0).to(tl.float32)
            if NEED_GOUT:
                acc += u[:, None] * v
            if NEED_DX:
                dot = tl.sum(g * v, axis=1) * (scale * scale)
                h0 += dot * sx * (q1 * sy * wz + q2 * sz * wy)
                h1 += dot * sy * (q0 * sx * wz + q2 * sz * wx)
                h2 += dot * sz * (q0 * sx * wy + q1 * sy * wx)
    if NEED_GOUT:
        tl.store(ggout_ptr + offs[:, None] * g_sn + level * F + kf[None, :], acc, mask=m[:, None])
    if NEED_DX:
        dptr = dx_ptr + level * N * 3 + offs * 3
        tl.store(dptr + 0, tl.where(in0, h0, 0.0), mask=m)
        tl.store(dptr + 1, tl.where(in1, h1, 0.0), mask=m)
        tl.store(dptr + 2, tl.where(in2, h2, 0.0), mask=m)


# ----------------------------------------------------------------------------------------------------------------
# host side

_LEVEL_CACHE: Dict[tuple, Tuple[torch.Tensor, ...]] = {}


def _level_tensors(L: int, T: int, base_resolution: float, per_level_scale: float, device: torch.device):
    key = (L, T, float(base_resolution), float(per_level_scale), str(device))
    hit = _LEVEL_CACHE.get(key)
    if hit is None:
        lv = grid_levels(L, T, float(base_resolution), float(per_level_scale))
        hit = (
            torch.tensor(lv.scale, dtype=torch.float32, device=device),
            torch.tensor(lv.resolution, dtype=torch.int32, device=device),
            torch.tensor(lv.size, dtype=torch.int32, device=device),
            torch.tensor(lv.hashed, dtype=torch.int32, device=device),
        )
        _LEVEL_CACHE[key] = hit
    return hit


def supports(x: torch.Tensor, table: torch.Tensor) -> Optional[str]:
    """None if the Triton backend handles these tensors, else the reason why not."""
    if x.dtype != torch.float32:
        return f"x must be float32 (got {x.dtype})"
    if table.dtype not in (torch.float32, torch.float16):
        return f"table must be float32 or float16 (got {table.dtype})"
    F = table.shape[2]
    if F != 1 and F % 2:
        return f"n_features_per_level must be 1 or even (got {F})"
    if table.numel() >= 2**31 or x.shape[0] * table.shape[0] * max(F, 3) >= 2**31:
        return "tensors too large for int32 indexing"
    if not x.is_cuda and not triton_interpreting():
        return "tensors are on the CPU and TRITON_INTERPRET is not set"
    return None


def triton_interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _ptx_ok(device: torch.device) -> bool:
    """The inline-PTX paths (red.global.add.v2/v4.f32, ld.global.v2) need sm_90+ and a real GPU."""
    if device.type != "cuda" or torch.version.hip is not None or triton_interpreting():
        return False
    return torch.cuda.get_device_capability(device)[0] >= 9


def _packing(table: torch.Tensor):
    """(PACK, HALF, table view): feature pairs are read as one int64 (fp32) or int32 (fp16) when F is even."""
    F = table.shape[2]
    PACK = 2 if F % 2 == 0 else 1
    HALF = table.dtype == torch.float16
    tab = table.view(torch.int32 if HALF else torch.int64) if PACK == 2 else table
    return PACK, HALF, tab


def _level_grid(L: int, cfg: TritonConfig, level_range: Optional[Tuple[int, int]]):
    """(levels per program, first level, number of level groups); level_range restricts the launch (benchmarks)."""
    lo, hi = level_range if level_range is not None else (0, L)
    LPP = cfg.levels_per_program if (hi - lo) % cfg.levels_per_program == 0 else 1
    return LPP, lo, (hi - lo) // LPP


def _warps(block: int, num_warps: int) -> int:
    """At most one warp per 32 points: with fewer points than threads, Triton replicates elements across threads,
    and every copy of an inline-PTX atomic would add (the compiler predicates only its own atomics)."""
    return max(1, min(num_warps, block // 32))


def _launch_forward(x, table, levels, n_active, cfg: TritonConfig, level_range=None) -> torch.Tensor:
    L, T, F = table.shape
    N = x.shape[0]
    PACK, HALF, tab = _packing(table)
    LPP, level0, G = _level_grid(L, cfg, level_range)
    if cfg.fwd_transposed:
        out = torch.empty(L, N, F, dtype=torch.float32, device=x.device)
        sn, sl = F // PACK, N * F // PACK
    else:
        out = torch.empty(N, L * F, dtype=torch.float32, device=x.device)
        sn, sl = L * F // PACK, F // PACK
    o = out.view(torch.int64) if PACK == 2 else out
    if N > 0 and G > 0:
        grid = (triton.cdiv(N, cfg.block), G)
        _hash_fwd_kernel[grid](
            x, tab, o, *levels, N, T, n_active, level0, sn, sl,
            F=F, PACK=PACK, HALF=HALF, LPP=LPP, BLOCK=cfg.block,
            PAIR_LD=cfg.pair_loads and F == 2 and _ptx_ok(x.device), num_warps=_warps(cfg.block, cfg.num_warps),
        )  # fmt: skip
    if cfg.fwd_transposed:
        out = out.permute(1, 0, 2).reshape(N, L * F)
    return out


def _n_aggregate(L: int, T: int, base_resolution: float, per_level_scale: float, cfg: TritonConfig) -> int:
    if cfg.aggregate_levels >= 0:
        return min(cfg.aggregate_levels, L)
    return sum(not h for h in grid_levels(L, T, float(base_resolution), float(per_level_scale)).hashed)


def _launch_backward(
    x, table, gout, levels, n_active, need_dx: bool, cfg: TritonConfig, level_range=None, gtab=None, n_agg=0
):
    L, T, F = table.shape
    N = x.shape[0]
    PACK, HALF, tab = _packing(table)
    LPP, level0, G = _level_grid(L, cfg, level_range)
    if cfg.bwd_transposed:
        g = gout.reshape(N, L, F).transpose(0, 1).contiguous()
        sn, sl = F // PACK, N * F // PACK
    else:
        g = gout.contiguous()
        sn, sl = L * F // PACK, F // PACK
    g = g.view(torch.int64) if PACK == 2 else g
    if gtab is None:  # fp32 accumulator (also for fp16 tables)
        gtab = torch.zeros(L, T, F, dtype=torch.float32, device=x.device)
    dx = torch.zeros(max(G, 1), N, 3, dtype=torch.float32, device=x.device) if need_dx else gtab  # dummy if unused
    vec = cfg.vector_red and _ptx_ok(x.device)
    if N > 0 and G > 0:
        grid = (triton.cdiv(N, cfg.bwd_block), G)
        _hash_bwd_kernel[grid](
            x, g, gtab, tab, dx, *levels, N, T, n_active, level0, sn, sl, n_agg,
            F=F, PACK=PACK, HALF=HALF, LPP=LPP, BLOCK=cfg.bwd_block, NEED_DX=need_dx, VEC_RED=vec,
            PAIRX=vec and cfg.pair_x and F == 2, AGG=n_agg > 0 and F == 2, SEM=cfg.atomic_sem,
            num_warps=_warps(cfg.bwd_block, cfg.bwd_num_warps),
        )  # fmt: skip
    gx = None
    if need_dx:
        gx = dx[0] if dx.shape[0] == 1 else dx.sum(0)
    return gx, gtab.to(table.dtype)


def double_backward_supported(table: torch.Tensor) -> bool:
    """The double-backward kernel takes F a power of two (it indexes features with ``tl.arange(0, F)``)."""
    F = table.shape[2]
    return F & (F - 1) == 0


def _launch_double_backward(x, table, gout, ggx, levels, n_active, need_t: bool, need_gout: bool, need_x: bool,
                            block: int = 128):
    """(gtable fp32 or None, ggout [N, L*F] fp32 or None, gx [N, 3] or None) of the first-order x-gradient's
    gradient ``ggx``: see the module docstring."""
    L, T, F = table.shape
    N = x.shape[0]
    g = gout.float().contiguous()
    q = ggx.float().contiguous()
    gtab = torch.zeros(L, T, F, dtype=torch.float32, device=x.device) if need_t else None
    ggout = torch.empty(N, L * F, dtype=torch.float32, device=x.device) if need_gout else None
    dx = torch.empty(L, N, 3, dtype=torch.float32, device=x.device) if need_x else None
    if N > 0 and (need_t or need_gout or need_x):
        dummy = g
        _hash_bwd2_kernel[(triton.cdiv(N, block), L)](
            x, table, g, q, gtab if need_t else dummy, ggout if need_gout else dummy, dx if need_x else dummy,
            *levels, N, T, n_active, L * F,
            F=F, BLOCK=block, NEED_GT=need_t, NEED_GOUT=need_gout, NEED_DX=need_x, num_warps=_warps(block, 4),
        )  # fmt: skip
    return gtab, ggout, (dx.sum(0) if need_x else None)


class _HashEncodeGrad(torch.autograd.Function):
    """The backward of :class:`_HashEncode` as a differentiable function of (x, table, gout)."""

    @staticmethod
    def forward(ctx, x, table, gout, base_resolution, per_level_scale, n_active, cfg, need_x, need_t):
        L, T, _ = table.shape
        levels = _level_tensors(L, T, base_resolution, per_level_scale, x.device)
        n_agg = _n_aggregate(L, T, base_resolution, per_level_scale, cfg)
        gx, gt = _launch_backward(x, table, gout.float(), levels, n_active, need_x, cfg, n_agg=n_agg)
        ctx.save_for_backward(x, table, gout)
        ctx.args = (base_resolution, per_level_scale, n_active, cfg)
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None (no [L, T, F] of zeros)
        return (gx if need_x else None), (gt.to(table.dtype) if need_t else None)

    @staticmethod
    def backward(ctx, ggx, ggt):
        x, table, gout = ctx.saved_tensors
        base_resolution, per_level_scale, n_active, cfg = ctx.args
        need_x, need_t, need_g = ctx.needs_input_grad[:3]
        L, T, F = table.shape
        levels = _level_tensors(L, T, base_resolution, per_level_scale, x.device)
        gx2 = gt2 = gg = None
        if ggx is not None:
            gt2, gg, gx2 = _launch_double_backward(x, table, gout, ggx, levels, n_active, need_t, need_g, need_x)
        if ggt is not None and (need_g or need_x):
            # gt = Σ_points w_c(x) g: w.r.t. g, the encoding of x with ggt as the table; w.r.t. x, its x-gradient
            ggt = ggt.float().contiguous()
            if need_g:
                enc = _launch_forward(x, ggt, levels, n_active, DEFAULT_CONFIG)
                gg = enc if gg is None else gg + enc
            if need_x:
                d, _ = _launch_backward(x, ggt, gout.float(), levels, n_active, True, DEFAULT_CONFIG)
                gx2 = d if gx2 is None else gx2 + d
        if gt2 is not None:
            gt2 = gt2.to(table.dtype)
        if gg is not None:
            gg = gg.to(gout.dtype)
        return gx2, gt2, gg, None, None, None, None, None, None


class _HashEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, table, base_resolution, per_level_scale, n_active, cfg):
        L, T, _ = table.shape
        levels = _level_tensors(L, T, base_resolution, per_level_scale, x.device)
        ctx.save_for_backward(x, table)
        ctx.args = (base_resolution, per_level_scale, n_active, cfg)
        return _launch_forward(x, table, levels, n_active, cfg)

    @staticmethod
    def backward(ctx, gout):
        x, table = ctx.saved_tensors
        base_resolution, per_level_scale, n_active, cfg = ctx.args
        need_x, need_t = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if torch.is_grad_enabled() and double_backward_supported(table):
            # create_graph=True (e.g. a loss on analytic normals): a differentiable backward
            gx, gt = _HashEncodeGrad.apply(x, table, gout, base_resolution, per_level_scale, n_active, cfg, need_x,
                                           need_t)
            return gx, gt, None, None, None, None
        if torch.is_grad_enabled():
            # double backward with a feature width the kernel does not take: differentiate the reference instead
            with torch.enable_grad():
                out = hash_encode_reference(
                    x, table, base_resolution=base_resolution, per_level_scale=per_level_scale,
                    n_active_levels=n_active,
                )  # fmt: skip
                wrt = [t for t, need in ((x, need_x), (table, need_t)) if need]
                grads = list(torch.autograd.grad(out, wrt, gout, create_graph=True, allow_unused=True))
            gx = grads.pop(0) if need_x else None
            gt = grads.pop(0) if need_t else None
            return gx, gt, None, None, None, None
        L, T, _ = table.shape
        levels = _level_tensors(L, T, base_resolution, per_level_scale, x.device)
        n_agg = _n_aggregate(L, T, base_resolution, per_level_scale, cfg)
        gx, gt = _launch_backward(x, table, gout.float(), levels, n_active, need_x, cfg, n_agg=n_agg)
        return gx, (gt if need_t else None), None, None, None, None


def hash_encode_triton(
    x: torch.Tensor,
    table: torch.Tensor,
    *,
    base_resolution: float,
    per_level_scale: float,
    n_active_levels: Optional[int] = None,
    config: TritonConfig = DEFAULT_CONFIG,
) -> torch.Tensor:
    """The Triton hash encoding (same contract as :func:`hash_encode_reference`; float32 x, fp32/fp16 table)."""
    check_inputs(x, table)
    why = supports(x, table)
    if why is not None:
        raise ValueError(f"hash_encode(backend='triton'): {why}")
    n_active = active_levels(table.shape[0], n_active_levels)
    return _HashEncode.apply(
        x.contiguous(), table.contiguous(), float(base_resolution), float(per_level_scale), n_active, config
    )
