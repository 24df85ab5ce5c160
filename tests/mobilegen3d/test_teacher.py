"""The teacher -> pseudo data step: pseudo poses stay among the training cameras, and a trained trial's renders are
written in the student's format (held-out cameras kept apart), the trial itself untouched."""

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from .conftest import REPO


def test_pseudo_poses_stay_among_the_cameras(mg):
    from custom.mobilegen3d.teacher import pseudo_poses, student_size
    from threestudio.ops.cameras import c2w_from_spherical

    # cameras on a sphere, in a scrambled order: interpolation must follow neighbours, not the list order
    n = 40
    c2w = c2w_from_spherical(torch.linspace(-10, 60, n), torch.arange(n) * 137.5, torch.full((n,), 2.0)).double()
    c2w = c2w[torch.randperm(n, generator=torch.Generator().manual_seed(0))].numpy()
    poses = pseudo_poses(c2w, 200, jitter=0.1, jitter_deg=2.0, seed=1)
    assert poses.shape == (200, 4, 4)
    r = np.linalg.norm(poses[:, :3, 3], axis=-1)
    assert r.min() > 1.6 and r.max() < 2.4  # near the camera shell: never through the object at the centre
    for p in poses:
        R = p[:3, :3]
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-9)
        assert np.linalg.det(R) > 0
    # each pose looks roughly where its cameras look (the origin): the optical axis passes near it
    axis = -poses[:, :3, 2]
    to_origin = -poses[:, :3, 3] / r[:, None]
    assert (np.sum(axis * to_origin, -1) > 0.95).all()
    assert student_size(1080, 1920, 512, 8) == (288, 512)
    assert student_size(640, 480, 512, 8) == (512, 384)


@pytest.mark.slow
def test_make_pseudo_data_from_a_trained_trial(mg, tmp_path):
    from custom.mobilegen3d.pseudo_data import PseudoData
    from custom.mobilegen3d.teacher import load_teacher, render
    from threestudio.data.synthetic_scene import make_scene

    scene = str(tmp_path / "scene")
    make_scene(scene, n_train=8, n_test=3, resolution=32, supersample=1, progress=False)
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    r = subprocess.run([sys.executable, os.path.join(REPO, "launch.py"), "--config",
                        os.path.join(REPO, "configs", "quickstart.yaml"), "--train", f"exp_root_dir={tmp_path}/o",
                        f"data.dataroot={scene}", "data.synthetic_scene=null", "trainer.max_steps=30",
                        "trainer.val_check_interval=30", "system.export_after_train=false",
                        "trainer.enable_progress_bar=false"], cwd=str(tmp_path), env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (trial,) = [os.path.join(tmp_path, "o", "quickstart", t) for t in os.listdir(tmp_path / "o" / "quickstart")]

    def digest(folder):
        out = {}
        for dp, _, files in os.walk(folder):
            for f in files:
                with open(os.path.join(dp, f), "rb") as fh:
                    out[os.path.join(dp, f)] = hashlib.sha256(fh.read()).hexdigest()
        return out

    before = digest(trial)
    script = os.path.join(REPO, "custom", "mobilegen3d", "scripts", "make_pseudo_data.py")
    out = tmp_path / "pseudo"
    r = subprocess.run([sys.executable, script, "--teacher", trial, "--out", str(out), "--n", "5", "--long-side",
                        "32", "--device", "cpu"], cwd=str(tmp_path), env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert digest(trial) == before
    data = PseudoData(str(out))
    assert len(data) == 8 and (data.height, data.width) == (32, 32) and (data.lr_height, data.lr_width) == (4, 4)
    assert sorted(data.holdout) == [5, 6, 7]  # the 3 held-out cameras of the scene
    assert 0 < data.near < data.far
    # what was written is the teacher's render of that pose (fp16 storage)
    system, _, _ = load_teacher(trial, "cpu")
    rgb, _, _ = render(system, data.c2w(6), tuple(data.intrinsics), 32, 32)
    torch.testing.assert_close(data.rgb(6), rgb.float(), atol=2e-3, rtol=0)
    # never inside the teacher's trial
    r = subprocess.run([sys.executable, script, "--teacher", trial, "--out", os.path.join(trial, "pseudo")],
                       cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "inside the teacher's trial" in r.stderr
    assert digest(trial) == before
