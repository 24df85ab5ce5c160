"""Data module base: a typed Config and reproducible random batches that survive resume.

Random training batches are drawn when a step consumes them, not when the loader prefetches them: the training
loader yields placeholders (:class:`DrawRequests`), and :meth:`BaseDataModule.on_after_batch_transfer` replaces each
with ``draw_train_batch(device)``, which uses the module's own ``torch.Generator``. That generator's state is part
of the data module's ``state_dict``, which Lightning stores in every checkpoint, so a resumed run draws exactly the
batches an uninterrupted run would have drawn. Drawing after the transfer also builds the batch on the GPU directly.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, Optional, Tuple

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, IterableDataset

from threestudio.data.schema import BaseDataModuleConfig
from threestudio.utils.base import Updateable
from threestudio.utils.config import config_owner, parse_structured
from threestudio.utils.misc import per_rank_states, state_of_this_rank


def rank_and_world(trainer: Any, rank: Optional[int] = None, world_size: Optional[int] = None) -> Tuple[int, int]:
    """(rank, world size) for sharding data: ``rank`` and ``world_size`` when both are given (a simulated rank), else
    the trainer's, else (0, 1)."""
    if rank is not None and world_size is not None:
        return int(rank), int(world_size)
    if trainer is not None:
        return int(trainer.global_rank), int(trainer.world_size)
    return 0, 1


class SeededStream:
    """A torch.Generator whose state can be saved and restored."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator()
        self.generator.manual_seed(int(seed))

    def state_dict(self) -> Dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


DRAW_KEY = "__draw_train_batch__"


class DrawRequests(IterableDataset):
    """An endless stream of placeholders; the data module draws the real batch at consumption time."""

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        index = 0
        while True:
            yield {DRAW_KEY: index}
            index += 1


class BaseDataModule(pl.LightningDataModule, Updateable):
    """Subclasses define ``Config`` and the ``*_dataloader`` methods; ``self.stream.generator`` seeds training."""

    __threestudio_family__ = "data"

    Config = BaseDataModuleConfig  # in threestudio.data.schema, which config validation reads without Lightning
    cfg: Config

    def __init__(self, cfg: Optional[Any] = None) -> None:
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg, owner=config_owner(type(self)))
        seed = torch.initial_seed() + int(getattr(self.cfg, "seed_offset", 0))
        self.stream = SeededStream(seed % (2**63))
        self._prefetched: Optional[Dict[str, Any]] = None

    def state_dict(self) -> Dict[str, Any]:
        """The generator state of this rank's stream (under DDP, of every rank: Lightning builds a checkpoint's
        contents on all ranks, and each rank draws from its own stream)."""
        if self._prefetched is not None:  # a batch drawn ahead belongs to the next step, not to this checkpoint
            return {"stream": per_rank_states(self._prefetched["stream_state"])}
        return {"stream": per_rank_states(self.stream.state_dict())}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self._prefetched = None
        if "stream" in state_dict:
            self.stream.load_state_dict(state_of_this_rank(state_dict["stream"]))

    @property
    def scene_info(self) -> Optional[Dict[str, Any]]:
        """What the data says about the scene (bounds, camera layout, frame counts...), for systems that hand it to
        their modules (``BaseModule.set_scene``); None: nothing (random cameras)."""
        return None

    # ---- random training batches drawn at consumption time
    def draw_train_batch(self, device: torch.device) -> Dict[str, Any]:
        """Override: one random training batch, drawn with ``self.stream.generator``, placed on ``device``."""
        raise NotImplementedError(f"{type(self).__name__} uses DrawRequests but does not define draw_train_batch")

    def train_request_loader(self) -> DataLoader:
        return DataLoader(DrawRequests(), batch_size=None, num_workers=0)

    def prefetch_train_batch(self, device: torch.device, epoch: int, global_step: int) -> Dict[str, Any]:
        """Draw now the batch that training step ``global_step`` will be given, so that a system can prepare it
        during the step before (the loader then hands out this very batch). The generator state from before this
        draw is what ``state_dict`` saves until then, so checkpoints and resumed runs are unaffected. On CUDA, call it
        inside the stream the work on the batch will run on; the step that gets the batch waits for that stream."""
        pf = self._prefetched
        if pf is not None and pf["step"] == global_step:
            return pf["batch"]
        state = pf["stream_state"] if pf is not None else self.stream.state_dict()
        if pf is not None:
            self.stream.load_state_dict(state)
        self.do_update_step(epoch, global_step)
        batch = self.draw_train_batch(device)
        stream = torch.cuda.current_stream(device) if torch.device(device).type == "cuda" else None
        self._prefetched = {"step": global_step, "batch": batch, "stream_state": state, "stream": stream}
        return batch

    def _take_prefetched(self, global_step: int, device: torch.device) -> Optional[Dict[str, Any]]:
        pf, self._prefetched = self._prefetched, None
        if pf is None:
            return None
        if pf["step"] != global_step:  # drawn for another step (e.g. gradient accumulation): draw afresh
            self.stream.load_state_dict(pf["stream_state"])
            return None
        if pf["stream"] is not None:
            cur = torch.cuda.current_stream(device)
            cur.wait_stream(pf["stream"])
            for v in pf["batch"].values():
                if torch.is_tensor(v) and v.is_cuda:
                    v.record_stream(cur)
        return pf["batch"]

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, dict) and DRAW_KEY in batch:
            device = torch.device("cpu")
            step = 0
            if self.trainer is not None:
                device = self.trainer.lightning_module.device
                step = self.trainer.global_step
                # follow schedules for the step that will consume this batch (batch-start hooks run after this)
                self.do_update_step(self.trainer.current_epoch, step)
            ready = self._take_prefetched(step, device)
            return ready if ready is not None else self.draw_train_batch(device)
        return batch
