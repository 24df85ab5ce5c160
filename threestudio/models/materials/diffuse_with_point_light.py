"""``diffuse-with-point-light``: DreamFusion shading.

``color = albedo * (ambient + diffuse * max(0, n . l))`` with a point light. While training, each step picks the
shading at random (after ``ambient_only_steps``): albedo only (probability ``1 - diffuse_prob``), otherwise
textureless (white albedo; probability ``textureless_prob``) or lambertian. ``soft_shading`` (Magic3D) draws random
ambient/diffuse strengths instead. Evaluation uses lambertian shading with the configured strengths.
"""

from __future__ import annotations

import random
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F

import threestudio
from threestudio.models.materials.base import BaseMaterial
from threestudio.models.materials.schema import DiffuseWithPointLightConfig
from threestudio.utils.activations import get_color_activation


@threestudio.register("diffuse-with-point-light")
class DiffuseWithPointLight(BaseMaterial):
    requires_normal = True

    Config = DiffuseWithPointLightConfig

    cfg: Config

    def configure(self) -> None:
        self.register_buffer("ambient_light_color", torch.as_tensor(self.cfg.ambient_light_color, dtype=torch.float32))
        self.register_buffer("diffuse_light_color", torch.as_tensor(self.cfg.diffuse_light_color, dtype=torch.float32))
        self.ambient_only = False
        self.activation = get_color_activation(self.cfg.albedo_activation)

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        self.ambient_only = global_step < self.cfg.ambient_only_steps

    def forward(self, features: torch.Tensor, positions: Optional[torch.Tensor] = None,
                shading_normal: Optional[torch.Tensor] = None, light_positions: Optional[torch.Tensor] = None,
                ambient_ratio: Optional[float] = None, shading: Optional[str] = None, **kwargs: Any) -> torch.Tensor:
        albedo = self.activation(features[..., :3])
        if ambient_ratio is not None:  # explicit ambient strength (e.g. from the system)
            ambient = torch.full_like(self.ambient_light_color, ambient_ratio)
            diffuse = 1 - ambient
        elif self.training and self.cfg.soft_shading:
            ambient = torch.full_like(self.ambient_light_color, random.random())
            diffuse = 1 - ambient
        else:
            ambient, diffuse = self.ambient_light_color, self.diffuse_light_color
        if shading is None:
            if not self.training:
                shading = "lambertian"
            elif self.ambient_only:
                shading = "albedo"
            elif random.random() > self.cfg.diffuse_prob:
                shading = "albedo"
            else:
                shading = "textureless" if random.random() < self.cfg.textureless_prob else "lambertian"
        if shading == "albedo" or positions is None or shading_normal is None or light_positions is None:
            return albedo
        light_dirs = F.normalize(light_positions - positions, dim=-1)
        diffuse_term = (shading_normal * light_dirs).sum(-1, keepdim=True).clamp(min=0.0) * diffuse
        color = diffuse_term + ambient
        if shading == "textureless":
            return color.expand_as(albedo).clamp(0, 1)
        if shading != "lambertian":
            raise ValueError(f"unknown shading {shading!r} (albedo, lambertian or textureless)")
        return (albedo * color).clamp(0, 1)

    def export(self, features: torch.Tensor, **kwargs: Any) -> Dict[str, torch.Tensor]:
        return {"albedo": self.activation(features[..., :3]).clamp(0, 1)}
