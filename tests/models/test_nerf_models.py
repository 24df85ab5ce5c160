"""Geometry, materials, backgrounds and the NeRF renderer, on tiny configs."""

import math

import pytest
import torch

import threestudio
from threestudio.utils.config import ConfigError

SMALL_GRID = {"n_levels": 4, "n_features_per_level": 2, "log2_hashmap_size": 12, "base_resolution": 4,
              "max_resolution": 32}


def build(name, cfg=None, **kw):
    return threestudio.find(name)(cfg or {}, **kw)


def test_progressive_band_hash_grid_switches_levels_on_schedule():
    from threestudio.models.networks import get_encoding

    enc = get_encoding(3, {"otype": "ProgressiveBandHashGrid", **SMALL_GRID, "start_level": 2, "start_step": 10,
                           "update_steps": 5})
    x = torch.rand(16, 3)
    for step, active in [(0, 2), (10, 2), (14, 2), (15, 3), (20, 4), (100, 4)]:
        enc.do_update_step(0, step)
        out = enc(x).view(16, 4, 2)
        assert enc.grid.n_active_levels == active, step
        assert torch.all(out[:, active:] == 0)
        assert torch.all(out[:, :active].abs().sum((0, 2)) > 0)


def test_encoding_config_typo_is_reported():
    from threestudio.models.networks import get_encoding

    with pytest.raises(ConfigError, match="(?s)n_level: unknown key.*did you mean 'n_levels'"):
        get_encoding(3, {"otype": "HashGrid", "n_level": 4})
    with pytest.raises(ConfigError, match="did you mean 'HashGrid'"):
        get_encoding(3, {"otype": "HashGird"})


def test_blob_density_bias_matches_formula():
    geo = build("implicit-volume", {"pos_encoding_config": SMALL_GRID, "density_activation": "none",
                                    "density_bias": "blob_magic3d", "density_blob_scale": 10.0,
                                    "density_blob_std": 0.5})
    torch.nn.init.zeros_(geo.density_network.layers[-1].weight)  # network output 0: density = bias alone
    p = torch.tensor([[0.0, 0.0, 0.0], [0.25, 0.0, 0.0], [0.0, 0.3, 0.4]])
    d = geo(p)["density"][:, 0]
    assert torch.allclose(d, 10 * (1 - p.norm(dim=-1) / 0.5), atol=1e-6)
    geo2 = build("implicit-volume", {"pos_encoding_config": SMALL_GRID, "density_activation": "none",
                                     "density_bias": "blob_dreamfusion", "density_blob_std": 0.5})
    torch.nn.init.zeros_(geo2.density_network.layers[-1].weight)
    d2 = geo2(p)["density"][:, 0]
    assert torch.allclose(d2, 10 * torch.exp(-0.5 * (p**2).sum(-1) / 0.25), atol=1e-6)


def test_sdf_sphere_init_normals_eikonal_and_isosurface():
    geo = build("implicit-sdf", {"pos_encoding_config": SMALL_GRID, "sdf_bias": "sphere", "sdf_bias_params": 0.5,
                                 "isosurface_resolution": 64, "radius": 1.0})
    p = torch.nn.functional.normalize(torch.randn(64, 3), dim=-1) * (0.2 + 0.7 * torch.rand(64, 1))
    out = geo(p, output_normal=True)
    assert torch.allclose(out["sdf"][:, 0], p.norm(dim=-1) - 0.5, atol=1e-2)
    radial = torch.nn.functional.normalize(p, dim=-1)
    assert (out["normal"] * radial).sum(-1).min() > 0.99
    assert geo.eikonal_loss(out["sdf_grad"]) < 1e-3
    mesh = geo.isosurface()
    assert mesh.area().item() == pytest.approx(4 * math.pi * 0.25, rel=0.02)


def test_diffuse_material_shading_modes():
    mat = build("diffuse-with-point-light", {"ambient_light_color": [0.2, 0.2, 0.2],
                                             "diffuse_light_color": [0.8, 0.8, 0.8], "ambient_only_steps": 0})
    mat.eval()
    feat = torch.zeros(2, 3)  # albedo 0.5
    pos = torch.zeros(2, 3)
    n = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]])
    light = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 2.0]])
    rgb = mat(features=feat, positions=pos, shading_normal=n, light_positions=light)
    assert torch.allclose(rgb[0], torch.full((3,), 0.5 * (0.2 + 0.8)))
    assert torch.allclose(rgb[1], torch.full((3,), 0.5 * 0.2))
    tl = mat(features=feat, positions=pos, shading_normal=n, light_positions=light, shading="textureless")
    assert torch.allclose(tl[0], torch.ones(3))
    assert torch.allclose(mat(features=feat, shading="albedo"), torch.full((2, 3), 0.5))


def _sphere_scene(renderer_cfg):
    geo = build("implicit-sdf", {"pos_encoding_config": SMALL_GRID, "sdf_bias": "sphere", "sdf_bias_params": 0.5,
                                 "beta_init": 0.05, "beta_min": 0.0})
    with torch.no_grad():
        geo.sdf_network.layers[-1].weight.zero_()
    mat = build("no-material", {"color_activation": "none"})
    bg = build("solid-color", {"color": [0.0, 0.0, 1.0]})
    r = build("nerf-volume-renderer", {"radius": 1.0, "grid_prune": False, "randomized": False, **renderer_cfg},
              geometry=geo, material=mat, background=bg)
    return geo, r


def test_renderer_matches_dense_quadrature_of_the_same_field():
    geo, r = _sphere_scene({"num_samples_per_ray": 256})
    r.eval()
    o = torch.tensor([[0.0, -3.0, 0.0], [0.3, -3.0, 0.2], [0.0, -3.0, 0.9]])
    d = torch.tensor([[0.0, 1.0, 0.0]]).expand(3, 3)
    with torch.no_grad():
        out = r(o, d)
        # brute force: same step and samples, straight quadrature in float64 along each ray
        step = r.render_step_size
        t = torch.arange(0, 10, step, dtype=torch.float64) + 0.5 * step
        pts = o[:, None].double() + d[:, None].double() * t[None, :, None]
        inside = (pts.abs() <= 1.0).all(-1)
        sdf = pts.norm(dim=-1) - 0.5
        beta = geo.beta.double()
        psi = torch.where(sdf > 0, 0.5 * torch.exp(-sdf / beta), 1 - 0.5 * torch.exp(sdf / beta))  # Laplace CDF of -sdf
        sigma = psi / beta * inside
        alpha = 1 - torch.exp(-sigma * step)
        trans = torch.cumprod(torch.cat([torch.ones(3, 1, dtype=torch.float64), 1 - alpha[:, :-1]], 1), 1)
        w = trans * alpha
        opacity = w.sum(1)
    assert opacity[0] > 0.99 and opacity[2] < 0.01
    assert torch.allclose(out["opacity"][:, 0].double(), opacity, atol=2e-3)
    # colour: features are zero -> fg black; background blue weighted by 1 - opacity
    assert torch.allclose(out["comp_rgb"][:, 2].double(), 1 - opacity, atol=2e-3)


def test_renderer_gradients_reach_geometry_and_eval_chunks_agree():
    geo, r = _sphere_scene({"num_samples_per_ray": 64, "eval_chunk_size": 7})
    o = torch.tensor([[0.1, -3.0, 0.0]]).repeat(20, 1) + torch.randn(20, 3) * 0.1
    d = torch.tensor([[0.0, 1.0, 0.0]]).expand(20, 3)
    r.train()
    out = r(o, d)
    out["comp_rgb"].sum().backward()
    assert geo.encoding.grid.table.grad is not None and geo.encoding.grid.table.grad.abs().sum() > 0
    r.eval()
    with torch.no_grad():
        chunked = r(o, d)["opacity"]
        r.cfg.eval_chunk_size = 1000
        whole = r(o, d)["opacity"]
    assert torch.allclose(chunked, whole, atol=1e-6)


def test_occupancy_grid_prunes_empty_space_after_update():
    geo, r = _sphere_scene({"num_samples_per_ray": 64})
    r.cfg.grid_prune = True
    r.estimator.binaries.zero_()
    r.train()
    r.update_step(0, 0)
    occ = r.estimator.binaries
    assert 0 < occ.sum() < occ.numel()
    centre = r.estimator.query(torch.zeros(1, 3))
    corner = r.estimator.query(torch.full((1, 3), 0.95))
    assert bool(centre.all()) and not bool(corner.any())
