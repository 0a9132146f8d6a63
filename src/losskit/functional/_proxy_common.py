"""Pieces shared by the losses that compare embeddings with learned class proxies: the checks, the
cosines to the proxies without a normalized copy of them, and the reduction."""

from __future__ import annotations

import torch
import torch.nn.functional as TF
from torch import Tensor

from losskit._core.checks import check_class_indices, check_floating, check_same_device, check_tensor
from losskit._core.numerics import upcast
from losskit._core.reduction import check_reduction, reduce_loss
from losskit.functional.contrastive import _check_embeddings, _check_labels


def _check_inputs(input: Tensor, target: Tensor, proxies: Tensor, reduction: str, normalizer: object,
                  sub_centers: bool = False) -> None:
    check_reduction(reduction, normalizer)
    _check_embeddings("input", input)
    _check_labels(target, input)
    check_floating("proxies", proxies)
    check_same_device("input", input, "proxies", proxies)
    layout = "(C, K, D)" if sub_centers else "(C, D)"
    if proxies.dim() != len(layout.split(",")) or proxies.shape[-1] != input.shape[-1] or proxies.shape[0] == 0:
        raise ValueError(f"proxies must have shape {layout}, C >= 1 classes of the embedding size D = "
                         f"input.shape[1] = {input.shape[-1]}, got shape {tuple(proxies.shape)}")
    check_class_indices("target", target, proxies.shape[0], None)


def _cosines(x: Tensor, proxies: Tensor, best_sub_center: bool = True) -> tuple[Tensor, Tensor]:
    r"""The cosines ``(N, C)`` (the best of each class's sub-centres; every one, ``(N, C, K)``, with
    ``best_sub_center=False``) and the proxies' norms ``(C,)`` (for ``(C, K, D)`` proxies: ``(C, K)``).

    :math:`\hat x W^\top` scaled column by column by :math:`1/\lVert w_j\rVert` (see
    :mod:`losskit.functional.metric`: no normalized copy of the proxies)."""
    flat = proxies.reshape(-1, proxies.shape[-1])
    norms = flat.norm(dim=-1)
    cos = (TF.normalize(x, dim=-1) @ flat.T) / norms.clamp_min(torch.finfo(norms.dtype).tiny)
    if proxies.dim() == 3:
        cos = cos.view(x.shape[0], *proxies.shape[:2])
        if best_sub_center:
            cos = cos.amax(-1)
    return cos, norms.view(proxies.shape[:-1])


def _finish(loss: Tensor, *, input: Tensor, target: Tensor, proxies: Tensor, weight: Tensor | None,
            reduction: str, normalizer: float | Tensor | None) -> Tensor:
    if weight is not None:
        check_tensor("weight", weight)
        check_same_device("input", input, "weight", weight)
        weight = upcast(weight)
    return reduce_loss(loss, reduction, weight=weight, normalizer=normalizer, out_dtype=input.dtype,
                       inputs={"input": input, "target": target, "proxies": proxies})


def _prepare(input: Tensor, proxies: Tensor) -> tuple[Tensor, Tensor]:
    x = upcast(input)
    return x, upcast(proxies).to(x.dtype)
