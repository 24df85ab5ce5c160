"""Prompt-processor base: turns prompts into cached text embeddings for guidance."""

from __future__ import annotations

from dataclasses import dataclass

from threestudio.utils.base import BaseObject


class PromptProcessor(BaseObject):
    __threestudio_family__ = "prompt-processor"

    @dataclass
    class Config(BaseObject.Config):
        prompt: str = "a hamburger"
