r"""The per-pair formulas of DPO's loss types (TRL's ``DPOConfig.loss_type``) and f-DPO's scores.

:func:`losskit.dpo_loss` checks the inputs, picks the scores and sums the weighted variants; this
module holds only the formulas, each a function of one :class:`_Pair` returning a loss per pair.
Names and formulas follow TRL 1.x (``DPOTrainer._compute_loss``); where TRL departs from the paper
the function's comment says how (and ``docs/families/preference.md`` lists it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as TF
from torch import Tensor

from losskit._core.numerics import safe_divide

F_DIVERGENCES: tuple[str, ...] = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")

# f-DPO's reparameterization leaves a beta log Z(x) term that cancels only in the chosen-minus-rejected
# score difference: the other loss types have no f-divergence form (TRL raises for them too).
F_DIVERGENCE_VARIANTS: frozenset[str] = frozenset(
    {"sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft"})

# Variants that read label_smoothing (the rest ignore it; exo_pair needs it > 0).
SMOOTHED_VARIANTS: frozenset[str] = frozenset({"sigmoid", "robust", "exo_pair", "aot", "aot_unpaired"})

# Variants that read the completions' token counts.
LENGTH_VARIANTS: frozenset[str] = frozenset({"sigmoid_norm", "sft"})

# exp() of an alpha-divergence exponent beyond 80 overflows float32 (TRL clamps at 80 too).
_ALPHA_EXPONENT_LIMIT = 80.0


@dataclass
class _Pair:
    """Everything a loss type reads, in the compute dtype."""

    chosen: Tensor  # log pi(y_w), summed
    rejected: Tensor
    chosen_ratio: Tensor  # log pi(y_w) - log pi_ref(y_w)
    rejected_ratio: Tensor
    chosen_score: Tensor  # f'(pi / pi_ref) of the chosen completion (its log-ratio for reverse KL)
    rejected_score: Tensor
    chosen_lengths: Tensor | None
    rejected_lengths: Tensor | None
    beta: float
    label_smoothing: float
    discopop_tau: float

    @property
    def delta(self) -> Tensor:
        return self.chosen_score - self.rejected_score

    @property
    def ref_margin(self) -> Tensor:
        """``log pi_ref(y_w) - log pi_ref(y_l)``."""
        return (self.chosen - self.chosen_ratio) - (self.rejected - self.rejected_ratio)


def f_scores(log_ratio: Tensor, f_divergence: str, alpha: float) -> Tensor:
    r""":math:`f'(u)` at :math:`u = \pi/\pi_\text{ref} = e^\text{log_ratio}`, as TRL writes it.

    reverse KL: :math:`\log u`; forward KL: :math:`1 - 1/u`; Jensen-Shannon:
    :math:`\log(2u/(1+u)) = \log 2 + \log\sigma(\log u)`; alpha: :math:`(u^{\alpha-1} - 1)/(\alpha - 1)`
    (reverse KL in the limit :math:`\alpha \to 1`).
    """
    if f_divergence == "reverse_kl":
        return log_ratio
    if f_divergence == "forward_kl":
        return -torch.expm1(-log_ratio)
    if f_divergence == "js_divergence":
        return math.log(2.0) + TF.logsigmoid(log_ratio)
    if abs(alpha - 1.0) < 1e-6:
        return log_ratio
    exponent = ((alpha - 1.0) * log_ratio).clamp(max=_ALPHA_EXPONENT_LIMIT)
    return torch.expm1(exponent) / (alpha - 1.0)  # expm1: exact for small exponents, where u^(a-1) - 1 cancels


def _smoothed(z: Tensor, s: float) -> Tensor:
    return -(1 - s) * TF.logsigmoid(z) - s * TF.logsigmoid(-z)


def _per_token(score: Tensor, lengths: Tensor | None) -> Tensor:
    return score if lengths is None else safe_divide(score, lengths.to(score.dtype).clamp(min=1.0))


def _sigmoid(p: _Pair) -> Tensor:
    # TRL 1.x dropped label smoothing from "sigmoid"; with s > 0 this is cDPO (TRL < 1.0, the cDPO note).
    return _smoothed(p.beta * p.delta, p.label_smoothing)


def _hinge(p: _Pair) -> Tensor:
    return torch.relu(1 - p.beta * p.delta)


def _ipo(p: _Pair) -> Tensor:
    # The paper's margin is the summed log-ratio difference; TRL divides each completion's score by its
    # token count (confirmed with the authors, says TRL). With lengths given, TRL's form.
    margin = _per_token(p.chosen_score, p.chosen_lengths) - _per_token(p.rejected_score, p.rejected_lengths)
    return (margin - 1 / (2 * p.beta)) ** 2


def _exo_pair(p: _Pair) -> Tensor:
    # KL(q || p_eps) over {chosen, rejected}, q = softmax of beta times the scores, p_eps = (1 - eps, eps).
    z, eps = p.beta * p.delta, p.label_smoothing
    return (torch.sigmoid(z) * (TF.logsigmoid(z) - math.log1p(-eps))
            + torch.sigmoid(-z) * (TF.logsigmoid(-z) - math.log(eps)))


def _nca_pair(p: _Pair) -> Tensor:
    c, r = p.beta * p.chosen_ratio, p.beta * p.rejected_ratio
    return -TF.logsigmoid(c) - 0.5 * TF.logsigmoid(-c) - 0.5 * TF.logsigmoid(-r)


def _robust(p: _Pair) -> Tensor:
    z, s = p.beta * p.delta, p.label_smoothing
    return (-(1 - s) * TF.logsigmoid(z) + s * TF.logsigmoid(-z)) / (1 - 2 * s)


def _bco_pair(p: _Pair) -> Tensor:
    # The BCO paper shifts both rewards by a running mean delta; TRL 1.x has no shift (delta = 0).
    return -TF.logsigmoid(p.beta * p.chosen_ratio) - TF.logsigmoid(-p.beta * p.rejected_ratio)


def _sppo_hard(p: _Pair) -> Tensor:
    # SPPO with hard preference probabilities (1 for the winner, 0 for the loser).
    return (p.chosen_ratio - 0.5 / p.beta) ** 2 + (p.rejected_ratio + 0.5 / p.beta) ** 2


def _sorted(x: Tensor) -> Tensor:
    return torch.sort(x.reshape(-1), dim=0).values.reshape(x.shape)


def _aot(p: _Pair) -> Tensor:
    # Alignment via optimal transport: the sorted policy margins against the sorted reference margins.
    delta = _sorted(p.chosen - p.rejected) - _sorted(p.ref_margin)
    return _smoothed(p.beta * delta, p.label_smoothing)


def _aot_unpaired(p: _Pair) -> Tensor:
    delta = _sorted(p.chosen_ratio) - _sorted(p.rejected_ratio)
    return _smoothed(p.beta * delta, p.label_smoothing)


def _apo_zero(p: _Pair) -> Tensor:
    # 1 - sigmoid(x) = sigmoid(-x), exact for large x.
    return torch.sigmoid(-p.beta * p.chosen_ratio) + torch.sigmoid(p.beta * p.rejected_ratio)


def _apo_down(p: _Pair) -> Tensor:
    return torch.sigmoid(p.beta * p.chosen_ratio) + torch.sigmoid(-p.beta * (p.chosen_ratio - p.rejected_ratio))


def _discopop(p: _Pair) -> Tensor:
    # Log-ratio modulated loss: a sigmoid gate of tau-scaled logits blends the logistic and exponential losses.
    z = p.beta * p.delta
    gate = torch.sigmoid(z / p.discopop_tau)
    return -TF.logsigmoid(z) * (1 - gate) + torch.exp(-z) * gate


def _sft(p: _Pair) -> Tensor:
    # TRL: the negative mean log-probability over all the chosen tokens of the batch, repeated per pair.
    if p.chosen_lengths is None:
        total, count = p.chosen.sum(), p.chosen.new_tensor(float(p.chosen.numel()))
    else:
        total, count = p.chosen.sum(), p.chosen_lengths.sum().to(p.chosen.dtype)
    return (-safe_divide(total, count)).expand(p.chosen.shape)


def _sigmoid_norm(p: _Pair) -> Tensor:
    margin = _per_token(p.chosen_score, p.chosen_lengths) - _per_token(p.rejected_score, p.rejected_lengths)
    return -TF.logsigmoid(p.beta * margin)


LOSSES: dict[str, Callable[[_Pair], Tensor]] = {
    "sigmoid": _sigmoid, "hinge": _hinge, "ipo": _ipo, "exo_pair": _exo_pair, "nca_pair": _nca_pair,
    "robust": _robust, "bco_pair": _bco_pair, "sppo_hard": _sppo_hard, "aot": _aot, "aot_unpaired": _aot_unpaired,
    "apo_zero": _apo_zero, "apo_down": _apo_down, "discopop": _discopop, "sft": _sft, "sigmoid_norm": _sigmoid_norm,
}

DPO_VARIANTS: tuple[str, ...] = tuple(LOSSES)
