"""Scene contraction for unbounded scenes (mip-NeRF 360).

Points inside the unit ball of a norm keep their place; points outside are pulled into the shell between radius 1
and 2::

    contract(x) = x                          if ||x|| <= 1
                  (2 - 1 / ||x||) x / ||x||  otherwise

``order="inf"`` uses the max-norm (nerfstudio's nerfacto: the scene box [-1, 1]^3 stays a box and the contracted
space is the cube [-2, 2]^3, which fills a hash grid's cube without wasted corners); ``order=2`` the Euclidean norm
(mip-NeRF 360 and nerfacc's examples: a ball of radius 2). :func:`contract_to_unit_cube` maps the result into
[0, 1]^3 for a grid encoding. Pure functions, differentiable (the gradient at ``||x|| = 1`` is continuous for the
value and one-sided for the Jacobian, as in the papers).
"""

from __future__ import annotations

import torch

ORDERS = ("inf", "2")


def _norm(x: torch.Tensor, order: str) -> torch.Tensor:
    if order == "inf":
        return x.abs().amax(dim=-1, keepdim=True)
    if order == "2":
        return x.norm(dim=-1, keepdim=True)
    raise ValueError(f"contraction order {order!r}: use one of {', '.join(ORDERS)}")


def contract(x: torch.Tensor, order: str = "inf") -> torch.Tensor:
    """Contract points [..., 3] into the ball of radius 2 of the ``order`` norm (see the module docstring)."""
    n = _norm(x, order)
    # the outside branch is evaluated for every point; clamp its norm so that inside points never divide by ~0
    safe = n.clamp_min(1.0)
    outside = (2.0 - 1.0 / safe) * (x / safe)
    return torch.where(n <= 1.0, x, outside)


def contract_to_unit_cube(x: torch.Tensor, aabb: torch.Tensor, order: str = "inf") -> torch.Tensor:
    """Points [..., 3] in world coordinates -> [0, 1]^3: the box ``aabb`` [2, 3] (min, max) is mapped to [-1, 1]^3,
    contracted, and [-2, 2]^3 mapped to [0, 1]^3."""
    lo, hi = aabb[0], aabb[1]
    unit = (x - lo) / (hi - lo) * 2.0 - 1.0
    return (contract(unit, order) + 2.0) * 0.25


def inverse_contract(y: torch.Tensor, order: str = "inf") -> torch.Tensor:
    """Inverse of :func:`contract` for points with norm < 2 (used by tests and for sampling the contracted space)."""
    n = _norm(y, order)
    safe = n.clamp(1.0, 2.0 - 1e-7)
    outside = y / safe / (2.0 - safe)
    return torch.where(n <= 1.0, y, outside)
