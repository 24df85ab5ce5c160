"""``3dconv-net`` (CC3D / ScaleDreamer): a StyleGAN-style generator of 3D feature voxels, batched over prompts
(``scaledreamer.md`` 2.7; the authors' version works at batch 1 only).

Mapping (every fully connected layer, including the affine layers of the modulated convolutions, is StyleGAN's
equalized-learning-rate layer :class:`EqualizedLinear`): normalise z's second moment -> ``n_mapping_layers`` FC
(lrelu * sqrt(2)) -> concat the pooled text -> a linear FC -> w. Synthesis: a learned constant at 4^3 (conv1,
ToRGB), then one block per resolution 8, 16, ... ``resolution``: conv0 (a modulated/demodulated 3^3 convolution) at
the block's input resolution, trilinear 2x upsample (``align_corners=True``), per-voxel noise of a learned strength
(init 0), bias, lrelu * sqrt(2), clamp; then a learned bias volume (init randn / sqrt(C); blocks at 8^3 ..
``bias_volume_max_res`` only), then conv1 at the output resolution (noise, bias, lrelu, clamp). Each block's ToRGB
(1^3 modulated conv, no demodulation, no clamp) to ``out_channels`` is added to the upsampled skip. Output
[K, C, R, R, R], sampled trilinearly; bias-free MLPs C->H->1 (SDF) and C->H->3 (colour).

Modulation is applied to the activations (x * s, one shared convolution, then the demodulation scale per sample and
output channel), which is the grouped-convolution form rewritten so that every sample in a batch is independent:
batch 4 gives the same result as four batch-1 calls. ``noise_mode``: ``random`` (new noise per call), ``const``
(fixed buffers; used for evaluation), ``none``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

import threestudio

from .base import AmortizedGenerator, BiasFreeMLP
from ..schema import Conv3DNetConfig


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


def modulated_conv3d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True,
                     eps: float = 1e-8) -> torch.Tensor:
    """x [B, Cin, R, R, R], weight [Cout, Cin, k, k, k], styles [B, Cin] -> [B, Cout, R, R, R]."""
    y = F.conv3d(x * styles[:, :, None, None, None], weight, padding=weight.shape[-1] // 2)
    if demodulate:
        w2 = weight.square().sum(dim=(2, 3, 4))  # [Cout, Cin]
        d = (styles.square() @ w2.t() + eps).rsqrt()  # [B, Cout] = 1 / |w * s|
        y = y * d[:, :, None, None, None]
    return y


def modulated_conv3d_grouped(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True,
                             eps: float = 1e-8) -> torch.Tensor:
    """Reference: StyleGAN2's grouped-convolution form (per-sample weights), for tests."""
    b, cin = styles.shape
    w = weight[None] * styles[:, None, :, None, None, None]  # [B, Cout, Cin, k, k, k]
    if demodulate:
        w = w * (w.square().sum(dim=(2, 3, 4, 5), keepdim=True) + eps).rsqrt()
    y = F.conv3d(x.reshape(1, b * cin, *x.shape[2:]), w.reshape(-1, cin, *w.shape[3:]),
                 padding=weight.shape[-1] // 2, groups=b)
    return y.reshape(b, -1, *y.shape[2:])


class EqualizedLinear(nn.Module):
    """StyleGAN's equalized-learning-rate fully connected layer: the weight is stored N(0, 1) (divided by
    ``lr_multiplier``) and scaled at run time by ``lr_multiplier / sqrt(fan_in)``, so every layer starts with unit-scale
    outputs and Adam's step is the same fraction of every weight. ``activation="lrelu"``: leaky ReLU (0.2) times
    sqrt(2), which keeps the second moment of N(0, 1) inputs at about 1."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, bias_init: float = 0.0,
                 activation: str = "linear", lr_multiplier: float = 1.0) -> None:
        super().__init__()
        if activation not in ("linear", "lrelu"):
            raise ValueError(f"EqualizedLinear activation {activation!r}: linear or lrelu")
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = None if self.bias is None else self.bias * self.bias_gain
        y = F.linear(x, self.weight * self.weight_gain, b)
        if self.activation == "lrelu":
            y = F.leaky_relu(y, 0.2) * math.sqrt(2.0)
        return y

    def extra_repr(self) -> str:
        return (f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}, "
                f"bias={self.bias is not None}, activation={self.activation}")


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Trilinear 2x upsampling with ``align_corners=True`` (the authors' resampler, for features and the skip)."""
    return F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=True)


class ModConv(nn.Module):
    """Modulated 3D convolution (styles from an equalized affine layer on w, bias init 1), then, in order: a 2x
    upsample (``up``), per-voxel noise of a learned strength at ``res`` (the output resolution), bias, leaky ReLU *
    sqrt(2) (``activate``) and a clamp to +-``clamp`` (None: no clamp, as the ToRGB layers)."""

    def __init__(self, c_in: int, c_out: int, w_dim: int, kernel: int, res: int, demodulate: bool = True,
                 noise: bool = True, activate: bool = True, clamp: Optional[float] = 256.0, up: bool = False) -> None:
        super().__init__()
        self.affine = EqualizedLinear(w_dim, c_in, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(c_out, c_in, kernel, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.demodulate, self.activate, self.clamp, self.up = demodulate, activate, clamp, up
        self.gain = 1.0 if demodulate else 1.0 / math.sqrt(c_in * kernel**3)
        self.use_noise = noise
        if noise:
            self.noise_strength = nn.Parameter(torch.zeros(()))
            self.register_buffer("noise_const", torch.randn(res, res, res))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str) -> torch.Tensor:
        y = modulated_conv3d(x, self.weight, self.affine(w) * self.gain, self.demodulate)
        if self.up:
            y = upsample2x(y)
        if self.use_noise and noise_mode != "none":
            n = (torch.randn(y.shape[0], 1, *y.shape[2:], device=y.device, dtype=y.dtype) if noise_mode == "random"
                 else self.noise_const[None, None])
            y = y + n * self.noise_strength
        y = y + self.bias[None, :, None, None, None]
        if self.activate:
            y = F.leaky_relu(y, 0.2) * math.sqrt(2.0)
        return y if self.clamp is None else y.clamp(-self.clamp, self.clamp)


class SynthesisBlock(nn.Module):
    """The first block (``first``): learned constant at ``res`` -> conv1 -> ToRGB. Every other block, output
    resolution ``res``: conv0 at the input resolution ``res / 2``, trilinear 2x upsample, + the bias volume (when
    ``bias_volume``; init randn / sqrt(C)), conv1 at ``res``; its ToRGB is added to the upsampled skip."""

    def __init__(self, c_in: int, c_out: int, w_dim: int, res: int, out_channels: int, bias_volume: bool,
                 first: bool = False) -> None:
        super().__init__()
        self.first = first
        if first:
            self.const = nn.Parameter(torch.randn(c_out, res, res, res))
        else:
            self.conv0 = ModConv(c_in, c_out, w_dim, 3, res, up=True)
        self.conv1 = ModConv(c_out, c_out, w_dim, 3, res)
        self.bias_volume = (nn.Parameter(torch.randn(c_out, res, res, res) / math.sqrt(c_out))
                            if bias_volume and not first else None)
        self.torgb = ModConv(c_out, out_channels, w_dim, 1, res, demodulate=False, noise=False, activate=False,
                             clamp=None)

    def forward(self, x: Optional[torch.Tensor], img: Optional[torch.Tensor], w: torch.Tensor,
                noise_mode: str):
        if self.first:
            x = self.const[None].expand(w.shape[0], -1, -1, -1, -1)
        else:
            x = self.conv0(x, w, noise_mode)  # convolves at the input resolution, then upsamples
        if self.bias_volume is not None:
            x = x + self.bias_volume[None]
        x = self.conv1(x, w, noise_mode)
        y = self.torgb(x, w, noise_mode)
        if img is not None:
            y = y + upsample2x(img)
        return x, y


@threestudio.register("3dconv-net")
class Conv3DNet(AmortizedGenerator):
    needs_noise = True

    Config = Conv3DNetConfig

    cfg: Config

    def configure(self) -> None:
        super().configure()
        c = self.cfg
        n_blocks = int(round(math.log2(c.resolution / 4))) + 1
        if 4 * 2 ** (n_blocks - 1) != c.resolution or len(c.channels) != n_blocks:
            raise ValueError(f"system.geometry: resolution {c.resolution} must be 4 * 2^n with one channel count per "
                             f"resolution 4..{c.resolution} ({n_blocks} values); got channels {list(c.channels)}")
        for mode in (c.noise_mode, c.eval_noise_mode):
            if mode not in ("random", "const", "none"):
                raise ValueError(f"system.geometry noise mode {mode!r}: random, const or none")
        dims = [c.z_dim] + [c.w_dim] * c.n_mapping_layers
        self.mapping = nn.Sequential(*[EqualizedLinear(a, b, activation="lrelu")
                                       for a, b in zip(dims[:-1], dims[1:])])
        self.text_fc = EqualizedLinear(c.w_dim + c.text_dim, c.w_dim)  # linear: w is an affine map of [w_z, text]
        chans = [ch * (c.channel_multiplier if 4 * 2**i >= 32 else 1) for i, ch in enumerate(c.channels)]
        self.blocks = nn.ModuleList()
        for i, ch in enumerate(chans):
            res = 4 * 2**i
            self.blocks.append(SynthesisBlock(chans[i - 1] if i else ch, ch, c.w_dim, res, c.out_channels,
                                              8 <= res <= c.bias_volume_max_res, first=i == 0))
        self.sdf_head = BiasFreeMLP(c.out_channels, c.head_hidden, 1, 1)
        self.rgb_head = BiasFreeMLP(c.out_channels, c.head_hidden, 1, c.n_feature_dims)

    def mapping_w(self, pooled: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        w = self.mapping(normalize_2nd_moment(noise.float()))
        return self.text_fc(torch.cat([w, pooled.float()], dim=-1))

    def generate(self, pooled: torch.Tensor, tokens: Optional[torch.Tensor] = None,
                 noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        if noise is None:
            noise = torch.zeros(pooled.shape[0], self.cfg.z_dim, device=pooled.device)
        w = self.mapping_w(pooled, noise)
        mode = self.cfg.noise_mode if self.training else self.cfg.eval_noise_mode
        x = img = None
        for block in self.blocks:
            x, img = block(x, img, w, mode)
        return img  # [K, C, R, R, R]

    def decode(self, cache: torch.Tensor, points: torch.Tensor):
        k, n, _ = points.shape
        grid = self.normalized(points).reshape(k, n, 1, 1, 3)
        feat = F.grid_sample(cache, grid, mode="bilinear", align_corners=False, padding_mode="border")
        feat = feat.reshape(k, cache.shape[1], n).transpose(1, 2)
        return {"sdf": self.sdf_head(feat), "features": self.rgb_head(feat)}
