r"""Divergences between a predicted class distribution (logits) and a target distribution.

Both losses take the *student* as logits over the class dimension 1 (layout :math:`(N, C)`,
:math:`(N, C, d_1, \dots, d_k)`, or an unbatched :math:`(C,)`), turn them into
:math:`Q = \mathrm{softmax}(x)` in log space, and compare :math:`Q` with the *target*
:math:`P` given as probabilities (or as log-probabilities with ``log_target=True``) of the
input's shape. Since ``log_softmax`` of log-probabilities is the identity, log-probabilities
are valid inputs too.

The natural unit is one value per sample (per position for dense layouts): the divergence
summed over the class dimension. ``reduction="mean"`` is therefore the mean KL per sample,
which is what PyTorch calls ``reduction="batchmean"`` for 2-D input.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from losskit._core.checks import (
    check_bool,
    check_broadcastable,
    check_floating,
    check_has_class_dim,
    check_in_unit_interval,
    check_number,
    check_same_shape,
    check_tensor,
    checks_enabled,
)
from losskit._core.numerics import exp_tail, finite_log, log_softmax, upcast, weighted_log
from losskit._core.reduction import Reduction, check_reduction, reduce_loss

# --- shared preamble ---------------------------------------------------------------------------


class _Distributions(NamedTuple):
    """Validated inputs in the compute dtype, all of the input's shape except ``class_dim``."""

    p: Tensor  # target probabilities P
    log_p: Tensor  # log P, floored at the dtype's most negative finite number where P = 0
    log_q: Tensor  # log softmax(input), not floored: -inf where a logit is -inf (weigh it with weighted_log)
    class_dim: int


def _check_log_probabilities(name: str, x: Tensor) -> None:
    """Log-probabilities must be <= 0 (``-inf`` allowed); NaN and ``+inf`` fail too."""
    if not checks_enabled() or x.numel() == 0:
        return
    if not bool((x <= 0).all()):
        raise ValueError(f"{name} must hold log-probabilities (<= 0, -inf allowed) with log_target=True; "
                         f"found values from {x.min().item():g} to {x.max().item():g}")


def _distributions(
    input: Tensor,
    target: Tensor,
    *,
    log_target: bool,
    weight: Tensor | None,
) -> _Distributions:
    """Validate the arguments shared by the divergences and return P, log P and log Q.

    The target's log is floored at ``finfo(dtype).min`` (where ``P`` is 0), the prediction's is
    not: the losses weight each log with :func:`weighted_log`, so a ``0 * log 0`` term is exactly 0
    with a zero gradient, and target mass on a class of probability 0 is an infinite loss.
    """
    check_floating("input", input)
    check_tensor("target", target)
    check_bool("log_target", log_target)
    check_has_class_dim("input", input)
    if not target.is_floating_point():
        what = "log-probabilities" if log_target else "probabilities"
        raise TypeError(f"target must be a floating-point tensor of class {what} with input's shape "
                        f"{tuple(input.shape)}, got dtype {target.dtype} (for class-index targets use "
                        f"losskit.cross_entropy)")
    check_same_shape("input", input, "target", target)
    class_dim = 0 if input.dim() == 1 else 1
    if weight is not None:
        check_tensor("weight", weight)
        unit_shape = input.shape[:class_dim] + input.shape[class_dim + 1:]
        check_broadcastable("weight", weight, unit_shape, "the per-sample loss, shape")
    if log_target:
        _check_log_probabilities("target", target)
    else:
        check_in_unit_interval("target", target)

    logits = upcast(input)
    floor = torch.finfo(logits.dtype).min
    log_q = log_softmax(logits, class_dim)  # -inf stays: under target mass it is an infinite loss
    t = upcast(target).to(logits.dtype)  # computed in the input's compute dtype, like every loss
    if log_target:
        log_p = finite_log(t)
        p = log_p.exp()  # exp(floor) = 0 exactly
    else:
        p = t
        positive = p > 0
        # log of a where-guarded argument: log(0) never runs, so its gradient (1/0) never appears.
        log_p = torch.where(positive, torch.log(torch.where(positive, p, 1.0)), floor)
    return _Distributions(p, log_p, log_q, class_dim)


def kl_terms(p: Tensor, log_p: Tensor, log_m: Tensor, m: Tensor) -> Tensor:
    r"""The classwise terms :math:`p \log(p / m) - p + m \ge 0`, exact near :math:`p = m`.

    Summed over the classes they give :math:`\mathrm{KL}(P \| M) + \sum m - \sum p`, a sum of
    non-negative terms. The textbook :math:`\sum p \log(p/m)` cancels to second order near
    convergence (its first-order terms sum to about 0), which leaves a float32 KL of 5e-5 with a
    few percent of error per sample; here each term is :math:`p\, \psi(\delta)`, with
    :math:`\delta = \log p - \log m` and :math:`\psi(\delta) = e^{-\delta} - 1 + \delta`
    (:func:`~losskit._core.numerics.exp_tail`). What remains is the rounding of
    :math:`\log p` and :math:`\log m` themselves: relative error about
    :math:`2 \epsilon |\log p| / |\delta|`. Where :math:`p = 0` the term is :math:`m`; where
    :math:`m = 0 < p` it is infinite.
    """
    delta = log_p - log_m
    near = delta.abs() < 0.5  # far from it, p delta - p + m has no cancellation (and e^-delta may overflow)
    # Where p = 0 the log factor is not read (weighted_log): m = 0 there too would make 0 * inf.
    far = p * weighted_log(delta, p) - p + m
    return torch.where(near, p * exp_tail(torch.where(near, -delta, torch.zeros_like(delta))), far)


def _reduce(per_class: Tensor, d: _Distributions, input: Tensor, target: Tensor, weight: Tensor | None,
            reduction: Reduction, normalizer: float | Tensor | None, offset: Tensor | None = None) -> Tensor:
    """Sum over the classes (the natural unit), add ``offset`` per sample, and reduce."""
    per_sample = per_class.sum(d.class_dim)
    if offset is not None:
        per_sample = per_sample + offset
    return reduce_loss(per_sample, reduction, weight=weight, normalizer=normalizer,
                       out_dtype=input.dtype, inputs={"input": input, "target": target})


# --- losses --------------------------------------------------------------------------------------


def kl_div(
    input: Tensor,
    target: Tensor,
    *,
    log_target: bool = False,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Kullback-Leibler divergence :math:`\mathrm{KL}(P \,\|\, Q)` of a target from the softmax of logits.

    How many extra nats it costs, on average, to code samples of the target :math:`P` with a
    code built for the prediction :math:`Q`. It is 0 exactly when :math:`Q = P` and grows
    without bound as :math:`Q` puts little mass where :math:`P` has some (mass-covering). It
    is the knowledge-distillation loss: ``kl_div(student_logits / T, softmax(teacher_logits / T)) * T**2``
    (Hinton et al.), and, up to the target's entropy, soft-target cross-entropy.

    .. math::
        Q = \mathrm{softmax}(x), \qquad
        \ell_n = \sum_c P_{n,c} \big(\log P_{n,c} - \log Q_{n,c}\big)

    with :math:`0 \log 0 = 0`. ``input`` is logits; **log-space inputs are supported**: log
    probabilities (for example ``log_softmax`` outputs, or a distribution's log-probabilities)
    give the same value, because ``log_softmax`` leaves them unchanged. Half and bfloat16
    inputs are computed in float32. A logit of ``-inf`` masks its class: where the target is
    0 there the term is 0 with a finite gradient. A target with mass on a masked class has
    infinite KL: the loss is ``inf``, which the finiteness value check reports naming ``input``.
    The target is not renormalised.

    **PyTorch's** ``reduction="mean"`` **is not the KL.** ``torch.nn.functional.kl_div``
    takes log-probabilities, returns elementwise terms, and its ``"mean"`` divides the sum by
    :math:`N \cdot C` (every element), which is :math:`C` times smaller than the mean KL per
    sample. Here ``"mean"`` is the mean over samples, PyTorch's ``"batchmean"`` for
    :math:`(N, C)` input. To reproduce PyTorch:

    ====================================================  ==================================================
    PyTorch ``F.kl_div(log_softmax(x, 1), p, ...)``       losskit
    ====================================================  ==================================================
    ``reduction="batchmean"``, input :math:`(N, C)`       ``kl_div(x, p)``
    ``reduction="batchmean"``, input :math:`(N, C, *d)`   ``kl_div(x, p, normalizer=N)``
    ``reduction="mean"``                                  ``kl_div(x, p, normalizer=x.numel())``, or
                                                          ``kl_div(x, p, reduction="sum") / x.numel()``
    ``reduction="sum"``                                   ``kl_div(x, p, reduction="sum")``
    ``reduction="none"``                                  elementwise; ``kl_div(x, p, reduction="none")``
                                                          is its sum over dim 1
    ====================================================  ==================================================

    Args:
        input: Logits :math:`x` (or log-probabilities) of the prediction :math:`Q`, class dimension 1
            (dimension 0 when unbatched).
        target: The target distribution :math:`P`: probabilities in :math:`[0, 1]` with the input's
            shape, or log-probabilities with ``log_target=True``.
        log_target: ``target`` holds :math:`\log P` (PyTorch's name). Useful when the target is a
            teacher's ``log_softmax``: no ``exp``/``log`` round trip, and :math:`\log P = -\infty`
            is allowed.
        weight: Per-sample weights broadcastable to the per-sample loss :math:`(N, d_1, \dots, d_k)`.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` (see :func:`losskit.reduce_loss`); ``"mean"``
            is the weighted mean over samples.
        normalizer: With ``"mean"``, divide the weighted sum by this count instead (for example
            the tokens of all gradient-accumulation steps).

    Shape:
        - input: :math:`(N, C)`, :math:`(N, C, d_1, \dots, d_k)` or :math:`(C,)`.
        - target: the input's shape.
        - output: scalar, or :math:`(N, d_1, \dots, d_k)` (:math:`()` unbatched) with
          ``reduction="none"``: one KL per sample.

    Returns:
        The loss in the input's dtype. Empty input gives 0 (with a gradient), never NaN.

    Raises:
        ValueError: A target whose shape differs from the input's, target probabilities outside
            :math:`[0, 1]` (log-probabilities above 0 with ``log_target=True``), NaN or ``+inf``
            logits, a scalar input, a weight that does not broadcast to the per-sample loss, a
            bad ``reduction`` or ``normalizer``.
        TypeError: A non-floating input or target, a non-bool ``log_target``.

    Examples:
        >>> import torch, losskit
        >>> logits = torch.tensor([[0.0, 1.0986123]])  # Q = softmax = [1/4, 3/4]
        >>> losskit.kl_div(logits, torch.tensor([[0.5, 0.5]]))  # 0.5 ln 2 + 0.5 ln(2/3) = 0.5 ln(4/3)
        tensor(0.1438)
        >>> log_q = torch.log_softmax(logits, dim=1)  # log-space input: the same value
        >>> losskit.kl_div(log_q, torch.tensor([[0.5, 0.5]]).log(), log_target=True)
        tensor(0.1438)

    References:
        Kullback and Leibler, "On Information and Sufficient Statistics", Ann. Math. Statist. 1951.
        Hinton et al., "Distilling the Knowledge in a Neural Network", 2015. ``log_target`` follows
        ``torch.nn.functional.kl_div``; the reduction differs as tabled above. Liger-Kernel's
        ``LigerKLDIVLoss`` defaults to ``"batchmean"`` (our ``"mean"``) and clamps the target at
        1e-10; Keras clips both distributions to :math:`[10^{-7}, 1]`; neither clamp is applied here.
    """
    check_reduction(reduction, normalizer)
    d = _distributions(input, target, log_target=log_target, weight=weight)
    # KL(P || Q) = sum_k [p log(p/q) - p + q] + (sum p - 1), with sum q = 1: non-negative terms,
    # and the target's own distance from a distribution, summed in float64 (float32 would round it
    # by more than a small divergence).
    offset = (d.p.sum(d.class_dim, dtype=torch.float64) - 1).to(d.p.dtype)
    return _reduce(kl_terms(d.p, d.log_p, d.log_q, d.log_q.exp()), d, input, target, weight, reduction,
                   normalizer, offset)


def js_div(
    input: Tensor,
    target: Tensor,
    *,
    beta: float = 0.5,
    log_target: bool = False,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Generalized Jensen-Shannon divergence :math:`\mathrm{JS}_\beta(P \,\|\, Q)` of a target and a softmax.

    Both distributions are compared with their mixture :math:`M`, so the divergence is finite
    and bounded even where one of them is 0, unlike KL. ``beta`` trades the two directions:
    small :math:`\beta` behaves like the mass-covering forward :math:`\mathrm{KL}(P\|Q)`,
    :math:`\beta` near 1 like the mode-seeking reverse :math:`\mathrm{KL}(Q\|P)`. It is the
    distillation divergence of GKD (Agarwal et al.), with :math:`P` the teacher and :math:`Q`
    the student. ``beta=0.5`` is the classic symmetric Jensen-Shannon divergence, bounded by
    :math:`\log 2`.

    .. math::
        Q = \mathrm{softmax}(x), \qquad M = \beta P + (1 - \beta) Q

        \ell_n = \beta\, \mathrm{KL}(P_n \,\|\, M_n) + (1 - \beta)\, \mathrm{KL}(Q_n \,\|\, M_n)

    :math:`\log M` is computed in log space as
    :math:`\operatorname{logaddexp}(\log\beta + \log P,\ \log(1-\beta) + \log Q)`, with
    :math:`0 \log 0 = 0`; values and gradients stay finite for ``-inf`` logits and logits of
    :math:`\pm 10^4`. Log-space inputs are supported (log-probabilities give the same value as
    logits). ``beta`` must lie in the open interval :math:`(0, 1)`: at either end
    :math:`M` equals one of the two distributions and :math:`\mathrm{JS}_\beta` vanishes
    identically; :math:`\mathrm{JS}_\beta / \beta \to \mathrm{KL}(P\|Q)` as :math:`\beta \to 0`
    and :math:`\mathrm{JS}_\beta / (1-\beta) \to \mathrm{KL}(Q\|P)` as :math:`\beta \to 1`. For
    those use :func:`kl_div`: ``kl_div(student_logits, teacher_probs)`` for the forward KL,
    ``kl_div(teacher_log_probs, student_probs)`` for the reverse one.

    Args:
        input: Logits :math:`x` (or log-probabilities) of the student :math:`Q`, class dimension 1
            (dimension 0 when unbatched).
        target: The teacher :math:`P`: probabilities in :math:`[0, 1]` with the input's shape, or
            log-probabilities with ``log_target=True``.
        beta: Mixture weight :math:`\beta \in (0, 1)` of the target.
        log_target: ``target`` holds :math:`\log P`.
        weight: Per-sample weights broadcastable to the per-sample loss :math:`(N, d_1, \dots, d_k)`.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` (see :func:`losskit.reduce_loss`).
        normalizer: With ``"mean"``, divide the weighted sum by this count instead.

    Shape:
        - input: :math:`(N, C)`, :math:`(N, C, d_1, \dots, d_k)` or :math:`(C,)`.
        - target: the input's shape.
        - output: scalar, or :math:`(N, d_1, \dots, d_k)` (:math:`()` unbatched) with
          ``reduction="none"``.

    Returns:
        The loss in the input's dtype. Empty input gives 0 (with a gradient), never NaN.

    Raises:
        ValueError: ``beta`` outside :math:`(0, 1)`, and the errors of :func:`kl_div`.
        TypeError: A non-number ``beta``, and the errors of :func:`kl_div`.

    Examples:
        >>> import torch, losskit
        >>> logits = torch.tensor([[0.0, 1.0986123]])  # Q = [1/4, 3/4], P = [1/2, 1/2], M = [3/8, 5/8]
        >>> losskit.js_div(logits, torch.tensor([[0.5, 0.5]]))  # 1.5 ln 2 - 0.625 ln 5 = 0.03383
        tensor(0.0338)

    References:
        Agarwal et al., "On-Policy Distillation of Language Models: Learning from Self-Generated
        Mistakes" (GKD), ICLR 2024 (the generalized :math:`\mathrm{JS}_\beta`). Lin, "Divergence
        Measures Based on the Shannon Entropy", IEEE Trans. Inf. Theory 1991 (:math:`\beta = 1/2`).
        The convention (:math:`M = \beta P + (1-\beta) Q`, :math:`P` the teacher, default 0.5) is
        that of TRL's ``GKDTrainer`` and Liger-Kernel's ``LigerJSD``; both also accept ``beta=0``
        and ``beta=1`` and then switch to the forward and reverse KL, which are not values of the
        formula (it is 0 there): call :func:`kl_div` for those.
    """
    check_reduction(reduction, normalizer)
    try:
        beta = check_number("beta", beta, low=0.0, high=1.0, low_open=True, high_open=True)
    except ValueError as error:
        raise ValueError(f"{error}. JS_beta vanishes identically at beta=0 and beta=1; for the forward "
                         f"KL(P || Q) or the reverse KL(Q || P) use losskit.kl_div") from None
    d = _distributions(input, target, log_target=log_target, weight=weight)
    q = d.log_q.exp()
    log_m = torch.logaddexp(math.log(beta) + d.log_p, math.log1p(-beta) + d.log_q)
    # beta (p log(p/m) - p + m) + (1 - beta)(q log(q/m) - q + m) is the textbook term (the m, p, q
    # parts add up to 0 in every class), as a sum of non-negative terms.
    m = log_m.exp()
    per_class = beta * kl_terms(d.p, d.log_p, log_m, m) + (1 - beta) * kl_terms(q, d.log_q, log_m, m)
    return _reduce(per_class, d, input, target, weight, reduction, normalizer)


__all__ = ["js_div", "kl_div"]
