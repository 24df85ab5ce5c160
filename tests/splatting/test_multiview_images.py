"""The ``multiview-images`` data module: whole training images with their cameras, random crops whose intrinsics
render exactly the cropped part, resumable draws, and config errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import threestudio
from threestudio.data.multiview import DatasetError
from threestudio.ops.cameras import c2w_from_spherical

W, H = 20, 16


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("mvi")
    rng = np.random.default_rng(0)
    c2w = c2w_from_spherical(torch.tensor([10.0, 30.0, 50.0, 20.0]), torch.tensor([0.0, 90.0, 180.0, 270.0]),
                             torch.full((4,), 2.5)).numpy()
    frames = []
    for i in range(4):
        img = rng.integers(0, 256, size=(H, W, 4), dtype=np.uint8)
        Image.fromarray(img, "RGBA").save(root / f"{i}.png")
        frames.append({"file_path": f"{i}.png", "transform_matrix": c2w[i].tolist()})
    (root / "transforms.json").write_text(json.dumps({"fl_x": 18.0, "fl_y": 17.0, "cx": 9.5, "cy": 8.25,
                                                      "frames": frames}))
    return root


def module(root, **cfg):
    return threestudio.find("multiview-images")({"dataroot": str(root), "test_every": 0, **cfg})


def test_batches_are_whole_images_with_their_cameras(dataset):
    dm = module(dataset, batch_size=3, background="black")
    dm.setup("fit")
    b = dm.draw_train_batch(torch.device("cpu"))
    assert b["rgb"].shape == (3, H, W, 3) and b["mask"].shape == (3, H, W, 1) and (b["height"], b["width"]) == (H, W)
    assert b["c2w"].shape == (3, 4, 4) and b["intrinsics"].shape == (3, 4)
    torch.testing.assert_close(b["intrinsics"][0], torch.tensor([18.0, 17.0, 9.5, 8.25]))
    for j in range(3):
        i = int(b["image_index"][j])
        img = np.asarray(Image.open(dataset / f"{i}.png"), dtype=np.float32) / 255.0
        # black background: rgb = straight colour * alpha (stored premultiplied in half precision)
        torch.testing.assert_close(b["rgb"][j], torch.from_numpy(img[..., :3] * img[..., 3:]), atol=2e-3, rtol=0)
        torch.testing.assert_close(b["mask"][j, ..., 0], torch.from_numpy(img[..., 3]), atol=2e-3, rtol=0)
        frame = json.loads((dataset / "transforms.json").read_text())["frames"][i]
        torch.testing.assert_close(b["c2w"][j], torch.tensor(frame["transform_matrix"], dtype=torch.float32))


def test_draws_resume_from_the_saved_generator(dataset):
    dm = module(dataset, background="random")
    dm.setup("fit")
    dm.draw_train_batch("cpu")
    state = dm.state_dict()
    a = dm.draw_train_batch("cpu")
    dm2 = module(dataset, background="random")
    dm2.setup("fit")
    dm2.load_state_dict(state)
    b = dm2.draw_train_batch("cpu")
    assert torch.equal(a["image_index"], b["image_index"]) and torch.equal(a["rgb"], b["rgb"])


def test_patch_intrinsics_render_exactly_the_cropped_part(dataset):
    dm = module(dataset, batch_size=2, patch_size=8)
    dm.setup("fit")
    b = dm.draw_train_batch("cpu")
    assert b["rgb"].shape == (2, 8, 8, 3)
    geo = threestudio.find("gaussian-splatting")({"init_num_points": 80, "init_radius": 0.8, "init_scale": 0.1,
                                                  "init_opacity": 0.5, "sh_degree": 0})
    r = threestudio.find("gaussian-splatting-renderer")({"backend": "torch"}, geometry=geo)
    full_intr = torch.tensor([18.0, 17.0, 9.5, 8.25]).expand(2, 4)
    full = r(c2w=b["c2w"], height=H, width=W, intrinsics=full_intr, bg_color=torch.zeros(3))
    crop = r(c2w=b["c2w"], height=8, width=8, intrinsics=b["intrinsics"], bg_color=torch.zeros(3))
    for j in range(2):
        x0 = int(round(9.5 - float(b["intrinsics"][j, 2])))
        y0 = int(round(8.25 - float(b["intrinsics"][j, 3])))
        i = int(b["image_index"][j])
        img = np.asarray(Image.open(dataset / f"{i}.png"), dtype=np.float32) / 255.0
        torch.testing.assert_close(b["mask"][j, ..., 0], torch.from_numpy(img[y0:y0 + 8, x0:x0 + 8, 3]), atol=2e-3,
                                   rtol=0)
        # equal up to 3DGS's field-of-view clamp of the projection Jacobian, which depends on the image bounds
        # (gaussians far outside the crop get slightly different footprints): ~1e-4 here; a shifted crop is ~0.1
        torch.testing.assert_close(crop["comp_rgb"][j], full["comp_rgb"][j, y0:y0 + 8, x0:x0 + 8], atol=2e-3,
                                   rtol=0)
        assert float((crop["comp_rgb"][j] - full["comp_rgb"][j, y0:y0 + 8, x0:x0 + 8]).abs().mean()) < 1e-4
    assert float(full["opacity"].detach().max()) > 0.3


def test_config_errors_name_the_key(dataset):
    with pytest.raises(DatasetError, match="data.patch_size=0"):
        module(dataset, patch_size=0)
    dm = module(dataset, patch_size=64)
    with pytest.raises(DatasetError, match="data.patch_size=64 is larger than the smallest training view"):
        dm.setup("fit")
