"""Fused DPO and GRPO (hidden states and head in, no logits) vs the same losses on materialised logits.

Forward+backward of a policy's loss head: hidden ``(B, L, D)``, head ``(V, D)`` and bias,
float32 on the CPU, the first eighth of each sequence a prompt (``ignore_index``). Two methods
per objective:

* ``losskit`` (fused): ``losskit.fused_linear_dpo_loss(hidden, weight, target, bias=bias, ...)``
  and ``losskit.fused_linear_grpo_loss(...)``;
* ``naive``: ``log_softmax(hidden @ weight.T + bias)`` gathered at the targets, summed per
  sequence for DPO, and ``losskit.dpo_loss`` / ``losskit.grpo_loss`` on them.

Both compute the same value (checked). Time: interleaved round by round in this process, the
median (background load hits both alike). Memory: the peak of the tensors a step creates
(``benchmarks.harness.cpu_peak_bytes``), and that peak beyond the gradients of hidden, weight
and bias, which every method must allocate: the "added" memory. The machine's load average is
printed with the figures.

The default shape is 8 sequences of 512 tokens, hidden 1024, vocabulary 32,000, 2 threads:

    python -m benchmarks.bench_fused_policy [--sequences 8] [--tokens 512] [--hidden 1024]
        [--vocab 32000] [--threads 2] [--rounds 5] [--objectives dpo grpo]
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import torch

import losskit
from benchmarks.harness import compare, report


def _inputs(sequences: int, tokens: int, hidden: int, vocab: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(sequences, tokens, hidden, generator=gen).requires_grad_()
    w = (torch.randn(vocab, hidden, generator=gen) * hidden**-0.5).requires_grad_()
    b = (torch.randn(vocab, generator=gen) * 0.1).requires_grad_()
    target = torch.randint(vocab, (sequences, tokens), generator=gen)
    target[:, : max(tokens // 8, 1)] = -100  # the prompt
    return h, w, b, target


def _naive_log_probs(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, target: torch.Tensor,
                     temperature: float = 1.0) -> torch.Tensor:
    valid = target != -100
    index = torch.where(valid, target, 0).unsqueeze(-1)
    log_probs = torch.log_softmax((h @ w.T + b) / temperature, -1).gather(-1, index).squeeze(-1)
    return torch.where(valid, log_probs, 0.0)


def _forwards(objective: str, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
              target: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    half = h.shape[0] // 2
    if objective == "dpo":
        ref = -torch.rand(h.shape[0]) * 1e4

        def naive() -> torch.Tensor:
            summed = _naive_log_probs(h, w, b, target).sum(-1)
            return losskit.dpo_loss(summed[:half], summed[half:], ref_chosen_log_probs=ref[:half],
                                    ref_rejected_log_probs=ref[half:])

        return {"losskit": lambda: losskit.fused_linear_dpo_loss(h, w, target, bias=b, ref_log_probs=ref),
                "naive": naive}
    gen = torch.Generator().manual_seed(1)
    rewards = torch.rand(h.shape[0], generator=gen)
    mask = target != -100

    def naive_grpo() -> torch.Tensor:
        log_probs = _naive_log_probs(h, w, b, target, 0.9)
        return losskit.grpo_loss(log_probs, log_probs.detach(), rewards=rewards, group_size=2, mask=mask)

    return {"losskit": lambda: losskit.fused_linear_grpo_loss(h, w, target, bias=b, rewards=rewards, group_size=2,
                                                              temperature=0.9),
            "naive": naive_grpo}


def run(objective: str, inputs: tuple[torch.Tensor, ...], rounds: int) -> str:
    h, w, b, target = inputs
    forwards = _forwards(objective, h, w, b, target)
    with torch.no_grad():
        values = {label: forward().item() for label, forward in forwards.items()}
    assert abs(values["losskit"] - values["naive"]) <= 1e-4 * max(abs(values["naive"]), 1.0), values
    with losskit.set_checks(False):
        results = compare(forwards, (h, w, b), rounds=rounds, warmup=1)
    gradient_bytes = sum(x.numel() * x.element_size() for x in (h, w, b))
    by_label = {r.label: r for r in results}
    added = {label: r.memory_bytes - gradient_bytes for label, r in by_label.items()}
    table = report(f"fused {objective} vs materialised logits", results, gradient_bytes=gradient_bytes)
    summary = (f"  added memory fused / naive: {added['losskit'] / added['naive']:.3f} (goal <= 0.10); "
               f"time fused / naive: {by_label['losskit'].seconds / by_label['naive'].seconds:.2f} (goal <= 1.2)")
    return table + "\n" + summary


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=32_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--objectives", nargs="+", default=["dpo", "grpo"], choices=["dpo", "grpo"])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    inputs = _inputs(args.sequences, args.tokens, args.hidden, args.vocab)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [f"B={args.sequences} L={args.tokens} D={args.hidden} V={args.vocab}, float32, "
             f"threads={torch.get_num_threads()}, load average (1/5/15 min) at start: {load}"]
    lines += [run(objective, inputs, args.rounds) for objective in args.objectives]
    lines.append(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
