"""Objective base: what a training step optimises, apart from the representation that renders.

An objective turns a render (and the batch it was rendered for) into *unweighted* loss terms ``{name: tensor}``;
the system weighs each with ``system.loss.lambda_<name>`` (a schedule, read through ``BaseSystem.loss_weight``),
falling back to the objective's :meth:`Objective.default_weight`. Terms that cost something are computed only when their
weight is non-zero: the objective gets the system's ``weight(name)`` function for that.

Objectives are built in one place, :func:`threestudio.systems.objectives.build_objective`, from the system's config
keys (``system.guidance_type``, ``system.guidance``, ``system.prompt_processor_type``, ``system.prompt_processor``),
so that recipes written for threestudio keep working.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import torch

from threestudio.systems.schema import ObjectiveConfig
from threestudio.utils.base import Updateable
from threestudio.utils.config import config_owner, parse_structured

WeightFn = Callable[[str], float]  # name -> the weight of that term at the current step


class Objective(Updateable):
    """A registered, configurable objective (family ``objective``). Not an ``nn.Module``: nothing of it is
    checkpointed (models it loads are rebuilt when training starts)."""

    __threestudio_family__ = "objective"

    Config = ObjectiveConfig

    cfg: Config
    # the models of a score-distillation objective, under threestudio's names (None for the others)
    guidance: Any = None
    prompt_processor: Any = None
    prompt_utils: Any = None

    def __init__(self, cfg: Optional[Any] = None) -> None:
        self.cfg = parse_structured(self.Config, cfg, owner=config_owner(type(self)))
        self.device = torch.device("cpu")

    def default_weight(self, name: str) -> float:
        """The weight of term ``name`` when its ``lambda_<name>`` is not set."""
        return 0.0

    @property
    def needs_training_models(self) -> bool:
        """True while :meth:`prepare` still has to run before a training step can use this objective."""
        return False

    def prepare(self, device: torch.device, epoch: int, global_step: int) -> None:
        """Build what training needs (diffusion models, prompt embeddings) on ``device``; called when fitting
        starts, never for ``--test``/``--export``. ``epoch``/``global_step``: where schedules start (a resume)."""
        self.device = torch.device(device)

    def release(self) -> None:
        """Free what :meth:`prepare` built (the test pass that follows ``--train`` does not need it)."""

    def terms(self, out: Dict[str, Any], batch: Dict[str, Any], weight: WeightFn) -> Dict[str, torch.Tensor]:
        raise NotImplementedError
