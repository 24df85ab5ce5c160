"""FlexiCubes (Shen et al. 2023): a dual marching cubes isosurface with learnable weights, in plain PyTorch.

Same sign convention as :mod:`threestudio.ops.marching_tets` (negative SDF inside), on the cube lattice of
:mod:`threestudio.ops.tetrahedra` (``cube_corners``: corner ``c`` at offset ``(c&1, c>>1&1, c>>2&1)``).

Per surface cube (corners of both signs):

* its sign-changing edges are grouped into *patches* (the polygons marching cubes would put in the cube); each
  patch is one dual vertex. The grouping is derived at import time: on a cube face with two sign changes they are
  joined; on an ambiguous face (four) each inside corner is cut off on its own. The rule depends on the face's
  corner signs only, so neighbouring cubes agree and the mesh is closed;
* edge crossing ``u_e = (s_i a_i x_j - s_j a_j x_i) / (s_i a_i - s_j a_j)`` with per-cube corner weights ``a``
  (``alpha``);
* dual vertex ``v_d = sum_e b_e u_e / sum_e b_e`` over the patch's edges, with per-cube edge weights ``b``
  (``beta``).

Every sign-changing lattice edge shared by four cubes gives a quad of their dual vertices, oriented outwards. For
extraction (``training=False``) it is split along the diagonal with the larger product of the per-cube weights
``gamma``; for training it becomes four triangles around ``(g02 m02 + g13 m13) / (g02 + g13)`` (``m`` the diagonal
midpoints, ``g`` the products of gamma), which keeps every weight in the gradient path.

Regularisers (GET3D's FlexiCubes terms): ``L_dev`` (mean absolute deviation of each dual vertex's distances to its
edge crossings) and the weights' mean square, returned in the extras.

Not implemented: the neighbour check that FlexiCubes applies to two ambiguous cube configurations (C16/C19) and
the QEF vertex placement; a rare configuration can then leave a non-manifold vertex.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from threestudio.ops.tetrahedra import CORNER_OFFSETS

# the 12 cube edges as corner pairs (lower corner first) and their axis
CUBE_EDGES = ((0, 1), (2, 3), (4, 5), (6, 7), (0, 2), (1, 3), (4, 6), (5, 7), (0, 4), (1, 5), (2, 6), (3, 7))
EDGE_AXIS = (0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2)


def _faces():
    """The 6 faces: corners in cyclic order."""
    out = []
    for a in range(3):
        b, c = (a + 1) % 3, (a + 2) % 3
        for side in (0, 1):
            cyc = []
            for ob, oc in ((0, 0), (1, 0), (1, 1), (0, 1)):
                cyc.append((side << a) | (ob << b) | (oc << c))
            out.append(cyc)
    return out


def _build_tables() -> Tuple[torch.Tensor, torch.Tensor]:
    """PATCH [256, 12] (patch index of each sign-changing edge, -1 otherwise) and NUM_PATCH [256]."""
    eid = {frozenset(e): i for i, e in enumerate(CUBE_EDGES)}
    faces = _faces()
    patch = torch.full((256, 12), -1, dtype=torch.long)
    npatch = torch.zeros(256, dtype=torch.long)
    for case in range(256):
        inside = [(case >> c) & 1 for c in range(8)]
        crossing = [inside[a] != inside[b] for a, b in CUBE_EDGES]
        parent = list(range(12))

        def find(x: int) -> int:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for cyc in faces:
            fe = [eid[frozenset((cyc[i], cyc[(i + 1) % 4]))] for i in range(4)]  # edge i joins corners i, i+1
            cr = [crossing[e] for e in fe]
            if sum(cr) == 2:
                a, b = [fe[i] for i in range(4) if cr[i]]
                parent[find(a)] = find(b)
            elif sum(cr) == 4:
                for i in range(4):  # cut off each inside corner: join its two edges (i - 1 and i)
                    if inside[cyc[i]]:
                        parent[find(fe[(i - 1) % 4])] = find(fe[i])
        roots = []
        for e in range(12):
            if crossing[e]:
                r = find(e)
                if r not in roots:
                    roots.append(r)
                patch[case, e] = roots.index(r)
        npatch[case] = len(roots)
    return patch, npatch


PATCH_TABLE, NUM_PATCH = _build_tables()
_EDGES_T = torch.tensor(CUBE_EDGES, dtype=torch.long)
_AXIS_T = torch.tensor(EDGE_AXIS, dtype=torch.long)


def _quad_slot() -> torch.Tensor:
    """[12] position (0..3, counter-clockwise around the edge's axis) of a cube around each of its edges."""
    out = []
    for (ca, _), a in zip(CUBE_EDGES, EDGE_AXIS):
        b, c = (a + 1) % 3, (a + 2) % 3
        ob, oc = int(CORNER_OFFSETS[ca, b]), int(CORNER_OFFSETS[ca, c])
        out.append({(0, 0): 0, (1, 0): 1, (1, 1): 2, (0, 1): 3}[(ob, oc)])
    return torch.tensor(out, dtype=torch.long)


_SLOT_T = _quad_slot()


def normalize_weights(raw: torch.Tensor, weight_scale: float = 0.5) -> Tuple[torch.Tensor, ...]:
    """Per-cube raw weights [C, 21] -> (beta [C, 12], alpha [C, 8], gamma [C]): beta and alpha in
    ``1 +- weight_scale`` (tanh), gamma in ``0.5 +- weight_scale / 2`` (sigmoid); raw zeros give 1, 1, 0.5."""
    beta = torch.tanh(raw[:, :12]) * weight_scale + 1
    alpha = torch.tanh(raw[:, 12:20]) * weight_scale + 1
    gamma = torch.sigmoid(raw[:, 20]) * weight_scale + (1 - weight_scale) / 2
    return beta, alpha, gamma


def flexicubes(pos: torch.Tensor, sdf: torch.Tensor, cubes: torch.Tensor, n: int,
               beta: Optional[torch.Tensor] = None, alpha: Optional[torch.Tensor] = None,
               gamma: Optional[torch.Tensor] = None, training: bool = False
               ) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
    """Extract the zero level set of ``sdf`` [N] on the lattice of ``n`` cubes per side.

    Args:
        pos: [N, 3] (possibly deformed) lattice vertices, N = (n + 1)^3.
        cubes: [n^3, 8] corner indices (``tetrahedra.cube_corners(n)``).
        beta, alpha, gamma: per-cube weights [C, 12], [C, 8], [C] (positive; None: ones).
        training: four triangles per quad around a weighted centre (else two).
    Returns:
        ``(vertices, faces, extras)``; extras: ``edges`` [E, 2] sign-changing lattice edges, ``l_dev`` (scalar),
        ``weight_reg`` (mean square of the weights' deviation from their neutral values; 0 without weights).
    """
    if sdf.dim() == 2 and sdf.shape[-1] == 1:
        sdf = sdf[:, 0]
    dev = pos.device
    patch_t, npatch_t = PATCH_TABLE.to(dev), NUM_PATCH.to(dev)
    edges_t, axis_t, slot_t = _EDGES_T.to(dev), _AXIS_T.to(dev), _SLOT_T.to(dev)
    with torch.no_grad():
        occ = sdf.detach() < 0
        occ_c = occ[cubes]  # [C, 8]
        case = (occ_c.long() * (2 ** torch.arange(8, device=dev))).sum(1)
        surf = (case > 0) & (case < 255)
        sc_idx = torch.nonzero(surf, as_tuple=False).squeeze(1)  # surface cubes
        sc_case = case[sc_idx]
        npat = npatch_t[sc_case]
        first_dual = torch.cumsum(npat, 0) - npat  # [S]
        n_dual = int(npat.sum())
        pe = patch_t[sc_case]  # [S, 12]
        ent_s, ent_e = torch.nonzero(pe >= 0, as_tuple=True)  # (surface cube, local edge) entries
        dual_id = first_dual[ent_s] + pe[ent_s, ent_e]
        cube_id = sc_idx[ent_s]
        ca, cb = edges_t[ent_e, 0], edges_t[ent_e, 1]
        va, vb = cubes[cube_id, ca], cubes[cube_id, cb]  # lattice vertex ids (va lower along the axis)
        gedge = va * 3 + axis_t[ent_e]
    # crossing points (differentiable in pos, sdf, alpha)
    sa, sb = sdf[va], sdf[vb]
    if alpha is not None:
        sa = sa * alpha[cube_id, ca]
        sb = sb * alpha[cube_id, cb]
    u = (pos[vb] * sa[:, None] - pos[va] * sb[:, None]) / (sa - sb)[:, None]
    bw = beta[cube_id, ent_e] if beta is not None else torch.ones_like(sa)
    num = torch.zeros(n_dual, 3, dtype=u.dtype, device=dev).index_add(0, dual_id, bw[:, None] * u)
    den = torch.zeros(n_dual, dtype=u.dtype, device=dev).index_add(0, dual_id, bw)
    v_dual = num / den[:, None]
    # L_dev: mean absolute deviation of the distances from each dual vertex to its crossings
    dist = (u - v_dual[dual_id]).norm(dim=-1)
    cnt = torch.zeros(n_dual, dtype=u.dtype, device=dev).index_add(0, dual_id, torch.ones_like(dist))
    mean_d = torch.zeros(n_dual, dtype=u.dtype, device=dev).index_add(0, dual_id, dist) / cnt.clamp(min=1)
    dev_v = torch.zeros(n_dual, dtype=u.dtype, device=dev).index_add(0, dual_id, (dist - mean_d[dual_id]).abs())
    l_dev = (dev_v / cnt.clamp(min=1)).mean() if n_dual > 0 else sdf.sum() * 0
    # quads: group the entries of each lattice edge (4 cubes around it)
    with torch.no_grad():
        uniq, inv = torch.unique(gedge, return_inverse=True)
        quads = torch.full((uniq.shape[0], 4), -1, dtype=torch.long, device=dev)
        quads[inv, slot_t[ent_e]] = dual_id
        lower_in = torch.zeros(uniq.shape[0], dtype=torch.bool, device=dev)
        lower_in[inv] = occ[va]
        edge_ab = torch.zeros(uniq.shape[0], 2, dtype=torch.long, device=dev)
        edge_ab[inv] = torch.stack([va, vb], 1)
        full = (quads >= 0).all(1)
        quads, lower_in = quads[full], lower_in[full]
        # CCW around +axis gives a normal along +axis: outward when the lower vertex is inside
        quads = torch.where(lower_in[:, None], quads, quads.flip(1))
    if gamma is not None:
        g_dual = torch.zeros(n_dual, dtype=v_dual.dtype, device=dev)
        g_dual[dual_id] = gamma[cube_id].to(v_dual.dtype)
    else:
        g_dual = torch.ones(n_dual, dtype=v_dual.dtype, device=dev)
    q0, q1, q2, q3 = quads.unbind(1)
    if training:
        g02 = g_dual[q0] * g_dual[q2]
        g13 = g_dual[q1] * g_dual[q3]
        mid = ((v_dual[q0] + v_dual[q2]) * 0.5 * g02[:, None] + (v_dual[q1] + v_dual[q3]) * 0.5 * g13[:, None]) / (
            g02 + g13)[:, None]
        c = torch.arange(quads.shape[0], device=dev) + n_dual
        verts = torch.cat([v_dual, mid], 0)
        faces = torch.cat([torch.stack([q0, q1, c], 1), torch.stack([q1, q2, c], 1), torch.stack([q2, q3, c], 1),
                           torch.stack([q3, q0, c], 1)], 0)
    else:
        with torch.no_grad():
            split02 = (g_dual[q0] * g_dual[q2]) >= (g_dual[q1] * g_dual[q3])
        fa = torch.where(split02[:, None], torch.stack([q0, q1, q2], 1), torch.stack([q1, q2, q3], 1))
        fb = torch.where(split02[:, None], torch.stack([q0, q2, q3], 1), torch.stack([q1, q3, q0], 1))
        verts, faces = v_dual, torch.cat([fa, fb], 0)
    reg = sdf.sum() * 0
    if beta is not None:
        reg = reg + ((beta - 1) ** 2).mean()
    if alpha is not None:
        reg = reg + ((alpha - 1) ** 2).mean()
    if gamma is not None:
        reg = reg + ((gamma - 0.5) ** 2).mean()
    with torch.no_grad():
        crossing_edges = edge_ab[occ[edge_ab[:, 0]] != occ[edge_ab[:, 1]]]
    return verts, faces, {"edges": crossing_edges, "l_dev": l_dev, "weight_reg": reg}
