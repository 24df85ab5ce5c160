"""Nothing is ever written into a folder the user named as input.

Every reconstruction recipe is run (a few steps, through launch.py's entry point) on a user folder holding a
nerfstudio-style capture with lens distortion; the folder's listing, bytes and modification times must be exactly
as before. The quick-start and gaussian-recon recipes name a procedural scene (``data.synthetic_scene``): on a user
folder they must read the user's data, never render the scene into it.
"""

import hashlib
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from threestudio.data.multiview import synthetic_scene_allowed
from threestudio.ops.cameras import c2w_from_spherical

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
W, H = 40, 30

# small models and short runs: what matters here is every file a run touches
TINY = {
    "quickstart": ["system.export_after_train=false", "system.renderer.num_samples_per_ray=32"],
    "base/nerf-reconstruction": ["system.export_after_train=false", "system.renderer.num_samples_per_ray=32",
                                 "system.geometry.pos_encoding_config.n_levels=4",
                                 "system.geometry.pos_encoding_config.log2_hashmap_size=12"],
    "gaussian-recon": ["system.geometry.init_num_points=200", "system.export_turntable_views=2"],
    "nerf-capture": ["system.geometry.pos_encoding_config.n_levels=4",
                     "system.geometry.pos_encoding_config.log2_hashmap_size=12",
                     "system.geometry.pos_encoding_config.max_resolution=64", "system.renderer.num_samples=8",
                     "system.renderer.num_proposal_samples=[16,8]", "data.batch_size=256"],
    "gaussian-capture": ["system.geometry.init_num_points=200"],
}


def write_user_capture(root):
    """A nerfstudio transforms.json (OPENCV with distortion) and 8 JPEG photos, as a user's capture folder."""
    os.makedirs(os.path.join(root, "images"))
    n = 8
    c2w = c2w_from_spherical(torch.linspace(0, 40, n), torch.arange(n) * 45.0, torch.full((n,), 3.0)).numpy()
    rng = np.random.default_rng(0)
    frames = []
    for i in range(n):
        name = f"images/frame_{i:05d}.jpg"
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(os.path.join(root, name), quality=90)
        frames.append({"file_path": name, "transform_matrix": c2w[i].tolist()})
    data = {"camera_model": "OPENCV", "fl_x": 35.0, "fl_y": 35.0, "cx": 20.1, "cy": 14.8, "w": W, "h": H,
            "k1": 0.05, "k2": -0.02, "p1": 0.001, "p2": -0.0005, "frames": frames}
    with open(os.path.join(root, "transforms.json"), "w") as f:
        json.dump(data, f)


def snapshot(root):
    """Every file and folder under root with its bytes' hash and modification time."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root) + "/"] = os.stat(os.path.join(dirpath, d)).st_mtime_ns
        for name in filenames:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = (hashlib.sha256(f.read()).hexdigest(), os.stat(p).st_mtime_ns)
    st = os.stat(root)
    out["."] = st.st_mtime_ns
    return out


@pytest.mark.slow
@pytest.mark.parametrize("recipe", list(TINY))
def test_recipes_never_write_into_the_user_folder(tmp_path, monkeypatch, recipe):
    from threestudio.launcher import main

    user = tmp_path / "my capture"
    write_user_capture(str(user))
    os.chmod(user, 0o755)
    before = snapshot(str(user))
    monkeypatch.setenv("THREESTUDIO_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    try:
        rc = main(["--config", os.path.join(REPO, "configs", f"{recipe}.yaml"), "--train",
                   f"exp_root_dir={tmp_path / 'out'}", f"data.dataroot={user}", "trainer.max_steps=2",
                   "trainer.val_check_interval=2", "data.n_val_views=1", *TINY[recipe]])
    finally:
        os.environ.pop("THREESTUDIO_TRIAL_TIMESTAMP", None)
    assert rc == 0
    assert snapshot(str(user)) == before
    # the run trained on the user's frames (8 photos, every 8th held out: 7 training views), not a synthetic scene
    (trial,) = (tmp_path / "out").glob("*/*")
    metrics = json.loads((trial / "save" / "metrics.json").read_text())
    assert metrics["test/n_views"] == 1
    assert not (user / "transforms_train.json").exists()
    if "gaussian" in recipe and recipe == "gaussian-capture":  # distorted photos were undistorted into the cache
        assert len(list((tmp_path / "cache" / "undistorted").glob("*.png"))) == 8


def test_synthetic_scene_only_in_folders_of_ours(tmp_path):
    from threestudio.data.synthetic_scene import make_scene

    scenes = os.path.join(REPO, "load", "scenes")
    assert synthetic_scene_allowed(os.path.join(scenes, "a-scene-that-does-not-exist-yet"))
    assert not synthetic_scene_allowed(str(tmp_path / "elsewhere"))  # missing, but not ours to create
    write_user_capture(str(tmp_path / "user"))
    assert not synthetic_scene_allowed(str(tmp_path / "user"))
    make_scene(str(tmp_path / "ours"), n_train=2, n_test=1, resolution=8, supersample=1, progress=False)
    assert synthetic_scene_allowed(str(tmp_path / "ours"))  # a scene of ours may be re-rendered
    with pytest.raises(ValueError, match="is not empty and holds no synthetic scene of ours"):
        make_scene(str(tmp_path / "user"), n_train=2, n_test=1, resolution=8, progress=False)


def test_user_folder_missing_files_is_an_error_naming_them(tmp_path):
    from threestudio.data.multiview import DatasetError, MultiviewDataModule

    (tmp_path / "photos").mkdir()
    dm = MultiviewDataModule({"dataroot": str(tmp_path / "photos"),
                              "synthetic_scene": {"n_train": 2, "n_test": 1, "resolution": 8}})
    dm.prepare_data()
    assert os.listdir(tmp_path / "photos") == []
    with pytest.raises(DatasetError, match=r"holds neither transforms_train.json \(split files\) nor "
                                           r"transforms.json"):
        dm.setup("fit")
