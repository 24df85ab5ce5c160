"""The data stage of ray-rendered training: batch -> :class:`RenderRequest`, and the prefetch of the next step.

Each training step the system asks the stage for the step's request (rays, the outputs the step's losses need, and
the samples along the rays when they were chosen ahead) and hands it to ``renderer.render``. Once the step's random
draws are done and its guidance is queued, the system calls :meth:`TrainRayStage.prefetch`: where the renderer can
choose samples ahead (``Renderer.can_prepare_samples``: the NeRF volume renderer with ``prefetch_samples``), the
stage draws the next step's batch from the data module now (``BaseDataModule.prefetch_train_batch``: the loader then
hands out this very batch, and checkpoints keep the generator state from before the draw) and has the renderer
select its samples, both inside ``renderer.prepare_context()`` (a side CUDA stream, so the host waits of the
marching overlap this step's GPU work). The samples go into the next step's request; they are used only for the
step they were drawn for (and the renderer drops them if its occupancy grid changed since).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch

from threestudio.data.base import BaseDataModule
from threestudio.models.renderers.base import RenderRequest, Renderer


@dataclass
class _Prepared:
    step: int  # the training step whose batch the samples were chosen for
    samples: Any


class TrainRayStage:
    """Owns the path of training rays from the data module to the renderer (see the module docstring)."""

    def __init__(self, renderer: Renderer) -> None:
        self.renderer = renderer
        self._next: Optional[_Prepared] = None

    def request(self, batch: Dict[str, Any], step: int, normals: Optional[bool] = None) -> RenderRequest:
        """The render request of training step ``step`` for its ``batch`` (a ray batch)."""
        prepared, self._next = self._next, None
        samples = prepared.samples if prepared is not None and prepared.step == step else None
        return RenderRequest(rays_o=batch["rays_o"], rays_d=batch["rays_d"],
                             light_positions=batch.get("light_positions"), bg_color=batch.get("bg_color"),
                             normals=normals, samples=samples)

    def prefetch(self, trainer: Any, device: torch.device) -> bool:
        """Draw step ``trainer.global_step + 1``'s batch and have the renderer choose its samples now. Returns whether
        it did (not on the last step, nor when the renderer or the data module cannot)."""
        datamodule = trainer.datamodule if trainer is not None else None
        if not (self.renderer.can_prepare_samples() and isinstance(datamodule, BaseDataModule)):
            return False
        step = trainer.global_step + 1
        if trainer.max_steps and 0 < trainer.max_steps <= step:
            return False  # the last step: nothing follows
        with self.renderer.prepare_context():
            batch = datamodule.prefetch_train_batch(device, trainer.current_epoch, step)
        if "rays_o" not in batch or "rays_d" not in batch:
            return False
        self._next = _Prepared(step, self.renderer.prepare_samples(batch["rays_o"], batch["rays_d"]))
        return True
