import json
import os

import numpy as np
import pytest
import torch

from threestudio.utils.saving import SaverMixin, read_ply_points, write_video


class Saver(SaverMixin):
    pass


@pytest.fixture
def saver(tmp_path):
    s = Saver()
    s.set_save_dir(str(tmp_path))
    return s


def test_image_grid_png_reads_back(saver, tmp_path):
    from PIL import Image

    rgb = torch.linspace(0, 1, 4 * 6 * 3).view(4, 6, 3)
    gray = torch.arange(24.0).view(4, 6)
    path = saver.save_image_grid("sub/grid.png", [{"type": "rgb", "img": rgb},
                                                  {"type": "grayscale", "img": gray, "kwargs": {"data_range": None}}])
    arr = np.asarray(Image.open(path))
    assert arr.shape == (4, 12, 3)
    expected = (rgb.numpy() * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(arr[:, :6], expected)
    assert arr[0, 6, 0] == 0 and arr[-1, -1, 0] == 255  # min/max normalised grayscale
    assert sorted(os.listdir(tmp_path / "sub")) == ["grid.png"]  # no temp files left


def test_video_mp4_frames_read_back(tmp_path):
    import imageio.v3 as iio

    frames = [np.full((17, 33, 3), i * 40, dtype=np.uint8) for i in range(5)]
    path = write_video(str(tmp_path / "v.mp4"), frames, fps=5)
    back = iio.imread(path)
    assert back.shape == (5, 18, 34, 3)  # padded to even sizes for yuv420p
    assert abs(int(back[3, 8, 8, 0]) - 120) <= 3


def test_video_falls_back_to_gif_without_ffmpeg(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name == "imageio_ffmpeg":
            raise ImportError("no ffmpeg")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    path = write_video(str(tmp_path / "v.mp4"), [np.zeros((8, 8, 3), np.uint8)] * 2)
    assert path.endswith(".gif") and os.path.isfile(path)


def test_mesh_obj_mtl_texture_and_glb_round_trip(saver):
    import trimesh

    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    f = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    uv = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], np.float32)
    tex = np.zeros((4, 4, 3), np.float32)
    tex[:2] = [1, 0, 0]  # top half red (v = 1 side)
    paths = saver.save_mesh("exp/model", v, f, v_tex=uv, t_tex_idx=f, texture=tex)
    assert [os.path.basename(p) for p in paths] == ["model.obj", "model.mtl", "model_texture_kd.png", "model.glb"]
    obj = trimesh.load(paths[0], force="mesh", process=False)
    assert np.allclose(obj.vertices, v) and obj.faces.shape == (4, 3)
    img = np.asarray(obj.visual.material.image.convert("RGB"))
    assert img[0, 0].tolist() == [255, 0, 0] and img[-1, 0].tolist() == [0, 0, 0]
    glb = trimesh.load(paths[3], force="mesh", process=False)
    assert np.allclose(glb.visual.uv, uv, atol=1e-6)
    assert np.asarray(glb.visual.material.baseColorTexture).shape[:2] == (4, 4)


def test_point_cloud_ply_round_trip(saver):
    import trimesh

    pts = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    cols = np.random.default_rng(1).uniform(size=(50, 3))
    path = saver.save_point_cloud("pc.ply", pts, colors=cols)
    back = read_ply_points(path)
    assert np.array_equal(np.stack([back["x"], back["y"], back["z"]], -1), pts)
    assert np.array_equal(back["red"], (cols[:, 0] * 255 + 0.5).astype(np.uint8))
    pc = trimesh.load(path)
    assert np.allclose(pc.vertices, pts)


def test_metrics_json_merge(saver, tmp_path):
    saver.update_metrics({"psnr": 25.0})
    saver.update_metrics({"ssim": np.float32(0.5), "psnr": torch.tensor(26.0)})
    assert json.load(open(tmp_path / "metrics.json")) == {"psnr": 26.0, "ssim": 0.5}


def test_only_rank_zero_writes(saver, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert saver.save_image("x.png", np.zeros((2, 2, 3))) is None
    assert not os.path.exists(tmp_path / "x.png")
