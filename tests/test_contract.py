"""The contract every registered loss keeps, checked without per-loss code (see losskit/examples/).

For each loss: reductions agree with each other and with the weighted mean, ``"none"`` has the
declared natural-unit shape, empty input gives 0 with a gradient, every floating dtype returns
its own dtype and agrees with float64, the module equals the function, configs round-trip,
``.to()`` moves tensor options, float64 gradcheck (and gradgradcheck where smooth) passes,
and a bad reduction or a target of the wrong shape raises a ``ValueError`` naming the argument.
"""

from __future__ import annotations

import inspect

import pytest
import torch

import losskit
from losskit import examples as specs
from losskit._core.registry import entry
from losskit.examples import classification as spec_classification

SPECS = specs.registry()
CASES = {**{name: (name, spec) for name, spec in SPECS.items()},
         **{f"{name}[soft]": (name, spec) for name, spec in spec_classification.SOFT_TARGET_SPECS.items()}}
IDS = sorted(CASES)
DTYPE_TOL = {torch.float32: (1e-5, 1e-6), torch.float16: None, torch.bfloat16: None}


def close(actual, expected, rtol=1e-7, atol=1e-9):
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def call(name, case, **options):
    fn = entry(name).cls.function
    return fn(case.input, case.target, **{**case.kwargs, **options})


def make(key, n=4, seed=0, device="cpu"):
    name, spec = CASES[key]
    gen = torch.Generator().manual_seed(seed)
    return name, spec, on_device(spec.make(n, gen), device), gen


# Every device the suite runs the device-parametrized checks on: the CPU, and CUDA where there is one.
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


def on_device(case, device):
    """The case with its input, target and tensor options on ``device`` (made on the CPU)."""
    def move(x):
        return x.to(device) if isinstance(x, torch.Tensor) else x
    return specs.Case(move(case.input), move(case.target), {k: move(v) for k, v in case.kwargs.items()})


def test_every_registered_loss_has_a_spec():
    assert sorted(SPECS) == losskit.available()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("key", IDS)
def test_reductions_agree_and_none_has_the_natural_unit(key, device):
    name, spec, case, _ = make(key, device=device)
    none = call(name, case, reduction="none")
    assert tuple(none.shape) == spec.unit_shape(case)
    close(call(name, case, reduction="sum"), none.sum())
    counted = torch.ones_like(none, dtype=torch.bool) if spec.counted is None else spec.counted(case)
    close(call(name, case, reduction="mean"), none.sum() / counted.sum())
    close(call(name, case, normalizer=7.0), none.sum() / 7.0)
    close(call(name, case, normalizer=torch.tensor(7.0, dtype=torch.float64)), none.sum() / 7.0)


@pytest.mark.parametrize("key", [key for key in IDS if CASES[key][1].weight is not None])  # the others take none
def test_mean_is_the_weighted_mean(key):
    name, spec, case, gen = make(key)
    weight, effective = spec.weight(case, gen)
    none = call(name, case, weight=weight, reduction="none")
    close(call(name, case, weight=weight, reduction="sum"), none.sum())
    close(call(name, case, weight=weight), none.sum() / effective.sum())
    # Scaling every weight by the same factor leaves the weighted mean unchanged.
    close(call(name, case, weight=weight * 3.0), call(name, case, weight=weight))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("key", IDS)
def test_empty_input_gives_zero_with_a_gradient(key, device):
    name, spec, case, _ = make(key, n=0, device=device)
    case.input.requires_grad_(True)
    for reduction in ("mean", "sum"):
        out = call(name, case, reduction=reduction)
        assert out.shape == () and out.item() == 0.0
        (grad,) = torch.autograd.grad(out, case.input)
        assert grad.shape == case.input.shape
    assert tuple(call(name, case, reduction="none").shape) == spec.unit_shape(case)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("key", IDS)
def test_dtype_in_dtype_out_and_agreement_with_float64(key, dtype):
    name, spec, case64, _ = make(key)
    expected = call(name, case64, reduction="none")
    case = case64.cast(dtype)
    case.input.requires_grad_(True)
    out = call(name, case, reduction="none")
    assert out.dtype == dtype
    rtol, atol = spec.low_precision_tol if dtype in (torch.float16, torch.bfloat16) else (1e-5, 1e-6)
    # Compare with float64 evaluated on the same (rounded) inputs, so only the computation is judged.
    rounded = call(name, case.cast(torch.float64), reduction="none")
    close(out.double(), rounded, rtol=rtol, atol=atol)
    assert expected.shape == out.shape
    (grad,) = torch.autograd.grad(out.sum(), case.input)
    assert grad.dtype == dtype and torch.isfinite(grad).all()


def _options_and_call_kwargs(spec, case):
    options = {k: v for k, v in case.kwargs.items() if k not in spec.grad_kwargs}
    per_call = {k: v for k, v in case.kwargs.items() if k in spec.grad_kwargs}
    return options, per_call


@pytest.mark.parametrize("key", IDS)
def test_module_matches_function_and_config_round_trips(key):
    name, spec, case, gen = make(key)
    options, per_call = _options_and_call_kwargs(spec, case)
    module = losskit.get(name, **options)
    expected = call(name, case)
    close(module(case.input, case.target, **per_call), expected, rtol=1e-6, atol=1e-8)
    rebuilt = losskit.get(module.get_config())
    assert type(rebuilt) is type(module)
    assert rebuilt.get_config() == module.get_config()
    close(rebuilt.double()(case.input, case.target, **per_call), expected, rtol=1e-6, atol=1e-8)
    assert type(module).__name__ in repr(module)
    if spec.weight is not None:  # per-batch options pass through forward
        weight, _ = spec.weight(case, gen)
        close(module(case.input, case.target, weight=weight, **per_call), call(name, case, weight=weight),
              rtol=1e-6, atol=1e-8)


def _tensor_options(spec) -> dict[str, torch.Tensor]:
    """The tensor options (class weights, priors, reference values) the spec's module is built with."""
    options, _ = _options_and_call_kwargs(spec, spec.make(2, torch.Generator().manual_seed(0)))
    return {k: torch.as_tensor(v, dtype=v.dtype if isinstance(v, torch.Tensor) else torch.get_default_dtype())
            for k, v in options.items() if isinstance(v, torch.Tensor) or _numbers(v)}


def _numbers(value) -> bool:
    """A (nested) list of numbers: a config's form of a tensor option."""
    return isinstance(value, (list, tuple)) and bool(value) and all(
        _numbers(v) or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in value)


TENSOR_OPTIONS = {name: _tensor_options(spec) for name, spec in SPECS.items()}


@pytest.mark.parametrize("name", sorted(n for n, options in TENSOR_OPTIONS.items() if options))
def test_to_moves_tensor_options(name):
    options, _ = _options_and_call_kwargs(SPECS[name], SPECS[name].make(2, torch.Generator().manual_seed(0)))
    module = losskit.get(name, **options)
    tensors = TENSOR_OPTIONS[name]
    # A tensor option is a buffer, or a parameter where the loss learns it (metric-learning proxies).
    held = {**dict(module.named_buffers()), **dict(module.named_parameters())}
    assert sorted(held) == sorted(tensors), "every tensor option is a buffer or a parameter"
    module = module.to(torch.float64)
    state = module.state_dict()
    for key, value in tensors.items():
        buffer = getattr(module, key)
        assert buffer.dtype == torch.float64, key
        torch.testing.assert_close(buffer, value.to(torch.float64))  # moved, not replaced
        assert state[key].data_ptr() == buffer.data_ptr()  # saved with the module
        if key in dict(module.named_buffers()):  # a learned parameter goes to forward's call itself
            assert module.options()[key] is buffer  # what forward passes to the function


@pytest.mark.parametrize("key", IDS)
def test_gradcheck_float64(key):
    name, spec, case, _ = make(key, n=2)
    names = ["input", *spec.grad_kwargs]
    tensors = [case.input, *(case.kwargs[k] for k in spec.grad_kwargs)]
    tensors = [t.detach().clone().requires_grad_(True) for t in tensors]

    def fn(*args):
        kwargs = {**case.kwargs, **dict(zip(names[1:], args[1:], strict=True))}
        return entry(name).cls.function(args[0], case.target, **kwargs, reduction="sum")

    assert torch.autograd.gradcheck(fn, tensors)
    if spec.gradgrad:
        assert torch.autograd.gradgradcheck(fn, tensors)


@pytest.mark.parametrize("key", IDS)
def test_bad_reduction_and_wrong_target_shape_raise_naming_the_argument(key):
    name, _, case, _ = make(key)
    with pytest.raises(ValueError, match="reduction"):
        call(name, case, reduction="avg")
    with pytest.raises(ValueError, match="normalizer"):
        call(name, case, reduction="sum", normalizer=3.0)
    short = case.target.narrow(-1, 0, case.target.shape[-1] - 1)
    with pytest.raises(ValueError, match="target"):
        call(name, specs.Case(case.input, short, case.kwargs))


# A tensor argument on another device than the input is caught by the cheap checks, before any
# value check or kernel, with both names and both devices. The "meta" device stands in for a second
# device on a machine without CUDA: torch's own error there would name no argument.
OTHER_DEVICES = ["meta", pytest.param("cuda", marks=CUDA)]


def _tensor_arguments(name, spec, case):
    """The call's tensor arguments besides the input, by name, as ``(name, case with it moved)``."""
    target_name = list(inspect.signature(entry(name).cls.function).parameters)[1]  # "target", or its RL name
    moved = [(target_name, lambda d: specs.Case(case.input, case.target.to(d), case.kwargs))]
    for key, value in case.kwargs.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            moved.append((key, lambda d, key=key: specs.Case(case.input, case.target,
                                                              {**case.kwargs, key: case.kwargs[key].to(d)})))
    if spec.weight is not None:
        weight, _ = spec.weight(case, torch.Generator().manual_seed(1))
        moved.append(("weight", lambda d: specs.Case(case.input, case.target, {**case.kwargs, "weight": weight.to(d)})))
    return moved


@pytest.mark.parametrize("other", OTHER_DEVICES)
@pytest.mark.parametrize("checks", [True, False], ids=["checks-on", "checks-off"])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_an_argument_on_another_device_raises_naming_both_devices(name, checks, other):
    spec = SPECS[name]
    case = spec.make(3, torch.Generator().manual_seed(0))
    for argument, on_other in _tensor_arguments(name, spec, case):
        with losskit.set_checks(checks), pytest.raises(ValueError) as raised:
            call(name, on_other(other))
        message = str(raised.value)
        assert argument in message and other in message and "cpu" in message, (argument, message)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_module_rejects_unknown_options_with_a_suggestion(name):
    with pytest.raises(TypeError, match="did you mean 'reduction'"):
        losskit.get(name, reductoin="sum")


def _value_and_grad(name, case):
    x = case.input.detach().clone().requires_grad_(True)
    out = entry(name).cls.function(x, case.target, **{**case.kwargs, "reduction": "none"})
    (grad,) = torch.autograd.grad(out.sum(), x)
    return out.detach().cpu(), grad.cpu()


@CUDA
@pytest.mark.parametrize("key", IDS)
def test_cuda_gives_the_cpu_values_and_gradients_in_float64(key):
    name, _, case, _ = make(key)
    cpu_value, cpu_grad = _value_and_grad(name, case)
    cuda_value, cuda_grad = _value_and_grad(name, on_device(case, "cuda"))
    close(cuda_value, cpu_value, rtol=1e-10, atol=1e-12)
    close(cuda_grad, cpu_grad, rtol=1e-10, atol=1e-12)


@CUDA
@pytest.mark.parametrize("key", IDS)
def test_no_host_synchronization_on_cuda_with_value_checks_off(key):
    name, _, case, _ = make(key, device="cuda")
    case.input.requires_grad_(True)
    with losskit.set_checks(False):
        torch.cuda.set_sync_debug_mode("error")
        try:
            call(name, case).backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
