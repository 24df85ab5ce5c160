"""The README's first command, at reduced size: scene generation, reconstruction, held-out PSNR, video, export."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_quickstart_reaches_psnr_and_exports(tmp_path):
    scene = tmp_path / "scene"
    from threestudio.data.synthetic_scene import make_scene

    make_scene(str(scene), n_train=48, n_test=6, resolution=64, progress=False)
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, os.path.join(REPO, "launch.py"), "--config", os.path.join(REPO, "configs/quickstart.yaml"),
           "--train", f"exp_root_dir={tmp_path / 'out'}", f"data.dataroot={scene}",
           "data.synthetic_scene={n_train: 48, n_test: 6, resolution: 64}", "trainer.max_steps=250",
           "trainer.val_check_interval=250", "system.exporter.texture_size=128", "system.exporter.max_faces=5000"]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (trial,) = (tmp_path / "out" / "quickstart").iterdir()
    metrics = json.loads((trial / "save" / "metrics.json").read_text())
    assert metrics["test/n_views"] == 6
    assert metrics["test/psnr"] > 24.0, metrics
    assert metrics["test/ssim"] > 0.85, metrics
    assert (trial / "save" / "it250-test.mp4").stat().st_size > 1000
    import trimesh

    mesh = trimesh.load(trial / "save" / "it250-export" / "model.glb", force="mesh")
    assert len(mesh.faces) > 500 and mesh.visual.uv.shape == (len(mesh.vertices), 2)
    assert mesh.visual.material.baseColorTexture.size == (128, 128)
