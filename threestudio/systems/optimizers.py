"""Adan (Xie et al. 2022, "Adan: Adaptive Nesterov Momentum Algorithm"), written from the paper's Algorithm 1."""

from __future__ import annotations

from typing import Iterable, Tuple

import torch


class Adan(torch.optim.Optimizer):
    """Adan with decoupled weight decay and bias correction.

    Betas are PyTorch-style (the weight of the old average; the paper's beta_i is 1 - ours):
    m = b1 m + (1-b1) g;  v = b2 v + (1-b2)(g - g_prev);  n = b3 n + (1-b3)(g + b2 (g - g_prev))^2;
    theta <- (theta - lr (m/bc1 + b2 v/bc2) / (sqrt(n/bc3) + eps)) / (1 + lr wd).
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: Tuple[float, float, float] = (0.98, 0.92, 0.99),
                 eps: float = 1e-8, weight_decay: float = 0.0, max_grad_norm: float = 0.0):
        if lr <= 0:
            raise ValueError(f"Adan: lr must be positive, got {lr}")
        if len(betas) != 3 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Adan: betas must be three values in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      max_grad_norm=max_grad_norm))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2, beta3 = group["betas"]  # PyTorch-style: weight of the old average
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            params = [p for p in group["params"] if p.grad is not None]
            clip = 1.0
            if group["max_grad_norm"] > 0 and params:
                norm = torch.norm(torch.stack([p.grad.norm() for p in params]))
                clip = min(1.0, group["max_grad_norm"] / (float(norm) + 1e-6))
            for p in params:
                g = p.grad * clip
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["m"] = torch.zeros_like(p)
                    state["v"] = torch.zeros_like(p)
                    state["n"] = torch.zeros_like(p)
                    state["g_prev"] = g.clone()
                state["step"] += 1
                k = state["step"]
                diff = g - state["g_prev"]
                m, v, n = state["m"], state["v"], state["n"]
                m.mul_(beta1).add_(g, alpha=1 - beta1)
                v.mul_(beta2).add_(diff, alpha=1 - beta2)
                upd = g + beta2 * diff
                n.mul_(beta3).addcmul_(upd, upd, value=1 - beta3)
                bc1 = 1 - beta1**k
                bc2 = 1 - beta2**k
                bc3 = 1 - beta3**k
                denom = (n / bc3).sqrt_().add_(eps)
                direction = (m / bc1 + beta2 * v / bc2) / denom
                p.add_(direction, alpha=-lr)
                if wd:
                    p.div_(1 + lr * wd)
                state["g_prev"].copy_(g)
        return loss

