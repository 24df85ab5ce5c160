"""``score-distillation``: a diffusion guidance scores renders against text prompts (SDS, ASD, ...).

It owns the prompt processor, the guidance and their loss terms. Building (:meth:`ScoreDistillation.prepare`, when
fitting starts; never for ``--test``/``--export``) runs in this order: a cheap check that both models can be found (no
weights read; a missing, gated or misshapen model stops the run here, before any step), then the prompt processor
(embeddings computed or read from the cache, text encoder freed), then the guidance (UNet and VAE), moved to the
training device and set to the current step's schedules (a resumed run starts mid-way). Neither model is part of
the checkpoint. Terms: every ``loss_<name>`` the guidance returns, as ``<name>`` (weight 1 unless ``lambda_<name>``
says otherwise).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

import threestudio
from threestudio.systems.objectives.base import Objective, WeightFn
from threestudio.systems.schema import ScoreDistillationConfig
from threestudio.utils.config import parse_structured


def preflight(cls: type, cfg: Any) -> None:
    """A module's cheap start-up check (``preflight(cfg)``: no weights read), when its class has one: classes
    written for threestudio's API do not."""
    check = getattr(cls, "preflight", None)
    if check is not None:
        check(cfg)


def preflight_guidance(guidance_type: str, cfg: Any, key: str = "system.guidance_type") -> type:
    """Find a guidance class and run its cheap start-up check; returns the class."""
    cls = threestudio.find(guidance_type, "guidance", key)
    preflight(cls, cfg)
    return cls


def build_guidance(guidance_type: str, cfg: Any, device: torch.device, key: str = "system.guidance_type") -> Any:
    """Find, check (preflight), build and move a guidance to ``device``: the one way systems load a guidance that is
    not a score-distillation objective's (e.g. in2n's image editor)."""
    return preflight_guidance(guidance_type, cfg, key)(cfg).to(device)


@threestudio.register("score-distillation")
class ScoreDistillation(Objective):
    Config = ScoreDistillationConfig

    cfg: Config

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        self.guidance: Any = None
        self.prompt_processor: Any = None
        self.prompt_utils: Any = None

    # ------------------------------------------------------------------ building (training only)
    def guidance_class(self) -> type:
        return threestudio.find(self.cfg.guidance_type, "guidance", "system.guidance_type")

    def prompt_processor_class(self) -> type:
        return threestudio.find(self.cfg.prompt_processor_type, "prompt-processor", "system.prompt_processor_type")

    def guidance_settings(self) -> Any:
        """The guidance's parsed Config (without building it)."""
        return parse_structured(self.guidance_class().Config, self.cfg.guidance)

    def _prompt_processor_kwargs(self) -> Dict[str, Any]:
        if not self.cfg.view_dependent_from_guidance:
            return {}
        return {"view_dependent": bool(getattr(self.guidance_settings(), "view_dependent_prompting", False))}

    def build_prompt_processor(self, check: bool = True, **kwargs: Any) -> Any:
        """Check (unless done already) and build the prompt processor (also for evaluation, where prompt libraries
        need one)."""
        cls = self.prompt_processor_class()
        if check:
            preflight(cls, self.cfg.prompt_processor)
        self.prompt_processor = cls(self.cfg.prompt_processor, **kwargs)
        return self.prompt_processor

    def _prompt_processor_fits(self, kwargs: Dict[str, Any]) -> bool:
        if self.prompt_processor is None:
            return False
        # a view-dependent store serves a guidance that does not need one, not the other way round
        return not kwargs.get("view_dependent") or bool(getattr(self.prompt_processor, "view_dependent", False))

    @property
    def needs_training_models(self) -> bool:
        return self.guidance is None

    def prepare(self, device: torch.device, epoch: int, global_step: int) -> None:
        super().prepare(device, epoch, global_step)
        g_cls = self.guidance_class()
        kwargs = self._prompt_processor_kwargs()
        rebuild = not self._prompt_processor_fits(kwargs)
        if rebuild:
            preflight(self.prompt_processor_class(), self.cfg.prompt_processor)
        preflight(g_cls, self.cfg.guidance)  # both checked before either loads
        if rebuild:
            self.build_prompt_processor(check=False, **kwargs)
        if not self.cfg.prompts_per_batch:
            self.prompt_utils = self.prompt_processor().to(self.device)
        self.guidance = g_cls(self.cfg.guidance).to(self.device)
        self.guidance.do_update_step(epoch, global_step)

    def release(self) -> None:
        if self.guidance is not None:
            self.guidance = None
            from threestudio.utils.misc import cleanup

            cleanup()

    # ------------------------------------------------------------------ the loss
    def guide(self, images: torch.Tensor, batch: Dict[str, Any], prompt_utils: Optional[Any] = None,
              **guidance_kwargs: Any) -> Dict[str, Any]:
        """The guidance's whole output for ``images`` [B, H, W, 3] rendered at the batch's cameras."""
        if self.guidance is None:
            raise RuntimeError("the guidance is built when fitting starts (ScoreDistillation.prepare); a training "
                               "step ran without it")
        return self.guidance(images, self.prompt_utils if prompt_utils is None else prompt_utils, batch["elevation"],
                             batch["azimuth"], batch["camera_distances"], **guidance_kwargs)

    def loss_terms(self, guidance_out: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        terms = {k[len("loss_"):]: v for k, v in guidance_out.items() if k.startswith("loss_")}
        if not terms:
            raise KeyError(f"{self.cfg.guidance_type} returned no 'loss_*' terms (got {sorted(guidance_out)}).")
        return terms

    def default_weight(self, name: str) -> float:
        return 1.0  # every guidance term counts unless its lambda says otherwise

    def terms(self, out: Dict[str, Any], batch: Dict[str, Any], weight: WeightFn) -> Dict[str, torch.Tensor]:
        return self.loss_terms(self.guide(out["comp_rgb"], batch))
