"""The official tensor layout of Zero-1-to-G's UNet, as data: names and shapes worked out from the diffusers config.

- :data:`SD_IMAGE_VARIATIONS_UNET`: the diffusers ``UNet2DConditionModel`` config of
  ``lambdalabs/sd-image-variations-diffusers`` (``unet/config.json``: SD-1 architecture, CLIP ViT-L/14 image
  embedding of 768 numbers as the single cross-attention token).
- :data:`ZERO1TOG_CHANGES`: what the authors' Wonder3D fork changes (``../shared/reference/zero1tog.md`` section 3):
  8 input channels, the 16-number projection class embedding, 6 views, 5 attributes, joint attention modules.
- :func:`unet_layout`: ``{tensor name: shape}`` for a config, written out block by block from diffusers' naming
  (not by building the model), so that it can be held against a built model's ``state_dict`` and against a
  checkpoint's tensors before anything is loaded. :func:`check_layout` lists the differences.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence, Tuple

Shape = Tuple[int, ...]

SD_IMAGE_VARIATIONS = "lambdalabs/sd-image-variations-diffusers"

SD_IMAGE_VARIATIONS_UNET: Dict[str, Any] = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn", attention_head_dim=8, cross_attention_dim=768, norm_num_groups=32,
    norm_eps=1e-5, act_fn="silu", flip_sin_to_cos=True, freq_shift=0, center_input_sample=False, downsample_padding=1,
    mid_block_scale_factor=1, use_linear_projection=False, upcast_attention=False)

# the fork's changes; sample_size 16 = 128-px views through the 8x VAE
ZERO1TOG_CHANGES: Dict[str, Any] = dict(
    in_channels=8, sample_size=16, class_embed_type="projection", projection_class_embeddings_input_dim=16,
    num_views=6, num_attributes=5, multiview_attention=True, cd_attention_mid=True)

# architecture keys whose values must equal SD-image-variations' for a checkpoint to be the official model
ARCHITECTURE_KEYS = ("out_channels", "layers_per_block", "block_out_channels", "down_block_types", "up_block_types",
                     "attention_head_dim", "cross_attention_dim", "norm_num_groups", "use_linear_projection")


def zero1tog_unet_config(**overrides: Any) -> Dict[str, Any]:
    """The full-size Zero-1-to-G UNet config (SD-image-variations + the fork's changes), with ``overrides``."""
    return {**SD_IMAGE_VARIATIONS_UNET, **ZERO1TOG_CHANGES, **overrides}


def _per_level(v: Any, n: int) -> List[int]:
    return [int(x) for x in v] if isinstance(v, (list, tuple)) else [int(v)] * n


def unet_layout(cfg: Mapping[str, Any]) -> Dict[str, Shape]:
    """``{name: shape}`` of every tensor of a diffusers ``UNet2DConditionModel`` (SD-style config: ResNet blocks,
    ``Transformer2DModel`` attentions with GEGLU, projection or no class embedding) plus, when
    ``cd_attention_mid`` is true, the fork's ``norm_joint_mid`` / ``attn_joint_mid`` in every transformer block."""
    from .unet import MV_BLOCK_TYPES

    ch = [int(c) for c in cfg["block_out_channels"]]
    n = len(ch)
    lpb = _per_level(cfg.get("layers_per_block", 2), n)
    depth = _per_level(cfg.get("transformer_layers_per_block", 1) or 1, n)
    ctx = int(cfg["cross_attention_dim"])
    k_in, k_out = int(cfg.get("conv_in_kernel", 3)), int(cfg.get("conv_out_kernel", 3))
    linear = bool(cfg.get("use_linear_projection", False))
    joint = bool(cfg.get("cd_attention_mid", False))
    temb = int(cfg.get("time_embedding_dim") or 4 * ch[0])
    down = [MV_BLOCK_TYPES.get(t, t) for t in cfg["down_block_types"]]
    up = [MV_BLOCK_TYPES.get(t, t) for t in cfg["up_block_types"]]
    for t in down + up + [MV_BLOCK_TYPES.get(cfg.get("mid_block_type", "UNetMidBlock2DCrossAttn"),
                                             cfg.get("mid_block_type", "UNetMidBlock2DCrossAttn"))]:
        if t not in ("CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnUpBlock2D", "UpBlock2D",
                     "UNetMidBlock2DCrossAttn"):
            raise ValueError(f"unet_layout: block type {t!r} is not an SD-style block")
    out: Dict[str, Shape] = {}

    def lin(p: str, o: int, i: int, bias: bool = True) -> None:
        out[p + ".weight"] = (o, i)
        if bias:
            out[p + ".bias"] = (o,)

    def conv(p: str, o: int, i: int, k: int) -> None:
        out[p + ".weight"] = (o, i, k, k)
        out[p + ".bias"] = (o,)

    def norm(p: str, c: int) -> None:
        out[p + ".weight"] = (c,)
        out[p + ".bias"] = (c,)

    def resnet(p: str, cin: int, cout: int) -> None:
        norm(p + ".norm1", cin)
        conv(p + ".conv1", cout, cin, 3)
        lin(p + ".time_emb_proj", cout, temb)
        norm(p + ".norm2", cout)
        conv(p + ".conv2", cout, cout, 3)
        if cin != cout:
            conv(p + ".conv_shortcut", cout, cin, 1)

    def attention(p: str, c: int, kv: int) -> None:
        lin(p + ".to_q", c, c, bias=False)
        lin(p + ".to_k", c, kv, bias=False)
        lin(p + ".to_v", c, kv, bias=False)
        lin(p + ".to_out.0", c, c)

    def transformer(p: str, c: int, layers: int) -> None:
        norm(p + ".norm", c)
        (lin if linear else (lambda q, o, i: conv(q, o, i, 1)))(p + ".proj_in", c, c)
        for t in range(layers):
            b = f"{p}.transformer_blocks.{t}"
            norm(b + ".norm1", c)
            attention(b + ".attn1", c, c)
            if joint:
                norm(b + ".norm_joint_mid", c)
                attention(b + ".attn_joint_mid", c, c)
            norm(b + ".norm2", c)
            attention(b + ".attn2", c, ctx)
            norm(b + ".norm3", c)
            lin(b + ".ff.net.0.proj", 8 * c, c)  # GEGLU: value and gate of the 4c hidden width
            lin(b + ".ff.net.2", c, 4 * c)
        (lin if linear else (lambda q, o, i: conv(q, o, i, 1)))(p + ".proj_out", c, c)

    conv("conv_in", ch[0], int(cfg["in_channels"]), k_in)
    lin("time_embedding.linear_1", temb, ch[0])
    lin("time_embedding.linear_2", temb, temb)
    cet = cfg.get("class_embed_type")
    if cet == "projection":
        lin("class_embedding.linear_1", temb, int(cfg["projection_class_embeddings_input_dim"]))
        lin("class_embedding.linear_2", temb, temb)
    elif cet is not None or cfg.get("num_class_embeds") is not None:
        raise ValueError(f"unet_layout: class_embed_type={cet!r} is not the fork's ('projection' or none)")
    cin = ch[0]
    for i, t in enumerate(down):
        for j in range(lpb[i]):
            resnet(f"down_blocks.{i}.resnets.{j}", cin if j == 0 else ch[i], ch[i])
            if t.startswith("CrossAttn"):
                transformer(f"down_blocks.{i}.attentions.{j}", ch[i], depth[i])
        if i < n - 1:
            conv(f"down_blocks.{i}.downsamplers.0.conv", ch[i], ch[i], 3)
        cin = ch[i]
    resnet("mid_block.resnets.0", ch[-1], ch[-1])
    transformer("mid_block.attentions.0", ch[-1], depth[-1])
    resnet("mid_block.resnets.1", ch[-1], ch[-1])
    rch, rlpb, rdepth = ch[::-1], lpb[::-1], depth[::-1]
    prev = rch[0]
    for i, t in enumerate(up):
        c, skip_in = rch[i], rch[min(i + 1, n - 1)]
        layers = rlpb[i] + 1
        for j in range(layers):
            skip = skip_in if j == layers - 1 else c
            resnet(f"up_blocks.{i}.resnets.{j}", (prev if j == 0 else c) + skip, c)
            if t.startswith("CrossAttn"):
                transformer(f"up_blocks.{i}.attentions.{j}", c, rdepth[i])
        if i < n - 1:
            conv(f"up_blocks.{i}.upsamplers.0.conv", c, c, 3)
        prev = c
    norm("conv_norm_out", ch[0])
    conv("conv_out", int(cfg["out_channels"]), ch[0], k_out)
    return out


def layout_parameter_count(layout: Mapping[str, Shape]) -> int:
    total = 0
    for s in layout.values():
        p = 1
        for d in s:
            p *= int(d)
        total += p
    return total


def check_layout(found: Mapping[str, Shape], expected: Mapping[str, Shape]) -> List[str]:
    """Differences between a checkpoint's ``{name: shape}`` and the expected layout, in the expected layout's
    order (shape mismatches and missing tensors), then unexpected tensors. Empty when they agree."""
    problems: List[str] = []
    for k, s in expected.items():
        if k not in found:
            problems.append(f"missing tensor {k} (expected shape {tuple(s)})")
        elif tuple(found[k]) != tuple(s):
            problems.append(f"tensor {k} has shape {tuple(found[k])}, the layout has {tuple(s)}")
    problems += [f"unexpected tensor {k} (shape {tuple(found[k])})" for k in found if k not in expected]
    return problems


def architecture_differences(cfg: Mapping[str, Any], keys: Sequence[str] = ARCHITECTURE_KEYS) -> List[str]:
    """Config values that differ from SD-image-variations' (empty for the official architecture)."""

    def norm(v: Any) -> Any:
        return tuple(v) if isinstance(v, (list, tuple)) else v

    from .unet import MV_BLOCK_TYPES

    diffs = []
    for k in keys:
        have, want = cfg.get(k), SD_IMAGE_VARIATIONS_UNET[k]
        if k.endswith("_block_types") and isinstance(have, (list, tuple)):
            have = [MV_BLOCK_TYPES.get(t, t) for t in have]
        if norm(have) != norm(want):
            diffs.append(f"{k}={norm(have)!r} (SD-image-variations: {norm(want)!r})")
    return diffs
