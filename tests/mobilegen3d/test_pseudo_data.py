"""The pseudo-data format: writer/reader round trip, refused folders, rank shards, and the nelf-pseudo-data module
(training batches, held-out views, real photos at the student's output size)."""

import json
import os

import numpy as np
import pytest
import torch

from .conftest import analytic_rgb, load_ext, make_pseudo, orbit_c2w

load_ext()
from custom.mobilegen3d.data import NeLFPseudoDataModule, even_subset  # noqa: E402
from custom.mobilegen3d.pseudo_data import PseudoData, PseudoDataError, PseudoDataWriter  # noqa: E402
from threestudio.data.multiview import DatasetError  # noqa: E402
from threestudio.ops.cameras import get_ray_directions, get_rays  # noqa: E402


def test_round_trip_bytes(tmp_path):
    n, h, w, s = 5, 3, 4, 4
    H, W = h * s, w * s
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(n, H, W, 3, generator=g)
    cams = orbit_c2w(n)
    out = tmp_path / "p"
    writer = PseudoDataWriter(str(out), n, H, W, h, w, [20.0, 21.0, 8.0, 6.5], 0.25, 4.0, source="unit")
    for i in (3, 0, 4, 1, 2):  # random access
        writer.write(i, imgs[i], cams[i])
    assert not os.path.exists(out / "pseudo.json")  # written last
    writer.close(holdout=[4, 1])
    meta = json.load(open(out / "pseudo.json"))
    assert meta == {"version": 1, "n": n, "height": H, "width": W, "lr_height": h, "lr_width": w,
                    "intrinsics": [20.0, 21.0, 8.0, 6.5], "near": 0.25, "far": 4.0, "source": "unit",
                    "complete": True}
    assert sorted(os.listdir(out)) == ["c2w.f32", "holdout.json", "pseudo.json", "rgb.f16"]
    raw = np.fromfile(out / "rgb.f16", dtype="<f2").reshape(n, H, W, 3)
    assert np.array_equal(raw, imgs.numpy().astype(np.float16))
    assert np.array_equal(np.fromfile(out / "c2w.f32", dtype="<f4").reshape(n, 4, 4), cams.numpy())

    data = PseudoData(str(out))
    assert len(data) == n and data.scale == s and (data.height, data.width) == (H, W)
    assert data.holdout == [1, 4] and data.train_indices == [0, 2, 3] and data.indices == [0, 2, 3]
    assert torch.equal(data.rgb(2), imgs[2].half().float())
    assert torch.equal(data.rgb([0, 3], dtype=torch.float16), imgs[[0, 3]].half())
    assert torch.equal(data.c2w(torch.tensor([1, 2])), cams[1:3])
    assert data.lr_intrinsics == [5.0, 5.25, 2.0, 1.625]
    rays_o, rays_d = data.low_res_rays(data.c2w(2))
    ref_o, ref_d = get_rays(get_ray_directions(h, w, (5.0, 5.25), (2.0, 1.625)), cams[2])
    assert rays_o.shape == (h, w, 3) and torch.allclose(rays_d, ref_d) and torch.allclose(rays_o, ref_o)
    assert data.low_res_rays(data.c2w([0, 1]))[1].shape == (2, h, w, 3)


def test_incomplete_and_damaged_folders_are_refused(tmp_path):
    out = tmp_path / "p"
    with pytest.raises(PseudoDataError, match="does not exist"):
        PseudoData(str(out))
    writer = PseudoDataWriter(str(out), 3, 8, 8, 2, 2, [8, 8, 4, 4], 0.5, 2.0)
    writer.write(0, torch.zeros(8, 8, 3), torch.eye(4))
    with pytest.raises(PseudoDataError, match=str(out) + " is incomplete"):
        PseudoData(str(out))
    with pytest.raises(PseudoDataError, match="2 of 3 views were never written"):
        writer.close()
    # an interrupted writer continues where it stopped
    again = PseudoDataWriter(str(out), 3, 8, 8, 2, 2, [8, 8, 4, 4], 0.5, 2.0, resume=True)
    assert again.missing() == [1, 2]
    for i in (1, 2):
        again.write(i, torch.full((8, 8, 3), 0.5), torch.eye(4))
    again.close()
    data = PseudoData(str(out))
    assert float(data.rgb(0).max()) == 0.0 and float(data.rgb(2).min()) == 0.5
    with pytest.raises(PseudoDataError, match="already holds a complete"):
        PseudoDataWriter(str(out), 3, 8, 8, 2, 2, [8, 8, 4, 4], 0.5, 2.0)
    # a truncated file, a header that is not complete, bad shapes
    with open(out / "rgb.f16", "r+b") as f:
        f.truncate(100)
    with pytest.raises(PseudoDataError, match=r"rgb.f16 has 100 bytes"):
        PseudoData(str(out))
    meta = json.load(open(out / "pseudo.json"))
    json.dump({**meta, "complete": False}, open(out / "pseudo.json", "w"))
    with pytest.raises(PseudoDataError, match="not marked complete"):
        PseudoData(str(out))
    with pytest.raises(PseudoDataError, match="integer factor"):
        PseudoDataWriter(str(tmp_path / "q"), 1, 10, 8, 3, 2, [8, 8, 4, 4], 0.5, 2.0)
    with pytest.raises(PseudoDataError, match="near < far"):
        PseudoDataWriter(str(tmp_path / "q"), 1, 8, 8, 2, 2, [8, 8, 4, 4], 2.0, 1.0)
    w2 = PseudoDataWriter(str(tmp_path / "r"), 1, 8, 8, 2, 2, [8, 8, 4, 4], 0.5, 2.0)
    with pytest.raises(ValueError, match=r"rgb must be \[8, 8, 3\]"):
        w2.write(0, torch.zeros(4, 4, 3), torch.eye(4))


def test_rank_shards_are_disjoint_and_cover_the_training_views(tmp_path):
    folder = make_pseudo(tmp_path / "p", n=11, lr=(1, 1), holdout=(2, 7))
    full = PseudoData(folder)
    shards = [PseudoData(folder, rank=r, world_size=3).indices for r in range(3)]
    assert sorted(sum(shards, [])) == full.train_indices == [i for i in range(11) if i not in (2, 7)]
    assert all(not set(a) & set(b) for i, a in enumerate(shards) for b in shards[i + 1:])
    with pytest.raises(PseudoDataError, match="gets no training view"):
        PseudoData(folder, rank=9, world_size=10)


def _module(folder, **over):
    return NeLFPseudoDataModule({"dataroot": folder, "batch_size": 3, "n_val_views": 0, **over})


def test_data_module_batches(tmp_path):
    folder = make_pseudo(tmp_path / "p", n=6, lr=(4, 6), holdout=(0, 3))
    torch.manual_seed(0)
    dm = _module(folder)
    dm.setup("fit")
    b = dm.draw_train_batch(torch.device("cpu"))
    assert b["rays_o"].shape == b["rays_d"].shape == (3, 4, 6, 3) and b["rgb"].shape == (3, 32, 48, 3)
    assert set(b["index"].tolist()) <= {1, 2, 4, 5}
    data = PseudoData(folder)
    assert torch.equal(b["rgb"], data.rgb(b["index"]))
    assert torch.allclose(b["rays_d"], data.low_res_rays(data.c2w(b["index"]))[1])
    # the draws replay from the saved generator state (exact resume)
    state = dm.state_dict()
    nxt = dm.draw_train_batch(torch.device("cpu"))["index"]
    dm.load_state_dict(state)
    assert torch.equal(dm.draw_train_batch(torch.device("cpu"))["index"], nxt)
    # evaluation: the held-out views
    items = list(dm.val_dataloader())
    assert [(it["kind"], it["index"]) for it in items] == [("pseudo", 0), ("pseudo", 3)]
    assert items[0]["rgb"].shape == (1, 32, 48, 3) and items[0]["rays_o"].shape == (1, 4, 6, 3)
    assert even_subset(10, 3) == [0, 4, 9] and even_subset(4, 0) == [0, 1, 2, 3]


def _write_photos(root, cams, H, W, intr):
    from PIL import Image

    os.makedirs(root / "images", exist_ok=True)
    frames = []
    for i, c in enumerate(cams):
        img = (analytic_rgb(c, H, W, intr).numpy() * 255 + 0.5).astype(np.uint8)
        Image.fromarray(img).save(root / "images" / f"{i:03d}.png")
        frames.append({"file_path": f"images/{i:03d}.png", "transform_matrix": c.tolist()})
    fx, fy, cx, cy = intr
    json.dump({"fl_x": fx, "fl_y": fy, "cx": cx, "cy": cy, "w": W, "h": H, "camera_model": "OPENCV",
               "frames": frames}, open(root / "transforms.json", "w"))


def test_photos_at_the_student_output_size(tmp_path):
    """Held-out photos (3x the pseudo resolution, another aspect) come back resized to the student's output height
    with rays of their own camera; photos of the teacher's cameras give the teacher's rays and pixels."""
    folder = make_pseudo(tmp_path / "p", n=4, lr=(4, 6), holdout=(0,))
    data = PseudoData(folder)
    cams = data.c2w([0, 1, 2, 3])
    H, W = 3 * 32, 3 * 48
    intr = [x * 3 for x in data.intrinsics]
    _write_photos(tmp_path / "cap", cams, H, W, intr)
    frame = {"recenter": "none", "orient": "none", "camera_extent": False, "test_every": 2, "n_val_views": 0}
    dm = _module(folder, photos_dataroot=str(tmp_path / "cap"), photos=frame)
    dm.setup("validate")
    items = [it for it in dm.val_dataloader() if it["kind"] == "photo"]
    assert [it["index"] for it in items] == [0, 1]  # photos 0 and 2 are held out (test_every 2)
    for it, view in zip(items, (0, 2)):
        assert it["rgb"].shape == (1, 32, 48, 3) and it["rays_d"].shape == (1, 4, 6, 3)
        ref_o, ref_d = data.low_res_rays(data.c2w(view))
        assert torch.allclose(it["rays_d"][0], ref_d, atol=1e-5) and torch.allclose(it["rays_o"][0], ref_o, atol=1e-5)
        diff = (it["rgb"][0] - data.rgb(view)).abs()
        assert float(diff.mean()) < 0.01  # the same light field, downsampled 3x (8-bit photos)
    # the teacher's render of a held-out photo's camera comes along (view 0 is held out in the pseudo data; view 2
    # is a training view, which the teacher's held-out set does not have)
    assert torch.equal(items[0]["teacher_rgb"][0], data.rgb(0).float()) and "teacher_rgb" not in items[1]
    # the same photos through the teacher's trial named in pseudo.json (its data settings and dataroot)
    trial = tmp_path / "teacher@1"
    os.makedirs(trial / "configs")
    (trial / "configs" / "parsed.yaml").write_text(json.dumps({"data": {
        **frame, "dataroot": str(tmp_path / "cap"), "batch_size": 4096, "load_to_device": True}}))
    folder2 = make_pseudo(tmp_path / "p2", n=4, lr=(4, 6), holdout=(0,), source=str(trial / "ckpts" / "last.ckpt"))
    dm3 = _module(folder2, photos_trial="source")
    dm3.setup("validate")
    items3 = [it for it in dm3.val_dataloader() if it["kind"] == "photo"]
    assert len(items3) == 2 and all(torch.equal(a["rgb"], b["rgb"]) for a, b in zip(items, items3))
    bad = _module(folder, photos_trial="source")  # this pseudo.json's source ("tests") is no trial
    bad.setup("validate")
    with pytest.raises(DatasetError, match="neither a trial folder"):
        bad.val_dataloader()
    # a photo of another aspect ratio keeps it: the width follows, in multiples of s
    wide = tmp_path / "wide"
    _write_photos(wide, cams[:2], 60, 150, [80.0, 80.0, 75.0, 30.0])
    dm2 = _module(folder, photos_dataroot=str(wide), photos=frame)
    dm2.setup("test")
    (it,) = [it for it in dm2.test_dataloader() if it["kind"] == "photo"]
    assert it["rgb"].shape == (1, 32, 80, 3) and it["rays_o"].shape == (1, 4, 10, 3)
