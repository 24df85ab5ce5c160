"""StyleGAN2 building blocks as pure functions (plain PyTorch, fp32, no custom CUDA ops).

Every function here computes what StyleGAN2-ADA's ``torch_utils.ops`` compute on their reference path, written from
the math:

* :func:`normalize_2nd_moment` -- ``x / sqrt(mean(x^2) + eps)``.
* :func:`bias_act` -- add a bias (along ``dim``), apply ``linear`` or ``lrelu`` (slope 0.2), multiply by ``gain``,
  clamp to ``+-clamp``. ``lrelu`` layers use gain sqrt(2) (its "default gain").
* :func:`fir_filter` / :func:`upsample2d` -- zero-insertion upsampling followed by a padded depthwise FIR filter
  (the ``[1, 3, 3, 1]`` low-pass kernel, scaled by ``up^2`` to keep the signal's mean).
* :func:`conv2d_up2` -- a 3x3 convolution of the 2x-upsampled input done as a stride-2 transposed convolution
  followed by the FIR filter (StyleGAN2's fast path; the same numbers as upsample-then-convolve).
* :func:`modulated_conv2d` -- per-sample weight modulation by ``styles`` and optional demodulation; ``fused=True``
  runs one grouped convolution (best for small batches, inference), ``fused=False`` scales the activations around
  one shared-weight convolution (best for training). They agree to float rounding (tested).
* :func:`modulated_linear` -- the same for fully connected layers on point sets ``[B, N, C]`` (demodulated).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

SQRT2 = math.sqrt(2.0)


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def bias_act(x: torch.Tensor, b: Optional[torch.Tensor] = None, act: str = "linear", gain: Optional[float] = None,
             clamp: Optional[float] = None, dim: int = 1) -> torch.Tensor:
    """Bias + activation + gain + clamp; ``gain`` defaults to the activation's (1 linear, sqrt(2) lrelu)."""
    if b is not None:
        shape = [1] * x.dim()
        shape[dim] = -1
        x = x + b.reshape(shape)
    if act == "lrelu":
        x = F.leaky_relu(x, 0.2)
        default_gain = SQRT2
    elif act == "linear":
        default_gain = 1.0
    else:
        raise ValueError(f"bias_act: unknown activation {act!r} (linear or lrelu)")
    g = default_gain if gain is None else gain
    if g != 1:
        x = x * g
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def fir_filter(x: torch.Tensor, f: torch.Tensor, pad: tuple, gain: float = 1.0) -> torch.Tensor:
    """Pad ``x`` [B, C, H, W] by ``pad`` = (left, right, top, bottom) and correlate each channel with the 2D
    filter ``f`` [kh, kw] (flipped: convolution, as upfirdn2d) scaled by ``gain``."""
    c = x.shape[1]
    x = F.pad(x, list(pad))
    w = (f * gain).flip([0, 1]).to(x.dtype)[None, None].expand(c, 1, *f.shape)
    return F.conv2d(x, w, groups=c)


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2) -> torch.Tensor:
    """2x upsampling: insert zeros, then the FIR filter (padding (2, 1) for a 4-tap filter), gain up^2."""
    b, c, h, w = x.shape
    z = x.new_zeros(b, c, h, up, w, up)
    z[:, :, :, 0, :, 0] = x
    z = z.reshape(b, c, h * up, w * up)
    fw = f.shape[-1]
    p0, p1 = (fw + up - 1) // 2, (fw - up) // 2
    return fir_filter(z, f, (p0, p1, p0, p1), gain=up * up)


def conv2d_up2(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """Upsample 2x and convolve with the 3x3 ``w`` [O, I/groups, 3, 3] ("same" padding w.r.t. the upsampled
    image), as a transposed convolution plus the FIR filter."""
    o, ipg, kh, kw = w.shape
    if groups == 1:
        wt = w.transpose(0, 1)
    else:
        wt = w.reshape(groups, o // groups, ipg, kh, kw).transpose(1, 2).reshape(groups * ipg, o // groups, kh, kw)
    x = F.conv_transpose2d(x, wt, stride=2, groups=groups)
    # padding of the filtered result: ((fw + up - 1) // 2 + 1 - (kw - 1), (fw - up) // 2 + 1 - (kw - up))
    fw = f.shape[-1]
    p0 = (fw + 1) // 2 + kw // 2 - (kw - 1)
    p1 = (fw - 2) // 2 + kw // 2 - (kw - 2)
    return fir_filter(x, f, (p0, p1, p0, p1), gain=4.0)


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor,
                     noise: Optional[torch.Tensor] = None, up: int = 1, demodulate: bool = True,
                     resample_filter: Optional[torch.Tensor] = None, fused: bool = True) -> torch.Tensor:
    """Modulated convolution: ``x`` [B, I, H, W], ``weight`` [O, I, k, k], ``styles`` [B, I]. ``up`` 1 or 2
    (2 needs ``resample_filter``). Padding keeps the (upsampled) size for odd ``k``."""
    b = x.shape[0]
    o, i, kh, kw = weight.shape
    wm = weight[None] * styles.reshape(b, 1, i, 1, 1)  # [B, O, I, k, k]
    dcoefs = (wm.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt() if demodulate else None  # [B, O]
    if fused:
        if demodulate:
            wm = wm * dcoefs.reshape(b, o, 1, 1, 1)
        xg = x.reshape(1, b * i, *x.shape[2:])
        wg = wm.reshape(b * o, i, kh, kw)
        if up == 1:
            y = F.conv2d(xg, wg, padding=kh // 2, groups=b)
        else:
            y = conv2d_up2(xg, wg, resample_filter, groups=b)
        y = y.reshape(b, o, *y.shape[2:])
        return y + noise if noise is not None else y
    y = x * styles.reshape(b, i, 1, 1)
    y = F.conv2d(y, weight, padding=kh // 2) if up == 1 else conv2d_up2(y, weight, resample_filter)
    if demodulate:
        y = y * dcoefs.reshape(b, o, 1, 1)
    return y + noise if noise is not None else y


def modulated_linear(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
    """Demodulated fully connected layer on point sets: ``x`` [B, N, I], ``weight`` [O, I], ``styles`` [B, I]."""
    wm = weight[None] * styles[:, None, :]  # [B, O, I]
    wm = wm * (wm.square().sum(dim=2, keepdim=True) + 1e-8).rsqrt()
    return torch.bmm(x, wm.transpose(1, 2))
