"""Triton kernels for rasterize, interpolate and antialias, with hand-written backward passes.

Import this module only after checking that triton is importable (:func:`threestudio.ops.rasterize.resolve_backend`
does). The formulas are those of :mod:`.common` (coverage, barycentrics, depth keys) and :mod:`.reference`
(antialiasing); the tests hold these kernels against the PyTorch backend and the brute-force reference.

Rasterize forward, with no host synchronisation:

1. ``_raster_small_kernel``: one lane row per triangle (``small_block`` triangles a program). It computes the
   triangle's near-clipped screen bounding box; a triangle whose box spans at most ``small_tile`` x ``small_tile``
   pixel centres is tested right there on an ``[small_block, small_tile^2]`` tile, and each covered centre does one
   64-bit ``atomic_min`` of its (depth, triangle) key into the depth buffer. Bigger triangles are listed for the
   second pass (one atomic per program reserves the slots, a prefix sum places them): boxes that fit one
   ``large_tile`` x ``large_tile`` tile at the front of the list, bigger ones at its back.
2. ``_raster_large_kernel``: a persistent grid walks that list: the one-tile boxes many triangles a step, then the
   bigger ones ``large_block`` at a time, sweeping each box in tiles (the loop runs to the largest box of the group).
3. ``_resolve_kernel``: per pixel, decode the winning triangle and compute ``(u, v, z/w, id + 1)`` and the
   screen-space derivatives (in float64 arithmetic, stored as float32; ``TritonConfig.wide_barycentrics``).

Antialias: a per-pixel pass copies the colour and lists the pixel pairs (right and lower neighbour) whose triangles
differ; a persistent pass runs the silhouette analysis on those pairs only, blends, and lists the pairs that cross a
silhouette edge; the backward walks that short list alone.

Backward passes scatter into the gradients with fp32 atomics: rasterize and interpolate per pixel (from
``d rast[..., :3]`` to the 12 clip coordinates of the pixel's triangle; to the 3 corner attributes and to ``u, v``),
antialias per listed silhouette pair (to both pixels' colours and to the 2 corners of the silhouette edge).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Tuple

import torch
import triton
import triton.language as tl

from threestudio.ops import triton_launch

EMPTY = tl.constexpr(9223372036854775807)


@dataclasses.dataclass(frozen=True)
class TritonConfig:
    """Launch parameters (the benchmark compares variants; the defaults are the chosen ones)."""

    # triangles whose box spans <= small_tile^2 pixel centres are done in the first pass; the second pass takes boxes
    # of one large_tile^2 tile a step (about 2048 pixel lanes a step), then the bigger ones large_block at a time
    small_tile: int = 2
    small_block: int = 128  # triangles per program of the first pass
    small_warps: int = 4
    large_tile: int = 4  # tile side of the second pass
    large_block: int = 32  # triangles per step of the second pass
    large_warps: int = 4
    large_programs_per_sm: int = 8  # persistent grid of the second pass
    pixel_block: int = 256  # pixels per program of the per-pixel kernels
    aa_block: int = 128  # listed pixel pairs per step of the antialias passes over the pair lists
    aa_programs_per_sm: int = 8  # their persistent grid
    pixel_warps: int = 4
    segment_runs: bool = True  # backward: sum runs of pixels showing the same triangle before the atomics
    # per-pixel barycentrics (resolve) and their gradients (rasterize backward) computed in float64, as the PyTorch
    # backend does: float32 cancels in x - px * w on sub-pixel triangles (1e-5 relative error in the position
    # gradient on the CPU interpreter, 6e-8 in float64); the cost is within noise on an H200
    wide_barycentrics: bool = True
    # launch through the compiled kernels' handles once compiled (threestudio.ops.triton_launch; on unless
    # THREESTUDIO_TRITON_FAST_LAUNCH=0): skips the JIT dispatcher's per-call argument binding
    fast_launch: bool = triton_launch.ENABLED


DEFAULT_CONFIG = TritonConfig()
_config = DEFAULT_CONFIG


_FAST: dict = {}


def _cdiv(a: int, b: int) -> int:  # plain Python: triton.cdiv is a JIT function, microseconds a call on the host
    return -(-a // b)


def _pow2(n: int) -> int:
    return 0 if n <= 0 else 1 << (int(n) - 1).bit_length()


def _fast(kernel):
    """What launches ``kernel``: its :class:`~threestudio.ops.triton_launch.FastKernel` (one per kernel, made on first
    use) when ``fast_launch`` is on, else the JIT function itself (Triton's dispatcher)."""
    if not _config.fast_launch:
        return kernel
    fk = _FAST.get(id(kernel))
    if fk is None:
        fk = _FAST[id(kernel)] = triton_launch.FastKernel(kernel)
    return fk


def set_config(cfg: TritonConfig) -> None:
    """Use other launch parameters (benchmarks)."""
    global _config
    _config = cfg


# ----------------------------------------------------------------------------------------------------------------
# device helpers


@triton.jit
def _corner_scalar(pos_ptr, row, mask):
    p = pos_ptr + row * 4
    return (tl.load(p, mask=mask, other=0.0), tl.load(p + 1, mask=mask, other=0.0),
            tl.load(p + 2, mask=mask, other=0.0), tl.load(p + 3, mask=mask, other=1.0))


@triton.jit
def _corner_vector(pos_ptr, row, mask):
    """(x, y, z, w) of clip-space vertices ``row`` [BLOCK] with one 16-byte load each (w = 1 where masked)."""
    t = tl.load(pos_ptr + (row * 4)[:, None] + tl.arange(0, 4)[None, :], mask=mask[:, None], other=0.0)
    xz, yw = tl.split(tl.reshape(t, [row.shape[0], 2, 2]))
    x, z = tl.split(xz)
    y, w = tl.split(yw)
    return x, y, z, tl.where(mask, w, 1.0)


# one 16-byte load per vertex (THREESTUDIO_RASTER_SCALAR_LOADS=1 selects four 4-byte loads, for comparison)
_corner = _corner_scalar if os.environ.get("THREESTUDIO_RASTER_SCALAR_LOADS") == "1" else _corner_vector


@triton.jit
def _wide12(x0, y0, z0, w0, x1, y1, z1, w1, x2, y2, z2, w2):
    return (x0.to(tl.float64), y0.to(tl.float64), z0.to(tl.float64), w0.to(tl.float64),
            x1.to(tl.float64), y1.to(tl.float64), z1.to(tl.float64), w1.to(tl.float64),
            x2.to(tl.float64), y2.to(tl.float64), z2.to(tl.float64), w2.to(tl.float64))


@triton.jit
def _tri_indices(tri_ptr, t, mask):
    i0 = tl.load(tri_ptr + t * 3, mask=mask, other=0).to(tl.int64)
    i1 = tl.load(tri_ptr + t * 3 + 1, mask=mask, other=0).to(tl.int64)
    i2 = tl.load(tri_ptr + t * 3 + 2, mask=mask, other=0).to(tl.int64)
    return i0, i1, i2


@triton.jit
def _bbox_pt(x, y, w, ok, lo_x, hi_x, lo_y, hi_y, Wf, Hf):
    wq = tl.where(ok, w, 1.0)
    sx = (x / wq + 1.0) * (0.5 * Wf) - 0.5
    sy = (y / wq + 1.0) * (0.5 * Hf) - 0.5
    lo_x = tl.where(ok, tl.minimum(lo_x, sx), lo_x)
    hi_x = tl.where(ok, tl.maximum(hi_x, sx), hi_x)
    lo_y = tl.where(ok, tl.minimum(lo_y, sy), lo_y)
    hi_y = tl.where(ok, tl.maximum(hi_y, sy), hi_y)
    return lo_x, hi_x, lo_y, hi_y


@triton.jit
def _bbox_edge(xa, ya, za, wa, xb, yb, zb, wb, lo_x, hi_x, lo_y, hi_y, Wf, Hf):
    da = za + wa
    db = zb + wb
    cross = (da >= 0) != (db >= 0)
    t = da / tl.where(cross, da - db, 1.0)
    x = xa + t * (xb - xa)
    y = ya + t * (yb - ya)
    w = wa + t * (wb - wa)
    return _bbox_pt(x, y, w, cross & (w > 0), lo_x, hi_x, lo_y, hi_y, Wf, Hf)


@triton.jit
def _bbox(x0, y0, z0, w0, x1, y1, z1, w1, x2, y2, z2, w2, W, H, Wf, Hf):
    """Pixel ranges [c0, c1] x [r0, r1] of the near-clipped triangle (see common.clipped_screen_bbox)."""
    inf = float("inf")
    lo_x = tl.full(x0.shape, inf, tl.float32)
    hi_x = tl.full(x0.shape, -inf, tl.float32)
    lo_y = tl.full(x0.shape, inf, tl.float32)
    hi_y = tl.full(x0.shape, -inf, tl.float32)
    lo_x, hi_x, lo_y, hi_y = _bbox_pt(x0, y0, w0, (z0 + w0 >= 0) & (w0 > 0), lo_x, hi_x, lo_y, hi_y, Wf, Hf)
    lo_x, hi_x, lo_y, hi_y = _bbox_pt(x1, y1, w1, (z1 + w1 >= 0) & (w1 > 0), lo_x, hi_x, lo_y, hi_y, Wf, Hf)
    lo_x, hi_x, lo_y, hi_y = _bbox_pt(x2, y2, w2, (z2 + w2 >= 0) & (w2 > 0), lo_x, hi_x, lo_y, hi_y, Wf, Hf)
    lo_x, hi_x, lo_y, hi_y = _bbox_edge(x0, y0, z0, w0, x1, y1, z1, w1, lo_x, hi_x, lo_y, hi_y, Wf, Hf)
    lo_x, hi_x, lo_y, hi_y = _bbox_edge(x1, y1, z1, w1, x2, y2, z2, w2, lo_x, hi_x, lo_y, hi_y, Wf, Hf)
    lo_x, hi_x, lo_y, hi_y = _bbox_edge(x2, y2, z2, w2, x0, y0, z0, w0, lo_x, hi_x, lo_y, hi_y, Wf, Hf)
    any_ok = lo_x <= hi_x
    lim = 1048576.0
    c0 = tl.maximum(tl.ceil(tl.minimum(tl.maximum(lo_x - 1e-3, -lim), lim)).to(tl.int32), 0)
    c1 = tl.minimum(tl.floor(tl.minimum(tl.maximum(hi_x + 1e-3, -lim), lim)).to(tl.int32), W - 1)
    r0 = tl.maximum(tl.ceil(tl.minimum(tl.maximum(lo_y - 1e-3, -lim), lim)).to(tl.int32), 0)
    r1 = tl.minimum(tl.floor(tl.minimum(tl.maximum(hi_y + 1e-3, -lim), lim)).to(tl.int32), H - 1)
    c1 = tl.where(any_ok, c1, c0 - 1)
    return c0, c1, r0, r1


@triton.jit
def _hom(x0, y0, z0, w0, x1, y1, z1, w1, x2, y2, z2, w2, px, py):
    X0 = x0 - px * w0
    X1 = x1 - px * w1
    X2 = x2 - px * w2
    Y0 = y0 - py * w0
    Y1 = y1 - py * w1
    Y2 = y2 - py * w2
    b0 = X1 * Y2 - X2 * Y1
    b1 = X2 * Y0 - X0 * Y2
    b2 = X0 * Y1 - X1 * Y0
    S = b0 + b1 + b2
    D = b0 * w0 + b1 * w1 + b2 * w2
    N = b0 * z0 + b1 * z1 + b2 * z2
    return X0, X1, X2, Y0, Y1, Y2, b0, b1, b2, S, D, N


@triton.jit
def _coverage(x0, y0, z0, w0, x1, y1, z1, w1, x2, y2, z2, w2, px, py):
    X0, X1, X2, Y0, Y1, Y2, b0, b1, b2, S, D, N = _hom(x0, y0, z0, w0, x1, y1, z1, w1, x2, y2, z2, w2, px, py)
    pos_ = (S > 0) & (b0 >= 0) & (b1 >= 0) & (b2 >= 0) & (D > 0)
    neg_ = (S < 0) & (b0 <= 0) & (b1 <= 0) & (b2 <= 0) & (D < 0)
    zw = N / tl.where(D == 0, 1.0, D)
    return (pos_ | neg_) & (zw >= -1.0) & (zw <= 1.0), zw


@triton.jit
def _depth_key(zw, t):
    bits = zw.to(tl.int32, bitcast=True)
    bits = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return bits.to(tl.int64) * 4294967296 + t.to(tl.int64)


# ----------------------------------------------------------------------------------------------------------------
# rasterize


@triton.jit
def _tri_box(pos_ptr, tri_ptr, g, m, V, T, H, W, Wf, Hf):
    """Image b, triangle t, the clip-space corners and the near-clipped screen box (c0, c1, r0, r1) of the flat
    triangle indices ``g = b T + t`` (masked by ``m``)."""
    b = g // T
    t = g - b * T
    i0, i1, i2 = _tri_indices(tri_ptr, t, m)
    base = b.to(tl.int64) * V
    x0, y0, z0, w0 = _corner(pos_ptr, base + i0, m)
    x1, y1, z1, w1 = _corner(pos_ptr, base + i1, m)
    x2, y2, z2, w2 = _corner(pos_ptr, base + i2, m)
    c0, c1, r0, r1 = _bbox(x0, y0, z0, w0, x1, y1, z1, w1, x2, y2, z2, w2, W, H, Wf, Hf)
    return b, t, x0, y0, z0, w0, x1, y1, z1, w1, x2, y2, z2, w2, c0, c1, r0, r1


@triton.jit
def _depth_test(zbuf_ptr, b, t, x0, y0, z0, w0, x1, y1, z1, w1, x2, y2, z2, w2, col, row, lm, H, W, Wf, Hf):
    """Test the pixel centres (col, row) [N, L] (masked by ``lm``) against triangles [N]: each covered centre does
    a 64-bit ``atomic_min`` of its (depth, triangle) key into the z-buffer."""
    px = (2 * col + 1).to(tl.float32) / Wf - 1.0
    py = (2 * row + 1).to(tl.float32) / Hf - 1.0
    cov, zw = _coverage(x0[:, None], y0[:, None], z0[:, None], w0[:, None], x1[:, None], y1[:, None],
                        z1[:, None], w1[:, None], x2[:, None], y2[:, None], z2[:, None], w2[:, None], px, py)
    key = _depth_key(zw, t[:, None])
    addr = (b[:, None] * H + row).to(tl.int64) * W + col
    tl.atomic_min(zbuf_ptr + addr, key, mask=lm & cov, sem="relaxed")


@triton.jit
def _raster_small_kernel(pos_ptr, tri_ptr, zbuf_ptr, list_ptr, NP, BT_total, V, T, H, W, Wf, Hf,
                         BLOCK: tl.constexpr, S: tl.constexpr, TS: tl.constexpr):
    pid = tl.program_id(0)
    g = pid * BLOCK + tl.arange(0, BLOCK)
    m = g < BT_total
    b, t, x0, y0, z0, w0, x1, y1, z1, w1, x2, y2, z2, w2, c0, c1, r0, r1 = _tri_box(pos_ptr, tri_ptr, g, m, V, T,
                                                                                   H, W, Wf, Hf)
    bw = c1 - c0 + 1
    bh = r1 - r0 + 1
    nonempty = m & (bw > 0) & (bh > 0)
    small = nonempty & (bw <= S) & (bh <= S)
    # the rest go to the second pass: boxes of at most one TS x TS tile to the front of the list, bigger ones to
    # its back; the two counters sit in the z-buffer's two extra slots, start at EMPTY (one fill) and count down
    medium = nonempty & ~small & (bw <= TS) & (bh <= TS)
    large = nonempty & ~small & ((bw > TS) | (bh > TS))  # ~small: a small_tile above large_tile lists none twice
    mi = medium.to(tl.int32)
    nm = tl.sum(mi, 0)
    if nm > 0:
        slot = -(tl.atomic_add(zbuf_ptr + NP, -nm.to(tl.int64)) - EMPTY)
        tl.store(list_ptr + slot + tl.cumsum(mi, 0) - mi, g, mask=medium)
    li = large.to(tl.int32)
    nl = tl.sum(li, 0)
    if nl > 0:
        slot = -(tl.atomic_add(zbuf_ptr + NP + 1, -nl.to(tl.int64)) - EMPTY)
        tl.store(list_ptr + (BT_total - 1) - (slot + tl.cumsum(li, 0) - li), g, mask=large)
    lane = tl.arange(0, S * S)
    col = c0[:, None] + (lane % S)[None, :]
    row = r0[:, None] + (lane // S)[None, :]
    lm = small[:, None] & (col <= c1[:, None]) & (row <= r1[:, None])
    _depth_test(zbuf_ptr, b, t, x0, y0, z0, w0, x1, y1, z1, w1, x2, y2, z2, w2, col, row, lm, H, W, Wf, Hf)


@triton.jit
def _raster_tile(pos_ptr, tri_ptr, zbuf_ptr, g, me, V, T, H, W, Wf, Hf, dx, dy, TS: tl.constexpr, ONE: tl.constexpr):
    """Rasterize triangles ``g`` (masked by ``me``) tile by tile over their boxes (``ONE``: each box fits one tile)."""
    b, t, x0, y0, z0, w0, x1, y1, z1, w1, x2, y2, z2, w2, c0, c1, r0, r1 = _tri_box(pos_ptr, tri_ptr, g, me, V, T,
                                                                                   H, W, Wf, Hf)
    bw = c1 - c0 + 1
    bh = r1 - r0 + 1
    ok = me & (bw > 0) & (bh > 0)
    if ONE:
        col = c0[:, None] + dx[None, :]
        row = r0[:, None] + dy[None, :]
        lm = ok[:, None] & (col <= c1[:, None]) & (row <= r1[:, None])
        _depth_test(zbuf_ptr, b, t, x0, y0, z0, w0, x1, y1, z1, w1, x2, y2, z2, w2, col, row, lm, H, W, Wf, Hf)
    else:
        tx = (bw + TS - 1) // TS
        ty = (bh + TS - 1) // TS
        ntile = tl.where(ok, tx * ty, 0)
        txs = tl.maximum(tx, 1)
        for k in range(0, tl.max(ntile, 0)):
            col = (c0 + (k % txs) * TS)[:, None] + dx[None, :]
            row = (r0 + (k // txs) * TS)[:, None] + dy[None, :]
            lm = (k < ntile)[:, None] & (col <= c1[:, None]) & (row <= r1[:, None])
            _depth_test(zbuf_ptr, b, t, x0, y0, z0, w0, x1, y1, z1, w1, x2, y2, z2, w2, col, row, lm, H, W, Wf, Hf)


@triton.jit
def _raster_large_kernel(pos_ptr, tri_ptr, zbuf_ptr, list_ptr, NP, BT_total, V, T, H, W, Wf, Hf,
                         BLOCK: tl.constexpr, MBLOCK: tl.constexpr, TS: tl.constexpr, NPROG: tl.constexpr):
    pid = tl.program_id(0)
    n_med = (-(tl.load(zbuf_ptr + NP) - EMPTY)).to(tl.int32)
    n_large = (-(tl.load(zbuf_ptr + NP + 1) - EMPTY)).to(tl.int32)
    lane = tl.arange(0, TS * TS)
    dx = lane % TS
    dy = lane // TS
    # boxes of one tile: MBLOCK triangles a step, one tile each
    for start in range(pid * MBLOCK, n_med, NPROG * MBLOCK):
        e = start + tl.arange(0, MBLOCK)
        me = e < n_med
        g = tl.load(list_ptr + e, mask=me, other=0)
        _raster_tile(pos_ptr, tri_ptr, zbuf_ptr, g, me, V, T, H, W, Wf, Hf, dx, dy, TS, True)
    # bigger boxes (from the back of the list): BLOCK triangles a step, the loop runs to the group's largest box
    for start in range(pid * BLOCK, n_large, NPROG * BLOCK):
        e = start + tl.arange(0, BLOCK)
        me = e < n_large
        g = tl.load(list_ptr + (BT_total - 1) - e, mask=me, other=0)
        _raster_tile(pos_ptr, tri_ptr, zbuf_ptr, g, me, V, T, H, W, Wf, Hf, dx, dy, TS, False)


@triton.jit
def _resolve_kernel(pos_ptr, tri_ptr, zbuf_ptr, rast_ptr, db_ptr, NPIX, V, H, W, Wf, Hf,
                    BLOCK: tl.constexpr, GRAD_DB: tl.constexpr, WIDE: tl.constexpr):
    pid = tl.program_id(0)
    p = pid * BLOCK + tl.arange(0, BLOCK)
    m = p < NPIX
    key = tl.load(zbuf_ptr + p, mask=m, other=EMPTY)
    valid = m & (key != EMPTY)
    t = (key & 0xFFFFFFFF).to(tl.int32)
    HW = H * W
    b = p // HW
    rem = p - b * HW
    row = rem // W
    col = rem - row * W
    i0, i1, i2 = _tri_indices(tri_ptr, t, valid)
    base = b.to(tl.int64) * V
    x0, y0, z0, w0 = _corner(pos_ptr, base + i0, valid)
    x1, y1, z1, w1 = _corner(pos_ptr, base + i1, valid)
    x2, y2, z2, w2 = _corner(pos_ptr, base + i2, valid)
    if WIDE:
        x0, y0, z0, w0, x1, y1, z1, w1, x2, y2, z2, w2 = _wide12(x0, y0, z0, w0, x1, y1, z1, w1, x2, y2, z2, w2)
        px = (2 * col + 1).to(tl.float64) * (1.0 / tl.cast(Wf, tl.float64)) - 1.0  # one scalar division a program
        py = (2 * row + 1).to(tl.float64) * (1.0 / tl.cast(Hf, tl.float64)) - 1.0
    else:
        px = (2 * col + 1).to(tl.float32) / Wf - 1.0
        py = (2 * row + 1).to(tl.float32) / Hf - 1.0
    X0, X1, X2, Y0, Y1, Y2, b0, b1, b2, S, D, N = _hom(x0, y0, z0, w0, x1, y1, z1, w1, x2, y2, z2, w2, px, py)
    # two reciprocals and products: a float64 division is a long instruction sequence (Newton steps)
    rS = 1.0 / tl.where(S == 0, 1.0, S)
    rD = 1.0 / tl.where(D == 0, 1.0, D)
    u = tl.where(valid, b0 * rS, 0.0)
    v = tl.where(valid, b1 * rS, 0.0)
    zw = tl.where(valid, N * rD, 0.0)
    idf = tl.where(valid, (t + 1).to(tl.float32), 0.0)
    out = rast_ptr + p.to(tl.int64) * 4
    tl.store(out, u.to(tl.float32), mask=m)
    tl.store(out + 1, v.to(tl.float32), mask=m)
    tl.store(out + 2, zw.to(tl.float32), mask=m)
    tl.store(out + 3, idf, mask=m)
    if GRAD_DB:
        db0x = -w1 * Y2 + w2 * Y1
        db1x = -w2 * Y0 + w0 * Y2
        db2x = -w0 * Y1 + w1 * Y0
        db0y = -X1 * w2 + X2 * w1
        db1y = -X2 * w0 + X0 * w2
        db2y = -X0 * w1 + X1 * w0
        dSx = db0x + db1x + db2x
        dSy = db0y + db1y + db2y
        sx = 2.0 / Wf
        sy = 2.0 / Hf
        o = db_ptr + p.to(tl.int64) * 4
        tl.store(o, tl.where(valid, (db0x - u * dSx) * rS * sx, 0.0).to(tl.float32), mask=m)
        tl.store(o + 1, tl.where(valid, (db0y - u * dSy) * rS * sy, 0.0).to(tl.float32), mask=m)
        tl.store(o + 2, tl.where(valid, (db1x - v * dSx) * rS * sx, 0.0).to(tl.float32), mask=m)
        tl.store(o + 3, tl.where(valid, (db1y - v * dSy) * rS * sy, 0.0).to(tl.float32), mask=m)


@triton.jit
def _add4(gpos_ptr, row, gx, gy, gz, gw, mask):
    p = gpos_ptr + row * 4
    tl.atomic_add(p, gx, mask=mask, sem="relaxed")
    tl.atomic_add(p + 1, gy, mask=mask, sem="relaxed")
    tl.atomic_add(p + 2, gz, mask=mask, sem="relaxed")
    tl.atomic_add(p + 3, gw, mask=mask, sem="relaxed")


@triton.jit
def _seg4(a0, a1, a2, a3, af, b0, b1, b2, b3, bf):
    """Segmented sum of 4 values: b starts a new segment when its flag is set (associative)."""
    keep = bf == 0
    return (tl.where(keep, a0 + b0, b0), tl.where(keep, a1 + b1, b1), tl.where(keep, a2 + b2, b2),
            tl.where(keep, a3 + b3, b3), af | bf)


@triton.jit
def _seg3(a0, a1, a2, af, b0, b1, b2, bf):
    keep = bf == 0
    return tl.where(keep, a0 + b0, b0), tl.where(keep, a1 + b1, b1), tl.where(keep, a2 + b2, b2), af | bf


@triton.jit
def _runs(rast_ptr, p, idf, m, NPIX, HW, BLOCK: tl.constexpr):
    """Runs of consecutive pixels (within a program and an image) that show the same triangle: (start, end) flags.
    Summing a run before the atomics cuts the atomic traffic by the run length (triangles span several pixels)."""
    lane = tl.arange(0, BLOCK)
    idp = tl.load(rast_ptr + (p - 1).to(tl.int64) * 4 + 3, mask=m & (p > 0), other=-1.0)
    idn = tl.load(rast_ptr + (p + 1).to(tl.int64) * 4 + 3, mask=(p + 1) < NPIX, other=-1.0)
    start = (lane == 0) | (idf != idp) | ((p % HW) == 0)
    end = (lane == BLOCK - 1) | (idf != idn) | (((p + 1) % HW) == 0) | (p == NPIX - 1)
    return start.to(tl.int32), end


@triton.jit
def _raster_bwd_kernel(pos_ptr, tri_ptr, rast_ptr, grad_ptr, gpos_ptr, NPIX, V, H, W, Wf, Hf,
                       BLOCK: tl.constexpr, RUNS: tl.constexpr, WIDE: tl.constexpr):
    pid = tl.program_id(0)
    p = pid * BLOCK + tl.arange(0, BLOCK)
    m = p < NPIX
    p64 = p.to(tl.int64) * 4
    idf = tl.load(rast_ptr + p64 + 3, mask=m, other=0.0)
    gu = tl.load(grad_ptr + p64, mask=m, other=0.0)
    gv = tl.load(grad_ptr + p64 + 1, mask=m, other=0.0)
    gz = tl.load(grad_ptr + p64 + 2, mask=m, other=0.0)
    valid = m & (idf > 0)
    t = idf.to(tl.int32) - 1
    HW = H * W
    b = p // HW
    rem = p - b * HW
    row = rem // W
    col = rem - row * W
    i0, i1, i2 = _tri_indices(tri_ptr, t, valid)
    base = b.to(tl.int64) * V
    x0, y0, z0, w0 = _corner(pos_ptr, base + i0, valid)
    x1, y1, z1, w1 = _corner(pos_ptr, base + i1, valid)
    x2, y2, z2, w2 = _corner(pos_ptr, base + i2, valid)
    if WIDE:
        x0, y0, z0, w0, x1, y1, z1, w1, x2, y2, z2, w2 = _wide12(x0, y0, z0, w0, x1, y1, z1, w1, x2, y2, z2, w2)
        px = (2 * col + 1).to(tl.float64) * (1.0 / tl.cast(Wf, tl.float64)) - 1.0  # one scalar division a program
        py = (2 * row + 1).to(tl.float64) * (1.0 / tl.cast(Hf, tl.float64)) - 1.0
        gu = gu.to(tl.float64)
        gv = gv.to(tl.float64)
        gz = gz.to(tl.float64)
    else:
        px = (2 * col + 1).to(tl.float32) / Wf - 1.0
        py = (2 * row + 1).to(tl.float32) / Hf - 1.0
    X0, X1, X2, Y0, Y1, Y2, b0, b1, b2, S, D, N = _hom(x0, y0, z0, w0, x1, y1, z1, w1, x2, y2, z2, w2, px, py)
    rS = 1.0 / tl.where(S == 0, 1.0, S)  # reciprocals once, products below (as in the resolve pass)
    rD = 1.0 / tl.where(D == 0, 1.0, D)
    gu = tl.where(valid, gu, 0.0)
    gv = tl.where(valid, gv, 0.0)
    gz = tl.where(valid, gz, 0.0)
    u = b0 * rS
    v = b1 * rS
    zw = N * rD
    gS = -(gu * u + gv * v) * rS
    gzD = gz * rD
    gb0 = gu * rS + gS + gzD * (z0 - zw * w0)
    gb1 = gv * rS + gS + gzD * (z1 - zw * w1)
    gb2 = gS + gzD * (z2 - zw * w2)
    gX0 = -gb1 * Y2 + gb2 * Y1
    gX1 = gb0 * Y2 - gb2 * Y0
    gX2 = -gb0 * Y1 + gb1 * Y0
    gY0 = gb1 * X2 - gb2 * X1
    gY1 = -gb0 * X2 + gb2 * X0
    gY2 = gb0 * X1 - gb1 * X0
    gw0 = -px * gX0 - py * gY0 - gzD * zw * b0
    gw1 = -px * gX1 - py * gY1 - gzD * zw * b1
    gw2 = -px * gX2 - py * gY2 - gzD * zw * b2
    gz0 = gzD * b0
    gz1 = gzD * b1
    gz2 = gzD * b2
    if WIDE:  # the sums and atomics in float32
        gX0, gY0, gz0, gw0 = gX0.to(tl.float32), gY0.to(tl.float32), gz0.to(tl.float32), gw0.to(tl.float32)
        gX1, gY1, gz1, gw1 = gX1.to(tl.float32), gY1.to(tl.float32), gz1.to(tl.float32), gw1.to(tl.float32)
        gX2, gY2, gz2, gw2 = gX2.to(tl.float32), gY2.to(tl.float32), gz2.to(tl.float32), gw2.to(tl.float32)
    wm = valid
    if RUNS:
        start, end = _runs(rast_ptr, p, idf, m, NPIX, HW, BLOCK)
        gX0, gY0, gz0, gw0, _ = tl.associative_scan((gX0, gY0, gz0, gw0, start), 0, _seg4)
        gX1, gY1, gz1, gw1, _ = tl.associative_scan((gX1, gY1, gz1, gw1, start), 0, _seg4)
        gX2, gY2, gz2, gw2, _ = tl.associative_scan((gX2, gY2, gz2, gw2, start), 0, _seg4)
        wm = valid & end
    _add4(gpos_ptr, base + i0, gX0, gY0, gz0, gw0, wm)
    _add4(gpos_ptr, base + i1, gX1, gY1, gz1, gw1, wm)
    _add4(gpos_ptr, base + i2, gX2, gY2, gz2, gw2, wm)


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _grid_programs(device: torch.device) -> int:
    if device.type != "cuda":
        return 4
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device()) * \
        _config.large_programs_per_sm


def _medium_block(cfg: TritonConfig) -> int:
    """Triangles a step of the second pass's one-tile loop: about 2048 pixel lanes."""
    return max(16, 2048 // (cfg.large_tile * cfg.large_tile))


def _raster_forward(pos: torch.Tensor, tri: torch.Tensor, h: int, w: int,
                    grad_db: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    cfg = _config
    B, V = pos.shape[0], pos.shape[1]
    T = tri.shape[0]
    dev = pos.device
    npix = B * h * w
    # the depth buffer and, in its two extra slots, the counts of the second pass's two lists: one fill for all
    zbuf = torch.full((npix + 2,), (1 << 63) - 1, dtype=torch.int64, device=dev)
    if T > 0:
        lst = torch.empty(B * T, dtype=torch.int32, device=dev)
        grid = (_cdiv(B * T, cfg.small_block),)
        _fast(_raster_small_kernel)[grid](pos, tri, zbuf, lst, npix, B * T, V, T, h, w, float(w), float(h),
                                          BLOCK=cfg.small_block, S=cfg.small_tile, TS=cfg.large_tile,
                                          num_warps=cfg.small_warps)
        nprog = _grid_programs(dev)
        _fast(_raster_large_kernel)[(nprog,)](pos, tri, zbuf, lst, npix, B * T, V, T, h, w, float(w), float(h),
                                              BLOCK=cfg.large_block, MBLOCK=_medium_block(cfg), TS=cfg.large_tile,
                                              NPROG=nprog, num_warps=cfg.large_warps)
    rast = torch.empty(B, h, w, 4, dtype=torch.float32, device=dev)
    db = torch.empty(B, h, w, 4 if grad_db else 0, dtype=torch.float32, device=dev)
    grid = (_cdiv(npix, cfg.pixel_block),)
    _fast(_resolve_kernel)[grid](pos, tri, zbuf, rast, db, npix, V, h, w, float(w), float(h), BLOCK=cfg.pixel_block,
                                 GRAD_DB=grad_db, WIDE=cfg.wide_barycentrics, num_warps=cfg.pixel_warps)
    return rast, db


class _Rasterize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pos, tri, h, w, grad_db):  # type: ignore[override]
        rast, db = _raster_forward(pos, tri, h, w, grad_db)
        ctx.save_for_backward(pos, tri, rast)
        ctx.hw = (h, w)
        ctx.mark_non_differentiable(db)
        # db never has a gradient: without this autograd would fill a zero [B, H, W, 4] tensor for it every backward
        ctx.set_materialize_grads(False)
        return rast, db

    @staticmethod
    def backward(ctx, grad_rast, grad_db):  # type: ignore[override]
        if grad_rast is None or not ctx.needs_input_grad[0]:  # grads are not materialised (see forward)
            return None, None, None, None, None
        pos, tri, rast = ctx.saved_tensors
        h, w = ctx.hw
        gpos = torch.zeros_like(pos)
        npix = rast.shape[0] * h * w
        grid = (_cdiv(npix, _config.pixel_block),)
        _fast(_raster_bwd_kernel)[grid](pos, tri, rast, _f32(grad_rast), gpos, npix, pos.shape[1], h, w, float(w),
                                        float(h), BLOCK=_config.pixel_block, RUNS=_config.segment_runs,
                                        WIDE=_config.wide_barycentrics, num_warps=_config.pixel_warps)
        return gpos, None, None, None, None


def _tri32(tri: torch.Tensor) -> torch.Tensor:
    if tri.dtype == torch.int32 and tri.is_contiguous():  # the common case, without two dispatcher calls
        return tri
    return tri.to(torch.int32).contiguous()


def _apply(fn, *args):
    """``fn.apply(*args)`` for our autograd functions, through autograd's C entry point when no functorch transform
    and no torch.compile trace is active: ``Function.apply`` then only strips dead functorch wrappers (none can reach
    these ops) before calling the same entry point, at ~2 us a call on the host (several a render)."""
    if _functorch_active() or _compiling():
        return fn.apply(*args)
    return super(torch.autograd.Function, fn).apply(*args)


_functorch_active = torch._C._are_functorch_transforms_active
_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)  # torch < 2.3: no tracing check


def _f32(x: torch.Tensor) -> torch.Tensor:
    if x.dtype == torch.float32 and x.is_contiguous():  # the common case, as _tri32
        return x
    return x.float().contiguous()


def rasterize(pos: torch.Tensor, tri: torch.Tensor, h: int, w: int, grad_db: bool = True):
    dtype = pos.dtype
    rast, db = _apply(_Rasterize, _f32(pos), _tri32(tri), h, w, grad_db)
    if dtype != torch.float32:
        rast, db = rast.to(dtype), db.to(dtype)
    return rast, db


# ----------------------------------------------------------------------------------------------------------------
# interpolate


@triton.jit
def _interp_fwd_kernel(attr_ptr, rast_ptr, tri_ptr, out_ptr, NPIX, HW, V, C, ATTR_BATCHED: tl.constexpr,
                       BLOCK: tl.constexpr, CB: tl.constexpr):
    pid = tl.program_id(0)
    p = pid * BLOCK + tl.arange(0, BLOCK)
    m = p < NPIX
    p64 = p.to(tl.int64)
    idf = tl.load(rast_ptr + p64 * 4 + 3, mask=m, other=0.0)
    u = tl.load(rast_ptr + p64 * 4, mask=m, other=0.0)
    v = tl.load(rast_ptr + p64 * 4 + 1, mask=m, other=0.0)
    valid = m & (idf > 0)
    t = idf.to(tl.int32) - 1
    i0, i1, i2 = _tri_indices(tri_ptr, t, valid)
    if ATTR_BATCHED:
        ab = (p // HW).to(tl.int64) * V
    else:
        ab = tl.zeros([BLOCK], tl.int64)
    ch = tl.arange(0, CB)
    cm = ch[None, :] < C
    vm = valid[:, None] & cm
    a0 = tl.load(attr_ptr + ((ab + i0) * C)[:, None] + ch[None, :], mask=vm, other=0.0)
    a1 = tl.load(attr_ptr + ((ab + i1) * C)[:, None] + ch[None, :], mask=vm, other=0.0)
    a2 = tl.load(attr_ptr + ((ab + i2) * C)[:, None] + ch[None, :], mask=vm, other=0.0)
    out = a2 + u[:, None] * (a0 - a2) + v[:, None] * (a1 - a2)
    tl.store(out_ptr + (p64 * C)[:, None] + ch[None, :], out, mask=m[:, None] & cm)


@triton.jit
def _interp_bwd_kernel(attr_ptr, rast_ptr, tri_ptr, grad_ptr, gattr_ptr, grast_ptr, NPIX, HW, V, C,
                       ATTR_BATCHED: tl.constexpr, NEED_ATTR: tl.constexpr, NEED_RAST: tl.constexpr,
                       BLOCK: tl.constexpr, CB: tl.constexpr, RUNS: tl.constexpr):
    pid = tl.program_id(0)
    p = pid * BLOCK + tl.arange(0, BLOCK)
    m = p < NPIX
    p64 = p.to(tl.int64)
    idf = tl.load(rast_ptr + p64 * 4 + 3, mask=m, other=0.0)
    u = tl.load(rast_ptr + p64 * 4, mask=m, other=0.0)
    v = tl.load(rast_ptr + p64 * 4 + 1, mask=m, other=0.0)
    valid = m & (idf > 0)
    t = idf.to(tl.int32) - 1
    i0, i1, i2 = _tri_indices(tri_ptr, t, valid)
    if ATTR_BATCHED:
        ab = (p // HW).to(tl.int64) * V
    else:
        ab = tl.zeros([BLOCK], tl.int64)
    ch = tl.arange(0, CB)
    cm = ch[None, :] < C
    vm = valid[:, None] & cm
    g = tl.load(grad_ptr + (p64 * C)[:, None] + ch[None, :], mask=vm, other=0.0)
    r0 = ((ab + i0) * C)[:, None] + ch[None, :]
    r1 = ((ab + i1) * C)[:, None] + ch[None, :]
    r2 = ((ab + i2) * C)[:, None] + ch[None, :]
    if NEED_ATTR:
        g0 = u[:, None] * g
        g1 = v[:, None] * g
        g2 = (1.0 - u - v)[:, None] * g
        em = vm
        if RUNS:
            start, end = _runs(rast_ptr, p, idf, m, NPIX, HW, BLOCK)
            fl = tl.broadcast_to(start[:, None], [BLOCK, CB])
            g0, g1, g2, _ = tl.associative_scan((g0, g1, g2, fl), 0, _seg3)
            em = (valid & end)[:, None] & cm
        tl.atomic_add(gattr_ptr + r0, g0, mask=em, sem="relaxed")
        tl.atomic_add(gattr_ptr + r1, g1, mask=em, sem="relaxed")
        tl.atomic_add(gattr_ptr + r2, g2, mask=em, sem="relaxed")
    if NEED_RAST:
        a0 = tl.load(attr_ptr + r0, mask=vm, other=0.0)
        a1 = tl.load(attr_ptr + r1, mask=vm, other=0.0)
        a2 = tl.load(attr_ptr + r2, mask=vm, other=0.0)
        gu = tl.where(valid, tl.sum(g * (a0 - a2), 1), 0.0)
        gv = tl.where(valid, tl.sum(g * (a1 - a2), 1), 0.0)
        zero = tl.zeros([BLOCK], tl.float32)
        tl.store(grast_ptr + p64 * 4, gu, mask=m)  # every channel of every pixel: grast needs no zero fill
        tl.store(grast_ptr + p64 * 4 + 1, gv, mask=m)
        tl.store(grast_ptr + p64 * 4 + 2, zero, mask=m)
        tl.store(grast_ptr + p64 * 4 + 3, zero, mask=m)


_PIX: dict = {}


def _pix(C: int) -> Tuple[int, int]:
    """(pixels per program, channel block) of the per-pixel kernels for C channels (memoised: called on every op)."""
    key = (C, _config.pixel_block)
    r = _PIX.get(key)
    if r is None:
        cb = max(1, _pow2(C))
        r = _PIX[key] = (max(16, min(_config.pixel_block, 4096 // cb)), cb)
    return r


class _Interpolate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, attr, rast, tri):  # type: ignore[override]
        B, h, w, _ = rast.shape
        batched = attr.dim() == 3 and attr.shape[0] > 1
        V, C = attr.shape[-2], attr.shape[-1]  # [V, C] and [1, V, C] have the same layout: the kernel takes either
        out = torch.empty(B, h, w, C, dtype=torch.float32, device=rast.device)
        npix = B * h * w
        blk, cb = _pix(C)
        _fast(_interp_fwd_kernel)[(_cdiv(npix, blk),)](attr, rast, tri, out, npix, h * w, V, C,
                                                       ATTR_BATCHED=batched, BLOCK=blk, CB=cb,
                                                       num_warps=_config.pixel_warps)
        ctx.save_for_backward(attr, rast, tri)
        ctx.batched = batched
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        a, rast, tri = ctx.saved_tensors
        need_attr, need_rast = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        B, h, w, _ = rast.shape
        V, C = a.shape[-2], a.shape[-1]
        gattr = torch.zeros_like(a) if need_attr else a
        grast = torch.empty_like(rast) if need_rast else rast  # the kernel writes all of it
        if need_attr or need_rast:
            npix = B * h * w
            blk, cb = _pix(C)
            _fast(_interp_bwd_kernel)[(_cdiv(npix, blk),)](
                a, rast, tri, _f32(grad_out), gattr, grast, npix, h * w, V, C,
                ATTR_BATCHED=ctx.batched, NEED_ATTR=need_attr, NEED_RAST=need_rast, BLOCK=blk, CB=cb,
                RUNS=_config.segment_runs, num_warps=_config.pixel_warps)
        return (gattr if need_attr else None), (grast if need_rast else None), None


def interpolate(attr: torch.Tensor, rast: torch.Tensor, tri: torch.Tensor):
    B, h, w, _ = rast.shape
    dtype = attr.dtype
    out = _apply(_Interpolate, _f32(attr), _f32(rast), _tri32(tri))
    if dtype != torch.float32 and dtype.is_floating_point:
        out = out.to(dtype)
    return out, _no_channels(out, B, h, w)


_EMPTY_DA: dict = {}


def _no_channels(like: torch.Tensor, B: int, h: int, w: int) -> torch.Tensor:
    """The [B, h, w, 0] ``out_da`` of an interpolation without derivatives: it holds no element, so one tensor per
    shape, dtype and device serves every call (an allocation less on each)."""
    key = (B, h, w, like.dtype, like.device)
    t = _EMPTY_DA.get(key)
    if t is None:
        if len(_EMPTY_DA) > 64:
            _EMPTY_DA.clear()
        t = _EMPTY_DA[key] = like.new_empty((B, h, w, 0))
    return t


# ----------------------------------------------------------------------------------------------------------------
# antialias


@triton.jit
def _edge_fn(sgn, sax, say, sbx, sby, qx, qy):
    return sgn * ((sbx - sax) * (qy - say) - (sby - say) * (qx - sax))


@triton.jit
def _aa_candidate(pos_ptr, tri_ptr, opp_ptr, pbase, t, inx, iny, outx, outy, Wf, Hf, mask):
    """The antialiasing rule for one candidate triangle per lane (see reference.py)."""
    i0, i1, i2 = _tri_indices(tri_ptr, t, mask)
    x0, y0, z0, w0 = _corner(pos_ptr, pbase + i0, mask)
    x1, y1, z1, w1 = _corner(pos_ptr, pbase + i1, mask)
    x2, y2, z2, w2 = _corner(pos_ptr, pbase + i2, mask)
    wpos = (w0 > 0) & (w1 > 0) & (w2 > 0)
    hw = 0.5 * Wf
    hh = 0.5 * Hf
    s0x = (x0 / tl.where(wpos, w0, 1.0) + 1.0) * hw
    s0y = (y0 / tl.where(wpos, w0, 1.0) + 1.0) * hh
    s1x = (x1 / tl.where(wpos, w1, 1.0) + 1.0) * hw
    s1y = (y1 / tl.where(wpos, w1, 1.0) + 1.0) * hh
    s2x = (x2 / tl.where(wpos, w2, 1.0) + 1.0) * hw
    s2y = (y2 / tl.where(wpos, w2, 1.0) + 1.0) * hh
    area2 = (s1x - s0x) * (s2y - s0y) - (s1y - s0y) * (s2x - s0x)
    sgn = tl.where(area2 > 0, 1.0, tl.where(area2 < 0, -1.0, 0.0))
    inf = float("inf")
    # edge 0: 0 -> 1
    din0 = _edge_fn(sgn, s0x, s0y, s1x, s1y, inx, iny)
    dout0 = _edge_fn(sgn, s0x, s0y, s1x, s1y, outx, outy)
    ex0 = (dout0 < 0) & (din0 >= 0)
    t0 = tl.where(ex0, din0 / tl.where(ex0, din0 - dout0, 1.0), inf)
    # edge 1: 1 -> 2
    din1 = _edge_fn(sgn, s1x, s1y, s2x, s2y, inx, iny)
    dout1 = _edge_fn(sgn, s1x, s1y, s2x, s2y, outx, outy)
    ex1 = (dout1 < 0) & (din1 >= 0)
    t1 = tl.where(ex1, din1 / tl.where(ex1, din1 - dout1, 1.0), inf)
    # edge 2: 2 -> 0
    din2 = _edge_fn(sgn, s2x, s2y, s0x, s0y, inx, iny)
    dout2 = _edge_fn(sgn, s2x, s2y, s0x, s0y, outx, outy)
    ex2 = (dout2 < 0) & (din2 >= 0)
    t2 = tl.where(ex2, din2 / tl.where(ex2, din2 - dout2, 1.0), inf)
    k1 = t1 < t0
    best = tl.where(k1, t1, t0)
    k = tl.where(k1, 1, 0)
    k2 = t2 < best
    best = tl.where(k2, t2, best)
    k = tl.where(k2, 2, k)
    ok = mask & wpos & (sgn != 0) & (best < inf)
    is0 = k == 0
    is1 = k == 1
    ia = tl.where(is0, i0, tl.where(is1, i1, i2))
    ib = tl.where(is0, i1, tl.where(is1, i2, i0))
    sax = tl.where(is0, s0x, tl.where(is1, s1x, s2x))
    say = tl.where(is0, s0y, tl.where(is1, s1y, s2y))
    sbx = tl.where(is0, s1x, tl.where(is1, s2x, s0x))
    sby = tl.where(is0, s1y, tl.where(is1, s2y, s0y))
    xa = tl.where(is0, x0, tl.where(is1, x1, x2))
    ya = tl.where(is0, y0, tl.where(is1, y1, y2))
    wa = tl.where(is0, w0, tl.where(is1, w1, w2))
    xb = tl.where(is0, x1, tl.where(is1, x2, x0))
    yb = tl.where(is0, y1, tl.where(is1, y2, y0))
    wb = tl.where(is0, w1, tl.where(is1, w2, w0))
    din = tl.where(is0, din0, tl.where(is1, din1, din2))
    dout = tl.where(is0, dout0, tl.where(is1, dout1, dout2))
    o = tl.load(opp_ptr + t * 3 + k, mask=ok, other=-1).to(tl.int64)
    has_o = ok & (o >= 0)
    ox, oy, oz, ow = _corner(pos_ptr, pbase + tl.where(o >= 0, o, 0), has_o)
    owq = tl.where(has_o & (ow > 0), ow, 1.0)
    osx = (ox / owq + 1.0) * hw
    osy = (oy / owq + 1.0) * hh
    d_opp = _edge_fn(sgn, sax, say, sbx, sby, osx, osy)
    sil = (o < 0) | (ow <= 0) | (d_opp >= 0)
    ok = ok & sil
    return ok, best, ia, ib, din, dout, sgn, sax, say, sbx, sby, xa, ya, wa, xb, yb, wb


@triton.jit
def _aa_pair(rast_ptr, pos_ptr, tri_ptr, opp_ptr, pbase, pf, qf, Px, Py, Qx, Qy, Wf, Hf, m):
    """Evaluate one pixel pair per lane: returns (use, t, in_flat, out_flat, in/out centres, edge data)."""
    idp = tl.load(rast_ptr + pf * 4 + 3, mask=m, other=0.0)
    idq = tl.load(rast_ptr + qf * 4 + 3, mask=m, other=0.0)
    zp = tl.load(rast_ptr + pf * 4 + 2, mask=m, other=0.0)
    zq = tl.load(rast_ptr + qf * 4 + 2, mask=m, other=0.0)
    diff = m & (idp != idq)
    tp = idp.to(tl.int32) - 1
    tq = idq.to(tl.int32) - 1
    p_first = (tp >= 0) & ((tq < 0) | (zp <= zq))
    t1 = tl.where(p_first, tp, tq)
    t2 = tl.where(p_first, tq, tp)
    in1x = tl.where(p_first, Px, Qx)
    in1y = tl.where(p_first, Py, Qy)
    out1x = tl.where(p_first, Qx, Px)
    out1y = tl.where(p_first, Qy, Py)
    (ok1, tt1, ia1, ib1, din1, dout1, sg1, sax1, say1, sbx1, sby1,
     xa1, ya1, wa1, xb1, yb1, wb1) = _aa_candidate(pos_ptr, tri_ptr, opp_ptr, pbase, tl.maximum(t1, 0),
                                                   in1x, in1y, out1x, out1y, Wf, Hf, diff & (t1 >= 0))
    m2 = diff & (tp >= 0) & (tq >= 0) & ~ok1
    (ok2, tt2, ia2, ib2, din2, dout2, sg2, sax2, say2, sbx2, sby2,
     xa2, ya2, wa2, xb2, yb2, wb2) = _aa_candidate(pos_ptr, tri_ptr, opp_ptr, pbase, tl.maximum(t2, 0),
                                                   out1x, out1y, in1x, in1y, Wf, Hf, m2)
    use = ok1 | ok2
    tt = tl.where(ok1, tt1, tt2)
    in_is_p = tl.where(ok1, p_first, ~p_first)
    in_flat = tl.where(in_is_p, pf, qf)
    out_flat = tl.where(in_is_p, qf, pf)
    inx = tl.where(in_is_p, Px, Qx)
    iny = tl.where(in_is_p, Py, Qy)
    outx = tl.where(in_is_p, Qx, Px)
    outy = tl.where(in_is_p, Qy, Py)
    return (use, tt, in_flat, out_flat, inx, iny, outx, outy,
            tl.where(ok1, ia1, ia2), tl.where(ok1, ib1, ib2), tl.where(ok1, din1, din2),
            tl.where(ok1, dout1, dout2), tl.where(ok1, sg1, sg2), tl.where(ok1, sax1, sax2),
            tl.where(ok1, say1, say2), tl.where(ok1, sbx1, sbx2), tl.where(ok1, sby1, sby2),
            tl.where(ok1, xa1, xa2), tl.where(ok1, ya1, ya2), tl.where(ok1, wa1, wa2),
            tl.where(ok1, xb1, xb2), tl.where(ok1, yb1, yb2), tl.where(ok1, wb1, wb2))


@triton.jit
def _aa_detect_kernel(color_ptr, rast_ptr, out_ptr, list_ptr, NPIX, H, W, C, BLOCK: tl.constexpr, CB: tl.constexpr):
    """Antialias forward, pass 1, per pixel: copy the colour into the output and list the pixel pairs (the right and
    the lower neighbour) whose triangle ids differ, as entries ``2 p + d`` (d = 0: right, 1: down). Only such pairs
    can cross a silhouette edge: 0.3-1.1 pairs a pixel on 20k-1.3M triangle meshes, against 2 a pixel in all.
    Program r writes its entries to region r of the list (``2 BLOCK`` slots) and their number to ``count[r]``
    (after the regions): every count is written, so nothing needs a zero fill, and no atomics reserve slots."""
    pid = tl.program_id(0)
    p = pid * BLOCK + tl.arange(0, BLOCK)
    m = p < NPIX
    pf = p.to(tl.int64)
    ch = tl.arange(0, CB)
    cm = m[:, None] & (ch[None, :] < C)
    c = tl.load(color_ptr + (pf * C)[:, None] + ch[None, :], mask=cm, other=0.0)
    tl.store(out_ptr + (pf * C)[:, None] + ch[None, :], c, mask=cm)
    rem = p % (H * W)
    row = rem // W
    col = rem - row * W
    idp = tl.load(rast_ptr + pf * 4 + 3, mask=m, other=0.0)
    mr = m & (col + 1 < W)
    md = m & (row + 1 < H)
    idr = tl.load(rast_ptr + (pf + 1) * 4 + 3, mask=mr, other=0.0)
    idd = tl.load(rast_ptr + (pf + W) * 4 + 3, mask=md, other=0.0)
    dr = (mr & (idr != idp)).to(tl.int32)
    dd = (md & (idd != idp)).to(tl.int32)
    nr = tl.sum(dr, 0)
    region = list_ptr + tl.cast(pid, tl.int64) * (2 * BLOCK)
    tl.store(region + tl.cumsum(dr, 0) - dr, 2 * p, mask=dr > 0)
    tl.store(region + nr + tl.cumsum(dd, 0) - dd, 2 * p + 1, mask=dd > 0)
    nreg = (NPIX + BLOCK - 1) // BLOCK
    tl.store(list_ptr + tl.cast(nreg, tl.int64) * (2 * BLOCK) + pid, nr + tl.sum(dd, 0))


@triton.jit
def _aa_eval_kernel(color_ptr, rast_ptr, pos_ptr, tri_ptr, opp_ptr, out_ptr, gout_ptr, gcolor_ptr, gpos_ptr,
                    list_ptr, NPIX, H, W, V, C, Wf, Hf, boost, POS_BATCHED: tl.constexpr,
                    BACKWARD: tl.constexpr, NEED_POS: tl.constexpr, RB: tl.constexpr, BLOCK: tl.constexpr,
                    CB: tl.constexpr, NPROG: tl.constexpr):
    """A persistent grid over the regions of a pair list (``RB`` pixels each, as pass 1 wrote them), ``BLOCK`` pairs
    a step. Forward (pass 2): each pair of the first list that crosses a silhouette edge adds its blend to ``out``
    and is listed again in the second list (the same layout, after the first in ``list_ptr``). Backward: that
    second list (a few percent of the pixels) alone, scattering into the colour and position gradients."""
    pid = tl.program_id(0)
    HW = H * W
    ch = tl.arange(0, CB)
    cm = ch[None, :] < C
    nreg = (NPIX + RB - 1) // RB
    out_list_ptr = list_ptr + tl.cast(nreg, tl.int64) * (2 * RB + 1)
    if BACKWARD:
        in_ptr = out_list_ptr
    else:
        in_ptr = list_ptr
    counts = in_ptr + tl.cast(nreg, tl.int64) * (2 * RB)
    for r in range(pid, nreg, NPROG):
        n = tl.load(counts + r)
        region = in_ptr + tl.cast(r, tl.int64) * (2 * RB)
        nu_total = 0
        for start in range(0, n, BLOCK):
            i = start + tl.arange(0, BLOCK)
            mi = i < n
            e = tl.load(region + i, mask=mi, other=0)
            p = e >> 1
            down = (e & 1) == 1
            b = p // HW
            rem = p - b * HW
            row = rem // W
            col = rem - row * W
            if POS_BATCHED:
                pbase = b.to(tl.int64) * V
            else:
                pbase = tl.zeros([BLOCK], tl.int64)
            pf = p.to(tl.int64)
            qf = tl.where(down, pf + W, pf + 1)
            Px = col.to(tl.float32) + 0.5
            Py = row.to(tl.float32) + 0.5
            Qx = tl.where(down, Px, Px + 1.0)
            Qy = tl.where(down, Py + 1.0, Py)
            (use, tt, in_f, out_f, inx, iny, outx, outy, ia, ib, din, dout, sgn, sax, say, sbx, sby,
             xa, ya, wa, xb, yb, wb) = _aa_pair(rast_ptr, pos_ptr, tri_ptr, opp_ptr, pbase, pf, qf, Px, Py, Qx, Qy,
                                                Wf, Hf, mi)
            tt = tl.where(use, tt, 0.0)
            far = tt >= 0.5
            tgt = tl.where(far, out_f, in_f)
            src = tl.where(far, in_f, out_f)
            alpha = tl.where(far, tt - 0.5, 0.5 - tt)
            um = use[:, None] & cm
            cs = tl.load(color_ptr + (src * C)[:, None] + ch[None, :], mask=um, other=0.0)
            ct = tl.load(color_ptr + (tgt * C)[:, None] + ch[None, :], mask=um, other=0.0)
            if BACKWARD:
                g = tl.load(gout_ptr + (tgt * C)[:, None] + ch[None, :], mask=um, other=0.0)
                tl.atomic_add(gcolor_ptr + (src * C)[:, None] + ch[None, :], alpha[:, None] * g, mask=um,
                              sem="relaxed")
                tl.atomic_add(gcolor_ptr + (tgt * C)[:, None] + ch[None, :], -alpha[:, None] * g, mask=um,
                              sem="relaxed")
                if NEED_POS:
                    dalpha = tl.sum(g * (cs - ct), 1)
                    dt = tl.where(far, dalpha, -dalpha) * boost
                    den = din - dout
                    den = tl.where(den == 0, 1.0, den)
                    gfi = sgn * (-dout / (den * den)) * dt
                    gfo = sgn * (din / (den * den)) * dt
                    gsax = gfi * (sby - iny) + gfo * (sby - outy)
                    gsay = gfi * (inx - sbx) + gfo * (outx - sbx)
                    gsbx = gfi * (iny - say) + gfo * (outy - say)
                    gsby = gfi * (sax - inx) + gfo * (sax - outx)
                    hw = 0.5 * Wf
                    hh = 0.5 * Hf
                    was = tl.where(use, wa, 1.0)
                    wbs = tl.where(use, wb, 1.0)
                    zero = tl.zeros([BLOCK], tl.float32)
                    _add4(gpos_ptr, pbase + ia, gsax * hw / was, gsay * hh / was, zero,
                          -(gsax * hw * xa + gsay * hh * ya) / (was * was), use)
                    _add4(gpos_ptr, pbase + ib, gsbx * hw / wbs, gsby * hh / wbs, zero,
                          -(gsbx * hw * xb + gsby * hh * yb) / (wbs * wbs), use)
            else:
                tl.atomic_add(out_ptr + (tgt * C)[:, None] + ch[None, :], alpha[:, None] * (cs - ct), mask=um,
                              sem="relaxed")
                ui = use.to(tl.int32)
                dst = out_list_ptr + tl.cast(r, tl.int64) * (2 * RB) + nu_total
                tl.store(dst + tl.cumsum(ui, 0) - ui, e, mask=use)
                nu_total += tl.sum(ui, 0)
        if not BACKWARD:
            tl.store(out_list_ptr + tl.cast(nreg, tl.int64) * (2 * RB) + r, nu_total)


_AA_PROGRAMS: dict = {}


def _aa_programs(t: torch.Tensor) -> int:
    """The persistent grid of the antialias passes over the pair lists (memoised per device)."""
    dev = t.get_device()
    n = _AA_PROGRAMS.get((dev, _config.aa_programs_per_sm))
    if n is None:
        n = 4 if dev < 0 else _sm_count(dev) * _config.aa_programs_per_sm
        _AA_PROGRAMS[(dev, _config.aa_programs_per_sm)] = n
    return n


class _Antialias(torch.autograd.Function):
    @staticmethod
    def forward(ctx, color, rast, pos, tri, opp, boost):  # type: ignore[override]
        B, h, w, C = color.shape
        npix = B * h * w
        if 2 * npix >= 2 ** 31:
            raise ValueError(f"antialias: {npix} pixels is too many for the Triton backend (at most 2^30); render "
                             "in smaller batches.")
        blk, cb = _pix(C)
        nreg = _cdiv(npix, blk)
        out = torch.empty_like(color)  # the first pass copies color into it
        # two pair lists, each 2 blk slots a region of blk pixels and then a count a region (written by the kernels)
        size = nreg * (2 * blk + 1)
        lists = torch.empty(2 * size, dtype=torch.int32, device=color.device)
        _fast(_aa_detect_kernel)[(nreg,)](color, rast, out, lists, npix, h, w, C, BLOCK=blk, CB=cb,
                                          num_warps=_config.pixel_warps)
        nprog = _aa_programs(color)
        _fast(_aa_eval_kernel)[(nprog,)](color, rast, pos, tri, opp, out, out, out, out, lists, npix, h, w,
                                         pos.shape[1], C, float(w), float(h), 1.0, POS_BATCHED=pos.shape[0] > 1,
                                         BACKWARD=False, NEED_POS=False, RB=blk, BLOCK=_config.aa_block, CB=cb,
                                         NPROG=nprog, num_warps=_config.pixel_warps)
        ctx.save_for_backward(color, rast, pos, tri, opp, lists)
        ctx.boost, ctx.rb = boost, blk  # the lists' region size, as written
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        color, rast, pos, tri, opp, lists = ctx.saved_tensors
        B, h, w, C = color.shape
        grad_out = _f32(grad_out)
        gcolor = grad_out.clone()
        need_pos = ctx.needs_input_grad[2]
        gpos = torch.zeros_like(pos) if need_pos else pos
        _, cb = _pix(C)
        nprog = _aa_programs(color)
        _fast(_aa_eval_kernel)[(nprog,)](color, rast, pos, tri, opp, color, grad_out, gcolor, gpos, lists,
                                         B * h * w, h, w, pos.shape[1], C, float(w), float(h), float(ctx.boost),
                                         POS_BATCHED=pos.shape[0] > 1, BACKWARD=True, NEED_POS=need_pos, RB=ctx.rb,
                                         BLOCK=_config.aa_block, CB=cb, NPROG=nprog,
                                         num_warps=_config.pixel_warps)
        return gcolor, None, (gpos if need_pos else None), None, None, None


def antialias(color: torch.Tensor, rast: torch.Tensor, pos: torch.Tensor, tri: torch.Tensor, opp: torch.Tensor,
              pos_gradient_boost: float = 1.0) -> torch.Tensor:
    dtype = color.dtype
    out = _apply(_Antialias, _f32(color), _f32(rast.detach()), _f32(pos), _tri32(tri), _tri32(opp),
                 float(pos_gradient_boost))
    return out.to(dtype) if dtype != torch.float32 and dtype.is_floating_point else out


# ----------------------------------------------------------------------------------------------------------------
# topology (edge adjacency) with a hash table: no sort, no host synchronisation


@triton.jit
def _edge_key(tri_ptr, j, V, m):
    t = j // 3
    k = j - t * 3
    kn = tl.where(k == 2, 0, k + 1)
    a = tl.load(tri_ptr + t * 3 + k, mask=m, other=0).to(tl.int64)
    b = tl.load(tri_ptr + t * 3 + kn, mask=m, other=0).to(tl.int64)
    return tl.minimum(a, b) * V + tl.maximum(a, b), t, k


@triton.jit
def _topo_insert_kernel(tri_ptr, keys_ptr, pair_ptr, N, V, M, BLOCK: tl.constexpr):
    """Insert every edge key into an open-addressing table (linear probing, atomic CAS), then register the edge's
    flat index j = 3 t + k in its slot: the first two go to ``pair``, ``count`` counts them all. ``count`` follows
    the M + 1 keys in their buffer, ``slot`` (each edge's table slot) the 2 (M + 1) pair entries in theirs."""
    count_ptr = keys_ptr + tl.cast(M + 1, tl.int64)
    slot_ptr = pair_ptr + 2 * tl.cast(M + 1, tl.int64)
    pid = tl.program_id(0)
    j = pid * BLOCK + tl.arange(0, BLOCK)
    m = j < N
    key, t, k = _edge_key(tri_ptr, j, V, m)
    h = ((key * 6364136223846793005) >> 29) & (M - 1)
    h = tl.where(m, h, M)  # lanes past the end park on the spare slot M (kept empty)
    active = m
    while tl.sum(active.to(tl.int32), 0) > 0:
        # finished lanes re-CAS their own slot with (-1 -> -1): a no-op, as atomic_cas takes no mask
        old = tl.atomic_cas(keys_ptr + h, tl.full([BLOCK], -1, tl.int64), tl.where(active, key, -1))
        found = active & ((old == -1) | (old == key))
        h = tl.where(active & ~found, (h + 1) & (M - 1), h)
        active = active & ~found
    idx = tl.atomic_add(count_ptr + h, 1, mask=m) + 1  # the counts start at -1
    tl.store(pair_ptr + h * 2 + idx, j.to(tl.int32), mask=m & (idx < 2))
    tl.store(slot_ptr + j, h.to(tl.int32), mask=m)


@triton.jit
def _topo_lookup_kernel(tri_ptr, keys_ptr, pair_ptr, opp_ptr, N, M, BLOCK: tl.constexpr):
    count_ptr = keys_ptr + tl.cast(M + 1, tl.int64)
    slot_ptr = pair_ptr + 2 * tl.cast(M + 1, tl.int64)
    pid = tl.program_id(0)
    j = pid * BLOCK + tl.arange(0, BLOCK)
    m = j < N
    h = tl.load(slot_ptr + j, mask=m, other=0).to(tl.int64)
    c = tl.load(count_ptr + h, mask=m, other=-1) + 1  # the counts start at -1
    f0 = tl.load(pair_ptr + h * 2, mask=m & (c == 2), other=-1)
    f1 = tl.load(pair_ptr + h * 2 + 1, mask=m & (c == 2), other=-1)
    partner = tl.where(f0 == j, f1, f0)
    ok = m & (c == 2) & (partner >= 0)
    pt = partner // 3
    pk = partner - pt * 3
    third = tl.where(pk == 0, 2, pk - 1)  # the corner not on edge pk: (pk + 2) % 3
    o = tl.load(tri_ptr + pt * 3 + third, mask=ok, other=-1)
    tl.store(opp_ptr + j, tl.where(ok, o, -1), mask=m)


def edge_opposites(tri: torch.Tensor, n_vertices: int = -1) -> torch.Tensor:
    """The table of :func:`threestudio.ops.rasterize.topology.edge_opposites`, built with two kernels."""
    tri = _tri32(tri)
    T = tri.shape[0]
    N = 3 * T
    dev = tri.device
    if T == 0:
        return torch.zeros((0, 3), dtype=torch.int32, device=dev)
    V = int(n_vertices) if n_vertices > 0 else (1 << 31)
    M = 2 * _pow2(N)
    keys_count = torch.full((2 * (M + 1),), -1, dtype=torch.int64, device=dev)  # one fill: keys, then counts - 1
    pair_slot = torch.empty(2 * (M + 1) + N, dtype=torch.int32, device=dev)  # the kernels find each part
    opp = torch.empty(T, 3, dtype=torch.int32, device=dev)
    blk = 256
    _fast(_topo_insert_kernel)[(_cdiv(N, blk),)](tri, keys_count, pair_slot, N, V, M, BLOCK=blk)
    _fast(_topo_lookup_kernel)[(_cdiv(N, blk),)](tri, keys_count, pair_slot, opp, N, M, BLOCK=blk)
    return opp
