"""Zero-1-to-G's multi-view, multi-attribute UNet (custom/zero1tog/model/unet.py) on tiny random configs."""

import math

import pytest
import torch

from tests.zero1tog.conftest import load_ext

load_ext()
from custom.zero1tog.model import unet as U  # noqa: E402

# heads of 20 and 40 channels (2 per level): rotary axes (4, 8, 8) and (8, 16, 16)
TINY = dict(sample_size=4, in_channels=8, out_channels=4, layers_per_block=1, block_out_channels=(40, 80),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=16, attention_head_dim=2, norm_num_groups=8, class_embed_type="projection",
            projection_class_embeddings_input_dim=16)
B, D, V = 1, 5, 6


def tiny(seed=0, randomise_joint=True, **kw):
    torch.manual_seed(seed)
    m = U.Zero1toGUNet(**{**TINY, **kw}).eval()
    if randomise_joint:  # the joint branch starts at zero; give it weights so that it does something
        with torch.no_grad():
            for n, p in m.named_parameters():
                if "attn_joint_mid.to_out" in n:
                    p.normal_(0, 0.2)
    return m


def inputs(seed=1, d=D):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(d * B * V, 8, 4, 4, generator=g)
    ctx = torch.randn(d * B * V, 1, 16, generator=g)
    elev = torch.full((B, V), 0.3)
    azim = torch.tensor([[0, 90, 180, 270, 30, 330]]).float().deg2rad()
    lab = U.folded_class_labels(torch.full((B,), 0.3), elev, azim, attributes=range(d))
    return x, ctx, lab


def run(m, x, ctx, lab, **kw):
    with torch.no_grad():
        return m(x, 500, ctx, class_labels=lab, **kw).sample


def idx(d, v, b=0):
    return (d * B + b) * V + v


def test_shapes_six_views_five_attributes_and_folding():
    m = tiny()
    x, ctx, lab = inputs()
    assert lab.shape == (30, 16)
    y = run(m, x, ctx, lab)
    assert y.shape == (30, 4, 4, 4)
    per_object = torch.randn(2, D, V, 3, 4)
    folded = U.fold(per_object)
    assert torch.equal(folded[(3 * 2 + 1) * V + 4], per_object[1, 3, 4])
    assert torch.equal(U.unfold(folded, num_objects=2), per_object)
    with pytest.raises(ValueError, match="attribute-major"):
        run(m, x[:29], ctx[:29], lab[:29])


def _changed(m, k_attr, k_view, **kw):
    x, ctx, lab = inputs()
    y0 = run(m, x, ctx, lab, **kw)
    x2 = x.clone()
    x2[idx(k_attr, k_view)] += torch.randn(8, 4, 4)
    y1 = run(m, x2, ctx, lab, **kw)
    return (y1 - y0).abs().flatten(1).amax(1)  # per batch item


def test_cross_view_attention_mixes_views_only_when_enabled():
    m = tiny()
    on = _changed(m, 0, 2, joint_attention=False, cross_view=True)
    off = _changed(m, 0, 2, joint_attention=False, cross_view=False)
    assert on[idx(0, 4)] > 1e-3 and on[idx(0, 0)] > 1e-3
    assert off[idx(0, 4)] < 1e-6 and off[idx(0, 0)] < 1e-6
    assert off[idx(0, 2)] > 1e-3
    # views of other attributes stay apart without joint attention (the batch is attribute-major)
    assert on[idx(1, 4)] < 1e-6 and on[idx(4, 2)] < 1e-6


def test_joint_attention_mixes_attributes_of_the_same_view_only_when_enabled():
    m = tiny()
    on = _changed(m, 0, 2, joint_attention=True, cross_view=False)
    off = _changed(m, 0, 2, joint_attention=False, cross_view=False)
    assert on[idx(3, 2)] > 1e-3 and on[idx(4, 2)] > 1e-3
    assert on[idx(3, 4)] < 1e-6  # another view: no cross-view attention here
    assert off[idx(3, 2)] < 1e-6


def test_joint_branch_starts_at_zero_and_stage1_runs_one_attribute():
    m = tiny(randomise_joint=False)
    x, ctx, lab = inputs()
    assert torch.allclose(run(m, x, ctx, lab, joint_attention=True), run(m, x, ctx, lab, joint_attention=False),
                          atol=1e-6)
    x1, ctx1, lab1 = inputs(d=1)
    assert run(m, x1, ctx1, lab1, num_attributes=1).shape == (6, 4, 4, 4)
    assert m.mv_context(x1, num_attributes=1).joint is False


def test_matches_diffusers_unet_without_multiview_parts():
    """The rewritten block forward equals diffusers' own when cross-view and joint attention are off."""
    from diffusers import UNet2DConditionModel

    m = tiny()
    ref = UNet2DConditionModel(**TINY).eval()
    missing, unexpected = ref.load_state_dict(m.state_dict(), strict=False)
    assert not missing and all("_joint_mid." in k for k in unexpected)
    x, ctx, lab = inputs()
    with torch.no_grad():
        want = ref(x, 500, ctx, class_labels=lab).sample
    got = run(m, x, ctx, lab, joint_attention=False, cross_view=False)
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(run(m, x, ctx, lab, joint_attention=False), want, atol=1e-3)


def test_rope_is_relative_hand_computed():
    head_dim = 10  # axes (2, 4, 4): frequencies [1], [1, 1e-2], [1, 1e-2] for theta 1e4
    assert U.rope_axis_dims(head_dim) == (2, 4, 4)
    assert U.rope_axis_dims(40) == (8, 16, 16) and U.rope_axis_dims(160) == (32, 64, 64)
    freqs = [[1.0], [1.0, 1e-2], [1.0, 1e-2]]
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(head_dim, generator=g, dtype=torch.float64), torch.randn(head_dim, generator=g,
                                                                               dtype=torch.float64)
    p, pk = torch.tensor([1, 2, 3]), torch.tensor([0, 5, 1])

    def dot(pq, pk_):
        ids = torch.stack([pq, pk_])
        cos, sin = U.rope_tables(ids, head_dim)
        rq = U.apply_rope(q.float()[None], cos[:1], sin[:1])[0]
        rk = U.apply_rope(k.float()[None], cos[1:], sin[1:])[0]
        return float((rq.double() * rk.double()).sum())

    # by hand: pair j of axis i rotates by (pk_i - pq_i) * f relative to the other: (qa ka + qb kb) cos + (qb ka - qa kb) sin
    want, j = 0.0, 0
    for i, fs in enumerate(freqs):
        for f in fs:
            th = float(pk[i] - p[i]) * f
            qa, qb, ka, kb = q[2 * j], q[2 * j + 1], k[2 * j], k[2 * j + 1]
            want += float((qa * ka + qb * kb) * math.cos(th) + (qb * ka - qa * kb) * math.sin(th))
            j += 1
    assert dot(p, pk) == pytest.approx(want, abs=1e-5)
    shift = torch.tensor([3, -2, 7])
    assert dot(p + shift, pk + shift) == pytest.approx(want, abs=1e-5)
    assert abs(dot(p, pk + torch.tensor([1, 0, 0])) - want) > 1e-3
    ids = U.joint_position_ids(2, 3, 4)
    assert ids.shape == (24, 3) and ids[13].tolist() == [1, 0, 1]


def test_joint_attention_sees_rows_and_attributes_through_rope():
    """Permuting the attribute order changes the result only through the rotary ids (no other position signal)."""
    m = tiny()
    blk = m.down_blocks[0].attentions[0].transformer_blocks[0]
    proc = U.JointAttnProcessor()
    h = torch.randn(D * V, 16, 40)
    ctx = U.MVContext(num_views=V, num_attributes=D, sample_hw=(4, 4))
    with torch.no_grad():
        y = proc(blk.attn_joint_mid, h, mv=ctx)
        perm = torch.tensor([1, 0, 2, 3, 4])
        hp = h.view(D, V, 16, 40)[perm].reshape(D * V, 16, 40)
        yp = proc(blk.attn_joint_mid, hp, mv=ctx).view(D, V, 16, 40)[perm].reshape(D * V, 16, 40)
        norope = U.JointAttnProcessor(axes=(0, 0, 0))
        z = norope(blk.attn_joint_mid, h, mv=ctx)
        zp = norope(blk.attn_joint_mid, hp, mv=ctx).view(D, V, 16, 40)[perm].reshape(D * V, 16, 40)
    assert (y - yp).abs().max() > 1e-4  # attribute ids matter
    assert torch.allclose(z, zp, atol=1e-5)  # without rope the attention is permutation-equivariant


def test_class_labels_and_embedding_distinguish_camera_and_attribute():
    lab = U.camera_attribute_labels(0.3, 0.3, math.pi / 2, 2)
    x = torch.tensor([0.3, 0.0, math.pi / 2, 0, 0, 1, 0, 0])
    assert torch.allclose(lab, torch.cat([x.sin(), x.cos()]), atol=1e-6)
    m = tiny()
    x, ctx, lab = inputs()
    emb = m.class_embedding(lab)
    assert (emb[idx(0, 1)] - emb[idx(0, 2)]).abs().max() > 1e-4  # camera
    assert (emb[idx(0, 1)] - emb[idx(3, 1)]).abs().max() > 1e-4  # attribute
    lab2 = lab.clone()
    lab2[idx(0, 1)] = lab[idx(3, 1)]
    d = (run(m, x, ctx, lab2, cross_view=False, joint_attention=False)
         - run(m, x, ctx, lab, cross_view=False, joint_attention=False)).abs().flatten(1).amax(1)
    assert d[idx(0, 1)] > 1e-4 and d[idx(0, 2)] < 1e-6


def test_save_pretrained_round_trip_keeps_multiview_config(tmp_path):
    m = tiny(num_views=6, joint_rope_theta=100.0)
    m.save_pretrained(tmp_path)
    m2 = U.Zero1toGUNet.from_pretrained(tmp_path).eval()
    assert m2.config.num_views == 6 and m2.config.joint_rope_theta == 100.0 and m2.config.cd_attention_mid
    assert type(m2.down_blocks[0].attentions[0].transformer_blocks[0]) is U.MVTransformerBlock
    x, ctx, lab = inputs()
    assert torch.allclose(run(m, x, ctx, lab), run(m2, x, ctx, lab), atol=1e-6)
