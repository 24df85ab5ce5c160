"""Tensor-name maps between MVDream's checkpoint (ldm / open_clip naming) and our diffusers / transformers models.

Pure name and shape bookkeeping, no I/O: a :class:`KeyMap` turns a checkpoint's state dict into a model's state
dict (:meth:`KeyMap.convert`) and back (:meth:`KeyMap.invert`), and tells which checkpoint names and shapes a model
expects (:meth:`KeyMap.expected_source_shapes`), so a loader can name every missing, extra or misshapen tensor in
the checkpoint's own terms. Works on meta tensors (shapes only).

- :func:`unet_keymap`: MVDream ``MultiViewUNetModel`` (``input_blocks/middle_block/output_blocks``) <->
  diffusers ``UNet2DConditionModel`` (``down_blocks/mid_block/up_blocks``; camera_embed -> class_embedding).
- :func:`vae_keymap`: ldm ``AutoencoderKL`` (``encoder.down.N.block.M``) <-> diffusers ``AutoencoderKL``; the
  mid-block attention's 1x1-conv q/k/v/proj_out become Linear weights.
- :func:`text_keymap`: open_clip text tower (``transformer.resblocks.N``, fused ``in_proj``) <-> transformers
  ``CLIPTextModel`` with one layer fewer (MVDream reads the penultimate layer, then ``ln_final``); the last
  block, ``text_projection`` and ``logit_scale`` are checked but not used.

The ``infer_*`` functions read an architecture from a few anchor tensors' shapes (no config is stored in the
checkpoint); heads are not visible in shapes and follow MVDream / OpenCLIP's 64 channels per head.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

Shape = Tuple[int, ...]

RES_RENAMES = {"in_layers.0.": "norm1.", "in_layers.2.": "conv1.", "emb_layers.1.": "time_emb_proj.",
               "out_layers.0.": "norm2.", "out_layers.3.": "conv2.", "skip_connection.": "conv_shortcut."}
VAE_RES_RENAMES = {"norm1.": "norm1.", "conv1.": "conv1.", "norm2.": "norm2.", "conv2.": "conv2.",
                   "nin_shortcut.": "conv_shortcut."}
VAE_ATTN_RENAMES = {"norm.": "group_norm.", "q.": "to_q.", "k.": "to_k.", "v.": "to_v.", "proj_out.": "to_out.0."}

SCHEDULE_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                    "posterior_mean_coef1", "posterior_mean_coef2")


class CheckpointLayoutError(ValueError):
    """A checkpoint's tensors do not match the expected names/shapes; ``problems`` lists them."""

    def __init__(self, problems: Sequence[str], where: str = "", limit: int = 20) -> None:
        self.problems = list(problems)
        shown = self.problems[:limit]
        more = f"\n  ... and {len(self.problems) - limit} more" if len(self.problems) > limit else ""
        head = f"{len(self.problems)} problem(s) with the tensors of {where or 'the checkpoint'}:"
        super().__init__(head + "\n  " + "\n  ".join(shown) + more)


def _conv1x1_to_linear(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], t.shape[1]) if t.dim() == 4 else t


def _linear_to_conv1x1(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], t.shape[1], 1, 1) if t.dim() == 2 else t


@dataclass
class Rule:
    src: str  # checkpoint prefix (ends with ".") or exact key
    dst: str
    renames: Optional[Mapping[str, str]] = None  # sub-prefix renames after the prefix (a bijection)
    fwd: Optional[Callable[[torch.Tensor], torch.Tensor]] = None  # checkpoint tensor -> model tensor (weights)
    inv: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    exact: bool = False


@dataclass
class KeyMap:
    """A checkpoint <-> model naming for one component."""

    name: str
    rules: List[Rule] = field(default_factory=list)
    splits: Dict[str, List[str]] = field(default_factory=dict)  # fused src key -> dst keys (chunks along dim 0)
    unused: Dict[str, Optional[Shape]] = field(default_factory=dict)  # src keys read but not used -> shape

    def _src_to_dst(self, key: str) -> Optional[Tuple[str, Optional[Rule]]]:
        best: Optional[Rule] = None
        for r in self.rules:
            if (r.exact and key == r.src) or (not r.exact and key.startswith(r.src)):
                if best is None or len(r.src) > len(best.src):
                    best = r
        if best is None:
            return None
        if best.exact:
            return best.dst, best
        rest = key[len(best.src):]
        if best.renames is not None:
            for a, b in best.renames.items():
                if rest.startswith(a):
                    return best.dst + b + rest[len(a):], best
            return None
        return best.dst + rest, best

    def _dst_to_src(self, key: str) -> Optional[Tuple[str, Optional[Rule]]]:
        best: Optional[Rule] = None
        for r in self.rules:
            if (r.exact and key == r.dst) or (not r.exact and key.startswith(r.dst)):
                if best is None or len(r.dst) > len(best.dst):
                    best = r
        if best is None:
            return None
        if best.exact:
            return best.src, best
        rest = key[len(best.dst):]
        if best.renames is not None:
            for a, b in best.renames.items():
                if rest.startswith(b):
                    return best.src + a + rest[len(b):], best
            return None
        return best.src + rest, best

    # ------------------------------------------------------------------ shapes
    def expected_source_shapes(self, model_shapes: Mapping[str, Shape]) -> Tuple[Dict[str, Shape], List[str]]:
        """Checkpoint names and shapes that produce exactly ``model_shapes`` (a model's state-dict shapes), plus
        the model keys no rule reaches (a bug in the map, reported as problems)."""
        out: Dict[str, Shape] = {}
        unmapped: List[str] = []
        split_dst = {d: (s, i, len(ds)) for s, ds in self.splits.items() for i, d in enumerate(ds)}
        for key, shape in model_shapes.items():
            if key in split_dst:
                s, _, n = split_dst[key]
                out[s] = (shape[0] * n,) + tuple(shape[1:])
                continue
            hit = self._dst_to_src(key)
            if hit is None:
                unmapped.append(key)
                continue
            src, rule = hit
            if rule is not None and rule.inv is not None:
                shape = tuple(rule.inv(torch.empty(shape, device="meta")).shape)
            out[src] = tuple(shape)
        for key, shape in self.unused.items():
            if shape is not None:
                out[key] = tuple(shape)
        return out, unmapped

    # ------------------------------------------------------------------ tensors
    def convert(self, sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Checkpoint tensors (names relative to this component) -> model state dict. Unknown names raise."""
        out: Dict[str, torch.Tensor] = {}
        for key, t in sd.items():
            if key in self.unused:
                continue
            if key in self.splits:
                for d, chunk in zip(self.splits[key], t.chunk(len(self.splits[key]), dim=0)):
                    out[d] = chunk
                continue
            hit = self._src_to_dst(key)
            if hit is None:
                raise KeyError(f"{self.name}: no rule for checkpoint tensor '{key}'")
            dst, rule = hit
            out[dst] = rule.fwd(t) if rule is not None and rule.fwd is not None else t
        return out

    def invert(self, model_sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Model state dict -> checkpoint tensors (fused splits re-joined; ``unused`` keys not produced)."""
        out: Dict[str, torch.Tensor] = {}
        for s, ds in self.splits.items():
            if all(d in model_sd for d in ds):
                out[s] = torch.cat([model_sd[d] for d in ds], dim=0)
        done = {d for ds in self.splits.values() for d in ds}
        for key, t in model_sd.items():
            if key in done:
                continue
            hit = self._dst_to_src(key)
            if hit is None:
                raise KeyError(f"{self.name}: no rule for model tensor '{key}'")
            src, rule = hit
            out[src] = rule.inv(t) if rule is not None and rule.inv is not None else t
        return out


def check_shapes(keymap: KeyMap, sd: Mapping[str, torch.Tensor], model_shapes: Mapping[str, Shape],
                 prefix: str = "") -> List[str]:
    """Problems (one line each, checkpoint names with ``prefix``): missing, extra and misshapen tensors."""
    expected, unmapped = keymap.expected_source_shapes(model_shapes)
    problems = [f"internal: model tensor '{k}' of the {keymap.name} has no checkpoint name" for k in unmapped]
    for k, shape in expected.items():
        if k not in sd:
            problems.append(f"missing tensor '{prefix}{k}' (expected shape {list(shape)})")
        elif tuple(sd[k].shape) != tuple(shape):
            problems.append(f"tensor '{prefix}{k}' has shape {list(sd[k].shape)}, expected {list(shape)}")
    for k in sd:
        if k not in expected:
            problems.append(f"unexpected tensor '{prefix}{k}' (shape {list(sd[k].shape)}): not part of the "
                            f"{keymap.name}")
    return problems


# ---------------------------------------------------------------------------------------------------------- UNet
def unet_keymap(ldm: Mapping[str, Any]) -> KeyMap:
    """Rules for a MultiViewUNetModel with these (ldm) arguments; names without 'model.diffusion_model.'."""
    L = int(ldm["num_res_blocks"])
    n = len(ldm["channel_mult"])
    attn = [2**i in set(int(a) for a in ldm["attention_resolutions"]) for i in range(n)]
    km = KeyMap("MVDream UNet")
    R = km.rules
    R += [Rule("time_embed.0.", "time_embedding.linear_1."), Rule("time_embed.2.", "time_embedding.linear_2."),
          Rule("camera_embed.0.", "class_embedding.linear_1."), Rule("camera_embed.2.", "class_embedding.linear_2."),
          Rule("input_blocks.0.0.", "conv_in."), Rule("out.0.", "conv_norm_out."), Rule("out.2.", "conv_out.")]
    for lvl in range(n):
        for p in range(L):
            i = 1 + lvl * (L + 1) + p
            R.append(Rule(f"input_blocks.{i}.0.", f"down_blocks.{lvl}.resnets.{p}.", RES_RENAMES))
            if attn[lvl]:
                R.append(Rule(f"input_blocks.{i}.1.", f"down_blocks.{lvl}.attentions.{p}."))
        if lvl < n - 1:
            R.append(Rule(f"input_blocks.{(lvl + 1) * (L + 1)}.0.op.", f"down_blocks.{lvl}.downsamplers.0.conv."))
    R += [Rule("middle_block.0.", "mid_block.resnets.0.", RES_RENAMES),
          Rule("middle_block.1.", "mid_block.attentions.0."),
          Rule("middle_block.2.", "mid_block.resnets.1.", RES_RENAMES)]
    for r in range(n):
        a = attn[n - 1 - r]
        for p in range(L + 1):
            i = r * (L + 1) + p
            R.append(Rule(f"output_blocks.{i}.0.", f"up_blocks.{r}.resnets.{p}.", RES_RENAMES))
            if a:
                R.append(Rule(f"output_blocks.{i}.1.", f"up_blocks.{r}.attentions.{p}."))
            if p == L and r < n - 1:
                R.append(Rule(f"output_blocks.{i}.{2 if a else 1}.conv.", f"up_blocks.{r}.upsamplers.0.conv."))
    return km


def _need(sd: Mapping[str, torch.Tensor], key: str, prefix: str, what: str) -> torch.Tensor:
    if key not in sd:
        raise CheckpointLayoutError([f"missing tensor '{prefix}{key}' (needed to read the {what})"])
    return sd[key]


def infer_unet_config(sd: Mapping[str, torch.Tensor], num_head_channels: int = 64,
                      prefix: str = "model.diffusion_model.") -> Dict[str, Any]:
    """MultiViewUNetModel arguments from a UNet state dict's shapes (names without ``prefix``)."""
    conv_in = _need(sd, "input_blocks.0.0.weight", prefix, "UNet input channels")
    mc, in_ch = int(conv_in.shape[0]), int(conv_in.shape[1])
    out_ch = int(_need(sd, "out.2.weight", prefix, "UNet output channels").shape[0])
    idx = sorted({int(m.group(1)) for k in sd for m in [re.match(r"input_blocks\.(\d+)\.", k)] if m})
    levels: List[List[Tuple[int, bool]]] = [[]]
    for i in idx:
        if i == 0:
            continue
        if f"input_blocks.{i}.0.op.weight" in sd:
            levels.append([])
            continue
        w = sd.get(f"input_blocks.{i}.0.in_layers.2.weight")
        if w is None:
            raise CheckpointLayoutError([f"missing tensor '{prefix}input_blocks.{i}.0.in_layers.2.weight' (a UNet "
                                         f"ResBlock's first conv)"])
        levels[-1].append((int(w.shape[0]), f"input_blocks.{i}.1.proj_in.weight" in sd))
    L = len(levels[0])
    if L == 0 or any(len(lv) != L for lv in levels):
        raise CheckpointLayoutError([f"UNet input_blocks do not form levels of equal size: "
                                     f"{[len(lv) for lv in levels]} ResBlocks per level"])
    mult = []
    for lv in levels:
        if lv[0][0] % mc:
            raise CheckpointLayoutError([f"UNet level width {lv[0][0]} is not a multiple of {mc}"])
        mult.append(lv[0][0] // mc)
    attn_res = [2**i for i, lv in enumerate(levels) if lv[0][1]]
    k_key = next((k for k in sd if k.endswith("attn2.to_k.weight")), None)
    if k_key is None:
        raise CheckpointLayoutError([f"no cross-attention tensors ('{prefix}...attn2.to_k.weight') in the UNet"])
    proj_in = next(k for k in sd if k.endswith(".proj_in.weight"))
    blk = proj_in[: -len("proj_in.weight")]
    depth = len({m.group(1) for k in sd for m in [re.match(re.escape(blk) + r"transformer_blocks\.(\d+)\.", k)]
                 if m})
    cfg: Dict[str, Any] = dict(
        image_size=32, in_channels=in_ch, out_channels=out_ch, model_channels=mc, attention_resolutions=attn_res,
        num_res_blocks=L, channel_mult=mult, num_head_channels=num_head_channels, use_spatial_transformer=True,
        use_linear_in_transformer=sd[proj_in].dim() == 2, transformer_depth=depth,
        context_dim=int(sd[k_key].shape[1]), use_checkpoint=False, legacy=False)
    cam = sd.get("camera_embed.0.weight")
    if cam is not None:
        cfg["camera_dim"] = int(cam.shape[1])
    return cfg


# ----------------------------------------------------------------------------------------------------------- VAE
def vae_keymap(n_levels: int, layers_per_block: int) -> KeyMap:
    """Rules for the ldm autoencoder (names without 'first_stage_model.')."""
    n, L = n_levels, layers_per_block
    km = KeyMap("autoencoder")
    R = km.rules
    for side in ("encoder", "decoder"):
        R += [Rule(f"{side}.conv_in.", f"{side}.conv_in."), Rule(f"{side}.norm_out.", f"{side}.conv_norm_out."),
              Rule(f"{side}.conv_out.", f"{side}.conv_out."),
              Rule(f"{side}.mid.block_1.", f"{side}.mid_block.resnets.0.", VAE_RES_RENAMES),
              Rule(f"{side}.mid.block_2.", f"{side}.mid_block.resnets.1.", VAE_RES_RENAMES),
              Rule(f"{side}.mid.attn_1.", f"{side}.mid_block.attentions.0.", VAE_ATTN_RENAMES,
                   fwd=_conv1x1_to_linear, inv=_linear_to_conv1x1)]
    for lvl in range(n):
        for j in range(L):
            R.append(Rule(f"encoder.down.{lvl}.block.{j}.", f"encoder.down_blocks.{lvl}.resnets.{j}.",
                          VAE_RES_RENAMES))
        if lvl < n - 1:
            R.append(Rule(f"encoder.down.{lvl}.downsample.conv.", f"encoder.down_blocks.{lvl}.downsamplers.0.conv."))
        r = n - 1 - lvl
        for j in range(L + 1):
            R.append(Rule(f"decoder.up.{lvl}.block.{j}.", f"decoder.up_blocks.{r}.resnets.{j}.", VAE_RES_RENAMES))
        if lvl > 0:
            R.append(Rule(f"decoder.up.{lvl}.upsample.conv.", f"decoder.up_blocks.{r}.upsamplers.0.conv."))
    R += [Rule("quant_conv.", "quant_conv."), Rule("post_quant_conv.", "post_quant_conv.")]
    return km


def infer_vae_config(sd: Mapping[str, torch.Tensor], prefix: str = "first_stage_model.",
                     scaling_factor: float = 0.18215) -> Dict[str, Any]:
    """diffusers ``AutoencoderKL`` kwargs from an ldm autoencoder state dict's shapes."""
    conv_in = _need(sd, "encoder.conv_in.weight", prefix, "autoencoder input channels")
    in_ch = int(conv_in.shape[1])
    lv = sorted({int(m.group(1)) for k in sd for m in [re.match(r"encoder\.down\.(\d+)\.", k)] if m})
    if not lv:
        raise CheckpointLayoutError([f"missing tensors '{prefix}encoder.down.*' (the autoencoder's encoder levels)"])
    widths, L = [], None
    for i in lv:
        blocks = sorted({int(m.group(1)) for k in sd for m in [re.match(rf"encoder\.down\.{i}\.block\.(\d+)\.", k)]
                         if m})
        if any(re.match(rf"encoder\.down\.{i}\.attn\.", k) for k in sd):
            raise CheckpointLayoutError([f"'{prefix}encoder.down.{i}.attn.*': attention inside the autoencoder's "
                                         f"levels is not supported (MVDream's has attn_resolutions [])"])
        L = len(blocks) if L is None else L
        w = _need(sd, f"encoder.down.{i}.block.0.conv1.weight", prefix, "autoencoder level widths")
        widths.append(int(w.shape[0]))
    z2 = int(_need(sd, "encoder.conv_out.weight", prefix, "latent channels").shape[0])
    emb = int(_need(sd, "quant_conv.weight", prefix, "latent channels").shape[0]) // 2
    if emb * 2 != z2:
        raise CheckpointLayoutError([f"autoencoder embed_dim {emb} != z_channels {z2 // 2}: not supported"])
    out_ch = int(_need(sd, "decoder.conv_out.weight", prefix, "output channels").shape[0])
    return dict(in_channels=in_ch, out_channels=out_ch, latent_channels=emb, block_out_channels=tuple(widths),
                layers_per_block=int(L or 0), down_block_types=("DownEncoderBlock2D",) * len(widths),
                up_block_types=("UpDecoderBlock2D",) * len(widths), norm_num_groups=32, act_fn="silu",
                sample_size=256, scaling_factor=scaling_factor)


# ----------------------------------------------------------------------------------------------------------- text
def text_keymap(n_blocks: int, root: str = "") -> KeyMap:
    """open_clip text tower with ``n_blocks`` residual blocks -> CLIPTextModel with ``n_blocks - 1`` layers
    (names without 'cond_stage_model.model.'). The last block, text_projection and logit_scale are unused.
    ``root``: the CLIPTextModel's own prefix ("text_model." in transformers 4, "" in transformers 5)."""
    km = KeyMap("OpenCLIP text tower")
    R = km.rules
    R += [Rule("token_embedding.", root + "embeddings.token_embedding."),
          Rule("positional_embedding", root + "embeddings.position_embedding.weight", exact=True),
          Rule("ln_final.", root + "final_layer_norm.")]
    for i in range(n_blocks - 1):
        s, d = f"transformer.resblocks.{i}.", f"{root}encoder.layers.{i}."
        R += [Rule(s + "ln_1.", d + "layer_norm1."), Rule(s + "ln_2.", d + "layer_norm2."),
              Rule(s + "attn.out_proj.", d + "self_attn.out_proj."), Rule(s + "mlp.c_fc.", d + "mlp.fc1."),
              Rule(s + "mlp.c_proj.", d + "mlp.fc2.")]
        km.splits[s + "attn.in_proj_weight"] = [d + f"self_attn.{p}_proj.weight" for p in "qkv"]
        km.splits[s + "attn.in_proj_bias"] = [d + f"self_attn.{p}_proj.bias" for p in "qkv"]
    return km


def text_unused_shapes(n_blocks: int, width: int, mlp: int, proj_dim: int) -> Dict[str, Shape]:
    last = f"transformer.resblocks.{n_blocks - 1}."
    shapes: Dict[str, Shape] = {
        last + "ln_1.weight": (width,), last + "ln_1.bias": (width,),
        last + "attn.in_proj_weight": (3 * width, width), last + "attn.in_proj_bias": (3 * width,),
        last + "attn.out_proj.weight": (width, width), last + "attn.out_proj.bias": (width,),
        last + "ln_2.weight": (width,), last + "ln_2.bias": (width,),
        last + "mlp.c_fc.weight": (mlp, width), last + "mlp.c_fc.bias": (mlp,),
        last + "mlp.c_proj.weight": (width, mlp), last + "mlp.c_proj.bias": (width,),
        "text_projection": (width, proj_dim), "logit_scale": (),
    }
    return shapes


def infer_text_config(sd: Mapping[str, torch.Tensor], head_width: int = 64,
                      prefix: str = "cond_stage_model.model.") -> Dict[str, Any]:
    """transformers ``CLIPTextConfig`` kwargs (penultimate layer: one block fewer) from an open_clip text tower."""
    tok = _need(sd, "token_embedding.weight", prefix, "text vocabulary and width")
    vocab, width = int(tok.shape[0]), int(tok.shape[1])
    ctx = int(_need(sd, "positional_embedding", prefix, "text context length").shape[0])
    blocks = sorted({int(m.group(1)) for k in sd for m in [re.match(r"transformer\.resblocks\.(\d+)\.", k)] if m})
    if len(blocks) < 2:
        raise CheckpointLayoutError([f"the text tower has {len(blocks)} residual blocks; MVDream reads the "
                                     f"penultimate one, so at least 2 are needed ('{prefix}transformer.resblocks.N')"])
    mlp = int(_need(sd, "transformer.resblocks.0.mlp.c_fc.weight", prefix, "text MLP width").shape[0])
    proj = sd.get("text_projection")
    heads = max(1, width // head_width)
    return dict(vocab_size=vocab, hidden_size=width, intermediate_size=mlp, num_hidden_layers=len(blocks) - 1,
                num_attention_heads=heads, max_position_embeddings=ctx, hidden_act="gelu", layer_norm_eps=1e-5,
                projection_dim=int(proj.shape[1]) if proj is not None and proj.dim() == 2 else width,
                bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=0,
                _n_blocks=len(blocks))


# ------------------------------------------------------------------------------------------------------ schedule
def ldm_schedule_buffers(num_timesteps: int = 1000, linear_start: float = 0.00085,
                         linear_end: float = 0.012) -> Dict[str, torch.Tensor]:
    """The 12 diffusion-schedule buffers an ldm ``LatentDiffusion`` stores ("linear" = squares of a linspace of
    square roots, diffusers' ``scaled_linear``), in float32."""
    betas = torch.linspace(linear_start**0.5, linear_end**0.5, num_timesteps, dtype=torch.float64) ** 2
    alphas = 1.0 - betas
    ac = torch.cumprod(alphas, 0)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    post_var = betas * (1.0 - prev) / (1.0 - ac)
    out = dict(betas=betas, alphas_cumprod=ac, alphas_cumprod_prev=prev, sqrt_alphas_cumprod=ac.sqrt(),
               sqrt_one_minus_alphas_cumprod=(1 - ac).sqrt(), log_one_minus_alphas_cumprod=(1 - ac).log(),
               sqrt_recip_alphas_cumprod=(1 / ac).sqrt(), sqrt_recipm1_alphas_cumprod=(1 / ac - 1).sqrt(),
               posterior_variance=post_var,
               posterior_log_variance_clipped=torch.log(torch.clamp(post_var, min=1e-20)),
               posterior_mean_coef1=betas * prev.sqrt() / (1.0 - ac),
               posterior_mean_coef2=(1.0 - prev) * alphas.sqrt() / (1.0 - ac))
    return {k: v.float() for k, v in out.items()}
