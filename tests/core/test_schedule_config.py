"""Schedules in configs: every resolver against the schedule forms the README lists, schedule-valued keys parsed
and validated when the config loads (key, file:line and how to write it), and the keys typed ``Schedule``."""

import textwrap
import typing

import pytest
from omegaconf import OmegaConf

from threestudio.utils.config import ConfigError, load_config, parse_structured
from threestudio.utils.schedule import is_schedule_mapping_type, is_schedule_type
from tests.core.conftest import TOY_YAML

# README "Schedules": a number, [start_step, start_value, end_value, end_step], [start_value, end_value, end_step],
# piecewise [s0, v0, v1, s1, v2, s2, ...]; integer steps count global steps, float steps count epochs.
# (form, largest value)
FORMS = [
    (0, 0.0),
    (0.0, 0.0),
    (2.5, 2.5),
    (-1.0, -1.0),
    ([0, 0.0, 0.0, 5000], 0.0),  # always zero: its end step is no value
    ([1, 100.0, 1.0, 5000], 100.0),
    ([40000, 0.0, 10.0, 50000], 10.0),
    ([0, -2.0, -1.0, 10], -1.0),
    ([0.0, 0.0, 5000], 0.0),
    ([0.0, 3.0, 5000], 3.0),
    ([1.0, 0.0, 2.0], 1.0),  # epochs
    ([0.0, 0.0, 0.0, 4.0], 0.0),  # epochs
    ([0.0, 0.0, 1.0, 4.0], 1.0),  # epochs
    ([0, 0.0, 0.0, 10, 0.0, 20, 0.0, 30], 0.0),
    ([0, 0.0, 0.0, 10, 7.0, 20, 0.0, 30], 7.0),
]


def _resolve(expr: str, **values):
    cfg = OmegaConf.create(dict(values, out=expr))
    return cfg.out


@pytest.mark.parametrize("form,largest", FORMS, ids=[str(f) for f, _ in FORMS])
def test_cmax_resolvers_read_the_largest_value_of_every_form(form, largest):
    from threestudio.utils.config import _cmax

    assert _cmax(form) == largest
    assert _resolve("${cmaxgt0:${w}}", w=form) is (largest > 0)
    for other, other_max in ((0.0, 0.0), ([0, 0.0, 0.0, 5000], 0.0), ([0, 0.0, 2.0, 10], 2.0)):
        want = largest > 0 or other_max > 0
        assert _resolve("${cmaxgt0orcmaxgt0:${a},${b}}", a=form, b=other) is want
        assert _resolve("${cmaxgt0orcmaxgt0:${a},${b}}", a=other, b=form) is want


def test_the_reported_bug_a_weight_that_is_always_zero_turns_nothing_on():
    assert _resolve("${cmaxgt0:${w}}", w=[0, 0.0, 0.0, 5000]) is False
    assert _resolve("${cmaxgt0orcmaxgt0:${a},${b}}", a=[0, 0.0, 0.0, 5000], b=[0.0, 0.0, 100]) is False


def test_a_malformed_schedule_in_a_resolver_is_an_error_not_a_guess():
    cfg = OmegaConf.create({"w": [0, 1.0, 2.0, 10, 3.0], "out": "${cmaxgt0:${w}}"})
    with pytest.raises(Exception, match="3, 4, 6, 8"):
        cfg.out


@pytest.mark.parametrize("expr,want", [
    ("${add:2,3}", 5), ("${sub:2,3}", -1), ("${mul:2,3}", 6), ("${div:3,2}", 1.5), ("${idiv:7,2}", 3),
    ("${basename:/a/b/c.yaml}", "c.yaml"), ('${rmspace:"a b c",-}', "a-b-c"), ("${tuple2:0.5}", [0.5, 0.5]),
    ("${gt0:1}", True), ("${gt0:0}", False), ("${not:true}", False),
    ("${calc_exp_lr_decay_rate:0.01,2}", 0.1),
])
def test_every_other_readme_resolver(expr, want):
    got = _resolve(expr)
    got = list(got) if OmegaConf.is_list(got) else got
    assert got == pytest.approx(want) if isinstance(want, float) else got == want


def _recipe(tmp_path, loss_line):
    p = tmp_path / "recipe.yaml"
    p.write_text(textwrap.dedent(f"""
        extends: {TOY_YAML}
        system:
          loss:
            {loss_line}
    """).lstrip())
    return str(p)


def test_a_malformed_loss_schedule_stops_the_load_with_key_file_line_and_fix(tmp_path):
    path = _recipe(tmp_path, "lambda_mse: [10, 1.0, 2.0, 5]")
    with pytest.raises(ConfigError) as e:
        load_config(path, timestamp="T")
    (issue,) = [i for i in e.value.issues if i.key == "system.loss.lambda_mse"]
    assert "not a schedule" in issue.message and "must not decrease" in issue.message
    assert issue.source.endswith("recipe.yaml:4")
    assert "[start_step, start_value, end_value, end_step]" in issue.suggestion


def test_a_malformed_schedule_from_the_command_line_is_reported_too(tmp_path):
    path = _recipe(tmp_path, "lambda_mse: 1.0")
    with pytest.raises(ConfigError, match=r"system.loss.lambda_mse: not a schedule.*all ints"):
        load_config(path, cli_args=["system.loss.lambda_mse=[0,1.0,2.0,10.0]"], timestamp="T")


def test_good_schedules_load_and_stay_as_written(tmp_path):
    path = _recipe(tmp_path, 'lambda_mse: [0, 1.0, 2.0, "${trainer.max_steps}"]')
    cfg = load_config(path, timestamp="T")
    assert list(cfg.system.loss.lambda_mse) == [0, 1.0, 2.0, 6]  # saved and reloaded as the recipe wrote it


def test_parse_structured_checks_schedule_fields():
    from threestudio.models.renderers.proposal_volume_renderer import ProposalVolumeRenderer

    ok = parse_structured(ProposalVolumeRenderer.Config, {"proposal_update_every": [0, 1, 5, 100]})
    assert list(ok.proposal_update_every) == [0, 1, 5, 100]
    with pytest.raises(ConfigError, match=r"proposal_update_every: not a schedule.*expected a schedule"):
        parse_structured(ProposalVolumeRenderer.Config, {"proposal_update_every": "often"})


def _hints(cls):
    return typing.get_type_hints(cls, include_extras=True)


def test_every_schedule_valued_key_is_typed_schedule():
    from threestudio.models.guidance.mvdream.base import MVDreamGuidanceBase
    from threestudio.models.guidance.stable_diffusion_base import StableDiffusionGuidanceBase
    from threestudio.models.renderers.proposal_volume_renderer import ProposalVolumeRenderer
    from threestudio.systems.base import BaseSystem

    for cls in (StableDiffusionGuidanceBase, MVDreamGuidanceBase):
        h = _hints(cls.Config)
        for key in ("min_step_percent", "max_step_percent", "grad_clip"):
            assert is_schedule_type(h[key]), (cls.__name__, key, h[key])
    assert is_schedule_type(_hints(ProposalVolumeRenderer.Config)["proposal_update_every"])
    assert is_schedule_mapping_type(_hints(BaseSystem.Config)["loss"])
