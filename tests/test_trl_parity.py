"""Parity with TRL 1.16 running live: its trainers' own loss code on a stand-in trainer.

TRL computes its losses inside the trainers' ``_compute_loss`` (DPO) and
``_compute_loss``/``compute_loss`` methods; each test calls that method unbound on a minimal
stand-in object that carries the config fields it reads, with a stand-in model whose output holds
given per-token log-probabilities. TRL's loss and its gradient with respect to those
log-probabilities are compared with losskit's on the same inputs.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

import losskit
import losskit.rl as rl

pytestmark = pytest.mark.peer
F64 = torch.float64


@pytest.fixture(scope="module")
def trl_dpo():
    from trl.trainer.dpo_trainer import DPOTrainer  # about 10 s to import: once per module

    return DPOTrainer


class _Accelerator:
    device = torch.device("cpu")

    @staticmethod
    def gather_for_metrics(x):
        return x

    @staticmethod
    def gather(x):
        return x


def _dpo_batch(gen, pairs=4, length=6, dtype=F64):
    """Token log-probabilities (0 outside the completion, as TRL's fused head returns them), the
    completion mask (the first position is prompt), and reference sequence log-probabilities."""
    mask = torch.zeros(2 * pairs, length + 1, dtype=torch.long)
    lengths = torch.randint(1, length + 1, (2 * pairs,), generator=gen)
    for i, n in enumerate(lengths.tolist()):
        mask[i, 1:1 + n] = 1
    token_lp = (-(0.05 + 1.5 * torch.rand(2 * pairs, length, generator=gen, dtype=F64)) * mask[:, 1:]).to(dtype)
    ref = (token_lp.double().sum(-1) + 0.8 * torch.randn(2 * pairs, generator=gen, dtype=F64)).clamp(max=-0.01)
    sq = (token_lp.double() - torch.rand(2 * pairs, length, generator=gen, dtype=F64)).to(dtype)
    return token_lp, mask, ref.to(dtype), sq


def _trl_dpo_loss(trainer_cls, token_lp, mask, ref, sq, **config):
    defaults = {"loss_type": ["sigmoid"], "loss_weights": None, "beta": 0.1, "label_smoothing": 0.0,
                "f_divergence_type": "reverse_kl", "f_alpha_divergence_coef": 1.0, "discopop_tau": 0.05,
                "use_weighting": False, "ld_alpha": None}
    cfg = {**defaults, **config}
    stand_in = SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=_Accelerator(), aux_loss_enabled=False,
        precompute_ref_logps=True, beta=cfg["beta"], loss_types=cfg["loss_type"],
        loss_weights=cfg["loss_weights"] or [1.0] * len(cfg["loss_type"]), ld_alpha=cfg["ld_alpha"],
        f_divergence_type=cfg["f_divergence_type"], f_alpha_divergence_coef=cfg["f_alpha_divergence_coef"],
        label_smoothing=cfg["label_smoothing"], use_weighting=cfg["use_weighting"],
        args=SimpleNamespace(discopop_tau=cfg["discopop_tau"], gradient_checkpointing_kwargs=None),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    zeros = torch.zeros_like(token_lp)
    outputs = SimpleNamespace(log_probs=token_lp, entropy=zeros, mean_logits=zeros,
                              is_top1=torch.zeros_like(token_lp, dtype=torch.bool), log_sum_sq_probs=sq)
    ref_chosen, ref_rejected = ref.chunk(2)
    inputs = {"input_ids": torch.zeros_like(mask), "attention_mask": torch.ones_like(mask), "completion_mask": mask,
              "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    return trainer_cls._compute_loss(stand_in, lambda **kwargs: outputs, inputs, return_outputs=False)


def _losskit_dpo_loss(token_lp, mask, ref, sq, *, loss_type=("sigmoid",), loss_weights=None, use_weighting=False,
                      ld_alpha=None, **options):
    completion = mask[:, 1:]
    seq = token_lp.sum(-1) if ld_alpha is None else rl.ld_dpo_log_probs(token_lp, completion, alpha=ld_alpha)
    chosen, rejected = seq.chunk(2)
    chosen_len, rejected_len = completion.sum(-1).chunk(2)
    ref_chosen, ref_rejected = ref.chunk(2)
    wpo = rl.wpo_weights(token_lp, sq, completion) if use_weighting else None
    return losskit.dpo_loss(chosen, rejected, ref_chosen_log_probs=ref_chosen, ref_rejected_log_probs=ref_rejected,
                            variant=list(loss_type), variant_weights=loss_weights, chosen_lengths=chosen_len,
                            rejected_lengths=rejected_len, wpo_weights=wpo, **options)


def _compare(trl_dpo, gen, dtype=F64, rtol=1e-10, atol=1e-12, **config):
    token_lp, mask, ref, sq = _dpo_batch(gen, dtype=dtype)
    ours_in = token_lp.clone().requires_grad_()
    theirs_in = token_lp.clone().requires_grad_()
    ours = _losskit_dpo_loss(ours_in, mask, ref, sq, **config)
    theirs = _trl_dpo_loss(trl_dpo, theirs_in, mask, ref, sq, **config)
    torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=rtol, atol=atol)
    ours.backward()
    theirs.backward()
    # Outside the completion the head's log-probabilities are 0 and no gradient reaches the model
    # from there; TRL's sums give those positions gradients of their own, so compare the completion's.
    completion = mask[:, 1:].bool()
    torch.testing.assert_close(ours_in.grad[completion], theirs_in.grad[completion], rtol=rtol, atol=atol)


DPO_TYPES = ["sigmoid", "hinge", "ipo", "nca_pair", "bco_pair", "sppo_hard", "aot", "aot_unpaired", "apo_zero",
             "apo_down", "discopop", "sft", "sigmoid_norm"]


@pytest.mark.parametrize("loss_type", DPO_TYPES)
def test_dpo_loss_types_match_trl(trl_dpo, gen, loss_type):
    _compare(trl_dpo, gen, loss_type=[loss_type], beta=0.3)


@pytest.mark.parametrize("loss_type", ["robust", "aot", "aot_unpaired"])
def test_dpo_label_smoothed_loss_types_match_trl(trl_dpo, gen, loss_type):
    _compare(trl_dpo, gen, loss_type=[loss_type], beta=0.3, label_smoothing=0.2)


def test_dpo_exo_pair_matches_trl(trl_dpo, gen):
    # TRL takes log(1 - s) and log(s) of a float32 tensor: equal to float32's precision
    _compare(trl_dpo, gen, rtol=1e-7, atol=1e-9, loss_type=["exo_pair"], beta=0.3, label_smoothing=0.2)


@pytest.mark.parametrize("divergence", ["forward_kl", "js_divergence"])
@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "sigmoid_norm", "discopop"])
def test_dpo_f_divergences_match_trl(trl_dpo, gen, divergence, loss_type):
    _compare(trl_dpo, gen, loss_type=[loss_type], f_divergence_type=divergence)


def test_dpo_alpha_divergence_matches_trl_in_float32(trl_dpo, gen):
    # TRL clamps the exponent per dtype and knows float16, bfloat16 and float32 only
    _compare(trl_dpo, gen, dtype=torch.float32, rtol=1e-5, atol=1e-6, loss_type=["sigmoid", "hinge"],
             f_divergence_type="alpha_divergence", f_alpha_divergence_coef=0.5)


def test_mpo_matches_trl(trl_dpo, gen):
    _compare(trl_dpo, gen, loss_type=["sigmoid", "bco_pair", "sft"], loss_weights=[0.8, 0.2, 1.0])


def test_wpo_matches_trl(trl_dpo, gen):
    # (TRL 1.16 fails on use_weighting with "sft": it scales the expanded batch loss in place)
    _compare(trl_dpo, gen, loss_type=["sigmoid", "apo_zero"], use_weighting=True)


def test_ld_dpo_matches_trl(trl_dpo, gen):
    # precomputed reference log-probabilities are taken as they are (LD weighting applies to the policy's)
    _compare(trl_dpo, gen, loss_type=["sigmoid"], ld_alpha=0.4)


# --- GRPO -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trl_grpo():
    from trl.trainer.grpo_trainer import GRPOTrainer

    return GRPOTrainer


class _GRPOAccelerator(_Accelerator):
    num_processes = 1
    sync_gradients = True

    @staticmethod
    def reduce(x, reduction="sum"):
        return x

    @staticmethod
    def pad_across_processes(x, dim=0, pad_index=0):
        return x


def _grpo_batch(gen, n=6, length=5):
    mask = torch.ones(n, length, dtype=torch.long)
    for i, k in enumerate(torch.randint(1, length + 1, (n,), generator=gen).tolist()):
        mask[i, k:] = 0
    old = -(0.1 + 2.0 * torch.rand(n, length, generator=gen, dtype=F64))
    lp = (old + 0.4 * torch.randn(n, length, generator=gen, dtype=F64)).clamp(max=-0.01)
    sampling = (old + 0.3 * torch.randn(n, length, generator=gen, dtype=F64)).clamp(max=-0.01)
    ref = (old + 0.3 * torch.randn(n, length, generator=gen, dtype=F64)).clamp(max=-0.01)
    entropies = 3 * torch.rand(n, length, generator=gen, dtype=F64)
    rewards = torch.randn(n, generator=gen, dtype=F64)
    return lp, old, sampling, ref, entropies, rewards, mask


def _trl_grpo_loss(trainer_cls, lp, old, sampling, ref, entropies, advantages, mask, is_ratio, cfg):
    stand_in = SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=_GRPOAccelerator(), aux_loss_enabled=False,
        _get_per_token_logps_and_entropies=lambda *args, **kwargs: (lp, entropies, None),
        top_entropy_quantile=cfg.get("top_entropy_quantile", 1.0),
        off_policy_mask_threshold=cfg.get("off_policy_mask_threshold"),
        get_off_policy_mask=trainer_cls.get_off_policy_mask,
        importance_sampling_level=cfg.get("importance_sampling_level", "token"), beta=cfg.get("beta", 0.0),
        loss_type=cfg["loss_type"], epsilon_low=cfg.get("epsilon", 0.2),
        epsilon_high=cfg.get("epsilon_high", cfg.get("epsilon", 0.2)),
        use_vllm=is_ratio is not None, vllm_importance_sampling_correction=is_ratio is not None,
        current_gradient_accumulation_steps=1, max_completion_length=cfg.get("max_completion_length", 8),
        _entropy_bonus_enabled=False, _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        args=SimpleNamespace(use_bias_correction_kl=cfg.get("use_bias_correction_kl", False),
                             delta=cfg.get("delta"), sapo_temperature_pos=1.0, sapo_temperature_neg=1.05,
                             steps_per_generation=1))
    stand_in.get_high_entropy_mask = lambda e, m, t: trainer_cls.get_high_entropy_mask(stand_in, e, m, t)
    n = lp.shape[0]
    inputs = {"prompt_ids": torch.zeros(n, 1, dtype=torch.long), "prompt_mask": torch.ones(n, 1, dtype=torch.long),
              "completion_ids": torch.zeros_like(mask), "completion_mask": mask, "advantages": advantages,
              "old_per_token_logps": old, "sampling_per_token_logps": sampling, "ref_per_token_logps": ref,
              "num_items_in_batch": mask.sum().to(F64)}
    if is_ratio is not None:
        inputs["importance_sampling_ratio"] = is_ratio
    return trainer_cls._compute_loss(stand_in, None, inputs)


def _compare_grpo(trl_grpo, gen, vllm_mode=None, **cfg):
    lp, old, sampling, ref, entropies, rewards, mask = _grpo_batch(gen)
    advantages = rl.group_advantages(rewards, 2)
    is_ratio = None if vllm_mode is None else rl.vllm_importance_sampling_ratio(
        old, sampling, mask, mode=vllm_mode, clip_min=0.5, clip_max=1.5)
    trl_is_ratio = None if is_ratio is None else (is_ratio if is_ratio.dim() == 2 else is_ratio.unsqueeze(-1))
    ours_in, theirs_in = lp.clone().requires_grad_(), lp.clone().requires_grad_()
    options = {"variant": cfg["loss_type"], "clip_eps": cfg.get("epsilon", 0.2),
               "clip_eps_high": cfg.get("epsilon_high"), "beta": cfg.get("beta", 0.0),
               "ref_log_probs": ref if cfg.get("beta") else None,
               "use_bias_correction_kl": cfg.get("use_bias_correction_kl", False), "delta": cfg.get("delta"),
               "ratio_level": cfg.get("importance_sampling_level", "token"), "importance_sampling_ratio": is_ratio,
               "sampling_log_probs": sampling, "off_policy_mask_threshold": cfg.get("off_policy_mask_threshold"),
               "entropies": entropies, "top_entropy_quantile": cfg.get("top_entropy_quantile", 1.0), "mask": mask}
    if cfg["loss_type"] == "dr_grpo":
        options["max_length"] = cfg.get("max_completion_length", 8)
    ours = losskit.grpo_loss(ours_in, old, rewards=rewards, group_size=2, **options)
    theirs = _trl_grpo_loss(trl_grpo, theirs_in, old, sampling, ref, entropies, advantages.unsqueeze(-1), mask,
                            trl_is_ratio, cfg)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(ours_in.grad, theirs_in.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo"])
def test_grpo_loss_types_match_trl(trl_grpo, gen, loss_type):
    cfg = {"epsilon_high": 5.0} if loss_type == "cispo" else {"epsilon_high": 0.28}
    _compare_grpo(trl_grpo, gen, loss_type=loss_type, **cfg)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "sapo"])
def test_gspo_sequence_importance_sampling_matches_trl(trl_grpo, gen, loss_type):
    _compare_grpo(trl_grpo, gen, loss_type=loss_type, importance_sampling_level="sequence")


@pytest.mark.parametrize("corrected", [False, True])
def test_grpo_kl_and_its_bias_correction_match_trl(trl_grpo, gen, corrected):
    _compare_grpo(trl_grpo, gen, loss_type="dapo", beta=0.04, use_bias_correction_kl=corrected)


def test_grpo_two_sided_delta_clipping_matches_trl(trl_grpo, gen):
    _compare_grpo(trl_grpo, gen, loss_type="grpo", delta=1.1)


@pytest.mark.parametrize("threshold", [-0.05, 0.1])
def test_grpo_off_policy_masking_matches_trl(trl_grpo, gen, threshold):
    _compare_grpo(trl_grpo, gen, loss_type="dapo", off_policy_mask_threshold=threshold)


def test_the_off_policy_mask_of_these_inputs_drops_some_sequences_and_keeps_others(gen):
    # the thresholds above must split the batch, or the parity test could not fail
    lp, old, sampling, _, _, rewards, mask = _grpo_batch(gen)
    losses = [losskit.grpo_loss(lp, old, rewards=rewards, group_size=2, mask=mask, sampling_log_probs=sampling,
                                off_policy_mask_threshold=t, reduction="none").sum(-1) for t in (-0.05, 0.1, None)]
    assert (losses[0] == 0).sum() > (losses[1] == 0).sum() > (losses[2] == 0).sum()


def test_grpo_top_entropy_quantile_matches_trl(trl_grpo, gen):
    _compare_grpo(trl_grpo, gen, loss_type="dapo", top_entropy_quantile=0.4)


@pytest.mark.parametrize("mode", ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"])
def test_grpo_vllm_importance_sampling_matches_trl(trl_grpo, gen, mode):
    _compare_grpo(trl_grpo, gen, vllm_mode=mode, loss_type="dapo")


# --- CPO (TRL's experimental trainer) -------------------------------------------------------------


@pytest.fixture(scope="module")
def trl_cpo():
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.cpo import CPOTrainer

    return CPOTrainer


def _trl_cpo_loss(trainer_cls, logits, target, *, loss_type, beta, cpo_alpha, simpo_gamma, alpha, label_smoothing):
    """CPOTrainer.get_batch_loss_metrics's loss: cpo_loss on get_batch_logps plus cpo_alpha times the
    chosen tokens' cross-entropy (targets already shifted: TRL's encoder-decoder path, no shift)."""
    if loss_type == "alphapo":  # CPOConfig's own rewrite
        loss_type, cpo_alpha = "simpo", 0.0
    stand_in = SimpleNamespace(alpha=alpha, loss_type=loss_type, simpo_gamma=simpo_gamma, beta=beta,
                               label_smoothing=label_smoothing, accelerator=_Accelerator())
    logps = trainer_cls.get_batch_logps(logits, target.clone(), average_log_prob=loss_type in ("ipo", "simpo"),
                                        is_encoder_decoder=True)
    half = logits.shape[0] // 2
    losses, _, _ = trainer_cls.cpo_loss(stand_in, logps[:half], logps[half:])
    nll = torch.nn.functional.cross_entropy(logits[:half].reshape(-1, logits.shape[-1]), target[:half].reshape(-1),
                                            ignore_index=-100)
    return losses.mean() + cpo_alpha * nll


@pytest.mark.parametrize(("loss_type", "alphapo_alpha", "smoothing"), [
    ("sigmoid", 0.0, 0.1), ("hinge", 0.0, 0.0), ("ipo", 0.0, 0.0), ("simpo", 0.0, 0.1), ("alphapo", 0.25, 0.0),
    ("sigmoid", -0.3, 0.0),
])
def test_cpo_loss_types_match_trl(trl_cpo, gen, loss_type, alphapo_alpha, smoothing):
    hidden = torch.randn(4, 5, 3, generator=gen, dtype=F64, requires_grad=True)
    head = torch.randn(7, 3, generator=gen, dtype=F64, requires_grad=True)
    target = torch.randint(7, (4, 5), generator=gen)
    target[:, 0] = -100
    target[1, 3:] = -100
    options = {"beta": 0.3, "simpo_gamma": 0.4, "label_smoothing": smoothing}
    ours = losskit.fused_linear_cpo_loss(hidden, head, target, variant=loss_type, alpha=0.7,
                                         alphapo_alpha=alphapo_alpha, chunk_size=3, **options)
    theirs = _trl_cpo_loss(trl_cpo, hidden @ head.T, target, loss_type=loss_type, cpo_alpha=0.7, alpha=alphapo_alpha,
                           **options)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    for a, b in zip(torch.autograd.grad(ours, (hidden, head)), torch.autograd.grad(theirs, (hidden, head)),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("loss_type", "alphapo_alpha", "smoothing"), [
    ("sigmoid", 0.0, 0.1), ("hinge", 0.0, 0.0), ("ipo", 0.0, 0.0), ("simpo", 0.0, 0.1), ("alphapo", 0.25, 0.0),
    ("hinge", -0.3, 0.0),
])
def test_unfused_cpo_loss_matches_trl(trl_cpo, gen, loss_type, alphapo_alpha, smoothing):
    # cpo_loss on the summed log-probabilities and token counts taken from the logits, against TRL's
    # cpo_loss on get_batch_logps plus cpo_alpha times the cross-entropy of the chosen half
    logits = torch.randn(6, 5, 7, generator=gen, dtype=F64, requires_grad=True)
    target = torch.randint(7, (6, 5), generator=gen)
    target[:, 0] = -100
    target[1, 2:] = -100
    target[4, 3:] = -100
    valid = target != -100
    token_lp = torch.log_softmax(logits, -1).gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    summed, lengths = torch.where(valid, token_lp, 0.0).sum(-1), valid.sum(-1)
    options = {"beta": 0.3, "simpo_gamma": 0.4, "label_smoothing": smoothing}
    ours = losskit.cpo_loss(summed[:3], summed[3:], variant=loss_type, alpha=0.7, alphapo_alpha=alphapo_alpha,
                            chosen_lengths=lengths[:3], rejected_lengths=lengths[3:], **options)
    theirs = _trl_cpo_loss(trl_cpo, logits, target, loss_type=loss_type, cpo_alpha=0.7, alpha=alphapo_alpha,
                           **options)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    ours_grad, = torch.autograd.grad(ours, logits)
    theirs_grad, = torch.autograd.grad(theirs, logits)
    torch.testing.assert_close(ours_grad, theirs_grad, rtol=1e-10, atol=1e-12)


# --- KTO ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trl_kto():
    from trl.trainer.kto_trainer import KTOTrainer

    return KTOTrainer


@pytest.mark.parametrize("loss_type", ["kto", "apo_zero_unpaired"])
def test_kto_loss_types_match_trl(trl_kto, gen, loss_type):
    n, length = 6, 5
    mask = torch.zeros(n, length + 1, dtype=torch.long)
    mask[:, 1:] = 1
    mask[2, 4:] = 0
    token_lp = -(0.05 + torch.rand(n, length, generator=gen, dtype=F64)) * mask[:, 1:]
    ref = token_lp.sum(-1) + 0.7 * torch.randn(n, generator=gen, dtype=F64)
    # mismatched-pair log-probabilities whose KL estimate is positive (0.5 to 2.5 per pair): the clamp at 0 stays off
    kl_policy = -torch.rand(n, generator=gen, dtype=F64) * 2
    kl_ref = kl_policy - 0.5 - 2 * torch.rand(n, generator=gen, dtype=F64)
    labels = torch.tensor([True, False, True, True, False, False])
    calculate_kl = loss_type == "kto"
    zeros = torch.zeros_like(token_lp)
    outputs = SimpleNamespace(log_probs=None, entropy=zeros, mean_logits=zeros)
    stand_in = SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=_Accelerator(), aux_loss_enabled=False,
        calculate_KL=calculate_kl, precompute_ref_logps=True, loss_type=loss_type, beta=0.2, desirable_weight=1.3,
        undesirable_weight=0.8, _compute_kl_logps=lambda model, batch: kl_policy if calculate_kl else None,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    batch = {"label": labels, "input_ids": torch.zeros_like(mask), "attention_mask": torch.ones_like(mask),
             "completion_mask": mask, "ref_logps": ref, "ref_KL_logps": kl_ref}
    theirs_in, ours_in = token_lp.clone().requires_grad_(), token_lp.clone().requires_grad_()
    outputs.log_probs = theirs_in
    theirs = trl_kto._compute_loss(stand_in, lambda **kwargs: outputs, batch, return_outputs=False)
    kl = (kl_policy - kl_ref).mean().clamp(min=0) if calculate_kl else 0.0
    ours = losskit.kto_loss(ours_in.sum(-1), ref, desirable=labels, variant=loss_type, kl=kl, beta=0.2,
                            desirable_weight=1.3, undesirable_weight=0.8)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(ours_in.grad, theirs_in.grad, rtol=1e-10, atol=1e-12)
