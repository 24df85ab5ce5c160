"""Scalar schedules: the ``Schedule`` config type, its parsed form and ``C(value, epoch, global_step)``.

A schedule is written in a config as a number (constant) or a list:

- ``[start_step, start_value, end_value, end_step]``: ``start_value`` until ``start_step``, linear to
  ``end_value`` at ``end_step``, constant after. Integer steps count global steps; float steps count epochs
  (``[0.0, 1.0, 0.1, 2.0]`` ramps over the first two epochs).
- ``[start_value, end_value, end_step]``: the same with ``start_step = 0`` (``0.0``, epochs, when ``end_step`` is a
  float).
- ``[s0, v0, v1, s1, v2, s2, v3, s3, ...]``: piecewise linear through (s0, v0), (s1, v1), (s2, v2), ...

All step entries of one schedule are ints (steps) or all floats (epochs), and they never decrease.

Config fields that hold a schedule are annotated ``Schedule`` (``min_step_percent: Schedule = 0.02``,
``grad_clip: Optional[Schedule] = None``; ``Dict[str, Schedule]`` for a mapping of them, such as ``system.loss``,
where the ``lambda_*`` entries are checked): the config loader parses every one of them before anything is built and
reports a malformed one with its key, its file and line, and the forms it may take. The config keeps the value as
written (so recipes save and reload unchanged); :func:`parse_schedule` turns it into a :class:`ParsedSchedule`, and
:func:`C` (threestudio's helper, kept for extensions) evaluates either form.
"""

from __future__ import annotations

import bisect
import typing
from typing import Any, List, Optional, Sequence, Tuple, Union

Number = Union[int, float]

FORMS = ("a number, [start_step, start_value, end_value, end_step], [start_value, end_value, end_step] or "
         "piecewise [s0, v0, v1, s1, v2, s2, ...]; integer steps count global steps, float steps count epochs")


class ScheduleError(ValueError):
    """A value that is not a schedule; the message names the key (when known) and the forms a schedule may take.
    ``problem`` is what is wrong, without the key and the forms."""

    def __init__(self, message: str, problem: str = "", key: str = "") -> None:
        super().__init__(message)
        self.problem = problem or message
        self.key = key


class ParsedSchedule:
    """A validated schedule: breakpoints ``steps`` (empty for a constant) and ``values`` (one per breakpoint; one
    value for a constant); ``in_epochs`` when the steps count epochs. Call it with ``(epoch, global_step)``."""

    __slots__ = ("steps", "values", "in_epochs")

    def __init__(self, steps: Sequence[Number], values: Sequence[Number], in_epochs: bool = False) -> None:
        self.steps: Tuple[Number, ...] = tuple(steps)
        self.values: Tuple[Number, ...] = tuple(values)
        self.in_epochs = bool(in_epochs)

    @property
    def constant(self) -> bool:
        return not self.steps

    def __call__(self, epoch: Number, global_step: int) -> Number:
        if self.constant:
            return self.values[0]
        steps, values = self.steps, self.values
        t = float(epoch) if self.in_epochs else global_step
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

    def max(self) -> float:
        """The largest value the schedule takes (linear pieces peak at a breakpoint)."""
        return float(max(self.values))

    def min(self) -> float:
        return float(min(self.values))

    def nonzero(self) -> bool:
        """True when the schedule is non-zero at some step."""
        return any(v != 0 for v in self.values)

    def __eq__(self, other: Any) -> bool:
        return (isinstance(other, ParsedSchedule) and self.steps == other.steps and self.values == other.values
                and self.in_epochs == other.in_epochs)

    def __hash__(self) -> int:
        return hash((self.steps, self.values, self.in_epochs))

    def __repr__(self) -> str:
        if self.constant:
            return f"ParsedSchedule({self.values[0]!r})"
        unit = "epochs" if self.in_epochs else "steps"
        return f"ParsedSchedule({list(zip(self.steps, self.values))!r} in {unit})"


# The annotation of a schedule-valued Config field. The marker is invisible to OmegaConf (which sees ``Any`` and keeps
# the value as written); the config validator finds it with ``typing.get_type_hints(..., include_extras=True)``.
Schedule = typing.Annotated[Any, ParsedSchedule]


def is_schedule_type(ftype: Any) -> bool:
    """``Schedule`` or ``Optional[Schedule]`` (as resolved by ``get_type_hints(include_extras=True)``)."""
    if typing.get_origin(ftype) is typing.Annotated:
        return ParsedSchedule in getattr(ftype, "__metadata__", ())
    if typing.get_origin(ftype) is Union:
        args = [a for a in typing.get_args(ftype) if a is not type(None)]
        return len(args) == 1 and is_schedule_type(args[0])
    return False


def is_schedule_mapping_type(ftype: Any) -> bool:
    """``Dict[str, Schedule]`` (or ``Optional`` of it)."""
    if typing.get_origin(ftype) is Union:
        args = [a for a in typing.get_args(ftype) if a is not type(None)]
        return len(args) == 1 and is_schedule_mapping_type(args[0])
    args = typing.get_args(ftype)
    return typing.get_origin(ftype) is dict and len(args) == 2 and is_schedule_type(args[1])


def _as_list(value: Any) -> Optional[List[Any]]:
    try:
        from omegaconf import ListConfig, OmegaConf

        if isinstance(value, ListConfig):
            return list(OmegaConf.to_container(value, resolve=True))  # type: ignore[arg-type]
    except ImportError:  # pragma: no cover
        pass
    if isinstance(value, (list, tuple)):
        return list(value)
    return None


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def parse_schedule(value: Any, key: str = "") -> ParsedSchedule:
    """Parse and validate a schedule as written in a config (a number, a list, a ListConfig, or already parsed).
    Raises :class:`ScheduleError` naming ``key`` and saying how to write it."""
    if isinstance(value, ParsedSchedule):
        return value
    where = f"{key}: " if key else ""

    def fail(problem: str) -> ScheduleError:
        return ScheduleError(f"{where}{problem}. A schedule is {FORMS}.", problem, key)

    if _is_number(value):
        return ParsedSchedule((), (value,))
    v = _as_list(value)
    if v is None:
        raise fail(f"expected a schedule, got {value!r} ({type(value).__name__})")
    if len(v) == 3:  # [start_value, end_value, end_step]
        v = [0.0 if isinstance(v[2], float) else 0] + v
    if len(v) < 4 or (len(v) - 4) % 2 != 0:
        raise fail(f"a schedule list must be 3, 4, 6, 8, ... entries long; got {len(v)}: {v!r}")
    steps = [v[0], v[3]] + [v[i + 1] for i in range(4, len(v), 2)]
    values = [v[1], v[2]] + [v[i] for i in range(4, len(v), 2)]
    for x in values:
        if not _is_number(x):
            raise fail(f"values must be numbers; got {x!r} in {v!r}")
    for x in steps:
        if not _is_number(x):
            raise fail(f"steps must be numbers; got {x!r} in {v!r}")
    ints = all(isinstance(s, int) for s in steps)
    floats = all(isinstance(s, float) for s in steps)
    if not (ints or floats):
        raise fail(f"steps must be all ints (global steps) or all floats (epochs); got {steps!r} in {v!r} "
                   f"(write 5000 for a step, 5.0 for an epoch)")
    if any(b < a for a, b in zip(steps, steps[1:])):
        raise fail(f"steps must not decrease; got {steps!r} in {v!r}")
    return ParsedSchedule(steps, values, floats)


def schedule_points(value: Sequence[Any]) -> Tuple[List[Number], List[Number], bool]:
    """Parse a schedule list into (steps, values, in_epochs)."""
    s = parse_schedule(value)
    if s.constant:
        raise ScheduleError(f"expected a schedule list, got the number {value!r}. A schedule is {FORMS}.")
    return list(s.steps), list(s.values), s.in_epochs


def C(value: Any, epoch: Number, global_step: int) -> Number:
    """Evaluate a scalar schedule (as written in a config, or a :class:`ParsedSchedule`) at the current epoch and
    global step. A plain number is returned unchanged."""
    if _is_number(value):
        return value
    return parse_schedule(value)(epoch, global_step)
