"""Texture baking in UV space: rasterize a UV layout into a texel grid, interpolate per-vertex attributes at the
texel centres, and dilate baked colours into the empty texels around charts.

Conventions (the ones OBJ and glTF-through-trimesh use): ``uv`` lies in [0, 1]^2 with ``v`` pointing up, and the
texture image is stored with row 0 at the top (``v = 1``). Texel ``(row i, column j)`` of an ``H x W`` texture has
its centre at ``u = (j + 0.5) / W``, ``v = 1 - (i + 0.5) / H``.

Rasterization is exact: vertex positions are snapped to a fixed-point grid (``subpixel_bits`` below the texel) and
the edge functions are evaluated in int64, so a texel centre that lies exactly on an edge shared by two triangles is
given to exactly one of them (a top-left style tie rule that does not depend on the winding of the UV triangles).
Where triangles overlap in UV space, the one with the highest face index wins.

* :func:`rasterize_uv` -> per-texel face id (-1 where empty) and barycentric coordinates.
* :func:`interpolate_texels` -> per-vertex attributes (e.g. 3D positions) at the covered texels.
* :func:`dilate_texture` -> fill empty texels near charts with the colour of the nearest covered texel.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

__all__ = ["rasterize_uv", "interpolate_texels", "dilate_texture", "texel_centers"]


def texel_centers(height: int, width: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """UV coordinates [H, W, 2] of the texel centres (row 0 at v = 1)."""
    j = (torch.arange(width, device=device, dtype=torch.float64) + 0.5) / width
    i = (torch.arange(height, device=device, dtype=torch.float64) + 0.5) / height
    u = j[None, :].expand(height, width)
    v = (1.0 - i)[:, None].expand(height, width)
    return torch.stack([u, v], dim=-1).float()


def _ceil_div(a: torch.Tensor, b: int) -> torch.Tensor:
    return -torch.div(-a, b, rounding_mode="floor")


def rasterize_uv(
    uv: torch.Tensor,
    t_tex_idx: torch.Tensor,
    height: int,
    width: Optional[int] = None,
    *,
    subpixel_bits: int = 8,
    chunk_texels: int = 1 << 18,
    progress: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rasterize the UV triangles ``uv[t_tex_idx]`` at the texel centres of an ``height x width`` grid.

    Args:
        uv: [T, 2] UV coordinates in [0, 1] (v up). Values outside [0, 1] are allowed; the part of a triangle
            outside the grid is clipped.
        t_tex_idx: [F, 3] indices into ``uv``.
        height, width: texture size (``width`` defaults to ``height``).
        subpixel_bits: fixed-point precision below one texel (8: 1/256 texel).
        chunk_texels: how many (triangle, texel) candidate pairs are tested at once; the working memory is
            about ``350 * chunk_texels`` bytes (90 MB at the default) on top of the outputs.
        progress: show a progress bar over the chunks.

    Returns:
        face_id: [H, W] long, the covering face index or -1.
        bary: [H, W, 3] float32 barycentric weights of the face's three corners (zeros where empty); the
        interpolated UV of a covered texel is ``sum_k bary[..., k] * uv[t_tex_idx[face_id, k]]``.
    """
    width = height if width is None else width
    if uv.ndim != 2 or uv.shape[-1] != 2:
        raise ValueError(f"rasterize_uv: uv must have shape [T, 2], got {tuple(uv.shape)}.")
    if t_tex_idx.ndim != 2 or t_tex_idx.shape[-1] != 3:
        raise ValueError(f"rasterize_uv: t_tex_idx must have shape [F, 3], got {tuple(t_tex_idx.shape)}.")
    if height <= 0 or width <= 0:
        raise ValueError(f"rasterize_uv: texture size must be positive, got {height}x{width}.")
    if not 0 <= subpixel_bits <= 16:
        raise ValueError(f"rasterize_uv: subpixel_bits must be in [0, 16], got {subpixel_bits}.")
    device = uv.device
    n_faces = t_tex_idx.shape[0]
    face_id = torch.full((height * width,), -1, dtype=torch.long, device=device)
    bary = torch.zeros((height * width, 3), dtype=torch.float32, device=device)
    if n_faces == 0:
        return face_id.view(height, width), bary.view(height, width, 3)
    if t_tex_idx.numel() and (int(t_tex_idx.min()) < 0 or int(t_tex_idx.max()) >= uv.shape[0]):
        raise ValueError(f"rasterize_uv: t_tex_idx has indices outside [0, {uv.shape[0]}).")

    S = 1 << subpixel_bits
    half = S // 2
    # fixed-point corner positions in texel units: x right (u), y down (row index)
    uvd = uv.detach().double()
    xy = torch.stack([uvd[:, 0] * width, (1.0 - uvd[:, 1]) * height], dim=-1)
    limit = float(1 << 30)  # |coordinate| <= 2^30: edge-function products stay inside int64
    P = torch.round(xy * S).clamp(-limit, limit).long()[t_tex_idx.long()]  # [F, 3, 2]

    x, y = P[..., 0], P[..., 1]
    area2 = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (y[:, 1] - y[:, 0]) * (x[:, 2] - x[:, 0])
    sign = torch.sign(area2)
    # texel index ranges whose centres (j*S + S/2) lie inside each triangle's bounding box
    j0 = _ceil_div(x.min(1).values - half, S).clamp(min=0)
    j1 = torch.div(x.max(1).values - half, S, rounding_mode="floor").clamp(max=width - 1)
    i0 = _ceil_div(y.min(1).values - half, S).clamp(min=0)
    i1 = torch.div(y.max(1).values - half, S, rounding_mode="floor").clamp(max=height - 1)
    bw = (j1 - j0 + 1).clamp(min=0)
    bh = (i1 - i0 + 1).clamp(min=0)
    counts = torch.where(area2 != 0, bw * bh, torch.zeros_like(bw))
    ends = torch.cumsum(counts, 0)
    total = int(ends[-1])
    starts = ends - counts

    # edge k runs a -> b with (a, b) = (1, 2), (2, 0), (0, 1): w_k is the (signed, doubled) area opposite corner k.
    a_idx = torch.tensor([1, 2, 0], device=device)
    b_idx = torch.tensor([2, 0, 1], device=device)
    ex = x[:, b_idx] - x[:, a_idx]  # [F, 3]
    ey = y[:, b_idx] - y[:, a_idx]
    # Tie rule: a texel centre exactly on edge k belongs to the triangle if the edge, oriented with the interior on
    # its positive side (direction sign * (b - a)), points down, or is horizontal and points left. Two triangles
    # sharing the edge see opposite oriented directions, so exactly one of them owns it.
    dx, dy = ex * sign[:, None], ey * sign[:, None]
    owns = (dy > 0) | ((dy == 0) & (dx < 0))  # [F, 3]

    n_chunks = (total + chunk_texels - 1) // chunk_texels
    chunks = range(n_chunks)
    if progress and n_chunks > 1:
        from rich.progress import track

        chunks = track(chunks, description=f"Rasterizing {n_faces} UV triangles", total=n_chunks, transient=True)
    for c in chunks:
        w = torch.arange(c * chunk_texels, min((c + 1) * chunk_texels, total), device=device)
        f = torch.searchsorted(ends, w, right=True)
        local = w - starts[f]
        bwf = bw[f]
        j = j0[f] + local % bwf
        i = i0[f] + torch.div(local, bwf, rounding_mode="floor")
        px = (j * S + half)[:, None]
        py = (i * S + half)[:, None]
        xa, ya = x[f][:, a_idx], y[f][:, a_idx]
        wk = ex[f] * (py - ya) - ey[f] * (px - xa)  # [N, 3]
        sw = wk * sign[f][:, None]
        inside = ((sw > 0) | ((sw == 0) & owns[f])).all(dim=1)
        if not bool(inside.any()):
            continue
        f, wk = f[inside], wk[inside]
        pix = (i * width + j)[inside]
        face_id.scatter_reduce_(0, pix, f, reduce="amax")
        win = face_id[pix] == f  # a face covers a texel at most once: the winners' writes are unique
        bary[pix[win]] = (wk[win].double() / area2[f[win]].double()[:, None]).float()
    return face_id.view(height, width), bary.view(height, width, 3)


def interpolate_texels(
    attr: torch.Tensor, faces: torch.Tensor, face_id: torch.Tensor, bary: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Interpolate per-vertex ``attr`` [V, C] over ``faces`` [F, 3] at the covered texels.

    Returns (values [N, C], flat texel indices [N] into the H*W grid, row-major) for the N texels with
    ``face_id >= 0``.
    """
    flat_id = face_id.reshape(-1)
    idx = torch.nonzero(flat_id >= 0, as_tuple=False).squeeze(1)
    f = flat_id[idx]
    b = bary.reshape(-1, 3)[idx].to(attr.dtype)
    corners = attr[faces[f]]  # [N, 3, C]
    return (b[..., None] * corners).sum(dim=1), idx


def dilate_texture(texture: torch.Tensor, mask: torch.Tensor, padding: int) -> torch.Tensor:
    """Copy into each empty texel within ``padding`` texels (Euclidean) of a covered one the value of the nearest
    covered texel, so that bilinear filtering and mip-mapping at chart borders do not pull in the background.

    Args:
        texture: [H, W, C]; values of texels where ``mask`` is False are ignored.
        mask: [H, W] bool, the covered texels.
        padding: how far to dilate; 0 leaves the texture as it is, a negative value fills every empty texel.

    Returns a new [H, W, C] tensor (empty texels beyond ``padding`` are zero).
    """
    import numpy as np
    from scipy import ndimage

    if texture.shape[:2] != mask.shape:
        raise ValueError(f"dilate_texture: texture {tuple(texture.shape)} and mask {tuple(mask.shape)} differ in size.")
    out = torch.where(mask[..., None], texture, torch.zeros((), dtype=texture.dtype, device=texture.device))
    covered = mask.detach().cpu().numpy().astype(bool)
    if padding == 0 or not covered.any() or covered.all():
        return out
    dist, (ii, jj) = ndimage.distance_transform_edt(~covered, return_indices=True)
    fill = ~covered if padding < 0 else (~covered) & (dist <= padding)
    rows, cols = np.nonzero(fill)
    src_r = torch.as_tensor(ii[rows, cols], device=texture.device)
    src_c = torch.as_tensor(jj[rows, cols], device=texture.device)
    r = torch.as_tensor(rows, device=texture.device)
    c = torch.as_tensor(cols, device=texture.device)
    out[r, c] = out[src_r, src_c]
    return out
