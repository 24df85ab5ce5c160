"""The editable-training-images API of the multiview data modules (train_views, original_train_image,
replace_train_image, edited_indices): replacements reach the training batches, the photos as loaded stay available,
and nothing is written to disk."""

import pytest
import torch

from tests.data.test_data_safety import snapshot


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    from threestudio.data.synthetic_scene import make_scene

    root = tmp_path_factory.mktemp("scene")
    make_scene(str(root), n_train=3, n_test=1, resolution=16, progress=False)
    return str(root)


@pytest.mark.parametrize("kind", ["multiview", "multiview-images"])
def test_replace_train_image_reaches_the_batches_and_keeps_the_original(scene, kind, tmp_path, monkeypatch):
    import threestudio

    monkeypatch.setenv("THREESTUDIO_CACHE", str(tmp_path / "cache"))
    before = snapshot(scene)
    cfg = {"dataroot": scene, "background": "black", "batch_size": 16 * 16 * 3 * 4 if kind == "multiview" else 1}
    dm = threestudio.find(kind, "data")(cfg)
    dm.setup("fit")
    views = dm.train_views()
    assert [v["index"] for v in views] == [0, 1, 2] and dm.n_train_views == 3 and dm.edited_indices() == []
    v1 = views[1]
    assert (v1["height"], v1["width"]) == (16, 16) and v1["rgba"].shape == (16, 16, 4)
    assert v1["c2w"].shape == (4, 4) and v1["intrinsics"].shape == (4,) and v1["image_path"].endswith(".png")
    assert torch.allclose(v1["rgb"], v1["rgba"][..., :3])  # premultiplied on a black background
    if kind == "multiview":  # the training rays of the view's pixels
        assert v1["rays_d"].shape == (16, 16, 3) and torch.allclose(v1["rays_o"][3, 5], v1["c2w"][:3, 3])
    photo = dm.original_train_image(1)
    assert torch.equal(photo, v1["rgba"])

    new = torch.rand(16, 16, 3, generator=torch.Generator().manual_seed(0))
    dm.replace_train_image(1, new)
    dm.replace_train_image(1, new * 0.5)  # a second replacement: the original is still the photo
    assert dm.edited_indices() == [1]
    assert torch.equal(dm.original_train_image(1), photo)
    now = dm.train_view(1)["rgba"]
    assert torch.allclose(now[..., :3], new * 0.5, atol=1e-3) and torch.equal(now[..., 3], torch.ones(16, 16))
    assert torch.equal(dm.train_view(0)["rgba"], views[0]["rgba"])  # other views untouched

    # the training batches see the replacement
    if kind == "multiview":
        for _ in range(3):
            b = dm.draw_train_batch(torch.device("cpu"))
            sel = b["image_index"] == 1
            assert sel.any()
            d = b["rays_d"][sel]  # find each drawn pixel of view 1 by its ray
            hit = (d[:, None, :] - v1["rays_d"].reshape(1, -1, 3)).abs().sum(-1).argmin(1)
            assert torch.allclose(b["rgb"][sel], (new * 0.5).reshape(-1, 3)[hit], atol=1e-3)
    else:
        seen = False
        for _ in range(12):
            b = dm.draw_train_batch(torch.device("cpu"))
            if int(b["image_index"][0]) == 1:
                assert torch.allclose(b["rgb"][0], new * 0.5, atol=1e-3)
                seen = True
        assert seen
    with pytest.raises(ValueError, match="expected an image of 16x16"):
        dm.replace_train_image(0, torch.zeros(8, 8, 3))
    with pytest.raises(IndexError, match="there are 3"):
        dm.replace_train_image(3, new)
    assert snapshot(scene) == before  # nothing written next to the photos
    assert not (tmp_path / "cache").exists()  # nor anywhere else
