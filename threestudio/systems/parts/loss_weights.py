"""Loss weights: ``system.loss.lambda_<name>`` read per step, summed with their terms, and audited.

Systems read their weights through :meth:`LossWeights.loss_weight`, so that a weight that is set but never read (a
typo, or a term this configuration does not compute) is reported after the first training step.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Dict, Optional, Union

import torch

from threestudio.utils.log import warn
from threestudio.utils.schedule import ScheduleError, parse_schedule

Defaults = Union[float, Callable[[str], float]]


def nonzero(value: Any) -> bool:
    """Whether a weight (a number or a schedule) is ever non-zero: the values of a schedule, not its steps."""
    try:
        return parse_schedule(value).nonzero()
    except ScheduleError:
        return True  # not a schedule: the config loader reports it


class LossWeights:
    """Mixin for systems with ``cfg.loss`` and ``C()``: ``loss_weight``, ``weighted_loss`` and the audit."""

    def init_loss_weights(self) -> None:
        self._consulted_losses: set = set()  # loss names read through loss_weight()
        self._loss_values: Optional[Dict[str, Any]] = None  # system.loss as a plain dict (read every step)
        self._unused_losses_checked = False

    def loss_weight(self, name: str, default: float = 0.0) -> float:
        """``system.loss.lambda_<name>`` at the current step (a number or a schedule), ``default`` when not set."""
        self._consulted_losses.add(name)
        if self._loss_values is None:  # a plain dict: DictConfig.get of an unset key costs an exception and a difflib
            from omegaconf import OmegaConf

            loss = self.cfg.loss
            self._loss_values = (OmegaConf.to_container(loss, resolve=True) if OmegaConf.is_config(loss)
                                 else dict(loss))
        return float(self.C(self._loss_values.get(f"lambda_{name}", default)))

    def weighted_loss(self, terms: Dict[str, torch.Tensor], device: torch.device,
                      defaults: Dict[str, Defaults]) -> torch.Tensor:
        """Σ lambda_<name> · term over ``terms`` (a weight of 0 skips its term); ``defaults`` maps a term to its
        weight when the lambda is unset (a number or a function of the name; missing: 0). On logging steps each term
        is logged as ``train/loss_<name>``."""
        loss = torch.zeros((), device=device)
        detail = self.logging_step()
        for name, value in terms.items():
            default = defaults.get(name, 0.0)
            weight = self.loss_weight(name, default(name) if callable(default) else default)
            if weight != 0:
                loss = loss + weight * value
            if detail:
                self.log_train(f"train/loss_{name}", value)
        return loss

    def audit_loss_weights(self) -> None:
        """Once, after the first training step: name every non-zero ``lambda_*`` that no loss_weight() call read."""
        if self._unused_losses_checked:
            return
        self._unused_losses_checked = True
        if not self._consulted_losses:  # this system reads its weights some other way
            return
        known = sorted(self._consulted_losses)
        for key, value in self.cfg.loss.items():
            if not str(key).startswith("lambda_") or key[len("lambda_"):] in self._consulted_losses:
                continue
            if not nonzero(value):
                continue
            close = difflib.get_close_matches(key[len("lambda_"):], known, n=1)
            hint = (f"did you mean lambda_{close[0]}?" if close else
                    f"the weights this run reads: {', '.join('lambda_' + k for k in known)}")
            warn(f"system.loss.{key} is set but {type(self).__name__} never read it in the first training step, so "
                 f"it has no effect ({hint})")
