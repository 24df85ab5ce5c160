"""Nearest ray-triangle intersections (Moller-Trumbore), brute force in chunks, differentiable at the hits.

For renderers that receive arbitrary rays instead of a camera (e.g. random pixels of a multi-view dataset). The
search is done without gradients; the barycentrics and distances of the winning triangles are then recomputed with
torch ops, so gradients flow to the vertex positions (and the rays). There is no silhouette gradient here (a ray
either hits or not); image batches with :func:`threestudio.ops.rasterize.antialias` give that.
"""

from __future__ import annotations

from typing import Tuple

import torch


def _mt(o, d, v0, v1, v2, eps: float = 1e-12):
    e1, e2 = v1 - v0, v2 - v0
    p = torch.cross(d, e2, dim=-1)
    det = (e1 * p).sum(-1)
    ok = det.abs() > eps
    inv = 1.0 / torch.where(ok, det, torch.ones_like(det))
    s = o - v0
    u = (s * p).sum(-1) * inv
    q = torch.cross(s, e1, dim=-1)
    v = (d * q).sum(-1) * inv
    t = (e2 * q).sum(-1) * inv
    return ok, u, v, t


def raycast(rays_o: torch.Tensor, rays_d: torch.Tensor, v_pos: torch.Tensor, faces: torch.Tensor,
            t_min: float = 1e-6, chunk_pairs: int = 1 << 22) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest hits of rays [N, 3] with the mesh. Returns ``t`` [N] (0 where missed), ``face`` [N] (long, -1 where
    missed) and ``bary`` [N, 3] (weights of the face's corners, zeros where missed)."""
    N, Fn = rays_o.shape[0], faces.shape[0]
    dev = rays_o.device
    best_t = torch.full((N,), float("inf"), device=dev)
    best_f = torch.full((N,), -1, dtype=torch.long, device=dev)
    if Fn > 0 and N > 0:
        with torch.no_grad():
            tri = v_pos.detach()[faces]  # [F, 3, 3]
            rows = max(1, chunk_pairs // Fn)
            o_all, d_all = rays_o.detach(), rays_d.detach()
            for s in range(0, N, rows):
                o, d = o_all[s:s + rows, None], d_all[s:s + rows, None]
                ok, u, v, t = _mt(o, d, tri[None, :, 0], tri[None, :, 1], tri[None, :, 2])
                hit = ok & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > t_min)
                t = torch.where(hit, t, torch.full_like(t, float("inf")))
                tmin, fidx = t.min(1)
                best_t[s:s + rows] = tmin
                best_f[s:s + rows] = torch.where(torch.isfinite(tmin), fidx, torch.full_like(fidx, -1))
    hit = best_f >= 0
    f = faces[best_f.clamp(min=0)]
    _, u, v, t = _mt(rays_o, rays_d, v_pos[f[:, 0]], v_pos[f[:, 1]], v_pos[f[:, 2]])
    bary = torch.stack([1 - u - v, u, v], -1)
    bary = torch.where(hit[:, None], bary, torch.zeros_like(bary))
    t = torch.where(hit, t, torch.zeros_like(t))
    return t, best_f, bary
