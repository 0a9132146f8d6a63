r"""Region (overlap) segmentation losses: Dice, Jaccard, Tversky, focal Tversky, generalized Dice, MCC, Dice+CE.

Every loss here is a function of a few per-(sample, class) sums over space, computed once by
:func:`region_stats`:

.. math::
    TP_{nc} = \sum_x p_{ncx} t_{ncx}, \quad P_{nc} = \sum_x p_{ncx}, \quad T_{nc} = \sum_x t_{ncx},
    \quad FP = P - TP, \quad FN = T - TP

Conventions shared by all of them (see each docstring for the formula):

* ``input`` holds logits ``(N, C, *spatial)`` (2-D or 3-D or any number of spatial dims);
  ``activation="softmax" | "sigmoid" | None`` is applied to all channels **before** the
  background channel is dropped (``include_background=False``) and before masking.
* ``target`` holds integer class indices ``(N, *spatial)`` or ``(N, 1, *spatial)`` (never
  expanded to a one-hot tensor), or floating one-hot / soft labels with the input's shape.
* ``ignore_index`` (index targets) removes a voxel from every sum, :math:`P` included.
* **Natural unit** (``reduction="none"``): one value per (sample, class kept), shape
  ``(N, C')`` with ``C' = C`` or ``C - 1``. With ``aggregate="batch"`` the sums are pooled over
  the batch first (nnU-Net's "batch dice", SMP's default) and the unit is ``(1, C')``
  (``(0, C')`` for an empty batch). Generalized Dice sums over classes inside its formula, so
  its unit is per sample ``(N,)`` / ``(1,)``; Dice+CE is per sample too (see :func:`dice_ce_loss`).
* ``weight=`` broadcasts to the unit; ``class_weight=`` (shape ``(C,)``, over all classes,
  background included) multiplies it; ``"mean"`` is the weighted mean.
* **Smoothing** ``smooth_nr`` / ``smooth_dr`` (default ``1e-5`` both, as MONAI) are added to
  numerator and denominator, so an empty target predicted empty scores a perfect 0 rather than
  the maximum loss a denominator-only epsilon gives (AdelaiDet #610); their size sets how
  strongly an empty target pulls predictions toward empty (the trade-off analysed by
  Tilborghs et al., "Dice loss in the context of missing or empty labels", MICCAI 2022).
  Denominators are also floored at ``eps`` (default ``1e-7``, SMP's clamp), which changes
  nothing while ``smooth_dr >= eps``.
* **Memory.** The statistics come from fused kernels that never build a one-hot tensor or an
  autograd graph over the volume: the activation is written once, into the buffer that backward
  turns into the gradient in place, so a forward+backward pass needs the gradient plus
  temporaries of about one chunk of voxels (2 MB on a CPU, 64 MB on a GPU; autograd through the
  formula keeps the probabilities, a one-hot target and products: about three times as much).
  They serve ``activation="softmax"`` and ``"sigmoid"`` with index or one-hot / soft targets,
  ``squared`` too, and Dice+CE's cross-entropy. Index labels are read in their own integer
  dtype, chunk by chunk, so no int64 copy of the label map is made either; half and bfloat16
  logits are read the same way and computed in float32, with no float32 copy of the logits
  (backward recomputes each chunk's activation and writes the gradient, rounded once, in the
  logits' dtype). ``soft_label=True``, targets that require a gradient, ``activation=None``,
  Dice+CE with ``class_weight`` and one-hot / soft targets, and code being traced by
  ``torch.compile`` (which fuses the plain form itself) use plain autograd: the same values and
  gradients, not the same memory.
* **Absent classes** (``T = 0`` for that unit): ``absent="keep"`` (default) uses the formula as
  is, so a false positive on an empty class costs nearly 1 and an empty prediction nearly 0;
  ``absent="zero"`` sets those units to 0 but keeps them in the mean (SMP);
  ``absent="exclude"`` drops them from the mean; ``absent="sample_mean"`` drops them from their
  sample's mean and counts every sample once (kornia 0.9.0 ``average="macro"``): the units of a
  sample get weights summing to 1 over its present classes (times ``class_weight``), so
  ``reduction="none"`` summed over classes is each sample's loss, and a sample with no present
  class of nonzero weight (every voxel ignored, say) scores 1 with zero gradient.
* **Accuracy.** The statistics and the formulas keep their digits where a loss is small: see
  :mod:`losskit.functional._region_stats` (float32 and half precision are tested against
  float64 near convergence, with saturated logits, on 160k-voxel images and at one positive in
  1e5).

To reproduce a peer (each row is proved by a test: MONAI and kornia live in
``tests/test_segmentation.py``, SMP 0.6.0 golden vectors in ``tests/test_golden_smp.py``):

* MONAI ``DiceLoss(softmax=True, to_onehot_y=True)``: the defaults (``include_background``,
  ``aggregate="batch"`` for ``batch=True``, ``squared=True`` for ``squared_pred=True``). MONAI's
  ``weight=w`` is ``class_weight=w, reduction="none"`` then ``.mean()`` (MONAI takes a plain mean
  of the weighted units; losskit's ``"mean"`` is the weighted mean). ``jaccard=True`` is
  :func:`jaccard_loss` with half the smoothing (``smooth_nr = smooth_dr = s / 2``).
* MONAI ``TverskyLoss``, ``GeneralizedDiceLoss`` (``absent="max"``), ``DiceCELoss``, ``MCCLoss``:
  the same options under the same names (``weight_type`` for ``w_type``).
* MONAI floors no denominator: with ``smooth_dr`` below ``1e-7`` add ``eps=0`` (losskit's floor
  ``eps=1e-7`` changes nothing while ``smooth_dr >= 1e-7``; with ``smooth_nr = smooth_dr = 1e-8``
  a generalized Dice whose class weights are all 0 scores 0.9 instead of MONAI's exact 0).
* MONAI ``GeneralizedWassersteinDiceLoss(dist_matrix=M, weighting_mode=w)``:
  :func:`generalized_wasserstein_dice_loss` with the same options.
* MONAI ``AsymmetricUnifiedFocalLoss(to_onehot_y=True)`` on probabilities ``softmax(x)``:
  :func:`asymmetric_unified_focal_loss` on ``x`` with ``delta=0.7, focal_class_mean=True`` (its
  parts: ``lambda_focal=1`` and ``0``); see that function for MONAI's departures from the paper.
  Both rows are proved live in ``tests/test_segmentation_wasserstein_unified.py``.
* SMP ``DiceLoss`` / ``JaccardLoss`` / ``TverskyLoss`` (``from_logits=True``):
  ``aggregate="batch", smooth_nr=0, smooth_dr=0, eps=1e-7, absent="zero"``, with
  ``activation="softmax"`` (multiclass) or ``"sigmoid"`` (binary, multilabel). SMP's focal
  Tversky (``gamma=g`` on the class mean) is ``tversky_loss(...) ** g``, not
  :func:`focal_tversky_loss`.
* SMP ``MCCLoss(eps=e)`` (binary, probabilities in): ``mcc_loss(activation=None,
  aggregate="batch", smooth_nr=0, smooth_dr=0, eps=0, smooth_counts=e)``; ``e`` is added to each
  confusion count, so a perfect prediction scores about 1e-6, not MONAI's exact 0.
* kornia 0.9.0 ``dice_loss(average="macro", weight=w)`` / ``tversky_loss``: ``smooth_nr=0,
  smooth_dr=1e-8, eps=0, absent="sample_mean"`` (``class_weight=w``).
* kornia 0.9.0 ``dice_loss(average="micro", weight=w)`` (classes pooled):
  ``generalized_dice_loss(weight_type="uniform", class_weight=w, smooth_nr=0, smooth_dr=1e-8,
  eps=0)``.
"""
from losskit.functional._region_stats import RegionStats, region_stats
from losskit.functional.segmentation._front import ABSENT, AGGREGATES, _OneMinusRatio
from losskit.functional.segmentation.compound import dice_ce_loss, dice_focal_loss, generalized_dice_focal_loss
from losskit.functional.segmentation.overlap import (
    dice_loss,
    focal_tversky_loss,
    generalized_dice_loss,
    jaccard_loss,
    mcc_loss,
    tversky_loss,
)
from losskit.functional.segmentation.unified_focal import asymmetric_unified_focal_loss
from losskit.functional.segmentation.wasserstein import generalized_wasserstein_dice_loss

__all__ = [
    "ABSENT",
    "AGGREGATES",
    "RegionStats",
    "_OneMinusRatio",
    "asymmetric_unified_focal_loss",
    "dice_ce_loss",
    "dice_focal_loss",
    "dice_loss",
    "focal_tversky_loss",
    "generalized_dice_focal_loss",
    "generalized_dice_loss",
    "generalized_wasserstein_dice_loss",
    "jaccard_loss",
    "mcc_loss",
    "region_stats",
    "tversky_loss",
]
