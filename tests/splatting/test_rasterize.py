"""The splatting op: reference rasterizer against a per-pixel brute force, hand computations, finite differences,
gsplat's own PyTorch projection (CPU), and gsplat's CUDA rasterizer (gpu)."""

import math

import pytest
import torch

from threestudio.ops.cameras import look_at
from threestudio.ops.splatting import (
    camera_matrices,
    eval_sh,
    quat_to_rotmat,
    rasterize_gaussians,
    rgb_to_sh0,
    select_backend,
    sh_bases,
)


def scene(n=6, seed=0, dtype=torch.float64, spread=0.25, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    means = (torch.randn(n, 3, generator=g) * spread).to(dtype)
    quats = torch.randn(n, 4, generator=g).to(dtype)
    scales = (torch.rand(n, 3, generator=g) * 0.08 + 0.04).to(dtype)
    opac = (torch.rand(n, generator=g) * 0.6 + 0.3).to(dtype)
    colors = torch.rand(n, 3, generator=g).to(dtype)
    c2w = look_at(torch.tensor([[2.0, 0.4, 0.7], [-0.5, -2.1, 0.9]], dtype=dtype))
    intr = torch.tensor([[22.0, 21.0, 8.3, 6.1], [18.0, 18.0, 7.5, 5.5]], dtype=dtype)
    vm, K = camera_matrices(c2w, intr)
    return [t.to(device) for t in (means, quats, scales, opac, colors, vm, K)]


# ---------------------------------------------------------------------------------------------- brute force
def brute_force(means, quats, scales, opac, colors, vm, K, W, H, bg=None, eps2d=0.3):
    """Per pixel, per gaussian, in Python: projection with a finite-difference Jacobian of the pinhole map, then
    sorting and front-to-back compositing with gsplat's cut-offs (alpha < 1/255 skipped, stop before T <= 1e-4,
    alpha <= 0.999)."""
    C = vm.shape[0]
    rgb = torch.zeros(C, H, W, colors.shape[1], dtype=torch.float64)
    alpha = torch.zeros(C, H, W, 1, dtype=torch.float64)
    depth = torch.zeros(C, H, W, 1, dtype=torch.float64)
    R = quat_to_rotmat(quats)
    covs = [R[i] @ torch.diag(scales[i] ** 2) @ R[i].T for i in range(len(means))]
    for c in range(C):
        fx, fy, cx, cy = K[c, 0, 0], K[c, 1, 1], K[c, 0, 2], K[c, 1, 2]

        def proj(p):  # world point -> pixel
            q = vm[c, :3, :3] @ p + vm[c, :3, 3]
            return torch.stack([fx * q[0] / q[2] + cx, fy * q[1] / q[2] + cy])

        g2 = []
        for i in range(len(means)):
            z = float((vm[c, :3, :3] @ means[i] + vm[c, :3, 3])[2])
            if z <= 0.01:
                continue
            h = 1e-6
            J = torch.stack([(proj(means[i] + h * e) - proj(means[i] - h * e)) / (2 * h)
                             for e in torch.eye(3, dtype=torch.float64)], dim=1)  # d pixel / d world
            S = J @ covs[i] @ J.T + eps2d * torch.eye(2, dtype=torch.float64)
            g2.append((z, proj(means[i]), torch.linalg.inv(S), float(opac[i]), colors[i]))
        g2.sort(key=lambda t: t[0])
        for y in range(H):
            for x in range(W):
                p = torch.tensor([x + 0.5, y + 0.5], dtype=torch.float64)
                T, acc, acc_d = 1.0, torch.zeros(colors.shape[1], dtype=torch.float64), 0.0
                for z, m, Sinv, o, col in g2:
                    d = p - m
                    a = min(0.999, o * math.exp(-0.5 * float(d @ Sinv @ d)))
                    if a < 1.0 / 255.0:
                        continue
                    if T * (1 - a) <= 1e-4:
                        break
                    acc = acc + a * T * col
                    acc_d += a * T * z
                    T *= 1 - a
                rgb[c, y, x] = acc + (0.0 if bg is None else T * bg[c])
                alpha[c, y, x, 0] = 1 - T
                depth[c, y, x, 0] = acc_d
    return rgb, alpha, depth


def test_reference_matches_per_pixel_brute_force():
    means, quats, scales, opac, colors, vm, K = scene(n=7)
    opac[2] = 0.999  # saturating alpha, and a gaussian behind another
    means[3] = means[2] + torch.tensor([0.05, 0.0, 0.0], dtype=torch.float64)
    bg = torch.tensor([[0.2, 0.5, 0.9], [1.0, 1.0, 1.0]], dtype=torch.float64)
    W, H = 17, 13
    out = rasterize_gaussians(means, quats, scales, opac, colors, vm, K, W, H, backgrounds=bg, backend="torch",
                              tile_size=8)
    rgb, alpha, depth = brute_force(means, quats, scales, opac, colors, vm, K, W, H, bg=bg)
    assert float(alpha.max()) > 0.9 and float(alpha.min()) < 0.01  # the scene covers part of the images
    torch.testing.assert_close(out["rgb"], rgb, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(out["alpha"], alpha, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(out["depth_accum"], depth, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(out["depth"], depth / alpha.clamp_min(1e-10), rtol=1e-7, atol=1e-9)


def test_early_stop_cuts_before_transmittance_reaches_1e4():
    # three wide gaussians stacked on the optical axis: the first saturates (alpha 0.999, T = 1e-3); the second
    # (alpha 0.95 * 0.9989) would take T to 5.1e-5 <= 1e-4, so the pixel stops before it
    means = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, -0.3], [0.0, 0.0, -0.6]], dtype=torch.float64)
    quats = torch.tensor([[1.0, 0, 0, 0]] * 3, dtype=torch.float64)
    scales = torch.full((3, 3), 5.0, dtype=torch.float64)
    opac = torch.tensor([1.0, 0.95, 1.0], dtype=torch.float64)
    colors = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]], dtype=torch.float64)
    vm, K = camera_matrices(look_at(torch.tensor([[0.0, 0.0, 3.0]], dtype=torch.float64),
                                    up=torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)),
                            torch.tensor([[10.0, 10.0, 2.0, 2.0]], dtype=torch.float64))
    out = rasterize_gaussians(means, quats, scales, opac, colors, vm, K, 4, 4, backend="torch")
    torch.testing.assert_close(out["rgb"][0, 1, 1], torch.tensor([0.999, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(out["alpha"][0, 1, 1, 0].item(), 0.999)
    torch.testing.assert_close(out["depth"][0, 1, 1, 0].item(), 3.0)


def test_single_gaussian_by_hand():
    # an isotropic gaussian (sigma 0.1) at distance 2 on the optical axis, focal 50: 2D variance (50*0.1/2)^2 + 0.3
    means = torch.zeros(1, 3, dtype=torch.float64)
    quats = torch.tensor([[0.3, 0.1, -0.7, 0.2]], dtype=torch.float64)  # any rotation: isotropic
    scales = torch.full((1, 3), 0.1, dtype=torch.float64)
    opac = torch.tensor([0.8], dtype=torch.float64)
    colors = torch.tensor([[0.2, 0.4, 0.6]], dtype=torch.float64)
    vm, K = camera_matrices(look_at(torch.tensor([[0.0, -2.0, 0.0]], dtype=torch.float64)),
                            torch.tensor([[50.0, 50.0, 8.0, 8.0]], dtype=torch.float64))
    out = rasterize_gaussians(means, quats, scales, opac, colors, vm, K, 16, 16, backend="torch")
    var = (50 * 0.1 / 2.0) ** 2 + 0.3
    for (x, y) in [(7, 7), (8, 7), (10, 5), (3, 12)]:
        d2 = (x + 0.5 - 8.0) ** 2 + (y + 0.5 - 8.0) ** 2
        a = 0.8 * math.exp(-0.5 * d2 / var)
        a = a if a >= 1 / 255 else 0.0
        torch.testing.assert_close(out["alpha"][0, y, x, 0].item(), a, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(out["rgb"][0, y, x].tolist(), [a * 0.2, a * 0.4, a * 0.6], rtol=1e-9, atol=1e-12)
        if a > 0:
            torch.testing.assert_close(out["depth"][0, y, x, 0].item(), 2.0, rtol=1e-9, atol=1e-12)


def test_spherical_harmonics_against_closed_forms():
    d = torch.nn.functional.normalize(torch.randn(50, 3, dtype=torch.float64), dim=-1)
    x, y, z = d.unbind(-1)
    B = sh_bases(3, d)
    # a few basis functions in closed form (real SH, 3DGS sign convention)
    torch.testing.assert_close(B[:, 0], torch.full_like(x, 0.5 / math.sqrt(math.pi)))
    torch.testing.assert_close(B[:, 2], math.sqrt(3 / (4 * math.pi)) * z)
    torch.testing.assert_close(B[:, 6], 0.25 * math.sqrt(5 / math.pi) * (3 * z * z - 1))
    torch.testing.assert_close(B[:, 12], 0.25 * math.sqrt(7 / math.pi) * z * (5 * z * z - 3))
    # orthonormality on the sphere (Monte Carlo, many directions)
    many = torch.nn.functional.normalize(torch.randn(400000, 3, dtype=torch.float64,
                                                     generator=torch.Generator().manual_seed(0)), dim=-1)
    Bm = sh_bases(3, many)
    gram = (Bm.T @ Bm) * (4 * math.pi / many.shape[0])
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=0.02, rtol=0)
    # DC only: colour = C0 * f_dc + 0.5; rgb_to_sh0 inverts it
    rgb = torch.rand(10, 3, dtype=torch.float64)
    coeffs = torch.zeros(10, 16, 3, dtype=torch.float64)
    coeffs[:, 0] = rgb_to_sh0(rgb)
    torch.testing.assert_close(eval_sh(3, torch.randn(10, 3, dtype=torch.float64), coeffs), rgb)


def test_gradients_match_finite_differences():
    means, quats, scales, opac, colors, vm, K = scene(n=5, seed=3)
    g = torch.Generator().manual_seed(1)
    sh = (torch.randn(5, 9, 3, generator=g) * 0.3).double()
    log_s = scales.log()
    logit_o = torch.logit(opac)
    bg = torch.tensor([[0.3, 0.6, 0.1], [0.9, 0.2, 0.4]], dtype=torch.float64)
    weights = torch.rand(2, 9, 11, 4, generator=g).double()  # a generic linear functional of rgb and depth
    inputs = [t.clone().requires_grad_() for t in (means, quats, log_s, logit_o, sh, bg)]

    def f(m, q, ls, lo, c, b):
        out = rasterize_gaussians(m, q, ls.exp(), torch.sigmoid(lo), c, vm, K, 11, 9, sh_degree=2, backgrounds=b,
                                  backend="torch")
        return (torch.cat([out["rgb"], out["depth"]], -1) * weights).sum()

    assert float(f(*inputs).detach()) != 0.0
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_means2d_carries_the_screen_space_gradient():
    means, quats, scales, opac, colors, vm, K = scene(n=6, dtype=torch.float32)
    means.requires_grad_()
    out = rasterize_gaussians(means, quats, scales, opac, colors, vm, K, 16, 12, backend="torch")
    out["rgb"].sum().backward()
    m2 = out["meta"]["means2d"]
    assert m2.grad is not None and m2.grad.shape == (2, 6, 2)
    visible = (out["meta"]["radii"] > 0).all(-1)
    assert visible.any() and (m2.grad[visible].abs().sum(-1) > 0).any()
    assert (m2.grad[~visible] == 0).all()


def test_behind_camera_and_outside_view_are_culled():
    means, quats, scales, opac, colors, vm, K = scene(n=3)
    cam_pos = torch.linalg.inv(vm[0])[:3, 3]
    means[0] = cam_pos * 1.5  # behind camera 0
    means[1] = torch.tensor([0.0, 0.0, 40.0], dtype=torch.float64)  # far outside both views
    out = rasterize_gaussians(means, quats, scales, opac, colors, vm, K, 16, 12, backend="torch")
    radii = out["meta"]["radii"]
    assert (radii[0, 0] == 0).all() and (radii[:, 1] == 0).all()


def test_backend_selection_and_argument_errors():
    assert select_backend("auto", torch.device("cpu")) == "torch"
    with pytest.raises(ValueError, match="CUDA tensors only"):
        select_backend("gsplat", torch.device("cpu"))
    with pytest.raises(ValueError, match="Unknown splatting backend 'cuda'"):
        select_backend("cuda", torch.device("cpu"))
    means, quats, scales, opac, colors, vm, K = scene(n=3)
    with pytest.raises(ValueError, match=r"quats must be \[3, 4\]"):
        rasterize_gaussians(means, quats[:2], scales, opac, colors, vm, K, 8, 8)
    with pytest.raises(ValueError, match="sh_degree=2 needs colors"):
        rasterize_gaussians(means, quats, scales, opac, colors, vm, K, 8, 8, sh_degree=2)


def test_projection_matches_gsplat_torch_impl():
    impl = pytest.importorskip("gsplat.cuda._torch_impl", reason="gsplat is not installed (pip install gsplat)")
    from threestudio.ops.splatting import covariance_3d, project_gaussians

    means, quats, scales, opac, colors, vm, K = scene(n=200, dtype=torch.float32, spread=0.8)
    cov = covariance_3d(quats, scales)
    radii, m2, depths, conics, comp = impl._fully_fused_projection(means, cov, vm, K, 16, 12, eps2d=0.3,
                                                                    calc_compensations=True)
    ours = project_gaussians(means, cov, torch.ones(200), vm, K, 16, 12, antialiased=True)
    torch.testing.assert_close(ours["means2d"], m2, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ours["conics"], conics, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ours["opacities"], comp, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours["depths"], depths)
    # visibility: gsplat's torch projection uses a 3.33-sigma box, its CUDA kernel (and ours) an opacity-aware one,
    # which for opacity 1 is sqrt(2 ln 255) = 3.329 sigma: the same boxes up to rounding
    plain = project_gaussians(means, cov, torch.ones(200), vm, K, 16, 12)
    assert int(((plain["radii"] > 0).all(-1) != (radii > 0).all(-1)).sum()) <= 1
    assert int((plain["radii"] > 0).all(-1).sum()) > 50


# ---------------------------------------------------------------------------------------------- GPU: gsplat
def _random_scene(n, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g) * 0.4
    quats = torch.randn(n, 4, generator=g)
    scales = torch.rand(n, 3, generator=g) * 0.05 + 0.01
    opac = torch.rand(n, generator=g) * 0.9 + 0.05
    sh = torch.randn(n, 16, 3, generator=g) * 0.3
    c2w = look_at(torch.tensor([[2.0, 0.5, 0.8], [0.3, -2.0, 0.4], [-1.5, 1.2, -0.5]]))
    intr = torch.tensor([[70.0, 72.0, 40.0, 30.0], [60.0, 60.0, 38.0, 31.0], [65.0, 66.0, 41.0, 29.0]])
    vm, K = camera_matrices(c2w, intr)
    return [t.to(device) for t in (means, quats, scales, opac, sh, vm, K)]


@pytest.mark.gpu
@pytest.mark.parametrize("sh_degree,antialiased", [(3, False), (None, False), (1, True)])
def test_reference_matches_gsplat_on_cuda(sh_degree, antialiased):
    pytest.importorskip("gsplat")
    means, quats, scales, opac, sh, vm, K = _random_scene(300, "cuda")
    colors = sh if sh_degree is not None else torch.sigmoid(sh[:, 0])
    bg = torch.rand(3, 3, device="cuda")
    outs, grads = {}, {}
    for backend in ("torch", "gsplat"):
        inputs = [t.clone().requires_grad_() for t in (means, quats, scales, opac, colors)]
        out = rasterize_gaussians(*inputs, vm, K, 80, 60, sh_degree=sh_degree, backgrounds=bg,
                                  antialiased=antialiased, backend=backend)
        (out["rgb"].sum() + out["alpha"].sum() + 0.1 * out["depth_accum"].sum()).backward()
        outs[backend] = out
        grads[backend] = [t.grad for t in inputs]
    a, b = outs["torch"], outs["gsplat"]
    assert float(a["alpha"].detach().mean()) > 0.1
    for key in ("rgb", "alpha", "depth_accum"):
        diff = (a[key] - b[key]).detach().abs()
        # float32 and fast-math exp: tiny differences, except at the rare pixel where an alpha sits on 1/255
        assert float((diff > 1e-4).float().mean()) < 1e-3, (key, float(diff.max()))
        assert float(diff.max()) < 1e-2, (key, float(diff.max()))
    va, vb = (a["meta"]["radii"] > 0).all(-1), (b["meta"]["radii"] > 0).all(-1).reshape(3, 300)
    assert float((va != vb).float().mean()) < 0.01 and int(va.sum()) > 300
    for name, ga, gb in zip(("means", "quats", "scales", "opacities", "colors"), grads["torch"], grads["gsplat"]):
        rel = float((ga - gb).norm() / ga.norm().clamp_min(1e-12))
        assert rel < 2e-2, (name, rel)
