"""Edge adjacency for silhouette antialiasing (the role of nvdiffrast's "topology hash").

``edge_opposites(tri)`` returns ``opp`` [T, 3] int32: for edge ``k`` of triangle ``t`` (from corner ``k`` to corner
``(k + 1) % 3``), the vertex of the other triangle on that edge that is not on the edge, or -1 when the edge is a
boundary edge or is shared by more than two triangles. :func:`threestudio.ops.rasterize.antialias` treats an edge as
a silhouette when ``opp`` is -1 or when the opposite vertex projects to the same side of the edge as the triangle
itself (the neighbour folds away from the viewer).

Built with one stable sort of the 3T edge keys, on any device (one host synchronisation, for the pairs; the Triton
backend's hash-table version has none).
"""

from __future__ import annotations

import torch


def edge_opposites(tri: torch.Tensor, n_vertices: int = -1) -> torch.Tensor:
    """``opp`` [T, 3] int32 (see the module docstring). ``n_vertices`` (> max index) may be given to save a
    reduction; otherwise 2^31 is used as the key stride."""
    tri = tri.long()
    T = tri.shape[0]
    if T == 0:
        return torch.zeros((0, 3), dtype=torch.int32, device=tri.device)
    a = tri
    b = tri[:, [1, 2, 0]]
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    stride = int(n_vertices) if n_vertices > 0 else (1 << 31)
    keys = (lo * stride + hi).reshape(-1)  # [3T], flat index j = 3 t + k
    sk, perm = torch.sort(keys, stable=True)
    n = sk.shape[0]
    same_next = torch.zeros(n, dtype=torch.bool, device=tri.device)
    same_next[:-1] = sk[1:] == sk[:-1]
    same_prev = torch.zeros_like(same_next)
    same_prev[1:] = same_next[:-1]
    same_next2 = torch.zeros_like(same_next)
    same_next2[:-1] = same_next[1:]
    # i starts a group of exactly two: equal to next, not to previous, and next not equal to the one after
    pair = same_next & ~same_prev & ~same_next2
    i = torch.nonzero(pair, as_tuple=False).squeeze(1)
    j0, j1 = perm[i], perm[i + 1]
    third = tri[:, [2, 0, 1]].reshape(-1)  # the corner not on edge k: (k + 2) % 3
    opp = torch.full((3 * T,), -1, dtype=torch.int64, device=tri.device)
    opp[j0] = third[j1]
    opp[j1] = third[j0]
    return opp.view(T, 3).to(torch.int32)
