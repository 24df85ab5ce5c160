"""Gaussian splatting in plain PyTorch: the readable reference and the CPU path.

The math and the cut-offs are those of gsplat 1.5 (``rasterization`` with ``packed=False``), so the two backends
agree pixel for pixel up to float rounding:

1. **Covariance.** ``Sigma = R S S^T R^T`` with ``R`` from the (normalised) quaternion ``(w, x, y, z)`` and
   ``S = diag(scales)``.
2. **EWA projection** (Zwicker et al. 2002) into an OpenCV pinhole camera (x right, y down, z forward;
   ``viewmats`` are world-to-camera): ``mu' = K (R_w mu + t)``, ``Sigma' = J W Sigma W^T J^T`` with ``J`` the
   Jacobian of the perspective map at the mean. As in 3DGS, the mean's ``x/z`` and ``y/z`` are clamped to 1.3x the
   field of view *for J only*, which keeps the footprint of gaussians far outside the view finite.
3. **Low-pass filter.** ``Sigma' + eps2d * I`` (``eps2d = 0.3`` pixels^2). With ``antialiased=True`` the opacity is
   also multiplied by ``sqrt(det Sigma' / det(Sigma' + eps2d I))`` (Mip-Splatting's 2D filter).
4. **Culling.** A gaussian is skipped in a camera when its depth is outside ``(near_plane, far_plane)``, its 2D
   covariance is degenerate, its opacity is below 1/255 or its bounding box (``ceil(k sqrt(Sigma'_ii))`` pixels,
   ``k = min(3.33, sqrt(2 ln(255 opacity)))``) misses the image. Such gaussians get ``radii = 0``.
5. **Compositing.** Pixel centres are at ``(i + 0.5, j + 0.5)``. Gaussians are sorted front to back by camera
   depth. ``alpha = min(0.999, o exp(-q/2))`` with ``q`` the Mahalanobis distance under the conic; contributions with
   ``alpha < 1/255`` are skipped; a pixel stops *before* the gaussian that would bring its transmittance to 1e-4 or
   below. ``C = sum_i c_i alpha_i T_i + T_final * background``.

Depth is the camera ``z`` of each gaussian's mean: ``depth_accum = sum_i w_i z_i`` and
``depth = depth_accum / max(alpha, 1e-10)`` (gsplat's "D" and "ED").

This file is written for clarity and for small scenes (tests, the CPU path, a few thousand gaussians). Pixels are
processed in square tiles; each tile composites only the gaussians whose bounding box overlaps it.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

ALPHA_THRESHOLD = 1.0 / 255.0
MAX_ALPHA = 0.999
TRANSMITTANCE_STOP = 1e-4
BBOX_SIGMAS = 3.33

# real spherical harmonics, the constants and sign convention of the 3DGS (Inria) code and gsplat
SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154, -0.4570457994644658,
         1.445305721320277, -0.5900435899266435)


# ---------------------------------------------------------------------------------------------- gaussians in 3D
def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [..., 3, 3] from quaternions [..., 4] in (w, x, y, z) order (normalised here)."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(quats.shape[:-1] + (3, 3))


def covariance_3d(quats: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """World-space covariances [N, 3, 3] = R S S^T R^T from quaternions [N, 4] and (activated) scales [N, 3]."""
    M = quat_to_rotmat(quats) * scales[..., None, :]  # R S
    return M @ M.transpose(-1, -2)


# ---------------------------------------------------------------------------------------------- SH colour
def sh_bases(degree: int, dirs: torch.Tensor) -> torch.Tensor:
    """Real SH basis [..., (degree+1)^2] at unit directions [..., 3] (Inria / gsplat convention)."""
    if not 0 <= degree <= 3:
        raise ValueError(f"SH degree must be 0..3, got {degree}")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        out += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [SH_C2[0] * xy, SH_C2[1] * yz, SH_C2[2] * (2 * zz - xx - yy), SH_C2[3] * xz, SH_C2[4] * (xx - yy)]
    if degree >= 3:
        out += [SH_C3[0] * y * (3 * xx - yy), SH_C3[1] * xy * z, SH_C3[2] * y * (4 * zz - xx - yy),
                SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy), SH_C3[4] * x * (4 * zz - xx - yy),
                SH_C3[5] * z * (xx - yy), SH_C3[6] * x * (xx - 3 * yy)]
    return torch.stack(out, dim=-1)


def eval_sh(degree: int, dirs: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Colour [..., 3] = clamp_min(sum_k Y_k(d) c_k + 0.5, 0) for SH coefficients [..., K, 3], K >= (degree+1)^2.

    ``dirs`` need not be unit length. The +0.5 offset and the clamp are the 3DGS convention (so a PLY's ``f_dc``
    means the same thing in every viewer).
    """
    k = (degree + 1) ** 2
    if coeffs.shape[-2] < k:
        raise ValueError(f"SH degree {degree} needs {k} coefficients per channel, got {coeffs.shape[-2]}")
    basis = sh_bases(degree, F.normalize(dirs, dim=-1))
    return torch.clamp_min((basis[..., None] * coeffs[..., :k, :]).sum(-2) + 0.5, 0.0)


def rgb_to_sh0(rgb: torch.Tensor) -> torch.Tensor:
    """The DC coefficient that renders as ``rgb`` (inverse of ``eval_sh(0, ...)`` for rgb >= 0)."""
    return (rgb - 0.5) / SH_C0


def sh0_to_rgb(sh0: torch.Tensor) -> torch.Tensor:
    return sh0 * SH_C0 + 0.5


# ---------------------------------------------------------------------------------------------- projection
def project_gaussians(
    means: torch.Tensor,
    covars: torch.Tensor,
    opacities: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    antialiased: bool = False,
) -> Dict[str, torch.Tensor]:
    """Project N gaussians into C cameras.

    Args:
        means [N, 3], covars [N, 3, 3] (world), opacities [N] (activated), viewmats [C, 4, 4] (world-to-camera,
        OpenCV axes), Ks [C, 3, 3] (pixels).
    Returns a dict of [C, N, ...] tensors: ``means2d`` [C, N, 2] (pixels), ``conics`` [C, N, 3] (upper triangle
    of the inverse 2D covariance: a, b, c with q = a dx^2 + 2 b dx dy + c dy^2), ``depths`` [C, N],
    ``opacities`` [C, N] (times the anti-aliasing compensation), ``radii`` [C, N, 2] int32 (0: culled).
    """
    R = viewmats[:, None, :3, :3]  # [C, 1, 3, 3]
    t = viewmats[:, None, :3, 3]  # [C, 1, 3]
    m_c = (R @ means[None, :, :, None])[..., 0] + t  # [C, N, 3]
    cov_c = R @ covars[None] @ R.transpose(-1, -2)  # [C, N, 3, 3]
    fx, fy = Ks[:, None, 0, 0], Ks[:, None, 1, 1]  # [C, 1]
    cx, cy = Ks[:, None, 0, 2], Ks[:, None, 1, 2]
    tx, ty, tz = m_c.unbind(-1)  # [C, N]
    # Jacobian of the perspective map, evaluated with x/z, y/z clamped to 1.3x the field of view
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    lim_xp, lim_xn = (width - cx) / fx + 0.3 * tan_x, cx / fx + 0.3 * tan_x
    lim_yp, lim_yn = (height - cy) / fy + 0.3 * tan_y, cy / fy + 0.3 * tan_y
    txc = tz * torch.minimum(torch.maximum(tx / tz, -lim_xn), lim_xp)
    tyc = tz * torch.minimum(torch.maximum(ty / tz, -lim_yn), lim_yp)
    zero = torch.zeros_like(tz)
    J = torch.stack([fx / tz, zero, -fx * txc / (tz * tz), zero, fy / tz, -fy * tyc / (tz * tz)], dim=-1)
    J = J.reshape(tz.shape + (2, 3))
    cov2d = J @ cov_c @ J.transpose(-1, -2)  # [C, N, 2, 2]
    means2d = torch.stack([fx * tx / tz + cx, fy * ty / tz + cy], dim=-1)

    a, b, c = cov2d[..., 0, 0], 0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0]), cov2d[..., 1, 1]
    det_orig = a * c - b * b
    a, c = a + eps2d, c + eps2d
    det = a * c - b * b
    det_safe = det.clamp_min(1e-10)
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)
    opac = opacities[None].expand(tz.shape)
    if antialiased:
        opac = opac * torch.sqrt(torch.clamp_min(det_orig / det_safe, 0.0))

    with torch.no_grad():
        valid = (det > 0) & (tz > near_plane) & (tz < far_plane) & (opac >= ALPHA_THRESHOLD)
        extend = torch.sqrt(2.0 * torch.log(opac.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD)).clamp_max(BBOX_SIGMAS)
        rx = torch.ceil(extend * torch.sqrt(a.clamp_min(0)))
        ry = torch.ceil(extend * torch.sqrt(c.clamp_min(0)))
        mx, my = means2d[..., 0], means2d[..., 1]
        inside = (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        keep = valid & inside & ((rx > 0) | (ry > 0))
        radii = torch.stack([rx, ry], dim=-1) * keep[..., None]
        radii = torch.nan_to_num(radii, nan=0.0).to(torch.int32)
    return {"means2d": means2d, "conics": conics, "depths": tz, "opacities": opac, "radii": radii}


# ---------------------------------------------------------------------------------------------- compositing
def composite_tile(
    pix: torch.Tensor,
    means2d: torch.Tensor,
    conics: torch.Tensor,
    opacities: torch.Tensor,
    features: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Front-to-back compositing of M depth-sorted gaussians at P pixel centres.

    Args: pix [P, 2]; means2d [M, 2], conics [M, 3], opacities [M], features [M, D] (colour channels, then depth).
    Returns (sum_i w_i f_i [P, D], sum_i w_i [P]).
    """
    d = means2d[None, :, :] - pix[:, None, :]  # [P, M, 2] (gsplat's sign; q is even in d)
    q = conics[None, :, 0] * d[..., 0] ** 2 + conics[None, :, 2] * d[..., 1] ** 2
    sigma = 0.5 * q + conics[None, :, 1] * d[..., 0] * d[..., 1]
    alpha = torch.clamp_max(opacities[None, :] * torch.exp(-sigma), MAX_ALPHA)
    alpha = torch.where((sigma >= 0) & (alpha >= ALPHA_THRESHOLD), alpha, torch.zeros_like(alpha))
    one_minus = 1.0 - alpha
    t_after = torch.cumprod(one_minus, dim=1)  # transmittance after each gaussian
    t_before = torch.cat([torch.ones_like(t_after[:, :1]), t_after[:, :-1]], dim=1)
    # a pixel stops before the gaussian that would take T to 1e-4 or below; T only falls, so this is a prefix
    keep = (t_after > TRANSMITTANCE_STOP).to(alpha.dtype)
    w = alpha * t_before * keep  # [P, M]
    return w @ features, w.sum(-1)


def rasterize_reference(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    sh_degree: Optional[int] = None,
    backgrounds: Optional[torch.Tensor] = None,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    antialiased: bool = False,
    tile_size: int = 16,
) -> Dict[str, Any]:
    """Render N gaussians into C cameras. See :func:`threestudio.ops.splatting.rasterize_gaussians` for the
    arguments; returns ``rgb`` [C, H, W, D], ``alpha``, ``depth``, ``depth_accum`` [C, H, W, 1] and ``meta``."""
    C, N = viewmats.shape[0], means.shape[0]
    dev, dt = means.device, means.dtype
    covars = covariance_3d(quats, scales)
    proj = project_gaussians(means, covars, opacities, viewmats, Ks, width, height, eps2d=eps2d,
                             near_plane=near_plane, far_plane=far_plane, antialiased=antialiased)
    means2d = proj["means2d"]
    if means2d.requires_grad:
        means2d.retain_grad()  # densification reads means2d.grad, as with gsplat
    if sh_degree is None:
        feats = colors[None].expand(C, N, colors.shape[-1]) if colors.dim() == 2 else colors
    else:
        campos = torch.linalg.inv(viewmats)[:, :3, 3]  # [C, 3]
        coeffs = colors[None].expand((C,) + colors.shape) if colors.dim() == 3 else colors
        feats = eval_sh(sh_degree, means[None] - campos[:, None], coeffs)  # [C, N, 3]
    D = feats.shape[-1]
    feats = torch.cat([feats, proj["depths"][..., None]], dim=-1)  # depth rides along as the last channel

    ys = torch.arange(height, device=dev, dtype=dt) + 0.5
    xs = torch.arange(width, device=dev, dtype=dt) + 0.5
    images, alphas = [], []
    for ci in range(C):
        radii = proj["radii"][ci]
        vis = (radii > 0).any(-1).nonzero()[:, 0]
        order = vis[torch.argsort(proj["depths"][ci, vis], stable=True)]  # front to back
        m2 = means2d[ci, order]
        con, opa, fea = proj["conics"][ci, order], proj["opacities"][ci, order], feats[ci, order]
        rad = radii[order].to(dt)
        with torch.no_grad():
            lo, hi = m2.detach() - rad, m2.detach() + rad
        rows_c, rows_a = [], []
        for y0 in range(0, height, tile_size):
            y1 = min(y0 + tile_size, height)
            cols_c, cols_a = [], []
            for x0 in range(0, width, tile_size):
                x1 = min(x0 + tile_size, width)
                hit = ((hi[:, 0] > x0) & (lo[:, 0] < x1) & (hi[:, 1] > y0) & (lo[:, 1] < y1)).nonzero()[:, 0]
                gy, gx = torch.meshgrid(ys[y0:y1], xs[x0:x1], indexing="ij")
                pix = torch.stack([gx, gy], dim=-1).reshape(-1, 2)
                acc_f, acc_a = composite_tile(pix, m2[hit], con[hit], opa[hit], fea[hit])
                cols_c.append(acc_f.reshape(y1 - y0, x1 - x0, D + 1))
                cols_a.append(acc_a.reshape(y1 - y0, x1 - x0, 1))
            rows_c.append(torch.cat(cols_c, dim=1))
            rows_a.append(torch.cat(cols_a, dim=1))
        images.append(torch.cat(rows_c, dim=0))
        alphas.append(torch.cat(rows_a, dim=0))
    acc = torch.stack(images)  # [C, H, W, D+1]
    alpha = torch.stack(alphas)  # [C, H, W, 1]
    rgb, depth_accum = acc[..., :D], acc[..., D:]
    if backgrounds is not None:
        rgb = rgb + backgrounds.reshape(C, 1, 1, D) * (1.0 - alpha)
    meta = {"means2d": means2d, "radii": proj["radii"], "depths": proj["depths"], "conics": proj["conics"],
            "opacities": proj["opacities"], "gaussian_ids": None, "width": width, "height": height,
            "n_cameras": C, "tile_size": tile_size}
    return {"rgb": rgb, "alpha": alpha, "depth": depth_accum / alpha.clamp_min(1e-10), "depth_accum": depth_accum,
            "meta": meta}
