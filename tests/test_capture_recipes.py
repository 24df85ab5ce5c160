"""The capture recipes on a real capture (instant-ngp's fox, ../shared/data/fox), a few steps on the CPU.

They must run end to end as a user runs them (launch.py, the recipe, only the dataroot, a downscale and a shorter
schedule changed), learn something (a white or empty render of the fox scores about 5 dB), write the evaluation
files, and leave the capture folder exactly as it was.
"""

import json
import os

import pytest

from tests.data.test_data_safety import snapshot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOX = os.environ.get("THREESTUDIO_FOX") or os.path.join(os.path.dirname(REPO), "shared", "data", "fox")

needs_fox = pytest.mark.skipif(not os.path.isfile(os.path.join(FOX, "transforms.json")),
                               reason=f"the fox capture is not at {FOX} (set THREESTUDIO_FOX)")

SMALL = {
    "nerf-capture": ["data.batch_size=1024", "system.geometry.pos_encoding_config.n_levels=8",
                     "system.geometry.pos_encoding_config.log2_hashmap_size=14",
                     "system.geometry.pos_encoding_config.max_resolution=256", "system.renderer.num_samples=16",
                     "system.renderer.num_proposal_samples=[64,32]", "trainer.max_steps=80",
                     "system.scheduler.args.gamma=0.99977"],  # the recipe's decay per step at its own length
    "gaussian-capture": ["system.geometry.init_num_points=3000", "system.densify.refine_start_iter=10",
                         "system.densify.refine_every=20", "trainer.max_steps=80"],
}


@needs_fox
@pytest.mark.slow
@pytest.mark.parametrize("recipe", list(SMALL))
def test_capture_recipe_on_the_fox(tmp_path, monkeypatch, recipe):
    from threestudio.launcher import main

    before = snapshot(FOX)
    monkeypatch.setenv("THREESTUDIO_CACHE", str(tmp_path / "cache"))
    try:
        rc = main(["--config", os.path.join(REPO, "configs", f"{recipe}.yaml"), "--train", f"data.dataroot={FOX}",
                   "data.downscale=16", f"exp_root_dir={tmp_path / 'out'}", "trainer.val_check_interval=40",
                   *SMALL[recipe]])
    finally:
        os.environ.pop("THREESTUDIO_TRIAL_TIMESTAMP", None)
    assert rc == 0
    assert snapshot(FOX) == before
    (trial,) = (tmp_path / "out" / recipe).iterdir()
    metrics = json.loads((trial / "save" / "metrics.json").read_text())
    assert metrics["test/n_views"] == 7  # frames 0, 8, ..., 48 of the 50
    assert metrics["test/psnr"] > 11.0, metrics  # an empty (white) render of this scene scores about 5 dB
    assert metrics["train_time_s"] > 0
    rows = (trial / "save" / "psnr_vs_time.csv").read_text().splitlines()
    assert rows[0] == "step,train_time_s,psnr" and [int(r.split(",")[0]) for r in rows[1:]] == [40, 80]
    times = [float(r.split(",")[1]) for r in rows[1:]]
    curve = [float(r.split(",")[2]) for r in rows[1:]]
    assert curve[1] > curve[0] + 0.3, curve  # still learning: held-out PSNR rises between the validations
    # the test pass reports the training time of the last checkpoint, written just before the last validation
    assert 0 < times[0] < times[1] and abs(times[1] - metrics["train_time_s"]) < 1.0
    video = list((trial / "save").glob("it80-test.*"))
    assert video and video[0].stat().st_size > 1000
    if recipe == "gaussian-capture":
        # the photos were undistorted into the cache (43 training + 7 held-out views), not next to the photos
        assert len(list((tmp_path / "cache" / "undistorted").glob("*.png"))) == 50
        assert (trial / "save" / "it80-export" / "gaussians.ply").stat().st_size > 1000
