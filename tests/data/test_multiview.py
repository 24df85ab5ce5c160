"""The ``multiview`` data module: round trips through transforms files in both layouts, rays, batches, errors."""

import json
import logging
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

import threestudio
from threestudio.data.multiview import DatasetError, MultiviewDataModule
from threestudio.ops.cameras import c2w_from_spherical, project_points

W, H = 32, 24
FX, FY, CX, CY = 30.0, 28.0, 15.5, 12.5  # (15.5, 12.5) is the centre of pixel (col 15, row 12)


def _cameras(n):
    """Cameras on a sphere of radius 3 around the origin, looking at it."""
    elev = torch.linspace(-20.0, 60.0, n)
    azim = torch.arange(n, dtype=torch.float32) * (360.0 / n)
    return c2w_from_spherical(elev, azim, torch.full((n,), 3.0)).numpy().astype(np.float64)


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, size=(n, H, W, 4), dtype=np.uint8)
    imgs[:, :4, :, 3] = 0  # fully transparent rows
    imgs[:, 4:8, :, 3] = 255  # opaque rows
    return imgs


def _write_png(path, arr):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path)


def _frame(i, c2w, name):
    return {"file_path": name, "transform_matrix": c2w[i].tolist()}


def write_nerfstudio(root, n=6, extra=None, frame_extra=None):
    """One transforms.json with fl_x/fl_y/cx/cy/w/h; returns (c2w [n,4,4], images [n,H,W,4])."""
    c2w, imgs = _cameras(n), _images(n)
    frames = []
    for i in range(n):
        _write_png(os.path.join(root, "images", f"f{i}.png"), imgs[i])
        frames.append(_frame(i, c2w, f"images/f{i}.png"))
        frames[-1].update((frame_extra or {}).get(i, {}))
    data = {"fl_x": FX, "fl_y": FY, "cx": CX, "cy": CY, "w": W, "h": H, "camera_model": "OPENCV", "frames": frames,
            "applied_transform": np.eye(4)[:3].tolist(), "scene_radius": 0.8}
    data.update(extra or {})
    with open(os.path.join(root, "transforms.json"), "w") as f:
        json.dump(data, f)
    return c2w, imgs


def write_blender(root, n_train=4, n_test=3, angle_x=0.9):
    """Blender split files with camera_angle_x only and extension-less file paths (no val file)."""
    c2w, imgs = _cameras(n_train + n_test), _images(n_train + n_test, seed=1)
    for split, ids in (("train", range(n_train)), ("test", range(n_train, n_train + n_test))):
        frames = []
        for i in ids:
            _write_png(os.path.join(root, split, f"r_{i}.png"), imgs[i])
            frames.append(_frame(i, c2w, f"./{split}/r_{i}"))
        with open(os.path.join(root, f"transforms_{split}.json"), "w") as f:
            json.dump({"camera_angle_x": angle_x, "frames": frames}, f)
    return c2w, imgs


def composite(img_u8, bg):
    a = img_u8[..., 3:].astype(np.float64) / 255.0
    return img_u8[..., :3].astype(np.float64) / 255.0 * a + np.asarray(bg, dtype=np.float64) * (1 - a)


def make_dm(root, **kw):
    torch.manual_seed(kw.pop("torch_seed", 0))
    cfg = {"dataroot": str(root), "batch_size": 512, "test_every": 3, **kw}
    return MultiviewDataModule(cfg)


# ------------------------------------------------------------------------------------------------ round trips
def test_registered():
    assert threestudio.find("multiview", "data") is MultiviewDataModule


def test_nerfstudio_intrinsics_poses_and_rays(tmp_path):
    c2w, imgs = write_nerfstudio(tmp_path)
    dm = make_dm(tmp_path, n_test_views=0)
    dm.setup("test")
    test = list(dm.test_dataloader())
    # test_every=3 holds out frames 0 and 3
    assert [b["index"] for b in test] == [0, 1]
    for b, frame in zip(test, (0, 3)):
        assert (b["height"], b["width"]) == (H, W)
        torch.testing.assert_close(b["intrinsics"], torch.tensor([[FX, FY, CX, CY]]))
        np.testing.assert_allclose(b["c2w"][0].numpy(), c2w[frame], atol=1e-6)
        assert b["fovy"].item() == pytest.approx(math.degrees(2 * math.atan(H / 2 / FY)), rel=1e-5)
        assert b["rays_o"].shape == (1, H, W, 3) and b["rgb"].shape == (1, H, W, 3)
        assert b["mask"].shape == (1, H, W, 1)
        np.testing.assert_allclose(b["rgb"][0].numpy(), composite(imgs[frame], (1, 1, 1)), atol=1e-6)
        np.testing.assert_allclose(b["mask"][0, ..., 0].numpy(), imgs[frame][..., 3] / 255.0, atol=1e-6)
        torch.testing.assert_close(b["rays_d"].norm(dim=-1), torch.ones(1, H, W))
        # the principal point is the centre of pixel (15, 12): its ray is the optical axis, through the origin
        o, d = b["rays_o"][0, 12, 15].double().numpy(), b["rays_d"][0, 12, 15].double().numpy()
        assert np.linalg.norm(np.cross(-o, d)) < 1e-5 and (-o) @ d > 0
        # a known point X: put it on pixel (col 5, row 20) at depth 1.7 by hand, then read that pixel's ray
        R, t = c2w[frame][:3, :3], c2w[frame][:3, 3]
        u, v = 5.5, 20.5
        X = t + 1.7 * (R @ np.array([(u - CX) / FX, -(v - CY) / FY, -1.0]))
        o, d = b["rays_o"][0, 20, 5].double().numpy(), b["rays_d"][0, 20, 5].double().numpy()
        s = (X - o) @ d
        assert np.linalg.norm(o + s * d - X) < 1e-5
        # and the projection matrix maps X back to that pixel (principal point included)
        uv, _ = project_points(torch.tensor(X, dtype=torch.float32)[None, None], b["mvp_mtx"], H, W)
        torch.testing.assert_close(uv[0, 0], torch.tensor([u, v]), atol=1e-3, rtol=0)
    info = dm.scene_info
    assert info["layout"] == "single" and info["n_train"] == 4 and info["n_test"] == 2
    assert info["radius"] == pytest.approx(0.8) and info["camera_distance"] == pytest.approx(3.0, rel=1e-5)
    torch.testing.assert_close(info["bbox"], torch.tensor([[-0.8] * 3, [0.8] * 3]))
    assert np.asarray(info["applied_transform"]).shape == (3, 4)


def _pixel_of(ray_d, c2w):
    """(col, row) of the pixel whose centre ray has direction ray_d (inverse pinhole, by hand)."""
    xc = c2w[:3, :3].T @ ray_d
    u = CX + FX * xc[0] / -xc[2]
    v = CY - FY * xc[1] / -xc[2]
    return u, v


@pytest.mark.parametrize("background", ["white", "black", "random"])
def test_train_batches_match_images(tmp_path, background):
    c2w, imgs = write_nerfstudio(tmp_path)
    dm = make_dm(tmp_path, background=background)
    dm.setup("fit")
    train_frames = [1, 2, 4, 5]
    b = dm.draw_train_batch(torch.device("cpu"))
    n = 512
    assert b["rays_o"].shape == (n, 3) and b["rays_d"].shape == (n, 3) and b["rgb"].shape == (n, 3)
    assert b["mask"].shape == (n, 1) and b["bg_color"].shape == (n, 3)
    torch.testing.assert_close(b["rays_d"].norm(dim=-1), torch.ones(n))
    if background == "random":
        assert b["bg_color"].std() > 0.1
    else:
        assert (b["bg_color"] == (1.0 if background == "white" else 0.0)).all()
    seen = set()
    for k in range(n):
        frame = train_frames[int(b["image_index"][k])]
        np.testing.assert_allclose(b["rays_o"][k].numpy(), c2w[frame][:3, 3], atol=1e-6)
        u, v = _pixel_of(b["rays_d"][k].double().numpy(), c2w[frame])
        col, row = int(math.floor(u)), int(math.floor(v))
        assert abs(u - col - 0.5) < 1e-3 and abs(v - row - 0.5) < 1e-3  # a pixel centre
        img = imgs[frame][row, col]
        want = composite(img[None], b["bg_color"][k].double().numpy())[0]
        np.testing.assert_allclose(b["rgb"][k].numpy(), want, atol=2e-3)  # pixels are stored as float16
        assert b["mask"][k, 0].item() == pytest.approx(img[3] / 255.0, abs=1e-3)
        seen.add((frame, row, col))
    assert len({s[0] for s in seen}) == 4 and len(seen) > 400  # spread over all pixels of all train images


def test_batches_deterministic_and_resumable(tmp_path):
    write_nerfstudio(tmp_path)
    a, b = make_dm(tmp_path, background="random"), make_dm(tmp_path, background="random")
    a.setup("fit")
    b.setup("fit")
    a1, b1 = a.draw_train_batch("cpu"), b.draw_train_batch("cpu")
    for k in a1:
        torch.testing.assert_close(a1[k], b1[k])
    state = a.state_dict()
    a2 = a.draw_train_batch("cpu")
    assert not torch.equal(a2["rays_d"], a1["rays_d"])
    b.load_state_dict(state)
    b2 = b.draw_train_batch("cpu")
    for k in a2:
        torch.testing.assert_close(a2[k], b2[k])
    c = make_dm(tmp_path, background="random", torch_seed=1)
    c.setup("fit")
    assert not torch.equal(c.draw_train_batch("cpu")["rays_d"], a1["rays_d"])


def test_blender_split_layout(tmp_path):
    c2w, imgs = write_blender(tmp_path, angle_x=0.9)
    dm = make_dm(tmp_path, n_val_views=2, n_test_views=0)
    dm.setup("fit")
    dm.setup("test")
    info = dm.scene_info
    assert info["layout"] == "splits" and (info["n_train"], info["n_val"], info["n_test"]) == (4, 3, 3)
    assert info["radius"] is None and info["bbox"] is None
    val, test = list(dm.val_dataloader()), list(dm.test_dataloader())
    assert len(val) == 2 and len(test) == 3  # no val file: validation uses 2 evenly spread test views
    f = 0.5 * W / math.tan(0.45)
    torch.testing.assert_close(test[0]["intrinsics"], torch.tensor([[f, f, W / 2, H / 2]]))
    np.testing.assert_allclose(test[2]["c2w"][0].numpy(), c2w[6], atol=1e-6)
    np.testing.assert_allclose(val[1]["c2w"][0].numpy(), c2w[6], atol=1e-6)
    np.testing.assert_allclose(test[1]["rgb"][0].numpy(), composite(imgs[5], (1, 1, 1)), atol=1e-6)
    assert dm._train["pixels"].shape == (4 * H * W, 4)


def test_filenames_lists_masks_and_downscale(tmp_path):
    c2w, imgs = write_nerfstudio(
        tmp_path, extra={"train_filenames": ["images/f0.png", "images/f2.png"], "test_filenames": ["images/f5.png"]},
        frame_extra={5: {"mask_path": "masks/m5.png"}})
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[10:20, 4:12] = 255
    _write_png(os.path.join(tmp_path, "masks", "m5.png"), mask)
    dm = make_dm(tmp_path, downscale=2, eval_downscale=1, background="black")
    dm.setup("fit")
    dm.setup("test")
    info = dm.scene_info
    assert (info["n_train"], info["n_val"], info["n_test"]) == (2, 1, 1)
    t = dm._train
    assert t["pixels"].shape == (2 * (H // 2) * (W // 2), 4)
    # area downscale of premultiplied colours: the 2x2 block average
    a = imgs[0].astype(np.float64) / 255.0
    pm = np.concatenate([a[..., :3] * a[..., 3:], a[..., 3:]], -1)
    block = pm.reshape(H // 2, 2, W // 2, 2, 4).mean(axis=(1, 3))
    np.testing.assert_allclose(t["pixels"][: (H // 2) * (W // 2)].float().numpy().reshape(H // 2, W // 2, 4),
                               block, atol=1e-3)
    (b,) = list(dm.test_dataloader())
    # the mask replaces the image's alpha; black background: rgb = straight colour * mask
    np.testing.assert_allclose(b["mask"][0, ..., 0].numpy(), mask / 255.0)
    want = imgs[5][..., :3] / 255.0 * (mask[..., None] / 255.0)
    np.testing.assert_allclose(b["rgb"][0].numpy(), want, atol=1e-6)
    # downscaled training intrinsics: a train ray through a half-res pixel centre
    d = t["rays_d"][(H // 2) * (W // 2) + 3 * (W // 2) + 7].double().numpy()  # image 1 (f2), row 3, col 7
    xc = c2w[2][:3, :3].T @ d
    assert CX / 2 + FX / 2 * xc[0] / -xc[2] == pytest.approx(7.5, abs=1e-4)
    assert CY / 2 - FY / 2 * xc[1] / -xc[2] == pytest.approx(3.5, abs=1e-4)


def test_recenter_and_camera_radius(tmp_path):
    c2w, _ = write_nerfstudio(tmp_path)
    shift = np.array([1.0, -2.0, 0.5])
    with open(os.path.join(tmp_path, "transforms.json")) as f:
        data = json.load(f)
    for fr in data["frames"]:
        m = np.asarray(fr["transform_matrix"])
        m[:3, 3] += shift
        fr["transform_matrix"] = m.tolist()
    data["scene_center"] = shift.tolist()
    with open(os.path.join(tmp_path, "transforms.json"), "w") as f:
        json.dump(data, f)
    dm = make_dm(tmp_path, recenter="focus", camera_radius=1.5)
    info = dm.scene_info
    np.testing.assert_allclose(info["center"], shift, atol=1e-6)  # all cameras look at the shifted origin
    assert info["scale"] == pytest.approx(0.5, rel=1e-5) and info["camera_distance"] == pytest.approx(1.5)
    assert info["radius"] == pytest.approx(0.4, rel=1e-5)
    dm.setup("test")
    b = list(dm.test_dataloader())[0]
    np.testing.assert_allclose(b["c2w"][0, :3, 3].numpy(), c2w[0][:3, 3] * 0.5, atol=1e-5)
    dm2 = make_dm(tmp_path, recenter="cameras", scene_scale=2.0)
    assert dm2.scene_info["scale"] == 2.0
    np.testing.assert_allclose(dm2.scene_info["center"], c2w[[1, 2, 4, 5], :3, 3].mean(0) + shift, atol=1e-6)


def test_synthetic_scene_round_trip(tmp_path):
    """The generator's dataset through the loader: tracing the loader's rays reproduces the images' alpha."""
    from threestudio.data.synthetic_scene import default_primitives, render_rays, Light, make_scene

    make_scene(str(tmp_path), n_train=2, n_test=1, resolution=24, supersample=1, progress=False)
    dm = make_dm(tmp_path, n_test_views=0)
    assert dm.scene_info["radius"] == pytest.approx(0.7, abs=0.05)
    dm.setup("test")
    (b,) = list(dm.test_dataloader())
    _, hit = render_rays(default_primitives(0), b["rays_o"].reshape(-1, 3), b["rays_d"].reshape(-1, 3), Light())
    torch.testing.assert_close(hit.float().view(24, 24), b["mask"][0, ..., 0])


def test_dataroot_relative_to_repo(tmp_path, monkeypatch):
    from threestudio.utils import extensions

    write_nerfstudio(tmp_path / "ds")
    monkeypatch.setattr(extensions, "REPO_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path / "ds")
    assert make_dm("ds").scene_info["root"] == str(tmp_path / "ds")


# ------------------------------------------------------------------------------------------------ errors
def _edit(root, fn):
    p = os.path.join(root, "transforms.json")
    with open(p) as f:
        data = json.load(f)
    fn(data)
    with open(p, "w") as f:
        json.dump(data, f)
    return p


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("frames"), "field 'frames' is missing"),
    (lambda d: d["frames"][3].pop("transform_matrix"), "frames[3] has no 'transform_matrix'"),
    (lambda d: d["frames"][2].pop("file_path"), "frames[2] has no 'file_path'"),
    (lambda d: d["frames"][1].update(transform_matrix=np.eye(3).tolist()),
     "frames[1].transform_matrix must be a 4x4 (or 3x4) matrix, got shape (3, 3)"),
    (lambda d: d["frames"][4].update(file_path="images/nope.png"), "frames[4].file_path: image file not found"),
    (lambda d: d.update(fl_x="thirty"), "fl_x must be a finite number"),
    (lambda d: d.pop("fl_x"), "frames[0]: no focal length: give 'fl_x'"),
    (lambda d: d.update(camera_model="EQUIRECTANGULAR"), "camera_model 'EQUIRECTANGULAR' is not supported"),
    (lambda d: d.update(camera_model="OPENCV_FISHEYE", p1=0.01), "OPENCV_FISHEYE model has no tangential terms"),
    (lambda d: d["frames"][2].update(mask_path="masks/none.png"), "frames[2].mask_path: image file not found"),
    (lambda d: d.update(train_filenames=["images/zzz.png"]), "train_filenames[0]='images/zzz.png'"),
])
def test_malformed_file_errors(tmp_path, edit, message):
    write_nerfstudio(tmp_path)
    path = _edit(tmp_path, edit)
    with pytest.raises(DatasetError) as e:
        make_dm(tmp_path).setup("fit")
    assert message in str(e.value) and path in str(e.value)


def test_size_mismatch_and_bad_json(tmp_path):
    write_nerfstudio(tmp_path)
    path = _edit(tmp_path, lambda d: d["frames"][4].update(w=64))
    with pytest.raises(DatasetError, match=r"frames\[4\].file_path: image .*f4.png is 32x24 \(w x h\) but the file "
                                           r"says w=64"):
        make_dm(tmp_path).setup("fit")
    assert path.endswith("transforms.json")
    with open(path, "w") as f:
        f.write("{not json")
    with pytest.raises(DatasetError, match=r"transforms.json: not valid JSON"):
        make_dm(tmp_path).scene_info


def test_distortion_ignore_or_error(tmp_path, caplog):
    write_nerfstudio(tmp_path, extra={"k1": 0.05})
    with pytest.raises(DatasetError, match=r"frames\[0\]: distortion k1=0.05 is not applied .* set "
                                           r"data.distortion=apply"):
        make_dm(tmp_path, distortion="error").scene_info
    logger = logging.getLogger("threestudio")  # may not propagate to the root logger (setup_logging)
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level("WARNING", logger="threestudio"):
            assert make_dm(tmp_path, distortion="ignore").scene_info["n_train"] == 4
            assert "k1=0.05 is not applied" in caplog.text
            caplog.clear()
            assert make_dm(tmp_path).scene_info["n_train"] == 4  # apply (the default): no warning
            assert "not applied" not in caplog.text
    finally:
        logger.removeHandler(caplog.handler)


def test_missing_dataroot_and_bad_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError) as e:
        make_dm("no/such/scene").scene_info
    msg = str(e.value)
    assert "data.dataroot='no/such/scene' not found" in msg
    assert "relative to the current directory" in msg and "relative to the repository root" in msg
    assert os.path.join(str(tmp_path), "no/such/scene") in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds neither transforms_train.json .* nor transforms.json"):
        make_dm(tmp_path / "empty").scene_info
    with pytest.raises(DatasetError, match=r"data.background='grey' is invalid .* use one of white, black, random"):
        make_dm(tmp_path, background="grey")
    with pytest.raises(DatasetError, match=r"data.recenter='middle'"):
        make_dm(tmp_path, recenter="middle")


# ------------------------------------------------------------------------------------------------ captures
def test_orient_up_and_camera_extent(tmp_path):
    c2w, _ = write_nerfstudio(tmp_path)
    # tilt the whole capture: rotate the world by 40 degrees about x and shift it
    a = math.radians(40.0)
    Rw = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    with open(os.path.join(tmp_path, "transforms.json")) as f:
        data = json.load(f)
    for fr in data["frames"]:
        m = np.asarray(fr["transform_matrix"])
        m[:3, :3] = Rw @ m[:3, :3]
        m[:3, 3] = Rw @ m[:3, 3] + np.array([3.0, 1.0, -2.0])
        fr["transform_matrix"] = m.tolist()
    with open(os.path.join(tmp_path, "transforms.json"), "w") as f:
        json.dump(data, f)
    dm = make_dm(tmp_path, recenter="cameras", orient="up", camera_extent=True)
    dm.setup("fit")
    recs = dm._parse()["splits"]["train"]
    mapped = torch.stack([dm._c2w(r) for r in recs]).double().numpy()
    # mean camera position at the origin, mean up vector along +z, largest |coordinate| 1, rotations orthonormal
    np.testing.assert_allclose(mapped[:, :3, 3].mean(0), 0.0, atol=1e-6)
    up = mapped[:, :3, 1].mean(0)
    np.testing.assert_allclose(up / np.linalg.norm(up), [0, 0, 1], atol=1e-6)
    assert np.abs(mapped[:, :3, 3]).max() == pytest.approx(1.0, abs=1e-6)
    for m in mapped:
        np.testing.assert_allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3), atol=1e-6)
    # a rigid map up to scale: distances between cameras keep their ratios
    src = c2w[[1, 2, 4, 5], :3, 3]
    d_src = np.linalg.norm(src[0] - src[1]) / np.linalg.norm(src[2] - src[3])
    d_new = np.linalg.norm(mapped[0, :3, 3] - mapped[1, :3, 3]) / np.linalg.norm(mapped[2, :3, 3] - mapped[3, :3, 3])
    assert d_new == pytest.approx(d_src, rel=1e-5)
    # points map like the cameras: a camera centre given as a point lands on the mapped camera
    p = dm.to_module_frame(np.asarray(data["frames"][1]["transform_matrix"])[:3, 3][None])
    np.testing.assert_allclose(p[0], mapped[0, :3, 3], atol=1e-5)
    info = dm.scene_info
    assert info["camera_extent"] == pytest.approx(float(np.linalg.norm(mapped[:, :3, 3], axis=-1).max()), rel=1e-5)


DIST = {"k1": 0.25, "k2": -0.05, "p1": 0.004, "p2": -0.003}


def test_distorted_rays_land_on_their_pixels(tmp_path):
    """With distortion: project a pixel's ray back through the lens model (closed-form distortion) and land on the
    pixel's centre; the training rays carry the same directions."""
    from threestudio.ops.distortion import distort

    c2w, _ = write_nerfstudio(tmp_path, extra=DIST)
    dm = make_dm(tmp_path, n_test_views=0)
    dm.setup("test")
    b = list(dm.test_dataloader())[1]  # frame 3
    R = c2w[3][:3, :3]
    d = b["rays_d"][0].double().numpy() @ R  # camera space [H, W, 3]
    xy = torch.from_numpy(np.stack([d[..., 0] / -d[..., 2], -d[..., 1] / -d[..., 2]], -1))
    params = torch.tensor([DIST["k1"], DIST["k2"], 0.0, 0.0, DIST["p1"], DIST["p2"]], dtype=torch.float64)
    xd = distort(xy, params, "opencv").numpy()
    u, v = xd[..., 0] * FX + CX, xd[..., 1] * FY + CY
    cols, rows = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    np.testing.assert_allclose(u, cols, atol=1e-4)
    np.testing.assert_allclose(v, rows, atol=1e-4)
    # and the distortion matters: a pinhole reading of the corner ray is more than a pixel off
    assert abs(d[0, 0, 0] / -d[0, 0, 2] * FX + CX - 0.5) > 1.0
    dm.setup("fit")
    t = dm._train
    first = t["rays_d"][t["image_index"] == 0].reshape(H, W, 3).double().numpy() @ c2w[1][:3, :3]
    np.testing.assert_allclose(first[0, 0] / -first[0, 0, 2], d[0, 0] / -d[0, 0, 2], atol=1e-5)


def test_images_module_undistorts_once_into_the_cache(tmp_path, monkeypatch):
    from threestudio.data.multiview_images import MultiviewImagesDataModule
    from threestudio.ops.distortion import undistorted_intrinsics

    monkeypatch.setenv("THREESTUDIO_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "capture"
    root.mkdir()
    c2w, imgs = write_nerfstudio(root, extra=DIST)
    listing = sorted(os.listdir(root / "images"))
    dm = MultiviewImagesDataModule({"dataroot": str(root), "test_every": 3})
    dm.setup("fit")
    cached = sorted((tmp_path / "cache" / "undistorted").glob("*.png"))
    assert len(cached) == 5  # 4 training views + 1 validation view (n_val_views: 1)
    assert sorted(os.listdir(root / "images")) == listing
    params = torch.tensor([DIST["k1"], DIST["k2"], 0, 0, DIST["p1"], DIST["p2"]], dtype=torch.float64)
    fx, fy, cx, cy, w, h = undistorted_intrinsics(H, W, FX, FY, CX, CY, params)
    v = dm._views[0]
    assert (v.width, v.height) == (w, h) and v.distortion is None
    assert (v.fx, v.fy, v.cx, v.cy) == pytest.approx((fx, fy, cx, cy))
    # a second module reads the cache: same pixels, no new files, and nothing re-rendered (mtimes unchanged)
    mtimes = [p.stat().st_mtime_ns for p in cached]
    dm2 = MultiviewImagesDataModule({"dataroot": str(root), "test_every": 3})
    dm2.setup("fit")
    assert sorted((tmp_path / "cache" / "undistorted").glob("*.png")) == cached
    assert [p.stat().st_mtime_ns for p in cached] == mtimes
    torch.testing.assert_close(dm2._views[0].rgba, v.rgba)
    # the undistorted image is the photo resampled: compare one interior pixel with a bilinear read by hand
    from threestudio.ops.distortion import distort

    row, col = h // 2, w // 2
    xy = torch.tensor([[(col + 0.5 - cx) / fx, (row + 0.5 - cy) / fy]], dtype=torch.float64)
    xd = distort(xy, params, "opencv")[0].numpy()
    u, vv = xd[0] * FX + CX - 0.5, xd[1] * FY + CY - 0.5
    i0, j0 = int(np.floor(vv)), int(np.floor(u))
    a, bb = vv - i0, u - j0
    img = imgs[1].astype(np.float64) / 255.0
    prem = img[..., :3] * img[..., 3:]
    ref = ((1 - a) * (1 - bb) * prem[i0, j0] + (1 - a) * bb * prem[i0, j0 + 1] + a * (1 - bb) * prem[i0 + 1, j0]
           + a * bb * prem[i0 + 1, j0 + 1])
    np.testing.assert_allclose(v.rgba[row, col, :3].numpy(), ref, atol=1.0 / 255 + 1e-6)


def test_sparse_points_follow_the_poses(tmp_path):
    c2w, _ = write_nerfstudio(tmp_path, extra={"ply_file_path": "sparse_pc.ply"})
    pts = np.array([[0.1, 0.2, 0.3], [-1.0, 0.5, 2.0], [0.0, 0.0, 0.0]])
    with open(tmp_path / "sparse_pc.ply", "w") as f:  # ASCII, as nerfstudio / COLMAP write it
        f.write("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
                "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
        for p, c in zip(pts, [(255, 0, 0), (0, 255, 0), (10, 20, 30)]):
            f.write(f"{p[0]} {p[1]} {p[2]} {c[0]} {c[1]} {c[2]}\n")
    dm = make_dm(tmp_path, recenter="cameras", orient="up", camera_extent=True)
    got, rgb = dm.scene_points
    np.testing.assert_allclose(got.numpy(), dm.to_module_frame(pts), atol=1e-6)
    np.testing.assert_allclose(rgb[2].numpy(), np.array([10, 20, 30]) / 255.0, atol=1e-6)
    assert dm.scene_info["points_path"] == str(tmp_path / "sparse_pc.ply")
    _edit(tmp_path, lambda d: d.update(ply_file_path="missing.ply"))
    with pytest.raises(DatasetError, match="ply_file_path 'missing.ply' not found"):
        make_dm(tmp_path).scene_info
