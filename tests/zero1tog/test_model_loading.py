"""Loading Zero-1-to-G's UNet through the real from_pretrained path, with the layout check in front of it."""

import os

import pytest
import torch

from tests.zero1tog.conftest import load_ext

load_ext()
from custom.zero1tog.model import layout as L  # noqa: E402
from custom.zero1tog.model import loading as LD  # noqa: E402
from custom.zero1tog.model import unet as U  # noqa: E402
from tests.zero1tog.test_model_unet import TINY, inputs, run, tiny  # noqa: E402

BASE = {k: v for k, v in TINY.items() if k not in ("class_embed_type", "projection_class_embeddings_input_dim")}
BASE["in_channels"] = 4


def shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_layout_matches_tiny_models_own_state_dicts():
    from diffusers import UNet2DConditionModel

    assert L.check_layout(shapes(tiny()), L.unet_layout({**TINY, "cd_attention_mid": True})) == []
    assert L.check_layout(shapes(UNet2DConditionModel(**BASE)), L.unet_layout(BASE)) == []
    lin = {**TINY, "use_linear_projection": True, "layers_per_block": 2, "cd_attention_mid": True}
    assert L.check_layout(shapes(U.Zero1toGUNet(**lin)), L.unet_layout(lin)) == []
    # and it can tell them apart
    problems = L.check_layout(shapes(tiny()), L.unet_layout({**TINY, "cd_attention_mid": False}))
    assert problems and all("unexpected tensor" in p and "_joint_mid." in p for p in problems)


def test_full_size_layout_and_parameter_count_on_meta():
    cfg = L.zero1tog_unet_config()
    with torch.device("meta"):
        m = U.Zero1toGUNet(**cfg)
    assert L.check_layout(shapes(m), L.unet_layout(cfg)) == []
    n = LD.full_size_parameter_count()
    assert n["base_unet"] == 859_520_964  # the SD-1 UNet with a 768-wide context
    assert n["unet"] == n["layout"] == 910_792_964
    assert n["conv_in_extra"] == 4 * 320 * 9
    assert n["class_embedding"] == 16 * 1280 + 1280 + 1280 * 1280 + 1280
    # 4C^2 + 3C per transformer block: 5 at 320, 5 at 640, 6 at 1280
    assert n["joint_attention"] == sum(k * (4 * c * c + 3 * c) for k, c in ((5, 320), (5, 640), (6, 1280)))


def test_load_zero1tog_folder_through_from_pretrained(tmp_path):
    m = tiny()
    m.save_pretrained(tmp_path / "unet")
    got = LD.load_unet(str(tmp_path)).eval()
    assert isinstance(got, U.Zero1toGUNet)
    x, ctx, lab = inputs()
    assert torch.allclose(run(got, x, ctx, lab), run(m, x, ctx, lab), atol=1e-6)


def test_grow_base_sd_image_variations_unet(tmp_path):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    base = UNet2DConditionModel(**BASE).eval()
    base.save_pretrained(tmp_path / "unet", safe_serialization=False)  # a .bin, as older hub folders have
    grown = LD.load_unet(str(tmp_path)).eval()
    assert grown.config.in_channels == 8 and grown.config.class_embed_type == "projection"
    w = grown.conv_in.weight
    assert torch.equal(w[:, :4], base.conv_in.weight) and torch.count_nonzero(w[:, 4:]) == 0
    for n, p in grown.named_parameters():
        if "attn_joint_mid.to_out" in n:
            assert torch.count_nonzero(p) == 0
    with torch.no_grad():  # without the class term, the grown model is the base model on the noisy latent
        for p in grown.class_embedding.parameters():
            p.zero_()
    x, ctx, lab = inputs()
    with torch.no_grad():
        want = base(x[:, :4], 500, ctx).sample
    assert torch.allclose(run(grown, x, ctx, lab, cross_view=False), want, atol=1e-5)


def _rewrite(folder, edit):
    from safetensors.torch import load_file, save_file

    f = os.path.join(folder, "diffusion_pytorch_model.safetensors")
    sd = load_file(f)
    edit(sd)
    save_file(sd, f)


def test_loader_rejects_wrong_shape_and_missing_tensor_with_the_message(tmp_path):
    from threestudio.utils.weights import PretrainedWeightsError

    tiny().save_pretrained(tmp_path / "unet")
    bad = "down_blocks.0.attentions.0.transformer_blocks.0.attn_joint_mid.to_q.weight"

    def wrong(sd):
        sd[bad] = torch.zeros(40, 16)

    _rewrite(tmp_path / "unet", wrong)
    with pytest.raises(LD.UNetLayoutError) as e:
        LD.load_unet(str(tmp_path))
    msg = str(e.value)
    assert f"tensor {bad} has shape (40, 16), the layout has (40, 40)" in msg
    assert "1 difference(s)" in msg and "lambdalabs/sd-image-variations-diffusers" in msg
    assert isinstance(e.value, PretrainedWeightsError)

    _rewrite(tmp_path / "unet", lambda sd: sd.pop("conv_out.bias"))
    with pytest.raises(LD.UNetLayoutError, match=r"missing tensor conv_out.bias \(expected shape \(4,\)\)"):
        LD.load_unet(str(tmp_path))


def test_official_architecture_is_required_on_request(tmp_path):
    tiny().save_pretrained(tmp_path / "unet")
    with pytest.raises(LD.UNetLayoutError, match=r"config block_out_channels=\(40, 80\) \(SD-image-variations: "
                                                  r"\(320, 640, 1280, 1280\)\)"):
        LD.load_unet(str(tmp_path), require_official=True)
    assert L.architecture_differences(L.zero1tog_unet_config()) == []


def test_missing_folder_and_fork_block_names(tmp_path):
    from threestudio.utils.weights import PretrainedWeightsError

    with pytest.raises(PretrainedWeightsError, match="no UNet config.json"):
        LD.load_unet(str(tmp_path / "nowhere"))
    fork = {**TINY, "down_block_types": ["CrossAttnDownBlockMV2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlockMV2D"], "mid_block_type": "UNetMidBlockMV2DCrossAttn"}
    assert L.unet_layout({**fork, "cd_attention_mid": True}) == L.unet_layout({**TINY, "cd_attention_mid": True})
    assert U.Zero1toGUNet(**fork).config.down_block_types == ("CrossAttnDownBlock2D", "DownBlock2D")
