"""Named activations used by configs."""

from __future__ import annotations

from typing import Callable

import torch

COLOR_ACTIVATIONS = {
    "sigmoid": torch.sigmoid,
    "scale_-11_01": lambda x: x * 0.5 + 0.5,
    "none": lambda x: x,
}


def get_color_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if name not in COLOR_ACTIVATIONS:
        raise ValueError(f"unknown colour activation {name!r}; choose one of {', '.join(COLOR_ACTIVATIONS)}")
    return COLOR_ACTIVATIONS[name]
