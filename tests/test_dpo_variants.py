"""DPO's loss types (TRL's ``loss_type``), MPO mixtures, f-DPO scores, WPO weights and LD-DPO.

Float64 references written from the papers (tests/reference_rl.py), hand-worked values, gradcheck
of every variant, float32 against float64, and the errors. Parity with TRL's own code lives in
tests/test_trl_parity.py.
"""

from __future__ import annotations

import math

import pytest
import torch

import losskit
import losskit.rl as rl
from losskit.functional._dpo_variants import DPO_VARIANTS
from tests import reference_rl as ref

F64 = torch.float64
PAPER_VARIANTS = ("sigmoid", "hinge", "ipo", "robust", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "apo_zero",
                  "apo_down", "discopop")


def _pairs(gen, n=6):
    lp = -(1.0 + 9.0 * torch.rand(4, n, generator=gen, dtype=F64))
    return lp[0], lp[1], lp[2], lp[3]


def _call(variant, c, r, rc, rr, **kw):
    return losskit.dpo_loss(c, r, ref_chosen_log_probs=rc, ref_rejected_log_probs=rr, variant=variant,
                            reduction="none", **kw)


def test_the_registry_of_variants_is_trls_list():
    assert set(DPO_VARIANTS) == {"sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard",
                                 "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"}


@pytest.mark.parametrize("variant", PAPER_VARIANTS)
def test_each_variant_matches_its_paper(gen, variant):
    c, r, rc, rr = _pairs(gen)
    s = 0.1 if variant in ("sigmoid", "robust", "exo_pair") else 0.0
    beta = 0.3
    out = _call(variant, c, r, rc, rr, beta=beta, label_smoothing=s)
    expected = [ref.dpo_variant(variant, a - b, x - y, beta, s=s)
                for a, b, x, y in zip(c.tolist(), rc.tolist(), r.tolist(), rr.tolist(), strict=True)]
    torch.testing.assert_close(out, torch.tensor(expected, dtype=F64), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("paired", [True, False])
def test_aot_matches_the_paper_sorting(gen, paired):
    c, r, rc, rr = _pairs(gen)
    out = _call("aot" if paired else "aot_unpaired", c, r, rc, rr, beta=0.5, label_smoothing=0.05)
    expected = ref.aot(c.tolist(), r.tolist(), rc.tolist(), rr.tolist(), 0.5, s=0.05, paired=paired)
    torch.testing.assert_close(out, torch.tensor(expected, dtype=F64), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("divergence", ["forward_kl", "js_divergence", "alpha_divergence"])
def test_f_divergence_scores_match_the_paper(gen, divergence):
    c, r, rc, rr = _pairs(gen)
    c, r = rc + 0.3 * torch.randn(6, generator=gen, dtype=F64), rr + 0.3 * torch.randn(6, generator=gen, dtype=F64)
    out = _call("sigmoid", c, r, rc, rr, beta=0.2, f_divergence_type=divergence, f_alpha_divergence_coef=0.5)
    expected = []
    for a, b, x, y in zip(c.tolist(), rc.tolist(), r.tolist(), rr.tolist(), strict=True):
        h = ref.f_score(a - b, divergence) - ref.f_score(x - y, divergence)
        expected.append(-ref._log_sigmoid(0.2 * h))
    torch.testing.assert_close(out, torch.tensor(expected, dtype=F64), rtol=1e-11, atol=1e-12)


def test_alpha_one_is_reverse_kl(gen):
    c, r, rc, rr = _pairs(gen)
    torch.testing.assert_close(_call("sigmoid", c, r, rc, rr, f_divergence_type="alpha_divergence"),
                               _call("sigmoid", c, r, rc, rr))


def test_length_normalized_variants_hand_worked():
    # c = 1 over 4 tokens, r = -1 over 2 tokens, beta 0.1: per-token margin 0.25 + 0.5 = 0.75
    c, r = torch.tensor([-10.0], dtype=F64), torch.tensor([-12.0], dtype=F64)
    rc, rr = torch.tensor([-11.0], dtype=F64), torch.tensor([-11.0], dtype=F64)
    lengths = {"chosen_lengths": torch.tensor([4]), "rejected_lengths": torch.tensor([2])}
    out = _call("sigmoid_norm", c, r, rc, rr, **lengths)
    torch.testing.assert_close(out, torch.tensor([-ref._log_sigmoid(0.075)], dtype=F64))
    torch.testing.assert_close(_call("ipo", c, r, rc, rr, **lengths), torch.tensor([(0.75 - 5.0) ** 2], dtype=F64))
    # sft: -(sum of chosen log-probs) / (chosen tokens) = 10 / 4, the same for every pair
    torch.testing.assert_close(_call("sft", c, r, rc, rr, **lengths), torch.tensor([2.5], dtype=F64))


def test_sft_is_the_batch_token_mean_repeated():
    c = torch.tensor([-4.0, -8.0], dtype=F64, requires_grad=True)
    out = losskit.dpo_loss(c, c.detach() - 1, variant="sft", chosen_lengths=torch.tensor([1, 3]),
                           rejected_lengths=torch.tensor([1, 1]), reduction="none")
    torch.testing.assert_close(out, torch.tensor([3.0, 3.0], dtype=F64))  # 12 / 4
    out.mean().backward()
    torch.testing.assert_close(c.grad, torch.tensor([-0.25, -0.25], dtype=F64))


def test_mpo_is_the_weighted_sum_of_its_variants(gen):
    c, r, rc, rr = _pairs(gen)
    mixed = _call(["sigmoid", "bco_pair", "apo_zero"], c, r, rc, rr, variant_weights=[0.8, 0.2, 1.5])
    parts = [_call(v, c, r, rc, rr) for v in ("sigmoid", "bco_pair", "apo_zero")]
    torch.testing.assert_close(mixed, 0.8 * parts[0] + 0.2 * parts[1] + 1.5 * parts[2])
    torch.testing.assert_close(_call(["sigmoid", "hinge"], c, r, rc, rr),
                               _call("sigmoid", c, r, rc, rr) + _call("hinge", c, r, rc, rr))


def test_wpo_weights_multiply_each_pair(gen):
    c, r, rc, rr = _pairs(gen)
    w = torch.rand(6, generator=gen, dtype=F64)
    torch.testing.assert_close(_call("sigmoid", c, r, rc, rr, wpo_weights=w), w * _call("sigmoid", c, r, rc, rr))


def test_wpo_weights_from_logits_match_the_paper(gen):
    # w(y) = exp(mean_t (log p_t(y_t) - log sum_k p_t(k)^2)), Zhou et al. Eq. 2, written in probabilities
    logits = torch.randn(4, 3, 5, generator=gen, dtype=F64)
    tokens = torch.randint(5, (4, 3), generator=gen)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]])
    p = logits.softmax(-1)
    lp = p.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).log()
    out = rl.wpo_weights(lp, torch.logsumexp(2 * logits.log_softmax(-1), -1), mask)
    seq = []
    for i in range(4):
        terms = [math.log(p[i, t, tokens[i, t]].item() / (p[i, t] ** 2).sum().item()) for t in range(3) if mask[i, t]]
        seq.append(math.exp(sum(terms) / len(terms)))
    torch.testing.assert_close(out, torch.tensor([seq[0] * seq[2], seq[1] * seq[3]], dtype=F64))


def test_ld_dpo_counts_the_excess_tokens_with_alpha(gen):
    lp = -torch.rand(4, 5, generator=gen, dtype=F64)
    mask = torch.tensor([[0, 1, 1, 1, 1], [0, 1, 1, 0, 0], [0, 1, 0, 0, 0], [0, 1, 1, 1, 0]])
    out = rl.ld_dpo_log_probs(lp, mask, alpha=0.3)
    # pair 0: lengths 4 and 1 -> shared 1; pair 1: lengths 2 and 3 -> shared 2
    expected = [lp[0, 1] + 0.3 * lp[0, 2:].sum(), lp[1, 1:3].sum(), lp[2, 1], lp[3, 1:3].sum() + 0.3 * lp[3, 3]]
    torch.testing.assert_close(out, torch.stack(expected))
    torch.testing.assert_close(rl.ld_dpo_log_probs(lp, mask, alpha=1.0), torch.where(mask.bool(), lp, 0.0).sum(-1))


@pytest.mark.parametrize("variant", DPO_VARIANTS)
def test_gradcheck_of_every_variant(gen, variant):
    c, r, rc, rr = _pairs(gen, n=4)
    c, r = c.requires_grad_(), r.requires_grad_()
    kw = {"label_smoothing": 0.1} if variant == "exo_pair" else {}
    if variant in ("sigmoid_norm", "sft"):
        kw.update(chosen_lengths=torch.tensor([3, 4, 5, 6]), rejected_lengths=torch.tensor([2, 3, 4, 7]))
    torch.autograd.gradcheck(lambda a, b: losskit.dpo_loss(a, b, ref_chosen_log_probs=rc, ref_rejected_log_probs=rr,
                                                           variant=variant, beta=0.5, **kw), (c, r))


@pytest.mark.parametrize("variant", DPO_VARIANTS)
def test_float32_meets_the_budget_against_float64_with_saturated_margins(gen, variant):
    n = 256
    c = -(1.0 + 200.0 * torch.rand(n, generator=gen, dtype=F64))
    r = -(1.0 + 200.0 * torch.rand(n, generator=gen, dtype=F64))
    rc = -(1.0 + 200.0 * torch.rand(n, generator=gen, dtype=F64))
    rr = -(1.0 + 200.0 * torch.rand(n, generator=gen, dtype=F64))
    kw = {"label_smoothing": 0.1} if variant == "exo_pair" else {}
    if variant in ("sigmoid_norm", "sft"):
        kw.update(chosen_lengths=torch.randint(1, 50, (n,), generator=gen),
                  rejected_lengths=torch.randint(1, 50, (n,), generator=gen))
    if variant in ("ipo", "sppo_hard"):
        kw["beta"] = 0.5
    c, r, rc, rr = (x.float().double() for x in (c, r, rc, rr))  # the same inputs in both dtypes
    values = {}
    for dtype in (F64, torch.float32):
        a, b = c.detach().to(dtype).requires_grad_(), r.detach().to(dtype).requires_grad_()
        loss = losskit.dpo_loss(a, b, ref_chosen_log_probs=rc.to(dtype), ref_rejected_log_probs=rr.to(dtype),
                                variant=variant, **kw)
        loss.backward()
        grads = [torch.zeros_like(x) if x.grad is None else x.grad for x in (a, b)]  # sft reads no rejected input
        values[dtype] = (loss.double(), torch.cat(grads).double())
    (v64, g64), (v32, g32) = values[F64], values[torch.float32]
    # the contract's budget: 1e-5 relative on the value, 1e-4 on the gradient norm
    assert torch.isfinite(v32) and torch.isfinite(g32).all()
    torch.testing.assert_close(v32, v64, rtol=1e-5, atol=1e-7)
    assert (g32 - g64).norm() <= 1e-4 * g64.norm() + 1e-9


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"variant": "sigmod"}, "did you mean 'sigmoid'"),
    ({"variant": "apo_zeros"}, "did you mean 'apo_zero'"),
    ({"variant": ["sigmoid", "hinge"], "variant_weights": [1.0]}, "variant_weights must hold one number per"),
    ({"variant": ["sigmoid", "sigmoid"]}, "variant lists a name twice"),
    ({"variant": "exo_pair"}, "needs label_smoothing > 0"),
    ({"variant": "hinge", "label_smoothing": 0.1}, "label_smoothing applies"),
    ({"variant": "apo_zero", "f_divergence_type": "js_divergence"}, "f_divergence_type='js_divergence' applies"),
    ({"f_divergence_type": "jsd"}, "f_divergence_type must be one of"),
    ({"variant": "sigmoid_norm"}, "pass chosen_lengths and rejected_lengths"),
    ({"variant_weights": [-1.0]}, "variant_weights\\[0\\]"),
])
def test_bad_options_raise_naming_the_argument(kwargs, message):
    c, r = torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -3.0])
    with pytest.raises(ValueError, match=message):
        losskit.dpo_loss(c, r, **kwargs)


def test_bad_inputs_raise_naming_the_argument():
    c = torch.tensor([-1.0, -2.0])
    with pytest.raises(ValueError, match="rejected_log_probs .*must have the shape of chosen_log_probs"):
        losskit.dpo_loss(c, torch.tensor([-1.0, -2.0, -3.0]))
    with pytest.raises(ValueError, match="chosen_log_probs must hold log-probabilities"):
        losskit.dpo_loss(torch.tensor([0.5, -1.0]), c)
    with pytest.raises(TypeError, match="variant must be a name"):
        losskit.dpo_loss(c, c, variant=3)
    with pytest.raises(ValueError, match="B even"):
        rl.ld_dpo_log_probs(torch.zeros(3, 2), alpha=0.5)


# --- KTO's loss types -----------------------------------------------------------------------------


def test_kto_apo_zero_unpaired_matches_the_paper(gen):
    # APO-zero (D'Oosterlinck et al. Eq. 7) on unpaired data: 1 - sigma(beta r) desirable, sigma(beta r) undesirable
    lp, refs = -(1 + 9 * torch.rand(2, 6, generator=gen, dtype=F64))
    desirable = [True, False, True, True, False, False]
    out = losskit.kto_loss(lp, refs, desirable=desirable, variant="apo_zero_unpaired", beta=0.2,
                           desirable_weight=1.5, undesirable_weight=0.5, reduction="none")
    expected = [1.5 * (1 - ref._sigmoid(0.2 * (a - b))) if d else 0.5 * ref._sigmoid(0.2 * (a - b))
                for a, b, d in zip(lp.tolist(), refs.tolist(), desirable, strict=True)]
    torch.testing.assert_close(out, torch.tensor(expected, dtype=F64), rtol=1e-12, atol=1e-12)


def test_kto_variant_errors_name_the_argument():
    lp = torch.tensor([-1.0, -2.0])
    with pytest.raises(ValueError, match="did you mean 'apo_zero_unpaired'"):
        losskit.kto_loss(lp, lp, desirable=[True, False], variant="apo_zero_unpaird")
    with pytest.raises(ValueError, match="has no reference point"):
        losskit.kto_loss(lp, lp, desirable=[True, False], variant="apo_zero_unpaired", kl=0.1)


def test_modules_round_trip_a_mixture_through_their_config(gen):
    c, r, rc, rr = _pairs(gen)
    module = losskit.get("dpo", variant=["sigmoid", "apo_down"], variant_weights=[1.0, 0.25], beta=0.2)
    rebuilt = losskit.get(module.get_config())
    kw = {"ref_chosen_log_probs": rc, "ref_rejected_log_probs": rr}
    expected = losskit.dpo_loss(c, r, variant=["sigmoid", "apo_down"], variant_weights=[1.0, 0.25], beta=0.2, **kw)
    torch.testing.assert_close(rebuilt(c, r, **kw), expected)
    torch.testing.assert_close(module(c, r, **kw), expected)
