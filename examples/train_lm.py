"""Train a tiny causal language model whose loss head is the fused linear cross-entropy.

The model embeds tokens, mixes each position with the two before it (a causal convolution),
applies one MLP block, and scores the next token with the (tied) embedding matrix. The loss
never builds the (tokens, vocabulary) logits: ``FusedLinearCrossEntropyLoss`` takes the hidden
states and the head's weight. Each step accumulates gradients over two micro-batches and
divides by the tokens of both (``normalizer=``), so the step equals one big batch exactly.

The text is generated: a random "grammar" over a 4096-token vocabulary in which each token has
a few likely successors (Zipf-weighted), with padded, ignored tails. The loss falls from about
ln(4096) = 8.3 toward the grammar's entropy.

Runs in a few seconds on a CPU:  python examples/train_lm.py [--steps 100] [--untied]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import losskit
from losskit import nn as lnn

VOCAB, WIDTH, SEQ, BATCH = 4096, 64, 32, 8


class TinyLM(nn.Module):
    def __init__(self, tied: bool = True) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        nn.init.normal_(self.embed.weight, std=0.05)
        self.mix = nn.Conv1d(WIDTH, WIDTH, kernel_size=3, padding=2)  # trimmed to stay causal
        self.block = nn.Sequential(nn.LayerNorm(WIDTH), nn.Linear(WIDTH, 4 * WIDTH), nn.GELU(),
                                   nn.Linear(4 * WIDTH, WIDTH))
        self.norm = nn.LayerNorm(WIDTH)
        self.head = None if tied else nn.Linear(WIDTH, VOCAB, bias=False)

    def head_weight(self) -> torch.Tensor:
        return self.embed.weight if self.head is None else self.head.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, T, WIDTH) entering the head; the logits are left to the loss."""
        x = self.embed(tokens)
        x = x + self.mix(x.transpose(1, 2))[..., : tokens.shape[1]].transpose(1, 2)
        x = x + self.block(x)
        return self.norm(x)


def grammar(gen: torch.Generator, successors: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's likely next tokens and their probabilities (Zipf 1/rank)."""
    nexts = torch.randint(VOCAB, (VOCAB, successors), generator=gen)
    probs = 1.0 / torch.arange(1, successors + 1, dtype=torch.float32)
    return nexts, probs / probs.sum()


def batch(nexts: torch.Tensor, probs: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Token sequences from the grammar; inputs and next-token targets, padded tails ignored."""
    tokens = torch.empty(BATCH, SEQ + 1, dtype=torch.long)
    tokens[:, 0] = torch.randint(VOCAB, (BATCH,), generator=gen)
    for t in range(SEQ):
        choice = torch.multinomial(probs.expand(BATCH, -1), 1, generator=gen).squeeze(1)
        tokens[:, t + 1] = nexts[tokens[:, t], choice]
    targets = tokens[:, 1:].clone()
    lengths = torch.randint(SEQ // 2, SEQ + 1, (BATCH,), generator=gen)
    targets[torch.arange(SEQ) >= lengths[:, None]] = -100  # padding: no loss, no gradient
    return tokens[:, :-1], targets


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--untied", action="store_true", help="a separate output head instead of the embedding")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)  # a model this small gains nothing from more, and one thread stays fast on a busy machine
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    nexts, probs = grammar(gen)
    model = TinyLM(tied=not args.untied)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    criterion = lnn.FusedLinearCrossEntropyLoss(z_loss=1e-4)
    every = max(args.steps // 5, 1)
    print(f"tiny causal LM: vocab {VOCAB}, width {WIDTH}, {'untied' if args.untied else 'tied'} head, "
          f"2 micro-batches of {BATCH}x{SEQ} tokens per step, fused linear cross-entropy")
    for step in range(args.steps + 1):
        micro = [batch(nexts, probs, gen) for _ in range(2)]
        tokens_in_step = sum(int((targets != -100).sum()) for _, targets in micro)
        optimizer.zero_grad()
        total, hits = 0.0, 0.0
        for inputs, targets in micro:
            out = criterion(model(inputs), model.head_weight(), targets, normalizer=tokens_in_step,
                            return_components=True)
            out.loss.backward()
            total += out.loss.item()
            hits += out.accuracy.item() * int((targets != -100).sum())
        optimizer.step()
        if step % every == 0:
            print(f"  step {step:4d}  loss {total:.4f}  next-token accuracy {hits / tokens_in_step:.3f}")

    # The fused loss is the plain one: compare with cross-entropy on materialised logits.
    inputs, targets = batch(nexts, probs, gen)
    with torch.no_grad():
        hidden = model(inputs)
        fused = losskit.fused_linear_cross_entropy(hidden, model.head_weight(), targets, z_loss=1e-4)
        logits = hidden @ model.head_weight().T
        plain = losskit.cross_entropy(logits.transpose(1, 2), targets, z_loss=1e-4)
    print(f"held-out batch: fused {fused.item():.6f}, cross_entropy on full logits {plain.item():.6f}")


if __name__ == "__main__":
    main()
