import math

import numpy as np
import pytest
import torch

from threestudio.ops.marching_cubes import eval_grid, grid_points, marching_cubes

pytest.importorskip("mcubes")
trimesh = pytest.importorskip("trimesh")

R_SPHERE = 0.6
CENTRE = torch.tensor([0.1, -0.05, 0.2])


def sphere_sdf(x: torch.Tensor) -> torch.Tensor:  # negative inside
    return (x - CENTRE).norm(dim=-1) - R_SPHERE


def to_trimesh(v, f):
    return trimesh.Trimesh(v.numpy().astype(np.float64), f.numpy(), process=False)


def test_sphere_sdf_area_volume_and_orientation():
    v, f = marching_cubes(sphere_sdf, 0.0, bbox=[[-1, -1, -1], [1, 1, 1]], resolution=128, inside="below")
    assert v.dtype == torch.float32 and f.dtype == torch.int64 and v.shape[1] == 3 and f.shape[1] == 3
    mesh = to_trimesh(v, f)
    assert mesh.is_watertight
    area = 4 * math.pi * R_SPHERE**2
    assert abs(mesh.area - area) / area < 0.02
    vol = 4 / 3 * math.pi * R_SPHERE**3
    assert mesh.volume > 0  # outward normals: positive signed volume
    assert abs(mesh.volume - vol) / vol < 0.02
    # world coordinates: every vertex lies on the sphere (within a fraction of a cell)
    assert ((v - CENTRE).norm(dim=-1) - R_SPHERE).abs().max() < 2.0 / 127 * 0.25
    # face normals point away from the centre
    n = torch.tensor(np.array(mesh.face_normals), dtype=torch.float32)
    c = torch.tensor(np.array(mesh.triangles_center), dtype=torch.float32) - CENTRE
    assert ((n * c).sum(-1) > 0).all()


def test_density_convention_matches_negated_sdf():
    grid = eval_grid(sphere_sdf, [[-1, -1, -1], [1, 1, 1]], 48)
    # density-like field: inside = field > threshold (default inside="above")
    v1, f1 = marching_cubes(-grid, 0.0, bbox=[[-1, -1, -1], [1, 1, 1]])
    v2, f2 = marching_cubes(grid, 0.0, bbox=[[-1, -1, -1], [1, 1, 1]], inside="below")
    m1, m2 = to_trimesh(v1, f1), to_trimesh(v2, f2)
    assert m1.volume > 0 and m2.volume > 0
    assert m1.volume == pytest.approx(m2.volume, rel=1e-6)
    # a positive threshold on a density: density = 10 - 10 * |x - c| / R, level 5 = sphere of radius R / 2
    dens = 10.0 - 10.0 * (grid + R_SPHERE) / R_SPHERE
    v3, f3 = marching_cubes(dens, 5.0, bbox=[[-1, -1, -1], [1, 1, 1]])
    m3 = to_trimesh(v3, f3)
    assert m3.volume == pytest.approx(4 / 3 * math.pi * (R_SPHERE / 2) ** 3, rel=0.05)


def test_eval_grid_layout_and_chunks():
    bbox = [[-1.0, 0.0, 2.0], [1.0, 2.0, 3.0]]
    pts = grid_points(bbox, (3, 5, 2))
    assert pts.shape == (3, 5, 2, 3)
    torch.testing.assert_close(pts[2, 4, 1], torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(pts[1, 2, 0], torch.tensor([0.0, 1.0, 2.0]))
    g = eval_grid(lambda x: x[:, 0] + 10 * x[:, 1] + 100 * x[:, 2], bbox, (3, 5, 2), chunk=7)
    torch.testing.assert_close(g, pts[..., 0] + 10 * pts[..., 1] + 100 * pts[..., 2])


def test_anisotropic_bbox_maps_vertices_to_world():
    # ellipsoid x^2/a^2 + y^2/b^2 + z^2/c^2 = 1 in a non-cubic box and grid
    a, b, c = 0.8, 0.4, 1.5
    bbox = [[-1.0, -0.5, -2.0], [1.0, 0.5, 2.0]]

    def fn(x):
        return 1.0 - ((x[:, 0] / a) ** 2 + (x[:, 1] / b) ** 2 + (x[:, 2] / c) ** 2)

    v, f = marching_cubes(fn, 0.0, bbox=bbox, resolution=(64, 48, 96))
    q = (v[:, 0] / a) ** 2 + (v[:, 1] / b) ** 2 + (v[:, 2] / c) ** 2
    assert (q - 1).abs().max() < 0.05
    mesh = to_trimesh(v, f)
    assert mesh.is_watertight and mesh.volume == pytest.approx(4 / 3 * math.pi * a * b * c, rel=0.02)


def test_empty_level_set_error_names_range_and_threshold():
    dens = torch.rand(16, 16, 16) * 4.0 + 1.0  # [1, 5]
    with pytest.raises(ValueError) as e:
        marching_cubes(dens, 25.0)
    msg = str(e.value)
    assert "no surface" in msg and "25" in msg and "outside" in msg
    lo, hi = float(dens.min()), float(dens.max())
    assert f"{lo:.6g}" in msg and f"{hi:.6g}" in msg and "threshold between" in msg
    with pytest.raises(ValueError, match="whole grid is inside"):
        marching_cubes(dens, 0.5)
    with pytest.raises(ValueError, match="non-finite"):
        marching_cubes(torch.full((4, 4, 4), float("nan")), 0.0)
    with pytest.raises(ValueError, match="needs a resolution"):
        marching_cubes(sphere_sdf, 0.0)
