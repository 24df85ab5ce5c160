"""Mesh decimation to a face budget.

* ``method="quadric"``: quadric edge collapse through the optional package ``fast-simplification``
  (``pip install fast-simplification``); best quality.
* ``method="cluster"``: our own vertex clustering. Vertices are merged per cell of a uniform grid (the merged vertex
  is the mean of its cell); faces that collapse (two corners in one cell) and duplicate faces are dropped. The cell
  size is found by bisection (in log space) so that the face count lands just under the budget.
* ``method="auto"``: quadric if ``fast_simplification`` is importable, else cluster.

:func:`decimate` takes and returns torch tensors (positions on the input's device and dtype).
"""

from __future__ import annotations

import math
import time
from typing import Optional, Tuple

import torch

from threestudio.utils.log import info

__all__ = ["decimate", "decimate_quadric", "decimate_cluster", "cluster_vertices", "clean_faces", "METHODS"]

METHODS = ("auto", "quadric", "cluster")


def _check(v_pos: torch.Tensor, t_pos_idx: torch.Tensor) -> None:
    if v_pos.ndim != 2 or v_pos.shape[-1] != 3:
        raise ValueError(f"decimate: v_pos must have shape [V, 3], got {tuple(v_pos.shape)}.")
    if t_pos_idx.ndim != 2 or t_pos_idx.shape[-1] != 3:
        raise ValueError(f"decimate: t_pos_idx must have shape [F, 3], got {tuple(t_pos_idx.shape)}.")


def clean_faces(v_pos: torch.Tensor, t_pos_idx: torch.Tensor, area_eps: float = 1e-12
                ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Drop degenerate faces (a repeated corner, or an area below ``area_eps`` times the squared bounding-box
    diagonal), duplicate faces (the same three vertices in any order; the first is kept) and unreferenced vertices.
    Face orientation is kept."""
    f = t_pos_idx.long()
    if f.shape[0] == 0:
        return v_pos[:0], f
    distinct = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])
    tri = v_pos[f].double()
    area2 = torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1).norm(dim=-1)
    diag2 = float(((v_pos.max(0).values - v_pos.min(0).values).double() ** 2).sum())
    f = f[distinct & (area2 > 2.0 * area_eps * max(diag2, 1e-30))]
    if f.shape[0]:
        _, inv = _unique_triples(f)
        first = torch.full((int(inv.max()) + 1,), f.shape[0], dtype=torch.long, device=f.device)
        first.scatter_reduce_(0, inv, torch.arange(f.shape[0], device=f.device), reduce="amin")
        f = f[torch.sort(first).values]
    used = torch.unique(f)
    remap = torch.full((v_pos.shape[0],), -1, dtype=torch.long, device=f.device)
    remap[used] = torch.arange(used.shape[0], device=f.device)
    return v_pos[used], remap[f]


def _cell_keys(v: torch.Tensor, cell: float) -> torch.Tensor:
    lo = v.min(0).values
    k = torch.floor((v - lo) / cell).long()
    dims = k.max(0).values + 1
    return (k[:, 0] * dims[1] + k[:, 1]) * dims[2] + k[:, 2]


def _unique_triples(f: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """torch.unique over the rows of sorted-corner triples; packs each triple into one int64 when it fits."""
    key = torch.sort(f, dim=1).values
    if int(key.max()) < (1 << 21):
        packed = (key[:, 0] << 42) | (key[:, 1] << 21) | key[:, 2]
        return torch.unique(packed, return_inverse=True)
    return torch.unique(key, dim=0, return_inverse=True)


def _count_faces(f: torch.Tensor, inv: torch.Tensor) -> int:
    g = inv[f]
    g = g[(g[:, 0] != g[:, 1]) & (g[:, 1] != g[:, 2]) & (g[:, 0] != g[:, 2])]
    if g.shape[0] == 0:
        return 0
    return int(_unique_triples(g)[0].shape[0])


def cluster_vertices(v_pos: torch.Tensor, t_pos_idx: torch.Tensor, cell: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Merge vertices per cubic cell of side ``cell`` (mean position), then :func:`clean_faces`."""
    keys = _cell_keys(v_pos, cell)
    _, inv = torch.unique(keys, return_inverse=True)
    n = int(inv.max()) + 1
    acc = torch.zeros((n, 3), dtype=torch.float64, device=v_pos.device).index_add_(0, inv, v_pos.double())
    cnt = torch.bincount(inv, minlength=n).clamp(min=1).double()
    v_new = (acc / cnt[:, None]).to(v_pos.dtype)
    return clean_faces(v_new, inv[t_pos_idx.long()])


def decimate_cluster(v_pos: torch.Tensor, t_pos_idx: torch.Tensor, max_faces: int, iterations: int = 24,
                     progress: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Vertex clustering with the cell size bisected to give the most faces that fit in ``max_faces``."""
    _check(v_pos, t_pos_idx)
    if max_faces < 1:
        raise ValueError(f"decimate: max_faces must be >= 1, got {max_faces}.")
    f = t_pos_idx.long()
    vd = v_pos.detach()
    extent = float((vd.max(0).values - vd.min(0).values).max())
    if extent <= 0:
        raise ValueError("decimate: the mesh has zero extent (all vertices coincide).")
    # bracket in log(cell): 'lo' keeps (nearly) every vertex apart, 'hi' merges the mesh into a few cells
    e = vd[f[:, [1, 2, 0]]] - vd[f]
    lo = math.log(max(float(e.norm(dim=-1).min()) * 0.5, extent * 1e-6))
    hi = math.log(extent * 0.51)
    best: Optional[float] = None
    best_count = -1
    steps = range(iterations)
    if progress:
        from rich.progress import track

        steps = track(steps, description=f"Decimating {f.shape[0]} faces to <= {max_faces}", transient=True)
    for _ in steps:
        mid = 0.5 * (lo + hi)
        _, inv = torch.unique(_cell_keys(vd, math.exp(mid)), return_inverse=True)
        n = _count_faces(f, inv)
        if n > max_faces:
            lo = mid
        else:
            hi = mid
            if n > best_count:
                best, best_count = mid, n
            if n >= 0.97 * max_faces:
                break
    if best is None:  # pragma: no cover - hi always fits unless the budget is below one face
        best = hi
    return cluster_vertices(v_pos, f, math.exp(best))


def decimate_quadric(v_pos: torch.Tensor, t_pos_idx: torch.Tensor, max_faces: int, aggressiveness: float = 7.0
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Quadric edge collapse (fast-simplification), retried with a stronger reduction if it overshoots."""
    from threestudio.utils.imports import require

    fs = require("fast_simplification", "Quadric mesh decimation (method 'quadric')",
                 "pip install fast-simplification")
    _check(v_pos, t_pos_idx)
    points = v_pos.detach().cpu().double().numpy()
    tris = t_pos_idx.detach().cpu().numpy().astype("int32")
    n = tris.shape[0]
    target = max_faces
    v_out, f_out = points, tris
    for _ in range(6):
        reduction = min(max(1.0 - target / n, 0.0), 0.9999)
        v_out, f_out = fs.simplify(points, tris, target_reduction=reduction, agg=aggressiveness)
        if f_out.shape[0] <= max_faces:
            break
        target = int(target * 0.95)
    v_t = torch.as_tensor(v_out, dtype=v_pos.dtype, device=v_pos.device)
    f_t = torch.as_tensor(f_out, dtype=torch.long, device=v_pos.device)
    v_t, f_t = clean_faces(v_t, f_t)
    if f_t.shape[0] > max_faces:  # still over: finish with clustering
        v_t, f_t = decimate_cluster(v_t, f_t, max_faces, progress=False)
    return v_t, f_t


def decimate(v_pos: torch.Tensor, t_pos_idx: torch.Tensor, max_faces: int, method: str = "auto",
             progress: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Decimate a mesh to at most ``max_faces`` faces (returned unchanged when it already fits or ``max_faces`` is 0).

    Returns (v_pos [V', 3], t_pos_idx [F', 3] long). Logs the before/after counts and the time taken.
    """
    _check(v_pos, t_pos_idx)
    if method not in METHODS:
        raise ValueError(f"decimate: unknown method {method!r}; use one of {', '.join(METHODS)}.")
    if max_faces < 0:
        raise ValueError(f"decimate: max_faces must be >= 0 (0 = never decimate), got {max_faces}.")
    n_faces = t_pos_idx.shape[0]
    if max_faces == 0 or n_faces <= max_faces:
        return v_pos, t_pos_idx.long()
    if method == "auto":
        from threestudio.utils.imports import available

        method = "quadric" if available("fast_simplification") else "cluster"
    t0 = time.perf_counter()
    if method == "quadric":
        v_new, f_new = decimate_quadric(v_pos, t_pos_idx, max_faces)
    else:
        v_new, f_new = decimate_cluster(v_pos, t_pos_idx, max_faces, progress=progress)
    info(f"Decimated the mesh ({method}): {n_faces} -> {f_new.shape[0]} faces, {v_pos.shape[0]} -> "
         f"{v_new.shape[0]} vertices in {time.perf_counter() - t0:.1f} s")
    return v_new, f_new
