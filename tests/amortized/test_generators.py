"""Generators: per-prompt fields that differ by prompt, gradients reaching the parameters, 3dconv-net batching; the
text-conditioned background; the VolSDF renderer's pieces against references."""


import pytest
import torch

TINY = {
    "hyper-ingp": {"text_dim": 16, "hyper_dim": 8, "head_hidden": 8,
                   "pos_encoding_config": {"n_levels": 4, "n_features_per_level": 2, "log2_hashmap_size": 10,
                                           "base_resolution": 4, "per_level_scale": 1.5, "backend": "torch"}},
    "3dconv-net": {"text_dim": 16, "z_dim": 8, "w_dim": 16, "resolution": 16, "channels": [16, 8, 8],
                   "out_channels": 8, "bias_volume_max_res": 8, "head_hidden": 8},
    "triplane-transformer": {"text_dim": 16, "width": 32, "n_blocks": 2, "n_heads": 4, "plane_tokens": 4,
                             "plane_channels": 8, "head_hidden": 8},
}


def _gen(name):
    import threestudio

    torch.manual_seed(0)
    return threestudio.find(name, "geometry")(TINY[name])


@pytest.mark.parametrize("name", list(TINY))
def test_fields_differ_by_prompt_and_gradients_reach_parameters(amz, name):
    g = _gen(name)
    if name == "hyper-ingp":  # the hash table starts at ~1e-4: give it content so prompts are told apart
        with torch.no_grad():
            for p in g.encoding.parameters():
                p.normal_(0, 0.1)
    k = 3
    pooled, tokens, noise = torch.randn(k, 16), torch.randn(k, 6, 16), torch.randn(k, 8)
    cache = g.generate(pooled, tokens, noise)
    pts = (torch.rand(1, 200, 3) * 2 - 1).expand(k, -1, -1) * 1.5
    out = g.query(cache, pts)
    assert out["sdf"].shape == (k, 200, 1) and out["features"].shape == (k, 200, 3)
    for i in range(k):
        for j in range(i + 1, k):
            assert (out["sdf"][i] - out["sdf"][j]).abs().max() > 1e-4
            assert (out["features"][i] - out["features"][j]).abs().max() > 1e-4
    # the same text (and noise) gives the same field
    again = g.query(g.generate(pooled[:1], tokens[:1], noise[:1]), pts[:1])
    if name != "3dconv-net":  # 3dconv-net draws new per-voxel noise in training mode
        assert torch.allclose(again["sdf"], out["sdf"][:1], atol=1e-5)
    (out["sdf"].square().mean() + out["features"].square().mean()).backward()
    no_grad = [n for n, p in g.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    if name == "3dconv-net":  # noise strengths start at 0 and get gradients only through the random noise
        no_grad = [n for n in no_grad if "noise_strength" not in n]
    assert no_grad == [], f"parameters without gradient: {no_grad}"
    # the sphere bias is part of the SDF
    raw = g.decode(cache, pts)["sdf"]
    assert torch.allclose(out["sdf"] - raw, pts.norm(dim=-1, keepdim=True) - g.cfg.sphere_bias, atol=1e-5)


def test_3dconv_batch4_equals_four_batch1_calls(amz):
    g = _gen("3dconv-net").eval()  # evaluation noise: the fixed buffers
    pooled, noise = torch.randn(4, 16), torch.randn(4, 8)
    batched = g.generate(pooled, None, noise)
    single = torch.cat([g.generate(pooled[i : i + 1], None, noise[i : i + 1]) for i in range(4)])
    assert batched.shape == (4, 8, 16, 16, 16)
    assert torch.allclose(batched, single, atol=1e-5, rtol=1e-5)
    pts = torch.rand(4, 50, 3) * 3 - 1.5
    q4 = g.query(batched, pts)["sdf"]
    q1 = torch.cat([g.query(single[i : i + 1], pts[i : i + 1])["sdf"] for i in range(4)])
    assert torch.allclose(q4, q1, atol=1e-5)


def test_modulated_conv_matches_grouped_reference(amz):
    from custom.amortized.models.conv3d_net import modulated_conv3d, modulated_conv3d_grouped

    torch.manual_seed(1)
    x, w, s = torch.randn(3, 4, 5, 5, 5), torch.randn(6, 4, 3, 3, 3), torch.randn(3, 4)
    for demod in (True, False):
        assert torch.allclose(modulated_conv3d(x, w, s, demod), modulated_conv3d_grouped(x, w, s, demod), atol=1e-4)


def test_triplane_samples_the_right_plane_cells(amz):
    """A point's feature is the concatenation of its xy, xz and yz plane samples."""
    g = _gen("triplane-transformer")
    planes = torch.zeros(1, 3, 8, 8, 8)
    planes[0, 0, 0] = torch.arange(8.0)[None, :]  # xy plane, channel 0 = x cell index
    planes[0, 1, 1] = torch.arange(8.0)[:, None]  # xz plane, channel 1 = z cell index
    planes[0, 2, 2] = torch.arange(8.0)[:, None]  # yz plane, channel 2 = z cell index
    captured = {}
    g.sdf_head.register_forward_hook(lambda m, i, o: captured.setdefault("feat", i[0]))
    r = g.cfg.radius
    cell = lambda i: ((i + 0.5) / 8 * 2 - 1) * r  # noqa: E731  centre of cell i in world units
    pts = torch.tensor([[[cell(2), cell(5), cell(6)]]])
    g.decode(planes, pts)
    f = captured["feat"][0, 0]
    assert f[0].item() == pytest.approx(2.0) and f[8 + 1].item() == pytest.approx(6.0)
    assert f[16 + 2].item() == pytest.approx(6.0)


def test_text_environment_map(amz):
    import threestudio

    bg = threestudio.find("amortized-text-environment-map", "background")(
        {"text_dim": 16, "hyper_dim": 8, "hidden": 8, "random_aug": False,
         "dir_encoding_config": {"n_levels": 2, "log2_hashmap_size": 8, "base_resolution": 4, "per_level_scale": 1.0,
                                 "backend": "torch"}})
    with torch.no_grad():
        for p in bg.encoding.parameters():
            p.normal_(0, 0.5)
    dirs = torch.randn(1, 4, 4, 3).expand(2, -1, -1, -1)
    text = torch.randn(2, 16)
    c = bg(dirs, text)
    assert c.shape == (2, 4, 4, 3) and ((c > 0) & (c < 1)).all()
    assert (c[0] - c[1]).abs().max() > 1e-4  # conditioned on the text
    c.sum().backward()
    assert bg.hyper[0].weight.grad.abs().sum() > 0
    bg_aug = threestudio.find("amortized-text-environment-map", "background")(
        {"text_dim": 16, "random_aug": True, "random_aug_prob": 1.0,
         "dir_encoding_config": {"n_levels": 2, "log2_hashmap_size": 8, "base_resolution": 4, "backend": "torch"}})
    solid = bg_aug(dirs, text)
    assert torch.allclose(solid[0], solid[0, :1, :1].expand_as(solid[0]))  # whole background one colour


def test_volsdf_pieces_against_references(amz):
    from custom.amortized.models.renderer import sample_pdf, volsdf_density, weights_from_alpha

    beta = 1 / 30
    s = torch.linspace(-0.3, 0.3, 41)
    ref = torch.where(s > 0, 0.5 * torch.exp(-s / beta), 1 - 0.5 * torch.exp(s / beta)) / beta  # Laplace CDF(-s)/β
    assert torch.allclose(volsdf_density(s, beta), ref, rtol=1e-5, atol=1e-4)
    a = torch.rand(5, 7)
    w = weights_from_alpha(a)
    for j in range(7):
        assert torch.allclose(w[:, j], a[:, j] * torch.prod(1 - a[:, :j], dim=1))
    # inverse-CDF samples follow the weights: all mass in one bin -> all samples there
    bins = torch.linspace(0, 1, 11).expand(2, -1)
    wts = torch.zeros(2, 10)
    wts[:, 3] = 1.0
    t = sample_pdf(bins, wts, 64, deterministic=False)
    assert ((t >= 0.3) & (t <= 0.4)).float().mean() > 0.95


def test_renderer_normals_match_an_analytic_sphere(amz):
    """A generator whose field is the sphere bias alone: finite-difference normals equal the radial direction and the
    silhouette covers the sphere's projection."""
    import threestudio

    from custom.amortized.data import rays_for, turntable_cameras, CameraSettings

    g = _gen("hyper-ingp")
    with torch.no_grad():
        g.hyper[-1].weight.zero_()
        g.hyper[-1].bias.zero_()
    mat = threestudio.find("no-material", "material")({})
    bg = threestudio.find("neural-environment-map", "background")({})
    r = threestudio.find("amortized-volsdf-renderer", "renderer")({"n_proposal": 64, "n_importance": 32},
                                                                   geometry=g, material=mat, background=bg)
    r.eval()
    cams = turntable_cameras(2, CameraSettings(eval_camera_distance=2.0, eval_fovy_deg=60.0))
    ro, rd = rays_for(cams["c2w"][:1], cams["fovy_rad"][:1], 16, 16)
    cache = g.generate(torch.randn(1, 16))
    out = r(cache, ro, rd, n_view=1, need_normal=True)
    hit = out["opacity"][0, ..., 0] > 0.99
    # rays whose closest approach to the origin is inside the sphere (radius 0.5) hit it
    o, d = ro[0], rd[0]
    closest = (o - (o * d).sum(-1, keepdim=True) * d).norm(dim=-1)
    assert torch.equal(hit[closest < 0.45], torch.ones_like(hit[closest < 0.45]))
    assert (out["opacity"][0, ..., 0][closest > 0.75] < 0.05).all()
    depth = out["depth"][0, ..., 0] / out["opacity"][0, ..., 0].clamp_min(1e-6)
    p = o + d * depth[..., None]
    n = out["comp_normal"][0] / out["opacity"][0].clamp_min(1e-6)
    cos = torch.nn.functional.cosine_similarity(n[hit], p[hit], dim=-1)
    assert cos.min() > 0.98
    assert torch.allclose(p[hit].norm(dim=-1), torch.full_like(p[hit].norm(dim=-1), 0.5), atol=0.03)
