import pytest

from threestudio.utils.schedule import C, ScheduleError


def test_constant():
    assert C(3.5, 0, 100) == 3.5


def test_step_schedule_boundaries():
    s = [100, 1.0, 3.0, 300]
    assert C(s, 0, 0) == 1.0
    assert C(s, 0, 100) == 1.0
    assert C(s, 0, 200) == pytest.approx(2.0)
    assert C(s, 0, 299) == pytest.approx(2.99)
    assert C(s, 0, 300) == 3.0
    assert C(s, 0, 10_000) == 3.0


def test_three_element_form_starts_at_zero():
    assert C([0.0, 10.0, 10], 0, 5) == pytest.approx(5.0)


def test_epoch_schedule_uses_epochs_not_steps():
    s = [1.0, 0.0, 1.0, 3.0]
    assert C(s, 0, 999) == 0.0
    assert C(s, 1, 0) == 0.0
    assert C(s, 2, 0) == pytest.approx(0.5)
    assert C(s, 3, 0) == 1.0


def test_piecewise():
    s = [0, 0.0, 1.0, 10, 5.0, 20, 5.0, 30]
    assert C(s, 0, 5) == pytest.approx(0.5)
    assert C(s, 0, 10) == pytest.approx(1.0)
    assert C(s, 0, 15) == pytest.approx(3.0)
    assert C(s, 0, 25) == pytest.approx(5.0)


@pytest.mark.parametrize("bad,needle", [
    ([1, 2], "must be"),
    ([0, 1.0, 2.0, 10.0], "all ints"),
    ([10, 1.0, 2.0, 5], "must not decrease"),
    ([0, "a", 2.0, 10], "numbers"),
])
def test_bad_schedules(bad, needle):
    with pytest.raises(ScheduleError, match=needle):
        C(bad, 0, 0)


# ------------------------------------------------------------------------------------------------ the parsed form
from threestudio.utils.schedule import ParsedSchedule, Schedule, is_schedule_type, parse_schedule  # noqa: E402


@pytest.mark.parametrize("written,steps,values,epochs", [
    (0.5, (), (0.5,), False),
    ([100, 1.0, 3.0, 300], (100, 300), (1.0, 3.0), False),
    ([1.0, 0.0, 3], (0, 3), (1.0, 0.0), False),  # [start_value, end_value, end_step] in steps
    ([1.0, 0.0, 2.0], (0.0, 2.0), (1.0, 0.0), True),  # [start_value, end_value, end_step] in epochs
    ([0.0, 1.0, 0.1, 2.0], (0.0, 2.0), (1.0, 0.1), True),
    ([0, 0.0, 1.0, 10, 5.0, 20, 2.0, 30], (0, 10, 20, 30), (0.0, 1.0, 5.0, 2.0), False),
])
def test_every_form_parses_to_breakpoints(written, steps, values, epochs):
    s = parse_schedule(written)
    assert (s.steps, s.values, s.in_epochs) == (steps, values, epochs)
    assert parse_schedule(s) is s
    assert C(s, 10**6, 10**9) == C(written, 10**6, 10**9) == values[-1]


def test_three_element_form_with_a_float_end_step_counts_epochs():
    s = [1.0, 0.0, 2.0]
    assert C(s, 1, 0) == pytest.approx(0.5)
    assert C(s, 0, 10**6) == 1.0  # steps do not move it


@pytest.mark.parametrize("written,mx,mn,nonzero", [
    (0, 0.0, 0.0, False),
    (-2.0, -2.0, -2.0, True),
    ([0, 0.0, 0.0, 5000], 0.0, 0.0, False),  # the steps (5000) are not values
    ([5000, 0.0, 10.0, 6000], 10.0, 0.0, True),
    ([0.0, 0.0, 100], 0.0, 0.0, False),
    ([0.5, 2.0, 100], 2.0, 0.5, True),
    ([0, -1.0, -3.0, 10], -1.0, -3.0, True),
    ([0, 0.0, 0.0, 10, 4.0, 20, 0.0, 30], 4.0, 0.0, True),
    ([0.0, 0.0, 0.0, 5.0], 0.0, 0.0, False),
])
def test_max_min_and_nonzero_read_values_not_steps(written, mx, mn, nonzero):
    s = parse_schedule(written)
    assert s.max() == mx and s.min() == mn and s.nonzero() is nonzero


@pytest.mark.parametrize("bad,needle", [
    ("0.5", "expected a schedule"),
    (True, "expected a schedule"),
    (None, "expected a schedule"),
    ([1, 2, 3, 4, 5], "3, 4, 6, 8"),
    ([0, 1.0, 2.0, "end"], "steps must be numbers"),
    ([0, 1.0, [2.0], 10], "values must be numbers"),
    ([0, 1.0, 2.0, 10, 3.0, 5], "must not decrease"),
])
def test_errors_name_the_key_and_the_forms(bad, needle):
    with pytest.raises(ScheduleError, match=needle) as e:
        parse_schedule(bad, key="system.loss.lambda_x")
    msg = str(e.value)
    assert msg.startswith("system.loss.lambda_x: ")
    assert "[start_step, start_value, end_value, end_step]" in msg and "float steps count epochs" in msg
    assert e.value.key == "system.loss.lambda_x" and needle in e.value.problem


def test_omegaconf_lists_and_interpolations_parse():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"n": 400, "s": [1, 0.98, 0.5, "${n}"]})
    s = parse_schedule(cfg.s)
    assert s.steps == (1, 400) and C(cfg.s, 0, 200) == pytest.approx(0.98 + (0.5 - 0.98) * 199 / 399)
    assert isinstance(s, ParsedSchedule)


def test_schedule_annotation_is_seen_through_optional_and_not_on_plain_any():
    import typing

    assert is_schedule_type(Schedule) and is_schedule_type(typing.Optional[Schedule])
    assert not is_schedule_type(typing.Any) and not is_schedule_type(float)
    assert not is_schedule_type(typing.Optional[typing.Any])


def test_misc_C_for_extensions_evaluates_both_forms():
    from threestudio.utils.misc import C as misc_C

    assert misc_C([0, 0.0, 1.0, 10], 0, 5) == pytest.approx(0.5)
    assert misc_C(parse_schedule([0, 0.0, 1.0, 10]), 0, 5) == pytest.approx(0.5)
    assert misc_C(3, 0, 5) == 3 and isinstance(misc_C(3, 0, 5), int)  # a number comes back as written
