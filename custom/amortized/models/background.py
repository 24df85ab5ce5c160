"""``amortized-text-environment-map``: a text-conditioned environment map (ScaleDreamer's Hyper-iNGP background).

Directions (unit vectors, mapped to [0, 1]^3) go through a shared hash grid; the same text hypernetwork as the
geometry's (``text_hypernetwork``: D -> hyper_dim without bias, LayerNorm, SiLU -> F x H + H x 3, Xavier init) turns
the pooled text embedding into each prompt's bias-free 2-layer MLP (ReLU, then the colour activation).
``random_aug`` replaces a whole prompt's background by a random solid colour with probability ``random_aug_prob``
while training. ``forward(dirs [K, ..., 3], text [K, D])`` -> [K, ..., 3].
"""

from __future__ import annotations

import random
from typing import Optional

import torch

import threestudio
from threestudio.models.background.base import BaseBackground
from threestudio.models.networks import get_encoding
from threestudio.utils.activations import get_color_activation

from .base import text_hypernetwork
from ..schema import TextEnvironmentMapConfig


@threestudio.register("amortized-text-environment-map")
class TextEnvironmentMap(BaseBackground):
    text_conditioned = True

    Config = TextEnvironmentMapConfig

    cfg: Config

    def configure(self) -> None:
        c = self.cfg
        self.encoding = get_encoding(3, c.dir_encoding_config)
        f = self.encoding.n_output_dims
        self.shapes = ((f, c.hidden), (c.hidden, c.n_output_dims))
        self.hyper = text_hypernetwork(c.text_dim, c.hyper_dim, sum(a * b for a, b in self.shapes))
        self.activation = get_color_activation(c.color_activation)

    def forward(self, dirs: torch.Tensor, text: Optional[torch.Tensor] = None) -> torch.Tensor:
        if text is None:
            raise ValueError("amortized-text-environment-map needs the prompts' pooled text embeddings")
        k = dirs.shape[0]
        if not self.training and self.cfg.eval_color is not None:
            return torch.as_tensor(self.cfg.eval_color, dtype=dirs.dtype, device=dirs.device).expand(
                *dirs.shape[:-1], -1)
        d = torch.nn.functional.normalize(dirs.reshape(k, -1, 3), dim=-1) * 0.5 + 0.5
        feat = self.encoding(d.reshape(-1, 3)).reshape(k, d.shape[1], -1)
        flat = self.hyper(text.float())
        (a1, b1), (a2, b2) = self.shapes
        w1, w2 = flat[:, : a1 * b1].reshape(k, a1, b1), flat[:, a1 * b1 :].reshape(k, a2, b2)
        color = self.activation(torch.bmm(torch.relu(torch.bmm(feat, w1)), w2)).reshape(*dirs.shape[:-1], -1)
        if self.training and self.cfg.random_aug:
            keep = torch.tensor([random.random() >= self.cfg.random_aug_prob for _ in range(k)], device=dirs.device)
            solid = torch.rand(k, self.cfg.n_output_dims, device=dirs.device, dtype=color.dtype)
            shape = (k,) + (1,) * (color.dim() - 2) + (-1,)
            color = torch.where(keep.reshape((k,) + (1,) * (color.dim() - 1)), color, solid.reshape(shape))
        return color
