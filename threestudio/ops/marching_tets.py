"""Differentiable marching tetrahedra (DMTet's isosurface), in plain PyTorch.

Convention: **negative SDF is inside** (as ``implicit-sdf``). A tetrahedron with mixed signs at its corners holds
one triangle (one corner on its own side) or two (two and two). The surface crosses a grid edge ``(a, b)`` whose
corners have opposite signs at the linear zero crossing ``p = (x_b s_a - x_a s_b) / (s_a - s_b)``, which is
differentiable in the SDF values ``s`` and in the (deformed) grid positions ``x``; everything else (which tets,
which edges, the connectivity) is discrete and computed without gradients.

Vertices on an edge are shared by all tetrahedra around it, so on a conforming grid the result is a closed,
consistently oriented manifold (unless the surface reaches the grid's boundary). Faces are wound counter-clockwise
seen from outside: normals point from negative to positive SDF. The triangle table is derived at import time from a
reference tetrahedron (no hand-typed table); it assumes positively oriented tetrahedra, as
:mod:`threestudio.ops.tetrahedra` generates.
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch

from threestudio.utils.misc import constant

# local edges of a tetrahedron, by corner pairs
TET_EDGES = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))


def _build_tables() -> Tuple[torch.Tensor, torch.Tensor]:
    """TRI_TABLE [16, 2, 3] (local edge ids, -1 padded) and NUM_TRI [16] for corner-inside bit codes."""
    P = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)  # positively oriented
    eid = {frozenset(e): i for i, e in enumerate(TET_EDGES)}
    table = torch.full((16, 2, 3), -1, dtype=torch.long)
    count = torch.zeros(16, dtype=torch.long)
    for code in range(16):
        inside = [k for k in range(4) if code >> k & 1]
        outside = [k for k in range(4) if not code >> k & 1]
        if len(inside) in (0, 4):
            continue
        if len(inside) == 1 or len(outside) == 1:
            lone, rest = (inside[0], outside) if len(inside) == 1 else (outside[0], inside)
            polys = [[eid[frozenset((lone, r))] for r in rest]]
        else:
            i0, i1 = inside
            o0, o1 = outside
            q = [eid[frozenset((i0, o0))], eid[frozenset((i0, o1))], eid[frozenset((i1, o1))],
                 eid[frozenset((i1, o0))]]
            polys = [[q[0], q[1], q[2]], [q[0], q[2], q[3]]]
        out_dir = P[outside].mean(0) - P[inside].mean(0)
        for j, tri in enumerate(polys):
            mids = torch.stack([P[list(TET_EDGES[e])].mean(0) for e in tri])
            n = torch.cross(mids[1] - mids[0], mids[2] - mids[0], dim=0)
            if float(n @ out_dir) < 0:
                tri = [tri[0], tri[2], tri[1]]
            table[code, j] = torch.tensor(tri)
        count[code] = len(polys)
    return table, count


TRI_TABLE, NUM_TRI = _build_tables()


def marching_tets(pos: torch.Tensor, sdf: torch.Tensor, tets: torch.Tensor
                  ) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
    """Extract the zero level set of ``sdf`` [N] on the tetrahedral grid (``pos`` [N, 3], ``tets`` [T, 4]).

    Returns ``(vertices [M, 3], faces [F, 3] long, extras)`` with extras ``edges`` [M, 2]: the grid vertices of the
    edge each output vertex lies on (the sign-changing edges, also what the SDF regulariser uses).
    """
    if sdf.dim() == 2 and sdf.shape[-1] == 1:
        sdf = sdf[:, 0]
    dev = pos.device
    N = pos.shape[0]
    with torch.no_grad():
        occ = sdf.detach() < 0
        occ_t = occ[tets]  # [T, 4]
        n_in = occ_t.sum(1)
        valid = (n_in > 0) & (n_in < 4)
        vt = tets[valid]
        code = (occ_t[valid].long() * constant([1, 2, 4, 8], dev)).sum(1)
        edges = vt[:, constant(TET_EDGES, dev)]  # [Tv, 6, 2]
        lo = torch.minimum(edges[..., 0], edges[..., 1])
        hi = torch.maximum(edges[..., 0], edges[..., 1])
        uniq, inv = torch.unique((lo * N + hi).reshape(-1), return_inverse=True)
        ea, eb = torch.div(uniq, N, rounding_mode="floor"), uniq % N
        cross = occ[ea] != occ[eb]
        new_idx = torch.cumsum(cross.long(), 0) - 1
        new_idx = torch.where(cross, new_idx, torch.full_like(new_idx, -1))
        idx_map = new_idx[inv].view(-1, 6)  # [Tv, 6]
        ntri = NUM_TRI.to(dev)[code]
        tab = TRI_TABLE.to(dev)[code]  # [Tv, 2, 3]
        f1 = torch.gather(idx_map, 1, tab[:, 0].clamp(min=0))[ntri >= 1]
        f2 = torch.gather(idx_map, 1, tab[:, 1].clamp(min=0))[ntri >= 2]
        faces = torch.cat([f1, f2], 0)
        a, b = ea[cross], eb[cross]
    sa, sb = sdf[a], sdf[b]
    denom = sa - sb
    verts = (pos[b] * sa[:, None] - pos[a] * sb[:, None]) / denom[:, None]
    return verts, faces, {"edges": torch.stack([a, b], 1)}


def sdf_sign_consistency_loss(sdf: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """GET3D's SDF regulariser over sign-changing grid edges ``edges`` [E, 2]: a binary cross-entropy that pushes
    each endpoint's inside-probability ``sigmoid(-s)`` towards the other endpoint's side, which removes floaters
    and internal faces. Zero when there are no such edges."""
    if edges.shape[0] == 0:
        return sdf.sum() * 0.0
    import torch.nn.functional as F

    sa, sb = sdf[edges[:, 0]], sdf[edges[:, 1]]
    ta, tb = (sa.detach() < 0).float(), (sb.detach() < 0).float()
    return (F.binary_cross_entropy_with_logits(-sa, tb) + F.binary_cross_entropy_with_logits(-sb, ta))
