"""``hyper-ingp`` (ATT3D / ScaleDreamer): a shared hash grid; a hypernetwork turns the pooled text embedding into
each prompt's decoder weights (``scaledreamer.md`` 2.6).

Hypernetwork: Linear(D -> hyper_dim, no bias) -> LayerNorm -> SiLU -> Linear(hyper_dim -> all head weights), Xavier
normal init. Heads per prompt (bias-free, ReLU between): SDF F->H->1 and colour F->H->3, applied with batched
matmuls, where F = the grid's feature width. Noise is ignored.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch

import threestudio
from threestudio.models.networks import get_encoding

from .base import AmortizedGenerator, text_hypernetwork
from ..schema import HyperINGPConfig


def head_shapes(n_in: int, hidden: int, n_feature_dims: int) -> Dict[str, tuple]:
    return {"sdf_w1": (n_in, hidden), "sdf_w2": (hidden, 1), "rgb_w1": (n_in, hidden), "rgb_w2": (hidden,
                                                                                                  n_feature_dims)}


@threestudio.register("hyper-ingp")
class HyperINGP(AmortizedGenerator):
    Config = HyperINGPConfig

    cfg: Config

    def configure(self) -> None:
        super().configure()
        c = self.cfg
        self.encoding = get_encoding(3, c.pos_encoding_config)
        self.shapes = head_shapes(self.encoding.n_output_dims, c.head_hidden, c.n_feature_dims)
        n_out = sum(a * b for a, b in self.shapes.values())
        self.hyper = text_hypernetwork(c.text_dim, c.hyper_dim, n_out)

    def generate(self, pooled: torch.Tensor, tokens: Optional[torch.Tensor] = None,
                 noise: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        flat = self.hyper(pooled.float())
        out, s = {}, 0
        for name, (a, b) in self.shapes.items():
            out[name] = flat[:, s : s + a * b].reshape(-1, a, b)
            s += a * b
        return out

    def decode(self, cache: Dict[str, torch.Tensor], points: torch.Tensor) -> Dict[str, torch.Tensor]:
        k, n, _ = points.shape
        x = (self.normalized(points) * 0.5 + 0.5).clamp(0.0, 1.0)  # [-radius, radius] -> [0, 1]
        feat = self.encoding(x.reshape(-1, 3)).reshape(k, n, -1)
        sdf = torch.bmm(torch.relu(torch.bmm(feat, cache["sdf_w1"])), cache["sdf_w2"])
        rgb = torch.bmm(torch.relu(torch.bmm(feat, cache["rgb_w1"])), cache["rgb_w2"])
        return {"sdf": sdf, "features": rgb}
