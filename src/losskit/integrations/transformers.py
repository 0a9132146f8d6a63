r"""Hugging Face ``transformers``: causal language models that compute their loss with the fused head.

:func:`apply_fused_linear_cross_entropy` patches a causal LM in place so that, in training with
``labels``, ``model(input_ids, labels=...)`` takes the base model's last hidden state and feeds
it, with the output head's weight, to :func:`losskit.fused_linear_cross_entropy`: the
``(batch, sequence, vocabulary)`` logits are never formed (for a 128k vocabulary and 8k tokens,
4 GB of float32 logits and as much again for their gradient), and no logits are returned.

The loss is the one the unpatched model computes with ``ForCausalLMLoss``: labels shifted by one
inside the loss (or ``shift_labels=`` as given), ``-100`` ignored, the mean over the counted
tokens, or the sum divided by ``num_items_in_batch`` when the Trainer passes it (gradient
accumulation over micro-batches of unequal lengths), Gemma 2's ``final_logit_softcapping``
applied to the logits first. Outside training, or without labels, the model runs its own
forward unchanged (logits returned, as generation and evaluation need).

The head is read as a parameter, never called, so under FSDP2 its sharded weight is gathered by
the loss (see :func:`losskit.fused_linear_cross_entropy`).
"""

from __future__ import annotations

import inspect
import types
from typing import Any

from torch import Tensor, nn

from losskit.functional.large_vocab import fused_linear_cross_entropy

__all__ = ["apply_fused_linear_cross_entropy"]

# Arguments of a causal LM's forward that concern the head or the loss, not the base model.
_HEAD_ARGUMENTS = ("labels", "logits_to_keep", "num_items_in_batch", "shift_labels", "ignore_index", "return_dict")


def _causal_lm_loss(model: nn.Module, hidden: Tensor, labels: Tensor | None, shift_labels: Tensor | None,
                    num_items_in_batch: Tensor | int | None, ignore_index: int) -> Tensor:
    """``ForCausalLMLoss`` of ``lm_head(hidden)`` (and the config's final-logit softcap), fused."""
    head = model.get_output_embeddings()
    if shift_labels is None:  # tokens < n predict n; the last one predicts nothing
        shift_labels = nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    softcap = getattr(model.config, "final_logit_softcapping", None)
    return fused_linear_cross_entropy(
        hidden, head.weight, shift_labels.to(hidden.device), bias=head.bias, ignore_index=ignore_index,
        softcap=softcap, normalizer=num_items_in_batch)


def _patched_forward(model: nn.Module, original: Any) -> Any:
    signature = inspect.signature(original)
    output_type = _output_type()

    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        arguments = dict(bound.arguments)
        extra = arguments.pop(next((p.name for p in signature.parameters.values()
                                    if p.kind is inspect.Parameter.VAR_KEYWORD), "**"), {})
        arguments.update(extra)
        labels, shift_labels = arguments.get("labels"), arguments.get("shift_labels")
        if not self.training or (labels is None and shift_labels is None):
            return original(*args, **kwargs)
        num_items = arguments.get("num_items_in_batch")
        ignore_index = arguments.get("ignore_index", -100)
        base_arguments = {k: v for k, v in arguments.items() if k not in _HEAD_ARGUMENTS}
        outputs = getattr(self, self.base_model_prefix)(**base_arguments, return_dict=True)
        loss = _causal_lm_loss(self, outputs.last_hidden_state, labels, shift_labels, num_items, ignore_index)
        known = output_type.__dataclass_fields__
        fields = {k: v for k, v in outputs.items() if k != "last_hidden_state" and k in known}
        return output_type(loss=loss, logits=None, **fields)

    return forward


def _output_type() -> type:
    from transformers.modeling_outputs import CausalLMOutputWithCrossAttentions

    return CausalLMOutputWithCrossAttentions  # the causal LM output with every field a base model returns


def apply_fused_linear_cross_entropy(model: nn.Module) -> nn.Module:
    """Make a Hugging Face causal LM compute its training loss with the fused head; returns ``model``.

    Patches ``model.forward`` in place (this instance only). In training mode with ``labels``
    (or ``shift_labels``) the loss equals the unpatched model's, in value and gradient, while
    the logits are never formed and ``outputs.logits`` is ``None``; otherwise the original
    forward runs. Covers the models whose causal-LM class runs ``base_model -> lm_head ->
    ForCausalLMLoss`` (Llama, Mistral, Qwen2, Gemma 2 with its final-logit softcap, GPT-2, and
    the many built the same way).

    Args:
        model: A ``transformers`` causal LM (``...ForCausalLM``, ``GPT2LMHeadModel``).

    Returns:
        The same model.

    Raises:
        TypeError: ``model`` is not a ``transformers`` model with a base model and a linear
            output head.

    Examples:
        >>> import torch, transformers
        >>> from losskit.integrations.transformers import apply_fused_linear_cross_entropy
        >>> config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
        ...                                   num_hidden_layers=1, num_attention_heads=2)
        >>> model = apply_fused_linear_cross_entropy(transformers.LlamaForCausalLM(config))
        >>> ids = torch.randint(64, (2, 8))
        >>> out = model(ids, labels=ids)   # training mode: the fused loss, no logits
        >>> out.logits is None, out.loss.shape
        (True, torch.Size([]))
    """
    prefix = getattr(model, "base_model_prefix", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not prefix or not hasattr(model, prefix) or not isinstance(head, nn.Linear):
        raise TypeError(f"model must be a transformers causal language model with a base model and a linear "
                        f"output head (get_output_embeddings()), got {type(model).__name__}")
    if getattr(model, "_losskit_fused_forward", None) is not None:
        return model  # already patched
    original = model.forward
    model.forward = types.MethodType(_patched_forward(model, original), model)
    model._losskit_fused_forward = original
    return model

