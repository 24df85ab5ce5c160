"""Gaussian splatting: one function, two backends.

* :func:`rasterize_gaussians` - render N 3D gaussians into C pinhole cameras; ``backend`` in {"auto", "gsplat",
  "torch"}. ``auto`` picks gsplat for CUDA tensors when it is importable, else our PyTorch reference
  (:mod:`threestudio.ops.splatting.reference`, which documents the math and the cut-offs the two share).
* :func:`camera_matrices` - gsplat's ``viewmats``/``Ks`` from our OpenGL camera-to-world matrices.
* :mod:`.densify` - densification and pruning (3DGS's adaptive density control), our PyTorch implementation.
* :mod:`.init` - point sampling for initialisation (random ball, mesh surface with colours, nearest-neighbour
  scales).

Outputs are channels-last, like gsplat's: ``rgb`` [C, H, W, D], ``alpha``, ``depth`` (expected camera z,
``sum w z / sum w``) and ``depth_accum`` (``sum w z``) [C, H, W, 1], and ``meta`` (``means2d`` for densification,
``radii`` [C, N, 2], ``width``, ``height``, ``n_cameras``, ...).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch

from threestudio.utils.imports import available

from .reference import (  # noqa: F401
    SH_C0,
    covariance_3d,
    eval_sh,
    project_gaussians,
    quat_to_rotmat,
    rasterize_reference,
    rgb_to_sh0,
    sh0_to_rgb,
    sh_bases,
)

BACKENDS = ("auto", "gsplat", "torch")

# OpenGL camera axes (x right, y up, looking along -z) -> OpenCV's (x right, y down, z forward)
_GL_TO_CV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


def select_backend(backend: str, device: torch.device) -> str:
    """The backend that ``backend`` means on ``device``: 'gsplat' or 'torch'. Raises for an impossible choice."""
    if backend not in BACKENDS:
        raise ValueError(f"Unknown splatting backend {backend!r}; use one of {', '.join(BACKENDS)}.")
    if backend == "auto":
        return "gsplat" if device.type == "cuda" and available("gsplat") else "torch"
    if backend == "gsplat" and device.type != "cuda":
        raise ValueError(
            f"The gsplat splatting backend runs on CUDA tensors only (got {device}); gsplat has no CPU rasterizer. "
            f"Use backend 'auto' or 'torch' on this device.")
    return backend


def camera_matrices(c2w: torch.Tensor, intrinsics: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``viewmats`` [C, 4, 4] (world-to-camera, OpenCV axes) and ``Ks`` [C, 3, 3] from OpenGL camera-to-world
    matrices [C, 4, 4] and intrinsics [C, 4] = (fx, fy, cx, cy) in pixels (pixel (u, v) has its centre at
    (u + 0.5, v + 0.5), v down)."""
    from threestudio.ops.cameras import world_to_camera

    w2c = world_to_camera(c2w.float() if not c2w.is_floating_point() else c2w)
    viewmats = _GL_TO_CV.to(w2c) @ w2c
    fx, fy, cx, cy = intrinsics.to(w2c).unbind(-1)
    K = torch.zeros(intrinsics.shape[:-1] + (3, 3), dtype=w2c.dtype, device=w2c.device)
    K[..., 0, 0], K[..., 1, 1], K[..., 0, 2], K[..., 1, 2], K[..., 2, 2] = fx, fy, cx, cy, 1.0
    return viewmats, K


def intrinsics_from_fovy(fovy_rad: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[C, 4] (fx, fy, cx, cy) for a vertical field of view (radians), square pixels, centred principal point."""
    f = 0.5 * height / torch.tan(0.5 * fovy_rad.reshape(-1).float())
    return torch.stack([f, f, torch.full_like(f, 0.5 * width), torch.full_like(f, 0.5 * height)], dim=-1)


def rasterize_gaussians(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    *,
    sh_degree: Optional[int] = None,
    backgrounds: Optional[torch.Tensor] = None,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    antialiased: bool = False,
    backend: str = "auto",
    packed: bool = False,
    absgrad: bool = False,
    tile_size: int = 16,
) -> Dict[str, Any]:
    """Render gaussians (activated parameters, gsplat's conventions).

    Args:
        means [N, 3]; quats [N, 4] (w, x, y, z; need not be unit); scales [N, 3] (> 0); opacities [N] in [0, 1];
        colors: [N, D] (or [C, N, D]) colour features used as they are when ``sh_degree`` is None, else SH
        coefficients [N, K, 3] with K >= (sh_degree + 1)^2 (colour = max(SH(dir) + 0.5, 0)).
        viewmats [C, 4, 4] world-to-camera in OpenCV axes; Ks [C, 3, 3] (see :func:`camera_matrices`).
        backgrounds [C, D]: composited behind (``rgb += (1 - alpha) * bg``); None: black.
        eps2d: the low-pass filter added to 2D covariances (pixels^2). antialiased: Mip-Splatting compensation.
        backend: "auto" | "gsplat" | "torch". packed / absgrad: gsplat options (ignored by "torch").
        tile_size: tile edge in pixels (both backends).
    Returns a dict: rgb [C, H, W, D], alpha [C, H, W, 1], depth [C, H, W, 1] (expected), depth_accum
    [C, H, W, 1] (accumulated), meta (dict; ``meta["means2d"]`` carries the screen-space gradient).
    """
    if means.dim() != 2 or means.shape[-1] != 3:
        raise ValueError(f"rasterize_gaussians: means must be [N, 3], got {tuple(means.shape)}")
    n = means.shape[0]
    for name, t, shape in (("quats", quats, (n, 4)), ("scales", scales, (n, 3)), ("opacities", opacities, (n,))):
        if tuple(t.shape) != shape:
            raise ValueError(f"rasterize_gaussians: {name} must be {list(shape)} for {n} gaussians, "
                             f"got {list(t.shape)}")
    if viewmats.dim() != 3 or Ks.dim() != 3 or viewmats.shape[0] != Ks.shape[0]:
        raise ValueError(f"rasterize_gaussians: viewmats [C, 4, 4] and Ks [C, 3, 3] expected, got "
                         f"{list(viewmats.shape)} and {list(Ks.shape)}")
    if sh_degree is not None and (colors.dim() < 3 or colors.shape[-1] != 3
                                  or colors.shape[-2] < (sh_degree + 1) ** 2):
        raise ValueError(f"rasterize_gaussians: sh_degree={sh_degree} needs colors [N, K>={(sh_degree + 1) ** 2}, 3], "
                         f"got {list(colors.shape)}")
    which = select_backend(backend, means.device)
    if which == "gsplat":
        from .gsplat_backend import rasterize_gsplat

        return rasterize_gsplat(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                                sh_degree=sh_degree, backgrounds=backgrounds, near_plane=near_plane,
                                far_plane=far_plane, eps2d=eps2d, antialiased=antialiased, packed=packed,
                                absgrad=absgrad, tile_size=tile_size)
    return rasterize_reference(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                               sh_degree=sh_degree, backgrounds=backgrounds, near_plane=near_plane,
                               far_plane=far_plane, eps2d=eps2d, antialiased=antialiased, tile_size=tile_size)
