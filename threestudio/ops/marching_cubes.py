"""Isosurface extraction on a regular grid with marching cubes (PyMCubes, CPU).

Convention: the field is sampled at ``resolution`` points per axis spanning ``bbox`` inclusive of both corners
(``torch.linspace(bbox[0, a], bbox[1, a], resolution)``), indexed field[ix, iy, iz]. By default the **inside** of the
surface is where ``field > threshold`` (a density); pass ``inside="below"`` for a signed distance (negative inside)
or any field whose inside is below the threshold. The returned faces are oriented counter-clockwise seen from
outside, so face normals (v1 - v0) x (v2 - v0) point out of the inside region and the mesh's signed volume is
positive.
"""

from __future__ import annotations

from typing import Callable, Literal, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from threestudio.utils.imports import require

Tensor = torch.Tensor
FieldFn = Callable[[Tensor], Tensor]



class NoSurfaceError(ValueError):
    """The field never crosses the isosurface threshold inside the box: there is nothing to mesh (yet)."""

def _bbox_tensor(bbox: Union[Tensor, Sequence[Sequence[float]]]) -> Tensor:
    b = torch.as_tensor(bbox, dtype=torch.float32).reshape(2, 3)
    if not bool((b[1] > b[0]).all()):
        raise ValueError(f"bbox must be [[xmin, ymin, zmin], [xmax, ymax, zmax]] with max > min, got {b.tolist()}")
    return b


def _res3(resolution: Union[int, Sequence[int]]) -> Tuple[int, int, int]:
    res = (int(resolution),) * 3 if isinstance(resolution, (int, np.integer)) else tuple(int(r) for r in resolution)
    if len(res) != 3 or min(res) < 2:
        raise ValueError(f"resolution must be an int >= 2 or three of them, got {resolution}")
    return res  # type: ignore[return-value]


def grid_points(
    bbox: Union[Tensor, Sequence[Sequence[float]]], resolution: Union[int, Sequence[int]], device=None
) -> Tensor:
    """The sample points [Rx, Ry, Rz, 3] of the grid over ``bbox`` [2, 3] (corners included)."""
    b = _bbox_tensor(bbox)
    rx, ry, rz = _res3(resolution)
    axes = [torch.linspace(float(b[0, a]), float(b[1, a]), r, device=device) for a, r in enumerate((rx, ry, rz))]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


@torch.no_grad()
def eval_grid(
    fn: FieldFn,
    bbox: Union[Tensor, Sequence[Sequence[float]]],
    resolution: Union[int, Sequence[int]],
    chunk: int = 1 << 18,
    device: Optional[Union[str, torch.device]] = None,
) -> Tensor:
    """Evaluate ``fn`` (points [M, 3] -> values [M] or [M, 1]) on the grid, ``chunk`` points at a time.

    Returns:
        float32 [Rx, Ry, Rz] on the CPU.
    """
    pts = grid_points(bbox, resolution).reshape(-1, 3)
    out = torch.empty(pts.shape[0], dtype=torch.float32)
    for i in range(0, pts.shape[0], chunk):
        p = pts[i : i + chunk]
        if device is not None:
            p = p.to(device)
        v = fn(p)
        if v.numel() != p.shape[0]:
            raise ValueError(
                f"the field function must return one value per point ({p.shape[0]}), got shape {tuple(v.shape)}"
            )
        out[i : i + chunk] = v.reshape(-1).float().cpu()
    return out.reshape(_res3(resolution))


def marching_cubes(
    field: Union[Tensor, np.ndarray, FieldFn],
    threshold: float,
    bbox: Union[Tensor, Sequence[Sequence[float]]] = ((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0)),
    resolution: Optional[Union[int, Sequence[int]]] = None,
    inside: Literal["above", "below"] = "above",
    chunk: int = 1 << 18,
    device: Optional[Union[str, torch.device]] = None,
) -> Tuple[Tensor, Tensor]:
    """Extract the ``threshold`` level set of a field as a triangle mesh.

    Args:
        field: a grid [Rx, Ry, Rz] (tensor or array) sampled as described in the module docstring, or a callable
            points [M, 3] -> values [M] evaluated with :func:`eval_grid` at ``resolution`` (required then).
        threshold: the iso-value. bbox: [2, 3] world box the grid spans.
        inside: "above" (density: inside = field > threshold) or "below" (SDF: inside = field < threshold).
        device: where a callable field is evaluated (points are moved there chunk by chunk).
    Returns:
        vertices [V, 3] float32 world coordinates, faces [F, 3] int64 (outward-facing, see the module docstring).
    Raises:
        ValueError if the field does not cross ``threshold`` (no surface), naming the field's range.
    """
    if inside not in ("above", "below"):
        raise ValueError(f"inside must be 'above' (density-like) or 'below' (SDF-like), got {inside!r}")
    mcubes = require("mcubes", "marching cubes", "pip install PyMCubes")
    b = _bbox_tensor(bbox)
    if callable(field) and not isinstance(field, (Tensor, np.ndarray)):
        if resolution is None:
            raise ValueError("marching_cubes: a callable field needs a resolution")
        grid = eval_grid(field, b, resolution, chunk=chunk, device=device)
    else:
        grid = torch.as_tensor(field).detach().float().cpu()
        if grid.dim() != 3:
            raise ValueError(f"field must be a [Rx, Ry, Rz] grid, got shape {tuple(grid.shape)}")
        if resolution is not None and tuple(grid.shape) != _res3(resolution):
            raise ValueError(f"field has shape {tuple(grid.shape)} but resolution {resolution} was given")
    if min(grid.shape) < 2:
        raise ValueError(f"field must have at least 2 samples per axis, got shape {tuple(grid.shape)}")

    finite = torch.isfinite(grid)
    if not bool(finite.all()):
        raise ValueError(f"the field has {int((~finite).sum())} non-finite values (nan/inf) out of {grid.numel()}")
    lo, hi = float(grid.min()), float(grid.max())
    if not (lo < threshold < hi):
        side = "inside" if (lo > threshold) == (inside == "above") else "outside"
        pos = grid[grid > 0]
        hint = f"a threshold between {lo:.6g} and {hi:.6g}"
        if pos.numel() > 0 and inside == "above":
            hint += f" (e.g. the mean of the positive values, {float(pos.mean()):.6g}, as threestudio's 'auto' does)"
        raise NoSurfaceError(
            f"marching_cubes: no surface. The field ranges over [{lo:.6g}, {hi:.6g}] and never crosses threshold "
            f"{threshold:.6g}, so the whole grid is {side} (inside = field {'>' if inside == 'above' else '<'} "
            f"threshold). Try {hint}, or check the bbox."
        )

    volume = grid.double().numpy()
    if inside == "above":
        verts, faces = mcubes.marching_cubes(volume, float(threshold))
    else:
        verts, faces = mcubes.marching_cubes(-volume, -float(threshold))
    # PyMCubes gives vertices in index units and faces oriented outward for an "inside = above" field
    scale = (b[1] - b[0]) / (torch.tensor(grid.shape, dtype=torch.float32) - 1.0)
    vertices = torch.from_numpy(np.ascontiguousarray(verts)).float() * scale + b[0]
    faces_t = torch.from_numpy(np.ascontiguousarray(faces).astype(np.int64))
    return vertices, faces_t
