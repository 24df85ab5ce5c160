import math

import numpy as np
import pytest
import torch

from threestudio.ops import distortion as D
from threestudio.ops.cameras import get_ray_directions

# the instant-ngp fox capture: portrait 1080 x 1920 (width x height)
FOX = dict(height=1920, width=1080, fx=1375.0, fy=1375.0, cx=554.6, cy=965.3)
FOX_PARAMS = [0.0578, -0.0805, 0.0, 0.0, -0.00098, 0.000156]
OPENCV_PARAMS = [  # (k1, k2, k3, k4, p1, p2); each monotone for r <= 1
    FOX_PARAMS,
    [0.06, -0.08, 0.0, 0.0, -1e-3, 1.5e-4],
    [-0.3, 0.1, -0.02, 0.0, 1e-3, -2e-3],  # strong barrel
    [0.25, 0.05, 0.01, 0.0, 2e-3, 1e-3],  # strong pincushion
]
FISHEYE_PARAMS = [  # theta_d(theta) is monotone up to 2.66 rad (the first) or beyond 2.8 rad
    [0.05, -0.01, 0.002, -0.0002, 0.0, 0.0],
    [-0.03, 0.006, -0.001, 0.0001, 0.0, 0.0],
    [0.02, -0.004, 0.0005, -0.00005, 0.0, 0.0],
]


def _fox(scale: float = 1.0):
    c = {k: v / scale for k, v in FOX.items()}
    c["height"], c["width"] = int(FOX["height"] / scale), int(FOX["width"] / scale)
    return c


def _random_opencv_params(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([0.3, 0.1, 0.02, 0.0, 2e-3, 2e-3], dtype=torch.float64)
    return (torch.rand(n, 6, generator=g, dtype=torch.float64) * 2 - 1) * scale


def _disc(n: int, radius: float, seed: int = 0) -> torch.Tensor:
    """Points [n, 2] in the disc of ``radius`` (float64), plus the centre and points at 1e-12, 1e-6 from it."""
    g = torch.Generator().manual_seed(seed)
    r = radius * torch.rand(n, generator=g, dtype=torch.float64).sqrt()
    a = 2 * math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    pts = torch.stack([r * a.cos(), r * a.sin()], dim=-1)
    tiny = torch.tensor([[0.0, 0.0], [1e-12, 0.0], [0.0, -1e-12], [1e-6, 1e-6], [-1e-6, 0.0]], dtype=torch.float64)
    return torch.cat([tiny, pts])


def _border_pixels(cam, n: int = 401) -> torch.Tensor:
    """Normalised distorted coordinates [4 n, 2] of the image's outer border (pixel edges 0 and W, 0 and H)."""
    t = torch.linspace(0, 1, n, dtype=torch.float64)
    z, o = torch.zeros_like(t), torch.ones_like(t)
    u = torch.cat([z, o, t, t]) * cam["width"]
    v = torch.cat([t, t, z, o]) * cam["height"]
    return torch.stack([(u - cam["cx"]) / cam["fx"], (v - cam["cy"]) / cam["fy"]], dim=-1)


def _cv2_dist(p):  # ours (k1, k2, k3, k4, p1, p2) -> OpenCV (k1, k2, p1, p2, k3)
    p = np.asarray(p, dtype=np.float64)
    assert p[3] == 0
    return np.array([p[0], p[1], p[4], p[5], p[2]])


# ----------------------------------------------------------------------------------------------------------------------
# against OpenCV
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("params", OPENCV_PARAMS + _random_opencv_params(4).tolist())
def test_opencv_model_matches_cv2(params):
    cv2 = pytest.importorskip("cv2", reason="OpenCV (opencv-python-headless) is not installed")
    xy = _disc(300, 0.7)
    ref, _ = cv2.projectPoints(
        np.c_[xy.numpy(), np.ones(len(xy))], np.zeros(3), np.zeros(3), np.eye(3), _cv2_dist(params)
    )
    xy_d = D.distort(xy, torch.tensor(params, dtype=torch.float64))
    np.testing.assert_allclose(xy_d.numpy(), ref[:, 0], atol=1e-12, rtol=0)

    # undistortPoints (fixed-point iteration): run it to convergence
    criteria = (cv2.TERM_CRITERIA_COUNT, 500, 0.0)
    ref = cv2.undistortPoints(xy_d.numpy()[:, None], np.eye(3), _cv2_dist(params), criteria=criteria)[:, 0]
    und = D.undistort(xy_d, torch.tensor(params, dtype=torch.float64))
    np.testing.assert_allclose(und.numpy(), ref, atol=1e-10, rtol=0)
    np.testing.assert_allclose(und.numpy(), xy.numpy(), atol=1e-10, rtol=0)


@pytest.mark.parametrize("params", FISHEYE_PARAMS)
def test_fisheye_model_matches_cv2(params):
    cv2 = pytest.importorskip("cv2", reason="OpenCV (opencv-python-headless) is not installed")
    xy = _disc(300, math.tan(math.radians(80)))  # up to 80 degrees off axis
    k = np.asarray(params[:4], dtype=np.float64)
    ref = cv2.fisheye.distortPoints(xy.numpy()[:, None], np.eye(3), k)[:, 0]
    xy_d = D.distort(xy, torch.tensor(params, dtype=torch.float64), "fisheye")
    np.testing.assert_allclose(xy_d.numpy(), ref, atol=1e-12, rtol=1e-12)

    criteria = (cv2.TERM_CRITERIA_COUNT + cv2.TERM_CRITERIA_EPS, 100, 1e-15)
    ref = cv2.fisheye.undistortPoints(xy_d.numpy()[:, None], np.eye(3), k, R=np.eye(3), P=np.eye(3),
                                      criteria=criteria)[:, 0]
    und = D.undistort(xy_d, torch.tensor(params, dtype=torch.float64), "fisheye")
    np.testing.assert_allclose(und.numpy(), ref, atol=1e-9, rtol=1e-9)


# ----------------------------------------------------------------------------------------------------------------------
# closed-form round trips
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model,params", [("opencv", p) for p in OPENCV_PARAMS] + [("fisheye", p) for p in FISHEYE_PARAMS]
)
def test_round_trips(model, params):
    params = torch.tensor(params, dtype=torch.float64)
    xy = _disc(500, 0.9 if model == "opencv" else math.tan(math.radians(85)))
    torch.testing.assert_close(D.undistort(D.distort(xy, params, model), params, model), xy, atol=1e-9, rtol=1e-9)
    xy_d = D.distort(xy, params, model)
    torch.testing.assert_close(D.distort(D.undistort(xy_d, params, model), params, model), xy_d, atol=1e-9, rtol=0)
    # exactly zero in, exactly zero out (no NaN from r = 0)
    assert torch.equal(D.undistort(xy[:1], params, model), xy[:1])
    assert torch.equal(D.distort(xy[:1], params, model), xy[:1])


def test_fox_camera_border_round_trip():
    cam, params = _fox(), torch.tensor(FOX_PARAMS, dtype=torch.float64)
    xy_d = _border_pixels(cam)
    xy = D.undistort(xy_d, params)
    torch.testing.assert_close(D.distort(xy, params), xy_d, atol=1e-12, rtol=0)
    # the distortion matters at this border: several pixels
    assert ((xy - xy_d).norm(dim=-1) * cam["fx"]).max() > 5
    # and the other way round on a grid covering the undistorted image
    g = torch.linspace(0, 1, 41, dtype=torch.float64)
    lo, hi = xy.min(0).values, xy.max(0).values
    grid = torch.stack(torch.meshgrid(lo[0] + g * (hi[0] - lo[0]), lo[1] + g * (hi[1] - lo[1]), indexing="ij"), -1)
    torch.testing.assert_close(D.undistort(D.distort(grid, params), params), grid, atol=1e-12, rtol=0)


def test_newton_converges_quadratically_and_guards_singular_jacobians():
    # an exact Jacobian: 4 steps reach float64 precision at the fox's border (a wrong one converges only linearly)
    params = torch.tensor(FOX_PARAMS, dtype=torch.float64)
    xy_d = _border_pixels(_fox())
    torch.testing.assert_close(D.undistort(xy_d, params, iters=4), D.undistort(xy_d, params, iters=30),
                               atol=1e-12, rtol=0)
    params = torch.tensor(FISHEYE_PARAMS[0], dtype=torch.float64)
    xy_d = _disc(300, 1.4)
    torch.testing.assert_close(D.undistort(xy_d, params, "fisheye", iters=4),
                               D.undistort(xy_d, params, "fisheye", iters=30), atol=1e-12, rtol=0)
    # strong (unrealistic) tangential terms: their part of the Jacobian matters too
    params = torch.tensor([0.1, -0.05, 0.0, 0.0, 0.05, -0.04], dtype=torch.float64)
    xy_d = D.distort(_disc(300, 0.7), params)
    torch.testing.assert_close(D.undistort(xy_d, params, iters=5), D.undistort(xy_d, params, iters=30),
                               atol=1e-12, rtol=0)
    # k1 = -1/3: r_d(r) = r - r^3 / 3 folds at r = 1, where det J = 0; a point there must stay put, not blow up
    for dtype in (torch.float32, torch.float64):
        k = torch.tensor([-1 / 3, 0, 0, 0, 0, 0], dtype=dtype)
        out = D.undistort(torch.tensor([[1.0, 0.0], [0.0, -1.0]], dtype=dtype), k)
        assert torch.equal(out, torch.tensor([[1.0, 0.0], [0.0, -1.0]], dtype=dtype))


def test_float32_and_broadcasting():
    params = torch.tensor(OPENCV_PARAMS[:3], dtype=torch.float32)  # [3, 6]: one camera per row
    xy = _disc(50, 0.8).float()[None].expand(3, -1, -1)  # [3, 55, 2]
    for model in ("opencv", "fisheye"):
        xy_d = D.distort(xy, params[:, None], model)
        out = D.undistort(xy_d, params[:, None], model)
        assert xy_d.dtype == out.dtype == torch.float32 and out.shape == xy.shape
        torch.testing.assert_close(out, xy, atol=2e-6, rtol=0)
        for i in range(3):  # each row used its own parameters
            torch.testing.assert_close(xy_d[i], D.distort(xy[i].double(), params[i].double(), model).float())


def test_is_distorted_and_bad_arguments():
    assert not D.is_distorted(None)
    assert not D.is_distorted(torch.zeros(6))
    assert not D.is_distorted([0.0] * 6)
    assert D.is_distorted(torch.tensor([0, 0, 0, 0, 0, 1e-6]))
    with pytest.raises(ValueError, match="model"):
        D.distort(torch.zeros(2), torch.zeros(6), "equirect")
    with pytest.raises(ValueError, match="6 entries"):
        D.distort(torch.zeros(2), torch.zeros(5))


# ----------------------------------------------------------------------------------------------------------------------
# rays
# ----------------------------------------------------------------------------------------------------------------------


def test_rays_without_distortion_equal_get_ray_directions():
    cam = _fox(4)
    ref = get_ray_directions(cam["height"], cam["width"], (cam["fx"], cam["fy"]), principal=(cam["cx"], cam["cy"]))
    args = (cam["height"], cam["width"], cam["fx"], cam["fy"], cam["cx"], cam["cy"])
    assert torch.equal(D.camera_ray_directions(*args), ref)
    assert torch.equal(D.camera_ray_directions(*args, params=torch.zeros(6)), ref)
    assert not torch.equal(D.camera_ray_directions(*args, params=torch.tensor(FOX_PARAMS)), ref)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-8), (torch.float32, 2e-3)])
def test_distorted_rays_reproject_to_pixel_centres(dtype, tol):
    cam = _fox(4)
    params = torch.tensor(FOX_PARAMS, dtype=dtype)
    d = D.camera_ray_directions(cam["height"], cam["width"], cam["fx"], cam["fy"], cam["cx"], cam["cy"], params)
    assert d.shape == (cam["height"], cam["width"], 3) and d.dtype == dtype
    assert torch.all(d[..., 2] == -1)
    xy_d = D.distort(torch.stack([d[..., 0] / -d[..., 2], -d[..., 1] / -d[..., 2]], dim=-1), params)
    u, v = xy_d[..., 0] * cam["fx"] + cam["cx"], xy_d[..., 1] * cam["fy"] + cam["cy"]
    vv, uu = torch.meshgrid(torch.arange(cam["height"], dtype=dtype) + 0.5,
                            torch.arange(cam["width"], dtype=dtype) + 0.5, indexing="ij")
    assert (u - uu).abs().max() < tol and (v - vv).abs().max() < tol
    # the rays are not the pinhole ones: by over a pixel at the corners
    assert (d[..., 0] * cam["fx"] + cam["cx"] - uu).abs().max() > 1


@pytest.mark.parametrize("params", [None] + FISHEYE_PARAMS)
def test_fisheye_rays_wider_than_90_degrees(params):
    h, w, f = 120, 180, 45.0  # theta_d = 2.4 at the corners
    p = torch.zeros(6, dtype=torch.float64) if params is None else torch.tensor(params, dtype=torch.float64)
    d = D.camera_ray_directions(h, w, f, f, w / 2, h / 2, p if params is not None else None, "fisheye")
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(h, w, dtype=d.dtype), atol=1e-6, rtol=0)
    theta = torch.atan2(d[..., :2].norm(dim=-1), -d[..., 2])
    assert theta.max() > 2.0 and d[0, 0, 2] > 0  # 120 degrees or more off axis: looks backwards at the corners
    xy_d = _pixel_centres(h, w, f, f, w / 2, h / 2).to(d.dtype)
    k1, k2, k3, k4 = p[:4].tolist()
    t2 = theta * theta
    theta_d = theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4))))
    tol = 1e-5 if d.dtype == torch.float32 else 1e-9
    torch.testing.assert_close(theta_d, xy_d.norm(dim=-1), atol=tol, rtol=0)
    # same azimuth: (x, -y) of the ray is along (xd, yd)
    cross = d[..., 0] * xy_d[..., 1] - (-d[..., 1]) * xy_d[..., 0]
    assert cross.abs().max() < tol and torch.all(d[..., 0] * xy_d[..., 0] - d[..., 1] * xy_d[..., 1] >= 0)
    # inside 85 degrees the pinhole projection of the ray distorts back to the pixel centre
    inner = theta < math.radians(85)
    xy = torch.stack([d[..., 0] / -d[..., 2], d[..., 1] / d[..., 2]], dim=-1)[inner]
    torch.testing.assert_close(D.distort(xy, p.to(d.dtype), "fisheye"), xy_d[inner], atol=10 * tol, rtol=0)


# ----------------------------------------------------------------------------------------------------------------------
# images
# ----------------------------------------------------------------------------------------------------------------------


def _pattern(xy: torch.Tensor) -> torch.Tensor:
    """A smooth 3-channel function [..., 3] of undistorted normalised coordinates."""
    x, y = xy.unbind(-1)
    return torch.stack([torch.sin(3 * x + 0.3) * torch.cos(2.5 * y), torch.cos(4 * x * y), 0.5 + 0.3 * (x - y)], -1)


def _distorted_photo(cam, params, model="opencv"):
    """What the distorted camera sees of the pattern: pattern(undistort(pixel centre)), [H, W, 3] float32."""
    vv, uu = torch.meshgrid(torch.arange(cam["height"], dtype=torch.float64) + 0.5,
                            torch.arange(cam["width"], dtype=torch.float64) + 0.5, indexing="ij")
    xy_d = torch.stack([(uu - cam["cx"]) / cam["fx"], (vv - cam["cy"]) / cam["fy"]], dim=-1)
    return _pattern(D.undistort(xy_d, params, model, iters=20)).float()


def _pixel_centres(h, w, fx, fy, cx, cy):
    vv, uu = torch.meshgrid(torch.arange(h, dtype=torch.float64) + 0.5, torch.arange(w, dtype=torch.float64) + 0.5,
                            indexing="ij")
    return torch.stack([(uu - cx) / fx, (vv - cy) / fy], dim=-1)


@pytest.mark.parametrize(
    "model,params", [("opencv", FOX_PARAMS), ("opencv", OPENCV_PARAMS[2]), ("fisheye", FISHEYE_PARAMS[0])]
)
def test_undistort_image_recovers_the_pattern(model, params):
    cam, params = _fox(8), torch.tensor(params, dtype=torch.float64)
    photo = _distorted_photo(cam, params, model)
    intr = (cam["fx"], cam["fy"], cam["cx"], cam["cy"])
    out, valid = D.undistort_image(photo, *intr, params, model)
    fx2, fy2, cx2, cy2, w2, h2 = D.undistorted_intrinsics(cam["height"], cam["width"], *intr, params, model)
    assert out.shape == (h2, w2, 3) and valid.shape == (h2, w2, 1) and out.dtype == valid.dtype == torch.float32
    assert torch.all(valid == 1)
    expected = _pattern(_pixel_centres(h2, w2, fx2, fy2, cx2, cy2)).float()
    # bilinear error (larger for the fisheye, which the pinhole magnifies towards its edges); half a pixel off: ~9e-3
    assert (out - expected).abs().max() < (5e-4 if model == "opencv" else 2e-3)
    # a larger canvas, 10 px more on each side: the same pixels inside, invalid ones outside
    big, big_valid = D.undistort_image(photo, *intr, params, model, out_intrinsics=(fx2, fy2, cx2 + 10, cy2 + 10),
                                       out_size=(w2 + 20, h2 + 20))
    torch.testing.assert_close(big[10:-10, 10:-10], out, atol=1e-5, rtol=0)
    assert torch.all(big_valid[10:-10, 10:-10] == 1)
    assert big_valid.min() == 0 and big_valid.mean() > 0.8
    # and valid says where the pattern is recovered (away from the replicated edge)
    err = (big - _pattern(_pixel_centres(h2 + 20, w2 + 20, fx2, fy2, cx2 + 10, cy2 + 10)).float()).abs().amax(-1)
    assert err[big_valid[..., 0] == 0].max() > 1e-2


def test_undistorted_intrinsics():
    cam = _fox()
    intr = (cam["fx"], cam["fy"], cam["cx"], cam["cy"])
    zero = D.undistorted_intrinsics(cam["height"], cam["width"], *intr, torch.zeros(6))
    np.testing.assert_allclose(zero[:4], intr, atol=1e-9)
    assert zero[4:] == (cam["width"], cam["height"])
    sizes = []
    for params in (FOX_PARAMS, OPENCV_PARAMS[2]):  # pincushion and barrel
        params = torch.tensor(params, dtype=torch.float64)
        fx, fy, cx, cy, w, h = D.undistorted_intrinsics(cam["height"], cam["width"], *intr, params)
        assert (fx, fy) == intr[:2] and isinstance(w, int) and isinstance(h, int)
        sizes.append(w * h)
        for grow, inside in ((0, True), (2, False)):  # every output pixel centre maps inside; 2 px more do not
            xy = _pixel_centres(h + 2 * grow, w + 2 * grow, fx, fy, cx + grow, cy + grow)
            xy = torch.cat([xy[0], xy[-1], xy[:, 0], xy[:, -1]])  # the border pixels
            uv = D.distort(xy, params) * torch.tensor([cam["fx"], cam["fy"]]) + torch.tensor([cam["cx"], cam["cy"]])
            ok = (uv >= 0).all() & (uv[..., 0] <= cam["width"]).all() & (uv[..., 1] <= cam["height"]).all()
            assert bool(ok) == inside
    # the pincushion (fox) image shrinks, the barrel one (which sees more) grows
    assert sizes[0] < 0.99 * cam["width"] * cam["height"] < sizes[1]


@pytest.mark.parametrize("params", [OPENCV_PARAMS[2], OPENCV_PARAMS[3]])  # barrel, pincushion
def test_undistort_image_matches_cv2(params):
    cv2 = pytest.importorskip("cv2", reason="OpenCV (opencv-python-headless) is not installed")
    cam, params = _fox(8), torch.tensor(params, dtype=torch.float64)
    photo = _distorted_photo(cam, params)
    intr = (cam["fx"], cam["fy"], cam["cx"], cam["cy"])
    fx2, fy2, cx2, cy2, w2, h2 = D.undistorted_intrinsics(cam["height"], cam["width"], *intr, params)
    out, _ = D.undistort_image(photo, *intr, params)
    # OpenCV puts pixel centres at integers: its cx, cy are ours - 0.5
    K = np.array([[cam["fx"], 0, cam["cx"] - 0.5], [0, cam["fy"], cam["cy"] - 0.5], [0, 0, 1]])
    K2 = np.array([[fx2, 0, cx2 - 0.5], [0, fy2, cy2 - 0.5], [0, 0, 1]])
    mx, my = cv2.initUndistortRectifyMap(K, _cv2_dist(params), None, K2, (w2, h2), cv2.CV_32FC1)
    ref = cv2.remap(photo.numpy(), mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    assert np.abs(out.numpy() - ref).max() < 1e-3  # OpenCV quantises the bilinear weights to 1/32 px
    # cv2.undistort keeps the input camera and size, zero outside: compare where it sampled only real pixels
    same, valid = D.undistort_image(photo, *intr, params, out_intrinsics=intr)
    ref = cv2.undistort(photo.numpy(), K, _cv2_dist(params))
    inside = torch.from_numpy(cv2.undistort(np.ones_like(photo.numpy()), K, _cv2_dist(params))[..., 0] > 1 - 1e-6)
    assert np.abs(same.numpy() - ref)[inside.numpy()].max() < 1e-3
    assert torch.all(valid[inside] == 1)  # OpenCV's "inside" is half a pixel stricter than ours
    if params[0] > 0:  # pincushion: the corners of the same camera see beyond the photo
        assert inside.float().mean() > 0.5 and valid.min() == 0 and not inside[0, 0]
    # valid: the sample is inside the photo's pixel area [0, W] x [0, H] (OpenCV's map + 0.5)
    mx, my = cv2.initUndistortRectifyMap(K, _cv2_dist(params), None, K, (cam["width"], cam["height"]), cv2.CV_32FC1)
    u, v = torch.from_numpy(mx).double() + 0.5, torch.from_numpy(my).double() + 0.5
    margin = torch.minimum(torch.minimum(u, cam["width"] - u), torch.minimum(v, cam["height"] - v))
    sure = margin.abs() > 1e-3  # away from float32 rounding of the map
    assert torch.equal(valid[..., 0][sure] == 1, margin[sure] > 0)


def test_dtypes():
    cam = _fox(16)
    intr = (cam["fx"], cam["fy"], cam["cx"], cam["cy"])
    for dtype in (torch.float32, torch.float64):
        params = torch.tensor(FOX_PARAMS, dtype=dtype)
        d = D.camera_ray_directions(cam["height"], cam["width"], *intr, params)
        out, valid = D.undistort_image(torch.rand(cam["height"], cam["width"], 2, dtype=dtype), *intr, params)
        assert d.dtype == out.dtype == valid.dtype == dtype
    out, valid = D.undistort_image(torch.full((cam["height"], cam["width"], 1), 200, dtype=torch.uint8), *intr,
                                   torch.tensor(FOX_PARAMS))
    assert out.dtype == torch.float32 and torch.allclose(out, torch.tensor(200.0))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_without_synchronising():
    cam = _fox(4)
    intr = (cam["fx"], cam["fy"], cam["cx"], cam["cy"])
    params = torch.tensor(OPENCV_PARAMS[2])
    fparams = torch.tensor(FISHEYE_PARAMS[0])
    xy_d = _disc(1000, 0.8).float()
    photo = _distorted_photo(cam, params.double())
    out_intr = D.undistorted_intrinsics(cam["height"], cam["width"], *intr, params)
    expected = (D.undistort(xy_d, params), D.undistort(xy_d, fparams, "fisheye"),
                D.camera_ray_directions(cam["height"], cam["width"], *intr, params),
                D.camera_ray_directions(cam["height"], cam["width"], *intr, fparams, "fisheye"),
                *D.undistort_image(photo, *intr, params, out_intrinsics=out_intr[:4], out_size=out_intr[4:]))
    xy_d, params, fparams, photo = xy_d.cuda(), params.cuda(), fparams.cuda(), photo.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = (D.undistort(xy_d, params), D.undistort(xy_d, fparams, "fisheye"),
               D.camera_ray_directions(cam["height"], cam["width"], *intr, params),
               D.camera_ray_directions(cam["height"], cam["width"], *intr, fparams, "fisheye"),
               *D.undistort_image(photo, *intr, params, out_intrinsics=out_intr[:4], out_size=out_intr[4:]))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for g, e in zip(got, expected):
        assert g.device.type == "cuda" and g.dtype == e.dtype
        torch.testing.assert_close(g.cpu(), e, atol=1e-5, rtol=1e-5)
