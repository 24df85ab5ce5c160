"""The Configs of :class:`threestudio.utils.base.BaseObject` and :class:`~threestudio.utils.base.BaseModule`, in a
module that imports no torch: the Configs of every model family derive from them (``threestudio/models/*/schema.py``),
and config validation imports those without the modules they configure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class BaseObjectConfig:
    pass


@dataclass
class BaseModuleConfig:
    weights: Optional[str] = None
