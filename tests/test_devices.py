"""What every loss does off the CPU: no host synchronization, and CUDA graph capture.

A forward pass that reads a value back to the host (``.item()``, ``bool(tensor)``, boolean-mask
indexing, ``nonzero``, ``unique``) stalls a GPU and breaks ``torch.compile(fullgraph=True)``.
Without a GPU the "meta" device finds every such read: its tensors have shapes and no data, so each
of those calls raises there, and the losses take the same non-CPU code paths (chunk sizes, kernels'
torch fallback) as on CUDA. With CUDA, ``tests/test_contract.py`` also runs every loss under
``torch.cuda.set_sync_debug_mode("error")``, and the capture tests below run.
"""

from __future__ import annotations

import pytest
import torch

import losskit
from losskit import examples as specs
from losskit._core.registry import entry

SPECS = specs.accuracy_specs()
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _function(name: str, spec: specs.Spec):
    return spec.function if spec.function is not None else entry(name).cls.function


def _moved(case: specs.Case, device: str) -> specs.Case:
    def move(x):
        return x.to(device) if isinstance(x, torch.Tensor) else x
    return specs.Case(move(case.input), move(case.target), {k: move(v) for k, v in case.kwargs.items()})


def _regimes() -> list:
    params = []
    for name, spec in sorted(SPECS.items()):
        for regime_name in spec.regimes:
            marks = [pytest.mark.slow] if regime_name == "large" else []
            params.append(pytest.param(name, regime_name, marks=marks, id=f"{name}-{regime_name}"))
    return params


@pytest.mark.parametrize(("name", "regime_name"), _regimes())
def test_no_host_read_in_forward_or_backward_with_value_checks_off(name, regime_name):
    """Every registered loss and fused head, in every input regime of its spec (the large ones take
    the chunked paths) and every reduction it states, runs forward and backward on the meta device."""
    spec = SPECS[name]
    regime = spec.regimes[regime_name]
    case = _moved(regime.make(torch.Generator().manual_seed(0)), "meta")
    fn = _function(name, spec)
    for reduction in regime.reductions:
        x = case.input.detach().requires_grad_(True)
        with losskit.set_checks(False):
            out = fn(x, case.target, **{**case.kwargs, "reduction": reduction})
            (grad,) = torch.autograd.grad(out.sum(), x)
        assert out.device.type == "meta" and grad.shape == x.shape


def test_the_meta_device_catches_each_kind_of_host_read():
    """The proxy above is only as good as this: each way a loss could read a value raises on meta."""
    x = torch.randn(4, device="meta")
    reads = [lambda: x.sum().item(), lambda: bool(x.sum() > 0), lambda: x[x > 0], lambda: x.nonzero(),
             lambda: x.tolist(), lambda: torch.unique(x), lambda: float(x.max())]
    for read in reads:
        with pytest.raises((RuntimeError, NotImplementedError)):
            read()


# Elementwise and region losses: one static-shape step is captured once and replayed on new data.
CAPTURED_FAMILIES = ("regression", "classification", "segmentation")
CAPTURED = sorted(name for name in specs.registry() if entry(name).family in CAPTURED_FAMILIES)


@CUDA
@pytest.mark.parametrize("name", CAPTURED)
def test_elementwise_and_region_losses_capture_in_a_cuda_graph(name):
    spec = specs.registry()[name]
    fn = entry(name).cls.function
    first = _moved(spec.make(4, torch.Generator().manual_seed(0)), "cuda")
    second = _moved(spec.make(4, torch.Generator().manual_seed(1)), "cuda")
    static = first.input.detach().clone().requires_grad_(True)

    def step():
        static.grad = None
        out = fn(static, first.target, **first.kwargs)
        out.backward()
        return out

    with losskit.set_checks(False):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up off the capture: lazy initialisation, kernel selection
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        static.grad = None
        with torch.cuda.graph(graph):
            captured = step()
        with torch.no_grad():
            static.copy_(second.input)
        graph.replay()
        torch.cuda.synchronize()
        replayed, replayed_grad = captured.detach().clone(), static.grad.detach().clone()

        x = second.input.detach().clone().requires_grad_(True)
        eager = fn(x, first.target, **first.kwargs)
        eager.backward()
    torch.testing.assert_close(replayed, eager.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(replayed_grad, x.grad, rtol=1e-6, atol=1e-7)
