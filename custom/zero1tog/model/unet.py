"""Zero-1-to-G's multi-view, multi-attribute UNet (the authors' Wonder3D fork, ``../shared/reference/zero1tog.md``
section 3), built on diffusers' ``UNet2DConditionModel`` so that checkpoint tensor names stay diffusers' own.

What changes against SD-image-variations' UNet:

- **Input**: 8 channels, ``concat(noisy latent, condition-image latent)`` (``in_channels=8``).
- **Condition tokens**: the CLIP image embedding [N, 1, 768] is the cross-attention (``attn2``) context, as in
  SD-image-variations itself.
- **Camera + attribute class embedding**: diffusers' ``class_embed_type="projection"`` with
  ``projection_class_embeddings_input_dim=16`` (``class_embedding.linear_1/linear_2``, added to the time embedding);
  the 16 numbers are ``cat(sin(x), cos(x))`` of ``x = [elev_cond, d_elev, d_azim, onehot5(attribute)]`` (radians),
  :func:`camera_attribute_labels`.
- **Cross-view attention**: every transformer block's self-attention (``attn1``) runs over the tokens of all views
  of one object and attribute jointly (:class:`CrossViewAttnProcessor`); no new weights.
- **Cross-attribute ("joint") attention**: every transformer block gets ``norm_joint_mid`` (LayerNorm) and
  ``attn_joint_mid`` (self-attention, ``to_out`` zero-initialised) between ``attn1`` and ``attn2``; its tokens are
  the 5 attributes of one view of one object, with rotary position embeddings on (attribute, row, col)
  (:class:`JointAttnProcessor`, :func:`rope_tables`).

Batch folding (the fork's ``(D B V)``): a batch of ``N = D * B * V`` latents is attribute-major, then object, then
view: index ``(d * B + b) * V + v``. :func:`fold` / :func:`unfold` convert [B, D, V, ...] <-> [(D B V), ...].
Stage 1 ("mix": one attribute per sample) calls the UNet with ``num_attributes=1`` and joint attention off.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

NUM_VIEWS = 6
NUM_ATTRIBUTES = 5
ROPE_AXES = (8, 16, 16)  # (attribute, row, col) shares of the head dim; exact at SD's 40-channel heads
ROPE_THETA = 10000.0
CLASS_LABEL_DIM = 2 * (3 + NUM_ATTRIBUTES)  # sin and cos of [elev_cond, d_elev, d_azim, onehot5]

# the fork's block type names -> diffusers' (same tensors; the multi-view part is in the processors here)
MV_BLOCK_TYPES = {"CrossAttnDownBlockMV2D": "CrossAttnDownBlock2D", "CrossAttnUpBlockMV2D": "CrossAttnUpBlock2D",
                  "UNetMidBlockMV2DCrossAttn": "UNetMidBlock2DCrossAttn"}


# ------------------------------------------------------------------------------------------------ batch folding
def fold(x: torch.Tensor) -> torch.Tensor:
    """[B, D, V, ...] -> [(D B V), ...] (attribute-major, then object, then view)."""
    return x.transpose(0, 1).reshape(-1, *x.shape[3:])


def unfold(x: torch.Tensor, num_objects: int, num_attributes: int = NUM_ATTRIBUTES) -> torch.Tensor:
    """[(D B V), ...] -> [B, D, V, ...]."""
    d, b = int(num_attributes), int(num_objects)
    if x.shape[0] % (d * b):
        raise ValueError(f"batch {x.shape[0]} is not num_attributes={d} x num_objects={b} x views")
    return x.reshape(d, b, x.shape[0] // (d * b), *x.shape[1:]).transpose(0, 1)


def camera_attribute_labels(cond_elevation: torch.Tensor, elevation: torch.Tensor, azimuth_delta: torch.Tensor,
                            attribute: torch.Tensor, num_attributes: int = NUM_ATTRIBUTES) -> torch.Tensor:
    """The class-embedding input: ``cat(sin(x), cos(x))`` with ``x = [elev_cond, elev - elev_cond, d_azim,
    onehot(attribute)]`` (angles in radians; broadcast together) -> [..., 2 * (3 + num_attributes)]."""
    cond_elevation, elevation, azimuth_delta, attribute = torch.broadcast_tensors(
        torch.as_tensor(cond_elevation, dtype=torch.float32), torch.as_tensor(elevation, dtype=torch.float32),
        torch.as_tensor(azimuth_delta, dtype=torch.float32), torch.as_tensor(attribute))
    onehot = F.one_hot(attribute.long(), num_attributes).to(cond_elevation.dtype)
    x = torch.cat([torch.stack([cond_elevation, elevation - cond_elevation, azimuth_delta], -1), onehot], -1)
    return torch.cat([torch.sin(x), torch.cos(x)], -1)


def folded_class_labels(cond_elevation: torch.Tensor, elevation: torch.Tensor, azimuth_delta: torch.Tensor,
                        attributes: Sequence[int] = tuple(range(NUM_ATTRIBUTES)),
                        num_attributes: int = NUM_ATTRIBUTES) -> torch.Tensor:
    """Labels for a folded batch: cameras [B] (cond) and [B, V] (views), attributes ``attributes`` (D of them, in
    batch order) -> [(D B V), 16]."""
    elevation = torch.as_tensor(elevation, dtype=torch.float32)
    b, v = elevation.shape
    att = torch.as_tensor(list(attributes)).view(1, -1, 1).expand(b, -1, v)
    lab = camera_attribute_labels(torch.as_tensor(cond_elevation, dtype=torch.float32).view(b, 1, 1),
                                  elevation[:, None], torch.as_tensor(azimuth_delta, dtype=torch.float32)[:, None],
                                  att, num_attributes)
    return fold(lab)


# ----------------------------------------------------------------------------------------------------- rotary
def rope_axis_dims(head_dim: int, axes: Sequence[int] = ROPE_AXES) -> Tuple[int, ...]:
    """Channels of each rotary axis for a head of ``head_dim`` channels: ``axes`` as shares of the head dim, each
    rounded down to an even count ((8, 16, 16) at 40, (16, 32, 32) at 80); channels left over are not rotated."""
    total = sum(axes)
    if total <= 0:
        return tuple(0 for _ in axes)
    return tuple(2 * ((head_dim * a) // (2 * total)) for a in axes)


def rope_tables(ids: torch.Tensor, head_dim: int, axes: Sequence[int] = ROPE_AXES, theta: float = ROPE_THETA
                ) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [S, head_dim // 2] for integer positions ``ids`` [S, n_axes]: axis ``i`` takes
    ``rope_axis_dims(head_dim)[i]`` channels, i.e. that many / 2 frequencies ``theta ** (-2j / dim_i)``; rotation
    pairs beyond the axes get angle 0 (identity)."""
    dims = rope_axis_dims(head_dim, axes)
    angles = []
    for i, d in enumerate(dims):
        if d == 0:
            continue
        freqs = theta ** (-torch.arange(0, d, 2, dtype=torch.float64, device=ids.device) / d)
        angles.append(ids[:, i, None].to(torch.float64) * freqs)
    pad = head_dim // 2 - sum(d // 2 for d in dims)
    if pad:
        angles.append(torch.zeros(ids.shape[0], pad, dtype=torch.float64, device=ids.device))
    ang = torch.cat(angles, -1)
    return ang.cos().float(), ang.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2j, 2j+1) of ``x`` [..., S, head_dim] by the angles of ``cos``/``sin`` [S, head_dim/2]."""
    xr = x.float().unflatten(-1, (-1, 2))
    a, b = xr[..., 0], xr[..., 1]
    out = torch.stack([a * cos - b * sin, a * sin + b * cos], -1)
    return out.flatten(-2).to(x.dtype)


def joint_position_ids(num_attributes: int, height: int, width: int, device: Any = None) -> torch.Tensor:
    """(attribute, row, col) of the joint sequence's tokens, attribute-major then row-major: [D*h*w, 3]."""
    d, r, c = torch.meshgrid(torch.arange(num_attributes, device=device), torch.arange(height, device=device),
                             torch.arange(width, device=device), indexing="ij")
    return torch.stack([d, r, c], -1).reshape(-1, 3)


# ------------------------------------------------------------------------------------------------- processors
@dataclass(frozen=True)
class MVContext:
    """What the attention processors need to know about the folded batch, passed as ``cross_attention_kwargs``
    ``{"mv": MVContext(...)}`` (plain Python values: static under ``torch.compile``)."""

    num_views: int = NUM_VIEWS
    num_attributes: int = NUM_ATTRIBUTES
    sample_hw: Tuple[int, int] = (16, 16)  # the latent's (h, w) at the UNet input
    cross_view: bool = True
    joint: bool = True

    def level_hw(self, tokens: int) -> Tuple[int, int]:
        """(h, w) of a feature map with ``tokens`` pixels, at a power-of-two reduction of ``sample_hw``."""
        h, w = self.sample_hw
        s = math.isqrt(max(h * w // max(tokens, 1), 1))
        hh, ww = -(-h // s), -(-w // s)
        if hh * ww != tokens:
            raise ValueError(f"cannot place {tokens} tokens on a grid reduced from {h}x{w}")
        return hh, ww


def _self_attention(attn: Any, x: torch.Tensor, rope: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
                    ) -> torch.Tensor:
    """diffusers ``Attention`` ``attn`` as plain multi-head self-attention over [N, S, C] (optionally with rotary
    tables on queries and keys)."""
    n, s, _ = x.shape
    q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
    hd = q.shape[-1] // attn.heads
    q, k, v = (t.view(n, -1, attn.heads, hd).transpose(1, 2) for t in (q, k, v))
    if rope is not None:
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False, scale=attn.scale)
    out = out.transpose(1, 2).reshape(n, s, attn.heads * hd).to(x.dtype)
    return attn.to_out[1](attn.to_out[0](out)) / attn.rescale_output_factor


class CrossViewAttnProcessor:
    """``attn1``: the V views of one (attribute, object) attend to each other's tokens (the fork concatenates keys
    and values over the views; queries stay per view, which is the same as self-attention over the joined V*L
    tokens). Without an :class:`MVContext`, or with ``cross_view=False``, plain per-view self-attention."""

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, temb: Optional[torch.Tensor] = None,
                 mv: Optional[MVContext] = None) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None or hidden_states.dim() != 3:
            raise ValueError("cross-view attention is a self-attention over [N, L, C] tokens without a mask")
        n, length, c = hidden_states.shape
        views = mv.num_views if (mv is not None and mv.cross_view) else 1
        if n % views:
            raise ValueError(f"cross-view attention: batch {n} is not a multiple of num_views={views}")
        out = _self_attention(attn, hidden_states.reshape(n // views, views * length, c))
        return out.reshape(n, length, c)


class JointAttnProcessor:
    """``attn_joint_mid``: the D attributes of one (object, view) attend to each other's tokens, with rotary
    embeddings on (attribute, row, col) on queries and keys. The batch is attribute-major, so the D copies of one
    (object, view) are ``N / D`` apart."""

    def __init__(self, axes: Sequence[int] = ROPE_AXES, theta: float = ROPE_THETA) -> None:
        self.axes = tuple(int(a) for a in axes)
        self.theta = float(theta)

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, temb: Optional[torch.Tensor] = None,
                 mv: Optional[MVContext] = None) -> torch.Tensor:
        if mv is None:
            raise ValueError("joint attention needs the batch layout: pass cross_attention_kwargs={'mv': MVContext()}")
        n, length, c = hidden_states.shape
        d = mv.num_attributes
        if n % d:
            raise ValueError(f"joint attention: batch {n} is not a multiple of num_attributes={d}")
        h, w = mv.level_hw(length)
        x = hidden_states.reshape(d, n // d, length, c).transpose(0, 1).reshape(n // d, d * length, c)
        ids = joint_position_ids(d, h, w, device=x.device)
        cos, sin = rope_tables(ids, c // attn.heads, self.axes, self.theta)
        out = _self_attention(attn, x, (cos, sin))
        return out.reshape(n // d, d, length, c).transpose(0, 1).reshape(n, length, c)


class CrossAttnProcessor:
    """``attn2``: diffusers' SDPA cross-attention to the CLIP image tokens; accepts (and ignores) ``mv``."""

    def __init__(self) -> None:
        self.inner = AttnProcessor2_0()

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, temb: Optional[torch.Tensor] = None,
                 mv: Optional[MVContext] = None) -> torch.Tensor:
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


# ------------------------------------------------------------------------------------------ transformer blocks
def add_joint_attention(block: nn.Module, zero_init: bool = True) -> None:
    """Give a diffusers ``BasicTransformerBlock`` the fork's ``norm_joint_mid`` + ``attn_joint_mid`` (a new
    self-attention shaped like ``attn1``; ``to_out`` zeroed so that the block starts as it was) and make it a
    :class:`MVTransformerBlock`."""
    if block.norm_type != "layer_norm" or block.pos_embed is not None or block.only_cross_attention:
        raise ValueError("joint attention is built for SD's transformer blocks (layer_norm, no pos_embed, "
                         f"self-attention attn1); got norm_type={block.norm_type!r}")
    a1 = block.attn1
    dim = a1.query_dim
    p = a1.to_q.weight
    block.norm_joint_mid = nn.LayerNorm(dim, elementwise_affine=True).to(device=p.device, dtype=p.dtype)
    block.attn_joint_mid = Attention(query_dim=dim, heads=a1.heads, dim_head=a1.inner_dim // a1.heads,
                                     bias=a1.to_q.bias is not None, upcast_attention=a1.upcast_attention,
                                     out_bias=a1.to_out[0].bias is not None).to(device=p.device, dtype=p.dtype)
    if zero_init and p.device.type != "meta":
        with torch.no_grad():
            block.attn_joint_mid.to_out[0].weight.zero_()
            if block.attn_joint_mid.to_out[0].bias is not None:
                block.attn_joint_mid.to_out[0].bias.zero_()
    block.__class__ = MVTransformerBlock


class MVTransformerBlock(BasicTransformerBlock):
    """SD's transformer block in the fork's order: attn1 (cross-view) -> joint (cross-attribute, when the context
    asks for it) -> attn2 (CLIP tokens) -> feed-forward, each pre-normed with a residual. Made from a diffusers
    block by :func:`add_joint_attention` (same tensor names, plus ``norm_joint_mid`` / ``attn_joint_mid``)."""

    def forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                encoder_hidden_states: Optional[torch.Tensor] = None,
                encoder_attention_mask: Optional[torch.Tensor] = None, timestep: Any = None,
                cross_attention_kwargs: Optional[Dict[str, Any]] = None, class_labels: Any = None,
                added_cond_kwargs: Any = None) -> torch.Tensor:
        kw = dict(cross_attention_kwargs or {})
        mv = kw.get("mv")
        h = hidden_states
        h = self.attn1(self.norm1(h), attention_mask=attention_mask, **kw) + h
        if mv is not None and mv.joint:
            h = self.attn_joint_mid(self.norm_joint_mid(h), **kw) + h
        if self.attn2 is not None:
            h = self.attn2(self.norm2(h), encoder_hidden_states=encoder_hidden_states,
                           attention_mask=encoder_attention_mask, **kw) + h
        return self.ff(self.norm3(h)) + h


# --------------------------------------------------------------------------------------------------- the UNet
MV_CONFIG_DEFAULTS: Dict[str, Any] = dict(num_views=NUM_VIEWS, num_attributes=NUM_ATTRIBUTES, multiview_attention=True,
                                          cd_attention_mid=True, joint_rope_axes=list(ROPE_AXES),
                                          joint_rope_theta=ROPE_THETA)


class Zero1toGUNet(UNet2DConditionModel):
    """``UNet2DConditionModel`` with the fork's multi-view/multi-attribute attention (module docstring).

    Config keys on top of diffusers' (saved by ``save_pretrained``): ``num_views``, ``num_attributes``,
    ``multiview_attention`` (cross-view attn1), ``cd_attention_mid`` (the joint modules exist), ``joint_rope_axes``,
    ``joint_rope_theta``. ``forward(sample [(D B V), 8, h, w], timestep, encoder_hidden_states [(D B V), 1, 768],
    class_labels [(D B V), 16], num_attributes=D, joint_attention=None)``.
    """

    def __init__(self, num_views: int = NUM_VIEWS, num_attributes: int = NUM_ATTRIBUTES,
                 multiview_attention: bool = True, cd_attention_mid: bool = True,
                 joint_rope_axes: Sequence[int] = ROPE_AXES, joint_rope_theta: float = ROPE_THETA,
                 **unet_kwargs: Any) -> None:
        for k, v in list(unet_kwargs.items()):
            if k.endswith("_block_types") and isinstance(v, (list, tuple)):
                unet_kwargs[k] = tuple(MV_BLOCK_TYPES.get(t, t) for t in v)
            elif k == "mid_block_type" and isinstance(v, str):
                unet_kwargs[k] = MV_BLOCK_TYPES.get(v, v)
        super().__init__(**unet_kwargs)
        self.register_to_config(num_views=int(num_views), num_attributes=int(num_attributes),
                                multiview_attention=bool(multiview_attention), cd_attention_mid=bool(cd_attention_mid),
                                joint_rope_axes=[int(a) for a in joint_rope_axes],
                                joint_rope_theta=float(joint_rope_theta))
        for _, m in self.named_modules():
            if isinstance(m, BasicTransformerBlock):
                if cd_attention_mid:
                    add_joint_attention(m)
                else:
                    m.__class__ = MVTransformerBlock
        self.install_processors()

    @staticmethod
    def _get_init_keys(input_class: type) -> set:
        keys = set(inspect.signature(input_class.__init__).parameters)
        if isinstance(input_class, type) and issubclass(input_class, Zero1toGUNet):
            keys |= set(inspect.signature(UNet2DConditionModel.__init__).parameters)
            keys.discard("unet_kwargs")
        return keys

    def install_processors(self) -> None:
        """Cross-view (``attn1``), joint with RoPE (``attn_joint_mid``), CLIP cross-attention (``attn2``)."""
        cfg = self.config
        joint = JointAttnProcessor(cfg.joint_rope_axes, cfg.joint_rope_theta)
        procs = {}
        for name in self.attn_processors:
            if name.endswith("attn1.processor"):
                procs[name] = CrossViewAttnProcessor()
            elif name.endswith("attn_joint_mid.processor"):
                procs[name] = joint
            else:
                procs[name] = CrossAttnProcessor()
        self.set_attn_processor(procs)

    def mv_context(self, sample: torch.Tensor, num_attributes: Optional[int] = None,
                   joint_attention: Optional[bool] = None, cross_view: Optional[bool] = None) -> MVContext:
        cfg = self.config
        d = cfg.num_attributes if num_attributes is None else int(num_attributes)
        joint = (d > 1) if joint_attention is None else bool(joint_attention)
        if joint and not cfg.cd_attention_mid:
            raise ValueError("this UNet has no joint (cross-attribute) attention modules (cd_attention_mid=False)")
        views = int(cfg.num_views)
        if sample.shape[0] % (d * views):
            raise ValueError(f"Zero-1-to-G UNet: the batch ({sample.shape[0]}) must be (attributes={d}) x objects x "
                             f"(views={views}), attribute-major (see fold())")
        return MVContext(num_views=views, num_attributes=d, sample_hw=(int(sample.shape[-2]), int(sample.shape[-1])),
                         cross_view=bool(cfg.multiview_attention if cross_view is None else cross_view), joint=joint)

    def forward(self, sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor,
                class_labels: Optional[torch.Tensor] = None, num_attributes: Optional[int] = None,
                joint_attention: Optional[bool] = None, cross_view: Optional[bool] = None,
                cross_attention_kwargs: Optional[Dict[str, Any]] = None, **kwargs: Any) -> Any:
        """diffusers' forward with the batch layout attached. ``num_attributes``: D in this batch (default the
        config's 5; 1 for stage 1's one-attribute samples). ``joint_attention``: default on when D > 1.
        ``cross_view``: default the config's ``multiview_attention``."""
        kw = dict(cross_attention_kwargs or {})
        kw["mv"] = self.mv_context(sample, num_attributes, joint_attention, cross_view)
        return super().forward(sample, timestep, encoder_hidden_states, class_labels=class_labels,
                               cross_attention_kwargs=kw, **kwargs)
