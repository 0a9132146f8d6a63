"""The Hugging Face patch: the same loss and gradients as the unpatched model, without the logits.

Tiny random configurations built locally (nothing is downloaded), in float64, dropout off. The
reference is the unpatched model's logits (Gemma 2's final-logit softcap included, as the model
applies it) with the loss of ``ForCausalLMLoss`` written out in float64 (labels shifted by one,
-100 ignored, the mean or the sum over ``num_items_in_batch``), and its autograd gradients of
every parameter: equal to 1e-10. The unpatched model's own loss agrees to float32 precision only,
because ``ForCausalLMLoss`` upcasts the logits with ``.float()``, which turns float64 into float32.
"""

from __future__ import annotations

import copy

import pytest
import torch

from benchmarks.harness import cpu_peak_bytes

transformers = pytest.importorskip("transformers")  # in the dev extra: present wherever the suite runs
from losskit.integrations.transformers import apply_fused_linear_cross_entropy  # noqa: E402

TOL = 1e-10
VOCAB = 97
SMALL = {"vocab_size": VOCAB, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
         "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 64}


def _llama():
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**SMALL))


def _mistral():
    return transformers.MistralForCausalLM(transformers.MistralConfig(**SMALL))


def _qwen2():
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**SMALL))


def _gemma2():  # a small cap, so that it changes the loss
    config = transformers.Gemma2Config(**SMALL, head_dim=8, final_logit_softcapping=2.0)
    return transformers.Gemma2ForCausalLM(config)


def _gpt2():
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=1, n_head=2, n_positions=64,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(config)


MODELS = {"llama": _llama, "mistral": _mistral, "qwen2": _qwen2, "gemma2": _gemma2, "gpt2": _gpt2}


def _pair(name: str):
    torch.manual_seed(0)
    reference = MODELS[name]().double().train()
    patched = apply_fused_linear_cross_entropy(copy.deepcopy(reference))
    return reference, patched


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(VOCAB, (2, 9), generator=g)
    labels = ids.clone()
    labels[0, :3] = -100  # a prompt
    labels[1, -2:] = -100  # padding
    return ids, labels


def _float64_causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, items: int | None) -> torch.Tensor:
    """ForCausalLMLoss without its float32 upcast: token t predicts label t + 1."""
    shifted = torch.nn.functional.pad(labels, (0, 1), value=-100)[..., 1:]
    flat, target = logits.reshape(-1, logits.shape[-1]), shifted.reshape(-1)
    if items is None:
        return torch.nn.functional.cross_entropy(flat, target)
    return torch.nn.functional.cross_entropy(flat, target, reduction="sum") / items


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("items", [None, 11], ids=["mean", "num_items_in_batch"])
def test_patched_model_has_the_unpatched_loss_and_gradients(name, items):
    reference, patched = _pair(name)
    ids, labels = _batch()
    extra = {} if items is None else {"num_items_in_batch": torch.tensor(items)}
    hf_loss = reference(ids, labels=labels, **extra).loss.detach()
    expected = _float64_causal_lm_loss(reference(ids).logits, labels, items)
    got = patched(ids, labels=labels, **extra)
    assert got.logits is None  # training: no logits
    assert _rel(got.loss.detach(), expected) <= TOL
    assert _rel(got.loss.detach(), hf_loss) <= 1e-6
    expected.backward()
    got.loss.backward()
    params = dict(patched.named_parameters())
    assert params
    for pname, p in reference.named_parameters():
        assert _rel(params[pname].grad, p.grad) <= TOL, pname
    if items is not None:
        # The sum over the counted tokens divided by 11, not their mean. Counted: the shifted labels
        # are labels[:, 1:], 8 per row; row 0 loses positions 1 and 2 (the prompt), row 1 positions
        # 7 and 8 (padding): 6 + 6 = 12 tokens.
        mean = patched(ids, labels=labels).loss.detach()
        assert abs(float(got.loss.detach()) - float(mean) * 12 / 11) < 1e-9


def test_gemma2_softcap_is_applied():
    reference, patched = _pair("gemma2")
    with torch.no_grad():  # logits large enough for the cap of 2 to matter
        for model in (reference, patched):
            model.lm_head.weight.mul_(300)
    ids, labels = _batch()
    loss = patched(ids, labels=labels).loss.detach()
    capped = _float64_causal_lm_loss(reference(ids).logits, labels, None).detach()
    raw = reference.model(ids).last_hidden_state @ reference.lm_head.weight.T
    assert raw.abs().max() > 10 and _rel(loss, capped) <= TOL
    assert abs(float(loss) - float(_float64_causal_lm_loss(raw, labels, None))) > 0.1


def test_outside_training_the_original_forward_runs():
    reference, patched = _pair("llama")
    ids, labels = _batch()
    reference.eval()
    patched.eval()
    expected, got = reference(ids, labels=labels), patched(ids, labels=labels)
    assert torch.equal(got.logits, expected.logits) and torch.equal(got.loss, expected.loss)
    patched.train()
    assert patched(ids).logits is not None  # no labels: the original forward
    assert apply_fused_linear_cross_entropy(patched) is patched  # a second patch changes nothing
    with pytest.raises(TypeError, match="causal language model"):
        apply_fused_linear_cross_entropy(torch.nn.Linear(2, 2))


def test_shift_labels_are_used_as_given():
    reference, patched = _pair("qwen2")
    ids, labels = _batch()
    shifted = torch.nn.functional.pad(labels, (0, 1), value=-100)[..., 1:]
    assert _rel(patched(ids, shift_labels=shifted).loss.detach(), patched(ids, labels=labels).loss.detach()) <= TOL
    assert _rel(patched(ids, shift_labels=shifted).loss.detach(), reference(ids, labels=labels).loss.detach()) <= 1e-6


def test_patched_model_peaks_lower():
    # A vocabulary large enough for the logits to dominate: 2 x 64 tokens x 8192 classes in float32
    # are 4 MiB of logits, and the unpatched loss keeps several copies alive.
    config = transformers.LlamaConfig(**{**SMALL, "vocab_size": 8192})
    torch.manual_seed(0)
    reference = transformers.LlamaForCausalLM(config).train()
    patched = apply_fused_linear_cross_entropy(copy.deepcopy(reference))
    ids = torch.randint(8192, (2, 64))

    def step(model):
        return lambda: model(ids, labels=ids).loss.backward()

    plain, fused = cpu_peak_bytes(step(reference)), cpu_peak_bytes(step(patched))
    logits = 2 * 64 * 8192 * 4
    # Measured (allocations tracked by benchmarks.harness): about 4.9 MB against 12.8 MB.
    assert fused < plain - logits and fused < plain / 2, (fused, plain)
