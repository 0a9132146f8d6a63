"""``torch.compile(fullgraph=True)`` traces the losses without graph breaks and matches eager mode.

Value checks are skipped while tracing (they would need a host sync), so no data-dependent
branch remains in the graph. Every registered loss is compiled on its contract case
(``losskit/examples/``) with ``backend="aot_eager"``: dynamo's capture and AOT autograd's
functionalization, which find every graph break and every autograd difference, without the
seconds of code generation Inductor takes. Inductor itself compiles a few representative paths,
among them the two that branch under compile: the fused segmentation kernels (eager) against the
plain form the compiler fuses, and the row-wise box path (``_core/rowwise.py``).
"""

import pytest
import torch

import losskit
from losskit import examples as specs
from losskit._core.registry import entry

SPECS = specs.registry()

# Inductor: cross-entropy; the others run with aot_eager.
CASES = {
    "cross_entropy": (lambda x, t: losskit.cross_entropy(x, t, label_smoothing=0.1, z_loss=1e-3), "index"),
    "sigmoid_focal": (lambda x, t: losskit.sigmoid_focal_loss(x, t), "soft"),
    "huber": (lambda x, t: losskit.huber_loss(x, t, delta=0.5), "soft"),
    "kl_div": (lambda x, t: losskit.kl_div(x, t.softmax(1)), "soft"),
    "varifocal": (lambda x, t: losskit.varifocal_loss(x, t), "soft"),
    "distribution_focal": (lambda x, t: losskit.distribution_focal_loss(x, t[:, 0] * 3.5), "soft"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_fullgraph_compile_matches_eager(name):
    fn, kind = CASES[name]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 5, generator=gen)
    target = torch.randint(5, (8,), generator=gen) if kind == "index" else torch.rand(8, 5, generator=gen)
    if kind == "index":
        target[0] = -100
    x_eager, x_compiled = x.clone().requires_grad_(), x.clone().requires_grad_()
    eager = fn(x_eager, target)
    backend = "inductor" if name == "cross_entropy" else "aot_eager"
    compiled = torch.compile(fn, fullgraph=True, dynamic=False, backend=backend)(x_compiled, target)
    torch.testing.assert_close(compiled, eager)
    eager.backward()
    compiled.backward()
    torch.testing.assert_close(x_compiled.grad, x_eager.grad)


@pytest.mark.slow
def test_changing_a_float_option_does_not_break_the_graph():
    # A recompile with a new alpha traces it as a symbolic float; option checks must stay traceable.
    fn = torch.compile(lambda x, t, alpha: losskit.sigmoid_focal_loss(x, t, alpha=alpha), fullgraph=True)
    x, t = torch.randn(8), torch.rand(8)
    for alpha in (0.25, 0.5, 0.75):
        torch.testing.assert_close(fn(x, t, alpha), losskit.sigmoid_focal_loss(x, t, alpha=alpha))


def _compiled_matches_eager(fn, input: torch.Tensor, target, backend: str) -> None:
    """Value and input gradient of ``torch.compile(fn, fullgraph=True)`` against eager mode."""
    torch._dynamo.reset()
    x_eager, x_compiled = (input.detach().clone().requires_grad_() for _ in range(2))
    eager = fn(x_eager, target)
    compiled = torch.compile(fn, fullgraph=True, dynamic=False, backend=backend)(x_compiled, target)
    torch.testing.assert_close(compiled, eager)
    eager.backward()
    compiled.backward()
    torch.testing.assert_close(x_compiled.grad, x_eager.grad)


# Losses that trace as one graph (backend="eager" passes fullgraph=True) but that AOT autograd
# cannot functionalize, so they do not compile with aot_eager or Inductor (docs/guides/compile.md).
# hausdorff_dt: the distance transform writes its results in place into views of a buffer, which
# functionalization turns into a view of a strided tensor that PyTorch 2.13 refuses.
DYNAMO_ONLY = {"hausdorff_dt"}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_registered_loss_compiles_to_one_graph(name):
    case = SPECS[name].make(4, torch.Generator().manual_seed(0))
    function = entry(name).cls.function

    def fn(x, t):
        return function(x, t, **case.kwargs)

    if name in DYNAMO_ONLY:
        _compiled_matches_eager(fn, case.input, case.target, "eager")  # the documented way: traced, not compiled
        with pytest.raises(torch._dynamo.exc.BackendCompilerFailed):  # fails the day it compiles: update the docs
            _compiled_matches_eager(fn, case.input, case.target, "aot_eager")
        return
    _compiled_matches_eager(fn, case.input, case.target, "aot_eager")


def _segmentation_case():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 8, 8, generator=gen), torch.randint(3, (2, 8, 8), generator=gen)


def _boxes_case():
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(16, 2, generator=gen) * 50
    pred = torch.cat([xy, xy + 5 + torch.rand(16, 2, generator=gen) * 20], 1)
    target = pred.detach() + torch.randn(16, 4, generator=gen)
    target[:, 2:] = torch.maximum(target[:, 2:], target[:, :2] + 1)
    return pred, target


# Inductor on the paths that branch under compile: eager runs the fused softmax / sigmoid region
# statistics and the row-wise box kernel (gradient computed in forward); compiled, the plain forms.
INDUCTOR = {
    "dice_softmax_fused": (lambda x, t: losskit.dice_loss(x, t), _segmentation_case),
    "dice_ce_sigmoid_fused": (lambda x, t: losskit.dice_ce_loss(x, torch.nn.functional.one_hot(t, 3).movedim(-1, 1)
                                                                 .float(), activation="sigmoid"), _segmentation_case),
    "ciou_rowwise": (lambda x, t: losskit.ciou_loss(x, t), _boxes_case),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(INDUCTOR))
def test_inductor_matches_the_eager_kernels(name):
    fn, make = INDUCTOR[name]
    x, target = make()
    _compiled_matches_eager(fn, x, target, "inductor")
