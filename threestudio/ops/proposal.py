"""Proposal sampling for unbounded scenes (mip-NeRF 360 / nerfacto), on dense ``[n_rays, n_samples]`` tensors.

Every ray has the same number of samples at each stage, so all of this is plain batched tensor code: it runs on any
device, needs no custom kernel, keeps static shapes (CUDA graphs, ``torch.compile``) and never reads a value back to
the host.

Distances along a ray are handled in a normalised *spacing* ``s`` in [0, 1] between ``near`` and ``far``::

    s = (g(t) - g(near)) / (g(far) - g(near))

with ``g`` the "uniform then inverse-depth" map of nerfstudio's piecewise sampler: ``g(t) = t / 2`` for ``t < 1``
and ``1 - 1 / (2 t)`` beyond, so half the samples of a uniform ``s`` grid fall within distance 1 (the scene box after
pose normalisation) and the other half spread out to ``far`` in inverse depth. ``g = "linear"`` and ``"lindisp"``
(inverse depth throughout, nerfacc's) are also available.

A sampling pass (:func:`proposal_bins`) starts from a uniform (jittered) grid in ``s``, evaluates a proposal
density on it, turns that into per-interval weights (:func:`weights_from_density`) and draws the next, finer set of
interval edges from them (:func:`sample_from_histogram`); the last set feeds the radiance field. The proposal
networks are trained by :func:`interlevel_loss` (their weights must bound the final weights from above), and the
final weights are regularised by :func:`distortion_loss`; both work in ``s`` space, like the papers.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch

Tensor = torch.Tensor

SPACINGS = ("uniform_lindisp", "linear", "lindisp")


# ----------------------------------------------------------------------------------------------------- spacing
def _g(t: Tensor, kind: str) -> Tensor:
    if kind == "uniform_lindisp":
        return torch.where(t < 1.0, 0.5 * t, 1.0 - 0.5 / t.clamp_min(1.0))
    if kind == "linear":
        return t
    if kind == "lindisp":
        return -1.0 / t
    raise ValueError(f"spacing {kind!r}: use one of {', '.join(SPACINGS)}")


def _g_inv(y: Tensor, kind: str) -> Tensor:
    if kind == "uniform_lindisp":
        return torch.where(y < 0.5, 2.0 * y, 0.5 / (1.0 - y).clamp_min(1e-12))
    if kind == "linear":
        return y
    if kind == "lindisp":
        return -1.0 / y
    raise ValueError(f"spacing {kind!r}: use one of {', '.join(SPACINGS)}")


def s_to_t(s: Tensor, near: Tensor, far: Tensor, kind: str = "uniform_lindisp") -> Tensor:
    """Normalised spacing ``s`` [..., K] -> distance ``t``; ``near``/``far`` broadcast ([..., 1] or numbers)."""
    near, far = torch.as_tensor(near, dtype=s.dtype, device=s.device), torch.as_tensor(far, dtype=s.dtype,
                                                                                         device=s.device)
    g0, g1 = _g(near, kind), _g(far, kind)
    return _g_inv(g0 + s * (g1 - g0), kind)


def t_to_s(t: Tensor, near: Tensor, far: Tensor, kind: str = "uniform_lindisp") -> Tensor:
    """Inverse of :func:`s_to_t`."""
    near, far = torch.as_tensor(near, dtype=t.dtype, device=t.device), torch.as_tensor(far, dtype=t.dtype,
                                                                                         device=t.device)
    g0, g1 = _g(near, kind), _g(far, kind)
    return (_g(t, kind) - g0) / (g1 - g0)


# ----------------------------------------------------------------------------------------------------- bins
def uniform_bins(n_rays: int, n_bins: int, jitter: bool, device: torch.device, dtype: torch.dtype = torch.float32,
                 generator: Optional[torch.Generator] = None) -> Tensor:
    """Edges [n_rays, n_bins + 1] of ``n_bins`` equal intervals of [0, 1]. With ``jitter``, one uniform offset per
    ray moves every inner edge within its half-bin window (the first edge stays at 0 and the last at 1), so a ray's
    bins stay ordered and cover [0, 1] and, over many draws, every depth is sampled."""
    edges = torch.linspace(0.0, 1.0, n_bins + 1, device=device, dtype=dtype).expand(n_rays, n_bins + 1)
    if not jitter:
        return edges.contiguous()
    u = torch.rand(n_rays, 1, device=device, dtype=dtype, generator=generator) - 0.5  # one offset per ray
    inner = edges[:, 1:-1] + u / n_bins
    return torch.cat([edges[:, :1], inner, edges[:, -1:]], dim=-1)


def weights_from_density(sigma: Tensor, t_edges: Tensor) -> Tuple[Tensor, Tensor]:
    """Volume-rendering weights of a dense batch: ``sigma`` [R, K] per interval, ``t_edges`` [R, K + 1] its
    Euclidean edges (unit-length ray directions). Returns ``(weights, transmittance)`` [R, K], with
    ``w_i = T_i (1 - exp(-sigma_i dt_i))`` and ``T_i = exp(-sum_{j<i} sigma_j dt_j)``."""
    delta = (t_edges[..., 1:] - t_edges[..., :-1]).clamp_min(0.0)
    tau = sigma * delta
    # T_0 .. T_K from the exclusive cumulative sum; w_i = T_i - T_{i+1} (= T_i alpha_i) telescopes, so a ray's
    # weights sum to exactly 1 - T_K <= 1 in floating point, and each is >= 0 (the cumulative sum never decreases)
    acc = torch.cat([torch.zeros_like(tau[..., :1]), torch.cumsum(tau, dim=-1)], dim=-1)
    trans = torch.exp(-acc)
    return trans[..., :-1] - trans[..., 1:], trans[..., :-1]


def sample_from_histogram(edges: Tensor, weights: Tensor, n_samples: int, jitter: bool, padding: float = 0.01,
                          generator: Optional[torch.Generator] = None) -> Tensor:
    """Draw ``n_samples + 1`` new interval edges [R, n + 1] from the piecewise-constant density of ``weights`` [R, K]
    over ``edges`` [R, K + 1] (inverse transform sampling).

    ``padding`` is added to every weight first (so no interval, and no ray with all-zero weights, is ever
    unreachable). The quantiles are a uniform grid of [0, 1] (both ends included: with padding, the new edges span
    the old range, so the last interval still reaches ``far``), moved by one per-ray offset when ``jitter``.
    Returned edges are sorted and detached (sampling positions carry no gradient)."""
    w = weights.detach() + padding
    pdf = w / w.sum(dim=-1, keepdim=True)
    cdf = torch.cumsum(pdf, dim=-1).clamp(max=1.0)
    cdf = torch.cat([torch.zeros_like(cdf[..., :1]), cdf], dim=-1)  # [R, K + 1], starts at 0
    cdf[..., -1] = 1.0
    R = edges.shape[0]
    if jitter:
        u = uniform_bins(R, n_samples, True, edges.device, edges.dtype, generator)
    else:
        u = torch.linspace(0.0, 1.0, n_samples + 1, device=edges.device, dtype=edges.dtype).expand(R, -1)
    u = u.contiguous()
    idx = torch.searchsorted(cdf, u, right=True)
    below = (idx - 1).clamp(0, cdf.shape[-1] - 1)
    above = idx.clamp(0, cdf.shape[-1] - 1)
    c0, c1 = cdf.gather(-1, below), cdf.gather(-1, above)
    e0, e1 = edges.detach().gather(-1, below), edges.detach().gather(-1, above)
    frac = ((u - c0) / (c1 - c0).clamp_min(1e-12)).clamp(0.0, 1.0)
    out = e0 + frac * (e1 - e0)
    return torch.sort(out, dim=-1).values


def anneal_weights(weights: Tensor, step: int, anneal_steps: int = 1000, slope: float = 10.0) -> Tensor:
    """nerfacto's early-training annealing of proposal weights: ``w ** a`` with ``a`` rising from 0 to 1 over
    ``anneal_steps`` steps along ``slope * x / ((slope - 1) x + 1)`` (flat proposals first, sharp later)."""
    if anneal_steps <= 0 or step >= anneal_steps:
        return weights
    x = step / anneal_steps
    a = slope * x / ((slope - 1.0) * x + 1.0)
    return weights.clamp_min(0.0) ** a


# ----------------------------------------------------------------------------------------------------- losses
def envelope(edges: Tensor, env_edges: Tensor, env_weights: Tensor) -> Tensor:
    """For each interval of ``edges`` [R, K + 1], the total of ``env_weights`` [R, J] over the intervals of
    ``env_edges`` [R, J + 1] that overlap it: [R, K]. (mip-NeRF 360's ``outer`` bound.)"""
    csum = torch.cat([torch.zeros_like(env_weights[..., :1]), torch.cumsum(env_weights, dim=-1)], dim=-1)
    starts, ends = edges[..., :-1].contiguous(), edges[..., 1:].contiguous()
    # first overlapping env interval: the last one starting at or before `start`; last overlapping: the last one
    # starting before `end`
    env_starts = env_edges[..., :-1].contiguous()
    n_env = env_weights.shape[-1]
    lo = (torch.searchsorted(env_starts, starts, right=True) - 1).clamp(0, n_env - 1)
    hi = torch.searchsorted(env_starts, ends, right=False).clamp(1, n_env)
    return csum.gather(-1, hi) - csum.gather(-1, lo)


def interlevel_loss(s_edges: Tensor, weights: Tensor, prop_s_edges: Sequence[Tensor], prop_weights: Sequence[Tensor],
                    eps: float = 1e-7) -> Tensor:
    """Proposal supervision (mip-NeRF 360 eq. 13): for each proposal level, the final weights (detached) must lie
    under the envelope of that level's weights; the excess is penalised as ``relu(w - env)^2 / (w + eps)``. Summed
    over intervals, averaged over rays, summed over levels. Gradients reach only the proposal weights."""
    w = weights.detach()
    total = torch.zeros((), device=w.device, dtype=w.dtype)
    for e, pw in zip(prop_s_edges, prop_weights):
        env = envelope(s_edges.detach(), e.detach(), pw)
        total = total + ((w - env).clamp_min(0.0) ** 2 / (w + eps)).sum(-1).mean()
    return total


def distortion_loss(s_edges: Tensor, weights: Tensor) -> Tensor:
    """mip-NeRF 360's distortion loss, averaged over rays, in O(K) per ray::

        sum_{i,j} w_i w_j |m_i - m_j| + 1/3 sum_i w_i^2 (s_{i+1} - s_i)

    with ``m`` the interval midpoints in ``s`` (sorted). The double sum is ``2 sum_i w_i (m_i W_<i - (w m)_<i)``."""
    mid = 0.5 * (s_edges[..., 1:] + s_edges[..., :-1])
    width = s_edges[..., 1:] - s_edges[..., :-1]
    wm = weights * mid
    w_before = torch.cumsum(weights, dim=-1) - weights
    wm_before = torch.cumsum(wm, dim=-1) - wm
    inter = 2.0 * (weights * (mid * w_before - wm_before)).sum(-1)
    intra = (weights**2 * width).sum(-1) / 3.0
    return (inter + intra).mean()


# ----------------------------------------------------------------------------------------------------- a full pass
DensityFn = Callable[[Tensor], Tensor]  # t [R, K] interval midpoints -> sigma [R, K]


def proposal_bins(density_fns: Sequence[DensityFn], n_prop_samples: Sequence[int], n_samples: int, n_rays: int,
                  near: Tensor, far: Tensor, spacing: str, jitter: bool, device: torch.device, step: int = 10**9,
                  anneal_steps: int = 1000, padding: float = 0.01, generator: Optional[torch.Generator] = None
                  ) -> Tuple[Tensor, List[Tensor], List[Tensor]]:
    """Run the proposal levels and return the final interval edges in ``s`` [R, n_samples + 1], with each
    level's ``s`` edges and weights (for :func:`interlevel_loss`). ``density_fns[i]`` receives Euclidean
    midpoints ``t`` [R, K] and returns densities [R, K]; whether it builds a graph is up to the caller."""
    if len(density_fns) != len(n_prop_samples):
        raise ValueError(f"proposal_bins: {len(density_fns)} proposal densities for {len(n_prop_samples)} sample "
                         f"counts")
    s = uniform_bins(n_rays, n_prop_samples[0] if n_prop_samples else n_samples, jitter, device, generator=generator)
    prop_edges: List[Tensor] = []
    prop_weights: List[Tensor] = []
    for i, fn in enumerate(density_fns):
        if i > 0:
            s = sample_from_histogram(s, anneal_weights(prop_weights[-1], step, anneal_steps), n_prop_samples[i],
                                      jitter, padding, generator)
        t = s_to_t(s, near, far, spacing)
        sigma = fn(0.5 * (t[..., 1:] + t[..., :-1]))
        w, _ = weights_from_density(sigma, t)
        prop_edges.append(s)
        prop_weights.append(w)
    if density_fns:
        s = sample_from_histogram(s, anneal_weights(prop_weights[-1], step, anneal_steps), n_samples, jitter, padding,
                                  generator)
    return s, prop_edges, prop_weights
