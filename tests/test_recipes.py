"""Every recipe in configs/ loads, validates and builds (data module and system) without touching weights."""

import glob
import importlib.util
import os

import pytest

import threestudio
from threestudio.utils.config import ConfigError, load_config, missing_overrides

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(p for p in glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True)
                 if os.sep + "base" + os.sep not in p)
# values a recipe leaves mandatory ('???') that a test must supply
REQUIRED = {"data.dataroot": "load/scenes/quickstart", "system.prompt_processor.prompt": "a test prompt"}


def _overrides(path):
    """The REQUIRED values that this recipe (with its bases) leaves '???'."""
    return missing_overrides(path, REQUIRED)


@pytest.mark.parametrize("recipe", RECIPES, ids=[os.path.relpath(p, REPO) for p in RECIPES])
def test_recipe_loads_and_builds(recipe, tmp_path):
    try:
        cfg = load_config(recipe, cli_args=[f"exp_root_dir={tmp_path}"])
    except ConfigError:
        cfg = load_config(recipe, cli_args=[f"exp_root_dir={tmp_path}", *_overrides(recipe)])
    dm = threestudio.find(cfg.data_type, "data")(cfg.data)
    system = threestudio.find(cfg.system_type, "system")(cfg.system)
    assert dm is not None and sum(p.numel() for p in system.parameters()) > 0


def test_there_are_recipes():
    assert any(p.endswith("quickstart.yaml") for p in RECIPES)


def _startup_bench():
    path = os.path.join(REPO, "scripts", "bench", "bench_startup.py")
    spec = importlib.util.spec_from_file_location("bench_startup", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_the_startup_bench_supplies_the_same_values_and_can_run_every_recipe(tmp_path):
    """scripts/bench/bench_startup.py times every recipe (custom/ ones too) up to validation: its values for '???'
    agree with REQUIRED, and with them every recipe it finds validates."""
    from threestudio.utils.extensions import load_extension_folders

    bench = _startup_bench()
    assert {k: bench.REQUIRED[k] for k in REQUIRED} == REQUIRED
    load_extension_folders([], include_custom=True)
    for recipe in bench.find_recipes(REPO):
        load_config(os.path.join(REPO, recipe), cli_args=[f"exp_root_dir={tmp_path}",
                                                          *bench.mandatory_overrides(REPO, recipe)])


def test_the_startup_bench_runs_from_a_checkout_that_is_not_installed(tmp_path):
    """The bench's parent process imports this checkout's threestudio without a pip install (as on a bare GPU
    machine): run it with site's .pth files (the editable install) skipped and only site-packages on the path."""
    import json
    import site
    import subprocess
    import sys

    script = os.path.join(REPO, "scripts", "bench", "bench_startup.py")
    paths = "import sys; sys.path[1:1] = sys.argv[1].split(':'); "  # site-packages only, no .pth files
    boot = paths + "import runpy; sys.argv = sys.argv[2:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    probe = subprocess.run([sys.executable, "-S", "-c", paths + "import importlib.util as u; "
                            "print(u.find_spec('threestudio'))", ":".join(site.getsitepackages())],
                           cwd=tmp_path, capture_output=True, text=True)
    if probe.stdout.strip() != "None":  # a non-editable install puts it in site-packages itself
        pytest.skip(f"threestudio is importable from site-packages itself: {probe.stdout.strip()}")
    r = subprocess.run([sys.executable, "-S", "-c", boot, ":".join(site.getsitepackages()), script, "--recipes",
                        "configs/quickstart.yaml", "--repeat", "1", "--json", str(tmp_path / "s.json")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rows = json.load(open(tmp_path / "s.json"))["rows"]
    assert rows[0]["recipe"] == "configs/quickstart.yaml" and rows[0]["this"]["seconds"] > 0
