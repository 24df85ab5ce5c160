"""Tet grids, marching tetrahedra, FlexiCubes and the mesh regularisers against analytic shapes and hand values."""

import math

import numpy as np
import pytest
import torch

from threestudio.ops.flexicubes import flexicubes, normalize_weights
from threestudio.ops.marching_tets import marching_tets, sdf_sign_consistency_loss
from threestudio.ops.mesh_regularizers import laplacian_smooth_loss, normal_consistency
from threestudio.ops.tetrahedra import cube_corners, generate_tet_grid, lattice_vertices, load_tet_grid

trimesh = pytest.importorskip("trimesh")


def test_tet_grid_sizes_orientation_and_conformity():
    v, t = generate_tet_grid(64)
    assert v.shape == (33**3, 3) and t.shape == (6 * 32**3, 4)
    assert float(v.min()) == -0.5 and float(v.max()) == 0.5
    P = v[t].double()
    det = torch.det(torch.stack([P[:, 1] - P[:, 0], P[:, 2] - P[:, 0], P[:, 3] - P[:, 0]], 1))
    assert bool((det > 0).all())
    assert det.sum().item() == pytest.approx(1.0 * 6, rel=1e-9)  # 6 x the unit cube's volume
    # conforming: every interior triangle is shared by exactly two tets, boundary ones by one
    v8, t8 = generate_tet_grid(8)
    faces = torch.cat([t8[:, [0, 1, 2]], t8[:, [0, 1, 3]], t8[:, [0, 2, 3]], t8[:, [1, 2, 3]]]).sort(1).values
    _, counts = torch.unique(faces, dim=0, return_counts=True)
    assert set(counts.tolist()) == {1, 2}
    assert int((counts == 1).sum()) == 6 * 4**2 * 2  # 2 triangles per boundary square


def test_tet_grid_cache_is_written_read_back_and_repaired(tmp_path):
    v, t = load_tet_grid(16, str(tmp_path))
    path = tmp_path / "16_tets.npz"
    assert path.is_file()
    with np.load(path) as d:
        assert d["vertices"].shape == (9**3, 3) and d["indices"].shape == (6 * 8**3, 4)
    v2, t2 = load_tet_grid(16, str(tmp_path))
    assert torch.equal(v, v2) and torch.equal(t, t2)
    path.write_bytes(b"not a zip")
    v3, t3 = load_tet_grid(16, str(tmp_path))
    assert torch.equal(t, t3)
    with pytest.raises(ValueError, match="even integer"):
        load_tet_grid(33, str(tmp_path))


def check_sphere(verts, faces, r):
    m = trimesh.Trimesh(verts.detach().numpy(), faces.numpy())
    assert m.is_watertight and m.is_winding_consistent
    assert m.volume > 0  # outward normals
    assert m.area == pytest.approx(4 * math.pi * r**2, rel=0.03)
    radii = np.linalg.norm(m.vertices, axis=1)
    assert np.abs(radii - r).max() < 0.02


@pytest.mark.parametrize("r", [0.35, 0.23])
def test_dmtet_sphere_at_resolution_64_is_watertight_with_the_right_area(r):
    v, t = generate_tet_grid(64)
    verts, faces, extras = marching_tets(v, v.norm(dim=-1) - r, t)
    check_sphere(verts, faces, r)
    a, b = extras["edges"].unbind(1)
    s = v.norm(dim=-1) - r
    assert bool(((s[a] < 0) != (s[b] < 0)).all())


@pytest.mark.parametrize("training", [False, True])
def test_flexicubes_sphere_at_resolution_64_is_watertight_with_the_right_area(training):
    n = 32  # resolution 64: 32 cubes per side, the same lattice as the DMTet grid
    v = lattice_vertices(n)
    raw = torch.zeros(n**3, 21, requires_grad=True)
    beta, alpha, gamma = normalize_weights(raw)
    verts, faces, extras = flexicubes(v, v.norm(dim=-1) - 0.35, cube_corners(n), n, beta, alpha, gamma,
                                      training=training)
    check_sphere(verts, faces, 0.35)
    assert float(extras["l_dev"].detach()) < 0.01 and float(extras["weight_reg"].detach()) == 0.0
    (verts.sum() + extras["l_dev"]).backward()
    assert raw.grad[:, :20].abs().sum() > 0  # alpha and beta move the vertices
    if training:
        assert raw.grad[:, 20].abs().sum() > 0  # gamma moves the quad centres


def test_marching_tets_vertices_are_differentiable_zero_crossings():
    v, t = generate_tet_grid(8)
    v = v.double()
    sdf = (v.norm(dim=-1) - 0.3).requires_grad_(True)
    pos = v.clone().requires_grad_(True)
    verts, faces, ex = marching_tets(pos, sdf, t)
    a, b = ex["edges"].unbind(1)
    # the vertex is the linear zero crossing on its edge
    sa, sb = sdf.detach()[a], sdf.detach()[b]
    lam = sa / (sa - sb)
    assert torch.allclose(verts.detach(), v[a] + lam[:, None] * (v[b] - v[a]))
    g = torch.randn_like(verts)
    gs, gp = torch.autograd.grad((verts * g).sum(), [sdf, pos])
    # finite differences in one SDF value and one coordinate
    i = int(a[0])
    for which, grad in (("sdf", gs[i]), ("pos", gp[i, 1])):
        eps = 1e-6
        d = torch.zeros_like(sdf if which == "sdf" else pos)
        if which == "sdf":
            d[i] = eps
            f = lambda s: (marching_tets(pos.detach(), s, t)[0] * g).sum()  # noqa: E731
            fd = (f(sdf.detach() + d) - f(sdf.detach() - d)) / (2 * eps)
        else:
            d[i, 1] = eps
            f = lambda p: (marching_tets(p, sdf.detach(), t)[0] * g).sum()  # noqa: E731
            fd = (f(pos.detach() + d) - f(pos.detach() - d)) / (2 * eps)
        assert float(fd) == pytest.approx(float(grad), rel=1e-5, abs=1e-9)


def test_sdf_sign_consistency_loss_by_hand():
    sdf = torch.tensor([-1.0, 2.0])
    edges = torch.tensor([[0, 1]])
    # BCE(logit=-s_a = 1, target [s_b < 0] = 0) + BCE(logit=-s_b = -2, target [s_a < 0] = 1)
    expect = math.log(1 + math.e) + math.log(1 + math.e**2)
    assert float(sdf_sign_consistency_loss(sdf, edges)) == pytest.approx(expect)
    assert float(sdf_sign_consistency_loss(sdf, torch.zeros(0, 2, dtype=torch.long))) == 0.0


def test_normal_consistency_and_laplacian_by_hand():
    # two triangles folded by 90 degrees along the edge (0, 1)
    v = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    f = torch.tensor([[0, 1, 2], [1, 0, 3]])
    assert float(normal_consistency(v, f)) == pytest.approx(1.0)
    flat = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [1, -1, 0]])
    assert float(normal_consistency(flat, torch.tensor([[0, 1, 2], [1, 0, 3]]))) == pytest.approx(0.0, abs=1e-7)
    # a square fan: the centre is the mean of its 4 neighbours; corners are not
    v = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [-1, 0, 0], [0, -1, 0]])
    f = torch.tensor([[0, 1, 2], [0, 2, 3], [0, 3, 4], [0, 4, 1]])
    # vertex 1's neighbours: 0, 2, 4 -> centroid (0, 0, 0) -> offset (1, 0, 0): squared 1; same for 2, 3, 4
    assert float(laplacian_smooth_loss(v, f)) == pytest.approx(4 / 5)
