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
