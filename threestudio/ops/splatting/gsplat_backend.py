"""The CUDA path: gsplat's ``rasterization`` (gsplat >= 1.5; JIT-builds its CUDA code on the first call).

gsplat is imported lazily, on the first call; building its extension takes about a minute once per machine (set
``TORCH_CUDA_ARCH_LIST`` to your GPU's architecture and ``MAX_JOBS`` to bound the build's memory).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from threestudio.utils.imports import require

INSTALL = "pip install gsplat==1.5.3 (it compiles its CUDA code on first use: needs nvcc matching torch's CUDA)"


def rasterize_gsplat(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    sh_degree: Optional[int] = None,
    backgrounds: Optional[torch.Tensor] = None,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    antialiased: bool = False,
    packed: bool = False,
    absgrad: bool = False,
    tile_size: int = 16,
) -> Dict[str, Any]:
    gsplat = require("gsplat", "The gsplat splatting backend (renderer.backend: gsplat)", INSTALL)
    out, alpha, meta = gsplat.rasterization(
        means, quats, scales, opacities, colors.contiguous(), viewmats.contiguous(), Ks.contiguous(), width, height,
        near_plane=near_plane, far_plane=far_plane, eps2d=eps2d, sh_degree=sh_degree, packed=packed,
        tile_size=tile_size, backgrounds=backgrounds, render_mode="RGB+D", absgrad=absgrad,
        rasterize_mode="antialiased" if antialiased else "classic",
    )
    rgb, depth_accum = out[..., :-1], out[..., -1:]
    return {"rgb": rgb, "alpha": alpha, "depth": depth_accum / alpha.clamp_min(1e-10), "depth_accum": depth_accum,
            "meta": meta}
