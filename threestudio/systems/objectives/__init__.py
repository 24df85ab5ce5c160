"""Objectives that systems compose with a representation: ``photometric`` (reconstruction losses against images)
and ``score-distillation`` (a diffusion guidance with its prompt processor).

:func:`build_objective` is the one place where a system's objective is built; :class:`ComposesObjective` is the
system side (building, preparing for training, releasing, and the threestudio attributes ``guidance``,
``prompt_processor`` and ``prompt_utils``).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

import threestudio
from threestudio.systems.objectives.base import Objective, WeightFn
from threestudio.systems.objectives.photometric import Photometric
from threestudio.systems.objectives.score_distillation import (
    ScoreDistillation,
    build_guidance,
    preflight,
    preflight_guidance,
)

__all__ = ["Objective", "WeightFn", "Photometric", "ScoreDistillation", "build_objective", "build_guidance",
           "preflight", "preflight_guidance", "ComposesObjective"]

SYSTEM_KEYS = ("guidance_type", "guidance", "prompt_processor_type", "prompt_processor")


def build_objective(kind: str, system_cfg: Any, **options: Any) -> Objective:
    """Build the objective ``kind`` (a registered objective name) for a system whose config is ``system_cfg``.

    A score-distillation objective takes the system's ``guidance_type``, ``guidance``, ``prompt_processor_type`` and
    ``prompt_processor`` (the keys threestudio recipes use); ``options`` are further fields of the objective's
    Config, chosen by the system class (not by the recipe)."""
    cls = threestudio.find(kind, "objective", "objective")
    fields = getattr(cls.Config, "__dataclass_fields__", {})
    cfg: Dict[str, Any] = {k: getattr(system_cfg, k) for k in SYSTEM_KEYS if k in fields}
    cfg.update(options)
    return cls(cfg)


class ComposesObjective:
    """Mixin for ``BaseLift3DSystem``s that compose an objective (``self.objective``).

    Subclasses say which (:meth:`objective_kind`, :meth:`objective_options`) and call :meth:`configure_objective` in
    ``configure()``. The objective's models are built when fitting starts (:meth:`prepare_objective`) and freed
    when it ends (:meth:`release_objective`). ``guidance``, ``prompt_processor`` and ``prompt_utils`` are the
    objective's (None for an objective without them), as threestudio systems expose them."""

    objective: Objective

    def objective_kind(self) -> str:
        return "photometric"

    def objective_options(self) -> Dict[str, Any]:
        return {}

    def configure_objective(self) -> None:
        self.objective = build_objective(self.objective_kind(), self.cfg, **self.objective_options())

    def prepare_objective(self) -> None:
        if self.objective.needs_training_models:
            self.objective.prepare(self.device, self.true_current_epoch, self.true_global_step)

    def release_objective(self) -> None:
        self.objective.release()

    def objective_terms(self, out: Dict[str, Any], batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        return self.objective.terms(out, batch, self.loss_weight)

    # threestudio's attribute names for the objective's models
    @property
    def guidance(self) -> Any:
        return self.objective.guidance

    @guidance.setter
    def guidance(self, value: Any) -> None:
        self.objective.guidance = value

    @property
    def prompt_processor(self) -> Any:
        return self.objective.prompt_processor

    @prompt_processor.setter
    def prompt_processor(self, value: Any) -> None:
        self.objective.prompt_processor = value

    @property
    def prompt_utils(self) -> Optional[Any]:
        return self.objective.prompt_utils

    @prompt_utils.setter
    def prompt_utils(self, value: Any) -> None:
        self.objective.prompt_utils = value
