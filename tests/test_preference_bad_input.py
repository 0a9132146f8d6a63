"""Bad input to every preference and RL objective: a clear error naming the argument.

One table over the unfused functions, the fused forms and the helpers of ``losskit.rl``, for each
mistake that applies: log-probabilities above 0 (logits passed by mistake), chosen and rejected
batches of different sizes, a ``variant`` that does not exist (with a did-you-mean), weights that
do not pair with the variants (MPO), and a reference given both as log-probabilities and as
hidden states. Value checks are on (the positivity checks are value checks).
"""

from __future__ import annotations

import pytest
import torch

import losskit
import losskit.rl as rl

F64 = torch.float64
B, L, D, V = 4, 3, 5, 7
_gen = torch.Generator().manual_seed(0)
TOKENS = -torch.rand(B, L, generator=_gen, dtype=F64) - 0.1  # per-token log-probabilities (B, L)
SEQ = -torch.rand(B, generator=_gen, dtype=F64) - 0.1  # one per sequence
SEQ3 = SEQ[:3]
REWARDS = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=F64)
HIDDEN = torch.randn(B, L, D, generator=_gen, dtype=F64)
HEAD = torch.randn(V, D, generator=_gen, dtype=F64)
TARGET = torch.randint(V, (B, L), generator=_gen)
TARGET[:, 0] = -100
UP = 0.5 + torch.rand(B, L, generator=_gen, dtype=F64)  # "log-probabilities" above 0: logits by mistake
UP_SEQ = UP.sum(-1)
DESIRABLE = [True, False, True, False]


def _fused(fn, **kwargs):
    return lambda: fn(HIDDEN, HEAD, TARGET, **kwargs)


def _grpo(log_probs=TOKENS, old=TOKENS, **kwargs):
    return lambda: losskit.grpo_loss(log_probs, old, rewards=REWARDS, group_size=2, **kwargs)


ABOVE_ZERO = {
    "dpo chosen": (lambda: losskit.dpo_loss(UP_SEQ, SEQ), "chosen_log_probs"),
    "dpo rejected": (lambda: losskit.dpo_loss(SEQ, UP_SEQ), "rejected_log_probs"),
    "dpo reference": (lambda: losskit.dpo_loss(SEQ, SEQ, ref_chosen_log_probs=SEQ, ref_rejected_log_probs=UP_SEQ),
                      "ref_rejected_log_probs"),
    "simpo": (lambda: losskit.simpo_loss(SEQ, UP_SEQ), "rejected_log_probs"),
    "orpo": (lambda: losskit.orpo_loss(UP_SEQ, SEQ), "chosen_log_probs"),
    "cpo": (lambda: losskit.cpo_loss(SEQ, UP_SEQ), "rejected_log_probs"),
    "kto policy": (lambda: losskit.kto_loss(UP_SEQ, SEQ, desirable=DESIRABLE), "policy_log_probs"),
    "kto reference": (lambda: losskit.kto_loss(SEQ, UP_SEQ, desirable=DESIRABLE), "ref_log_probs"),
    "grpo policy": (_grpo(log_probs=UP), "log_probs"),
    "grpo old": (_grpo(old=UP), "old_log_probs"),
    "grpo reference": (_grpo(ref_log_probs=UP, beta=0.1), "ref_log_probs"),
    "grpo sampler": (_grpo(sampling_log_probs=UP, off_policy_mask_threshold=0.5), "sampling_log_probs"),
    "ppo policy": (lambda: losskit.ppo_clip_loss(UP, TOKENS, advantages=REWARDS), "log_probs"),
    "ppo old": (lambda: losskit.ppo_clip_loss(TOKENS, UP, advantages=REWARDS), "old_log_probs"),
    "reinforce": (lambda: losskit.reinforce_loss(UP, REWARDS), "log_probs"),
    "kl_penalty policy": (lambda: losskit.kl_penalty(UP, TOKENS), "log_probs"),
    "kl_penalty reference": (lambda: losskit.kl_penalty(TOKENS, UP), "ref_log_probs"),
    "fused dpo reference": (_fused(losskit.fused_linear_dpo_loss, ref_log_probs=UP_SEQ), "ref_log_probs"),
    "fused kto reference": (_fused(losskit.fused_linear_kto_loss, desirable=DESIRABLE, ref_log_probs=UP),
                            "ref_log_probs"),
    "fused grpo old": (_fused(losskit.fused_linear_grpo_loss, rewards=REWARDS, group_size=2, old_log_probs=UP),
                       "old_log_probs"),
    "fused grpo reference": (_fused(losskit.fused_linear_grpo_loss, rewards=REWARDS, group_size=2, beta=0.1,
                                    ref_log_probs=UP), "ref_log_probs"),
    "fused grpo sampler": (_fused(losskit.fused_linear_grpo_loss, rewards=REWARDS, group_size=2,
                                  old_log_probs=TOKENS, sampling_log_probs=UP, off_policy_mask_threshold=0.5),
                           "sampling_log_probs"),
    "fused ppo old": (_fused(losskit.fused_linear_ppo_loss, advantages=REWARDS, old_log_probs=UP), "old_log_probs"),
    "wpo_weights tokens": (lambda: rl.wpo_weights(UP, TOKENS), "token_log_probs"),
    "wpo_weights self-probabilities": (lambda: rl.wpo_weights(TOKENS, UP), "log_sum_sq_probs"),
    "ld_dpo_log_probs": (lambda: rl.ld_dpo_log_probs(UP, alpha=0.5), "token_log_probs"),
    "vllm ratio old": (lambda: rl.vllm_importance_sampling_ratio(UP, TOKENS), "old_log_probs"),
    "vllm ratio sampler": (lambda: rl.vllm_importance_sampling_ratio(TOKENS, UP), "sampling_log_probs"),
}


@pytest.mark.parametrize("case", sorted(ABOVE_ZERO))
def test_log_probabilities_above_zero_raise_naming_the_argument(case):
    call, name = ABOVE_ZERO[case]
    with losskit.set_checks(True), pytest.raises(ValueError, match=rf"^{name} must hold log-probabilities \(<= 0\)"):
        call()


def test_masked_positions_may_hold_anything():
    # padding outside the mask is not checked: only the counted tokens must be log-probabilities
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[:, 0] = False
    tokens = torch.where(mask, TOKENS, 5.0)
    with losskit.set_checks(True):
        rl.wpo_weights(tokens, tokens, mask)
        rl.ld_dpo_log_probs(tokens, mask, alpha=0.5)
        rl.vllm_importance_sampling_ratio(tokens, tokens, mask)


ODD_OR_MISMATCHED = {
    "dpo": lambda: losskit.dpo_loss(SEQ, SEQ3),
    "simpo": lambda: losskit.simpo_loss(SEQ, SEQ3),
    "orpo": lambda: losskit.orpo_loss(SEQ, SEQ3),
    "cpo": lambda: losskit.cpo_loss(SEQ, SEQ3),
}


@pytest.mark.parametrize("case", sorted(ODD_OR_MISMATCHED))
def test_chosen_and_rejected_of_different_sizes_raise(case):
    with pytest.raises(ValueError, match=r"rejected_log_probs .*must have the shape of chosen_log_probs \(4,\), "
                                         r"got shape \(3,\)"):
        ODD_OR_MISMATCHED[case]()


@pytest.mark.parametrize("fn", [losskit.fused_linear_dpo_loss, losskit.fused_linear_simpo_loss,
                                losskit.fused_linear_orpo_loss, losskit.fused_linear_cpo_loss],
                         ids=lambda fn: fn.__name__)
def test_an_odd_batch_of_the_fused_pairwise_forms_raises(fn):
    with pytest.raises(ValueError, match="hidden must hold the chosen sequences, then as many rejected ones"):
        fn(HIDDEN[:3], HEAD, TARGET[:3])


def test_token_helpers_need_as_many_chosen_as_rejected_sequences():
    for call in (lambda: rl.wpo_weights(TOKENS[:3], TOKENS[:3]), lambda: rl.ld_dpo_log_probs(TOKENS[:3], alpha=0.5)):
        with pytest.raises(ValueError, match="token_log_probs must have shape .* with B even"):
            call()


UNKNOWN_VARIANT = {
    "dpo": (lambda: losskit.dpo_loss(SEQ, SEQ, variant="sigmod"), "sigmoid"),
    "dpo mixture": (lambda: losskit.dpo_loss(SEQ, SEQ, variant=["sigmoid", "hinj"]), "hinge"),
    "kto": (lambda: losskit.kto_loss(SEQ, SEQ, desirable=DESIRABLE, variant="kt"), "kto"),
    "cpo": (lambda: losskit.cpo_loss(SEQ, SEQ, variant="simp"), "simpo"),
    "grpo": (_grpo(variant="drgrpo"), "dr_grpo"),
    "fused dpo": (_fused(losskit.fused_linear_dpo_loss, variant="ipoo"), "ipo"),
    "fused kto": (_fused(losskit.fused_linear_kto_loss, desirable=DESIRABLE, ref_log_probs=SEQ, variant="kt"), "kto"),
    "fused cpo": (_fused(losskit.fused_linear_cpo_loss, variant="alpha_po"), "alphapo"),
    "fused grpo": (_fused(losskit.fused_linear_grpo_loss, rewards=REWARDS, group_size=2, variant="cisp"), "cispo"),
    "module dpo": (lambda: losskit.get("dpo", variant="hing")(SEQ, SEQ), "hinge"),
}


@pytest.mark.parametrize("case", sorted(UNKNOWN_VARIANT))
def test_an_unknown_variant_raises_with_the_closest_name(case):
    call, suggestion = UNKNOWN_VARIANT[case]
    with pytest.raises(ValueError, match=rf"variant must be one of .*did you mean '{suggestion}'"):
        call()


MISMATCHED_WEIGHTS = {
    "too few": {"variant": ["sigmoid", "hinge"], "variant_weights": [1.0]},
    "too many": {"variant": "sigmoid", "variant_weights": [1.0, 2.0]},
    "not a list": {"variant": ["sigmoid", "hinge"], "variant_weights": "1, 2"},
}


@pytest.mark.parametrize("case", sorted(MISMATCHED_WEIGHTS))
@pytest.mark.parametrize("form", ["dpo_loss", "fused_linear_dpo_loss", "module"])
def test_weights_that_do_not_pair_with_the_variants_raise(form, case):
    kwargs = MISMATCHED_WEIGHTS[case]
    calls = {"dpo_loss": lambda: losskit.dpo_loss(SEQ, SEQ, **kwargs),
             "fused_linear_dpo_loss": _fused(losskit.fused_linear_dpo_loss, **kwargs),
             "module": lambda: losskit.get("dpo", **kwargs)(SEQ, SEQ)}
    with pytest.raises(ValueError, match="variant_weights must hold one number per variant"):
        calls[form]()


def test_a_bad_variant_weight_is_named_by_its_position():
    with pytest.raises(ValueError, match=r"variant_weights\[1\]"):
        losskit.dpo_loss(SEQ, SEQ, variant=["sigmoid", "hinge"], variant_weights=[1.0, -1.0])
    with pytest.raises(ValueError, match=r"variant_weights\[0\] must not be NaN"):
        losskit.dpo_loss(SEQ, SEQ, variant=["sigmoid", "hinge"], variant_weights=[float("nan"), 1.0])


REFERENCE_BOTH_WAYS = {
    "dpo": (losskit.fused_linear_dpo_loss, {}),
    "kto": (losskit.fused_linear_kto_loss, {"desirable": DESIRABLE}),
    "grpo": (losskit.fused_linear_grpo_loss, {"rewards": REWARDS, "group_size": 2, "beta": 0.1}),
}


@pytest.mark.parametrize("head", [{"ref_hidden": HIDDEN, "ref_weight": HEAD}, {"ref_weight": HEAD},
                                  {"ref_bias": torch.zeros(V, dtype=F64)}], ids=["hidden and head", "head", "bias"])
@pytest.mark.parametrize("case", sorted(REFERENCE_BOTH_WAYS))
def test_a_reference_given_as_log_probs_and_as_hidden_states_raises(case, head):
    fn, kwargs = REFERENCE_BOTH_WAYS[case]
    with pytest.raises(ValueError, match="either as ref_log_probs or as ref_hidden and ref_weight .* not both"):
        fn(HIDDEN, HEAD, TARGET, ref_log_probs=TOKENS, **kwargs, **head)
