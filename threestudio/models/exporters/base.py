"""Exporter base: returns a list of :class:`ExporterOutput`; the system saves each with ``save_<save_type>``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List

from threestudio.models.exporters.schema import ExporterConfig
from threestudio.models.renderers.base import UsesSceneModules
from threestudio.utils.base import BaseObject


@dataclass
class ExporterOutput:
    save_name: str
    save_type: str
    params: Dict[str, Any]


class Exporter(BaseObject, UsesSceneModules):
    __threestudio_family__ = "exporter"

    Config = ExporterConfig

    cfg: Config

    def configure(self, geometry: Any = None, material: Any = None, background: Any = None) -> None:
        self.set_scene_modules(geometry, material, background)

    def __call__(self, *args: Any, **kwargs: Any) -> List[ExporterOutput]:
        raise NotImplementedError
