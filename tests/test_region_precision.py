"""Region losses where users train: float32, bfloat16 and float16 against float64 on the same inputs.

Every region loss, through every path that computes its statistics (the fused softmax kernel
with index labels, with ignored voxels and with one-hot labels, the fused sigmoid kernel with
index and one-hot labels, and the plain autograd path that ``torch.compile`` and
``activation=None`` take), in five regimes: typical logits, a near-converged prediction (loss
below 1e-3), saturated logits up to |x| = 30 (all right, and two thirds confidently wrong), a
large image (at least 65k voxels per class) and extreme imbalance (one positive voxel in 1e5).

The reference is the same loss in float64 on the same (rounded) inputs. Budgets: float32, 1e-5
relative on the value and 1e-4 relative on the gradient norm (the contract's defaults); half
precision computes in float32 and rounds the value and the gradient once, so the budget is the
half type's rounding (relative eps, and its subnormal spacing for values and gradient entries
that small).
"""

from __future__ import annotations

import zlib

import pytest
import torch

import losskit
from losskit.functional.segmentation import _front as seg_module

LOSSES = {
    "dice": (losskit.dice_loss, {}),
    "dice_squared": (losskit.dice_loss, {"squared": True}),
    "jaccard": (losskit.jaccard_loss, {}),
    "tversky": (losskit.tversky_loss, {"alpha": 0.3, "beta": 0.7}),
    "focal_tversky": (losskit.focal_tversky_loss, {}),
    "generalized_dice": (losskit.generalized_dice_loss, {}),
    "mcc": (losskit.mcc_loss, {}),
    "dice_ce": (losskit.dice_ce_loss, {}),
}
# activation, target encoding, ignored voxels, plain autograd path
PATHS = {
    "softmax_index": ("softmax", "index", False, False),
    "softmax_index_ignore": ("softmax", "index", True, False),
    "softmax_one_hot": ("softmax", "one_hot", False, False),
    "sigmoid_index": ("sigmoid", "index", False, False),
    "sigmoid_one_hot": ("sigmoid", "one_hot", False, False),
    "softmax_plain": ("softmax", "index", True, True),
    "sigmoid_plain": ("sigmoid", "one_hot", False, True),
}
IGNORE = 255


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: these tests run many small ops, which two threads on a loaded machine
    (or two test workers) slow down many times over."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _signs(y: torch.Tensor, c: int) -> torch.Tensor:
    """+1 at each voxel's class, -1 elsewhere: (N, C, H, W)."""
    return 2.0 * torch.nn.functional.one_hot(y, c).movedim(-1, 1) - 1


def _regime(name: str, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 logits (N, C, H, W) and class indices (N, H, W)."""
    if name in ("large", "imbalanced"):  # 2 classes
        shape = (1, 2, 400, 400) if name == "large" else (1, 2, 100, 1000)
        y = torch.randint(2, (shape[0], *shape[2:]), generator=gen)
        if name == "imbalanced":  # one foreground voxel in 1e5, found with moderate confidence
            y = torch.zeros_like(y)
            y[0, 37, 512] = 1
        # large: 160k voxels, 80k per class, moderately confident (+-2)
        return (2.0 * _signs(y, 2) + torch.randn(shape, generator=gen)).float(), y
    y = torch.randint(3, (2, 24, 20), generator=gen)
    noise = torch.randn(2, 3, 24, 20, generator=gen)
    uniform = torch.rand(2, 3, 24, 20, generator=gen)
    if name == "typical":
        x = 1.5 * noise
    elif name == "near_converged":  # confident and right: every region loss below 1e-3
        x = 12.0 * _signs(y, 3) + noise
    elif name == "saturated":  # logits of 15 to 30 in size, every voxel right: losses of 1e-7 and below
        x = (15 + 15 * uniform) * _signs(y, 3)
    elif name == "saturated_wrong":  # logits up to |x| = 30 at random: two thirds confidently wrong
        x = (2 * uniform - 1) * 30
    else:
        raise AssertionError(name)
    return x.float(), y


def _target(y: torch.Tensor, c: int, encoding: str, ignore: bool) -> torch.Tensor:
    if ignore:
        y = y.clone()
        y[:, ::7, ::5] = IGNORE
    if encoding == "index":
        return y
    return torch.nn.functional.one_hot(y, c).movedim(-1, 1).float()


def _run(loss: str, path: str, x: torch.Tensor, target: torch.Tensor, monkeypatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Value and input gradient of ``loss`` through ``path`` at logits ``x``."""
    fn, options = LOSSES[loss]
    activation, _, ignore, plain = PATHS[path]
    options = dict(options, activation=activation)
    if ignore:
        options["ignore_index"] = IGNORE
    x = x.detach().clone().requires_grad_(True)
    with monkeypatch.context() as patch:
        if plain:  # the path torch.compile takes: every kernel refused
            patch.setattr(seg_module, "_fused_kernel", lambda *args: None)
        value = fn(x, target.to(x.dtype) if target.is_floating_point() else target, **options)
        (grad,) = torch.autograd.grad(value, x)
    return value.detach(), grad


def _relative(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.double() - ref).norm() / ref.norm().clamp_min(1e-300))


@pytest.mark.parametrize("regime", ["typical", "near_converged", "saturated", "saturated_wrong", "large",
                                    "imbalanced"])
# The sigmoid kernel serves every dice_ce target; its plain path is the one of dice_loss.
@pytest.mark.parametrize(("loss", "path"), [(loss, path) for loss in LOSSES for path in PATHS
                                            if (loss, path) != ("dice_ce", "sigmoid_plain")])
def test_float32_and_half_match_float64_on_the_same_inputs(loss, path, regime, monkeypatch):
    x32, y = _regime(regime, torch.Generator().manual_seed(zlib.crc32(f"{loss}/{path}/{regime}".encode())))
    _, encoding, ignore, _ = PATHS[path]
    target = _target(y, x32.shape[1], encoding, ignore)
    ref, ref_grad = _run(loss, path, x32.double(), target, monkeypatch)
    if regime in ("near_converged", "saturated"):
        assert ref < 1e-3, ref  # the regime is what it says
    value, grad = _run(loss, path, x32, target, monkeypatch)
    assert abs(float(value) - float(ref)) <= 1e-5 * abs(float(ref)), (float(value), float(ref))
    assert _relative(grad, ref_grad) <= 1e-4
    for half in (torch.bfloat16, torch.float16):
        xh = x32.to(half)
        ref, ref_grad = _run(loss, path, xh.double(), target, monkeypatch)
        value, grad = _run(loss, path, xh, target, monkeypatch)
        assert value.dtype == half and grad.dtype == half
        info = torch.finfo(half)
        spacing = info.tiny * info.eps  # float16's subnormal step: below it a value rounds to 0
        assert abs(float(value) - float(ref)) <= info.eps * abs(float(ref)) + spacing, (half, float(value), float(ref))
        error = float((grad.double() - ref_grad).norm())
        assert error <= info.eps * float(ref_grad.norm()) + spacing * grad.numel() ** 0.5, (half, error)
