"""GET3D's cameras: positions on a sphere of radius 1.2 looking at the origin, fovy = 2 atan(16/35) (Blender's
35 mm lens on a 32 mm sensor), an OpenGL projection with the y axis flipped (near 0.1, far 1000).

Position from azimuth ``theta`` and polar angle ``phi`` (from +Y): ``(r sin(phi) cos(t), r cos(phi),
r sin(phi) sin(t))`` with ``t = -theta - pi/2``. World-to-camera rows: right = normalize(+Y x forward), up =
forward x right, forward = normalize(position) (the camera looks down its -z axis, as OpenGL).

Training prior per ``data_camera_mode`` (:data:`CAMERA_MODES`): azimuth U[0, 2 pi), polar U[mean +- half width].
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

# mode -> (polar mean, polar half width) in degrees
CAMERA_MODES = {
    "shapenet_car": (75.0, 15.0), "shapenet_chair": (75.0, 15.0), "shapenet_motorbike": (75.0, 15.0),
    "ts_house": (75.0, 15.0), "ts_animal": (67.5, 22.5), "renderpeople": (80.0, 10.0),
}
DEFAULT_FOVY_DEG = 2 * math.degrees(math.atan(16 / 35))


def check_mode(mode: str, key: str = "data_camera_mode") -> str:
    if mode not in CAMERA_MODES:
        raise ValueError(f"{key}: unknown camera mode {mode!r}; choose one of {', '.join(CAMERA_MODES)}")
    return mode


def camera_positions(azimuth: torch.Tensor, polar: torch.Tensor, radius: float = 1.2) -> torch.Tensor:
    t = -azimuth - math.pi / 2
    return torch.stack([radius * torch.sin(polar) * torch.cos(t), radius * torch.cos(polar),
                        radius * torch.sin(polar) * torch.sin(t)], -1)


def world_to_camera(origin: torch.Tensor) -> torch.Tensor:
    """[..., 3] camera positions -> [..., 4, 4] world-to-camera matrices (look at the origin, up +Y)."""
    fwd = torch.nn.functional.normalize(origin, dim=-1)
    up = torch.zeros_like(fwd)
    up[..., 1] = 1.0
    right = torch.nn.functional.normalize(torch.cross(up, fwd, dim=-1), dim=-1)
    upv = torch.cross(fwd, right, dim=-1)
    rot = torch.stack([right, upv, fwd], -2)  # [..., 3, 3]
    m = torch.zeros(*origin.shape[:-1], 4, 4, dtype=origin.dtype, device=origin.device)
    m[..., :3, :3] = rot
    m[..., :3, 3] = -(rot @ origin[..., None])[..., 0]
    m[..., 3, 3] = 1.0
    return m


def projection(fovy_deg: float = DEFAULT_FOVY_DEG, near: float = 0.1, far: float = 1000.0,
               device: Optional[torch.device] = None) -> torch.Tensor:
    x = math.tan(math.radians(fovy_deg) / 2)
    return torch.tensor([[1 / x, 0, 0, 0], [0, -1 / x, 0, 0],
                         [0, 0, -(far + near) / (far - near), -2 * far * near / (far - near)],
                         [0, 0, -1, 0]], dtype=torch.float32, device=device)


def mvp_from_angles(azimuth: torch.Tensor, polar: torch.Tensor, radius: float = 1.2,
                    fovy_deg: float = DEFAULT_FOVY_DEG) -> torch.Tensor:
    """[...] angles (radians) -> [..., 4, 4] model-view-projection matrices."""
    w2c = world_to_camera(camera_positions(azimuth, polar, radius))
    return projection(fovy_deg, device=azimuth.device) @ w2c


def sample_angles(shape: Tuple[int, ...], mode: str = "shapenet_car", generator: Optional[torch.Generator] = None,
                  device: Optional[torch.device] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Azimuth U[0, 2 pi) and polar U[mean +- half width] (radians) from the ``mode`` prior."""
    mean, half = CAMERA_MODES[check_mode(mode)]
    u = torch.rand(2, *shape, generator=generator).to(device)
    az = u[0] * 2 * math.pi
    polar = torch.deg2rad(torch.tensor(mean - half) + u[1] * 2 * half)
    return az, polar.to(az.dtype)


def turntable_angles(n: int, polar_deg: float = 75.0, device: Optional[torch.device] = None
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    az = torch.arange(n, dtype=torch.float32, device=device) * (2 * math.pi / n)
    return az, torch.full_like(az, math.radians(polar_deg))
