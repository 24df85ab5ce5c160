"""Volume rendering over packed samples.

Samples of all rays are flattened into one list of ``S`` samples:

* ``ray_indices`` [S] int64: the ray of each sample, **sorted** (non-decreasing), with the samples of each ray ordered
  along the ray (every sampler here, and nerfacc's, produces them so); rays may have zero samples.
* ``t_starts``, ``t_ends`` [S]: the interval of each sample along its ray.

The quadrature is the usual one (NeRF / nerfacc)::

    alpha_i = 1 - exp(-sigma_i (t_end_i - t_start_i))
    T_i     = exp(-sum_{j < i, same ray} sigma_j dt_j) = prod_{j < i} (1 - alpha_j)
    w_i     = T_i alpha_i

Backends (``backend=``):

* ``"torch"``: the readable reference and the CPU path. The per-ray exclusive sum is a global cumulative sum (in
  float64, so that long sums over millions of samples do not lose the small per-ray values) minus the sum at the first
  sample of each ray. No Python loop over rays, no host sync, differentiable w.r.t. ``sigmas``/``alphas``.
* ``"nerfacc"``: nerfacc's packed CUDA functions (CUDA tensors only; the extension JIT-builds on first use).
* ``"auto"``: nerfacc for CUDA tensors when its extension builds/loads, otherwise torch.

``accumulate_along_rays`` is one ``index_add_`` in every backend (nerfacc's is the same code).
"""

from __future__ import annotations

import functools
import warnings
from typing import Dict, Optional, Tuple

import torch

from threestudio.utils.imports import available, require

Tensor = torch.Tensor

_BACKENDS = ("auto", "torch", "nerfacc")


# ----------------------------------------------------------------------------------------------------------------------
# Backend selection (shared with occupancy_grid.py)
# ----------------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def nerfacc_cuda_available() -> bool:
    """True if nerfacc is importable, CUDA is available and nerfacc's CUDA extension builds (first call) or loads.

    The first call on a machine without a cached build JIT-compiles nerfacc (about a minute). A failed build is
    reported once as a warning and the caller falls back to the torch path.
    """
    if not torch.cuda.is_available() or not available("nerfacc"):
        return False
    try:
        from nerfacc.cuda._backend import _C  # triggers the JIT build
    except Exception as e:  # noqa: BLE001 - any build/load failure means: fall back to torch
        warnings.warn(
            f"nerfacc is installed but its CUDA extension could not be built or loaded ({e}); "
            "using the PyTorch volume-rendering path instead.",
            stacklevel=2,
        )
        return False
    if _C is None:  # pragma: no cover - nerfacc found no CUDA toolkit
        warnings.warn(
            "nerfacc found no CUDA toolkit (nvcc), so its CUDA extension is disabled; "
            "using the PyTorch volume-rendering path instead.",
            stacklevel=2,
        )
        return False
    return True


def resolve_backend(backend: str, device: torch.device, purpose: str) -> str:
    """Map ``backend`` ("auto" | "torch" | "nerfacc") to the backend to run for tensors on ``device``.

    Raises a clear error when ``"nerfacc"`` is asked for but cannot run here.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"{purpose}: unknown backend {backend!r}; choose one of {_BACKENDS}.")
    if backend == "torch":
        return "torch"
    if backend == "auto":
        return "nerfacc" if device.type == "cuda" and nerfacc_cuda_available() else "torch"
    require("nerfacc", f"{purpose} with backend='nerfacc'", "pip install nerfacc==0.5.3")
    if device.type != "cuda":
        raise ValueError(
            f"{purpose}: backend='nerfacc' needs CUDA tensors (nerfacc's packed functions have no CPU "
            f"implementation), got tensors on {device}. Use backend='torch' or 'auto'."
        )
    if not nerfacc_cuda_available():
        raise RuntimeError(
            f"{purpose}: backend='nerfacc' needs nerfacc's CUDA extension, which could not be built or "
            "loaded (it JIT-compiles on first use with nvcc from a CUDA toolkit matching torch; set "
            "TORCH_CUDA_ARCH_LIST to your GPU's compute capability). Use backend='torch' or 'auto'."
        )
    return "nerfacc"


def _nerfacc():
    return require("nerfacc", "packed volume rendering with backend='nerfacc'", "pip install nerfacc==0.5.3")


# ----------------------------------------------------------------------------------------------------------------------
# Segment helpers (torch)
# ----------------------------------------------------------------------------------------------------------------------


def segment_start_index(ray_indices: Tensor) -> Tensor:
    """For each sample [S], the index of the first sample of its ray (``ray_indices`` sorted, non-decreasing).

    A binary search of each ray index in the sorted list: no host sync, deterministic. (``torch.cummax`` over the
    segment starts would also do, but on CUDA a 1-D cummax runs in a single thread block: 50 ms for 16.8M samples
    on an H200.)
    """
    return torch.searchsorted(ray_indices, ray_indices, right=False)


def _segment_end_index(ray_indices: Tensor) -> Tensor:
    """For each sample [S], the index of the last sample of its ray (``ray_indices`` sorted)."""
    return torch.searchsorted(ray_indices, ray_indices, right=True) - 1


class _ExclusiveSegmentSum(torch.autograd.Function):
    """out_i = sum of v_j for start_i <= j < i. Backward: the reverse sum g_j -> sum of g_i for j < i <= end_j.

    Written as a Function so that the backward is two scans and a gather instead of the sort-based scatter that
    autograd would use for the gather ``exclusive[start]``; the two directions call each other, so double backward
    works too.
    """

    @staticmethod
    def forward(ctx, v: Tensor, ray_indices: Tensor, start: Tensor) -> Tensor:
        ctx.save_for_backward(ray_indices, start)
        exclusive = torch.cumsum(v, dim=0) - v
        return exclusive - exclusive[start]

    @staticmethod
    def backward(ctx, g: Tensor):
        ray_indices, start = ctx.saved_tensors
        return _ReverseExclusiveSegmentSum.apply(g, ray_indices, start), None, None


class _ReverseExclusiveSegmentSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g: Tensor, ray_indices: Tensor, start: Tensor) -> Tensor:
        ctx.save_for_backward(ray_indices, start)
        inclusive = torch.cumsum(g, dim=0)
        return inclusive[_segment_end_index(ray_indices)] - inclusive

    @staticmethod
    def backward(ctx, gg: Tensor):
        ray_indices, start = ctx.saved_tensors
        return _ExclusiveSegmentSum.apply(gg, ray_indices, start), None, None


def exclusive_segment_sum(values: Tensor, ray_indices: Tensor, start_index: Optional[Tensor] = None) -> Tensor:
    """Per-ray exclusive cumulative sum of ``values`` [S] over packed samples, returned as float64 [S].

    Computed as a global float64 cumsum minus its value at each ray's first sample, so the result is exact to about
    1e-16 times the running total. Differentiable w.r.t. ``values`` (twice, too).
    """
    if start_index is None:
        start_index = segment_start_index(ray_indices)
    return _ExclusiveSegmentSum.apply(values.to(torch.float64), ray_indices, start_index)


# ----------------------------------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------------------------------


def _weights_from_density_torch(
    t_starts: Tensor, t_ends: Tensor, sigmas: Tensor, ray_indices: Tensor
) -> Tuple[Tensor, Tensor, Tensor]:
    sigma_dt = sigmas * (t_ends - t_starts)
    alphas = 1.0 - torch.exp(-sigma_dt)
    trans = torch.exp(-exclusive_segment_sum(sigma_dt, ray_indices)).to(sigmas.dtype)
    return trans * alphas, trans, alphas


def _weights_from_alpha_torch(alphas: Tensor, ray_indices: Tensor) -> Tuple[Tensor, Tensor]:
    # log(1 - alpha) in float64; alpha is clamped to 1 - 1e-12 so that an opaque sample gives T ~ 1e-12 behind it
    # instead of log(0) = -inf (which would turn the cumsum difference into nan).
    log_1m = torch.log1p(-alphas.to(torch.float64).clamp(max=1.0 - 1e-12))
    trans = torch.exp(exclusive_segment_sum(log_1m, ray_indices)).to(alphas.dtype)
    return trans * alphas, trans


def _check_packed(ray_indices: Tensor, *tensors: Tensor) -> None:
    if ray_indices.dim() != 1:
        raise ValueError(f"ray_indices must have shape [S], got {tuple(ray_indices.shape)}")
    for t in tensors:
        if t.shape != ray_indices.shape:
            raise ValueError(
                f"packed tensors must all have shape [S] = {tuple(ray_indices.shape)}, got {tuple(t.shape)}"
            )
    # checking order costs a host sync on CUDA, so it is only done on the CPU
    if (
        ray_indices.device.type == "cpu"
        and ray_indices.shape[0] > 1
        and bool((ray_indices[1:] < ray_indices[:-1]).any())
    ):
        raise ValueError(
            "ray_indices must be sorted (non-decreasing): the samples of each ray must be contiguous and "
            "rays in increasing order"
        )


def render_weight_from_density(
    t_starts: Tensor,
    t_ends: Tensor,
    sigmas: Tensor,
    ray_indices: Tensor,
    n_rays: int,
    backend: str = "auto",
) -> Tuple[Tensor, Tensor, Tensor]:
    """Rendering weights from densities over packed samples.

    Args:
        t_starts, t_ends, sigmas: [S]; ray_indices: [S] int64 (sorted); n_rays: number of rays.
    Returns:
        weights [S], transmittance [S] (T_i, exclusive), alphas [S]; differentiable w.r.t. ``sigmas``.
    """
    _check_packed(ray_indices, t_starts, t_ends, sigmas)
    be = resolve_backend(backend, sigmas.device, "render_weight_from_density")
    if be == "nerfacc" and sigmas.shape[0] > 0:
        nerfacc = _nerfacc()
        packed_info = nerfacc.pack_info(ray_indices, n_rays)
        return nerfacc.render_weight_from_density(t_starts, t_ends, sigmas, packed_info=packed_info)
    return _weights_from_density_torch(t_starts, t_ends, sigmas, ray_indices)


def render_weight_from_alpha(
    alphas: Tensor, ray_indices: Tensor, n_rays: int, backend: str = "auto"
) -> Tuple[Tensor, Tensor]:
    """Rendering weights from opacities over packed samples.

    Args:
        alphas: [S] in [0, 1]; ray_indices: [S] int64 (sorted); n_rays: number of rays.
    Returns:
        weights [S], transmittance [S]; differentiable w.r.t. ``alphas`` (torch path: T behind an alpha of exactly 1 is
        1e-12, not 0).
    """
    _check_packed(ray_indices, alphas)
    be = resolve_backend(backend, alphas.device, "render_weight_from_alpha")
    if be == "nerfacc" and alphas.shape[0] > 0:
        nerfacc = _nerfacc()
        packed_info = nerfacc.pack_info(ray_indices, n_rays)
        return nerfacc.render_weight_from_alpha(alphas, packed_info=packed_info)
    return _weights_from_alpha_torch(alphas, ray_indices)


def render_transmittance_from_density(
    t_starts: Tensor, t_ends: Tensor, sigmas: Tensor, ray_indices: Tensor, n_rays: int, backend: str = "auto"
) -> Tuple[Tensor, Tensor]:
    """Transmittance [S] and alphas [S] (see :func:`render_weight_from_density`)."""
    _, trans, alphas = render_weight_from_density(t_starts, t_ends, sigmas, ray_indices, n_rays, backend)
    return trans, alphas


# ----------------------------------------------------------------------------------------------------------------------
# Accumulation and compositing
# ----------------------------------------------------------------------------------------------------------------------


def accumulate_along_rays(weights: Tensor, values: Optional[Tensor], ray_indices: Tensor, n_rays: int) -> Tensor:
    """Sum ``weights[:, None] * values`` per ray.

    Args:
        weights: [S]; values: [S, C] or [S] or None (None accumulates the weights: opacity); ray_indices: [S].
    Returns:
        [n_rays, C] ([n_rays, 1] for None or 1-D values); rays without samples get 0. Differentiable w.r.t. both.
    """
    _check_packed(ray_indices, weights)
    if values is None:
        src = weights[:, None]
    else:
        if values.dim() == 1:
            values = values[:, None]
        if values.shape[0] != weights.shape[0]:
            raise ValueError(f"values must have shape [S, C] with S = {weights.shape[0]}, got {tuple(values.shape)}")
        src = weights[:, None] * values
    out = torch.zeros((n_rays, src.shape[-1]), dtype=src.dtype, device=src.device)
    return out.index_add(0, ray_indices, src)


def composite(
    t_starts: Tensor,
    t_ends: Tensor,
    sigmas: Tensor,
    ray_indices: Tensor,
    n_rays: int,
    rgbs: Tensor,
    normals: Optional[Tensor] = None,
    bg_color: Optional[Tensor] = None,
    backend: str = "auto",
) -> Dict[str, Tensor]:
    """Render packed samples to per-ray colour, opacity, depth (and normals).

    Args:
        t_starts, t_ends, sigmas: [S]; ray_indices: [S] int64; n_rays: number of rays.
        rgbs: [S, C] sample colours (or any features). normals: optional [S, 3].
        bg_color: optional background [n_rays, C] or [C], blended as ``rgb_fg + bg * (1 - opacity)``.
    Returns a dict of:
        ``weights``, ``transmittance``, ``alphas`` [S];
        ``rgb_fg`` [n_rays, C] (sum w c); ``rgb`` [n_rays, C] (``rgb_fg`` over ``bg_color``, or ``rgb_fg``);
        ``opacity`` [n_rays, 1] (sum w); ``depth`` [n_rays, 1] = sum w t_mid (not divided by opacity, as in
        threestudio); ``z_variance`` [n_rays, 1] = sum w (t_mid - depth)^2;
        ``normal`` [n_rays, 3] = sum w n (only if ``normals`` is given; not renormalised).
    Rays with no samples get zeros (and the background).
    """
    weights, trans, alphas = render_weight_from_density(t_starts, t_ends, sigmas, ray_indices, n_rays, backend)
    t_mid = 0.5 * (t_starts + t_ends)
    if rgbs.dim() != 2 or rgbs.shape[0] != weights.shape[0]:
        raise ValueError(f"rgbs must have shape [S, C] with S = {weights.shape[0]}, got {tuple(rgbs.shape)}")
    # colour, opacity, depth (and normal) in one accumulation: one scatter forward and backward instead of four
    dt = torch.promote_types(rgbs.dtype, t_mid.dtype)
    columns = [rgbs.to(dt), torch.ones_like(t_mid, dtype=dt)[:, None], t_mid.to(dt)[:, None]]
    if normals is not None:
        columns.append(normals.to(dt))
    C = rgbs.shape[1]
    acc = accumulate_along_rays(weights, torch.cat(columns, dim=1), ray_indices, n_rays)
    rgb_fg, opacity, depth = acc[:, :C], acc[:, C : C + 1], acc[:, C + 1 : C + 2]
    z_variance = accumulate_along_rays(weights, (t_mid - depth[ray_indices, 0]) ** 2, ray_indices, n_rays)
    out = {
        "weights": weights,
        "transmittance": trans,
        "alphas": alphas,
        "rgb_fg": rgb_fg,
        "opacity": opacity,
        "depth": depth,
        "z_variance": z_variance,
    }
    if bg_color is not None:
        bg = bg_color.to(rgb_fg)
        out["rgb"] = rgb_fg + bg.expand_as(rgb_fg) * (1.0 - opacity)
    else:
        out["rgb"] = rgb_fg
    if normals is not None:
        out["normal"] = acc[:, C + 2 :]
    return out
