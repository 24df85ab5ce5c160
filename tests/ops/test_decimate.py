import math

import pytest
import torch

import threestudio.ops.decimate as dec
from threestudio.ops.decimate import clean_faces, decimate
from threestudio.utils.imports import MissingDependencyError, available

trimesh = pytest.importorskip("trimesh")


def icosphere(subdivisions: int, radius: float = 0.7):
    m = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return torch.tensor(m.vertices, dtype=torch.float32), torch.tensor(m.faces, dtype=torch.long)


def area(v, f):
    t = v[f].double()
    return 0.5 * float(torch.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0], dim=-1).norm(dim=-1).sum())


def check_clean(v, f):
    assert f.dtype == torch.long and f.shape[1] == 3
    assert bool(((f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])).all()), "repeated corner"
    t = v[f].double()
    a2 = torch.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0], dim=-1).norm(dim=-1)
    assert float(a2.min()) > 1e-10, "zero-area face"
    key = torch.sort(f, dim=1).values
    assert torch.unique(key, dim=0).shape[0] == f.shape[0], "duplicate face"
    assert torch.equal(torch.unique(f), torch.arange(v.shape[0])), "unreferenced vertex"


@pytest.mark.parametrize("budget", [1500, 400])
def test_cluster_respects_budget_and_keeps_the_surface(budget, monkeypatch):
    logged = []
    monkeypatch.setattr(dec, "info", lambda msg, *a, **k: logged.append(msg))
    v, f = icosphere(4)  # 5120 faces
    v2, f2 = decimate(v, f, budget, method="cluster", progress=False)
    assert f2.shape[0] <= budget
    assert f2.shape[0] >= 0.7 * budget  # lands near the budget, not far below it
    check_clean(v2, f2)
    a0 = area(v, f)
    assert abs(area(v2, f2) - a0) / a0 < 0.03
    # vertices stay on (near) the sphere; orientation kept: faces still point outward
    r = v2.norm(dim=-1)
    assert float((r - 0.7).abs().max()) < 0.05
    t = v2[f2]
    n = torch.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0], dim=-1)
    assert float(((n * t.mean(1)).sum(-1) > 0).float().mean()) > 0.99
    assert len(logged) == 1 and f"5120 -> {f2.shape[0]} faces" in logged[0] and "(cluster)" in logged[0]


def test_within_budget_or_zero_is_unchanged():
    v, f = icosphere(2)  # 320 faces
    v2, f2 = decimate(v, f, 320, method="cluster", progress=False)
    assert v2 is v and torch.equal(f2, f)
    v3, f3 = decimate(v, f, 0, progress=False)
    assert v3 is v and torch.equal(f3, f)


def test_clean_faces_by_hand():
    v = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [5, 5, 5], [2, 0, 0]])
    f = torch.tensor([
        [0, 1, 2],  # kept
        [1, 3, 2],  # kept
        [2, 1, 0],  # same vertices as face 0, flipped: a duplicate, dropped
        [0, 0, 3],  # repeated corner: dropped
        [0, 1, 5],  # collinear (zero area): dropped
    ])
    v2, f2 = clean_faces(v, f)
    # vertex 4 is unreferenced, 5 only by the dropped face: both removed, order of the rest kept
    assert torch.equal(v2, v[:4])
    assert torch.equal(f2, torch.tensor([[0, 1, 2], [1, 3, 2]]))


def test_bad_arguments():
    v, f = icosphere(1)
    with pytest.raises(ValueError, match="unknown method 'qem'; use one of auto, quadric, cluster"):
        decimate(v, f, 10, method="qem")
    with pytest.raises(ValueError, match="max_faces must be >= 0"):
        decimate(v, f, -1)
    with pytest.raises(ValueError, match=r"v_pos must have shape \[V, 3\]"):
        decimate(v[:, :2], f, 10)


@pytest.mark.skipif(not available("fast_simplification"), reason="fast-simplification not installed")
def test_quadric_respects_budget_and_keeps_the_surface():
    v, f = icosphere(4)
    v2, f2 = decimate(v, f, 600, method="quadric", progress=False)
    assert 0.7 * 600 <= f2.shape[0] <= 600
    check_clean(v2, f2)
    assert abs(area(v2, f2) - area(v, f)) / area(v, f) < 0.03


@pytest.mark.skipif(available("fast_simplification"), reason="fast-simplification is installed")
def test_quadric_without_the_package_says_how_to_install():
    v, f = icosphere(2)
    with pytest.raises(MissingDependencyError, match="pip install fast-simplification"):
        decimate(v, f, 100, method="quadric")
    # 'auto' falls back to clustering
    v2, f2 = decimate(v, f, 100, method="auto", progress=False)
    assert f2.shape[0] <= 100


def test_sphere_area_reference_is_sane():
    # the icosphere itself is within 1% of the true sphere area: the 3% bound above is meaningful
    v, f = icosphere(4)
    assert abs(area(v, f) - 4 * math.pi * 0.7**2) / (4 * math.pi * 0.7**2) < 0.01
