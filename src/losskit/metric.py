"""Module forms of the metric-learning losses; those with class proxies hold them as an ``nn.Parameter``.

``losskit.nn.ArcFaceLoss(num_classes=1000, embedding_size=512)`` makes the proxies (the
classifier's weight, one row per class; ``(C, K, D)`` with sub-centres) and trains them with the
model: give the loss's parameters to the optimizer. ``proxies=`` starts from given values instead.
The config (``get_config``) holds ``num_classes`` and ``embedding_size``, plus the proxies' current
values when they were given explicitly; learned values are in ``state_dict``, as for any module.

:class:`CrossBatchMemory` wraps a pair loss with a memory of earlier batches (XBM); it is the one
module here that changes state in ``forward`` (see its docstring for when).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from losskit._core.checks import check_finite, check_floating, check_tensor
from losskit._core.module import LossModule
from losskit._core.registry import register
from losskit.functional import metric as F
from losskit.functional._metric_pairs import Memory, scored_against
from losskit.functional.contrastive import _check_embeddings, _check_labels

__all__ = [
    "ArcFaceLoss",
    "CircleLoss",
    "ContrastivePairLoss",
    "CosFaceLoss",
    "CrossBatchMemory",
    "FastAPLoss",
    "LargeMarginSoftmaxLoss",
    "LiftedStructureLoss",
    "MultiSimilarityLoss",
    "NPairsLoss",
    "NormalizedSoftmaxLoss",
    "ProxyAnchorLoss",
    "ProxyNCALoss",
    "SoftTripleLoss",
    "SphereFaceLoss",
    "SubCenterArcFaceLoss",
    "TupletMarginLoss",
]


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _from_config(values: object) -> Tensor:
    """A tensor from a config's nested list: float64 where float32 would round the values (so a config
    round-trips exactly), else the default dtype."""
    exact = torch.tensor(values, dtype=torch.float64)
    default = exact.to(torch.get_default_dtype())
    return default if torch.equal(default.double(), exact) else exact


class ProxyLoss(LossModule):
    """Base of the modules whose function takes learned ``proxies``: holds them as a parameter.

    Args:
        num_classes: :math:`C`.
        embedding_size: :math:`D`, the size of the embeddings.
        proxies: Initial proxies instead (a tensor or a nested list); ``num_classes`` and
            ``embedding_size``, when also given, must agree with its shape.
        **options: The options of the function.
    """

    #: How the proxies are laid out and first drawn (pytorch-metric-learning's initialisation).
    init: ClassVar[str] = "normal"

    def __init__(self, num_classes: int | None = None, embedding_size: int | None = None, *,
                 proxies: Tensor | list | None = None, **options: Any) -> None:
        super().__init__(**options)
        self._explicit = proxies is not None
        if proxies is None:
            if num_classes is None or embedding_size is None:
                raise TypeError(f"{type(self).__name__} needs num_classes and embedding_size (or proxies=)")
            shape = self.proxy_shape(_count("num_classes", num_classes), _count("embedding_size", embedding_size))
            proxies = self.initial_proxies(shape)
        elif not isinstance(proxies, Tensor):
            proxies = _from_config(proxies)
        check_tensor("proxies", proxies)
        shape = self.proxy_shape(num_classes or proxies.shape[0], embedding_size or proxies.shape[-1])
        if tuple(proxies.shape) != shape:
            raise ValueError(f"proxies must have shape {shape} (num_classes, ..., embedding_size), "
                             f"got {tuple(proxies.shape)}")
        self.proxies = nn.Parameter(proxies.detach().clone())

    @classmethod
    def option_names(cls) -> list[str]:
        return [name for name in super().option_names() if name != "proxies"]

    def proxy_shape(self, num_classes: int, embedding_size: int) -> tuple[int, ...]:
        return (num_classes, embedding_size)

    def initial_proxies(self, shape: tuple[int, ...]) -> Tensor:
        return torch.randn(shape)

    @property
    def num_classes(self) -> int:
        return self.proxies.shape[0]

    @property
    def embedding_size(self) -> int:
        return self.proxies.shape[-1]

    def forward(self, input: Tensor, target: Tensor, **call_options: Any) -> Tensor:
        return type(self).function(input, target, **{**self.options(), "proxies": self.proxies, **call_options})

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(num_classes=self.num_classes, embedding_size=self.embedding_size)
        if self._explicit:
            config["proxies"] = self.proxies.detach().tolist()
        return config

    def extra_repr(self) -> str:
        return ", ".join(part for part in (f"num_classes={self.num_classes}, embedding_size={self.embedding_size}",
                                           super().extra_repr()) if part)


@register("normalized_softmax", "normface", family="metric")
class NormalizedSoftmaxLoss(ProxyLoss):
    function = staticmethod(F.normalized_softmax_loss)


@register("cosface", "am_softmax", "large_margin_cosine", family="metric")
class CosFaceLoss(ProxyLoss):
    function = staticmethod(F.cosface_loss)


@register("arcface", "additive_angular_margin", family="metric")
class ArcFaceLoss(ProxyLoss):
    function = staticmethod(F.arcface_loss)


@register("sub_center_arcface", "subcenter_arcface", family="metric")
class SubCenterArcFaceLoss(ProxyLoss):
    """Module form of :func:`losskit.sub_center_arcface_loss`, holding ``sub_centers`` proxies per class
    (3 by default, as pytorch-metric-learning) as a parameter ``(C, K, D)``.

    """

    function = staticmethod(F.sub_center_arcface_loss)

    def __init__(self, num_classes: int | None = None, embedding_size: int | None = None, *,
                 sub_centers: int | None = None, proxies: Tensor | list | None = None, **options: Any) -> None:
        given = None if proxies is None or not isinstance(proxies, Tensor) else proxies.shape[1]
        self.sub_centers = _count("sub_centers", sub_centers if sub_centers is not None else given or 3)
        super().__init__(num_classes, embedding_size, proxies=proxies, **options)

    def proxy_shape(self, num_classes: int, embedding_size: int) -> tuple[int, ...]:
        return (num_classes, self.sub_centers, embedding_size)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "sub_centers": self.sub_centers}


SubCenterArcFaceLoss.__doc__ += F.sub_center_arcface_loss.__doc__ or ""


@register("sphereface", "a_softmax", family="metric")
class SphereFaceLoss(ProxyLoss):
    function = staticmethod(F.sphereface_loss)


@register("large_margin_softmax", "l_softmax", family="metric")
class LargeMarginSoftmaxLoss(ProxyLoss):
    function = staticmethod(F.large_margin_softmax_loss)


@register("proxy_nca", family="metric")
class ProxyNCALoss(ProxyLoss):
    function = staticmethod(F.proxy_nca_loss)


@register("proxy_anchor", family="metric")
class ProxyAnchorLoss(ProxyLoss):
    r"""Module form of :func:`losskit.proxy_anchor_loss`, holding one proxy per class as a parameter
    ``(C, D)``, first drawn as pytorch-metric-learning's (Kaiming normal, fan out: standard deviation
    :math:`\sqrt{2 / C}`).

    """

    function = staticmethod(F.proxy_anchor_loss)

    def initial_proxies(self, shape: tuple[int, ...]) -> Tensor:
        return nn.init.kaiming_normal_(torch.empty(shape), mode="fan_out")


ProxyAnchorLoss.__doc__ += F.proxy_anchor_loss.__doc__ or ""


@register("soft_triple", "softtriple", family="metric")
class SoftTripleLoss(ProxyLoss):
    """Module form of :func:`losskit.soft_triple_loss`, holding ``centers_per_class`` centres per class
    (10 by default, as pytorch-metric-learning) as a parameter ``(C, K, D)``.

    """

    function = staticmethod(F.soft_triple_loss)

    def __init__(self, num_classes: int | None = None, embedding_size: int | None = None, *,
                 centers_per_class: int | None = None, proxies: Tensor | list | None = None,
                 **options: Any) -> None:
        given = None if proxies is None or not isinstance(proxies, Tensor) else proxies.shape[1]
        self.centers_per_class = _count("centers_per_class", centers_per_class if centers_per_class is not None
                                        else given or 10)
        super().__init__(num_classes, embedding_size, proxies=proxies, **options)

    def proxy_shape(self, num_classes: int, embedding_size: int) -> tuple[int, ...]:
        return (num_classes, self.centers_per_class, embedding_size)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "centers_per_class": self.centers_per_class}


SoftTripleLoss.__doc__ += F.soft_triple_loss.__doc__ or ""


# --- pair losses on a labelled batch (no learned state) ---------------------------------------------


@register("multi_similarity", "ms", family="metric")
class MultiSimilarityLoss(LossModule):
    function = staticmethod(F.multi_similarity_loss)


@register("circle", family="metric")
class CircleLoss(LossModule):
    function = staticmethod(F.circle_loss)


@register("contrastive_pair", "pair_margin", family="metric")
class ContrastivePairLoss(LossModule):
    function = staticmethod(F.contrastive_pair_loss)


@register("lifted_structure", family="metric")
class LiftedStructureLoss(LossModule):
    function = staticmethod(F.lifted_structure_loss)


@register("tuplet_margin", family="metric")
class TupletMarginLoss(LossModule):
    function = staticmethod(F.tuplet_margin_loss)


@register("fast_ap", "fastap", family="metric")
class FastAPLoss(LossModule):
    function = staticmethod(F.fast_ap_loss)


@register("npairs", "n_pairs", family="metric")
class NPairsLoss(LossModule):
    function = staticmethod(F.npairs_loss)



# --- cross-batch memory ------------------------------------------------------------------------------


class CrossBatchMemory(nn.Module):
    r"""Cross-batch memory (XBM): a pair loss that scores each batch against the embeddings of earlier batches too.

    A ring buffer holds the last ``memory_size`` embeddings (without gradient) and their labels.
    Each call writes the batch into it, over the oldest rows, and then scores the batch's anchors
    against every filled row of the memory, the batch's own rows included, but not each anchor's
    own row: for a pair loss :math:`\ell` with anchors :math:`x_i` and candidates :math:`m_j`,

    .. math::
        L = \operatorname{reduce}_i\, \ell\big(x_i;\ \{(m_j, y_j) : j \in \text{memory},\ j \ne
            \text{slot}(i)\}\big),

    with the gradient through the anchors only (the memory is detached). Early in training the
    embeddings drift fast and old rows mislead: the paper starts the memory after a warm-up (wrap
    the loss from then on, or call :meth:`reset`).

    **When the memory changes.** Unlike the other loss modules, this one changes state in
    ``forward``, because keeping the last batches is its whole purpose, as a batch norm keeps its
    running statistics: in training mode (``module.train()``, the default) each call writes its
    batch, once, before scoring it (so several calls per optimizer step, as in gradient
    accumulation, write several batches). In eval mode (``module.eval()``) the memory is left as it
    is and the batch is scored against the memory plus itself, so validation never enters it.
    :meth:`reset` empties it. The memory, its labels, which rows are filled and the next row to
    write are buffers: ``.to()``, ``state_dict`` and ``load_state_dict`` carry the whole state. The
    memory keeps its own dtype (float32 unless moved with ``.double()`` or ``.to(dtype)``), so
    half-precision embeddings are stored without loss. No host sync: the rows are written and
    masked on the device (with value checks on, the batch is checked finite before it is written,
    one sync, as every loss's value check).

    The wrapped loss keeps its options, its natural unit and its reductions, with the memory as the
    candidates: one value per anchor of the batch; :func:`losskit.contrastive_pair_loss` gives
    ``(N, M - 1)`` over the memory's rows (``M = memory_size``; ``memory_size + N`` in eval mode), its
    empty rows 0 and left out of ``"mean"``.

    Args:
        loss: The pair loss, a module: :class:`ContrastivePairLoss`, :class:`MultiSimilarityLoss`,
            :class:`CircleLoss` or :class:`TupletMarginLoss` (the pair losses whose terms pair an
            anchor with single candidates), without ``distributed=True``.
        embedding_size: :math:`D`.
        memory_size: The number of embeddings kept (1024, as pytorch-metric-learning); at least
            the batch size.

    Shape:
        - input: :math:`(N, D)` with :math:`N \le` ``memory_size``; target: :math:`(N,)` integer.
        - output: as the wrapped loss's, with the memory's rows as its candidates.

    Raises:
        TypeError: A loss that is not one of the supported modules.
        ValueError: A ``distributed`` loss, bad sizes, a batch larger than the memory or of another
            embedding size.

    Examples:
        >>> import torch, losskit
        >>> xbm = losskit.metric.CrossBatchMemory(losskit.MultiSimilarityLoss(), embedding_size=2, memory_size=4)
        >>> _ = xbm(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1]))
        >>> # the next batch's anchors find their positives in the memory
        >>> loss = xbm(torch.tensor([[1.0, 0.1], [0.1, 1.0]]), torch.tensor([0, 1]))
        >>> xbm.filled.tolist(), xbm.label_memory.tolist()
        ([True, True, True, True], [0, 1, 0, 1])

    References:
        Wang et al., "Cross-Batch Memory for Embedding Learning", CVPR 2020. Which pairs are scored
        follows pytorch-metric-learning ``CrossBatchMemory`` (tested over several steps).
    """

    #: The functions of the losses a memory can feed: each scores an anchor against single candidates.
    supported: ClassVar[tuple] = (F.contrastive_pair_loss, F.multi_similarity_loss, F.circle_loss,
                                  F.tuplet_margin_loss)

    def __init__(self, loss: LossModule, embedding_size: int, memory_size: int = 1024) -> None:
        super().__init__()
        function = getattr(type(loss), "function", None) if isinstance(loss, LossModule) else None
        if function not in self.supported:
            raise TypeError("loss must be one of the pair loss modules ContrastivePairLoss, MultiSimilarityLoss, "
                            f"CircleLoss, TupletMarginLoss, got {type(loss).__name__}")
        if loss.options().get("distributed", False):
            raise ValueError("loss must not be distributed: the memory holds this process's embeddings only")
        self.loss = loss
        self.embedding_size = _count("embedding_size", embedding_size)
        self.memory_size = _count("memory_size", memory_size)
        self.register_buffer("embedding_memory", torch.zeros(self.memory_size, self.embedding_size))
        self.register_buffer("label_memory", torch.zeros(self.memory_size, dtype=torch.long))
        self.register_buffer("filled", torch.zeros(self.memory_size, dtype=torch.bool))
        self.register_buffer("position", torch.zeros((), dtype=torch.long))

    def reset(self) -> None:
        """Empty the memory (the next batch is scored against itself only)."""
        self.filled.zero_()
        self.position.zero_()

    def _check(self, input: Tensor, target: Tensor) -> None:
        _check_embeddings("input", input)
        check_floating("input", input)
        _check_labels(target, input)
        if input.shape[1] != self.embedding_size:
            raise ValueError(f"input must have shape (N, {self.embedding_size}) (embedding_size), got shape "
                             f"{tuple(input.shape)}")
        if input.shape[0] > self.memory_size:
            raise ValueError(f"input holds {input.shape[0]} embeddings, more than memory_size = {self.memory_size}: "
                             "the batch must fit in the memory")
        if input.device != self.embedding_memory.device:
            raise ValueError(f"input is on {input.device}, the memory on {self.embedding_memory.device}: "
                             "move the module with .to()")
        check_finite("input", input)  # before it enters the memory, where it would poison later batches

    @torch.no_grad()
    def _write(self, input: Tensor, target: Tensor) -> Tensor:
        """Write the batch over the oldest rows; its rows."""
        rows = (self.position + torch.arange(input.shape[0], device=input.device)) % self.memory_size
        self.embedding_memory.index_copy_(0, rows, input.detach().to(self.embedding_memory.dtype))
        self.label_memory.index_copy_(0, rows, target.to(self.label_memory.dtype))
        self.filled.index_fill_(0, rows, True)
        self.position.copy_((self.position + input.shape[0]) % self.memory_size)
        return rows

    def forward(self, input: Tensor, target: Tensor, **call_options: Any) -> Tensor:
        """The wrapped loss of the batch against the memory; ``call_options`` (``weight=``,
        ``reduction=``, ...) go to it. Writes the batch first in training mode (see above)."""
        self._check(input, target)
        if self.training:
            memory = Memory(self.embedding_memory, self.label_memory, self.filled, self._write(input, target))
        else:
            n = input.shape[0]
            memory = Memory(torch.cat((self.embedding_memory, input.detach().to(self.embedding_memory.dtype))),
                            torch.cat((self.label_memory, target.to(self.label_memory.dtype))),
                            torch.cat((self.filled, self.filled.new_ones(n))),
                            self.memory_size + torch.arange(n, device=input.device))
        with scored_against(memory):
            return self.loss(input, target, **call_options)

    def extra_repr(self) -> str:
        return f"embedding_size={self.embedding_size}, memory_size={self.memory_size}"
