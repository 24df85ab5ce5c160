import math

import pytest
import torch

from threestudio.ops import cameras as C


def test_focal_and_intrinsics_hand_computed():
    # fovy 90 deg: tan(45) = 1, so f = H / 2
    assert C.fovy_to_focal(math.pi / 2, 64).item() == pytest.approx(32.0, rel=1e-6)
    # fovy 60 deg, H 100: f = 50 / tan(30) = 86.6025
    assert C.fovy_to_focal(math.radians(60.0), 100).item() == pytest.approx(86.60254, rel=1e-6)
    K = C.intrinsics_from_fovy(torch.tensor([math.radians(60.0), math.pi / 2]), 100, 150)
    assert K.shape == (2, 3, 3)
    torch.testing.assert_close(K[0], torch.tensor([[86.60254, 0, 75.0], [0, 86.60254, 50.0], [0, 0, 1.0]]))
    assert K[1, 0, 0].item() == pytest.approx(50.0, rel=1e-6)
    assert C.focal_to_fovy(C.fovy_to_focal(0.7, 64), 64).item() == pytest.approx(0.7, rel=1e-6)


def test_ray_directions_convention():
    H, W, f = 4, 6, 2.0
    d = C.get_ray_directions(H, W, f)
    assert d.shape == (H, W, 3)
    # pixel (i=0, j=0): centre (0.5, 0.5); cx=3, cy=2 -> ((0.5-3)/2, -(0.5-2)/2, -1) = (-1.25, 0.75, -1)
    torch.testing.assert_close(d[0, 0], torch.tensor([-1.25, 0.75, -1.0]))
    # bottom-right pixel (i=5, j=3): (5.5-3)/2 = 1.25, -(3.5-2)/2 = -0.75: x right, y up, -z forward
    torch.testing.assert_close(d[3, 5], torch.tensor([1.25, -0.75, -1.0]))
    # K vs focal: the direction through pixel (u, v) reprojects with K (flip y and z from OpenGL to OpenCV)
    K = C.intrinsics_from_fovy(C.focal_to_fovy(f, H), H, W)
    cv = d * torch.tensor([1.0, -1.0, -1.0])
    uv = (cv @ K.T)[..., :2] / (cv @ K.T)[..., 2:]
    v, u = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    torch.testing.assert_close(uv, torch.stack([u, v], -1))
    # principal point and (fx, fy)
    d2 = C.get_ray_directions(H, W, (2.0, 4.0), principal=(1.0, 1.0))
    torch.testing.assert_close(d2[0, 0], torch.tensor([-0.25, 0.125, -1.0]))


def test_spherical_position_hand_computed():
    p = C.spherical_to_position(torch.tensor([0.0, 0.0, 90.0, 30.0]), torch.tensor([0.0, 90.0, 0.0, 45.0]), 2.0)
    c30, s30, c45 = math.cos(math.radians(30)), 0.5, math.cos(math.radians(45))
    expected = torch.tensor([[2.0, 0, 0], [0, 2.0, 0], [0, 0, 2.0], [2 * c30 * c45, 2 * c30 * c45, 2 * s30]])
    torch.testing.assert_close(p, expected, atol=1e-6, rtol=1e-6)


def test_c2w_from_spherical_hand_computed():
    # camera on +x looking at the origin with z up: forward -x, right = forward x up = (-x) x z = +y, up = +z
    c2w = C.c2w_from_spherical(0.0, 0.0, 3.0)
    expected = torch.tensor([[0.0, 0, 1, 3], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
    torch.testing.assert_close(c2w[0], expected, atol=1e-6, rtol=0)


def test_look_at_vs_spherical_and_orthonormal():
    g = torch.Generator().manual_seed(0)
    elev = torch.rand(16, generator=g) * 170 - 85
    azim = torch.rand(16, generator=g) * 360 - 180
    dist = torch.rand(16, generator=g) + 1
    c2w = C.c2w_from_spherical(elev, azim, dist)
    pos = C.spherical_to_position(elev, azim, dist)
    torch.testing.assert_close(c2w, C.look_at(pos, torch.zeros(3), torch.tensor([0.0, 0, 1])))
    R = c2w[:, :3, :3]
    torch.testing.assert_close(R.transpose(1, 2) @ R, torch.eye(3).expand(16, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(16), atol=1e-5, rtol=0)
    # -z axis points at the origin; camera up has a non-negative world-z component
    torch.testing.assert_close(-R[:, :, 2], -pos / pos.norm(dim=-1, keepdim=True), atol=1e-5, rtol=0)
    assert (R[:, 2, 1] >= 0).all()
    # the centre ray of the camera passes through the origin
    _, d = C.get_rays(C.get_ray_directions(2, 2, 1.0), c2w)
    centre = d.mean(dim=(1, 2))
    torch.testing.assert_close(
        torch.nn.functional.normalize(centre, dim=-1), -pos / pos.norm(dim=-1, keepdim=True), atol=1e-5, rtol=0
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cameras_from_cuda_tensors_do_not_synchronise():
    # MVDream's guidance builds its camera rows from the batch's angles every step: a blocking copy of look_at's
    # constant up vector made the host wait for the whole render before it could queue the UNet
    elev, azim, dist = (torch.rand(4, device="cuda") * 30, torch.arange(4, device="cuda") * 90.0,
                        torch.full((4,), 2.0, device="cuda"))
    expected = C.c2w_from_spherical(elev.cpu(), azim.cpu(), dist.cpu())
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        c2w = C.c2w_from_spherical(elev, azim, dist)
        c2w_up = C.look_at(C.spherical_to_position(elev, azim, dist), up=[0.0, 0.0, 1.0])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(c2w.cpu(), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(c2w_up.cpu(), expected, atol=1e-5, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_per_step_constants_do_not_synchronise():
    # the other per-step users of small constants: MVDream's camera rows from [B, 3, 4] poses, vertex normals (mesh
    # recipes, every step), marching tetrahedra's case codes
    from threestudio.models.guidance.mvdream.score import camera_condition
    from threestudio.models.mesh import vertex_normals
    from threestudio.utils.misc import constant

    c2w = C.c2w_from_spherical(torch.tensor([10.0, 20.0]), torch.tensor([0.0, 90.0]), 2.0)
    v = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    f = torch.tensor([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    expected = camera_condition(c2w[:, :3]), vertex_normals(v, f)
    c2w, v, f = c2w.cuda(), v.cuda(), f.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = camera_condition(c2w[:, :3]), vertex_normals(v, f)
        k = constant([1, 2, 4, 8], c2w.device)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for a, b in zip(got, expected):
        torch.testing.assert_close(a.cpu(), b, atol=1e-6, rtol=0)
    assert k.dtype == torch.long and k.tolist() == [1, 2, 4, 8]


def test_constant_keeps_values_dtype_and_device():
    from threestudio.utils.misc import constant

    k = constant([[0.1, -1.0]], "cpu", torch.float64)
    assert k.dtype == torch.float64 and k.device.type == "cpu" and k.tolist() == [[0.1, -1.0]]
    assert constant([1, 2], torch.device("cpu")).dtype == torch.long
    like = torch.zeros(2, dtype=torch.float64)
    assert C._as_tensor([0.1, 0.2], like).dtype == torch.float64
    assert C._as_tensor([0.1, 0.2], like)[0].item() == 0.1  # built in float64, not rounded through float32


def test_get_rays_shapes_and_values():
    c2w = C.look_at(torch.tensor([[0.0, -2.0, 0.0], [1.0, 1.0, 1.0]]))
    dirs = C.get_ray_directions(3, 5, 4.0)
    o, d = C.get_rays(dirs, c2w)
    assert o.shape == d.shape == (2, 3, 5, 3)
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(2, 3, 5))
    torch.testing.assert_close(o[1, 2, 4], torch.tensor([1.0, 1.0, 1.0]))
    _, d2 = C.get_rays(dirs, c2w, normalize=False)
    torch.testing.assert_close(d2[0], dirs @ c2w[0, :3, :3].T)
    o1, d1 = C.get_rays(dirs, c2w[1])  # unbatched
    torch.testing.assert_close(o1, o[1])
    torch.testing.assert_close(d1, d[1])


def test_perspective_projection_hand_computed():
    P = C.perspective_projection(math.pi / 2, 2.0, near=1.0, far=3.0)[0]
    expected = torch.tensor([[0.5, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, -2.0, -3.0], [0, 0, -1.0, 0]])
    torch.testing.assert_close(P, expected, atol=1e-6, rtol=0)
    # near plane -> ndc z = -1, far plane -> +1
    for z, ndc in [(-1.0, -1.0), (-3.0, 1.0)]:
        clip = P @ torch.tensor([0.0, 0.0, z, 1.0])
        assert (clip[2] / clip[3]).item() == pytest.approx(ndc, abs=1e-6)
    Pf = C.perspective_projection(math.pi / 2, 2.0, near=1.0, far=3.0, flip_y=True)[0]
    assert Pf[1, 1].item() == pytest.approx(-1.0)


def test_mvp_projects_ray_points_back_to_their_pixel():
    g = torch.Generator().manual_seed(1)
    H, W = 24, 40
    cams = C.sample_random_cameras(4, generator=g)
    proj = C.perspective_projection(cams["fovy"], W / H, 0.1, 100.0)
    mvp = C.mvp_matrix(cams["c2w"], proj)
    # one focal per camera: directions [B, H, W, 3]
    dirs = torch.stack([C.get_ray_directions(H, W, float(C.fovy_to_focal(f, H))) for f in cams["fovy"]])
    o, d = C.get_rays(dirs, cams["c2w"])
    t = torch.rand(4, H, W, 1, generator=g) * 3 + 0.5
    pts = (o + t * d).reshape(4, -1, 3)
    uv, _ = C.project_points(pts, mvp, H, W)
    v, u = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    expected = torch.stack([u, v], -1).reshape(1, -1, 2).expand(4, -1, -1)
    torch.testing.assert_close(uv, expected, atol=2e-3, rtol=0)


def test_world_to_camera_inverts_c2w():
    c2w = C.c2w_from_spherical(torch.tensor([10.0, -5.0]), torch.tensor([30.0, 200.0]), torch.tensor([1.5, 2.0]))
    torch.testing.assert_close(C.world_to_camera(c2w) @ c2w, torch.eye(4).expand(2, 4, 4), atol=1e-6, rtol=0)


def test_turntable_covers_360_evenly():
    tt = C.turntable(8, elevation_deg=15.0, distance=2.0, fovy_deg=60.0)
    assert tt["c2w"].shape == (8, 4, 4)
    torch.testing.assert_close(tt["azimuth_deg"], torch.arange(8.0) * 45.0)
    pos = tt["camera_positions"]
    torch.testing.assert_close(pos.norm(dim=-1), torch.full((8,), 2.0))
    torch.testing.assert_close(pos[:, 2], torch.full((8,), 2.0 * math.sin(math.radians(15.0))))
    # consecutive cameras are 45 degrees apart around z (including the wrap from the last to the first)
    xy = torch.nn.functional.normalize(pos[:, :2], dim=-1)
    cosines = (xy * xy.roll(-1, 0)).sum(-1)
    torch.testing.assert_close(cosines, torch.full((8,), math.cos(math.radians(45.0))), atol=1e-6, rtol=0)
    torch.testing.assert_close(tt["c2w"][:, :3, 3], pos)
    assert tt["fovy"][0].item() == pytest.approx(math.radians(60.0))


def test_random_cameras_reproducible_and_in_range():
    a = C.sample_random_cameras(
        64, elevation_range=(-10, 45), distance_range=(1.5, 2.0), generator=torch.Generator().manual_seed(3)
    )
    b = C.sample_random_cameras(
        64, elevation_range=(-10, 45), distance_range=(1.5, 2.0), generator=torch.Generator().manual_seed(3)
    )
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    assert a["elevation_deg"].min() >= -10 and a["elevation_deg"].max() <= 45
    assert a["camera_distances"].min() >= 1.5 and a["camera_distances"].max() <= 2.0
    assert a["fovy_deg"].min() >= 40 and a["fovy_deg"].max() <= 70
    torch.testing.assert_close(a["camera_positions"].norm(dim=-1), a["camera_distances"])
    torch.testing.assert_close(a["c2w"][:, :3, 3], a["camera_positions"])


def test_elevation_laws():
    g = torch.Generator().manual_seed(0)
    n = 200_000
    angle = C.sample_elevation(n, (0.0, 90.0), g, uniform_on_sphere=False)
    sphere = C.sample_elevation(n, (0.0, 90.0), g, uniform_on_sphere=True)
    # uniform in angle: mean 45 deg; uniform on the sphere: sin(e) ~ U[0, 1], E[asin U] = pi/2 - 1 rad = 32.70 deg
    assert angle.mean().item() == pytest.approx(45.0, abs=0.3)
    assert sphere.mean().item() == pytest.approx(math.degrees(math.pi / 2 - 1.0), abs=0.3)
    assert torch.sin(torch.deg2rad(sphere)).mean().item() == pytest.approx(0.5, abs=0.005)
    # default: one fair coin per batch picks the law; classify 200 batches by their mean (45 vs 32.7 degrees)
    means = torch.stack([C.sample_elevation(4000, (0.0, 90.0), g).mean() for _ in range(200)])
    on_sphere = means < 38.85
    assert ((means - 45.0).abs() < 1.5).logical_or((means - 32.7).abs() < 1.5).all()
    assert 0.38 < on_sphere.float().mean().item() < 0.62
    strat = C.sample_azimuth(8, (-180, 180), g, stratified=True)
    assert torch.equal(torch.floor((strat + 180) / 45), torch.arange(8.0))
