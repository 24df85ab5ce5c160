import torch

import threestudio


def dm(**cfg):
    return threestudio.find("random-camera", "data")(cfg)


def test_progressive_resolution_and_batch_shapes():
    d = dm(height=[8, 16], width=[8, 16], batch_size=[4, 2], resolution_milestones=[10], eval_height=12,
           eval_width=10, n_val_views=3, n_test_views=5)
    d.do_update_step(0, 9)
    b = d.draw_train_batch(torch.device("cpu"))
    assert b["rays_o"].shape == (4, 8, 8, 3) and b["mvp_mtx"].shape == (4, 4, 4)
    assert torch.allclose(b["rays_d"].norm(dim=-1), torch.ones(4, 8, 8))
    d.do_update_step(0, 10)
    b = d.draw_train_batch(torch.device("cpu"))
    assert b["rays_o"].shape == (2, 16, 16, 3) and b["height"] == 16
    assert len(d.val_dataloader()) == 3 and len(d.test_dataloader()) == 5
    t = next(iter(d.test_dataloader()))
    assert t["rays_d"].shape == (1, 12, 10, 3) and t["index"] == 0


def test_rays_look_at_the_centre_and_project_back():
    d = dm(height=32, width=32, batch_size=3, camera_perturb=0.0, center_perturb=0.0, up_perturb=0.0,
           camera_distance_range=[2.0, 2.0])
    b = d.draw_train_batch(torch.device("cpu"))
    centre_ray = b["rays_d"][:, 16, 16]  # pixel (16, 16) has its centre 0.5 px off the optical axis
    to_origin = torch.nn.functional.normalize(-b["camera_positions"], dim=-1)
    assert (centre_ray * to_origin).sum(-1).min() > 0.999
    assert torch.allclose(b["camera_positions"].norm(dim=-1), torch.full((3,), 2.0), atol=1e-5)
    # a point along a pixel's ray lands on that pixel through the MVP matrix
    p = b["rays_o"][0, 5, 20] + 1.3 * b["rays_d"][0, 5, 20]
    clip = b["mvp_mtx"][0] @ torch.cat([p, torch.ones(1)])
    ndc = clip[:3] / clip[3]
    px = (ndc[0] + 1) / 2 * 32
    py = (1 - ndc[1]) / 2 * 32
    assert abs(px - 20.5) < 1e-2 and abs(py - 5.5) < 1e-2


def test_draws_follow_the_generator_state():
    d = dm(height=4, width=4, batch_size=2)
    state = d.state_dict()
    a = d.draw_train_batch(torch.device("cpu"))
    d.load_state_dict(state)
    b = d.draw_train_batch(torch.device("cpu"))
    c = d.draw_train_batch(torch.device("cpu"))
    assert torch.equal(a["c2w"], b["c2w"]) and not torch.equal(b["c2w"], c["c2w"])


def test_batches_move_to_the_device_in_one_buffer_per_dtype():
    """tensors_to_device's packing: every tensor comes back equal, as a view of one buffer per dtype, with other values
    passed through (the CUDA path pins that buffer and copies it without blocking)."""
    import torch

    from threestudio.utils.misc import pack_by_dtype

    src = {"a": torch.randn(2, 3), "b": torch.arange(5), "c": torch.randn(4, 1, 2), "s": torch.tensor(3.5),
           "m": torch.tensor([True, False]), "n": 7, "name": "x"}
    moved = []
    out = pack_by_dtype(src, lambda flat: moved.append(flat) or flat.clone())
    assert sorted(str(f.dtype) for f in moved) == ["torch.bool", "torch.float32", "torch.int64"]
    assert moved[0].numel() == 6 + 8 + 1
    for k in ("a", "b", "c", "s", "m"):
        assert out[k].shape == src[k].shape and out[k].dtype == src[k].dtype and torch.equal(out[k], src[k]), k
    assert out["a"].untyped_storage().data_ptr() == out["c"].untyped_storage().data_ptr()
    assert out["n"] == 7 and out["name"] == "x"
