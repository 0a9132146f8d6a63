"""Loss functions: ``import losskit.functional as LF``; ``LF.huber_loss(pred, target, delta=0.5)``.

Every function takes the prediction and the target as its only positional arguments; every
option is keyword-only. The reduction rules are those of :func:`losskit.reduce_loss`.
"""

from losskit.functional import _rotated
from losskit.functional import contrastive as _contrastive
from losskit.functional import fused_policy as _fused_policy
from losskit.functional import fused_preference as _fused_preference
from losskit.functional import large_vocab as _large_vocab
from losskit.functional import metric as _metric
from losskit.functional import rl as _rl
from losskit.functional._rotated import *  # noqa: F403
from losskit.functional.boundary import boundary_loss, cldice_loss, hausdorff_dt_loss
from losskit.functional.boxes import (
    bounded_iou_loss,
    ciou_loss,
    diou_loss,
    eiou_loss,
    giou_3d_loss,
    giou_loss,
    iou_loss,
    nwd_loss,
    probiou_loss,
    siou_loss,
    wiou_loss,
)
from losskit.functional.classification import (
    asymmetric_loss,
    balanced_softmax_loss,
    binary_cross_entropy,
    cross_entropy,
    ldam_loss,
    logit_adjusted_cross_entropy,
    multi_margin_loss,
    poly1_cross_entropy,
    sigmoid_focal_loss,
    softmax_focal_loss,
)
from losskit.functional.contrastive import *  # noqa: F403
from losskit.functional.detection import (
    distribution_focal_loss,
    eqlv2_gradient_sums,
    eqlv2_loss,
    gaussian_focal_loss,
    ghmc_loss,
    ghmr_loss,
    quality_focal_loss,
    seesaw_loss,
    varifocal_loss,
)
from losskit.functional.divergence import js_div, kl_div
from losskit.functional.fused_policy import *  # noqa: F403
from losskit.functional.fused_preference import *  # noqa: F403
from losskit.functional.large_vocab import *  # noqa: F403
from losskit.functional.lovasz import lovasz_hinge_loss, lovasz_softmax_loss
from losskit.functional.metric import *  # noqa: F403
from losskit.functional.regression import (
    balanced_l1_loss,
    charbonnier_loss,
    gaussian_nll_loss,
    general_robust_loss,
    huber_loss,
    l1_loss,
    log_cosh_loss,
    mse_loss,
    poisson_nll_loss,
    quantile_loss,
    robust_log_partition,
    smooth_l1_loss,
    wing_loss,
)
from losskit.functional.rl import *  # noqa: F403
from losskit.functional.segmentation import (
    asymmetric_unified_focal_loss,
    dice_ce_loss,
    dice_focal_loss,
    dice_loss,
    focal_tversky_loss,
    generalized_dice_focal_loss,
    generalized_dice_loss,
    generalized_wasserstein_dice_loss,
    jaccard_loss,
    mcc_loss,
    tversky_loss,
)
from losskit.functional.ssim import ssim_loss

__all__ = [
    "asymmetric_loss",
    "asymmetric_unified_focal_loss",
    "balanced_l1_loss",
    "balanced_softmax_loss",
    "binary_cross_entropy",
    "boundary_loss",
    "bounded_iou_loss",
    "charbonnier_loss",
    "ciou_loss",
    "cldice_loss",
    "cross_entropy",
    "dice_ce_loss",
    "dice_focal_loss",
    "dice_loss",
    "diou_loss",
    "distribution_focal_loss",
    "eiou_loss",
    "eqlv2_gradient_sums",
    "eqlv2_loss",
    "focal_tversky_loss",
    "gaussian_focal_loss",
    "gaussian_nll_loss",
    "general_robust_loss",
    "generalized_dice_focal_loss",
    "ghmc_loss",
    "ghmr_loss",
    "generalized_dice_loss",
    "generalized_wasserstein_dice_loss",
    "giou_3d_loss",
    "giou_loss",
    "hausdorff_dt_loss",
    "huber_loss",
    "iou_loss",
    "jaccard_loss",
    "js_div",
    "kl_div",
    "l1_loss",
    "ldam_loss",
    "log_cosh_loss",
    "logit_adjusted_cross_entropy",
    "lovasz_hinge_loss",
    "lovasz_softmax_loss",
    "mcc_loss",
    "mse_loss",
    "multi_margin_loss",
    "nwd_loss",
    "poisson_nll_loss",
    "poly1_cross_entropy",
    "probiou_loss",
    "quality_focal_loss",
    "quantile_loss",
    "robust_log_partition",
    "seesaw_loss",
    "sigmoid_focal_loss",
    "siou_loss",
    "smooth_l1_loss",
    "softmax_focal_loss",
    "ssim_loss",
    "tversky_loss",
    "varifocal_loss",
    "wing_loss",
    "wiou_loss",
    *_contrastive.__all__,
    *_fused_policy.__all__,
    *_fused_preference.__all__,
    *_large_vocab.__all__,
    *_metric.__all__,
    *_rl.__all__,
    *_rotated.__all__,
]
