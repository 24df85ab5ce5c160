"""NADA pieces: the directional loss, layer selection, paired cameras, no drift of unselected layers, both phases
stepping, and the optional geometry path to CLIP."""

import math

import pytest
import torch

from .conftest import TINY_G, get3d

get3d()
from custom.get3d import layers as L  # noqa: E402
from custom.get3d.clip_loss import directional_loss, text_direction  # noqa: E402
from custom.get3d.system import GET3DNada  # noqa: E402


def test_directional_loss_is_one_minus_cosine():
    theta = torch.tensor([0.0, 0.3, 1.2, math.pi])
    frozen = torch.randn(4, 2)
    delta = torch.stack([torch.ones(4) * 2.5, torch.zeros(4)], -1)  # dI along +x, any length
    t = torch.stack([torch.cos(theta), torch.sin(theta)], -1)
    for i in range(4):
        loss = directional_loss((frozen + delta)[i:i + 1], frozen[i:i + 1], t[i])
        assert torch.allclose(loss, 1 - torch.cos(theta[i:i + 1]), atol=1e-6)
    # the text direction: normalised mean of (target - source) over templates (each embedding normalised first)
    tgt = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    src = torch.tensor([[0.0, -1.0], [-4.0, 0.0]])
    d = text_direction(tgt, src)
    expect = torch.tensor([[1.0, 1.0], [1.0, 1.0]]).mean(0)
    assert torch.allclose(d, expect / expect.norm())


def test_layer_selection_picks_the_most_moved_ws():
    torch.manual_seed(0)
    b, d = 3, 8
    wt0, wg0 = torch.randn(b, 9, d), torch.randn(b, 22, d)
    move_t = torch.zeros(9)
    move_g = torch.zeros(22)
    move_t[[1, 7]] = torch.tensor([0.5, 0.2])
    move_g[[0, 5, 21]] = torch.tensor([0.4, 0.9, 0.1])
    sign = torch.sign(torch.randn(b, 1, d))
    wt1 = wt0 + move_t[None, :, None] * sign
    wg1 = wg0 + move_g[None, :, None] * sign
    st, sg = L.layer_scores(wt0, wt1), L.layer_scores(wg0, wg1)
    assert torch.allclose(st, move_t, atol=1e-6) and torch.allclose(sg, move_g, atol=1e-6)
    assert L.select_layers(st, sg, 3) == [1, 9, 9 + 5]  # 0.9 geo5, 0.5 tex1, 0.4 geo0
    assert L.select_layers(st, sg, 5) == [1, 7, 9, 9 + 5, 9 + 21]


@pytest.fixture
def tiny_system(tiny_clip):
    torch.manual_seed(0)
    sysm = GET3DNada(dict(generator=dict(TINY_G), clip_models=[tiny_clip], clip_models_weight=[1.0],
                          templates=["a photo of a {}."], batch=2, n_views=3, sample_1st=4, n_select=2, iter_1st=1,
                          iter_2nd=2, auto_layer_batch=2, auto_layer_k=5, render_resolution=32,
                          selection_resolution=24))
    # give the "pretrained" generators some structure: random affine biases, the same weights in both
    sysm.build_clip()
    return sysm


def _batch(sysm, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = sysm.cfg
    return {"azimuth": torch.rand(c.batch, c.n_views, generator=g) * 6.28,
            "polar": torch.full((c.batch, c.n_views), 1.2), "sel_azimuth": torch.rand(c.auto_layer_batch, 1,
                                                                                       generator=g) * 6.28,
            "sel_polar": torch.full((c.auto_layer_batch, 1), 1.3),
            "sel_z_tex": torch.randn(c.auto_layer_batch, 32, generator=g),
            "sel_z_geo": torch.randn(c.auto_layer_batch, 32, generator=g)}


def test_layer_index_space(tiny_system):
    names = L.layer_names(tiny_system.generator)
    gen = tiny_system.generator
    assert len(names) == gen.num_ws_tex + gen.num_ws_geo
    assert names[0] == "tex:tri_plane_synthesis.b4.totex"
    assert names[gen.num_ws_tex - 1] == "tex:mlp_synthesis_tex.layers.1"
    assert names[gen.num_ws_tex:gen.num_ws_tex + 3] == ["geo:tri_plane_synthesis.b4.conv1",
                                                         "geo:tri_plane_synthesis.b4.togeo",
                                                         "geo:tri_plane_synthesis.b8.conv0"]
    assert names[-1] == "geo:mlp_synthesis_sdf.layers.1+mlp_synthesis_def.layers.1"


def test_frozen_and_trainable_renders_share_cameras(tiny_system, monkeypatch):
    seen = {}
    for name in ("generator", "generator_frozen"):
        gen = getattr(tiny_system, name)
        orig = gen.synthesize

        def rec(*a, _orig=orig, _name=name, **k):
            seen[_name] = a[2].clone()
            return _orig(*a, **k)
        monkeypatch.setattr(gen, "synthesize", rec)
    batch = _batch(tiny_system)
    tiny_system.nada_losses(torch.tensor([0, 1]), batch)
    assert seen["generator"].shape == (2, 3, 4, 4)
    assert torch.equal(seen["generator"], seen["generator_frozen"])


def test_unselected_layers_do_not_drift_and_both_phases_step(tiny_system, monkeypatch):
    sysm = tiny_system
    opt = sysm.configure_optimizers()
    n_layers = sysm.n_layers
    texture_layers = list(range(sysm.generator.num_ws_tex))
    # step 0: every layer trains (builds Adam momentum everywhere)
    monkeypatch.setattr(sysm, "select_layers", lambda batch: list(range(n_layers)))
    sysm.adapt_step(opt, _batch(sysm, 0), 0)
    before = {n: p.detach().clone() for n, p in sysm.generator.named_parameters()}
    # step 1: only the texture layers are selected; the geometry layers must not move (no stale momentum)
    monkeypatch.setattr(sysm, "select_layers", lambda batch: texture_layers)
    res = sysm.adapt_step(opt, _batch(sysm, 1), 1)
    assert res["phase"] == 0
    tex_mods, geo_mods = L.layer_modules(sysm.generator)
    geo_params = {id(p) for mods in geo_mods for m in mods for p in m.parameters()}
    tex_params = {id(p) for mods in tex_mods for m in mods for p in m.parameters()}
    changed = {n for n, p in sysm.generator.named_parameters() if not torch.equal(p, before[n])}
    named = dict(sysm.generator.named_parameters())
    assert changed and all(id(named[n]) in tex_params for n in changed)
    assert not any(id(named[n]) in geo_params and n in changed for n in named)
    assert "synthesis.generator.tri_plane_synthesis.b4.conv1.weight" not in changed
    # phase 1 recorded every latent's loss; phase 2 trains on the best n_select ones, and steps
    assert torch.isfinite(sysm.pool_loss).all()
    assert sysm.total_steps() == 2 + 2
    best = torch.argsort(sysm.pool_loss)[:2]
    assert sorted(sysm.batch_latents(2).tolist()) == sorted(best.tolist())
    before = {n: p.detach().clone() for n, p in sysm.generator.named_parameters()}
    res = sysm.adapt_step(opt, _batch(sysm, 2), 2)
    assert res["phase"] == 1
    assert any(not torch.equal(p, before[n]) for n, p in sysm.generator.named_parameters())
    # the frozen generator, the mapping networks and to_rgb never change
    assert torch.equal(sysm.generator.synthesis.to_rgb.weight, sysm.generator_frozen.synthesis.to_rgb.weight)
    assert torch.equal(sysm.generator.mapping.fc0.weight, sysm.generator_frozen.mapping.fc0.weight)


def test_real_layer_selection_and_gradient_clipping(tiny_system):
    sysm = tiny_system
    sysm.cfg.gradient_clip_threshold = 1e-3
    opt = sysm.configure_optimizers()
    res = sysm.adapt_step(opt, _batch(sysm, 3), 0)
    assert len(res["selected"]) == 5 and res["selected"] == sorted(res["selected"])
    assert float(res["grad_norm"]) > 0  # the norm before clipping is reported


@pytest.mark.parametrize("mode", ["none", "silhouette", "normal"])
def test_geometry_reaches_clip_only_through_a_geometry_render(tiny_system, mode):
    sysm = tiny_system
    sysm.cfg.geometry_clip = mode
    L.apply_selection(sysm.generator, list(range(sysm.n_layers)))
    res = sysm.nada_losses(torch.tensor([0, 1]), _batch(sysm, 4))
    res["loss"].backward()
    g = sysm.generator.synthesis.generator.mlp_synthesis_sdf.layers[1].weight.grad
    togeo = sysm.generator.synthesis.generator.tri_plane_synthesis.b16.togeo.weight.grad
    tex = sysm.generator.synthesis.generator.mlp_synthesis_tex.layers[1].weight.grad
    assert tex is not None and tex.abs().sum() > 0
    if mode == "none":  # RGB only: texture lookups use detached coordinates (GET3D), the SDF gets nothing
        assert g is None or g.abs().sum() == 0
        assert togeo is None or togeo.abs().sum() == 0
    else:
        assert g is not None and g.abs().sum() > 0 and togeo.abs().sum() > 0


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="system.geometry_clip"):
        GET3DNada(dict(generator=dict(TINY_G), geometry_clip="depth"))
    with pytest.raises(ValueError, match="iso_surface"):
        GET3DNada(dict(generator=dict(TINY_G, iso_surface="marching_cubes")))
