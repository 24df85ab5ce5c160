"""Guidance base: turns rendered images plus prompt embeddings into losses (``loss_*`` keys)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple

from threestudio.utils.base import BaseObject


class BaseGuidance(BaseObject):
    __threestudio_family__ = "guidance"

    @dataclass
    class Config(BaseObject.Config):
        pass


class SkipKnownGuards:
    """Calls a ``torch.compile``d function; once an input signature has run, later calls with that signature skip
    Dynamo's guard evaluation (``torch.compiler.set_stance(skip_guard_eval_unsafe=True)``), which costs ~0.6 ms of
    host time per call of the UNet or VAE: on a host-bound training step, that is step time.

    The signature is what the guards of these fixed-shape graphs depend on: grad mode, autocast and, per tensor
    argument, shape, strides, dtype, device and requires_grad (other arguments by value). A new signature runs with
    the guards (and compiles if needed) before it joins the known ones, so a resolution or batch-size change is never
    served by the wrong graph. Not covered: changing the guidance's modules or global torch flags in the middle of a
    run (``compile_skip_guards=false`` then)."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.known: set = set()

    @staticmethod
    def signature(args: Tuple[Any, ...]) -> Tuple[Any, ...]:
        import torch

        return (torch.is_grad_enabled(), torch.is_autocast_enabled("cuda"), torch.is_autocast_enabled("cpu")) + tuple(
            (tuple(a.shape), a.stride(), a.dtype, a.device, a.requires_grad) if isinstance(a, torch.Tensor) else a
            for a in args)

    def __call__(self, *args: Any) -> Any:
        import torch

        key = self.signature(args)
        if key in self.known:
            with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                return self.fn(*args)
        out = self.fn(*args)
        self.known.add(key)
        return out


class DiffusionGuidanceMixin:
    """Shared by the diffusion guidances (Stable Diffusion, MVDream): the [min, max] timestep window and the gradient
    clip follow their schedules (``min_step_percent``, ``max_step_percent``, ``grad_clip`` in the Config,
    ``num_train_timesteps`` set by the guidance), and the UNet call and VAE encode (``_unet_eager``,
    ``_encode_eager``) are optionally compiled (``compile``, ``compile_mode``, ``compile_vae``, ``compile_cache_dir``,
    optional ``compile_backend`` and ``compile_skip_guards``)."""

    num_train_timesteps: int
    grad_clip_val: Optional[float] = None

    def setup_schedule_and_compile(self, on_cuda: bool, label: str) -> None:
        """Initial timestep window and clip state; ``_unet_fn``/``_encode_fn``, compiled when asked (default: on
        CUDA) with ``fullgraph=True, dynamic=False`` (CUDA graphs over static shapes with "reduce-overhead")."""
        import torch

        from threestudio.models.guidance.stable_diffusion_base import configure_compile_cache
        from threestudio.utils.log import info
        from threestudio.utils.misc import C

        c = self.cfg
        self.grad_clip_val = None
        self.set_min_max_steps(C(c.min_step_percent, 0, 0), C(c.max_step_percent, 0, 0))
        self.compiled = bool(c.compile if c.compile is not None else on_cuda)
        self._unet_fn = self._unet_eager
        self._encode_fn = self._encode_eager
        if not self.compiled:
            return
        cache = configure_compile_cache(c.compile_cache_dir)
        info(f"Compiling the {label} UNet{' and VAE encoder' if c.compile_vae else ''} with torch.compile "
             f"(mode={c.compile_mode}) on first use; inductor cache: {cache}")
        backend = getattr(c, "compile_backend", "inductor")
        kw = dict(fullgraph=True, dynamic=False, backend=backend)
        if backend == "inductor":
            kw["mode"] = c.compile_mode
        self._unet_fn = torch.compile(self._unet_eager, **kw)
        if c.compile_vae:
            self._encode_fn = torch.compile(self._encode_eager, **kw)
        if getattr(c, "compile_skip_guards", False):
            self._unet_fn = SkipKnownGuards(self._unet_fn)
            if c.compile_vae:
                self._encode_fn = SkipKnownGuards(self._encode_fn)

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
