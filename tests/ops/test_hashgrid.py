"""Hash-grid encoding: the reference against tcnn's formula written out per point, finite differences, and the
Triton backend against the reference (under TRITON_INTERPRET on CPU, small sizes; @gpu at realistic sizes)."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from threestudio.ops.hashgrid import HashGridEncoder, grid_levels, hash_encode, per_level_scale_for
from threestudio.ops.hashgrid.reference import hash_encode_reference
from threestudio.utils.imports import MissingDependencyError, available

needs_triton = pytest.mark.skipif(not available("triton"), reason="triton is not installed")
# The Triton tests run compiled on a GPU machine and under TRITON_INTERPRET (set by conftest) on CPU.
DEV = "cuda" if torch.cuda.is_available() else "cpu"

# A small grid whose level 0 has scale 2 (x = k/4 lands exactly on cell borders), levels 0-2 dense, level 3 hashed.
SMALL = dict(base_resolution=3.0, per_level_scale=2.0)
SMALL_LT = (4, 2**12)


def border_points() -> torch.Tensor:
    """Points at 0, 1 and on level-0 cell borders (pos = 2x + 0.5 is an integer for x = 0.25, 0.75), plus corners."""
    v = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    g = torch.stack(torch.meshgrid(v, v, v, indexing="ij"), -1).reshape(-1, 3)
    return g[torch.randperm(g.shape[0])[:60]]


def naive_encode(x: np.ndarray, table: np.ndarray, base_resolution: float, b: float) -> np.ndarray:
    """tcnn's kernel_grid, one point and level at a time, with Python integers for the uint32 arithmetic."""
    L, T, F = table.shape
    out = np.zeros((x.shape[0], L * F))
    for level in range(L):
        scale = np.float32(np.exp2(np.float32(level) * np.log2(np.float32(b))) * np.float32(base_resolution) - 1)
        res = math.ceil(float(scale)) + 1
        size = min((res**3 + 7) // 8 * 8, T)
        for i, p in enumerate(x):
            pos = [np.float32(np.float64(np.float32(p[d])) * np.float64(scale) + 0.5) for d in range(3)]
            cell = [int(math.floor(v)) for v in pos]
            frac = [float(pos[d] - np.float32(cell[d])) for d in range(3)]
            acc = np.zeros(F)
            for c in range(8):
                w, cc = 1.0, []
                for d in range(3):
                    bit = (c >> d) & 1
                    w *= frac[d] if bit else 1 - frac[d]
                    cc.append(cell[d] + bit)
                if res**3 <= size:
                    idx = cc[0] + cc[1] * res + cc[2] * res * res
                else:
                    idx = (cc[0] * 1) ^ ((cc[1] * 2654435761) & 0xFFFFFFFF) ^ ((cc[2] * 805459861) & 0xFFFFFFFF)
                acc += w * table[level, idx % size].astype(np.float64)
            out[i, level * F : (level + 1) * F] = acc
    return out


def test_grid_levels_default_config():
    b = per_level_scale_for(16, 4096, 16)
    assert b == pytest.approx(1.447269237440378, rel=1e-12)
    lv = grid_levels(16, 2**19, 16.0, b)
    assert lv.resolution[:6] == (16, 24, 34, 49, 71, 102) and lv.resolution[-1] == 4096
    assert lv.size[:6] == (4096, 13824, 39304, 117656, 357912, 524288)  # next multiple of 8 of res^3, then T
    assert lv.hashed == (False,) * 5 + (True,) * 11
    assert lv.scale[0] == 15.0


def test_reference_matches_tcnn_formula():
    torch.manual_seed(0)
    L, T = SMALL_LT
    table = torch.randn(L, T, 2)
    x = torch.cat([border_points(), torch.rand(40, 3)])
    ref = hash_encode_reference(x, table, **SMALL)
    expect = naive_encode(x.numpy(), table.numpy(), SMALL["base_resolution"], SMALL["per_level_scale"])
    np.testing.assert_allclose(ref.numpy(), expect, rtol=1e-5, atol=1e-5)
    # an explicit number: x = 0 on level 0 lands on vertex (0, 0, 0) with pos = 0.5: the mean of cell (0,0,0)'s
    # 8 corners, rows cx + 3 cy + 9 cz
    rows = [0, 1, 3, 4, 9, 10, 12, 13]
    at0 = hash_encode_reference(torch.zeros(1, 3), table, **SMALL)[0, :2]
    torch.testing.assert_close(at0, table[0, rows].mean(0))


def test_reference_wraps_dense_top_corner_like_tcnn():
    # x = 1 on level 0: pos = 2.5, cell 2, top corner 3 == res: row 3 + 3*2 + 9*2 = 27, and 3 + 3*3 + 9*3 = 39
    # wraps to 39 % 32 = 7 (size = next multiple of 8 of 27 = 32).
    L, T = SMALL_LT
    table = torch.zeros(L, T, 1)
    table[0, 7, 0] = 1.0
    out = hash_encode_reference(torch.ones(1, 3), table, **SMALL)
    assert out[0, 0].item() == pytest.approx(0.125)  # weight 0.5^3 on the wrapped corner


def test_reference_gradients_finite_differences():
    torch.manual_seed(1)
    kw = dict(base_resolution=2.0, per_level_scale=2.0)  # resolutions 2, 4, 8 with T = 64: dense, dense, hashed
    assert grid_levels(3, 64, 2.0, 2.0).hashed == (False, False, True)
    table = torch.randn(3, 64, 2, dtype=torch.float64, requires_grad=True)
    x = (0.05 + 0.9 * torch.rand(6, 3, dtype=torch.float64)).requires_grad_()
    fn = lambda x, t: hash_encode_reference(x, t, **kw)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, table), eps=1e-7, atol=1e-6)
    # and second order (used by analytic-normal losses)
    assert torch.autograd.gradgradcheck(fn, (x, table), eps=1e-7, atol=1e-5)


def test_reference_masked_levels():
    torch.manual_seed(2)
    L, T = SMALL_LT
    table = torch.randn(L, T, 2, requires_grad=True)
    x = torch.rand(50, 3)
    full = hash_encode_reference(x, table, **SMALL)
    part = hash_encode_reference(x, table, **SMALL, n_active_levels=2)
    torch.testing.assert_close(part[:, :4], full[:, :4])
    assert torch.count_nonzero(part[:, 4:]) == 0
    (g,) = torch.autograd.grad(part.square().sum(), table)
    assert torch.count_nonzero(g[2:]) == 0 and torch.count_nonzero(g[:2]) > 0


def test_encoder_module():
    enc = HashGridEncoder(n_levels=4, n_features_per_level=2, log2_hashmap_size=10, base_resolution=4,
                          per_level_scale=1.5, backend="torch")  # fmt: skip
    assert enc.n_output_dims == 8 and enc.table.shape == (4, 1024, 2)
    assert enc.table.abs().max() <= 1e-4 and enc.table.std() > 1e-5
    with torch.no_grad():
        enc.table.normal_()
    x = torch.rand(2, 5, 3)
    out = enc(x)
    assert out.shape == (2, 5, 8)
    torch.testing.assert_close(out.reshape(10, 8), hash_encode(x.reshape(10, 3), enc.table, base_resolution=4,
                                                               per_level_scale=1.5, backend="torch"))  # fmt: skip
    enc.n_active_levels = 1
    assert torch.count_nonzero(enc(x)[..., 2:]) == 0
    half = HashGridEncoder(n_levels=2, log2_hashmap_size=8, dtype=torch.float16, backend="torch")
    assert half.table.dtype == torch.float16 and half(x).dtype == torch.float32


def test_backend_errors(monkeypatch):
    x, t = torch.rand(4, 3), torch.zeros(2, 64, 2)
    with pytest.raises(ValueError, match="unknown backend"):
        hash_encode(x, t, base_resolution=4, per_level_scale=1.5, backend="cuda")
    with pytest.raises(ValueError, match=r"shape \[N, 3\]"):
        hash_encode(torch.rand(4, 2), t, base_resolution=4, per_level_scale=1.5)
    with pytest.raises(ValueError, match="power of two"):
        hash_encode(x, torch.zeros(2, 60, 2), base_resolution=4, per_level_scale=1.5)
    if not available("tinycudann"):
        with pytest.raises(MissingDependencyError, match="tinycudann"):
            hash_encode(x, t, base_resolution=4, per_level_scale=1.5, backend="tcnn")
    monkeypatch.setitem(sys.modules, "triton", None)  # as if triton were not installed
    with pytest.raises(MissingDependencyError, match="pip install triton"):
        hash_encode(x, t, base_resolution=4, per_level_scale=1.5, backend="triton")
    out = hash_encode(x, t, base_resolution=4, per_level_scale=1.5)  # auto still works (torch)
    assert out.shape == (4, 4)


# ---------------------------------------------------------------------------------------------------------------
# Triton backend against the reference


def _compare(x, table, kw, *, need_x=True, atol_t=None, cfg=None):
    from threestudio.ops.hashgrid.triton_backend import DEFAULT_CONFIG, hash_encode_triton

    xr = x.clone().requires_grad_(need_x)
    xt = x.clone().requires_grad_(need_x)
    tr = table.detach().clone().requires_grad_()
    tt = table.detach().clone().requires_grad_()
    ref = hash_encode_reference(xr, tr, **kw)
    out = hash_encode_triton(xt, tt, **kw, config=cfg or DEFAULT_CONFIG)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    scale = ref.abs().max().item()
    torch.testing.assert_close(out, ref, atol=1e-6 * scale + 1e-7, rtol=1e-5)
    g = torch.randn_like(ref)
    wrt_r = [tr, xr] if need_x else [tr]
    wrt_t = [tt, xt] if need_x else [tt]
    grads_r = torch.autograd.grad(ref, wrt_r, g)
    grads_t = torch.autograd.grad(out, wrt_t, g)
    gt_scale = grads_r[0].abs().max().item()
    if table.dtype == torch.float16:  # both accumulate in fp32 and round once to fp16: one fp16 ulp apart at most
        torch.testing.assert_close(grads_t[0].float(), grads_r[0].float(), atol=2e-3 * gt_scale, rtol=1e-3)
    else:
        torch.testing.assert_close(grads_t[0], grads_r[0], atol=atol_t or 1e-5 * gt_scale, rtol=1e-5)
    if need_x:
        torch.testing.assert_close(grads_t[1], grads_r[1], atol=1e-4 * grads_r[1].abs().max().item(), rtol=1e-4)
    return out, grads_t


@needs_triton
def test_triton_matches_reference_fp32_borders_and_masks():
    torch.manual_seed(3)
    L, T = SMALL_LT
    table = torch.randn(L, T, 2).to(DEV)
    x = torch.cat([border_points(), torch.rand(70, 3)]).to(DEV)  # 130 points, not a multiple of BLOCK
    _compare(x, table, SMALL, need_x=False)
    out, (gt,) = _compare(x, table, dict(SMALL, n_active_levels=3), need_x=False)
    assert torch.count_nonzero(out[:, 6:]) == 0 and torch.count_nonzero(gt[3:]) == 0
    # gradient w.r.t. x away from cell borders (the encoding has kinks there), with out-of-range points clamped
    xi = torch.rand(100, 3)
    xi[:3] = torch.tensor([[-0.2, 0.5, 0.5], [0.5, 1.3, 0.5], [0.3, 0.6, 0.9]])
    _compare(xi.to(DEV), table, SMALL, need_x=True)


@needs_triton
@pytest.mark.parametrize("F,dtype", [(2, torch.float16), (1, torch.float32), (4, torch.float32), (4, torch.float16)])
def test_triton_matches_reference_dtypes_and_widths(F, dtype):
    torch.manual_seed(4)
    L, T = SMALL_LT
    table = torch.randn(L, T, F).to(dtype).to(DEV)
    x = torch.cat([border_points()[:20], torch.rand(80, 3)]).to(DEV)
    _compare(x, table, dict(SMALL, n_active_levels=3), need_x=F == 2)


@needs_triton
def test_triton_config_variants_agree():
    from threestudio.ops.hashgrid.triton_backend import TritonConfig

    torch.manual_seed(5)
    L, T = SMALL_LT
    table = torch.randn(L, T, 2).to(DEV)
    x = torch.rand(150, 3).to(DEV)
    variants = [
        TritonConfig(levels_per_program=4, block=64, aggregate_levels=0),
        TritonConfig(fwd_transposed=False, bwd_transposed=True, bwd_block=128, bwd_num_warps=8),
    ]
    for cfg in variants:
        _compare(x, table, SMALL, need_x=True, cfg=cfg)
    # run aggregation needs runs of points in one cell: points along a line, in order, plus a random tail
    t = torch.linspace(0, 1, 120)[:, None]
    ray = torch.cat([0.1 + 0.8 * t * torch.tensor([[1.0, 0.6, 0.3]]), torch.rand(30, 3)])
    _compare(ray.to(DEV), table, SMALL, need_x=True, cfg=TritonConfig(aggregate_levels=3, bwd_block=64))


def _double_backward(fn, x, table, a, r, s):
    """Gradients of two second-order losses w.r.t. (x, table, a): through the x-gradient ("normals") of
    <enc(x), a>, and through its table gradient."""
    out = fn(x, table, **SMALL)
    gx, gt = torch.autograd.grad((out * a).sum(), (x, table), create_graph=True)
    via_x = torch.autograd.grad((gx * r).sum(), (x, table, a), allow_unused=True, retain_graph=True)
    via_t = torch.autograd.grad((gt * s).sum(), (x, a), allow_unused=True)
    return via_x, via_t


@needs_triton
@pytest.mark.parametrize("dtype,n_active", [(torch.float32, None), (torch.float32, 3), (torch.float16, None)])
def test_triton_double_backward_matches_reference(dtype, n_active, monkeypatch):
    """Analytic normals' double backward runs in the Triton kernels (the reference is not called) and equals the
    reference's, w.r.t. the table, the upstream gradient and the points (out-of-range points clamped)."""
    from threestudio.ops.hashgrid import triton_backend
    from threestudio.ops.hashgrid.triton_backend import hash_encode_triton

    torch.manual_seed(6)
    L, T = SMALL_LT
    table = torch.randn(L, T, 2).to(dtype).to(DEV).requires_grad_()
    # away from cell borders (the encoding has kinks there), two points outside [0, 1]
    x = 0.05 + 0.9 * torch.rand(40, 3)
    x[:2] = torch.tensor([[-0.1, 0.4, 0.6], [0.3, 1.2, 0.5]])
    x = x.to(DEV).requires_grad_()
    a = torch.randn(40, L * 2).to(DEV).requires_grad_()
    r, s = torch.randn(40, 3).to(DEV), torch.randn(L, T, 2).to(DEV).to(dtype)
    kw = dict(SMALL, n_active_levels=n_active)

    def ref(x, table, **_):
        return hash_encode_reference(x, table.float(), **kw)

    want = _double_backward(ref, x, table, a, r, s)

    def no_reference(*args, **kwargs):
        raise AssertionError("the double backward called the PyTorch reference")

    monkeypatch.setattr(triton_backend, "hash_encode_reference", no_reference)
    got = _double_backward(lambda x, t, **_: hash_encode_triton(x, t, **kw), x, table, a, r, s)
    for g_list, w_list in zip(got, want):
        for g, w in zip(g_list, w_list):
            assert g is not None and w is not None
            tol = 2e-3 if dtype == torch.float16 else 1e-4
            torch.testing.assert_close(g.float(), w.float(), rtol=tol, atol=tol * w.abs().max().item())
    (gx_x, gx_t, gx_a), _ = got
    assert gx_x.abs().max() > 0 and gx_t.abs().max() > 0 and gx_a.abs().max() > 0
    assert gx_x[0, 0] == 0 and gx_x[1, 1] == 0 and gx_x[0, 1] != 0  # clamped coordinates pass nothing
    if n_active is not None:
        assert torch.count_nonzero(gx_t[n_active:]) == 0 and torch.count_nonzero(gx_a[:, 2 * n_active:]) == 0


@needs_triton
def test_triton_double_backward_finite_differences():
    """The second-order gradient of a normals-style loss w.r.t. the table, against central differences of the loss
    (float64 reference forward for the differences; away from cell borders)."""
    from threestudio.ops.hashgrid.triton_backend import hash_encode_triton

    torch.manual_seed(7)
    L, T = SMALL_LT
    table = torch.randn(L, T, 2).to(DEV)
    x = (0.1 + 0.8 * torch.rand(12, 3)).to(DEV)
    r = torch.randn(12, 3).to(DEV)

    def loss(fn, tab, create_graph):
        xx = x.to(tab.dtype).requires_grad_()  # float64 for the differences: the x-gradient is rounded to x's dtype
        out = fn(xx, tab, **SMALL)
        (gx,) = torch.autograd.grad(out.square().sum(), xx, create_graph=create_graph)
        return (gx * r).sum()

    t = table.clone().requires_grad_()
    (grad,) = torch.autograd.grad(loss(hash_encode_triton, t, True), t)
    # the entries with the largest gradient, differenced in float64 through the reference
    idx = torch.topk(grad.abs().flatten(), 6).indices
    t64 = table.double()
    eps = 1e-4
    for i in idx.tolist():
        d = torch.zeros(t64.numel(), dtype=torch.float64, device=t64.device)
        d[i] = eps
        d = d.view_as(t64)
        fd = (loss(hash_encode_reference, t64 + d, False) - loss(hash_encode_reference, t64 - d, False)) / (2 * eps)
        assert abs(grad.flatten()[i].item() - fd.item()) <= 1e-4 * max(1.0, abs(fd.item())), (i, grad.flatten()[i], fd)


# ---------------------------------------------------------------------------------------------------------------
# GPU: realistic sizes (16 levels x 2 features, T = 2^19, 2^18 points)


def _realistic(dtype, n=2**18, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    table = (torch.randn(16, 2**19, 2, device="cuda", generator=g)).to(dtype)
    x = torch.rand(n, 3, device="cuda", generator=g)
    x[:64] = torch.tensor([0.0, 1.0], device="cuda")[torch.randint(0, 2, (64, 3), device="cuda", generator=g)]
    return x, table


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gpu_triton_matches_reference(dtype):
    x, table = _realistic(dtype)
    kw = dict(base_resolution=16, per_level_scale=1.447269237440378)
    _compare(x, table, kw, need_x=dtype == torch.float32)
    out, (gt,) = _compare(x[:50000], table, dict(kw, n_active_levels=9), need_x=False)
    assert torch.count_nonzero(out[:, 18:]) == 0 and torch.count_nonzero(gt[9:]) == 0


@pytest.mark.gpu
def test_gpu_triton_variants_agree():
    from threestudio.ops.hashgrid.triton_backend import TritonConfig

    x, table = _realistic(torch.float32, n=2**16, seed=1)
    kw = dict(base_resolution=16, per_level_scale=1.447269237440378)
    variants = [
        TritonConfig(vector_red=False, aggregate_levels=0),
        TritonConfig(vector_red=False, atomic_sem="acq_rel", fwd_transposed=False),
        TritonConfig(levels_per_program=16, pair_loads=True),
        TritonConfig(bwd_transposed=True, pair_x=False),
        TritonConfig(pair_loads=True, fwd_transposed=False, aggregate_levels=2),
        TritonConfig(aggregate_levels=5, pair_x=True, levels_per_program=4, bwd_block=64),  # fewer points than threads
    ]
    for cfg in variants:
        _compare(x, table, kw, need_x=True, cfg=cfg)
    # ray-ordered points (long runs in coarse cells) through the aggregating kernel
    t = torch.linspace(0, 1, 2**12, device="cuda")[:, None]
    d = torch.nn.functional.normalize(torch.rand(16, 3, device="cuda") - 0.5, dim=-1)
    rays = (0.5 + 0.45 * (2 * t[None] - 1) * d[:, None, :]).reshape(-1, 3)
    _compare(rays, table, kw, need_x=True)  # the default config: pair_x, aggregation of the dense levels
    _compare(rays, table.half(), kw, need_x=False, cfg=TritonConfig(pair_loads=True))


@pytest.mark.gpu
def test_gpu_auto_picks_triton_and_module_runs():
    enc = HashGridEncoder(backend="auto").cuda()
    x = torch.rand(1000, 3, device="cuda")
    out = enc(x)
    out.square().sum().backward()
    assert out.shape == (1000, 32) and enc.table.grad is not None
    names, todo = set(), [out.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is not None:
            names.add(type(fn).__name__)
            todo += [f for f, _ in fn.next_functions]
    assert "_HashEncodeBackward" in names


@pytest.mark.gpu
@pytest.mark.skipif(not available("tinycudann"), reason="tinycudann is not installed")
def test_gpu_tcnn_matches_reference():
    x, table = _realistic(torch.float32, n=2**14)
    kw = dict(base_resolution=16, per_level_scale=1.447269237440378)
    ref = hash_encode_reference(x, table, **kw)
    out = hash_encode(x, table, **kw, backend="tcnn")
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
def test_gpu_triton_double_backward_matches_reference():
    """Analytic normals at a realistic size (progressive: 9 of 16 levels active), against the reference."""
    x, table = _realistic(torch.float32, n=2**16, seed=2)
    x = (0.02 + 0.96 * x).requires_grad_()
    table = table.requires_grad_()
    a = torch.randn(x.shape[0], 32, device="cuda").requires_grad_()
    r = torch.randn(x.shape[0], 3, device="cuda")
    kw = dict(base_resolution=16, per_level_scale=1.447269237440378, n_active_levels=9)
    res = []
    for backend in ("torch", "triton"):
        out = hash_encode(x, table, backend=backend, **kw)
        (gx,) = torch.autograd.grad((out * a).sum(), x, create_graph=True)
        res.append(torch.autograd.grad((gx * r).sum(), (x, table, a)))
    for g, w in zip(res[1], res[0]):
        torch.testing.assert_close(g, w, rtol=1e-3, atol=1e-4 * w.abs().max().item())
