"""Guidance base: turns rendered images plus prompt embeddings into losses (``loss_*`` keys)."""

from __future__ import annotations

from dataclasses import dataclass

from threestudio.utils.base import BaseObject


class BaseGuidance(BaseObject):
    __threestudio_family__ = "guidance"

    @dataclass
    class Config(BaseObject.Config):
        pass
