"""Contract-suite specs for the metric-learning losses with class proxies (see losskit/examples/base.py).

Each case is a batch of random float64 embeddings ``(n, 5)`` with labels among 4 classes and random
proxies ``(4, 5)`` (``(4, 2, 5)`` with sub-centres), passed as ``proxies=``. The margin losses run at
a scale of 8 in the typical cases (their default 64 in the saturated regime), so gradcheck sees
every class's term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as TF

from losskit.examples import probes
from losskit.examples.base import NOT_BOXES, Budget, Case, Regime, Spec, typical

DIM, CLASSES, SUB_CENTERS = 5, 4, 2

# The margin losses' own options in the typical cases, and the scale factor of their logits.
OPTIONS = {
    "normalized_softmax": {"temperature": 0.25},
    "cosface": {"scale": 8.0},
    "arcface": {"scale": 8.0},
    "sub_center_arcface": {"scale": 8.0},
    "sphereface": {"margin": 2},
    "large_margin_softmax": {"margin": 3},
    "proxy_nca": {"scale": 2.0},
    "soft_triple": {"scale": 8.0},
}
SUB_CENTRE_LOSSES = ("sub_center_arcface", "soft_triple")  # proxies (C, K, D)


def _proxies(name: str, classes: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    shape = (classes, SUB_CENTERS, dim) if name in SUB_CENTRE_LOSSES else (classes, dim)
    return torch.randn(shape, generator=gen, dtype=torch.float64)


def _case(name: str, **options):
    def make(n: int, gen: torch.Generator) -> Case:
        x = torch.randn((n, DIM), generator=gen, dtype=torch.float64)
        target = torch.randint(CLASSES, (n,), generator=gen)
        return Case(x, target, {"proxies": _proxies(name, CLASSES, DIM, gen), **OPTIONS[name], **options})

    return make


def _sample_weight(case: Case, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.rand(case.input.shape[:1], generator=gen, dtype=torch.float64) + 0.5
    return w, w


def _per_sample(case: Case) -> tuple[int, ...]:
    return tuple(case.input.shape[:1])


def _logits(name: str):
    """The logits a case's loss reduces, before the margin: cosines times the scale (over the
    temperature), times the embedding norm (and the proxy norm) for the multiplicative margins."""

    def logits(case: Case) -> torch.Tensor:
        w = case.kwargs["proxies"]
        flat = w.reshape(-1, w.shape[-1])
        cos = TF.normalize(case.input, dim=-1) @ TF.normalize(flat, dim=-1).T
        if name == "normalized_softmax":
            return cos / case.kwargs.get("temperature", 0.05)
        if name == "large_margin_softmax":
            return case.input @ flat.T * case.kwargs.get("scale", 1.0)
        if name == "sphereface":
            return cos * case.input.norm(dim=-1, keepdim=True) * case.kwargs.get("scale", 1.0)
        if name == "proxy_nca":  # -s |x - w|^2 up to a constant
            return 2 * cos * case.kwargs.get("scale", 1.0)
        if name == "soft_triple":  # lambda times each class's soft maximum over its centres
            cos = cos.view(cos.shape[0], *w.shape[:2])
            gamma = case.kwargs.get("gamma", 0.1)
            return ((cos / gamma).softmax(-1) * cos).sum(-1) * case.kwargs.get("scale", 20.0)
        return cos * case.kwargs.get("scale", 64.0)

    return logits


# --- accuracy regimes ---------------------------------------------------------------------------
# saturated: the defaults (scale 64, logits up to 64), a temperature of 1/30, embeddings of norm
# about 20 for the multiplicative margins (their logits are |x| cos or |x| |w| cos), ProxyNCA at
# scale 15 (logits 2 s cos, up to 30) and SoftTriple at scale 30.
# near_converged: 8 orthonormal proxies, each embedding near its class's proxy (unit length; 12
# times that for the multiplicative margins): the labelled logit leads by 10 or more (ProxyNCA at
# scale 8: by 16).
# large: 1000 embeddings against 1000 classes (1e6 logits).

SATURATED = {"normalized_softmax": {"temperature": 1 / 30}, "cosface": {}, "arcface": {},
             "sub_center_arcface": {}, "sphereface": {"margin": 2}, "large_margin_softmax": {"margin": 3},
             "proxy_nca": {"scale": 15.0}, "soft_triple": {"scale": 30.0}}
INPUT_SCALE = {"sphereface": 10.0, "large_margin_softmax": 10.0}
CONVERGED = {"normalized_softmax": {"temperature": 0.05}, "cosface": {}, "arcface": {},
             "sub_center_arcface": {}, "sphereface": {"margin": 2}, "large_margin_softmax": {"margin": 2},
             "proxy_nca": {"scale": 8.0}, "soft_triple": {}}


def _saturated(name: str):
    def make(gen: torch.Generator) -> Case:
        case = _case(name)(64, gen)
        options = {"proxies": case.kwargs["proxies"], **SATURATED[name]}
        return Case(case.input * INPUT_SCALE.get(name, 1.0), case.target, options)

    return make


def _near_converged(name: str):
    def make(gen: torch.Generator) -> Case:
        classes = dim = 8
        basis = torch.eye(classes, dim, dtype=torch.float64)
        target = torch.arange(64) % classes
        x = basis[target] + 0.01 * torch.randn((64, dim), generator=gen, dtype=torch.float64)
        proxies = basis
        if name in SUB_CENTRE_LOSSES:  # the second sub-centre of each class points elsewhere
            proxies = torch.stack([basis, -basis.roll(1, 0)], 1)
        x = x * (12.0 if name in INPUT_SCALE else 1.0)
        return Case(x, target, {"proxies": proxies, **CONVERGED[name]})

    return make


def _large(name: str):
    def make(gen: torch.Generator) -> Case:
        x = torch.randn((1000, 16), generator=gen, dtype=torch.float64)
        target = torch.randint(1000, (1000,), generator=gen)
        return Case(x, target, {"proxies": _proxies(name, 1000, 16, gen), **OPTIONS[name]})

    return make


NOT_APPLICABLE = {**NOT_BOXES, "imbalance": "one labelled class per sample among C: the large regime "
                  "has 1000 classes, each labelled about once"}


def _spec(name: str, **budget) -> Spec:
    make = _case(name)
    return Spec(make=make, unit_shape=_per_sample, weight=_sample_weight, not_applicable=NOT_APPLICABLE,
                regimes={"typical": typical(make, n=64),
                         "saturated": Regime(_saturated(name), logits=_logits(name)),
                         "near_converged": Regime(_near_converged(name)),
                         "large": Regime(_large(name), reductions=("mean",), logits=_logits(name))},
                **budget)


SPECS: dict[str, Spec] = {name: _spec(name) for name in OPTIONS}


# --- pair losses -----------------------------------------------------------------------------------
# 2n embeddings in n classes of two (labels 0 0 1 1 ...): every anchor has a positive and, from two
# classes on, negatives. The typical scales are moderate (beta 10, gamma 8) so that gradcheck sees
# every pair; the saturated regime uses the defaults (beta 50, gamma 80: logits up to about 70).
# Near convergence each class sits near its basis vector: positives at similarity about 1,
# negatives about 0 (multi-similarity with alpha 40, so that its positive term is small too).

# Circle loss's gradient holds its weights constant, which gradcheck cannot confirm: the contract
# differentiates them (tests/test_metric.py checks the default gradient against the peer's).
PAIR_OPTIONS = {"multi_similarity": {"beta": 10.0}, "circle": {"gamma": 8.0, "detach_weights": False}}
PAIR_CONVERGED = {"multi_similarity": {"alpha": 40.0}, "circle": {}}


def _pair_case(name: str, n_dim: int | None = None):
    """``make(n, gen)``; with ``n_dim``, ``make(gen)`` for ``n_dim`` embeddings of ``n_dim`` dimensions."""

    def make(n: int, gen: torch.Generator) -> Case:
        x = torch.randn((2 * n, DIM if n_dim is None else n_dim), generator=gen, dtype=torch.float64)
        return Case(x, torch.arange(2 * n) // 2, dict(PAIR_OPTIONS[name]))

    if n_dim is not None:
        return lambda gen: make(n_dim // 2, gen)
    return make


def _pair_saturated(gen: torch.Generator) -> Case:
    """The defaults on 64 random embeddings."""
    return Case(torch.randn((64, DIM), generator=gen, dtype=torch.float64), torch.arange(64) // 2, {})


def _pair_logits(name: str):
    def logits(case: Case) -> torch.Tensor:
        z = TF.normalize(case.input, dim=-1)
        sim = z @ z.T
        if name == "multi_similarity":
            return case.kwargs.get("beta", 50.0) * (sim - case.kwargs.get("base", 0.5))
        return case.kwargs.get("gamma", 80.0) * (sim - case.kwargs.get("margin", 0.4))

    return logits


def _pair_near_converged(name: str):
    def make(gen: torch.Generator) -> Case:
        x = torch.eye(32, dtype=torch.float64).repeat_interleave(2, 0)
        x = x + 0.01 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
        return Case(x, torch.arange(64) // 2, dict(PAIR_CONVERGED[name]))

    return make


def _pair_spec(name: str) -> Spec:
    make = _pair_case(name)
    return Spec(make=make, unit_shape=_per_sample, weight=_sample_weight, not_applicable=NOT_APPLICABLE_PAIRS,
                probe=probes.LABELLED_PAIRS,
                regimes={"typical": typical(make, n=16),
                         "saturated": Regime(_pair_saturated, logits=_pair_logits(name)),
                         "near_converged": Regime(_pair_near_converged(name)),
                         "large": Regime(_pair_case(name, n_dim=1000), reductions=("mean",),
                                         logits=_pair_logits(name))})


NOT_APPLICABLE_PAIRS = {**NOT_BOXES, "imbalance": "every anchor has its positive among the batch's negatives; "
                        "the large regime puts 1 positive among 999 negatives"}
SPECS.update({name: _pair_spec(name) for name in PAIR_OPTIONS})


# --- pair margin losses: contrastive pairs, lifted structure, tuplet margin -------------------------
# The same labelled batches (2n embeddings in classes of two). The contrastive loss's unit is the
# ordered pair ``(N, N - 1)``, its weight per anchor; the others give one value per anchor. The
# typical negative margin 2.5 keeps every negative pair active and away from its hinge (where the
# value m - d cancels in any implementation); the tuplet margin runs at scale 8 there and at its
# default 64 in the saturated regime. Near convergence each class sits at its basis vector with
# noise 0.005 (contrastive: positive pairs at distance about 0.007, negatives about 1.41, past the
# margin) or 0.01 (tuplet).

MARGIN_PAIR_OPTIONS = {"contrastive_pair": {"neg_margin": 2.5}, "lifted_structure": {},
                       "tuplet_margin": {"scale": 8.0}}
PAIR_OPTIONS.update(MARGIN_PAIR_OPTIONS)
PAIR_CONVERGED.update({"contrastive_pair": {}, "tuplet_margin": {}})


def _pairs_of_anchor(case: Case) -> tuple[int, ...]:
    n = case.input.shape[0]
    return (n, max(n - 1, 0))


def _anchor_weight_on_pairs(case: Case, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    w, _ = _sample_weight(case, gen)
    return w, w[:, None].expand(_pairs_of_anchor(case))


def _tuplet_logits(case: Case) -> torch.Tensor:
    z = TF.normalize(case.input, dim=-1)
    return case.kwargs.get("scale", 64.0) * (z @ z.T)


def _pair_near_converged_noise(name: str, noise: float):
    def make(gen: torch.Generator) -> Case:
        x = torch.eye(32, dtype=torch.float64).repeat_interleave(2, 0)
        x = x + noise * torch.randn(x.shape, generator=gen, dtype=torch.float64)
        return Case(x, torch.arange(64) // 2, dict(PAIR_CONVERGED[name]))

    return make


NEAR_NOISE = {"contrastive_pair": 0.005, "tuplet_margin": 0.01}
NO_SCALE = ("the distances of unit embeddings lie in [0, 2] and the loss has no scale: its terms "
            "cannot saturate")
LIFTED_NEAR_ZERO = ("the loss is the squared hinge of the log-sum over every negative less the margin; "
                    "it falls below 1e-3 only at a margin tuned so that this difference cancels, not "
                    "a state training reaches")


def _margin_pair_spec(name: str) -> Spec:
    make = _pair_case(name)
    contrastive = name == "contrastive_pair"
    regimes = {"typical": typical(make, n=16),
               "large": Regime(_pair_case(name, n_dim=1000), reductions=("mean",))}
    not_applicable = dict(NOT_APPLICABLE_PAIRS)
    if name == "tuplet_margin":
        regimes["saturated"] = Regime(_pair_saturated, logits=_tuplet_logits)
    else:
        not_applicable["saturated"] = NO_SCALE
    if name == "lifted_structure":
        not_applicable["near_converged"] = LIFTED_NEAR_ZERO
    else:
        regimes["near_converged"] = Regime(_pair_near_converged_noise(name, NEAR_NOISE[name]))
    return Spec(make=make, unit_shape=_pairs_of_anchor if contrastive else _per_sample,
                weight=_anchor_weight_on_pairs if contrastive else _sample_weight,
                gradgrad=False,  # torch.cdist has no second derivative
                probe=probes.LABELLED_PAIRS, not_applicable=not_applicable, regimes=regimes)


SPECS.update({name: _margin_pair_spec(name) for name in MARGIN_PAIR_OPTIONS})


# --- FastAP: one value per anchor; its histograms have no scale to saturate. Near convergence the
# classes sit at their basis vectors (noise 0.01, positives in the first two bins) except classes 0
# and 1 at cosine 0.7 (d^2 = 0.6: a negative in the positives' second bin): AP just below 1.


def _fast_ap_near_converged(gen: torch.Generator) -> Case:
    x = torch.eye(32, dtype=torch.float64)
    x[1] = 0.7 * x[0] + 0.51 ** 0.5 * x[1]
    x = x.repeat_interleave(2, 0) + 0.01 * torch.randn((64, 32), generator=gen, dtype=torch.float64)
    return Case(x, torch.arange(64) // 2, {})


PAIR_OPTIONS["fast_ap"] = {}
SPECS["fast_ap"] = Spec(make=_pair_case("fast_ap"), unit_shape=_per_sample, weight=_sample_weight,
                        gradgrad=False,  # torch.cdist has no second derivative
                        probe=probes.LABELLED_PAIRS,
                        not_applicable={**NOT_APPLICABLE_PAIRS, "saturated": NO_SCALE},
                        regimes={"typical": typical(_pair_case("fast_ap"), n=16),
                                 "near_converged": Regime(_fast_ap_near_converged),
                                 "large": Regime(_pair_case("fast_ap", n_dim=1000), reductions=("mean",))},
                        budgets={"large": Budget(grad=3e-4, why=(
                            "the triangular kernel's slope flips at each bin centre: among the 1e6 pairs, 4 "
                            "squared distances lie within their float32 rounding (5e-6) of a centre and take "
                            "the other side's slope, in any implementation"))})


# --- N-pairs: one value per sample (each pair's at its anchor, 0 elsewhere), the labelled batches of
# the pair losses (classes of two: every class gives a pair). Its logits are cosines in [-1, 1]: no
# scale to saturate, and a pair's loss is at least log(1 + (P - 1) e^-2) over P pairs.


def _npairs_anchors(case: Case) -> torch.Tensor:
    """The first sample of each label seen twice: the rows that hold a pair."""
    same = case.target[:, None] == case.target[None, :]
    return (same.tril(-1).sum(1) == 0) & (same.sum(1) > 1)


def _npairs_weight(case: Case, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    w, _ = _sample_weight(case, gen)
    return w, w * _npairs_anchors(case)


def _npairs_probe(loss, s):
    # class 0: anchor e1 and its positive v (cosine s); class 1: e3 twice. Row 0 is
    # log(1 + e^{0 - s}): the anchor's cosine to class 1's positive is 0.
    def at(si):
        e1, v, e3 = probes._pair_embeddings(si)
        return loss(torch.stack([e1, v, e3, e3]), torch.tensor([0, 0, 1, 1]), reduction="none")[0]

    return probes._one(probes._stacked(at, s))


PAIR_OPTIONS["npairs"] = {}
SPECS["npairs"] = Spec(make=_pair_case("npairs"), unit_shape=_per_sample, weight=_npairs_weight,
                       counted=_npairs_anchors,
                       probe=probes.Sweep("class 0: anchor e1, positive v; class 1: e3, e3", probes.PROXY_COSINE,
                                          _npairs_probe),
                       not_applicable={**NOT_APPLICABLE_PAIRS, "saturated": (
                           "the logits are cosines of unit embeddings in [-1, 1], without a scale"),
                           "near_converged": (
                           "the logits are cosines in [-1, 1]: each pair's loss is at least log(1 + (P - 1) "
                           "e^-2) over P pairs, above 1e-3 whenever there is a negative")},
                       regimes={"typical": typical(_pair_case("npairs"), n=16),
                                "large": Regime(_pair_case("npairs", n_dim=1000), reductions=("mean",))})


# --- Proxy-Anchor: one value per class ``(C,)``, per-class weights. The typical cases run at alpha 8
# (gradcheck sees every term), the saturated ones at the default 32 with margin 0.1 (logits
# alpha (cos + delta) up to 35). Near convergence: two classes with opposite proxies (+-e1), each
# embedding near its class's (noise 0.01): every term below 1e-10.


def _per_class(case: Case) -> tuple[int, ...]:
    return (case.kwargs["proxies"].shape[0],)


def _class_weight(case: Case, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.rand(_per_class(case), generator=gen, dtype=torch.float64) + 0.5
    return w, w


def _proxy_anchor_logits(case: Case) -> torch.Tensor:
    w = case.kwargs["proxies"]
    cos = TF.normalize(case.input, dim=-1) @ TF.normalize(w, dim=-1).T
    return case.kwargs.get("alpha", 32.0) * (cos + case.kwargs.get("margin", 0.1))


def _proxy_anchor_saturated(gen: torch.Generator) -> Case:
    """The defaults (alpha 32, margin 0.1) on the typical batch."""
    case = _case("proxy_anchor")(64, gen)
    return Case(case.input, case.target, {"proxies": case.kwargs["proxies"]})


def _proxy_anchor_near_converged(gen: torch.Generator) -> Case:
    proxies = torch.tensor([[1.0, 0.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    target = torch.arange(64) % 2
    x = proxies[target] + 0.01 * torch.randn((64, 4), generator=gen, dtype=torch.float64)
    return Case(x, target, {"proxies": proxies})


def _proxy_anchor_probe(loss, s):
    # One embedding v of class 0 at cosine s to proxy e1, 0 to class 1's e3: the mean over the two
    # classes, log(1 + e^{-32 (s - 0.1)}) + log(1 + e^{32 (s + 0.1)}) / 2 + log(1 + e^{3.2}) / 2.
    proxies = torch.zeros((2, 3), dtype=s.dtype)
    proxies[0, 0] = proxies[1, 2] = 1.0

    def at(si):
        v = torch.stack([si, torch.sqrt(1 - si * si), torch.zeros_like(si)])[None]
        return loss(v, torch.zeros(1, dtype=torch.long), proxies=proxies)

    return probes._one(probes._stacked(at, s))


OPTIONS["proxy_anchor"] = {"alpha": 8.0}
SPECS["proxy_anchor"] = Spec(
    make=_case("proxy_anchor"), unit_shape=_per_class, weight=_class_weight,
    probe=probes.Sweep("embedding v of class 0, proxies e1 and e3", probes.PROXY_COSINE, _proxy_anchor_probe,
                       {"num_classes": 2, "embedding_size": 3}),
    not_applicable=NOT_APPLICABLE,
    regimes={"typical": typical(_case("proxy_anchor"), n=64),
             "saturated": Regime(_proxy_anchor_saturated, logits=_proxy_anchor_logits),
             "near_converged": Regime(_proxy_anchor_near_converged),
             "large": Regime(_large("proxy_anchor"), reductions=("mean",), logits=_proxy_anchor_logits)})
