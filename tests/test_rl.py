"""losskit.rl: returns and advantages, policy and preference objectives.

Hand-worked values (working in the comments), float64 references transcribed from the papers
(tests/reference_rl.py), properties (PPO's zero gradient past the clip, GAE's lambda limits,
DPO's swap symmetry, k3's sign and bias), TRL's three GRPO reductions, diagnostics, errors, and
two short training runs on a corridor written here (PPO with GAE, and REINFORCE).
"""

from __future__ import annotations

import math

import pytest
import torch

import losskit
import losskit.rl as rl
from tests import reference_rl as ref

F64 = torch.float64


def close(actual, expected, rtol=1e-10, atol=1e-12):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), rtol=rtol, atol=atol)


def _lp(gen, *shape, low=0.1, high=3.0):
    return -(low + (high - low) * torch.rand(*shape, generator=gen, dtype=F64))


# --- namespace ------------------------------------------------------------------------------------


def test_namespaces_and_registry():
    for name in ("ppo_clip_loss", "grpo_loss", "dpo_loss", "cpo_loss", "kto_loss", "entropy_bonus", "kl_penalty"):
        assert getattr(losskit, name) is getattr(rl, name) is getattr(losskit.functional, name)
    assert {"reinforce", "ppo_clip", "value", "kl_penalty", "grpo"} == set(losskit.available("rl"))
    assert {"dpo", "simpo", "orpo", "cpo", "kto"} == set(losskit.available("preference"))
    assert isinstance(losskit.get("ppo", clip_eps=0.1), losskit.PPOClipLoss)
    assert isinstance(losskit.get("critic"), losskit.ValueLoss)


def test_the_worked_example_of_docs_rl_md():
    # pi = softmax(ln 1/3, 0) = (0.25, 0.75); action 0, G = 2, b = 0.5, A = 1.5:
    # loss = -1.5 ln 0.25 = 2.0794; dL/dz = -A (onehot - pi) = (-1.125, 1.125)
    z = torch.tensor([[math.log(1 / 3), 0.0]], dtype=F64, requires_grad=True)
    lp = torch.log_softmax(z, -1)[:, 0]
    loss = losskit.reinforce_loss(lp, torch.tensor([2.0], dtype=F64), baseline=0.5)
    close(loss, -1.5 * math.log(0.25))
    loss.backward()
    close(z.grad, [[-1.125, 1.125]])


# --- returns and advantages ---------------------------------------------------------------------


def test_discounted_returns_hand_worked():
    # gamma 0.9, one episode ending at step 1, bootstrap 10 after step 2:
    # G2 = 1 + 0.9 * 10 = 10; G1 = 2 (done: nothing after it); G0 = 3 + 0.9 * 2 = 4.8
    rewards = torch.tensor([3.0, 2.0, 1.0], dtype=F64)
    dones = torch.tensor([False, True, False])
    close(rl.discounted_returns(rewards, dones, 0.9, bootstrap=10.0), [4.8, 2.0, 10.0])


def test_gae_hand_worked():
    # gamma 0.5, lam 0.5, V = [1, 2], r = [0, 4], next_value 4, no episode end:
    # delta1 = 4 + 0.5 * 4 - 2 = 4;  delta0 = 0 + 0.5 * 2 - 1 = 0
    # A1 = 4;  A0 = 0 + 0.25 * 4 = 1;  returns = A + V = [2, 6]
    out = rl.gae(torch.tensor([0.0, 4.0]), torch.tensor([1.0, 2.0]), None, 0.5, 0.5, next_value=4.0)
    close(out.advantages, [1.0, 4.0])
    close(out.returns, [2.0, 6.0])


def test_gae_and_returns_match_the_reference_with_episode_ends_and_batched_envs(gen):
    steps, envs = 12, 5
    rewards = torch.randn(steps, envs, generator=gen, dtype=F64)
    values = torch.randn(steps, envs, generator=gen, dtype=F64)
    dones = torch.rand(steps, envs, generator=gen) < 0.2
    next_value = torch.randn(envs, generator=gen, dtype=F64)
    out = rl.gae(rewards, values, dones, 0.97, 0.9, next_value=next_value)
    expected = ref.gae(rewards, values, dones.double(), 0.97, 0.9, next_value.tolist())
    close(out.advantages, expected)
    close(out.returns, torch.tensor(expected, dtype=F64) + values)
    returns = rl.discounted_returns(rewards, dones, 0.97, bootstrap=next_value)
    close(returns, ref.discounted_returns(rewards, dones.double(), 0.97, next_value.tolist()))
    # Time along the last dimension gives the same numbers transposed.
    out_t = rl.gae(rewards.T, values.T, dones.T, 0.97, 0.9, next_value=next_value, dim=-1)
    close(out_t.advantages, out.advantages.T)
    close(rl.discounted_returns(rewards.T, dones.T, 0.97, bootstrap=next_value, dim=1), returns.T)


def test_gae_lambda_one_is_returns_minus_values_and_lambda_zero_is_the_td_error(gen):
    rewards = torch.randn(10, 3, generator=gen, dtype=F64)
    values = torch.randn(10, 3, generator=gen, dtype=F64)
    dones = torch.rand(10, 3, generator=gen) < 0.3
    next_value = torch.randn(3, generator=gen, dtype=F64)
    returns = rl.discounted_returns(rewards, dones, 0.9, bootstrap=next_value)
    close(rl.gae(rewards, values, dones, 0.9, 1.0, next_value=next_value).advantages, returns - values)
    v_next = torch.cat([values[1:], next_value[None]])
    td = rewards + 0.9 * (~dones).double() * v_next - values
    close(rl.gae(rewards, values, dones, 0.9, 0.0, next_value=next_value).advantages, td)


def test_returns_and_advantages_carry_no_gradient():
    values = torch.tensor([1.0, 2.0], requires_grad=True)
    out = rl.gae(torch.tensor([1.0, 1.0]), values, None, 0.9, 0.9)
    assert not out.advantages.requires_grad and not out.returns.requires_grad


def test_normalize_advantages_ignores_padding():
    # Valid entries 1, 2, 3: mean 2, Bessel std 1 -> -1, 0, 1; the padded 100 changes nothing.
    adv = torch.tensor([[1.0, 2.0], [3.0, 100.0]], dtype=F64)
    mask = torch.tensor([[1, 1], [1, 0]])
    out = rl.normalize_advantages(adv, mask=mask, eps=0.0)
    close(out[mask.bool()], [-1.0, 0.0, 1.0])


def test_group_advantages_hand_worked():
    # Group [1, 0]: mean 0.5, unbiased std sqrt(0.5) = 0.70711; group [2, 2]: std 0 -> advantages 0.
    out = rl.group_advantages(torch.tensor([1.0, 0.0, 2.0, 2.0], dtype=F64), 2)
    a = 0.5 / (math.sqrt(0.5) + 1e-4)
    close(out, [a, -a, 0.0, 0.0])
    for scale in ("group", "batch", "none"):
        rewards = torch.randn(12, dtype=F64)
        close(rl.group_advantages(rewards, 4, scale=scale), ref.group_advantages(rewards.tolist(), 4, scale, 1e-4))


# --- PPO ----------------------------------------------------------------------------------------


def test_ppo_hand_worked_and_diagnostics():
    # old probabilities 0.5; new 0.75 (ratio 1.5) and 0.25 (ratio 0.5); eps 0.2:
    # A = +1: -min(1.5, 1.2) = -1.2 (clipped high);  A = -1: -min(-0.5, -0.8) = 0.8 (clipped low)
    old = torch.log(torch.tensor([0.5, 0.5, 0.5], dtype=F64))
    new = torch.log(torch.tensor([0.75, 0.25, 0.55], dtype=F64))  # third: ratio 1.1, inside the clip
    adv = torch.tensor([1.0, -1.0, 2.0], dtype=F64)
    loss, info = losskit.ppo_clip_loss(new, old, advantages=adv, reduction="none", return_diagnostics=True)
    close(loss, [-1.2, 0.8, -2.2])
    close(info["clip_fraction"], 2 / 3)
    close(info["clip_fraction_high"], 1 / 3)
    close(info["clip_fraction_low"], 1 / 3)
    # approx KL = mean((r - 1) - log r) = (0.5 - ln 1.5 + (-0.5) - ln 0.5 + 0.1 - ln 1.1) / 3
    close(info["approx_kl"], (0.5 - math.log(1.5) - 0.5 - math.log(0.5) + 0.1 - math.log(1.1)) / 3)
    assert all(not v.requires_grad for v in info.values())


def test_ppo_separate_bounds_and_dual_clip():
    old = torch.zeros(3, dtype=F64) - 1.0
    # ratio 1.25 with A = 1: inside eps_high = 0.28, so -1.25; outside eps_high = 0.2 -> -1.2
    new = old + math.log(1.25)
    adv = torch.ones(3, dtype=F64)
    close(losskit.ppo_clip_loss(new, old, advantages=adv, clip_eps=0.2, clip_eps_high=0.28), -1.25)
    close(losskit.ppo_clip_loss(new, old, advantages=adv, clip_eps=0.2), -1.2)
    # ratio 5 with A = -1: PPO's loss is 5 (unbounded in r); dual clip c = 3 caps it at 3.
    new = (old + math.log(5.0)).clamp(max=0.0)
    new = torch.full((3,), -0.2, dtype=F64)
    old = new - math.log(5.0)
    close(losskit.ppo_clip_loss(new, old, advantages=-adv), 5.0)
    loss, info = losskit.ppo_clip_loss(new, old, advantages=-adv, dual_clip=3.0, return_diagnostics=True)
    close(loss, 3.0)
    close(info["dual_clip_fraction"], 1.0)


def test_ppo_matches_the_reference(gen):
    old = _lp(gen, 6, 5)
    new = (old + 0.5 * torch.randn(6, 5, generator=gen, dtype=F64)).clamp(max=-1e-3)
    adv = torch.randn(6, 5, generator=gen, dtype=F64)
    out = losskit.ppo_clip_loss(new, old, advantages=adv, clip_eps=0.1, clip_eps_high=0.3, dual_clip=2.0,
                                reduction="none")
    expected = [[ref.ppo_clip_token(a, b, c, 0.1, 0.3, 2.0) for a, b, c in zip(*rows, strict=True)]
                for rows in zip(new.tolist(), old.tolist(), adv.tolist(), strict=True)]
    close(out, expected)


def test_ppo_gradient_is_zero_where_the_ratio_is_clipped_in_the_advantages_direction(gen):
    old = _lp(gen, 200)
    new = (old + 0.6 * torch.randn(200, generator=gen, dtype=F64)).clamp(max=-1e-3).requires_grad_()
    adv = torch.randn(200, generator=gen, dtype=F64)
    losskit.ppo_clip_loss(new, old, advantages=adv, reduction="sum").backward()
    ratio = (new - old).exp().detach()
    clipped = ((ratio > 1.2) & (adv > 0)) | ((ratio < 0.8) & (adv < 0))
    assert clipped.sum() > 20 and (~clipped).sum() > 20
    assert (new.grad[clipped] == 0).all()
    # Elsewhere the gradient is the unclipped one: d(-r A)/d log pi = -r A.
    close(new.grad[~clipped], -(ratio * adv)[~clipped])


def test_ppo_sequence_level_ratio_is_the_length_normalized_sequence_ratio():
    # Sequence 0 has valid tokens with log-ratios 0.1 and 0.3 (mean 0.2); its padded token holds NaN.
    old = torch.tensor([[-1.0, -1.0, float("nan")]], dtype=F64)
    new = torch.tensor([[-0.9, -0.7, float("nan")]], dtype=F64, requires_grad=True)
    mask = torch.tensor([[True, True, False]])
    loss = losskit.ppo_clip_loss(new, old, advantages=torch.tensor([1.0], dtype=F64), clip_eps=0.5,
                                 ratio_level="sequence", mask=mask)
    close(loss, -math.exp(0.2))  # both tokens carry -exp(0.2) * 1; their mean
    loss.backward()
    # The loss is -exp((lr_0 + lr_1) / 2): d/d lp_t = -exp(0.2) / 2 for each valid token, 0 for the padding.
    close(new.grad, [[-math.exp(0.2) / 2, -math.exp(0.2) / 2, 0.0]])


def test_padding_may_hold_anything_and_gets_no_gradient():
    new = torch.tensor([[-0.5, float("-inf")], [-1.0, float("nan")]], dtype=F64, requires_grad=True)
    old = torch.tensor([[-0.6, float("nan")], [-1.1, 5.0]], dtype=F64)
    mask = torch.tensor([[1, 0], [1, 0]])
    for fn in (lambda: losskit.ppo_clip_loss(new, old, advantages=torch.ones(2, dtype=F64), mask=mask),
               lambda: losskit.kl_penalty(new, old, mask=mask),
               lambda: losskit.reinforce_loss(new, torch.ones(2, dtype=F64), mask=mask)):
        new.grad = None
        loss = fn()
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(new.grad).all()
        assert (new.grad[:, 1] == 0).all()


# --- GRPO and aggregation -----------------------------------------------------------------------


def _grpo_case(gen, n=6, t=5):
    old = _lp(gen, n, t)
    new = (old + 0.3 * torch.randn(n, t, generator=gen, dtype=F64)).clamp(max=-1e-3)
    reference = _lp(gen, n, t)
    rewards = torch.randn(n, generator=gen, dtype=F64)
    lengths = torch.tensor([5, 2, 4, 1, 3, 5])[:n]
    mask = torch.arange(t)[None, :] < lengths[:, None]
    return new, old, reference, rewards, mask


@pytest.mark.parametrize(("aggregation", "loss_type"),
                         [("token_mean", "dapo"), ("sequence_mean", "grpo"), ("sequence_sum_norm", "dr_grpo")])
def test_grpo_reproduces_trls_loss_types(gen, aggregation, loss_type):
    new, old, reference, rewards, mask = _grpo_case(gen)
    scale = "none" if loss_type == "dr_grpo" else "group"
    max_length = 8 if loss_type == "dr_grpo" else None
    ours = losskit.grpo_loss(new, old, rewards=rewards, group_size=3, ref_log_probs=reference, beta=0.04,
                             clip_eps_high=0.28, scale_rewards=scale, mask=mask, aggregation=aggregation,
                             max_length=max_length)
    expected = ref.grpo(new, old, rewards, 3, mask, ref=reference, beta=0.04, eps_high=0.28, scale=scale,
                        loss_type=loss_type, max_completion_length=max_length)
    close(ours, expected)


def test_aggregations_hand_worked_length_bias():
    # Two completions with per-token losses 1 (1 token) and 3, 3, 3 (3 tokens):
    # token mean (1 + 9) / 4 = 2.5;  sequence mean (1 + 3) / 2 = 2;  sum / max_length 4: (1/4 + 9/4) / 2 = 1.25
    # The k1 estimate with lp - ref = loss per token gives exactly these per-token losses.
    lp = torch.tensor([[-1.0, -9.0, -9.0], [-3.0, -3.0, -3.0]], dtype=F64)
    reference = torch.full_like(lp, -2.0) - torch.tensor([[0.0], [4.0]], dtype=F64)  # lp - ref = [1, ...], [3 ...]
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    kw = {"estimator": "k1", "mask": mask}
    close(losskit.kl_penalty(lp, reference, **kw), 2.5)
    close(losskit.kl_penalty(lp, reference, aggregation="sequence_mean", **kw), 2.0)
    close(losskit.kl_penalty(lp, reference, aggregation="sequence_sum_norm", max_length=4, **kw), 1.25)
    close(losskit.kl_penalty(lp, reference, aggregation="sequence_mean", reduction="none", **kw), [1.0, 3.0])


def test_token_mean_over_accumulation_steps_with_normalizer(gen):
    # Splitting a batch into micro-batches and dividing each sum by the global token count gives the
    # global token mean; averaging per-micro-batch means does not (the gradient-accumulation pitfall).
    new, old, _, rewards, mask = _grpo_case(gen)
    adv = rewards
    full = losskit.ppo_clip_loss(new, old, advantages=adv, mask=mask)
    total_tokens = int(mask.sum())
    parts = [losskit.ppo_clip_loss(new[i:i + 3], old[i:i + 3], advantages=adv[i:i + 3], mask=mask[i:i + 3],
                                   normalizer=total_tokens) for i in (0, 3)]
    close(parts[0] + parts[1], full)


def test_sequence_mean_excludes_empty_sequences():
    lp = torch.tensor([[-1.0, -1.0], [-2.0, -2.0]], dtype=F64)
    mask = torch.tensor([[1, 1], [0, 0]])
    out = losskit.reinforce_loss(lp, torch.tensor([1.0, 5.0], dtype=F64), mask=mask, aggregation="sequence_mean")
    close(out, 1.0)  # only the first sequence: -(1)(-1)


def test_grpo_with_one_update_per_generation_has_ratio_one_and_the_policy_gradient():
    lp = torch.log(torch.tensor([[0.5, 0.25], [0.5, 0.25]], dtype=F64)).requires_grad_()
    rewards = torch.tensor([1.0, 0.0], dtype=F64)
    loss, info = losskit.grpo_loss(lp, lp.detach(), rewards=rewards, group_size=2, scale_rewards="none",
                                   return_diagnostics=True)
    loss.backward()
    # A = +0.5, -0.5; token mean over 4 tokens: d/d lp = -A / 4
    close(lp.grad, [[-0.125, -0.125], [0.125, 0.125]])
    close(info["clip_fraction"], 0.0)
    close(info["reward_mean"], 0.5)


# --- value, entropy, KL ---------------------------------------------------------------------------


def test_value_loss_clipping_is_not_a_no_op_and_matches_the_reference(gen):
    values = torch.randn(40, generator=gen, dtype=F64)
    old = values + 0.5 * torch.randn(40, generator=gen, dtype=F64)
    returns = torch.randn(40, generator=gen, dtype=F64)
    clipped = losskit.value_loss(values, returns, old_values=old, clip_eps=0.2, reduction="none")
    expected = [ref.value_clipped(v, r, o, 0.2) for v, r, o in zip(values.tolist(), returns.tolist(), old.tolist(),
                                                                    strict=True)]
    close(clipped, expected)
    plain = losskit.value_loss(values, returns, reduction="none")
    assert (clipped > plain + 1e-6).sum() > 5  # the clipped term is active for many entries
    with pytest.raises(ValueError, match="old_values"):
        losskit.value_loss(values, returns, clip_eps=0.2)
    with pytest.raises(ValueError, match="no-op"):
        losskit.value_loss(values, returns, old_values=old.requires_grad_(), clip_eps=0.2)


def test_value_loss_gradient_is_zero_past_the_clip_when_the_clipped_error_is_larger():
    # V_old = 1, V = 1.5 (moved 0.5 > eps 0.2), R = 3: unclipped error 1.5^2, clipped (1.2 - 3)^2 = 3.24 is larger,
    # and it does not depend on V: gradient 0.
    v = torch.tensor([1.5], dtype=F64, requires_grad=True)
    loss = losskit.value_loss(v, torch.tensor([3.0], dtype=F64), old_values=torch.tensor([1.0], dtype=F64),
                              clip_eps=0.2)
    close(loss, 3.24)
    loss.backward()
    close(v.grad, [0.0])


def test_value_loss_huber_and_explained_variance():
    v, r = torch.tensor([0.0, 0.0, 3.0], dtype=F64), torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    # Huber with delta 1: 0.5 * 1^2, 1 * (2 - 0.5), 0 -> mean (0.5 + 1.5) / 3
    loss, info = losskit.value_loss(v, r, delta=1.0, return_diagnostics=True)
    close(loss, 2.0 / 3)
    # R - V = [1, 2, 0]: variance 2/3 (biased); Var R = 2/3 -> explained variance 0
    close(info["explained_variance"], 0.0)
    _, info = losskit.value_loss(r.clone(), r, return_diagnostics=True)
    close(info["explained_variance"], 1.0)
    _, info = losskit.value_loss(v, torch.ones(3, dtype=F64), return_diagnostics=True)
    assert torch.isnan(info["explained_variance"])  # constant returns: undefined


def test_entropy_bonus_is_minus_the_entropy(gen):
    logits = torch.randn(4, 3, 5, generator=gen, dtype=F64)
    out = losskit.entropy_bonus(logits, reduction="none")
    close(out, [[-ref.entropy(row) for row in seq] for seq in logits.tolist()])
    masked = torch.tensor([[0.0, float("-inf"), float("-inf")]], dtype=F64, requires_grad=True)
    loss = losskit.entropy_bonus(masked)  # one possible action: entropy 0
    loss.backward()
    close(loss, 0.0)
    assert torch.isfinite(masked.grad).all()


def test_kl_estimators_hand_worked_and_k3_is_nonnegative_and_unbiased(gen):
    lp, reference = torch.tensor([-1.0], dtype=F64), torch.tensor([-2.0], dtype=F64)
    # log rho = -1: k1 = 1, k2 = 0.5, k3 = e^-1 - 1 + 1 = 0.3679
    for estimator, value in (("k1", 1.0), ("k2", 0.5), ("k3", math.exp(-1))):
        close(losskit.kl_penalty(lp, reference, estimator=estimator), value)
    # Samples from pi: the means of k1 and k3 estimate KL(pi || pi_ref); k3 is never negative.
    p = torch.tensor([0.5, 0.3, 0.2], dtype=F64)
    q = torch.tensor([0.2, 0.3, 0.5], dtype=F64)
    exact = float((p * (p / q).log()).sum())
    samples = torch.multinomial(p, 200_000, replacement=True, generator=gen)
    k3 = losskit.kl_penalty(p.log()[samples], q.log()[samples], reduction="none")
    k1 = losskit.kl_penalty(p.log()[samples], q.log()[samples], estimator="k1")
    assert (k3 >= 0).all()
    assert abs(float(k3.mean()) - exact) < 0.01 and abs(float(k1) - exact) < 0.01
    loss, info = losskit.kl_penalty(p.log()[samples], q.log()[samples], return_diagnostics=True)
    close(info["kl_k3"], loss)


# --- preferences ----------------------------------------------------------------------------------


def test_dpo_hand_worked_variants_and_diagnostics():
    c, r = torch.tensor([-10.0], dtype=F64), torch.tensor([-12.0], dtype=F64)
    rc, rr = torch.tensor([-11.0], dtype=F64), torch.tensor([-11.0], dtype=F64)
    kw = {"ref_chosen_log_probs": rc, "ref_rejected_log_probs": rr}
    # h = (-10 + 11) - (-12 + 11) = 2, beta 0.1: sigmoid -log s(0.2) = 0.59814; hinge 1 - 0.2 = 0.8;
    # IPO (2 - 1 / 0.2)^2 = 9; label smoothing 0.1: 0.9 * 0.59814 + 0.1 * 0.79814 = 0.61814
    close(losskit.dpo_loss(c, r, **kw), -math.log(1 / (1 + math.exp(-0.2))))
    close(losskit.dpo_loss(c, r, variant="hinge", **kw), 0.8)
    close(losskit.dpo_loss(c, r, variant="ipo", **kw), 9.0)
    close(losskit.dpo_loss(c, r, label_smoothing=0.1, **kw), 0.9 * 0.598138869381 + 0.1 * 0.798138869381)
    _, info = losskit.dpo_loss(c, r, return_diagnostics=True, **kw)
    close(info["rewards_chosen"], 0.1)  # 0.1 * (-10 + 11)
    close(info["rewards_rejected"], -0.1)
    close(info["reward_margin"], 0.2)
    close(info["reward_accuracy"], 1.0)


@pytest.mark.parametrize("variant", ["sigmoid", "hinge", "ipo"])
def test_dpo_matches_the_reference(gen, variant):
    c, r, rc, rr = (_lp(gen, 16, low=5, high=20) for _ in range(4))
    smoothing = 0.2 if variant == "sigmoid" else 0.0
    out = losskit.dpo_loss(c, r, ref_chosen_log_probs=rc, ref_rejected_log_probs=rr, beta=0.3, variant=variant,
                           label_smoothing=smoothing, reduction="none")
    expected = [ref.dpo(*v, 0.3, variant, smoothing) for v in zip(c.tolist(), r.tolist(), rc.tolist(), rr.tolist(),
                                                                  strict=True)]
    close(out, expected)


def test_dpo_swapping_chosen_and_rejected_negates_the_margin(gen):
    c, r, rc, rr = (_lp(gen, 32, low=5, high=20) for _ in range(4))
    loss, info = losskit.dpo_loss(c, r, ref_chosen_log_probs=rc, ref_rejected_log_probs=rr, reduction="none",
                                  return_diagnostics=True)
    swapped, info_s = losskit.dpo_loss(r, c, ref_chosen_log_probs=rr, ref_rejected_log_probs=rc, reduction="none",
                                       return_diagnostics=True)
    close(info_s["reward_margin"], -info["reward_margin"])
    # -log s(z) - (-log s(-z)) = -z, with z = beta h
    h = (c - rc) - (r - rr)
    close(loss - swapped, -0.1 * h)
    # With label smoothing 1/2 the loss no longer depends on which completion is the chosen one... almost:
    # s = 0.5 gives the symmetric -0.5 (log s(z) + log s(-z)); here 0.499 stays within 1e-3 of symmetric.
    a = losskit.dpo_loss(c, r, ref_chosen_log_probs=rc, ref_rejected_log_probs=rr, label_smoothing=0.499)
    b = losskit.dpo_loss(r, c, ref_chosen_log_probs=rr, ref_rejected_log_probs=rc, label_smoothing=0.499)
    assert abs(float(a - b)) < 1e-3 * float(h.abs().mean())


def test_preference_losses_match_the_references(gen):
    c, r = _lp(gen, 16, low=0.1, high=3.0), _lp(gen, 16, low=0.1, high=3.0)
    close(losskit.simpo_loss(c, r, beta=2.5, gamma=0.3, label_smoothing=0.1, reduction="none"),
          [ref.simpo(a, b, 2.5, 0.3, 0.1) for a, b in zip(c.tolist(), r.tolist(), strict=True)])
    close(losskit.orpo_loss(c, r, beta=0.2, reduction="none"),
          [ref.orpo(a, b, 0.2) for a, b in zip(c.tolist(), r.tolist(), strict=True)], rtol=1e-9)
    desirable = torch.rand(16, generator=gen) < 0.5
    close(losskit.kto_loss(c, r, desirable=desirable, kl=0.3, beta=0.5, desirable_weight=1.0,
                           undesirable_weight=1.5, reduction="none"),
          [ref.kto(a, b, bool(d), 0.3, 0.5, 1.0, 1.5) for a, b, d in zip(c.tolist(), r.tolist(), desirable.tolist(),
                                                                         strict=True)])


def test_simpo_and_orpo_length_normalization():
    sums, lengths = torch.tensor([-4.0, -9.0], dtype=F64), torch.tensor([4, 6])
    r_sums, r_lengths = torch.tensor([-6.0, -3.0], dtype=F64), torch.tensor([3, 2])
    for fn in (losskit.simpo_loss, losskit.orpo_loss):
        close(fn(sums, r_sums, chosen_lengths=lengths, rejected_lengths=r_lengths),
              fn(sums / lengths, r_sums / r_lengths))


def test_simpo_and_orpo_hand_worked():
    # SimPO: z = 2 * (-1 - (-1.5)) - 0.5 = 0.5 -> -log s(0.5) = 0.474077
    close(losskit.simpo_loss(torch.tensor([-1.0], dtype=F64), torch.tensor([-1.5], dtype=F64)),
          math.log1p(math.exp(-0.5)))
    # ORPO: P = 0.5 (odds 1) vs 0.2 (odds 0.25): ln 2 - 0.1 log s(ln 4) = 0.693147 + 0.1 * 0.223144
    c, r = torch.tensor([math.log(0.5)], dtype=F64), torch.tensor([math.log(0.2)], dtype=F64)
    loss, info = losskit.orpo_loss(c, r, return_diagnostics=True)
    close(loss, math.log(2) + 0.1 * math.log(1.25))
    close(info["log_odds_ratio"], math.log(4))
    close(losskit.orpo_loss(c, r, include_nll=False), 0.1 * math.log(1.25))


def test_kto_hand_worked_and_diagnostics():
    # r = -10 + 12 = 2, beta 0.1, z0 = 0: desirable 1 - s(0.2) = 0.450166; undesirable 1.5 * (1 - s(-0.2)) = 0.824751
    lp, reference = torch.tensor([-10.0, -10.0], dtype=F64), torch.tensor([-12.0, -12.0], dtype=F64)
    loss, info = losskit.kto_loss(lp, reference, desirable=torch.tensor([1, 0]), undesirable_weight=1.5,
                                  reduction="none", return_diagnostics=True)
    s = 1 / (1 + math.exp(-0.2))
    close(loss, [1 - s, 1.5 * s])
    close(info["rewards_desirable"], 0.2)
    close(info["rewards_undesirable"], 0.2)


def test_gradients_reach_both_policy_inputs_and_none_reach_the_references(gen):
    c, r, rc, rr = (_lp(gen, 3, low=2, high=6).requires_grad_() for _ in range(4))
    for fn in (lambda a, b: losskit.dpo_loss(a, b, ref_chosen_log_probs=rc, ref_rejected_log_probs=rr, reduction="sum"),
               lambda a, b: losskit.simpo_loss(a / 5, b / 5, reduction="sum"),
               lambda a, b: losskit.orpo_loss(a / 5, b / 5, reduction="sum")):
        assert torch.autograd.gradcheck(fn, (c, r))
    loss = losskit.dpo_loss(c, r, ref_chosen_log_probs=rc, ref_rejected_log_probs=rr)
    loss.backward()
    assert rc.grad is None and rr.grad is None


def test_gradcheck_of_the_token_losses_with_masks(gen):
    new, old, reference, rewards, mask = _grpo_case(gen, n=4, t=3)
    new = new.requires_grad_()
    logits = torch.randn(4, 3, 4, generator=gen, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x: losskit.grpo_loss(x, old, rewards=rewards, group_size=2, ref_log_probs=reference, beta=0.1,
                                    mask=mask, aggregation="sequence_mean", ratio_level="sequence"), (new,))
    assert torch.autograd.gradcheck(lambda x: losskit.entropy_bonus(x, mask=mask), (logits,))


# --- errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("call", "message"), [
    (lambda x: losskit.ppo_clip_loss(x, x, advantages=torch.ones(4)), "advantages"),
    (lambda x: losskit.ppo_clip_loss(x, x, advantages=torch.ones(2), clip_eps=1.5), "clip_eps"),
    (lambda x: losskit.ppo_clip_loss(x, x, advantages=torch.ones(2), dual_clip=0.5), "dual_clip"),
    (lambda x: losskit.ppo_clip_loss(x, x, advantages=torch.ones(2), mask=torch.ones(2, 3)), "mask"),
    (lambda x: losskit.ppo_clip_loss(x, x, advantages=torch.ones(2), max_length=4), "max_length"),
    (lambda x: losskit.ppo_clip_loss(-x, x, advantages=torch.ones(2)), "log-probabilities"),
    (lambda x: losskit.grpo_loss(x, x, rewards=torch.ones(2), group_size=3), "multiple of group_size"),
    (lambda x: losskit.grpo_loss(x, x, rewards=torch.ones(2), group_size=2, beta=0.1), "ref_log_probs"),
    (lambda x: losskit.reinforce_loss(x, torch.ones(2), baseline="median"), "baseline"),
    (lambda x: losskit.kl_penalty(x, x, estimator="k4"), "estimator"),
    (lambda x: losskit.dpo_loss(x[:, 0], x[:, 1], variant="ipo", label_smoothing=0.1), "label_smoothing"),
    (lambda x: losskit.dpo_loss(x[:, 0], x[:, 1], ref_chosen_log_probs=x[:, 0]), "neither"),
    (lambda x: losskit.kto_loss(x[:, 0], x[:, 1], desirable=[True]), "desirable"),
    (lambda x: losskit.kto_loss(x[:, 0], x[:, 1], desirable=torch.tensor([2, 0])), "0/1"),
    (lambda x: losskit.entropy_bonus(x[0]), "logits"),
])
def test_errors_name_the_argument(call, message):
    x = -torch.rand(2, 3) - 0.1
    with losskit.set_checks(True), pytest.raises((ValueError, TypeError), match=message):  # some are value checks
        call(x)


def test_float_mask_is_a_type_error():
    x = -torch.rand(2, 3)
    with pytest.raises(TypeError, match="weight="):
        losskit.ppo_clip_loss(x, x, advantages=torch.ones(2), mask=torch.ones(2, 3))


# --- training on a corridor -----------------------------------------------------------------------


class Corridor:
    """States 0..L-1 in a row, start at 0, actions left (0) / right (1), a wall on the left; reaching
    L-1 gives reward 1, ends the episode and restarts at 0. Batched over ``envs`` independent copies.
    A random walk needs (L-1)^2 = 25 steps on average to reach the end (reward rate 0.04 per step);
    the optimal policy needs L-1 = 5 (0.2 per step)."""

    def __init__(self, envs: int, length: int = 6):
        self.length = length
        self.state = torch.zeros(envs, dtype=torch.long)

    def step(self, action: torch.Tensor):
        self.state = (self.state + 2 * action - 1).clamp(0, self.length - 1)
        done = self.state == self.length - 1
        reward = done.double()
        self.state = torch.where(done, torch.zeros_like(self.state), self.state)
        return reward, done


def _rollout(env, policy_logits, values, steps, gen):
    states, actions, log_probs, rewards, dones, vals = [], [], [], [], [], []
    with torch.no_grad():
        table = torch.log_softmax(policy_logits, -1)  # once per rollout: tiny ops are dominated by overhead
        probs = table.exp()
        for _ in range(steps):
            s = env.state
            logp = table[s]
            a = torch.multinomial(probs[s], 1, generator=gen).squeeze(1)
            r, d = env.step(a)
            states.append(s)
            actions.append(a)
            log_probs.append(logp.gather(1, a[:, None]).squeeze(1))
            rewards.append(r)
            dones.append(d)
            vals.append(values[s])
        next_value = values[env.state]
    stack = torch.stack
    return stack(states), stack(actions), stack(log_probs), stack(rewards), stack(dones), stack(vals), next_value


def _rate(policy_logits, gen, steps=64, envs=64):
    env = Corridor(envs)
    rewards = _rollout(env, policy_logits, torch.zeros(6, dtype=F64), steps, gen)[3]
    return float(rewards.mean())


@pytest.fixture
def one_thread():
    """The training tests run hundreds of tiny ops, for which a second thread only adds wake-up latency."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_ppo_with_gae_learns_the_corridor(one_thread):
    gen = torch.Generator().manual_seed(0)
    logits = torch.zeros(6, 2, dtype=F64, requires_grad=True)
    values = torch.zeros(6, dtype=F64, requires_grad=True)
    optimizer = torch.optim.Adam([logits, values], lr=0.1)
    random_rate = _rate(logits.detach(), gen)
    env = Corridor(32)
    for _ in range(25):
        s, a, old_lp, r, d, v_old, next_v = _rollout(env, logits.detach(), values.detach(), 16, gen)
        adv, returns = rl.gae(r, v_old, d, 0.9, 0.95, next_value=next_v)
        for _ in range(4):
            lp = torch.log_softmax(logits, -1)[s, a]
            loss = (losskit.ppo_clip_loss(lp.flatten(), old_lp.flatten(), advantages=adv.flatten(),
                                          normalize_advantages=True)
                    + 0.5 * losskit.value_loss(values[s].flatten(), returns.flatten(), old_values=v_old.flatten(),
                                               clip_eps=0.5)
                    + 0.01 * losskit.entropy_bonus(logits[s].flatten(0, 1)))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    trained_rate = _rate(logits.detach(), gen)
    assert random_rate < 0.08 and trained_rate > 0.15, (random_rate, trained_rate)


def test_reinforce_learns_the_corridor(one_thread):
    gen = torch.Generator().manual_seed(1)
    logits = torch.zeros(6, 2, dtype=F64, requires_grad=True)
    optimizer = torch.optim.Adam([logits], lr=0.1)
    random_rate = _rate(logits.detach(), gen)
    env = Corridor(32)
    for _ in range(40):
        s, a, _, r, d, _, _ = _rollout(env, logits.detach(), torch.zeros(6, dtype=F64), 32, gen)
        returns = rl.discounted_returns(r, d, 0.9)
        lp = torch.log_softmax(logits, -1)[s, a]
        loss = losskit.reinforce_loss(lp, returns, baseline="mean", normalize_advantages=True)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    trained_rate = _rate(logits.detach(), gen)
    assert random_rate < 0.08 and trained_rate > 0.15, (random_rate, trained_rate)
