"""The NeLF student's pieces: shapes, the positional encoding, stratified sampling, the export-size modules against
the training path, the learning-rate schedule, and a tiny student overfitting one pseudo view."""

import math

import pytest
import torch

from .conftest import analytic_rgb, load_ext, orbit_c2w

load_ext()
from custom.mobilegen3d.nelf import (  # noqa: E402
    NeLFConfig,
    NeLFStudent,
    encode_points,
    positional_encoding,
    ray_points,
    stratified_depths,
)
from custom.mobilegen3d.system import MobileR2LSchedule  # noqa: E402
from threestudio.utils.config import parse_structured  # noqa: E402

TINY = {"n_samples": 4, "multires": 3, "width": 16, "n_blocks": 2, "sr_channels": [8, 8, 8], "sr_res_blocks": 1}


def tiny_student(lr=(4, 6), **over):
    s = NeLFStudent(parse_structured(NeLFConfig, {**TINY, **over}))
    h, w = lr
    s.set_camera(h, w, [0.9 * w, 0.9 * w, w / 2, h / 2], 0.5, 3.5)
    return s


def test_default_architecture_is_mobiler2l():
    s = NeLFStudent(NeLFConfig())
    assert s.in_channels == 312 and s.upsample == 8  # 3 * 8 * 13 channels, 64x64 -> 512x512
    assert len(s.body) == 28 and s.head[0].out_channels == 256
    ups = [m for m in s.tail if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(m.out_channels, m.kernel_size, m.stride, m.padding) for m in ups] == [
        (64, (4, 4), (2, 2), (1, 1)), (64, (4, 4), (2, 2), (1, 1)), (16, (4, 4), (2, 2), (1, 1))]
    assert isinstance(s.tail[-1], torch.nn.Sigmoid) and s.tail[-2].out_channels == 3


def test_shapes():
    s = tiny_student().eval()
    x = torch.randn(2, s.in_channels, 4, 6)
    assert s(x).shape == (2, 3, 32, 48)
    c2w = orbit_c2w(2)
    pts = s.sampler()(c2w)
    assert pts.shape == (2, 4, 6, 4, 3)
    assert s.embedder()(pts).shape == (2, s.in_channels, 4, 6)
    assert s.render(c2w).shape == (2, 32, 48, 3)
    rays_o, rays_d = torch.zeros(2, 4, 6, 3), torch.nn.functional.normalize(torch.randn(2, 4, 6, 3), dim=-1)
    out = s.forward_rays(rays_o, rays_d)
    assert out.shape == (2, 32, 48, 3) and (out > 0).all() and (out < 1).all()
    assert s.forward_rays(rays_o[0], rays_d[0]).shape == (32, 48, 3)


def test_rays_are_encoded_in_float32_under_autocast():
    s = tiny_student()
    rays_o, rays_d = torch.zeros(1, 4, 6, 3), torch.nn.functional.normalize(torch.randn(1, 4, 6, 3), dim=-1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = s.encode_rays(rays_o, rays_d)
        y = s.forward_rays(rays_o, rays_d, perturb=True)
    assert x.dtype == torch.float32 and y.dtype == torch.bfloat16 and y.shape == (1, 32, 48, 3)


def test_folded_batchnorm_gives_the_same_frames():
    from custom.mobilegen3d.nelf import fold_batchnorm

    torch.manual_seed(0)
    s = tiny_student()
    with torch.no_grad():
        s(torch.randn(2, s.in_channels, 4, 6))  # non-trivial running statistics
        s.eval()
        c2w = orbit_c2w(2)
        folded = fold_batchnorm(s)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
        assert torch.allclose(folded.render(c2w), s.render(c2w), atol=1e-5)


def test_positional_encoding_hand_computed():
    x = torch.tensor([[0.5, -1.0]])
    got = positional_encoding(x, 2)
    want = [math.sin(0.5), math.sin(1.0), math.cos(0.5), math.cos(1.0), 0.5,
            math.sin(-1.0), math.sin(-2.0), math.cos(-1.0), math.cos(-2.0), -1.0]
    assert got.shape == (1, 10)
    assert torch.allclose(got[0], torch.tensor(want), atol=1e-6)
    assert torch.equal(positional_encoding(x, 0), x)
    # the image layout: channel c of point sample k, coordinate j is (3k + j) * (2L + 1) + c
    pts = torch.randn(1, 2, 3, 4, 3)
    img = encode_points(pts, 2.0, 2)
    assert img.shape == (1, 4 * 3 * 5, 2, 3)
    k, j = 2, 1
    assert torch.allclose(img[0, (3 * k + j) * 5 + 4], pts[0, :, :, k, j] / 2.0)  # the raw value
    assert torch.allclose(img[0, (3 * k + j) * 5 + 1], torch.sin(2.0 * pts[0, :, :, k, j] / 2.0))


def test_ray_points_stratified_bounds():
    near, far, n = 0.5, 3.5, 8
    z = stratified_depths(near, far, n, (1,))
    assert torch.allclose(z[0], torch.linspace(near, far, n))
    edges = torch.linspace(near, far, n)
    mids = 0.5 * (edges[1:] + edges[:-1])
    lower, upper = torch.cat([edges[:1], mids]), torch.cat([mids, edges[-1:]])
    g = torch.Generator().manual_seed(0)
    zp = stratified_depths(near, far, n, (20000,), perturb=True, generator=g)
    assert (zp >= lower).all() and (zp <= upper).all()
    assert (zp[:, 1:] >= zp[:, :-1]).all()  # still sorted along the ray
    assert torch.allclose(zp.mean(0), 0.5 * (lower + upper), atol=0.01)  # uniform within each bin
    assert (zp.amin(0) - lower).abs().max() < 0.01 and (zp.amax(0) - upper).abs().max() < 0.01
    # reproducible with a generator; points lie on the rays at those distances
    o, d = torch.randn(5, 3), torch.nn.functional.normalize(torch.randn(5, 3), dim=-1)
    p1 = ray_points(o, d, near, far, n, perturb=True, generator=torch.Generator().manual_seed(3))
    p2 = ray_points(o, d, near, far, n, perturb=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(p1, p2) and p1.shape == (5, n, 3)
    dist = ((p1 - o[:, None]) * d[:, None]).sum(-1)
    assert (dist >= near - 1e-5).all() and (dist <= far + 1e-5).all()


def test_sampler_and_embedder_match_the_training_path(tmp_path):
    """The export path (Sampler, Embedder from c2w) equals the training path (pseudo data rays -> ray_points)."""
    from custom.mobilegen3d.pseudo_data import PseudoData

    from .conftest import make_pseudo

    data = PseudoData(make_pseudo(tmp_path / "p", n=3))
    s = NeLFStudent(parse_structured(NeLFConfig, TINY)).eval()
    s.set_camera(data.lr_height, data.lr_width, data.lr_intrinsics, data.near, data.far)
    c2w = data.c2w([0, 1, 2])
    rays_o, rays_d = data.low_res_rays(c2w)
    pts_train = ray_points(rays_o, rays_d, data.near, data.far, 4)
    assert torch.allclose(s.sampler()(c2w), pts_train, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(s.encode_rays(rays_o, rays_d), s.embedder()(pts_train), atol=1e-6)
        assert torch.allclose(s.render(c2w), s.forward_rays(rays_o, rays_d), atol=1e-5)


def test_mobiler2l_learning_rate_schedule():
    f = MobileR2LSchedule(5e-4, 1e-4, 200, 0.1, 500)
    assert f.lr(0) == pytest.approx(1e-4)
    assert f.lr(100) == pytest.approx(3e-4)
    assert f.lr(200) == pytest.approx(5e-4)
    assert f.lr(200 + 500_000) == pytest.approx(5e-5)
    assert f(200) == pytest.approx(1.0)


def test_tiny_student_overfits_one_view():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest (and fair to other processes)
    try:
        _overfit()
    finally:
        torch.set_num_threads(threads)


def _overfit():
    torch.manual_seed(0)
    s = tiny_student(lr=(4, 4), width=32)
    H = W = 32
    c2w = orbit_c2w(1)[0]
    intr = [x * 8 for x in s.camera_info()["lr_intrinsics"]]
    target = analytic_rgb(c2w, H, W, intr)[None]
    from threestudio.ops.cameras import get_ray_directions, get_rays

    fx, fy, cx, cy = s.camera_info()["lr_intrinsics"]
    rays_o, rays_d = get_rays(get_ray_directions(4, 4, (fx, fy), (cx, cy)), c2w[None])

    def score():
        s.eval()
        with torch.no_grad():
            mse = ((s.forward_rays(rays_o, rays_d) - target) ** 2).mean()
        s.train()
        return -10 * math.log10(float(mse))

    before = score()
    opt = torch.optim.Adam(s.parameters(), lr=5e-3)
    for _ in range(200):
        loss = ((s.forward_rays(rays_o, rays_d, perturb=True) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = score()
    assert after > before + 5, (before, after)


def test_frame_renderer_matches_the_pipeline_on_the_cpu():
    """The inference path (BatchNorm folded, the trunk in the given dtype; eager off CUDA) renders what the
    student's own pipeline renders: exactly in float32, to bfloat16 rounding in bfloat16."""
    from custom.mobilegen3d.nelf import FrameRenderer

    torch.manual_seed(0)
    s = tiny_student()
    for m in s.modules():  # BatchNorm statistics away from the identity, so that folding them matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    s.eval()
    c2w = orbit_c2w(2)
    with torch.no_grad():
        ref = s.render(c2w)
    got = FrameRenderer(s, torch.float32, batch=2)(c2w)
    assert got.shape == ref.shape and torch.allclose(got, ref, atol=1e-5)
    low = FrameRenderer(s, torch.bfloat16, batch=2)(c2w)
    err = float((low - ref).abs().max())
    assert 1e-5 < err < 0.05, err  # really ran in bfloat16, and still close
