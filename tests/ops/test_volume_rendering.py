import math

import pytest
import torch

from threestudio.ops import volume_rendering as VR
from threestudio.ops.occupancy_grid import OccupancyGrid, ray_aabb_intersect


def random_packed(n_rays=7, max_per_ray=9, seed=0, dtype=torch.float64, device="cpu", allow_empty=True):
    """Random packed samples; some rays empty. Returns ray_indices, t_starts, t_ends, sigmas, counts."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0 if allow_empty else 1, max_per_ray + 1, (n_rays,), generator=g)
    if allow_empty and n_rays > 2:
        counts[1] = 0
    ray_indices = torch.repeat_interleave(torch.arange(n_rays), counts)
    S = int(counts.sum())
    dt = torch.rand(S, generator=g, dtype=torch.float64) * 0.2 + 0.01
    # per-ray increasing t: cumulative dt within each ray, offset by a random near
    ends = torch.cumsum(dt, 0)
    first = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    base = torch.cat([torch.zeros(1, dtype=torch.float64), ends])[first]
    near = torch.rand(n_rays, generator=g, dtype=torch.float64)[ray_indices]
    t_ends = ends - base + near
    t_starts = t_ends - dt
    sigmas = torch.rand(S, generator=g, dtype=torch.float64) * 8.0

    def cast(x):
        return x.to(device=device, dtype=dtype)

    return ray_indices.to(device), cast(t_starts), cast(t_ends), cast(sigmas), counts


def brute_force(ray_indices, t_starts, t_ends, sigmas, n_rays):
    """Per-ray quadrature with a Python loop, float64."""
    w = torch.zeros_like(sigmas, dtype=torch.float64)
    T = torch.zeros_like(w)
    a = torch.zeros_like(w)
    for r in range(n_rays):
        idx = (ray_indices == r).nonzero()[:, 0].tolist()
        acc = 0.0
        for i in idx:
            sd = float(sigmas[i]) * float(t_ends[i] - t_starts[i])
            T[i] = math.exp(-acc)
            a[i] = 1.0 - math.exp(-sd)
            w[i] = T[i] * a[i]
            acc += sd
    return w, T, a


def test_weights_match_brute_force_quadrature():
    ri, ts, te, sig, _ = random_packed(n_rays=9, seed=1)
    w, T, a = VR.render_weight_from_density(ts, te, sig, ri, 9, backend="torch")
    w_ref, T_ref, a_ref = brute_force(ri, ts, te, sig, 9)
    torch.testing.assert_close(w, w_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(T, T_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a, a_ref, rtol=1e-12, atol=1e-12)
    # float32 inputs give float32 outputs close to the float64 reference
    w32, T32, _ = VR.render_weight_from_density(ts.float(), te.float(), sig.float(), ri, 9, backend="torch")
    torch.testing.assert_close(T32.double(), T_ref, rtol=1e-5, atol=1e-6)
    assert w32.dtype == torch.float32
    torch.testing.assert_close(w32.double(), w_ref, rtol=1e-5, atol=1e-6)


def test_hand_computed_two_samples():
    # one ray: sigma 1 over dt 0.5, then sigma 2 over dt 0.25 (sigma*dt = 0.5 for both)
    ri = torch.tensor([0, 0])
    ts, te, sig = torch.tensor([1.0, 1.5]), torch.tensor([1.5, 1.75]), torch.tensor([1.0, 2.0])
    w, T, a = VR.render_weight_from_density(ts, te, sig, ri, 1, backend="torch")
    e = math.exp(-0.5)
    torch.testing.assert_close(a, torch.tensor([1 - e, 1 - e]))
    torch.testing.assert_close(T, torch.tensor([1.0, e]))
    torch.testing.assert_close(w, torch.tensor([1 - e, e * (1 - e)]))


def test_matches_nerfacc_batched_on_cpu():
    nerfacc = pytest.importorskip("nerfacc")
    n_rays, m = 12, 10
    ri, ts, te, sig, counts = random_packed(n_rays=n_rays, max_per_ray=m, seed=2, dtype=torch.float32)
    # dense [n_rays, m] with zero-length padding intervals (they contribute alpha 0)
    pos = torch.arange(ri.shape[0]) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)

    def dense(x):
        return torch.zeros(n_rays, m).index_put((ri, pos), x)

    w_b, T_b, a_b = nerfacc.render_weight_from_density(dense(ts), dense(te), dense(sig))
    w, T, a = VR.render_weight_from_density(ts, te, sig, ri, n_rays, backend="torch")
    torch.testing.assert_close(w, w_b[ri, pos], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(T, T_b[ri, pos], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a, a_b[ri, pos], rtol=1e-5, atol=1e-6)
    # alpha version
    wa_b, Ta_b = nerfacc.render_weight_from_alpha(dense(a))
    wa, Ta = VR.render_weight_from_alpha(a, ri, n_rays, backend="torch")
    torch.testing.assert_close(wa, wa_b[ri, pos], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(Ta, Ta_b[ri, pos], rtol=1e-5, atol=1e-6)
    # accumulation
    rgb = torch.rand(ri.shape[0], 3)
    acc_b = nerfacc.accumulate_along_rays(w_b, torch.zeros(n_rays, m, 3).index_put((ri, pos), rgb))
    torch.testing.assert_close(VR.accumulate_along_rays(w, rgb, ri, n_rays), acc_b, rtol=1e-5, atol=1e-6)


def test_weights_from_alpha_brute_force_and_opaque_sample():
    ri, ts, te, sig, _ = random_packed(n_rays=6, seed=3)
    _, _, alphas = brute_force(ri, ts, te, sig, 6)
    alphas = alphas.clone()
    alphas[2] = 1.0  # an opaque sample: everything behind it on that ray gets ~0 weight
    w, T = VR.render_weight_from_alpha(alphas, ri, 6, backend="torch")
    for r in range(6):
        idx = (ri == r).nonzero()[:, 0].tolist()
        acc = 1.0
        for i in idx:
            assert T[i].item() == pytest.approx(acc, abs=1e-11)
            assert w[i].item() == pytest.approx(acc * alphas[i].item(), abs=1e-11)
            acc *= 1.0 - alphas[i].item()


def test_gradients_match_finite_differences():
    ri, ts, te, sig, _ = random_packed(n_rays=5, max_per_ray=6, seed=4)
    sig = sig.clone().requires_grad_(True)

    def f(s):
        w, T, a = VR.render_weight_from_density(ts, te, s, ri, 5, backend="torch")
        return w, T, a

    assert torch.autograd.gradcheck(f, (sig,), eps=1e-6, atol=1e-7)
    assert torch.autograd.gradgradcheck(f, (sig,), eps=1e-6, atol=1e-6)
    _, _, alphas = brute_force(ri, ts, te, sig.detach(), 5)
    alphas = (alphas * 0.9).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a: VR.render_weight_from_alpha(a, ri, 5, backend="torch"), (alphas,), eps=1e-6, atol=1e-7
    )


def test_composite_gradients_wrt_sigmas_and_values():
    ri, ts, te, sig, _ = random_packed(n_rays=4, max_per_ray=5, seed=5)
    sig = sig.clone().requires_grad_(True)
    rgb = torch.rand(sig.shape[0], 3, dtype=torch.float64, requires_grad=True)
    nrm = torch.randn(sig.shape[0], 3, dtype=torch.float64, requires_grad=True)
    bg = torch.tensor([0.2, 0.3, 0.4], dtype=torch.float64)

    def f(s, c, n):
        out = VR.composite(ts, te, s, ri, 4, c, normals=n, bg_color=bg, backend="torch")
        return out["rgb"], out["opacity"], out["depth"], out["z_variance"], out["normal"]

    assert torch.autograd.gradcheck(f, (sig, rgb, nrm), eps=1e-6, atol=1e-7)


def test_accumulate_and_composite_explicit_numbers():
    # ray 0: two samples, ray 1: none, ray 2: one sample
    ri = torch.tensor([0, 0, 2])
    ts = torch.tensor([1.0, 2.0, 0.5])
    te = torch.tensor([2.0, 3.0, 1.5])
    sig = torch.tensor([math.log(2.0), math.log(4.0), math.log(2.0)])  # alphas 1/2, 3/4, 1/2
    rgbs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    normals = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    out = VR.composite(
        ts, te, sig, ri, 3, rgbs, normals=normals, bg_color=torch.tensor([1.0, 1.0, 1.0]), backend="torch"
    )
    torch.testing.assert_close(out["weights"], torch.tensor([0.5, 0.375, 0.5]))
    torch.testing.assert_close(out["opacity"], torch.tensor([[0.875], [0.0], [0.5]]))
    torch.testing.assert_close(out["rgb_fg"], torch.tensor([[0.5, 0.375, 0.0], [0, 0, 0], [0, 0, 0.5]]))
    torch.testing.assert_close(out["rgb"], torch.tensor([[0.625, 0.5, 0.125], [1.0, 1.0, 1.0], [0.5, 0.5, 1.0]]))
    depth0 = 0.5 * 1.5 + 0.375 * 2.5
    torch.testing.assert_close(out["depth"], torch.tensor([[depth0], [0.0], [0.5]]))
    zvar0 = 0.5 * (1.5 - depth0) ** 2 + 0.375 * (2.5 - depth0) ** 2
    torch.testing.assert_close(out["z_variance"], torch.tensor([[zvar0], [0.0], [0.5 * (1.0 - 0.5) ** 2]]))
    torch.testing.assert_close(out["normal"], torch.tensor([[0.375, 0.0, 0.5], [0, 0, 0], [0, 0.5, 0]]))
    # values None -> opacity; 1-D values
    torch.testing.assert_close(VR.accumulate_along_rays(out["weights"], None, ri, 3), out["opacity"])
    torch.testing.assert_close(
        VR.accumulate_along_rays(out["weights"], ts, ri, 3), torch.tensor([[1.25], [0.0], [0.25]])
    )


def test_zero_samples():
    empty = torch.zeros(0)
    ri = torch.zeros(0, dtype=torch.long)
    out = VR.composite(empty, empty, empty, ri, 4, torch.zeros(0, 3), bg_color=torch.tensor([0.5, 0.5, 0.5]))
    torch.testing.assert_close(out["opacity"], torch.zeros(4, 1))
    torch.testing.assert_close(out["rgb"], torch.full((4, 3), 0.5))
    assert out["weights"].shape == (0,)


def test_precision_with_large_prefix():
    # 2M samples of sigma*dt = 10 on earlier rays, then a ray with tiny sigma*dt: a float32 global cumsum would give
    # garbage there (ulp(2e7) = 2); the float64 offsets keep it exact.
    n_big = 2_000_000
    ri = torch.cat([torch.arange(n_big) // 4, torch.full((5,), n_big // 4)])
    ts = torch.zeros(n_big + 5)
    te = torch.ones(n_big + 5)
    sig = torch.cat([torch.full((n_big,), 10.0), torch.full((5,), 1e-4)])
    _, T, _ = VR.render_weight_from_density(ts, te, sig, ri, n_big // 4 + 1, backend="torch")
    torch.testing.assert_close(
        T[-5:].double(), torch.exp(-1e-4 * torch.arange(5.0, dtype=torch.float64)), rtol=0, atol=1e-7
    )
    torch.testing.assert_close(T[:4], torch.tensor([1.0, math.exp(-10), math.exp(-20), math.exp(-30)]))


def test_segment_helpers():
    ri = torch.tensor([0, 0, 0, 2, 2, 5])
    assert VR.segment_start_index(ri).tolist() == [0, 0, 0, 3, 3, 5]
    v = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], requires_grad=True)
    out = VR.exclusive_segment_sum(v, ri)
    assert out.tolist() == [0.0, 1.0, 3.0, 0.0, 4.0, 0.0]
    # d(sum_i c_i out_i)/dv_j = sum of c_i over later samples of the same ray
    out.backward(torch.tensor([1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0], dtype=torch.float64))
    assert v.grad.tolist() == [110.0, 100.0, 0.0, 10000.0, 0.0, 0.0]


def test_backend_errors():
    ri, ts, te, sig, _ = random_packed(n_rays=3, seed=6, dtype=torch.float32)
    with pytest.raises(ValueError, match="unknown backend"):
        VR.render_weight_from_density(ts, te, sig, ri, 3, backend="cuda")
    if not torch.cuda.is_available():
        pytest.importorskip("nerfacc")
        with pytest.raises(ValueError, match="needs CUDA tensors"):
            VR.render_weight_from_density(ts, te, sig, ri, 3, backend="nerfacc")
        assert VR.resolve_backend("auto", torch.device("cpu"), "x") == "torch"
    with pytest.raises(ValueError, match="shape"):
        VR.render_weight_from_density(ts, te[:-1], sig, ri, 3)
    with pytest.raises(ValueError, match="sorted"):
        VR.render_weight_from_density(ts[:2], te[:2], sig[:2], torch.tensor([1, 0]), 3)


@pytest.mark.gpu
def test_packed_torch_matches_nerfacc_on_cuda():
    pytest.importorskip("nerfacc")
    assert VR.nerfacc_cuda_available(), "nerfacc's CUDA extension did not build"
    n_rays = 4096
    ri, ts, te, sig, _ = random_packed(n_rays=n_rays, max_per_ray=64, seed=7, dtype=torch.float32, device="cuda")
    sig_a = sig.clone().requires_grad_(True)
    sig_b = sig.clone().requires_grad_(True)
    rgb = torch.rand(sig.shape[0], 3, device="cuda")
    out_a = VR.composite(ts, te, sig_a, ri, n_rays, rgb, backend="torch")
    out_b = VR.composite(ts, te, sig_b, ri, n_rays, rgb, backend="nerfacc")
    for k in ("weights", "transmittance", "alphas", "rgb", "opacity", "depth"):
        torch.testing.assert_close(out_a[k], out_b[k], rtol=1e-4, atol=1e-5, msg=k)
    g = torch.randn(n_rays, 3, device="cuda")
    (out_a["rgb"] * g).sum().backward()
    (out_b["rgb"] * g).sum().backward()
    torch.testing.assert_close(sig_a.grad, sig_b.grad, rtol=1e-3, atol=1e-5)
    alphas = out_a["alphas"].detach()
    wa, Ta = VR.render_weight_from_alpha(alphas, ri, n_rays, backend="torch")
    wb, Tb = VR.render_weight_from_alpha(alphas, ri, n_rays, backend="nerfacc")
    torch.testing.assert_close(wa, wb, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(Ta, Tb, rtol=1e-4, atol=1e-5)
    assert VR.resolve_backend("auto", torch.device("cuda"), "x") == "nerfacc"


# ----------------------------------------------------------------------------------------------------------------------
# Occupancy grid: ray/box intersection, update, sampling
# ----------------------------------------------------------------------------------------------------------------------


AABB = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])


def test_ray_aabb_intersect_hand_computed():
    o = torch.tensor([[-2.0, 0, 0], [0, 0, 0], [-2, 2, 0], [2, 0, 0], [0.5, 0.5, -3], [-2, -2, -2]])
    d = torch.tensor([[1.0, 0, 0], [0, 0, 1], [1, 0, 0], [1, 0, 0], [0, 0, 2], [1, 1, 1]])
    t0, t1, hit = ray_aabb_intersect(o, d, AABB)
    assert hit.tolist() == [True, True, False, False, True, True]
    torch.testing.assert_close(t0[hit], torch.tensor([1.0, -1.0, 1.0, 1.0]))
    torch.testing.assert_close(t1[hit], torch.tensor([3.0, 1.0, 2.0, 3.0]))
    assert torch.isinf(t0[~hit]).all() and torch.isinf(t1[~hit]).all()


def test_ray_aabb_intersect_random_against_point_test():
    g = torch.Generator().manual_seed(0)
    o = torch.randn(200, 3, generator=g, dtype=torch.float64) * 2
    d = torch.nn.functional.normalize(torch.randn(200, 3, generator=g, dtype=torch.float64), dim=-1)
    t0, t1, hit = ray_aabb_intersect(o, d, AABB.double())
    ts = torch.linspace(0, 8, 4001, dtype=torch.float64)
    pts = o[:, None] + ts[None, :, None] * d[:, None]
    inside = (pts.abs() <= 1).all(-1)
    assert torch.equal(hit, inside.any(1))
    for r in hit.nonzero()[:, 0].tolist():
        tin = ts[inside[r]]
        assert tin.min().item() == pytest.approx(max(t0[r].item(), 0.0), abs=2.5e-3)
        assert tin.max().item() == pytest.approx(t1[r].item(), abs=2.5e-3)


def random_grid(res=8, seed=0, p=0.4):
    grid = OccupancyGrid(AABB, res)
    g = torch.Generator().manual_seed(seed)
    grid.binaries.copy_(torch.rand(grid.resolution, generator=g) < p)
    return grid


def random_rays(n, seed=0, inside_frac=0.25):
    g = torch.Generator().manual_seed(seed)
    o = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1) * 2.5
    k = int(n * inside_frac)
    o[:k] = (torch.rand(k, 3, generator=g) - 0.5) * 1.5  # some origins inside the box
    target = (torch.rand(n, 3, generator=g) - 0.5) * 1.6
    d = torch.nn.functional.normalize(target - o, dim=-1)
    return o, d


def brute_force_march(grid, o, d, near, far, step, cone_angle=0.0):
    """Python loop over rays and steps, float64, following nerfacc's marching rule."""
    lo, hi = grid.aabb[:3].double(), grid.aabb[3:].double()
    res = torch.tensor(grid.resolution)
    out = []
    for r in range(o.shape[0]):
        oo, dd = o[r].double(), d[r].double()
        tmin, tmax = -math.inf, math.inf
        for a in range(3):
            if dd[a] == 0:
                if not (lo[a] <= oo[a] <= hi[a]):
                    tmin, tmax = math.inf, -math.inf
                continue
            ta, tb = ((lo[a] - oo[a]) / dd[a]).item(), ((hi[a] - oo[a]) / dd[a]).item()
            tmin, tmax = max(tmin, min(ta, tb)), min(tmax, max(ta, tb))
        if not (tmax > tmin and tmax > 0):
            continue
        t0, t1 = max(tmin, near), min(tmax, far)
        t = near
        while True:
            dt = max(t * cone_angle, step) if cone_angle > 0 else step
            mid = t + 0.5 * dt
            if mid >= t1:
                break
            if mid >= t0:
                p = oo + mid * dd
                ijk = torch.floor((p - lo) / (hi - lo) * res).long().clamp(min=0)
                ijk = torch.minimum(ijk, res - 1)
                if grid.binaries[ijk[0], ijk[1], ijk[2]]:
                    out.append((r, t, t + dt))
            t += dt
    if not out:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0), torch.zeros(0)
    ri, ts, te = zip(*out)
    return torch.tensor(ri), torch.tensor(ts, dtype=torch.float32), torch.tensor(te, dtype=torch.float32)


@pytest.mark.parametrize("near,far,cone_angle", [(0.0, 1e10, 0.0), (1.0, 3.0, 0.0), (0.0, 1e10, 0.02)])
def test_sample_torch_matches_brute_force_march(near, far, cone_angle):
    grid = random_grid(res=8, seed=1)
    o, d = random_rays(40, seed=2)
    step = 0.037
    ri, ts, te = grid.sample(o, d, near=near, far=far, render_step_size=step, cone_angle=cone_angle, backend="torch")
    ri_b, ts_b, te_b = brute_force_march(grid, o, d, near, far, step, cone_angle)
    assert ri_b.shape[0] > 100
    assert torch.equal(ri, ri_b)
    torch.testing.assert_close(ts, ts_b, rtol=0, atol=1e-5)
    torch.testing.assert_close(te, te_b, rtol=0, atol=1e-5)
    # every kept midpoint is in an occupied cell; the chunked expansion gives the same samples
    mid = 0.5 * (ts + te)
    assert grid.query(o[ri] + mid[:, None] * d[ri]).all()
    ri_c, ts_c, _ = grid.sample(
        o, d, near=near, far=far, render_step_size=step, cone_angle=cone_angle, backend="torch", chunk_samples=97
    )
    assert torch.equal(ri_c, ri) and torch.equal(ts_c, ts)


def test_sample_full_grid_counts_and_empty_grid():
    grid = OccupancyGrid(AABB, 4)
    o = torch.tensor([[-3.0, 0.1, 0.2], [-3.0, 5.0, 0.0]])
    d = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    ri, _, _ = grid.sample(o, d, render_step_size=0.1, backend="torch")
    assert ri.shape == (0,)  # a new grid is empty
    grid.binaries.fill_(True)
    ri, ts, te = grid.sample(o, d, render_step_size=0.1, backend="torch")
    # ray 0 crosses x in [-1, 1] from t = 2 to 4: midpoints 2.05 ... 3.95 -> 20 samples; ray 1 misses
    assert ri.tolist() == [0] * 20
    torch.testing.assert_close(ts, torch.arange(20) * 0.1 + 2.0)
    torch.testing.assert_close(te - ts, torch.full((20,), 0.1))


def test_sample_max_samples_and_stratified():
    grid = random_grid(res=8, seed=3, p=0.6)
    o, d = random_rays(64, seed=4)
    ri, ts, _ = grid.sample(o, d, render_step_size=0.02, backend="torch")
    ri_m, ts_m, _ = grid.sample(o, d, render_step_size=0.02, max_samples_per_ray=5, backend="torch")
    counts = torch.bincount(ri, minlength=64)
    assert torch.equal(torch.bincount(ri_m, minlength=64), counts.clamp(max=5))
    first5 = (torch.arange(ri.shape[0]) - VR.segment_start_index(ri)) < 5
    assert torch.equal(ts_m, ts[first5])
    # stratified: one jitter per ray, in [0, step), reproducible with a generator
    a = grid.sample(
        o, d, render_step_size=0.02, stratified=True, generator=torch.Generator().manual_seed(0), backend="torch"
    )
    b = grid.sample(
        o, d, render_step_size=0.02, stratified=True, generator=torch.Generator().manual_seed(0), backend="torch"
    )
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    frac = torch.remainder(a[1].double() / 0.02, 1.0)
    for r in a[0].unique()[:10].tolist():
        fr = frac[a[0] == r]
        assert (fr - fr[0]).abs().max() < 1e-3
    assert (frac > 1e-3).float().mean() > 0.9  # without jitter (near = 0) every fraction would be 0


def test_sample_visibility_filter_with_sigma_fn():
    grid = OccupancyGrid(AABB, 4)
    grid.binaries.fill_(True)
    grid.occs.fill_(1.0)
    o = torch.tensor([[-3.0, 0.1, 0.2]])
    d = torch.tensor([[1.0, 0.0, 0.0]])

    def sigma_fn(ts, te, ri):  # an opaque wall at x > 0 (t > 3), thin fog before
        x = o[ri, 0] + 0.5 * (ts + te) * d[ri, 0]
        return torch.where(x > 0, torch.full_like(x, 1000.0), torch.full_like(x, 0.001))

    ri, ts, te = grid.sample(o, d, render_step_size=0.1, sigma_fn=sigma_fn, early_stop_eps=1e-4, backend="torch")
    # samples 2.0..2.9 (fog, T ~ 1) and the first wall sample (3.0, T ~ 1) survive; behind it T = exp(-100) < 1e-4
    torch.testing.assert_close(ts, torch.arange(11) * 0.1 + 2.0)
    _, ts, _ = grid.sample(o, d, render_step_size=0.1, sigma_fn=sigma_fn, alpha_thre=0.01, backend="torch")
    # alpha_thre = min(0.01, mean(occs) = 1) = 0.01: fog samples (alpha 1e-4) are dropped too
    torch.testing.assert_close(ts, torch.tensor([3.0]))


def test_update_warmup_sphere_and_ema():
    grid = OccupancyGrid(AABB, 16)
    r = 0.5

    def density(x):
        return (x.norm(dim=-1) < r).float() * 10.0

    assert not grid.update(density, step=3, n=16)
    assert grid.update(density, step=0, n=16, generator=torch.Generator().manual_seed(0))
    # cells fully inside the sphere are occupied, cells fully outside are not
    res, cell = 16, 2.0 / 16
    idx = torch.arange(res)
    lo = -1 + torch.stack(torch.meshgrid(idx, idx, idx, indexing="ij"), -1) * cell
    corners = torch.stack([lo + torch.tensor([i, j, k]) * cell for i in (0, 1) for j in (0, 1) for k in (0, 1)], 0)
    far_corner = corners.norm(dim=-1).amax(0)
    nearest = (lo + cell / 2).abs().sub(cell / 2).clamp(min=0).norm(dim=-1)
    assert grid.binaries[far_corner < r].all()
    assert not grid.binaries[nearest >= r].any()
    # EMA: occs = max(decay * occs, new value), then binaries = occs > min(occ_thre, mean)
    grid.occs.copy_(torch.linspace(0, 1, grid.n_cells))
    old = grid.occs.clone()
    grid.update(lambda x: torch.full((x.shape[0], 1), 0.3), step=16, warmup_steps=100, n=16, ema_decay=0.9)
    torch.testing.assert_close(grid.occs, torch.maximum(old * 0.9, torch.tensor(0.3)))
    assert torch.equal(grid.binaries.reshape(-1), grid.occs > 0.01)


def test_update_after_warmup_touches_a_subset():
    grid = OccupancyGrid(AABB, 8)
    grid.occs.fill_(1.0)
    grid.binaries.fill_(False)
    grid.binaries[:2] = True  # 128 occupied cells
    grid.update(
        lambda x: torch.zeros(x.shape[0]), step=512, warmup_steps=256, n=16, generator=torch.Generator().manual_seed(0)
    )
    changed = grid.occs < 1.0
    torch.testing.assert_close(grid.occs[changed], torch.full((int(changed.sum()),), 0.95))
    # a quarter of the cells drawn uniformly (128 draws, with repeats) plus up to 128 occupied ones
    assert 100 < int(changed.sum()) <= 256
    occupied_flat = torch.zeros(512, dtype=torch.bool)
    occupied_flat[:128] = True
    assert changed[occupied_flat].all()  # all 128 occupied cells (no more than a quarter of the grid) are revisited


def test_grid_state_dict_roundtrip():
    grid = random_grid(res=6, seed=5)
    grid.occs.uniform_()
    sd = grid.state_dict()
    assert set(sd) == {"aabb", "occs", "binaries"}
    other = OccupancyGrid(AABB, 6)
    other.load_state_dict(sd)
    o, d = random_rays(16, seed=6)
    a = grid.sample(o, d, render_step_size=0.05, backend="torch")
    b = other.sample(o, d, render_step_size=0.05, backend="torch")
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.gpu
@pytest.mark.parametrize(
    "cone_angle,near,limit", [(0.0, 0.0, None), (0.0, 1.0, None), (0.004, 0.0, None), (0.0, 0.0, 16)]
)
def test_sample_torch_matches_nerfacc_on_cuda(cone_angle, near, limit):
    pytest.importorskip("nerfacc")
    assert VR.nerfacc_cuda_available(), "nerfacc's CUDA extension did not build"
    grid = random_grid(res=32, seed=7, p=0.3).cuda()
    o, d = random_rays(20000, seed=8)
    o, d = o.cuda(), d.cuda()
    step = 1.732 * 2 / 256
    kw = {"near": near, "far": 2.5 + near, "render_step_size": step, "cone_angle": cone_angle}
    kw["max_samples_per_ray"] = limit
    ri_a, ts_a, te_a = grid.sample(o, d, backend="torch", **kw)
    ri_b, ts_b, te_b = grid.sample(o, d, backend="nerfacc", **kw)
    assert ri_a.shape[0] > 100_000

    # match samples by (ray, start) on a fine key; unmatched ones must be boundary cases (rounding of t)
    def key(ri, ts):  # (ray, t_start in 1e-4 bins)
        return ri * 10_000_000 + torch.round(ts.double() * 1e4).long()

    ka, kb = key(ri_a, ts_a), key(ri_b, ts_b)
    in_b = torch.isin(ka, kb) | torch.isin(ka, kb + 1) | torch.isin(ka, kb - 1)
    in_a = torch.isin(kb, ka) | torch.isin(kb, ka + 1) | torch.isin(kb, ka - 1)
    n_miss = int((~in_b).sum() + (~in_a).sum())
    assert n_miss <= max(10, 1e-4 * ri_a.shape[0]), n_miss
    # unmatched samples' midpoints lie within rounding of a cell face (in grid units) or of the marching range ends
    for ri, ts, te, bad in ((ri_a, ts_a, te_a, ~in_b), (ri_b, ts_b, te_b, ~in_a)):
        if limit is not None:
            break  # with a limit, one flip shifts the cut-off; the counts below still have to agree
        mid = 0.5 * (ts[bad] + te[bad]).double()
        p = o[ri[bad]].double() + mid[:, None] * d[ri[bad]].double()
        gcoord = (p + 1.0) / 2.0 * 32
        face = (gcoord - gcoord.round()).abs().amin(-1) < 2e-3
        t0, t1, _ = ray_aabb_intersect(o[ri[bad]].double(), d[ri[bad]].double(), grid.aabb.double())
        ends = ((mid - torch.clamp(t0, min=near)).abs() < 1e-4) | ((mid - torch.clamp(t1, max=2.5 + near)).abs() < 1e-4)
        assert (face | ends).all()
    ca = torch.bincount(ri_a, minlength=20000)
    cb = torch.bincount(ri_b, minlength=20000)
    assert (ca - cb).abs().sum() <= max(10, 1e-4 * ri_a.shape[0])
    if limit is not None:
        assert ca.max() <= limit and cb.max() <= limit


def test_occupancy_mean_is_read_once_per_update_and_after_loading():
    grid = OccupancyGrid(AABB, 4)
    grid.occs.fill_(0.5)
    assert grid.occs_mean() == 0.5
    grid.occs.fill_(0.25)  # a direct write is not seen until the next update or load (the point of the cache)
    assert grid.occs_mean() == 0.5
    grid.update(lambda x: torch.full((x.shape[0],), 2.0), step=0, ema_decay=0.5)
    assert grid.occs_mean() == 2.0  # max(0.5 * 0.25, 2.0) everywhere
    state = {k: v.clone() for k, v in grid.state_dict().items()}
    state["occs"].fill_(0.125)
    grid.load_state_dict(state)
    assert grid.occs_mean() == 0.125
