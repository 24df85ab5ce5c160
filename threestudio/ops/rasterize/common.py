"""Shared definitions of the rasterization ops: input checks, the coverage and barycentric math, depth keys.

Every backend implements exactly what is written here (the Triton kernels repeat the same formulas in their own
language); :mod:`threestudio.ops.rasterize.reference` is the brute-force statement of the same rules.

**Image space** (nvdiffrast's): pixel (row ``r``, column ``c``) of an ``H x W`` image has its centre at NDC
``x = (2c + 1) / W - 1``, ``y = (2r + 1) / H - 1``: row 0 is NDC ``y = -1``. In screen units (used by
:func:`antialias`) the centre is at ``(c + 0.5, r + 0.5)`` with ``sx = (x / w + 1) W / 2``, ``sy = (y / w + 1) H / 2``.

**Coverage** of a pixel centre (NDC ``px, py``) by a triangle with clip-space corners ``p_k = (x_k, y_k, z_k, w_k)``
is decided in homogeneous coordinates, so no explicit clipping is needed:

* ``X_k = x_k - px w_k``, ``Y_k = y_k - py w_k`` and ``b_0 = X_1 Y_2 - X_2 Y_1`` (cyclic for ``b_1``, ``b_2``): the
  point of the triangle's plane seen through the pixel has barycentrics ``b_k / S`` with ``S = b_0 + b_1 + b_2``
  (perspective-correct by construction);
* the centre is covered when all ``b_k`` have the sign of ``S`` (zero allowed: edges are inclusive), the point is in
  front of the camera (``D = sum_k b_k w_k`` has the sign of ``S``) and its depth ``z/w = N / D`` with
  ``N = sum_k b_k z_k`` lies in ``[-1, 1]`` (the near and far planes).

Triangles that cross the near plane are therefore rendered exactly (their clipped part), and the parts behind the
camera never are. Among covering triangles the smallest ``z/w`` wins; exact ties go to the smaller triangle index
(the depth test compares 64-bit keys ``(orderable float bits of z/w) * 2^32 + triangle index``).

**Output** ``rast[..., 0:2] = (u, v) = (b_0, b_1) / S`` (an attribute interpolates as ``u a_0 + v a_1 + (1 - u - v)
a_2``), ``rast[..., 2] = z / w``, ``rast[..., 3] = triangle index + 1`` (0 where no triangle covers the pixel).
"""

from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch

EMPTY_KEY = (1 << 63) - 1  # int64 max: no triangle


def check_pos_tri(pos: torch.Tensor, tri: torch.Tensor, op: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Validate ``pos`` (made [B, V, 4]) and ``tri`` ([T, 3] integer, left in its dtype) on one device."""
    if not torch.is_tensor(pos) or not pos.is_floating_point():
        raise TypeError(f"{op}: pos must be a floating tensor of clip-space positions [B, V, 4] (or [V, 4]).")
    if pos.dim() == 2:
        pos = pos[None]
    if pos.dim() != 3 or pos.shape[-1] != 4:
        raise ValueError(f"{op}: pos must have shape [B, V, 4] (or [V, 4]), got {tuple(pos.shape)}. Append w = 1 "
                         f"to 3-D points and multiply by the model-view-projection matrix first.")
    if not torch.is_tensor(tri) or tri.dim() != 2 or tri.shape[-1] != 3 or tri.is_floating_point():
        raise ValueError(f"{op}: tri must be an integer tensor [T, 3], got "
                         f"{tuple(tri.shape) if torch.is_tensor(tri) else type(tri).__name__}.")
    if tri.device != pos.device:
        raise ValueError(f"{op}: pos is on {pos.device} but tri is on {tri.device}; move both to one device.")
    return pos, tri


def check_resolution(resolution: Union[int, Sequence[int]], op: str = "rasterize") -> Tuple[int, int]:
    if isinstance(resolution, int):
        h = w = resolution
    else:
        try:
            h, w = (int(r) for r in resolution)
        except (TypeError, ValueError):
            raise ValueError(f"{op}: resolution must be (height, width), got {resolution!r}.") from None
    if h <= 0 or w <= 0 or h > 16384 or w > 16384:
        raise ValueError(f"{op}: resolution must be within 1..16384 per side, got ({h}, {w}).")
    return h, w


def pixel_ndc(h: int, w: int, device=None, dtype=torch.float32) -> Tuple[torch.Tensor, torch.Tensor]:
    """NDC x and y [H, W] of the pixel centres (row 0 at y = -1)."""
    c = (2 * torch.arange(w, device=device, dtype=torch.float64) + 1) / w - 1
    r = (2 * torch.arange(h, device=device, dtype=torch.float64) + 1) / h - 1
    return c[None, :].expand(h, w).to(dtype), r[:, None].expand(h, w).to(dtype)


def homogeneous_bary(v: torch.Tensor, px: torch.Tensor, py: torch.Tensor):
    """(b0, b1, b2, S, D, N) of clip-space triangles ``v`` [..., 3, 4] at NDC points ``px, py`` [...] (see above)."""
    x, y, z, w = v.unbind(-1)
    X = x - px[..., None] * w
    Y = y - py[..., None] * w
    b0 = X[..., 1] * Y[..., 2] - X[..., 2] * Y[..., 1]
    b1 = X[..., 2] * Y[..., 0] - X[..., 0] * Y[..., 2]
    b2 = X[..., 0] * Y[..., 1] - X[..., 1] * Y[..., 0]
    S = b0 + b1 + b2
    D = b0 * w[..., 0] + b1 * w[..., 1] + b2 * w[..., 2]
    N = b0 * z[..., 0] + b1 * z[..., 1] + b2 * z[..., 2]
    return b0, b1, b2, S, D, N


def covered(b0, b1, b2, S, D, N) -> torch.Tensor:
    """The coverage rule (edges inclusive, in front of the camera, between the near and far planes)."""
    pos = (S > 0) & (b0 >= 0) & (b1 >= 0) & (b2 >= 0) & (D > 0)
    neg = (S < 0) & (b0 <= 0) & (b1 <= 0) & (b2 <= 0) & (D < 0)
    zw = N / torch.where(D == 0, torch.ones_like(D), D)
    return (pos | neg) & (zw >= -1) & (zw <= 1)


def depth_key(zw: torch.Tensor, tri_index: torch.Tensor) -> torch.Tensor:
    """int64 keys ordered by (z/w, triangle index): float32 bits made orderable, times 2^32, plus the index."""
    bits = zw.float().contiguous().view(torch.int32).to(torch.int64)
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return bits * 4294967296 + tri_index.to(torch.int64)


def clipped_screen_bbox(v: torch.Tensor, h: int, w: int, eps: float = 1e-3):
    """Pixel index ranges [c0, c1] x [r0, r1] (inclusive, clamped to the image) whose centres may be covered by
    each clip-space triangle ``v`` [..., 3, 4]: the bounding box of the triangle clipped to the near plane
    ``z >= -w`` (a margin ``eps`` pixels absorbs rounding). Returns (c0, c1, r0, r1) int64; empty when c0 > c1."""
    v = v.detach()
    d = v[..., 2] + v[..., 3]  # >= 0: on the visible side of the near plane
    pts = [v[..., k, :] for k in range(3)]
    ok = [(d[..., k] >= 0) & (v[..., k, 3] > 0) for k in range(3)]
    for a, b in ((0, 1), (1, 2), (2, 0)):
        da, db = d[..., a], d[..., b]
        cross = (da >= 0) != (db >= 0)
        t = da / torch.where(cross, da - db, torch.ones_like(da))
        p = v[..., a, :] + t[..., None] * (v[..., b, :] - v[..., a, :])
        pts.append(p)
        ok.append(cross & (p[..., 3] > 0))
    P = torch.stack(pts, -2)  # [..., 6, 4]
    OK = torch.stack(ok, -1)
    wq = torch.where(OK, P[..., 3], torch.ones_like(P[..., 3]))
    sx = (P[..., 0] / wq + 1) * (0.5 * w) - 0.5
    sy = (P[..., 1] / wq + 1) * (0.5 * h) - 0.5
    big = torch.full_like(sx, float("inf"))
    lo_x = torch.where(OK, sx, big).amin(-1)
    hi_x = torch.where(OK, sx, -big).amax(-1)
    lo_y = torch.where(OK, sy, big).amin(-1)
    hi_y = torch.where(OK, sy, -big).amax(-1)
    any_ok = OK.any(-1)
    lim = float(1 << 20)
    c0 = torch.ceil((lo_x - eps).clamp(-lim, lim)).long().clamp(min=0)
    c1 = torch.floor((hi_x + eps).clamp(-lim, lim)).long().clamp(max=w - 1)
    r0 = torch.ceil((lo_y - eps).clamp(-lim, lim)).long().clamp(min=0)
    r1 = torch.floor((hi_y + eps).clamp(-lim, lim)).long().clamp(max=h - 1)
    c1 = torch.where(any_ok, c1, c0 - 1)
    return c0, c1, r0, r1


def bary_derivatives(v: torch.Tensor, px: torch.Tensor, py: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Screen-space derivatives (du/dX, du/dY, dv/dX, dv/dY) [..., 4] (per pixel) of the perspective-correct
    barycentrics of triangles ``v`` [..., 3, 4] at NDC points ``px, py``."""
    x, y, z, wv = v.unbind(-1)
    X = x - px[..., None] * wv
    Y = y - py[..., None] * wv
    b0 = X[..., 1] * Y[..., 2] - X[..., 2] * Y[..., 1]
    b1 = X[..., 2] * Y[..., 0] - X[..., 0] * Y[..., 2]
    b2 = X[..., 0] * Y[..., 1] - X[..., 1] * Y[..., 0]
    S = b0 + b1 + b2
    S = torch.where(S == 0, torch.ones_like(S), S)
    w0, w1, w2 = wv.unbind(-1)
    X0, X1, X2 = X.unbind(-1)
    Y0, Y1, Y2 = Y.unbind(-1)
    db0x, db1x, db2x = -w1 * Y2 + w2 * Y1, -w2 * Y0 + w0 * Y2, -w0 * Y1 + w1 * Y0
    db0y, db1y, db2y = -X1 * w2 + X2 * w1, -X2 * w0 + X0 * w2, -X0 * w1 + X1 * w0
    u, vv = b0 / S, b1 / S
    dSx, dSy = db0x + db1x + db2x, db0y + db1y + db2y
    sx, sy = 2.0 / w, 2.0 / h
    return torch.stack([(db0x - u * dSx) / S * sx, (db0y - u * dSy) / S * sy,
                        (db1x - vv * dSx) / S * sx, (db1y - vv * dSy) / S * sy], -1)
