"""The 6 splatter views of an object, and the object frame their gaussians live in.

View sets (:data:`VIEW_SETS`), each relative to the *input* camera (elevation ``e``, azimuth ``a``):

* ``wonder3d`` (the final implementation): azimuth a + (0, 90, 180, 270, 30, 330) at elevation e, fovy 39.6 deg.
  View 0 is the input view itself.
* ``zero123pp-v1.1``: azimuth a + (30, 90, 150, 210, 270, 330) at absolute elevations (30, -20, 30, -20, 30, -20),
  fovy 60 deg (the LVIS renders of the Zero123++ branch).
* ``zero123pp-v1.2``: as v1.1 with elevations (20, -10, 20, -10, 20, -10) and fovy 30 deg.

All cameras look at the world origin from ``distance`` (default 1.5). Views are row-major in the 3 x 2 grid of
:func:`splatter.tile_views`.

**Object frame.** Splatter positions are expressed in the frame ``T(0, 0, d) @ inverse(c2w_view0)``: the first
splatter view's camera sits at (0, 0, d) with the identity rotation (OpenGL: x right, y up, looking along -z), and
the object's centre (the look-at point) is the origin. :func:`anchor_frame` gives that matrix; every camera and mesh
vertex of an object is mapped through it, so everything stored is in the object frame.

World here is the framework's (z up; :mod:`threestudio.ops.cameras`), used only to place the cameras before anchoring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

from threestudio.ops.cameras import c2w_from_spherical, world_to_camera


@dataclass(frozen=True)
class ViewSet:
    azimuth_deg: Tuple[float, ...]  # added to the input azimuth
    elevation_deg: Tuple[float, ...]  # added to the input elevation when elevation_relative, else absolute
    elevation_relative: bool
    fovy_deg: float


VIEW_SETS: Dict[str, ViewSet] = {
    "wonder3d": ViewSet((0.0, 90.0, 180.0, 270.0, 30.0, 330.0), (0.0,) * 6, True, 39.6),
    "zero123pp-v1.1": ViewSet((30.0, 90.0, 150.0, 210.0, 270.0, 330.0), (30.0, -20.0) * 3, False, 60.0),
    "zero123pp-v1.2": ViewSet((30.0, 90.0, 150.0, 210.0, 270.0, 330.0), (20.0, -10.0) * 3, False, 30.0),
}


def get_view_set(name: str) -> ViewSet:
    if name not in VIEW_SETS:
        raise ValueError(f"unknown view set {name!r}; choose one of {', '.join(VIEW_SETS)}")
    return VIEW_SETS[name]


def splatter_view_angles(view_set: str, input_elevation_deg: float, input_azimuth_deg: float = 0.0
                         ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(elevation, azimuth) in degrees [V] of the splatter views."""
    vs = get_view_set(view_set)
    az = torch.tensor(vs.azimuth_deg) + float(input_azimuth_deg)
    el = torch.tensor(vs.elevation_deg) + (float(input_elevation_deg) if vs.elevation_relative else 0.0)
    return el, az


def world_cameras(elevation_deg: torch.Tensor, azimuth_deg: torch.Tensor, distance: float) -> torch.Tensor:
    """OpenGL c2w [N, 4, 4] in the world (z up), looking at the origin."""
    return c2w_from_spherical(elevation_deg.float(), azimuth_deg.float(), float(distance))


def anchor_frame(c2w_first: torch.Tensor, distance: float) -> torch.Tensor:
    """The world -> object-frame matrix [4, 4] = T(0, 0, distance) @ inverse(c2w_first)."""
    T = torch.eye(4, dtype=c2w_first.dtype, device=c2w_first.device)
    T[2, 3] = float(distance)
    return T @ world_to_camera(c2w_first)


@dataclass
class ObjectCameras:
    """One object's cameras, all OpenGL c2w in the object frame: ``input`` [1, 4, 4], ``splatter`` [V, 4, 4],
    ``extra`` [K, 4, 4] (supervision), ``heldout`` [M, 4, 4] (evaluation), each with elevation/azimuth (world
    degrees, for the record), plus ``frame`` (world -> object frame) and the field of view."""

    c2w: Dict[str, torch.Tensor]
    elevation_deg: Dict[str, torch.Tensor]
    azimuth_deg: Dict[str, torch.Tensor]
    frame: torch.Tensor
    fovy_deg: float
    distance: float


def object_cameras(view_set: str = "wonder3d", input_elevation_deg: float = 20.0, input_azimuth_deg: float = 0.0,
                   distance: float = 1.5, n_extra: int = 0, n_heldout: int = 0,
                   elevation_range: Tuple[float, float] = (0.0, 40.0), generator: Optional[torch.Generator] = None,
                   fovy_deg: Optional[float] = None) -> ObjectCameras:
    """The input, splatter, extra and held-out cameras of one object. Extra and held-out cameras look at the
    origin from ``distance`` at uniform random azimuths and elevations in ``elevation_range`` (drawn with
    ``generator``; held-out ones after the extra ones)."""
    vs = get_view_set(view_set)
    el, az = splatter_view_angles(view_set, input_elevation_deg, input_azimuth_deg)
    groups = {"input": (torch.tensor([float(input_elevation_deg)]), torch.tensor([float(input_azimuth_deg)])),
              "splatter": (el, az)}
    lo, hi = elevation_range
    for name, n in (("extra", n_extra), ("heldout", n_heldout)):
        e = lo + (hi - lo) * torch.rand(n, generator=generator)
        a = 360.0 * torch.rand(n, generator=generator)
        groups[name] = (e, a)
    world = {k: world_cameras(e, a, distance) if len(e) else torch.zeros(0, 4, 4) for k, (e, a) in groups.items()}
    frame = anchor_frame(world["splatter"][0], distance)
    c2w = {k: frame @ v for k, v in world.items()}
    return ObjectCameras(c2w=c2w, elevation_deg={k: v[0] for k, v in groups.items()},
                         azimuth_deg={k: v[1] for k, v in groups.items()}, frame=frame,
                         fovy_deg=float(vs.fovy_deg if fovy_deg is None else fovy_deg), distance=float(distance))
