"""Condition encoder (VAE latent + CLIP image token) with tiny random AutoencoderKL / CLIPVisionModelWithProjection
saved and loaded through from_pretrained, then fed to the tiny UNet."""

import pytest
import torch

from tests.zero1tog.conftest import load_ext

load_ext()
from custom.zero1tog.model import conditioning as C  # noqa: E402
from custom.zero1tog.model import unet as U  # noqa: E402
from tests.zero1tog.test_model_unet import inputs, tiny  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from diffusers import AutoencoderKL
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from threestudio.utils.weights import TINY_VAE

    root = tmp_path_factory.mktemp("sdiv")
    torch.manual_seed(0)
    AutoencoderKL(**TINY_VAE).save_pretrained(root / "vae")
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, projection_dim=16)
    CLIPVisionModelWithProjection(cfg).save_pretrained(root / "image_encoder")
    return str(root)


def test_encode_shapes_and_values(folder):
    enc = C.ConditionEncoder.from_pretrained(folder, cond_size=32)
    rgb = torch.rand(2, 3, 48, 48)
    lat, tok = enc.encode(rgb)
    assert lat.shape == (2, 4, 4, 4) and tok.shape == (2, 1, 16)
    # by hand: resize, [-1, 1], posterior mode x 0.18215 / CLIP normalisation, image_embeds
    x = torch.nn.functional.interpolate(rgb, (32, 32), mode="bilinear", antialias=True) * 2 - 1
    with torch.no_grad():
        want = enc.vae.encode(x).latent_dist.mode() * 0.18215
        mean = torch.tensor(C.CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(C.CLIP_STD).view(1, 3, 1, 1)
        px = (torch.nn.functional.interpolate(rgb, (32, 32), mode="bicubic", antialias=True) - mean) / std
        want_tok = enc.image_encoder(pixel_values=px).image_embeds[:, None]
    assert torch.allclose(lat, want, atol=1e-6) and torch.allclose(tok, want_tok, atol=1e-6)
    assert not any(p.requires_grad for p in enc.parameters())
    with pytest.raises(ValueError, match="composite RGBA"):
        enc.encode(torch.rand(1, 4, 32, 32))


def test_condition_feeds_the_folded_unet(folder):
    enc = C.ConditionEncoder.from_pretrained(folder, cond_size=32)
    rgb = torch.rand(1, 3, 32, 32)
    lat, tok = enc.encode(rgb)
    n = 5 * 1 * 6
    cond = C.expand_condition(lat, 5, 6)
    assert cond.shape == (n, 4, 4, 4) and torch.equal(cond[17], lat[0])
    two = C.expand_condition(torch.arange(2.0)[:, None], 5, 6)
    assert torch.equal(U.unfold(two, num_objects=2)[:, :, :, 0], torch.arange(2.0).view(2, 1, 1).expand(2, 5, 6))
    x, _, lab = inputs()
    sample = torch.cat([x[:, :4], cond], 1)
    with torch.no_grad():
        y = tiny()(sample, 10, C.expand_condition(tok, 5, 6), class_labels=lab).sample
    assert y.shape == (n, 4, 4, 4) and torch.isfinite(y).all()


def test_missing_weights_say_where(tmp_path):
    from threestudio.utils.weights import PretrainedWeightsError

    with pytest.raises(PretrainedWeightsError, match="does not exist"):
        C.ConditionEncoder.from_pretrained(str(tmp_path / "nothing"))
