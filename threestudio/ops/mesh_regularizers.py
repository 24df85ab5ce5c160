"""Smoothness regularisers of triangle meshes (for DMTet / FlexiCubes refinement), pure PyTorch.

* :func:`normal_consistency`: mean ``1 - cos`` of the angle between the normals of the two faces of every edge
  shared by exactly two faces (0 for a flat surface).
* :func:`laplacian_smooth_loss`: mean squared distance of each vertex from the centroid of its neighbours (the
  uniform Laplacian; 0 when every vertex is the average of its neighbours).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _edge_face_pairs(t_pos_idx: torch.Tensor):
    F_ = t_pos_idx.shape[0]
    e = torch.cat([t_pos_idx[:, [0, 1]], t_pos_idx[:, [1, 2]], t_pos_idx[:, [2, 0]]], 0)
    lo, hi = torch.minimum(e[:, 0], e[:, 1]), torch.maximum(e[:, 0], e[:, 1])
    n = int(t_pos_idx.max()) + 1 if t_pos_idx.numel() else 1
    key = lo * n + hi
    face = torch.arange(F_, device=t_pos_idx.device).repeat(3)
    sk, perm = torch.sort(key, stable=True)
    same = sk[1:] == sk[:-1]
    prev_same = torch.cat([torch.zeros(1, dtype=torch.bool, device=key.device), same[:-1]])
    next_same = torch.cat([same[1:], torch.zeros(1, dtype=torch.bool, device=key.device)])
    pair = same & ~prev_same & ~next_same  # groups of exactly two faces
    i = torch.nonzero(pair, as_tuple=False).squeeze(1)
    return face[perm[i]], face[perm[i + 1]]


def normal_consistency(v_pos: torch.Tensor, t_pos_idx: torch.Tensor) -> torch.Tensor:
    if t_pos_idx.shape[0] == 0:
        return v_pos.sum() * 0.0
    v = v_pos[t_pos_idx]
    n = F.normalize(torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1), dim=-1)
    f0, f1 = _edge_face_pairs(t_pos_idx)
    if f0.numel() == 0:
        return v_pos.sum() * 0.0
    return (1 - (n[f0] * n[f1]).sum(-1)).mean()


def laplacian_smooth_loss(v_pos: torch.Tensor, t_pos_idx: torch.Tensor) -> torch.Tensor:
    if t_pos_idx.shape[0] == 0:
        return v_pos.sum() * 0.0
    e = torch.cat([t_pos_idx[:, [0, 1]], t_pos_idx[:, [1, 2]], t_pos_idx[:, [2, 0]]], 0)
    e = torch.cat([e, e.flip(1)], 0)
    lo_hi = torch.unique(e[:, 0] * v_pos.shape[0] + e[:, 1])  # each undirected edge once per direction
    src, dst = torch.div(lo_hi, v_pos.shape[0], rounding_mode="floor"), lo_hi % v_pos.shape[0]
    deg = torch.zeros(v_pos.shape[0], dtype=v_pos.dtype, device=v_pos.device).index_add(
        0, src, torch.ones_like(src, dtype=v_pos.dtype))
    nsum = torch.zeros_like(v_pos).index_add(0, src, v_pos[dst])
    used = deg > 0
    lap = v_pos[used] - nsum[used] / deg[used, None]
    return (lap**2).sum(-1).mean()
