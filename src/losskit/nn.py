"""Module forms of the losses: ``from losskit import nn as lnn``; ``lnn.HuberLoss(delta=0.5)``.

Each class is a :class:`LossModule` that names its function; options go to the constructor,
the two tensors (and per-batch values such as ``weight=``) to ``forward``. The docstring of
each class is its function's.
"""

from __future__ import annotations

from losskit import functional as F
from losskit._core.module import LossModule
from losskit._core.registry import register

# --- regression -------------------------------------------------------------------------------


@register("mse", "l2", "mean_squared_error", family="regression")
class MSELoss(LossModule):
    function = staticmethod(F.mse_loss)


@register("l1", "mae", "mean_absolute_error", family="regression")
class L1Loss(LossModule):
    function = staticmethod(F.l1_loss)


@register("huber", family="regression")
class HuberLoss(LossModule):
    function = staticmethod(F.huber_loss)


@register("smooth_l1", family="regression")
class SmoothL1Loss(LossModule):
    function = staticmethod(F.smooth_l1_loss)


@register("log_cosh", "logcosh", family="regression")
class LogCoshLoss(LossModule):
    function = staticmethod(F.log_cosh_loss)


@register("quantile", "pinball", family="regression")
class QuantileLoss(LossModule):
    function = staticmethod(F.quantile_loss)


@register("charbonnier", family="regression")
class CharbonnierLoss(LossModule):
    function = staticmethod(F.charbonnier_loss)


@register("wing", family="regression")
class WingLoss(LossModule):
    function = staticmethod(F.wing_loss)


@register("balanced_l1", family="regression")
class BalancedL1Loss(LossModule):
    function = staticmethod(F.balanced_l1_loss)


# GENERAL-ROBUST-BEGIN
@register("general_robust", "barron", "robust", family="regression")
class GeneralRobustLoss(LossModule):
    r"""Module form of :func:`losskit.general_robust_loss`, optionally with a learned ``alpha``.

    With ``learn_alpha=False`` (the default) it is the plain module form: the options (``alpha``,
    ``scale``, ``nll``, ...) are stored and forwarded. With ``learn_alpha=True``, ``alpha`` is
    learned: a parameter ``alpha_latent`` (the shape of the given ``alpha``: a number gives one
    alpha, a tensor one per entry) is mapped into ``alpha_range`` by a sigmoid, starting at the
    given ``alpha``, and the loss is Barron's adaptive negative log-likelihood
    :math:`\rho(x, \alpha, c) + \log c + \log Z(\alpha)` (``nll=True`` forced); without the
    partition term :math:`\log Z` a learned alpha would only run to the lower bound. The config
    holds the options (``alpha`` is the initial value); the learned value is in ``state_dict``.

    Args:
        learn_alpha: Learn ``alpha`` in ``alpha_range``.
        alpha_range: ``(low, high)`` with ``0 <= low < high <= 2`` (the NLL needs alpha in [0, 2]).
        **options: The options of :func:`losskit.general_robust_loss`.

    Examples:
        >>> import torch, losskit
        >>> loss = losskit.GeneralRobustLoss(learn_alpha=True, alpha=1.0)
        >>> [name for name, _ in loss.named_parameters()]
        ['alpha_latent']
        >>> loss
        GeneralRobustLoss(alpha=1.0, learn_alpha=True, alpha_range=(0.001, 1.999))
        >>> round(loss(torch.tensor([0.0, 1.0]), torch.zeros(2)).item(), 4)  # (0 + sqrt(2) - 1) / 2 + log Z(1)
        1.3926
        >>> loss.get_config()
        {'name': 'general_robust', 'alpha': 1.0, 'learn_alpha': True, 'alpha_range': [0.001, 1.999]}
    """

    function = staticmethod(F.general_robust_loss)

    def __init__(self, *, learn_alpha: bool = False, alpha_range=(0.001, 1.999), **options) -> None:
        import torch

        super().__init__(**options)
        self.learn_alpha = bool(learn_alpha)
        self.alpha_range = tuple(float(v) for v in alpha_range)
        self.alpha_latent = None
        if self.learn_alpha:
            low, high = self.alpha_range
            if not 0.0 <= low < high <= 2.0:
                raise ValueError(f"alpha_range must satisfy 0 <= low < high <= 2, got {alpha_range}")
            alpha = torch.as_tensor(options.get("alpha", 1.0), dtype=torch.get_default_dtype())
            if not bool(((alpha > low) & (alpha < high)).all()):
                raise ValueError(f"alpha must lie inside alpha_range {self.alpha_range}, got {alpha.tolist()}")
            self.alpha_latent = torch.nn.Parameter(((alpha - low) / (high - low)).logit())

    def forward(self, input, target, **call_options):
        if self.alpha_latent is None:
            return super().forward(input, target, **call_options)
        low, high = self.alpha_range
        alpha = low + (high - low) * self.alpha_latent.sigmoid()
        return super().forward(input, target, **{**call_options, "alpha": alpha, "nll": True})

    def get_config(self):
        config = super().get_config()
        if self.learn_alpha:
            config.update(learn_alpha=True, alpha_range=list(self.alpha_range))
        return config

    def extra_repr(self) -> str:
        learned = f"learn_alpha=True, alpha_range={self.alpha_range}" if self.learn_alpha else ""
        return ", ".join(part for part in (super().extra_repr(), learned) if part)


# GENERAL-ROBUST-END


@register("gaussian_nll", family="regression")
class GaussianNLLLoss(LossModule):
    function = staticmethod(F.gaussian_nll_loss)


@register("poisson_nll", family="regression")
class PoissonNLLLoss(LossModule):
    function = staticmethod(F.poisson_nll_loss)


# --- classification ---------------------------------------------------------------------------


@register("cross_entropy", "ce", "softmax_cross_entropy", family="classification")
class CrossEntropyLoss(LossModule):
    function = staticmethod(F.cross_entropy)


@register("binary_cross_entropy", "bce", "bce_with_logits", family="classification")
class BinaryCrossEntropyLoss(LossModule):
    function = staticmethod(F.binary_cross_entropy)


@register("sigmoid_focal", "focal", family="classification")
class SigmoidFocalLoss(LossModule):
    function = staticmethod(F.sigmoid_focal_loss)


@register("softmax_focal", family="classification")
class SoftmaxFocalLoss(LossModule):
    function = staticmethod(F.softmax_focal_loss)


@register("poly1_cross_entropy", "poly1", "poly", family="classification")
class Poly1CrossEntropyLoss(LossModule):
    function = staticmethod(F.poly1_cross_entropy)


@register("asymmetric", "asl", family="classification")
class AsymmetricLoss(LossModule):
    function = staticmethod(F.asymmetric_loss)


@register("multi_margin", "multiclass_hinge", family="classification")
class MultiMarginLoss(LossModule):
    function = staticmethod(F.multi_margin_loss)


@register("logit_adjusted_cross_entropy", "logit_adjusted", "la_ce", family="classification")
class LogitAdjustedCrossEntropyLoss(LossModule):
    function = staticmethod(F.logit_adjusted_cross_entropy)


@register("balanced_softmax", family="classification")
class BalancedSoftmaxLoss(LossModule):
    function = staticmethod(F.balanced_softmax_loss)


@register("ldam", family="classification")
class LDAMLoss(LossModule):
    function = staticmethod(F.ldam_loss)


# --- divergences ------------------------------------------------------------------------------


@register("kl_div", "kl", "kl_divergence", family="divergence")
class KLDivLoss(LossModule):
    function = staticmethod(F.kl_div)


@register("js_div", "js", "jsd", family="divergence")
class JSDivLoss(LossModule):
    function = staticmethod(F.js_div)


# Drop-in names for code that used torch.nn (the losskit versions take logits).
BCEWithLogitsLoss = BinaryCrossEntropyLoss
FocalLoss = SigmoidFocalLoss

__all__ = [
    "AsymmetricLoss",
    "BCEWithLogitsLoss",
    "BalancedL1Loss",
    "BalancedSoftmaxLoss",
    "BinaryCrossEntropyLoss",
    "CharbonnierLoss",
    "CrossEntropyLoss",
    "FocalLoss",
    "GaussianNLLLoss",
    "GeneralRobustLoss",
    "HuberLoss",
    "JSDivLoss",
    "KLDivLoss",
    "L1Loss",
    "LDAMLoss",
    "LogCoshLoss",
    "LogitAdjustedCrossEntropyLoss",
    "LossModule",
    "MSELoss",
    "MultiMarginLoss",
    "PoissonNLLLoss",
    "Poly1CrossEntropyLoss",
    "QuantileLoss",
    "SigmoidFocalLoss",
    "SmoothL1Loss",
    "SoftmaxFocalLoss",
    "WingLoss",
]
