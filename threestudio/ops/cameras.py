"""Rays and cameras (pure torch, batched, float32 by default).

Conventions (the same as threestudio's):

* World space is right-handed with **z up**. A camera at elevation ``e`` and azimuth ``a`` (degrees) and distance
  ``r`` sits at ``r * (cos e cos a, cos e sin a, sin e)``: azimuth 0 is on +x and grows towards +y.
* Camera space is **OpenGL**: x right, y up, the camera looks along **-z**. A camera-to-world matrix ``c2w`` [.., 4, 4]
  has columns (right, up, back, position); ``back`` = -(viewing direction).
* Image space: pixel (i, j) is column i (from the left) and row j (from the top); its centre is at (i + 0.5, j + 0.5).
  So pixel row 0 is the top of the image, which is +y in camera space.
* Intrinsics ``K`` are the usual pinhole matrix [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] in those pixel units; the ray
  through pixel centre (u, v) has camera-space direction ((u - cx) / fx, -(v - cy) / fy, -1).
* ``perspective_projection`` is the OpenGL projection matrix (clip space, NDC in [-1, 1]^3, y up). With the default
  ``flip_y=False`` a point's NDC y = +1 is the top image row. ``flip_y=True`` negates row 1, as threestudio does for
  nvdiffrast, whose rasterized image row 0 is NDC y = -1.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from threestudio.utils.misc import constant

Tensor = torch.Tensor
Number = Union[float, int]
TensorLike = Union[Tensor, Number, Sequence[Number]]


def _as_tensor(x: TensorLike, like: Optional[Tensor] = None) -> Tensor:
    """A floating tensor (float32 unless ``x`` already is a floating tensor), on ``like``'s device/dtype if given."""
    if not isinstance(x, Tensor):
        if like is not None:  # without a blocking copy, which would wait for all queued GPU work
            return constant(x, like.device, like.dtype)
        x = torch.tensor(x, dtype=torch.float32)
    elif not x.is_floating_point():
        x = x.float()
    return x if like is None else x.to(like)


def _broadcast(*xs: TensorLike) -> Tuple[Tensor, ...]:
    """Floating tensors on the device/dtype of the first tensor argument, broadcast to one shape."""
    ref = next((x for x in xs if isinstance(x, Tensor) and x.is_floating_point()), None)
    ref = _as_tensor(xs[0]) if ref is None else ref
    return torch.broadcast_tensors(*[_as_tensor(x, ref) for x in xs])


# ----------------------------------------------------------------------------------------------------------------------
# Intrinsics and rays
# ----------------------------------------------------------------------------------------------------------------------


def fovy_to_focal(fovy: TensorLike, height: Number) -> Tensor:
    """Focal length in pixels for a vertical fov ``fovy`` (radians) and image ``height``: 0.5 H / tan(fovy / 2)."""
    fovy = _as_tensor(fovy)
    return 0.5 * height / torch.tan(0.5 * fovy)


def focal_to_fovy(focal: TensorLike, height: Number) -> Tensor:
    """Inverse of :func:`fovy_to_focal` (radians)."""
    focal = _as_tensor(focal)
    return 2.0 * torch.atan(0.5 * height / focal)


def intrinsics_from_fovy(fovy: TensorLike, height: int, width: int) -> Tensor:
    """Pinhole intrinsics K [..., 3, 3] for vertical fov ``fovy`` [...] (radians), square pixels, principal point at
    the image centre (W/2, H/2)."""
    focal = fovy_to_focal(fovy, height)
    K = torch.zeros(focal.shape + (3, 3), dtype=focal.dtype, device=focal.device)
    K[..., 0, 0] = focal
    K[..., 1, 1] = focal
    K[..., 0, 2] = 0.5 * width
    K[..., 1, 2] = 0.5 * height
    K[..., 2, 2] = 1.0
    return K


def get_ray_directions(
    height: int,
    width: int,
    focal: Union[Number, Tuple[Number, Number]],
    principal: Optional[Tuple[Number, Number]] = None,
    device: Optional[Union[str, torch.device]] = None,
) -> Tensor:
    """Camera-space ray directions [H, W, 3] (not normalised, z = -1) through the pixel centres.

    Args:
        focal: f or (fx, fy) in pixels (a Python number: one camera; use :func:`get_rays` to batch c2w).
        principal: (cx, cy) in pixels; default (W/2, H/2).
    """
    fx, fy = (focal, focal) if not isinstance(focal, (tuple, list)) else focal
    cx, cy = (0.5 * width, 0.5 * height) if principal is None else principal
    u = torch.arange(width, dtype=torch.float32, device=device) + 0.5
    v = torch.arange(height, dtype=torch.float32, device=device) + 0.5
    vv, uu = torch.meshgrid(v, u, indexing="ij")  # [H, W]
    return torch.stack([(uu - cx) / fx, -(vv - cy) / fy, -torch.ones_like(uu)], dim=-1)


def get_rays(directions: Tensor, c2w: Tensor, normalize: bool = True) -> Tuple[Tensor, Tensor]:
    """World-space rays from camera-space ``directions`` and camera-to-world matrices.

    Args:
        directions: [H, W, 3] (shared by all cameras) or [B, H, W, 3].
        c2w: [B, 4, 4] or [B, 3, 4] (also [4, 4]/[3, 4] for one camera, giving [H, W, 3] outputs).
    Returns:
        rays_o, rays_d: [B, H, W, 3] (or [H, W, 3] for an unbatched c2w); rays_d unit length if ``normalize``.
    """
    unbatched = c2w.dim() == 2
    if unbatched:
        c2w = c2w[None]
        if directions.dim() == 3:
            directions = directions[None]
    if directions.dim() == 3:
        directions = directions[None]
    R = c2w[:, :3, :3]  # [B, 3, 3]
    rays_d = torch.einsum("bij,bhwj->bhwi", R, directions.expand(c2w.shape[0], -1, -1, -1))
    rays_o = c2w[:, None, None, :3, 3].expand(rays_d.shape)
    if normalize:
        rays_d = F.normalize(rays_d, dim=-1)
    if unbatched:
        return rays_o[0], rays_d[0]
    return rays_o, rays_d


# ----------------------------------------------------------------------------------------------------------------------
# Poses
# ----------------------------------------------------------------------------------------------------------------------


def look_at(eye: Tensor, target: Optional[Tensor] = None, up: Optional[Tensor] = None) -> Tensor:
    """Camera-to-world matrices [B, 4, 4] (OpenGL: -z looks from ``eye`` at ``target``).

    Args:
        eye: [B, 3] camera positions. target: [B, 3] or [3] (default origin). up: [B, 3] or [3] (default +z).
    The up vector is made orthogonal to the viewing direction; it must not be parallel to it.
    """
    eye = _as_tensor(eye)
    if eye.dim() == 1:
        eye = eye[None]
    target = torch.zeros_like(eye) if target is None else _as_tensor(target, eye).expand_as(eye)
    up = _as_tensor([0.0, 0.0, 1.0] if up is None else up, eye).expand_as(eye)
    forward = F.normalize(target - eye, dim=-1)
    right = F.normalize(torch.cross(forward, up, dim=-1), dim=-1)
    true_up = torch.cross(right, forward, dim=-1)
    c2w = torch.zeros(eye.shape[:-1] + (4, 4), dtype=eye.dtype, device=eye.device)
    c2w[..., :3, 0] = right
    c2w[..., :3, 1] = true_up
    c2w[..., :3, 2] = -forward
    c2w[..., :3, 3] = eye
    c2w[..., 3, 3] = 1.0
    return c2w


def spherical_to_position(elevation_deg: TensorLike, azimuth_deg: TensorLike, distance: TensorLike) -> Tensor:
    """Positions [B, 3] = distance * (cos e cos a, cos e sin a, sin e); arguments broadcast to [B]."""
    e, a, r = _broadcast(elevation_deg, azimuth_deg, distance)
    e, a = torch.deg2rad(e), torch.deg2rad(a)
    return torch.stack([r * torch.cos(e) * torch.cos(a), r * torch.cos(e) * torch.sin(a), r * torch.sin(e)], dim=-1)


def c2w_from_spherical(
    elevation_deg: TensorLike,
    azimuth_deg: TensorLike,
    distance: TensorLike,
    target: Optional[Tensor] = None,
    up: Optional[Tensor] = None,
) -> Tensor:
    """c2w [B, 4, 4] of cameras on a sphere around ``target`` (default origin) looking at it, up +z.

    The camera sits at ``target + spherical_to_position(...)``. Elevation must stay strictly inside (-90, 90) unless
    another ``up`` is given (at the poles the view is parallel to +z).
    """
    pos = spherical_to_position(elevation_deg, azimuth_deg, distance)
    if pos.dim() == 1:
        pos = pos[None]
    if target is not None:
        pos = pos + _as_tensor(target, pos)
    return look_at(pos, target, up)


def world_to_camera(c2w: Tensor) -> Tensor:
    """Inverse of a rigid c2w [..., 4, 4] (or [..., 3, 4]), computed as [R^T | -R^T t]: w2c [..., 4, 4]."""
    R = c2w[..., :3, :3]
    t = c2w[..., :3, 3:]
    Rt = R.transpose(-1, -2)
    w2c = torch.zeros(c2w.shape[:-2] + (4, 4), dtype=c2w.dtype, device=c2w.device)
    w2c[..., :3, :3] = Rt
    w2c[..., :3, 3:] = -Rt @ t
    w2c[..., 3, 3] = 1.0
    return w2c


def perspective_projection(
    fovy: TensorLike, aspect_wh: TensorLike, near: float = 0.01, far: float = 100.0, flip_y: bool = False
) -> Tensor:
    """OpenGL perspective projection [B, 4, 4] (camera looks along -z; NDC z = -1 at ``near``, +1 at ``far``).

    Args:
        fovy: [B] vertical field of view in radians. aspect_wh: width / height (broadcasts).
        flip_y: negate clip y (threestudio does this so that nvdiffrast's image row 0 is the top).
    """
    fovy, aspect_wh = _broadcast(fovy, aspect_wh)
    if fovy.dim() == 0:
        fovy, aspect_wh = fovy[None], aspect_wh[None]
    proj = torch.zeros(fovy.shape + (4, 4), dtype=fovy.dtype, device=fovy.device)
    t = torch.tan(0.5 * fovy)
    proj[..., 0, 0] = 1.0 / (t * aspect_wh)
    proj[..., 1, 1] = (-1.0 if flip_y else 1.0) / t
    proj[..., 2, 2] = -(far + near) / (far - near)
    proj[..., 2, 3] = -2.0 * far * near / (far - near)
    proj[..., 3, 2] = -1.0
    return proj


def mvp_matrix(c2w: Tensor, proj: Tensor) -> Tensor:
    """Model-view-projection [B, 4, 4] = proj @ inverse(c2w): maps homogeneous world points to clip space."""
    return proj @ world_to_camera(c2w)


def project_points(points: Tensor, mvp: Tensor, height: int, width: int) -> Tuple[Tensor, Tensor]:
    """Project world points [B, N, 3] with mvp [B, 4, 4] (``flip_y=False`` convention).

    Returns:
        pixels [B, N, 2] as (u, v) in pixel units (v grows downwards, centres at +0.5) and NDC depth [B, N].
    """
    homo = torch.cat([points, torch.ones_like(points[..., :1])], dim=-1)
    clip = homo @ mvp.transpose(-1, -2)
    ndc = clip[..., :3] / clip[..., 3:4]
    u = (ndc[..., 0] + 1.0) * 0.5 * width
    v = (1.0 - ndc[..., 1]) * 0.5 * height
    return torch.stack([u, v], dim=-1), ndc[..., 2]


# ----------------------------------------------------------------------------------------------------------------------
# Camera paths and random cameras
# ----------------------------------------------------------------------------------------------------------------------


def turntable(
    n_views: int,
    elevation_deg: float = 15.0,
    distance: float = 1.5,
    fovy_deg: float = 70.0,
    start_azimuth_deg: float = 0.0,
) -> Dict[str, Tensor]:
    """A 360-degree orbit of ``n_views`` cameras evenly spaced in azimuth (the endpoint is not repeated).

    Returns a dict: ``c2w`` [N, 4, 4], ``camera_positions`` [N, 3], ``azimuth_deg``, ``elevation_deg``,
    ``camera_distances``, ``fovy_deg``, ``fovy`` (radians), all [N].
    """
    azimuth = start_azimuth_deg + torch.arange(n_views, dtype=torch.float32) * (360.0 / n_views)
    elevation = torch.full((n_views,), float(elevation_deg))
    dist = torch.full((n_views,), float(distance))
    fovy = torch.full((n_views,), float(fovy_deg))
    positions = spherical_to_position(elevation, azimuth, dist)
    return {
        "c2w": look_at(positions),
        "camera_positions": positions,
        "azimuth_deg": azimuth,
        "elevation_deg": elevation,
        "camera_distances": dist,
        "fovy_deg": fovy,
        "fovy": torch.deg2rad(fovy),
    }


def _uniform(n: int, lo: float, hi: float, generator: Optional[torch.Generator]) -> Tensor:
    return torch.rand(n, generator=generator) * (hi - lo) + lo


def sample_uniform(n: int, value_range: Tuple[float, float], generator: Optional[torch.Generator] = None) -> Tensor:
    """[n] values uniform in ``value_range`` (e.g. camera distance or fovy in degrees)."""
    return _uniform(n, float(value_range[0]), float(value_range[1]), generator)


def sample_elevation(
    n: int,
    range_deg: Tuple[float, float],
    generator: Optional[torch.Generator] = None,
    uniform_on_sphere: Optional[bool] = None,
) -> Tensor:
    """[n] elevations in degrees within ``range_deg``.

    As in threestudio, one coin flip per batch picks the law: uniform in angle (probability 0.5) or uniform on the
    sphere (uniform in sin(elevation)), unless ``uniform_on_sphere`` forces one.
    """
    if uniform_on_sphere is None:
        uniform_on_sphere = bool(torch.rand(1, generator=generator).item() >= 0.5)
    lo, hi = float(range_deg[0]), float(range_deg[1])
    if not uniform_on_sphere:
        return _uniform(n, lo, hi, generator)
    s = _uniform(n, math.sin(math.radians(lo)), math.sin(math.radians(hi)), generator)
    return torch.rad2deg(torch.asin(s.clamp(-1.0, 1.0)))


def sample_azimuth(
    n: int,
    range_deg: Tuple[float, float] = (-180.0, 180.0),
    generator: Optional[torch.Generator] = None,
    stratified: bool = False,
) -> Tensor:
    """[n] azimuths in degrees, uniform in ``range_deg``; ``stratified`` puts one in each of n equal bins (Fantasia3D's
    ``batch_uniform_azimuth``)."""
    lo, hi = float(range_deg[0]), float(range_deg[1])
    if stratified:
        u = (torch.rand(n, generator=generator) + torch.arange(n, dtype=torch.float32)) / n
        return u * (hi - lo) + lo
    return _uniform(n, lo, hi, generator)


def sample_random_cameras(
    n: int,
    elevation_range: Tuple[float, float] = (-10.0, 90.0),
    azimuth_range: Tuple[float, float] = (-180.0, 180.0),
    distance_range: Tuple[float, float] = (1.0, 1.5),
    fovy_range: Tuple[float, float] = (40.0, 70.0),
    generator: Optional[torch.Generator] = None,
    stratified_azimuth: bool = False,
) -> Dict[str, Tensor]:
    """Random cameras looking at the origin (threestudio's ``random-camera-datamodule`` defaults).

    Returns a dict: ``c2w`` [n, 4, 4], ``camera_positions`` [n, 3], ``elevation_deg``, ``azimuth_deg``,
    ``camera_distances``, ``fovy_deg``, ``fovy`` (radians), all [n]. Elevations of exactly +-90 are nudged by 1e-3
    degrees so that the +z up vector stays usable.
    """
    elevation = sample_elevation(n, elevation_range, generator).clamp(-89.999, 89.999)
    azimuth = sample_azimuth(n, azimuth_range, generator, stratified=stratified_azimuth)
    dist = sample_uniform(n, distance_range, generator)
    fovy = sample_uniform(n, fovy_range, generator)
    positions = spherical_to_position(elevation, azimuth, dist)
    return {
        "c2w": look_at(positions),
        "camera_positions": positions,
        "elevation_deg": elevation,
        "azimuth_deg": azimuth,
        "camera_distances": dist,
        "fovy_deg": fovy,
        "fovy": torch.deg2rad(fovy),
    }
