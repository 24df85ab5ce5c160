"""Renderer base. A renderer uses the system's geometry, material and background without owning them: they are
kept outside ``nn.Module`` registration so their parameters appear once in the state dict (under the system)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, ContextManager, Dict, Optional

import torch

from threestudio.models.renderers.schema import RendererConfig
from threestudio.utils.base import BaseModule


@dataclass
class RenderRequest:
    """What one training step asks of a ray renderer: the rays, the outputs it needs, and the samples along the rays
    when they were chosen ahead (by the data stage's prefetch, see ``threestudio.systems.train_stage``)."""

    rays_o: torch.Tensor
    rays_d: torch.Tensor
    light_positions: Optional[torch.Tensor] = None
    bg_color: Optional[torch.Tensor] = None
    # outputs: whether this step's losses read the normals (None: as the renderer is configured). Normals a material
    # shades with, and evaluation renders, are not affected
    normals: Optional[bool] = None
    samples: Any = None  # from Renderer.prepare_samples for these rays; None: the renderer chooses them now


class _Refs:
    """A plain holder, so nn.Module does not register the referenced modules as children."""

    def __init__(self, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)


class UsesSceneModules:
    """Gives ``geometry``/``material``/``background`` access to modules owned elsewhere (the system)."""

    _refs: _Refs

    def set_scene_modules(self, geometry: Any = None, material: Any = None, background: Any = None) -> None:
        self._refs = _Refs(geometry=geometry, material=material, background=background)

    @property
    def geometry(self) -> Any:
        return self._refs.geometry

    @property
    def material(self) -> Any:
        return self._refs.material

    @property
    def background(self) -> Any:
        return self._refs.background

    def set_geometry(self, geometry: Any) -> None:
        self._refs.geometry = geometry


class Renderer(BaseModule, UsesSceneModules):
    __threestudio_family__ = "renderer"

    Config = RendererConfig

    cfg: Config

    def configure(self, geometry: Any = None, material: Any = None, background: Any = None) -> None:
        self.set_scene_modules(geometry, material, background)

    def forward(self, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        raise NotImplementedError

    def render(self, request: RenderRequest) -> Dict[str, Any]:
        """Render a training step's :class:`RenderRequest` (ray renderers)."""
        return self(request.rays_o, request.rays_d, light_positions=request.light_positions,
                    bg_color=request.bg_color)

    # choosing the next step's samples ahead (renderers that march rays may; the others say no)
    def can_prepare_samples(self) -> bool:
        """Whether :meth:`prepare_samples` may be called now (training, and enabled in the config)."""
        return False

    def prepare_context(self) -> ContextManager[None]:
        """Where the data stage draws the next batch and :meth:`prepare_samples` runs (a side CUDA stream)."""
        return contextlib.nullcontext()

    def prepare_samples(self, rays_o: torch.Tensor, rays_d: torch.Tensor) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not choose samples ahead")


class VolumeRenderer(Renderer):
    pass


class Rasterizer(Renderer):
    pass
