"""Loading MVDream's sd-v2.1-base-4view.pt by key mapping: every real tensor name and shape is accepted (meta
tensors, nothing allocated), problems are named, the text tower equals a plain OpenCLIP forward, and a checkpoint
written in that layout round-trips through the real loading path (file and diffusers folder)."""

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from tests.mvdream.conftest import data_file
from threestudio.models.diffusion.mvdream import loading
from threestudio.models.diffusion.mvdream.keymap import CheckpointLayoutError, text_keymap
from threestudio.utils.weights import PretrainedWeightsError


@pytest.fixture(scope="module")
def real_layout():
    spec = json.load(open(data_file("state_dict_shapes.json")))
    sd = {k: torch.empty(v["shape"], device="meta") for k, v in spec["tensors"].items()}
    return spec, sd


def test_accepts_the_real_checkpoint_layout(real_layout):
    spec, sd = real_layout
    assert len(sd) == 1244
    layout = loading.inspect_checkpoint(sd)  # raises on any problem
    ref = spec["config"]["model"]["params"]["unet_config"]["params"]
    got = layout.unet_config
    for k, v in ref.items():
        if k not in ("attention_resolutions", "image_size"):
            assert got[k] == v, k
    assert sorted(got["attention_resolutions"]) == sorted(ref["attention_resolutions"])
    assert layout.vae_config["block_out_channels"] == (128, 256, 512, 512)
    assert layout.text_config["num_hidden_layers"] == 23 and layout.text_config["num_attention_heads"] == 16
    # every component loads strictly (assign: the meta tensors become the parameters)
    n = {}
    for comp in ("unet", "vae", "text_encoder"):
        model = loading.load_component(layout, comp)
        n[comp] = sum(p.numel() for p in model.parameters())
    counts = spec["counts"]["components"]
    assert n["unet"] == counts["model.diffusion_model."]["num_elements"]
    assert n["vae"] == counts["first_stage_model."]["num_elements"]
    # the text model lacks the unused last block, text_projection and logit_scale
    unused = sum(math.prod(s) for s in [(1024,)] * 4 + [(3072, 1024), (3072,), (1024, 1024), (1024,), (4096, 1024),
                                                        (4096,), (1024, 4096), (1024,), (1024, 1024), ()])
    assert n["text_encoder"] == counts["cond_stage_model."]["num_elements"] - unused


def test_names_missing_extra_and_misshapen_tensors(real_layout):
    _, sd = real_layout
    bad = dict(sd)
    del bad["model.diffusion_model.output_blocks.5.1.transformer_blocks.0.attn2.to_v.weight"]
    bad["first_stage_model.encoder.mid.attn_1.q.weight"] = torch.empty(512, 256, 1, 1, device="meta")
    bad["model.diffusion_model.camera_embed.4.weight"] = torch.empty(1280, 1280, device="meta")
    bad["cond_stage_model.model.transformer.resblocks.23.mlp.c_fc.bias"] = torch.empty(4095, device="meta")
    with pytest.raises(CheckpointLayoutError) as e:
        loading.inspect_checkpoint(bad)
    msg = str(e.value)
    assert len(e.value.problems) == 4, msg
    assert "missing tensor 'model.diffusion_model.output_blocks.5.1.transformer_blocks.0.attn2.to_v.weight' " \
           "(expected shape [1280, 1024])" in msg
    assert "'first_stage_model.encoder.mid.attn_1.q.weight' has shape [512, 256, 1, 1], expected [512, 512, 1, 1]" \
        in msg
    assert "unexpected tensor 'model.diffusion_model.camera_embed.4.weight'" in msg
    assert "'cond_stage_model.model.transformer.resblocks.23.mlp.c_fc.bias' has shape [4095], expected [4096]" in msg
    stray = dict(sd)
    stray["ema_decay"] = torch.empty((), device="meta")
    with pytest.raises(CheckpointLayoutError, match="unexpected tensor 'ema_decay'"):
        loading.inspect_checkpoint(stray)


def test_parity_weights_map_with_the_checkpoint_prefix():
    d = torch.load(data_file("parity_tiny.pt"), weights_only=True)
    from threestudio.models.diffusion.mvdream.keymap import infer_unet_config

    sd = {"model.diffusion_model." + k: v for k, v in d["state_dict"].items()}
    parts, _, extra = loading.split_checkpoint(sd)
    assert not extra and len(parts["unet"]) == 308
    cfg = infer_unet_config(parts["unet"], num_head_channels=16)
    unet = loading.build_unet(cfg)
    from threestudio.models.diffusion.mvdream.keymap import unet_keymap

    unet.unet.load_state_dict(unet_keymap(cfg).convert(parts["unet"]), strict=True, assign=True)
    with torch.no_grad():
        out = unet(d["x"], d["timesteps"], d["context"], d["camera"], num_frames=4)
    assert (out - d["output"]).abs().max() < 1e-5


def _open_clip_text_reference(sd, ids, n_blocks, heads):
    """OpenCLIP's text tower (pre-LN blocks, fused in_proj, causal mask, exact GELU), read at the penultimate
    block then ln_final, written from its description: no transformers code involved."""
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"]
    n = ids.shape[1]
    mask = torch.full((n, n), float("-inf")).triu(1)
    for i in range(n_blocks - 1):
        p = f"transformer.resblocks.{i}."
        h = F.layer_norm(x, x.shape[-1:], sd[p + "ln_1.weight"], sd[p + "ln_1.bias"], 1e-5)
        q, k, v = (h @ sd[p + "attn.in_proj_weight"].T + sd[p + "attn.in_proj_bias"]).chunk(3, dim=-1)
        b, L, w = q.shape
        q, k, v = (z.reshape(b, L, heads, w // heads).transpose(1, 2) for z in (q, k, v))
        att = ((q @ k.transpose(-1, -2)) / math.sqrt(w // heads) + mask).softmax(-1) @ v
        att = att.transpose(1, 2).reshape(b, L, w)
        x = x + att @ sd[p + "attn.out_proj.weight"].T + sd[p + "attn.out_proj.bias"]
        h = F.layer_norm(x, x.shape[-1:], sd[p + "ln_2.weight"], sd[p + "ln_2.bias"], 1e-5)
        h = F.gelu(h @ sd[p + "mlp.c_fc.weight"].T + sd[p + "mlp.c_fc.bias"])
        x = x + h @ sd[p + "mlp.c_proj.weight"].T + sd[p + "mlp.c_proj.bias"]
    return F.layer_norm(x, x.shape[-1:], sd["ln_final.weight"], sd["ln_final.bias"], 1e-5)


def test_text_tower_equals_open_clip_penultimate():
    g = torch.Generator().manual_seed(0)
    width, heads, n_blocks, vocab, ctx = 128, 2, 3, 100, 77
    sd = {"token_embedding.weight": torch.randn(vocab, width, generator=g),
          "positional_embedding": torch.randn(ctx, width, generator=g) * 0.1,
          "ln_final.weight": 1 + 0.1 * torch.randn(width, generator=g), "ln_final.bias": 0.1 * torch.randn(width)}
    for i in range(n_blocks):
        p = f"transformer.resblocks.{i}."
        for name, shape in [("ln_1.weight", (width,)), ("ln_1.bias", (width,)), ("ln_2.weight", (width,)),
                            ("ln_2.bias", (width,)), ("attn.in_proj_weight", (3 * width, width)),
                            ("attn.in_proj_bias", (3 * width,)), ("attn.out_proj.weight", (width, width)),
                            ("attn.out_proj.bias", (width,)), ("mlp.c_fc.weight", (4 * width, width)),
                            ("mlp.c_fc.bias", (4 * width,)), ("mlp.c_proj.weight", (width, 4 * width)),
                            ("mlp.c_proj.bias", (width,))]:
            t = torch.randn(shape, generator=g) / math.sqrt(shape[-1])
            sd[p + name] = 1 + 0.1 * t if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") else t
    sd["text_projection"] = torch.randn(width, width, generator=g)
    sd["logit_scale"] = torch.tensor(4.6)
    from threestudio.models.diffusion.mvdream.keymap import infer_text_config, text_unused_shapes

    cfg = infer_text_config(sd)
    assert cfg["num_hidden_layers"] == 2 and cfg["num_attention_heads"] == 2
    model = loading.build_text_encoder(cfg, empty=False).eval()
    km = text_keymap(n_blocks, loading._text_root(model))
    km.unused = text_unused_shapes(n_blocks, width, 4 * width, width)
    model.load_state_dict(km.convert(sd), strict=True)
    ids = torch.randint(0, vocab, (2, ctx), generator=g)
    with torch.no_grad():
        ours = model(ids).last_hidden_state
    ref = _open_clip_text_reference(sd, ids, n_blocks, heads)
    assert (ours - ref).abs().max() < 1e-4 * ref.abs().max()


def test_tiny_checkpoint_round_trips(tiny_mvdream):
    m = loading.load_mvdream(tiny_mvdream.ckpt, ("unet", "vae", "text_encoder", "alphas"))
    for comp in ("unet", "vae", "text_encoder"):
        a, b = getattr(tiny_mvdream.models, comp).state_dict(), getattr(m, comp).state_dict()
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), comp
    raw = torch.load(tiny_mvdream.ckpt, weights_only=True)
    # the autoencoder's mid attention is stored as 1x1 convs (ldm) and loaded as Linear (diffusers)
    q = raw["first_stage_model.encoder.mid.attn_1.q.weight"]
    assert q.dim() == 4 and torch.equal(m.vae.encoder.mid_block.attentions[0].to_q.weight, q[:, :, 0, 0])
    # the schedule: MVDream's "linear" betas (a linspace of square roots, squared), 1000 steps
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    assert torch.allclose(m.alphas_cumprod.double(), torch.cumprod(1 - betas, 0), atol=1e-6)


def test_diffusers_folder_gives_the_same_model(tiny_mvdream, tmp_path):
    from threestudio.models.diffusion.mvdream.convert import main

    folder = tmp_path / "mvdream-diffusers"
    assert main([tiny_mvdream.ckpt, str(folder), "--tokenizer", tiny_mvdream.tokenizer]) == 0
    assert sorted(os.listdir(folder)) == ["model_index.json", "scheduler", "text_encoder", "tokenizer", "unet",
                                          "vae"]
    a = loading.load_mvdream(tiny_mvdream.ckpt, ("unet", "alphas"))
    b = loading.load_mvdream(str(folder), ("unet", "alphas"), checkpoint_file=None)
    g = torch.Generator().manual_seed(1)
    x, ctx, cam = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 77, 64, generator=g), torch.randn(4, 16)
    t = torch.tensor([10, 500, 999, 3])
    with torch.no_grad():
        assert torch.equal(a.unet(x, t, ctx, cam), b.unet(x, t, ctx, cam))
    assert torch.allclose(a.alphas_cumprod, b.alphas_cumprod, atol=1e-6)


def test_problems_and_missing_weights_stop_with_a_clear_message(tiny_mvdream, tmp_path):
    key = "system.guidance.pretrained_model_name_or_path"
    with pytest.raises(PretrainedWeightsError) as e:
        loading.load_mvdream(str(tmp_path / "nowhere" / "sd-v2.1-base-4view.pt"), key=key)
    msg = str(e.value)
    assert key in msg and "MVDream weights not found" in msg and str(tmp_path / "nowhere") in msg
    assert "huggingface-cli download MVDream/MVDream sd-v2.1-base-4view.pt" in msg
    with pytest.raises(PretrainedWeightsError, match="looked for the checkpoint .*sd-v2.1-base-4view.pt"):
        loading.preflight(str(tmp_path), "sd-v2.1-base-4view.pt", key)  # a folder without the file
    raw = torch.load(tiny_mvdream.ckpt, weights_only=True)
    del raw["model.diffusion_model.middle_block.1.proj_out.weight"]
    broken = tmp_path / "broken.pt"
    torch.save(raw, broken)
    with pytest.raises(PretrainedWeightsError) as e:
        loading.preflight(str(broken), None, key)
    assert "missing tensor 'model.diffusion_model.middle_block.1.proj_out.weight'" in str(e.value)
    assert str(broken) in str(e.value)
