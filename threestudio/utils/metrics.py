"""Image metrics: PSNR and SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03)."""

from __future__ import annotations



import torch
import torch.nn.functional as F


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR in dB over all elements."""
    mse = F.mse_loss(pred.float(), target.float())
    return 10.0 * torch.log10(data_range**2 / mse.clamp_min(1e-12))


def _gaussian(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).float()


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, window: int = 11,
         sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of images [H, W, C] or [B, H, W, C] (valid region only: no padding), averaged over channels."""
    if pred.dim() == 3:
        pred, target = pred[None], target[None]
    x = pred.permute(0, 3, 1, 2).double()
    y = target.permute(0, 3, 1, 2).double()
    c = x.shape[1]
    g = _gaussian(window, sigma, x.device).double()
    kx = g.view(1, 1, 1, window).expand(c, 1, 1, window)
    ky = g.view(1, 1, window, 1).expand(c, 1, window, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, kx, groups=c), ky, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.mean().float()



