"""Encodings and small MLPs, configured like threestudio's (tcnn-style dicts), running on our own ops.

Encoding ``otype``: ``HashGrid``, ``ProgressiveBandHashGrid`` (levels switched on over steps), ``Frequency``,
``ProgressiveBandFrequency`` (bands faded in over steps), ``SphericalHarmonics`` (unit directions), ``Identity``.
MLP ``otype``: ``VanillaMLP`` (bias-free linear layers, as threestudio), ``SphereInitVanillaMLP`` (geometric init of
an SDF network to a sphere); ``FullyFusedMLP``/``CutlassMLP`` are accepted as aliases of ``VanillaMLP``.
Every key is typed, so a misspelt one fails at start-up.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn as nn


from threestudio.models.schema import EncodingConfig, MLPConfig  # noqa: F401 (their old import path)
from threestudio.ops.encodings import frequency_encode, progressive_band_mask, sh_encode, sh_n_output_dims
from threestudio.ops.hashgrid import HashGridEncoder, per_level_scale_for
from threestudio.utils.base import Updateable
from threestudio.utils.config import ConfigError, ConfigIssue, parse_structured


_ENCODINGS = ("HashGrid", "ProgressiveBandHashGrid", "Frequency", "ProgressiveBandFrequency", "SphericalHarmonics",
              "Identity")
_MLPS = ("VanillaMLP", "SphereInitVanillaMLP", "FullyFusedMLP", "CutlassMLP")


def _bad(key: str, value: Any, choices: tuple) -> ConfigError:
    import difflib

    close = difflib.get_close_matches(str(value), list(choices), n=1)
    return ConfigError([ConfigIssue(key, f"unknown value {value!r}", "",
                                    f"did you mean '{close[0]}'?" if close else f"choose one of {', '.join(choices)}")])


class Encoding(nn.Module, Updateable):
    n_input_dims: int
    n_output_dims: int


class HashGrid(Encoding):
    def __init__(self, n_input_dims: int, cfg: EncodingConfig) -> None:
        super().__init__()
        scale = cfg.per_level_scale
        if cfg.max_resolution is not None:
            scale = per_level_scale_for(cfg.base_resolution, cfg.max_resolution, cfg.n_levels)
        if cfg.dtype not in ("float32", "float16"):
            raise _bad("pos_encoding_config.dtype", cfg.dtype, ("float32", "float16"))
        self.grid = HashGridEncoder(n_input_dims, cfg.n_levels, cfg.n_features_per_level, cfg.log2_hashmap_size,
                                    cfg.base_resolution, scale, getattr(torch, cfg.dtype), cfg.backend)
        self.n_input_dims = n_input_dims
        self.include_xyz = cfg.include_xyz
        self.n_output_dims = self.grid.n_output_dims + (n_input_dims if cfg.include_xyz else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        enc = self.grid(x)
        return torch.cat([x, enc], dim=-1) if self.include_xyz else enc


class ProgressiveBandHashGrid(HashGrid):
    """Levels ``< start_level`` are on from the start; one more every ``update_steps`` after ``start_step``."""

    def __init__(self, n_input_dims: int, cfg: EncodingConfig) -> None:
        super().__init__(n_input_dims, cfg)
        self.cfg = cfg
        self.grid.n_active_levels = cfg.start_level

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        extra = max(global_step - self.cfg.start_step, 0) // max(self.cfg.update_steps, 1)
        self.grid.n_active_levels = min(self.cfg.start_level + extra, self.cfg.n_levels)


class Frequency(Encoding):
    def __init__(self, n_input_dims: int, cfg: EncodingConfig, progressive: bool = False) -> None:
        super().__init__()
        self.n_frequencies = cfg.n_frequencies
        self.include_xyz = cfg.include_xyz
        self.progressive = progressive
        self.n_masking_step = cfg.n_masking_step
        self.n_input_dims = n_input_dims
        self.n_output_dims = n_input_dims * 2 * cfg.n_frequencies + (n_input_dims if cfg.include_xyz else 0)
        self.register_buffer("mask", torch.ones(cfg.n_frequencies) if not progressive else
                             torch.zeros(cfg.n_frequencies), persistent=False)

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        if self.progressive:
            n_active = global_step / max(self.n_masking_step, 1) * self.n_frequencies
            self.mask.copy_(progressive_band_mask(self.n_frequencies, n_active, device=self.mask.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        enc = frequency_encode(x, self.n_frequencies, band_mask=self.mask if self.progressive else None)
        return torch.cat([x, enc], dim=-1) if self.include_xyz else enc


class SphericalHarmonics(Encoding):
    """Takes unit directions in [-1, 1]^3 (not tcnn's [0, 1] mapping)."""

    def __init__(self, n_input_dims: int, cfg: EncodingConfig) -> None:
        super().__init__()
        if n_input_dims != 3:
            raise ConfigError([ConfigIssue("dir_encoding_config.otype", "SphericalHarmonics needs 3-D directions")])
        self.degree = cfg.degree
        self.n_input_dims = 3
        self.n_output_dims = sh_n_output_dims(cfg.degree)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sh_encode(x, self.degree)


class Identity(Encoding):
    def __init__(self, n_input_dims: int, cfg: Optional[EncodingConfig] = None) -> None:
        super().__init__()
        self.n_input_dims = self.n_output_dims = n_input_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def get_encoding(n_input_dims: int, config: Any) -> Encoding:
    cfg: EncodingConfig = config if isinstance(config, EncodingConfig) else parse_structured(EncodingConfig, config)
    otype = cfg.otype
    if otype == "HashGrid":
        return HashGrid(n_input_dims, cfg)
    if otype == "ProgressiveBandHashGrid":
        return ProgressiveBandHashGrid(n_input_dims, cfg)
    if otype in ("Frequency", "ProgressiveBandFrequency"):
        return Frequency(n_input_dims, cfg, progressive=otype == "ProgressiveBandFrequency")
    if otype == "SphericalHarmonics":
        return SphericalHarmonics(n_input_dims, cfg)
    if otype == "Identity":
        return Identity(n_input_dims)
    raise _bad("encoding_config.otype", otype, _ENCODINGS)


def get_activation(name: Optional[str]) -> nn.Module:
    table = {
        None: nn.Identity, "none": nn.Identity, "ReLU": nn.ReLU, "relu": nn.ReLU, "Sigmoid": nn.Sigmoid,
        "sigmoid": nn.Sigmoid, "Softplus": nn.Softplus, "softplus": nn.Softplus, "Tanh": nn.Tanh, "tanh": nn.Tanh,
        "SiLU": nn.SiLU, "silu": nn.SiLU,
    }
    if name not in table:
        raise _bad("mlp_network_config.activation", name, tuple(k for k in table if k))
    return table[name]()


class VanillaMLP(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, cfg: MLPConfig) -> None:
        super().__init__()
        dims = [dim_in] + [cfg.n_neurons] * cfg.n_hidden_layers + [dim_out]
        layers: list = []
        for i in range(len(dims) - 1):
            layers.append(nn.Linear(dims[i], dims[i + 1], bias=cfg.bias))
            if i < len(dims) - 2:
                layers.append(get_activation(cfg.activation))
        self.layers = nn.Sequential(*layers)
        self.output_activation = get_activation(cfg.output_activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fp32 regardless of autocast: small MLPs lose their gradients in fp16 (threestudio's known problem)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.output_activation(self.layers(x.float()))


class SphereInitVanillaMLP(nn.Module):
    """Geometric initialisation (Atzmon & Lipman): the output approximates ``|x| - r`` for encoded inputs whose first
    3 channels are the position; Softplus(beta=100) activations."""

    def __init__(self, dim_in: int, dim_out: int, cfg: MLPConfig) -> None:
        super().__init__()
        dims = [dim_in] + [cfg.n_neurons] * cfg.n_hidden_layers + [dim_out]
        layers: list = []
        r = cfg.sphere_init_radius
        for i in range(len(dims) - 1):
            lin = nn.Linear(dims[i], dims[i + 1], bias=True)
            if i == len(dims) - 2:
                sign = -1.0 if cfg.inside_out else 1.0
                nn.init.normal_(lin.weight, mean=sign * math.sqrt(math.pi) / math.sqrt(dims[i]), std=1e-4)
                nn.init.constant_(lin.bias, -sign * r)
            elif i == 0:
                nn.init.constant_(lin.bias, 0.0)
                nn.init.constant_(lin.weight[:, 3:], 0.0)
                nn.init.normal_(lin.weight[:, :3], 0.0, math.sqrt(2) / math.sqrt(dims[i + 1]))
            else:
                nn.init.constant_(lin.bias, 0.0)
                nn.init.normal_(lin.weight, 0.0, math.sqrt(2) / math.sqrt(dims[i + 1]))
            layers.append(lin)
            if i < len(dims) - 2:
                layers.append(nn.Softplus(beta=100))
        self.layers = nn.Sequential(*layers)
        self.output_activation = get_activation(cfg.output_activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.output_activation(self.layers(x.float()))


def get_mlp(dim_in: int, dim_out: int, config: Any) -> nn.Module:
    cfg: MLPConfig = config if isinstance(config, MLPConfig) else parse_structured(MLPConfig, config)
    if cfg.otype in ("VanillaMLP", "FullyFusedMLP", "CutlassMLP"):
        return VanillaMLP(dim_in, dim_out, cfg)
    if cfg.otype == "SphereInitVanillaMLP":
        return SphereInitVanillaMLP(dim_in, dim_out, cfg)
    raise _bad("mlp_network_config.otype", cfg.otype, _MLPS)



