"""Splatter images: one 3D gaussian per pixel of each of V views, and their five 3-channel attribute images.

A **splatter** is a float tensor ``[..., V, 14, H, W]`` of *activated* gaussian parameters, channel order as LGM's:

    0:3 pos (xyz, object frame)  3 opacity in [0, 1]  4:7 scale (> 0, along the rotation's columns 0, 1, 2)
    7:11 rotation (unit quaternion w, x, y, z; w >= 0)  11:14 rgb in [0, 1]

The diffusion model sees instead five **attribute images** ``[..., 5, V, 3, H, W]`` in [-1, 1] (order
:data:`ATTRIBUTES`), each a 3-channel image that the SD VAE encodes. :class:`SplatterMapping` holds the transform of
each attribute; every one is "transform, then an affine map of ``range`` to [-1, 1], then clip":

============  =====================================================  ===========================================
attribute     encode (splatter -> image)                              decode (image -> splatter)
============  =====================================================  ===========================================
pos           xyz in ``pos_range``                                   affine inverse
opacity       ``linear``: o, or ``logit``: log(o / (1 - o)),         mean of the 3 channels, affine inverse,
              in ``opacity_range``; written to all 3 channels        then sigmoid for ``logit``
scale         log(s) in ``log_scale_range``                          exp of the affine inverse
              ``surfel``: channel 0 is 0, channels 1, 2 carry        ``surfel``: scales (s1, s2, thickness): the
              log s_x, log s_y (s_z is dropped: a flat gaussian)     surfel's tangent axes are rotation columns 0, 1
rotation      quaternion -> axis-angle vector in ``rotation_range``  axis-angle -> quaternion
rgb           rgb in ``rgb_range``                                   affine inverse
============  =====================================================  ===========================================

Presets (:data:`MAPPINGS`): ``wonder3d`` (the final implementation: pos +-0.7, opacity linear [0, 1], log-scale
[-10, -2] surfel, rotation +-5, rgb [0, 1]); ``zero123pp`` (the earlier Zero123++ branch: opacity linear, log-scale
[-10, -2] on all three axes, rotation +-3); ``zero123pp-2dgs`` (its 2DGS branch: opacity logit in [-14, 9], surfel
scales, rotation +-5).

Quaternions are made sign-canonical (w >= 0) before the axis-angle map, so the angle is at most pi and never clipped
by a +-5 range (with +-3, angles in (3, pi] are clipped, as in the original branch).

Rendering (:func:`render_splatter`) takes OpenGL camera-to-world matrices (x right, y up, looking along -z) and flips
them to the OpenCV/COLMAP axes the gaussian rasterizer uses by negating columns 1 and 2, then inverts them into
``viewmats``; it renders with :func:`threestudio.ops.splatting.rasterize_gaussians` (gsplat on CUDA, our PyTorch
reference elsewhere).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

ATTRIBUTES = ("pos", "opacity", "scale", "rotation", "rgb")
CHANNELS: Dict[str, slice] = {"pos": slice(0, 3), "opacity": slice(3, 4), "scale": slice(4, 7),
                              "rotation": slice(7, 11), "rgb": slice(11, 14)}
N_CHANNELS = 14

Range = Tuple[float, float]


@dataclass(frozen=True)
class SplatterMapping:
    """How each attribute becomes a 3-channel image in [-1, 1] (see the module docstring)."""

    pos_range: Range = (-0.7, 0.7)
    opacity: str = "linear"  # "linear" (the opacity itself) or "logit" (inverse sigmoid)
    opacity_range: Range = (0.0, 1.0)
    log_scale_range: Range = (-10.0, -2.0)
    scale_mode: str = "surfel"  # "surfel" (channel 0 unused, 2D gaussians) or "gaussian" (3 log-scales)
    surfel_thickness: float = math.exp(-10.0)  # the third scale a decoded surfel gets for our 3D rasterizer
    rotation_range: Range = (-5.0, 5.0)
    rgb_range: Range = (0.0, 1.0)

    def __post_init__(self) -> None:
        if self.opacity not in ("linear", "logit"):
            raise ValueError(f"SplatterMapping.opacity must be 'linear' or 'logit', got {self.opacity!r}")
        if self.scale_mode not in ("surfel", "gaussian"):
            raise ValueError(f"SplatterMapping.scale_mode must be 'surfel' or 'gaussian', got {self.scale_mode!r}")
        for name in ("pos_range", "opacity_range", "log_scale_range", "rotation_range", "rgb_range"):
            lo, hi = getattr(self, name)
            if not hi > lo:
                raise ValueError(f"SplatterMapping.{name} must be (low, high) with high > low, got {(lo, hi)}")


MAPPINGS: Dict[str, SplatterMapping] = {
    "wonder3d": SplatterMapping(),
    "zero123pp": SplatterMapping(scale_mode="gaussian", rotation_range=(-3.0, 3.0)),
    "zero123pp-2dgs": SplatterMapping(opacity="logit", opacity_range=(-14.0, 9.0)),
}


def get_mapping(mapping: Union[str, SplatterMapping, None] = None, **overrides) -> SplatterMapping:
    """A preset by name (default ``wonder3d``) or a given mapping, with field overrides."""
    if mapping is None:
        mapping = "wonder3d"
    if isinstance(mapping, str):
        if mapping not in MAPPINGS:
            raise ValueError(f"unknown splatter mapping {mapping!r}; choose one of {', '.join(MAPPINGS)}")
        mapping = MAPPINGS[mapping]
    return replace(mapping, **overrides) if overrides else mapping


# ------------------------------------------------------------------------------------------------ rotations
def _safe_norm(v: torch.Tensor) -> torch.Tensor:
    """|v| over the last axis (keepdim), with a finite gradient (zero) at v = 0."""
    return torch.sqrt((v * v).sum(-1, keepdim=True).clamp_min(1e-30))


def canonical_quaternion(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions [..., 4] (w, x, y, z) with w >= 0 (q and -q are the same rotation)."""
    q = F.normalize(q, dim=-1)
    return torch.where(q[..., :1] < 0, -q, q)


def quaternion_to_axis_angle(q: torch.Tensor) -> torch.Tensor:
    """Axis-angle vectors [..., 3] (axis times angle, angle in [0, pi]) of quaternions [..., 4] (w, x, y, z)."""
    q = canonical_quaternion(q)
    w, v = q[..., :1], q[..., 1:]
    s = _safe_norm(v)  # sin(angle / 2)
    angle = 2.0 * torch.atan2(s, w)
    # angle / sin(angle / 2); near 0 its series 2 / w * (1 - s^2 / (3 w^2)) (w = cos(angle / 2) ~ 1 there)
    small = s < 1e-4
    w_safe = w.clamp_min(0.5)
    factor = torch.where(small, 2.0 / w_safe * (1.0 - s * s / (3.0 * w_safe * w_safe)),
                         angle / torch.where(small, torch.ones_like(s), s))
    return v * factor


def axis_angle_to_quaternion(aa: torch.Tensor) -> torch.Tensor:
    """Unit quaternions [..., 4] (w, x, y, z) of axis-angle vectors [..., 3]."""
    angle = _safe_norm(aa)
    half = 0.5 * angle
    small = angle < 1e-4
    # sin(angle / 2) / angle, with its series 1/2 - angle^2 / 48 near 0
    k = torch.where(small, 0.5 - angle * angle / 48.0,
                    torch.sin(half) / torch.where(small, torch.ones_like(angle), angle))
    return torch.cat([torch.cos(half), aa * k], dim=-1)


def rotation_to_normal_quaternion(n: torch.Tensor) -> torch.Tensor:
    """Quaternions [..., 4] of the shortest rotation taking +z to the unit vectors ``n`` [..., 3] (for -z: a half
    turn about x)."""
    n = F.normalize(n, dim=-1)
    x, y, z = n.unbind(-1)
    q = torch.stack([1.0 + z, -y, x, torch.zeros_like(z)], dim=-1)
    flip = torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=n.dtype, device=n.device).expand_as(q)
    q = torch.where((1.0 + z)[..., None] < 1e-6, flip, q)
    return F.normalize(q, dim=-1)


# ------------------------------------------------------------------------------------------------ the mapping
def _to_unit(x: torch.Tensor, r: Range) -> torch.Tensor:
    """Affine map of ``r`` to [-1, 1], clipped."""
    lo, hi = r
    return ((x - lo) / (hi - lo) * 2.0 - 1.0).clamp(-1.0, 1.0)


def _from_unit(x: torch.Tensor, r: Range) -> torch.Tensor:
    lo, hi = r
    return (x.clamp(-1.0, 1.0) + 1.0) * 0.5 * (hi - lo) + lo


def _channels_last(x: torch.Tensor, dim: int) -> torch.Tensor:
    return x.movedim(dim, -1)


def check_splatter(splatter: torch.Tensor, name: str = "splatter") -> None:
    if splatter.dim() < 4 or splatter.shape[-3] != N_CHANNELS:
        raise ValueError(f"{name} must be [..., V, {N_CHANNELS}, H, W], got {list(splatter.shape)}")


def splatter_to_attribute_images(splatter: torch.Tensor, mapping: Union[str, SplatterMapping, None] = None
                                 ) -> torch.Tensor:
    """Activated splatters [..., V, 14, H, W] -> attribute images [..., 5, V, 3, H, W] in [-1, 1]."""
    check_splatter(splatter)
    m = get_mapping(mapping)
    s = _channels_last(splatter, -3)  # [..., V, H, W, 14]
    pos = _to_unit(s[..., CHANNELS["pos"]], m.pos_range)
    o = s[..., CHANNELS["opacity"]]
    if m.opacity == "logit":
        o = torch.logit(o.clamp(1e-12, 1.0 - 1e-7))
    opacity = _to_unit(o, m.opacity_range).expand(o.shape[:-1] + (3,))
    log_s = torch.log(s[..., CHANNELS["scale"]].clamp_min(1e-30))
    scale = _to_unit(log_s, m.log_scale_range)
    if m.scale_mode == "surfel":  # channel 0 is unused; channels 1, 2 hold the two tangent scales (axes 0, 1)
        scale = torch.cat([torch.zeros_like(scale[..., :1]), scale[..., :2]], dim=-1)
    rotation = _to_unit(quaternion_to_axis_angle(s[..., CHANNELS["rotation"]]), m.rotation_range)
    rgb = _to_unit(s[..., CHANNELS["rgb"]], m.rgb_range)
    images = torch.stack([pos, opacity, scale, rotation, rgb], dim=-5)  # [..., 5, V, H, W, 3]
    return images.movedim(-1, -3).contiguous()


def attribute_images_to_splatter(images: torch.Tensor, mapping: Union[str, SplatterMapping, None] = None
                                 ) -> torch.Tensor:
    """Attribute images [..., 5, V, 3, H, W] (values outside [-1, 1] are clipped) -> activated splatters
    [..., V, 14, H, W]. Differentiable (apart from the clipping)."""
    if images.dim() < 5 or images.shape[-5] != len(ATTRIBUTES) or images.shape[-3] != 3:
        raise ValueError(f"attribute images must be [..., 5, V, 3, H, W], got {list(images.shape)}")
    m = get_mapping(mapping)
    a = images.movedim(-3, -1).unbind(-5)  # 5 x [..., V, H, W, 3]
    pos = _from_unit(a[0], m.pos_range)
    o = _from_unit(a[1].mean(-1, keepdim=True), m.opacity_range)
    opacity = torch.sigmoid(o) if m.opacity == "logit" else o
    if m.scale_mode == "surfel":
        s12 = torch.exp(_from_unit(a[2][..., 1:], m.log_scale_range))
        scale = torch.cat([s12, torch.full_like(s12[..., :1], m.surfel_thickness)], dim=-1)
    else:
        scale = torch.exp(_from_unit(a[2], m.log_scale_range))
    rotation = axis_angle_to_quaternion(_from_unit(a[3], m.rotation_range))
    rgb = _from_unit(a[4], m.rgb_range)
    return torch.cat([pos, opacity, scale, rotation, rgb], dim=-1).movedim(-1, -3).contiguous()


def tile_views(x: torch.Tensor, rows: int = 3, cols: int = 2) -> torch.Tensor:
    """[..., V, C, H, W] with V = rows * cols -> one [..., C, rows*H, cols*W] grid, views row-major (the Zero123++
    layout: 6 views of 128^2 -> 384 x 256)."""
    *lead, V, C, H, W = x.shape
    if V != rows * cols:
        raise ValueError(f"tile_views: {V} views do not fill a {rows} x {cols} grid")
    x = x.reshape(*lead, rows, cols, C, H, W).movedim(-3, -5)  # [..., C, rows, cols, H, W]
    return x.transpose(-3, -2).reshape(*lead, C, rows * H, cols * W)


def untile_views(x: torch.Tensor, rows: int = 3, cols: int = 2) -> torch.Tensor:
    """Inverse of :func:`tile_views`."""
    *lead, C, HH, WW = x.shape
    if HH % rows or WW % cols:
        raise ValueError(f"untile_views: a {HH} x {WW} grid does not split into {rows} x {cols} views")
    H, W = HH // rows, WW // cols
    x = x.reshape(*lead, C, rows, H, cols, W).transpose(-3, -2)  # [..., C, rows, cols, H, W]
    return x.movedim(-5, -3).reshape(*lead, rows * cols, C, H, W)


# ------------------------------------------------------------------------------------------------ rendering
def splatter_to_gaussians(splatter: torch.Tensor) -> Dict[str, torch.Tensor]:
    """One object's splatter [V, 14, H, W] -> gaussians for the rasterizer: means [N, 3], quats [N, 4], scales
    [N, 3], opacities [N], colors [N, 3], with N = V * H * W in (view, row, column) order."""
    check_splatter(splatter)
    if splatter.dim() != 4:
        raise ValueError(f"splatter_to_gaussians takes one object [V, 14, H, W], got {list(splatter.shape)}")
    g = splatter.permute(0, 2, 3, 1).reshape(-1, N_CHANNELS)
    return {"means": g[:, 0:3], "opacities": g[:, 3], "scales": g[:, 4:7], "quats": g[:, 7:11],
            "colors": g[:, 11:14]}


def opengl_to_opencv(c2w: torch.Tensor) -> torch.Tensor:
    """Camera-to-world [..., 4, 4] in OpenGL axes -> OpenCV/COLMAP axes (columns 1 and 2 negated)."""
    out = c2w.clone()
    out[..., :3, 1:3] = -out[..., :3, 1:3]
    return out


def cameras_for_splatting(c2w_gl: torch.Tensor, fovy_rad: Union[float, torch.Tensor], height: int, width: int
                          ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``viewmats`` [C, 4, 4] (world-to-camera, OpenCV) and ``Ks`` [C, 3, 3] from OpenGL c2w [C, 4, 4] and a
    vertical field of view (radians; scalar or [C]); square pixels, centred principal point."""
    c2w_cv = opengl_to_opencv(c2w_gl.float())
    viewmats = torch.linalg.inv(c2w_cv)
    fovy = torch.as_tensor(fovy_rad, dtype=viewmats.dtype, device=viewmats.device).expand(c2w_gl.shape[0])
    f = 0.5 * height / torch.tan(0.5 * fovy)
    Ks = torch.zeros(c2w_gl.shape[0], 3, 3, dtype=viewmats.dtype, device=viewmats.device)
    Ks[:, 0, 0], Ks[:, 1, 1], Ks[:, 0, 2], Ks[:, 1, 2], Ks[:, 2, 2] = f, f, 0.5 * width, 0.5 * height, 1.0
    return viewmats, Ks


def render_splatter(splatter: torch.Tensor, c2w_gl: torch.Tensor, fovy_rad: Union[float, torch.Tensor],
                    height: int, width: int, background: Optional[Sequence[float]] = (1.0, 1.0, 1.0),
                    backend: str = "auto", tile_size: int = 16) -> Dict[str, torch.Tensor]:
    """Render one object's splatter [V, 14, H, W] into C cameras (OpenGL c2w [C, 4, 4]).

    Returns ``rgb`` [C, h, w, 3] (composited on ``background``; None: black), ``alpha`` [C, h, w, 1] and the
    rasterizer's other outputs.
    """
    from threestudio.ops.splatting import rasterize_gaussians

    g = splatter_to_gaussians(splatter)
    viewmats, Ks = cameras_for_splatting(c2w_gl.to(splatter), fovy_rad, height, width)
    bg = None
    if background is not None:
        bg = torch.as_tensor(background, dtype=splatter.dtype, device=splatter.device).reshape(1, 3)
        bg = bg.expand(c2w_gl.shape[0], 3)
    return rasterize_gaussians(g["means"], g["quats"], g["scales"], g["opacities"], g["colors"], viewmats, Ks,
                               width, height, backgrounds=bg, backend=backend, tile_size=tile_size)
