"""The registry's manifest: checked in, current, and what makes a lookup import one module instead of all of them."""

import json
import os
import subprocess
import sys

import pytest

import threestudio
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
    assert manifest["implicit-volume"] == "threestudio.models.geometry.implicit_volume:ImplicitVolume"
    assert "stable-diffusion-guidance" in manifest and "dreamfusion-system" in manifest
    assert all(v.startswith(("threestudio.models.", "threestudio.systems.", "threestudio.data.")) for v in
               manifest.values())
    for name, entry in manifest.items():
        cls = threestudio.find(name)
        assert f"{cls.__module__}:{cls.__qualname__}" == entry


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
try:
    threestudio.find("implicit-volum", "geometry", key="system.geometry_type")
    out["unknown"] = ""
except reg.RegistryError as e:
    out["unknown"] = str(e)
out["bulk_after_unknown"] = reg._builtins_loaded
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


def test_unknown_name_imports_everything_then_fails_with_the_family_error(fresh):
    assert fresh["bulk_after_unknown"] is True
    msg = fresh["unknown"]
    assert msg.startswith("Unknown geometry module 'implicit-volum' (asked for by config key 'system.geometry_type')")
    assert "Did you mean: 'implicit-volume'" in msg and "Registered geometry names:" in msg


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
