r"""Deep supervision: one loss over the multi-scale outputs of a network, with a weight per scale.

Deeply supervised segmentation networks (nnU-Net, MONAI's DynUNet) return a prediction per
decoder level, the first at full resolution and each later one smaller. The loss is the weighted
sum of the wrapped loss at every level, against the target resized to that level's size by
nearest-neighbour sampling (``"nearest-exact"``, as MONAI), so index labels stay labels:

.. math::
    L = \sum_l w_l \, \ell(x_l, \operatorname{resize}(t, \operatorname{shape}(x_l)))

Weights: ``weights=[...]`` as given, else ``weight_mode`` (MONAI ``DeepSupervisionLoss``):
``"exp"`` halves them level by level, :math:`w_l = \max(2^{-l}, 1/16)`; ``"two"`` is 1 then 0.5;
``"same"`` is 1 everywhere. It is not a registered loss: its input is a list of tensors, which the
registry's ``(input, target)`` contract does not describe.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from losskit._core.checks import check_one_of, check_tensor

WEIGHT_MODES = ("exp", "two", "same")


def _resized(target: Tensor, spatial: tuple[int, ...]) -> Tensor:
    """``target`` (``(N, *S)`` / ``(N, 1, *S)`` indices or ``(N, C, *S)`` labels) sampled to ``spatial``."""
    if tuple(target.shape[-len(spatial):]) == spatial:
        return target
    channel = target.dim() == len(spatial) + 2
    x = target if channel else target.unsqueeze(1)
    if not x.is_floating_point():  # labels up to 2**24 are exact in float32
        resized = F.interpolate(x.float(), size=spatial, mode="nearest-exact").to(target.dtype)
    else:
        resized = F.interpolate(x, size=spatial, mode="nearest-exact")
    return resized if channel else resized.squeeze(1)


class DeepSupervisionLoss(nn.Module):
    """``loss`` summed over the scales of a deeply supervised output (see the module docstring).

    Args:
        loss: The loss of one scale, a module or function called as ``loss(input, target)``
            (a module becomes a submodule, so ``.to()`` and ``state_dict`` reach it).
        weights: One weight per level, at least as many as the levels given (extra ones are not
            used); ``None`` uses ``weight_mode``.
        weight_mode: ``"exp"`` | ``"two"`` | ``"same"``.

    Shape:
        - input: a tensor ``(N, C, *spatial)`` (then just ``loss(input, target)``), or a list of
          them, the first at the target's size.
        - target: ``(N, *spatial)`` / ``(N, 1, *spatial)`` class indices or ``(N, C, *spatial)`` labels.

    Examples:
        >>> import torch, losskit
        >>> from losskit.compose import DeepSupervisionLoss
        >>> criterion = DeepSupervisionLoss(losskit.nn.DiceLoss())
        >>> labels = torch.zeros(1, 4, 4, dtype=torch.long)
        >>> outputs = [torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 2, 2)]  # p = 0.5 everywhere
        >>> # each level: mean(1 - 2 TP / (P + T), 1 - 0 / P) = mean(1 - 2 * 8 / 24, 1) = 2/3 (4x4 level)
        >>> criterion(outputs, labels)  # 1 * 2/3 + 0.5 * 2/3
        tensor(1.0000)

    References:
        Lee et al., "Deeply-Supervised Nets", AISTATS 2015; Isensee et al., "nnU-Net", Nature
        Methods 2021. Weights follow MONAI ``DeepSupervisionLoss``.
    """

    def __init__(self, loss: nn.Module, *, weights: Sequence[float] | None = None, weight_mode: str = "exp") -> None:
        super().__init__()
        if not callable(loss):
            raise TypeError(f"loss must be a loss module or function, got {type(loss).__name__}")
        check_one_of("weight_mode", weight_mode, WEIGHT_MODES)
        if weights is not None:
            weights = [float(w) for w in weights]
            if not weights or any(not w >= 0 for w in weights):
                raise ValueError(f"weights must be a non-empty list of numbers >= 0, got {weights}")
        self.loss = loss
        self.weights = weights
        self.weight_mode = weight_mode

    def level_weights(self, levels: int) -> list[float]:
        """The weight of each of ``levels`` scales."""
        if self.weights is not None:
            if len(self.weights) < levels:
                raise ValueError(f"weights has {len(self.weights)} entries for {levels} levels of output")
            return self.weights[:levels]
        if self.weight_mode == "exp":
            return [max(0.5**level, 0.0625) for level in range(levels)]
        if self.weight_mode == "two":
            return [1.0 if level == 0 else 0.5 for level in range(levels)]
        return [1.0] * levels

    def forward(self, input: Tensor | Sequence[Tensor], target: Tensor) -> Tensor:
        check_tensor("target", target)
        if isinstance(input, Tensor):
            return self.loss(input, target)
        outputs = list(input)
        if not outputs:
            raise ValueError("input must be a tensor or a non-empty list of tensors (one per level)")
        total = None
        for weight, output in zip(self.level_weights(len(outputs)), outputs, strict=True):
            check_tensor("input", output)
            term = weight * self.loss(output, _resized(target, tuple(output.shape[2:])))
            total = term if total is None else total + term
        return total

    def extra_repr(self) -> str:
        return f"weights={self.weights!r}" if self.weights is not None else f"weight_mode={self.weight_mode!r}"


__all__ = ["WEIGHT_MODES", "DeepSupervisionLoss"]
