"""``implicit-volume``: a NeRF density field plus colour features from one position encoding."""

from __future__ import annotations

from typing import Any, Dict, Optional, Union

import torch
import torch.nn.functional as F

import threestudio
from threestudio.models.geometry.base import (
    BaseGeometry,
    BaseImplicitGeometry,
    central_difference_grad,
    contract_to_unisphere,
)
from threestudio.models.geometry.schema import ImplicitVolumeConfig
from threestudio.models.networks import get_encoding, get_mlp


def trunc_exp(x: torch.Tensor) -> torch.Tensor:
    """exp whose gradient is computed from a clamped input (stable for large densities)."""
    return _TruncExp.apply(x)


class _TruncExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(max=15))


DENSITY_ACTIVATIONS = {
    "softplus": lambda x: F.softplus(x - 1.0),  # threestudio shifts by 1 so that a zero input is nearly empty
    "exp": torch.exp,
    "trunc_exp": trunc_exp,
    "relu": F.relu,
    "none": lambda x: x,
}


@threestudio.register("implicit-volume")
class ImplicitVolume(BaseImplicitGeometry):
    Config = ImplicitVolumeConfig

    cfg: Config

    def configure(self) -> None:
        super().configure()
        if self.cfg.density_activation not in DENSITY_ACTIVATIONS:
            raise ValueError(f"system.geometry.density_activation: unknown {self.cfg.density_activation!r}; "
                             f"choose one of {', '.join(DENSITY_ACTIVATIONS)}")
        if self.cfg.normal_type not in (None, "none", "finite_difference", "analytic"):
            raise ValueError(f"system.geometry.normal_type: unknown {self.cfg.normal_type!r}; "
                             f"choose finite_difference, analytic or none")
        self.encoding = get_encoding(self.cfg.n_input_dims, self.cfg.pos_encoding_config)
        self.density_network = get_mlp(self.encoding.n_output_dims, 1, self.cfg.mlp_network_config)
        self.feature_network = (get_mlp(self.encoding.n_output_dims, self.cfg.n_feature_dims,
                                        self.cfg.mlp_network_config) if self.cfg.n_feature_dims > 0 else None)

    def get_activated_density(self, points: torch.Tensor, density: torch.Tensor) -> torch.Tensor:
        bias = self.cfg.density_bias
        if bias == "blob_dreamfusion":
            b = self.cfg.density_blob_scale * torch.exp(
                -0.5 * (points**2).sum(-1, keepdim=True) / self.cfg.density_blob_std**2)
        elif bias == "blob_magic3d":
            b = self.cfg.density_blob_scale * (1 - points.norm(dim=-1, keepdim=True) / self.cfg.density_blob_std)
        elif isinstance(bias, (int, float)):
            b = torch.full_like(density, float(bias))
        else:
            raise ValueError(f"system.geometry.density_bias: unknown {bias!r} (blob_magic3d, blob_dreamfusion or a "
                             f"number)")
        return DENSITY_ACTIVATIONS[self.cfg.density_activation](density + b)

    def _encode(self, points: torch.Tensor) -> torch.Tensor:
        x = contract_to_unisphere(points, self.bbox, self.cfg.unbounded)
        return self.encoding(x.reshape(-1, self.cfg.n_input_dims)).reshape(*points.shape[:-1], -1)

    def forward_density(self, points: torch.Tensor) -> torch.Tensor:
        """Density [..., 1] only (occupancy-grid updates, finite differences)."""
        raw = self.density_network(self._encode(points))
        return self.get_activated_density(points, raw)

    def forward(self, points: torch.Tensor, output_normal: bool = False) -> Dict[str, torch.Tensor]:
        grad_enabled = torch.is_grad_enabled()
        analytic = output_normal and self.cfg.normal_type == "analytic"
        if analytic:
            torch.set_grad_enabled(True)
            points = points.detach().requires_grad_(True)
        enc = self._encode(points)
        density = self.get_activated_density(points, self.density_network(enc))
        out: Dict[str, torch.Tensor] = {"density": density}
        if self.feature_network is not None:
            out["features"] = self.feature_network(enc)
        if output_normal and self.cfg.normal_type not in (None, "none"):
            if analytic:
                grad = torch.autograd.grad(density, points, torch.ones_like(density), create_graph=grad_enabled)[0]
                normal = F.normalize(-grad, dim=-1)
            else:
                normal = self._finite_difference_normal(points)
            out["normal"] = normal
            out["shading_normal"] = normal
        torch.set_grad_enabled(grad_enabled)
        return out

    def _finite_difference_normal(self, points: torch.Tensor) -> torch.Tensor:
        def density(p: torch.Tensor) -> torch.Tensor:
            return self.forward_density(p.clamp(self.bbox[0], self.bbox[1]))

        grad = central_difference_grad(density, points, self.cfg.finite_difference_normal_eps)
        return F.normalize(-grad, dim=-1)

    def forward_field(self, points: torch.Tensor) -> torch.Tensor:
        return self.forward_density(points)[..., 0]

    def export(self, points: torch.Tensor, **kwargs: Any) -> Dict[str, torch.Tensor]:
        if self.feature_network is None:
            return {}
        return {"features": self.feature_network(self._encode(points))}

    @staticmethod
    @torch.no_grad()
    def create_from(other: BaseGeometry, cfg: Optional[Union[dict, Any]] = None, copy_net: bool = True,
                    **kwargs: Any) -> "ImplicitVolume":
        if isinstance(other, ImplicitVolume):
            instance = ImplicitVolume(cfg)
            instance.encoding.load_state_dict(other.encoding.state_dict())
            instance.density_network.load_state_dict(other.density_network.state_dict())
            if copy_net and other.feature_network is not None and instance.feature_network is not None:
                instance.feature_network.load_state_dict(other.feature_network.state_dict())
            return instance
        raise TypeError(f"Cannot create ImplicitVolume from {other.__class__.__name__}")
