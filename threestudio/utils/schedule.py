"""Scalar schedules: ``C(value, epoch, global_step)``.

A schedule is either a number (constant) or a list:

- ``[start_step, start_value, end_value, end_step]``: ``start_value`` until ``start_step``, linear to
  ``end_value`` at ``end_step``, constant after. Integer steps count global steps; float steps count epochs
  (``[0.0, 1.0, 0.1, 2.0]`` ramps over the first two epochs).
- ``[start_value, end_value, end_step]``: the same with ``start_step = 0``.
- ``[s0, v0, v1, s1, v2, s2, v3, s3, ...]``: piecewise linear through (s0, v0), (s1, v1), (s2, v2), ...

All step entries of one schedule are ints (steps) or all floats (epochs).
"""

from __future__ import annotations

import bisect
from typing import Any, List, Sequence, Tuple, Union

Number = Union[int, float]


class ScheduleError(ValueError):
    pass


def _as_list(value: Any) -> List[Any]:
    try:
        from omegaconf import ListConfig, OmegaConf

        if isinstance(value, ListConfig):
            return list(OmegaConf.to_container(value, resolve=True))  # type: ignore[arg-type]
    except ImportError:  # pragma: no cover
        pass
    return list(value)


def schedule_points(value: Sequence[Any]) -> Tuple[List[Number], List[Number], bool]:
    """Parse a schedule list into (steps, values, in_epochs)."""
    v = _as_list(value)
    if len(v) == 3:
        v = [0, v[0], v[1], v[2]]
    if len(v) < 4 or (len(v) - 4) % 2 != 0:
        raise ScheduleError(
            f"A schedule list must be [start_step, start_value, end_value, end_step] (optionally followed by more "
            f"value, step pairs) or [start_value, end_value, end_step]; got {value!r} ({len(v)} entries)."
        )
    steps = [v[0], v[3]] + [v[i + 1] for i in range(4, len(v), 2)]
    values = [v[1], v[2]] + [v[i] for i in range(4, len(v), 2)]
    for x in values:
        if not isinstance(x, (int, float)) or isinstance(x, bool):
            raise ScheduleError(f"Schedule values must be numbers; got {x!r} in {value!r}.")
    ints = [isinstance(s, int) and not isinstance(s, bool) for s in steps]
    floats = [isinstance(s, float) for s in steps]
    if not (all(ints) or all(floats)):
        raise ScheduleError(
            f"Schedule steps must be all ints (global steps) or all floats (epochs); got {steps!r} in {value!r}. "
            f"Write 5000 for a step, 5.0 for an epoch."
        )
    if any(b < a for a, b in zip(steps, steps[1:])):
        raise ScheduleError(f"Schedule steps must not decrease; got {steps!r} in {value!r}.")
    return steps, values, all(floats)


def C(value: Any, epoch: Number, global_step: int) -> float:
    """Evaluate a scalar schedule at the current epoch and global step."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    steps, values, in_epochs = schedule_points(value)
    t = float(epoch) if in_epochs else global_step
    if t <= steps[0]:
        return values[0]
    if t >= steps[-1]:
        return values[-1]
    i = bisect.bisect_right(steps, t) - 1
    s0, s1 = steps[i], steps[i + 1]
    v0, v1 = values[i], values[i + 1]
    if s1 == s0:
        return v1
    return v0 + (v1 - v0) * (t - s0) / (s1 - s0)
