"""Renderer base. A renderer uses the system's geometry, material and background without owning them: they are
kept outside ``nn.Module`` registration so their parameters appear once in the state dict (under the system)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

from threestudio.utils.base import BaseModule


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

    @dataclass
    class Config(BaseModule.Config):
        radius: float = 1.0

    cfg: Config

    def configure(self, geometry: Any = None, material: Any = None, background: Any = None) -> None:
        self.set_scene_modules(geometry, material, background)

    def forward(self, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        raise NotImplementedError


class VolumeRenderer(Renderer):
    pass


class Rasterizer(Renderer):
    pass
