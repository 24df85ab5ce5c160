"""Loading and validating a recipe imports neither torch nor Lightning nor diffusers/transformers: the validator reads
Configs from light modules (the manifests say where), and the trainer/checkpoint keys from Lightning's source (ast);
the launcher sets up the devices (torch) only after the config is validated.

Each check runs in a fresh interpreter, since what was imported can only be seen before anything else was."""

import inspect
import json
import os
import subprocess
import sys

import pytest

from threestudio.utils.config import LIGHTNING_KWARGS, lightning_parameters, missing_overrides

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HEAVY = ("torch", "pytorch_lightning", "lightning_fabric", "diffusers", "transformers")
MARK = "@@heavy "

# runs launch.py in the child and reports the heavy modules imported when the launcher logs a line containing
# argv[1] ("loaded and validated", or a config error's header), then exits at once
CHILD = r"""
import json, logging, os, runpy, sys
stop_at, heavy = sys.argv[1], json.loads(sys.argv[2])

class _Stop(logging.Handler):
    def emit(self, record):
        if stop_at in record.getMessage():
            sys.stdout.write("@@heavy " + json.dumps([m for m in heavy if m in sys.modules]) + "\n")
            sys.stdout.flush()
            os._exit(0)

logging.getLogger("threestudio").addHandler(_Stop())
sys.argv = ["launch.py"] + sys.argv[3:]
runpy.run_path("launch.py", run_name="__main__")
"""


def heavy_at(stop_at, args, tmp_path):
    res = subprocess.run([sys.executable, "-c", CHILD, stop_at, json.dumps(HEAVY), *args, f"exp_root_dir={tmp_path}"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith(MARK)]
    assert lines, f"the launcher never logged {stop_at!r}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return json.loads(lines[0][len(MARK):])


@pytest.mark.parametrize("recipe, values", [
    ("configs/quickstart.yaml", {}),
    ("configs/dreamfusion-sd.yaml", {"system.prompt_processor.prompt": "a red car"}),
    ("custom/amortized/configs/tiny-cpu.yaml", {}),
    ("configs/gaussiandreamer-sd.yaml", {"system.prompt_processor.prompt": "a red car"}),
    ("custom/zero1tog/configs/image-to-gaussians-tiny-cpu.yaml", {"system.image": "photo.png"}),
])
def test_validation_imports_no_torch_no_lightning_and_no_diffusers(recipe, values, tmp_path):
    overrides = missing_overrides(os.path.join(REPO, recipe), values)
    assert len(overrides) == len(values)  # the recipe really leaves these '???'
    assert heavy_at("loaded and validated", ["--config", recipe, "--train", *overrides], tmp_path) == []


def test_a_config_error_is_reported_before_any_heavy_import(tmp_path):
    args = ["--config", "configs/quickstart.yaml", "--train", "system.geometry.no_such_key=1", "trainer.no_such=2"]
    assert heavy_at("Invalid config: 2 problems found.", args, tmp_path) == []


FRESH = r"""
import json, sys
from threestudio.utils.extensions import load_extension_folders
import threestudio.registry as reg
from threestudio._manifest import MANIFEST

load_extension_folders([], include_custom=True)
names = sorted(set(MANIFEST) | set(reg._lazy))
configs = {name: reg.find_config(name).__qualname__ for name in names}
print("@@" + json.dumps({"configs": configs, "imported": [m for m in json.loads(sys.argv[1]) if m in sys.modules],
                         "built": sorted(n for n in reg._modules if reg._lazy_entry(n).family in ("system", "data"))}))
"""


def test_every_config_in_the_manifests_imports_no_torch_no_lightning_and_no_diffusers():
    res = subprocess.run([sys.executable, "-c", FRESH, json.dumps(HEAVY)], cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1][2:])
    assert out["imported"] == []
    assert out["built"] == []  # no system or data module was imported (nor registered) to read its Config
    assert {"dreamfusion-system", "random-camera", "multiprompt-generator", "zero1tog-system", "get3d-nada",
            "nelf-pseudo-data", "in2n-system"} <= set(out["configs"])
    assert out["configs"]["dreamfusion-system"] == "DreamFusionConfig"
    assert out["configs"]["implicit-volume"] == "ImplicitVolumeConfig"
    assert [n for n, q in out["configs"].items() if ".Config" in q] == []  # none is nested in its (torch) class


@pytest.mark.parametrize("which", sorted(LIGHTNING_KWARGS))
def test_lightning_parameters_read_from_the_source_match_the_signature(which):
    import pytorch_lightning as pl

    fn = {"trainer": pl.Trainer.__init__, "checkpoint": pl.callbacks.ModelCheckpoint.__init__}[which]
    params = inspect.signature(fn).parameters
    expected = None if any(p.kind == p.VAR_KEYWORD for p in params.values()) else tuple(params)
    assert lightning_parameters(which) == expected
    assert "max_steps" in lightning_parameters("trainer")
    assert "every_n_train_steps" in lightning_parameters("checkpoint")


def test_a_config_in_a_light_module_is_still_named_after_its_class():
    import threestudio
    from threestudio.data.schema import RandomCameraDataModuleConfig
    from threestudio.utils.config import ConfigError

    cls = threestudio.find("random-camera", "data")
    assert cls.Config is RandomCameraDataModuleConfig
    sub = type("MyCameras", (cls,), {})  # inherits the Config: messages name the class that set it
    for c in (cls, sub):
        with pytest.raises(ConfigError, match=r"^Invalid config for RandomCameraDataModule: 1 problem found"):
            c({"no_such_key": 1})


def test_a_model_config_in_a_light_module_is_still_named_after_its_class():
    import threestudio
    from threestudio.models.geometry.schema import ImplicitVolumeConfig
    from threestudio.models.networks import EncodingConfig, MLPConfig
    from threestudio.models.schema import EncodingConfig as LightEncodingConfig
    from threestudio.models.schema import MLPConfig as LightMLPConfig
    from threestudio.utils.config import ConfigError

    assert (EncodingConfig, MLPConfig) == (LightEncodingConfig, LightMLPConfig)  # the old import path still works
    geometry, objective = threestudio.find("implicit-volume", "geometry"), threestudio.find("photometric", "objective")
    assert geometry.Config is ImplicitVolumeConfig and issubclass(geometry.Config, threestudio.find(
        "implicit-sdf", "geometry").Config.__mro__[1])  # BaseImplicitGeometry's Config, as when it was nested
    for cls, name in ((geometry, "ImplicitVolume"), (type("MyField", (geometry,), {}), "ImplicitVolume"),
                      (objective, "Photometric")):
        with pytest.raises(ConfigError, match=rf"^Invalid config for {name}: 1 problem found"):
            cls({"no_such_key": 1})


def test_set_top_level_updates_what_interpolates_the_value():
    from omegaconf import OmegaConf

    from threestudio.utils.config import load_config, set_top_level

    cfg, raw = load_config(os.path.join(REPO, "configs", "quickstart.yaml"), return_raw=True, n_gpus=1,
                           cli_args=["trainer.max_steps=${mul:10,${n_gpus}}", "seed=${trainer.max_steps}"])
    assert (cfg.n_gpus, cfg.trainer.max_steps, cfg.seed) == (1, 10, 10)
    set_top_level(cfg, raw, n_gpus=4)  # what launch.py does once the devices are set up
    assert (cfg.n_gpus, raw.n_gpus, cfg.trainer.max_steps, cfg.seed) == (4, 4, 40, 40)
    assert OmegaConf.to_container(raw)["trainer"]["max_steps"] == "${mul:10,${n_gpus}}"  # raw stays unresolved


def test_set_top_level_renames_the_trial_folder_when_the_tag_uses_the_value():
    from threestudio.utils.config import load_config, set_top_level

    cfg, raw = load_config(os.path.join(REPO, "configs", "quickstart.yaml"), return_raw=True, n_gpus=1,
                           timestamp="20260101-000000", cli_args=["tag=run-${n_gpus}gpu"])
    assert cfg.trial_name == "run-1gpu@20260101-000000"
    set_top_level(cfg, raw, n_gpus=2)
    assert (cfg.tag, cfg.trial_name, cfg.timestamp) == ("run-2gpu", "run-2gpu@20260101-000000", "20260101-000000")
    assert cfg.trial_dir == os.path.join(cfg.exp_dir, "run-2gpu@20260101-000000")
    set_top_level(cfg, raw, trial_paths=False, n_gpus=4)  # a resume keeps the folder it continues
    assert (cfg.tag, cfg.trial_name) == ("run-4gpu", "run-2gpu@20260101-000000")
