"""Metric-learning losses with class proxies: live parity with pytorch-metric-learning 2.9, float64
references written from the papers, and the module forms' learned proxies.

The contract suite (tests/test_contract.py via losskit/examples/metric.py), the accuracy contract and the
hostile-input properties cover these losses too; this file checks what is particular to them.
"""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import losses as pml

import losskit
import losskit.functional as LF
from losskit._core.registry import entry
from losskit.metric import ProxyLoss

N, C, D = 24, 7, 6
PML_ARC_MARGIN = math.radians(28.6)  # pytorch-metric-learning's ArcFace margin is in degrees
CENTRES_PER_CLASS = {"sub_center_arcface": 3, "soft_triple": 10}  # the modules' defaults, as the peer's
PROXY_LOSSES = [name for name in losskit.available("metric") if issubclass(entry(name).cls, ProxyLoss)]


def _batch(seed: int = 0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((N, D), generator=gen, dtype=dtype)
    y = torch.randint(C, (N,), generator=gen)
    return x, y


# --- live parity with pytorch-metric-learning ------------------------------------------------------

PARITY = [
    # (peer class, peer kwargs, losskit function, losskit options, proxies from the peer's W (D, C))
    (pml.ArcFaceLoss, {}, LF.arcface_loss, {"margin": PML_ARC_MARGIN}),
    (pml.ArcFaceLoss, {"margin": 10.0, "scale": 30.0}, LF.arcface_loss,
     {"margin": math.radians(10.0), "scale": 30.0}),
    (pml.CosFaceLoss, {}, LF.cosface_loss, {}),
    (pml.CosFaceLoss, {"margin": 0.2, "scale": 16.0}, LF.cosface_loss, {"margin": 0.2, "scale": 16.0}),
    (pml.SphereFaceLoss, {}, LF.sphereface_loss, {}),
    (pml.SphereFaceLoss, {"margin": 3, "scale": 2.0}, LF.sphereface_loss, {"margin": 3, "scale": 2.0}),
    (pml.LargeMarginSoftmaxLoss, {}, LF.large_margin_softmax_loss, {}),
    (pml.LargeMarginSoftmaxLoss, {"margin": 2}, LF.large_margin_softmax_loss, {"margin": 2}),
    (pml.NormalizedSoftmaxLoss, {}, LF.normalized_softmax_loss, {}),
    (pml.NormalizedSoftmaxLoss, {"temperature": 0.5}, LF.normalized_softmax_loss, {"temperature": 0.5}),
]


@pytest.mark.parametrize(("peer_cls", "peer_kwargs", "fn", "options"), PARITY,
                         ids=[f"{p[0].__name__}-{i}" for i, p in enumerate(PARITY)])
def test_margin_losses_match_pytorch_metric_learning(peer_cls, peer_kwargs, fn, options):
    torch.manual_seed(1)
    peer = peer_cls(num_classes=C, embedding_size=D, **peer_kwargs).double()
    x, y = _batch()
    x.requires_grad_(True)
    expected = peer(x, y)
    expected_grad_x, expected_grad_w = torch.autograd.grad(expected, (x, peer.W))
    proxies = peer.W.detach().T.clone().requires_grad_(True)  # pml's W is (D, C); losskit's proxies (C, D)
    actual = fn(x, y, proxies=proxies, **options)
    grad_x, grad_w = torch.autograd.grad(actual, (x, proxies))
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad_x, expected_grad_x, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(grad_w, expected_grad_w.T, rtol=1e-8, atol=1e-10)


def test_sub_center_arcface_matches_pytorch_metric_learning():
    torch.manual_seed(2)
    peer = pml.SubCenterArcFaceLoss(num_classes=C, embedding_size=D).double()  # 3 sub-centres
    x, y = _batch(3)
    x.requires_grad_(True)
    expected = peer(x, y)
    expected_grad_x, expected_grad_w = torch.autograd.grad(expected, (x, peer.W))
    # pml's column c * K + k is class c's sub-centre k
    proxies = peer.W.detach().T.reshape(C, 3, D).clone().requires_grad_(True)
    actual = LF.sub_center_arcface_loss(x, y, proxies=proxies, margin=PML_ARC_MARGIN)
    grad_x, grad_w = torch.autograd.grad(actual, (x, proxies))
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad_x, expected_grad_x, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(grad_w, expected_grad_w.T.reshape(C, 3, D), rtol=1e-8, atol=1e-10)


def test_arcface_matches_pytorch_metric_learning_past_pi_minus_m():
    # Embeddings opposite their class's proxy: theta near pi, past pi - m, where both switch to
    # cos(theta) - m sin(m).
    torch.manual_seed(4)
    peer = pml.ArcFaceLoss(num_classes=C, embedding_size=D).double()
    y = torch.arange(N) % C
    x = -peer.W.detach().T[y] + 0.05 * torch.randn(N, D, dtype=torch.float64)
    cos = torch.nn.functional.cosine_similarity(x, peer.W.detach().T[y], dim=-1)
    assert (cos < -math.cos(PML_ARC_MARGIN)).all()
    actual = LF.arcface_loss(x, y, proxies=peer.W.detach().T, margin=PML_ARC_MARGIN, reduction="none")
    torch.testing.assert_close(actual, _pml_per_sample(peer, x, y), rtol=1e-10, atol=1e-12)


def _pml_per_sample(peer, x, y):
    return torch.stack([peer(x[i:i + 1], y[i:i + 1]) for i in range(len(y))])


def test_module_forms_train_their_proxies_like_pytorch_metric_learning():
    # One SGD step on the proxies from the same start gives the same proxies.
    torch.manual_seed(5)
    peer = pml.CosFaceLoss(num_classes=C, embedding_size=D).double()
    ours = losskit.CosFaceLoss(proxies=peer.W.detach().T)
    assert [name for name, _ in ours.named_parameters()] == ["proxies"]
    x, y = _batch(6)
    for module in (peer, ours):
        optimizer = torch.optim.SGD(module.parameters(), lr=0.5)
        module(x, y).backward()
        optimizer.step()
    torch.testing.assert_close(ours.proxies.detach(), peer.W.detach().T, rtol=1e-10, atol=1e-12)


# --- float64 references written from the papers -------------------------------------------------


def _reference(x, y, w, target_logit, other_logit):
    """Per-sample cross-entropy, one sample and one class at a time: the labelled class's logit is
    ``target_logit(x_i, w_y)``, every other class's ``other_logit(x_i, w_j)``."""
    out = []
    for i in range(len(y)):
        logits = [target_logit(x[i], w[j]) if j == y[i] else other_logit(x[i], w[j]) for j in range(len(w))]
        logits = torch.stack(logits)
        out.append(torch.logsumexp(logits, 0) - logits[y[i]])
    return torch.stack(out)


def _cos(a, b):
    return (a @ b) / (a.norm() * b.norm())


def test_margin_losses_match_the_papers_formulas():
    x, y = _batch(7)
    w = torch.randn(C, D, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    s, m = 10.0, 0.3

    def theta(a, b):
        return torch.acos(_cos(a, b))

    def arc_target(a, b):  # the paper's cos(theta + m), and the linear fallback past pi - m
        t = theta(a, b)
        return s * (torch.cos(t + m) if t <= math.pi - m else torch.cos(t) - m * math.sin(m))

    cases = {
        "arcface": (LF.arcface_loss(x, y, proxies=w, margin=m, scale=s, reduction="none"),
                    _reference(x, y, w, arc_target, lambda a, b: s * _cos(a, b))),
        "cosface": (LF.cosface_loss(x, y, proxies=w, margin=m, scale=s, reduction="none"),
                    _reference(x, y, w, lambda a, b: s * (_cos(a, b) - m), lambda a, b: s * _cos(a, b))),
        "normalized_softmax": (LF.normalized_softmax_loss(x, y, proxies=w, temperature=0.2, reduction="none"),
                               _reference(x, y, w, lambda a, b: _cos(a, b) / 0.2, lambda a, b: _cos(a, b) / 0.2)),
    }
    for margin in (1, 2, 3, 4, 5):
        def psi(t, margin=margin):  # eq. 6 of L-Softmax, with k from the angle
            k = math.floor(float(t) / (math.pi / margin))
            return (-1) ** k * torch.cos(margin * t) - 2 * k

        cases[f"large_margin_softmax-{margin}"] = (
            LF.large_margin_softmax_loss(x, y, proxies=w, margin=margin, scale=1.5, reduction="none"),
            _reference(x, y, w, lambda a, b, psi=psi: 1.5 * a.norm() * b.norm() * psi(theta(a, b)),
                       lambda a, b: 1.5 * (a @ b)))
        cases[f"sphereface-{margin}"] = (
            LF.sphereface_loss(x, y, proxies=w, margin=margin, reduction="none"),
            _reference(x, y, w, lambda a, b, psi=psi: a.norm() * psi(theta(a, b)), lambda a, b: a.norm() * _cos(a, b)))
    for name, (actual, expected) in cases.items():
        torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12, msg=name)


def test_margin_zero_is_the_normalized_softmax():
    x, y = _batch(9)
    w = torch.randn(C, D, dtype=torch.float64)
    plain = LF.normalized_softmax_loss(x, y, proxies=w, temperature=1 / 16)
    for fn in (LF.arcface_loss, LF.cosface_loss):
        torch.testing.assert_close(fn(x, y, proxies=w, margin=0.0, scale=16.0), plain, rtol=1e-12, atol=0)
    one = LF.sphereface_loss(x, y, proxies=w, margin=1)  # psi_1 = cos: the softmax over |x| cos
    torch.testing.assert_close(one, LF.cross_entropy(x.norm(dim=1, keepdim=True) * torch.nn.functional.normalize(
        x, dim=1) @ torch.nn.functional.normalize(w, dim=1).T, y))


def test_arcface_gradient_is_finite_and_exact_when_the_embedding_is_its_proxy():
    # theta = 0 exactly: cos(theta + m) has derivative -sin(m) / sin(theta) in cos, infinite at
    # theta = 0 through an arccosine; here sin(theta) comes from |x - w| and stays finite.
    w = torch.eye(3, dtype=torch.float64)
    x = w.clone().requires_grad_(True)
    loss = LF.arcface_loss(x, torch.arange(3), proxies=w)
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(grad).all()
    # Each loss is log(1 + 2 e^{-s cos m}) (the others' cosines are 0): value from the formula
    expected = torch.log1p(2 * torch.exp(torch.tensor(-64 * math.cos(0.5), dtype=torch.float64)))
    torch.testing.assert_close(loss, expected)


def test_arcface_is_exact_near_convergence_in_float32():
    # theta = 0.005: 1 - cos(theta) from the float32 cosine cancels; from |x - w| it does not.
    w = torch.eye(4, 8)
    x = w.clone()
    x[:, 4] = 0.005
    y = torch.arange(4)
    exact = LF.arcface_loss(x.double(), y, proxies=w.double(), reduction="none")
    torch.testing.assert_close(LF.arcface_loss(x, y, proxies=w, reduction="none").double(), exact,
                               rtol=1e-5, atol=0)


# --- the written-out backward pass -------------------------------------------------------------------
# The margin losses compute their (N, C) part in losskit/functional/_margin_softmax.py with a
# hand-written backward pass. Here it is compared in float64 with autograd of the formula written
# plainly from the papers: normalized proxies, every logit, the margin through the arccosine,
# torch.log_softmax.


def _psi_from_angle(theta, m):  # eq. 6 of L-Softmax: (-1)^k cos(m theta) - 2k on [k pi / m, (k + 1) pi / m]
    k = torch.floor(theta * m / math.pi).detach()
    return (-1) ** k * torch.cos(m * theta) - 2 * k


def _plain_margin_loss(name, x, y, w, options):
    """Per-sample loss, autograd of the formula."""
    unit_x = torch.nn.functional.normalize(x, dim=1)
    cos = unit_x @ torch.nn.functional.normalize(w.reshape(-1, w.shape[-1]), dim=1).T
    if w.dim() == 3:  # sub-centres: the best of each class
        cos = cos.view(len(x), *w.shape[:2]).amax(-1)
    c = cos.gather(1, y[:, None]).squeeze(1)
    theta = torch.acos(c)
    x_norm = x.norm(dim=1)
    if name == "normalized_softmax":
        logits, target = cos / options["temperature"], c / options["temperature"]
    elif name in ("cosface", "arcface", "sub_center_arcface"):
        s, m = options["scale"], options["margin"]
        logits = s * cos
        if name == "cosface":
            target = s * (c - m)
        else:
            target = s * torch.where(theta <= math.pi - m, torch.cos(theta + m), c - m * math.sin(m))
    else:
        s, m = options["scale"], options["margin"]
        if name == "sphereface":
            logits = s * x_norm[:, None] * cos
            target = s * x_norm * _psi_from_angle(theta, m)
        else:
            logits = s * (x @ w.T)
            target = s * x_norm * w[y].norm(dim=1) * _psi_from_angle(theta, m)
    logits = logits.scatter(1, y[:, None], target[:, None])
    return -torch.log_softmax(logits, 1).gather(1, y[:, None]).squeeze(1)


WRITTEN_OUT = {
    "normalized_softmax": (LF.normalized_softmax_loss, {"temperature": 0.1}),
    "cosface": (LF.cosface_loss, {"margin": 0.35, "scale": 30.0}),
    "arcface": (LF.arcface_loss, {"margin": 0.5, "scale": 30.0}),
    "sub_center_arcface": (LF.sub_center_arcface_loss, {"margin": 0.5, "scale": 30.0}),
    "sphereface": (LF.sphereface_loss, {"margin": 3, "scale": 1.0}),
    "large_margin_softmax": (LF.large_margin_softmax_loss, {"margin": 2, "scale": 1.0}),
}


def _written_out_case(name, layout):
    """40 embeddings of 16 dimensions against 9 classes, half of them near their class's proxy (the labelled logit
    leads), half random (it does not); proxies ``(C, D)`` row-major, or column-major as the
    transpose of a ``(D, C)`` weight (pytorch-metric-learning's layout)."""
    gen = torch.Generator().manual_seed(30)
    classes, dim, n = 9, 16, 40
    shape = (classes, 3, dim) if name == "sub_center_arcface" else (classes, dim)
    w = torch.randn(shape, generator=gen, dtype=torch.float64)
    if layout == "column-major":
        w = w.reshape(-1, dim).T.contiguous().T.reshape(shape)
        assert w.reshape(-1, dim).stride() == (1, w.reshape(-1, dim).shape[0])
    y = torch.randint(classes, (n,), generator=gen)
    x = 3 * torch.randn(n, dim, generator=gen, dtype=torch.float64)
    near = w[y[: n // 2]].reshape(n // 2, -1, dim)[:, 0]
    x[: n // 2] = 4 * torch.nn.functional.normalize(near, dim=1) + 0.1 * torch.randn(n // 2, dim, generator=gen,
                                                                                     dtype=torch.float64)
    return x, y, w


@pytest.mark.parametrize("layout", ["row-major", "column-major"])
@pytest.mark.parametrize("name", list(WRITTEN_OUT))
def test_written_out_backward_matches_autograd_of_the_formula(name, layout, monkeypatch):
    from losskit.functional import _margin_softmax

    # blocks of 3 rows (the default block is 8 MiB): the row-block loop runs 14 times here
    monkeypatch.setattr(_margin_softmax, "_BLOCK_BYTES", 3 * 9 * 3 * 8)
    monkeypatch.setattr(_margin_softmax, "_DOT_CHUNK", 5)  # 16 dimensions: chunks of 5, 5, 5 and 1
    fn, options = WRITTEN_OUT[name]
    x, y, w = _written_out_case(name, layout)
    x.requires_grad_(True)
    w.requires_grad_(True)
    weight = torch.rand(len(y), generator=torch.Generator().manual_seed(31), dtype=torch.float64)
    expected = _plain_margin_loss(name, x, y, w, options)
    actual = fn(x, y, proxies=w, reduction="none", **options)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-14)
    leads = _plain_margin_loss(name, x.detach(), y, w.detach(), options) < math.log(2)
    assert 5 < leads.sum() < len(y) - 5  # both branches of the softmax's precision
    expected_grads = torch.autograd.grad((expected * weight).sum(), (x, w))
    grads = torch.autograd.grad((actual * weight).sum(), (x, w))
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)
    # one input at a time: the other's products are skipped
    (grad_w,) = torch.autograd.grad((fn(x.detach(), y, proxies=w, reduction="none", **options) * weight).sum(), w)
    torch.testing.assert_close(grad_w, expected_grads[1], rtol=1e-10, atol=1e-12)
    (grad_x,) = torch.autograd.grad((fn(x, y, proxies=w.detach(), reduction="none", **options) * weight).sum(), x)
    torch.testing.assert_close(grad_x, expected_grads[0], rtol=1e-10, atol=1e-12)


def test_written_out_backward_runs_again_on_a_retained_graph():
    # The kept buffer is read, not overwritten, by the backward pass: a second pass gives the same.
    x, y, w = _written_out_case("arcface", "row-major")
    w.requires_grad_(True)
    loss = LF.arcface_loss(x, y, proxies=w)
    first = torch.autograd.grad(loss, w, retain_graph=True)[0]
    second = torch.autograd.grad(loss, w)[0]
    assert torch.equal(first, second)


# --- module forms ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PROXY_LOSSES)
def test_module_holds_learned_proxies_of_the_right_shape(name):
    module = losskit.get(name, num_classes=C, embedding_size=D)
    expected = (C, CENTRES_PER_CLASS[name], D) if name in CENTRES_PER_CLASS else (C, D)
    assert [(k, tuple(p.shape)) for k, p in module.named_parameters()] == [("proxies", expected)]
    x, y = _batch(10, torch.float32)
    module(x, y).backward()
    assert module.proxies.grad is not None and torch.isfinite(module.proxies.grad).all()
    assert module.proxies.grad.abs().sum() > 0
    config = module.get_config()
    assert config["num_classes"] == C and config["embedding_size"] == D and "proxies" not in config
    rebuilt = losskit.get(config)
    assert tuple(rebuilt.proxies.shape) == expected
    rebuilt.load_state_dict(module.state_dict())
    torch.testing.assert_close(rebuilt(x, y), module(x, y))


def test_sub_center_module_takes_the_number_of_sub_centres():
    module = losskit.SubCenterArcFaceLoss(num_classes=C, embedding_size=D, sub_centers=5)
    assert tuple(module.proxies.shape) == (C, 5, D)
    assert losskit.get(module.get_config()).sub_centers == 5


def test_module_errors_name_the_argument():
    with pytest.raises(TypeError, match="num_classes and embedding_size"):
        losskit.ArcFaceLoss()
    with pytest.raises(ValueError, match="num_classes"):
        losskit.ArcFaceLoss(num_classes=0, embedding_size=4)
    with pytest.raises(ValueError, match="proxies"):
        losskit.ArcFaceLoss(num_classes=3, embedding_size=4, proxies=torch.randn(4, 4))


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PROXY_LOSSES)
def test_bad_inputs_raise_naming_the_argument(name):
    fn = losskit.get(name, num_classes=C, embedding_size=D).function
    x, y = _batch(11)
    w = torch.randn((C, 3, D) if name in CENTRES_PER_CLASS else (C, D), dtype=torch.float64)
    with pytest.raises(ValueError, match="target has class indices outside"):
        fn(x, torch.full((N,), C), proxies=w)
    with pytest.raises(TypeError, match="target must hold integer class labels"):
        fn(x, y.double(), proxies=w)
    with pytest.raises(ValueError, match=r"proxies must have shape .*D = input.shape\[1\] = 6"):
        fn(x, y, proxies=w[..., :-1])
    with pytest.raises(ValueError, match="input must have shape"):
        fn(x[:, None], y, proxies=w)
    with pytest.raises(TypeError, match="proxies must be a torch.Tensor"):
        fn(x, y, proxies=w.tolist())
    nan = w.clone()
    nan.view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match="proxies contains non-finite"):
        fn(x, y, proxies=nan)
    with losskit.set_checks(False):  # unchecked, the NaN stays a NaN
        assert torch.isnan(fn(x, y, proxies=nan))


def test_probe_draws_the_margin_losses_against_the_cosine_to_the_proxy():
    from losskit.cli.plots import probe_loss

    # CosFace at cosine s to its proxy, 0 to the other: log(1 + e^{-64 (s - 0.35)}).
    cosface = probe_loss("cosface", points=5)  # s = -0.99, -0.495, 0, 0.495, 0.99
    assert cosface.loss == pytest.approx([math.log1p(math.exp(-64 * (s - 0.35))) for s in cosface.x])


# --- pair losses ---------------------------------------------------------------------------------

PAIR_PARITY = [
    (pml.MultiSimilarityLoss, {}, LF.multi_similarity_loss, {}),
    (pml.MultiSimilarityLoss, {"alpha": 5.0, "beta": 20.0, "base": 0.2}, LF.multi_similarity_loss,
     {"alpha": 5.0, "beta": 20.0, "base": 0.2}),
    (pml.CircleLoss, {}, LF.circle_loss, {}),
    (pml.CircleLoss, {"m": 0.25, "gamma": 256.0}, LF.circle_loss, {"margin": 0.25, "gamma": 256.0}),
]


@pytest.mark.parametrize(("peer_cls", "peer_kwargs", "fn", "options"), PAIR_PARITY,
                         ids=[f"{p[0].__name__}-{i}" for i, p in enumerate(PAIR_PARITY)])
def test_pair_losses_match_pytorch_metric_learning(peer_cls, peer_kwargs, fn, options):
    x, _ = _batch(12)
    y = torch.arange(N) % 9
    y[0] = 99  # an anchor without a positive: multi-similarity keeps its negative term, circle drops it
    x.requires_grad_(True)
    expected = peer_cls(**peer_kwargs)(x, y)
    (expected_grad,) = torch.autograd.grad(expected, x)
    actual = fn(x, y, **options)
    (grad,) = torch.autograd.grad(actual, x)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-8, atol=1e-10)


def test_pair_losses_match_the_papers_formulas():
    x, _ = _batch(13)
    y = torch.arange(N) % 5
    z = torch.nn.functional.normalize(x, dim=1)
    ms, circle = [], []
    for i in range(N):
        pos = [j for j in range(N) if j != i and y[j] == y[i]]
        neg = [j for j in range(N) if y[j] != y[i]]
        s = z @ z[i]
        ms.append(torch.log1p(sum(torch.exp(-2 * (s[p] - 0.5)) for p in pos)) / 2
                  + torch.log1p(sum(torch.exp(50 * (s[q] - 0.5)) for q in neg)) / 50)
        m, gamma = 0.4, 80.0  # alpha_p = [1 + m - s_p]_+, alpha_n = [s_n + m]_+ (eq. 6)
        lp = sum(torch.exp(-gamma * max(1 + m - s[p], 0) * (s[p] - 1 + m)) for p in pos)
        ln = sum(torch.exp(gamma * max(s[q] + m, 0) * (s[q] - m)) for q in neg)
        circle.append(torch.log1p(lp * ln))
    torch.testing.assert_close(LF.multi_similarity_loss(x, y, reduction="none"), torch.stack(ms))
    torch.testing.assert_close(LF.circle_loss(x, y, reduction="none"), torch.stack(circle))


def test_pair_losses_are_exact_near_convergence_in_float32():
    # Positives at similarity 1 - 2e-5, negatives at 0: log(1 + tiny) from a float32 logsumexp over
    # (values, 0) would round to 0; softplus of the log-sum keeps it.
    x = torch.eye(4).repeat_interleave(2, 0)
    x[1::2, 0] += 0.0063
    y = torch.arange(8) // 2
    for fn, options in ((LF.multi_similarity_loss, {"alpha": 40.0}), (LF.circle_loss, {})):
        exact = fn(x.double(), y, reduction="none", **options)
        assert (exact > 0).all() and (exact < 1e-8).all()
        torch.testing.assert_close(fn(x, y, reduction="none", **options).double(), exact, rtol=1e-5, atol=0)


@pytest.mark.parametrize("labels", [[5, 5, 5], [0, 1, 2]])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_circle_batch_with_nothing_to_score_ignores_every_embedding(labels, value):
    # One class (no negative) or no class twice (no positive): no anchor scores, the loss is 0,
    # and no embedding gets a gradient, even a non-finite one (before, the masked log-sum-exps
    # sent 0 * NaN back to it).
    x = torch.randn(3, 4, dtype=torch.float64)
    x[1, 2] = value
    x.requires_grad_()
    out = losskit.circle_loss(x, torch.tensor(labels))
    (grad,) = torch.autograd.grad(out, x)
    assert out.item() == 0.0 and (grad == 0).all()
    # With an anchor that has a positive and a negative, the NaN counts and is named.
    with pytest.raises(ValueError, match="input contains non-finite values"):
        losskit.circle_loss(x.detach(), torch.tensor([5, 5, 6]))


# --- pair losses: contrastive, lifted structure, tuplet margin -------------------------------------


def _positives_per_anchor(y):
    return ((y[:, None] == y[None, :]).sum(1) - 1).double()


PAIR_PARITY_WEIGHTED = [
    # (peer, losskit function, options): the peer's mean over positive pairs is the per-anchor mean
    # weighted by each anchor's number of positives
    (pml.LiftedStructureLoss(), LF.lifted_structure_loss, {}),
    (pml.LiftedStructureLoss(neg_margin=0.5, pos_margin=0.1), LF.lifted_structure_loss,
     {"neg_margin": 0.5, "pos_margin": 0.1}),
    (pml.TupletMarginLoss(), LF.tuplet_margin_loss, {"margin": math.radians(5.73)}),
    (pml.TupletMarginLoss(margin=20.0, scale=16.0), LF.tuplet_margin_loss,
     {"margin": math.radians(20.0), "scale": 16.0}),
]


@pytest.mark.parametrize(("peer", "fn", "options"), PAIR_PARITY_WEIGHTED,
                         ids=[f"{p[0].__class__.__name__}-{i}" for i, p in enumerate(PAIR_PARITY_WEIGHTED)])
def test_positive_pair_losses_match_pytorch_metric_learning(peer, fn, options):
    x, _ = _batch(14)
    y = torch.arange(N) % 7  # 3 or 4 samples per class: anchors with 2 and 3 positives
    y[0] = 99  # an anchor without a positive: left out by both
    x.requires_grad_(True)
    expected = peer(x, y)
    (expected_grad,) = torch.autograd.grad(expected, x)
    actual = fn(x, y, weight=_positives_per_anchor(y), **options)
    (grad,) = torch.autograd.grad(actual, x)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-8, atol=1e-10)
    # With as many positives per anchor, no weight is needed.
    balanced = torch.arange(N) % 6
    torch.testing.assert_close(fn(x, balanced, **options), peer(x, balanced), rtol=1e-10, atol=1e-12)


def _pair_masks(y):
    off_diagonal = ~torch.eye(len(y), dtype=torch.bool)
    same = (y[:, None] == y[None, :])[off_diagonal].view(len(y), len(y) - 1)
    return same, ~same


@pytest.mark.parametrize(("peer_kwargs", "options"), [({}, {}), ({"pos_margin": 0.2, "neg_margin": 0.8},
                                                                {"pos_margin": 0.2, "neg_margin": 0.8})])
def test_contrastive_pair_loss_matches_pytorch_metric_learning(peer_kwargs, options):
    x, _ = _batch(15)
    y = torch.arange(N) % 5
    x.requires_grad_(True)
    expected = pml.ContrastiveLoss(**peer_kwargs)(x, y)
    (expected_grad,) = torch.autograd.grad(expected, x)
    # The peer's AvgNonZeroReducer: the mean of the non-zero positive pairs plus that of the negatives.
    pairs = LF.contrastive_pair_loss(x, y, reduction="none", **options)
    positive, negative = _pair_masks(y)
    pos, neg = pairs[positive], pairs[negative]
    actual = pos[pos > 0].mean() + neg[neg > 0].mean()
    (grad,) = torch.autograd.grad(actual, x)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-8, atol=1e-10)


def test_pair_margin_losses_match_the_papers_formulas():
    x, _ = _batch(16)
    y = torch.arange(N) % 5
    z = torch.nn.functional.normalize(x, dim=1)
    d = lambda a, b: (z[a] - z[b]).norm()  # noqa: E731
    pos = [[j for j in range(N) if j != i and y[j] == y[i]] for i in range(N)]
    neg = [[j for j in range(N) if y[j] != y[i]] for i in range(N)]
    contrastive = torch.stack([torch.stack([torch.clamp(d(i, j) - 0.1, min=0) if y[j] == y[i]
                                            else torch.clamp(0.9 - d(i, j), min=0) for j in range(N) if j != i])
                               for i in range(N)])
    lifted, tuplet = [], []
    beta, s = 0.3, 10.0
    for i in range(N):
        js = []
        for j in pos[i]:  # eq. 4 of Oh Song et al. with alpha = 1
            big_j = torch.log(sum(torch.exp(1 - d(i, k)) for k in neg[i]) + sum(torch.exp(1 - d(j, k)) for k in neg[j]))
            js.append(torch.clamp(big_j + d(i, j), min=0) ** 2 / 2)
        lifted.append(torch.stack(js).mean())
        ts = []
        for j in pos[i]:  # eq. 5 of Yu and Tao: the positive's angle less beta, through the arccosine
            theta = torch.acos(z[i] @ z[j])
            ts.append(torch.log1p(sum(torch.exp(s * (z[i] @ z[k] - torch.cos(theta - beta))) for k in neg[i])))
        tuplet.append(torch.stack(ts).mean())
    torch.testing.assert_close(LF.contrastive_pair_loss(x, y, pos_margin=0.1, neg_margin=0.9, reduction="none"),
                               contrastive, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(LF.lifted_structure_loss(x, y, reduction="none"), torch.stack(lifted),
                               rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(LF.tuplet_margin_loss(x, y, margin=beta, scale=s, reduction="none"),
                               torch.stack(tuplet), rtol=1e-10, atol=1e-12)


def test_pair_margin_losses_are_exact_for_close_positives_in_float32():
    # Positives at distance 1e-3 (cosine 1 - 5e-7): sqrt(2 - 2 cos) from a float32 cosine would be
    # up to 13% off; the distance from the difference is not.
    x = torch.eye(4, 8).repeat_interleave(2, 0)
    x[1::2, 4] = 1e-3
    y = torch.arange(8) // 2
    for fn, options in ((LF.contrastive_pair_loss, {}), (LF.tuplet_margin_loss, {"scale": 8.0, "margin": 0.0})):
        exact = fn(x.double(), y, reduction="none", **options)
        torch.testing.assert_close(fn(x, y, reduction="none", **options).double(), exact, rtol=1e-5, atol=0)


@pytest.mark.parametrize("fn", [LF.lifted_structure_loss, LF.tuplet_margin_loss])
def test_positive_pair_losses_leave_anchors_without_a_positive_out(fn):
    x, _ = _batch(17)
    y = torch.arange(N) % 8
    y[:3] = torch.tensor([100, 101, 102])
    none = fn(x, y, reduction="none")
    assert (none[:3] == 0).all() and (none[3:] > 0).all()
    torch.testing.assert_close(fn(x, y), none[3:].mean())


@pytest.mark.parametrize(("peer_kwargs", "options"), [({}, {}), ({"num_bins": 4}, {"num_bins": 4})])
def test_fast_ap_matches_pytorch_metric_learning(peer_kwargs, options):
    x, _ = _batch(18)
    y = torch.arange(N) % 7
    y[0] = 99  # an anchor without a positive: left out by both
    x.requires_grad_(True)
    expected = pml.FastAPLoss(**peer_kwargs)(x, y)
    (expected_grad,) = torch.autograd.grad(expected, x)
    actual = LF.fast_ap_loss(x, y, **options)
    (grad,) = torch.autograd.grad(actual, x)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-8, atol=1e-10)


def test_fast_ap_matches_the_papers_formula():
    # Eq. 9 of Cakir et al. one anchor and one bin at a time: triangular kernel on d^2 in [0, 4].
    x, _ = _batch(19)
    y = torch.arange(N) % 5
    z = torch.nn.functional.normalize(x, dim=1)
    bins = 6
    centres = [4.0 * b / bins for b in range(bins + 1)]
    expected = []
    for i in range(N):
        pos = [j for j in range(N) if j != i and y[j] == y[i]]
        neg = [j for j in range(N) if y[j] != y[i]]

        def hist(js, c, i=i):
            return sum(torch.clamp(1 - ((z[i] - z[j]).square().sum() - c).abs() * bins / 4, min=0) for j in js)

        h_pos = [hist(pos, c) for c in centres]
        h_all = [h_pos[b] + hist(neg, c) for b, c in enumerate(centres)]
        ap = sum(h_pos[b] * sum(h_pos[:b + 1]) / sum(h_all[:b + 1]) for b in range(bins + 1)
                 if h_pos[b] * sum(h_pos[:b + 1]) > 0)
        expected.append(1 - ap / len(pos))
    torch.testing.assert_close(LF.fast_ap_loss(x, y, num_bins=bins, reduction="none"), torch.stack(expected),
                               rtol=1e-10, atol=1e-12)


def test_fast_ap_is_exact_near_a_perfect_ranking_in_float32():
    # AP = 1 - 1e-4: 1 - AP in float32 would keep one digit; the histogram form keeps them all.
    x = torch.eye(4, 8)
    x[1] = 0.7 * x[0] + 0.51 ** 0.5 * x[1]  # classes 0 and 1 at d^2 = 0.6
    x = x.repeat_interleave(2, 0)
    x[1::2, 4] = 0.01
    y = torch.arange(8) // 2
    exact = LF.fast_ap_loss(x.double(), y, reduction="none")
    assert (exact[:4] > 0).all() and (exact < 1e-3).all()
    torch.testing.assert_close(LF.fast_ap_loss(x, y, reduction="none").double(), exact, rtol=1e-5, atol=0)



# --- proxy losses: ProxyNCA, SoftTriple -------------------------------------------------------------


@pytest.mark.parametrize(("peer_kwargs", "options"), [({}, {}), ({"softmax_scale": 3.0}, {"scale": 3.0})])
def test_proxy_nca_matches_pytorch_metric_learning(peer_kwargs, options):
    torch.manual_seed(20)
    peer = pml.ProxyNCALoss(num_classes=C, embedding_size=D, **peer_kwargs).double()
    x, y = _batch(21)
    x.requires_grad_(True)
    expected = peer(x, y)
    expected_grad_x, expected_grad_w = torch.autograd.grad(expected, (x, peer.proxies))
    proxies = peer.proxies.detach().clone().requires_grad_(True)  # the peer's proxies are (C, D) already
    actual = LF.proxy_nca_loss(x, y, proxies=proxies, **options)
    grad_x, grad_w = torch.autograd.grad(actual, (x, proxies))
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad_x, expected_grad_x, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(grad_w, expected_grad_w, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize(("peer_kwargs", "options"), [
    ({}, {}),
    ({"centers_per_class": 4, "la": 8.0, "gamma": 0.5, "margin": 0.2}, {"scale": 8.0, "gamma": 0.5, "margin": 0.2}),
])
def test_soft_triple_matches_pytorch_metric_learning(peer_kwargs, options):
    torch.manual_seed(22)
    peer = pml.SoftTripleLoss(num_classes=C, embedding_size=D, **peer_kwargs).double()
    k = peer.centers_per_class
    x, y = _batch(23)
    x.requires_grad_(True)
    expected = peer(x, y)
    expected_grad_x, expected_grad_w = torch.autograd.grad(expected, (x, peer.fc))
    # the peer's fc is (D, C K), column c * K + k centre k of class c
    proxies = peer.fc.detach().T.reshape(C, k, D).clone().requires_grad_(True)
    actual = LF.soft_triple_loss(x, y, proxies=proxies, **options)
    grad_x, grad_w = torch.autograd.grad(actual, (x, proxies))
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad_x, expected_grad_x, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(grad_w, expected_grad_w.T.reshape(C, k, D), rtol=1e-8, atol=1e-10)


def test_proxy_losses_match_the_papers_formulas():
    x, y = _batch(24)
    gen = torch.Generator().manual_seed(25)
    w = torch.randn(C, D, dtype=torch.float64, generator=gen)
    centres = torch.randn(C, 3, D, dtype=torch.float64, generator=gen)
    unit = torch.nn.functional.normalize
    s = 2.5
    # ProxyNCA: a softmax over -s |x - w|^2 of the unit vectors, the labelled proxy included
    nca = _reference(x, y, w, lambda a, b: -s * (unit(a, dim=0) - unit(b, dim=0)).square().sum(),
                     lambda a, b: -s * (unit(a, dim=0) - unit(b, dim=0)).square().sum())
    torch.testing.assert_close(LF.proxy_nca_loss(x, y, proxies=w, scale=s, reduction="none"), nca,
                               rtol=1e-10, atol=1e-12)
    lam, gamma, delta = 5.0, 0.2, 0.1

    def relaxed(a, cs):  # eq. 8 of Qian et al.: the soft maximum of the centres' similarities
        sims = torch.stack([_cos(a, c) for c in cs])
        return (torch.exp(sims / gamma) / torch.exp(sims / gamma).sum() * sims).sum()

    soft_triple = _reference(x, y, centres, lambda a, cs: lam * (relaxed(a, cs) - delta),
                             lambda a, cs: lam * relaxed(a, cs))
    torch.testing.assert_close(LF.soft_triple_loss(x, y, proxies=centres, scale=lam, gamma=gamma, margin=delta,
                                                   reduction="none"), soft_triple, rtol=1e-10, atol=1e-12)


def test_soft_triple_module_takes_the_number_of_centres():
    module = losskit.SoftTripleLoss(num_classes=C, embedding_size=D, centers_per_class=4)
    assert tuple(module.proxies.shape) == (C, 4, D)
    assert losskit.get(module.get_config()).centers_per_class == 4


# --- N-pairs and Proxy-Anchor ----------------------------------------------------------------------


@pytest.mark.parametrize("labels", ["mixed", "pairs"])
def test_npairs_matches_pytorch_metric_learning(labels):
    x, _ = _batch(26)
    if labels == "mixed":  # classes of 1 to 4 samples, out of order: the first two of each form its pair
        y = torch.arange(N) % 7
        y[0] = 99
        y = y[torch.randperm(N, generator=torch.Generator().manual_seed(27))]
    else:
        y = torch.arange(N) // 2
    x.requires_grad_(True)
    expected = pml.NPairsLoss()(x, y)
    (expected_grad,) = torch.autograd.grad(expected, x)
    actual = LF.npairs_loss(x, y)
    (grad,) = torch.autograd.grad(actual, x)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-8, atol=1e-10)


def test_npairs_matches_the_papers_formula():
    # Eq. 3 of Sohn (N-pair-mc) over the pairs (first, second sample of each label seen twice),
    # one anchor at a time, with the cross-entropy's own softmax.
    x, _ = _batch(28)
    y = torch.tensor([3, 1, 3, 0, 1, 3, 2, 5, 5, 1] + [7] * (N - 10))
    z = torch.nn.functional.normalize(x, dim=1)
    order = [c for c in dict.fromkeys(y.tolist()) if (y == c).sum() > 1]
    pair = {c: [i for i in range(N) if y[i] == c][:2] for c in order}
    expected = torch.zeros(N, dtype=torch.float64)
    for c in order:
        a, p = pair[c]
        logits = torch.stack([z[a] @ z[pair[k][1]] for k in order])
        expected[a] = torch.logsumexp(logits, 0) - z[a] @ z[p]
    none = LF.npairs_loss(x, y, reduction="none")
    torch.testing.assert_close(none, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(LF.npairs_loss(x, y), expected.sum() / len(order), rtol=1e-12, atol=0)
    assert (none != 0).sum() == len(order)


def test_npairs_without_a_pair_is_zero_with_a_gradient():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    for y in (torch.arange(4), torch.tensor([0, 0, 1, 2])):  # no pair; one pair and no other positive
        loss = LF.npairs_loss(x, y)
        (grad,) = torch.autograd.grad(loss, x)
        assert loss.item() == 0.0 and (grad == 0).all()


def test_npairs_is_exact_near_convergence_in_float32():
    # Anchors at cosine 1 - 5e-7 to their positive, -1 to the other class's: the loss is about
    # e^-2; the log-softmax form would lose it to the cancelling logsumexp - target.
    x = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]]).repeat(2, 1)
    x[2:, 1] = 1e-3
    y = torch.tensor([0, 1, 0, 1])
    exact = LF.npairs_loss(x.double(), y, reduction="none")
    torch.testing.assert_close(LF.npairs_loss(x, y, reduction="none").double(), exact, rtol=1e-6, atol=0)


@pytest.mark.parametrize(("peer_kwargs", "options"), [({}, {}), ({"margin": 0.3, "alpha": 8.0},
                                                                {"margin": 0.3, "alpha": 8.0})])
def test_proxy_anchor_matches_pytorch_metric_learning(peer_kwargs, options):
    torch.manual_seed(29)
    peer = pml.ProxyAnchorLoss(num_classes=C, embedding_size=D, **peer_kwargs).double()
    x, y = _batch(30)
    y[y == 2] = 3  # a class without a sample: its negative term alone
    x.requires_grad_(True)
    expected = peer(x, y)
    expected_grad_x, expected_grad_w = torch.autograd.grad(expected, (x, peer.proxies))
    proxies = peer.proxies.detach().clone().requires_grad_(True)  # the peer's proxies are (C, D) already
    actual = LF.proxy_anchor_loss(x, y, proxies=proxies, **options)
    grad_x, grad_w = torch.autograd.grad(actual, (x, proxies))
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad_x, expected_grad_x, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(grad_w, expected_grad_w, rtol=1e-8, atol=1e-10)
    # The unit: each class's share, the peer's positive term scaled by C / |P+| plus its negative term.
    terms = peer.compute_loss(x, y, None, x, y)
    present = len(y.unique())
    shares = terms["pos_loss"]["losses"] * C / present + terms["neg_loss"]["losses"]
    none = LF.proxy_anchor_loss(x, y, proxies=proxies, reduction="none", **options)
    torch.testing.assert_close(none, shares, rtol=1e-10, atol=1e-12)
    assert terms["pos_loss"]["divisor"] == present and terms["neg_loss"]["divisor"] == C


def test_proxy_anchor_matches_the_papers_formula():
    # Eq. 4 of Kim et al., one proxy at a time over the batch.
    x, y = _batch(31)
    y[y == 5] = 0
    w = torch.randn(C, D, dtype=torch.float64, generator=torch.Generator().manual_seed(32))
    alpha, delta = 6.0, 0.2
    positive, negative = [], []
    for c in range(C):
        pos = [torch.exp(-alpha * (_cos(x[i], w[c]) - delta)) for i in range(N) if y[i] == c]
        neg = [torch.exp(alpha * (_cos(x[i], w[c]) + delta)) for i in range(N) if y[i] != c]
        if pos:
            positive.append(torch.log(1 + sum(pos)))
        negative.append(torch.log(1 + sum(neg)))
    expected = sum(positive) / len(positive) + sum(negative) / C
    actual = LF.proxy_anchor_loss(x, y, proxies=w, alpha=alpha, margin=delta)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)
    none = LF.proxy_anchor_loss(x, y, proxies=w, alpha=alpha, margin=delta, reduction="none")
    torch.testing.assert_close(none.mean(), expected, rtol=1e-12, atol=0)


def test_proxy_anchor_is_exact_near_convergence_in_float32():
    # Two opposite proxies, each embedding at angle 1e-3 from its own: every term about e^{-29}.
    w = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])
    y = torch.tensor([0, 1, 0, 1])
    x = w[y].clone()
    x[:, 1] = 1e-3
    exact = LF.proxy_anchor_loss(x.double(), y, proxies=w.double(), reduction="none")
    assert (exact > 0).all() and (exact < 1e-10).all()
    torch.testing.assert_close(LF.proxy_anchor_loss(x, y, proxies=w, reduction="none").double(), exact,
                               rtol=1e-5, atol=0)


def test_proxy_anchor_module_trains_its_proxies_like_pytorch_metric_learning():
    torch.manual_seed(33)
    peer = pml.ProxyAnchorLoss(num_classes=C, embedding_size=D).double()
    ours = losskit.ProxyAnchorLoss(proxies=peer.proxies.detach())
    x, y = _batch(34)
    for module in (peer, ours):
        optimizer = torch.optim.SGD(module.parameters(), lr=0.5)
        module(x, y).backward()
        optimizer.step()
    torch.testing.assert_close(ours.proxies.detach(), peer.proxies.detach(), rtol=1e-10, atol=1e-12)
    # Drawn as the peer's: Kaiming normal with fan out, standard deviation sqrt(2 / C).
    drawn = losskit.ProxyAnchorLoss(num_classes=400, embedding_size=50).proxies.detach()
    assert abs(drawn.std().item() / math.sqrt(2 / 400) - 1) < 0.05


def test_npairs_and_proxy_anchor_bad_inputs_name_the_argument():
    x, y = _batch(35)
    w = torch.randn(C, D, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"weight must have shape \(7,\), one weight per class"):
        LF.proxy_anchor_loss(x, y, proxies=w, weight=torch.ones(N, dtype=torch.float64))
    with pytest.raises(TypeError, match="weight must be a torch.Tensor"):
        LF.proxy_anchor_loss(x, y, proxies=w, weight=[1.0] * C)
    with pytest.raises(ValueError, match="alpha"):
        LF.proxy_anchor_loss(x, y, proxies=w, alpha=0.0)
    with pytest.raises(TypeError, match="margin must be a number"):
        LF.proxy_anchor_loss(x, y, proxies=w, margin="0.1")
    with pytest.raises(ValueError, match=r"target must have shape \(24,\)"):
        LF.npairs_loss(x, y[:-1])
    with pytest.raises(TypeError, match="target must hold integer class labels"):
        LF.npairs_loss(x, y.double())
    with pytest.raises(ValueError, match="input must have shape"):
        LF.npairs_loss(x[0], y)
    with pytest.raises(ValueError, match="weight must"):
        LF.npairs_loss(x, y, weight=torch.ones(3, dtype=torch.float64))
    nan = x.clone()
    nan[3, 1] = float("nan")
    for fn, kw in ((LF.npairs_loss, {}), (LF.proxy_anchor_loss, {"proxies": w})):
        with pytest.raises(ValueError, match="input contains non-finite"):
            fn(nan, y, **kw)


# --- cross-batch memory ------------------------------------------------------------------------------

MEMORY, BATCH, STEPS = 20, 8, 6  # the memory wraps around on the third step


def _memory_batches(seed):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(BATCH, D, generator=gen, dtype=torch.float64), torch.randint(5, (BATCH,), generator=gen))
            for _ in range(STEPS)]


def _pairs_against_memory(xbm, rows, y):
    """The positive and negative pair masks ``(N, M - 1)`` of each anchor against the memory's other rows."""
    labels, filled = xbm.label_memory, xbm.filled
    keep = torch.arange(MEMORY)[None, :] != rows[:, None]
    same = ((y[:, None] == labels[None, :]) & filled)[keep].view(len(y), MEMORY - 1)
    other = ((y[:, None] != labels[None, :]) & filled)[keep].view(len(y), MEMORY - 1)
    return same, other


def _contrastive_peer_reduction(xbm, x, y, rows):
    # pytorch-metric-learning's AvgNonZeroReducer: the mean of the non-zero positive pairs plus
    # that of the non-zero negative pairs
    pairs = xbm(x, y, reduction="none")
    same, other = _pairs_against_memory(xbm, rows, y)
    pos, neg = pairs[same], pairs[other]
    return sum(v[v > 0].mean() for v in (pos, neg) if (v > 0).any())


def _tuplet_peer_reduction(xbm, x, y, rows):
    # the peer's mean over positive pairs: each anchor weighted by its positives in the memory as
    # the call leaves it (the batch written first)
    labels, filled = xbm.label_memory.clone(), xbm.filled.clone()
    labels[rows], filled[rows] = y, True
    positives = (y[:, None] == labels[None, :]) & filled & (torch.arange(MEMORY)[None, :] != rows[:, None])
    return xbm(x, y, weight=positives.sum(1).double())


XBM_PARITY = [
    (lambda: pml.MultiSimilarityLoss(), lambda: losskit.MultiSimilarityLoss(), None),
    (lambda: pml.CircleLoss(), lambda: losskit.CircleLoss(), None),
    (lambda: pml.ContrastiveLoss(), lambda: losskit.ContrastivePairLoss(), _contrastive_peer_reduction),
    (lambda: pml.TupletMarginLoss(), lambda: losskit.TupletMarginLoss(margin=math.radians(5.73)),
     _tuplet_peer_reduction),
]


@pytest.mark.parametrize(("peer_loss", "our_loss", "reduce"), XBM_PARITY,
                         ids=["multi_similarity", "circle", "contrastive_pair", "tuplet_margin"])
def test_cross_batch_memory_matches_pytorch_metric_learning_over_several_steps(peer_loss, our_loss, reduce):
    peer = pml.CrossBatchMemory(peer_loss(), embedding_size=D, memory_size=MEMORY)
    ours = losskit.metric.CrossBatchMemory(our_loss(), embedding_size=D, memory_size=MEMORY).double()
    for step, (x, y) in enumerate(_memory_batches(36)):
        x = x.requires_grad_(True)
        expected = peer(x, y)
        (expected_grad,) = torch.autograd.grad(expected, x)
        rows = (ours.position + torch.arange(BATCH)) % MEMORY
        actual = ours(x, y) if reduce is None else reduce(ours, x, y, rows)
        (grad,) = torch.autograd.grad(actual, x)
        torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12, msg=f"step {step}")
        torch.testing.assert_close(grad, expected_grad, rtol=1e-8, atol=1e-10, msg=f"step {step}")
        torch.testing.assert_close(ours.embedding_memory, peer.embedding_memory, rtol=0, atol=0)
        assert torch.equal(ours.label_memory, peer.label_memory)
    assert ours.filled.all() and int(ours.position) == peer.queue_idx == (STEPS * BATCH) % MEMORY


def test_cross_batch_memory_scores_against_the_memory_from_the_papers_definition():
    # Float64 reference: multi-similarity of each anchor over the memory's filled rows but its own,
    # written out one anchor at a time (eq. 9 of Wang et al. 2019 with the memory as candidates).
    xbm = losskit.metric.CrossBatchMemory(losskit.MultiSimilarityLoss(), embedding_size=D, memory_size=MEMORY).double()
    stored_x, stored_y = [], []
    unit = torch.nn.functional.normalize
    for x, y in _memory_batches(37)[:4]:
        rows = ((xbm.position + torch.arange(BATCH)) % MEMORY).tolist()
        actual = xbm(x, y, reduction="none")
        for r, xi, yi in zip(rows, x, y, strict=True):  # the ring buffer, by hand
            if r < len(stored_x):
                stored_x[r], stored_y[r] = xi, yi
            else:
                stored_x.append(xi)
                stored_y.append(yi)
        expected = []
        for i in range(BATCH):
            s = torch.stack([unit(x[i], dim=0) @ unit(m, dim=0) for m in stored_x])
            pos = [j for j in range(len(stored_x)) if j != rows[i] and stored_y[j] == y[i]]
            neg = [j for j in range(len(stored_x)) if stored_y[j] != y[i]]
            expected.append(torch.log1p(sum((torch.exp(-2 * (s[j] - 0.5)) for j in pos), torch.tensor(0.0)))
                            / 2 + torch.log1p(sum((torch.exp(50 * (s[j] - 0.5)) for j in neg), torch.tensor(0.0))) / 50)
        torch.testing.assert_close(actual, torch.stack(expected).double(), rtol=1e-10, atol=1e-12)


def test_cross_batch_memory_state_is_buffers_and_eval_leaves_it_alone():
    batches = _memory_batches(38)
    xbm = losskit.metric.CrossBatchMemory(losskit.CircleLoss(), embedding_size=D, memory_size=MEMORY).double()
    # An empty memory holds only the batch: the value is the plain loss on the batch.
    x, y = batches[0]
    for mode in (xbm.eval, xbm.train):
        mode()
        torch.testing.assert_close(xbm(x, y), losskit.circle_loss(x, y), rtol=1e-12, atol=0)
    for x, y in batches[1:3]:
        xbm(x, y)
    assert sorted(dict(xbm.named_buffers())) == ["embedding_memory", "filled", "label_memory", "position"]
    # eval: scored against the memory and itself, nothing written
    before = {k: v.clone() for k, v in xbm.state_dict().items()}
    xbm.eval()
    x, y = batches[3]
    evaluated = xbm(x, y)
    assert all(torch.equal(before[k], v) for k, v in xbm.state_dict().items())
    xbm.train()
    # state_dict carries the whole state: a copy gives the same next value and the same memory after it
    copy = losskit.metric.CrossBatchMemory(losskit.CircleLoss(), embedding_size=D, memory_size=MEMORY).double()
    copy.load_state_dict(xbm.state_dict())
    torch.testing.assert_close(copy(x, y), xbm(x, y), rtol=0, atol=0)
    assert all(torch.equal(copy.state_dict()[k], v) for k, v in xbm.state_dict().items())
    assert evaluated.item() != xbm(x, y).item()  # the memory moved on
    # .to() moves the memory; reset() empties it
    assert copy.to(torch.float32).embedding_memory.dtype == torch.float32
    copy.reset()
    assert not copy.filled.any() and int(copy.position) == 0
    torch.testing.assert_close(copy(x.float(), y), losskit.circle_loss(x.float(), y))


def test_cross_batch_memory_bad_inputs_name_the_argument():
    with pytest.raises(TypeError, match="loss must be one of the pair loss modules"):
        losskit.metric.CrossBatchMemory(losskit.LiftedStructureLoss(), embedding_size=D)
    with pytest.raises(TypeError, match="loss must be one of"):
        losskit.metric.CrossBatchMemory(LF.multi_similarity_loss, embedding_size=D)
    with pytest.raises(ValueError, match="loss must not be distributed"):
        losskit.metric.CrossBatchMemory(losskit.MultiSimilarityLoss(distributed=True), embedding_size=D)
    for name, kwargs in (("embedding_size", {"embedding_size": 0}), ("memory_size", {"memory_size": 2.5})):
        with pytest.raises(ValueError, match=name):
            losskit.metric.CrossBatchMemory(losskit.CircleLoss(), **{"embedding_size": D, **kwargs})
    xbm = losskit.metric.CrossBatchMemory(losskit.CircleLoss(), embedding_size=D, memory_size=4)
    with pytest.raises(ValueError, match="more than memory_size = 4"):
        xbm(torch.randn(5, D), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"input must have shape \(N, 6\) \(embedding_size\)"):
        xbm(torch.randn(3, D + 1), torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="target must hold integer class labels"):
        xbm(torch.randn(3, D), torch.zeros(3))
    with pytest.raises(ValueError, match="input contains NaN or infinite"):
        xbm(torch.full((3, D), float("nan")), torch.tensor([0, 0, 1]))
    assert not xbm.filled.any()  # checked before it entered the memory
