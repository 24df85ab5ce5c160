"""Prompt-library validation, per-rank sharding and the k prompts x v views batches."""

import json

import pytest
import torch

from .conftest import EXAMPLE, write_library

LIB = {"train": [f"train prompt {i}" for i in range(7)], "val": ["v0", "v1", "v2"], "test": [f"t{i}" for i in range(5)]}


@pytest.mark.parametrize("data,fragment", [
    ({"train": ["a"], "val": ["b"]}, "missing split 'test'"),
    ({"train": "a cat", "val": ["b"], "test": ["c"]}, "key 'train' must be a list"),
    ({"train": ["a"], "val": [], "test": ["c"]}, "key 'val' is an empty list"),
    ({"train": ["a", 3], "val": ["b"], "test": ["c"]}, "key 'train', item 1 must be a string"),
    ({"train": ["a"], "val": ["b"], "test": ["  "]}, "key 'test', item 0 is an empty prompt"),
    (["a", "b"], "top level must be a JSON object"),
])
def test_library_errors_name_file_and_key(amz, tmp_path, data, fragment):
    from custom.amortized.library import PromptLibraryError, load_prompt_library

    path = write_library(tmp_path / "lib.json", data)
    with pytest.raises(PromptLibraryError) as e:
        load_prompt_library(path)
    msg = str(e.value)
    assert fragment in msg and path in msg and "system.prompt_processor.prompt_library" in msg


def test_library_missing_file_and_bad_json(amz, tmp_path):
    from custom.amortized.library import PromptLibraryError, load_prompt_library

    with pytest.raises(PromptLibraryError, match="prompt library not found: looked for the file .*nope.json"):
        load_prompt_library(str(tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"train": ["a",]}')
    with pytest.raises(PromptLibraryError, match=r"bad.json: not valid JSON .* line 1"):
        load_prompt_library(str(bad))
    # a shipped library by its stem
    path, lib = load_prompt_library("amortized_example")
    assert path == EXAMPLE and lib == json.load(open(EXAMPLE))


def _dm(amz, path, rank, world, **kw):
    import threestudio

    cfg = {"prompt_library": path, "rank": rank, "world_size": world, "height": 8, "width": 8, **kw}
    return threestudio.find("amortized-prompt-library-camera", "data")(cfg)


def test_two_ranks_cover_each_split_exactly_once(amz, tmp_path):
    path = write_library(tmp_path / "lib.json", LIB)
    dms = [_dm(amz, path, r, 2, eval_height=8, eval_width=8, n_val_views=2, n_test_views=3) for r in range(2)]
    for split in ("train", "val", "test"):
        seen = sorted(i for dm in dms for i in dm.shard(split))
        assert seen == list(range(len(LIB[split])))
        assert not set(dms[0].shard(split)) & set(dms[1].shard(split))
    for split, loader in (("val", "val_dataloader"), ("test", "test_dataloader")):
        prompts = [b["prompt"] for dm in dms for b in getattr(dm, loader)()]
        assert sorted(prompts) == sorted(LIB[split])  # every prompt of the split, once over the two ranks
    # training batches only draw from the rank's own train shard
    for r, dm in enumerate(dms):
        own = {LIB["train"][i] for i in dm.shard("train")}
        for _ in range(5):
            b = dm.draw_train_batch(torch.device("cpu"))
            assert set(b["prompts"]) <= own
            assert [LIB["train"][int(i)] for i in b["prompt_index"]] == b["prompts"]


def test_batches_are_k_prompts_by_v_views(amz, tmp_path):
    path = write_library(tmp_path / "lib.json", LIB)
    dm = _dm(amz, path, 0, 1, prompts_per_step=3, n_view=4, elevation_range=[0.0, 30.0], fovy_range=[15.0, 60.0],
             camera_distance_range=[0.8, 1.0], relative_radius=True, noise_dim=5)
    b = dm.draw_train_batch(torch.device("cpu"))
    assert b["rays_o"].shape == (12, 8, 8, 3) and b["noise"].shape == (3, 5) and len(set(b["prompts"])) == 3
    az = b["azimuth"].reshape(3, 4)
    step = torch.remainder(az[:, 1:] - az[:, :-1], 360.0)
    assert torch.allclose(step, torch.full_like(step, 90.0), atol=1e-3)  # equally spaced views of one prompt
    for key in ("elevation", "fovy", "camera_distances"):
        v = b[key].reshape(3, 4)
        assert torch.allclose(v, v[:, :1].expand_as(v))  # shared per prompt
    base = b["camera_distances"] * torch.tan(torch.deg2rad(b["fovy"]) / 2)  # relative radius
    assert (base > 0.8 - 1e-4).all() and (base < 1.0 + 1e-4).all()
    assert (b["elevation"] >= 0).all() and (b["elevation"] <= 30).all()
    # camera looks at the origin from the sampled distance
    assert torch.allclose(b["rays_o"][:, 0, 0].norm(dim=-1), b["camera_distances"], atol=1e-4)
    # SD: one view per prompt, azimuth stratified over the batch
    dm1 = _dm(amz, path, 0, 1, prompts_per_step=4, n_view=1)
    b1 = dm1.draw_train_batch(torch.device("cpu"))
    bins = torch.floor((b1["azimuth"] + 180.0) / 90.0)
    assert b1["rays_o"].shape[0] == 4 and sorted(bins.tolist()) == [0.0, 1.0, 2.0, 3.0]
    # fewer train prompts than k: drawn with replacement
    small = write_library(tmp_path / "small.json", {"train": ["a", "b"], "val": ["a"], "test": ["b"]})
    assert len(_dm(amz, small, 0, 1, prompts_per_step=5).draw_train_batch(torch.device("cpu"))["prompts"]) == 5


def test_interpolation_test_items(amz, tmp_path):
    path = write_library(tmp_path / "lib.json", LIB)
    dm = _dm(amz, path, 0, 1, test_mode="interpolate", interp_source="a cat", interp_target="a dog", n_interp=3,
             n_test_views=2, eval_height=8, eval_width=8)
    items = list(dm.test_dataloader())
    assert [i["alpha"] for i in items] == [0.0, 0.5, 1.0] and items[0]["split"] == "interp"
    with pytest.raises(ValueError, match="interp_source"):
        _dm(amz, path, 0, 1, test_mode="interpolate")
