"""Texture lookups with nvdiffrast's conventions (PyTorch, differentiable in the texture and the coordinates).

``tex`` [B, Ht, Wt, C] (B may be 1 and broadcast), ``uv`` [B, H, W, 2]: ``u`` runs along the texture's width and
``v`` along its height (row ``i`` of ``tex`` is ``v`` in ``[i, i + 1] / Ht``: no vertical flip), texel centres at
``(j + 0.5) / Wt``. Filters: ``nearest``, ``linear`` (bilinear), ``linear-mipmap-nearest``,
``linear-mipmap-linear`` (trilinear); ``auto`` is trilinear when ``uv_da`` is given, else bilinear. Mip levels are
2x2 box-filtered halvings (odd sizes round down, at least 1); the level is ``log2`` of the longer screen-space
footprint axis in texels (from ``uv_da`` = (du/dX, du/dY, dv/dX, dv/dY), as :func:`interpolate` gives with
``diff_attrs``), plus ``mip_level_bias``. Boundary modes: ``wrap``, ``clamp``, ``zero``.
"""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F

FILTERS = ("auto", "nearest", "linear", "linear-mipmap-nearest", "linear-mipmap-linear")
BOUNDARIES = ("wrap", "clamp", "zero")


def _fetch(tex: torch.Tensor, ix: torch.Tensor, iy: torch.Tensor, boundary: str) -> torch.Tensor:
    """tex [B, Ht, Wt, C] at integer texel coordinates ix, iy [B, N] -> [B, N, C]."""
    B, Ht, Wt, C = tex.shape
    valid = None
    if boundary == "wrap":
        ix, iy = torch.remainder(ix, Wt), torch.remainder(iy, Ht)
    else:
        if boundary == "zero":
            valid = (ix >= 0) & (ix < Wt) & (iy >= 0) & (iy < Ht)
        ix, iy = ix.clamp(0, Wt - 1), iy.clamp(0, Ht - 1)
    flat = (iy * Wt + ix).long()
    Bi = flat.shape[0]
    t = tex.reshape(tex.shape[0], Ht * Wt, C).expand(Bi, -1, -1)
    out = torch.gather(t, 1, flat[..., None].expand(-1, -1, C))
    if valid is not None:
        out = out * valid[..., None].to(out.dtype)
    return out


def _sample(tex: torch.Tensor, uv: torch.Tensor, mode: str, boundary: str) -> torch.Tensor:
    """uv [B, N, 2] -> [B, N, C]."""
    Ht, Wt = tex.shape[1], tex.shape[2]
    x = uv[..., 0] * Wt - 0.5
    y = uv[..., 1] * Ht - 0.5
    if mode == "nearest":
        return _fetch(tex, torch.floor(x + 0.5).long(), torch.floor(y + 0.5).long(), boundary)
    x0f, y0f = torch.floor(x.detach()), torch.floor(y.detach())
    fx, fy = (x - x0f)[..., None], (y - y0f)[..., None]
    x0, y0 = x0f.long(), y0f.long()
    c00 = _fetch(tex, x0, y0, boundary)
    c10 = _fetch(tex, x0 + 1, y0, boundary)
    c01 = _fetch(tex, x0, y0 + 1, boundary)
    c11 = _fetch(tex, x0 + 1, y0 + 1, boundary)
    return (c00 * (1 - fx) + c10 * fx) * (1 - fy) + (c01 * (1 - fx) + c11 * fx) * fy


def mip_pyramid(tex: torch.Tensor, max_mip_level: Optional[int] = None) -> List[torch.Tensor]:
    """[tex, tex/2, ...] by 2x2 box filtering down to 1x1 (or ``max_mip_level`` levels below the base)."""
    levels = [tex]
    while levels[-1].shape[1] > 1 or levels[-1].shape[2] > 1:
        if max_mip_level is not None and len(levels) > max_mip_level:
            break
        t = levels[-1].permute(0, 3, 1, 2)
        kh, kw = (2 if t.shape[2] > 1 else 1), (2 if t.shape[3] > 1 else 1)
        levels.append(F.avg_pool2d(t, (kh, kw), ceil_mode=False).permute(0, 2, 3, 1))
    return levels


def texture(tex: torch.Tensor, uv: torch.Tensor, uv_da: Optional[torch.Tensor] = None,
            mip_level_bias: Optional[torch.Tensor] = None, mip: Optional[List[torch.Tensor]] = None,
            filter_mode: str = "auto", boundary_mode: str = "wrap",
            max_mip_level: Optional[int] = None) -> torch.Tensor:
    """Sample ``tex`` at ``uv`` (see the module docstring). Returns [B, H, W, C]."""
    if filter_mode not in FILTERS:
        raise ValueError(f"texture: filter_mode {filter_mode!r} is not one of {', '.join(FILTERS)}.")
    if boundary_mode not in BOUNDARIES:
        raise ValueError(f"texture: boundary_mode {boundary_mode!r} is not one of {', '.join(BOUNDARIES)} "
                         f"(cube maps are not supported).")
    if tex.dim() != 4 or uv.dim() != 4 or uv.shape[-1] != 2:
        raise ValueError(f"texture: tex must be [B, Ht, Wt, C] and uv [B, H, W, 2]; got {tuple(tex.shape)} and "
                         f"{tuple(uv.shape)}.")
    if tex.shape[0] not in (1, uv.shape[0]):
        raise ValueError(f"texture: tex batch {tex.shape[0]} must be 1 or match uv's {uv.shape[0]}.")
    B, H, W, _ = uv.shape
    if filter_mode == "auto":
        filter_mode = "linear-mipmap-linear" if uv_da is not None or mip_level_bias is not None else "linear"
    flat_uv = uv.reshape(B, H * W, 2)
    if filter_mode in ("nearest", "linear"):
        return _sample(tex, flat_uv, filter_mode, boundary_mode).view(B, H, W, -1)
    levels = mip if mip is not None else mip_pyramid(tex, max_mip_level)
    if max_mip_level is not None:
        levels = levels[: max_mip_level + 1]
    Ht, Wt = tex.shape[1], tex.shape[2]
    if uv_da is not None:
        d = uv_da.reshape(B, H * W, 4).detach()
        lx = torch.sqrt((d[..., 0] * Wt) ** 2 + (d[..., 2] * Ht) ** 2)
        ly = torch.sqrt((d[..., 1] * Wt) ** 2 + (d[..., 3] * Ht) ** 2)
        lam = torch.log2(torch.maximum(lx, ly).clamp_min(1e-12))
    else:
        lam = torch.zeros(B, H * W, device=uv.device, dtype=uv.dtype)
    if mip_level_bias is not None:
        lam = lam + mip_level_bias.reshape(B, H * W).to(lam.dtype)
    lam = lam.clamp(0, len(levels) - 1)
    if filter_mode == "linear-mipmap-nearest":
        lvl = torch.floor(lam + 0.5).long()
        frac = torch.zeros_like(lam)
    else:
        lvl = torch.floor(lam).long()
        frac = lam - lvl
    out = None
    for i, t in enumerate(levels):
        w0 = (lvl == i).to(uv.dtype) * (1 - frac)
        w1 = (lvl + 1 == i).to(uv.dtype) * frac
        wt = w0 + w1
        if not bool((wt > 0).any()):
            continue
        s = _sample(t, flat_uv, "linear", boundary_mode) * wt[..., None]
        out = s if out is None else out + s
    if out is None:
        out = _sample(levels[0], flat_uv, "linear", boundary_mode) * 0
    return out.view(B, H, W, -1)
