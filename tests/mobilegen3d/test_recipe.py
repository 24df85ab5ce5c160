"""The tiny recipe through launch.py: trains a few steps on a pseudo folder written with PseudoDataWriter (with
held-out photos of the same light field), writes the evaluation outputs, and exports ONNX with --export --resume."""

import csv
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from .conftest import REPO, make_pseudo
from .test_pseudo_data import _write_photos


def _launch(args, env):
    r = subprocess.run([sys.executable, os.path.join(REPO, "launch.py"), *args], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


@pytest.mark.slow
def test_tiny_recipe_trains_evaluates_and_exports(mg, tmp_path):
    from custom.mobilegen3d.pseudo_data import PseudoData

    folder = make_pseudo(tmp_path / "pseudo", n=8, lr=(4, 6), holdout=(0, 4))
    data = PseudoData(folder)
    _write_photos(tmp_path / "cap", data.c2w(list(range(4))), 64, 96, [2 * x for x in data.intrinsics])
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    _launch(["--config", "custom/mobilegen3d/configs/tiny-cpu.yaml", "--train", f"data.dataroot={folder}",
             f"exp_root_dir={out}", f"data.photos_dataroot={tmp_path / 'cap'}", "data.photos.recenter=none",
             "data.photos.orient=none", "data.photos.camera_extent=false", "data.photos.test_every=2"], env)
    (trial,) = glob.glob(str(out / "nelf-student-tiny" / "pseudo@*"))
    ckpt = torch.load(os.path.join(trial, "ckpts", "last.ckpt"), map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 6
    assert ckpt["state_dict"]["student.lr_size"].tolist() == [4, 6]  # the camera travels with the weights
    # the MobileR2L schedule: the rate the last step used (step 5: past the 2-step warm-up, decaying)
    lr = ckpt["lr_schedulers"][0]["_last_lr"][0]
    assert abs(lr - 5e-4 * 0.1 ** ((6 - 2) / 500_000)) < 1e-9
    save = os.path.join(trial, "save")
    metrics = json.load(open(os.path.join(save, "metrics.json")))
    for key in ("test/psnr", "test/ssim", "test/psnr_photos", "test/ssim_photos", "test/frame_ms_torch"):
        assert key in metrics, key
    assert metrics["test/n_views"] == 2 and metrics["test/n_views_photos"] == 2
    # the teacher's own PSNR on the held-out photo whose camera it rendered (photo 0 = pseudo view 0)
    assert metrics["test/n_views_photos_teacher"] == 1
    from PIL import Image

    photo = torch.from_numpy(np.asarray(Image.open(tmp_path / "cap" / "images" / "000.png"), dtype=np.float32) / 255)
    photo = F.interpolate(photo.permute(2, 0, 1)[None], size=(32, 48), mode="bilinear", antialias=True,
                          align_corners=False)[0].permute(1, 2, 0).clamp(0, 1)
    mse = float(((data.rgb(0).float() - photo) ** 2).mean())
    assert abs(metrics["test/psnr_photos_teacher"] - (-10 * np.log10(mse))) < 1e-3
    rows = list(csv.DictReader(open(os.path.join(save, "psnr_vs_time.csv"))))
    assert [r["step"] for r in rows] == ["3", "6"] and all(float(r["psnr_photos"]) > 0 for r in rows)
    assert sorted(os.listdir(os.path.join(save, "it6-test"))) == ["0.png", "4.png"]
    assert os.path.isfile(os.path.join(save, "it6-test.mp4"))
    assert len(os.listdir(os.path.join(save, "it6-test-photos"))) == 2

    _launch(["--export", "--resume", trial], env)
    export = os.path.join(save, "it6-export")
    assert sorted(os.listdir(export)) == ["embedder.onnx", "intrinsics.json", "nelf_full.onnx", "sampler.onnx",
                                          "student.onnx"]
    info = json.load(open(os.path.join(export, "intrinsics.json")))
    assert (info["H"], info["W"], info["h"], info["w"], info["step"]) == (32, 48, 4, 6, 6)
    assert max(info["max_abs_diff_vs_torch"].values()) <= 1e-4
    # the exported graph renders what the trained student renders
    import onnxruntime as ort

    from custom.mobilegen3d.export import load_student_from_checkpoint

    student = load_student_from_checkpoint(os.path.join(trial, "ckpts", "last.ckpt"))
    c2w = data.c2w([4])
    (rgb,) = ort.InferenceSession(os.path.join(export, "nelf_full.onnx")).run(None, {"c2w": c2w.numpy()})
    with torch.no_grad():
        ref = student.forward_rays(*data.low_res_rays(c2w))
    assert rgb.shape == (1, 32, 48, 3) and abs(rgb - ref.numpy()).max() < 1e-4


@pytest.mark.slow
def test_resumed_run_reaches_the_same_weights(mg, tmp_path):
    """Stopped at step 3 and resumed to 6 = 6 steps in one go (data draws, perturbation, the LambdaLR schedule)."""
    folder = make_pseudo(tmp_path / "pseudo", n=5, lr=(2, 3), holdout=(0,))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    base = ["--config", "custom/mobilegen3d/configs/tiny-cpu.yaml", "--train", f"data.dataroot={folder}",
            "data.n_test_views=1", "data.n_val_views=1"]
    _launch(base + [f"exp_root_dir={tmp_path / 'a'}"], env)
    _launch(base + [f"exp_root_dir={tmp_path / 'b'}", "trainer.max_steps=3"], env)
    (trial_b,) = glob.glob(str(tmp_path / "b" / "*" / "*"))
    _launch(["--train", "--resume", trial_b, "trainer.max_steps=6"], env)
    (ckpt_a,) = glob.glob(str(tmp_path / "a" / "*" / "*" / "ckpts" / "last.ckpt"))
    a = torch.load(ckpt_a, map_location="cpu", weights_only=False)
    b = torch.load(os.path.join(trial_b, "ckpts", "last.ckpt"), map_location="cpu", weights_only=False)
    assert a["global_step"] == b["global_step"] == 6
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    assert a["lr_schedulers"][0]["_last_lr"] == b["lr_schedulers"][0]["_last_lr"]
