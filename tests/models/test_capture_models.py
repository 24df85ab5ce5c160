"""The unbounded-capture NeRF modules: nerfacto-field, neural-radiance-material, proposal-volume-renderer."""

import pytest
import torch

import threestudio
from threestudio.ops import proposal as P

TINY_GRID = {"otype": "HashGrid", "n_levels": 4, "n_features_per_level": 2, "log2_hashmap_size": 10,
             "base_resolution": 4, "max_resolution": 32}
TINY_PROPS = [{"n_levels": 2, "max_resolution": 16, "log2_hashmap_size": 8, "n_neurons": 8},
              {"n_levels": 2, "max_resolution": 32, "log2_hashmap_size": 8, "n_neurons": 8}]


def build(n_images=5, appearance_dim=4, **renderer):
    torch.manual_seed(0)
    geo = threestudio.find("nerfacto-field")({"radius": 1.0, "n_feature_dims": 7, "density_scale": 1.0,
                                              "pos_encoding_config": TINY_GRID,
                                              "mlp_network_config": {"n_neurons": 16, "n_hidden_layers": 1}})
    mat = threestudio.find("neural-radiance-material")({"input_feature_dims": 7, "appearance_dim": appearance_dim,
                                                        "mlp_network_config": {"n_neurons": 16, "n_hidden_layers": 1}})
    mat.set_scene({"n_train": n_images})
    bg = threestudio.find("solid-color")({"color": [0.0, 0.0, 1.0]})
    cfg = {"num_proposal_samples": [32, 16], "num_samples": 8, "proposal_networks": TINY_PROPS,
           "eval_chunk_size": 64, **renderer}
    ren = threestudio.find("proposal-volume-renderer")(cfg, geometry=geo, material=mat, background=bg)
    return geo, mat, ren


def rays(n=40, seed=1):
    g = torch.Generator().manual_seed(seed)
    o = torch.randn(n, 3, generator=g) * 0.3
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    return o, d


def test_field_contracts_everything_into_the_grid():
    geo, _, _ = build()
    far = torch.tensor([[1e5, -3e4, 20.0], [0.5, 0.2, -0.9], [-2.0, 0.0, 0.0]])
    x = geo.normalized(far)
    assert ((x >= 0) & (x <= 1)).all()
    torch.testing.assert_close(x[1], (far[1] + 2) / 4)  # inside the box: linear into the inner half
    out = geo(far)
    assert out["density"].shape == (3, 1) and out["features"].shape == (3, 7) and (out["density"] > 0).all()


def test_appearance_codes_per_image_mean_for_evaluation_and_resize_on_load():
    _, mat, _ = build(n_images=5, appearance_dim=4)
    with torch.no_grad():
        mat.appearance.weight.copy_(torch.randn(5, 4) * 3)
    f, d = torch.randn(6, 7), torch.nn.functional.normalize(torch.randn(6, 3), dim=-1)
    a = mat(f, d, image_index=torch.zeros(6, dtype=torch.long))
    b = mat(f, d, image_index=torch.full((6,), 3, dtype=torch.long))
    assert (a - b).abs().max() > 1e-3  # the codes change the colour
    mean = mat(f, d)
    codes = mat._codes(None, 6, f)
    torch.testing.assert_close(codes, mat.appearance.weight.mean(0, keepdim=True).expand(6, 4))
    assert mean.shape == (6, 3) and ((mean > 0) & (mean < 1)).all()
    # a checkpoint with another number of images resizes the table (as a resumed capture of 9 images would)
    other = threestudio.find("neural-radiance-material")({"input_feature_dims": 7, "appearance_dim": 4,
                                                          "mlp_network_config": {"n_neurons": 16,
                                                                                 "n_hidden_layers": 1}})
    other.set_scene({"n_train": 9})
    mat.load_state_dict(other.state_dict())
    assert mat.appearance.num_embeddings == 9
    torch.testing.assert_close(mat.appearance.weight, other.appearance.weight)
    # no codes at all
    _, plain, _ = build(appearance_dim=0)
    assert plain.appearance is None and plain(f, d).shape == (6, 3)


def test_renderer_training_outputs_and_gradients():
    geo, mat, ren = build()
    ren.train()
    ren.update_step(0, 3)  # an early step: the proposal networks take gradients
    o, d = rays()
    out = ren(o, d, image_index=torch.arange(40) % 5)
    assert out["comp_rgb"].shape == (40, 3) and out["weights"].shape == (40, 8) and out["s_edges"].shape == (40, 9)
    assert len(out["prop_weights"]) == 2 and out["prop_s_edges"][0].shape == (40, 33)
    # the last sample fills what the rays leave: comp = fg + (1 - opacity) * colour of the last sample
    assert ((out["opacity"] >= 0) & (out["opacity"] <= 1 + 1e-6)).all()
    loss = (out["comp_rgb"] - 0.5).pow(2).mean() + P.interlevel_loss(out["s_edges"], out["weights"],
                                                                     out["prop_s_edges"], out["prop_weights"])
    loss.backward()
    assert geo.encoding.grid.table.grad.abs().sum() > 0
    assert mat.appearance.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in ren.proposal_fields.parameters())


def test_proposal_networks_update_on_schedule_only():
    geo, mat, ren = build(proposal_update_every=5)
    ren.train()
    o, d = rays()
    took = []
    for step in (10, 11, 15):
        ren.update_step(0, step)
        for p in ren.proposal_fields.parameters():
            p.grad = None
        out = ren(o, d)
        took.append(bool(out["prop_weights"]))
        (out["comp_rgb"].sum() + sum(w.sum() for w in out["prop_weights"])).backward()
        grads = [p.grad for p in ren.proposal_fields.parameters()]
        assert all(g is not None for g in grads) == took[-1]
        assert all(g is None for g in grads) == (not took[-1])
    assert took == [True, False, True]


def test_renderer_eval_is_deterministic_and_chunked_like_one_call():
    geo, mat, ren = build(eval_chunk_size=16)
    ren.eval()
    o, d = rays(50)
    with torch.no_grad():
        chunked = ren(o.reshape(5, 10, 3), d.reshape(5, 10, 3))
        ren.cfg.eval_chunk_size = 4096
        whole = ren(o.reshape(5, 10, 3), d.reshape(5, 10, 3))
    for k in ("comp_rgb", "opacity", "depth"):
        assert chunked[k].shape[:2] == (5, 10)
        torch.testing.assert_close(chunked[k], whole[k])
    assert "weights" not in whole


def test_renderer_background_modes():
    geo, mat, ren = build(background="batch")
    ren.eval()
    o, d = rays(8)
    with torch.no_grad():
        red = ren(o, d, bg_color=torch.tensor([1.0, 0.0, 0.0]))
        green = ren(o, d, bg_color=torch.tensor([0.0, 1.0, 0.0]))
    diff = red["comp_rgb"] - green["comp_rgb"]
    left = 1 - red["opacity"][:, 0]
    torch.testing.assert_close(diff, torch.stack([left, -left, torch.zeros_like(left)], -1), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="background='sky'"):
        build(background="sky")
    with pytest.raises(ValueError, match="2 proposal_networks but 1 num_proposal_samples"):
        build(num_proposal_samples=[16])
