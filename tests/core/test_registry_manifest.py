"""The registry's manifest: checked in, current, and what makes a lookup import one module instead of all of them."""

import json
import os
import subprocess
import sys

import pytest

import threestudio
from threestudio._manifest import FAMILY
from threestudio.registry import MANIFEST_FILE, WRITE_MANIFEST_COMMAND, RegistryError, generate_manifest, \
    render_manifest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_checked_in_manifest_is_current():
    fresh = render_manifest(generate_manifest())
    with open(MANIFEST_FILE, encoding="utf-8") as f:
        current = f.read()
    assert fresh == current, f"{MANIFEST_FILE} is stale: run `{WRITE_MANIFEST_COMMAND}` and commit the result"


def test_manifest_covers_every_builtin_and_no_extension():
    manifest = generate_manifest()
    assert manifest.classes["implicit-volume"] == "threestudio.models.geometry.implicit_volume:ImplicitVolume"
    assert "stable-diffusion-guidance" in manifest.classes and "dreamfusion-system" in manifest.classes
    assert all(v.startswith(("threestudio.models.", "threestudio.systems.", "threestudio.data.")) for v in
               manifest.classes.values())
    for name, entry in manifest.classes.items():
        cls = threestudio.find(name)
        assert f"{cls.__module__}:{cls.__qualname__}" == entry
        assert manifest.families[name] == threestudio.registry._families[name]
        assert threestudio.registry._resolve(manifest.configs[name]) is cls.Config
    # the Configs of systems and data modules live in modules without Lightning
    assert manifest.configs["dreamfusion-system"] == "threestudio.systems.schema:DreamFusionConfig"
    assert manifest.configs["random-camera"] == "threestudio.data.schema:RandomCameraDataModuleConfig"


# run in a fresh interpreter: what a lookup imports can only be seen before anything else was imported
FRESH = r"""
import json, sys
import threestudio
import threestudio.registry as reg
from threestudio._manifest import MANIFEST

out = {}
threestudio.find("stable-diffusion-guidance", "guidance")
out["after_one"] = {"bulk": reg._builtins_loaded, "diffusers": "diffusers" in sys.modules,
                    "geometry": sorted(m for m in sys.modules if m.startswith("threestudio.models.geometry."))}

try:
    threestudio.register("implicit-volume")(type("Imposter", (object,), {}))
    out["collision"] = ""
except reg.RegistryError as e:
    out["collision"] = str(e)
threestudio.register("myext-thing", family="geometry")(type("Thing", (object,), {}))
out["ext_found"] = threestudio.find("myext-thing", "geometry").__name__
wrong = []
for name, entry in MANIFEST.items():
    cls = threestudio.find(name)
    if f"{cls.__module__}:{cls.__qualname__}" != entry:
        wrong.append(name)
out["wrong"] = wrong
out["bulk_after_all"] = reg._builtins_loaded
print("@@" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def fresh():
    res = subprocess.run([sys.executable, "-c", FRESH], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1][2:])


def test_a_lookup_imports_only_the_module_that_registers_the_name(fresh):
    assert fresh["after_one"] == {"bulk": False, "diffusers": False, "geometry": []}
    assert fresh["wrong"] == [] and fresh["bulk_after_all"] is False  # every manifest name found without a bulk import


def test_extensions_register_as_before_and_cannot_take_a_builtin_name(fresh):
    assert fresh["ext_found"] == "Thing"
    # implicit-volume was not imported yet (lazy), and its name is still taken
    assert "Cannot register" in fresh["collision"] and "as 'implicit-volume'" in fresh["collision"]
    assert "threestudio.models.geometry.implicit_volume.ImplicitVolume" in fresh["collision"]


UNKNOWN_FIRST = r"""
import json, sys
import threestudio
import threestudio.registry as reg

out = {}
for name, fam in (("implicit-volum", "geometry"), ("implicit-volume", "material")):
    try:
        threestudio.find(name, fam, key="system.geometry_type")
    except reg.RegistryError as e:
        out[name] = str(e)
out["bulk"] = reg._builtins_loaded
out["heavy"] = sorted(m for m in ("torch", "diffusers", "transformers", "pytorch_lightning") if m in sys.modules)
out["models"] = sorted(m for m in sys.modules if m.startswith("threestudio.models.") and not m.endswith("schema"))
print("@@" + json.dumps(out))
"""


def test_unknown_name_fails_with_the_family_error_and_imports_nothing():
    res = subprocess.run([sys.executable, "-c", UNKNOWN_FIRST], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1][2:])
    msg = out["implicit-volum"]
    assert msg.startswith("Unknown geometry module 'implicit-volum' (asked for by config key 'system.geometry_type')")
    assert "Did you mean: 'implicit-volume'" in msg and "Registered geometry names:" in msg
    names = msg.split("Registered geometry names: ")[1].split(". If it comes")[0].split(", ")
    assert names == sorted(n for n, f in FAMILY.items() if f == "geometry")  # every geometry name, from the manifest
    # a known name of another family is imported (its family checked), and still nothing else
    assert out["implicit-volume"].startswith("'implicit-volume' is a geometry module, but config key "
                                             "'system.geometry_type' needs a material module.")
    assert out["bulk"] is False and out["heavy"] == ["torch"]  # torch only through implicit-volume's own module
    assert "threestudio.models.geometry.implicit_volume" in out["models"]
    others = ("guidance", "prompt_processors", "renderers", "materials", "background", "exporters")
    assert not [m for m in out["models"] if m.split(".")[2] in others]


def test_a_stale_manifest_entry_falls_back_to_importing_everything(monkeypatch):
    import threestudio._manifest as manifest_module

    monkeypatch.setitem(manifest_module.MANIFEST, "t-ghost", "threestudio.models.geometry.implicit_volume:Ghost")
    with pytest.raises(RegistryError, match="Unknown module 't-ghost'"):
        threestudio.find("t-ghost")


def test_the_manifest_command_checks_and_writes(tmp_path, monkeypatch, capsys):
    import threestudio.registry as reg
    from threestudio.utils import manifest as cmd

    assert cmd.main(["--check"]) == 0
    stale = tmp_path / "_manifest.py"
    stale.write_text("MANIFEST = {}\n")
    monkeypatch.setattr(reg, "MANIFEST_FILE", str(stale))
    assert cmd.main(["--check"]) == 1
    assert WRITE_MANIFEST_COMMAND in capsys.readouterr().err
    assert cmd.main(["--write"]) == 0 and cmd.main(["--check"]) == 0
    assert stale.read_text() == render_manifest(generate_manifest())


# ------------------------------------------------------------------------------------------------ find_config
def test_find_config_returns_the_config_and_fails_as_find_does():
    from threestudio.registry import class_name, find_config
    from threestudio.systems.schema import DreamFusionConfig

    assert find_config("dreamfusion-system", "system", key="system_type") is DreamFusionConfig
    assert threestudio.find("dreamfusion-system").Config is DreamFusionConfig
    assert find_config("implicit-volume") is threestudio.find("implicit-volume").Config
    assert class_name("dreamfusion-system") == "DreamFusion" and class_name("a:b,c") == "a_b_c"
    for name, family in (("implicit-volume", "system"), ("implicit-volum", "geometry"), ("", None)):
        with pytest.raises(RegistryError) as found:
            threestudio.find(name, family, key="system.geometry_type")
        with pytest.raises(RegistryError) as config:
            find_config(name, family, key="system.geometry_type")
        assert str(config.value) == str(found.value)


FRESH_CONFIG = r"""
import json, sys
import threestudio.registry as reg
from threestudio.utils.extensions import load_extension_folders

load_extension_folders([], include_custom=True)
out = {"config": reg.find_config("dreamfusion-system", "system").__qualname__,
       "class_name": reg.class_name("multiprompt-generator"),
       "imported": sorted(m for m in ("threestudio.systems.dreamfusion", "custom.amortized.system", "pytorch_lightning")
                          if m in sys.modules)}
out["found"] = reg.find("multiprompt-generator", "system").__module__
out["systems"] = reg.list_modules("system")
print("@@" + json.dumps(out))
"""


def test_custom_extensions_are_lazy_and_listed():
    res = subprocess.run([sys.executable, "-c", FRESH_CONFIG], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1][2:])
    assert out["config"] == "DreamFusionConfig" and out["class_name"] == "MultiPromptGenerator"
    assert out["imported"] == []
    assert out["found"] == "custom.amortized.system"
    # listing imports what the extensions' manifests name
    assert {"multiprompt-generator", "zero1tog-system", "get3d-nada", "in2n-system", "dreamfusion-system"} <= \
        set(out["systems"])


# ------------------------------------------------------------------------------------------------ extension manifests
EXT_INIT = "from threestudio.registry import add_manifest\n\nadd_manifest(__name__)\n"
EXT_SCHEMA = """from dataclasses import dataclass


@dataclass
class LazyGeoConfig:
    radius: float = 1.0
"""
EXT_GEO = """import threestudio
from threestudio.models.geometry.base import BaseImplicitGeometry

from .schema import LazyGeoConfig


@threestudio.register("lazyext-geometry")
class LazyGeo(BaseImplicitGeometry):
    Config = LazyGeoConfig
"""
FRESH_EXT = r"""
import json, sys
import threestudio
import threestudio.registry as reg
from threestudio.utils.extensions import import_extension

pkg = import_extension(sys.argv[1])
out = {"lazy": pkg + ".geo" not in sys.modules, "config": reg.find_config("lazyext-geometry", "geometry").__name__,
       "lazy_after_config": pkg + ".geo" not in sys.modules, "found": threestudio.find("lazyext-geometry").__name__}
try:
    import_extension(sys.argv[2])
    out["collision"] = ""
except Exception as e:
    out["collision"] = str(e)
print("@@" + json.dumps(out))
"""


def test_an_extension_writes_its_manifest_and_becomes_lazy(tmp_path, capsys):
    from threestudio.registry import _unregister
    from threestudio.utils import manifest as cmd

    ext = tmp_path / "lazyext"
    ext.mkdir()
    (ext / "__init__.py").write_text(EXT_INIT)
    (ext / "schema.py").write_text(EXT_SCHEMA)
    (ext / "geo.py").write_text(EXT_GEO)
    try:
        assert cmd.main(["--check", "--extension", str(ext)]) == 1  # no manifest yet: imported eagerly, with a warning
        assert "--write --extension" in capsys.readouterr().err
        assert cmd.main(["--write", "--extension", str(ext)]) == 0
        assert cmd.main(["--check", "--extension", str(ext)]) == 0
    finally:
        _unregister("lazyext-geometry")
    text = (ext / "_manifest.py").read_text()
    assert '"lazyext-geometry": ".geo:LazyGeo"' in text and '"lazyext-geometry": ".schema:LazyGeoConfig"' in text

    thief = tmp_path / "thief"  # a manifest that claims a built-in name
    thief.mkdir()
    (thief / "__init__.py").write_text(EXT_INIT)
    (thief / "_manifest.py").write_text('MANIFEST = {"implicit-volume": ".x:Y"}\nFAMILY = {}\nCONFIG = {}\n')
    res = subprocess.run([sys.executable, "-c", FRESH_EXT, str(ext), str(thief)], cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1][2:])
    assert out["lazy"] and out["lazy_after_config"] and out["config"] == "LazyGeoConfig" and out["found"] == "LazyGeo"
    assert "Cannot register" in out["collision"] and "as 'implicit-volume'" in out["collision"]
