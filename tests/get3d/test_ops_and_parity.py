"""StyleGAN ops against straightforward references, and the generator against the official one
(``parity_small.pt``: the official GET3D generator's intermediate outputs for given random weights)."""

import pytest
import torch
import torch.nn.functional as F

from .conftest import data_file, get3d

get3d()
from custom.get3d import networks as N  # noqa: E402
from custom.get3d import ops  # noqa: E402
from custom.get3d.checkpoint import check_state_dict, module_shapes  # noqa: E402
from custom.get3d.generator import GET3DGenerator  # noqa: E402


def test_fused_and_unfused_modconv_agree():
    torch.manual_seed(0)
    x, w, s = torch.randn(3, 5, 8, 8), torch.randn(7, 5, 3, 3), torch.randn(3, 5)
    noise = torch.randn(16, 16)
    f = N._setup_filter()
    for up, nz in ((1, None), (2, noise)):
        for demod in (True, False):
            a = ops.modulated_conv2d(x, w, s, nz if up == 2 else None, up, demod, f, fused=True)
            b = ops.modulated_conv2d(x, w, s, nz if up == 2 else None, up, demod, f, fused=False)
            assert torch.allclose(a, b, atol=1e-5), (up, demod)


def test_conv_up2_equals_upsample_then_conv():
    """The up path is a true convolution (flipped kernel, StyleGAN's flip_weight=False) of the upsampled input."""
    torch.manual_seed(1)
    x, w = torch.randn(2, 4, 6, 6), torch.randn(3, 4, 3, 3)
    f = N._setup_filter()
    ref = F.conv2d(ops.upsample2d(x, f), w.flip([2, 3]), padding=1)
    out = ops.conv2d_up2(x, w, f)
    assert out.shape == ref.shape == (2, 3, 12, 12)
    # the two orders differ only where the zero padding enters at the border
    assert torch.allclose(out[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1], atol=1e-5)


def test_upsample2d_keeps_constants():
    x = torch.full((1, 2, 5, 5), 3.0)
    y = ops.upsample2d(x, N._setup_filter())
    assert y.shape == (1, 2, 10, 10) and torch.allclose(y[..., 2:-2, 2:-2], torch.full_like(y[..., 2:-2, 2:-2], 3.0))


def test_modulated_linear_matches_loop():
    torch.manual_seed(2)
    x, w, s = torch.randn(2, 5, 4), torch.randn(3, 4), torch.randn(2, 4)
    out = ops.modulated_linear(x, w, s)
    for b in range(2):
        wm = w * s[b]
        wm = wm / (wm.square().sum(1, keepdim=True) + 1e-8).sqrt()
        assert torch.allclose(out[b], x[b] @ wm.t(), atol=1e-6)


@pytest.fixture(scope="module")
def parity():
    ref = torch.load(data_file("parity_small.pt"), weights_only=True)
    c = ref["config"]
    gen = GET3DGenerator(dict(z_dim=c["z_dim"], w_dim=c["w_dim"], tri_plane_resolution=c["tri_plane_resolution"],
                              channel_base=c["channel_base"], channel_max=c["channel_max"], tet_res=16,
                              feat_channel=c["feat_channel"], mlp_latent_channel=c["mlp_latent_channel"]))
    check_state_dict(ref["state_dict"], module_shapes(gen), "parity_small.pt")
    gen.load_state_dict(ref["state_dict"], strict=True)
    return gen.eval(), ref


def test_parity_mapping(parity):
    gen, ref = parity
    with torch.no_grad():
        wt, wg = gen.map(ref["z_tex"], ref["z_geo"])
    assert torch.allclose(wt, ref["ws_tex"], atol=1e-5) and torch.allclose(wg, ref["ws_geo"], atol=1e-5)


@pytest.mark.parametrize("fused", ["always", "never"])
def test_parity_triplanes(parity, fused):
    gen, ref = parity
    gen.cfg.fused_modconv = fused
    with torch.no_grad():
        s, t = gen.planes(ref["ws_tex"], ref["ws_geo"])
    gen.cfg.fused_modconv = "inference_only"
    assert (s - ref["sdf_feature"]).abs().max() < 1e-5 * max(1.0, float(ref["sdf_feature"].abs().max()))
    assert (t - ref["tex_feature"]).abs().max() < 1e-5 * max(1.0, float(ref["tex_feature"].abs().max()))


def test_parity_fields_and_rgb(parity):
    gen, ref = parity
    assert gen.shape_min == -0.5 and gen.shape_len == 1.0
    with torch.no_grad():
        sdf, dfm = gen.query_sdf_def(ref["sdf_feature"], ref["ws_geo"], ref["points"])
        feat = gen.query_texture(ref["tex_feature"], ref["ws_tex"], ref["points"])
        rgb = gen.to_rgb(ref["tex_feat"], ref["ws_tex"])
        rgb_chain = gen.query_rgb(ref["tex_feature"], ref["ws_tex"], ref["points"])
    for a, b in ((sdf, ref["sdf"]), (dfm, ref["deformation_raw"]), (feat, ref["tex_feat"]), (rgb, ref["rgb"]),
                 (rgb_chain, ref["rgb"])):
        assert (a - b).abs().max() < 1e-5 * max(1.0, float(b.abs().max()))
