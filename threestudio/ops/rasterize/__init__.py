"""Differentiable mesh rasterization with nvdiffrast's op set and tensor layouts.

Public API (one function per op; ``backend`` in {"auto", "triton", "torch", "nvdiffrast"}):

* :func:`rasterize` ``(pos [B, V, 4] clip space, tri [T, 3], (H, W)) -> (rast [B, H, W, 4], rast_db)``: ``rast``
  holds ``(u, v, z/w, triangle_id + 1)``, zeros where empty; ``rast_db`` [B, H, W, 4] the screen-space derivatives
  ``(du/dX, du/dY, dv/dX, dv/dY)`` (per pixel) when ``grad_db`` (else [B, H, W, 0]).
* :func:`interpolate` ``(attr [V, C] or [B, V, C], rast, tri) -> (out [B, H, W, C], out_da)``: differentiable in the
  attributes and, through ``(u, v)``, in the vertex positions; ``diff_attrs`` adds image-space derivatives.
* :func:`antialias` ``(color [B, H, W, C], rast, pos, tri) -> color``: analytic silhouette antialiasing; gives the
  vertex positions a gradient at silhouette edges.
* :func:`texture` ``(tex [B, Ht, Wt, C], uv [B, H, W, 2]) -> [B, H, W, C]``: bilinear (nearest, and mip-mapped when
  ``uv_da`` is given) lookups.
* :func:`antialias_construct_topology_hash` ``(tri) -> opp``: the edge-adjacency table :func:`antialias` needs; pass
  it as ``topology_hash`` to reuse it while the triangles stay the same.

Conventions (:mod:`.common` has the exact rules): pixel row 0 is NDC ``y = -1`` (as nvdiffrast and OpenGL
framebuffers; a renderer whose projection puts NDC ``+y`` at the top row negates clip ``y`` first, as
``mesh-rasterizer`` does); ``u, v`` are perspective-correct barycentrics of corners 0 and 1; triangles crossing the
near plane are rendered clipped, parts behind the camera never; the smallest ``z/w`` wins the depth test, ties go to
the smaller triangle index. No back-face culling. Range mode (nvdiffrast's ``ranges``) and cube-map textures are not
supported.

Backends: ``torch`` (the vectorised reference, any device), ``triton`` (CUDA kernels for rasterize, interpolate and
antialias, with hand-written backward passes; also runs on CPU tensors under ``TRITON_INTERPRET=1`` for tests),
``nvdiffrast`` (when installed: its CUDA rasterizer context). ``auto`` picks Triton for CUDA tensors when triton is
importable, else torch. :mod:`.reference` holds the brute-force specification used by the tests.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Optional, Sequence, Tuple, Union

import torch

from threestudio.utils.imports import available, require

from .common import check_pos_tri, check_resolution
from .texture import texture
from .topology import edge_opposites

__all__ = ["rasterize", "interpolate", "antialias", "texture", "antialias_construct_topology_hash",
           "RasterizeContext", "BACKENDS", "resolve_backend"]

BACKENDS = ("auto", "triton", "torch", "nvdiffrast")
# the PyTorch topology table on CUDA too (a comparison switch for benchmarks), read once: every antialias call asks
_TORCH_TOPOLOGY = os.environ.get("THREESTUDIO_RASTER_TORCH_TOPOLOGY") == "1"


@functools.lru_cache(maxsize=None)
def _has_triton() -> bool:  # every op resolves its backend: keep the import probe off that path
    return available("triton")


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend ``auto`` stands for on ``device`` (others are checked and returned)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown rasterization backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    if backend == "auto":
        return "triton" if device.type == "cuda" and _has_triton() else "torch"
    if backend == "triton":
        if not _has_triton():  # raises the install hint
            require("triton", "the Triton rasterization backend", "pip install triton")
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError("the triton rasterization backend needs CUDA tensors (on the CPU it runs only under "
                             "TRITON_INTERPRET=1, for tests); use backend 'torch' or 'auto'.")
    if backend == "nvdiffrast":
        require("nvdiffrast.torch", "the nvdiffrast rasterization backend",
                "pip install git+https://github.com/NVlabs/nvdiffrast")
        if device.type != "cuda":
            raise ValueError("the nvdiffrast backend needs CUDA tensors; use backend 'torch' on the CPU.")
    return backend


def rasterize(pos: torch.Tensor, tri: torch.Tensor, resolution: Union[int, Sequence[int]],
              ranges: Optional[torch.Tensor] = None, grad_db: bool = True,
              backend: str = "auto") -> Tuple[torch.Tensor, torch.Tensor]:
    """Rasterize clip-space triangles into ``rast`` [B, H, W, 4] = (u, v, z/w, triangle_id + 1) and ``rast_db``.

    ``pos`` [B, V, 4] (or [V, 4] for one image), ``tri`` [T, 3] integer, ``resolution`` (H, W). Gradients flow
    from ``rast[..., :3]`` to ``pos`` (not from ``rast_db``).
    """
    if ranges is not None:
        raise NotImplementedError("rasterize: range mode (ranges=...) is not supported; give pos as [B, V, 4] "
                                  "(instanced mode) and one shared tri tensor.")
    pos, tri = check_pos_tri(pos, tri, "rasterize")
    h, w = check_resolution(resolution)
    be = resolve_backend(backend, pos.device)
    if be == "torch":
        from . import torch_backend

        return torch_backend.rasterize(pos, tri, h, w, grad_db)
    if be == "triton":
        from . import triton_backend

        return triton_backend.rasterize(pos, tri, h, w, grad_db)
    from . import nvdiffrast_backend

    return nvdiffrast_backend.rasterize(pos, tri, (h, w), grad_db)


def interpolate(attr: torch.Tensor, rast: torch.Tensor, tri: torch.Tensor, rast_db: Optional[torch.Tensor] = None,
                diff_attrs: Optional[Union[str, Sequence[int]]] = None,
                backend: str = "auto") -> Tuple[torch.Tensor, torch.Tensor]:
    """Interpolate vertex attributes ``attr`` [V, C] (shared) or [B, V, C] at the rasterized pixels.

    Returns ``(out [B, H, W, C], out_da)``; ``out_da`` [B, H, W, 2 * len(diff_attrs)] holds ``(dA/dX, dA/dY)`` of
    the listed channels (``"all"`` for every channel) when ``diff_attrs`` is given (needs ``rast_db``), else it
    has 0 channels.
    """
    if rast.dim() != 4 or rast.shape[-1] != 4:
        raise ValueError(f"interpolate: rast must be [B, H, W, 4] from rasterize, got {tuple(rast.shape)}.")
    if attr.dim() not in (2, 3) or (attr.dim() == 3 and attr.shape[0] not in (1, rast.shape[0])):
        raise ValueError(f"interpolate: attr must be [V, C] or [B, V, C] with B = {rast.shape[0]} (or 1), got "
                         f"{tuple(attr.shape)}.")
    be = resolve_backend(backend, rast.device)
    if be == "triton" and not diff_attrs:
        from . import triton_backend

        return triton_backend.interpolate(attr, rast, tri)
    if be == "nvdiffrast":
        from . import nvdiffrast_backend

        return nvdiffrast_backend.interpolate(attr, rast, tri, rast_db, diff_attrs)
    from . import torch_backend

    return torch_backend.interpolate(attr, rast, tri, rast_db, diff_attrs)


def antialias_construct_topology_hash(tri: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """The edge-adjacency table for :func:`antialias` (``[T, 3]`` int32; see :mod:`.topology`). On CUDA it is
    built by a hash-table kernel (no sort, no host synchronisation)."""
    if not _TORCH_TOPOLOGY and resolve_backend(backend if backend != "nvdiffrast" else "auto", tri.device) == "triton":
        from . import triton_backend

        return triton_backend.edge_opposites(tri)
    return edge_opposites(tri)


def antialias(color: torch.Tensor, rast: torch.Tensor, pos: torch.Tensor, tri: torch.Tensor,
              topology_hash: Optional[Any] = None, pos_gradient_boost: float = 1.0,
              backend: str = "auto") -> torch.Tensor:
    """Analytic silhouette antialiasing of ``color`` [B, H, W, C] (the rule is in :mod:`.reference`).

    ``topology_hash``: the table from :func:`antialias_construct_topology_hash` (built here when None).
    ``pos_gradient_boost`` multiplies the gradient sent to ``pos``.
    """
    pos, tri = check_pos_tri(pos, tri, "antialias")
    if color.dim() != 4 or color.shape[:3] != rast.shape[:3]:
        raise ValueError(f"antialias: color {tuple(color.shape)} must be [B, H, W, C] matching rast "
                         f"{tuple(rast.shape)}.")
    if pos.shape[0] not in (1, color.shape[0]):
        raise ValueError(f"antialias: pos has batch {pos.shape[0]} but color has {color.shape[0]}.")
    be = resolve_backend(backend, color.device)
    if be == "nvdiffrast":
        from . import nvdiffrast_backend

        return nvdiffrast_backend.antialias(color, rast, pos, tri, topology_hash, pos_gradient_boost)
    if torch.is_tensor(topology_hash):
        opp = topology_hash
    elif be == "triton" and not _TORCH_TOPOLOGY:
        from . import triton_backend

        opp = triton_backend.edge_opposites(tri)
    else:
        opp = antialias_construct_topology_hash(tri, be)
    if opp.shape != tri.shape:
        raise ValueError("antialias: topology_hash does not belong to these triangles; build it with "
                         "antialias_construct_topology_hash(tri).")
    if be == "triton":
        from . import triton_backend

        return triton_backend.antialias(color, rast, pos, tri, opp, pos_gradient_boost)
    from . import torch_backend

    return torch_backend.antialias(color, rast, pos, tri, opp, pos_gradient_boost)


class RasterizeContext:
    """A small object with threestudio's ``NVDiffRasterizerContext`` methods, for code ported from threestudio.

    ``RasterizeContext(backend="auto")``; ``context_type`` ("gl"/"cuda") is accepted and ignored.
    """

    def __init__(self, backend: str = "auto", device: Optional[Union[str, torch.device]] = None,
                 context_type: Optional[str] = None) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown rasterization backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
        self.backend = backend
        self.device = None if device is None else torch.device(device)

    @staticmethod
    def vertex_transform(verts: torch.Tensor, mvp_mtx: torch.Tensor) -> torch.Tensor:
        """World points [V, 3] and matrices [B, 4, 4] -> clip positions [B, V, 4]."""
        homo = torch.cat([verts, torch.ones_like(verts[:, :1])], dim=-1)
        return torch.matmul(homo[None], mvp_mtx.transpose(-1, -2))

    def rasterize(self, pos, tri, resolution, grad_db: bool = True):
        return rasterize(pos, tri, resolution, grad_db=grad_db, backend=self.backend)

    def rasterize_one(self, pos, tri, resolution):
        rast, rast_db = rasterize(pos[None], tri, resolution, backend=self.backend)
        return rast[0], rast_db[0]

    def antialias(self, color, rast, pos, tri, topology_hash=None, pos_gradient_boost: float = 1.0):
        return antialias(color, rast, pos, tri, topology_hash, pos_gradient_boost, backend=self.backend)

    def interpolate(self, attr, rast, tri, rast_db=None, diff_attrs=None):
        return interpolate(attr, rast, tri, rast_db, diff_attrs, backend=self.backend)

    def interpolate_one(self, attr, rast, tri, rast_db=None, diff_attrs=None):
        return interpolate(attr[None], rast, tri, rast_db, diff_attrs, backend=self.backend)
