"""The Magic3D recipes chain on CPU with a tiny random Stable Diffusion: the coarse NeRF trains a few steps, the
refine recipe finds that trial by itself (same prompt), converts its density into DMTet and trains a few steps with
the mesh rasterizer; without a coarse trial the refine run stops before training with a message that says why."""

import csv
import math
import os

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GRID = ["system.geometry.pos_encoding_config.n_levels=4", "system.geometry.pos_encoding_config.log2_hashmap_size=12",
        "system.geometry.pos_encoding_config.per_level_scale=1.5"]
COMMON = ["data.width=32", "data.height=32", "data.eval_width=32", "data.eval_height=32", "data.n_test_views=2",
          "trainer.log_every_n_steps=1",
          "system.guidance.image_size=64", "trainer.enable_progress_bar=false", *GRID]


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    from threestudio.utils.weights import save_random_stable_diffusion

    return save_random_stable_diffusion(str(tmp_path_factory.mktemp("tiny-sd")), preset="tiny", seed=0)


def launch(args, monkeypatch, tmp_path):
    from threestudio.launcher import main

    monkeypatch.setenv("THREESTUDIO_CACHE", str(tmp_path / "ts-cache"))
    monkeypatch.delenv("THREESTUDIO_TRIAL_TIMESTAMP", raising=False)
    try:
        return main(args)
    finally:
        os.environ.pop("THREESTUDIO_TRIAL_TIMESTAMP", None)


def losses(trial, name):
    rows = [r for r in csv.DictReader(open(trial / "csv_logs" / "metrics.csv")) if r.get(f"train/loss_{name}")]
    return [float(r[f"train/loss_{name}"]) for r in rows]


def test_magic3d_coarse_then_refine_chain(tiny_sd, tmp_path, monkeypatch):
    out = tmp_path / "out"
    prompt = ["system.prompt_processor.prompt=a red car", f"exp_root_dir={out}",
              f"system.prompt_processor.pretrained_model_name_or_path={tiny_sd}"]
    rc = launch(["--config", os.path.join(REPO, "configs", "magic3d-coarse-sd.yaml"), "--train", *prompt, *COMMON,
                 "system.renderer.num_samples_per_ray=64", "system.renderer.occ_grid_resolution=16",
                 "trainer.max_steps=4", "trainer.val_check_interval=4"], monkeypatch, tmp_path)
    assert rc == 0
    (coarse,) = (out / "magic3d-coarse-sd").iterdir()
    assert coarse.name.startswith("a_red_car@") and len(losses(coarse, "sds")) == 4
    # a second coarse trial of another prompt must not be picked by the refine run
    other = out / "magic3d-coarse-sd" / "a_blue_bus@29990101-000000"
    (other / "ckpts").mkdir(parents=True)
    (other / "ckpts" / "last.ckpt").write_bytes(b"not a checkpoint")

    rc = launch(["--config", os.path.join(REPO, "configs", "magic3d-refine-sd.yaml"), "--train", *prompt, *COMMON,
                 "system.geometry.isosurface_resolution=32", "system.renderer.backend=torch",
                 "trainer.max_steps=3", "trainer.val_check_interval=3"], monkeypatch, tmp_path)
    assert rc == 0
    (refine,) = (out / "magic3d-refine-sd").iterdir()
    sds = losses(refine, "sds")
    assert len(sds) == 3 and all(math.isfinite(v) for v in sds)
    nc = losses(refine, "normal_consistency")
    assert len(nc) == 3 and 0 < nc[0] < 1
    ckpt = torch.load(refine / "ckpts" / "last.ckpt", weights_only=False)
    sdf = ckpt["state_dict"]["geometry.sdf"]
    assert sdf.shape == (17**3,) and bool((sdf < 0).any()) and bool((sdf > 0).any())  # a non-empty surface
    from PIL import Image
    import numpy as np

    img = np.asarray(Image.open(refine / "save" / "it3-0.png"))
    assert img.shape == (32, 32 * 3, 3)
    opacity = img[:, 64:, 0]
    assert opacity.max() > 200 and opacity.min() < 50  # the converted shape covers part of the view
    assert sorted(os.listdir(refine / "save" / "it3-test")) == ["0.png", "1.png"]


def test_refine_without_a_coarse_trial_stops_with_a_message(tiny_sd, tmp_path, monkeypatch, caplog):
    import logging

    # the 'threestudio' logger stops propagating to the root once launch.py has set up logging in this process
    logger = logging.getLogger("threestudio")
    logger.addHandler(caplog.handler)
    try:
        rc = launch(["--config", os.path.join(REPO, "configs", "magic3d-refine-sd.yaml"), "--train",
                     "system.prompt_processor.prompt=a red car", f"exp_root_dir={tmp_path / 'empty'}",
                     f"system.prompt_processor.pretrained_model_name_or_path={tiny_sd}", *COMMON,
                     "system.geometry.isosurface_resolution=16", "trainer.max_steps=1"], monkeypatch, tmp_path)
    finally:
        logger.removeHandler(caplog.handler)
    assert rc == 2
    text = caplog.text
    assert "system.geometry_convert_from" in text and "no trial of the earlier stage" in text
    assert "magic3d-coarse-sd.yaml" in text
