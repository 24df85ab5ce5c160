"""Frequency (NeRF positional) and spherical-harmonics encodings, in plain PyTorch (cheap, elementwise; autograd).

* :func:`frequency_encode` - sin/cos of octave-spaced frequencies, optionally masked per band.
* :func:`progressive_band_mask` - the coarse-to-fine band window (threestudio's ``ProgressiveBandFrequency``).
* :func:`sh_encode` - real spherical harmonics of unit directions, tcnn's basis and order.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

__all__ = ["frequency_encode", "progressive_band_mask", "sh_encode", "sh_n_output_dims"]


def progressive_band_mask(n_frequencies: int, n_active: float, device=None) -> torch.Tensor:
    """Per-band weights [n_frequencies] for a "current number of bands" ``n_active`` (a float).

    Band ``k`` gets ``(1 - cos(pi * clamp(n_active - k, 0, 1))) / 2``: bands ``k <= n_active - 1`` are fully on,
    band ``floor(n_active)`` is fading in, higher bands are off. threestudio's schedule is
    ``n_active = global_step / n_masking_step * n_frequencies`` (all bands on after ``n_masking_step`` steps).
    """
    k = torch.arange(n_frequencies, dtype=torch.float32, device=device)
    return (1.0 - torch.cos(math.pi * (n_active - k).clamp(0.0, 1.0))) / 2.0


def frequency_encode(
    x: torch.Tensor,
    n_frequencies: int,
    *,
    band_mask: Optional[torch.Tensor] = None,
    layout: str = "threestudio",
) -> torch.Tensor:
    """Encode ``x`` [..., D] with frequencies ``2**k``, ``k = 0 .. n_frequencies - 1``; returns [..., 2 * K * D].

    layout "threestudio" (its ``ProgressiveBandFrequency``; no pi): ``out[..., (2k + s) * D + d] = f_s(2**k x_d)``,
    ``f_0 = sin``, ``f_1 = cos``. layout "tcnn" (tcnn's ``Frequency``): ``out[..., d * 2K + 2k + s] =
    f_s(2**k * pi * x_d)``. ``band_mask`` [K] (e.g. :func:`progressive_band_mask`) multiplies band ``k``'s outputs.
    """
    K = n_frequencies
    freqs = 2.0 ** torch.arange(K, dtype=x.dtype, device=x.device)  # [K]
    if layout == "tcnn":
        arg = (math.pi * x[..., :, None]) * freqs  # [..., D, K]
    elif layout == "threestudio":
        arg = freqs[:, None] * x[..., None, :]  # [..., K, D]
    else:
        raise ValueError(f"frequency_encode: unknown layout {layout!r} (use 'threestudio' or 'tcnn')")
    enc = torch.stack([torch.sin(arg), torch.cos(arg)], dim=-2 if layout == "threestudio" else -1)
    if band_mask is not None:
        m = band_mask.to(device=x.device, dtype=x.dtype)
        enc = enc * (m[:, None, None] if layout == "threestudio" else m[:, None])
    return enc.reshape(*x.shape[:-1], -1)


def sh_n_output_dims(degree: int) -> int:
    """Coefficients of :func:`sh_encode`: ``degree ** 2``."""
    return degree * degree


def sh_encode(dirs: torch.Tensor, degree: int) -> torch.Tensor:
    """Real spherical harmonics of unit directions ``dirs`` [..., 3] (x, y, z in [-1, 1]); returns [..., degree**2].

    ``degree`` follows tcnn: it is the number of bands, so the bands ``l = 0 .. degree - 1`` are returned
    (degree 1: 1 coefficient, 2: 4, 3: 9, 4: 16); supported degrees are 1 to 4. Within band ``l`` the order is
    ``m = -l .. l``. The basis is orthonormal on the sphere and is tcnn's: ``Y_l0``, and for ``m != 0``
    ``sqrt(2) * Re(Y_l^m)`` (m > 0) or ``sqrt(2) * Im(Y_l^|m|)`` (m < 0) of the complex harmonics with the
    Condon-Shortley phase (so ``Y_1 = (-c y, c z, -c x)``, ``c = sqrt(3 / (4 pi))``).
    Note: tcnn's ``SphericalHarmonics`` encoding takes directions mapped to [0, 1] (``(d + 1) / 2``); this takes
    ``d`` itself.
    """
    if not 1 <= degree <= 4:
        raise ValueError(f"sh_encode: degree must be 1..4 (the number of bands), got {degree}")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, 0.28209479177387814)]  # 1 / (2 sqrt(pi))
    if degree > 1:
        c1 = 0.48860251190291987  # sqrt(3 / (4 pi))
        out += [-c1 * y, c1 * z, -c1 * x]
    if degree > 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [
            1.0925484305920792 * x * y,  # sqrt(15 / pi) / 2
            -1.0925484305920792 * y * z,
            0.94617469575756 * zz - 0.31539156525252,  # sqrt(5 / pi) / 4 * (3 z^2 - 1)
            -1.0925484305920792 * x * z,
            0.5462742152960396 * (xx - yy),  # sqrt(15 / pi) / 4
        ]
    if degree > 3:
        out += [
            0.5900435899266435 * y * (yy - 3 * xx),  # sqrt(35 / (2 pi)) / 4
            2.890611442640554 * x * y * z,  # sqrt(105 / pi) / 2
            0.4570457994644658 * y * (1 - 5 * zz),  # sqrt(21 / (2 pi)) / 4
            0.3731763325901154 * z * (5 * zz - 3),  # sqrt(7 / pi) / 4
            0.4570457994644658 * x * (1 - 5 * zz),
            1.445305721320277 * z * (xx - yy),  # sqrt(105 / pi) / 4
            0.5900435899266435 * x * (3 * yy - xx),
        ]
    return torch.stack(out, dim=-1)
