"""Where initial gaussians come from: a random ball, a mesh surface (with colours), nearest-neighbour scales."""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch


def sample_ball(n: int, radius: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """[n, 3] points uniform in the ball of ``radius`` around the origin."""
    d = torch.randn(n, 3, generator=generator)
    d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    r = radius * torch.rand(n, 1, generator=generator) ** (1.0 / 3.0)
    return d * r


def sample_mesh_surface(
    v_pos: torch.Tensor,
    faces: torch.Tensor,
    n: int,
    generator: Optional[torch.Generator] = None,
    v_rgb: Optional[torch.Tensor] = None,
    v_tex: Optional[torch.Tensor] = None,
    t_tex_idx: Optional[torch.Tensor] = None,
    texture: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """Sample ``n`` points uniformly by area on a triangle mesh, with their colours.

    Args:
        v_pos [V, 3], faces [F, 3]; colours from per-vertex ``v_rgb`` [V, 3] in [0, 1], or from ``texture``
        [H, W, 3] in [0, 1] (row 0 = top, v = 1) at UVs ``v_tex`` [T, 2] indexed by ``t_tex_idx`` [F, 3]
        (default: ``faces``), bilinear.
    Returns (points [n, 3], colours [n, 3] or None, face normals [n, 3]).
    """
    faces = faces.long()
    tri = v_pos[faces]  # [F, 3, 3]
    cross = torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    area = 0.5 * cross.norm(dim=-1)
    if not torch.isfinite(area).all() or float(area.sum()) <= 0:
        raise ValueError("sample_mesh_surface: the mesh has no area (empty or degenerate faces)")
    fid = torch.multinomial(area.double(), n, replacement=True, generator=generator)
    u = torch.rand(n, generator=generator, dtype=v_pos.dtype)
    v = torch.rand(n, generator=generator, dtype=v_pos.dtype)
    su = torch.sqrt(u)
    bary = torch.stack([1 - su, su * (1 - v), su * v], dim=-1)  # uniform on the triangle
    pts = (tri[fid] * bary[..., None]).sum(1)
    normals = torch.nn.functional.normalize(cross[fid], dim=-1)
    rgb = None
    if texture is not None and v_tex is not None:
        tidx = (t_tex_idx if t_tex_idx is not None else faces).long()
        uv = (v_tex[tidx[fid]] * bary[..., None]).sum(1)  # [n, 2]
        rgb = sample_texture(texture, uv)
    elif v_rgb is not None:
        rgb = (v_rgb[faces[fid]] * bary[..., None]).sum(1)
    return pts, rgb, normals


def sample_texture(texture: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup of ``texture`` [H, W, C] (row 0 = top) at UVs [n, 2] (u right, v up; wrapped to [0, 1))."""
    H, W = texture.shape[:2]
    uv = uv - torch.floor(uv)
    x = uv[:, 0] * W - 0.5
    y = (1.0 - uv[:, 1]) * H - 0.5
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x0, y0 = x0.long(), y0.long()

    def at(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        return texture[yy.clamp(0, H - 1), xx.clamp(0, W - 1)]

    return ((1 - fx) * (1 - fy) * at(y0, x0) + fx * (1 - fy) * at(y0, x0 + 1) + (1 - fx) * fy * at(y0 + 1, x0)
            + fx * fy * at(y0 + 1, x0 + 1))


def knn_mean_distance(points: torch.Tensor, k: int = 3) -> torch.Tensor:
    """[N] mean distance of each point to its ``k`` nearest other points (a k-d tree on the CPU)."""
    from scipy.spatial import cKDTree

    n = points.shape[0]
    if n <= 1:
        return torch.ones(n, dtype=points.dtype, device=points.device)
    k = min(k, n - 1)
    p = points.detach().cpu().double().numpy()
    dist, _ = cKDTree(p).query(p, k=k + 1)
    d = np.asarray(dist)[:, 1:].mean(axis=1)
    return torch.as_tensor(d, dtype=points.dtype, device=points.device)


def sample_in_frusta(c2w: torch.Tensor, intrinsics: torch.Tensor, sizes: torch.Tensor, n: int, half_extent: float,
                     center: Optional[torch.Tensor] = None, near: float = 0.0,
                     generator: Optional[torch.Generator] = None, max_rounds: int = 64) -> torch.Tensor:
    """[n, 3] points uniform in the cube of half side ``half_extent`` around ``center`` that at least one camera
    sees (in front of it beyond ``near`` and inside its image).

    Cameras: ``c2w`` [C, 4, 4] (OpenGL: looking along -z), ``intrinsics`` [C, 4] (fx, fy, cx, cy in pixels),
    ``sizes`` [C, 2] (width, height). Candidates are drawn in rounds until ``n`` are kept (rejection sampling);
    if the cameras see less than 1/``max_rounds`` of the cube's volume, the points found so far are repeated."""
    center = torch.zeros(3) if center is None else center.float()
    w2c = torch.linalg.inv(c2w.double()).float()
    kept = []
    total = 0
    for _ in range(max_rounds):
        cand = (torch.rand(max(n, 1024), 3, generator=generator) * 2 - 1) * half_extent + center
        p = torch.einsum("cij,nj->cni", w2c[:, :3, :3], cand) + w2c[:, None, :3, 3]  # camera space [C, N, 3]
        z = -p[..., 2]
        safe = z.clamp_min(1e-9)
        u = intrinsics[:, None, 0] * p[..., 0] / safe + intrinsics[:, None, 2]
        v = -intrinsics[:, None, 1] * p[..., 1] / safe + intrinsics[:, None, 3]
        seen = (z > near) & (u >= 0) & (u <= sizes[:, None, 0]) & (v >= 0) & (v <= sizes[:, None, 1])
        good = cand[seen.any(0)]
        kept.append(good)
        total += good.shape[0]
        if total >= n:
            break
    pts = torch.cat(kept)
    if pts.shape[0] == 0:
        raise ValueError("sample_in_frusta: no camera sees any point of the sampling cube; check the cameras and "
                         "half_extent")
    if pts.shape[0] < n:
        pts = pts[torch.randint(pts.shape[0], (n,), generator=generator)]
    return pts[:n]
