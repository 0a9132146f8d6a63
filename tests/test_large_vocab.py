"""Fused linear cross-entropy and divergences against their naive forms (logits built in full).

The references are losskit's own ``cross_entropy`` / ``kl_div`` / ``js_div`` applied to
``hidden @ weight.T + bias``, and ``torch.nn.functional.cross_entropy`` where it has the option;
both are independent of the chunked code, which computes the loss and its gradient by hand.
"""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as TF

import losskit
from benchmarks.harness import cpu_peak_bytes
from losskit import nn as lnn
from losskit.functional import large_vocab

ROOT = Path(__file__).resolve().parent.parent
N, D, V = 37, 8, 50  # 37 tokens: chunk sizes 8 and 16 do not divide it, 37 does


def _head(gen, n=N, d=D, v=V, dtype=torch.float64, bias=True, scale=1.0):
    hidden = torch.randn(n, d, generator=gen, dtype=torch.float64) * scale
    weight = torch.randn(v, d, generator=gen, dtype=torch.float64)
    b = torch.randn(v, generator=gen, dtype=torch.float64) if bias else None
    out = [hidden.to(dtype), weight.to(dtype), None if b is None else b.to(dtype)]
    return [None if t is None else t.requires_grad_() for t in out]


def _target(gen, n=N, v=V, ignored_every=5):
    target = torch.randint(v, (n,), generator=gen)
    if ignored_every:
        target[::ignored_every] = -100
    return target


def _naive_ce(hidden, weight, target, bias=None, class_weight=None, **options):
    logits = hidden @ weight.T
    if bias is not None:
        logits = logits + bias
    return losskit.cross_entropy(logits.movedim(-1, 1) if logits.dim() > 2 else logits, target,
                                 weight=class_weight, **options)


def _values_and_grads(loss, tensors, upstream):
    tensors = [t for t in tensors if t is not None]
    return loss.detach(), torch.autograd.grad(loss, tensors, upstream)


def _assert_close(a, b, rtol=1e-10, atol=1e-12):
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


# --- cross-entropy: the option grid in float64 -------------------------------------------------------

OPTIONS = {
    "plain": {},
    "smoothing": {"label_smoothing": 0.1},
    "z_loss": {"z_loss": 1e-2},
    "softcap": {"softcap": 2.5},
    "class_weight": {"class_weight": True},
    "everything": {"label_smoothing": 0.2, "z_loss": 0.05, "softcap": 3.0, "class_weight": True},
}
REDUCTIONS = {"mean": {}, "sum": {"reduction": "sum"}, "none": {"reduction": "none"},
              "normalizer": {"normalizer": 11.0}}


@pytest.mark.parametrize(("option", "reduction", "chunk", "bias"), [
    (option, reduction, chunk, bias)
    for (option, reduction), chunk, bias in zip(
        itertools.product(OPTIONS, REDUCTIONS), itertools.cycle([8, 16, 37, None, 1]),
        itertools.cycle([True, False, True]))
])
def test_matches_cross_entropy_over_the_option_grid(gen, option, reduction, chunk, bias):
    hidden, weight, b = _head(gen, bias=bias, scale=2.0)
    target = _target(gen)
    options = {**OPTIONS[option], **REDUCTIONS[reduction]}
    if options.pop("class_weight", False):
        options["class_weight"] = torch.rand(V, generator=gen, dtype=torch.float64) + 0.5
    fused = losskit.fused_linear_cross_entropy(hidden, weight, target, bias=b, chunk_size=chunk, **options)
    naive = _naive_ce(hidden, weight, target, bias=b, **options)
    # Any upstream gradient: per token under "none" (the case a gradient precomputed in forward gets wrong).
    upstream = torch.randn(fused.shape, generator=gen, dtype=torch.float64)
    got = _values_and_grads(fused, (hidden, weight, b), upstream)
    want = _values_and_grads(naive, (hidden, weight, b), upstream)
    _assert_close(got[0], want[0])
    for g, w in zip(got[1], want[1], strict=True):
        _assert_close(g, w)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_pytorch_cross_entropy(gen, reduction):
    hidden, weight, b = _head(gen)
    target = _target(gen)
    class_weight = torch.rand(V, generator=gen, dtype=torch.float64) + 0.5
    fused = losskit.fused_linear_cross_entropy(hidden, weight, target, bias=b, class_weight=class_weight,
                                               label_smoothing=0.15, reduction=reduction, chunk_size=16)
    torch_loss = TF.cross_entropy(hidden @ weight.T + b, target, weight=class_weight, label_smoothing=0.15,
                                  reduction=reduction)
    upstream = torch.rand(fused.shape, generator=gen, dtype=torch.float64)
    got = _values_and_grads(fused, (hidden, weight, b), upstream)
    want = _values_and_grads(torch_loss, (hidden, weight, b), upstream)
    _assert_close(got[0], want[0])
    for g, w in zip(got[1], want[1], strict=True):
        _assert_close(g, w)


def test_batched_hidden_and_target(gen):
    hidden = torch.randn(3, 7, D, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(V, D, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randint(V, (3, 7), generator=gen)
    target[1, 2:] = -100
    fused = losskit.fused_linear_cross_entropy(hidden, weight, target, reduction="none", chunk_size=4)
    assert fused.shape == (3, 7)
    naive = _naive_ce(hidden, weight, target, reduction="none")
    upstream = torch.randn(3, 7, generator=gen, dtype=torch.float64)
    got, want = _values_and_grads(fused, (hidden, weight), upstream), _values_and_grads(naive, (hidden, weight),
                                                                                        upstream)
    _assert_close(got[0], want[0])
    for g, w in zip(got[1], want[1], strict=True):
        _assert_close(g, w)


def test_none_then_per_token_weighting_gives_the_exact_weight_gradient(gen):
    """A per-token upstream gradient (sequence weights) reaches the weight gradient token by token."""
    hidden, weight, b = _head(gen)
    target = _target(gen, ignored_every=0)
    token_weight = torch.linspace(0.0, 3.0, N, dtype=torch.float64)
    fused = (losskit.fused_linear_cross_entropy(hidden, weight, target, bias=b, reduction="none") * token_weight)
    naive = (TF.cross_entropy(hidden @ weight.T + b, target, reduction="none") * token_weight)
    got = torch.autograd.grad(fused.sum(), (weight, b))
    want = torch.autograd.grad(naive.sum(), (weight, b))
    for g, w in zip(got, want, strict=True):
        _assert_close(g, w)
    # The uniform-gradient shortcut (average upstream weight times the unweighted gradient) differs.
    (uniform,) = torch.autograd.grad(
        TF.cross_entropy(hidden @ weight.T + b, target, reduction="sum") * token_weight.mean(), weight)
    assert (uniform - want[0]).abs().max() > 1e-2


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_every_token_ignored_gives_zero_with_a_zero_gradient(gen, reduction):
    hidden, weight, b = _head(gen)
    target = torch.full((N,), -100)
    loss = losskit.fused_linear_cross_entropy(hidden, weight, target, bias=b, label_smoothing=0.1, z_loss=0.1,
                                              reduction=reduction)
    assert torch.equal(loss, torch.zeros_like(loss))
    grads = torch.autograd.grad(loss.sum(), (hidden, weight, b))
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)


def test_empty_batch_gives_zero_with_a_gradient(gen):
    hidden, weight, b = _head(gen, n=0)
    for reduction in ("mean", "sum"):
        loss = losskit.fused_linear_cross_entropy(hidden, weight, torch.zeros(0, dtype=torch.long), bias=b,
                                                  reduction=reduction)
        assert loss.shape == () and loss.item() == 0.0
        grad_h, grad_w = torch.autograd.grad(loss, (hidden, weight))
        assert grad_h.shape == (0, D) and torch.equal(grad_w, torch.zeros_like(grad_w))


def test_normalizer_divides_the_weighted_sum(gen):
    hidden, weight, _ = _head(gen, bias=False)
    target = _target(gen)
    total = losskit.fused_linear_cross_entropy(hidden, weight, target, reduction="sum")
    (total_grad,) = torch.autograd.grad(total, weight)
    for normalizer in (64.0, torch.tensor(64.0, dtype=torch.float64)):
        loss = losskit.fused_linear_cross_entropy(hidden, weight, target, normalizer=normalizer)
        _assert_close(loss, total.detach() / 64.0)
        _assert_close(torch.autograd.grad(loss, weight)[0], total_grad / 64.0)


# --- low precision, inputs untouched, components -------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_half_precision_matches_float64_within_tolerance(gen, dtype, reduction):
    hidden, weight, b = _head(gen, dtype=dtype, scale=0.5)
    target = _target(gen)
    options = {"label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 4.0, "reduction": reduction, "chunk_size": 16}
    loss = losskit.fused_linear_cross_entropy(hidden, weight, target, bias=b, **options)
    assert loss.dtype == dtype
    upstream = torch.rand(loss.shape, generator=gen)
    grads = torch.autograd.grad(loss, (hidden, weight, b), upstream.to(dtype))
    assert [g.dtype for g in grads] == [dtype] * 3
    # float64 on the same rounded inputs: only the computation is judged
    h64, w64, b64 = (t.detach().double().requires_grad_() for t in (hidden, weight, b))
    ref = _naive_ce(h64, w64, target, bias=b64, **{k: v for k, v in options.items() if k != "chunk_size"})
    ref_grads = torch.autograd.grad(ref, (h64, w64, b64), upstream.double())
    tol = {"rtol": 2e-2, "atol": 2e-2}
    torch.testing.assert_close(loss.double(), ref, **tol)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g.double(), r, **tol)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_inputs_are_never_written(gen, reduction):
    hidden, weight, b = _head(gen)
    target = _target(gen)
    class_weight = torch.rand(V, generator=gen, dtype=torch.float64) + 0.5
    tensors = (hidden, weight, b, target, class_weight)
    clones = [t.detach().clone() for t in tensors]
    versions = [t._version for t in tensors]
    loss = losskit.fused_linear_cross_entropy(hidden, weight, target, bias=b, class_weight=class_weight,
                                              softcap=3.0, label_smoothing=0.1, reduction=reduction)
    loss.sum().backward()
    assert [t._version for t in tensors] == versions
    assert all(torch.equal(t.detach(), c) for t, c in zip(tensors, clones, strict=True))


def test_components_add_up_and_match_their_definitions(gen):
    hidden, weight, b = _head(gen, scale=2.0)
    target = _target(gen)
    valid = target != -100
    out = losskit.fused_linear_cross_entropy(hidden, weight, target, bias=b, z_loss=0.01, label_smoothing=0.1,
                                             return_components=True)
    assert isinstance(out, large_vocab.FusedCrossEntropyOutput)
    assert out.loss.requires_grad and not any(t.requires_grad for t in out[1:])
    logits = (hidden @ weight.T + b).detach()
    lse = torch.logsumexp(logits, 1)
    z_ref = 0.01 * lse[valid].square().mean()
    ce_ref = losskit.cross_entropy(logits, target, label_smoothing=0.1)
    _assert_close(out.z_loss, z_ref)
    _assert_close(out.cross_entropy, ce_ref)
    _assert_close(out.loss.detach(), ce_ref + z_ref)
    accuracy = (logits.argmax(1) == target)[valid].double().mean()
    _assert_close(out.accuracy, accuracy)
    per_token = losskit.fused_linear_cross_entropy(hidden, weight, target, bias=b, z_loss=0.01, reduction="none",
                                                   return_components=True)
    assert per_token.accuracy.shape == (N,) and per_token.accuracy[~valid].eq(0).all()
    _assert_close(per_token.z_loss[valid], 0.01 * lse[valid].square())
    # z_loss=0 contributes nothing, and is reported as 0
    off = losskit.fused_linear_cross_entropy(hidden, weight, target, bias=b, return_components=True)
    assert off.z_loss.item() == 0.0 and torch.equal(off.loss.detach(), off.cross_entropy)


def test_second_backward_with_retain_graph_recomputes_the_same_gradient(gen):
    hidden, weight, b = _head(gen)
    target = _target(gen)
    loss = losskit.fused_linear_cross_entropy(hidden, weight, target, bias=b) * 2.0
    first = torch.autograd.grad(loss, (hidden, weight, b), retain_graph=True)
    second = torch.autograd.grad(loss, (hidden, weight, b))
    for f, s in zip(first, second, strict=True):
        _assert_close(f, s)


def test_only_requested_gradients_and_no_grad_mode(gen):
    hidden, weight, _ = _head(gen, bias=False)
    frozen = weight.detach()
    target = _target(gen)
    loss = losskit.fused_linear_cross_entropy(hidden, frozen, target)
    (grad,) = torch.autograd.grad(loss, hidden)
    _assert_close(grad, torch.autograd.grad(_naive_ce(hidden, frozen, target), hidden)[0])
    with torch.no_grad():
        value = losskit.fused_linear_cross_entropy(hidden, weight, target)
    assert not value.requires_grad
    _assert_close(value, _naive_ce(hidden, weight, target).detach())


def test_second_derivatives_are_refused(gen):
    hidden, weight, _ = _head(gen, bias=False)
    loss = losskit.fused_linear_cross_entropy(hidden, weight, _target(gen))
    (grad,) = torch.autograd.grad(loss, hidden, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|double backward|does not require grad"):
        grad.sum().backward()


@pytest.mark.parametrize("options", [
    {"reduction": "sum", "label_smoothing": 0.2, "z_loss": 0.1, "softcap": 1.5},
    {"reduction": "none", "class_weight": torch.linspace(0.5, 2.0, 7, dtype=torch.float64)},
], ids=["sum", "none"])
def test_gradcheck(options):
    gen = torch.Generator().manual_seed(1)
    hidden, weight, b = _head(gen, n=5, d=3, v=7)
    target = torch.tensor([0, 3, -100, 6, 2])

    def fn(h, w, bias):
        return losskit.fused_linear_cross_entropy(h, w, target, bias=bias, chunk_size=2, **options)

    assert torch.autograd.gradcheck(fn, (hidden, weight, b))


# --- memory and chunk size ------------------------------------------------------------------------------


def test_never_holds_more_than_a_chunk_of_logits(gen):
    n, d, v, chunk = 256, 16, 1000, 32
    hidden, weight, b = _head(gen, n=n, d=d, v=v, dtype=torch.float32)
    target = _target(gen, n=n, v=v)

    def step():
        losskit.fused_linear_cross_entropy(hidden, weight, target, bias=b, chunk_size=chunk, softcap=5.0,
                                           label_smoothing=0.1).backward()

    peak = cpu_peak_bytes(step)
    grads = (n * d + v * d + v) * 4
    chunk_bytes = chunk * v * 4
    # logits, softcap derivative and a few per-token vectors; the full logits would be 1 MB
    assert peak < grads + 3 * chunk_bytes < n * v * 4


def test_chunk_size_follows_the_memory_budget():
    cpu = torch.device("cpu")
    rows = large_vocab._chunk_rows(100_000, 32_000, torch.float32, cpu, 2, None)
    assert rows % 8 == 0 and rows * 32_000 * 4 * 2 <= 64 * 2**20 < (rows + 8) * 32_000 * 4 * 2
    assert large_vocab._chunk_rows(10, 32_000, torch.float32, cpu, 2, None) == 10
    assert large_vocab._chunk_rows(100, 32_000, torch.float32, cpu, 2, 7) == 7
    assert large_vocab._chunk_rows(100, 10**9, torch.float32, cpu, 2, None) == 1


# --- errors ----------------------------------------------------------------------------------------------


def test_errors_name_the_argument(gen):
    hidden, weight, _ = _head(gen, bias=False)
    target = _target(gen)
    fn = losskit.fused_linear_cross_entropy
    with pytest.raises(ValueError, match="weight must have shape"):
        fn(hidden, weight[:, :3], target)
    with pytest.raises(ValueError, match="target must have shape"):
        fn(hidden, weight, target[:-1])
    with pytest.raises(TypeError, match="target must hold integer"):
        fn(hidden, weight, target.double())
    with pytest.raises(TypeError, match="weight must have hidden's dtype"):
        fn(hidden, weight.float(), target)
    with pytest.raises(ValueError, match="bias must have shape"):
        fn(hidden, weight, target, bias=torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="class_weight must have shape"):
        fn(hidden, weight, target, class_weight=torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="target has class indices outside"):
        fn(hidden, weight, torch.full((N,), V))
    with pytest.raises(ValueError, match="reduction"):
        fn(hidden, weight, target, reduction="avg")
    with pytest.raises(ValueError, match="normalizer"):
        fn(hidden, weight, target, reduction="sum", normalizer=3.0)
    with pytest.raises(ValueError, match="chunk_size"):
        fn(hidden, weight, target, chunk_size=0)
    with pytest.raises(TypeError, match="chunk_size"):
        fn(hidden, weight, target, chunk_size=2.0)
    with pytest.raises(ValueError, match="softcap"):
        fn(hidden, weight, target, softcap=0.0)
    with pytest.raises(ValueError, match="loss is not finite: hidden contains"):
        fn(hidden.detach().index_fill(0, torch.tensor([1]), float("nan")), weight, target)


# --- divergences -------------------------------------------------------------------------------------------


def _teacher_student(gen, teacher_grad):
    student = _head(gen, d=6, scale=1.5)
    teacher = _head(gen, d=9, bias=False, scale=1.5)
    if not teacher_grad:
        teacher = [t if t is None else t.detach() for t in teacher]
    return student, teacher


@pytest.mark.parametrize(("kind", "temperature", "reduction", "teacher_grad"), [
    ("kl", 1.0, "mean", False), ("kl", 2.0, "none", True), ("kl", 0.7, "sum", True),
    ("js", 1.0, "mean", True), ("js", 2.0, "none", False), ("js", 3.0, "normalizer", True),
])
def test_divergences_match_their_naive_forms(gen, kind, temperature, reduction, teacher_grad):
    (hs, ws, bs), (ht, wt, _) = _teacher_student(gen, teacher_grad)
    target = _target(gen, ignored_every=3)
    token_weight = torch.rand(N, generator=gen, dtype=torch.float64) + 0.5
    options = REDUCTIONS[reduction]
    s = (hs @ ws.T + bs) / temperature
    log_p = torch.log_softmax((ht @ wt.T) / temperature, dim=-1)
    masked_weight = torch.where(target != -100, token_weight, 0.0)
    if kind == "kl":
        fused = losskit.fused_linear_kl_div(hs, ws, ht, wt, student_bias=bs, target=target, weight=token_weight,
                                            temperature=temperature, chunk_size=8, **options)
        naive = losskit.kl_div(s, log_p, log_target=True, weight=masked_weight, **options)
    else:
        fused = losskit.fused_linear_js_div(hs, ws, ht, wt, beta=0.3, student_bias=bs, target=target,
                                            weight=token_weight, temperature=temperature, chunk_size=8, **options)
        naive = losskit.js_div(s, log_p, beta=0.3, log_target=True, weight=masked_weight, **options)
    wrt = (hs, ws, bs, *((ht, wt) if teacher_grad else ()))
    upstream = torch.randn(fused.shape, generator=gen, dtype=torch.float64)
    got, want = _values_and_grads(fused, wrt, upstream), _values_and_grads(naive, wrt, upstream)
    _assert_close(got[0], want[0])
    for g, w in zip(got[1], want[1], strict=True):
        _assert_close(g, w)


def test_divergences_with_probability_targets_and_no_mask(gen):
    """The log-target form used above equals kl_div/js_div with the teacher's probabilities."""
    (hs, ws, _), (ht, wt, _) = _teacher_student(gen, False)
    p = torch.softmax(ht @ wt.T, -1)
    _assert_close(losskit.fused_linear_kl_div(hs, ws, ht, wt), losskit.kl_div(hs @ ws.T, p))
    _assert_close(losskit.fused_linear_js_div(hs, ws, ht, wt), losskit.js_div(hs @ ws.T, p))
    assert losskit.fused_linear_kl_div(hs, ws, hs, ws).abs().item() < 1e-12  # the same head: 0
    batched = losskit.fused_linear_js_div(hs[:36].view(4, 9, -1), ws, ht[:36].view(4, 9, -1), wt, reduction="none")
    assert batched.shape == (4, 9)
    _assert_close(batched.flatten(), losskit.js_div(hs[:36] @ ws.T, p[:36], reduction="none"))


def test_divergences_gradcheck_and_frozen_teacher():
    gen = torch.Generator().manual_seed(2)
    hs, ws, bs = _head(gen, n=3, d=2, v=5)
    ht, wt, _ = _head(gen, n=3, d=2, v=5, bias=False)
    target = torch.tensor([1, -100, 3])

    def fn(*tensors):
        a = losskit.fused_linear_js_div(tensors[0], tensors[1], tensors[3], tensors[4], student_bias=tensors[2],
                                        target=target, beta=0.4, temperature=1.5, reduction="none", chunk_size=2)
        b = losskit.fused_linear_kl_div(tensors[0], tensors[1], tensors[3], tensors[4], student_bias=tensors[2],
                                        temperature=2.0, reduction="sum", chunk_size=2)
        return a, b

    assert torch.autograd.gradcheck(fn, (hs, ws, bs, ht, wt))
    loss = losskit.fused_linear_kl_div(hs, ws, ht.detach(), wt.detach())
    loss.backward()
    assert ht.grad is None and wt.grad is None and hs.grad is not None


def test_divergence_errors(gen):
    (hs, ws, _), (ht, wt, _) = _teacher_student(gen, False)
    with pytest.raises(ValueError, match="beta"):
        losskit.fused_linear_js_div(hs, ws, ht, wt, beta=1.0)
    with pytest.raises(ValueError, match="temperature"):
        losskit.fused_linear_kl_div(hs, ws, ht, wt, temperature=0.0)
    with pytest.raises(ValueError, match="teacher_weight must have student_weight's vocabulary"):
        losskit.fused_linear_kl_div(hs, ws, ht, wt[:-1])
    with pytest.raises(ValueError, match="teacher_hidden must have student_hidden's token shape"):
        losskit.fused_linear_kl_div(hs, ws, ht[:-1], wt)
    with pytest.raises(ValueError, match="weight must be broadcastable"):
        losskit.fused_linear_kl_div(hs, ws, ht, wt, weight=torch.ones(3))


def test_divergence_empty_and_fully_ignored_give_zero(gen):
    (hs, ws, _), (ht, wt, _) = _teacher_student(gen, False)
    loss = losskit.fused_linear_js_div(hs, ws, ht, wt, target=torch.full((N,), -100))
    assert loss.item() == 0.0
    assert torch.equal(torch.autograd.grad(loss, ws)[0], torch.zeros_like(ws))


# --- modules ----------------------------------------------------------------------------------------------


def test_modules_equal_their_functions_and_carry_class_weights(gen):
    hidden, weight, b = _head(gen)
    target = _target(gen)
    class_weight = torch.rand(V, generator=gen, dtype=torch.float64) + 0.5
    module = lnn.FusedLinearCrossEntropyLoss(class_weight=class_weight, z_loss=1e-3)
    assert not list(module.parameters())  # the head's weight is the caller's
    _assert_close(module(hidden, weight, target, b),
                  losskit.fused_linear_cross_entropy(hidden, weight, target, bias=b, class_weight=class_weight,
                                                     z_loss=1e-3))
    assert module.to(torch.float32).class_weight.dtype == torch.float32
    with pytest.raises(TypeError, match="unexpected option 'bias'"):
        lnn.FusedLinearCrossEntropyLoss(bias=b)
    (hs, ws, _), (ht, wt, _) = _teacher_student(gen, False)
    kl = lnn.FusedLinearKLDivLoss(temperature=2.0)
    _assert_close(kl(hs, ws, ht, wt, target=target), losskit.fused_linear_kl_div(hs, ws, ht, wt, target=target,
                                                                                 temperature=2.0))
    js = lnn.FusedLinearJSDivLoss(beta=0.2, reduction="sum")
    _assert_close(js(hs, ws, ht, wt), losskit.fused_linear_js_div(hs, ws, ht, wt, beta=0.2, reduction="sum"))
    assert "FusedLinear" not in " ".join(losskit.available())  # not registered: see docs/large_vocab.md


# --- the example and the benchmark -------------------------------------------------------------------------


def test_language_model_example_trains_and_the_loss_falls():
    out = subprocess.run([sys.executable, str(ROOT / "examples/train_lm.py"), "--steps", "60"],
                         capture_output=True, text=True, check=True, timeout=300).stdout
    losses = [float(m) for m in re.findall(r"step +\d+ +loss +([\d.]+)", out)]
    assert len(losses) >= 3 and losses[-1] < 0.8 * losses[0]


@pytest.mark.slow
def test_benchmark_smoke():
    from benchmarks import bench_large_vocab

    text = bench_large_vocab.main(["--smoke"])
    assert "fused" in text and "naive" in text and "added memory" in text


FUSED = {
    "cross_entropy": lambda s, t, target, **kw: losskit.fused_linear_cross_entropy(
        *s[:2], target, bias=s[2], label_smoothing=0.1, z_loss=1e-3, **kw),
    "kl_div": lambda s, t, target, **kw: losskit.fused_linear_kl_div(
        *s[:2], *t[:2], student_bias=s[2], target=target, **kw),
    "js_div": lambda s, t, target, **kw: losskit.fused_linear_js_div(
        *s[:2], *t[:2], student_bias=s[2], target=target, **kw),
}


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("name", sorted(FUSED))
def test_ignored_tokens_may_hold_nan_or_inf(gen, name, reduction, value):
    # An ignored token's hidden row entered the weight gradient as 0 * NaN, so every gradient
    # (hidden, weight, bias) came back NaN behind a finite loss. Now the result equals that of the
    # same batch with finite rows there, and the ignored rows' gradient is exactly 0.
    student, teacher = _teacher_student(gen, teacher_grad=False)
    target = _target(gen)
    ignored = target == -100
    results = []
    for poison in (False, True):
        s = [None if x is None else x.detach().clone() for x in student]
        t = [None if x is None else x.detach().clone() for x in teacher]
        if poison:
            s[0][ignored] = value
            t[0][ignored] = value
        s = [None if x is None else x.requires_grad_() for x in s]
        loss = FUSED[name](s, t, target, reduction=reduction, chunk_size=8)
        upstream = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).view(loss.shape)
        results.append(_values_and_grads(loss, s, upstream))
    (expected, grads), (loss, poisoned_grads) = results
    _assert_close(loss, expected)
    assert (poisoned_grads[0][ignored] == 0).all()
    for got, want in zip(poisoned_grads, grads, strict=True):
        _assert_close(got, want)


def test_a_vocabulary_block_takes_at_most_an_eighth_of_the_tokens_per_chunk():
    # The 2-rank benchmark's shape (2048 tokens, 16,032 classes a rank): the 64 MiB CPU budget
    # alone gives 344-row chunks (14.4% of the naive block's logits and gradient); a block takes
    # 2048 / 8 = 256 (7.1%), never fewer than 128 rows, and never more than the budget allows.
    from losskit.functional.large_vocab import _chunk_rows

    cpu = torch.device("cpu")
    assert _chunk_rows(2048, 16032, torch.float32, cpu, 3, None) == 344
    assert _chunk_rows(2048, 16032, torch.float32, cpu, 3, None, sharded=True) == 256
    assert _chunk_rows(512, 16032, torch.float32, cpu, 3, None, sharded=True) == 128
    assert _chunk_rows(100_000, 128_256, torch.float32, cpu, 3, None, sharded=True) == 40
    assert _chunk_rows(2048, 16032, torch.float32, cpu, 3, 64, sharded=True) == 64  # chunk_size wins
