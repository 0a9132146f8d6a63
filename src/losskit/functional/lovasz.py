r"""Lovász losses: convex surrogates of the Jaccard (IoU) loss that are optimised directly.

The Jaccard loss :math:`\Delta_J` of a set of mispredicted pixels is submodular, so its Lovász
extension :math:`\bar\Delta_J` is a convex, piecewise-linear function of a vector of pixel
errors :math:`m \in \mathbb{R}_{\ge 0}^P` that equals :math:`\Delta_J` on binary vectors
(Berman et al., CVPR 2018). With the errors sorted in decreasing order,
:math:`m_{\pi_1} \ge \dots \ge m_{\pi_P}`,

.. math::
    \bar\Delta_J(m) = \sum_{i=1}^P m_{\pi_i}\, g_i, \qquad
    g_i = J_i - J_{i-1}, \quad
    J_i = 1 - \frac{|F| - \sum_{j \le i} f_{\pi_j}}{|F| + \sum_{j \le i} (1 - f_{\pi_j})}, \quad J_0 = 0,

where :math:`f \in \{0, 1\}^P` is the foreground indicator of the class and :math:`|F| = \sum f`
(:math:`g` is the gradient of the extension at :math:`m`: Algorithm 1 of the paper).

Two members:

* :func:`lovasz_softmax_loss` (multi-class): :math:`m_i = |f_{ic} - p_{ic}|` for each class
  :math:`c`, with :math:`p` the softmax (or sigmoid) probabilities.
* :func:`lovasz_hinge_loss` (binary, one logit per channel): :math:`m_i = \max(0, 1 - x_i s_i)`
  with :math:`s_i = 2 f_i - 1`.

Implementation: every (class) or (image, class) row is sorted at once as one ``(rows, pixels)``
tensor; ignored pixels get error 0 and foreground 0, which places them after every error that
counts (or among zero errors) and leaves the value and gradient unchanged, so the forward pass
needs no boolean-mask indexing and no host synchronisation (``tests/test_lovasz.py`` proves the
equivalence against cropping the ignored pixels out).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from losskit._core.checks import (
    check_bool,
    check_broadcastable,
    check_class_indices,
    check_class_vector,
    check_floating,
    check_ignore_index,
    check_in_unit_interval,
    check_one_of,
    check_same_device,
    check_tensor,
)
from losskit._core.dense import dense_target, drop_background, miss, one_hot, probabilities_and_misses
from losskit._core.numerics import compute_dtype, ignored_without_gradient, upcast
from losskit._core.reduction import Reduction, check_reduction, reduce_loss

CLASSES = ("present", "all")


def _lovasz_rows(errors: Tensor, fg: Tensor) -> Tensor:
    r""":math:`\bar\Delta_J` of each row: ``errors`` and ``fg`` are ``(..., P)``; returns ``(...)``.

    ``errors`` must be >= 0. Rows without pixels give 0. The Jaccard weights come from the sorted
    foreground only (never from class indices), and :math:`|F| + \sum (1 - f) \ge 1` from the first
    pixel on, so no division by zero can happen.
    """
    errors_sorted, perm = torch.sort(errors, dim=-1, descending=True)
    # The Jaccard weights are differences of neighbouring Jaccard indices over P pixels, each about
    # 1/P: in float32 a million pixels leave them a few digits (5e-3 error in the gradient), so the
    # cumulative counts and the differences are taken in float64 (vectors of P, beside the sort).
    fg_sorted = fg.gather(-1, perm).to(torch.float64)
    gts = fg_sorted.sum(-1, keepdim=True)
    intersection = gts - fg_sorted.cumsum(-1)
    union = gts + (1.0 - fg_sorted).cumsum(-1)
    jaccard = 1.0 - intersection / union
    grad = torch.cat([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], dim=-1)
    return (errors_sorted * grad.to(errors_sorted.dtype)).sum(-1)


def _rows(x: Tensor, per_image: bool) -> Tensor:
    """``(N, K, P)`` to rows: ``(N, K, P)`` per image, ``(K, N * P)`` pooled over the batch."""
    return x if per_image else x.transpose(0, 1).reshape(x.shape[1], -1)


def _check_weight(weight: Tensor | None, unit: tuple[int, ...], input: Tensor) -> None:
    if weight is not None:
        check_tensor("weight", weight)
        check_broadcastable("weight", weight, torch.Size(unit), "the loss's natural unit, shape", input=input)


def _unit_weight(weight: Tensor | None, class_weight: Tensor | None) -> Tensor | None:
    if class_weight is None:
        return weight
    return class_weight if weight is None else weight * class_weight


def lovasz_softmax_loss(
    input: Tensor,
    target: Tensor,
    *,
    activation: str | None = "softmax",
    classes: str = "present",
    per_image: bool = False,
    include_background: bool = True,
    ignore_index: int | None = None,
    class_weight: Tensor | None = None,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Lovász-Softmax loss: the convex Lovász extension of the per-class Jaccard loss (Berman et al.).

    Optimises the mean IoU directly: for each class the pixel errors :math:`|f - p|` are sorted
    and weighted by the gradient of the Lovász extension of the Jaccard loss, so the loss of a
    class equals :math:`1 - \mathrm{IoU}` whenever the probabilities are exactly 0 or 1 and is a
    tight convex surrogate in between.

    .. math::
        \ell_c = \bar\Delta_{J_c}(m^c), \qquad m^c_i = |f_{ic} - p_{ic}|, \qquad
        p = \operatorname{softmax}(x) \ \text{(or sigmoid, or given)},

    where :math:`\bar\Delta_J(m) = \sum_i m_{\pi_i} (J_i - J_{i-1})` with :math:`\pi` sorting
    :math:`m` in decreasing order and :math:`J_i` the Jaccard loss of the :math:`i` largest errors,
    computed from the sorted **foreground indicator** :math:`f_{\cdot c}` of the class (see the
    module docstring). Pixels are pooled over the whole batch (``per_image=False``, one value per
    class, the paper's and SMP's default) or taken per image (``per_image=True``, one value per
    (image, class)).

    ``classes="present"`` scores only classes that occur in the (non-ignored) target of their unit
    (of the batch, or of the image with ``per_image=True``); absent classes are ignored units: 0
    under ``"none"``, counted in no mean. ``classes="all"`` scores every class; a class absent from
    the target then costs its largest probability :math:`\max_i p_{ic}` (the extension at
    :math:`|F| = 0`). Units without any non-ignored pixel are always ignored. Soft (floating)
    targets use the same formula with :math:`f \in [0, 1]`; "present" then means
    :math:`\sum_i f_{ic} > 0`.

    Args:
        input: Logits (or probabilities with ``activation=None``), class dimension 1.
        target: Class indices (integer dtype) of shape :math:`(N, *)` or :math:`(N, 1, *)`, or
            one-hot / soft labels with the input's shape (floating dtype).
        activation: ``"softmax"`` (over dim 1), ``"sigmoid"``, or ``None`` (``input`` holds
            probabilities). Applied before the background is dropped.
        classes: ``"present"`` (classes in the target) or ``"all"``.
        per_image: One loss per (image, class) instead of one per class over the batch.
        include_background: ``False`` drops channel 0 (after the activation).
        ignore_index: Index-target pixels with this value are left out entirely (as if cropped).
        class_weight: Per-class weights, shape :math:`(C,)` over all input channels (entry 0 is
            dropped with the background); they scale each class's loss and its share of the mean.
        weight: Per-unit weights broadcastable to the natural unit (:math:`(C',)`, or
            :math:`(N, C')` with ``per_image=True``).
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` (see :func:`losskit.reduce_loss`).
        normalizer: With ``"mean"``, divide the weighted sum by this count instead.

    Shape:
        - input: :math:`(N, C, d_1, \dots, d_k)`, :math:`k \ge 1`.
        - target: :math:`(N, d_1, \dots, d_k)` integer, or the input's shape floating.
        - output: scalar; with ``reduction="none"`` the natural unit :math:`(C',)`, or
          :math:`(N, C')` with ``per_image=True``, where :math:`C' = C` (or :math:`C - 1` without
          the background).

    Returns:
        The loss in the input's dtype (computed in float32 for half inputs). Ignored units (absent
        classes under ``"present"``, units without valid pixels) are 0 under ``"none"`` and left
        out of the mean; an empty batch or a fully ignored one gives 0 with a gradient.

    Raises:
        ValueError: Shapes that do not match, a class index out of range, an unknown ``classes``,
            ``activation`` or ``reduction``, a ``class_weight`` of the wrong length.
        TypeError: A non-floating input, a boolean target, a non-bool ``per_image``.

    To reproduce a peer, pass:
        - kornia 0.9.0 ``lovasz_softmax_loss(pred, target)``: ``classes="all", per_image=True``
          (kornia ``weight=w``: add ``class_weight=w, normalizer=N * C``, since kornia divides by
          :math:`C` whatever the weights). kornia <= 0.8.2 sorted the class-index target instead
          of each class's foreground and is wrong for every class but 1; do not reproduce it.
        - SMP ``LovaszLoss("multiclass", per_image=p, ignore_index=i)``: the defaults with
          ``per_image=p, ignore_index=i`` (``classes="present"``). With ``per_image=True`` SMP
          averages images' class means (an image with no valid pixel counts as 0); losskit averages
          all present (image, class) units, which differs when images have different numbers of
          present classes: use ``reduction="none"`` and average per image to match exactly.
        - Berman's reference ``lovasz_softmax(probas, labels)``: ``activation=None``, the defaults.

    Examples:
        >>> import torch, losskit
        >>> # probabilities of 2 pixels for 2 classes; targets [0, 1]
        >>> p = torch.tensor([[[0.8, 0.4], [0.2, 0.6]]])  # (N=1, C=2, P=2)
        >>> t = torch.tensor([[0, 1]])
        >>> # class 0: errors [0.2, 0.4] -> sorted [0.4 (bg), 0.2 (fg)], |F| = 1,
        >>> #   J = [1 - 1/2, 1 - 0/2] = [0.5, 1.0], g = [0.5, 0.5] -> 0.4*0.5 + 0.2*0.5 = 0.3
        >>> # class 1: errors [0.2, 0.4] -> sorted [0.4 (fg), 0.2 (bg)],
        >>> #   J = [1 - 0/1, 1 - 0/2] = [1, 1], g = [1, 0] -> 0.4
        >>> losskit.lovasz_softmax_loss(p, t, activation=None, reduction="none")
        tensor([0.3000, 0.4000])
        >>> losskit.lovasz_softmax_loss(p, t, activation=None)
        tensor(0.3500)

    References:
        Berman, Rannen Triki, Blaschko, "The Lovász-Softmax loss: A tractable surrogate for the
        optimization of the intersection-over-union measure in neural networks", CVPR 2018.
        Defaults (batch-pooled, present classes) follow the paper's code and SMP.
    """
    check_reduction(reduction, normalizer)
    check_one_of("classes", classes, CLASSES)
    check_bool("per_image", per_image)
    check_bool("include_background", include_background)
    check_floating("input", input)
    labels = dense_target(input, target, ignore_index=ignore_index, compute_dtype=compute_dtype(input.dtype))
    keep = None if labels.valid is None else labels.valid.unsqueeze(1)
    # Ignored pixels may hold NaN: their gradient is 0.
    probs, misses = probabilities_and_misses(ignored_without_gradient(input, keep), activation)
    num_classes = input.shape[1]
    kept = num_classes if include_background else num_classes - 1
    _check_weight(weight, (input.shape[0], kept) if per_image else (kept,), input)
    if class_weight is not None:
        check_class_vector("class_weight", class_weight, num_classes, input=probs)
        class_weight = drop_background(class_weight.to(device=probs.device, dtype=probs.dtype).unsqueeze(0),
                                       include_background).squeeze(0)
    if weight is not None:
        weight = weight.to(device=probs.device, dtype=probs.dtype)
    fg = drop_background(one_hot(labels, num_classes, probs.dtype), include_background)
    probs = drop_background(probs, include_background)
    misses = drop_background(misses, include_background)

    n, k = probs.shape[:2]
    p = math.prod(probs.shape[2:])
    errors = miss(probs, misses, fg).reshape(n, k, p)  # |fg - p|, exact where p is near 1
    fg = fg.reshape(n, k, p)
    if labels.valid is not None:
        valid = labels.valid.reshape(n, 1, p)
        errors = torch.where(valid, errors, errors.new_zeros(()))  # fg is already 0 there
        counts = valid.sum(-1)  # (N, 1)
        counts = counts if per_image else counts.sum(0)  # (1,) pooled
    else:
        pixels = probs.shape[-1] * (1 if per_image else n)
        counts = torch.full((n, 1) if per_image else (1,), pixels, device=probs.device)
    loss = _lovasz_rows(_rows(errors, per_image), _rows(fg, per_image))
    mask = counts > 0
    if classes == "present":
        mask = mask & (_rows(fg, per_image).sum(-1) > 0)
    mask = mask.expand(loss.shape)
    return reduce_loss(loss, reduction, weight=_unit_weight(weight, class_weight), mask=mask,
                       normalizer=normalizer, out_dtype=input.dtype, inputs={"input": input, "target": target})


def _binary_target(input: Tensor, target: Tensor, ignore_index: int | None,
                   dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
    """Binary labels with the input's shape in ``dtype`` (0 where ignored), and the valid mask."""
    check_ignore_index(ignore_index)
    check_tensor("target", target)
    check_same_device("input", input, "target", target)
    if target.shape != input.shape:
        if input.shape[1] == 1 and target.shape == (input.shape[0], *input.shape[2:]):
            target = target.unsqueeze(1)  # (N, *spatial) for one channel: the kornia layout
        else:
            extra = (f" or {(input.shape[0], *input.shape[2:])} (one channel)" if input.shape[1] == 1 else "")
            raise ValueError(f"target must have the input's shape {tuple(input.shape)}{extra}, "
                             f"got {tuple(target.shape)}")
    if target.is_complex():
        raise TypeError(f"target must hold binary labels (floating, integer or bool), got dtype {target.dtype}")
    if target.is_floating_point():
        if ignore_index is not None:
            raise ValueError("ignore_index applies to integer targets; give integer labels 0/1 to ignore pixels")
        check_in_unit_interval("target", target)
        return target.to(dtype), None
    if target.dtype == torch.bool:
        if ignore_index is not None:
            raise ValueError("ignore_index applies to integer targets, got a bool target")
        return target.to(dtype), None
    check_class_indices("target", target, 2, ignore_index)  # binary labels: 0 or 1
    if ignore_index is None:
        return target.to(dtype), None
    valid = target != ignore_index
    return torch.where(valid, target, torch.zeros_like(target)).to(dtype), valid


def lovasz_hinge_loss(
    input: Tensor,
    target: Tensor,
    *,
    per_image: bool = True,
    ignore_index: int | None = None,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Lovász hinge loss: the Lovász extension of the binary Jaccard loss at hinge errors (Berman et al.).

    The binary counterpart of :func:`lovasz_softmax_loss` for one logit per channel: each
    pixel's hinge error :math:`\max(0, 1 - x_i s_i)`, :math:`s_i = 2 f_i - 1`, is weighted by the
    gradient of the Lovász extension of the Jaccard loss of the foreground (sorted errors, sorted
    labels). Correct logits of magnitude at least 1 give 0, and the loss grows linearly with
    the margin violations, most steeply where they hurt the IoU most.

    .. math::
        \ell = \sum_i \max(0, m_{\pi_i})\, (J_i - J_{i-1}), \qquad m_i = 1 - x_i (2 f_i - 1),

    with :math:`\pi` sorting :math:`m` decreasingly and :math:`J_i` the Jaccard loss of the
    :math:`i` largest errors (module docstring). Each channel is its own binary problem
    (multi-label segmentation): the natural unit is one value per (image, channel) with
    ``per_image=True`` (the paper's default for the hinge) or one per channel with the batch
    pooled (``per_image=False``). A unit without foreground scores the largest hinge error
    (the extension at :math:`|F| = 0`); a unit without any non-ignored pixel is ignored.

    Args:
        input: Logits, shape :math:`(N, C, d_1, \dots, d_k)`; each channel is a binary problem.
        target: Labels with the input's shape: floating in :math:`[0, 1]` (soft labels use the
            same formula), bool, or integer 0/1 (with ``ignore_index``). With one channel,
            :math:`(N, d_1, \dots, d_k)` is accepted too.
        per_image: One loss per (image, channel) instead of one per channel over the batch.
        ignore_index: Integer-target pixels with this value are left out entirely.
        weight: Per-unit weights broadcastable to the natural unit.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` (see :func:`losskit.reduce_loss`).
        normalizer: With ``"mean"``, divide the weighted sum by this count instead.

    Shape:
        - input: :math:`(N, C, d_1, \dots, d_k)`, :math:`k \ge 1`.
        - target: the input's shape, or :math:`(N, d_1, \dots, d_k)` when :math:`C = 1`.
        - output: scalar; with ``reduction="none"`` :math:`(N, C)` (``per_image=True``) or
          :math:`(C,)`.

    Returns:
        The loss in the input's dtype (computed in float32 for half inputs). Units without a valid
        pixel are 0 under ``"none"`` and left out of the mean; an empty or fully ignored batch
        gives 0 with a gradient.

    Raises:
        ValueError: A target of the wrong shape or with labels other than 0/1 (or
            ``ignore_index``), a bad ``reduction``.
        TypeError: A non-floating input, a complex target, a non-bool ``per_image``.

    To reproduce a peer, pass:
        - kornia 0.9.0 ``lovasz_hinge_loss(pred, target)`` (``pred`` :math:`(N, 1, H, W)`): the
          defaults (``per_image=True``, mean over images).
        - SMP ``LovaszLoss("binary", per_image=p, ignore_index=i)`` (one channel):
          ``per_image=p, ignore_index=i``.
        - SMP ``LovaszLoss("multilabel", ...)`` pools all channels into one hinge (per image, or
          over the batch); losskit keeps channels apart. To match, flatten the channels first:
          ``lovasz_hinge_loss(x.reshape(N, 1, -1), t.reshape(N, 1, -1), per_image=p)``.
          With ``per_image=True`` SMP also counts a fully ignored image as 0 in its mean, where
          losskit leaves it out.

    Examples:
        >>> import torch, losskit
        >>> x = torch.tensor([[[2.0, -0.5]]])  # (N=1, C=1, P=2) logits
        >>> t = torch.tensor([[[1.0, 0.0]]])
        >>> # hinge errors 1 - x*s: [1 - 2, 1 - 0.5] = [-1, 0.5] -> relu [0, 0.5]; sorted [0.5 (bg), 0 (fg)]
        >>> # |F| = 1: J = [1 - 1/2, 1 - 0/2] = [0.5, 1], g = [0.5, 0.5] -> 0.5 * 0.5 = 0.25
        >>> losskit.lovasz_hinge_loss(x, t)
        tensor(0.2500)

    References:
        Berman, Rannen Triki, Blaschko, "The Lovász-Softmax loss", CVPR 2018 (Lovász hinge, Sec. 3.1).
        Yu, Blaschko, "Learning submodular losses with the Lovász hinge", ICML 2015.
    """
    check_reduction(reduction, normalizer)
    check_bool("per_image", per_image)
    check_floating("input", input)
    if input.dim() < 3:
        raise ValueError(f"input must have shape (N, C, *spatial) with at least one spatial dimension, "
                         f"got {tuple(input.shape)}")
    logits = upcast(input)
    labels, valid = _binary_target(input, target, ignore_index, logits.dtype)
    logits = ignored_without_gradient(logits, valid)  # ignored pixels may hold NaN
    _check_weight(weight, tuple(input.shape[:2]) if per_image else (input.shape[1],), input)
    if weight is not None:
        weight = weight.to(device=logits.device, dtype=logits.dtype)
    n, k = logits.shape[:2]
    p = math.prod(logits.shape[2:])
    logits = logits.reshape(n, k, p)
    fg = labels.reshape(n, k, p)
    errors = torch.relu(1.0 - logits * (2.0 * fg - 1.0))
    if valid is not None:
        valid = valid.reshape(n, k, p)
        errors = torch.where(valid, errors, errors.new_zeros(()))  # fg is already 0 there
        counts = _rows(valid.to(fg.dtype), per_image).sum(-1)
    else:
        pixels = logits.shape[-1] * (1 if per_image else n)
        counts = torch.full((n, k) if per_image else (k,), pixels, device=logits.device)
    loss = _lovasz_rows(_rows(errors, per_image), _rows(fg, per_image))
    return reduce_loss(loss, reduction, weight=weight, mask=counts > 0, normalizer=normalizer,
                       out_dtype=input.dtype, inputs={"input": input, "target": target})
