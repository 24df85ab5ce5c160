"""Bad input gets one clear message (every problem at once, the key or file named, no traceback) and exit code 2;
nothing of the user's changes, and a run that fails before its first step leaves no trial folder behind."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from .conftest import REPO, listing, run_launch, toy_args, trials

NERF = os.path.join(REPO, "configs", "base", "nerf-reconstruction.yaml")
QUICK = os.path.join(REPO, "configs", "quickstart.yaml")


def write_capture(root, n=20, missing=(), nan_frame=None, fl_x=30.0):
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    frames = []
    for i in range(n):
        name = f"images/{i:03d}.png"
        if i not in missing:
            Image.fromarray(np.full((16, 16, 3), i * 10, dtype=np.uint8)).save(os.path.join(root, name))
        m = np.eye(4)
        m[:3, 3] = [0.0, -3.0 - 0.01 * i, 0.5]
        if i == nan_frame:
            m[0, 3] = float("nan")
        frames.append({"file_path": name, "transform_matrix": m.tolist()})
    with open(os.path.join(root, "transforms.json"), "w") as f:
        f.write(json.dumps({"fl_x": fl_x, "w": 16, "h": 16, "frames": frames}).replace("NaN", "NaN"))


def _check(r, *needles):
    out = r.stdout + r.stderr
    assert r.returncode == 2, out[-3000:]
    for n in needles:
        assert n in out, (n, out[-3000:])
    assert "Traceback" not in out
    return out


def test_every_missing_image_is_named_at_once(tmp_path):
    missing = tuple(range(2, 19))  # 17 of 20
    write_capture(str(tmp_path / "cap"), missing=missing)
    before = listing(str(tmp_path / "cap"))
    r = run_launch(["--config", NERF, "--train", f"data.dataroot={tmp_path / 'cap'}", f"exp_root_dir={tmp_path}/o"],
                   cwd=tmp_path)
    out = _check(r, "17 problems in its 20 frames")
    for i in missing:
        assert f"images/{i:03d}.png" in out
    assert listing(str(tmp_path / "cap")) == before
    assert trials(tmp_path / "o", "nerf-reconstruction") == []  # no trial folder left behind


@pytest.mark.parametrize("edit, needle", [
    ("bad-json", "not valid JSON"),
    ("nan-pose", "frames[4].transform_matrix has non-finite entries"),
    ("zero-focal", "fl_x must be a positive focal length in pixels, got 0"),
    ("negative-focal", "fl_x must be a positive focal length in pixels, got -30"),
])
def test_data_errors(tmp_path, edit, needle):
    cap = str(tmp_path / "cap")
    write_capture(cap, nan_frame=4 if edit == "nan-pose" else None,
                  fl_x={"zero-focal": 0.0, "negative-focal": -30.0}.get(edit, 30.0))
    if edit == "bad-json":
        with open(os.path.join(cap, "transforms.json"), "a") as f:
            f.write("}}")
    r = run_launch(["--config", NERF, "--train", f"data.dataroot={cap}", f"exp_root_dir={tmp_path}/o"], cwd=tmp_path)
    _check(r, needle)
    assert trials(tmp_path / "o", "nerf-reconstruction") == []


def test_bad_ranges_and_steps_are_refused_at_start_up_all_at_once(tmp_path):
    r = run_launch(["--config", QUICK, "--train", f"exp_root_dir={tmp_path}/o", "trainer.max_steps=-1",
                    "system.renderer.num_samples_per_ray=-1", "system.geometry.isosurface_resolution=-5",
                    "system.exporter.texture_size=4"], cwd=tmp_path)
    _check(r, "Invalid config: 4 problems found.", "trainer.max_steps: must be a positive number of training steps",
           "system.renderer.num_samples_per_ray: must be >= 1", "system.geometry.isosurface_resolution: must be >= 4",
           "system.exporter.texture_size: must be >= 16")
    assert "every_n_train_steps" not in r.stdout + r.stderr  # the key the user set is named, not a derived one
    r = run_launch(["--config", QUICK, "--train", f"exp_root_dir={tmp_path}/o", "trainer.max_steps=abc"], cwd=tmp_path)
    _check(r, "trainer.max_steps")
    assert not os.path.exists(tmp_path / "o")


def test_gpu_flag_without_gpus_is_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    r = run_launch(toy_args(tmp_path / "o") + ["--gpu", "0,1", "tag=g${n_gpus}"], cwd=tmp_path)
    out = _check(r, "--gpu 0,1: this machine has no usable CUDA GPU", "--cpu-ranks")
    assert "trial folder: " + os.path.join(str(tmp_path / "o"), "") in out and "/g2@" in out  # n_gpus from --gpu
    # the config is validated first (without torch), then the devices are set up: one error line after that one
    assert len([ln for ln in out.splitlines() if ln.strip() and "loaded and validated" not in ln]) == 1


def test_an_export_with_no_surface_yet_is_one_message_and_keeps_the_training(tmp_path):
    from threestudio.data.synthetic_scene import make_scene

    scene = str(tmp_path / "scene")
    make_scene(scene, n_train=4, n_test=1, resolution=16, supersample=1, progress=False)
    r = run_launch(["--config", QUICK, "--train", f"exp_root_dir={tmp_path}/o", f"data.dataroot={scene}",
                    "data.synthetic_scene=null", "trainer.max_steps=2", "trainer.val_check_interval=2",
                    "system.geometry.isosurface_threshold=1e9", "system.geometry.isosurface_resolution=16"],
                   cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out[-3000:]
    assert "Export failed: marching_cubes: no surface" in out and "--export --resume" in out
    assert "Traceback" not in out
    (trial,) = trials(tmp_path / "o", "quickstart")
    assert os.path.isfile(os.path.join(trial, "ckpts", "last.ckpt"))


def test_a_lazy_extension_module_that_fails_to_import_is_one_message(tmp_path):
    """An extension registered lazily (its manifest) whose module breaks: validation passes (the Config is in a
    module of its own), the build names the registered name, the module, the file and line, exit 3."""
    ext = tmp_path / "brokenext"
    ext.mkdir()
    (ext / "__init__.py").write_text("from threestudio.registry import add_manifest\n\nadd_manifest(__name__)\n")
    (ext / "_manifest.py").write_text('MANIFEST = {"brokenext-field": ".field:BrokenField"}\n'
                                      'FAMILY = {"brokenext-field": "geometry"}\n'
                                      'CONFIG = {"brokenext-field": ".schema:BrokenFieldConfig"}\n')
    (ext / "schema.py").write_text("from dataclasses import dataclass\nfrom typing import Any\n\n\n@dataclass\n"
                                   "class BrokenFieldConfig:\n    n_hidden: int = 16\n    noise_scale: Any = 0.0\n")
    (ext / "field.py").write_text('"""A module with a bug."""\n\nfrom .schema import BrokenFieldConfig\n'
                                  "from .helpers import make_field  # no such module\n")
    r = run_launch(toy_args(tmp_path / "o", "system.geometry_type=brokenext-field") + ["--extensions", str(ext)],
                   cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 3, out[-3000:]
    assert "loaded and validated" in out
    for needle in ("'brokenext-field' is registered by", ".field, which failed to import: ModuleNotFoundError",
                   f"{os.path.join(str(ext), 'field.py')}, line 4", "brokenext_disabled", "--verbose"):
        assert needle in out, (needle, out[-3000:])
    assert "Traceback" not in out
    assert trials(tmp_path / "o") == []  # nothing trained: no trial folder left behind
