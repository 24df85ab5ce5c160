"""Exporter base: returns a list of :class:`ExporterOutput`; the system saves each with ``save_<save_type>``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List

from threestudio.models.renderers.base import _Refs
from threestudio.utils.base import BaseObject


@dataclass
class ExporterOutput:
    save_name: str
    save_type: str
    params: Dict[str, Any]


class Exporter(BaseObject):
    __threestudio_family__ = "exporter"

    @dataclass
    class Config(BaseObject.Config):
        save_video: bool = False

    cfg: Config

    def configure(self, geometry: Any = None, material: Any = None, background: Any = None) -> None:
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

    def __call__(self, *args: Any, **kwargs: Any) -> List[ExporterOutput]:
        raise NotImplementedError
