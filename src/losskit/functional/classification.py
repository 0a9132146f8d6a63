r"""Classification losses on logits: softmax (one class per sample) and sigmoid (independent labels).

Layouts follow PyTorch: softmax losses take ``input`` of shape :math:`(N, C)` or
:math:`(N, C, d_1, \dots, d_k)` (class dimension 1; an unbatched :math:`(C,)` works too) and
either integer class indices of shape :math:`(N, d_1, \dots, d_k)` or floating probabilities
with the input's shape. Their natural unit is one value per sample (per pixel for dense
layouts). Sigmoid losses are elementwise.

Class weights (``weight=`` of shape :math:`(C,)`) follow ``torch.nn.CrossEntropyLoss``: the
loss of a sample with class :math:`y` is scaled by :math:`w_y` and ``"mean"`` divides by
:math:`\sum_n w_{y_n}`. For probability targets the same rule reads :math:`\sum_c w_c t_c`
per sample, so a one-hot probability target gives exactly the index-target value under every
option (PyTorch divides by :math:`N` there instead; pass ``normalizer=N`` to reproduce it).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as TF
from torch import Tensor

from losskit._core.checks import (
    check_bool,
    check_broadcastable,
    check_class_vector,
    check_finite,
    check_floating,
    check_in_unit_interval,
    check_number,
    check_one_of,
    check_positive_values,
    check_same_device,
    check_same_shape,
    check_tensor,
)
from losskit._core.numerics import (
    finite_log,
    log_softmax,
    upcast,
    weighted_log,
)
from losskit._core.reduction import Reduction, check_reduction, reduce_for, reduce_loss
from losskit._kernels import Backend, triton_cross_entropy, triton_sigmoid_focal, use_triton
from losskit.functional._class_targets import (
    _along_class_dim,
    _check_smoothing,
    _ClassTargets,
    _finish,
    _gather_class,
    _prepare_softmax,
    _smoothed,
)
from losskit.functional._cross_entropy_kernel import (
    _index_cross_entropy,
    _softmax_cross_entropy,
)
from losskit.functional._sigmoid_kernels import (
    _binary_cross_entropy,
    _SigmoidFocal,
)

# --- softmax losses ---------------------------------------------------------------------------


def cross_entropy(
    input: Tensor,
    target: Tensor,
    *,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
    backend: Backend = "auto",
) -> Tensor:
    r"""Softmax cross-entropy on logits, with class weights, ignored labels, smoothing, z-loss and softcap.

    The negative log-likelihood of the target class under a softmax over the logits: the loss
    of nearly every classifier and language model. Equals ``torch.nn.functional.cross_entropy``
    for index targets under every combination of ``weight``, ``ignore_index`` and
    ``label_smoothing``. ``z_loss`` adds :math:`z \log^2 Z` (PaLM), which keeps the
    normaliser :math:`Z` near 1 and logits from drifting in large-vocabulary training;
    ``softcap`` bounds the logits smoothly (Gemma 2) before anything else is computed.

    .. math::
        \tilde x = c \tanh(x / c) \ \text{(if softcap } c\text{)}, \qquad
        \log q_k = \tilde x_k - \log Z, \quad Z = \textstyle\sum_k e^{\tilde x_k}

        \ell_n = (1-\varepsilon)\, w_{y_n} (-\log q_{y_n})
                 + \frac{\varepsilon}{C} \sum_k w_k (-\log q_k) + z\, w_{y_n} \log^2 Z

    For probability targets :math:`t` the first two terms read
    :math:`-\sum_k w_k t'_k \log q_k` with :math:`t' = (1-\varepsilon) t + \varepsilon / C`.
    ``"mean"`` divides by :math:`\sum_n w_{y_n}` over non-ignored samples.

    Args:
        input: Logits (not probabilities), class dimension 1.
        target: Class indices (integer dtype) or class probabilities (floating, input's shape).
        weight: Per-class weights :math:`w`, shape :math:`(C,)`.
        ignore_index: Index targets equal to this contribute nothing and are not counted.
        label_smoothing: :math:`\varepsilon \in [0, 1]`.
        z_loss: Coefficient :math:`z \ge 0` of the squared log-normaliser.
        softcap: Cap :math:`c > 0` for the logits, or ``None``.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` (see :func:`losskit.reduce_loss`).
        normalizer: With ``"mean"``, divide the weighted sum by this count instead.
        backend: ``"auto"`` | ``"torch"`` | ``"triton"``: the Triton kernel for index targets on CUDA
            (see :mod:`losskit._kernels`); probability targets always take the torch path.

    Shape:
        - input: :math:`(N, C)`, :math:`(N, C, d_1, \dots, d_k)` or :math:`(C,)`.
        - target: :math:`(N, d_1, \dots, d_k)` integer, or the input's shape floating.
        - output: scalar, or :math:`(N, d_1, \dots, d_k)` with ``reduction="none"``.

    Returns:
        The loss in the input's dtype. Ignored samples are 0 under ``"none"``; a batch where every
        sample is ignored gives 0 (PyTorch gives NaN).

    Raises:
        ValueError: Shapes that do not match, a class index out of range, non-finite logits
            (``-inf`` is allowed: it masks a class), options out of range, a bad reduction.
        TypeError: A boolean target, or a non-floating input.

    Examples:
        >>> import torch, losskit
        >>> loss = losskit.cross_entropy(torch.tensor([[2.5, 0.1, -1.2]]), torch.tensor([0]))
        >>> print(f"Calculated Loss: {loss.item():.4f}")
        Calculated Loss: 0.1093

    References:
        Szegedy et al., "Rethinking the Inception Architecture" (label smoothing), CVPR 2016.
        Chowdhery et al., "PaLM" (z-loss), 2022. Gemma Team, "Gemma 2" (logit softcapping), 2024.
        Defaults and the weighted mean follow ``torch.nn.CrossEntropyLoss``.
    """
    check_reduction(reduction, normalizer)
    _check_smoothing(label_smoothing)
    check_number("z_loss", z_loss, low=0.0)
    if softcap is not None:
        check_number("softcap", softcap, low=0.0, low_open=True)
    logits, targets, weight, unbatched = _prepare_softmax(input, target, ignore_index=ignore_index, weight=weight)
    triton = use_triton(backend, input)
    if targets.index is not None:
        loss = (triton_cross_entropy(logits, targets.index, targets.mask, weight, label_smoothing, z_loss, softcap)
                if triton else _index_cross_entropy(logits, targets, weight, label_smoothing, z_loss, softcap))
        return _finish(loss, targets, weight, input, target, unbatched, reduction, normalizer)
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    loss = _softmax_cross_entropy(logits, targets, weight, label_smoothing)
    if z_loss:
        z_term = torch.logsumexp(logits, dim=1).square() * z_loss
        unit_weight = targets.unit_weight(weight)
        loss = loss + (z_term if unit_weight is None else z_term * unit_weight)
    return _finish(loss, targets, weight, input, target, unbatched, reduction, normalizer)


def _shifted_cross_entropy(
    input: Tensor,
    target: Tensor,
    shift: Tensor,
    *,
    weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    reduction: Reduction,
    normalizer: float | Tensor | None,
) -> Tensor:
    """Cross-entropy on ``input + shift``, ``shift`` a per-class vector (logit adjustment)."""
    logits = upcast(input)
    shift = shift.to(device=logits.device, dtype=logits.dtype)
    adjusted = logits + (shift if logits.dim() == 1 else _along_class_dim(shift, logits))
    loss = cross_entropy(adjusted, target, weight=weight, ignore_index=ignore_index,
                         label_smoothing=label_smoothing, reduction=reduction, normalizer=normalizer)
    return loss.to(input.dtype)


def _class_vector(name: str, value: Tensor | list | tuple, input: Tensor, *, positive: bool) -> Tensor:
    num_classes = input.shape[0] if input.dim() == 1 else input.shape[1]
    if isinstance(value, Tensor):
        check_same_device("input", input, name, value)
    vector = torch.as_tensor(value, device=input.device).to(upcast(input).dtype)
    check_class_vector(name, vector, num_classes)
    if positive:
        check_positive_values(name, vector)
    else:
        check_finite(name, vector)
    return vector


def logit_adjusted_cross_entropy(
    input: Tensor,
    target: Tensor,
    *,
    class_prior: Tensor | list | tuple,
    tau: float = 1.0,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Logit-adjusted cross-entropy for long-tailed classes (Menon et al.).

    Training on a long-tailed label distribution biases a softmax classifier toward the
    frequent classes. Adding :math:`\tau \log \pi_k` to the logits during training (only)
    makes the plain logits at test time estimate the *balanced* error's Bayes classifier.

    .. math::
        \ell_n = \mathrm{CE}\big(x_n + \tau \log \pi,\; y_n\big), \qquad
        \pi = \text{prior} / \textstyle\sum \text{prior}

    Args:
        input: Logits, class dimension 1.
        target: Class indices, or probabilities with the input's shape.
        class_prior: Training-set class frequencies or counts, shape :math:`(C,)`, all > 0
            (normalised to sum to 1; a constant shift of the logits changes nothing).
        tau: Adjustment strength :math:`\tau \ge 0`; ``tau=0`` is plain cross-entropy.
        weight, ignore_index, label_smoothing, reduction, normalizer: As in :func:`cross_entropy`.

    Shape:
        As :func:`cross_entropy`.

    Returns:
        The loss in the input's dtype.

    Raises:
        ValueError: ``class_prior`` of the wrong shape or not positive, ``tau < 0``, and the
            errors of :func:`cross_entropy`.

    Examples:
        >>> import torch, losskit
        >>> logits, target = torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([2])
        >>> # CE of [1, 0, -1] + log[0.7, 0.2, 0.1] = [0.643, -1.609, -3.303] at class 2
        >>> losskit.logit_adjusted_cross_entropy(logits, target, class_prior=[0.7, 0.2, 0.1])
        tensor(4.0632)

    References:
        Menon et al., "Long-tail learning via logit adjustment", ICLR 2021 (the loss form, Eq. 10).
    """
    check_number("tau", tau, low=0.0)
    check_floating("input", input)
    prior = _class_vector("class_prior", class_prior, input, positive=True)
    shift = tau * torch.log(prior / prior.sum())
    return _shifted_cross_entropy(input, target, shift, weight=weight, ignore_index=ignore_index,
                                  label_smoothing=label_smoothing, reduction=reduction, normalizer=normalizer)


def balanced_softmax_loss(
    input: Tensor,
    target: Tensor,
    *,
    class_counts: Tensor | list | tuple,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Balanced softmax cross-entropy for long-tailed classes (Ren et al.).

    Models the label shift between a long-tailed training set and a balanced test set by
    weighting each class's exponential by its training count. It is
    :func:`logit_adjusted_cross_entropy` with ``tau=1`` and the counts as prior.

    .. math::
        \ell_n = -\log \frac{n_{y_n} e^{x_{n,y_n}}}{\sum_k n_k e^{x_{n,k}}}
               = \mathrm{CE}(x_n + \log n,\; y_n)

    Args:
        input: Logits, class dimension 1.
        target: Class indices, or probabilities with the input's shape.
        class_counts: Training samples per class, shape :math:`(C,)`, all > 0.
        weight, ignore_index, label_smoothing, reduction, normalizer: As in :func:`cross_entropy`.

    Shape:
        As :func:`cross_entropy`.

    Returns:
        The loss in the input's dtype.

    Raises:
        ValueError: ``class_counts`` of the wrong shape or not positive, and the errors of
            :func:`cross_entropy`.

    Examples:
        >>> import torch, losskit
        >>> logits, target = torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([2])
        >>> losskit.balanced_softmax_loss(logits, target, class_counts=[700, 200, 100])
        tensor(4.0632)

    References:
        Ren et al., "Balanced Meta-Softmax for Long-Tailed Visual Recognition", NeurIPS 2020.
    """
    check_floating("input", input)
    counts = _class_vector("class_counts", class_counts, input, positive=True)
    return _shifted_cross_entropy(input, target, torch.log(counts), weight=weight, ignore_index=ignore_index,
                                  label_smoothing=label_smoothing, reduction=reduction, normalizer=normalizer)


def ldam_loss(
    input: Tensor,
    target: Tensor,
    *,
    class_counts: Tensor | list | tuple,
    max_margin: float = 0.5,
    scale: float = 30.0,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Label-distribution-aware margin loss (Cao et al.): larger margins for rarer classes.

    Subtracts a class-dependent margin :math:`\Delta_y \propto n_y^{-1/4}` from the target
    logit before a scaled cross-entropy, so rare classes must be separated by more. The margins
    are scaled so the rarest class gets ``max_margin``. The paper pairs it with cosine
    (normalised) logits, hence ``scale``; deferred re-weighting is ``weight=`` from a given epoch.

    .. math::
        \Delta_k = m_{\max} \frac{n_k^{-1/4}}{\max_j n_j^{-1/4}}, \qquad
        \ell_n = \mathrm{CE}\big(s\,(x_n - \Delta_{y_n} e_{y_n}),\; y_n\big)

    Args:
        input: Logits (cosine similarities in the paper), class dimension 1.
        target: Class indices (integer dtype; probability targets have no margin to apply).
        class_counts: Training samples per class, shape :math:`(C,)`, all > 0.
        max_margin: :math:`m_{\max} > 0`, the margin of the rarest class.
        scale: :math:`s > 0`, multiplies the adjusted logits.
        weight, ignore_index, reduction, normalizer: As in :func:`cross_entropy`.

    Shape:
        As :func:`cross_entropy` with index targets.

    Returns:
        The loss in the input's dtype.

    Raises:
        TypeError: A floating target.
        ValueError: ``class_counts`` of the wrong shape or not positive, ``max_margin`` or
            ``scale`` not positive, and the errors of :func:`cross_entropy`.

    Examples:
        >>> import torch, losskit
        >>> logits, target = torch.tensor([[0.5, 0.2, -0.1]]), torch.tensor([2])
        >>> # margins 0.5 * [100, 10, 1]^(-1/4) = [0.158, 0.281, 0.5]: logits -> [0.5, 0.2, -0.6]
        >>> losskit.ldam_loss(logits, target, class_counts=[100, 10, 1], scale=1.0)
        tensor(1.8293)

    References:
        Cao et al., "Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss",
        NeurIPS 2019 (defaults of the authors' code: max_margin 0.5, scale 30).
    """
    check_reduction(reduction, normalizer)
    check_number("max_margin", max_margin, low=0.0, low_open=True)
    check_number("scale", scale, low=0.0, low_open=True)
    logits, targets, weight, unbatched = _prepare_softmax(
        input, target, ignore_index=ignore_index, weight=weight, allow_soft=False
    )
    logits = upcast(logits)
    counts = _class_vector("class_counts", class_counts, logits, positive=True)
    margins = counts.pow(-0.25)
    margins = margins * (max_margin / margins.max())
    target_column = targets.index.unsqueeze(1)
    margin_at_target = torch.zeros_like(logits).scatter(1, target_column, margins[target_column])
    loss = _softmax_cross_entropy(scale * (logits - margin_at_target), targets, weight, 0.0)
    return _finish(loss, targets, weight, input, target, unbatched, reduction, normalizer)


def poly1_cross_entropy(
    input: Tensor,
    target: Tensor,
    *,
    epsilon: float = 2.0,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Poly-1 cross-entropy: cross-entropy plus :math:`\epsilon (1 - p_t)` (Leng et al.).

    Cross-entropy's Taylor expansion in :math:`1 - p_t` has fixed coefficients; Poly-1 raises
    the first one by :math:`\epsilon`, which strengthens the gradient on confident samples
    (:math:`\epsilon > 0`) or weakens it (:math:`\epsilon < 0`).

    .. math::
        \ell_n = \mathrm{CE}_n + \epsilon\, w_n (1 - p_{t,n}), \qquad p_{t,n} = \textstyle\sum_k t'_{n,k} q_{n,k}

    where :math:`t'` is the (smoothed) target distribution, :math:`q` the softmax and
    :math:`w_n` the sample's class weight (:math:`w_{y_n}`, 1 without weights).

    Args:
        input: Logits, class dimension 1.
        target: Class indices, or probabilities with the input's shape.
        epsilon: :math:`\epsilon \ge -1`, which keeps the loss decreasing as :math:`p_t` rises
            (its derivative in :math:`p_t` is :math:`-1/p_t - \epsilon`). The default 2.0
            follows timm and optax.
        weight, ignore_index, label_smoothing, reduction, normalizer: As in :func:`cross_entropy`.

    Shape:
        As :func:`cross_entropy`.

    Returns:
        The loss in the input's dtype.

    Raises:
        ValueError: ``epsilon < -1`` and the errors of :func:`cross_entropy`.

    Examples:
        >>> import torch, losskit
        >>> logits, target = torch.tensor([[2.5, 0.1, -1.2]]), torch.tensor([0])
        >>> losskit.poly1_cross_entropy(logits, target, epsilon=1.0)  # 0.1093 + (1 - 0.8965)
        tensor(0.2128)

    References:
        Leng et al., "PolyLoss: A Polynomial Expansion Perspective of Classification Loss
        Functions", ICLR 2022. Smoothing and ``epsilon`` follow timm's ``PolyCrossEntropy``.
    """
    check_reduction(reduction, normalizer)
    check_number("epsilon", epsilon, low=-1.0)
    _check_smoothing(label_smoothing)
    logits, targets, weight, unbatched = _prepare_softmax(input, target, ignore_index=ignore_index, weight=weight)
    logits = upcast(logits)  # once: both terms' gradients then add up in the compute dtype
    loss = _softmax_cross_entropy(logits, targets, weight, label_smoothing)
    # 1 - q_k as -expm1(log q_k) on the exact log-softmax: 1 - p_t keeps its digits when p_t is near 1.
    log_probs = finite_log(log_softmax(logits, 1))
    if targets.index is not None:
        miss = -torch.expm1(_gather_class(log_probs, targets.index))
        if label_smoothing:  # 1 - sum_k t'_k q_k with t' = (1 - e) onehot + e / C, and sum_k q_k = 1
            miss = (1 - label_smoothing) * miss + label_smoothing * (1 - 1 / logits.shape[1])
    else:  # 1 - sum_k t'_k q_k = (1 - sum_k t'_k) + sum_k t'_k (1 - q_k)
        smoothed = _smoothed(targets.soft, label_smoothing)
        miss = (1 - smoothed.sum(1)) + (smoothed * -torch.expm1(log_probs)).sum(1)
    unit_weight = targets.unit_weight(weight)
    poly = epsilon * miss
    loss = loss + (poly if unit_weight is None else poly * unit_weight)
    return _finish(loss, targets, weight, input, target, unbatched, reduction, normalizer)


def softmax_focal_loss(
    input: Tensor,
    target: Tensor,
    *,
    alpha: Tensor | list | tuple | None = None,
    gamma: float = 2.0,
    per_class: bool = False,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Multi-class (softmax) focal loss with per-class :math:`\alpha`.

    Cross-entropy scaled by :math:`(1 - q_y)^\gamma`, so samples the model already gets right
    contribute little and training concentrates on hard ones.

    .. math::
        \ell_n = -\sum_k \alpha_k\, w_k\, t_{n,k}\, (1 - q_{n,k})^\gamma \log q_{n,k}

    with :math:`t` one-hot for index targets. ``"mean"`` divides by :math:`\sum_n w_{y_n}`
    (:math:`\alpha` scales the loss but, as in the paper, not the denominator).

    Args:
        input: Logits, class dimension 1.
        target: Class indices, or probabilities with the input's shape.
        alpha: Per-class factors, shape :math:`(C,)`, or ``None``. A single number is refused
            because peers read it differently: MONAI and kornia mean ``[1 - a, a, ..., a]``
            (class 0 as background), Keras means ``a`` for every class; pass the vector you mean.
        gamma: Focusing exponent :math:`\gamma \ge 0`; ``gamma=0`` with ``alpha=None`` is
            :func:`cross_entropy`.
        per_class: Keep the class dimension: the natural unit is one term
            :math:`-\alpha_k w_k t_{n,k} (1 - q_{n,k})^\gamma \log q_{n,k}` per (sample, class),
            zero off the target class for index targets (kornia's ``focal_loss`` output). ``"sum"``
            is unchanged; ``"mean"`` is the weighted mean over (sample, class) entries, each class's
            entry weighing :math:`w_k` (kornia's mean without weights: the sum over :math:`N C`).
        weight, ignore_index, reduction, normalizer: As in :func:`cross_entropy`.

    Shape:
        As :func:`cross_entropy`; with ``per_class=True``, ``"none"`` returns the input's shape.

    Returns:
        The loss in the input's dtype.

    Raises:
        TypeError: A scalar ``alpha``.
        ValueError: ``gamma < 0``, ``alpha`` of the wrong shape, and the errors of :func:`cross_entropy`.

    Examples:
        >>> import torch, losskit
        >>> logits, target = torch.tensor([[2.5, 0.1, -1.2]]), torch.tensor([0])
        >>> losskit.softmax_focal_loss(logits, target, gamma=2.0)  # 0.1093 * (1 - 0.8965)^2
        tensor(0.0012)

    References:
        Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017. To reproduce MONAI's
        ``FocalLoss(use_softmax=True, alpha=a)`` pass ``alpha=[1 - a, a, ..., a]`` (MONAI's
        ``"mean"`` also divides by :math:`C`); kornia's ``focal_loss(alpha=a)`` likewise.
    """
    check_reduction(reduction, normalizer)
    check_number("gamma", gamma, low=0.0)
    check_bool("per_class", per_class)
    if isinstance(alpha, (int, float)):
        raise TypeError(
            "alpha must be a per-class sequence or tensor of shape (C,), or None; a single number is "
            "ambiguous (MONAI/kornia read a as [1 - a, a, ..., a], Keras as a for every class)"
        )
    logits, targets, weight, unbatched = _prepare_softmax(input, target, ignore_index=ignore_index, weight=weight)
    log_probs = log_softmax(upcast(logits), 1)  # -inf stays: under target mass it is an infinite loss

    def focal_log(log_q: Tensor) -> Tensor:
        # (1 - q)^gamma from -expm1(log q): exact for q near 1, where 1 - exp(...) would cancel. The
        # floor keeps pow's gradient finite for gamma < 1 when q rounds to exactly 1.
        return (-torch.expm1(log_q)).clamp_min(torch.finfo(log_q.dtype).tiny).pow(gamma) * log_q

    factors = None
    if alpha is not None:
        factors = _class_vector("alpha", alpha, logits, positive=False)
    if weight is not None:
        factors = weight if factors is None else factors * weight
    if per_class:
        return _per_class_focal(log_probs, focal_log, targets, factors, weight, input, target, unbatched, reduction,
                                normalizer)
    if targets.index is not None:  # only the target class is read: a -inf there is an infinite loss
        loss = -focal_log(_gather_class(log_probs, targets.index))
        if factors is not None:
            loss = loss * factors[targets.index]
    else:
        soft = targets.soft if factors is None else targets.soft * _along_class_dim(factors, targets.soft)
        loss = -(soft * focal_log(weighted_log(log_probs, soft))).sum(1)
    return _finish(loss, targets, weight, input, target, unbatched, reduction, normalizer)


def _per_class_focal(log_probs: Tensor, focal_log: Callable[[Tensor], Tensor], targets: _ClassTargets,
                     factors: Tensor | None, weight: Tensor | None, input: Tensor, target: Tensor, unbatched: bool,
                     reduction: Reduction, normalizer: float | Tensor | None) -> Tensor:
    """Softmax focal loss with ``per_class=True``: one unit per (sample, class), each class's entry
    weighing its class weight in the mean; ignored samples count nowhere."""
    if targets.index is not None:
        labels = torch.zeros_like(log_probs).scatter_(1, targets.index.unsqueeze(1), 1.0)
    else:
        labels = targets.soft
    terms = focal_log(weighted_log(log_probs, labels))  # a class of label 0 is not read
    if factors is not None:
        labels = labels * _along_class_dim(factors, labels)
    loss = -(labels * terms)
    unit_weight = None if weight is None else _along_class_dim(weight, loss)
    mask = None if targets.mask is None else targets.mask.unsqueeze(1)
    if unbatched and reduction == "none":
        loss = loss.squeeze(0)
        mask = None if mask is None else mask.squeeze(0)
        unit_weight = None if unit_weight is None else unit_weight.squeeze(0)
    return reduce_loss(loss, reduction, weight=unit_weight, mask=mask, normalizer=normalizer, weight_applied=True,
                       out_dtype=input.dtype, inputs={"input": input, "target": target})


def multi_margin_loss(
    input: Tensor,
    target: Tensor,
    *,
    p: int = 1,
    margin: float = 1.0,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Multi-class hinge loss (Weston-Watkins style, as ``torch.nn.MultiMarginLoss``).

    Every wrong class whose score comes within ``margin`` of the target class's score adds a
    (squared, for ``p=2``) hinge penalty.

    .. math::
        \ell_n = \frac{w_{y_n}}{C} \sum_{k \ne y_n} \max(0,\; m - x_{n,y_n} + x_{n,k})^p

    Args:
        input: Scores, class dimension 1.
        target: Class indices.
        p: 1 or 2.
        margin: :math:`m`.
        weight: Per-class weights, shape :math:`(C,)`; ``"mean"`` divides by
            :math:`\sum_n w_{y_n}` (PyTorch divides by :math:`N`: use ``normalizer=N`` for its value).
        ignore_index: Index targets equal to this contribute nothing.
        reduction, normalizer: As in :func:`cross_entropy`.

    Shape:
        As :func:`cross_entropy` with index targets.

    Returns:
        The loss in the input's dtype.

    Raises:
        ValueError: ``p`` not 1 or 2, and the errors of :func:`cross_entropy`.
        TypeError: A floating target.

    Examples:
        >>> import torch, losskit
        >>> scores, target = torch.tensor([[0.1, 0.2, 0.4, 0.8]]), torch.tensor([3])
        >>> losskit.multi_margin_loss(scores, target)  # (0.3 + 0.4 + 0.6) / 4
        tensor(0.3250)

    References:
        Weston and Watkins, "Multi-class Support Vector Machines", 1998; defaults follow
        ``torch.nn.MultiMarginLoss``.
    """
    check_reduction(reduction, normalizer)
    check_one_of("p", p, (1, 2))
    check_number("margin", margin)
    logits, targets, weight, unbatched = _prepare_softmax(
        input, target, ignore_index=ignore_index, weight=weight, allow_soft=False
    )
    logits = upcast(logits)
    target_score = _gather_class(logits, targets.index).unsqueeze(1)
    hinge = (margin - target_score + logits).clamp_min(0).pow(p)
    hinge = hinge.scatter(1, targets.index.unsqueeze(1), 0.0)  # the target class is not a competitor
    loss = hinge.sum(1) / logits.shape[1]
    if weight is not None:
        loss = loss * weight[targets.index]
    return _finish(loss, targets, weight, input, target, unbatched, reduction, normalizer)


# --- sigmoid (elementwise) losses -------------------------------------------------------------


def _prepare_binary(input: Tensor, target: Tensor, weight: Tensor | None) -> tuple[Tensor, Tensor]:
    """Validate an elementwise logit loss; return (logits, targets) in the compute dtype."""
    check_floating("input", input)
    check_tensor("target", target)
    check_same_shape("input", input, "target", target)
    if target.is_complex():
        raise TypeError(f"target must be real, got dtype {target.dtype}")
    logits = upcast(input)
    # 0/1 labels stored as bool or integers are common (masks); they are probabilities too.
    labels = target.to(logits.dtype) if not target.is_floating_point() else upcast(target).to(logits.dtype)
    check_in_unit_interval("target", labels)
    if weight is not None:
        check_broadcastable("weight", weight, input.shape, "input, shape", input=input)
    return logits, labels


def binary_cross_entropy(
    input: Tensor,
    target: Tensor,
    *,
    pos_weight: Tensor | None = None,
    label_smoothing: float = 0.0,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
    backend: Backend = "auto",
) -> Tensor:
    r"""Binary cross-entropy on logits, for binary and multi-label targets.

    Stable for any logit (computed with softplus, never ``log(sigmoid(x))``), and correct for
    soft targets. ``pos_weight`` scales the positive term, trading precision for recall.

    .. math::
        t' = t (1 - s) + s / 2, \qquad
        \ell = -\big[p\, t' \log \sigma(x) + (1 - t') \log(1 - \sigma(x))\big]

    Label smoothing moves each target :math:`s/2` toward 1/2: the convention of Keras, timm's
    ASL and Ultralytics ``smooth_bce``, and the same as :func:`cross_entropy`'s smoothing over
    two classes. segmentation-models-pytorch's ``smooth_factor=f`` equals ``label_smoothing=2f``.

    Args:
        input: Logits.
        target: Probabilities in :math:`[0, 1]` (floating), or 0/1 labels (bool or integer), input's shape.
        pos_weight: Weight :math:`p` of positives, broadcastable to the input (per class on the
            last dimension, as in PyTorch).
        label_smoothing: :math:`s \in [0, 1]`.
        weight: Elementwise weights broadcastable to the input.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` (see :func:`losskit.reduce_loss`).
        normalizer: With ``"mean"``, divide the weighted sum by this count instead.
        backend: ``"auto"`` | ``"torch"`` | ``"triton"``: the one-pass Triton kernel on CUDA (see
            :mod:`losskit._kernels`).

    Shape:
        - input: :math:`(*)`. - target: :math:`(*)`. - output: scalar, or :math:`(*)` with ``"none"``.

    Returns:
        The loss in the input's dtype.

    Raises:
        ValueError: Shapes that differ, targets outside :math:`[0, 1]`, non-finite logits,
            ``label_smoothing`` outside :math:`[0, 1]`, a bad reduction.
        TypeError: A non-floating input.

    Examples:
        >>> import torch, losskit
        >>> losskit.binary_cross_entropy(torch.tensor([2.0, -1.0]), torch.tensor([1.0, 0.0]), reduction="none")
        tensor([0.1269, 0.3133])

    References:
        Defaults follow ``torch.nn.BCEWithLogitsLoss``.
    """
    check_reduction(reduction, normalizer)
    _check_smoothing(label_smoothing)
    logits, labels = _prepare_binary(input, target, weight)
    if label_smoothing:
        labels = labels * (1 - label_smoothing) + label_smoothing / 2
    if pos_weight is not None:
        check_broadcastable("pos_weight", pos_weight, input.shape, "input, shape", input=input)
        pos_weight = pos_weight.to(logits.dtype)
    loss = (triton_sigmoid_focal(logits, labels, 0.0, None, None if pos_weight is None else labels * pos_weight)
            if use_triton(backend, input) else _binary_cross_entropy(logits, labels, pos_weight))
    return reduce_for(loss, input, target, reduction, weight=weight, normalizer=normalizer)


def sigmoid_focal_loss(
    input: Tensor,
    target: Tensor,
    *,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
    pos_weight: Tensor | None = None,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
    backend: Backend = "auto",
) -> Tensor:
    r"""Sigmoid focal loss for dense binary or multi-label classification (Lin et al.).

    Scales binary cross-entropy by :math:`(1 - p_t)^\gamma` so that the many easy negatives
    of dense detection stop dominating the gradient. Correct for soft targets (the factor is
    :math:`|t - p|`-like, not the hard-label shortcut) and evaluated in log space, so values
    and gradients stay finite for logits of :math:`\pm 10^4` and for :math:`\gamma < 1`.

    .. math::
        p = \sigma(x), \quad 1 - p_t = t (1 - p) + (1 - t) p, \quad
        \alpha_t = \alpha t + (1 - \alpha)(1 - t)

        \ell = \alpha_t\, (1 - p_t)^\gamma\, \mathrm{BCE}_w(x, t), \qquad
        \mathrm{BCE}_w = -\big[w_+ t \log p + (1 - t) \log(1 - p)\big]

    With ``gamma=0`` and ``alpha=None`` it equals :func:`binary_cross_entropy` (with the same
    ``pos_weight``). The loss and its gradient keep their relative precision however confident the
    logit: every term, :math:`1 - p` and the modulating factor included, comes from the logit in
    log space (a float32 loss of 1e-13 at a logit of 30 is exact to the last digits).

    Args:
        input: Logits.
        target: Probabilities in :math:`[0, 1]` (floating) or 0/1 labels (bool or integer), input's shape.
        alpha: Weight of positives :math:`\alpha \in [0, 1]`, or ``None`` for no class balancing.
        gamma: Focusing exponent :math:`\gamma \ge 0`.
        pos_weight: :math:`w_+`, a weight of the positive part of the BCE, broadcastable to the
            input (per class on the last dimension, as ``binary_cross_entropy``'s). kornia's
            ``binary_focal_loss_with_logits(pos_weight=w)`` for ``(B, C, *)`` logits is
            ``pos_weight=w.view(C, 1, ..., 1)`` (0/1 targets).
        weight: Elementwise weights broadcastable to the input.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` (see :func:`losskit.reduce_loss`). Dense
            detectors normalise by the number of positives: ``normalizer=num_pos``.
        normalizer: With ``"mean"``, divide the weighted sum by this count instead.
        backend: ``"auto"`` | ``"torch"`` | ``"triton"``: the one-pass Triton kernel on CUDA (see
            :mod:`losskit._kernels`).

    Shape:
        - input: :math:`(*)`. - target: :math:`(*)`. - output: scalar, or :math:`(*)` with ``"none"``.

    Returns:
        The loss in the input's dtype.

    Raises:
        ValueError: Shapes that differ, targets outside :math:`[0, 1]`, non-finite logits,
            ``alpha`` outside :math:`[0, 1]`, ``gamma < 0``, a bad reduction.
        TypeError: A non-floating input.

    Examples:
        >>> import torch, losskit
        >>> logits, target = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 0.0, 1.0])
        >>> losskit.sigmoid_focal_loss(logits, target, reduction="none")
        tensor([0.0005, 0.0170, 0.0169])

    References:
        Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017. Defaults (alpha 0.25,
        gamma 2) follow the paper and ``torchvision.ops.sigmoid_focal_loss``. To reproduce
        MONAI's ``FocalLoss`` pass ``alpha=None``; Ultralytics uses ``gamma=1.5``; kornia's
        ``binary_focal_loss_with_logits`` matches for 0/1 targets (its soft-target factor differs).
    """
    check_reduction(reduction, normalizer)
    check_number("gamma", gamma, low=0.0)
    if alpha is not None:
        alpha = check_number("alpha", alpha, low=0.0, high=1.0)
    logits, labels = _prepare_binary(input, target, weight)
    weighted_labels = None
    if pos_weight is not None:
        check_broadcastable("pos_weight", pos_weight, input.shape, "input, shape", input=input)
        weighted_labels = labels * pos_weight.to(logits.dtype)
    focal = triton_sigmoid_focal if use_triton(backend, input) else _SigmoidFocal.apply
    loss = focal(logits, labels, float(gamma), alpha, weighted_labels)
    return reduce_for(loss, input, target, reduction, weight=weight, normalizer=normalizer)


def asymmetric_loss(
    input: Tensor,
    target: Tensor,
    *,
    gamma_pos: float = 1.0,
    gamma_neg: float = 4.0,
    clip: float = 0.05,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Asymmetric loss (ASL) for multi-label classification (Ridnik et al.).

    Multi-label images have few positive labels and many negatives. ASL focuses positives
    and negatives with different exponents and *shifts* negative probabilities down by
    ``clip``, so that easy negatives (:math:`p <` ``clip``) are discarded entirely and
    possibly mislabelled negatives with very high :math:`p` are penalised less.

    .. math::
        p = \sigma(x), \quad p_m = \max(p - m, 0)

        \ell = -\big[t\,(1-p)^{\gamma_+} \log p + (1-t)\, p_m^{\gamma_-} \log(1 - p_m)\big]

    Args:
        input: Logits.
        target: Probabilities in :math:`[0, 1]` or 0/1 labels, input's shape.
        gamma_pos: :math:`\gamma_+ \ge 0`.
        gamma_neg: :math:`\gamma_- \ge 0`.
        clip: Probability margin :math:`m \in [0, 1)`; 0 turns the shift off.
        weight: Elementwise weights broadcastable to the input.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``. The authors' code returns the sum
            (``reduction="sum"``); timm 1.0.31 divides the sum by the batch size (``normalizer=N``).
        normalizer: With ``"mean"``, divide the weighted sum by this count instead.

    Shape:
        - input: :math:`(*)`, usually :math:`(N, C)`. - target: as input. - output: scalar or :math:`(*)`.

    Returns:
        The loss in the input's dtype.

    Raises:
        ValueError: Shapes that differ, targets outside :math:`[0, 1]`, options out of range.

    Examples:
        >>> import torch, losskit
        >>> logits, target = torch.tensor([[3.0, -2.0, -4.0]]), torch.tensor([[1.0, 0.0, 0.0]])
        >>> losskit.asymmetric_loss(logits, target, reduction="none")
        tensor([[2.3043e-03, 1.6448e-06, 0.0000e+00]])

    References:
        Ridnik et al., "Asymmetric Loss For Multi-Label Classification", ICCV 2021. Defaults
        (gamma_pos 1, gamma_neg 4, clip 0.05) follow the authors' ``AsymmetricLoss`` and timm.
    """
    check_reduction(reduction, normalizer)
    check_number("gamma_pos", gamma_pos, low=0.0)
    check_number("gamma_neg", gamma_neg, low=0.0)
    check_number("clip", clip, low=0.0, high=1.0, high_open=True)
    logits, labels = _prepare_binary(input, target, weight)
    log_p, log_not_p = TF.logsigmoid(logits), TF.logsigmoid(-logits)
    positive = torch.exp(gamma_pos * log_not_p) * log_p
    if clip:
        # 1 - p_m = min(1 - p + m, 1); the shifted probability p_m is exactly 0 below the clip.
        not_p_shifted = (torch.sigmoid(-logits) + clip).clamp_max(1.0)
        p_shifted = (torch.sigmoid(logits) - clip).clamp_min(0.0)  # not 1 - (1 - p_m), which cancels
        negative = p_shifted.clamp_min(torch.finfo(logits.dtype).tiny).pow(gamma_neg) * torch.log(not_p_shifted)
        negative = torch.where(p_shifted > 0, negative, torch.zeros_like(negative))
    else:
        negative = torch.exp(gamma_neg * log_p) * log_not_p
    loss = labels * -positive + (1 - labels) * -negative  # so that a discarded negative is +0, not -0
    return reduce_for(loss, input, target, reduction, weight=weight, normalizer=normalizer)


__all__ = [
    "asymmetric_loss",
    "balanced_softmax_loss",
    "binary_cross_entropy",
    "cross_entropy",
    "ldam_loss",
    "logit_adjusted_cross_entropy",
    "multi_margin_loss",
    "poly1_cross_entropy",
    "sigmoid_focal_loss",
    "softmax_focal_loss",
]

