"""Guidance base: turns rendered images plus prompt embeddings into losses (``loss_*`` keys)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from threestudio.utils.base import BaseObject


class BaseGuidance(BaseObject):
    __threestudio_family__ = "guidance"

    @dataclass
    class Config(BaseObject.Config):
        pass


class DiffusionTimestepSchedule:
    """Shared by the diffusion guidances: the [min, max] timestep window and the gradient clip follow their
    schedules (``min_step_percent``, ``max_step_percent``, ``grad_clip`` in the Config, ``num_train_timesteps`` set
    by the guidance)."""

    num_train_timesteps: int
    grad_clip_val: Optional[float] = None

    def set_min_max_steps(self, min_step_percent: float = 0.02, max_step_percent: float = 0.98) -> None:
        from threestudio.ops import score_distillation as sd_ops

        self.min_step, self.max_step = sd_ops.timestep_range(min_step_percent, max_step_percent,
                                                              self.num_train_timesteps)

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        from threestudio.utils.misc import C

        c = self.cfg
        if c.grad_clip is not None:
            self.grad_clip_val = C(c.grad_clip, epoch, global_step)
        self.set_min_max_steps(C(c.min_step_percent, epoch, global_step), C(c.max_step_percent, epoch, global_step))
