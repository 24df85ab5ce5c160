"""The text-to-3D recipes train 20 steps on CPU with a tiny random Stable Diffusion, through launch.py's code path,
write validation images and the turntable video, and export a textured mesh."""

import csv
import math
import os

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SMALL = [
    "data.width=32", "data.height=32", "data.eval_width=32", "data.eval_height=32", "data.n_test_views=4",
    "system.geometry.pos_encoding_config.n_levels=4", "system.geometry.pos_encoding_config.log2_hashmap_size=12",
    "system.geometry.pos_encoding_config.start_level=2", "system.renderer.num_samples_per_ray=64",
    "system.renderer.occ_grid_resolution=16", "system.guidance.image_size=64",
    "trainer.max_steps=20", "trainer.val_check_interval=10", "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
]


def launch(args, monkeypatch):
    from threestudio.launcher import main

    monkeypatch.delenv("THREESTUDIO_TRIAL_TIMESTAMP", raising=False)
    try:
        return main(args)
    finally:
        os.environ.pop("THREESTUDIO_TRIAL_TIMESTAMP", None)


def read_png(path):
    from PIL import Image

    return np.asarray(Image.open(path))


@pytest.mark.parametrize("recipe,loss,extra", [
    ("dreamfusion-sd", "sds", []),
    ("asd-sd-nerf", "asd", ["data.width=[32,48]", "data.height=[32,48]", "data.resolution_milestones=[10]",
                            "system.guidance.min_step_percent=[0,0.5,0.02,20]",
                            "system.guidance.max_step_percent=[0,0.98,0.5,20]"]),
])
def test_recipe_trains_20_steps_and_writes_images(recipe, loss, extra, tiny_sd, tmp_path, monkeypatch):
    out = tmp_path / "out"
    rc = launch(["--config", os.path.join(REPO, "configs", f"{recipe}.yaml"), "--train",
                 "system.prompt_processor.prompt=a red car", f"exp_root_dir={out}",
                 f"system.prompt_processor.pretrained_model_name_or_path={tiny_sd}", *SMALL, *extra], monkeypatch)
    assert rc == 0
    (trial,) = (out / recipe).iterdir()
    assert trial.name.startswith("a_red_car@")
    save = trial / "save"
    panels = 3 if recipe == "dreamfusion-sd" else 2  # rgb | normal | opacity; no normals without shading
    for step in (10, 20):
        img = read_png(save / f"it{step}-0.png")
        assert img.shape == (32, 32 * panels, 3)
    assert img.std() > 0
    assert sorted(os.listdir(save / "it20-test")) == ["0.png", "1.png", "2.png", "3.png"]
    import imageio.v3 as iio

    assert iio.imread(save / "it20-test.mp4").shape[0] == 4
    rows = [r for r in csv.DictReader(open(trial / "csv_logs" / "metrics.csv")) if r.get(f"train/loss_{loss}")]
    assert len(rows) == 20
    assert all(math.isfinite(float(r[f"train/loss_{loss}"])) for r in rows)
    assert (trial / "ckpts" / "last.ckpt").is_file()

    if recipe == "dreamfusion-sd":  # --export: the textured mesh from the trial, without loading any guidance
        rc = launch(["--export", "--resume", str(trial), "system.exporter.texture_size=64",
                     "system.geometry.isosurface_resolution=32", "system.geometry.isosurface_threshold=auto",
                     "trainer.enable_progress_bar=false"], monkeypatch)
        assert rc == 0
        import trimesh

        mesh = trimesh.load(save / "it20-export" / "model.glb", force="mesh")
        assert len(mesh.faces) > 0 and mesh.visual.uv.shape == (len(mesh.vertices), 2)
