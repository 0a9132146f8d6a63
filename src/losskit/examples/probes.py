"""The 1-D probes of ``losskit plot``: each loss's value and gradient along one variable.

A :class:`Sweep` turns the points ``x`` of its :class:`Axis` into the loss's inputs and returns one
curve per fixed setting (PPO at a positive and a negative advantage has two). Each family has a
default sweep (:data:`FAMILY`); a spec names another with ``Spec(probe=...)`` when its loss takes
other inputs (a binary classification loss, rotated boxes, a hinge on one logit), and a sweep
carries the options a loss cannot be built without (``using(class_counts=...)``). Nothing is tried
and caught: a loss that raises on its sweep fails ``losskit plot`` and the tests.

* **regression**: the residual :math:`r \\in [-3, 3]` (``input=r``, ``target=0``).
* **classification**: the margin :math:`x \\in [-6, 6]`. Binary losses see the logit ``x`` with
  target 1; softmax losses (index targets) see the two-class logits ``(x, 0)`` with target 0, so
  ``x`` is the margin of the true class. Both read the same way: right is confident and correct,
  left is confident and wrong.
* **boxes**: a unit box against the same box shifted by :math:`s \\in [-1.5, 1.5]` along ``x``
  (the IoU is :math:`(1-|s|)/(1+|s|)` for :math:`|s| < 1` and 0 beyond). Rotated boxes
  ``(cx, cy, w, h, angle)`` and 3-D boxes ``xyzxyz`` get the same shift.
* **detection**: the logit :math:`x \\in [-6, 6]` of a positive with target quality 1;
  distribution focal loss sees 8 bins with logit ``x`` at bin 3, the others 0, and the target
  distance 3, so ``x`` is the logit of the target bin.
* **segmentation**: a 16x16 image whose true mask is the band of rows 4-11 (half the pixels); the
  logit margin :math:`x \\in [-6, 6]` is applied uniformly: two-class logits ``(0, x)`` on the mask
  and ``(0, -x)`` elsewhere (a single logit ``+-x`` for the Lovasz hinge).
* **contrastive**: the cosine similarity :math:`s \\in [-0.99, 0.99]` of a positive pair: unit
  embeddings ``e1`` and ``(s, sqrt(1 - s^2), 0)``, with ``e3`` as the negative (cosine 0). InfoNCE
  sees the pairs ``(e1, v)``, ``(e3, e3)``; the labelled losses the batch ``e1, v, e3`` with labels
  ``0, 0, 1``. The loss of the first row (anchor) is drawn.
* **metric**: the cosine :math:`s \\in [-0.99, 0.99]` of the embedding ``(s, sqrt(1 - s^2), 0)`` of
  class 0 and its class's proxy ``e1``; class 1's proxy is ``e3`` (cosine 0). The pair losses see
  the contrastive probe's batch ``e1, v, e3`` (labels ``0, 0, 1``), the loss of anchor ``e1``.
* **divergence**: the two-class logits ``(x, 0)``, :math:`x \\in [-6, 6]`, against the target
  distribution ``(0.75, 0.25)`` (KL is 0 at :math:`x = \\ln 3`).
* **rl**, one row per kind of input: PPO-type losses against the probability ratio
  :math:`r \\in [0.5, 1.5]` (``log pi_old = log 0.5``) at advantage +1 and -1 (GRPO: a group of two
  answers with rewards 1 and 0); REINFORCE against the log-probability at return +1 and -1; the
  value loss against the value error (return 0); the KL penalty against the log-ratio
  ``log pi - log pi_ref``.
* **preference**: pairwise losses against the log-probability margin :math:`m \\in [-6, 6]` of
  chosen minus rejected (``-3.5 + m/2`` and ``-3.5 - m/2``; DPO's reference log-probabilities both
  -3.5); KTO against the log-ratio of one answer, desirable and undesirable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

Curves = list[tuple[str, Tensor]]  # (curve label, one loss value per point of x)


@dataclass(frozen=True)
class Axis:
    """The x axis of a probe: the variable, its label and its range."""

    variable: str
    label: str
    low: float
    high: float

    def grid(self, points: int) -> Tensor:
        """``points`` float64 values from ``low`` to ``high`` that autograd differentiates."""
        return torch.linspace(self.low, self.high, points, dtype=torch.float64, requires_grad=True)


@dataclass(frozen=True)
class Sweep:
    """One way to draw a loss along an axis.

    Attributes:
        kind: The probe's fixed setting, for the legend.
        axis: The probed variable.
        curves: ``curves(loss, x)``: the loss module's curves at the points ``x``.
        options: Options the loss is built with on this probe (``losskit.get(name, **options)``).
    """

    kind: str
    axis: Axis
    curves: Callable[[Callable[..., Tensor], Tensor], Curves] = field(compare=False)
    options: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def using(self, **options: Any) -> Sweep:
        """The same sweep for a loss built with ``options``."""
        return replace(self, options={**self.options, **options})


# --- the axes ----------------------------------------------------------------------------------

RESIDUAL = Axis("r", "residual r = input - target", -3.0, 3.0)
MARGIN = Axis("x", "margin x (logit of the true class against 0)", -6.0, 6.0)
SHIFT = Axis("s", "shift s of a unit box along x (IoU = (1 - |s|) / (1 + |s|) for |s| < 1, else 0)", -1.5, 1.5)
QUALITY_LOGIT = Axis("x", "logit x of a positive (target quality 1; distribution_focal: logit of the target bin, "
                          "8 bins, the others 0, target distance 3)", -6.0, 6.0)
MASK_MARGIN = Axis("x", "logit margin x on a 16x16 image whose true mask is the band of rows 4-11 "
                        "(half the pixels): foreground logit +x on the mask, -x elsewhere", -6.0, 6.0)
POSITIVE_COSINE = Axis("s", "cosine similarity s of the positive pair (the negative at cosine 0)", -0.99, 0.99)
PROXY_COSINE = Axis("s", "cosine s of an embedding and its class's proxy e1, the other class's proxy e3 at "
                         "cosine 0 (pair losses: of the anchor e1 and its positive, the negative e3)", -0.99, 0.99)
TEACHER_MARGIN = Axis("x", "logit x of class 0, logits (x, 0), against the target P = (0.75, 0.25)", -6.0, 6.0)
RATIO = Axis("r", "probability ratio r = pi / pi_old (log pi_old = log 0.5)", 0.5, 1.5)
LOG_PROB = Axis("l", "log-probability l = log pi of the sampled action", -3.0, 0.0)
VALUE_ERROR = Axis("e", "value error e = value - return (return 0)", -3.0, 3.0)
LOG_RATIO = Axis("d", "log-ratio d = log pi - log pi_ref (log pi_ref = -3)", -2.0, 2.0)
PAIR_MARGIN = Axis("m", "log-prob margin m = log pi(chosen) - log pi(rejected) "
                        "(mean -3.5; dpo: reference log-probs equal, so m is the log-ratio margin)", -6.0, 6.0)
ONE_ANSWER = Axis("d", "log-ratio d = log pi(y) - log pi_ref(y) of one answer (log pi_ref = -3.5)", -3.0, 3.0)


# --- inputs along an axis -------------------------------------------------------------------------

def _one(loss: Tensor) -> Curves:
    return [("", loss)]


def _stacked(fn: Callable[[Tensor], Tensor], s: Tensor) -> Tensor:
    """``fn(s_i)`` for each probe point, stacked: for losses that couple the rows of a batch."""
    return torch.stack([fn(s[i]) for i in range(s.shape[0])])


def _box_sweep(kind: str, shifted: Callable[[Tensor], Tensor], unit: list[float]) -> Sweep:
    def curves(loss, s):
        pred = shifted(s)
        return _one(loss(pred, torch.tensor(unit, dtype=s.dtype).expand_as(pred), reduction="none"))

    return Sweep(f"{kind}: shifted box vs unit box", SHIFT, curves)


def _band_mask(x: Tensor, channels: int, size: int = 16) -> tuple[Tensor, Tensor]:
    """Logits ``(P, C, size, size)`` at margin ``x`` and the true mask ``(P, size, size)``.

    The mask is a horizontal band, rows ``size/4`` to ``3 size/4``: half the pixels, with a
    skeleton (for clDice) and a boundary away from the image border (for the distance losses).
    """
    mask = torch.zeros(size, size, dtype=torch.long)
    mask[size // 4: 3 * size // 4] = 1
    fg = x[:, None, None] * (2 * mask - 1).to(x)
    target = mask.expand(x.shape[0], size, size)
    logits = torch.stack([torch.zeros_like(fg), fg], 1) if channels == 2 else fg[:, None]
    return logits, target


def _segmentation_sweep(kind: str, channels: int) -> Sweep:
    def curves(loss, x):
        value = loss(*_band_mask(x, channels), reduction="none")
        return _one(value.reshape(x.shape[0], -1).mean(1))  # one value per image

    return Sweep(kind, MASK_MARGIN, curves)


def _image_by_image(loss, x):  # for losses that pool the batch: one image per call
    return _one(_stacked(lambda xi: loss(*_band_mask(xi[None], channels=2), reduction="none").mean(), x))


def _pair_embeddings(s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Unit embeddings: ``e1`` and ``(s, sqrt(1 - s^2), 0)`` (cosine ``s``), and ``e3`` (cosine 0 to both)."""
    zero = torch.zeros_like(s)
    c = torch.sqrt(1 - s * s)  # |s| < 1 on the probe: at |s| = 1 this derivative is infinite
    e1 = torch.stack([torch.ones_like(s), zero, zero])
    e3 = torch.stack([zero, zero, torch.ones_like(s)])
    return e1, torch.stack([s, c, zero]), e3


def _paired(loss, s):  # row 0 of input (e1) and of target (cosine s); row 1: e3 and e3
    def at(si):
        e1, v, e3 = _pair_embeddings(si)
        return loss(torch.stack([e1, e3]), torch.stack([v, e3]), reduction="none")[0]

    return _one(_stacked(at, s))


def _labelled(loss, s):  # anchor e1, its positive v (label 0) and the negative e3 (label 1)
    def at(si):  # the anchor's value: the sum of its pairs' where the unit is a pair
        e1, v, e3 = _pair_embeddings(si)
        return loss(torch.stack([e1, v, e3]), torch.tensor([0, 0, 1]), reduction="none")[0].sum()

    return _one(_stacked(at, s))


def _proxies(loss, s):
    proxies = torch.zeros_like(loss.proxies, dtype=s.dtype)
    proxies[0, ..., 0] = proxies[1, ..., 2] = 1.0  # class 0 along e1, class 1 along e3 (every sub-centre)
    v = torch.stack([s, torch.sqrt(1 - s * s), torch.zeros_like(s)], 1)
    return _one(loss(v, torch.zeros(s.shape[0], dtype=torch.long), proxies=proxies, reduction="none"))


def _ppo(loss, r):
    old = torch.full_like(r, math.log(0.5))
    return [(f"A = {a:+d}", loss(old + torch.log(r), old, advantages=torch.full_like(r, float(a)), reduction="none"))
            for a in (1, -1)]


def _grpo(loss, r):
    # One group of two answers per point, both at ratio r; rewards 1 and 0 give advantages +-0.71.
    log_probs = math.log(0.5) + torch.log(r)
    both = torch.stack([log_probs, log_probs], 1).reshape(-1)
    rewards = torch.tensor([1.0, 0.0], dtype=r.dtype).repeat(r.shape[0])
    value = loss(both, torch.full_like(both, math.log(0.5)), rewards=rewards, group_size=2,
                 reduction="none").reshape(-1, 2)
    return [("reward 1 of (1, 0): A > 0", value[:, 0]), ("reward 0 of (1, 0): A < 0", value[:, 1])]


def _pair_margin(loss, m):
    return _one(loss(-3.5 + m / 2, -3.5 - m / 2, reduction="none"))


def _pair_margin_to_reference(loss, m):
    ref = torch.full_like(m, -3.5)
    return _one(loss(-3.5 + m / 2, -3.5 - m / 2, ref_chosen_log_probs=ref, ref_rejected_log_probs=ref,
                     reduction="none"))


def _one_answer(loss, d):
    ref = torch.full_like(d, -3.5)
    return [(label, loss(ref + d, ref, desirable=torch.full(d.shape, flag), reduction="none"))
            for label, flag in (("desirable", True), ("undesirable", False))]


# --- the sweeps ------------------------------------------------------------------------------------

RESIDUAL_SWEEP = Sweep("input r, target 0", RESIDUAL, lambda loss, r: _one(loss(r, torch.zeros_like(r),
                                                                                  reduction="none")))
SOFTMAX_MARGIN = Sweep("softmax: logits (x, 0), target 0", MARGIN, lambda loss, x: _one(loss(
    torch.stack([x, torch.zeros_like(x)], 1), torch.zeros(x.shape[0], dtype=torch.long), reduction="none")))
BINARY_MARGIN = Sweep("binary: logit x, target 1", MARGIN,
                      lambda loss, x: _one(loss(x, torch.ones_like(x), reduction="none")))
XYXY_BOXES = _box_sweep("xyxy boxes", lambda s: torch.stack([s, 0 * s, 1 + s, 1 + 0 * s], -1), [0.0, 0.0, 1.0, 1.0])
ROTATED_BOXES = _box_sweep("rotated boxes (cx, cy, w, h, angle)",
                           lambda s: torch.stack([0.5 + s, 0.5 + 0 * s, 1 + 0 * s, 1 + 0 * s, 0 * s], -1),
                           [0.5, 0.5, 1.0, 1.0, 0.0])
BOXES_3D = _box_sweep("3-D boxes xyzxyz", lambda s: torch.stack([s, 0 * s, 0 * s, 1 + s, 1 + 0 * s, 1 + 0 * s], -1),
                      [0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
BOXES_3D_YAW = _box_sweep("3-D boxes with yaw (x, y, z, w, l, h, yaw)",
                          lambda s: torch.stack([s, 0 * s, 0 * s, 1 + 0 * s, 1 + 0 * s, 1 + 0 * s, 0 * s], -1),
                          [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0])
QUALITY = Sweep("logit x, target 1", QUALITY_LOGIT,
                lambda loss, x: _one(loss(x, torch.ones_like(x), reduction="none")))
TARGET_BIN = Sweep("8 bins, logit x at bin 3, target 3", QUALITY_LOGIT, lambda loss, x: _one(loss(
    torch.cat([torch.zeros(x.shape[0], 3, dtype=x.dtype), x[:, None], torch.zeros(x.shape[0], 4, dtype=x.dtype)], 1),
    torch.full_like(x, 3.0), reduction="none")))
TWO_CLASS_MASK = _segmentation_sweep("2-class softmax logits (0, +-x)", channels=2)
ONE_LOGIT_MASK = _segmentation_sweep("one logit +-x", channels=1)
TWO_CLASS_MASK_PER_IMAGE = Sweep("2-class softmax logits (0, +-x)", MASK_MARGIN, _image_by_image)
PAIRS = Sweep("pairs (e1, v), (e3, e3)", POSITIVE_COSINE, _paired)
LABELLED = Sweep("anchor e1, positive v, negative e3", POSITIVE_COSINE, _labelled)
LABELLED_PAIRS = Sweep("anchor e1, positive v, negative e3", PROXY_COSINE, _labelled)
PROXIES = Sweep("embedding v of class 0, proxies e1 and e3", PROXY_COSINE, _proxies,
                {"num_classes": 2, "embedding_size": 3})
TEACHER = Sweep("logits (x, 0), target (0.75, 0.25)", TEACHER_MARGIN, lambda loss, x: _one(loss(
    torch.stack([x, torch.zeros_like(x)], 1), torch.tensor([0.75, 0.25], dtype=x.dtype).expand(x.shape[0], 2),
    reduction="none")))
ADVANTAGES = Sweep("advantage A = +1 / -1", RATIO, _ppo)
GROUP_REWARDS = Sweep("group of 2, rewards (1, 0)", RATIO, _grpo)
RETURNS = Sweep("return +1 / -1", LOG_PROB, lambda loss, lp: [
    (f"return {g:+d}", loss(lp, torch.full_like(lp, float(g)), reduction="none")) for g in (1, -1)])
VALUE = Sweep("return 0", VALUE_ERROR, lambda loss, e: _one(loss(e, torch.zeros_like(e), reduction="none")))
REFERENCE = Sweep("log pi_ref = -3", LOG_RATIO, lambda loss, d: _one(loss(d - 3.0, torch.full_like(d, -3.0),
                                                                           reduction="none")))
CHOSEN_REJECTED = Sweep("chosen -3.5 + m/2, rejected -3.5 - m/2", PAIR_MARGIN, _pair_margin)
AGAINST_REFERENCE = Sweep("chosen -3.5 + m/2, rejected -3.5 - m/2", PAIR_MARGIN, _pair_margin_to_reference)
DESIRABLE = Sweep("desirable / undesirable answer", ONE_ANSWER, _one_answer)

#: Each family's sweep, for the specs that name none.
FAMILY: dict[str, Sweep] = {
    "regression": RESIDUAL_SWEEP,
    "classification": SOFTMAX_MARGIN,
    "boxes": XYXY_BOXES,
    "detection": QUALITY,
    "segmentation": TWO_CLASS_MASK,
    "contrastive": LABELLED,
    "metric": PROXIES,
    "divergence": TEACHER,
    "preference": CHOSEN_REJECTED,
}
