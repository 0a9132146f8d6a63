"""SSIM in float64, written from Wang et al. (2004), window by window.

Every window position is cut out of the images (``unfold``), weighted by the dense window (the
outer product of the per-axis windows, as the paper's circular-symmetric Gaussian is), and its
means, variances and covariance are taken directly, in two passes, as the paper defines them:
no separable filtering, no sum-and-difference form. Only for small images.
"""

from __future__ import annotations

import math

import torch


def window_1d(kernel: str, size: int, sigma: float) -> torch.Tensor:
    if kernel == "uniform":
        return torch.full((size,), 1.0 / size, dtype=torch.float64)
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    weights = torch.exp(-(offsets**2) / (2 * sigma**2))
    return weights / weights.sum()


def ssim_map(x: torch.Tensor, y: torch.Tensor, *, kernel: str = "gaussian", win_size=11, kernel_sigma=1.5,
             data_range: float = 1.0, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """SSIM at every valid window position: ``(N, C, *positions)`` for images ``(N, C, *spatial)``."""
    x, y = x.double(), y.double()
    dims = x.dim() - 2
    sizes = win_size if isinstance(win_size, (tuple, list)) else (win_size,) * dims
    sigmas = kernel_sigma if isinstance(kernel_sigma, (tuple, list)) else (kernel_sigma,) * dims
    window = torch.ones((), dtype=torch.float64)
    for size, sigma in zip(sizes, sigmas, strict=True):
        window = window[..., None] * window_1d(kernel, size, sigma)
    for axis, size in enumerate(sizes):  # (N, C, *positions, *window)
        x = x.unfold(2 + axis, size, 1)
        y = y.unfold(2 + axis, size, 1)
    window_dims = tuple(range(x.dim() - dims, x.dim()))

    def mean(v: torch.Tensor) -> torch.Tensor:
        return (window * v).sum(window_dims, keepdim=True)

    mu_x, mu_y = mean(x), mean(y)
    var_x, var_y = mean((x - mu_x) ** 2), mean((y - mu_y) ** 2)
    cov = mean((x - mu_x) * (y - mu_y))
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim = (2 * mu_x * mu_y + c1) * (2 * cov + c2) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim.reshape(ssim.shape[: x.dim() - dims])


def ssim_loss_per_sample(x: torch.Tensor, y: torch.Tensor, **options) -> torch.Tensor:
    """``1 - SSIM`` averaged over each sample's channels and window positions: ``(N,)``."""
    ssim = ssim_map(x, y, **options)
    return 1 - ssim.reshape(ssim.shape[0], -1).sum(1) / math.prod(ssim.shape[1:])
