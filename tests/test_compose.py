"""Composite losses: algebra, the spec grammar, components, schedules, progress, configs, learned weighting."""

import math
import sys
from pathlib import Path

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings
from torch import nn

import losskit
from losskit import nn as lnn
from losskit._core.registry import MAX_CONFIG_NESTING, register_class
from losskit.compose import (
    MAX_SPEC_LENGTH,
    MAX_SPEC_NESTING,
    CompositeLoss,
    CompositeResult,
    Constant,
    Cosine,
    Linear,
    Product,
    Step,
    Term,
    Warmup,
    constant,
    cosine,
    from_toml,
    linear,
    schedule_from_config,
    step,
    to_toml,
    warmup,
)
from losskit.compose import toml as toml_io
from losskit.detection import YOLOLoss, one_to_many_weight


def close(a, b, tol=1e-12):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                               rtol=tol, atol=tol)


def seg_data(seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randint(3, (2, 4, 5), generator=gen)
    return x, y


def names_weights(composite):
    return [(t.name, t.weight) for t in composite.terms]


# --- algebra ------------------------------------------------------------------------------------


def test_algebra_weights_multiply_through_and_names_are_unique():
    mse, l1, huber = lnn.MSELoss(), lnn.L1Loss(), lnn.HuberLoss(delta=0.5)
    c = 0.5 * mse + l1
    assert isinstance(c, CompositeLoss)
    assert names_weights(c) == [("mse", 0.5), ("l1", 1.0)]
    assert names_weights(2 * c) == [("mse", 1.0), ("l1", 2.0)]           # 2 * (0.5 mse + l1)
    assert names_weights(c / 4) == [("mse", 0.125), ("l1", 0.25)]
    assert names_weights(mse - 0.5 * l1) == [("mse", 1.0), ("l1", -0.5)]
    assert names_weights(-mse) == [("mse", -1.0)]
    # nesting flattens, in order; a repeated loss gets a numbered name
    nested = (0.5 * mse + l1) + 3 * (huber + 2 * mse)
    assert names_weights(nested) == [("mse", 0.5), ("l1", 1.0), ("huber", 3.0), ("mse_2", 6.0)]
    assert nested.terms[0].loss is mse and nested.terms[3].loss is mse  # modules are shared, not copied
    assert names_weights(sum([mse, l1, huber])) == [("mse", 1.0), ("l1", 1.0), ("huber", 1.0)]
    assert names_weights(c) == [("mse", 0.5), ("l1", 1.0)]  # operands are not changed
    with pytest.raises(TypeError, match="cannot multiply two losses"):
        mse * l1
    with pytest.raises(TypeError):
        mse + 0.5


def test_algebra_with_schedules():
    mse, l1 = lnn.MSELoss(), lnn.L1Loss()
    c = linear(0.8, 0.1) * mse + 0.5 * (cosine(1.0, 0.0) * l1)
    assert names_weights(c) == [("mse", Linear(0.8, 0.1)), ("l1", Cosine(0.5, 0.0))]
    assert 2 * linear(0.8, 0.1) == linear(1.6, 0.2)
    assert linear(0.8, 0.1) * cosine(1.0, 0.0) == Product((Linear(0.8, 0.1), Cosine(1.0, 0.0)))
    assert (linear(1.0, 0.0) * constant(2.0))(0.25) == pytest.approx(1.5)  # 0.75 * 2
    assert (warmup(0.5, 2.0) / 2)(0.25) == pytest.approx(0.5)  # 0.25 / 0.5 * 2 / 2
    assert step([1.0, 2.0], [0.5]).scaled(3.0) == Step((3.0, 6.0), (0.5,))


def test_composite_is_a_module_of_its_terms():
    ce = lnn.CrossEntropyLoss(weight=[1.0, 2.0, 3.0])
    c = 0.5 * lnn.DiceLoss() + ce
    assert "terms.1.loss.weight" in c.state_dict()
    c64 = c.to(torch.float64)
    assert c64.terms[1].loss.weight.dtype == torch.float64
    x, y = seg_data()
    torch.testing.assert_close(c64(x, y).detach(), (0.5 * losskit.dice_loss(x, y) + losskit.cross_entropy(
        x, y, weight=torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))).detach())


# --- components ---------------------------------------------------------------------------------


def test_components_equal_each_loss_called_directly():
    x, y = seg_data()
    c = losskit.build("0.5*dice + ce(label_smoothing=0.1) + 2e-1*focal_tversky")
    out = c(x, y)
    assert isinstance(out, CompositeResult) and isinstance(out, torch.Tensor)
    expected = {"dice": (0.5, losskit.dice_loss(x, y)),
                "cross_entropy": (1.0, losskit.cross_entropy(x, y, label_smoothing=0.1)),
                "focal_tversky": (0.2, losskit.focal_tversky_loss(x, y))}
    assert list(out.unweighted) == list(expected) == list(out.weighted) == list(out.weights)
    for name, (w, value) in expected.items():
        close(out.unweighted[name], value)
        close(out.weighted[name], w * value)
        assert out.weights[name] == w
        assert not out.unweighted[name].requires_grad and not out.weighted[name].requires_grad
    total = sum(w * v for w, v in expected.values())
    close(out, total)
    close(sum(out.weighted.values()), out)
    # the total keeps its graph: the same gradient as the hand-written sum
    (grad_ours,) = torch.autograd.grad(out, x, retain_graph=True)
    (grad_hand,) = torch.autograd.grad(total, x)
    close(grad_ours, grad_hand)
    assert type(out * 2) is torch.Tensor  # operations give plain tensors
    items = out.items(prefix="train/")
    assert list(items) == ["train/total", "train/dice", "train/dice/weighted", "train/cross_entropy",
                           "train/cross_entropy/weighted", "train/focal_tversky", "train/focal_tversky/weighted"]
    assert items["train/dice/weighted"] == pytest.approx(0.5 * expected["dice"][1].item())
    out.backward()
    assert x.grad is not None


def test_forward_does_not_change_module_state():
    c = losskit.build("0.5*dice + ce")
    before = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in c.state_dict().items()}
    c(*seg_data())
    after = c.state_dict()
    assert before.keys() == after.keys()
    assert c.get_extra_state() == {"progress": 0.0, "step_index": 0}
    assert not hasattr(c, "last_components")


def test_non_scalar_terms_are_refused():
    c = lnn.MSELoss(reduction="none") + lnn.L1Loss()
    with pytest.raises(ValueError, match=r"term 'mse' returned a tensor of shape \(3,\).*reduction='none'"):
        c(torch.zeros(3), torch.ones(3))

    class Returns(nn.Module):
        def forward(self, x, y):
            return "nope"

    with pytest.raises(TypeError, match="returned str"):
        CompositeLoss(Returns())(torch.zeros(1), torch.zeros(1))


def test_terms_read_their_keys_from_dicts():
    gen = torch.Generator().manual_seed(1)
    preds = {"masks": torch.randn(2, 3, 4, 4, generator=gen), "boxes": torch.rand(5, 4, generator=gen) + 1}
    targets = {"masks": torch.randint(3, (2, 4, 4), generator=gen), "boxes": torch.rand(5, 4, generator=gen) + 1}
    c = CompositeLoss([Term(lnn.DiceLoss(), 0.5, "seg", input_key="masks", target_key="masks"),
                       Term(lnn.L1Loss(), 2.0, "box", input_key="boxes", target_key="boxes")])
    out = c(preds, targets)
    close(out.unweighted["seg"], losskit.dice_loss(preds["masks"], targets["masks"]))
    close(out.unweighted["box"], losskit.l1_loss(preds["boxes"], targets["boxes"]))
    close(out, 0.5 * out.unweighted["seg"] + 2.0 * out.unweighted["box"])
    with pytest.raises(KeyError, match=r"reads input\['masks'\].*did you mean 'mask'"):
        c({"mask": preds["masks"], "boxes": preds["boxes"]}, targets)
    with pytest.raises(TypeError, match="input must be a dict"):
        c(preds["masks"], targets)
    assert c.get_config()["terms"][0]["input_key"] == "masks"
    assert losskit.build(c.get_config()).get_config() == c.get_config()


def test_term_validation():
    with pytest.raises(ValueError, match="term name"):
        Term(lnn.MSELoss(), name="a.b")
    with pytest.raises(TypeError, match="weight must be a number"):
        Term(lnn.MSELoss(), weight="1")
    with pytest.raises(ValueError, match="at least one term"):
        CompositeLoss([])
    with pytest.raises(ValueError, match="weighting must be one of"):
        CompositeLoss(lnn.MSELoss(), weighting="learned")
    assert Term("huber").loss.registered_name == "huber"


# --- the spec grammar ---------------------------------------------------------------------------

PARSE_CASES = [
    ("0.5*dice + ce", [("dice", 0.5, {}), ("cross_entropy", 1.0, {})]),
    ("  0.5 *dice+ce\t", [("dice", 0.5, {}), ("cross_entropy", 1.0, {})]),
    ("dice_loss + MAE + smooth-l1" .replace("smooth-l1", "smooth_l1"),
     [("dice", 1.0, {}), ("l1", 1.0, {}), ("smooth_l1", 1.0, {})]),
    ("focal( gamma = 1.5 , alpha=None )", [("sigmoid_focal", 1.0, {"gamma": 1.5, "alpha": None})]),
    ("-2.5e-1*mse - 1E3 * l1", [("mse", -0.25, {}), ("l1", -1000.0, {})]),
    (".5*mse/4", [("mse", 0.125, {})]),
    ("2*(mse + 0.5*(l1 + huber(delta=2)))", [("mse", 2.0, {}), ("l1", 1.0, {}), ("huber", 1.0, {"delta": 2})]),
    ("huber(delta=-0.0) * 3", [("huber", 3.0, {"delta": -0.0})]),
    ("dice(activation='sigmoid', include_background=False, class_weight=[1, 2.5, -25e-2])",
     [("dice", 1.0, {"activation": "sigmoid", "include_background": False, "class_weight": [1.0, 2.5, -0.25]})]),
    ('dice(activation="softmax", absent="zero",)', [("dice", 1.0, {"activation": "softmax", "absent": "zero"})]),
    ("ce(weight=[1.0, 2.0], ignore_index=-1, label_smoothing=1e-1)",
     [("cross_entropy", 1.0, {"weight": [1.0, 2.0], "ignore_index": -1, "label_smoothing": 0.1})]),
    ("mse + mse(reduction='sum')", [("mse", 1.0, {}), ("mse_2", 1.0, {"reduction": "sum"})]),
    ("linear(0.8, 0.1)*bce + warmup(0.1, cosine(1, 0, begin=0.1))*dice",
     [("binary_cross_entropy", Linear(0.8, 0.1), {}), ("dice", Warmup(0.1, Cosine(1.0, 0.0, 0.1)), {})]),
    ("0.5*step([1, 0.5], [0.5])*mse", [("mse", Step((0.5, 0.25), (0.5,)), {})]),
]


@pytest.mark.parametrize(("spec", "expected"), PARSE_CASES)
def test_parse(spec, expected):
    c = losskit.build(spec)
    assert [(t.name, t.weight) for t in c.terms] == [(n, w) for n, w, _ in expected]
    for term, (_, _, options) in zip(c.terms, expected, strict=True):
        config = term.loss.get_config()
        assert {k: v for k, v in config.items() if k != "name"} == options
        for key, value in options.items():
            assert type(config[key]) is type(value)  # ints stay ints, floats floats, lists lists


ERROR_CASES = [
    ("0.5*dcie + ce", ValueError, "at position 4: unknown loss 'dcie'; did you mean 'dice'"),
    ("linaer(0.8, 0.1)*ce", ValueError, "unknown loss 'linaer'; did you mean 'linear'"),
    ("", ValueError, "the spec is empty"),
    ("dice +", ValueError, "at position 6: expected a loss name, a number or '\\(', got the end"),
    ("dice + * ce", ValueError, "at position 7: expected a loss name"),
    ("(dice + ce", ValueError, "expected '\\)', got the end"),
    ("dice + ce)", ValueError, "at position 9: expected '\\+', '-', '\\*' or '/', got '\\)'"),
    ("dice ce", ValueError, "at position 5: expected '\\+'"),
    ("dice * ce", ValueError, "cannot multiply two losses"),
    ("0.5 * 2", ValueError, "the spec has no loss"),
    ("ce + 0.5", ValueError, "cannot add a number or schedule to a loss"),
    ("dice & ce", ValueError, "at position 5: unexpected character '&'"),
    ("dice / ce", ValueError, "can only divide by a number"),
    ("dice / 0", ValueError, "division by zero"),
    ("focal(2)", ValueError, "options of focal must be named"),
    ("focal(gamma=2, gamma=3)", ValueError, "option 'gamma' is given twice"),
    ("dice(activation=sigmoid)", ValueError, "the bare word 'sigmoid'"),
    ("focal(gama=2)", TypeError, "unexpected option 'gama'; did you mean 'gamma'"),
    ("focal(gamma=2", ValueError, "expected ',' or '\\)', got the end"),
    ("dice(class_weight=[1, 2)", ValueError, "expected ',' or '\\]'"),
    ("linear(0.8)*ce", TypeError, "linear\\(...\\): .*missing 1 required positional argument"),
    ("linear(0.8, 0.1, begin=0.5, until=0.2)*ce", ValueError, "begin must be less than until"),
    ("True*ce", ValueError, "True is not a loss or a weight"),
    ("l2_penalty + ce", ValueError, "pass it, losskit.build\\(spec, model=model\\)"),
]


@pytest.mark.parametrize(("spec", "error", "message"), ERROR_CASES)
def test_parse_errors(spec, error, message):
    with pytest.raises(error, match=message) as info:
        losskit.build(spec)
    assert "\n" not in str(info.value)
    if spec:
        assert str(info.value).startswith(f"in {spec!r}")


def test_algebra_and_build_agree():
    assert (0.5 * lnn.DiceLoss() + lnn.CrossEntropyLoss()).get_config() == losskit.build("0.5*dice + ce").get_config()


# --- schedules ----------------------------------------------------------------------------------


def test_schedule_values_by_hand():
    assert [constant(0.3)(f) for f in (0.0, 0.7)] == [0.3, 0.3]
    # linear 1 -> 0 over [0.2, 0.6]: flat 1 before, (0.4 - 0.2) / 0.4 = half way at 0.4, flat 0 after
    lin = linear(1.0, 0.0, begin=0.2, until=0.6)
    assert [lin(f) for f in (0.0, 0.2, 0.4, 0.6, 1.0)] == pytest.approx([1.0, 1.0, 0.5, 0.0, 0.0])
    # cosine 1 -> 0: (1 + cos(pi u)) / 2; u = 0.25 gives (1 + sqrt(2)/2) / 2 = 0.853553...
    cos = cosine(1.0, 0.0)
    assert [cos(f) for f in (0.0, 0.25, 0.5, 1.0)] == pytest.approx([1.0, 0.8535533905932737, 0.5, 0.0])
    assert cosine(2.0, 1.0, begin=0.5)(0.75) == pytest.approx(1.5)  # u = 0.5: 1 + 1 * (1 + 0) / 2
    # step: 1 before 0.5, 0.5 from 0.5 (inclusive) to 0.8, then 0.1
    st = step([1.0, 0.5, 0.1], [0.5, 0.8])
    assert [st(f) for f in (0.0, 0.49, 0.5, 0.79, 0.8, 1.0)] == [1.0, 1.0, 0.5, 0.5, 0.1, 0.1]
    # warm-up to 1 over the first 10%, then cosine 1 -> 0 over the rest:
    # 0.05: 0 + (1 - 0) * 0.05 / 0.1 = 0.5; 0.55: u = 0.5 -> 0.5; 1.0: 0
    wc = warmup(0.1, cosine(1.0, 0.0, begin=0.1))
    assert [wc(f) for f in (0.0, 0.05, 0.1, 0.55, 1.0)] == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0])
    assert warmup(0.1, 1.0, start=0.2)(0.05) == pytest.approx(0.6)  # 0.2 + (1 - 0.2) * 0.5
    assert warmup(0.5, 3.0)(0.75) == 3.0


def test_linear_schedule_is_the_yolo26_one_to_many_weight():
    o2m, o2o = linear(0.8, 0.1), linear(0.2, 0.9)
    for i in range(21):
        f = i / 20
        assert o2m(f) == pytest.approx(one_to_many_weight(f), abs=1e-12)
        assert o2o(f) == pytest.approx(1.0 - one_to_many_weight(f), abs=1e-12)


@pytest.mark.parametrize("schedule", [Constant(0.5), Linear(0.8, 0.1), Cosine(1.0, 0.0, 0.1, 0.9),
                                      Step((1.0, 0.5, 0.1), (0.5, 0.8)), Warmup(0.1, Cosine(1.0, 0.0, 0.1), 0.0),
                                      Product((Linear(1.0, 0.0), Step((1.0, 2.0), (0.5,))))])
def test_schedule_config_round_trip(schedule):
    config = schedule.get_config()
    assert schedule_from_config(config) == schedule
    c = losskit.build([{"loss": "mse", "weight": config}])
    assert losskit.build(c.to_toml()).terms[0].weight == schedule


@pytest.mark.parametrize(("make", "message"), [
    (lambda: step([1.0, 2.0], [0.5, 0.6]), "one more value than boundaries"),
    (lambda: step([1.0, 2.0, 3.0], [0.6, 0.5]), "boundaries must be increasing"),
    (lambda: linear(1.0, 0.0, until=1.5), "until must be in"),
    (lambda: warmup(0.0), "until must be in \\(0"),
    (lambda: constant(float("inf")), "value must be finite"),
    (lambda: schedule_from_config({"schedule": "cosin", "start": 1, "end": 0}), "did you mean 'cosine'"),
])
def test_schedule_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# --- progress -----------------------------------------------------------------------------------


def test_step_and_set_progress_drive_the_weights():
    c = CompositeLoss(linear(1.0, 0.0) * lnn.MSELoss() + step([0.0, 1.0], [0.5]) * lnn.L1Loss(), total_steps=5)
    x, y = torch.tensor([2.0]), torch.tensor([0.0])  # mse 4, l1 2
    assert c(x, y).item() == pytest.approx(4.0)  # progress 0: 1 * 4 + 0 * 2
    c.step(2)  # 2 / (5 - 1) = 0.5
    assert c.progress == 0.5 and c.current_weights() == {"mse": 0.5, "l1": 1.0}
    assert c(x, y).item() == pytest.approx(0.5 * 4 + 2)
    c.step()  # one on: 3 / 4
    assert (c.step_index, c.progress) == (3, 0.75)
    assert c(x, y).weights == {"mse": 0.25, "l1": 1.0}
    c.step(10)
    assert c.progress == 1.0
    c.set_progress(0.1)
    assert c.progress == 0.1 and c(x, y).item() == pytest.approx(0.9 * 4)
    c.set_progress(1.5)
    assert c.progress == 1.0
    with pytest.raises(ValueError, match="needs total_steps"):
        CompositeLoss(lnn.MSELoss()).step(1)
    with pytest.raises(ValueError, match="index must be an integer >= 0"):
        c.step(-1)


def test_progress_survives_state_dict():
    c = losskit.build("cosine(1, 0)*mse + l1")
    c = CompositeLoss(c, total_steps=11)
    c.step(3)
    fresh = CompositeLoss(losskit.build(c.get_config()), total_steps=11)
    assert fresh.progress == 0.0
    fresh.load_state_dict(c.state_dict())
    assert (fresh.progress, fresh.step_index) == (0.3, 3)
    assert fresh.current_weights() == c.current_weights()
    fresh.step()
    assert fresh.progress == pytest.approx(0.4)


def make_yolo_inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)

    def maps():
        return [torch.randn(2, 4 + 3, 8, 8, generator=gen, requires_grad=True),
                torch.randn(2, 4 + 3, 4, 4, generator=gen, requires_grad=True)]

    preds = {"one2many": maps(), "one2one": maps()}
    targets = {"batch_idx": torch.tensor([0.0, 0.0, 1.0]), "cls": torch.tensor([0.0, 2.0, 1.0]),
               "bboxes": torch.tensor([[0.3, 0.3, 0.3, 0.4], [0.7, 0.6, 0.2, 0.2], [0.5, 0.5, 0.6, 0.5]])}
    return preds, targets


def test_composite_drives_an_end_to_end_yolo_loss():
    preds, targets = make_yolo_inputs()
    yolo = YOLOLoss(3, strides=(8, 16), reg_max=1, end2end=True)
    c = CompositeLoss([Term(yolo, 1.0, "det")], total_steps=11)
    c.step(4)  # progress 0.4: one-to-many weight 0.1 + 0.7 * 0.6 = 0.52
    assert yolo.progress == pytest.approx(0.4)
    assert yolo.branch_weights["one2many"] == pytest.approx(linear(0.8, 0.1)(0.4)) == pytest.approx(0.52)
    out = c(preds, targets)
    result = out.outputs["det"]
    assert sorted(result.components) == ["box", "cls", "l1"]
    expected = 0.52 * result.branches["one2many"].total + 0.48 * result.branches["one2one"].total
    close(out.detach(), expected.detach(), 1e-6)
    fresh = YOLOLoss(3, strides=(8, 16), reg_max=1, end2end=True)
    fresh_c = CompositeLoss([Term(fresh, 1.0, "det")], total_steps=11)
    fresh_c.load_state_dict(c.state_dict())
    assert fresh.progress == pytest.approx(0.4)
    # config round trip through the losskit class path
    config = c.get_config()
    assert config["terms"][0]["loss"]["class"] == "losskit.detection.yolo.YOLOLoss"
    rebuilt = losskit.build(config)
    assert rebuilt.get_config() == config


# --- configs ------------------------------------------------------------------------------------


def rich_composite():
    terms = [
        Term(lnn.DiceLoss(activation="softmax", include_background=False, smooth_nr=0.0), 0.5, "seg"),
        Term(lnn.CrossEntropyLoss(weight=[1.0, 2.0, 0.5], label_smoothing=0.1), warmup(0.2, cosine(1.0, 0.1,
                                                                                           begin=0.2)), "ce"),
        Term(lnn.SoftmaxFocalLoss(alpha=None, gamma=2.0), step([0.0, 1.0], [0.5]), "focal"),
    ]
    return CompositeLoss(terms, weighting="uncertainty", uncertainty_form="regression", total_steps=20)


def test_config_round_trip_dict_and_toml(tmp_path: Path):
    c = rich_composite()
    config = c.get_config()
    text = to_toml(c)
    assert toml_io.tomllib.loads(text)["terms"][2]["loss"]["none"] == ["alpha"]  # TOML has no null
    for rebuilt in (losskit.build(config), losskit.build(text), from_toml(text)):
        assert rebuilt.get_config() == config
    path = tmp_path / "loss.toml"
    path.write_text(text)
    assert losskit.build(path).get_config() == config
    rebuilt = losskit.build(text)
    assert rebuilt.terms[2].loss.options()["alpha"] is None
    c.set_progress(0.6)
    with torch.no_grad():
        c.log_variance["seg"].fill_(0.3)
    rebuilt.load_state_dict(c.state_dict())
    x, y = seg_data()
    close(rebuilt(x, y).detach(), c(x, y).detach())


def test_list_and_single_loss_forms():
    listed = losskit.build(["0.5*dice", {"name": "ce"}, {"loss": {"name": "huber", "delta": 2.0}, "weight": 3,
                                                          "name": "h"}])
    assert names_weights(listed) == [("dice", 0.5), ("cross_entropy", 1.0), ("h", 3.0)]
    assert names_weights(losskit.build({"name": "focal", "gamma": 1.0})) == [("sigmoid_focal", 1.0)]
    assert names_weights(losskit.build({"terms": "0.5*mse + l1"})) == [("mse", 0.5), ("l1", 1.0)]
    with pytest.raises(ValueError, match="terms\\[0\\] has unknown keys \\['wieght'\\]"):
        losskit.build([{"loss": "mse", "wieght": 2}])
    with pytest.raises(ValueError, match="the composite config has unknown keys \\['weigthing'\\]"):
        losskit.build({"terms": ["mse"], "weigthing": "fixed"})
    with pytest.raises(ValueError, match="must name a registered loss, penalty or criterion class, got 'os.system'"):
        losskit.build([{"loss": {"class": "os.system"}}])
    with pytest.raises(ValueError, match="invalid TOML"):
        losskit.build("[[terms]\nname = 1")
    with pytest.raises(TypeError, match="has no losskit config"):
        CompositeLoss(nn.MSELoss()).get_config()


def test_toml_none_key_is_reserved():
    with pytest.raises(ValueError, match="reserves for options set to None"):
        to_toml(CompositeLoss(Term(_NoneOption(), name="b")))


@register_class
class _NoneOption(nn.Module):
    """A loss whose config has a key named 'none' (not writable as TOML)."""

    def get_config(self):
        return {"none": 1}

    def forward(self, x, y):
        return x.sum()


# --- learned uncertainty weighting ----------------------------------------------------------------


@pytest.mark.parametrize(("form", "a", "b"), [("plain", 1.0, 1.0), ("regression", 0.5, 0.5),
                                              ("classification", 1.0, 0.5)])
def test_uncertainty_weighting_value_and_gradient_by_hand(form, a, b):
    c = CompositeLoss(2.0 * lnn.MSELoss() + lnn.L1Loss(), weighting="uncertainty", uncertainty_form=form)
    assert sorted(name for name, _ in c.named_parameters()) == ["log_variance.l1", "log_variance.mse"]
    with torch.no_grad():
        c.log_variance["mse"].fill_(0.5)
        c.log_variance["l1"].fill_(-1.0)
    x, y = torch.tensor([1.0, 3.0]), torch.zeros(2)  # mse = 5, l1 = 2
    out = c(x, y)
    # total = a e^{-0.5} * 2 * 5 + b * 0.5 + a e^{1} * 2 + b * (-1)
    expected = a * math.exp(-0.5) * 10 + b * 0.5 + a * math.e * 2 - b
    assert out.item() == pytest.approx(expected, rel=1e-6)
    assert out.weights["mse"].item() == pytest.approx(a * math.exp(-0.5) * 2, rel=1e-6)
    assert out.weighted["l1"].item() == pytest.approx(a * math.e * 2 - b, rel=1e-6)
    out.backward()
    # d/ds [a e^{-s} w L + b s] = -a e^{-s} w L + b
    assert c.log_variance["mse"].grad.item() == pytest.approx(-a * math.exp(-0.5) * 10 + b, rel=1e-6)
    assert c.log_variance["l1"].grad.item() == pytest.approx(-a * math.e * 2 + b, rel=1e-6)


def test_uncertainty_minimum_is_at_log_loss():
    # plain form: d/ds = 0 at e^{-s} L = 1, i.e. s = log L; a few Adam steps move s toward it
    c = CompositeLoss(lnn.MSELoss(), weighting="uncertainty")
    opt = torch.optim.Adam(c.parameters(), lr=0.1)
    x, y = torch.tensor([2.0]), torch.tensor([0.0])  # L = 4
    for _ in range(300):
        opt.zero_grad()
        c(x, y).backward()
        opt.step()
    assert c.log_variance["mse"].item() == pytest.approx(math.log(4.0), abs=1e-2)


def test_uncertainty_state_dict_round_trip_and_nesting():
    c = CompositeLoss(lnn.MSELoss() + lnn.L1Loss(), weighting="uncertainty")
    with torch.no_grad():
        c.log_variance["l1"].fill_(0.7)
    fresh = losskit.build(c.get_config())
    assert fresh.log_variance["l1"].item() == 0.0
    fresh.load_state_dict(c.state_dict())
    assert fresh.log_variance["l1"].item() == pytest.approx(0.7)
    # a learned-weight composite combined with more terms stays one term of the result
    outer = 0.5 * c + lnn.HuberLoss()
    assert names_weights(outer)[1] == ("huber", 1.0) and outer.terms[0].loss is c
    x, y = torch.tensor([1.0, 3.0]), torch.zeros(2)
    out = outer(x, y)
    close(out.unweighted["composite"], c(x, y).detach())
    assert isinstance(out.outputs["composite"], CompositeResult)
    assert losskit.build(outer.get_config()).get_config() == outer.get_config()


# --- peers ------------------------------------------------------------------------------------


def test_dice_plus_ce_string_equals_dice_ce_loss():
    x, y = seg_data(3)
    c = losskit.build("0.3*dice + 0.7*ce")
    close(c(x, y), losskit.dice_ce_loss(x, y, lambda_dice=0.3, lambda_ce=0.7))


@pytest.mark.peer
def test_build_reproduces_monai_dice_ce():
    monai = pytest.importorskip("monai.losses")
    x, y = seg_data(4)
    ours = losskit.build("0.3*dice(include_background=False) + 0.7*ce")(x, y)
    theirs = monai.DiceCELoss(softmax=True, to_onehot_y=True, include_background=False, lambda_dice=0.3,
                              lambda_ce=0.7)(x, y.unsqueeze(1))
    close(ours, theirs, 1e-10)


# --- the documentation's examples run --------------------------------------------------------------

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.mark.parametrize("page", ["compose.md", "regularization.md"])
def test_documentation_examples_run(page):
    import re as regex

    text = (DOCS / page).read_text()
    blocks = regex.findall(r"```python\n(.*?)\n```", text, flags=regex.S)
    assert len(blocks) >= 3
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, f"{page} example", "exec"), namespace)  # noqa: S102


def test_documented_toml_is_what_to_toml_writes():
    text = (DOCS / "compose.md").read_text()
    documented = text.split("```toml\n", 1)[1].split("```", 1)[0]
    assert losskit.build("0.5*dice + linear(0.8, 0.1)*focal(alpha=None)").to_toml() == documented


# --- specs and configs from outside: bounded, parsed, never run ---------------------------------

# A message that quotes input from outside stays this short, whatever the input's size.
SHORT = 700


@pytest.mark.parametrize("spec", [
    "(" * 400 + "dice" + ")" * 400,
    "-" * 400 + "dice",
    "focal(alpha=" + "[" * 400 + "]" * 400 + ")",
    "dice(weight=" + "-" * 400 + "1)",
    "warmup(0.1, " * 100 + "1" + ")" * 100 + " * dice",
])
def test_deep_nesting_is_a_value_error_with_the_limit(spec):
    with pytest.raises(ValueError, match=f"nests more than {MAX_SPEC_NESTING} levels deep") as caught:
        losskit.build(spec)
    assert len(str(caught.value)) < SHORT


def test_nesting_limit_is_exact():
    inner = "(" * MAX_SPEC_NESTING + "dice" + ")" * MAX_SPEC_NESTING
    assert names_weights(losskit.build(inner)) == [("dice", 1.0)]
    assert names_weights(losskit.build("-" * MAX_SPEC_NESTING + "dice")) == [("dice", 1.0)]  # an even count
    with pytest.raises(ValueError, match="at position 32: the spec nests more than 32 levels"):
        losskit.build("(" + inner + ")")


@pytest.mark.parametrize("spec", ["(" * 5000 + "dice" + ")" * 5000, "-" * 5000 + "dice",
                                  "focal(alpha=" + "[" * 5000 + "]" * 5000 + ")", "dice+" * 20_000 + "hubr",
                                  "x" * 100_000])
def test_long_spec_is_refused_with_a_short_message(spec):
    with pytest.raises(ValueError, match=f"longer than {MAX_SPEC_LENGTH} characters") as caught:
        losskit.build(spec)
    assert len(str(caught.value)) < SHORT


def test_messages_quote_a_bounded_excerpt():
    name = "x" * 4000  # within the length limit: the message shows the part around the position
    with pytest.raises(ValueError, match=r"at position 5: unknown loss 'xxx.*' \(4000 characters\)") as caught:
        losskit.build("dice+" + name)
    assert len(str(caught.value)) < SHORT
    cases = [
        lambda: losskit.get({"name": "y" * 100_000}),
        lambda: losskit.get({"name": "dice", "activation": "z" * 100_000})(torch.zeros(1, 2, 3),
                                                                          torch.zeros(1, 3, dtype=torch.long)),
        lambda: losskit.get({str(i): 1 for i in range(100_000)}),
        lambda: losskit.build({"terms": ["mse"], **{f"k{i}": 1 for i in range(100_000)}}),
        lambda: losskit.build([{"loss": "mse", "weight": {"schedule": "q" * 100_000}}]),
        lambda: losskit.build("dice(" + "o" * 4000 + "=1)"),
    ]
    for case in cases:
        with pytest.raises((TypeError, ValueError)) as caught:
            case()
        assert len(str(caught.value)) < SHORT, str(caught.value)[:200]


def _nested(depth, leaf, wrap):
    value = leaf
    for _ in range(depth):
        value = wrap(value)
    return value


@pytest.mark.parametrize("config", [
    _nested(3000, "mse", lambda v: {"terms": [v]}),
    [{"loss": "mse", "weight": _nested(3000, 1.0, lambda v: {"schedule": "warmup", "until": 0.5, "then": v})}],
    [{"loss": {"name": "ce", "weight": _nested(3000, 1.0, lambda v: [v])}}],
])
def test_deep_configs_are_refused_before_recursing(config):
    with pytest.raises(ValueError, match=f"more than {MAX_CONFIG_NESTING} levels deep"):
        losskit.build(config)


def test_deep_toml_is_refused_before_parsing():
    with pytest.raises(ValueError, match=f"more than {MAX_CONFIG_NESTING} levels deep"):
        losskit.build("weighting = 'fixed'\nx = " + "[" * 5000 + "]" * 5000 + "\n")
    # brackets inside strings and comments are not structure
    text = ('[[terms]]  # [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\nloss = { name = "mse" }\n'
            'input_key = "' + "[{" * 40 + '"\ntarget_key = \'\'\'' + "[" * 40 + "\'\'\'\n")
    term = losskit.build(text).terms[0]
    assert term.input_key == "[{" * 40 and term.target_key == "[" * 40


@pytest.mark.parametrize("form", ["list", "composite", "toml", "get"])
@pytest.mark.parametrize("path", ["losskit.cli.plots.plot_losses", "losskit.__main__.main", "os.system",
                                  "losskit.compose.build", "losskit.detection.yolo.one_to_many_weight"])
def test_config_class_names_only_registered_classes(form, path, tmp_path):
    """A config's "class" is looked up in the registry's allowlist: nothing is imported or called
    by name (the plot would write a file; importing losskit.__main__ would run the command line)."""
    target = tmp_path / "written.png"
    loss = {"class": path, "names": ["mse"], "out": str(target)}
    build = {"list": lambda: losskit.build([{"loss": loss}]),
             "composite": lambda: losskit.build({"terms": [{"loss": loss, "weight": 2}]}),
             "toml": lambda: losskit.build(f'[[terms]]\nloss = {{ class = "{path}", names = ["mse"], '
                                           f'out = "{target.as_posix()}" }}\n'),
             "get": lambda: losskit.get(loss)}[form]
    main_loaded = "losskit.__main__" in sys.modules
    with pytest.raises(ValueError, match=f"must name a registered loss, penalty or criterion class, got '{path}'"):
        build()
    assert not target.exists()
    assert ("losskit.__main__" in sys.modules) == main_loaded


def test_config_class_builds_registered_classes():
    assert repr(losskit.get({"class": "losskit.nn.HuberLoss", "delta": 2.0})) == "HuberLoss(delta=2.0)"
    yolo = losskit.get({"class": "losskit.detection.yolo.YOLOLoss", "num_classes": 3, "reg_max": 1})
    assert isinstance(yolo, YOLOLoss) and yolo.reg_max == 1
    net = nn.Linear(2, 1)
    built = losskit.build([{"loss": {"class": "losskit.regularization.L2Penalty"}, "weight": 1e-4}], model=net)
    assert built.get_config()["terms"][0]["loss"] == {"name": "l2_penalty"}
    with pytest.raises(ValueError, match="L2Penalty reads a model's parameters"):
        losskit.get({"class": "losskit.regularization.L2Penalty"})
    with pytest.raises(ValueError, match="has both 'name' and 'class'"):
        losskit.get({"name": "dice", "class": "losskit.nn.DiceLoss"})


def test_penalty_type_filters_import_nothing():
    net = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
    main_loaded = "losskit.__main__" in sys.modules
    with pytest.raises(ValueError, match="names no nn.Module class of an imported module"):
        losskit.build("ce + 1e-4*l2_penalty(exclude=['type:losskit.__main__.main'])", model=net)
    with pytest.raises(ValueError, match="names no nn.Module class"):
        losskit.build([{"loss": {"name": "l2_penalty", "include": ["type:os.system"]}}], model=net)
    assert ("losskit.__main__" in sys.modules) == main_loaded
    penalty = losskit.build("l2_penalty(include=['type:torch.nn.LayerNorm'], exclude_defaults=False)", model=net)
    assert penalty.terms[0].loss.get_config()["include"] == ["type:torch.nn.LayerNorm"]


@pytest.mark.parametrize(("make", "error", "message"), [
    (lambda: losskit.get({"name": 3}), TypeError, r"the config's 'name': a loss name must be a string .*got int 3"),
    (lambda: losskit.get({"name": None}), TypeError, "'name': a loss name must be a string"),
    (lambda: losskit.build({"name": ["dice"]}), TypeError, "'name': a loss name must be a string"),
    (lambda: losskit.build([{"loss": {"name": 3}}]), TypeError, r"terms\[0\]\.loss\.name: a loss name must be"),
    (lambda: losskit.get({"name": "mse", 1: 2}), TypeError, "option names must be strings, got 1"),
    (lambda: losskit.get({"gamma": 2}), ValueError, r"needs a 'name' key .* got keys \['gamma'\]"),
    (lambda: losskit.build({"terms": 3}), TypeError, "terms must be a list of terms"),
    (lambda: losskit.build([3]), TypeError, r"terms\[0\] must be a spec string, a term dict or a loss config"),
    (lambda: losskit.build([{"loss": 3}]), TypeError, r"terms\[0\]\.loss must be a loss name"),
    (lambda: losskit.build([{"loss": {"name": "dice", "activaton": "softmax"}}]), TypeError,
     r"terms\[0\]\.loss: DiceLoss got an unexpected option 'activaton'; did you mean 'activation'"),
    (lambda: losskit.build([{"loss": {"class": "losskit.detection.yolo.YOLOLoss", "num_classes": 3, "box": "big"}}]),
     TypeError, r"terms\[0\]\.loss: box must be a number, got str"),
    (lambda: losskit.build([{"loss": "mse", "weight": {"schedule": ["linear"]}}]), ValueError,
     r"terms\[0\]\.weight: unknown schedule \['linear'\]"),
    (lambda: losskit.build([{"loss": "mse", "weight": {"schedule": "step", "values": 3, "boundaries": []}}]),
     TypeError, r"terms\[0\]\.weight: schedule 'step': values must be a list, got int"),
    (lambda: losskit.build([{"loss": "mse", "weight": {"schedule": "linear", "start": 1, "end": 0, "stop": 1}}]),
     TypeError, "schedule 'linear' has no option 'stop'; its options are start, end, begin, until"),
    (lambda: losskit.build([{"loss": "mse", "weight": "heavy"}]), ValueError,
     r"terms\[0\]\.weight: a weight must be a number or a schedule config"),
    (lambda: losskit.build([{"loss": "mse", "name": 3}]), ValueError, r"terms\[0\]: a term name must be"),
    (lambda: losskit.build({"terms": ["mse"], "weighting": 3}), ValueError,
     r"the composite config: weighting must be one of"),
    (lambda: losskit.build("[[terms]]\nloss = { name = 'focal', none = 3 }\n"), TypeError,
     "'none' key lists the options set to None, so it must be a list of names"),
])
def test_malformed_configs_name_the_key(make, error, message):
    with pytest.raises(error, match=message):
        make()


_KEYS = st.sampled_from(["name", "class", "terms", "loss", "weight", "schedule", "values", "boundaries", "then",
                         "factors", "until", "start", "end", "input_key", "weighting", "total_steps", "gamma",
                         "none", "delta", "reduction", "x"])
_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True),
                    st.sampled_from(["mse", "dice", "linear", "step", "warmup", "fixed", "uncertainty", "0.5*ce",
                                     "losskit.nn.HuberLoss", "mean", "(", "l2_penalty"]))
_CONFIGS = st.recursive(_LEAVES, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner,
                                                                                                   max_size=4),
                        max_leaves=12)


@settings(max_examples=150)
@given(config=_CONFIGS)
def test_any_malformed_config_gives_a_clear_error(config):
    """Whatever the shape of a config, build either works or raises ValueError or TypeError
    (never AttributeError, KeyError, IndexError or RecursionError), with a short message."""
    if isinstance(config, str) or config is None or isinstance(config, (bool, int, float)):
        config = {"terms": [config]}
    try:
        losskit.build(config, model=nn.Linear(2, 1))
    except (TypeError, ValueError) as error:
        assert len(str(error)) < SHORT
