"""Multiresolution hash encoding (Instant-NGP / tiny-cuda-nn ``Grid``/``Hash`` semantics).

Public API:

* :func:`hash_encode` - the op, with ``backend`` in {"auto", "triton", "torch", "tcnn"}.
* :class:`HashGridEncoder` - a small ``nn.Module`` holding the ``[L, T, F]`` table.
* :func:`grid_levels` - per-level scale / resolution / size / dense-or-hashed, as tcnn computes them.
* :func:`per_level_scale_for` - the per-level scale that reaches a given finest resolution.

The exact conventions (level resolution, cell offset, dense vs hashed indexing, output layout) are documented in
:mod:`threestudio.ops.hashgrid.reference`, which is also the CPU implementation.

``backend="auto"`` picks Triton for CUDA tensors when triton is importable (and the dtypes are supported: float32
``x``, float32/float16 table, F = 1 or even), else the PyTorch reference. tiny-cuda-nn is used only when asked for
(``backend="tcnn"``): it keeps its parameters in its own flat layout and half-precision output, so it is a
compatibility path, not the default.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from threestudio.utils.imports import available, require

from .reference import GridLevels, grid_levels, hash_encode_reference, per_level_scale_for

__all__ = ["hash_encode", "HashGridEncoder", "grid_levels", "GridLevels", "per_level_scale_for", "BACKENDS"]

BACKENDS = ("auto", "triton", "torch", "tcnn")


def _triton_usable(x: torch.Tensor, table: torch.Tensor) -> bool:
    if not x.is_cuda or not available("triton"):
        return False
    from . import triton_backend

    return triton_backend.supports(x, table) is None


def hash_encode(
    x: torch.Tensor,
    table: torch.Tensor,
    *,
    base_resolution: float,
    per_level_scale: float,
    n_active_levels: Optional[int] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Encode points with a multiresolution hash grid.

    Args:
        x: [N, 3] points in [0, 1]^3 (values outside are clamped), float32 (float64 on the torch backend).
        table: [L, T, F] level tables (T a power of two), float32 or float16 (float64 on the torch backend).
        base_resolution: N_min (tcnn's ``base_resolution``).
        per_level_scale: b (tcnn's ``per_level_scale``); see :func:`per_level_scale_for`.
        n_active_levels: progressive levels: only levels ``< n_active_levels`` contribute; the others output zeros
            and receive no gradient. None: all levels.
        backend: "auto", "triton", "torch" or "tcnn".
    Returns:
        [N, L * F] float32, level-major (columns ``l*F .. l*F+F-1`` are level ``l``).
    """
    kw = dict(base_resolution=base_resolution, per_level_scale=per_level_scale, n_active_levels=n_active_levels)
    if backend == "auto":
        backend = "triton" if _triton_usable(x, table) else "torch"
    if backend == "torch":
        return hash_encode_reference(x, table, **kw)
    if backend == "triton":
        require("triton", "the Triton hash-grid backend", "pip install triton")
        from .triton_backend import hash_encode_triton

        return hash_encode_triton(x, table, **kw)
    if backend == "tcnn":
        from .tcnn_backend import hash_encode_tcnn

        return hash_encode_tcnn(x, table, **kw)
    raise ValueError(f"hash_encode: unknown backend {backend!r}; choose one of {BACKENDS}")


class HashGridEncoder(nn.Module):
    """A hash-grid encoding with its table as a parameter ``[n_levels, 2**log2_hashmap_size, n_features_per_level]``.

    The table is initialised uniform in [-1e-4, 1e-4] like tcnn. ``n_active_levels`` (None = all) can be changed
    between steps for coarse-to-fine training. ``forward(x)`` maps [..., 3] points in [0, 1] to
    [..., n_output_dims] float32.
    """

    def __init__(
        self,
        n_input_dims: int = 3,
        n_levels: int = 16,
        n_features_per_level: int = 2,
        log2_hashmap_size: int = 19,
        base_resolution: float = 16,
        per_level_scale: float = 1.447269237440378,
        dtype: torch.dtype = torch.float32,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if n_input_dims != 3:
            raise ValueError(f"HashGridEncoder supports n_input_dims=3 only (got {n_input_dims})")
        if backend not in BACKENDS:
            raise ValueError(f"HashGridEncoder: unknown backend {backend!r}; choose one of {BACKENDS}")
        self.n_input_dims = n_input_dims
        self.n_levels = n_levels
        self.n_features_per_level = n_features_per_level
        self.log2_hashmap_size = log2_hashmap_size
        self.base_resolution = base_resolution
        self.per_level_scale = per_level_scale
        self.backend = backend
        self.n_active_levels: Optional[int] = None
        table = torch.empty(n_levels, 2**log2_hashmap_size, n_features_per_level, dtype=torch.float32)
        nn.init.uniform_(table, -1e-4, 1e-4)
        self.table = nn.Parameter(table.to(dtype))

    @property
    def n_output_dims(self) -> int:
        return self.n_levels * self.n_features_per_level

    def levels(self) -> GridLevels:
        """Per-level scale, resolution, used rows and dense/hashed flag."""
        return grid_levels(self.n_levels, 2**self.log2_hashmap_size, float(self.base_resolution),
                           float(self.per_level_scale))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        out = hash_encode(
            x.reshape(-1, self.n_input_dims),
            self.table,
            base_resolution=self.base_resolution,
            per_level_scale=self.per_level_scale,
            n_active_levels=self.n_active_levels,
            backend=self.backend,
        )
        return out.reshape(*lead, self.n_output_dims)

    def extra_repr(self) -> str:
        return (
            f"n_levels={self.n_levels}, n_features_per_level={self.n_features_per_level}, "
            f"log2_hashmap_size={self.log2_hashmap_size}, base_resolution={self.base_resolution}, "
            f"per_level_scale={self.per_level_scale}, backend={self.backend!r}"
        )
