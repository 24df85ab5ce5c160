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
