"""GRPO's loss types (TRL's ``loss_type``) and options against float64 references from the papers.

Parity with TRL's own ``GRPOTrainer._compute_loss`` lives in tests/test_trl_parity.py.
"""

from __future__ import annotations

import math

import pytest
import torch

import losskit
import losskit.rl as rl

F64 = torch.float64


def _case(gen, n=4, t=3):
    old = -(0.2 + 2.0 * torch.rand(n, t, generator=gen, dtype=F64))
    lp = (old + 0.5 * torch.randn(n, t, generator=gen, dtype=F64)).clamp(max=-0.01)
    rewards = torch.randn(n, generator=gen, dtype=F64)
    return lp, old, rewards, rl.group_advantages(rewards, 2).tolist()


def test_cispo_matches_the_paper(gen):
    # MiniMax-M1 Eq. 4: J = sum_t sg(clip(r_t, 0, eps_max)) A log pi_t, token mean (eps_max = TRL's epsilon_high)
    lp, old, rewards, adv = _case(gen)
    lp.requires_grad_()
    loss = losskit.grpo_loss(lp, old, rewards=rewards, group_size=2, variant="cispo", clip_eps_high=1.2,
                             reduction="none")
    expected = [[-min(math.exp(a - b), 1.2) * adv[i] * a for a, b in zip(lp[i].tolist(), old[i].tolist(),
                                                                            strict=True)] for i in range(4)]
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=F64), rtol=1e-12, atol=1e-12)
    loss.sum().backward()  # the weight is a constant: d/d lp = -min(r, eps_max) A
    grad = [[-min(math.exp(a - b), 1.2) * adv[i] for a, b in zip(lp[i].tolist(), old[i].tolist(), strict=True)]
            for i in range(4)]
    torch.testing.assert_close(lp.grad, torch.tensor(grad, dtype=F64), rtol=1e-12, atol=1e-12)


def test_sapo_matches_the_paper(gen):
    # SAPO: f(r) = (4 / tau) sigma(tau (r - 1)), tau = tau_pos for A > 0 and tau_neg otherwise; sequence mean
    lp, old, rewards, adv = _case(gen)
    loss = losskit.grpo_loss(lp, old, rewards=rewards, group_size=2, variant="sapo", reduction="none",
                             sapo_temperature_pos=1.0, sapo_temperature_neg=2.0)
    expected = []
    for i in range(4):
        tau = 1.0 if adv[i] > 0 else 2.0
        terms = [-(4 / tau) / (1 + math.exp(-tau * (math.exp(a - b) - 1))) * adv[i]
                 for a, b in zip(lp[i].tolist(), old[i].tolist(), strict=True)]
        expected.append(sum(terms) / 3)
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=F64), rtol=1e-12, atol=1e-12)


def test_sapo_has_the_policy_gradient_at_ratio_one(gen):
    # f'(1) = (4 / tau) tau sigma'(0) = 1: on-policy, SAPO's gradient is the plain policy gradient
    lp, _, rewards, _ = _case(gen)
    lp.requires_grad_()
    kw = {"rewards": rewards, "group_size": 2, "aggregation": "token_mean"}
    g1 = torch.autograd.grad(losskit.grpo_loss(lp, lp.detach(), variant="sapo", **kw), lp)[0]
    g2 = torch.autograd.grad(losskit.grpo_loss(lp, lp.detach(), variant="dapo", **kw), lp)[0]
    torch.testing.assert_close(g1, g2)


def test_delta_caps_the_unclipped_weight_of_negative_advantages():
    # A = -1, r = e^1 = 2.718: PPO's loss is -min(rA, clip(r)A) = r = 2.718; with delta = 1.5, 1.5
    lp, old = torch.tensor([[-1.0], [-3.0]], dtype=F64), torch.tensor([[-2.0], [-3.0]], dtype=F64)
    rewards = torch.tensor([0.0, 1.0], dtype=F64)  # A = (-0.7070, +0.7070)
    out = losskit.grpo_loss(lp, old, rewards=rewards, group_size=2, delta=1.5, reduction="none")
    a = 0.5 / (math.sqrt(0.5) + 1e-4)
    torch.testing.assert_close(out, torch.tensor([[1.5 * a], [-a]], dtype=F64))


def test_loss_types_pick_trls_aggregation(gen):
    lp, old, rewards, _ = _case(gen)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1]])
    kw = {"rewards": rewards, "group_size": 2, "mask": mask}
    for variant, aggregation in (("grpo", "sequence_mean"), ("bnpo", "token_mean"), ("dr_grpo", "sequence_sum_norm")):
        torch.testing.assert_close(losskit.grpo_loss(lp, old, variant=variant, **kw),
                                   losskit.grpo_loss(lp, old, aggregation=aggregation, **kw))


def test_bias_corrected_kl_is_the_kl_times_the_weight(gen):
    lp, old, rewards, _ = _case(gen)
    ref = old - 0.1
    kw = {"rewards": rewards, "group_size": 2, "ref_log_probs": ref, "reduction": "none"}
    policy = losskit.grpo_loss(lp, old, **kw)
    plain = losskit.grpo_loss(lp, old, beta=0.5, **kw) - policy
    corrected = losskit.grpo_loss(lp, old, beta=0.5, use_bias_correction_kl=True, **kw) - policy
    torch.testing.assert_close(corrected, plain * (lp - old).exp())


def test_vllm_importance_sampling_ratio_hand_worked():
    # token ratios old / sampler: (2, 1) and (5, 1); sequence ratios 2 and 5; bounds [0.5, 3]
    old = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5]], dtype=F64))
    sampler = torch.log(torch.tensor([[0.25, 0.5], [0.1, 0.5]], dtype=F64))
    ratio = lambda mode: rl.vllm_importance_sampling_ratio(old, sampler, mode=mode, clip_min=0.5, clip_max=3.0)  # noqa: E731
    torch.testing.assert_close(ratio("token_truncate"), torch.tensor([[2.0, 1.0], [3.0, 1.0]], dtype=F64))
    torch.testing.assert_close(ratio("token_mask"), torch.tensor([[2.0, 1.0], [0.0, 1.0]], dtype=F64))
    torch.testing.assert_close(ratio("sequence_truncate"), torch.tensor([2.0, 3.0], dtype=F64))
    torch.testing.assert_close(ratio("sequence_mask"), torch.tensor([2.0, 0.0], dtype=F64))
    sampler[0, 1] = float("nan")  # a token the sampler did not score: no correction, not NaN
    torch.testing.assert_close(rl.vllm_importance_sampling_ratio(old, sampler, mode="token_truncate")[0],
                               torch.tensor([2.0, 1.0], dtype=F64))


@pytest.mark.parametrize("variant", ["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo"])
def test_gradcheck_of_every_loss_type(gen, variant):
    lp, old, rewards, _ = _case(gen)
    lp.requires_grad_()
    torch.autograd.gradcheck(lambda x: losskit.grpo_loss(x, old, rewards=rewards, group_size=2, variant=variant,
                                                         clip_eps_high=0.28), (lp,))


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"variant": "drgrpo"}, ValueError, "did you mean 'dr_grpo'"),
    ({"variant": ["grpo"]}, TypeError, "variant must be one name"),
    ({"top_entropy_quantile": 0.5}, ValueError, "pass entropies"),
    ({"delta": 0.9}, ValueError, "delta"),
    ({"sapo_temperature_neg": 0.0}, ValueError, "sapo_temperature_neg"),
    ({"importance_sampling_ratio": torch.ones(3)}, ValueError, "importance_sampling_ratio must have shape"),
])
def test_bad_options_raise_naming_the_argument(gen, kwargs, error, message):
    lp, old, rewards, _ = _case(gen)
    with pytest.raises(error, match=message):
        losskit.grpo_loss(lp, old, rewards=rewards, group_size=2, **kwargs)
