r"""How a composite weights its terms: fixed weights, or weights learned from each term's
uncertainty (Kendall, Gal & Cipolla, CVPR 2018).

With learned weighting each term that takes inputs has a parameter :math:`s = \log \sigma^2`, and
contributes :math:`a\, e^{-s}\, w\, L + b\, s` to the total, :math:`(a, b)` set by the form.
"""

from __future__ import annotations

import torch
from torch import Tensor

WEIGHTINGS = ("fixed", "uncertainty")
# (a, b) in  a * exp(-s) * L + b * s,  s = log(sigma^2)
UNCERTAINTY_FORMS: dict[str, tuple[float, float]] = {
    "plain": (1.0, 1.0),
    "regression": (0.5, 0.5),
    "classification": (1.0, 0.5),
}


def uncertainty_weighted(value: Tensor, weight: float, log_variance: Tensor, form: str) -> tuple[Tensor, Tensor]:
    """The effective weight :math:`a e^{-s} w` and the contribution :math:`a e^{-s} w L + b s` of
    a term with loss ``value``, scheduled weight ``weight`` and learned ``log_variance`` :math:`s`."""
    a, b = UNCERTAINTY_FORMS[form]
    effective = a * torch.exp(-log_variance) * weight
    return effective, effective * value + b * log_variance
