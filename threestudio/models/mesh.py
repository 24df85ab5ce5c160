"""A triangle mesh container shared by geometries, renderers and exporters."""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F

from threestudio.utils.misc import constant


class Mesh:
    """``v_pos`` [V, 3] float, ``t_pos_idx`` [F, 3] long; optional UVs (``v_tex`` [T, 2], ``t_tex_idx`` [F, 3]),
    vertex colours ``v_rgb`` [V, 3] and ``extras`` (e.g. regularisation terms from the isosurface)."""

    def __init__(self, v_pos: torch.Tensor, t_pos_idx: torch.Tensor, **extras: Any) -> None:
        self.v_pos = v_pos
        self.t_pos_idx = t_pos_idx.long()
        self.v_tex: Optional[torch.Tensor] = extras.pop("v_tex", None)
        self.t_tex_idx: Optional[torch.Tensor] = extras.pop("t_tex_idx", None)
        self.v_rgb: Optional[torch.Tensor] = extras.pop("v_rgb", None)
        self._v_nrm: Optional[torch.Tensor] = None
        self.extras: Dict[str, Any] = extras

    def __repr__(self) -> str:
        return f"Mesh(vertices={self.v_pos.shape[0]}, faces={self.t_pos_idx.shape[0]})"

    @property
    def device(self) -> torch.device:
        return self.v_pos.device

    @property
    def v_nrm(self) -> torch.Tensor:
        """Area-weighted vertex normals [V, 3] (outward for counter-clockwise faces)."""
        if self._v_nrm is None:
            self._v_nrm = vertex_normals(self.v_pos, self.t_pos_idx)
        return self._v_nrm

    def face_normals(self) -> torch.Tensor:
        v = self.v_pos[self.t_pos_idx]
        return F.normalize(torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1), dim=-1)

    def area(self) -> torch.Tensor:
        v = self.v_pos[self.t_pos_idx]
        return 0.5 * torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1).norm(dim=-1).sum()

    def normal_consistency(self) -> torch.Tensor:
        """Mean (1 - cos) between the normals of faces that share an edge (threestudio's name)."""
        from threestudio.ops.mesh_regularizers import normal_consistency

        return normal_consistency(self.v_pos, self.t_pos_idx)

    def laplacian(self) -> torch.Tensor:
        """Uniform-Laplacian smoothness: mean squared offset of vertices from their neighbours' centroid."""
        from threestudio.ops.mesh_regularizers import laplacian_smooth_loss

        return laplacian_smooth_loss(self.v_pos, self.t_pos_idx)

    def remove_outliers(self, outlier_n_faces_threshold: float) -> "Mesh":
        """Drop connected components with fewer faces than the threshold (a fraction of all faces if < 1)."""
        import numpy as np
        import trimesh

        if self.t_pos_idx.shape[0] == 0:
            return self
        mesh = trimesh.Trimesh(self.v_pos.detach().cpu().numpy(), self.t_pos_idx.cpu().numpy(), process=False)
        labels = trimesh.graph.connected_component_labels(mesh.face_adjacency, node_count=len(mesh.faces))
        counts = np.bincount(labels)
        thr = outlier_n_faces_threshold * len(mesh.faces) if outlier_n_faces_threshold < 1 else outlier_n_faces_threshold
        keep_faces = torch.as_tensor(counts[labels] >= thr, device=self.device)
        if bool(keep_faces.all()):
            return self
        faces = self.t_pos_idx[keep_faces]
        used = torch.unique(faces)
        remap = torch.full((self.v_pos.shape[0],), -1, dtype=torch.long, device=self.device)
        remap[used] = torch.arange(used.shape[0], device=self.device)
        return Mesh(self.v_pos[used], remap[faces], **self.extras)

    def to_trimesh(self) -> Any:
        import trimesh

        return trimesh.Trimesh(self.v_pos.detach().cpu().numpy(), self.t_pos_idx.cpu().numpy(), process=False)


def vertex_normals(v_pos: torch.Tensor, t_pos_idx: torch.Tensor) -> torch.Tensor:
    i0, i1, i2 = t_pos_idx[:, 0], t_pos_idx[:, 1], t_pos_idx[:, 2]
    v0, v1, v2 = v_pos[i0], v_pos[i1], v_pos[i2]
    fn = torch.cross(v1 - v0, v2 - v0, dim=-1)  # length = 2 * area: area weighting
    n = torch.zeros_like(v_pos)
    for idx in (i0, i1, i2):
        n = n.index_add(0, idx, fn)
    fallback = constant([0.0, 0.0, 1.0], v_pos.device, v_pos.dtype)
    n = torch.where(n.norm(dim=-1, keepdim=True) > 1e-20, n, fallback)
    return F.normalize(n, dim=-1)
