"""Generator base: a geometry module that maps text (and noise) to a per-prompt 3D field.

``generate(pooled [K, D], tokens [K, L, D] or None, noise [K, Z] or None)`` returns the per-prompt representation
(a "space cache": a tensor or a dict of tensors with K leading rows); ``query(cache, points [K, N, 3])`` returns
``{"sdf": [K, N, 1], "features": [K, N, F]}`` for world-space points (|x| <= radius), with the SDF already offset by
the sphere bias ``|x| - sphere_bias`` (ScaleDreamer's initial sphere). ``needs`` names the inputs it uses.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn as nn

from threestudio.models.geometry.base import BaseGeometry
from ..schema import AmortizedGeneratorConfig


class BiasFreeMLP(nn.Module):
    """Linear layers without bias, ReLU between them (the generators' SDF and colour heads)."""

    def __init__(self, dim_in: int, hidden: int, n_hidden_layers: int, dim_out: int) -> None:
        super().__init__()
        dims = [dim_in] + [hidden] * n_hidden_layers + [dim_out]
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


def text_hypernetwork(text_dim: int, hidden: int, n_out: int) -> nn.Sequential:
    """The text hypernetwork of Hyper-iNGP and its environment map (ATT3D's recommendation): Linear(text_dim ->
    hidden, no bias) -> LayerNorm -> SiLU -> Linear(hidden -> n_out), Xavier-normal weights, zero bias."""
    net = nn.Sequential(nn.Linear(text_dim, hidden, bias=False), nn.LayerNorm(hidden), nn.SiLU(),
                        nn.Linear(hidden, n_out))
    for m in net:
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return net


class AmortizedGenerator(BaseGeometry):
    needs_tokens: bool = False
    needs_noise: bool = False

    Config = AmortizedGeneratorConfig

    cfg: Config

    def configure(self) -> None:
        self.register_bbox(self.cfg.radius)

    def generate(self, pooled: torch.Tensor, tokens: Optional[torch.Tensor] = None,
                 noise: Optional[torch.Tensor] = None) -> Any:
        raise NotImplementedError

    def decode(self, cache: Any, points: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Raw network outputs {"sdf": [K, N, 1], "features": [K, N, F]} (no sphere bias)."""
        raise NotImplementedError

    def query(self, cache: Any, points: torch.Tensor) -> Dict[str, torch.Tensor]:
        out = self.decode(cache, points)
        out["sdf"] = out["sdf"] + points.norm(dim=-1, keepdim=True) - self.cfg.sphere_bias
        return out

    def normalized(self, points: torch.Tensor) -> torch.Tensor:
        """World points -> [-1, 1]^3 (grid_sample coordinates)."""
        return points / self.cfg.radius
