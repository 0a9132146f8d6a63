"""The structural similarity (SSIM) loss for 2-D and 3-D images, ``1 - SSIM``.

SSIM compares two images window by window through their local means, variances and covariance
(Wang et al., 2004). It belongs to the regression family: the prediction and the target are
real-valued images of the same shape, with no logits, activation or class labels; only its
natural unit differs from the elementwise losses (one value per sample, the mean over the SSIM
map as MONAI and kornia take it).

The loss is computed from the sum ``s = x + y`` and the difference ``d = x - y`` rather than
from ``x`` and ``y``: ``1 - SSIM`` then comes out as a sum of two nonnegative terms, one from
the local mean of ``d`` and one from its local variance, so nothing cancels when the prediction
is close to the target (the form ``1 - l * cs`` loses every digit in float32 once SSIM is
within 1e-7 of 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as TF
from torch import Tensor

from losskit._core.checks import check_floating, check_int, check_number, check_one_of, check_same_shape
from losskit._core.numerics import upcast
from losskit._core.reduction import Reduction, check_reduction, reduce_for

__all__ = ["ssim_loss"]

KERNELS = ("gaussian", "uniform")
_CONV = {2: TF.conv2d, 3: TF.conv3d}


def ssim_loss(
    input: Tensor,
    target: Tensor,
    *,
    spatial_dims: int | None = None,
    data_range: float = 1.0,
    kernel: Literal["gaussian", "uniform"] = "gaussian",
    win_size: int | Sequence[int] = 11,
    kernel_sigma: float | Sequence[float] = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""SSIM loss: one minus the mean structural similarity of two images, in 2-D or 3-D.

    Each window of the images (a Gaussian of width ``kernel_sigma`` or a uniform box of
    ``win_size`` pixels per axis, applied without padding) gives local means :math:`\mu`,
    variances :math:`\sigma^2` and a covariance :math:`\sigma_{xy}`; SSIM multiplies a luminance
    term (are the means alike?) by a contrast-structure term (do the pixels vary alike?). It is
    1 for identical images and falls towards 0 (below it for anticorrelated ones), so the loss
    lies in [0, 2]. The window is separable: it is applied one axis at a time, a 1-D
    convolution per axis, never as a dense 2-D or 3-D kernel.

    .. math::
        \mathrm{SSIM} = \frac{(2\mu_x\mu_y + C_1)(2\sigma_{xy} + C_2)}
        {(\mu_x^2 + \mu_y^2 + C_1)(\sigma_x^2 + \sigma_y^2 + C_2)},
        \quad C_1 = (k_1 L)^2,\ C_2 = (k_2 L)^2

    with :math:`L` = ``data_range``. The loss of a sample is :math:`1 - \mathrm{SSIM}` averaged
    over every window position and every channel. It is computed, without cancellation near
    :math:`\mathrm{SSIM} = 1`, from the local statistics of :math:`s = x + y` and
    :math:`d = x - y`:

    .. math::
        1 - \mathrm{SSIM} = a + (1 - a)\,b, \quad
        a = \frac{2\mu_d^2}{\mu_s^2 + \mu_d^2 + 2C_1}, \quad
        b = \frac{2\sigma_d^2}{\sigma_s^2 + \sigma_d^2 + 2C_2}

    (:math:`a` is one minus the luminance term, :math:`b` one minus the contrast-structure term).
    The variances are taken about each channel's mean, which changes no value.

    Args:
        input: Predicted images.
        target: Reference images, same shape as ``input``.
        spatial_dims: 2 or 3; ``None`` infers it from ``input``'s rank (4 or 5). With
            ``spatial_dims=2`` a 5-D input ``(N, C, D, H, W)`` is scored slice by slice, its
            ``C * D`` slices as channels (MONAI's pseudo-3D use).
        data_range: :math:`L`, the range of the pixel values (1 for images in [0, 1], 255 for
            8-bit ones); ``> 0``.
        kernel: ``"gaussian"`` or ``"uniform"`` window.
        win_size: Window size, odd, per axis or one for all; at most the image's size.
        kernel_sigma: The Gaussian's standard deviation in pixels, per axis or one for all;
            ``> 0``. Unused by the uniform window.
        k1: :math:`k_1 > 0`.
        k2: :math:`k_2 > 0`.
        weight: Per-sample weights broadcastable to ``(N,)``.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``; ``"mean"`` is the weighted mean
            ``sum(w * l) / sum(w)`` over samples (see :func:`losskit.reduce_loss`).
        normalizer: With ``"mean"``, divide the weighted sum by this count instead of ``sum(w)``.

    Shape:
        - input: :math:`(N, C, H, W)` or :math:`(N, C, D, H, W)`.
        - target: same shape as ``input``.
        - output: scalar, or :math:`(N,)` with ``reduction="none"`` (one value per sample, the
          mean over its channels and window positions; MONAI's ``reduction="none"`` gives the
          same values as :math:`(N, 1)`).

    Returns:
        The loss, in ``input``'s dtype (half and bfloat16 inputs are computed in float32); 0
        (with a gradient) for an empty batch.

    Raises:
        TypeError: If ``input`` or ``target`` is not floating point, or an option has the wrong type.
        ValueError: If the shapes differ, ``input``'s rank does not fit ``spatial_dims``, a window
            is even or larger than the image, ``data_range``, ``kernel_sigma``, ``k1`` or ``k2``
            is not positive, ``kernel`` or ``reduction`` is unknown, or (value check) the result
            is not finite.

    Examples:
        >>> import torch, losskit
        >>> ramp = torch.linspace(0, 1, 16)
        >>> image = (ramp[:, None] * ramp[None, :]).expand(1, 1, 16, 16)
        >>> losskit.ssim_loss(image, image)
        tensor(0.)
        >>> losskit.ssim_loss(image, 1 - image, win_size=7, reduction="none")
        tensor([1.4677])

    References:
        Wang, Bovik, Sheikh and Simoncelli, "Image Quality Assessment: From Error Visibility to
        Structural Similarity", IEEE Transactions on Image Processing 13(4), 2004 (the Gaussian
        window of 11 pixels and width 1.5, :math:`k_1 = 0.01`, :math:`k_2 = 0.03`). Options,
        window, valid filtering and per-sample mean follow MONAI's ``SSIMLoss`` and ``SSIMMetric``.
    """
    check_reduction(reduction, normalizer)
    check_floating("input", input)
    check_floating("target", target)
    check_same_shape("input", input, "target", target)
    dims = _spatial_dims(input, spatial_dims)
    image = input.shape[input.dim() - dims:]
    sizes = _per_axis_ints("win_size", win_size, dims)
    for size, extent in zip(sizes, image, strict=True):
        if size % 2 == 0:
            raise ValueError(f"win_size must be odd (a window centred on a pixel), got {win_size!r}")
        if size > extent:
            raise ValueError(f"win_size {win_size!r} is larger than the image: input's spatial shape is "
                             f"{tuple(image)}")
    check_one_of("kernel", kernel, KERNELS)
    sigmas = _per_axis_numbers("kernel_sigma", kernel_sigma, dims)
    data_range = check_number("data_range", data_range, low=0.0, low_open=True)
    k1 = check_number("k1", k1, low=0.0, low_open=True)
    k2 = check_number("k2", k2, low=0.0, low_open=True)

    x = upcast(input)
    y = target.to(x.dtype)
    batch, channels = x.shape[0], math.prod(x.shape[1:x.dim() - dims])
    x = x.reshape(batch, channels, *image)
    y = y.reshape(batch, channels, *image)
    windows = [_window(kernel, size, sigma, x) for size, sigma in zip(sizes, sigmas, strict=True)]
    loss_map = _one_minus_ssim(x, y, windows, (k1 * data_range) ** 2, (k2 * data_range) ** 2)
    # The mean over each sample's channels and positions (a sum, so an empty batch keeps its graph).
    loss = loss_map.sum(tuple(range(1, loss_map.dim()))) / max(math.prod(loss_map.shape[1:]), 1)
    return reduce_for(loss, input, target, reduction, weight=weight, normalizer=normalizer)


def _one_minus_ssim(x: Tensor, y: Tensor, windows: list[Tensor], c1: float, c2: float) -> Tensor:
    """The map of ``1 - SSIM`` over the valid window positions, ``(N, C, *positions)``."""
    s, d = x + y, x - y
    # Centre s and d on each channel's mean: the variances below are E[t^2] - E[t]^2, which loses
    # the digits of E[t]^2 in float32, so t should be small. The value does not depend on the
    # shift, hence no gradient through it.
    spatial = tuple(range(2, x.dim()))
    shift_s = s.detach().mean(spatial, keepdim=True)
    shift_d = d.detach().mean(spatial, keepdim=True)
    ts, td = s - shift_s, d - shift_d
    mean_ts, mean_td, mean_ss, mean_dd = _filter(torch.cat([ts, td, ts * ts, td * td], 1), windows).chunk(4, 1)
    mu_s, mu_d = mean_ts + shift_s, mean_td + shift_d
    var_s = mean_ss - mean_ts * mean_ts
    var_d = mean_dd - mean_td * mean_td
    luminance = 2 * mu_d * mu_d / (mu_s * mu_s + mu_d * mu_d + 2 * c1)  # 1 - l
    structure = 2 * var_d / (var_s + var_d + 2 * c2)  # 1 - cs
    return luminance + (1 - luminance) * structure


def _filter(images: Tensor, windows: list[Tensor]) -> Tensor:
    """Valid filtering of ``(N, C, *spatial)`` by the separable window: one 1-D pass per axis,
    every channel alike (channels folded into the batch)."""
    batch, channels, *spatial = images.shape
    out = images.reshape(batch * channels, 1, *spatial)
    conv = _CONV[len(spatial)]
    for axis, window in enumerate(windows):
        shape = [1, 1] + [1] * len(spatial)
        shape[2 + axis] = window.numel()
        out = conv(out, window.view(shape))
    return out.reshape(batch, channels, *out.shape[2:])


def _window(kernel: str, size: int, sigma: float, like: Tensor) -> Tensor:
    """The 1-D window of one axis, normalised to sum 1 (computed in float64)."""
    if kernel == "uniform":
        weights = torch.full((size,), 1.0 / size, dtype=torch.float64)
    else:
        offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
        weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
        weights = weights / weights.sum()
    return weights.to(device=like.device, dtype=like.dtype)


def _spatial_dims(input: Tensor, spatial_dims: int | None) -> int:
    if spatial_dims is None:
        if input.dim() not in (4, 5):
            raise ValueError(f"input must be a batch of 2-D or 3-D images, shape (N, C, H, W) or (N, C, D, H, W), "
                             f"got shape {tuple(input.shape)}")
        return input.dim() - 2
    check_one_of("spatial_dims", spatial_dims, (2, 3))
    ranks = {2: (4, 5), 3: (5,)}[spatial_dims]
    if input.dim() not in ranks:
        shapes = {4: "(N, C, H, W)", 5: "(N, C, D, H, W)"}
        raise ValueError(f"spatial_dims={spatial_dims} needs input of shape {' or '.join(shapes[r] for r in ranks)}, "
                         f"got shape {tuple(input.shape)}")
    return spatial_dims


def _per_axis_ints(name: str, value: object, dims: int) -> tuple[int, ...]:
    values = _per_axis(name, value, dims)
    return tuple(check_int(name, v, low=1) for v in values)


def _per_axis_numbers(name: str, value: object, dims: int) -> tuple[float, ...]:
    values = _per_axis(name, value, dims)
    checked = tuple(check_number(name, v, low=0.0, low_open=True) for v in values)
    if not all(math.isfinite(v) for v in checked):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return checked


def _per_axis(name: str, value: object, dims: int) -> tuple[object, ...]:
    """One value per spatial axis, from one value or a sequence of ``dims`` values."""
    if isinstance(value, (list, tuple)):
        if len(value) != dims:
            raise ValueError(f"{name} must be one value or {dims} values (one per spatial axis), got {value!r}")
        return tuple(value)
    return (value,) * dims
