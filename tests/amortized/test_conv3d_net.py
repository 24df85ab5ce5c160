"""3dconv-net as the authors built it (``scaledreamer.md`` 2.7): StyleGAN's equalized-learning-rate layers in the
mapping, text and affine layers (a linear text layer); synthesis blocks that run conv0 at the input resolution and
then upsample (align_corners=True); bias volumes (randn / sqrt(C)) between conv0 and conv1 at 8^3..64^3 only; the
parameter counts of the two recipes. Every expectation is built by hand from plain torch ops."""

import math

import pytest
import torch
import torch.nn.functional as F

SQRT2 = math.sqrt(2.0)


def _net(amz, **over):
    import threestudio

    cfg = {"text_dim": 1024, "z_dim": 64, "w_dim": 256, "resolution": 16, "channels": [16, 64, 8],
           "out_channels": 8, "bias_volume_max_res": 64, "head_hidden": 8}
    cfg.update(over)
    torch.manual_seed(0)
    return threestudio.find("3dconv-net", "geometry")(cfg)


def _fc(layer, x, lrelu):
    """Equalized FC by hand: stored weight times 1/sqrt(fan_in); leaky ReLU (0.2) times sqrt(2) when lrelu."""
    y = x @ (layer.weight / math.sqrt(layer.weight.shape[1])).t() + layer.bias
    return F.leaky_relu(y, 0.2) * SQRT2 if lrelu else y


def test_equalized_linear_statistics(amz):
    from custom.amortized.models.conv3d_net import EqualizedLinear

    torch.manual_seed(0)
    lin, act = EqualizedLinear(1280, 256), EqualizedLinear(256, 256, activation="lrelu")
    for layer in (lin, act):  # stored N(0, 1): Adam's steps are the same fraction of every weight
        assert abs(layer.weight.std().item() - 1.0) < 0.02 and abs(layer.weight.mean().item()) < 0.02
        assert torch.all(layer.bias == 0)
    x = torch.randn(4096, 1280)
    y = lin(x)
    assert torch.allclose(y, _fc(lin, x, False), atol=1e-5)
    assert abs(y.square().mean().item() - 1.0) < 0.05  # unit second moment out for unit in
    h = torch.randn(4096, 256)
    z = act(h)
    assert torch.allclose(z, _fc(act, h, True), atol=1e-5)
    # lrelu(0.2) * sqrt(2) of a unit Gaussian: E[y^2] = 2 * (0.5 + 0.5 * 0.04) = 1.04
    assert abs(z.square().mean().item() - 1.04) < 0.06
    assert EqualizedLinear(8, 3, bias_init=1.0).bias.eq(1.0).all()


def test_mapping_text_and_affine_layers_are_equalized(amz):
    from custom.amortized.models.conv3d_net import EqualizedLinear, normalize_2nd_moment

    g = _net(amz)
    assert [m.activation for m in g.mapping] == ["lrelu", "lrelu"]
    assert isinstance(g.text_fc, EqualizedLinear) and g.text_fc.activation == "linear"
    assert not any(isinstance(m, (torch.nn.Linear, torch.nn.LeakyReLU)) for m in list(g.mapping) + [g.text_fc])
    affines = [m.affine for b in g.blocks for m in (getattr(b, "conv0", None), b.conv1, b.torgb) if m is not None]
    assert len(affines) == 3 * len(g.blocks) - 1
    for a in affines:
        assert isinstance(a, EqualizedLinear) and a.activation == "linear"
        assert a.bias.eq(1.0).all() and abs(a.weight.std().item() - 1.0) < 0.1
    # w by hand: normalise z, two lrelu FCs, concat the text, one linear FC
    pooled, z = torch.randn(3, 1024), torch.randn(3, 64)
    h = normalize_2nd_moment(z)
    for layer in g.mapping:
        h = _fc(layer, h, True)
    expect = _fc(g.text_fc, torch.cat([h, pooled], dim=-1), False)
    w = g.mapping_w(pooled, z)
    assert torch.allclose(w, expect, atol=1e-5)
    # the text layer is linear: it does not cut negative outputs (w has both signs in equal measure)
    assert 0.3 < (w < 0).float().mean().item() < 0.7


def _grouped(x, weight, styles, demod):
    """StyleGAN2's per-sample modulated weights, one grouped convolution (the authors' form)."""
    b, cin = styles.shape
    wt = weight[None] * styles[:, None, :, None, None, None]
    if demod:
        wt = wt * (wt.square().sum(dim=(2, 3, 4, 5), keepdim=True) + 1e-8).rsqrt()
    y = F.conv3d(x.reshape(1, b * cin, *x.shape[2:]), wt.reshape(-1, cin, *wt.shape[3:]),
                 padding=weight.shape[-1] // 2, groups=b)
    return y.reshape(b, -1, *y.shape[2:])


def _up(x):
    return F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=True)


def test_synthesis_block_order_matches_a_hand_built_block(amz):
    """conv0 at the input resolution -> upsample (align_corners=True) -> bias, lrelu -> + bias volume -> conv1 ->
    ToRGB (1/sqrt(C) style gain, no demodulation) added to the upsampled skip."""
    from custom.amortized.models.conv3d_net import SynthesisBlock

    torch.manual_seed(3)
    blk = SynthesisBlock(3, 4, 5, res=8, out_channels=2, bias_volume=True)
    with torch.no_grad():
        for p in (blk.conv0.bias, blk.conv1.bias, blk.torgb.bias):
            p.normal_()
    x, img, w = torch.randn(2, 3, 4, 4, 4), torch.randn(2, 2, 4, 4, 4), torch.randn(2, 5)
    seen = []
    handle = blk.conv0.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[-1]))
    out_x, out_img = blk(x, img, w, "none")
    handle.remove()
    assert seen == [4]  # conv0 convolves the 4^3 input, not an upsampled one

    def act(y, bias):
        return (F.leaky_relu(y + bias[None, :, None, None, None], 0.2) * SQRT2).clamp(-256, 256)

    h = act(_up(_grouped(x, blk.conv0.weight, _fc(blk.conv0.affine, w, False), True)), blk.conv0.bias)
    h = h + blk.bias_volume[None]
    h = act(_grouped(h, blk.conv1.weight, _fc(blk.conv1.affine, w, False), True), blk.conv1.bias)
    rgb = _grouped(h, blk.torgb.weight, _fc(blk.torgb.affine, w, False) / math.sqrt(4), False)
    rgb = rgb + blk.torgb.bias[None, :, None, None, None] + _up(img)
    assert out_x.shape == (2, 4, 8, 8, 8) and out_img.shape == (2, 2, 8, 8, 8)
    assert torch.allclose(out_x, h, atol=1e-4) and torch.allclose(out_img, rgb, atol=1e-4)
    # upsampling first (the order this replaces) gives something else
    other = act(_grouped(_up(x), blk.conv0.weight, _fc(blk.conv0.affine, w, False), True), blk.conv0.bias)
    other = act(_grouped(other + blk.bias_volume[None], blk.conv1.weight, _fc(blk.conv1.affine, w, False), True),
                blk.conv1.bias)
    assert (other - out_x).abs().max() > 1e-2
    # conv0's per-voxel noise lives at the output resolution (added after the upsample)
    assert blk.conv0.noise_const.shape == (8, 8, 8)


def test_bias_volumes_sit_at_8_to_64_only_with_randn_over_sqrt_c(amz):
    g = _net(amz, resolution=16, channels=[16, 64, 8], bias_volume_max_res=64)
    assert g.blocks[0].bias_volume is None  # never at the 4^3 constant
    bv = g.blocks[1].bias_volume  # 64 channels at 8^3
    assert bv.shape == (64, 8, 8, 8)
    assert abs(bv.std().item() * math.sqrt(64) - 1.0) < 0.03 and abs(bv.mean().item()) < 0.01
    with torch.device("meta"):
        full = _net(amz, resolution=128, channels=[512, 512, 512, 256, 128, 64], out_channels=32, head_hidden=64)
    assert [b.bias_volume is not None for b in full.blocks] == [False, True, True, True, True, False]
    assert [tuple(b.bias_volume.shape) for b in full.blocks if b.bias_volume is not None] == [
        (512, 8, 8, 8), (512, 16, 16, 16), (256, 32, 32, 32), (128, 64, 64, 64)]


# bias volumes: 512 * 8^3 + 512 * 16^3 + (256 m) * 32^3 + (128 m) * 64^3 (none at 4^3; the reference note's 86.3M
# for m = 2 counts one at 4^3 too)
@pytest.mark.parametrize("mult,total,bias", [(1, 88.7, 44_302_336), (2, 144.8, 86_245_376)])
def test_parameter_counts_of_the_recipes(amz, mult, total, bias):
    """The full 3DConv-net (DF415 / AT2520: channel multiplier 1; CP100k: 2), built on the meta device."""
    import threestudio

    with torch.device("meta"):
        g = threestudio.find("3dconv-net", "geometry")({"channel_multiplier": mult})
    n = sum(p.numel() for p in g.parameters())
    nb = sum(p.numel() for name, p in g.named_parameters() if "bias_volume" in name)
    assert round(n / 1e6, 1) == total and nb == bias
