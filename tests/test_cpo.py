"""CPO (TRL's ``CPOTrainer`` loss types) unfused: ``losskit.cpo_loss``.

Float64 references written from the CPO, SLiC, IPO, SimPO and AlphaPO papers (tests/reference_rl.py),
hand-worked values, the NLL's two conventions (TRL's token mean, the paper's per-sequence mean),
gradcheck of every variant, float32 against float64, and the errors. Parity with TRL's own code is
in tests/test_trl_parity.py; the fused form against this one in tests/test_fused_policy.py.
"""

from __future__ import annotations

import pytest
import torch

import losskit
from losskit.functional.preference import CPO_VARIANTS
from tests import reference_rl as ref

F64 = torch.float64


def _batch(gen, n=6):
    """Summed log-probabilities of completions of 1 to 8 tokens, and the token counts."""
    lengths = torch.randint(1, 9, (2, n), generator=gen)
    lp = -(0.1 + 1.5 * torch.rand(2, n, generator=gen, dtype=F64)) * lengths
    return lp[0], lp[1], lengths[0], lengths[1]


def test_the_variants_are_trls_loss_types():
    assert set(CPO_VARIANTS) == {"sigmoid", "hinge", "ipo", "simpo", "alphapo"}


# (variant, options): every loss type, AlphaPO's reward on a summed loss type too (TRL's alpha)
CASES = [
    ("sigmoid", {"label_smoothing": 0.1}),
    ("hinge", {"beta": 0.4}),
    ("ipo", {"beta": 0.3}),
    ("simpo", {"beta": 2.0, "simpo_gamma": 0.4, "label_smoothing": 0.1}),
    ("alphapo", {"beta": 2.0, "simpo_gamma": 0.4, "alphapo_alpha": 0.25}),
    ("alphapo", {"beta": 2.0, "alphapo_alpha": -0.3}),
    ("sigmoid", {"alphapo_alpha": 0.05}),
]
IDS = ["sigmoid_smoothed", "hinge", "ipo", "simpo_smoothed", "alphapo", "alphapo_negative_a", "sigmoid_alphapo_reward"]


def _reference_options(options):
    return {"gamma": options.get("simpo_gamma", 0.5), "a": options.get("alphapo_alpha", 0.0),
            "s": options.get("label_smoothing", 0.0)}


@pytest.mark.parametrize(("variant", "options"), CASES, ids=IDS)
def test_each_variant_matches_its_paper_with_trls_nll(gen, variant, options):
    c, r, n_c, n_r = _batch(gen)
    beta, alpha = options.get("beta", 0.1), 0.7
    loss = losskit.cpo_loss(c, r, variant=variant, alpha=alpha, chosen_lengths=n_c, rejected_lengths=n_r,
                            **options)
    effective_alpha = 0.0 if variant == "alphapo" else alpha  # TRL's alphapo is simpo with cpo_alpha = 0
    expected = ref.cpo(c.tolist(), r.tolist(), n_c.tolist(), n_r.tolist(), variant, beta, effective_alpha,
                       **_reference_options(options))
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=F64), rtol=1e-12, atol=1e-12)
    # "none": each pair's preference term plus its share -alpha N c_i / sum(n) of the token-mean NLL
    none = losskit.cpo_loss(c, r, variant=variant, alpha=alpha, chosen_lengths=n_c, rejected_lengths=n_r,
                            reduction="none", **options)
    share = -effective_alpha * len(c) / n_c.sum().item()
    per_pair = [ref.cpo_preference(variant, a, b, m, k, beta, **_reference_options(options)) + share * a
                for a, b, m, k in zip(c.tolist(), r.tolist(), n_c.tolist(), n_r.tolist(), strict=True)]
    torch.testing.assert_close(none, torch.tensor(per_pair, dtype=F64), rtol=1e-12, atol=1e-12)


def test_without_lengths_the_nll_is_the_papers_per_sequence_mean(gen):
    # CPO's L_NLL = -E[log pi(y_w)]: the mean of the summed chosen log-probabilities, one per pair
    c, r, _, _ = _batch(gen)
    loss = losskit.cpo_loss(c, r, beta=0.2, alpha=0.5)
    terms = [ref.cpo_preference("sigmoid", a, b, 1, 1, 0.2) for a, b in zip(c.tolist(), r.tolist(), strict=True)]
    expected = sum(terms) / len(terms) - 0.5 * sum(c.tolist()) / len(c)
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=F64), rtol=1e-12, atol=1e-12)


def test_hand_worked():
    # c = (-1, -3) over (1, 3) tokens, r = (-2, -2) over (2, 2); beta 0.1, alpha 1.
    # sigmoid: -log sigmoid(0.1) = 0.644397, -log sigmoid(-0.1) = 0.744397; mean 0.694397.
    # TRL's NLL: (1 + 3) / (1 + 3) = 1 -> 1.694397; the paper's: (1 + 3) / 2 = 2 -> 2.694397.
    c, r = torch.tensor([-1.0, -3.0], dtype=F64), torch.tensor([-2.0, -2.0], dtype=F64)
    n_c, n_r = torch.tensor([1, 3]), torch.tensor([2, 2])
    assert losskit.cpo_loss(c, r, chosen_lengths=n_c, rejected_lengths=n_r).item() == pytest.approx(1.694397, abs=1e-6)
    assert losskit.cpo_loss(c, r).item() == pytest.approx(2.694397, abs=1e-6)
    # ipo on the averages: c/n = (-1, -1), r/n = (-1, -1): (0 - 1/(2 0.1))^2 = 25, plus the NLL 1
    assert losskit.cpo_loss(c, r, variant="ipo", chosen_lengths=n_c,
                            rejected_lengths=n_r).item() == pytest.approx(26.0, abs=1e-12)
    # hinge: max(0, 1 - 0.1 (1)) = 0.9 and max(0, 1 - 0.1 (-1)) = 1.1; mean 1, plus the NLL 1
    assert losskit.cpo_loss(c, r, variant="hinge", chosen_lengths=n_c,
                            rejected_lengths=n_r).item() == pytest.approx(2.0, abs=1e-12)


def test_alphapo_is_simpo_without_the_nll_and_simpo_matches_simpo_loss(gen):
    c, r, n_c, n_r = _batch(gen)
    lengths = {"chosen_lengths": n_c, "rejected_lengths": n_r}
    simpo = losskit.cpo_loss(c, r, variant="simpo", beta=2.0, alpha=0.0, **lengths)
    torch.testing.assert_close(losskit.cpo_loss(c, r, variant="alphapo", beta=2.0, alpha=0.7, **lengths), simpo)
    torch.testing.assert_close(simpo, losskit.simpo_loss(c, r, beta=2.0, gamma=0.5, **lengths))


def test_alphapo_reward_tends_to_the_log_probability_as_alpha_goes_to_zero(gen):
    # (1 - p^-a) / a = log p + O(a): the a -> 0 limit is plain SimPO
    c, r, n_c, n_r = _batch(gen)
    kw = {"variant": "alphapo", "beta": 2.0, "chosen_lengths": n_c, "rejected_lengths": n_r}
    plain = losskit.cpo_loss(c, r, **kw)
    for a, tol in ((1e-3, 1e-2), (1e-6, 1e-5)):
        assert (losskit.cpo_loss(c, r, alphapo_alpha=a, **kw) - plain).abs() < tol * plain


def test_diagnostics_are_trls_rewards_and_the_nll(gen):
    c, r, n_c, n_r = _batch(gen)
    _, diagnostics = losskit.cpo_loss(c, r, variant="simpo", beta=2.0, chosen_lengths=n_c, rejected_lengths=n_r,
                                      return_diagnostics=True)
    # TRL logs beta times the log-probabilities the loss type reads (averages for simpo)
    torch.testing.assert_close(diagnostics["rewards_chosen"], (2.0 * c / n_c).mean())
    torch.testing.assert_close(diagnostics["rewards_rejected"], (2.0 * r / n_r).mean())
    torch.testing.assert_close(diagnostics["reward_accuracy"], (c / n_c > r / n_r).to(F64).mean())
    torch.testing.assert_close(diagnostics["nll"], -c.sum() / n_c.sum())


def test_module_form_and_registry():
    module = losskit.get("cpo", variant="ipo", beta=0.3, alpha=0.5)
    assert isinstance(module, losskit.CPOLoss)
    c, r = torch.tensor([-4.0, -2.0], dtype=F64), torch.tensor([-3.0, -6.0], dtype=F64)
    n = torch.tensor([2, 3])
    expected = losskit.cpo_loss(c, r, variant="ipo", beta=0.3, alpha=0.5, chosen_lengths=n, rejected_lengths=n)
    torch.testing.assert_close(module(c, r, chosen_lengths=n, rejected_lengths=n), expected)
    torch.testing.assert_close(losskit.get(module.get_config())(c, r, chosen_lengths=n, rejected_lengths=n), expected)


@pytest.mark.parametrize(("variant", "options"), CASES, ids=IDS)
def test_gradcheck_of_every_variant(gen, variant, options):
    c, r, n_c, n_r = _batch(gen, n=4)
    c, r = c.clone().requires_grad_(), r.clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: losskit.cpo_loss(a, b, variant=variant, chosen_lengths=n_c, rejected_lengths=n_r, **options),
        (c, r))


@pytest.mark.parametrize(("variant", "options"), CASES, ids=IDS)
def test_float32_meets_the_budget_against_float64(gen, variant, options):
    # Completions of up to 300 tokens whose log-probabilities sum to -450: the NLL and the summed
    # margins are large, the averages (ipo, simpo, alphapo) of order 1.
    n = 256
    n_c, n_r = torch.randint(1, 300, (2, n), generator=gen)
    c = (-(0.05 + 1.5 * torch.rand(n, generator=gen, dtype=F64)) * n_c).float().double()
    r = (-(0.05 + 1.5 * torch.rand(n, generator=gen, dtype=F64)) * n_r).float().double()
    if not variant.startswith(("simpo", "alphapo", "ipo")) and options.get("alphapo_alpha"):
        c, r = c / 20, r / 20  # AlphaPO's reward of a summed log-probability grows as e^(a |c|)
    values = {}
    for dtype in (F64, torch.float32):
        a, b = c.detach().to(dtype).requires_grad_(), r.detach().to(dtype).requires_grad_()
        loss = losskit.cpo_loss(a, b, variant=variant, chosen_lengths=n_c, rejected_lengths=n_r, **options)
        loss.backward()
        values[dtype] = (loss.double(), torch.cat([a.grad, b.grad]).double())
    (v64, g64), (v32, g32) = values[F64], values[torch.float32]
    torch.testing.assert_close(v32, v64, rtol=1e-5, atol=1e-7)  # the contract's budget
    assert (g32 - g64).norm() <= 1e-4 * g64.norm() + 1e-9


def test_empty_batch_and_a_batch_without_chosen_tokens_give_zero_with_a_gradient():
    empty = torch.zeros(0, dtype=F64, requires_grad=True)
    n = torch.zeros(0, dtype=torch.long)
    out = losskit.cpo_loss(empty, empty, chosen_lengths=n, rejected_lengths=n)
    assert out.item() == 0.0
    (grad,) = torch.autograd.grad(out, empty)
    assert grad.shape == (0,)
    # completions with no tokens (all prompt): summed log-probabilities 0, the NLL 0 / 0 -> 0, not NaN
    zero = torch.zeros(2, dtype=F64, requires_grad=True)
    out = losskit.cpo_loss(zero, zero, variant="simpo", chosen_lengths=torch.zeros(2), rejected_lengths=torch.zeros(2))
    assert torch.isfinite(out) and torch.isfinite(torch.autograd.grad(out, zero)[0]).all()


# --- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"variant": "simp"}, ValueError, "did you mean 'simpo'"),
    ({"variant": "alpha_po"}, ValueError, "did you mean 'alphapo'"),
    ({"variant": "apo_zero"}, ValueError, "variant must be one of"),
    ({"variant": ["sigmoid", "hinge"]}, TypeError, "variant must be one name"),
    ({"variant": "hinge", "label_smoothing": 0.1}, ValueError, "label_smoothing applies"),
    ({"variant": "ipo", "label_smoothing": 0.1}, ValueError, "label_smoothing applies"),
    ({"alpha": -0.5}, ValueError, "alpha"),
    ({"variant": "alphapo", "alpha": -0.5}, ValueError, "alpha must be in"),
    ({"beta": 0.0}, ValueError, "beta"),
    ({"chosen_lengths": torch.tensor([1, 2])}, ValueError, "pass both chosen_lengths and rejected_lengths"),
    ({"chosen_lengths": torch.tensor([1, 2, 3]), "rejected_lengths": torch.tensor([1, 2, 3])}, ValueError,
     "chosen_lengths must have the shape of chosen_log_probs"),
])
def test_bad_options_raise_naming_the_argument(kwargs, error, message):
    c, r = torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -3.0])
    with pytest.raises(error, match=message):
        losskit.cpo_loss(c, r, **kwargs)


def test_bad_inputs_raise_naming_the_argument():
    c = torch.tensor([-1.0, -2.0])
    with pytest.raises(ValueError, match="rejected_log_probs .*must have the shape of chosen_log_probs"):
        losskit.cpo_loss(c, torch.tensor([-1.0, -2.0, -3.0]))
    with losskit.set_checks(True):
        with pytest.raises(ValueError, match="chosen_log_probs must hold log-probabilities"):
            losskit.cpo_loss(torch.tensor([0.5, -1.0]), c)
        with pytest.raises(ValueError, match="rejected_log_probs must hold log-probabilities"):
            losskit.cpo_loss(c, torch.tensor([-1.0, 2.0]))
    with pytest.raises(TypeError, match="chosen_log_probs"):
        losskit.cpo_loss(torch.tensor([-1, -2]), c)
