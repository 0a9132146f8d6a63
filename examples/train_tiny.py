"""Train two tiny models with losskit losses and print the loss falling.

* a classifier on two interleaved spirals, trained with cross-entropy plus label smoothing;
* a regressor on noisy data with 10% gross outliers, trained with the Huber loss, compared
  with MSE on the outlier-free test points.

Runs in a few seconds on a CPU:  python examples/train_tiny.py
"""

from __future__ import annotations

import math

import torch
from torch import nn

import losskit


def spirals(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    label = torch.randint(2, (n,), generator=gen)
    radius = torch.rand(n, generator=gen) * 3 + 0.3
    angle = radius * 2.2 + label * math.pi + torch.randn(n, generator=gen) * 0.15
    points = torch.stack([radius * angle.cos(), radius * angle.sin()], dim=1)
    return points, label


def mlp(inputs: int, outputs: int) -> nn.Module:
    return nn.Sequential(nn.Linear(inputs, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, outputs))


def train(model: nn.Module, criterion: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int,
          label: str) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(steps + 1):
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        if step % (steps // 5) == 0:
            print(f"  {label} step {step:4d}  loss {loss.item():.4f}")


def main() -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)

    print("classification: two spirals, losskit.get('ce', label_smoothing=0.05)")
    x, y = spirals(1024, gen)
    classifier = mlp(2, 2)
    train(classifier, losskit.get("ce", label_smoothing=0.05), x, y, steps=400, label="cross-entropy")
    x_test, y_test = spirals(1024, gen)
    accuracy = (classifier(x_test).argmax(1) == y_test).float().mean().item()
    print(f"  test accuracy {accuracy:.3f}")

    print("regression: y = sin(3x) with 10% outliers; Huber versus MSE")
    x = torch.rand(512, 1, generator=gen) * 4 - 2
    y = torch.sin(3 * x) + 0.05 * torch.randn(512, 1, generator=gen)
    outliers = torch.rand(512, 1, generator=gen) < 0.1
    y = torch.where(outliers, y + 8.0, y)
    x_test = torch.linspace(-2, 2, 200).unsqueeze(1)
    for name in ("huber", "mse"):
        torch.manual_seed(1)
        regressor = mlp(1, 1)
        train(regressor, losskit.get(name), x, y, steps=400, label=name)
        error = (regressor(x_test) - torch.sin(3 * x_test)).abs().mean().item()
        print(f"  {name}: mean absolute error on clean test points {error:.3f}")


if __name__ == "__main__":
    main()
