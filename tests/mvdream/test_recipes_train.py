"""Each MVDream recipe trains 20 steps through launch.py on CPU with a tiny random MVDream checkpoint (written in
sd-v2.1-base-4view.pt's layout and loaded through the real path), writes validation images, the test turntable and
checkpoints."""

import csv
import math
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TINY = ["system.guidance.image_size=32", "data.width=[16,16]", "data.height=[16,16]", "data.resolution_milestones=[10]",
        "data.n_val_views=2", "data.n_test_views=2", "data.eval_height=16", "data.eval_width=16",
        "system.renderer.num_samples_per_ray=16", "system.geometry.pos_encoding_config.n_levels=2",
        "system.geometry.pos_encoding_config.log2_hashmap_size=10", "trainer.max_steps=20",
        "trainer.log_every_n_steps=1", "trainer.val_check_interval=10"]
RECIPES = {
    "mvdream-sd21": ("loss_sds", []),
    # switch the orientation and opacity losses on at step 10 (the recipe does at 10k)
    "asd-mv-nerf": ("loss_asd", ["system.loss.lambda_orient=[10,0.0,100.0,11]",
                                 "system.loss.lambda_opaque=[10,0.0,100.0,11]"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_trains_on_cpu(recipe, tiny_mvdream, tmp_path):
    loss_key, extra = RECIPES[recipe]
    env = dict(os.environ, THREESTUDIO_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)
    out = tmp_path / "out"
    cmd = [sys.executable, os.path.join(REPO, "launch.py"), "--config", os.path.join(REPO, "configs", recipe + ".yaml"),
           "--train", f"exp_root_dir={out}", "system.prompt_processor.prompt=a wooden chair",
           f"system.prompt_processor.pretrained_model_name_or_path={tiny_mvdream.ckpt}",
           f"system.prompt_processor.tokenizer_name_or_path={tiny_mvdream.tokenizer}", *TINY, *extra]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    (trial,) = (out / recipe).iterdir()
    save = trial / "save"
    from PIL import Image

    for step in (10, 20):
        for i in range(2):
            img = np.asarray(Image.open(save / f"it{step}-{i}.png"))
            assert img.shape[0] == 16 and img.shape[1] >= 32 and img.std() > 0  # rgb | (normal |) opacity
    assert (save / "it20-test.mp4").stat().st_size > 500
    assert (trial / "ckpts" / "last.ckpt").is_file()
    rows = list(csv.DictReader(open(trial / "csv_logs" / "metrics.csv")))
    losses = [float(r[f"train/{loss_key}"]) for r in rows if r.get(f"train/{loss_key}")]
    assert len(losses) == 20 and all(math.isfinite(v) for v in losses)
    if recipe == "asd-mv-nerf":
        orient = [float(r["train/loss_orient"]) for r in rows if r.get("train/loss_orient")]
        assert orient and all(math.isfinite(v) for v in orient)
