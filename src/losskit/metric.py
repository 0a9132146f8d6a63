"""Module forms of the metric-learning losses; those with class proxies hold them as an ``nn.Parameter``.

``losskit.nn.ArcFaceLoss(num_classes=1000, embedding_size=512)`` makes the proxies (the
classifier's weight, one row per class; ``(C, K, D)`` with sub-centres) and trains them with the
model: give the loss's parameters to the optimizer. ``proxies=`` starts from given values instead.
The config (``get_config``) holds ``num_classes`` and ``embedding_size``, plus the proxies' current
values when they were given explicitly; learned values are in ``state_dict``, as for any module.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from losskit._core.checks import check_tensor
from losskit._core.module import LossModule
from losskit._core.registry import register
from losskit.functional import metric as F

__all__ = [
    "ArcFaceLoss",
    "CircleLoss",
    "ContrastivePairLoss",
    "CosFaceLoss",
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
