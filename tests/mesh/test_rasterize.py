"""The rasterization ops against brute-force references, finite differences and hand computations.

The Triton kernels run here under Triton's CPU interpreter (tests/conftest.py sets TRITON_INTERPRET=1 without a GPU)
on tiny inputs; ``-m gpu`` repeats the comparisons on CUDA at a realistic size.
"""

import math

import pytest
import torch

from threestudio.ops import rasterize as R
from threestudio.ops.rasterize.reference import antialias_reference, interpolate_reference, rasterize_reference

BACKENDS = ["torch", "triton"]
CUDA = torch.cuda.is_available()


def on(backend, *tensors):
    """Inputs for a backend: the Triton kernels run on CUDA when there is a GPU (the interpreter only without one)."""
    dev = "cuda" if backend == "triton" and CUDA else "cpu"
    out = tuple(t.to(dev) if torch.is_tensor(t) else t for t in tensors)
    return out if len(out) > 1 else out[0]


def cpu(*tensors):
    out = tuple(t.detach().cpu() if torch.is_tensor(t) else t for t in tensors)
    return out if len(out) > 1 else out[0]


def triangle_soup(B=2, T=40, seed=0, big=6, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(B, 3 * T, 4, generator=g, dtype=dtype) * 0.6
    pos[..., 3] = 1 + torch.rand(B, 3 * T, generator=g, dtype=dtype) * 0.5
    pos[..., 2] = torch.rand(B, 3 * T, generator=g, dtype=dtype) * 0.8
    pos[:, : 3 * big, :2] *= 4  # a few triangles larger than the tiles of the fast path
    return pos, torch.arange(3 * T).view(T, 3)


def ids_and_bary_agree(rast, ref, margin):
    rast = rast.double()
    same = rast[..., 3] == ref[..., 3]
    assert not bool((~same & (margin > 1e-5)).any()), "triangle ids differ where the depth order is clear"
    assert float(same.float().mean()) > 0.99
    m = same & (ref[..., 3] > 0)
    assert float((ref[..., 3] > 0).float().mean()) > 0.3  # the test covers a good part of the image
    assert torch.allclose(rast[..., :3][m], ref[..., :3][m], atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rasterize_matches_brute_force_on_triangle_soups(backend):
    for seed, (H, W) in [(0, (24, 32)), (1, (17, 13))]:
        pos, tri = triangle_soup(seed=seed)
        ref, margin = rasterize_reference(pos, tri, (H, W), return_margin=True)
        rast, db = cpu(*R.rasterize(*on(backend, pos, tri), (H, W), backend=backend))
        assert rast.shape == (2, H, W, 4) and db.shape == (2, H, W, 4)
        ids_and_bary_agree(rast, ref, margin)


def test_rasterize_row_convention_and_output_layout():
    # one triangle in the lower-left quarter of NDC: row 0 is NDC y = -1, so it lands in the first rows
    pos = torch.tensor([[[-1.0, -1.0, 0.5, 1.0], [0.0, -1.0, 0.5, 1.0], [-1.0, 0.0, 0.5, 1.0]]])
    rast, _ = R.rasterize(pos, torch.tensor([[0, 1, 2]]), (8, 8), backend="torch")
    cov = rast[0, ..., 3] > 0
    assert bool(cov[:4, :4].any()) and not bool(cov[4:].any()) and not bool(cov[:, 4:].any())
    # pixel (row 0, col 0): centre NDC (-7/8, -7/8); u is the weight of corner 0, v of corner 1
    u, v, zw, tid = rast[0, 0, 0].tolist()
    assert tid == 1.0 and zw == pytest.approx(0.5)
    assert (u, v) == (pytest.approx(1 - 1 / 8 - 1 / 8), pytest.approx(1 / 8))  # offset (1/8, 1/8) from corner 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_screen_space_derivatives_match_finite_differences(backend):
    pos, tri = triangle_soup(B=1, T=3, big=0, seed=3, dtype=torch.float64)
    pos[0, :, :2] *= 3
    H = W = 16
    rast, db = cpu(*R.rasterize(*on(backend, pos.float(), tri), (H, W), backend=backend))
    # derivative of (u, v) along one pixel in x / y, from the analytic barycentrics at shifted centres
    from threestudio.ops.rasterize.common import homogeneous_bary, pixel_ndc

    px, py = pixel_ndc(H, W, dtype=torch.float64)
    t = rast[0, ..., 3].long() - 1
    m = t >= 0
    v = pos[0][tri[t[m]]]
    eps = 1e-4

    def uv(dx, dy):
        b0, b1, b2, S, D, N = homogeneous_bary(v, px[m] + dx * 2 / W, py[m] + dy * 2 / H)
        return torch.stack([b0 / S, b1 / S], -1)

    dudx = (uv(eps, 0) - uv(-eps, 0)) / (2 * eps)
    dudy = (uv(0, eps) - uv(0, -eps)) / (2 * eps)
    expect = torch.stack([dudx[:, 0], dudy[:, 0], dudx[:, 1], dudy[:, 1]], -1)
    assert torch.allclose(db[0][m].double(), expect, atol=1e-4, rtol=1e-3)


def test_triangles_crossing_the_near_plane_render_their_clipped_part():
    """A large quad on the ground, partly behind the camera, against the same quad clipped by hand in eye space."""
    from threestudio.ops import cameras as C

    c2w = C.look_at(torch.tensor([[0.0, -0.3, 0.4]]), torch.tensor([[0.0, 2.0, 0.0]]))
    proj = C.perspective_projection(torch.tensor([math.radians(70.0)]), 1.0, near=0.1, far=50.0)
    mvp = C.mvp_matrix(c2w, proj)[0].double()
    ground = torch.tensor([[-3.0, -4.0, 0.0], [3.0, -4.0, 0.0], [3.0, 8.0, 0.0], [-3.0, 8.0, 0.0]],
                          dtype=torch.float64)
    quad = torch.tensor([[0, 1, 2], [0, 2, 3]])
    attr = ground[:, :2]  # interpolate world x, y

    def clip(pts):
        return torch.cat([pts, torch.ones(len(pts), 1, dtype=pts.dtype)], 1) @ mvp.T

    H, W = 32, 40
    pos = clip(ground)
    assert bool((pos[:, 3] < 0).any()) and bool((pos[:, 3] > 0).any())  # really crosses the camera plane
    rast, _ = R.rasterize(pos.float(), quad, (H, W), backend="torch")
    out, _ = R.interpolate(attr.float(), rast, quad, backend="torch")

    # clip each triangle against the near plane (z_clip >= -w_clip) in world space, fan-triangulate, rasterize
    parts = []
    for f in quad.tolist():
        poly = [ground[i] for i in f]
        d = [float(clip(p[None])[0, 2] + clip(p[None])[0, 3]) for p in poly]
        kept = []
        for i in range(3):
            j = (i + 1) % 3
            if d[i] >= 0:
                kept.append(poly[i])
            if (d[i] >= 0) != (d[j] >= 0):
                kept.append(poly[i] + (poly[j] - poly[i]) * d[i] / (d[i] - d[j]))
        for k in range(1, len(kept) - 1):
            parts.append(torch.stack([kept[0], kept[k], kept[k + 1]]))
    verts = torch.cat(parts, 0)
    tris = torch.arange(len(verts)).view(-1, 3)
    pos2 = clip(verts)
    assert bool((pos2[:, 3] > 0).all())
    rast2, _ = R.rasterize(pos2.float(), tris, (H, W), backend="torch")
    out2, _ = R.interpolate(verts[:, :2].float(), rast2, tris, backend="torch")
    cov, cov2 = rast[..., 3] > 0, rast2[..., 3] > 0
    assert float(cov.float().mean()) > 0.2 and float((~cov).float().mean()) > 0.1  # ground and sky
    # identical coverage except possibly on the seam shared by the clipped pieces (a measure-zero set)
    assert int((cov != cov2).sum()) <= 2
    both = cov & cov2
    assert torch.allclose(rast[..., 2][both], rast2[..., 2][both], atol=1e-5)
    assert torch.allclose(out[both], out2[both], atol=1e-3)
    # the Triton kernels agree
    rast3 = cpu(R.rasterize(*on("triton", pos.float(), quad), (H, W), backend="triton")[0])
    assert torch.equal(rast3[..., 3], rast[..., 3])
    assert torch.allclose(rast3[..., :3], rast[..., :3], atol=1e-5)


def test_triangle_behind_the_camera_is_not_drawn():
    # the mirror image through the camera of a visible triangle: same x/w, y/w but negative w
    vis = torch.tensor([[-0.5, -0.5, 0.2, 1.0], [0.5, -0.5, 0.2, 1.0], [0.0, 0.5, 0.2, 1.0]])
    behind = -vis
    for backend in BACKENDS:
        rast, _ = R.rasterize(*on(backend, behind[None], torch.tensor([[0, 1, 2]])), (16, 16), backend=backend)
        assert not bool((rast[..., 3] > 0).any())
        rast, _ = R.rasterize(*on(backend, vis[None], torch.tensor([[0, 1, 2]])), (16, 16), backend=backend)
        assert bool((rast[..., 3] > 0).any())


def test_interpolation_gradients_match_finite_differences():
    pos, tri = triangle_soup(B=1, T=6, big=2, seed=5, dtype=torch.float64)
    attr = torch.randn(pos.shape[1], 2, dtype=torch.float64)
    g = torch.randn(1, 12, 14, 2, dtype=torch.float64)

    def f(p, a):
        rast, _ = R.rasterize(p, tri, (12, 14), backend="torch")
        return (R.interpolate(a, rast, tri, backend="torch")[0] * g).sum()

    p = pos.clone().requires_grad_(True)
    a = attr.clone().requires_grad_(True)
    gp, ga = torch.autograd.grad(f(p, a), [p, a])
    assert gp.abs().sum() > 0
    rast, _ = R.rasterize(pos, tri, (12, 14), backend="torch")
    assert torch.allclose(R.interpolate(attr, rast, tri, backend="torch")[0], interpolate_reference(attr, rast, tri))
    eps = 1e-6
    rng = torch.Generator().manual_seed(0)
    for _ in range(12):
        i, j = int(torch.randint(pos.shape[1], (1,), generator=rng)), int(torch.randint(4, (1,), generator=rng))
        d = torch.zeros_like(pos)
        d[0, i, j] = eps
        fd = (f(pos + d, attr) - f(pos - d, attr)) / (2 * eps)
        assert float(fd) == pytest.approx(float(gp[0, i, j]), rel=1e-4, abs=1e-6)
    d = torch.zeros_like(attr)
    d[3, 1] = 1.0
    assert float(f(pos, attr + d) - f(pos, attr)) == pytest.approx(float(ga[3, 1]), rel=1e-9)


@pytest.mark.parametrize("batched_attr", [False, True])
def test_triton_backward_passes_equal_the_torch_autograd(batched_attr):
    pos, tri = triangle_soup(B=2, T=16, seed=7, big=3)
    attr = torch.randn(2 if batched_attr else 1, pos.shape[1], 5)
    attr = attr if batched_attr else attr[0]
    H, W = 16, 20
    color = torch.rand(2, H, W, 3)
    grads = {}
    outs = {}
    for be in BACKENDS:
        p, a, c, t = on(be, pos, attr, color, tri)
        p, a, c = p.requires_grad_(True), a.requires_grad_(True), c.requires_grad_(True)
        rast, _ = R.rasterize(p, t, (H, W), backend=be)
        o, _ = R.interpolate(a, rast, t, backend=be)
        aa = R.antialias(c + o[..., :3] * 0.1, rast, p, t, backend=be)
        loss = (o * torch.linspace(-1, 1, 5, device=o.device)).sum() + (
            aa * torch.linspace(0.5, 2, 3, device=o.device)).sum()
        grads[be] = cpu(*torch.autograd.grad(loss, [p, a, c]))
        outs[be] = cpu(aa)
    if not CUDA:  # the interpreter does the reference's float32 arithmetic
        assert torch.allclose(outs["torch"], outs["triton"], atol=1e-5)
        for gt, gr in zip(grads["torch"], grads["triton"]):
            assert torch.allclose(gt, gr, atol=1e-4, rtol=1e-4)
    else:  # compiled on the GPU (measured on an H200: outputs within 1.4e-5, gradients within 7e-6 by norm)
        assert torch.allclose(outs["torch"], outs["triton"], atol=1e-4)
        for gt, gr in zip(grads["torch"], grads["triton"]):
            assert float((gt - gr).norm() / gt.norm()) < 1e-4
    assert grads["torch"][0].abs().sum() > 0


def test_triton_launch_variants_agree():
    """The backward's run summation and the float64 barycentrics are optimisations of the same sums: every
    combination gives the same outputs and gradients (to float32 rounding) as the defaults."""
    import dataclasses

    from threestudio.ops.rasterize import triton_backend as TB

    pos, tri = triangle_soup(B=2, T=16, seed=3, big=3)
    attr = torch.randn(pos.shape[1], 4)
    p0, a0, _, t = on("triton", pos, attr, attr, tri)

    def run():
        p, a = p0.clone().requires_grad_(True), a0.clone().requires_grad_(True)
        rast, _ = R.rasterize(p, t, (16, 20), backend="triton")
        o, _ = R.interpolate(a, rast, t, backend="triton")
        return cpu(rast, *torch.autograd.grad((o * torch.linspace(-1, 1, 4, device=o.device)).sum(), [p, a]))

    base = run()
    try:
        for runs in (False, True):
            for wide in (False, True):
                TB.set_config(dataclasses.replace(TB.DEFAULT_CONFIG, segment_runs=runs, wide_barycentrics=wide))
                for x, y in zip(base, run()):
                    assert torch.allclose(x, y, atol=2e-5, rtol=1e-4), (runs, wide)
    finally:
        TB.set_config(TB.DEFAULT_CONFIG)
    assert base[1].abs().sum() > 0


def test_first_pass_sorts_triangles_by_box_size_into_two_lists():
    """The first raster pass tests boxes of at most 2 x 2 pixel centres in place and lists the rest for the second:
    boxes of one 4 x 4 tile at the front of the list, bigger ones at its back (a count each after the z-buffer):
    exactly the triangles whose boxes (common.clipped_screen_bbox) are of that size."""
    from threestudio.ops.rasterize import triton_backend as TB
    from threestudio.ops.rasterize.common import clipped_screen_bbox

    g = torch.Generator().manual_seed(5)
    B, T, H, W = 2, 90, 24, 32
    size = torch.tensor([0.02, 0.15, 0.6]).repeat(T // 3)  # in NDC: about 1/2, 2-3 and 10 pixels across
    centre = torch.rand(B, T, 1, 2, generator=g) * 1.8 - 0.9
    xy = centre + torch.randn(B, T, 3, 2, generator=g) * size[None, :, None, None]
    pos = torch.cat([xy, torch.rand(B, T, 3, 1, generator=g) * 0.8, torch.ones(B, T, 3, 1)], -1).view(B, 3 * T, 4)
    tri = torch.arange(3 * T).view(T, 3)
    p, t = on("triton", pos, tri)
    t = t.to(torch.int32)
    npix = B * H * W
    zbuf = torch.full((npix + 2,), (1 << 63) - 1, dtype=torch.int64, device=p.device)
    lst = torch.full((B * T,), -1, dtype=torch.int32, device=p.device)
    TB._raster_small_kernel[(3,)](p, t, zbuf, lst, npix, B * T, pos.shape[1], T, H, W, float(W), float(H),
                                  BLOCK=64, S=2, TS=4, num_warps=4)
    zbuf, lst = cpu(zbuf, lst)
    n_med, n_large = [int((1 << 63) - 1 - int(x)) for x in zbuf[npix:]]
    c0, c1, r0, r1 = clipped_screen_bbox(pos[:, tri], H, W)
    bw, bh = (c1 - c0 + 1).flatten(), (r1 - r0 + 1).flatten()
    ok = (bw > 0) & (bh > 0)
    small = ok & (bw <= 2) & (bh <= 2)
    medium = ok & ~small & (bw <= 4) & (bh <= 4)
    large = ok & ((bw > 4) | (bh > 4))
    assert int(small.sum()) > 5 and int(medium.sum()) > 5 and int(large.sum()) > 5
    assert sorted(lst[:n_med].tolist()) == medium.nonzero().flatten().tolist()
    assert sorted(lst[B * T - n_large:].tolist()) == large.nonzero().flatten().tolist()
    assert bool((lst[n_med:B * T - n_large] == -1).all())
    # and the whole rasterizer (both loops of the second pass) gives the brute-force result on this scene
    ref, margin = rasterize_reference(pos, tri, (H, W), return_margin=True)
    rast, _ = cpu(*R.rasterize(p, t, (H, W), backend="triton"))
    ids_and_bary_agree(rast, ref, margin)


def sphere_scene(B=2, H=20, W=24, subdiv=1):
    """Two icospheres, turned and seen in perspective so that no triangle is exactly edge-on: an orthographic view
    of the axis-aligned icosphere has edge-on triangles whose silhouette test is an exact tie, which the GPU's fused
    multiply-adds break either way (measured: a third of the silhouette pixels flipped)."""
    import math

    import trimesh

    m = trimesh.creation.icosphere(subdiv)
    v = torch.tensor(m.vertices, dtype=torch.float64) * 0.7
    a, b = math.radians(23.0), math.radians(37.0)
    rx = torch.tensor([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]], dtype=v.dtype)
    ry = torch.tensor([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]], dtype=v.dtype)
    v = (v @ (ry @ rx).T).float()
    f = torch.tensor(m.faces)
    pos = torch.cat([v, torch.ones(len(v), 1)], 1)[None].repeat(B, 1, 1)
    pos[1, :, 0] += 0.25
    pos[..., 3] = 1.0 + 0.3 * pos[..., 2]  # perspective: w varies with depth
    pos[..., 2] *= 0.5
    return pos, f


@pytest.mark.parametrize("backend", BACKENDS)
def test_antialias_matches_the_reference_rule(backend):
    pos, f = sphere_scene()
    rast, _ = R.rasterize(pos, f, (20, 24), backend="torch")
    color = torch.rand(2, 20, 24, 3)
    g = torch.randn(2, 20, 24, 3)
    ref, gr = _aa_reference(pos, f, rast, color, g)
    p, c, r, ff = on(backend, pos, color, rast, f)
    p, c = p.requires_grad_(True), c.requires_grad_(True)
    out = R.antialias(c, r, p, ff, backend=backend)
    ga = cpu(*torch.autograd.grad((out * g.to(out.device)).sum(), [c, p]))
    changed = (ref - color).abs().sum(-1) > 1e-6
    assert int(changed.sum()) > 20  # the silhouette of both spheres
    assert ga[1].abs().sum() > 0
    if out.device.type == "cpu":  # the same float32 arithmetic as the reference: identical
        assert torch.allclose(cpu(out), ref, atol=1e-6)
        for a, b in zip(ga, gr):
            assert torch.allclose(a, b, atol=1e-5)
    else:  # the GPU rounds differently (fused multiply-adds): agreement to float32 precision
        assert torch.allclose(cpu(out), ref, atol=1e-4)
        for a, b in zip(ga, gr):
            assert float((a - b).norm() / b.norm()) < 1e-3


_AA_CACHE = {}


def _aa_reference(pos, f, rast, color, g):
    """The (slow, Python-loop) reference once per session for both backends' tests."""
    key = (float(pos.sum()), float(color.sum()))
    if key not in _AA_CACHE:
        p, c = pos.clone().requires_grad_(True), color.clone().requires_grad_(True)
        ref = antialias_reference(c, rast, p, f)
        _AA_CACHE[key] = (ref.detach(), torch.autograd.grad((ref * g).sum(), [c, p]))
    return _AA_CACHE[key]


def single_triangle(dx=0.0, dtype=torch.float64):
    return torch.tensor([[[-0.52 + dx, -0.61, 0.3, 1.0], [0.47 + dx, -0.38, 0.3, 1.0],
                          [-0.11 + dx, 0.58, 0.3, 1.0]]], dtype=dtype)


def render_triangle(pos, backend="torch", H=16, W=16):
    tri = torch.tensor([[0, 1, 2]], device=pos.device)
    rast, _ = R.rasterize(pos, tri, (H, W), backend=backend)
    mask = (rast[..., 3:] > 0).to(pos.dtype)
    return R.antialias(mask, rast, pos, tri, backend=backend)


def test_antialias_position_gradient_matches_finite_differences_on_one_triangle():
    pos = single_triangle().requires_grad_(True)
    g = torch.randn(1, 16, 16, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = render_triangle(pos)
    (grad,) = torch.autograd.grad((out * g).sum(), pos)
    assert grad[..., :2].abs().sum() > 0
    eps = 1e-6
    for i in range(3):
        for j in (0, 1, 3):
            d = torch.zeros_like(pos)
            d[0, i, j] = eps
            fd = ((render_triangle(pos.detach() + d) - render_triangle(pos.detach() - d)) * g).sum() / (2 * eps)
            assert float(fd) == pytest.approx(float(grad[0, i, j]), rel=1e-5, abs=1e-8), (i, j)


@pytest.mark.parametrize("backend", BACKENDS)
def test_antialias_gradient_step_moves_the_silhouette_towards_the_target(backend):
    target = render_triangle(on(backend, single_triangle(dx=0.04, dtype=torch.float32)), backend)  # 0.3 px right
    pos = on(backend, single_triangle(dtype=torch.float32)).requires_grad_(True)
    loss = ((render_triangle(pos, backend) - target) ** 2).sum()
    (grad,) = torch.autograd.grad(loss, pos)
    assert float(grad[0, :, 0].sum()) < 0  # moving every corner right lowers the loss
    step = torch.zeros_like(pos)
    step[0, :, 0] = 0.01
    with torch.no_grad():
        after = ((render_triangle(pos + step, backend) - target) ** 2).sum()
    assert float(after) < float(loss.detach())
    # without antialiasing the hard coverage gives no position gradient at all
    rast, _ = R.rasterize(pos, on(backend, torch.tensor([[0, 1, 2]])), (16, 16), backend=backend)
    hard = (rast[..., 3:] > 0).float()
    assert not hard.requires_grad


@pytest.mark.parametrize("backend", BACKENDS)
def test_topology_table_on_a_closed_mesh_a_boundary_and_a_soup(backend):
    tet = on(backend, torch.tensor([[0, 1, 2], [0, 3, 1], [1, 3, 2], [2, 3, 0]]))
    opp = cpu(R.antialias_construct_topology_hash(tet, backend=backend))
    assert opp.shape == (4, 3) and bool((opp >= 0).all())
    # edge 0 of face 0 is (0, 1); the other face on it is [0, 3, 1], whose third vertex is 3
    assert int(opp[0, 0]) == 3
    for t in range(4):
        for k in range(3):
            assert int(opp[t, k]) not in tet[t].tolist()
    opp = cpu(R.antialias_construct_topology_hash(tet[:2], backend=backend))
    assert int(opp[0, 0]) == 3 and int(opp[0, 1]) == -1 and int(opp[1, 1]) == -1
    # an edge shared by three triangles counts as a boundary; the two backends agree on a random soup
    soup = torch.cat([tet.cpu(), tet.cpu()[:1] * 0 + torch.tensor([[0, 1, 4]]),
                      torch.randint(0, 30, (60, 3), generator=torch.Generator().manual_seed(0))])
    opp = cpu(R.antialias_construct_topology_hash(on(backend, soup), backend=backend))
    assert int(opp[0, 0]) == -1
    assert torch.equal(opp, R.antialias_construct_topology_hash(soup, backend="torch"))


def test_texture_bilinear_wrap_and_mipmaps_by_hand():
    tex = torch.arange(16.0).view(1, 4, 4, 1)  # value = 4 * row + col
    uv = torch.tensor([[[[0.125, 0.125], [0.25, 0.125], [0.125, 0.25], [1.125, 0.125], [0.0, 0.125]]]])
    out = R.texture(tex, uv, filter_mode="linear")[0, 0, :, 0]
    # texel centres at (j + 0.5) / 4: (0.25, 0.125) is halfway between columns 0 and 1 of row 0
    assert out.tolist() == pytest.approx([0.0, 0.5, 2.0, 0.0, (3 + 0) / 2])  # wrap: u = 0 blends col 3 and col 0
    out = R.texture(tex, uv, filter_mode="linear", boundary_mode="clamp")[0, 0, :, 0]
    assert out[4].item() == pytest.approx(0.0)
    near = R.texture(tex, torch.tensor([[[[0.3, 0.8]]]]), filter_mode="nearest")
    assert near.item() == 4 * 3 + 1
    # a footprint of 4 texels selects the 1x1 mip level: the mean of the texture
    uv_da = torch.tensor([[[[1.0, 0.0, 0.0, 1.0]]]])
    mip = R.texture(tex, torch.tensor([[[[0.3, 0.3]]]]), uv_da=uv_da, filter_mode="linear-mipmap-linear")
    assert mip.item() == pytest.approx(7.5)
    uv = torch.rand(1, 3, 3, 2, requires_grad=True)
    t = tex.clone().requires_grad_(True)
    R.texture(t, uv).sum().backward()
    assert uv.grad is not None and t.grad.sum().item() == pytest.approx(9.0)


def test_errors_name_the_problem():
    tri = torch.tensor([[0, 1, 2]])
    with pytest.raises(ValueError, match=r"pos must have shape \[B, V, 4\]"):
        R.rasterize(torch.zeros(1, 3, 3), tri, (8, 8))
    with pytest.raises(ValueError, match="resolution"):
        R.rasterize(torch.zeros(1, 3, 4), tri, (0, 8))
    with pytest.raises(ValueError, match="unknown rasterization backend 'cuda'"):
        R.rasterize(torch.zeros(1, 3, 4), tri, (8, 8), backend="cuda")
    with pytest.raises(NotImplementedError, match="range mode"):
        R.rasterize(torch.zeros(3, 4), tri, (8, 8), ranges=torch.zeros(1, 2, dtype=torch.int32))
    with pytest.raises(ValueError, match="boundary_mode"):
        R.texture(torch.zeros(1, 2, 2, 1), torch.zeros(1, 1, 1, 2), boundary_mode="cube")


@pytest.mark.gpu
def test_triton_equals_torch_on_cuda_at_size():
    import sys
    import os

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "bench"))
    from bench_rasterize import cameras, icosphere

    for subdiv in (4, 7):
        v, f = icosphere(subdiv, "cuda")
        mvp = cameras(4, 256, "cuda")
        pos0 = (torch.cat([v, torch.ones_like(v[:, :1])], -1)[None] @ mvp.transpose(-1, -2)).contiguous()
        res = {}
        for be in BACKENDS:
            pos = pos0.clone().requires_grad_(True)
            col = (v * 0.5 + 0.5).requires_grad_(True)
            rast, _ = R.rasterize(pos, f, (256, 256), backend=be)
            c, _ = R.interpolate(col, rast, f, backend=be)
            out = R.antialias(c, rast, pos, f, backend=be)
            g = torch.linspace(-1, 1, 3, device="cuda")
            res[be] = (rast.detach(), out.detach(), *torch.autograd.grad((out * g).sum(), [pos, col]))
        (ra, oa, _, ca), (rb, ob, _, cb) = res["torch"], res["triton"]
        same = ra[..., 3] == rb[..., 3]
        assert float(same.float().mean()) > 0.999
        # barycentrics and depth against float64: the Triton kernel's are exact to float32 rounding (3.6e-7 measured
        # on an H200 at 328k triangles); the PyTorch backend computes the winners' in float64
        r64, _ = R.rasterize(pos0.double(), f, (256, 256), backend="torch")
        ok = same & (rb[..., 3] > 0) & (r64[..., 3] == rb[..., 3])
        assert float(ok.float().sum()) > 0.3 * ok.numel()
        assert torch.allclose(rb[..., :3][ok].double(), r64[..., :3][ok], atol=1e-5, rtol=0)
        assert torch.allclose(ra[..., :3][ok].double(), r64[..., :3][ok], atol=1e-6, rtol=0)
        assert float(((oa - ob).abs() > 1e-3).float().mean()) < 1e-3
        assert torch.allclose(ca, cb, rtol=1e-3, atol=1e-2)
        # vertex-position gradients against the PyTorch backend in float64 (on the GPU), over the pixels where a
        # backend picks the same triangle as float64. A pixel where they differ is a near-tie on a sliver seen edge-on
        # (2 of 262k pixels at subdivision 7): a discrete decision, and the gradient through such a sliver's
        # barycentrics is huge (one such pixel carried 60% of Triton's gradient norm), so it is left out here; the
        # README's known limits say so. Without antialias both backends then agree with float64 to float32 rounding
        # (barycentrics and their gradients are computed in float64 per pixel). With antialias, silhouette decisions
        # at near-ties may differ from float64 in either backend: Triton is held to no worse than PyTorch there.
        r64, _ = R.rasterize(pos0.double(), f, (256, 256), backend="torch")
        keep = torch.ones_like(r64[..., 3:])  # pixels where both backends pick float64's triangle
        for be in BACKENDS:
            keep = keep * (R.rasterize(pos0, f, (256, 256), backend=be)[0][..., 3:] == r64[..., 3:].float())
        errs = {}
        for aa in (False, True):
            ref = None
            for be in ["float64"] + BACKENDS:
                p_ = (pos0.double() if be == "float64" else pos0).clone().requires_grad_(True)
                c_ = (v.double() if be == "float64" else v) * 0.5 + 0.5
                b_ = "torch" if be == "float64" else be
                r_, _ = R.rasterize(p_, f, (256, 256), backend=b_)
                o_, _ = R.interpolate(c_, r_, f, backend=b_)
                if aa:
                    o_ = R.antialias(o_, r_, p_, f, backend=b_)
                w_ = torch.linspace(-1, 1, 3, device="cuda", dtype=torch.float64) * keep
                gp = torch.autograd.grad((o_ * w_.to(o_.dtype)).sum(), [p_])[0]
                if ref is None:
                    ref = gp
                else:
                    errs[(be, aa)] = float((gp.double() - ref).norm() / ref.norm())
        msg = f"icosphere subdivision {subdiv}: position-gradient errors (backend, antialias) {errs}"
        assert errs[("torch", False)] < 1e-4 and errs[("triton", False)] < 1e-4, msg
        assert errs[("triton", True)] <= 1.5 * errs[("torch", True)] + 1e-4, msg


@pytest.mark.gpu
def test_triton_fast_launch_matches_the_dispatcher():
    """The compiled-handle launches (threestudio.ops.triton_launch) against Triton's own dispatcher on the same
    inputs, over two mesh sizes and an unaligned view: the same kernels, so the same bits; and the fast path was
    taken."""
    import dataclasses
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "bench"))
    from bench_rasterize import cameras, icosphere

    from threestudio.ops.rasterize import triton_backend as TB

    def run(pos0, f, col0):
        outs = []
        for _ in range(2):  # the second call of a specialization is the direct one
            pos = pos0.clone().requires_grad_(True)
            col_base = torch.cat([torch.zeros(1, 3, device="cuda"), col0]).requires_grad_(True)
            col = col_base[1:]  # a view 12 bytes into its storage: not 16-byte aligned
            rast, db = R.rasterize(pos, f, (200, 256), backend="triton")
            c, _ = R.interpolate(col, rast, f, backend="triton")
            out = R.antialias(c, rast, pos, f, backend="triton")
            g = torch.linspace(-1, 1, 3, device="cuda")
            outs.append((rast.detach(), db, c.detach(), out.detach(),
                         *torch.autograd.grad((out * g).sum(), [pos, col_base])))
        return outs

    try:
        for subdiv in (3, 6):
            v, f = icosphere(subdiv, "cuda")
            pos0 = (torch.cat([v, torch.ones_like(v[:, :1])], -1)[None] @ cameras(4, 256, "cuda").transpose(-1, -2))
            col0 = v * 0.5 + 0.5
            TB.set_config(dataclasses.replace(TB.DEFAULT_CONFIG, fast_launch=False))
            ref = run(pos0.contiguous(), f, col0)
            TB.set_config(dataclasses.replace(TB.DEFAULT_CONFIG, fast_launch=True))
            before = sum(k.stats["direct"] for k in TB._FAST.values())
            fast = run(pos0.contiguous(), f, col0)
            assert sum(k.stats["direct"] for k in TB._FAST.values()) > before
            assert not any(k.broken for k in TB._FAST.values())
            for a, b in zip(ref, fast):
                for i, (x, y) in enumerate(zip(a, b)):
                    if i < 3:  # rasterize (atomic min: order-free) and interpolate: the same bits
                        assert torch.equal(x, y), i
                    else:  # antialias and the gradients sum with float32 atomics in arrival order
                        assert torch.allclose(x, y, rtol=1e-5, atol=1e-5), i
    finally:
        TB.set_config(TB.DEFAULT_CONFIG)


def test_torch_barycentrics_of_sub_pixel_triangles_are_exact_to_float32():
    """x - px * w cancels when a triangle is smaller than a pixel: float32 arithmetic lost up to 5e-4 there."""
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "bench"))
    from bench_rasterize import cameras, icosphere

    v, f = icosphere(6, "cpu")  # 82k triangles, most of them smaller than a pixel at 128^2
    pos = (torch.cat([v, torch.ones_like(v[:, :1])], -1)[None] @ cameras(2, 128, "cpu").transpose(-1, -2)).contiguous()
    r32, _ = R.rasterize(pos, f, (128, 128), backend="torch")
    r64, _ = R.rasterize(pos.double(), f, (128, 128), backend="torch")
    ok = (r32[..., 3] == r64[..., 3]) & (r32[..., 3] > 0)
    assert float(ok.float().mean()) > 0.3
    assert r32.dtype == torch.float32
    assert float((r32[..., :3][ok].double() - r64[..., :3][ok]).abs().max()) < 1e-6


def test_bench_compares_with_nvdiffrast_only_from_the_same_run():
    """The bench's summary divides by nvdiffrast figures timed in the same run, and prints no ratio without them."""
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "bench"))
    import bench_rasterize as B

    assert not hasattr(B, "NVDIFFRAST_MS")  # no stored figures to fall back on
    ours = {"fwd_bwd": 1.5, "rasterize": 0.5, "fwd": 1.0, "topology": 0.1}
    row = {"triangles": 20480, "coverage": 0.5, "ms": {"triton": ours}}
    cells = [c.strip() for c in B.table_row(row).split("|")[1:-1]]
    assert cells[6] == "-" and cells[7] == "-"
    row["ms"]["nvdiffrast"] = {"fwd_bwd": 1.0, "rasterize": 0.25}
    cells = [c.strip() for c in B.table_row(row).split("|")[1:-1]]
    assert cells[6] == "1.000 / 0.250" and cells[7] == "1.50; 2.00"


def test_bench_trace_summarises_each_iteration_of_the_file_it_writes(tmp_path, monkeypatch):
    """``bench_rasterize.py --trace``: a gzipped Chrome trace per size and backend, and per-iteration host time and
    op counts read back from that file (on the CPU: no kernels, so the GPU columns are zero)."""
    import gzip
    import json
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "bench"))
    import bench_rasterize as B

    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    x = torch.randn(32, 32, requires_grad=True)
    r = B.trace(lambda: (x @ x).sum().backward(), str(tmp_path), "cpu_matmul", n=4)
    assert r["file"] == str(tmp_path / "cpu_matmul.json.gz")
    with gzip.open(r["file"], "rt") as fh:
        names = [e.get("name") for e in json.load(fh)["traceEvents"]]
    assert [f"iter{i}" in names for i in range(4)] == [True] * 4
    med = r["median"]
    assert med["host"] > 0 and med["n_ops"] >= 3  # mm, sum and their backward ops, per iteration
    assert med["kernels"] == 0 and med["n_kernels"] == 0


def test_bench_phases_time_each_call_and_show_where_a_call_waits(monkeypatch):
    """``bench_rasterize.phases``: host time per call of one fwd+bwd; the four calls add up to ``sum``, and a call
    that waits (here an antialias made to sleep 20 ms, as a host synchronisation would) shows up in its phase."""
    import os
    import sys
    import time

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "bench"))
    import bench_rasterize as B

    v, f = B.icosphere(1, "cpu")
    mvp = B.cameras(1, 16, "cpu")
    aa = B.R.antialias

    def slow_antialias(*a, **k):
        time.sleep(0.02)
        return aa(*a, **k)

    monkeypatch.setattr(B.R, "antialias", slow_antialias)
    r = B.phases(v, f, mvp, 16, "torch", n=3)
    assert set(r) == {"rasterize", "interpolate", "antialias", "backward", "sum", "wall", "free"}
    parts = r["rasterize"] + r["interpolate"] + r["antialias"] + r["backward"]
    assert r["antialias"] >= 20.0 and r["rasterize"] < 20.0 and r["backward"] < 20.0
    assert abs(parts - r["sum"]) < 0.25 * r["sum"] and r["wall"] >= r["sum"] - 1e-6 and 0 < r["free"] < 20.0


def test_host_glue_counts_what_one_fwd_bwd_issues():
    """The CPU proxy of the host cost (scripts/bench/rasterize_host_glue.py) counts the launches and ATen ops of one
    rasterize + interpolate + antialias fwd+bwd with the kernels stubbed, and puts the real launcher back."""
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "bench"))
    import rasterize_host_glue as G

    from threestudio.ops.rasterize import triton_backend as TB

    fast, programs = TB._fast, TB._grid_programs
    r = G.measure(n=3, rounds=1)
    assert TB._fast is fast and TB._grid_programs is programs
    i = r["issued"]
    # forward: small + large raster passes, resolve, interpolate, topology insert + lookup, antialias detect + eval;
    # backward: antialias (over the silhouette pairs), interpolate, rasterize
    assert i["launches_by_kernel"] == {"_aa_detect_kernel": 1, "_aa_eval_kernel": 2, "_interp_bwd_kernel": 1,
                                       "_interp_fwd_kernel": 1, "_raster_bwd_kernel": 1, "_raster_large_kernel": 1,
                                       "_raster_small_kernel": 1, "_resolve_kernel": 1, "_topo_insert_kernel": 1,
                                       "_topo_lookup_kernel": 1}
    assert i["launches"] == 11 and i["autograd_nodes"] == 5
    ops = i["aten_ops_by_name"]
    # the fills the atomics need: the z-buffer and topology tables, three zero gradients, and the colour gradient's
    # copy; no zero gradient for rast_db, no counters to zero, no slices, no view of attr, no new empty out_da
    assert ops["full"] == 2 and ops["zeros_like"] == 3 and ops["clone"] == 1
    assert not {"zeros", "slice", "unsqueeze", "view", "new_empty"} & set(ops)
    assert i["aten_ops"] == sum(ops.values()) <= 19
    assert all(v > 0 for v in r["us"].values())


def test_ops_enter_autograd_the_same_way_through_either_apply(monkeypatch):
    """The backend's ops call autograd's C entry point, and Function.apply while a compile trace (or a functorch
    transform) is active: same outputs and gradients both ways, and the switch picks the path it says."""
    pytest.importorskip("triton")
    from threestudio.ops.rasterize import triton_backend as TB

    pos, tri = triangle_soup(B=2, T=12, seed=3)
    col = torch.rand(pos.shape[1], 3, generator=torch.Generator().manual_seed(1))
    calls = []
    original = TB._Interpolate.apply
    monkeypatch.setattr(TB._Interpolate, "apply", classmethod(lambda cls, *a: calls.append(1) or original(*a)))

    def run():
        p = pos.clone().requires_grad_(True)
        c = col.clone().requires_grad_(True)
        rast, _ = R.rasterize(p, tri, (16, 16), backend="triton")
        out, _ = R.interpolate(c, rast, tri, backend="triton")
        return (out.detach(), *torch.autograd.grad((out * out).sum(), [p, c]))

    direct = run()
    assert calls == []
    monkeypatch.setattr(TB, "_compiling", lambda: True)
    traced = run()
    assert calls == [1]
    for a, b in zip(direct, traced):
        assert torch.equal(a, b)
