"""Meshes in, RGBA views out: loading and normalising a mesh, rendering it with our rasterizer, and a generator of
procedural coloured meshes (so that data can be made without any download).

* :func:`load_object_mesh`: any file trimesh reads (vertex colours, a base-colour texture or a flat colour; grey
  without colour), turned so that its ``up`` axis is +z, centred (bounding box) and scaled so that its farthest
  vertex is at ``radius`` from the origin.
* :func:`render_mesh`: RGBA (straight colour, alpha with analytically anti-aliased silhouettes), surface points and
  normals of the mesh seen from OpenGL cameras, through :mod:`threestudio.ops.rasterize` (``supersample`` renders at
  s x s the size and averages).
* :func:`make_procedural_meshes`: random unions of 1-3 of the quick-start scene's SDF primitives
  (:mod:`threestudio.data.synthetic_scene`: spheres, rounded boxes, tori, cylinders with smooth procedural
  textures), meshed by our marching cubes, with the scene's Lambert shading baked into vertex colours; written as
  PLY files.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

MESH_EXTENSIONS = (".obj", ".ply", ".glb", ".gltf", ".off", ".stl")


@dataclass
class ObjectMesh:
    v_pos: torch.Tensor  # [V, 3] float32
    faces: torch.Tensor  # [F, 3] int64
    colors: Optional[torch.Tensor] = None  # [V, 3] in [0, 1]
    uv: Optional[torch.Tensor] = None  # [V, 2]
    texture: Optional[torch.Tensor] = None  # [H, W, 3], row 0 = top (v = 1)

    def transformed(self, M: torch.Tensor) -> "ObjectMesh":
        """The mesh with its vertices mapped by the 4 x 4 matrix M."""
        v = self.v_pos @ M[:3, :3].T.to(self.v_pos) + M[:3, 3].to(self.v_pos)
        return ObjectMesh(v, self.faces, self.colors, self.uv, self.texture)


def list_meshes(folder: str) -> List[str]:
    """Mesh files directly in ``folder`` (sorted by name)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"mesh folder {folder!r} does not exist")
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if f.lower().endswith(MESH_EXTENSIONS) and os.path.isfile(os.path.join(folder, f)))


def load_object_mesh(path: str, radius: float = 0.45, up: str = "+z", front: str = "+x") -> ObjectMesh:
    from threestudio.models.geometry.custom_mesh import _axis_matrix, load_mesh_file

    m = load_mesh_file(path)
    v = m["v_pos"] @ _axis_matrix(up, front).T
    lo, hi = v.min(0), v.max(0)
    v = v - 0.5 * (lo + hi)
    far = float(np.linalg.norm(v, axis=-1).max())
    if far <= 0:
        raise ValueError(f"{path}: the mesh is a single point")
    v = v * (radius / far)
    to = lambda a: None if a is None else torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
    uv, tex = to(m["uv"]), to(m["texture"])
    colors = to(m["colors"])
    if colors is None and tex is None:
        colors = torch.full((len(v), 3), 0.7)
    return ObjectMesh(to(v), torch.as_tensor(m["faces"], dtype=torch.int64), colors, uv, tex)


def render_mesh(mesh: ObjectMesh, c2w: torch.Tensor, fovy_deg: float, height: int, width: int,
                supersample: int = 1, near: float = 0.05, far: float = 10.0, backend: str = "auto"
                ) -> Dict[str, torch.Tensor]:
    """Render ``mesh`` from OpenGL cameras c2w [C, 4, 4] (same frame as its vertices).

    Returns ``rgba`` [C, H, W, 4] (straight colour, 0 where empty; averaged over s x s samples), and at the centre
    sample of each pixel (no supersampling): ``points`` [C, H, W, 3] (surface point), ``normals`` [C, H, W, 3]
    (unit face normals, turned towards the camera), ``mask`` [C, H, W] (bool).
    """
    from threestudio.ops import rasterize as R
    from threestudio.ops.cameras import perspective_projection, world_to_camera

    dev = c2w.device
    v, tri = mesh.v_pos.to(dev), mesh.faces.to(dev).int()
    fovy = torch.full((c2w.shape[0],), math.radians(fovy_deg), device=dev)
    proj = perspective_projection(fovy, width / height, near, far, flip_y=True)
    mvp = proj @ world_to_camera(c2w.float())
    pos = torch.cat([v, torch.ones_like(v[:, :1])], -1)[None] @ mvp.transpose(-1, -2)
    s = max(1, int(supersample))
    topo = R.antialias_construct_topology_hash(tri, backend=backend)

    def shade(h: int, w: int) -> Dict[str, torch.Tensor]:
        rast, _ = R.rasterize(pos, tri, (h, w), grad_db=False, backend=backend)
        mask = rast[..., 3] > 0
        if mesh.colors is not None:
            col, _ = R.interpolate(mesh.colors.to(dev), rast, tri, backend=backend)
        else:
            uv, _ = R.interpolate(mesh.uv.to(dev), rast, tri, backend=backend)
            tex = mesh.texture.to(dev).flip(0)[None].expand(c2w.shape[0], -1, -1, -1).contiguous()
            col = R.texture(tex, uv.contiguous())
        rgba = torch.cat([col.clamp(0, 1), torch.ones_like(col[..., :1])], -1) * mask[..., None]
        rgba = R.antialias(rgba.contiguous(), rast, pos, tri, topology_hash=topo, backend=backend)
        return {"rast": rast, "mask": mask, "rgba": rgba}

    hi = shade(height * s, width * s)
    rgba = hi["rgba"]
    if s > 1:
        rgba = F.avg_pool2d(rgba.permute(0, 3, 1, 2), s).permute(0, 2, 3, 1)
    # straight (not premultiplied) colour
    a = rgba[..., 3:]
    rgb = torch.where(a > 1e-6, rgba[..., :3] / a.clamp_min(1e-6), torch.zeros_like(rgba[..., :3]))
    rgba = torch.cat([rgb.clamp(0, 1), rgba[..., 3:].clamp(0, 1)], -1)
    lo = hi if s == 1 else shade(height, width)
    rast, mask = lo["rast"], lo["mask"]
    points, _ = R.interpolate(v, rast, tri, backend=backend)
    fid = (rast[..., 3].long() - 1).clamp_min(0)
    tv = v[tri.long()]
    fn = F.normalize(torch.cross(tv[:, 1] - tv[:, 0], tv[:, 2] - tv[:, 0], dim=-1), dim=-1)
    normals = fn[fid]
    to_cam = c2w[:, None, None, :3, 3] - points
    normals = torch.where(((normals * to_cam).sum(-1, keepdim=True) < 0), -normals, normals)
    return {"rgba": rgba, "points": points * mask[..., None], "normals": normals * mask[..., None], "mask": mask}


# ------------------------------------------------------------------------------------------------ procedural meshes
def random_primitives(rng: np.random.Generator):
    """1-3 of the quick-start scene's primitives with random shapes, placements, colours and smooth textures."""
    from threestudio.data.synthetic_scene import Primitive

    prims = []
    for i in range(int(rng.integers(1, 4))):
        kind = str(rng.choice(["sphere", "rounded_box", "torus", "cylinder"]))
        center = tuple(float(x) for x in (rng.uniform(-0.18, 0.18, 3) if i else rng.uniform(-0.05, 0.05, 3)))
        if kind == "sphere":
            params = {"radius": float(rng.uniform(0.15, 0.3))}
        elif kind == "rounded_box":
            params = {"half_size": [float(x) for x in rng.uniform(0.1, 0.3, 3)], "rounding": 0.03}
        elif kind == "torus":
            params = {"major": float(rng.uniform(0.15, 0.25)), "minor": float(rng.uniform(0.05, 0.09))}
        else:
            params = {"radius": float(rng.uniform(0.08, 0.2)), "half_height": float(rng.uniform(0.12, 0.3))}
        prims.append(Primitive(kind, center, params, texture=str(rng.choice(["solid", "stripes", "gradient"])),
                               color_a=tuple(float(x) for x in rng.uniform(0.1, 0.95, 3)),
                               color_b=tuple(float(x) for x in rng.uniform(0.1, 0.95, 3)),
                               frequency=float(rng.uniform(1.0, 3.0)), axis=int(rng.integers(0, 3)),
                               rotation_deg=tuple(float(x) for x in rng.uniform(-60, 60, 3))))
    return prims


def procedural_mesh(seed: int, resolution: int = 48) -> ObjectMesh:
    """One random object (see :func:`random_primitives`) meshed at ``resolution``^3 with shaded vertex colours."""
    from threestudio.data.synthetic_scene import Light, albedo, primitive_normal, scene_radius, scene_sdf, shade
    from threestudio.ops.marching_cubes import marching_cubes

    prims = random_primitives(np.random.default_rng(int(seed)))
    r = scene_radius(prims) + 0.05
    v, f = marching_cubes(lambda p: scene_sdf(prims, p)[0], 0.0, bbox=((-r, -r, -r), (r, r, r)),
                          resolution=resolution, inside="below")
    _, idx = scene_sdf(prims, v)
    col = torch.zeros_like(v)
    for k, pr in enumerate(prims):
        sel = idx == k
        if sel.any():
            col[sel] = shade(albedo(pr, v[sel]), primitive_normal(pr, v[sel]), Light())
    return ObjectMesh(v.float(), f.long(), col.float())


def write_ply(path: str, mesh: ObjectMesh) -> None:
    import trimesh

    cols = None if mesh.colors is None else (mesh.colors.clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
    tm = trimesh.Trimesh(mesh.v_pos.numpy(), mesh.faces.numpy(), vertex_colors=cols, process=False)
    from threestudio.utils.saving import atomic_write_bytes

    atomic_write_bytes(path, tm.export(file_type="ply"))


def make_procedural_meshes(out_dir: str, n: int, seed: int = 0, resolution: int = 48,
                           names: Optional[Sequence[str]] = None) -> List[str]:
    """Write ``n`` procedural objects as ``out_dir/proc_<seed + i>.ply``; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for i in range(n):
        name = names[i] if names is not None else f"proc_{seed + i:05d}"
        path = os.path.join(out_dir, f"{name}.ply")
        write_ply(path, procedural_mesh(seed + i, resolution))
        paths.append(path)
    return paths
