"""The Triton kernels (``backend="triton"``) against the torch path and float64.

On a machine without CUDA the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set by
``tests/conftest.py``) on CPU tensors, small shapes; with CUDA they run compiled on the GPU. Each kernel computed in
float32 keeps the float32 accuracy budget of ``tests/test_accuracy.py`` (1e-5 relative value per
unit, 1e-4 gradient norm) against the torch path in float64 on the same inputs, in the regimes
where a formula loses digits: saturated logits (|x| up to 30), near-converged losses and many
classes walked in several tiles.
"""

from __future__ import annotations

import math

import pytest
import torch

import losskit
from losskit import _kernels
from tests.test_accuracy import grad_error, value_error

pytest.importorskip("triton")

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
VALUE_BUDGET, GRAD_BUDGET = 1e-5, 1e-4


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of 16 classes, so a few dozen classes are walked in several tiles (online merge)."""
    from losskit._kernels.triton import cross_entropy as kernel

    monkeypatch.setattr(kernel, "_MAX_BLOCK", 16)


def _on_device(*tensors):
    return [t.to(DEVICE) if t is not None else None for t in tensors]


def _loss_and_grad(fn, x, target, upstream, **kwargs):
    x = x.detach().clone().requires_grad_(True)
    out = fn(x, target, **kwargs)
    (grad,) = torch.autograd.grad(out, x, upstream if out.dim() else None)
    return out.detach(), grad


def _check_budget(fn, x, target, upstream=None, **kwargs):
    """float32 on the kernel against float64 on the torch path, same (rounded) inputs."""
    doubled = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kwargs.items()}
    value, grad = _loss_and_grad(fn, x, target, upstream, backend="triton", **kwargs)
    target64 = target.double() if target.is_floating_point() else target
    up64 = None if upstream is None else upstream.double()
    value64, grad64 = _loss_and_grad(fn, x.double(), target64, up64, backend="torch", **doubled)
    assert value.dtype == x.dtype and grad.dtype == x.dtype
    assert value_error(value, value64, torch.float32) <= VALUE_BUDGET
    assert grad_error(grad, grad64, torch.float32) <= GRAD_BUDGET
    return value, grad


# --- backend selection -----------------------------------------------------------------------


def test_torch_and_auto_on_cpu_take_the_torch_path():
    x = torch.zeros(2, 3)
    assert _kernels.resolve_backend("torch", x) == "torch"
    assert _kernels.resolve_backend("auto", x) == "torch"


def test_an_unknown_backend_raises_naming_the_argument():
    with pytest.raises(ValueError, match="backend must be one of"):
        losskit.cross_entropy(torch.zeros(2, 3), torch.tensor([0, 1]), backend="cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        losskit.sigmoid_focal_loss(torch.zeros(2), torch.zeros(2), backend="Triton")


def test_triton_on_a_cpu_tensor_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    for call in (lambda: losskit.cross_entropy(torch.zeros(2, 3), torch.tensor([0, 1]), backend="triton"),
                 lambda: losskit.binary_cross_entropy(torch.zeros(2), torch.zeros(2), backend="triton")):
        with pytest.raises(ValueError, match=r"runs on CUDA tensors, got input on cpu.*TRITON_INTERPRET"):
            call()


def test_triton_without_the_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(_kernels, "triton_installed", lambda: False)
    with pytest.raises(ImportError, match=r"losskit\[triton\]"):
        _kernels.resolve_backend("triton", torch.zeros(1))
    assert _kernels.resolve_backend("auto", torch.zeros(1)) == "torch"


# --- cross-entropy on logits -----------------------------------------------------------------

CE_OPTIONS = {
    "plain": {},
    "weight": {"weight": "w"},
    "smoothing": {"label_smoothing": 0.1},
    "z_loss": {"z_loss": 1e-3},
    "softcap": {"softcap": 20.0},
    "everything": {"weight": "w", "label_smoothing": 0.2, "z_loss": 1e-2, "softcap": 25.0},
}


def _ce_case(regime: str, rows: int, classes: int, gen: torch.Generator):
    target = torch.randint(0, classes, (rows,), generator=gen)
    if regime == "typical":
        x = torch.randn(rows, classes, generator=gen) * 3
    elif regime == "saturated":  # |x| up to 30, the target often far from the peak
        x = (torch.rand(rows, classes, generator=gen) * 60 - 30).clamp(-30, 30)
    else:  # near-converged: the target leads every other class by 12 to 20
        x = torch.randn(rows, classes, generator=gen)
        lead = 12 + 8 * torch.rand(rows, generator=gen)
        x[torch.arange(rows), target] = x.max(1).values + lead
    return x.float(), target


@pytest.mark.parametrize("option", sorted(CE_OPTIONS))
@pytest.mark.parametrize("regime", ["typical", "saturated", "near_converged"])
def test_cross_entropy_keeps_the_float32_budget(regime, option, small_tiles):
    gen = torch.Generator().manual_seed(0)
    x, target = _ce_case(regime, 6, 37, gen)  # 37 classes: three tiles of 16, the last one partial
    target[1] = -100
    upstream = torch.rand(6, generator=gen) + 0.5  # backward scales each row's gradient
    kwargs = {k: (torch.rand(37, generator=gen) + 0.5 if v == "w" else v) for k, v in CE_OPTIONS[option].items()}
    x, target, upstream = _on_device(x, target, upstream)
    kwargs = {k: v.to(DEVICE) if torch.is_tensor(v) else v for k, v in kwargs.items()}
    value, grad = _check_budget(losskit.cross_entropy, x, target, upstream, reduction="none", **kwargs)
    assert value[1] == 0 and (grad[1] == 0).all()  # the ignored row
    for reduction in ("mean", "sum"):
        _check_budget(losskit.cross_entropy, x, target, reduction=reduction, **kwargs)


def test_cross_entropy_near_converged_keeps_its_tiny_loss(small_tiles):
    # Target leads by 17 in every row, every other logit equal: the loss is log1p((C-1) e^-17)
    # = 36 * 4.14e-8 = 1.49e-6; lse - x_y in float32 would cancel to 0 or one ulp of 17 (1.9e-6).
    x = torch.zeros(3, 37)
    x[:, 5] = 17.0
    target = torch.full((3,), 5)
    (x, target) = _on_device(x, target)
    loss = losskit.cross_entropy(x, target, reduction="none", backend="triton")
    expected = torch.full((3,), math.log1p(36 * math.exp(-17.0)), dtype=torch.float64)
    torch.testing.assert_close(loss.double().cpu(), expected, rtol=1e-6, atol=0)


def test_cross_entropy_dense_layout_matches_the_torch_path(small_tiles):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 19, 3, 4, generator=gen) * 5  # (N, C, H, W): rows are pixels, a strided class dim
    target = torch.randint(0, 19, (2, 3, 4), generator=gen)
    target[0, 1, 2] = 255
    x, target = _on_device(x, target)
    upstream = torch.rand(2, 3, 4, generator=gen).to(DEVICE)
    _check_budget(losskit.cross_entropy, x, target, upstream, reduction="none", ignore_index=255, label_smoothing=0.1)


def test_cross_entropy_in_float64_and_half_precision():
    gen = torch.Generator().manual_seed(2)
    x, target = _on_device(*_ce_case("typical", 5, 11, gen))
    x64 = x.double().requires_grad_(True)
    options = {"z_loss": 1e-3, "label_smoothing": 0.1, "softcap": 7.0}  # none exact in float32
    a = losskit.cross_entropy(x64, target, reduction="none", backend="triton", **options)
    b = losskit.cross_entropy(x64, target, reduction="none", backend="torch", **options)
    assert a.dtype == torch.float64
    torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    torch.testing.assert_close(*(torch.autograd.grad(v.sum(), x64)[0] for v in (a, b)), rtol=1e-12, atol=1e-15)
    focal = [losskit.sigmoid_focal_loss(x64, (target % 2).double().expand(11, 5).T, alpha=0.3, gamma=0.7,
                                        reduction="none", backend=backend) for backend in ("triton", "torch")]
    torch.testing.assert_close(*focal, rtol=1e-12, atol=0)
    half = x.to(torch.bfloat16).requires_grad_(True)
    out = losskit.cross_entropy(half, target, backend="triton")
    ref = losskit.cross_entropy(half.detach().double(), target, backend="torch")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), ref, rtol=2**-8, atol=0)
    (grad,) = torch.autograd.grad(out, half)
    assert grad.dtype == torch.bfloat16 and torch.isfinite(grad).all()


def test_cross_entropy_ignored_rows_may_hold_nan():
    x = torch.randn(3, 5)
    x[1] = float("nan")
    target = torch.tensor([0, -100, 4])
    x, target = _on_device(x, target)
    x.requires_grad_(True)
    with losskit.set_checks(False):
        loss = losskit.cross_entropy(x, target, reduction="none", backend="triton")
    (grad,) = torch.autograd.grad(loss.sum(), x)
    assert loss[1] == 0 and (grad[1] == 0).all() and torch.isfinite(loss).all()


def test_cross_entropy_second_derivatives_and_retained_graph_match_the_torch_path():
    gen = torch.Generator().manual_seed(3)
    x, target = _on_device(*_ce_case("typical", 4, 9, gen))
    x = x.double().requires_grad_(True)
    grads = []
    for backend in ("triton", "torch"):
        def loss_fn(backend=backend):
            return losskit.cross_entropy(x, target, backend=backend, label_smoothing=0.1, softcap=5.0)

        loss = loss_fn()
        once = torch.autograd.grad(loss, x, retain_graph=True)[0]
        again = torch.autograd.grad(loss, x)[0]  # the gradient made in forward is spent: recomputed
        (g,) = torch.autograd.grad(loss_fn(), x, create_graph=True)
        (gg,) = torch.autograd.grad(g.square().sum(), x)
        grads.append((once, again, g.detach(), gg))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)


# --- sigmoid focal loss and binary cross-entropy ---------------------------------------------


def _binary_case(gen: torch.Generator, soft: bool):
    x = torch.rand(7, 151, generator=gen) * 60 - 30  # saturated both ways; 1057 elements: two blocks
    x[0, :20] = torch.linspace(-3, 3, 20)
    t = torch.rand(7, 151, generator=gen) if soft else (torch.rand(7, 151, generator=gen) < 0.3).float()
    if not soft:  # near-converged: most logits agree with their label
        x = torch.where(t > 0, x.abs(), -x.abs())
    return x, t


@pytest.mark.parametrize("soft", [False, True], ids=["labels", "soft"])
@pytest.mark.parametrize(("gamma", "alpha"), [(2.0, 0.25), (1.5, None), (0.5, 0.75), (0.0, None)])
@pytest.mark.parametrize("pos_weight", [False, True], ids=["", "pos_weight"])
def test_sigmoid_focal_keeps_the_float32_budget(gamma, alpha, soft, pos_weight):
    gen = torch.Generator().manual_seed(4)
    x, t = _binary_case(gen, soft)
    upstream = torch.rand(7, 151, generator=gen) + 0.5
    pw = torch.rand(151, generator=gen) + 0.5 if pos_weight else None
    x, t, upstream, pw = _on_device(x, t, upstream, pw)
    _check_budget(losskit.sigmoid_focal_loss, x, t, upstream, reduction="none", gamma=gamma, alpha=alpha, pos_weight=pw)
    _check_budget(losskit.sigmoid_focal_loss, x, t, gamma=gamma, alpha=alpha, pos_weight=pw)


@pytest.mark.parametrize("soft", [False, True], ids=["labels", "soft"])
def test_binary_cross_entropy_keeps_the_float32_budget(soft):
    gen = torch.Generator().manual_seed(5)
    x, t = _binary_case(gen, soft)
    upstream = torch.rand(7, 151, generator=gen) + 0.5
    pw = torch.rand(151, generator=gen) + 0.5
    x, t, upstream, pw = _on_device(x, t, upstream, pw)
    _check_budget(losskit.binary_cross_entropy, x, t, upstream, reduction="none")
    _check_budget(losskit.binary_cross_entropy, x, t, upstream, reduction="none", pos_weight=pw, label_smoothing=0.1)
    _check_budget(losskit.binary_cross_entropy, x, t, reduction="sum", weight=t + 1)


def test_focal_tiny_loss_at_a_confident_logit():
    # Logit 30, label 1: BCE = log1p(e^-30) = 9.4e-14 and 1 - p_t = sigma(-30) = 9.4e-14, so with
    # gamma 0.5 and alpha 0.25 the loss is 0.25 * sqrt(9.4e-14) * 9.4e-14 = 7.2e-21; q - 1 in
    # float32 would give 1 - p_t = 0 and a loss of 0.
    x, t = _on_device(torch.tensor([30.0]), torch.tensor([1.0]))
    loss = losskit.sigmoid_focal_loss(x, t, gamma=0.5, reduction="none", backend="triton")
    e = torch.exp(torch.tensor(-30.0, dtype=torch.float64))
    tail = torch.log1p(e)
    expected = 0.25 * (e / (1 + e)).sqrt() * tail
    torch.testing.assert_close(loss.double().cpu(), expected.reshape(1), rtol=1e-6, atol=0)


def test_focal_second_derivatives_match_the_torch_path():
    gen = torch.Generator().manual_seed(6)
    x, t = _on_device(*_binary_case(gen, soft=True))
    x = (x / 10).double().requires_grad_(True)
    results = []
    for backend in ("triton", "torch"):
        loss = losskit.sigmoid_focal_loss(x, t.double(), backend=backend, gamma=1.5)
        (g,) = torch.autograd.grad(loss, x, create_graph=True)
        (gg,) = torch.autograd.grad(g.sum(), x)
        results.append((g.detach(), gg))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-15)


# --- CUDA only -------------------------------------------------------------------------------


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_no_host_synchronization_with_checks_off():
    x = torch.randn(64, 1000, device="cuda", requires_grad=True)
    target = torch.randint(0, 1000, (64,), device="cuda")
    logits = torch.randn(64, 80, device="cuda", requires_grad=True)
    labels = (torch.rand(64, 80, device="cuda") < 0.1).float()
    with losskit.set_checks(False):
        torch.cuda.set_sync_debug_mode("error")
        try:
            for backend in ("triton", "torch"):
                ce = losskit.cross_entropy(x, target, backend=backend, label_smoothing=0.1, z_loss=1e-4)
                focal = losskit.sigmoid_focal_loss(logits, labels, backend=backend)
                bce = losskit.binary_cross_entropy(logits, labels, backend=backend)
                (ce + focal + bce).backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_kernels_capture_in_a_cuda_graph():
    x = torch.randn(32, 80, device="cuda")
    labels = (torch.rand(32, 80, device="cuda") < 0.1).float()
    target = torch.randint(0, 80, (32,), device="cuda")

    def step():
        return (losskit.sigmoid_focal_loss(x, labels, backend="triton")
                + losskit.cross_entropy(x, target, backend="triton", label_smoothing=0.1))

    with losskit.set_checks(False):
        expected = step()  # the first launch compiles the kernels, outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = step()
        graph.replay()
    torch.testing.assert_close(captured, expected)


# --- the fused linear cross-entropy and log-probabilities ------------------------------------------


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the chunks the Triton kernel computes, so a silent fall back to torch would fail."""
    from losskit._kernels.triton import cross_entropy as kernel

    calls = []
    real = kernel.cross_entropy_chunk

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(kernel, "cross_entropy_chunk", counted)
    return calls


ROWS = 9  # tokens: chunks of 4, the last one partial


def _head(dtype, gen, dim=8, vocab=37, scale=1.0, converged=False):
    """A head of 37 classes (tiles of 16 with ``small_tiles``); token 3 ignored. ``converged``:
    orthonormal hidden rows and each token's own target row 20 times its hidden row, every
    other logit below 0.5: losses near 37 e^-20, about 1e-7."""
    if converged:
        dim = 16
        hidden = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))[0][:ROWS]
        target = torch.randperm(vocab, generator=gen)[:ROWS]
        weight = torch.randn(vocab, dim, generator=gen, dtype=torch.float64) * 0.05
        weight[target] = 20 * hidden
        bias = torch.zeros(vocab, dtype=torch.float64)
    else:
        hidden = torch.randn(ROWS, dim, generator=gen, dtype=torch.float64) * scale
        weight = torch.randn(vocab, dim, generator=gen, dtype=torch.float64)
        bias = torch.randn(vocab, generator=gen, dtype=torch.float64)
        target = torch.randint(vocab, (ROWS,), generator=gen)
    target[3] = -100
    return [t.to(dtype) for t in (hidden, weight, bias)], target


def _fused_grads(fn, tensors, target, upstream, **kwargs):
    tensors = [t.detach().clone().requires_grad_(True) for t in tensors]
    out = fn(tensors[0], tensors[1], target, bias=tensors[2], **kwargs)
    loss = out.loss if hasattr(out, "loss") else out[0] if isinstance(out, tuple) else out
    grads = torch.autograd.grad(loss, tensors, upstream if loss.dim() else None)
    return out, grads


FLCE_OPTIONS = {
    "plain": {},
    "smoothing": {"label_smoothing": 0.1},
    "z_loss": {"z_loss": 1e-3},
    "softcap": {"softcap": 3.0},
    "everything": {"class_weight": "w", "label_smoothing": 0.2, "z_loss": 1e-2, "softcap": 5.0},
}


@pytest.mark.parametrize("option", sorted(FLCE_OPTIONS))
def test_fused_linear_cross_entropy_on_the_kernel_equals_the_torch_path(option, small_tiles, kernel_calls):
    # float64 on both paths: the same formulas, so they agree to rounding, over chunks of 4 tokens
    # (the last one partial) and 37 classes in tiles of 16; the components and accuracy too.
    # "mean" computes the gradients in forward, "none" recomputes them in backward with an upstream.
    gen = torch.Generator().manual_seed(1)
    tensors, target = _head(torch.float64, gen)
    kwargs = {k: (torch.rand(37, generator=gen, dtype=torch.float64) + 0.5 if v == "w" else v)
              for k, v in FLCE_OPTIONS[option].items()}
    kwargs = {k: v.to(DEVICE) if torch.is_tensor(v) else v for k, v in kwargs.items()}
    for reduction, upstream in (("mean", None), ("none", torch.linspace(-1, 2, ROWS, dtype=torch.float64))):
        results = {}
        for backend in ("torch", "triton"):
            out, grads = _fused_grads(losskit.fused_linear_cross_entropy, _on_device(*tensors), _on_device(target)[0],
                                      None if upstream is None else upstream.to(DEVICE), reduction=reduction,
                                      chunk_size=4, return_components=True, backend=backend, **kwargs)
            results[backend] = [out.loss, out.cross_entropy, out.z_loss, out.accuracy, *grads]
        for got, expected in zip(results["triton"], results["torch"], strict=True):
            torch.testing.assert_close(got.detach(), expected.detach(), rtol=1e-12, atol=1e-12)
    assert kernel_calls, "the Triton path never ran"


@pytest.mark.parametrize("regime", ["typical", "saturated", "near_converged"])
def test_fused_linear_cross_entropy_on_the_kernel_keeps_the_float32_budget(regime, small_tiles):
    # float32 on the kernel against float64 on the torch path, same rounded inputs. Saturated:
    # logits up to about +-30; near-converged: losses near 1e-7, where lse - x_y would cancel.
    gen = torch.Generator().manual_seed(2)
    (hidden, weight, bias), target = _head(torch.float32, gen, scale=4.0 if regime == "saturated" else 1.0,
                                           converged=regime == "near_converged")
    options = {} if regime == "near_converged" else {"z_loss": 1e-4}  # lse^2 would dwarf a converged loss
    upstream = torch.rand(ROWS, generator=gen) + 0.5
    tensors = _on_device(hidden, weight, bias)
    (target_d,) = _on_device(target)
    got, got_grads = _fused_grads(losskit.fused_linear_cross_entropy, tensors, target_d, upstream.to(DEVICE),
                                  reduction="none", chunk_size=4, backend="triton", **options)
    ref, ref_grads = _fused_grads(losskit.fused_linear_cross_entropy, [t.double() for t in tensors], target_d,
                                  upstream.double().to(DEVICE), reduction="none", chunk_size=4, backend="torch",
                                  **options)
    if regime == "near_converged":
        assert ref[target != -100].max() < 1e-6
    assert value_error(got.detach(), ref.detach(), torch.float32) <= VALUE_BUDGET
    for g, r in zip(got_grads, ref_grads, strict=True):
        assert grad_error(g, r, torch.float32) <= GRAD_BUDGET


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fused_log_probs_and_entropy_on_the_kernel_equal_the_torch_path(temperature, small_tiles, kernel_calls):
    # The entropy's spread is merged online across the tiles of 16 classes: the torch path sums it
    # over the whole row at once, so agreement to rounding checks the merge.
    gen = torch.Generator().manual_seed(3)
    tensors, target = _head(torch.float64, gen, scale=2.0)
    upstream = torch.linspace(-1, 2, ROWS, dtype=torch.float64).to(DEVICE)
    results = {}
    for backend in ("torch", "triton"):
        (log_probs, entropy), grads = _fused_grads(
            losskit.fused_linear_log_probs, _on_device(*tensors), _on_device(target)[0], upstream,
            temperature=temperature, return_entropy=True, chunk_size=4, backend=backend)
        results[backend] = [log_probs, entropy, *grads]
    assert kernel_calls, "the Triton path never ran"
    for got, expected in zip(results["triton"], results["torch"], strict=True):
        torch.testing.assert_close(got.detach(), expected.detach(), rtol=1e-12, atol=1e-12)
    assert results["triton"][1][3] == 0  # the ignored token's entropy


def test_fused_objectives_take_the_kernel_under_auto(monkeypatch, kernel_calls):
    # "auto" picks Triton for CUDA tensors; here it is forced to, as on a GPU, and the fused GRPO
    # loss must then equal its torch-path value.
    gen = torch.Generator().manual_seed(4)
    (hidden, weight, bias), target = _head(torch.float64, gen)
    target, hidden = target[:4].view(2, 2), hidden[:4].view(2, 2, -1)
    rewards = torch.tensor([1.0, 0.0], dtype=torch.float64)

    def grpo():
        return losskit.fused_linear_grpo_loss(hidden, weight, target, bias=bias, rewards=rewards, group_size=2)

    expected = grpo()
    assert not kernel_calls
    monkeypatch.setattr(_kernels, "resolve_backend", lambda backend, input: "triton")
    torch.testing.assert_close(grpo(), expected, rtol=1e-12, atol=1e-12)
    assert kernel_calls
