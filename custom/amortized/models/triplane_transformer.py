"""``triplane-transformer`` (LRM-style, ScaleDreamer's DL17k generator; ``scaledreamer.md`` 2.8).

Learned query tokens (3 planes x P x P, width C, init N(0, 1/C)) pass ``n_blocks`` pre-LN blocks of cross-attention
to the text tokens [K, L, D], self-attention and an MLP (C -> 4C -> C, GELU). A final LayerNorm and a
ConvTranspose2d(C -> Cp, 2, stride 2, no bias) give triplanes [K, 3, Cp, 2P, 2P]. A point is projected on the xy,
xz and yz planes, sampled bilinearly, and the three features concatenated (3 Cp) feed bias-free MLPs
3Cp -> H -> H -> 1 (SDF) and -> 3 (colour). Deterministic per prompt (no noise).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

import threestudio

from .base import AmortizedGenerator, BiasFreeMLP
from ..schema import TriplaneTransformerConfig


class Attention(nn.Module):
    def __init__(self, dim: int, kv_dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"triplane-transformer: width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(kv_dim, dim, bias=False)
        self.v = nn.Linear(kv_dim, dim, bias=False)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h = self.heads
        q = self.q(x).reshape(b, n, h, -1).transpose(1, 2)
        k = self.k(ctx).reshape(b, ctx.shape[1], h, -1).transpose(1, 2)
        v = self.v(ctx).reshape(b, ctx.shape[1], h, -1).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, dim: int, text_dim: int, heads: int) -> None:
        super().__init__()
        self.norm_cross, self.cross = nn.LayerNorm(dim), Attention(dim, text_dim, heads)
        self.norm_self, self.attn = nn.LayerNorm(dim), Attention(dim, dim, heads)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        x = x + self.cross(self.norm_cross(x), text)
        h = self.norm_self(x)
        x = x + self.attn(h, h)
        return x + self.mlp(self.norm_mlp(x))


@threestudio.register("triplane-transformer")
class TriplaneTransformer(AmortizedGenerator):
    needs_tokens = True

    Config = TriplaneTransformerConfig

    cfg: Config

    def configure(self) -> None:
        super().configure()
        c = self.cfg
        self.pos_embed = nn.Parameter(torch.randn(3 * c.plane_tokens**2, c.width) * c.width**-0.5)
        self.blocks = nn.ModuleList(Block(c.width, c.text_dim, c.n_heads) for _ in range(c.n_blocks))
        self.norm = nn.LayerNorm(c.width)
        self.upsample = nn.ConvTranspose2d(c.width, c.plane_channels, 2, stride=2, bias=False)
        self.sdf_head = BiasFreeMLP(3 * c.plane_channels, c.head_hidden, 2, 1)
        self.rgb_head = BiasFreeMLP(3 * c.plane_channels, c.head_hidden, 2, c.n_feature_dims)

    def generate(self, pooled: torch.Tensor, tokens: Optional[torch.Tensor] = None,
                 noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        if tokens is None:
            raise ValueError("triplane-transformer needs token embeddings: keep system.prompt_processor.tokens true")
        c = self.cfg
        k, p = tokens.shape[0], c.plane_tokens
        x = self.pos_embed[None].expand(k, -1, -1)
        text = tokens.float()
        for block in self.blocks:
            x = block(x, text)
        x = self.norm(x).reshape(k * 3, p, p, c.width).permute(0, 3, 1, 2)
        return self.upsample(x).reshape(k, 3, c.plane_channels, 2 * p, 2 * p)

    def decode(self, cache: torch.Tensor, points: torch.Tensor):
        k, n, _ = points.shape
        x = self.normalized(points)
        coords = torch.stack([x[..., [0, 1]], x[..., [0, 2]], x[..., [1, 2]]], dim=1)  # [K, 3, N, 2]
        planes = cache.reshape(k * 3, *cache.shape[2:])
        feat = F.grid_sample(planes, coords.reshape(k * 3, n, 1, 2), mode="bilinear", align_corners=False,
                             padding_mode="border")  # [3K, Cp, N, 1]
        feat = feat.reshape(k, 3, -1, n).permute(0, 3, 1, 2).reshape(k, n, -1)
        return {"sdf": self.sdf_head(feat), "features": self.rgb_head(feat)}
