"""Training scalars for the loggers, without reading the GPU back.

Lightning's ``self.log`` turns a Python number into a CUDA tensor with a blocking copy, and the loggers turn every
logged tensor into a Python number: on a GPU each of these waits until all the work queued so far has finished. In a
training step that means the backward pass is queued only once the forward has run, and the next step only once this
one has: the GPU idles while the host catches up (on an H200 the step intervals of dreamfusion-sd show about 20 ms
lost per logging step, once every ``log_every_n_steps``).

:class:`ScalarLog` collects a step's scalars instead; when the step ends, its CUDA values are stacked and copied to
pinned host memory in one non-blocking copy, with an event behind it. The values are handed to the loggers, with the
step they belong to, once that copy has landed (at a later step, or when :meth:`ScalarLog.ready` is told to wait).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch


@dataclass
class _Pending:
    step: int
    metrics: Dict[str, float]  # values already on the host
    names: List[str] = field(default_factory=list)  # values in ``host``, in this order
    host: Optional[torch.Tensor] = None
    event: Optional[Any] = None  # torch.cuda.Event recorded after the copy; None for a finished CPU copy

    def landed(self, wait: bool) -> bool:
        if self.event is None:
            return True
        if wait:
            self.event.synchronize()
            return True
        return bool(self.event.query())

    def values(self) -> Dict[str, float]:
        out = dict(self.metrics)
        if self.host is not None:
            out.update(zip(self.names, self.host.tolist()))
        return out


def _scalar(name: str, value: Any) -> Any:
    if torch.is_tensor(value):
        if value.numel() != 1:
            raise ValueError(f"log_train({name!r}): a scalar is needed, got a tensor of shape {tuple(value.shape)}; "
                             f"log e.g. its .mean()")
        return value.detach().reshape(())
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"log_train({name!r}): a number or a one-element tensor is needed, got "
                        f"{type(value).__name__}") from None


class ScalarLog:
    """The scalars of training steps, on their way to the loggers (see the module docstring)."""

    def __init__(self) -> None:
        self._open: Dict[str, Any] = {}
        self._pending: List[_Pending] = []

    def add(self, name: str, value: Any) -> None:
        """Record ``value`` (a number or a one-element tensor) under ``name`` for the current step."""
        self._open[name] = _scalar(name, value)

    def close_step(self, step: int) -> None:
        """End the current step: its values, labelled ``step``, start their copy to the host."""
        values, self._open = self._open, {}
        if not values:
            return
        on_gpu = {k: v for k, v in values.items() if torch.is_tensor(v) and v.is_cuda}
        entry = _Pending(step, {k: float(v) for k, v in values.items() if k not in on_gpu})  # CPU: no wait
        if on_gpu:
            stacked = torch.stack([v.float() for v in on_gpu.values()])
            entry.names = list(on_gpu)
            entry.host = torch.empty(stacked.shape, dtype=stacked.dtype, pin_memory=True)
            entry.host.copy_(stacked, non_blocking=True)
            entry.event = torch.cuda.Event()
            entry.event.record()
        self._pending.append(entry)

    def ready(self, wait: bool = False) -> Iterator[Tuple[int, Dict[str, float]]]:
        """(step, values) of the closed steps whose copy has landed, oldest first, each once; a step still in flight
        holds back the later ones (the loggers get steps in order). ``wait``: wait for all of them."""
        while self._pending and self._pending[0].landed(wait):
            entry = self._pending.pop(0)
            yield entry.step, entry.values()

    def __len__(self) -> int:
        """Closed steps not yet handed out."""
        return len(self._pending)
