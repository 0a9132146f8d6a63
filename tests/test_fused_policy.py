"""Fused log-probabilities and the policy and preference objectives built on them.

Every fused function is compared with its unfused form applied to log-probabilities taken from
materialised logits (``log_softmax(hidden @ weight.T + bias)`` gathered at the targets), in
float64, values and the gradients of ``hidden``, ``weight`` and ``bias``; the primitive also in
float32 and bfloat16 against float64 on the same inputs.
"""

from __future__ import annotations

import math

import pytest
import torch

import losskit
from losskit.functional import cpo_loss, dpo_loss, grpo_loss, kto_loss, orpo_loss, ppo_clip_loss, simpo_loss

B, L, D, V = 4, 6, 5, 11
CHUNK = 5  # tokens per chunk: every call crosses several chunks, one of them partial


def _head(dtype=torch.float64, seed=0, b=B, length=L):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn((b, length, D), generator=gen, dtype=dtype)
    weight = torch.randn((V, D), generator=gen, dtype=dtype)
    bias = torch.randn((V,), generator=gen, dtype=dtype)
    target = torch.randint(V, (b, length), generator=gen)
    target[:, :2] = -100  # prompt positions
    target[1, -2:] = -100  # padding of a shorter completion
    target[-1, -1] = -100
    return [t.requires_grad_() for t in (hidden, weight, bias)], target


def _materialised(hidden, weight, bias, target, temperature=1.0):
    """log_softmax of the full logits gathered at the targets, 0 at ignored positions."""
    logits = (hidden @ weight.T + bias) / temperature
    valid = target != -100
    index = torch.where(valid, target, 0).unsqueeze(-1)
    return torch.where(valid, torch.log_softmax(logits, -1).gather(-1, index).squeeze(-1), 0.0)


def _grads(value, tensors):
    return torch.autograd.grad(value, tensors)


def _assert_same(fused, reference, tensors, tol=1e-10):
    """Values, and gradients of ``tensors`` under a random upstream gradient."""
    assert fused.shape == reference.shape
    torch.testing.assert_close(fused, reference, rtol=tol, atol=tol)
    upstream = torch.rand(fused.shape, generator=torch.Generator().manual_seed(7), dtype=fused.dtype) + 0.5
    for g, r in zip(_grads((fused * upstream).sum(), tensors), _grads((reference * upstream).sum(), tensors),
                    strict=True):
        torch.testing.assert_close(g, r, rtol=tol, atol=tol)


# --- the primitive ----------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_log_probs_equal_the_materialised_logits_in_value_and_gradient(temperature):
    (h, w, b), target = _head()
    fused = losskit.fused_linear_log_probs(h, w, target, bias=b, temperature=temperature, chunk_size=CHUNK)
    _assert_same(fused, _materialised(h, w, b, target, temperature), (h, w, b))
    assert (fused[target == -100] == 0).all()


def test_entropy_is_the_softmax_entropy_and_detached():
    (h, w, b), target = _head()
    _, entropy = losskit.fused_linear_log_probs(h, w, target, bias=b, temperature=0.5, return_entropy=True,
                                                chunk_size=CHUNK)
    p = torch.softmax((h @ w.T + b) / 0.5, -1)
    expected = torch.where(target != -100, -(p * p.log()).sum(-1), 0.0)
    torch.testing.assert_close(entropy, expected.detach(), rtol=1e-12, atol=1e-12)
    assert not entropy.requires_grad


def test_ignored_positions_may_hold_anything():
    (h, w, b), target = _head()
    poisoned = h.detach().clone()
    poisoned[target == -100] = float("nan")
    poisoned.requires_grad_()
    fused = losskit.fused_linear_log_probs(poisoned, w, target, bias=b, chunk_size=CHUNK)
    fused.sum().backward()
    assert torch.isfinite(fused).all() and torch.isfinite(w.grad).all()
    assert (poisoned.grad[target == -100] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_log_probs_of_confident_tokens_keep_their_precision(dtype):
    """A target leading by 8 to 25: log p is -1e-11 .. -3e-4. log_softmax in float32 rounds
    log p to lse - x_y, which cancels; the fused form keeps the relative precision of float32."""
    gen = torch.Generator().manual_seed(3)
    n = 64
    target = torch.randint(V, (n,), generator=gen)
    logits = torch.randn((n, V), generator=gen, dtype=torch.float64)
    logits.scatter_(1, target[:, None], torch.empty(n, 1, dtype=torch.float64).uniform_(8, 25, generator=gen))
    hidden = logits.to(dtype).requires_grad_()  # the identity head: the hidden states are the logits
    eye = torch.eye(V, dtype=dtype)
    low = losskit.fused_linear_log_probs(hidden, eye, target, chunk_size=16)
    same_inputs = hidden.detach().double().requires_grad_()
    exact = losskit.fused_linear_log_probs(same_inputs, eye.double(), target, chunk_size=16)
    # The target leads, so log p_y = -log1p(sum_{k != y} e^(x_k - x_y)) exactly (float64's own
    # log_softmax loses 5e-7 of it relative: lse - x_y cancels there too).
    x = same_inputs.detach()
    gap = (x - x.gather(1, target[:, None])).scatter(1, target[:, None], -math.inf)
    torch.testing.assert_close(exact.detach(), -torch.log1p(gap.exp().sum(1)), rtol=1e-14, atol=0)
    relative = ((low.double() - exact) / exact).abs().max().item()
    rounding = 2**-8 if dtype == torch.bfloat16 else 0.0  # the result rounded once to bfloat16
    assert relative < 1e-5 + rounding, relative
    low.sum().backward()
    exact.sum().backward()
    grad_error = (hidden.grad.double() - same_inputs.grad).norm() / same_inputs.grad.norm()
    assert grad_error < 1e-5 + rounding, grad_error


def test_log_probs_take_any_leading_shape_and_match_a_chunk_free_call():
    (h, w, b), target = _head()
    flat = losskit.fused_linear_log_probs(h.reshape(-1, D), w, target.reshape(-1), bias=b)
    torch.testing.assert_close(flat.view(B, L), losskit.fused_linear_log_probs(h, w, target, bias=b,
                                                                               chunk_size=1), rtol=1e-12, atol=0)


# --- the objectives ------------------------------------------------------------------------------


def _pairs(lp, mask):
    half = lp.shape[0] // 2
    summed, lengths = lp.sum(-1), mask.sum(-1)
    return summed[:half], summed[half:], lengths[:half], lengths[half:]


def _ref_log_probs():
    return -torch.rand(B, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * 10


def _dpo(h, w, b, target, variant):
    ref = _ref_log_probs()
    fused = losskit.fused_linear_dpo_loss(h, w, target, bias=b, ref_log_probs=ref, variant=variant, beta=0.3,
                                          reduction="none", chunk_size=CHUNK)
    c, r, _, _ = _pairs(_materialised(h, w, b, target), target != -100)
    return fused, dpo_loss(c, r, ref_chosen_log_probs=ref[:2], ref_rejected_log_probs=ref[2:], variant=variant,
                           beta=0.3, reduction="none")


def _dpo_trl_types(h, w, b, target):
    """An MPO mixture with the loss types that read token counts (sigmoid_norm, sft) and an f-divergence."""
    ref = _ref_log_probs()
    options = {"variant": ["sigmoid_norm", "sft", "discopop"], "variant_weights": [1.0, 0.5, 0.3],
               "f_divergence_type": "js_divergence", "beta": 0.3}
    fused = losskit.fused_linear_dpo_loss(h, w, target, bias=b, ref_log_probs=ref, reduction="none",
                                          chunk_size=CHUNK, **options)
    c, r, lc, lr = _pairs(_materialised(h, w, b, target), target != -100)
    return fused, dpo_loss(c, r, ref_chosen_log_probs=ref[:2], ref_rejected_log_probs=ref[2:], chosen_lengths=lc,
                           rejected_lengths=lr, reduction="none", **options)


def _simpo(h, w, b, target):
    fused = losskit.fused_linear_simpo_loss(h, w, target, bias=b, label_smoothing=0.1, reduction="none",
                                            chunk_size=CHUNK)
    c, r, lc, lr = _pairs(_materialised(h, w, b, target), target != -100)
    return fused, simpo_loss(c, r, chosen_lengths=lc, rejected_lengths=lr, label_smoothing=0.1, reduction="none")


def _orpo(h, w, b, target):
    fused = losskit.fused_linear_orpo_loss(h, w, target, bias=b, beta=0.2, reduction="none", chunk_size=CHUNK)
    c, r, lc, lr = _pairs(_materialised(h, w, b, target), target != -100)
    return fused, orpo_loss(c, r, chosen_lengths=lc, rejected_lengths=lr, beta=0.2, reduction="none")


def _cpo(h, w, b, target):
    """TRL's CPOTrainer, loss_type="sigmoid": -logsigmoid(beta (c - r)) (label-smoothed) on summed
    log-probabilities, mean over pairs, plus cpo_alpha times the cross-entropy mean over the chosen
    tokens. Reduced by "mean", as TRL does."""
    fused = losskit.fused_linear_cpo_loss(h, w, target, bias=b, beta=0.2, alpha=0.7, label_smoothing=0.1,
                                          chunk_size=CHUNK)
    lp = _materialised(h, w, b, target)
    c, r, _, _ = _pairs(lp, target != -100)
    logits = 0.2 * (c - r)
    preference = (-0.9 * torch.nn.functional.logsigmoid(logits) - 0.1 * torch.nn.functional.logsigmoid(-logits))
    chosen_logits = (h[:2] @ w.T + b).reshape(-1, V)
    nll = torch.nn.functional.cross_entropy(chosen_logits, target[:2].reshape(-1), ignore_index=-100)
    return fused, preference.mean() + 0.7 * nll


def _cpo_variant(h, w, b, target, variant, **options):
    """Each loss type, per pair ("none": the preference term plus the pair's share of the token-mean NLL),
    against cpo_loss on the summed log-probabilities with the token counts."""
    options = {"beta": 0.3, "alpha": 0.7, **options}
    fused = losskit.fused_linear_cpo_loss(h, w, target, bias=b, variant=variant, reduction="none", chunk_size=CHUNK,
                                          **options)
    c, r, lc, lr = _pairs(_materialised(h, w, b, target), target != -100)
    return fused, cpo_loss(c, r, variant=variant, chosen_lengths=lc, rejected_lengths=lr, reduction="none", **options)


def _kto(h, w, b, target):
    ref = _ref_log_probs()
    desirable = [True, False, False, True]
    fused = losskit.fused_linear_kto_loss(h, w, target, bias=b, desirable=desirable, ref_log_probs=ref, kl=0.3,
                                          reduction="none", chunk_size=CHUNK)
    lp = _materialised(h, w, b, target)
    return fused, kto_loss(lp.sum(-1), ref, desirable=desirable, kl=0.3, reduction="none")


def _old_and_ref():
    gen = torch.Generator().manual_seed(9)
    old = -torch.rand((B, L), generator=gen, dtype=torch.float64) * 4
    ref = -torch.rand((B, L), generator=gen, dtype=torch.float64) * 4
    return old, ref


def _grpo(h, w, b, target, aggregation):
    old, ref = _old_and_ref()
    rewards = torch.tensor([1.0, 0.0, 0.5, 2.0], dtype=torch.float64)
    fused = losskit.fused_linear_grpo_loss(h, w, target, bias=b, rewards=rewards, group_size=2, old_log_probs=old,
                                           ref_log_probs=ref, beta=0.04, temperature=0.8, aggregation=aggregation,
                                           reduction="none", chunk_size=CHUNK)
    lp = _materialised(h, w, b, target, temperature=0.8)
    return fused, grpo_loss(lp, old, rewards=rewards, group_size=2, ref_log_probs=ref, beta=0.04, mask=target != -100,
                            aggregation=aggregation, reduction="none")


def _grpo_trl_options(h, w, b, target, variant):
    """TRL's loss types with the top-entropy mask (entropies fused here, from the logits there), delta,
    off-policy masking and the bias-corrected KL."""
    old, ref = _old_and_ref()
    rewards = torch.tensor([1.0, 0.0, 0.5, 2.0], dtype=torch.float64)
    options = {"variant": variant, "beta": 0.04, "use_bias_correction_kl": True, "top_entropy_quantile": 0.5,
               "off_policy_mask_threshold": 0.5, "delta": 1.5, "clip_eps_high": 0.28}
    fused = losskit.fused_linear_grpo_loss(h, w, target, bias=b, rewards=rewards, group_size=2, old_log_probs=old,
                                           ref_log_probs=ref, temperature=0.8, max_length=None, reduction="none",
                                           chunk_size=CHUNK, **options)
    lp = _materialised(h, w, b, target, temperature=0.8)
    p = torch.softmax((h @ w.T + b) / 0.8, -1)
    entropies = torch.where(target != -100, -(p * p.log()).sum(-1), 0.0).detach()
    return fused, grpo_loss(lp, old, rewards=rewards, group_size=2, ref_log_probs=ref, mask=target != -100,
                            entropies=entropies, reduction="none", **options)


def _ppo(h, w, b, target):
    old, _ = _old_and_ref()
    advantages = torch.tensor([1.0, -0.5, 0.3, -2.0], dtype=torch.float64)
    fused = losskit.fused_linear_ppo_loss(h, w, target, bias=b, advantages=advantages, old_log_probs=old,
                                          dual_clip=3.0, temperature=1.3, chunk_size=CHUNK)
    lp = _materialised(h, w, b, target, temperature=1.3)
    return fused, ppo_clip_loss(lp, old, advantages=advantages, dual_clip=3.0, mask=target != -100)


OBJECTIVES = {
    "dpo_sigmoid": lambda *a: _dpo(*a, "sigmoid"),
    "dpo_hinge": lambda *a: _dpo(*a, "hinge"),
    "dpo_ipo": lambda *a: _dpo(*a, "ipo"),
    "dpo_apo_zero": lambda *a: _dpo(*a, "apo_zero"),
    "dpo_trl_types": _dpo_trl_types,
    "simpo": _simpo,
    "orpo": _orpo,
    "cpo": _cpo,
    "cpo_sigmoid": lambda *a: _cpo_variant(*a, "sigmoid", label_smoothing=0.1),
    "cpo_hinge": lambda *a: _cpo_variant(*a, "hinge"),
    "cpo_ipo": lambda *a: _cpo_variant(*a, "ipo"),
    "cpo_simpo": lambda *a: _cpo_variant(*a, "simpo", simpo_gamma=0.4, label_smoothing=0.1),
    "cpo_alphapo": lambda *a: _cpo_variant(*a, "alphapo", alphapo_alpha=0.25),
    "cpo_hinge_alphapo_reward": lambda *a: _cpo_variant(*a, "hinge", alphapo_alpha=-0.3),
    "kto": _kto,
    "grpo_token_mean": lambda *a: _grpo(*a, "token_mean"),
    "grpo_sequence_mean": lambda *a: _grpo(*a, "sequence_mean"),
    "grpo_dr_grpo": lambda *a: _grpo_trl_options(*a, "dr_grpo"),
    "grpo_cispo": lambda *a: _grpo_trl_options(*a, "cispo"),
    "grpo_sapo": lambda *a: _grpo_trl_options(*a, "sapo"),
    "ppo": _ppo,
}


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_fused_objective_equals_the_unfused_loss_on_materialised_log_probs(name):
    (h, w, b), target = _head(seed=1)
    fused, reference = OBJECTIVES[name](h, w, b, target)
    _assert_same(fused, reference, (h, w, b))


def test_reference_from_hidden_states_equals_its_log_probs():
    (h, w, b), target = _head(seed=2)
    (rh, rw, rb), _ = _head(seed=3)
    ref = _materialised(rh, rw, rb, target).detach()
    from_head = losskit.fused_linear_dpo_loss(h, w, target, bias=b, ref_hidden=rh, ref_weight=rw, ref_bias=rb,
                                              chunk_size=CHUNK)
    from_tokens = losskit.fused_linear_dpo_loss(h, w, target, bias=b, ref_log_probs=ref, chunk_size=CHUNK)
    from_sums = losskit.fused_linear_dpo_loss(h, w, target, bias=b, ref_log_probs=ref.sum(-1), chunk_size=CHUNK)
    torch.testing.assert_close(from_head, from_tokens, rtol=1e-12, atol=0)
    torch.testing.assert_close(from_head, from_sums, rtol=1e-12, atol=0)
    from_head.backward()
    assert rh.grad is None and rw.grad is None  # the reference is a constant
    old = -torch.rand((B, L), dtype=torch.float64)
    rewards = torch.tensor([1.0, 0.0, 0.5, 2.0], dtype=torch.float64)
    grpo = [losskit.fused_linear_grpo_loss(h, w, target, rewards=rewards, group_size=2, old_log_probs=old, beta=0.1,
                                           temperature=0.9, **kw)
            for kw in ({"ref_log_probs": _materialised(rh, rw, rb, target, 0.9).detach()},
                       {"ref_hidden": rh, "ref_weight": rw, "ref_bias": rb})]
    torch.testing.assert_close(grpo[0], grpo[1], rtol=1e-12, atol=0)


def test_grpo_reports_the_token_entropy():
    (h, w, b), target = _head(seed=4)
    loss, diagnostics = losskit.fused_linear_grpo_loss(h, w, target, bias=b, rewards=torch.ones(B, dtype=h.dtype),
                                                       group_size=2, temperature=0.6, return_diagnostics=True)
    p = torch.softmax((h @ w.T + b) / 0.6, -1)
    entropy = torch.where(target != -100, -(p * p.log()).sum(-1), 0.0).detach()
    torch.testing.assert_close(diagnostics["token_entropy"], entropy, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(diagnostics["entropy"], entropy.sum() / (target != -100).sum(), rtol=1e-12, atol=0)
    assert {"clip_fraction", "approx_kl", "reward_mean"} <= diagnostics.keys()


def test_half_precision_objective_stays_close_to_float64():
    (h, w, b), target = _head(seed=6, b=4, length=64)
    tensors32 = [t.detach().to(torch.bfloat16).requires_grad_() for t in (h, w, b)]
    tensors64 = [t.detach().double().requires_grad_() for t in tensors32]  # the same rounded inputs
    ref = _ref_log_probs()
    low = losskit.fused_linear_dpo_loss(*tensors32[:2], target, bias=tensors32[2], ref_log_probs=ref)
    exact = losskit.fused_linear_dpo_loss(*tensors64[:2], target, bias=tensors64[2], ref_log_probs=ref)
    assert low.dtype == torch.bfloat16
    assert abs(low.double() - exact).item() <= 2e-2 * abs(exact).item()  # bf16 head products and result
    low.backward()
    exact.backward()
    error = (tensors32[0].grad.double() - tensors64[0].grad).norm() / tensors64[0].grad.norm()
    assert error < 2e-2, error


# --- bad input -------------------------------------------------------------------------------------


def test_bad_input_names_the_argument():
    (h, w, b), target = _head()
    with pytest.raises(ValueError, match="hidden must hold the chosen sequences.*even batch"):
        losskit.fused_linear_dpo_loss(h[:3], w, target[:3])
    with pytest.raises(ValueError, match="either as ref_log_probs or as ref_hidden"):
        losskit.fused_linear_dpo_loss(h, w, target, ref_log_probs=_ref_log_probs(), ref_hidden=h, ref_weight=w)
    with pytest.raises(ValueError, match=r"ref_log_probs must hold log-probabilities \(<= 0\)"):
        losskit.fused_linear_dpo_loss(h, w, target, ref_log_probs=-_ref_log_probs())
    with pytest.raises(ValueError, match="ref_log_probs must have shape"):
        losskit.fused_linear_dpo_loss(h, w, target, ref_log_probs=torch.zeros(3, dtype=h.dtype))
    with pytest.raises(ValueError, match="ref_weight"):
        losskit.fused_linear_dpo_loss(h, w, target, ref_hidden=h)
    with pytest.raises(ValueError, match="needs the reference policy"):
        losskit.fused_linear_kto_loss(h, w, target, desirable=[True] * B)
    with pytest.raises(ValueError, match=r"old_log_probs must hold log-probabilities \(<= 0\)"):
        losskit.fused_linear_grpo_loss(h, w, target, rewards=torch.ones(B, dtype=h.dtype), group_size=2,
                                       old_log_probs=torch.ones((B, L), dtype=h.dtype))
    with pytest.raises(ValueError, match="old_log_probs must have target's shape"):
        losskit.fused_linear_ppo_loss(h, w, target, advantages=torch.ones(B, dtype=h.dtype),
                                      old_log_probs=torch.zeros(B, dtype=h.dtype))
    with pytest.raises(ValueError, match=r"hidden must have shape \(B, L, D\)"):
        losskit.fused_linear_simpo_loss(h[0], w, target[0])
    with pytest.raises(ValueError, match="weight must have shape"):
        losskit.fused_linear_orpo_loss(h, w[:, :-1], target)
    with pytest.raises(TypeError, match="weight must have hidden's dtype"):
        losskit.fused_linear_cpo_loss(h, w.float(), target)
    with pytest.raises(TypeError, match="target must hold integer class indices"):
        losskit.fused_linear_log_probs(h, w, target.double())
    with pytest.raises(ValueError, match="target must have shape"):
        losskit.fused_linear_log_probs(h, w, target[:, :-1])
    with pytest.raises(ValueError, match="target"):
        losskit.fused_linear_log_probs(h, w, torch.full((B, L), V))
    with pytest.raises(ValueError, match="temperature"):
        losskit.fused_linear_log_probs(h, w, target, temperature=0.0)
    with pytest.raises(TypeError, match="return_entropy"):
        losskit.fused_linear_log_probs(h, w, target, return_entropy=1)


def test_a_non_finite_hidden_state_is_named_not_zeroed():
    (h, w, b), target = _head()
    bad = h.detach().clone()
    bad[0, -1, 0] = math.inf  # a counted position
    with pytest.raises(ValueError, match="hidden"):
        losskit.fused_linear_log_probs(bad, w, target)


def test_empty_and_fully_ignored_batches_give_zero_with_a_gradient():
    (h, w, b), target = _head()
    ignored = torch.full_like(target, -100)
    lp = losskit.fused_linear_log_probs(h, w, ignored, bias=b)
    assert (lp == 0).all()
    loss = losskit.fused_linear_ppo_loss(h, w, ignored, advantages=torch.ones(B, dtype=h.dtype))
    loss.backward()
    assert loss.item() == 0 and (w.grad == 0).all()


@pytest.mark.parametrize("argument", ["target", "weight", "ref_log_probs", "old_log_probs", "rewards"])
def test_an_argument_on_another_device_raises_naming_both_devices(argument):
    # "meta" stands in for a second device on a machine without CUDA.
    (h, w, b), target = _head()
    old, ref = _old_and_ref()
    args = {"target": target, "weight": w, "ref_log_probs": ref, "old_log_probs": old,
            "rewards": torch.tensor([1.0, 0.0, 0.5, 2.0], dtype=torch.float64)}
    args[argument] = args[argument].detach().to("meta")
    with pytest.raises((ValueError, TypeError)) as raised:
        losskit.fused_linear_grpo_loss(h, args["weight"], args["target"], bias=b, rewards=args["rewards"],
                                       group_size=2, old_log_probs=args["old_log_probs"],
                                       ref_log_probs=args["ref_log_probs"], beta=0.04, chunk_size=CHUNK)
    message = str(raised.value)
    assert argument in message and "meta" in message and "cpu" in message, message
