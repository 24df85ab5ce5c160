"""The vectorised PyTorch implementation of the rasterization ops (any device; the CPU path).

* rasterize: every triangle's (near-clipped) screen bounding box is expanded into candidate pixels, in chunks of
  ``chunk`` candidates; each candidate is tested with the homogeneous coverage rule and the winner per pixel is
  found with ``scatter_reduce(amin)`` on 64-bit (depth, triangle) keys. The barycentrics of the winners are then
  recomputed with differentiable torch ops, so autograd gives the gradient with respect to ``pos``.
* interpolate, antialias: gathers and ``index_add`` in plain autograd.

The semantics are those of :mod:`threestudio.ops.rasterize.common` and :mod:`.reference`.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from .common import EMPTY_KEY, bary_derivatives, clipped_screen_bbox, covered, depth_key, homogeneous_bary

DEFAULT_CHUNK = 1 << 22


def _coverage_keys(pos: torch.Tensor, tri: torch.Tensor, h: int, w: int, chunk: int) -> torch.Tensor:
    """The depth buffer [B * H * W] of winning (depth, triangle) keys (EMPTY_KEY where empty)."""
    B, T = pos.shape[0], tri.shape[0]
    dev = pos.device
    zbuf = torch.full((B * h * w,), EMPTY_KEY, dtype=torch.int64, device=dev)
    if T == 0:
        return zbuf
    with torch.no_grad():
        v = pos.detach().float()[:, tri]  # [B, T, 3, 4]
        c0, c1, r0, r1 = clipped_screen_bbox(v, h, w)
        bw = (c1 - c0 + 1).clamp(min=0)
        bh = (r1 - r0 + 1).clamp(min=0)
        counts = (bw * bh).reshape(-1)
        ends = torch.cumsum(counts, 0)
        total = int(ends[-1])
        starts = ends - counts
        v = v.reshape(B * T, 3, 4)
        c0, r0, bw = c0.reshape(-1), r0.reshape(-1), bw.reshape(-1)
        for s in range(0, total, chunk):
            wi = torch.arange(s, min(s + chunk, total), device=dev)
            f = torch.searchsorted(ends, wi, right=True)  # flat (b, t)
            local = wi - starts[f]
            bwf = bw[f]
            col = c0[f] + local % bwf
            row = r0[f] + torch.div(local, bwf, rounding_mode="floor")
            px = (2 * col + 1).float() / w - 1
            py = (2 * row + 1).float() / h - 1
            b0, b1, b2, S, D, N = homogeneous_bary(v[f], px, py)
            cov = covered(b0, b1, b2, S, D, N)
            if not bool(cov.any()):
                continue
            f, col, row, N, D = f[cov], col[cov], row[cov], N[cov], D[cov]
            bi = torch.div(f, T, rounding_mode="floor")
            key = depth_key(N / D, f - bi * T)
            zbuf.scatter_reduce_(0, (bi * h + row) * w + col, key, reduce="amin")
    return zbuf


def rasterize(pos: torch.Tensor, tri: torch.Tensor, h: int, w: int, grad_db: bool = True,
              chunk: int = DEFAULT_CHUNK) -> Tuple[torch.Tensor, torch.Tensor]:
    B = pos.shape[0]
    tri = tri.long()
    zbuf = _coverage_keys(pos, tri, h, w, chunk)
    pix = torch.nonzero(zbuf != EMPTY_KEY, as_tuple=False).squeeze(1)
    t = zbuf[pix] & 0xFFFFFFFF
    bi = torch.div(pix, h * w, rounding_mode="floor")
    rem = pix - bi * (h * w)
    row = torch.div(rem, w, rounding_mode="floor")
    col = rem - row * w
    # the winners' barycentrics in float64 at least: x - px * w cancels for sub-pixel triangles, and float32 lost
    # up to 5e-4 there (the Triton kernel's fused multiply-adds keep 4e-7); coverage above stays float32
    cdt = pos.dtype if pos.device.type == "mps" else torch.promote_types(pos.dtype, torch.float64)
    px = (2 * col + 1).to(cdt) / w - 1
    py = (2 * row + 1).to(cdt) / h - 1
    v = pos[bi[:, None], tri[t]].to(cdt)  # [N, 3, 4], differentiable
    b0, b1, b2, S, D, N = homogeneous_bary(v, px, py)
    vals = torch.stack([b0 / S, b1 / S, N / D, (t + 1).to(cdt)], -1).to(pos.dtype)
    rast = torch.zeros(B * h * w, 4, dtype=pos.dtype, device=pos.device).index_put((pix,), vals)
    if grad_db:
        with torch.no_grad():
            db = bary_derivatives(v.detach(), px, py, h, w)
        rast_db = torch.zeros(B * h * w, 4, dtype=pos.dtype, device=pos.device)
        rast_db[pix] = db.to(pos.dtype)
        rast_db = rast_db.view(B, h, w, 4)
    else:
        rast_db = torch.zeros(B, h, w, 0, dtype=pos.dtype, device=pos.device)
    return rast.view(B, h, w, 4), rast_db


def _covered_pixels(rast: torch.Tensor):
    B, h, w, _ = rast.shape
    tid = rast[..., 3].detach().reshape(-1).round().long() - 1
    pix = torch.nonzero(tid >= 0, as_tuple=False).squeeze(1)
    return pix, tid[pix], torch.div(pix, h * w, rounding_mode="floor")


def interpolate(attr: torch.Tensor, rast: torch.Tensor, tri: torch.Tensor, rast_db: Optional[torch.Tensor] = None,
                diff_attrs: Optional[Sequence[int]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    B, h, w, _ = rast.shape
    C = attr.shape[-1]
    tri = tri.long()
    pix, t, bi = _covered_pixels(rast)
    idx = tri[t]  # [N, 3]
    corners = attr[idx] if attr.dim() == 2 else attr[bi[:, None] if attr.shape[0] > 1 else 0, idx]
    uv = rast.reshape(-1, 4)[pix, :2]
    u, v = uv[:, 0:1], uv[:, 1:2]
    a0, a1, a2 = corners[:, 0], corners[:, 1], corners[:, 2]
    vals = a2 + u * (a0 - a2) + v * (a1 - a2)
    out = torch.zeros(B * h * w, C, dtype=vals.dtype, device=rast.device).index_put((pix,), vals)
    out = out.view(B, h, w, C)
    if not diff_attrs:
        return out, torch.zeros(B, h, w, 0, dtype=vals.dtype, device=rast.device)
    if rast_db is None or rast_db.shape[-1] != 4:
        raise ValueError("interpolate: diff_attrs needs rast_db [B, H, W, 4] (rasterize(..., grad_db=True)).")
    sel = list(range(C)) if diff_attrs == "all" else [int(i) for i in diff_attrs]
    db = rast_db.reshape(-1, 4)[pix]
    da, db_ = (a0 - a2)[:, sel], (a1 - a2)[:, sel]
    dx = db[:, 0:1] * da + db[:, 2:3] * db_
    dy = db[:, 1:2] * da + db[:, 3:4] * db_
    d = torch.stack([dx, dy], -1).reshape(-1, 2 * len(sel))
    out_da = torch.zeros(B * h * w, 2 * len(sel), dtype=vals.dtype, device=rast.device).index_put((pix,), d)
    return out, out_da.view(B, h, w, -1)


def _screen(p: torch.Tensor, h: int, w: int) -> Tuple[torch.Tensor, torch.Tensor]:
    return (p[..., 0] / p[..., 3] + 1) * (0.5 * w), (p[..., 1] / p[..., 3] + 1) * (0.5 * h)


def _candidate(pos: torch.Tensor, tri: torch.Tensor, opp: torch.Tensor, b: torch.Tensor, t: torch.Tensor,
               pin: Tuple[torch.Tensor, torch.Tensor], pout: Tuple[torch.Tensor, torch.Tensor], h: int, w: int):
    """For candidate triangles ``t`` (batch ``b``) visible at ``pin`` and not at ``pout`` (screen centres): whether
    the rule accepts them and the crossing fraction ``t`` (differentiable in ``pos``)."""
    idx = tri[t]  # [N, 3]
    corners = pos[b[:, None], idx]  # [N, 3, 4]
    wpos = (corners[..., 3] > 0).all(-1)
    cw = torch.where(wpos[:, None, None], corners, torch.ones_like(corners))
    sx, sy = _screen(cw, h, w)  # [N, 3]
    area2 = (sx[:, 1] - sx[:, 0]) * (sy[:, 2] - sy[:, 0]) - (sy[:, 1] - sy[:, 0]) * (sx[:, 2] - sx[:, 0])
    sgn = torch.sign(area2).detach()
    a_i, b_i = [0, 1, 2], [1, 2, 0]
    ex, ey = sx[:, b_i] - sx[:, a_i], sy[:, b_i] - sy[:, a_i]  # [N, 3]
    d_in = sgn[:, None] * (ex * (pin[1][:, None] - sy[:, a_i]) - ey * (pin[0][:, None] - sx[:, a_i]))
    d_out = sgn[:, None] * (ex * (pout[1][:, None] - sy[:, a_i]) - ey * (pout[0][:, None] - sx[:, a_i]))
    exit_ = (d_out < 0) & (d_in >= 0)
    denom = torch.where(exit_, d_in - d_out, torch.ones_like(d_in))
    tk = d_in / denom
    tk_sel = torch.where(exit_, tk.detach(), torch.full_like(tk, float("inf")))
    k = torch.argmin(tk_sel, dim=1)  # first minimum: smallest k on ties
    ok = wpos & (sgn != 0) & exit_.any(1)
    tt = tk.gather(1, k[:, None])[:, 0]
    o = opp[t, k].long()
    po = pos[b, o.clamp(min=0)].detach()
    ox, oy = _screen(torch.where((po[:, 3] > 0)[:, None], po, torch.ones_like(po)), h, w)
    ka = k
    sax, say = sx.detach().gather(1, ka[:, None])[:, 0], sy.detach().gather(1, ka[:, None])[:, 0]
    exk, eyk = ex.detach().gather(1, k[:, None])[:, 0], ey.detach().gather(1, k[:, None])[:, 0]
    d_opp = sgn * (exk * (oy - say) - eyk * (ox - sax))
    silhouette = (o < 0) | (po[:, 3] <= 0) | (d_opp >= 0)
    return ok & silhouette, tt


def antialias(color: torch.Tensor, rast: torch.Tensor, pos: torch.Tensor, tri: torch.Tensor, opp: torch.Tensor,
              pos_gradient_boost: float = 1.0) -> torch.Tensor:
    B, h, w, C = color.shape
    tri = tri.long()
    if pos.shape[0] == 1 and B > 1:
        pos = pos.expand(B, -1, -1)
    if pos_gradient_boost != 1.0:
        pos = _GradScale.apply(pos, float(pos_gradient_boost))
    tid = rast[..., 3].detach().round().long() - 1
    zw = rast[..., 2].detach()
    flat = color.reshape(-1, C)
    out = flat
    dev = color.device
    bb, rr, cc = torch.meshgrid(torch.arange(B, device=dev), torch.arange(h, device=dev),
                                torch.arange(w, device=dev), indexing="ij")
    for dr, dc in ((0, 1), (1, 0)):
        sl_p = (slice(None), slice(0, h - dr), slice(0, w - dc))
        sl_q = (slice(None), slice(dr, h), slice(dc, w))
        tp, tq = tid[sl_p], tid[sl_q]
        m = tp != tq
        if not bool(m.any()):
            continue
        tp, tq = tp[m], tq[m]
        zp, zq = zw[sl_p][m], zw[sl_q][m]
        b = bb[sl_p][m]
        r, c = rr[sl_p][m], cc[sl_p][m]
        p_flat = (b * h + r) * w + c
        q_flat = (b * h + r + dr) * w + c + dc
        P = ((c + 0.5).to(pos.dtype), (r + 0.5).to(pos.dtype))
        Q = ((c + dc + 0.5).to(pos.dtype), (r + dr + 0.5).to(pos.dtype))
        # candidate 1: the closer (p on ties) or the only triangle; candidate 2: the other one, if any
        p_first = (tp >= 0) & ((tq < 0) | (zp <= zq))
        t1 = torch.where(p_first, tp, tq)
        t2 = torch.where(p_first, tq, tp)
        in1_p = p_first
        has2 = (tp >= 0) & (tq >= 0)
        pin1 = (torch.where(in1_p, P[0], Q[0]), torch.where(in1_p, P[1], Q[1]))
        pout1 = (torch.where(in1_p, Q[0], P[0]), torch.where(in1_p, Q[1], P[1]))
        ok1, tt1 = _candidate(pos, tri, opp, b, t1.clamp(min=0), pin1, pout1, h, w)
        ok2, tt2 = _candidate(pos, tri, opp, b, t2.clamp(min=0), pout1, pin1, h, w)
        ok2 = ok2 & has2 & ~ok1
        use = ok1 | ok2
        if not bool(use.any()):
            continue
        tt = torch.where(ok1, tt1, tt2)
        in_is_p = torch.where(ok1, in1_p, ~in1_p)
        in_flat = torch.where(in_is_p, p_flat, q_flat)
        out_flat = torch.where(in_is_p, q_flat, p_flat)
        far = tt >= 0.5
        tgt = torch.where(far, out_flat, in_flat)[use]
        src = torch.where(far, in_flat, out_flat)[use]
        alpha = torch.where(far, tt - 0.5, 0.5 - tt)[use]
        out = out.index_add(0, tgt, alpha[:, None] * (flat[src] - flat[tgt]))
    return out.view(B, h, w, C)


class _GradScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, s):  # type: ignore[override]
        ctx.s = s
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        return g * ctx.s, None
