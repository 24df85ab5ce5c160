"""Lens distortion (pure torch, batched, CPU or CUDA, float32 or float64): the OpenCV/COLMAP pinhole and fisheye models.

Conventions:

* Normalised image coordinates of pixel (u, v) are (x, y) = ((u - cx) / fx, (v - cy) / fy), with pixel centres at
  (col + 0.5, row + 0.5) and v pointing **down** (OpenCV). OpenCV itself puts pixel centres at integers: its cx, cy
  are ours minus 0.5. Undistorted coordinates are the pinhole ones: a camera-space point (X, Y, Z) in OpenCV axes
  (y down, z forward) has x = X / Z, y = Y / Z; in our OpenGL camera (y up, looking along -z) that ray is (x, -y, -1).
* ``params`` [..., 6] = (k1, k2, k3, k4, p1, p2) (nerfstudio's order), broadcastable against the points [..., 2].
* ``"opencv"`` (COLMAP OPENCV plus k4): r2 = x^2 + y^2, radial = 1 + k1 r2 + k2 r2^2 + k3 r2^3 + k4 r2^4,
  xd = x radial + 2 p1 x y + p2 (r2 + 2 x^2), yd = y radial + 2 p2 x y + p1 (r2 + 2 y^2).
  With k4 = 0 this is OpenCV's ``distCoeffs`` (k1, k2, p1, p2, k3); our k4 is *not* OpenCV's rational-model k4.
* ``"fisheye"`` (OpenCV fisheye / COLMAP OPENCV_FISHEYE, equidistant): theta = atan(r), r = |(x, y)|,
  theta_d = theta (1 + k1 theta^2 + k2 theta^4 + k3 theta^6 + k4 theta^8), (xd, yd) = (theta_d / r) (x, y), so
  |(xd, yd)| = theta_d. p1, p2 are ignored.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
Number = Union[float, int]
MODELS = ("opencv", "fisheye")


def _coeffs(params: Union[Tensor, Sequence[Number]], like: Tensor) -> Tuple[Tensor, ...]:
    """(k1, k2, k3, k4, p1, p2), each [...], on ``like``'s device and dtype."""
    params = torch.as_tensor(params, dtype=like.dtype, device=like.device)
    if params.shape[-1] != 6:
        raise ValueError(f"distortion params must have 6 entries (k1, k2, k3, k4, p1, p2), got {tuple(params.shape)}")
    return params.unbind(-1)


def _check(model: str) -> None:
    if model not in MODELS:
        raise ValueError(f"unknown distortion model {model!r}; expected one of {MODELS}")


def _safe_norm(xy: Tensor) -> Tuple[Tensor, Tensor]:
    """|xy| [...] and a mask of where it is > 0; the norm is 1 where it is 0 (no NaN in values or gradients)."""
    r2 = (xy * xy).sum(-1)
    ok = r2 > torch.finfo(xy.dtype).tiny
    return torch.sqrt(torch.where(ok, r2, torch.ones_like(r2))), ok


def _poly(t: Tensor, k1: Tensor, k2: Tensor, k3: Tensor, k4: Tensor) -> Tensor:
    """1 + k1 t + k2 t^2 + k3 t^3 + k4 t^4 (Horner); exactly 1 when all k are 0."""
    return 1 + t * (k1 + t * (k2 + t * (k3 + t * k4)))


def distort(xy: Tensor, params: Union[Tensor, Sequence[Number]], model: str = "opencv") -> Tensor:
    """Distort undistorted normalised coordinates ``xy`` [..., 2] (closed form); returns xy_d [..., 2].

    ``params`` [..., 6] = (k1, k2, k3, k4, p1, p2) broadcasts against ``xy[..., 0]``; see the module docstring for the
    models. Zero params give back ``xy`` exactly for "opencv" (for "fisheye" they are the ideal equidistant lens).
    """
    _check(model)
    k1, k2, k3, k4, p1, p2 = _coeffs(params, xy)
    x, y = xy.unbind(-1)
    if model == "opencv":
        r2 = x * x + y * y
        radial = _poly(r2, k1, k2, k3, k4)
        xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        yd = y * radial + 2 * p2 * x * y + p1 * (r2 + 2 * y * y)
        return torch.stack([xd, yd], dim=-1)
    r, ok = _safe_norm(xy)
    theta = torch.atan(r)
    theta_d = theta * _poly(theta * theta, k1, k2, k3, k4)
    return xy * torch.where(ok, theta_d / r, torch.ones_like(r))[..., None]  # theta_d / r -> 1 as r -> 0


def _fisheye_theta(xy_d: Tensor, params, iters: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Solve theta (1 + k1 theta^2 + ...) = |xy_d| by 1-D Newton from theta = |xy_d|: (theta, |xy_d| made safe, ok)."""
    k1, k2, k3, k4, _, _ = _coeffs(params, xy_d)
    r_d, ok = _safe_norm(xy_d)
    theta_d = torch.where(ok, r_d, torch.zeros_like(r_d))
    eps = torch.finfo(xy_d.dtype).eps
    theta = theta_d
    for _ in range(iters):
        t2 = theta * theta
        f = theta * _poly(t2, k1, k2, k3, k4) - theta_d
        df = 1 + t2 * (3 * k1 + t2 * (5 * k2 + t2 * (7 * k3 + t2 * 9 * k4)))
        step_ok = df.abs() > eps
        theta = theta - torch.where(step_ok, f / torch.where(step_ok, df, torch.ones_like(df)), torch.zeros_like(f))
    return theta, r_d, ok


def undistort(
    xy_d: Tensor, params: Union[Tensor, Sequence[Number]], model: str = "opencv", iters: int = 10
) -> Tensor:
    """Invert :func:`distort`: undistorted normalised coordinates [..., 2] from distorted ones ``xy_d`` [..., 2].

    "opencv": ``iters`` Newton steps on distort(xy) = xy_d with the analytic 2x2 Jacobian, starting at xy_d; a step
    is skipped where |det J| <= dtype eps (e.g. beyond the fold of a strong barrel lens, where there is no inverse).
    "fisheye": 1-D Newton for theta from theta_d = |xy_d|, then xy = tan(theta) xy_d / theta_d (= xy_d at the
    centre); only meaningful for theta < pi/2 (use :func:`camera_ray_directions` for wider angles).
    A fixed number of steps and no data-dependent branches: no host synchronisation on CUDA.
    """
    _check(model)
    if model == "fisheye":
        theta, r_d, ok = _fisheye_theta(xy_d, params, iters)
        return xy_d * torch.where(ok, torch.tan(theta) / r_d, torch.ones_like(r_d))[..., None]
    k1, k2, k3, k4, p1, p2 = _coeffs(params, xy_d)
    xd, yd = xy_d.unbind(-1)
    eps = torch.finfo(xy_d.dtype).eps
    x, y = xd, yd
    for _ in range(iters):
        r2 = x * x + y * y
        radial = _poly(r2, k1, k2, k3, k4)
        dradial = k1 + r2 * (2 * k2 + r2 * (3 * k3 + r2 * 4 * k4))  # d radial / d r2
        ex = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x) - xd
        ey = y * radial + 2 * p2 * x * y + p1 * (r2 + 2 * y * y) - yd
        a = radial + 2 * x * x * dradial + 2 * p1 * y + 6 * p2 * x  # d xd / d x
        b = 2 * x * y * dradial + 2 * p1 * x + 2 * p2 * y  # d xd / d y = d yd / d x
        d = radial + 2 * y * y * dradial + 2 * p2 * x + 6 * p1 * y  # d yd / d y
        det = a * d - b * b
        step_ok = det.abs() > eps
        inv = torch.where(step_ok, 1 / torch.where(step_ok, det, torch.ones_like(det)), torch.zeros_like(det))
        x = x - (d * ex - b * ey) * inv
        y = y - (a * ey - b * ex) * inv
    return torch.stack([x, y], dim=-1)


def is_distorted(params: Optional[Union[Tensor, Sequence[Number]]]) -> bool:
    """Whether any coefficient is non-zero (``None`` -> False). Synchronises with the device of a CUDA tensor."""
    return params is not None and bool(torch.as_tensor(params).ne(0).any())


def _pixel_grid(height: int, width: int, fx, fy, cx, cy, dtype, device) -> Tensor:
    """Normalised coordinates [H, W, 2] of the pixel centres, computed as in ``cameras.get_ray_directions``."""
    u = torch.arange(width, dtype=dtype, device=device) + 0.5
    v = torch.arange(height, dtype=dtype, device=device) + 0.5
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    return torch.stack([(uu - cx) / fx, (vv - cy) / fy], dim=-1)


def camera_ray_directions(
    height: int,
    width: int,
    fx: Number,
    fy: Number,
    cx: Number,
    cy: Number,
    params: Optional[Union[Tensor, Sequence[Number]]] = None,
    model: str = "opencv",
    device: Optional[Union[str, torch.device]] = None,
    iters: int = 10,
) -> Tensor:
    """Camera-space ray directions [H, W, 3] through the pixel centres of a distorted camera, in OUR OpenGL camera
    convention (x right, y up, looking along -z).

    "opencv": the undistorted (x, y) as (x, -y, -1), not normalised; with ``params`` None or all zero this equals
    ``cameras.get_ray_directions(H, W, (fx, fy), principal=(cx, cy))`` exactly. "fisheye": unit vectors
    (sin(theta) x/r, -sin(theta) y/r, -cos(theta)), valid past theta = pi/2 (``params`` None means the ideal
    equidistant lens). float32 unless ``params`` is a floating tensor (its dtype; its device if ``device`` is None).
    """
    _check(model)
    is_tensor = isinstance(params, Tensor) and params.is_floating_point()
    dtype = params.dtype if is_tensor else torch.float32
    device = params.device if device is None and is_tensor else device
    xy = _pixel_grid(height, width, fx, fy, cx, cy, dtype, device)
    params = torch.zeros(6, dtype=dtype, device=device) if params is None else params
    if model == "opencv":
        x, y = undistort(xy, params, "opencv", iters).unbind(-1)
        return torch.stack([x, -y, -torch.ones_like(x)], dim=-1)
    theta, r_d, ok = _fisheye_theta(xy, params, iters)
    s = torch.where(ok, torch.sin(theta) / r_d, torch.ones_like(r_d))  # sin(theta) / theta_d -> 1 at the centre
    return torch.stack([s * xy[..., 0], -s * xy[..., 1], -torch.cos(theta)], dim=-1)


def undistorted_intrinsics(
    height: int,
    width: int,
    fx: Number,
    fy: Number,
    cx: Number,
    cy: Number,
    params: Union[Tensor, Sequence[Number]],
    model: str = "opencv",
    iters: int = 20,
) -> Tuple[float, float, float, float, int, int]:
    """A pinhole camera (fx', fy', cx', cy', width', height') whose every pixel maps inside the distorted image.

    Like ``cv2.getOptimalNewCameraMatrix(..., alpha=0)`` but keeping fx, fy: the outer border of the distorted image
    (u in {0, W} or v in {0, H}, sampled at every half pixel) is undistorted (float64) and the rectangle is bounded by
    the innermost undistorted point of each edge: x in [max x(left edge), min x(right edge)], same for y. This is the
    largest axis-aligned rectangle inside the undistorted border whenever each edge's innermost point lies within the
    rectangle's span (barrel/moustache lenses: the edge midpoints), and a slightly smaller, still valid one otherwise.
    The size is floored to whole pixels with the leftover split evenly on both sides, so every output pixel centre
    is at least half a pixel inside the rectangle. Zero params give back (fx, fy, cx, cy, W, H) up to rounding.
    Python numbers (a host synchronisation for CUDA params); raises ValueError if the undistorted border does not
    enclose the principal point (no convergence, or a fisheye whose border is 90 degrees or more off axis).
    """
    _check(model)
    params = torch.as_tensor(params).detach().to("cpu", torch.float64)
    t = torch.linspace(0, 1, 2 * max(height, width) + 1, dtype=torch.float64)
    zero, one = torch.zeros_like(t), torch.ones_like(t)
    u = torch.stack([zero, one, t, t]) * width  # left, right, top, bottom edges [4, N]
    v = torch.stack([t, t, zero, one]) * height
    xy = undistort(torch.stack([(u - cx) / fx, (v - cy) / fy], dim=-1), params, model, iters)
    x0, x1 = xy[0, :, 0].max().item(), xy[1, :, 0].min().item()
    y0, y1 = xy[2, :, 1].max().item(), xy[3, :, 1].min().item()
    if not (x0 < 0 < x1 and y0 < 0 < y1):  # also catches NaN (no convergence) and fisheye borders past 90 degrees
        raise ValueError(f"the undistorted border does not enclose the principal point: x [{x0}, {x1}], y [{y0}, {y1}]")
    w, h = fx * (x1 - x0), fy * (y1 - y0)
    out_w, out_h = int(math.floor(w + 1e-6)), int(math.floor(h + 1e-6))  # 1e-6 px: zero params keep W, H
    return float(fx), float(fy), -fx * x0 - 0.5 * (w - out_w), -fy * y0 - 0.5 * (h - out_h), out_w, out_h


def undistort_image(
    image: Tensor,
    fx: Number,
    fy: Number,
    cx: Number,
    cy: Number,
    params: Union[Tensor, Sequence[Number]],
    model: str = "opencv",
    out_intrinsics: Optional[Tuple[Number, Number, Number, Number]] = None,
    out_size: Optional[Tuple[int, int]] = None,
) -> Tuple[Tensor, Tensor]:
    """Resample a distorted photo ``image`` [H, W, C] into an ideal pinhole image; returns (image' [H', W', C],
    valid [H', W', 1]).

    ``out_intrinsics`` = (fx', fy', cx', cy') and ``out_size`` = (width', height') (OpenCV's order, as returned by
    :func:`undistorted_intrinsics`, which gives both defaults; with ``out_intrinsics`` given, ``out_size`` defaults
    to the input's (W, H)). Each output pixel centre is mapped by :func:`distort` (closed form) to input pixel
    coordinates and sampled bilinearly (``grid_sample``, align_corners=False, edge pixels extended). ``valid`` is 1
    where the sample lies inside the input image [0, W] x [0, H], else 0. Computed in the image's dtype (float32 for
    integer images, values not rescaled).
    """
    _check(model)
    height, width = image.shape[:2]
    if out_intrinsics is None:
        *out_intrinsics, w, h = undistorted_intrinsics(height, width, fx, fy, cx, cy, params, model)
        out_size = (w, h) if out_size is None else out_size
    elif out_size is None:
        out_size = (width, height)
    ofx, ofy, ocx, ocy = out_intrinsics
    img = image if image.is_floating_point() else image.float()
    xy = _pixel_grid(int(out_size[1]), int(out_size[0]), ofx, ofy, ocx, ocy, img.dtype, img.device)
    xy_d = distort(xy, params, model)
    u, v = xy_d[..., 0] * fx + cx, xy_d[..., 1] * fy + cy  # input pixel coordinates, centres at +0.5
    grid = torch.stack([u * (2.0 / width) - 1, v * (2.0 / height) - 1], dim=-1)  # pixel edges 0, W -> -1, +1
    out = F.grid_sample(
        img.permute(2, 0, 1)[None], grid[None], mode="bilinear", padding_mode="border", align_corners=False
    )
    valid = (u >= 0) & (u <= width) & (v >= 0) & (v <= height)
    return out[0].permute(1, 2, 0), valid[..., None].to(img.dtype)
