"""Reproducible resume: the training steps see one continuous stream of the global RNGs (torch, numpy, python, CUDA).

Its state is captured at the end of every training batch and put back at the start of the next, so whatever runs
in between (validation, data-loader start-up, checkpointing) never disturbs it; it is saved in every checkpoint and
restored before the first batch after a resume. With data modules that draw from their own saved generators, a run
stopped at step k and resumed reaches the same parameters as one that never stopped.
"""

from __future__ import annotations

import random
from typing import Any, Dict, Optional

import numpy as np
import torch

from threestudio.utils.misc import per_rank_states, state_of_this_rank

RNG_KEY = "threestudio_rng_states"


def get_rng_states() -> Dict[str, Any]:
    states: Dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: Dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class TrainRNG:
    """The training steps' RNG stream (see the module docstring)."""

    def __init__(self) -> None:
        self.state: Optional[Dict[str, Any]] = None  # at the end of the last training batch
        self.in_batch = False

    def enter_batch(self) -> None:
        if self.state is not None:
            set_rng_states(self.state)
        self.in_batch = True

    def leave_batch(self) -> None:
        self.state = get_rng_states()
        self.in_batch = False

    def save(self, checkpoint: Dict[str, Any]) -> None:
        # callbacks' on_train_batch_end (ModelCheckpoint) runs before the system's: then the current state is the one
        rng = get_rng_states() if (self.in_batch or self.state is None) else self.state
        checkpoint[RNG_KEY] = per_rank_states(rng)  # under DDP, every rank's streams (each has its own seed)

    def load(self, checkpoint: Dict[str, Any]) -> None:
        self.state = state_of_this_rank(checkpoint.get(RNG_KEY))
