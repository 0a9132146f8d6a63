r"""The generalized Wasserstein Dice loss: a Dice loss whose errors are weighed by how far apart the
confused classes are (Fidon et al. 2017).

With a one-hot ground truth the Wasserstein distance between a voxel's predicted distribution
:math:`p_x` and its label :math:`y_x`, under a ground distance :math:`M` between classes, has a
closed form: all the mass not on :math:`y_x` moves to :math:`y_x`,

.. math::
    W_x = \sum_c M_{y_x c}\, p_{cx}, \qquad 1 - W_x = \sum_c (1 - M_{y_x c})\, p_{cx},

so index labels are read as they are (never expanded to one-hot) and both :math:`W_x` and
:math:`1 - W_x` are sums of non-negative terms, exact near a perfect prediction and far from it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from losskit._core.checks import check_broadcastable, check_one_of, check_same_device, check_tensor, checks_enabled
from losskit._core.dense import check_activation, index_labels, probabilities
from losskit._core.numerics import compute_dtype, upcast
from losskit._core.reduction import Reduction, check_reduction, reduce_for
from losskit.functional._region_stats import _flat
from losskit.functional.segmentation._front import _check_probabilities, _check_smoothing, _one_minus_ratio

WEIGHTING_MODES = ("default", "GDL")


def _distance_matrix(dist_matrix: Tensor | None, classes: int, like: Tensor) -> Tensor:
    """The class-distance matrix ``(C, C)`` in ``like``'s dtype, scaled so its largest entry is 1.

    Cheap checks (type, shape) always; value checks (finite, non-negative, symmetric, zero diagonal,
    some positive entry) while value checks are on."""
    if dist_matrix is None:  # every pair of different classes at distance 1
        return 1 - torch.eye(classes, dtype=like.dtype, device=like.device)
    check_tensor("dist_matrix", dist_matrix)
    check_same_device("input", like, "dist_matrix", dist_matrix)
    if dist_matrix.shape != (classes, classes):
        raise ValueError(f"dist_matrix must have shape ({classes}, {classes}), one row and column per channel of "
                         f"input, got {tuple(dist_matrix.shape)}")
    if dist_matrix.dtype == torch.bool or dist_matrix.is_complex():
        raise TypeError(f"dist_matrix must hold real distances, got dtype {dist_matrix.dtype}")
    m = dist_matrix.to(like.dtype)
    if checks_enabled():
        _check_distances(m)
    return m / m.max()


def _check_distances(m: Tensor) -> None:
    if not bool(torch.isfinite(m).all()):
        raise ValueError("dist_matrix must be finite, got NaN or infinity")
    if bool((m < 0).any()):
        raise ValueError(f"dist_matrix must be non-negative (distances between classes), got {m.min().item():g}")
    if bool((m.diagonal() != 0).any()):
        raise ValueError("dist_matrix must have a zero diagonal (a class is at distance 0 from itself), got "
                         f"{m.diagonal().tolist()}")
    if not bool((m == m.T).all()):
        raise ValueError("dist_matrix must be symmetric (the distance from class a to b equals that from b to a)")
    if not bool((m > 0).any()):
        raise ValueError("dist_matrix must have a positive entry: it is scaled so its largest entry is 1")


def generalized_wasserstein_dice_loss(
    input: Tensor,
    target: Tensor,
    *,
    dist_matrix: Tensor | None = None,
    weighting_mode: str = "default",
    activation: str | None = "softmax",
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    eps: float = 1e-7,
    ignore_index: int | None = None,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Generalized Wasserstein Dice loss (Fidon et al. 2017), one value per sample, from index labels.

    A Dice loss for many classes in which confusing two close classes (two tumour sub-regions)
    costs less than confusing distant ones (tumour and background). Each voxel's error is the
    Wasserstein distance :math:`W_x` between its predicted distribution and its label under the
    class distances ``dist_matrix`` :math:`M` (scaled so its largest entry is 1), and its true
    positive mass is :math:`1 - W_x`, weighted by the label's :math:`\alpha`:

    .. math::
        W_x = \sum_c M_{y_x c}\, p_{cx}, \qquad
        TP_n = \sum_x \alpha_{n y_x} (1 - W_x), \qquad
        \ell_n = 1 - \frac{2\,TP_n + s_{nr}}{\max(2\,TP_n + E_n + s_{dr}, \epsilon)}

    * ``weighting_mode="default"`` (Fidon et al.; MONAI's code, adapted from the authors'):
      :math:`\alpha_c = 1` for the foreground classes and 0 for the background (class 0), and
      :math:`E_n = \sum_x W_x` is the error of every voxel, background included.
    * ``weighting_mode="GDL"`` (Tilborghs et al. 2020, appendix): :math:`\alpha_{nc} = 1 / (V_{nc} + 1)`
      with :math:`V_{nc}` the sample's voxels of class :math:`c` (the generalized Dice weights),
      also in the error: :math:`E_n = \sum_x \alpha_{n y_x} W_x`.

    The loss is computed as :math:`(E_n + s_{dr} - s_{nr}) / (2 TP_n + E_n + s_{dr})`, which keeps
    its digits near a perfect prediction, and :math:`W_x` and :math:`1 - W_x` are each summed from
    non-negative terms. With ``dist_matrix=None`` every two different classes are at distance 1:
    :math:`W_x = 1 - p_{y_x x}`. The closed form needs a one-hot ground truth, so ``target`` holds
    class indices (not one-hot / soft labels); they are never expanded to a one-hot tensor.

    With equal voxel counts and no ignored voxels, ``reduction="mean"`` equals MONAI 1.6
    ``GeneralizedWassersteinDiceLoss(dist_matrix=M, weighting_mode=w)`` on the logits.

    Args:
        input: Logits ``(N, C, *spatial)`` (probabilities summing to 1 over the channels with
            ``activation=None``, a value check on the range).
        target: Class indices ``(N, *spatial)`` or ``(N, 1, *spatial)`` (integer).
        dist_matrix: Distances between the classes ``(C, C)``: finite, non-negative, symmetric,
            zero on the diagonal, not all 0; scaled by its largest entry. ``None``: 1 between
            every two classes. The module form keeps it as a buffer.
        weighting_mode: ``"default"`` or ``"GDL"`` (see above).
        activation: ``"softmax"`` (over dim 1) or ``None`` (``input`` holds probabilities); the
            Wasserstein distance needs a distribution over the classes, so not ``"sigmoid"``.
        smooth_nr: Added to the numerator.
        smooth_dr: Added to the denominator.
        eps: Floor of the denominator (after ``smooth_dr``; changes nothing while
            ``smooth_dr >= eps``).
        ignore_index: Target value whose voxels count in no sum (their input may hold anything).
        weight: Per-sample weights broadcastable to ``(N,)``.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        normalizer: With ``"mean"``, divide the weighted sum by this count instead.

    Shape:
        - input: :math:`(N, C, d_1, \dots, d_k)`, :math:`C \ge 2`.
        - target: :math:`(N, d_1, \dots, d_k)` or :math:`(N, 1, d_1, \dots, d_k)`, integer.
        - dist_matrix: :math:`(C, C)`.
        - output: scalar, or :math:`(N,)` with ``reduction="none"``: the natural unit is one value
          per sample, since the formula sums over the classes.

    Returns:
        The loss in the input's dtype. Empty input gives 0 with a gradient; so does a sample with
        every voxel ignored while ``smooth_nr = smooth_dr``.

    Raises:
        ValueError: Shapes that do not match, a class index out of range, a ``dist_matrix`` of the
            wrong shape, with a negative, non-finite or nonzero-diagonal entry, not symmetric or all
            0, a bad option or reduction, a non-finite result.
        TypeError: A non-floating input, a floating (one-hot) target, a ``dist_matrix`` that is not a
            real tensor.

    Examples:
        >>> import torch, losskit
        >>> m = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.5], [1.0, 0.5, 0.0]])
        >>> logits = torch.tensor([[[6.0, 0.0], [0.0, 0.0], [0.0, 6.0]]])  # (1, 3, 2): two voxels
        >>> # both voxels are labelled 1; p = (0.9950, 0.0025, 0.0025) and (0.0025, 0.0025, 0.9950):
        >>> # W = 0.9963 and 0.5000, TP = 0.5037, E = 1.4963, loss = E / (2 TP + E) = 0.5976
        >>> losskit.generalized_wasserstein_dice_loss(logits, torch.tensor([[1, 1]]), dist_matrix=m,
        ...                                           reduction="none")
        tensor([0.5976])

    References:
        Fidon et al., "Generalised Wasserstein Dice Score for Imbalanced Multi-class Segmentation
        using Holistic Convolutional Networks", BrainLes 2017 (Eqs. 6-9); Tilborghs et al.,
        "Comparative study of deep learning methods for the automatic segmentation of lung, lesion
        and lesion type in CT scans of COVID-19 patients", arXiv:2007.15546 (the GDL weighting).
        Defaults and smoothing follow MONAI ``GeneralizedWassersteinDiceLoss``.
    """
    check_reduction(reduction, normalizer)
    check_one_of("weighting_mode", weighting_mode, WEIGHTING_MODES)
    if activation == "sigmoid":
        raise ValueError("activation must be 'softmax' or None for generalized_wasserstein_dice_loss (the "
                         "Wasserstein distance compares distributions over the classes), got 'sigmoid'")
    check_activation(input, activation)
    _check_smoothing(smooth_nr, smooth_dr, eps)
    if input.dim() < 3:
        raise ValueError(f"input must have shape (N, C, *spatial), got {tuple(input.shape)}")
    labels = index_labels(input, target, ignore_index=ignore_index)
    classes = input.shape[1]
    m = _distance_matrix(dist_matrix, classes, torch.empty(0, dtype=compute_dtype(input.dtype),
                                                           device=input.device))
    labels = _flat(labels, 1).long()
    valid = None if ignore_index is None else labels != ignore_index
    x = _flat(upcast(input), 2)
    if valid is not None:  # ignored voxels may hold anything: they count in no sum, gradient 0
        labels = torch.where(valid, labels, 0)
        x = torch.where(valid.unsqueeze(1), x, 0.0)
    if activation is None:
        _check_probabilities(x)
    p = probabilities(x, activation)
    index = labels.unsqueeze(1)
    error = torch.matmul(m, p).gather(1, index).squeeze(1)  # W_x, (N, S)
    hit = torch.matmul(1 - m, p).gather(1, index).squeeze(1)  # 1 - W_x, summed without cancellation
    alpha = _alpha(labels, valid, classes, weighting_mode, p.dtype)
    voxel_alpha = alpha.gather(1, labels)
    if valid is not None:
        voxel_alpha = voxel_alpha * valid
    tp = (voxel_alpha * hit).sum(-1)
    if weighting_mode == "GDL":
        all_error = (voxel_alpha * error).sum(-1)
    else:
        all_error = error.sum(-1) if valid is None else (error * valid).sum(-1)
    loss = _one_minus_ratio(2 * tp, all_error, smooth_nr, smooth_dr, eps)
    if weight is not None:
        check_tensor("weight", weight)
        check_broadcastable("weight", weight, loss.shape, "the loss's natural unit, shape")
        weight = upcast(weight)
    return reduce_for(loss, input, target, reduction, weight=weight, normalizer=normalizer,
                      others={} if dist_matrix is None else {"dist_matrix": dist_matrix})


def _alpha(labels: Tensor, valid: Tensor | None, classes: int, weighting_mode: str, dtype: torch.dtype) -> Tensor:
    """Each sample's class weights ``(N, C)``: 0 for the background and 1 elsewhere (``"default"``), or
    one over the class's voxel count plus one (``"GDL"``, counting only valid voxels)."""
    n = labels.shape[0]
    if weighting_mode == "default":
        alpha = torch.ones((n, classes), dtype=dtype, device=labels.device)
        alpha[:, 0] = 0.0
        return alpha
    counts = torch.zeros((n, classes), dtype=dtype, device=labels.device)
    ones = torch.ones(labels.shape, dtype=dtype, device=labels.device) if valid is None else valid.to(dtype)
    counts.scatter_add_(1, labels, ones)
    return 1 / (counts + 1)


__all__ = ["generalized_wasserstein_dice_loss"]
