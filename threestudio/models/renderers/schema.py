"""The Config dataclasses of the renderers, in a module that imports no torch
(see :mod:`threestudio.models.schema`). ``Rasterizer`` and ``VolumeRenderer`` use :class:`RendererConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from threestudio.models.schema import BaseModuleConfig
from threestudio.utils.config import bounded
from threestudio.utils.schedule import Schedule


@dataclass
class ProposalNetworkConfig:
    """One proposal level of ``proposal-volume-renderer`` (an entry of its ``proposal_networks``)."""

    n_levels: int = 5
    max_resolution: int = 128
    log2_hashmap_size: int = 17
    n_neurons: int = 16
    base_resolution: int = 16


# ------------------------------------------------------------------------------------------ base.py
@dataclass
class RendererConfig(BaseModuleConfig):
    radius: float = 1.0


# --------------------------------------------------------------------------------------- gaussian_splatting_renderer.py
@dataclass
class GaussianSplattingRendererConfig(RendererConfig):
    backend: str = "auto"  # auto (gsplat on CUDA, else torch) | gsplat | torch
    near_plane: float = 0.01
    far_plane: float = 1e10
    eps2d: float = 0.3  # low-pass filter added to the 2D covariances (pixels^2)
    antialiased: bool = False  # Mip-Splatting's opacity compensation for the filter
    packed: bool = False  # gsplat: sparse intermediates (less memory for large scenes, a little slower)
    absgrad: bool = False  # gsplat: absolute screen-space gradients (AbsGS; densify.absgrad must match)
    tile_size: int = 16


# ------------------------------------------------------------------------------------------ mesh_rasterizer.py
@dataclass
class MeshRasterizerConfig(RendererConfig):
    backend: str = "auto"  # auto | triton | torch | nvdiffrast
    context_type: Optional[str] = None  # threestudio's nvdiff-rasterizer switch (gl/cuda): accepted, unused
    normal_type: str = "vertex"  # vertex: smooth (interpolated vertex normals) | face: flat
    antialias_normal: bool = True
    ray_chunk: int = 1 << 22  # (ray, triangle) pairs tested at once in ray mode


# ------------------------------------------------------------------------------------------ proposal_volume_renderer.py
@dataclass
class ProposalVolumeRendererConfig(RendererConfig):
    radius: float = 1.0  # the scene box of the proposal fields' contraction (match the geometry's)
    contraction: str = "inf"  # inf | 2 | none (match the geometry's)
    near_plane: float = bounded(0.05, gt=0)
    far_plane: float = 1000.0
    spacing: str = "uniform_lindisp"  # uniform_lindisp | linear | lindisp
    num_proposal_samples: List[int] = field(default_factory=lambda: [256, 96])
    num_samples: int = bounded(48, ge=1)
    # one small hash-grid density field per proposal level (keys: ProposalNetworkConfig's)
    proposal_networks: List[Dict[str, Any]] = field(default_factory=lambda: [
        {"max_resolution": 128}, {"max_resolution": 256}])
    proposal_update_every: Schedule = field(default_factory=lambda: [0, 1, 5, 5000])  # in steps
    anneal_steps: int = 1000  # proposal weights ** a, a: 0 -> 1 over these steps (0: off)
    histogram_padding: float = bounded(0.01, ge=0)
    randomized: bool = True  # jittered samples while training
    background: str = "last_sample"  # last_sample | batch | module
    eval_chunk_size: int = bounded(16384, ge=1)  # rays per chunk when rendering whole images


# ------------------------------------------------------------------------------------------ nerf_volume_renderer.py
@dataclass
class NeRFVolumeRendererConfig(RendererConfig):
    num_samples_per_ray: int = bounded(512, ge=1)
    eval_chunk_size: int = bounded(65536, ge=1)
    randomized: bool = True
    near_plane: float = bounded(0.0, ge=0)
    far_plane: float = 1e10
    return_comp_normal: bool = False
    grid_prune: bool = True
    occ_grid_resolution: int = bounded(32, ge=1)
    occ_update_interval: int = bounded(16, ge=1)
    occ_threshold: float = 0.01
    occ_ema_decay: float = 0.95
    occ_warmup_steps: int = 256
    prune_alpha_threshold: bool = True
    alpha_threshold: float = 0.01
    early_stop_eps: float = 1e-4
    max_samples_per_ray: Optional[int] = None
    backend: str = "auto"  # auto | nerfacc | torch
    # select the next training step's samples during this step, on a side CUDA stream (see prepare_samples()): the
    # step then never waits for the GPU (dreamfusion-sd on an H200: 35.0 -> 28.6 ms a step). Its opacity pruning
    # uses the density before the last update, and the first step after a resume prunes with the current one:
    # set false for bit-exact resumes
    prefetch_samples: bool = True
