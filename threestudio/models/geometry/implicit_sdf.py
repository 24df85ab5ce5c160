"""``implicit-sdf``: a signed distance field (negative inside) plus colour features.

Initialisation: ``sdf_bias: sphere`` adds ``|x| - sdf_bias_params`` to the network output (whose last layer starts
near zero), so the field is a sphere of that radius from step 0 without a pre-fitting loop; ``ellipsoid`` takes three
radii. Normals are the normalised SDF gradient by central finite differences (or autograd with ``normal_type:
analytic``); ``forward(..., output_normal=True)`` also returns ``sdf_grad`` for the eikonal term
``(|grad sdf| - 1)^2``. The renderer turns the SDF into a density with VolSDF's Laplace CDF and the learnable
``beta``.
"""

from __future__ import annotations

from typing import Any, Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

import threestudio
from threestudio.models.geometry.base import BaseImplicitGeometry, central_difference_grad, contract_to_unisphere
from threestudio.models.geometry.schema import ImplicitSDFConfig
from threestudio.models.networks import get_encoding, get_mlp


def laplace_density(sdf: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """VolSDF: sigma = (1/beta) * Psi_beta(-sdf), Psi the CDF of a zero-mean Laplace with scale beta."""
    alpha = 1.0 / beta
    s = -sdf
    return alpha * (0.5 - 0.5 * s.sign() * torch.expm1(-s.abs() / beta))


@threestudio.register("implicit-sdf")
class ImplicitSDF(BaseImplicitGeometry):
    field_inside = "below"

    Config = ImplicitSDFConfig

    cfg: Config

    def configure(self) -> None:
        super().configure()
        self.encoding = get_encoding(self.cfg.n_input_dims, self.cfg.pos_encoding_config)
        self.sdf_network = get_mlp(self.encoding.n_output_dims, 1, self.cfg.mlp_network_config)
        last = [m for m in self.sdf_network.modules() if isinstance(m, nn.Linear)][-1]
        nn.init.normal_(last.weight, std=1e-4)  # start as the bias shape
        if last.bias is not None:
            nn.init.zeros_(last.bias)
        self.feature_network = (get_mlp(self.encoding.n_output_dims, self.cfg.n_feature_dims,
                                        self.cfg.mlp_network_config) if self.cfg.n_feature_dims > 0 else None)
        self._log_beta = nn.Parameter(torch.tensor(float(self.cfg.beta_init)).log())

    @property
    def beta(self) -> torch.Tensor:
        return self._log_beta.exp() + self.cfg.beta_min

    def sdf_bias(self, points: torch.Tensor) -> torch.Tensor:
        kind, params = self.cfg.sdf_bias, self.cfg.sdf_bias_params
        if kind == "sphere":
            return points.norm(dim=-1, keepdim=True) - float(params)
        if kind == "ellipsoid":
            r = torch.as_tensor(list(params), dtype=points.dtype, device=points.device)
            k0 = (points / r).norm(dim=-1, keepdim=True)
            k1 = (points / r**2).norm(dim=-1, keepdim=True)
            return k0 * (k0 - 1) / k1.clamp_min(1e-12)
        if isinstance(kind, (int, float)):
            return torch.full_like(points[..., :1], float(kind))
        raise ValueError(f"system.geometry.sdf_bias: unknown {kind!r} (sphere, ellipsoid or a number)")

    def _encode(self, points: torch.Tensor) -> torch.Tensor:
        x = contract_to_unisphere(points, self.bbox)
        return self.encoding(x.reshape(-1, self.cfg.n_input_dims)).reshape(*points.shape[:-1], -1)

    def forward_sdf(self, points: torch.Tensor) -> torch.Tensor:
        return self.sdf_network(self._encode(points)) + self.sdf_bias(points)

    def forward_density(self, points: torch.Tensor) -> torch.Tensor:
        return laplace_density(self.forward_sdf(points), self.beta)

    def forward(self, points: torch.Tensor, output_normal: bool = False) -> Dict[str, torch.Tensor]:
        grad_enabled = torch.is_grad_enabled()
        analytic = output_normal and self.cfg.normal_type == "analytic"
        if analytic:
            torch.set_grad_enabled(True)
            points = points.detach().requires_grad_(True)
        enc = self._encode(points)
        sdf = self.sdf_network(enc) + self.sdf_bias(points)
        out: Dict[str, torch.Tensor] = {"sdf": sdf}
        if self.feature_network is not None:
            out["features"] = self.feature_network(enc)
        if output_normal:
            if analytic:
                grad = torch.autograd.grad(sdf, points, torch.ones_like(sdf), create_graph=grad_enabled)[0]
            else:
                grad = self.finite_difference_grad(points)
            out["sdf_grad"] = grad
            out["normal"] = F.normalize(grad, dim=-1)
            out["shading_normal"] = out["normal"]
        torch.set_grad_enabled(grad_enabled)
        return out

    def finite_difference_grad(self, points: torch.Tensor) -> torch.Tensor:
        return central_difference_grad(self.forward_sdf, points, self.cfg.finite_difference_normal_eps)

    def forward_field(self, points: torch.Tensor) -> torch.Tensor:
        return self.forward_sdf(points)[..., 0]

    def export(self, points: torch.Tensor, **kwargs: Any) -> Dict[str, torch.Tensor]:
        if self.feature_network is None:
            return {}
        return {"features": self.feature_network(self._encode(points))}

    @staticmethod
    def eikonal_loss(sdf_grad: torch.Tensor) -> torch.Tensor:
        return ((sdf_grad.norm(dim=-1) - 1.0) ** 2).mean()



