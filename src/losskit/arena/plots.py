"""Plots of losses against a one-dimensional probe: the loss and its gradient, one row per family.

``plot_losses(["mse", "huber", "ce", "focal", "giou"], Path("losses.png"))`` draws, for each named
loss, the value and the derivative (by autograd) along the natural 1-D probe of its registry family:

* **regression**: the residual :math:`r \\in [-3, 3]` (``input=r``, ``target=0``).
* **classification**: the margin :math:`x \\in [-6, 6]`. Binary losses (sigmoid or BCE type, which
  take a target of the input's shape) see the logit ``x`` with target 1; softmax losses (index
  targets) see the two-class logits ``(x, 0)`` with target 0, so ``x`` is the margin of the true
  class. Both read the same way: right is confident and correct, left is confident and wrong.
* **boxes**: a unit box against the same box shifted by :math:`s \\in [-1.5, 1.5]` along ``x``; the
  x axis is the shift ``s`` (the IoU is :math:`(1-|s|)/(1+|s|)` for :math:`|s| < 1` and 0 beyond).
  Rotated boxes ``(cx, cy, w, h, angle)`` and 3-D boxes ``xyzxyz`` get the same shift.

* **detection**: the logit :math:`x \\in [-6, 6]` of a positive with target quality 1
  (varifocal, quality focal, Gaussian focal); distribution focal loss sees 8 bins with logit ``x``
  at bin 3, the others 0, and the target distance 3, so ``x`` is the logit of the target bin.
* **segmentation**: a 16x16 image whose true mask is the band of rows 4-11 (half the pixels);
  the logit margin :math:`x \\in [-6, 6]` is applied uniformly: two-class logits ``(0, x)`` on
  the mask and ``(0, -x)`` elsewhere (a single logit ``+-x`` for the Lovasz hinge).
* **contrastive**: the cosine similarity :math:`s \\in [-0.99, 0.99]` of a positive pair: unit
  embeddings ``e1`` and ``(s, sqrt(1 - s^2), 0)``, with ``e3`` as the negative (cosine 0). InfoNCE
  sees the pairs ``(e1, v)``, ``(e3, e3)``; the labelled losses the batch ``e1, v, e3`` with
  labels ``0, 0, 1``. The loss of the first row (anchor) is drawn.
* **metric**: the cosine :math:`s \\in [-0.99, 0.99]` of the embedding ``(s, sqrt(1 - s^2), 0)``
  of class 0 and its class's proxy ``e1``; class 1's proxy is ``e3`` (cosine 0). The pair losses
  see the contrastive probe's batch ``e1, v, e3`` (labels ``0, 0, 1``), the loss of anchor ``e1``.
* **divergence**: the two-class logits ``(x, 0)``, :math:`x \\in [-6, 6]`, against the target
  distribution ``(0.75, 0.25)`` (KL is 0 at :math:`x = \\ln 3`).
* **rl**, one row per kind of input: PPO-type losses against the probability ratio
  :math:`r \\in [0.5, 1.5]` (``log pi_old = log 0.5``) at advantage +1 and -1 (GRPO: a group of
  two answers with rewards 1 and 0); REINFORCE against the log-probability at return +1 and -1;
  the value loss against the value error (return 0); the KL penalty against the log-ratio
  ``log pi - log pi_ref``.
* **preference**: pairwise losses against the log-probability margin
  :math:`m \\in [-6, 6]` of chosen minus rejected (``-3.5 + m/2`` and ``-3.5 - m/2``; DPO's
  reference log-probabilities both -3.5); KTO against the log-ratio of one answer, desirable and
  undesirable.

A family outside :data:`PROBE_FAMILIES` raises ``ValueError``. A loss that cannot be evaluated on
its probe (it needs an option such as ``class_counts``, or rejects the probe's shapes) is named,
with the reason, in a note under the figure and in a :class:`UserWarning`; pass the missing
options with ``options=``. matplotlib is needed (imported when a plot is drawn, with the Agg
backend: nothing is ever shown on screen).
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from losskit.arena.report import atomic_write

PROBE_FAMILIES = ("regression", "classification", "boxes", "detection", "segmentation", "contrastive",
                  "metric", "divergence", "rl", "preference")


@dataclass(frozen=True)
class _Axis:
    """The x axis of one row of the figure: the probe variable, its label and its range."""

    variable: str
    label: str
    low: float
    high: float


_AXES = {
    "regression": _Axis("r", "residual r = input - target", -3.0, 3.0),
    "classification": _Axis("x", "margin x (logit of the true class against 0)", -6.0, 6.0),
    "boxes": _Axis("s", "shift s of a unit box along x (IoU = (1 - |s|) / (1 + |s|) for |s| < 1, else 0)",
                   -1.5, 1.5),
    "detection": _Axis("x", "logit x of a positive (target quality 1; distribution_focal: logit of the "
                            "target bin, 8 bins, the others 0, target distance 3)", -6.0, 6.0),
    "segmentation": _Axis("x", "logit margin x on a 16x16 image whose true mask is the band of rows 4-11 "
                               "(half the pixels): foreground logit +x on the mask, -x elsewhere", -6.0, 6.0),
    "contrastive": _Axis("s", "cosine similarity s of the positive pair (the negative at cosine 0)", -0.99, 0.99),
    "metric": _Axis("s", "cosine s of an embedding and its class's proxy e1, the other class's proxy e3 at "
                         "cosine 0 (pair losses: of the anchor e1 and its positive, the negative e3)", -0.99, 0.99),
    "divergence": _Axis("x", "logit x of class 0, logits (x, 0), against the target P = (0.75, 0.25)",
                        -6.0, 6.0),
}
_RATIO = _Axis("r", "probability ratio r = pi / pi_old (log pi_old = log 0.5)", 0.5, 1.5)
_LOG_PROB = _Axis("l", "log-probability l = log pi of the sampled action", -3.0, 0.0)
_VALUE_ERROR = _Axis("e", "value error e = value - return (return 0)", -3.0, 3.0)
_LOG_RATIO = _Axis("d", "log-ratio d = log pi - log pi_ref (log pi_ref = -3)", -2.0, 2.0)
_PAIR_MARGIN = _Axis("m", "log-prob margin m = log pi(chosen) - log pi(rejected) "
                          "(mean -3.5; dpo: reference log-probs equal, so m is the log-ratio margin)", -6.0, 6.0)
_ONE_ANSWER = _Axis("d", "log-ratio d = log pi(y) - log pi_ref(y) of one answer (log pi_ref = -3.5)", -3.0, 3.0)
# Kept for callers that read them: the variable and range of the first row of each family.
_AXIS_LABELS = {family: axis.label for family, axis in _AXES.items()}
_VARIABLES = {family: axis.variable for family, axis in _AXES.items()}
_RANGES = {family: (axis.low, axis.high) for family, axis in _AXES.items()}
_LINESTYLES = ("-", "--", ":", "-.")
# Required options that a probe fixes itself (and names in the legend).
_PROBE_SUPPLIED = frozenset({"advantages", "rewards", "group_size", "desirable", "proxies"})


@dataclass
class Probe:
    """One loss evaluated along its family's probe.

    ``x``, ``loss`` and ``grad`` hold the first curve; ``curves`` holds every curve as
    ``(label, loss, grad)`` (a loss probed at two settings, such as PPO at a positive and a
    negative advantage, has two). ``axis`` and ``variable`` name the probe's x axis.
    """

    name: str
    family: str
    x: Any = None  # numpy arrays when it worked
    loss: Any = None
    grad: Any = None
    kind: str = ""  # how it was probed, for the legend
    error: str | None = None
    curves: list = field(default_factory=list)
    axis: str = ""
    variable: str = ""


def _required_options(cls) -> list[str]:
    params = inspect.signature(cls.function).parameters.values()
    return [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty]


def _box_encodings(s):
    """Input (shifted) and target (unit) boxes for the shift ``s``, in each box layout the losses use."""
    import torch

    zeros, ones = torch.zeros_like(s), torch.ones_like(s)
    yield "xyxy boxes", torch.stack([s, zeros, ones + s, ones], -1), torch.tensor([0.0, 0.0, 1.0, 1.0])
    yield ("rotated boxes (cx, cy, w, h, angle)", torch.stack([0.5 + s, 0.5 * ones, ones, ones, zeros], -1),
           torch.tensor([0.5, 0.5, 1.0, 1.0, 0.0]))
    yield ("3-D boxes xyzxyz", torch.stack([s, zeros, zeros, ones + s, ones, ones], -1),
           torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0]))


@dataclass
class _Candidate:
    kind: str  # the probe's fixed setting, for the legend
    axis: _Axis
    x: Any
    compute: Any  # () -> list of (curve label, per-point loss of x's shape)


def _grid(axis: _Axis, points: int):
    import torch

    return torch.linspace(axis.low, axis.high, points, dtype=torch.float64, requires_grad=True)


def _per_point(loss, points: int):
    """A ``reduction="none"`` result with one leading entry per probe point, averaged to ``(points,)``."""
    if loss.dim() == 0 or loss.shape[0] != points:
        raise ValueError(f"gives shape {tuple(loss.shape)} with reduction='none', "
                         f"expected one value per probe point first ({points}, ...)")
    return loss.reshape(points, -1).mean(1)


def _segmentation_inputs(x, channels: int, size: int = 16):
    """Logits ``(P, C, size, size)`` at margin ``x`` and the true mask ``(P, size, size)``.

    The mask is a horizontal band, rows ``size/4`` to ``3 size/4``: half the pixels, with a
    skeleton (for clDice) and a boundary away from the image border (for the distance losses).
    """
    import torch

    mask = torch.zeros(size, size, dtype=torch.long)
    mask[size // 4: 3 * size // 4] = 1
    sign = (2 * mask - 1).to(x)
    fg = x[:, None, None] * sign
    target = mask.expand(x.shape[0], size, size)
    if channels == 2:
        return torch.stack([torch.zeros_like(fg), fg], 1), target
    return fg[:, None], target


def _pair_embeddings(s):
    """Unit embeddings: ``e1`` and ``(s, sqrt(1 - s^2), 0)`` (cosine ``s``), and ``e3`` (cosine 0 to both)."""
    import torch

    zero = torch.zeros_like(s)
    c = torch.sqrt(1 - s * s)  # |s| < 1 on the probe: at |s| = 1 this derivative is infinite
    e1 = torch.stack([torch.ones_like(s), zero, zero])
    e3 = torch.stack([zero, zero, torch.ones_like(s)])
    return e1, torch.stack([s, c, zero]), e3


def _stacked(fn, s):
    """``fn(s_i)`` for each probe point, stacked: for losses that couple the rows of a batch."""
    import torch

    return torch.stack([fn(s[i]) for i in range(s.shape[0])])


def _rl_candidates(module, params, points):
    import torch

    first = tuple(params[:2])
    if first == ("log_probs", "old_log_probs"):
        r = _grid(_RATIO, points)
        old = torch.full_like(r, math.log(0.5))
        log_probs = old + torch.log(r)
        if "advantages" in params:
            yield _Candidate("advantage A = +1 / -1", _RATIO, r, lambda: [
                (f"A = {a:+d}", module(log_probs, old, advantages=torch.full_like(r, float(a)), reduction="none"))
                for a in (1, -1)])
        if "rewards" in params:
            def grpo():
                # One group of two answers per point, both at ratio r; rewards 1 and 0 give advantages +-0.71.
                both = torch.stack([log_probs, log_probs], 1).reshape(-1)
                rewards = torch.tensor([1.0, 0.0], dtype=r.dtype).repeat(points)
                loss = module(both, both.detach().clone().fill_(math.log(0.5)), rewards=rewards, group_size=2,
                              reduction="none").reshape(points, 2)
                return [("reward 1 of (1, 0): A > 0", loss[:, 0]), ("reward 0 of (1, 0): A < 0", loss[:, 1])]
            yield _Candidate("group of 2, rewards (1, 0)", _RATIO, r, grpo)
    elif first == ("log_probs", "returns"):
        lp = _grid(_LOG_PROB, points)
        yield _Candidate("return +1 / -1", _LOG_PROB, lp, lambda: [
            (f"return {g:+d}", module(lp, torch.full_like(lp, float(g)), reduction="none")) for g in (1, -1)])
    elif first == ("values", "returns"):
        e = _grid(_VALUE_ERROR, points)
        yield _Candidate("return 0", _VALUE_ERROR, e, lambda: [("", module(e, torch.zeros_like(e), reduction="none"))])
    elif first == ("log_probs", "ref_log_probs"):
        d = _grid(_LOG_RATIO, points)
        ref = torch.full_like(d, -3.0)
        yield _Candidate("log pi_ref = -3", _LOG_RATIO, d, lambda: [("", module(ref + d, ref, reduction="none"))])


def _preference_candidates(module, params, points):
    import torch

    first = tuple(params[:2])
    if first == ("chosen_log_probs", "rejected_log_probs"):
        m = _grid(_PAIR_MARGIN, points)
        chosen, rejected = -3.5 + m / 2, -3.5 - m / 2
        extra = {}
        if "ref_chosen_log_probs" in params:
            ref = torch.full_like(m, -3.5)
            extra = {"ref_chosen_log_probs": ref, "ref_rejected_log_probs": ref}
        yield _Candidate("chosen -3.5 + m/2, rejected -3.5 - m/2", _PAIR_MARGIN, m,
                         lambda: [("", module(chosen, rejected, reduction="none", **extra))])
    elif first == ("policy_log_probs", "ref_log_probs"):
        d = _grid(_ONE_ANSWER, points)
        ref = torch.full_like(d, -3.5)
        yield _Candidate("desirable / undesirable answer", _ONE_ANSWER, d, lambda: [
            (label, module(ref + d, ref, desirable=torch.full(d.shape, flag), reduction="none"))
            for label, flag in (("desirable", True), ("undesirable", False))])


def _candidates(module, family: str, params: list[str], points: int):
    """Yield the ways to evaluate one loss on its probe; the first that runs is used."""
    import torch

    axis = _AXES.get(family)
    if family == "regression":
        r = _grid(axis, points)
        yield _Candidate("input r, target 0", axis, r,
                         lambda: [("", module(r, torch.zeros_like(r), reduction="none"))])
    elif family == "classification":
        x = _grid(axis, points)
        yield _Candidate("softmax: logits (x, 0), target 0", axis, x, lambda: [
            ("", module(torch.stack([x, torch.zeros_like(x)], 1), torch.zeros(points, dtype=torch.long),
                        reduction="none"))])
        yield _Candidate("binary: logit x, target 1", axis, x,
                         lambda: [("", module(x, torch.ones_like(x), reduction="none"))])
    elif family == "boxes":
        for index in range(3):
            s = _grid(axis, points)
            kind, pred, unit = list(_box_encodings(s))[index]
            yield _Candidate(f"{kind}: shifted box vs unit box", axis, s, lambda pred=pred, unit=unit: [
                ("", module(pred, unit.to(pred).expand_as(pred), reduction="none"))])
    elif family == "detection":
        x = _grid(axis, points)
        yield _Candidate("logit x, target 1", axis, x,
                         lambda: [("", module(x, torch.ones_like(x), reduction="none"))])

        def bins():
            logits = torch.cat([torch.zeros(points, 3, dtype=x.dtype), x[:, None],
                                torch.zeros(points, 4, dtype=x.dtype)], 1)
            return [("", module(logits, torch.full_like(x, 3.0), reduction="none"))]
        yield _Candidate("8 bins, logit x at bin 3, target 3", axis, x, bins)
    elif family == "segmentation":
        for channels, kind in ((2, "2-class softmax logits (0, +-x)"), (1, "one logit +-x")):
            x = _grid(axis, points)
            yield _Candidate(kind, axis, x, lambda x=x, channels=channels: [
                ("", _per_point(module(*_segmentation_inputs(x, channels), reduction="none"), points))])
        for channels, kind in ((2, "2-class softmax logits (0, +-x)"), (1, "one logit +-x")):
            x = _grid(axis, points)  # losses that pool the batch: one image per call
            yield _Candidate(kind, axis, x, lambda x=x, channels=channels: [("", _stacked(
                lambda xi: module(*_segmentation_inputs(xi[None], channels), reduction="none").mean(), x))])
    elif family == "contrastive":
        s = _grid(axis, points)

        def paired(si):  # info_nce: row 0 of input (e1) and of target (cosine s); row 1: e3 and e3
            e1, v, e3 = _pair_embeddings(si)
            return module(torch.stack([e1, e3]), torch.stack([v, e3]), reduction="none")[0]
        yield _Candidate("pairs (e1, v), (e3, e3)", axis, s, lambda: [("", _stacked(paired, s))])

        def labelled(si):  # anchor e1, its positive v (label 0) and the negative e3 (label 1)
            e1, v, e3 = _pair_embeddings(si)
            return module(torch.stack([e1, v, e3]), torch.tensor([0, 0, 1]), reduction="none")[0]
        yield _Candidate("anchor e1, positive v, negative e3", axis, s, lambda: [("", _stacked(labelled, s))])
    elif family == "metric" and hasattr(module, "proxies"):
        s = _grid(axis, points)
        proxies = torch.zeros_like(module.proxies, dtype=s.dtype)
        proxies[0, ..., 0] = proxies[1, ..., 2] = 1.0  # class 0 along e1, class 1 along e3 (every sub-centre)
        v = torch.stack([s, torch.sqrt(1 - s * s), torch.zeros_like(s)], 1)
        yield _Candidate("embedding v of class 0, proxies e1 and e3", axis, s, lambda: [
            ("", module(v, torch.zeros(points, dtype=torch.long), proxies=proxies, reduction="none"))])
    elif family == "metric":  # pair losses: the contrastive probe's labelled batch
        s = _grid(axis, points)

        def batch(si):  # the anchor's value (the sum of its pairs' where the unit is a pair)
            e1, v, e3 = _pair_embeddings(si)
            return module(torch.stack([e1, v, e3]), torch.tensor([0, 0, 1]), reduction="none")[0].sum()
        yield _Candidate("anchor e1, positive v, negative e3", axis, s, lambda: [("", _stacked(batch, s))])
    elif family == "divergence":
        x = _grid(axis, points)
        target = torch.tensor([0.75, 0.25], dtype=x.dtype).expand(points, 2)
        yield _Candidate("logits (x, 0), target (0.75, 0.25)", axis, x, lambda: [
            ("", module(torch.stack([x, torch.zeros_like(x)], 1), target, reduction="none"))])
    elif family == "rl":
        yield from _rl_candidates(module, params, points)
    elif family == "preference":
        yield from _preference_candidates(module, params, points)


def probe_loss(name: str, *, points: int = 201, options: Mapping[str, Any] | None = None) -> Probe:
    """Evaluate one registered loss and its gradient along its family's 1-D probe.

    Args:
        name: A registered name or alias (``losskit.available()``).
        points: Number of probe points.
        options: Options for ``losskit.get(name, **options)``.

    Returns:
        A :class:`Probe` with numpy arrays ``x``, ``loss``, ``grad`` (and every curve in
        ``curves``), or ``error`` set when the loss could not be evaluated on the probe.

    Raises:
        ValueError: For an unknown name (with suggestions) or a family without a 1-D probe.
    """
    import torch

    import losskit
    from losskit._core.registry import entry

    found = entry(name)  # unknown names raise the registry's ValueError with "did you mean"
    family = found.family
    if family not in PROBE_FAMILIES:
        raise ValueError(f"no 1-D probe for family {family}; plot supports {', '.join(PROBE_FAMILIES)}")
    options = dict(options or {})
    probe = Probe(found.name, family)
    missing = [key for key in _required_options(found.cls) if key not in options and key not in _PROBE_SUPPLIED]
    if missing:
        probe.error = (f"needs option(s) {', '.join(missing)} that the probe cannot supply; "
                       f"pass options={{{found.name!r}: {{{missing[0]!r}: ...}}}}")
        return probe
    if "proxies" in _required_options(found.cls) and "proxies" not in options:  # two classes of 3-D embeddings
        options = {"num_classes": 2, "embedding_size": 3, **options}
    try:
        module = losskit.get(found.name, **options)
    except (TypeError, ValueError) as error:
        probe.error = f"cannot be built with options {options}: {error}"
        return probe
    params = list(inspect.signature(found.cls.function).parameters)
    errors = []
    for candidate in _candidates(module, family, params, points):
        x = candidate.x
        try:
            curves = []
            for label, loss in candidate.compute():
                if loss.shape != x.shape:
                    raise ValueError(f"gives shape {tuple(loss.shape)} with reduction='none', "
                                     f"expected one value per probe point {tuple(x.shape)}")
                (grad,) = torch.autograd.grad(loss.sum(), x, allow_unused=True, retain_graph=True)
                grad = torch.zeros_like(x) if grad is None else grad
                curves.append((label, loss.detach().double().numpy(), grad.detach().double().numpy()))
        except (TypeError, ValueError, RuntimeError, IndexError) as error:
            errors.append(f"{candidate.kind}: {error}")
            continue
        probe.x, probe.kind, probe.curves = x.detach().numpy(), candidate.kind, curves
        probe.loss, probe.grad = curves[0][1], curves[0][2]
        probe.axis, probe.variable = candidate.axis.label, candidate.axis.variable
        return probe
    if not errors:
        errors.append("no probe matches its arguments " + ", ".join(params[:2]))
    probe.error = "fails on the probe (" + "; ".join(errors) + ")"
    return probe


def plot_losses(names: Sequence[str], out: str | Path, *, points: int = 201,
                options: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """Draw each loss and its gradient along its family's 1-D probe; one row per family.

    Args:
        names: Registered names or aliases; each must belong to a family with a probe
            (:data:`PROBE_FAMILIES`).
        out: Path of the PNG to write (parent folders are created; written atomically).
        points: Number of probe points per curve.
        options: Per-name options for ``losskit.get``, e.g. ``{"ldam": {"class_counts": [90, 10]}}``.

    Returns:
        ``out`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: For an unknown name, a family without a probe (``"no 1-D probe for family
            ...; plot supports regression, classification, ..."``), an empty list, or
            when no loss could be evaluated (the message gives each reason).
    """
    import io

    from matplotlib.figure import Figure

    if isinstance(names, str):
        names = [names]
    if not names:
        raise ValueError("plot_losses needs at least one loss name")
    if points < 2:
        raise ValueError(f"points must be at least 2, got {points}")
    options = dict(options or {})
    probes: list[Probe] = []
    seen = set()
    for name in names:
        probe = probe_loss(name, points=points, options=options.get(name))
        if probe.name not in seen:
            seen.add(probe.name)
            probes.append(probe)
    failed = [p for p in probes if p.error]
    for probe in failed:
        warnings.warn(f"plot_losses: {probe.name!r} {probe.error}", UserWarning, stacklevel=2)
    drawn = [p for p in probes if not p.error]
    if not drawn:
        raise ValueError("no loss could be evaluated on its probe: "
                         + "; ".join(f"{p.name!r} {p.error}" for p in failed))

    # One row per (family, probe axis): most families have one axis, rl has one per kind of input.
    rows: list[tuple[str, str, str]] = []
    for family in PROBE_FAMILIES:
        for probe in drawn:
            if probe.family == family and (family, probe.axis, probe.variable) not in rows:
                rows.append((family, probe.axis, probe.variable))
    fig = Figure(figsize=(11, 3.6 * len(rows) + 0.4 * len(failed)), layout="constrained")
    axes = fig.subplots(len(rows), 2, squeeze=False)
    for row, (family, axis, variable) in zip(axes, rows, strict=True):
        loss_ax, grad_ax = row
        index = 0
        for probe in drawn:
            if (probe.family, probe.axis, probe.variable) != (family, axis, variable):
                continue
            for label, loss, grad in probe.curves:
                name = f"{probe.name} ({label})" if label else probe.name
                if family in ("classification", "boxes") and not label:
                    name = f"{probe.name} ({probe.kind.split(':')[0]})" if family == "classification" else name
                style = _LINESTYLES[(index // 10) % len(_LINESTYLES)]  # the colour cycle has 10 colours
                (line,) = loss_ax.plot(probe.x, loss, label=name, linestyle=style)
                grad_ax.plot(probe.x, grad, color=line.get_color(), label=name, linestyle=style)
                index += 1
        several = sum(r[0] == family for r in rows) > 1
        loss_ax.set_title(f"{family}: loss" + (f" against {variable}" if several else ""))
        grad_ax.set_title(f"{family}: d loss / d {variable} (autograd)")
        for ax in row:
            ax.set_xlabel(axis, fontsize="small" if len(axis) > 70 else None, wrap=True)
            ax.axhline(0.0, color="0.7", linewidth=0.8)
            ax.axvline(0.0, color="0.7", linewidth=0.8)
            ax.grid(True, alpha=0.3)
        loss_ax.legend(fontsize="small")
    if failed:
        note = "\n".join(f"not drawn: {p.name} {p.error}" for p in failed)
        fig.supxlabel(note, fontsize="small", color="firebrick", ha="center")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    out = Path(out)
    atomic_write(out, buffer.getvalue())
    return out
