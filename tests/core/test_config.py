import os
import textwrap

import pytest
from omegaconf import OmegaConf

from threestudio.utils.config import ConfigError, load_config, parse_structured
from tests.core.conftest import TOY_EXT, TOY_YAML


def write(path, text):
    path.write_text(textwrap.dedent(text).lstrip())
    return str(path)


def line_of(path, needle):
    for i, line in enumerate(open(path).read().splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(needle)


def test_all_problems_reported_at_once_with_key_and_file(tmp_path):
    base = write(tmp_path / "base.yaml", f"extends: {TOY_YAML}\n")
    recipe = write(tmp_path / "recipe.yaml", """
        extends: base.yaml
        data:
          n_test: ???
        system:
          cleanup_after_validation_step: maybe
          material_type: toy-materiall
          geometry:
            n_hiden: 4
    """)
    assert base
    with pytest.raises(ConfigError) as e:
        load_config(recipe, cli_args=["trainer.max_step=5"])
    msg = str(e.value)
    issues = {i.key: i for i in e.value.issues}
    # unknown key, three levels deep, with file:line and suggestion
    bad = issues["system.geometry.n_hiden"]
    assert "unknown key" in bad.message and "did you mean 'n_hidden'" in bad.suggestion
    assert bad.source == f"{recipe}:{line_of(recipe, 'n_hiden')}"
    # wrong type
    wt = issues["system.cleanup_after_validation_step"]
    assert "wrong type" in wt.message and "'maybe'" in wt.message
    assert wt.source.endswith(f"recipe.yaml:{line_of(recipe, 'cleanup_after')}")
    # missing ???
    assert "mandatory value '???'" in issues["data.n_test"].message
    # unknown module name with the family and a suggestion
    mod = issues["system.material_type"]
    assert "Unknown material module 'toy-materiall'" in mod.message
    # a Trainer argument typo from the command line
    tr = issues["trainer.max_step"]
    assert tr.source == "command line" and "max_steps" in tr.suggestion
    assert len(e.value.issues) == 5, msg
    assert msg.startswith("Invalid config: 5 problems found.")


def test_validation_happens_before_any_module_is_built(tmp_path, monkeypatch, toy):
    from threestudio.launcher import main

    built = []
    monkeypatch.setattr(toy.ToySystem, "configure", lambda self: built.append("system"))
    monkeypatch.setattr(toy.ToyField, "configure", lambda self: built.append("geometry"))
    recipe = write(tmp_path / "r.yaml", f"""
        extends: {TOY_YAML}
        exp_root_dir: {tmp_path}/out
        system:
          geometry:
            n_hidden: lots
    """)
    assert main(["--config", recipe, "--train", "--extensions", TOY_EXT]) == 2
    assert built == []
    assert not os.path.exists(tmp_path / "out")


def test_overrides_extends_and_resolvers(tmp_path):
    base = write(tmp_path / "base.yaml", """
        name: base-name
        data_type: toy-datamodule
        data:
          batch_size: 4
          n_val: ${idiv:${data.batch_size},2}
        system_type: toy-system
        system:
          geometry:
            n_hidden: ${mul:${data.batch_size},2}
          loss:
            lambda_mse: ${calc_exp_lr_decay_rate:0.1,2}
        trainer:
          max_steps: 10
    """)
    recipe = write(tmp_path / "recipe.yaml", """
        extends: base.yaml
        tag: ${rmspace:"a red car",_}-${basename:/x/y/z.ckpt}
        data:
          n_test: ${add:1,${sub:5,${idiv:4,2}}}
        system:
          loss:
            lambda_div: ${div:1,4}
    """)
    cfg = load_config(recipe, cli_args=["data.batch_size=8", "trainer.max_steps=20"], timestamp="T")
    assert cfg.name == "base-name"
    assert cfg.data.batch_size == 8
    assert cfg.data.n_val == 4  # idiv sees the override
    assert cfg.system.geometry.n_hidden == 16
    assert cfg.system.loss.lambda_mse == pytest.approx(0.1 ** 0.5)
    assert cfg.data.n_test == 4
    assert cfg.system.loss.lambda_div == 0.25
    assert cfg.tag == "a_red_car-z.ckpt"
    assert cfg.trainer.max_steps == 20
    assert cfg.trial_name == "a_red_car-z.ckpt@T"
    assert cfg.trial_dir == os.path.join(os.path.abspath("outputs"), "base-name", "a_red_car-z.ckpt@T")


def test_now_resolver_and_replace_marker(tmp_path):
    base = write(tmp_path / "base.yaml", f"""
        extends: {TOY_YAML}
        description: "${{now:%Y}}"
        system:
          geometry:
            n_hidden: 3
            noise_scale: 0.5
    """)
    recipe = write(tmp_path / "recipe.yaml", """
        extends: base.yaml
        system:
          geometry:
            __replace__: true
            n_hidden: 5
    """)
    cfg = load_config(recipe)
    assert len(cfg.description) == 4 and cfg.description.isdigit()
    assert dict(cfg.system.geometry) == {"n_hidden": 5}
    assert base


def test_extends_errors(tmp_path):
    a = write(tmp_path / "a.yaml", "extends: b.yaml\n")
    write(tmp_path / "b.yaml", "extends: a.yaml\n")
    with pytest.raises(ConfigError, match="circular 'extends' chain"):
        load_config(a)
    c = write(tmp_path / "c.yaml", "extends: missing.yaml\n")
    with pytest.raises(ConfigError, match="config file not found: .*missing.yaml"):
        load_config(c)


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="not a config override"):
        load_config(TOY_YAML, cli_args=["--foo"])


def test_parse_structured_errors_name_the_key():
    from dataclasses import dataclass

    @dataclass
    class Cfg:
        radius: float = 1.0
        n_levels: int = 16

    c = parse_structured(Cfg, {"radius": 2})
    assert c.radius == 2.0 and c.n_levels == 16
    with pytest.raises(ConfigError) as e:
        parse_structured(Cfg, {"raduis": 2.0, "n_levels": "many"})
    msg = str(e.value)
    assert "raduis: unknown key" in msg and "did you mean 'radius'" in msg
    assert "n_levels: wrong type" in msg
    assert isinstance(OmegaConf.to_container(c), dict)


def test_float32_matmul_precision_checked_and_applied_on_gpu_runs_only(tmp_path, monkeypatch):
    import torch

    from threestudio import launcher

    recipe = write(tmp_path / "r.yaml", f"extends: {TOY_YAML}\n")
    cfg = load_config(recipe)
    assert cfg.float32_matmul_precision == "high"  # TF32 by default on GPUs
    with pytest.raises(ConfigError) as e:
        load_config(recipe, cli_args=["float32_matmul_precision=fast"])
    issue = {i.key: i for i in e.value.issues}["float32_matmul_precision"]
    assert "'fast'" in issue.message and "highest, high, medium" in issue.suggestion
    calls = []
    monkeypatch.setattr(torch, "set_float32_matmul_precision", calls.append)
    launcher.set_matmul_precision(cfg, n_gpus=0)
    assert calls == []  # CPU runs keep torch's default
    launcher.set_matmul_precision(load_config(recipe, cli_args=["float32_matmul_precision=highest"]), n_gpus=2)
    assert calls == ["highest"]


def test_checkpoint_monitor_of_a_training_scalar_is_refused_at_load(tmp_path):
    recipe = write(tmp_path / "r.yaml", f"extends: {TOY_YAML}\n")
    with pytest.raises(ConfigError) as e:
        load_config(recipe, cli_args=["checkpoint.monitor=train/loss"])
    issue = {i.key: i for i in e.value.issues}["checkpoint.monitor"]
    assert "'train/loss' is a training scalar" in issue.message and "val/psnr" in issue.suggestion
    with pytest.raises(ConfigError, match="'lr-Adam/geometry' is a training scalar"):  # learning rates likewise
        load_config(recipe, cli_args=["checkpoint.monitor=lr-Adam/geometry"])
    assert load_config(recipe, cli_args=["checkpoint.monitor=val/psnr"]).checkpoint.monitor == "val/psnr"
