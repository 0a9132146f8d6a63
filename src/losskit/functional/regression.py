"""Regression losses: elementwise penalties on the residual ``input - target``.

Every loss here has the same skeleton: validate, compute in the compute dtype (float32 for
half and bfloat16 inputs), hand the elementwise loss to :func:`losskit.reduce_loss`. The
natural unit is the element, so ``reduction="none"`` returns ``input``'s shape, and
``"mean"`` with ``weight=`` is the weighted mean ``sum(w * l) / sum(w)`` in every loss
(``torch.nn.functional.huber_loss`` divides by the element count instead).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as TF
from torch import Tensor

from losskit._core.checks import (
    check_bool,
    check_finite,
    check_floating,
    check_number,
    check_positive_values,
    check_same_device,
    checks_enabled,
)
from losskit._core.numerics import as_option_tensor, exp_tail
from losskit._core.reduction import Reduction
from losskit.functional._elementwise import (
    _docs,
    _elementwise,
)
from losskit.functional._regression_options import _gaussian_var, _option_tensor, _quantile_tensor
from losskit.functional._robust_numerics import (
    _PARTITION_LOG_W,
    _PARTITION_X,
    _huber,
    _one_plus_log1p_minus,
    _rho,
)

__all__ = [
    "balanced_l1_loss",
    "charbonnier_loss",
    "gaussian_nll_loss",
    "general_robust_loss",
    "huber_loss",
    "l1_loss",
    "log_cosh_loss",
    "mse_loss",
    "poisson_nll_loss",
    "quantile_loss",
    "robust_log_partition",
    "smooth_l1_loss",
    "wing_loss",
]

_LOG2 = math.log(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


# --- squared and absolute error ---------------------------------------------------------------


@_docs
def mse_loss(
    input: Tensor,
    target: Tensor,
    *,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Mean squared error: the squared residual, the Gaussian negative log-likelihood up to constants.

    Large residuals dominate, so a few outliers can steer the fit; prefer :func:`huber_loss`
    or :func:`general_robust_loss` when the targets are noisy.

    .. math::
        \ell(e) = e^2, \quad e = \text{input} - \text{target}

    Args:
        input: Predictions.
        target: Targets, same shape as ``input``.
        {common_args}

    Shape:
        {elementwise_shape}

    Returns:
        {elementwise_returns}

    Raises:
        {common_raises}

    Examples:
        >>> import torch, losskit
        >>> losskit.mse_loss(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([1.0, 0.0, 1.0]))  # (0+4+9)/3
        tensor(4.3333)

    References:
        Gauss, least squares. Defaults follow ``torch.nn.MSELoss``.
    """
    return _elementwise(input, target, lambda x, y: (x - y) ** 2, weight, reduction, normalizer)


@_docs
def l1_loss(
    input: Tensor,
    target: Tensor,
    *,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Mean absolute error: the absolute residual, robust to outliers but not smooth at zero.

    Its minimiser is the median rather than the mean; every residual pulls with the same
    force, so outliers cannot dominate. The gradient at ``e = 0`` is 0.

    .. math::
        \ell(e) = |e|, \quad e = \text{input} - \text{target}

    Args:
        input: Predictions.
        target: Targets, same shape as ``input``.
        {common_args}

    Shape:
        {elementwise_shape}

    Returns:
        {elementwise_returns}

    Raises:
        {common_raises}

    Examples:
        >>> import torch, losskit
        >>> losskit.l1_loss(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([1.0, 0.0, 1.0]), reduction="sum")
        tensor(5.)

    References:
        Laplace, least absolute deviations. Defaults follow ``torch.nn.L1Loss``.
    """
    return _elementwise(input, target, lambda x, y: (x - y).abs(), weight, reduction, normalizer)


@_docs
def huber_loss(
    input: Tensor,
    target: Tensor,
    *,
    delta: float = 1.0,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Huber loss: quadratic near zero, linear beyond ``delta``.

    Small residuals are treated as Gaussian noise (squared), large ones as outliers (absolute,
    with slope ``delta``), so the gradient is bounded by ``delta``. It equals
    ``delta * smooth_l1_loss(beta=delta)``.

    .. math::
        \ell(e) = \begin{cases} \tfrac12 e^2 & |e| \le \delta \\
        \delta\,(|e| - \tfrac12\delta) & |e| > \delta \end{cases},
        \quad e = \text{input} - \text{target}

    Args:
        input: Predictions.
        target: Targets, same shape as ``input``.
        delta: Where the quadratic part becomes linear; ``> 0``.
        {common_args}

    Shape:
        {elementwise_shape}

    Returns:
        {elementwise_returns}

    Raises:
        {common_raises}

    Examples:
        >>> import torch, losskit
        >>> losskit.huber_loss(torch.tensor([0.5, 3.0]), torch.zeros(2), reduction="none")
        tensor([0.1250, 2.5000])

    References:
        Huber, "Robust Estimation of a Location Parameter", Annals of Mathematical Statistics, 1964.
        Defaults follow ``torch.nn.HuberLoss`` (also optax and Keras ``huber``), except that
        the weighted ``"mean"`` divides by ``sum(w)``.
    """
    delta = check_number("delta", delta, low=0.0, low_open=True)
    return _elementwise(input, target, lambda x, y: _huber(x - y, delta), weight, reduction, normalizer)


@_docs
def smooth_l1_loss(
    input: Tensor,
    target: Tensor,
    *,
    beta: float = 1.0,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Smooth L1 loss: L1 with its kink at zero rounded off by a parabola of width ``beta``.

    Unlike :func:`huber_loss`, the linear part has slope 1 whatever ``beta`` is, so it stays
    on the scale of L1 (``beta=0`` is exactly L1); the two differ by a factor ``beta``.
    This is the box-regression loss of Fast R-CNN.

    .. math::
        \ell(e) = \begin{cases} \tfrac12 e^2/\beta & |e| < \beta \\
        |e| - \tfrac12\beta & |e| \ge \beta \end{cases},
        \quad e = \text{input} - \text{target}

    Args:
        input: Predictions.
        target: Targets, same shape as ``input``.
        beta: Width of the quadratic zone; ``>= 0``; 0 gives L1.
        {common_args}

    Shape:
        {elementwise_shape}

    Returns:
        {elementwise_returns}

    Raises:
        {common_raises}

    Examples:
        >>> import torch, losskit
        >>> losskit.smooth_l1_loss(torch.tensor([0.5, 3.0]), torch.zeros(2), beta=2.0, reduction="none")
        tensor([0.0625, 2.0000])

    References:
        Girshick, "Fast R-CNN", ICCV 2015. Defaults follow ``torch.nn.SmoothL1Loss`` (MMDetection's
        ``SmoothL1Loss`` is the same with ``beta``).
    """
    beta = check_number("beta", beta, low=0.0)

    def loss_fn(x: Tensor, y: Tensor) -> Tensor:
        e = x - y
        if beta == 0.0:
            return e.abs()
        # huber(beta) / beta, arranged so that a tiny beta cannot overflow (and, as in Huber, with
        # a linear part whose gradient does not cancel inside the bowl).
        a = e.abs()
        quadratic = a.clamp_max(beta)
        return 0.5 * quadratic * (quadratic / beta) + (a - beta).relu()

    return _elementwise(input, target, loss_fn, weight, reduction, normalizer)


@_docs
def log_cosh_loss(
    input: Tensor,
    target: Tensor,
    *,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Log-cosh loss: about :math:`\tfrac12 e^2` for small residuals and :math:`|e| - \log 2` for large ones.

    A Huber-like loss with no parameter and no kink: twice differentiable everywhere, with
    gradient :math:`\tanh(e)`. It is computed without ``cosh``, which overflows for
    :math:`|e| > 89` in float32, and without the cancellation that ``logaddexp(e, -e) - log 2``
    suffers for tiny residuals.

    .. math::
        \ell(e) = \log\cosh(e), \quad e = \text{input} - \text{target}

    Args:
        input: Predictions.
        target: Targets, same shape as ``input``.
        {common_args}

    Shape:
        {elementwise_shape}

    Returns:
        {elementwise_returns}

    Raises:
        {common_raises}

    Examples:
        >>> import torch, losskit
        >>> losskit.log_cosh_loss(torch.tensor([0.5, 1.0, 100.0]), torch.zeros(3), reduction="none")
        tensor([ 0.1201,  0.4338, 99.3069])

    References:
        Chen et al., "Log Hyperbolic Cosine Loss Improves Variational Auto-Encoder", 2019 (ICLR
        submission). Same values as ``optax.losses.log_cosh`` and ``keras.losses.log_cosh``.
    """

    def loss_fn(x: Tensor, y: Tensor) -> Tensor:
        a = (x - y).abs()
        # log cosh a = 2 atanh(tanh(a/2)^2): no cancellation for small a; the clamp keeps the
        # unused branch finite (a NaN there would poison the gradient through torch.where).
        near = 2.0 * torch.atanh(torch.tanh(0.5 * a.clamp_max(1.0)) ** 2)
        far = a + TF.softplus(-2.0 * a) - _LOG2
        return torch.where(a < 1.0, near, far)

    return _elementwise(input, target, loss_fn, weight, reduction, normalizer)


# --- quantiles --------------------------------------------------------------------------------


@_docs
def quantile_loss(
    input: Tensor,
    target: Tensor,
    *,
    quantiles: float | Sequence[float] | Tensor = 0.5,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Quantile (pinball) loss: an asymmetric L1 whose minimiser is the ``q``-th quantile.

    Under-prediction costs ``q`` per unit and over-prediction ``1 - q``, so the optimal
    prediction has a fraction ``q`` of the targets below it; ``q = 0.5`` is half the L1 loss.
    With several quantiles the model predicts one value per quantile in a trailing dimension
    (a prediction interval from one head) and each is scored against the same target.

    .. math::
        \ell_q(e) = \max(q\,e,\ (q - 1)\,e), \quad e = \text{target} - \text{input}

    Args:
        input: Predictions; with ``Q`` quantiles, a trailing dimension of size ``Q``.
        target: Targets: ``input``'s shape for a single quantile, ``input.shape[:-1]`` for several.
        quantiles: A number in (0, 1), or a sequence or 1-D tensor of ``Q`` such numbers
            (a sequence, even of length 1, means a trailing quantile dimension). With several
            quantiles, a per-sample ``weight`` needs a trailing dimension of size 1.
        {common_args}

    Shape:
        - input: :math:`(*)`, or :math:`(*, Q)` with ``Q`` quantiles.
        - target: :math:`(*)`.
        - output: scalar, or ``input``'s shape with ``reduction="none"``.

    Returns:
        {elementwise_returns}

    Raises:
        TypeError: If ``input`` or ``target`` is not floating point.
        ValueError: If a quantile is outside (0, 1), ``input`` has no trailing dimension of size
            ``Q``, ``target``'s shape is not as above, ``reduction`` is unknown, or (value check)
            the inputs are not finite.

    Examples:
        >>> import torch, losskit
        >>> target = torch.tensor([1.0, 1.0])
        >>> losskit.quantile_loss(torch.tensor([0.0, 2.0]), target, quantiles=0.9, reduction="none")
        tensor([0.9000, 0.1000])
        >>> pred = torch.tensor([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]])  # quantiles 0.1, 0.5, 0.9
        >>> losskit.quantile_loss(pred, target, quantiles=[0.1, 0.5, 0.9], reduction="none")
        tensor([[0.1000, 0.0000, 0.1000],
                [0.0000, 0.0000, 0.0000]])

    References:
        Koenker and Bassett, "Regression Quantiles", Econometrica, 1978. The trailing quantile
        dimension follows the multi-quantile heads of forecasting libraries (e.g. PyTorch Forecasting).
    """
    q = _quantile_tensor(quantiles)
    target_shape = None
    if isinstance(q, Tensor):
        check_floating("input", input)
        if input.dim() == 0 or input.shape[-1] != q.numel():
            raise ValueError(f"input must have a trailing dimension of size {q.numel()} (one per quantile), "
                             f"got shape {tuple(input.shape)}")
        target_shape = input.shape[:-1]

    def loss_fn(x: Tensor, y: Tensor) -> Tensor:
        if isinstance(q, Tensor):
            qs, e = as_option_tensor(q, x), y.unsqueeze(-1) - x
        else:
            qs, e = q, y - x
        return torch.maximum(qs * e, (qs - 1) * e)

    return _elementwise(input, target, loss_fn, weight, reduction, normalizer, target_shape=target_shape)


# --- robust losses ----------------------------------------------------------------------------


@_docs
def charbonnier_loss(
    input: Tensor,
    target: Tensor,
    *,
    eps: float = 1e-3,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Charbonnier loss: a smooth L1, :math:`\sqrt{e^2 + \epsilon^2}`, shifted to be 0 at a perfect fit.

    For :math:`|e| \gg \epsilon` it is :math:`|e|`, and near zero it is the parabola
    :math:`e^2 / 2\epsilon`, so the gradient is continuous. The shift by :math:`\epsilon`
    changes no gradient. It is Barron's :func:`general_robust_loss` with ``alpha=1`` and
    ``scale=eps``, times ``eps``. kornia's ``charbonnier_loss`` is this loss with ``eps=1``:
    :math:`\sqrt{e^2 + 1} - 1`.

    .. math::
        \ell(e) = \sqrt{e^2 + \epsilon^2} - \epsilon = \frac{e^2}{\sqrt{e^2 + \epsilon^2} + \epsilon},
        \quad e = \text{input} - \text{target}

    (the right-hand form, used here, loses no precision when :math:`|e| \ll \epsilon`).

    Args:
        input: Predictions.
        target: Targets, same shape as ``input``.
        eps: The smoothing scale :math:`\epsilon`; ``> 0``.
        {common_args}

    Shape:
        {elementwise_shape}

    Returns:
        {elementwise_returns}

    Raises:
        {common_raises}

    Examples:
        >>> import torch, losskit
        >>> losskit.charbonnier_loss(torch.tensor([0.0, 3.0]), torch.zeros(2), eps=1.0, reduction="none")
        tensor([0.0000, 2.1623])

    References:
        Charbonnier et al., "Two Deterministic Half-Quadratic Regularization Algorithms for Computed
        Imaging", ICIP 1994. ``eps=1e-3`` follows LapSRN (Lai et al., CVPR 2017); kornia uses ``eps=1``.
    """
    eps = check_number("eps", eps, low=0.0, low_open=True)

    def loss_fn(x: Tensor, y: Tensor) -> Tensor:
        sq = (x - y) ** 2
        return sq / (torch.sqrt(sq + eps**2) + eps)

    return _elementwise(input, target, loss_fn, weight, reduction, normalizer)


@_docs
def wing_loss(
    input: Tensor,
    target: Tensor,
    *,
    width: float = 5.0,
    curvature: float = 0.5,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Wing loss: logarithmic for small residuals, L1 beyond ``width``.

    Made for facial landmarks, where L2 and L1 underweight the many small and medium errors:
    the log part has a large gradient near zero (``width / curvature`` at the origin), and the
    constant :math:`C` joins it continuously to L1. The gradient jumps at ``|e| = width``
    (from :math:`w/(\epsilon + w)` to 1), as in the paper.

    .. math::
        \ell(e) = \begin{cases} w \ln(1 + |e| / \epsilon) & |e| < w \\ |e| - C & |e| \ge w \end{cases},
        \quad C = w - w \ln(1 + w/\epsilon), \quad e = \text{input} - \text{target}

    Args:
        input: Predictions.
        target: Targets, same shape as ``input``.
        width: :math:`w`, the extent of the logarithmic part; ``> 0``.
        curvature: :math:`\epsilon`, how sharply the logarithmic part bends; ``> 0``.
        {common_args}

    Shape:
        {elementwise_shape}

    Returns:
        {elementwise_returns}

    Raises:
        {common_raises}

    Examples:
        >>> import torch, losskit
        >>> losskit.wing_loss(torch.tensor([0.5, 10.0]), torch.zeros(2), reduction="none")
        tensor([ 3.4657, 16.9895])

    References:
        Feng et al., "Wing Loss for Robust Facial Landmark Localisation with Convolutional Neural
        Networks", CVPR 2018. Defaults follow pytorch-toolbelt's ``WingLoss`` (w=5, curvature=0.5).
    """
    width = check_number("width", width, low=0.0, low_open=True)
    curvature = check_number("curvature", curvature, low=0.0, low_open=True)
    c = width - width * math.log1p(width / curvature)

    def loss_fn(x: Tensor, y: Tensor) -> Tensor:
        a = (x - y).abs()
        return torch.where(a < width, width * torch.log1p(a / curvature), a - c)

    return _elementwise(input, target, loss_fn, weight, reduction, normalizer)


@_docs
def balanced_l1_loss(
    input: Tensor,
    target: Tensor,
    *,
    alpha: float = 0.5,
    gamma: float = 1.5,
    beta: float = 1.0,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Balanced L1 loss (Libra R-CNN): smooth L1 with the gradient of small (inlier) residuals boosted.

    In box regression the outliers produce most of the gradient; this loss raises the
    gradient of inliers (:math:`|e| < \beta`) to :math:`\alpha \ln(b|e|/\beta + 1)` while
    capping that of outliers at :math:`\gamma`. :math:`b` is chosen so that the two pieces
    and their gradients meet at :math:`|e| = \beta`.

    .. math::
        \ell(e) = \begin{cases} \frac{\alpha}{b}(b|e| + 1)\ln\!\left(\frac{b|e|}{\beta} + 1\right) - \alpha|e|
        & |e| < \beta \\ \gamma|e| + \frac{\gamma}{b} - \alpha\beta & |e| \ge \beta \end{cases},
        \quad b = e^{\gamma/\alpha} - 1, \quad e = \text{input} - \text{target}

    Args:
        input: Predictions.
        target: Targets, same shape as ``input``.
        alpha: Inlier gradient gain :math:`\alpha`; ``> 0``.
        gamma: Outlier gradient bound :math:`\gamma`; ``> 0``.
        beta: Where the two pieces meet; ``> 0``.
        {common_args}

    Shape:
        {elementwise_shape}

    Returns:
        {elementwise_returns}

    Raises:
        {common_raises}

    Examples:
        >>> import torch, losskit
        >>> losskit.balanced_l1_loss(torch.tensor([0.5, 2.0]), torch.zeros(2), reduction="none")
        tensor([0.4006, 2.5786])

    References:
        Pang et al., "Libra R-CNN: Towards Balanced Learning for Object Detection", CVPR 2019.
        The formula (the paper's with :math:`\beta`) and defaults follow MMDetection's ``BalancedL1Loss``.
    """
    alpha = check_number("alpha", alpha, low=0.0, low_open=True)
    gamma = check_number("gamma", gamma, low=0.0, low_open=True)
    beta = check_number("beta", beta, low=0.0, low_open=True)
    b = math.expm1(gamma / alpha)

    def loss_fn(x: Tensor, y: Tensor) -> Tensor:
        a = (x - y).abs()
        # alpha/b ((b a + 1) log1p(z) - b a), z = b a / beta, is alpha/b (beta g(z) + (1 - beta) log1p(z))
        # with g(z) = (1 + z) log1p(z) - z ~ z^2 / 2, whose own cancellation _one_plus_log1p_minus avoids.
        z = b * a.clamp_max(beta) / beta
        inlier = alpha / b * (beta * _one_plus_log1p_minus(z) + (1 - beta) * torch.log1p(z))
        return torch.where(a < beta, inlier, gamma * a + gamma / b - alpha * beta)

    return _elementwise(input, target, loss_fn, weight, reduction, normalizer)


# --- Barron's general robust loss -------------------------------------------------------------


def robust_log_partition(alpha: float | Tensor) -> Tensor:
    r"""Log of the normaliser of Barron's distribution, :math:`\log Z(\alpha)`, for :math:`\alpha \in [0, 2]`.

    :math:`p(x \mid \alpha, c) = e^{-\rho(x, \alpha, c)} / (c\,Z(\alpha))` is a density for
    :math:`\alpha \ge 0`; its negative log-likelihood :math:`\rho + \log c + \log Z(\alpha)` is
    what lets :math:`\alpha` be learned (``general_robust_loss(..., nll=True)``). :math:`Z` has
    no closed form in general, so it is computed by a 64-node Gauss-Legendre quadrature after
    the substitution :math:`x = \tan\theta` (in float64; error about 1e-11 on [0, 2]). It is
    differentiable in ``alpha``. Known values: :math:`Z(2) = \sqrt{2\pi}` (Gaussian),
    :math:`Z(0) = \sqrt2\,\pi` (Cauchy), :math:`Z(1) = 2e\,K_1(1)`.

    .. math::
        \log Z(\alpha) = \log \int_{-\infty}^{\infty} \exp(-\rho(x, \alpha, 1))\, dx

    Args:
        alpha: Shape parameter(s) in [0, 2], a number or a floating tensor of any shape.

    Shape:
        - alpha: :math:`(*)`. - output: :math:`(*)`.

    Returns:
        :math:`\log Z(\alpha)`, in ``alpha``'s dtype (the default dtype for a number). Each
        element costs 64 evaluations of :math:`\rho`.

    Raises:
        TypeError: If ``alpha`` is neither a number nor a floating tensor.
        ValueError: If ``alpha`` is outside [0, 2] (a value check for tensors).

    Examples:
        >>> import torch, math
        >>> from losskit.functional.regression import robust_log_partition
        >>> robust_log_partition(torch.tensor([0.0, 1.0, 2.0]))
        tensor([1.4913, 1.1855, 0.9189])
        >>> math.log(math.sqrt(2 * math.pi))
        0.9189385332046727

    References:
        Barron, "A General and Adaptive Robust Loss Function", CVPR 2019, section 2.
    """
    if isinstance(alpha, Tensor):
        check_floating("alpha", alpha)
        if checks_enabled() and alpha.numel() and not bool(((alpha >= 0) & (alpha <= 2)).all()):
            raise ValueError(f"alpha must lie in [0, 2] for the partition function; found values from "
                             f"{alpha.min().item():g} to {alpha.max().item():g}")
    else:
        alpha = torch.tensor(check_number("alpha", alpha, low=0.0, high=2.0))
    x, log_w = _PARTITION_X.to(alpha.device), _PARTITION_LOG_W.to(alpha.device)
    rho = _rho(x**2, alpha.to(torch.float64).unsqueeze(-1))
    # The integrand is even: twice the integral over [0, inf).
    return (_LOG2 + torch.logsumexp(log_w - rho, dim=-1)).to(alpha.dtype)


@_docs
def general_robust_loss(
    input: Tensor,
    target: Tensor,
    *,
    alpha: float | Tensor = 1.0,
    scale: float | Tensor = 1.0,
    nll: bool = False,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Barron's general robust loss: one shape parameter ``alpha`` spans L2, Charbonnier, Cauchy, Welsch and more.

    ``alpha`` sets how much large residuals count: 2 is L2, 1 is Charbonnier (pseudo-Huber),
    0 is Cauchy (Lorentzian), -2 is Geman-McClure, :math:`-\infty` is Welsch; lower means
    more robust. ``scale`` is the size of the quadratic bowl near zero. Both may be tensors
    (per channel, say) and the loss is differentiable in both, so they can be learned; learning
    ``alpha`` needs the negative log-likelihood (``nll=True``, or
    :class:`losskit.nn.GeneralRobustLoss` with ``learn_alpha=True``), otherwise it simply runs
    to the most robust value.

    .. math::
        \rho(x, \alpha, c) = \frac{|\alpha - 2|}{\alpha}
        \left(\left(\frac{(x/c)^2}{|\alpha - 2|} + 1\right)^{\alpha/2} - 1\right),
        \quad x = \text{input} - \text{target}

    with the limits :math:`\tfrac12 (x/c)^2` at :math:`\alpha = 2`,
    :math:`\log(\tfrac12 (x/c)^2 + 1)` at 0, :math:`1 - e^{-(x/c)^2/2}` at :math:`-\infty` and
    :math:`e^{(x/c)^2/2} - 1` at :math:`+\infty`, which are used exactly at those values (so the
    derivative in ``alpha`` is 0 exactly at 0 and 2; anywhere else it is the true one).
    With ``nll=True`` the loss is :math:`\rho(x, \alpha, c) + \log c + \log Z(\alpha)`, the
    negative log-likelihood of :math:`p \propto e^{-\rho}` (see :func:`robust_log_partition`).

    Args:
        input: Predictions.
        target: Targets, same shape as ``input``.
        alpha: Shape :math:`\alpha`, any real number or :math:`\pm\infty` (in [0, 2] with
            ``nll=True``); a number or a tensor broadcastable to ``input``.
        scale: Scale :math:`c > 0`; a number or a tensor broadcastable to ``input``.
        nll: Add :math:`\log c + \log Z(\alpha)`: Barron's adaptive loss.
        {common_args}

    Shape:
        {elementwise_shape}
        - alpha, scale: numbers, or tensors broadcastable to ``input``.

    Returns:
        {elementwise_returns}

    Raises:
        TypeError: If ``input``, ``target``, or a tensor ``alpha`` or ``scale`` is not floating point.
        ValueError: If shapes do not match, ``scale <= 0``, ``alpha`` is outside [0, 2] with
            ``nll=True``, ``reduction`` is unknown, or (value check) the inputs are not finite.

    Examples:
        >>> import torch, losskit
        >>> x = torch.tensor([0.0, 1.0, 10.0])
        >>> losskit.general_robust_loss(x, torch.zeros(3), alpha=2.0, reduction="none")  # x^2 / 2
        tensor([ 0.0000,  0.5000, 50.0000])
        >>> losskit.general_robust_loss(x, torch.zeros(3), alpha=0.0, reduction="none")  # Cauchy
        tensor([0.0000, 0.4055, 3.9318])
        >>> losskit.general_robust_loss(x, torch.zeros(3), alpha=1.0, scale=0.5, nll=True, reduction="none")
        tensor([ 0.4923,  1.7284, 19.5173])

    References:
        Barron, "A General and Adaptive Robust Loss Function", CVPR 2019. The special cases and
        the clamping near 0 and 2 follow the paper's reference implementation (``robust_loss_pytorch``).
    """
    if isinstance(scale, Tensor):
        check_same_device("input", input, "scale", scale)
        check_positive_values("scale", scale)
    else:
        scale = check_number("scale", scale, low=0.0, low_open=True)
    if not isinstance(alpha, Tensor):
        alpha = check_number("alpha", alpha, low=0.0 if nll else None, high=2.0 if nll else None)
    def loss_fn(x: Tensor, y: Tensor) -> Tensor:
        # Bounded for alpha < 0: an infinite residual gives a finite loss but a NaN gradient, so
        # the inputs themselves are checked.
        check_finite("input", x)
        check_finite("target", y)
        a, c = _option_tensor("alpha", alpha, x), _option_tensor("scale", scale, x)
        loss = _rho(((x - y) / c) ** 2, a)
        if nll:
            loss = loss + torch.log(c) + robust_log_partition(a).to(loss.dtype)
        return loss

    return _elementwise(input, target, loss_fn, weight, reduction, normalizer,
                        others={"alpha": alpha, "scale": scale})


# --- likelihoods ------------------------------------------------------------------------------


@_docs
def gaussian_nll_loss(
    input: Tensor,
    target: Tensor,
    *,
    var: float | Tensor,
    full: bool = False,
    eps: float = 1e-6,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Gaussian negative log-likelihood: regression with a predicted variance.

    The model predicts a mean (``input``) and a variance (``var``, usually from a softplus
    head); the loss trades the squared error scaled by the variance against the log of the
    variance, so the model learns how uncertain each prediction is. The variance is clamped
    below at ``eps`` for stability; as in PyTorch the clamp lets the gradient through.

    .. math::
        \ell = \tfrac12\left(\log \max(v, \epsilon) + \frac{(\text{input} - \text{target})^2}{\max(v, \epsilon)}\right)
        \;\left[+\ \tfrac12 \log 2\pi \text{ if full}\right]

    Args:
        input: Predicted means.
        target: Targets, same shape as ``input``.
        var: Predicted variances, ``>= 0``: a number, a tensor of ``input``'s shape, one of
            ``input.shape[:-1]`` (one variance per row, PyTorch's rule) or any shape
            broadcastable to ``input`` such as a trailing dimension of 1. Required.
        full: Add the constant :math:`\tfrac12\log 2\pi`.
        eps: Lower clamp of ``var``; ``> 0``.
        {common_args}

    Shape:
        {elementwise_shape}
        - var: see above.

    Returns:
        {elementwise_returns}

    Raises:
        TypeError: If ``input``, ``target`` or ``var`` is not floating point.
        ValueError: If ``var`` does not broadcast to ``input``, (value check) has negative
            entries, or as for the other losses.

    Examples:
        >>> import torch, losskit
        >>> input, target = torch.tensor([0.0, 2.0]), torch.tensor([0.0, 0.0])
        >>> losskit.gaussian_nll_loss(input, target, var=torch.tensor([1.0, 4.0]), reduction="none")
        tensor([0.0000, 1.1931])

    References:
        Nix and Weigend, "Estimating the Mean and Variance of the Target Probability Distribution",
        ICNN 1994. Defaults and the ``var`` shape rules follow ``torch.nn.GaussianNLLLoss``.
    """
    check_bool("full", full)
    eps = check_number("eps", eps, low=0.0, low_open=True)

    def loss_fn(x: Tensor, y: Tensor) -> Tensor:
        v = _gaussian_var(var, x)
        # PyTorch's clamp: the value of max(v, eps), the gradient of v.
        clamped = v + (v.clamp_min(eps) - v).detach()
        loss = 0.5 * (torch.log(clamped) + (x - y) ** 2 / clamped)
        return loss + _HALF_LOG_2PI if full else loss

    return _elementwise(input, target, loss_fn, weight, reduction, normalizer)


@_docs
def poisson_nll_loss(
    input: Tensor,
    target: Tensor,
    *,
    log_input: bool = True,
    full: bool = False,
    eps: float = 1e-8,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Poisson negative log-likelihood: regression of counts with a predicted rate.

    With ``log_input=True`` (the default, and the stable choice) ``input`` is the log-rate
    :math:`\log\lambda`; otherwise it is the rate itself. ``full=True`` adds
    :math:`\log(\text{target}!)` through Stirling's approximation for targets above 1 (0 for
    targets 0 and 1, where :math:`\log(t!) = 0`), which changes the value but no gradient.

    .. math::
        \ell = \begin{cases} e^{\text{input}} - \text{target}\cdot\text{input} & \text{log\_input} \\
        \text{input} - \text{target}\cdot\log(\text{input} + \epsilon) & \text{otherwise} \end{cases}
        \;\left[+\ t\log t - t + \tfrac12\log(2\pi t) \text{ for } t > 1 \text{ if full}\right]

    Args:
        input: Predicted log-rates (``log_input=True``) or rates, ``>= 0``.
        target: Observed counts, ``>= 0``, same shape as ``input``.
        log_input: Whether ``input`` is a log-rate.
        full: Add the Stirling term.
        eps: Added to the rate inside the log when ``log_input=False``; ``>= 0``.
        {common_args}

    Shape:
        {elementwise_shape}

    Returns:
        {elementwise_returns}

    Raises:
        {common_raises}
        ValueError: (value checks) A negative ``target``, or a negative ``input`` with ``log_input=False``.

    Examples:
        >>> import torch, losskit
        >>> log_rate, counts = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 3.0])
        >>> losskit.poisson_nll_loss(log_rate, counts, reduction="none")  # exp(x) - t x
        tensor([ 1.0000, -0.2817])

    References:
        Defaults and the Stirling term follow ``torch.nn.PoissonNLLLoss``.
    """
    eps = check_number("eps", eps, low=0.0)
    check_bool("log_input", log_input)
    check_bool("full", full)

    def loss_fn(x: Tensor, y: Tensor) -> Tensor:
        check_positive_values("target", y, strict=False)
        if not log_input:
            check_positive_values("input", x, strict=False)
        loss = torch.exp(x) - y * x if log_input else x - y * torch.log(x + eps)
        if not full:
            return loss
        # Clamped so that the unused branch (t <= 1) has no log(0).
        t = y.clamp_min(1.0)
        if log_input:
            # e^x - t x + (t log t - t) = t (e^u - 1 - u), u = x - log t: the terms of size t x
            # cancel near the optimum, so the loss is taken from u, exactly.
            stirling = t * exp_tail(x - torch.log(t)) + 0.5 * torch.log(2 * math.pi * t)
            return torch.where(y > 1, stirling, loss)
        stirling = t * torch.log(t) - t + 0.5 * torch.log(2 * math.pi * t)
        return loss + torch.where(y > 1, stirling, torch.zeros_like(stirling))

    return _elementwise(input, target, loss_fn, weight, reduction, normalizer)
