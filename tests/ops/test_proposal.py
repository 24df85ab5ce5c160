"""Scene contraction and proposal sampling (threestudio.ops.contraction, threestudio.ops.proposal) against
brute-force references and nerfacc's batched volume rendering."""

import math

import pytest
import torch

from threestudio.ops import proposal as P
from threestudio.ops.contraction import contract, contract_to_unit_cube, inverse_contract


# ------------------------------------------------------------------------------------------------ contraction
@pytest.mark.parametrize("order", ["inf", "2"])
def test_contraction_values_and_inverse(order):
    g = torch.Generator().manual_seed(0)
    scale = torch.logspace(-2, 3, 2000, dtype=torch.float64)[:, None]
    x = torch.randn(2000, 3, generator=g, dtype=torch.float64) * scale
    y = contract(x, order)
    norm = (lambda v: v.abs().amax(-1)) if order == "inf" else (lambda v: v.norm(dim=-1))
    inside = norm(x) <= 1
    assert torch.equal(y[inside], x[inside])  # the unit ball is untouched
    n = norm(x[~inside])
    # outside: same direction, norm 2 - 1/|x| (in (1, 2))
    assert torch.allclose(norm(y[~inside]), 2 - 1 / n, atol=1e-12)
    cos = torch.nn.functional.cosine_similarity(y[~inside], x[~inside], dim=-1)
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-12)
    assert (norm(y) < 2).all()
    assert torch.allclose(inverse_contract(y, order), x, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("order", ["inf", "2"])
def test_contraction_gradient_matches_finite_differences(order):
    x = torch.tensor([[0.3, -0.2, 0.1], [1.7, 0.4, -0.9], [-3.0, 5.0, 0.5]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: contract(v, order), (x,))


def test_contract_to_unit_cube_maps_box_to_inner_half():
    aabb = torch.tensor([[-2.0, -1.0, 0.0], [2.0, 3.0, 4.0]])
    corners = torch.tensor([[-2.0, -1.0, 0.0], [2.0, 3.0, 4.0], [0.0, 1.0, 2.0]])
    u = contract_to_unit_cube(corners, aabb, "inf")
    assert torch.allclose(u, torch.tensor([[0.25] * 3, [0.75] * 3, [0.5] * 3]))
    far = contract_to_unit_cube(torch.tensor([[1e6, 0.0, 2.0]]), aabb, "inf")
    assert 0.999 < far[0, 0] <= 1.0


# ------------------------------------------------------------------------------------------------ spacing
@pytest.mark.parametrize("kind", P.SPACINGS)
def test_spacing_round_trip_and_ends(kind):
    s = torch.rand(64, 9, dtype=torch.float64)
    near, far = torch.full((64, 1), 0.05, dtype=torch.float64), torch.full((64, 1), 1000.0, dtype=torch.float64)
    t = P.s_to_t(s, near, far, kind)
    assert torch.allclose(P.t_to_s(t, near, far, kind), s, atol=1e-10)
    ends = P.s_to_t(torch.tensor([[0.0, 1.0]], dtype=torch.float64), 0.05, 1000.0, kind)
    assert torch.allclose(ends, torch.tensor([[0.05, 1000.0]], dtype=torch.float64))
    assert (torch.diff(P.s_to_t(torch.linspace(0, 1, 50, dtype=torch.float64)[None], 0.05, 1000.0, kind)) > 0).all()


def test_uniform_lindisp_puts_half_the_samples_within_distance_one():
    s = torch.linspace(0, 1, 1001, dtype=torch.float64)[None]
    t = P.s_to_t(s, 0.0, 1e9, "uniform_lindisp")
    assert abs(float((t <= 1.0).double().mean()) - 0.5) < 2e-3
    assert torch.allclose(t[0, :500], 2 * s[0, :500])  # linear up to 1


# ------------------------------------------------------------------------------------------------ weights
def test_dense_weights_match_nerfacc_batched():
    nerfacc = pytest.importorskip("nerfacc")
    g = torch.Generator().manual_seed(1)
    sigma = torch.rand(8, 32, generator=g) * 5
    t = torch.sort(torch.rand(8, 33, generator=g) * 4, dim=-1).values
    w, trans = P.weights_from_density(sigma, t)
    w_ref, trans_ref, _ = nerfacc.render_weight_from_density(t[:, :-1], t[:, 1:], sigma)
    assert torch.allclose(w, w_ref, atol=1e-6) and torch.allclose(trans, trans_ref, atol=1e-6)


def test_dense_weights_gradient():
    sigma = torch.rand(3, 6, dtype=torch.float64, requires_grad=True)
    t = torch.sort(torch.rand(3, 7, dtype=torch.float64), dim=-1).values
    assert torch.autograd.gradcheck(lambda s: P.weights_from_density(s, t)[0], (sigma,))


# ------------------------------------------------------------------------------------------------ sampling
def test_uniform_bins_jitter_keeps_order_and_ends():
    g = torch.Generator().manual_seed(2)
    e = P.uniform_bins(100, 16, True, torch.device("cpu"), generator=g)
    assert e.shape == (100, 17)
    assert (torch.diff(e, dim=-1) > 0).all() and (e[:, 0] == 0).all() and (e[:, -1] == 1).all()
    plain = P.uniform_bins(1, 16, False, torch.device("cpu"))
    assert torch.allclose(plain[0], torch.linspace(0, 1, 17))
    # the jitter moves inner edges within their half-bin windows, by one offset per ray
    off = (e[:, 1:-1] - plain[:, 1:-1]) * 16
    assert (off.abs() <= 0.5 + 1e-5).all() and torch.allclose(off, off[:, :1].expand_as(off), atol=1e-5)


def test_histogram_sampling_follows_the_weights():
    # one bin holds all the weight: without padding, every new edge but the last (quantile 1 maps to the end of the
    # range) falls in it
    edges = torch.linspace(0, 1, 11)[None].repeat(2, 1)
    w = torch.zeros(2, 10)
    w[:, 6] = 1.0
    new = P.sample_from_histogram(edges, w, 64, jitter=False, padding=0.0)
    assert new.shape == (2, 65)
    assert ((new[:, :-1] >= 0.6 - 1e-6) & (new[:, :-1] <= 0.7 + 1e-6)).all()
    # with padding the new edges span the whole range (the last interval reaches far: the background)
    new = P.sample_from_histogram(edges, w, 64, jitter=True, padding=0.01)
    assert torch.allclose(new[:, 0], torch.zeros(2)) and torch.allclose(new[:, -1], torch.ones(2))
    # with padding, the quantiles follow the padded pdf exactly: the cdf at each new edge is its quantile
    w = torch.rand(3, 10)
    new = P.sample_from_histogram(edges[:1].repeat(3, 1), w, 20, jitter=False, padding=0.01)
    pdf = (w + 0.01) / (w + 0.01).sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros(3, 1), torch.cumsum(pdf, -1)], -1)
    k = (new * 10).floor().clamp(max=9).long()
    at = cdf.gather(-1, k) + (new * 10 - k) * pdf.gather(-1, k)
    assert torch.allclose(at, torch.linspace(0, 1, 21).expand(3, 21), atol=1e-5)


def test_proposal_bins_concentrate_on_a_surface():
    def slab(t):  # a thin opaque layer at distance 1.5
        return torch.where((t > 1.5) & (t < 1.55), torch.tensor(200.0), torch.tensor(0.0))

    near, far = torch.full((16, 1), 0.05), torch.full((16, 1), 1000.0)
    g = torch.Generator().manual_seed(3)
    s, ps, pw = P.proposal_bins([slab, slab], [128, 64], 32, 16, near, far, "uniform_lindisp", True,
                                torch.device("cpu"), generator=g)
    t = P.s_to_t(s, near, far)
    assert len(ps) == 2 and ps[0].shape == (16, 129) and ps[1].shape == (16, 65) and s.shape == (16, 33)
    mid = 0.5 * (t[:, 1:] + t[:, :-1])
    near_surface = ((mid > 1.3) & (mid < 1.8)).float().sum(-1)
    assert (near_surface >= 16).all()  # a uniform grid would put ~1 of 32 there
    w, _ = P.weights_from_density(slab(mid), t)
    assert (w.sum(-1) > 0.95).all()


# ------------------------------------------------------------------------------------------------ losses
def _brute_envelope(edges, env_edges, env_w):
    out = torch.zeros(edges.shape[0], edges.shape[1] - 1, dtype=env_w.dtype)
    for r in range(edges.shape[0]):
        for i in range(edges.shape[1] - 1):
            a, b = edges[r, i], edges[r, i + 1]
            for j in range(env_w.shape[1]):
                if env_edges[r, j] < b and env_edges[r, j + 1] > a:
                    out[r, i] += env_w[r, j]
    return out


def test_envelope_matches_brute_force():
    g = torch.Generator().manual_seed(4)
    edges = torch.sort(torch.rand(4, 13, generator=g, dtype=torch.float64), -1).values
    edges[:, 0], edges[:, -1] = 0.0, 1.0
    env_edges = torch.sort(torch.rand(4, 8, generator=g, dtype=torch.float64), -1).values
    env_edges[:, 0], env_edges[:, -1] = 0.0, 1.0
    env_w = torch.rand(4, 7, generator=g, dtype=torch.float64)
    assert torch.allclose(P.envelope(edges, env_edges, env_w), _brute_envelope(edges, env_edges, env_w))


def test_interlevel_loss_zero_under_envelope_and_positive_above():
    s = torch.linspace(0, 1, 9, dtype=torch.float64)[None]
    w = torch.full((1, 8), 0.1, dtype=torch.float64)
    coarse_s = torch.linspace(0, 1, 5, dtype=torch.float64)[None]
    assert float(P.interlevel_loss(s, w, [coarse_s], [torch.full((1, 4), 0.2, dtype=torch.float64)])) == 0.0
    low = torch.full((1, 4), 0.05, dtype=torch.float64, requires_grad=True)
    loss = P.interlevel_loss(s, w, [coarse_s], [low])
    # each fine interval sees one coarse interval of 0.05: excess 0.05, penalty 0.05^2 / 0.1 each, 8 intervals
    assert math.isclose(float(loss.detach()), 8 * 0.05**2 / (0.1 + 1e-7), rel_tol=1e-6)
    loss.backward()
    assert (low.grad < 0).all()  # raising the proposal weights lowers the loss


def test_distortion_loss_matches_quadratic_definition_and_gradient():
    g = torch.Generator().manual_seed(5)
    e = torch.sort(torch.rand(3, 11, generator=g, dtype=torch.float64), -1).values
    w = torch.rand(3, 10, generator=g, dtype=torch.float64, requires_grad=True)
    m = 0.5 * (e[:, 1:] + e[:, :-1])
    brute = (w[:, :, None] * w[:, None, :] * (m[:, :, None] - m[:, None, :]).abs()).sum((1, 2)) \
        + (w**2 * (e[:, 1:] - e[:, :-1])).sum(-1) / 3
    assert torch.allclose(P.distortion_loss(e, w), brute.mean())
    assert torch.autograd.gradcheck(lambda ww: P.distortion_loss(e, ww), (w,))


def test_anneal_weights():
    w = torch.tensor([0.0, 0.25, 1.0])
    assert torch.equal(P.anneal_weights(w, 2000, 1000), w)
    flat = P.anneal_weights(w, 0, 1000)  # exponent 0: every weight 1 (0 ** 0 = 1)
    assert torch.equal(flat, torch.ones(3))
    mid = P.anneal_weights(w, 100, 1000)  # x = 0.1: a = 10 * 0.1 / (9 * 0.1 + 1)
    assert torch.allclose(mid, w ** (1.0 / 1.9))
