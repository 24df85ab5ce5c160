"""MVDream's multi-view UNet, built on diffusers' ``UNet2DConditionModel``.

MVDream (bytedance/MVDream) is SD-2.1-base's UNet with two changes, both reproduced here without new layers:

- **Camera embedding.** A flattened 4x4 camera matrix [N, 16] goes through Linear(16 -> 4C), SiLU, Linear(4C -> 4C)
  and is *added* to the time embedding. That is exactly diffusers' ``class_embed_type="projection"`` with
  ``projection_class_embeddings_input_dim=16`` (``class_embedding.linear_1/linear_2``), the camera passed as
  ``class_labels``. ``camera=None`` skips the term (:class:`OptionalCameraEmbedding`).
- **Cross-view self-attention.** In every transformer block, the self-attention (``attn1``) of the F views of one
  object runs over the joined sequence of F*h*w tokens; cross-attention and the feed-forward stay per view. This is
  an attention processor (:class:`MultiViewAttnProcessor`) that reshapes [N*F, L, C] -> [N, F*L, C] around diffusers'
  SDPA processor. The batch is object-major (the F views of object 0, then object 1, ...).

Everything else (ResBlocks, GroupNorm eps 1e-5 in ResBlocks and 1e-6 before the transformers, GEGLU with exact GELU,
the cos-first sinusoid, nearest upsampling, [h, skip] concatenation) is diffusers' SD UNet, which matches the ldm
original; ``tests/mvdream/test_unet_parity.py`` holds it to MVDream's own outputs (1e-5).

:func:`diffusers_unet_config` translates MVDream's (ldm) ``MultiViewUNetModel`` constructor arguments into the
diffusers config; :data:`MVDREAM_SD21_UNET` is the one of ``sd-v2.1-base-4view`` (``mvdream/configs/sd-v2-base.yaml``).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn as nn

# MultiViewUNetModel arguments of sd-v2.1-base-4view (MVDream's sd-v2-base.yaml)
MVDREAM_SD21_UNET: Dict[str, Any] = dict(
    image_size=32, in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1],
    num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_head_channels=64, use_spatial_transformer=True,
    use_linear_in_transformer=True, transformer_depth=1, context_dim=1024, use_checkpoint=False, legacy=False,
    camera_dim=16)

# ldm arguments with no effect on the architecture (or only on memory/speed)
_IGNORED = {"image_size", "use_checkpoint", "use_fp16", "dims", "class_name", "legacy", "dropout",
            "use_new_attention_order", "num_heads_upsample", "use_spatial_transformer"}


class UnsupportedUNetConfig(ValueError):
    pass


def diffusers_unet_config(ldm: Dict[str, Any]) -> Dict[str, Any]:
    """diffusers ``UNet2DConditionModel`` kwargs for MVDream ``MultiViewUNetModel`` kwargs ``ldm``.

    Raises :class:`UnsupportedUNetConfig` naming the argument for architectures diffusers' UNet cannot express here
    (scale-shift norm, resblock up/down sampling, class labels, conv-free resampling, no spatial transformer).
    """
    c = dict(ldm)
    for key, ok in (("use_scale_shift_norm", False), ("resblock_updown", False), ("num_classes", None),
                    ("conv_resample", True), ("use_spatial_transformer", True)):
        if key in c and c[key] != ok:
            raise UnsupportedUNetConfig(f"MVDream UNet argument {key}={c[key]!r} is not supported (only {ok!r})")
    if int(c.get("dims", 2)) != 2:
        raise UnsupportedUNetConfig(f"MVDream UNet argument dims={c['dims']} is not supported (only 2)")
    if float(c.get("dropout", 0.0)) != 0.0:
        raise UnsupportedUNetConfig("MVDream UNet argument dropout must be 0 (the guidance runs in eval mode)")
    mc = int(c["model_channels"])
    mult = [int(m) for m in c["channel_mult"]]
    channels = [mc * m for m in mult]
    attn_levels = [2**i in set(int(a) for a in c["attention_resolutions"]) for i in range(len(mult))]
    nhc, nh = int(c.get("num_head_channels", -1)), int(c.get("num_heads", -1))
    if nhc == -1 and nh == -1:
        raise UnsupportedUNetConfig("MVDream UNet: either num_heads or num_head_channels must be set")
    if bool(c.get("legacy", False)):
        raise UnsupportedUNetConfig("MVDream UNet argument legacy=True is not supported (MVDream uses False)")
    heads = [ch // nhc if nhc != -1 else nh for ch in channels]
    for ch, h, a in zip(channels, heads, attn_levels):
        if a and (h < 1 or ch % h):
            raise UnsupportedUNetConfig(f"MVDream UNet: {ch} channels cannot be split into heads of {nhc} channels")
    depth = c.get("transformer_depth", 1)
    if not isinstance(depth, int):
        depth = [int(d) for d in depth]
        if len(set(depth)) == 1:
            depth = depth[0]
    camera_dim = c.get("camera_dim")
    cfg: Dict[str, Any] = dict(
        sample_size=int(c.get("image_size", 32)), in_channels=int(c["in_channels"]),
        out_channels=int(c["out_channels"]), layers_per_block=int(c["num_res_blocks"]),
        block_out_channels=tuple(channels),
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn_levels),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn_levels)),
        attention_head_dim=tuple(heads),  # diffusers' historical name: this is the number of heads per level
        cross_attention_dim=int(c["context_dim"]), use_linear_projection=bool(c.get("use_linear_in_transformer")),
        transformer_layers_per_block=depth, norm_num_groups=32, norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0,
        act_fn="silu", center_input_sample=False, upcast_attention=False, mid_block_type="UNetMidBlock2DCrossAttn",
    )
    if camera_dim:
        cfg.update(class_embed_type="projection", projection_class_embeddings_input_dim=int(camera_dim))
    return cfg


class MultiViewAttnProcessor:
    """Self-attention over the F views of each object jointly (``multiview=True``), else plain attention.

    Wraps a diffusers processor (``AttnProcessor2_0``: torch SDPA). ``num_frames`` arrives through the UNet's
    ``cross_attention_kwargs``; it is a Python int, so shapes stay static under ``torch.compile``.
    """

    def __init__(self, multiview: bool, inner: Any = None) -> None:
        if inner is None:
            from diffusers.models.attention_processor import AttnProcessor2_0

            inner = AttnProcessor2_0()
        self.multiview = multiview
        self.inner = inner

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, temb: Optional[torch.Tensor] = None,
                 num_frames: int = 1) -> torch.Tensor:
        if self.multiview and num_frames > 1 and encoder_hidden_states is None and hidden_states.dim() == 3:
            bf, n, c = hidden_states.shape
            if bf % num_frames:
                raise ValueError(f"multi-view attention: batch {bf} is not a multiple of num_frames={num_frames}")
            joined = hidden_states.reshape(bf // num_frames, num_frames * n, c)
            out = self.inner(attn, joined, None, attention_mask, temb)
            return out.reshape(bf, n, c)
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


class OptionalCameraEmbedding(nn.Module):
    """diffusers' ``TimestepEmbedding`` (same parameter names) whose zero-width input means "no camera": zeros."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.linear_1 = inner.linear_1
        self.act = inner.act
        self.linear_2 = inner.linear_2

    @property
    def in_features(self) -> int:
        return self.linear_1.in_features

    def forward(self, camera: torch.Tensor) -> torch.Tensor:
        if camera.shape[-1] == 0:
            return camera.new_zeros(camera.shape[0], self.linear_2.out_features)
        return self.linear_2(self.act(self.linear_1(camera.to(self.linear_1.weight.dtype))))


class MultiViewUNet(nn.Module):
    """MVDream's UNet: ``forward(x [N*F, 4, h, w], timesteps [N*F], context [N*F, 77, D], camera [N*F, 16] | None,
    num_frames=F) -> eps [N*F, 4, h, w]``. ``self.unet`` is the underlying diffusers model (its state dict is what a
    diffusers-format folder stores under ``unet/``)."""

    def __init__(self, unet: Any, num_frames: int = 4) -> None:
        super().__init__()
        if getattr(unet.config, "class_embed_type", None) != "projection" or unet.class_embedding is None:
            raise ValueError(
                "this UNet has no camera embedding (MVDream's is class_embed_type='projection' with "
                "projection_class_embeddings_input_dim=16): it is a plain Stable Diffusion UNet, not MVDream's")
        self.unet = unet
        self.num_frames = int(num_frames)
        if not isinstance(unet.class_embedding, OptionalCameraEmbedding):
            unet.class_embedding = OptionalCameraEmbedding(unet.class_embedding)
        self.install_processors()

    def install_processors(self) -> None:
        procs = {name: MultiViewAttnProcessor(multiview=name.endswith("attn1.processor"))
                 for name in self.unet.attn_processors}
        self.unet.set_attn_processor(procs)

    @classmethod
    def from_ldm_config(cls, ldm: Dict[str, Any], num_frames: int = 4) -> "MultiViewUNet":
        """A randomly initialised model from MVDream ``MultiViewUNetModel`` arguments."""
        from diffusers import UNet2DConditionModel

        return cls(UNet2DConditionModel(**diffusers_unet_config(ldm)), num_frames=num_frames)

    @property
    def camera_dim(self) -> int:
        return int(self.unet.class_embedding.in_features)

    @property
    def cross_attention_dim(self) -> int:
        return int(self.unet.config.cross_attention_dim)

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.conv_in.weight.dtype

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                camera: Optional[torch.Tensor] = None, num_frames: Optional[int] = None) -> torch.Tensor:
        f = self.num_frames if num_frames is None else int(num_frames)
        if x.shape[0] % f:
            raise ValueError(f"MVDream UNet: the batch ({x.shape[0]}) must be a whole number of objects of "
                             f"num_frames={f} views each")
        dtype = self.dtype
        if camera is None:
            camera = x.new_zeros(x.shape[0], 0)
        elif camera.shape[-1] != self.camera_dim:
            raise ValueError(f"MVDream UNet: camera has {camera.shape[-1]} numbers per view, expected "
                             f"{self.camera_dim} (a flattened 4x4 camera-to-world matrix)")
        timesteps = timesteps.reshape(-1).expand(x.shape[0]) if timesteps.numel() == 1 else timesteps
        return self.unet(x.to(dtype), timesteps, encoder_hidden_states=context.to(dtype),
                         class_labels=camera.to(dtype), cross_attention_kwargs={"num_frames": f},
                         return_dict=False)[0]
