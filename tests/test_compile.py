"""``torch.compile(fullgraph=True)`` traces the losses without graph breaks and matches eager mode.

Value checks are skipped while tracing (they would need a host sync), so no data-dependent
branch remains in the graph. One compile per loss costs seconds, so a representative few run.
"""

import pytest
import torch

import losskit

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
    compiled = torch.compile(fn, fullgraph=True, dynamic=False)(x_compiled, target)
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
