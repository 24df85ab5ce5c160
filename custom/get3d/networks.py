"""GET3D's networks as ``nn.Module`` trees whose parameter names are the official checkpoint's names.

* :class:`MappingNetwork` -- z [B, z_dim] -> w [B, num_ws, w_dim]: 2nd-moment normalisation, ``num_layers``
  equalised-LR FC layers (lr multiplier 0.01, lrelu), broadcast, truncation towards the tracked ``w_avg``.
* :class:`TriplaneSynthesis` -- StyleGAN2 "skip" synthesis 4 -> R whose blocks carry two skip heads: ``togeo``
  (driven by w_geo, like conv0/conv1) and ``totex`` (driven by w_tex); the summed skip image [B, 192, R, R] holds
  the SDF triplane (channels 0-95) and the texture triplane (96-191), 3 planes x 32 channels each.
* :class:`ImplicitMLP` -- modulated (demodulated) FC layers on triplane features: 32 -> hidden (lrelu) -> out.
* :class:`ToRGB` -- 1x1 modulated conv without demodulation (skip heads and GET3D's final ``to_rgb``).

Weight conventions (equalised learning rate): FC weights are stored as N(0, 1) / lr_mult and multiplied by
``lr_mult / sqrt(fan_in)`` at run time; affine layers (w -> styles) have bias init 1; conv weights are N(0, 1) (the
demodulation normalises them); ToRGB styles are multiplied by ``1 / sqrt(fan_in)``.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops


def _setup_filter(taps=(1.0, 3.0, 3.0, 1.0)) -> torch.Tensor:
    f = torch.tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()


class FullyConnected(nn.Module):
    def __init__(self, in_features: int, out_features: int, activation: str = "linear", lr_multiplier: float = 1.0,
                 bias_init: float = 0.0) -> None:
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init)))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * self.weight_gain
        b = self.bias * self.bias_gain if self.bias_gain != 1 else self.bias
        if self.activation == "linear":
            return torch.addmm(b[None], x, w.t())
        return ops.bias_act(x @ w.t(), b, act=self.activation)


class MappingNetwork(nn.Module):
    def __init__(self, z_dim: int, w_dim: int, num_ws: int, num_layers: int = 8, lr_multiplier: float = 0.01,
                 w_avg_beta: float = 0.998) -> None:
        super().__init__()
        self.z_dim, self.w_dim, self.num_ws, self.num_layers = z_dim, w_dim, num_ws, num_layers
        self.w_avg_beta = w_avg_beta
        feats = [z_dim] + [w_dim] * num_layers
        for i in range(num_layers):
            setattr(self, f"fc{i}", FullyConnected(feats[i], feats[i + 1], "lrelu", lr_multiplier))
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, update_w_avg: bool = False) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"mapping: z must be [B, {self.z_dim}], got {tuple(z.shape)}")
        x = ops.normalize_2nd_moment(z.float())
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        if update_w_avg:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(0).lerp(self.w_avg, self.w_avg_beta))
        x = x[:, None].expand(-1, self.num_ws, -1)
        if truncation_psi != 1:
            x = self.w_avg.lerp(x, truncation_psi)
        return x

    @torch.no_grad()
    def recompute_w_avg(self, n: int = 100_000, generator: Optional[torch.Generator] = None,
                        chunk: int = 10_000) -> torch.Tensor:
        """Set ``w_avg`` to the mean w of ``n`` random z (what GET3D does before sampling with truncation)."""
        dev = self.w_avg.device
        total = torch.zeros(self.w_dim, dtype=torch.float64, device=dev)
        done = 0
        while done < n:
            m = min(chunk, n - done)
            z = torch.randn(m, self.z_dim, generator=generator, device="cpu").to(dev)
            total += self.forward(z)[:, 0].double().sum(0)
            done += m
        self.w_avg.copy_((total / n).float())
        return self.w_avg


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (optionally 2x up) + const noise + bias + lrelu(sqrt 2) + clamp."""

    def __init__(self, in_ch: int, out_ch: int, w_dim: int, resolution: int, up: int = 1,
                 conv_clamp: Optional[float] = 256) -> None:
        super().__init__()
        self.up, self.resolution, self.conv_clamp = up, resolution, conv_clamp
        self.register_buffer("resample_filter", _setup_filter())
        self.affine = FullyConnected(w_dim, in_ch, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, 3, 3))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(out_ch))

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused: bool = True) -> torch.Tensor:
        styles = self.affine(w)
        noise = self.noise_const * self.noise_strength
        x = ops.modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up,
                                 resample_filter=self.resample_filter, fused=fused)
        return ops.bias_act(x, self.bias, act="lrelu", clamp=self.conv_clamp)


class ToRGB(nn.Module):
    """1x1 modulated conv, no demodulation, linear + clamp."""

    def __init__(self, in_ch: int, out_ch: int, w_dim: int, conv_clamp: Optional[float] = 256) -> None:
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnected(w_dim, in_ch, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.weight_gain = 1 / math.sqrt(in_ch)

    def styles(self, w: torch.Tensor) -> torch.Tensor:
        return self.affine(w) * self.weight_gain

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused: bool = True) -> torch.Tensor:
        x = ops.modulated_conv2d(x, self.weight, self.styles(w), demodulate=False, fused=fused)
        return ops.bias_act(x, self.bias, clamp=self.conv_clamp)

    def forward_points(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The same 1x1 conv on point features ``x`` [B, N, C] -> [B, N, out] (a batched matmul)."""
        wm = self.weight[None, :, :, 0, 0] * self.styles(w)[:, None, :]  # [B, O, I]
        y = torch.bmm(x, wm.transpose(1, 2))
        return ops.bias_act(y, self.bias, clamp=self.conv_clamp, dim=2)


class SynthesisBlock(nn.Module):
    """One resolution of the triplane synthesis: (const | conv0 up) -> conv1 -> togeo + totex skip heads."""

    def __init__(self, in_ch: int, out_ch: int, w_dim: int, resolution: int, plane_ch: int,
                 conv_clamp: Optional[float] = 256) -> None:
        super().__init__()
        self.in_ch, self.resolution = in_ch, resolution
        self.register_buffer("resample_filter", _setup_filter())
        if in_ch == 0:
            self.const = nn.Parameter(torch.randn(out_ch, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_ch, out_ch, w_dim, resolution, up=2, conv_clamp=conv_clamp)
        self.conv1 = SynthesisLayer(out_ch, out_ch, w_dim, resolution, conv_clamp=conv_clamp)
        self.totex = ToRGB(out_ch, plane_ch, w_dim, conv_clamp=conv_clamp)
        self.togeo = ToRGB(out_ch, plane_ch, w_dim, conv_clamp=conv_clamp)
        self.num_conv = 1 if in_ch == 0 else 2
        self.num_ws_geo = self.num_conv + 1  # convs + togeo
        self.num_ws_tex = 1  # totex

    def forward(self, x: Optional[torch.Tensor], img: Optional[torch.Tensor], ws_tex: torch.Tensor,
                ws_geo: torch.Tensor, fused: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.in_ch == 0:
            x = self.const[None].expand(ws_geo.shape[0], -1, -1, -1)
            x = self.conv1(x, ws_geo[:, 0], fused)
        else:
            x = self.conv0(x, ws_geo[:, 0], fused)
            x = self.conv1(x, ws_geo[:, 1], fused)
        if img is not None:
            img = ops.upsample2d(img, self.resample_filter)
        geo = self.togeo(x, ws_geo[:, self.num_conv], fused)
        tex = self.totex(x, ws_tex[:, 0], fused)
        new = torch.cat([geo, tex], 1)
        return x, (new if img is None else img + new)


class TriplaneSynthesis(nn.Module):
    def __init__(self, w_dim: int, resolution: int, plane_ch: int = 96, channel_base: int = 32768,
                 channel_max: int = 512, conv_clamp: Optional[float] = 256) -> None:
        super().__init__()
        log2 = int(round(math.log2(resolution)))
        if resolution < 4 or 2 ** log2 != resolution:
            raise ValueError(f"tri_plane_resolution must be a power of two >= 4, got {resolution}")
        self.resolutions = [2 ** i for i in range(2, log2 + 1)]
        ch = {r: min(channel_base // r, channel_max) for r in self.resolutions}
        self.num_ws_geo = self.num_ws_tex = 0
        for r in self.resolutions:
            blk = SynthesisBlock(ch[r // 2] if r > 4 else 0, ch[r], w_dim, r, plane_ch, conv_clamp)
            setattr(self, f"b{r}", blk)
            self.num_ws_geo += blk.num_ws_geo
            self.num_ws_tex += blk.num_ws_tex

    def blocks(self) -> List[SynthesisBlock]:
        return [getattr(self, f"b{r}") for r in self.resolutions]

    def forward(self, ws_tex: torch.Tensor, ws_geo: torch.Tensor, fused: bool = True) -> torch.Tensor:
        x = img = None
        it = ig = 0
        for blk in self.blocks():
            x, img = blk(x, img, ws_tex[:, it:it + blk.num_ws_tex], ws_geo[:, ig:ig + blk.num_ws_geo], fused)
            it += blk.num_ws_tex
            ig += blk.num_ws_geo
        return img


class ImplicitLayer(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, w_dim: int, activation: str = "lrelu") -> None:
        super().__init__()
        self.activation = activation
        self.affine = FullyConnected(w_dim, in_ch, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch))
        self.bias = nn.Parameter(torch.zeros(out_ch))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        y = ops.modulated_linear(x, self.weight, self.affine(w))
        return ops.bias_act(y, self.bias, act=self.activation, dim=2)


class ImplicitMLP(nn.Module):
    """``n_hidden`` lrelu layers then a linear output layer; layer i is modulated by ``ws[:, i]``."""

    def __init__(self, in_ch: int, hidden: int, out_ch: int, w_dim: int, n_hidden: int = 1) -> None:
        super().__init__()
        layers = [ImplicitLayer(in_ch if i == 0 else hidden, hidden, w_dim) for i in range(n_hidden)]
        layers.append(ImplicitLayer(hidden, out_ch, w_dim, activation="linear"))
        self.layers = nn.ModuleList(layers)
        self.num_ws = len(layers)

    def forward(self, x: torch.Tensor, ws: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x, ws[:, i])
        return x


def sample_triplane(planes: torch.Tensor, points: torch.Tensor, shape_min: float, shape_len: float,
                    feat_dim: int = 32) -> torch.Tensor:
    """Sum of bilinear samples of the three planes (xy, yz, xz) at ``points`` [B, N, 3] -> [B, N, feat_dim].

    ``planes`` [B, 3 * feat_dim, R, R]. Coordinates are normalised by the grid's bounding box, clamped to it, and
    detached (no gradient to point positions, as GET3D). Zero padding, align_corners=False.
    """
    b = planes.shape[0]
    p = ((points.detach() - shape_min) / shape_len).clamp(0, 1) * 2 - 1
    grids = torch.stack([p[..., [0, 1]], p[..., [1, 2]], p[..., [0, 2]]], 1)  # [B, 3, N, 2]
    pl = planes.reshape(b * 3, feat_dim, *planes.shape[-2:])
    feat = F.grid_sample(pl, grids.reshape(b * 3, 1, -1, 2), mode="bilinear", padding_mode="zeros",
                         align_corners=False)  # [B*3, C, 1, N]
    return feat.reshape(b, 3, feat_dim, -1).sum(1).transpose(1, 2)


class TriplaneGenerator(nn.Module):
    """``synthesis.generator``: triplane synthesis + the texture / SDF / deformation MLPs (+ FlexiCubes weights)."""

    def __init__(self, w_dim: int, tri_plane_resolution: int, feat_channel: int = 16, mlp_latent_channel: int = 32,
                 n_implicit_layer: int = 1, channel_base: int = 32768, channel_max: int = 512,
                 flexicubes: bool = False) -> None:
        super().__init__()
        self.feat_dim = 32
        self.tri_plane_synthesis = TriplaneSynthesis(w_dim, tri_plane_resolution, 3 * self.feat_dim, channel_base,
                                                     channel_max)
        mk = lambda out: ImplicitMLP(self.feat_dim, mlp_latent_channel, out, w_dim, n_implicit_layer)  # noqa: E731
        self.mlp_synthesis_tex = mk(feat_channel)
        self.mlp_synthesis_sdf = mk(1)
        self.mlp_synthesis_def = mk(3)
        if flexicubes:
            # per-cube weights from the 8 corners' features: 8 * 32 -> 21 (12 beta, 8 alpha, 1 gamma)
            self.mlp_synthesis_weight = ImplicitMLP(8 * self.feat_dim, mlp_latent_channel, 21, w_dim,
                                                    n_implicit_layer)
        self.num_ws_tex = self.tri_plane_synthesis.num_ws_tex + self.mlp_synthesis_tex.num_ws
        self.num_ws_geo = self.tri_plane_synthesis.num_ws_geo + self.mlp_synthesis_sdf.num_ws

    def planes(self, ws_tex: torch.Tensor, ws_geo: torch.Tensor, fused: bool = True
               ) -> Tuple[torch.Tensor, torch.Tensor]:
        nt, ng = self.tri_plane_synthesis.num_ws_tex, self.tri_plane_synthesis.num_ws_geo
        img = self.tri_plane_synthesis(ws_tex[:, :nt], ws_geo[:, :ng], fused)
        c = 3 * self.feat_dim
        return img[:, :c], img[:, c:]
