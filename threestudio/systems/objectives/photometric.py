"""``photometric``: reconstruction losses of a render against the batch's images.

Terms (unweighted; the system weighs them with ``lambda_<name>``):

- ``rgb`` and ``mse``: mean squared error of ``comp_rgb`` against ``rgb`` (the same value: NeRF recipes call it
  ``rgb``, gaussian-splatting recipes ``mse``);
- ``l1``: mean absolute error;
- ``ssim``: ``1 - SSIM`` (images [B, H, W, 3]);
- ``mask``: binary cross-entropy of the opacity against the batch's ``mask`` (when the batch has one).

The terms in ``always`` are computed every step (and logged); the others only when their weight is non-zero.
"""

from __future__ import annotations

from typing import Any, Callable, Dict

import torch
import torch.nn.functional as F

import threestudio
from threestudio.systems.objectives.base import Objective, WeightFn
from threestudio.systems.schema import PhotometricConfig
from threestudio.utils.metrics import ssim

TERMS = ("l1", "mse", "rgb", "ssim", "mask")


def _mse(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(pred, gt)


def _l1(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    return (pred - gt).abs().mean()


def _ssim(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    return 1.0 - ssim(pred, gt)


IMAGE_TERMS: Dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "l1": _l1, "mse": _mse, "rgb": _mse, "ssim": _ssim}


@threestudio.register("photometric")
class Photometric(Objective):
    Config = PhotometricConfig

    cfg: Config

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        unknown = [t for t in list(self.cfg.always) + list(self.cfg.defaults) if t not in TERMS]
        if unknown:
            raise ValueError(f"photometric objective: unknown terms {unknown} (known: {', '.join(TERMS)})")

    def default_weight(self, name: str) -> float:
        return float(self.cfg.defaults.get(name, 0.0))

    def terms(self, out: Dict[str, Any], batch: Dict[str, Any], weight: WeightFn) -> Dict[str, torch.Tensor]:
        if "rgb" not in batch:
            raise KeyError("the photometric objective needs the batch's 'rgb' images (a multiview data module); for "
                           "text-to-3D set system.guidance_type and system.prompt_processor_type")
        pred, gt = out["comp_rgb"], batch["rgb"]
        terms: Dict[str, torch.Tensor] = {}
        for name, fn in IMAGE_TERMS.items():
            if name in self.cfg.always or weight(name) > 0:
                terms[name] = fn(pred, gt)
        if ("mask" in self.cfg.always or weight("mask") > 0) and "mask" in batch:
            op = out["opacity"].clamp(1e-4, 1 - 1e-4)
            terms["mask"] = F.binary_cross_entropy(op, batch["mask"].float())
        return terms
