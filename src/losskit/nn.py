"""Module forms of the losses: ``from losskit import nn as lnn``; ``lnn.HuberLoss(delta=0.5)``.

Each class is a :class:`LossModule` that names its function; options go to the constructor,
the two tensors (and per-batch values such as ``weight=``) to ``forward``. The docstring of
each class is its function's.
"""

from __future__ import annotations

import math

import torch

from losskit import functional as F
from losskit._core.checks import check_bool, check_int, check_number
from losskit._core.module import LossModule
from losskit._core.registry import register
from losskit.boxes import box_iou
from losskit.distributed import is_distributed

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


@register("ssim", family="regression")
class SSIMLoss(LossModule):
    function = staticmethod(F.ssim_loss)

    def __init__(self, **options) -> None:
        # Per-axis window sizes and widths configure the filter: kept as tuples, not turned into
        # tensor buffers as other number lists are.
        per_axis = {key: tuple(options.pop(key)) for key in ("win_size", "kernel_sigma")
                    if isinstance(options.get(key), (list, tuple))}
        super().__init__(**options)
        self._options.update(per_axis)


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


# --- boxes ------------------------------------------------------------------------------------


@register("iou", family="boxes")
class IoULoss(LossModule):
    function = staticmethod(F.iou_loss)


@register("giou", "generalized_iou", family="boxes")
class GIoULoss(LossModule):
    function = staticmethod(F.giou_loss)


@register("diou", "distance_iou", family="boxes")
class DIoULoss(LossModule):
    function = staticmethod(F.diou_loss)


@register("ciou", "complete_iou", family="boxes")
class CIoULoss(LossModule):
    function = staticmethod(F.ciou_loss)


@register("eiou", "focal_eiou", family="boxes")
class EIoULoss(LossModule):
    function = staticmethod(F.eiou_loss)


@register("siou", family="boxes")
class SIoULoss(LossModule):
    function = staticmethod(F.siou_loss)


# WIOU-BEGIN
@register("wiou", "wise_iou", family="boxes")
class WIoULoss(LossModule):
    r"""Module form of :func:`losskit.wiou_loss` that keeps the running mean ``iou_mean`` as state.

    The running mean :math:`\overline{\mathcal{L}_{IoU}}` of the IoU loss :math:`1 - \mathrm{IoU}`
    is the buffer ``iou_mean`` (so ``.to()``, ``state_dict`` and checkpoints carry it), passed to
    the function on every call. ``forward`` never changes it; :meth:`update` does, explicitly:
    :math:`\bar{\mathcal{L}} \leftarrow (1 - m)\,\bar{\mathcal{L}} + m\,\mathcal{L}_{batch}`, with
    the paper's momentum :math:`m = 1 - 0.05^{1/\text{total\_steps}}` (after ``total_steps`` updates,
    ``n`` batches times ``t`` epochs, the starting value weighs 5%) or a given ``momentum``. Call
    ``update`` once per training step, after or before ``forward`` as you prefer; in distributed
    training, pass it a batch mean averaged over the ranks so that every replica keeps the same state.
    The config holds the current ``iou_mean`` and the momentum options.

    Args:
        momentum: :math:`m` in (0, 1]; give this or ``total_steps``.
        total_steps: Number of updates over the whole training (``n * t``); sets
            :math:`m = 1 - 0.05^{1/\text{total\_steps}}`.
        iou_mean: Starting value of the running mean (default 1.0, as the authors' code).
        **options: The options of :func:`losskit.wiou_loss` (``version``, ``alpha``, ``delta``, ...).

    Examples:
        >>> import torch, losskit
        >>> loss = losskit.WIoULoss(total_steps=1000)
        >>> pred, target = torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([[1.0, 0.0, 3.0, 2.0]])
        >>> value = loss(pred, target)  # forward leaves iou_mean alone
        >>> loss.iou_mean
        tensor(1.)
        >>> round(loss.update(pred, target).item(), 6)  # 1 - m (1 - 2/3), m = 1 - 0.05 ** 0.001
        0.999003
        >>> loss.get_config()["total_steps"]
        1000
    """

    function = staticmethod(F.wiou_loss)

    def __init__(self, *, momentum: float | None = None, total_steps: int | None = None, iou_mean=1.0,
                 **options) -> None:
        if momentum is not None and total_steps is not None:
            raise ValueError("give momentum= or total_steps=, not both")
        if momentum is not None:
            check_number("momentum", momentum, low=0.0, high=1.0, low_open=True)
        check_int("total_steps", total_steps, low=1, optional=True)
        mean = torch.as_tensor(iou_mean, dtype=torch.get_default_dtype()).detach().clone()
        if mean.numel() != 1 or not bool(mean.reshape(()) > 0):
            raise ValueError(f"iou_mean must be one positive number, got {iou_mean!r}")
        super().__init__(iou_mean=mean.reshape(()), **options)
        self.momentum = None if momentum is None else float(momentum)
        self.total_steps = total_steps

    def momentum_value(self) -> float:
        """The momentum :meth:`update` uses."""
        if self.momentum is not None:
            return self.momentum
        if self.total_steps is None:
            raise ValueError("WIoULoss.update needs momentum= or total_steps= (the paper's "
                             "m = 1 - 0.05 ** (1 / total_steps)); pass one to the constructor")
        return 1.0 - 0.05 ** (1.0 / self.total_steps)

    def update(self, value, target=None):
        """Move ``iou_mean`` towards a batch's mean IoU loss; the only method that changes state.

        Args:
            value: The batch's mean of ``1 - IoU`` (a number or one-element tensor), or predicted
                boxes when ``target`` is given.
            target: Target boxes; then the batch mean of ``1 - IoU`` of ``(value, target)`` is
                computed here, in the loss's ``fmt``, without gradient. An empty batch changes nothing.

        Returns:
            The buffer ``iou_mean`` after the update.
        """
        momentum = self.momentum_value()
        with torch.no_grad():
            if target is not None:
                if value.numel() == 0:
                    return self.iou_mean
                iou = box_iou(value, target, aligned=True, fmt=self._options.get("fmt", "xyxy"),
                              eps=self._options.get("eps"))
                value = (1 - iou.float()).mean()
            batch = torch.as_tensor(value, device=self.iou_mean.device).detach()
            if batch.numel() != 1:
                raise ValueError(f"update() takes the batch mean (one number), got shape {tuple(batch.shape)}; "
                                 "pass (input, target) to have it computed")
            self.iou_mean.lerp_(batch.reshape(()).to(self.iou_mean.dtype), momentum)
        return self.iou_mean

    def get_config(self):
        config = super().get_config()
        if self.momentum is not None:
            config["momentum"] = self.momentum
        if self.total_steps is not None:
            config["total_steps"] = self.total_steps
        return config

    def extra_repr(self) -> str:
        extra = [f"{k}={getattr(self, k)!r}" for k in ("momentum", "total_steps") if getattr(self, k) is not None]
        return ", ".join(part for part in (super().extra_repr(), *extra) if part)


# WIOU-END


@register("nwd", family="boxes")
class NWDLoss(LossModule):
    function = staticmethod(F.nwd_loss)


@register("bounded_iou", family="boxes")
class BoundedIoULoss(LossModule):
    function = staticmethod(F.bounded_iou_loss)


@register("probiou", family="boxes")
class ProbIoULoss(LossModule):
    function = staticmethod(F.probiou_loss)


@register("giou_3d", family="boxes")
class GIoU3DLoss(LossModule):
    function = staticmethod(F.giou_3d_loss)


@register("rotated_iou", family="boxes")
class RotatedIoULoss(LossModule):
    function = staticmethod(F.rotated_iou_loss)


@register("rotated_iou_3d", family="boxes")
class RotatedIoU3DLoss(LossModule):
    function = staticmethod(F.rotated_iou_3d_loss)


@register("gwd", family="boxes")
class GWDLoss(LossModule):
    function = staticmethod(F.gwd_loss)


@register("kld", family="boxes")
class KLDLoss(LossModule):
    function = staticmethod(F.kld_loss)


@register("kfiou", family="boxes")
class KFIoULoss(LossModule):
    function = staticmethod(F.kfiou_loss)


# --- dense detection --------------------------------------------------------------------------


@register("varifocal", "vfl", family="detection")
class VarifocalLoss(LossModule):
    function = staticmethod(F.varifocal_loss)


@register("quality_focal", "qfl", family="detection")
class QualityFocalLoss(LossModule):
    function = staticmethod(F.quality_focal_loss)


@register("distribution_focal", "dfl", family="detection")
class DistributionFocalLoss(LossModule):
    function = staticmethod(F.distribution_focal_loss)


@register("gaussian_focal", family="detection")
class GaussianFocalLoss(LossModule):
    function = staticmethod(F.gaussian_focal_loss)


@register("ghmc", "ghm_c", family="detection")
class GHMCLoss(LossModule):
    function = staticmethod(F.ghmc_loss)


@register("ghmr", "ghm_r", family="detection")
class GHMRLoss(LossModule):
    function = staticmethod(F.ghmr_loss)


@register("seesaw", family="detection")
class SeesawLoss(LossModule):
    function = staticmethod(F.seesaw_loss)


@register("eqlv2", "equalization_loss_v2", family="detection")
class EQLv2Loss(LossModule):
    r"""Module form of :func:`losskit.eqlv2_loss` that keeps the gradient statistics as state.

    The accumulated positive and negative gradient magnitudes per foreground class are the
    buffers ``pos_grad`` and ``neg_grad`` (float64, so ``.to(device)``, ``state_dict`` and
    checkpoints carry them and long trainings keep their digits), passed to the function on every
    call. ``forward`` never changes them; :meth:`update` does, explicitly, adding the batch's
    share from :func:`losskit.eqlv2_gradient_sums`.

    **When to update.** The authors' ``EQLv2`` computes a batch's loss with the statistics of
    the batches before it, then adds that batch's gradient magnitudes (inside its ``forward``).
    The same order here is: ``loss = criterion(logits, labels)``, then
    ``criterion.update(logits, labels)``, once per training step, before the next ``forward``.
    Updating first would weigh the batch with its own statistics.

    **Distributed training.** The reference sums each batch's share over the ranks
    (``all_reduce``) before adding it, so every replica keeps the same statistics and weights.
    ``distributed=True`` does the same in :meth:`update` (one ``all_reduce`` of the two sums,
    run on every rank, also with an empty local batch) when a process group of more than one
    rank is initialized; without one it is the single-process update. With
    ``distributed=False`` each rank keeps statistics of its own shard only.

    Keep the statistics float64 (``.to(device)`` does; ``.half()`` or ``.to(torch.float16)``
    would round, and over a long training overflow, the sums). At inference the reference scores
    the foreground classes :math:`\sigma(x_j)\,(1 - \sigma(x_C))` (``test_with_obj=True``), the
    background logit acting as an objectness score; that post-processing is the caller's.

    Args:
        num_classes: :math:`C`, the foreground classes (the logits have :math:`C + 1` columns);
            the statistics start at 0 (weights 1). Or give ``pos_grad`` and ``neg_grad``.
        pos_grad, neg_grad: Starting statistics, shape ``(C,)`` (a checkpoint's, or a config's).
        distributed: Sum each batch's share over the ranks in :meth:`update`.
        **options: The options of :func:`losskit.eqlv2_loss` (``gamma``, ``mu``, ``alpha``, ...).

    Examples:
        >>> import torch, losskit
        >>> criterion = losskit.EQLv2Loss(num_classes=2)
        >>> logits, labels = torch.zeros(2, 3), torch.tensor([0, 2])
        >>> loss = criterion(logits, labels)  # forward leaves the statistics alone
        >>> criterion.update(logits, labels)  # 0.5 per term, weights 1 (see eqlv2_gradient_sums)
        (tensor([0.5000, 0.0000], dtype=torch.float64), tensor([0.5000, 1.0000], dtype=torch.float64))
        >>> criterion.get_config()["neg_grad"]
        [0.5, 1.0]
    """

    function = staticmethod(F.eqlv2_loss)

    def __init__(self, num_classes: int | None = None, *, pos_grad=None, neg_grad=None, distributed: bool = False,
                 **options) -> None:
        self._check_option_names(options)  # an unknown option is named before any other complaint
        check_bool("distributed", distributed)
        check_int("num_classes", num_classes, low=1, optional=True)
        if (pos_grad is None) != (neg_grad is None):
            raise ValueError("give pos_grad= and neg_grad= together (or neither, with num_classes=)")
        if pos_grad is None:
            if num_classes is None:
                raise ValueError("EQLv2Loss needs num_classes= (the foreground classes C; the logits have C + 1 "
                                 "columns), or starting statistics pos_grad= and neg_grad=")
            pos_grad = neg_grad = torch.zeros(num_classes, dtype=torch.float64)
        sums = {"pos_grad": self._statistics("pos_grad", pos_grad),
                "neg_grad": self._statistics("neg_grad", neg_grad)}
        expected = sums["pos_grad"].shape if num_classes is None else (num_classes,)
        for name, value in sums.items():
            if value.shape != expected:
                raise ValueError(f"{name} must have shape {expected}, one entry per foreground class, "
                                 f"got shape {tuple(value.shape)}")
        super().__init__(**sums, **options)
        self.distributed = distributed

    @staticmethod
    def _statistics(name, value) -> torch.Tensor:
        sums = torch.as_tensor(value, dtype=torch.float64).detach().clone()
        if sums.dim() != 1 or sums.numel() == 0 or not bool(torch.isfinite(sums).all() & (sums >= 0).all()):
            raise ValueError(f"{name} must be a non-empty vector (C,) of finite sums >= 0, got {value!r}")
        return sums

    @property
    def num_classes(self) -> int:
        """:math:`C`, the foreground classes."""
        return self.pos_grad.numel()

    def update(self, input, target, *, weight=None):
        """Add a batch's gradient magnitudes to the statistics; the only method that changes state.

        Args:
            input: The batch's logits ``(N, C + 1)`` (detached here).
            target: Its class indices ``(N,)``.
            weight: Its per-sample weights, as given to ``forward``.

        Returns:
            The buffers ``(pos_grad, neg_grad)`` after the update.
        """
        share = {k: v for k, v in self._options.items() if k in ("gamma", "mu", "alpha")}
        positive, negative = F.eqlv2_gradient_sums(input, target, pos_grad=self.pos_grad, neg_grad=self.neg_grad,
                                                   weight=weight, **share)
        if self.distributed and is_distributed():
            both = torch.stack([positive, negative])
            torch.distributed.all_reduce(both)
            positive, negative = both[0], both[1]
        with torch.no_grad():
            self.pos_grad.add_(positive.to(self.pos_grad.device, self.pos_grad.dtype))
            self.neg_grad.add_(negative.to(self.neg_grad.device, self.neg_grad.dtype))
        return self.pos_grad, self.neg_grad

    def get_config(self):
        return {**super().get_config(), "distributed": self.distributed}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, distributed={self.distributed}"


# --- segmentation -----------------------------------------------------------------------------


@register("dice", family="segmentation")
class DiceLoss(LossModule):
    function = staticmethod(F.dice_loss)


@register("jaccard", "iou_segmentation", family="segmentation")
class JaccardLoss(LossModule):
    function = staticmethod(F.jaccard_loss)


@register("tversky", family="segmentation")
class TverskyLoss(LossModule):
    function = staticmethod(F.tversky_loss)


@register("focal_tversky", family="segmentation")
class FocalTverskyLoss(LossModule):
    function = staticmethod(F.focal_tversky_loss)


@register("generalized_dice", "gdl", family="segmentation")
class GeneralizedDiceLoss(LossModule):
    function = staticmethod(F.generalized_dice_loss)


@register("mcc", family="segmentation")
class MCCLoss(LossModule):
    function = staticmethod(F.mcc_loss)


@register("dice_ce", family="segmentation")
class DiceCELoss(LossModule):
    function = staticmethod(F.dice_ce_loss)


@register("dice_focal", family="segmentation")
class DiceFocalLoss(LossModule):
    function = staticmethod(F.dice_focal_loss)


@register("generalized_dice_focal", family="segmentation")
class GeneralizedDiceFocalLoss(LossModule):
    function = staticmethod(F.generalized_dice_focal_loss)


@register("generalized_wasserstein_dice", "gwdl", family="segmentation")
class GeneralizedWassersteinDiceLoss(LossModule):
    function = staticmethod(F.generalized_wasserstein_dice_loss)


@register("asymmetric_unified_focal", family="segmentation")
class AsymmetricUnifiedFocalLoss(LossModule):
    function = staticmethod(F.asymmetric_unified_focal_loss)


@register("lovasz_softmax", family="segmentation")
class LovaszSoftmaxLoss(LossModule):
    function = staticmethod(F.lovasz_softmax_loss)


@register("lovasz_hinge", family="segmentation")
class LovaszHingeLoss(LossModule):
    function = staticmethod(F.lovasz_hinge_loss)


@register("boundary", family="segmentation")
class BoundaryLoss(LossModule):
    function = staticmethod(F.boundary_loss)


@register("hausdorff_dt", "hausdorff", family="segmentation")
class HausdorffDTLoss(LossModule):
    function = staticmethod(F.hausdorff_dt_loss)


@register("cldice", family="segmentation")
class ClDiceLoss(LossModule):
    function = staticmethod(F.cldice_loss)


# Drop-in names for code that used torch.nn (the losskit versions take logits).
BCEWithLogitsLoss = BinaryCrossEntropyLoss
FocalLoss = SigmoidFocalLoss



# --- large vocabulary -------------------------------------------------------------------------
# Not registered: these take three or four tensors (hidden states, head
# weight, labels; or a student's and a teacher's hidden states and heads), which the registry's
# (input, target) contract cannot call. tests/test_large_vocab.py checks the same properties.


class _FusedHeadLoss(LossModule):
    """Module form of a fused-head loss: per-batch tensors go to ``forward``, options to the constructor."""

    per_batch: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        fn = cls.__dict__["function"].__func__
        cls.__doc__ = (
            f"Module form of :func:`losskit.{fn.__name__}`: options go to the constructor, the tensors "
            f"(and {', '.join(f'``{name}``' for name in cls.per_batch)}) to ``forward``. It holds no head "
            f"weight of its own; it is not in the registry (``losskit.get``), whose (input, target) "
            f"contract cannot call it.\n\n" + (fn.__doc__ or "")
        )

    @classmethod
    def option_names(cls) -> list[str]:
        return [name for name in super().option_names() if name not in cls.per_batch]

    def _call(self, *tensors, **call_options):
        return type(self).function(*tensors, **{**self.options(), **call_options})


class FusedLinearCrossEntropyLoss(_FusedHeadLoss):
    function = staticmethod(F.fused_linear_cross_entropy)
    per_batch = ("bias", "process_group")

    def forward(self, hidden, weight, target, bias=None, **call_options):
        """``fused_linear_cross_entropy(hidden, weight, target, bias=bias, **options)``."""
        return self._call(hidden, weight, target, bias=bias, **call_options)


class FusedLinearKLDivLoss(_FusedHeadLoss):
    function = staticmethod(F.fused_linear_kl_div)
    per_batch = ("student_bias", "teacher_bias", "target", "weight", "process_group")

    def forward(self, student_hidden, student_weight, teacher_hidden, teacher_weight, **call_options):
        """``fused_linear_kl_div(...)``; biases, ``target`` and ``weight`` go here as keywords."""
        return self._call(student_hidden, student_weight, teacher_hidden, teacher_weight, **call_options)


class FusedLinearJSDivLoss(_FusedHeadLoss):
    function = staticmethod(F.fused_linear_js_div)
    per_batch = ("student_bias", "teacher_bias", "target", "weight", "process_group")

    def forward(self, student_hidden, student_weight, teacher_hidden, teacher_weight, **call_options):
        """``fused_linear_js_div(...)``; biases, ``target`` and ``weight`` go here as keywords."""
        return self._call(student_hidden, student_weight, teacher_hidden, teacher_weight, **call_options)


del _FusedHeadLoss  # a base, not a loss: keep it out of __all__


# --- reinforcement learning and preferences ---------------------------------------------------


@register("reinforce", "vpg", "policy_gradient", family="rl")
class ReinforceLoss(LossModule):
    function = staticmethod(F.reinforce_loss)


@register("ppo_clip", "ppo", family="rl")
class PPOClipLoss(LossModule):
    function = staticmethod(F.ppo_clip_loss)


@register("value", "critic", family="rl")
class ValueLoss(LossModule):
    function = staticmethod(F.value_loss)


@register("kl_penalty", family="rl")
class KLPenaltyLoss(LossModule):
    function = staticmethod(F.kl_penalty)


@register("grpo", family="rl")
class GRPOLoss(LossModule):
    function = staticmethod(F.grpo_loss)


@register("dpo", family="preference")
class DPOLoss(LossModule):
    function = staticmethod(F.dpo_loss)


@register("simpo", family="preference")
class SimPOLoss(LossModule):
    function = staticmethod(F.simpo_loss)


@register("orpo", family="preference")
class ORPOLoss(LossModule):
    function = staticmethod(F.orpo_loss)


@register("kto", family="preference")
class KTOLoss(LossModule):
    function = staticmethod(F.kto_loss)


@register("cpo", family="preference")
class CPOLoss(LossModule):
    function = staticmethod(F.cpo_loss)


# --- contrastive ------------------------------------------------------------------------------


@register("info_nce", "infonce", "clip_contrastive", family="contrastive")
class InfoNCELoss(LossModule):
    r"""Module form of :func:`losskit.info_nce_loss`, optionally with CLIP's learned temperature.

    With ``learn_temperature=False`` (the default) it is the plain module form. With
    ``learn_temperature=True`` the temperature is learned as CLIP does: a parameter
    ``logit_scale`` :math:`= \log(1/\tau)`, initialised from ``temperature`` (CLIP: 0.07, so
    :math:`\log(1/0.07) \approx 2.659`), and :math:`1/\tau = \exp(\min(\text{logit\_scale},
    \log s_{max}))` with ``max_logit_scale`` :math:`s_{max} = 100`. The log-parameterisation
    keeps :math:`\tau > 0` and makes the optimiser's steps relative; the clamp stops the scale
    from growing without bound (CLIP clamps the parameter in place after each step; here the
    forward pass clamps, so the module holds no state that ``forward`` changes, and the gradient
    is 0 while the clamp is active). The config holds the options (``temperature`` is the initial
    value); the learned value is in ``state_dict``.

    Args:
        learn_temperature: Learn the temperature.
        max_logit_scale: Upper bound of :math:`1/\tau` (100, as CLIP).
        **options: The options of :func:`losskit.info_nce_loss`.

    Examples:
        >>> import torch, losskit
        >>> loss = losskit.InfoNCELoss(learn_temperature=True)
        >>> [name for name, _ in loss.named_parameters()], round(loss.temperature.item(), 4)
        (['logit_scale'], 0.07)
        >>> u = torch.eye(3)
        >>> loss(u, u).backward()
        >>> loss.logit_scale.grad is not None
        True
    """

    function = staticmethod(F.info_nce_loss)

    def __init__(self, *, learn_temperature: bool = False, max_logit_scale: float = 100.0, **options) -> None:
        super().__init__(**options)
        check_bool("learn_temperature", learn_temperature)
        self.learn_temperature = learn_temperature
        self.max_logit_scale = check_number("max_logit_scale", max_logit_scale, low=1.0)
        self.logit_scale = None
        if learn_temperature:
            initial = options.get("temperature", 0.07)
            initial = check_number("temperature", float(torch.as_tensor(initial)), low=0.0, low_open=True)
            self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1.0 / initial)))

    @property
    def temperature(self):
        """The temperature used now: a tensor when learned, else the option (0.07 if not given)."""
        import math

        if self.logit_scale is None:
            return self.options().get("temperature", 0.07)
        return self.logit_scale.clamp(max=math.log(self.max_logit_scale)).neg().exp()

    def forward(self, input, target, **call_options):
        if self.logit_scale is None:
            return super().forward(input, target, **call_options)
        return super().forward(input, target, **{**call_options, "temperature": self.temperature})

    def get_config(self):
        config = super().get_config()
        if self.learn_temperature:
            config.update(learn_temperature=True, max_logit_scale=self.max_logit_scale)
        return config

    def extra_repr(self) -> str:
        learned = (f"learn_temperature=True, max_logit_scale={self.max_logit_scale}"
                   if self.learn_temperature else "")
        return ", ".join(part for part in (super().extra_repr(), learned) if part)


@register("supervised_contrastive", "supcon", family="contrastive")
class SupervisedContrastiveLoss(LossModule):
    function = staticmethod(F.supervised_contrastive_loss)


@register("triplet_margin", "triplet", "batch_hard_triplet", family="contrastive")
class TripletMarginLoss(LossModule):
    function = staticmethod(F.triplet_margin_loss)



# --- metric learning (learned proxies; see losskit.metric) ----------------------------------------

from losskit.metric import *  # noqa: E402, F403

# Every module class above, the base class included.
__all__ = sorted(name for name, value in dict(globals()).items()
                 if isinstance(value, type) and issubclass(value, LossModule))
