"""Guidance base: turns rendered images plus prompt embeddings into losses (``loss_*`` keys)."""

from __future__ import annotations

from typing import Optional

from threestudio.models.diffusion.compile import (
    SkipKnownGuards,
    compile_enabled,
    compile_unet_and_vae,
    resolve_compile_options,
)
from threestudio.models.guidance.schema import BaseGuidanceConfig, DiffusionGuidanceConfig
from threestudio.utils.base import BaseObject

# SkipKnownGuards lives in threestudio.models.diffusion.compile; re-exported for the old import path
__all__ = ["BaseGuidance", "DiffusionGuidanceConfig", "DiffusionGuidanceMixin", "SkipKnownGuards"]


class BaseGuidance(BaseObject):
    __threestudio_family__ = "guidance"

    Config = BaseGuidanceConfig


class DiffusionGuidanceMixin:
    """Shared by the diffusion guidances (Stable Diffusion, MVDream): the [min, max] timestep window and the gradient
    clip follow their schedules (``min_step_percent``, ``max_step_percent``, ``grad_clip`` in the Config,
    ``num_train_timesteps`` set by the guidance), and the UNet call and VAE encode (``_unet_eager``,
    ``_encode_eager``) are optionally compiled (``compile`` and ``compile_options``: :class:`DiffusionGuidanceConfig`,
    :mod:`threestudio.models.diffusion.compile`)."""

    num_train_timesteps: int
    grad_clip_val: Optional[float] = None

    def setup_schedule_and_compile(self, on_cuda: bool, label: str) -> None:
        """Initial timestep window and clip state; ``_unet_fn``/``_encode_fn``, compiled when asked (default: on
        CUDA) with ``fullgraph=True, dynamic=False`` (CUDA graphs over static shapes with "reduce-overhead")."""
        from threestudio.utils.misc import C

        c = self.cfg
        self.grad_clip_val = None
        self.set_min_max_steps(C(c.min_step_percent, 0, 0), C(c.max_step_percent, 0, 0))
        self.compiled = compile_enabled(c, on_cuda)
        self._unet_fn = self._unet_eager
        self._encode_fn = self._encode_eager
        if self.compiled:
            self._unet_fn, self._encode_fn = compile_unet_and_vae(self._unet_eager, self._encode_eager,
                                                                  resolve_compile_options(c), label)

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
