"""``custom-mesh``: a fixed triangle mesh from a file (OBJ, GLB/GLTF, PLY, ... anything trimesh reads), rendered by
``mesh-rasterizer`` and exported by ``explicit-mesh-exporter``.

Colour comes from one of (``texture``):

* ``mesh``: the file's own texture (UVs + base-colour image) or vertex colours, fixed. Features are the colour's
  logits, so the usual ``sigmoid`` colour activations of the materials give the file's colours back;
* ``field``: a hash-grid texture field over 3D positions, to be trained (threestudio's texturing of a given mesh);
* ``auto``: ``mesh`` when the file has a texture or vertex colours, else ``field``.

Placement: the mesh's ``shape_init_mesh_up`` / ``shape_init_mesh_front`` axes are turned to +z / +x (our world: z
up), and with ``shape_init_params`` set the mesh is centred (bounding box) and scaled so that its farthest vertex is
at that distance from the origin (threestudio's convention). Vertices that coincide are merged for the geometry
(the topology antialiasing sees), while UVs keep their own indices (``t_tex_idx``), so UV seams are not silhouettes.

``mesh_path`` (or threestudio's ``shape_init: mesh:<path>``) may be absolute, or relative to the repository root
(``load/shapes/...``) or to the current directory; a missing file is an error listing where it was looked for.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

import threestudio
from threestudio.models.geometry.base import BaseExplicitGeometry, contract_to_unisphere
from threestudio.models.geometry.schema import CustomMeshConfig
from threestudio.models.mesh import Mesh
from threestudio.models.networks import get_encoding, get_mlp
from threestudio.utils.imports import require
from threestudio.utils.log import info

_KEY = "system.geometry"
_AXES = {"+x": (0, 1.0), "-x": (0, -1.0), "+y": (1, 1.0), "-y": (1, -1.0), "+z": (2, 1.0), "-z": (2, -1.0)}


def resolve_mesh_path(path: str, key: str = f"{_KEY}.mesh_path") -> str:
    from threestudio.utils.extensions import REPO_ROOT

    path = os.path.expanduser(path)
    candidates: List[str] = [path] if os.path.isabs(path) else [os.path.join(REPO_ROOT, path),
                                                                 os.path.abspath(path)]
    for c in candidates:
        if os.path.isfile(c):
            return c
    raise FileNotFoundError(f"{key}: mesh file {path!r} not found; looked in: {', '.join(candidates)}. Give an "
                            f"absolute path, or one relative to the repository root (e.g. load/shapes/x.obj).")


def _axis_matrix(up: str, front: str) -> np.ndarray:
    """Rotation taking the mesh's ``up`` axis to +z and ``front`` to +x."""
    if up not in _AXES or front not in _AXES:
        raise ValueError(f"{_KEY}.shape_init_mesh_up/front must be one of {', '.join(_AXES)}, got {up!r}, {front!r}")
    if _AXES[up][0] == _AXES[front][0]:
        raise ValueError(f"{_KEY}: shape_init_mesh_up ({up}) and shape_init_mesh_front ({front}) must be different "
                         f"axes")
    u = np.zeros(3)
    u[_AXES[up][0]] = _AXES[up][1]
    f = np.zeros(3)
    f[_AXES[front][0]] = _AXES[front][1]
    s = np.cross(u, f)  # completes a right-handed frame: (front, side, up) -> (x, y, z)
    return np.stack([f, s, u])  # rows: new x, y, z in old coordinates


def load_mesh_file(path: str) -> Dict[str, Any]:
    """{v_pos [V, 3], faces [F, 3], uv (per file vertex) [V, 2] or None, texture [H, W, 3] in [0, 1] (row 0 = top,
    v = 1) or None, colors [V, 3] or None} as numpy arrays."""
    trimesh = require("trimesh", "loading meshes for custom-mesh", "pip install trimesh")
    try:
        mesh = trimesh.load(path, force="mesh", process=False)
    except Exception as e:
        raise ValueError(f"{_KEY}: trimesh could not read {path}: {e}") from e
    if not hasattr(mesh, "faces") or len(mesh.faces) == 0:
        raise ValueError(f"{_KEY}: {path} holds no triangles (a point cloud or an empty scene?).")
    out: Dict[str, Any] = {"v_pos": np.asarray(mesh.vertices, dtype=np.float64),
                           "faces": np.asarray(mesh.faces, dtype=np.int64), "uv": None, "texture": None,
                           "colors": None}
    vis = mesh.visual
    if getattr(vis, "kind", None) == "texture" and getattr(vis, "uv", None) is not None:
        mat = vis.material
        img = getattr(mat, "baseColorTexture", None) or getattr(mat, "image", None)
        if img is not None:
            out["uv"] = np.asarray(vis.uv, dtype=np.float64)
            out["texture"] = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
        else:
            color = getattr(mat, "baseColorFactor", None)
            if color is None:
                color = getattr(mat, "diffuse", None)
            if color is not None:
                c = np.asarray(color, dtype=np.float32)[:3] / (255.0 if np.asarray(color).max() > 1 else 1.0)
                out["colors"] = np.tile(c, (len(mesh.vertices), 1))
    elif getattr(vis, "kind", None) == "vertex":
        out["colors"] = np.asarray(vis.vertex_colors, dtype=np.float32)[:, :3] / 255.0
    return out


@threestudio.register("custom-mesh")
class CustomMesh(BaseExplicitGeometry):
    Config = CustomMeshConfig

    cfg: Config

    def configure(self) -> None:
        super().configure()
        cfg = self.cfg
        path = cfg.mesh_path
        if path is None and cfg.shape_init:
            if not str(cfg.shape_init).startswith("mesh:"):
                raise ValueError(f"{_KEY}.shape_init: custom-mesh takes 'mesh:<path>' (or set {_KEY}.mesh_path), got "
                                 f"{cfg.shape_init!r}")
            path = str(cfg.shape_init)[len("mesh:"):]
        if not path:
            raise ValueError(f"{_KEY}.mesh_path: custom-mesh needs a mesh file (OBJ, GLB, PLY, ...): set "
                             f"{_KEY}.mesh_path=<file> (or threestudio's shape_init=mesh:<file>).")
        if cfg.texture not in ("auto", "mesh", "field"):
            raise ValueError(f"{_KEY}.texture: unknown {cfg.texture!r}; choose auto, mesh or field")
        self.mesh_file = resolve_mesh_path(path)
        data = load_mesh_file(self.mesh_file)
        v = data["v_pos"] @ _axis_matrix(cfg.shape_init_mesh_up, cfg.shape_init_mesh_front).T
        if cfg.shape_init_params is not None:
            center = 0.5 * (v.min(0) + v.max(0))
            v = v - center
            v = v / max(np.linalg.norm(v, axis=1).max(), 1e-12) * float(cfg.shape_init_params)
        # merge coincident vertices for the geometry; keep per-file-vertex UVs with their own face indices
        uniq, inverse = np.unique(np.round(v, 9), axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        first = np.zeros(len(uniq), dtype=np.int64)
        first[inverse[::-1]] = np.arange(len(v))[::-1]
        faces = data["faces"]
        self.register_buffer("v_pos", torch.as_tensor(v[first], dtype=torch.float32))
        self.register_buffer("t_pos_idx", torch.as_tensor(inverse[faces], dtype=torch.long))
        mode = cfg.texture
        has_tex = data["texture"] is not None or data["colors"] is not None
        if mode == "auto":
            mode = "mesh" if has_tex else "field"
        if mode == "mesh" and not has_tex:
            raise ValueError(f"{_KEY}.texture=mesh: {self.mesh_file} has no texture image or vertex colours; use "
                             f"texture: field to learn one.")
        self.texture_mode = mode
        if mode == "mesh":
            if data["texture"] is not None:
                self.register_buffer("v_tex", torch.as_tensor(data["uv"], dtype=torch.float32))
                self.register_buffer("t_tex_idx", torch.as_tensor(faces, dtype=torch.long))
                # stored for our texture op: row 0 at v = 0 (the file's image has row 0 at v = 1)
                tex = torch.as_tensor(np.ascontiguousarray(data["texture"][::-1]), dtype=torch.float32)
                self.register_buffer("texture_image", tex[None])
            else:  # vertex colours: a per-vertex "texture" on the merged vertices
                colors = torch.zeros(len(uniq), 3)
                colors[torch.as_tensor(inverse)] = torch.as_tensor(data["colors"], dtype=torch.float32)
                self.register_buffer("vertex_colors", colors)
        else:
            self.encoding = get_encoding(cfg.n_input_dims, cfg.pos_encoding_config)
            self.feature_network = get_mlp(self.encoding.n_output_dims, cfg.n_feature_dims, cfg.mlp_network_config)
        info(f"custom-mesh: {self.mesh_file}: {self.v_pos.shape[0]} vertices, {self.t_pos_idx.shape[0]} faces, "
             f"colour from {'the file' if mode == 'mesh' else 'a texture field'}")

    # ------------------------------------------------------------------ the mesh
    def isosurface(self) -> Mesh:
        extras: Dict[str, Any] = {}
        if self.texture_mode == "mesh" and hasattr(self, "texture_image"):
            extras.update(v_tex=self.v_tex, t_tex_idx=self.t_tex_idx)
        return Mesh(self.v_pos, self.t_pos_idx, **extras)

    # ------------------------------------------------------------------ colour
    @staticmethod
    def _logit(rgb: torch.Tensor, n: int) -> torch.Tensor:
        x = torch.logit(rgb.clamp(1e-4, 1 - 1e-4))
        if n > x.shape[-1]:
            x = F.pad(x, (0, n - x.shape[-1]))
        return x[..., :n]

    def uv_features(self, uv: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Features at texture coordinates [N, 2] (file convention: v up) from the file's texture."""
        from threestudio.ops.rasterize import texture

        rgb = texture(self.texture_image, uv[None, None], filter_mode="linear", boundary_mode="wrap")[0, 0]
        return {"features": self._logit(rgb, self.cfg.n_feature_dims)}

    def forward(self, points: torch.Tensor, output_normal: bool = False) -> Dict[str, torch.Tensor]:
        if self.texture_mode == "field":
            x = contract_to_unisphere(points, self.bbox)
            enc = self.encoding(x.reshape(-1, self.cfg.n_input_dims))
            return {"features": self.feature_network(enc).reshape(*points.shape[:-1], -1)}
        if hasattr(self, "vertex_colors"):
            return {"features": self._logit(self._nearest_vertex_colors(points), self.cfg.n_feature_dims)}
        raise RuntimeError("custom-mesh with a texture image is shaded through uv_features (the renderer "
                           "interpolates UVs); position queries need texture: field")

    def _nearest_vertex_colors(self, points: torch.Tensor) -> torch.Tensor:
        flat = points.reshape(-1, 3)
        out = []
        for i in range(0, flat.shape[0], 4096):
            d = torch.cdist(flat[i:i + 4096], self.v_pos)
            out.append(self.vertex_colors[d.argmin(1)])
        return torch.cat(out).reshape(*points.shape[:-1], 3)

    def export(self, points: torch.Tensor, **kwargs: Any) -> Dict[str, torch.Tensor]:
        return self(points)

    def textured_mesh(self) -> Optional[Tuple[torch.Tensor, ...]]:
        """(v_pos, t_pos_idx, v_tex, t_tex_idx, texture [H, W, 3] with row 0 at v = 1) when the file has a texture."""
        if self.texture_mode != "mesh" or not hasattr(self, "texture_image"):
            return None
        return self.v_pos, self.t_pos_idx, self.v_tex, self.t_tex_idx, self.texture_image[0].flip(0)
