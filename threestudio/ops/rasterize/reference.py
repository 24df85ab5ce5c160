"""Brute-force statements of the rasterization ops (float64, every pixel against every triangle, Python loops for
antialiasing). They are the specification the fast backends are tested against, on small inputs only.

The antialiasing rule (nvdiffrast's analytic silhouette antialiasing, in our words). For every pair of
horizontally or vertically adjacent pixels ``p`` (left / top) and ``q`` whose triangle ids differ:

1. Candidates: when both pixels show a triangle, first the one with the smaller ``z/w`` (``p`` on ties), then the
   other; when one shows the background, only the other.
2. A candidate triangle, visible at pixel ``in`` (the other pixel is ``out``), is projected to the screen (it is
   skipped if a corner has ``w <= 0``). Its edge functions ``d_k`` are oriented to be positive inside. The segment
   from the centre of ``in`` to the centre of ``out`` leaves the triangle through the edge ``k`` with
   ``d_k(out) < 0 <= d_k(in)`` and the smallest crossing fraction ``t = d_k(in) / (d_k(in) - d_k(out))``.
3. That edge must be a silhouette edge: a boundary edge, or one whose neighbouring triangle's opposite vertex
   projects onto the same side as the triangle (``d_k(opposite) >= 0``: the neighbour faces away). Otherwise the
   next candidate is tried.
4. The first candidate that passes blends one pixel: if ``t >= 1/2`` the triangle covers a fraction ``t - 1/2`` of
   ``out``: ``color'[out] += (t - 1/2) (color[in] - color[out])``; else a fraction ``1/2 - t`` of ``in`` is not
   covered: ``color'[in] += (1/2 - t) (color[out] - color[in])``. All blends read the input colours and add up.

The gradient of ``t`` with respect to the edge's two corners is what gives vertex positions a gradient at
silhouettes.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch

from .common import check_pos_tri, check_resolution, covered, homogeneous_bary, pixel_ndc
from .topology import edge_opposites


@torch.no_grad()
def rasterize_reference(pos: torch.Tensor, tri: torch.Tensor, resolution: Union[int, Sequence[int]],
                        return_margin: bool = False):
    """Every pixel against every triangle, in float64. Returns rast [B, H, W, 4] (float64) and, with
    ``return_margin``, the gap [B, H, W] between the best and the second-best covering depth (inf if fewer than
    two triangles cover the pixel): where it is tiny, another backend may legitimately pick the other triangle."""
    pos, tri = check_pos_tri(pos, tri, "rasterize_reference")
    tri = tri.long()
    h, w = check_resolution(resolution)
    B, T = pos.shape[0], tri.shape[0]
    px, py = pixel_ndc(h, w, pos.device, torch.float64)
    px, py = px.reshape(-1), py.reshape(-1)
    rast = torch.zeros(B, h * w, 4, dtype=torch.float64, device=pos.device)
    margin = torch.full((B, h * w), float("inf"), dtype=torch.float64, device=pos.device)
    for b in range(B):
        best = torch.full((h * w,), float("inf"), dtype=torch.float64, device=pos.device)
        second = best.clone()
        for t in range(T):
            v = pos[b, tri[t]].double()  # [3, 4]
            b0, b1, b2, S, D, N = homogeneous_bary(v[None].expand(h * w, 3, 4), px, py)
            cov = covered(b0, b1, b2, S, D, N)
            zw = N / torch.where(D == 0, torch.ones_like(D), D)
            better = cov & (zw < best)  # strict: on exact ties the earlier (smaller) index stays
            second = torch.where(cov & ~better, torch.minimum(second, zw), second)
            second = torch.where(better, best, second)
            best = torch.where(better, zw, best)
            Ssafe = torch.where(S == 0, torch.ones_like(S), S)
            vals = torch.stack([b0 / Ssafe, b1 / Ssafe, zw, torch.full_like(zw, t + 1.0)], -1)
            rast[b] = torch.where(better[:, None], vals, rast[b])
        margin[b] = second - best
    rast = rast.view(B, h, w, 4)
    if return_margin:
        return rast, margin.view(B, h, w)
    return rast


def interpolate_reference(attr: torch.Tensor, rast: torch.Tensor, tri: torch.Tensor) -> torch.Tensor:
    """``u a_0 + v a_1 + (1 - u - v) a_2`` per pixel (zeros where empty); differentiable in ``attr`` and ``rast``."""
    B, h, w, _ = rast.shape
    a = attr if attr.dim() == 3 else attr[None]
    a = a.expand(B, -1, -1)
    tid = rast[..., 3].detach().round().long() - 1
    valid = tid >= 0
    t = tid.clamp(min=0)
    idx = tri.long()[t]  # [B, H, W, 3]
    bidx = torch.arange(B, device=rast.device)[:, None, None, None].expand_as(idx)
    corners = a[bidx, idx]  # [B, H, W, 3, C]
    u, v = rast[..., 0:1], rast[..., 1:2]
    out = u * corners[..., 0, :] + v * corners[..., 1, :] + (1 - u - v) * corners[..., 2, :]
    return torch.where(valid[..., None], out, torch.zeros_like(out))


def _screen(p: torch.Tensor, h: int, w: int) -> Tuple[torch.Tensor, torch.Tensor]:
    return (p[..., 0] / p[..., 3] + 1) * (0.5 * w), (p[..., 1] / p[..., 3] + 1) * (0.5 * h)


def _aa_candidate(pos_b, tri, opp, t, pin, pout, h, w):
    """(t, k) of a candidate triangle per the rule, or None."""
    corners = pos_b[tri[t]]
    if bool((corners[:, 3].detach() <= 0).any()):
        return None
    sx, sy = _screen(corners, h, w)
    area2 = (sx[1] - sx[0]) * (sy[2] - sy[0]) - (sy[1] - sy[0]) * (sx[2] - sx[0])
    a2 = float(area2.detach())
    if a2 == 0.0:
        return None
    sgn = 1.0 if a2 > 0 else -1.0

    def f(k, X, Y):
        a, b = k, (k + 1) % 3
        return sgn * ((sx[b] - sx[a]) * (Y - sy[a]) - (sy[b] - sy[a]) * (X - sx[a]))

    best = None
    for k in range(3):
        d_in, d_out = f(k, *pin), f(k, *pout)
        if float(d_out.detach()) < 0 <= float(d_in.detach()):
            tk = d_in / (d_in - d_out)
            if best is None or float(tk.detach()) < float(best[0].detach()):
                best = (tk, k)
    if best is None:
        return None
    tk, k = best
    o = int(opp[t, k])
    if o >= 0:
        po = pos_b[o].detach()
        if float(po[3]) > 0:
            ox, oy = _screen(po, h, w)
            if float(f(k, ox, oy).detach()) < 0:
                return None
    return best


def antialias_reference(color: torch.Tensor, rast: torch.Tensor, pos: torch.Tensor, tri: torch.Tensor,
                        opp: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The rule of the module docstring with Python loops over pixel pairs (small images only). Differentiable in
    ``color`` and ``pos`` through torch autograd."""
    pos, tri = check_pos_tri(pos, tri, "antialias_reference")
    tri = tri.long()
    B, h, w, C = color.shape
    if pos.shape[0] == 1 and B > 1:
        pos = pos.expand(B, -1, -1)
    opp = edge_opposites(tri) if opp is None else opp
    tid = rast[..., 3].detach().round().long() - 1
    zw = rast[..., 2].detach()
    out = color.clone()
    for b in range(B):
        for r in range(h):
            for c in range(w):
                for (r2, c2) in ((r, c + 1), (r + 1, c)):
                    if r2 >= h or c2 >= w:
                        continue
                    tp, tq = int(tid[b, r, c]), int(tid[b, r2, c2])
                    if tp == tq:
                        continue
                    P, Q = (c + 0.5, r + 0.5), (c2 + 0.5, r2 + 0.5)
                    cands = []
                    if tp >= 0 and tq >= 0:
                        first_p = float(zw[b, r, c]) <= float(zw[b, r2, c2])
                        cands = [(tp, P, Q, (r, c), (r2, c2)), (tq, Q, P, (r2, c2), (r, c))]
                        if not first_p:
                            cands.reverse()
                    elif tp >= 0:
                        cands = [(tp, P, Q, (r, c), (r2, c2))]
                    else:
                        cands = [(tq, Q, P, (r2, c2), (r, c))]
                    for t, pin, pout, ain, aout in cands:
                        res = _aa_candidate(pos[b], tri, opp, t, pin, pout, h, w)
                        if res is None:
                            continue
                        tt = res[0]
                        if float(tt.detach()) >= 0.5:
                            src, tgt, alpha = ain, aout, tt - 0.5
                        else:
                            src, tgt, alpha = aout, ain, 0.5 - tt
                        out[b, tgt[0], tgt[1]] = out[b, tgt[0], tgt[1]] + alpha * (
                            color[b, src[0], src[1]] - color[b, tgt[0], tgt[1]])
                        break
    return out
