"""Parameter penalties: hand values, default exclusions, filters, composite terms, L2-in-loss vs AdamW."""

import re

import pytest
import torch
from torch import nn

import losskit
from losskit import nn as lnn
from losskit.compose import CompositeLoss
from losskit.regularization import (
    ElasticNetPenalty,
    L1Penalty,
    L2Penalty,
    elastic_net_penalty,
    l1_penalty,
    l2_penalty,
    param_groups,
    selected_parameters,
)


class MyRMSNorm(nn.Module):  # a custom normalization layer, recognised by its class name
    def __init__(self, n):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(n))


def small_net():
    """Linear(2, 2) with weight [[1, -2], [3, 0]] and bias [5, 5], then norms and a head [[-1, 1]]."""
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.LayerNorm(2), nn.GroupNorm(1, 2),
                        nn.InstanceNorm1d(2, affine=True), MyRMSNorm(2), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -2.0], [3.0, 0.0]]))
        net[0].bias.fill_(5.0)
        net[6].weight.copy_(torch.tensor([[-1.0, 1.0]]))
        for m in net[1:6]:
            for p in m.parameters():
                p.fill_(7.0)
    return net


def test_default_selection_skips_biases_and_normalization():
    names = [n for n, _ in selected_parameters(small_net())]
    assert names == ["0.weight", "6.weight"]
    everything = [n for n, _ in selected_parameters(small_net(), exclude_defaults=False)]
    assert len(everything) == len(list(small_net().parameters())) == 12


def test_penalties_by_hand():
    net = small_net()
    # selected: [[1, -2], [3, 0]] and [[-1, 1]]: sum |w| = 3 + 3 + 2 = 8, sum w^2 = 1 + 4 + 9 + 1 + 1 = 16
    assert l1_penalty(net).item() == 8.0
    assert l2_penalty(net).item() == 16.0
    assert l2_penalty(net, half=True).item() == 8.0
    assert elastic_net_penalty(net, l1_ratio=0.25).item() == 0.25 * 8 + 0.75 * 16  # 14
    assert elastic_net_penalty(net, l1_ratio=0.25, half=True).item() == 0.25 * 8 + 0.75 * 8  # 8
    assert elastic_net_penalty(net, l1_ratio=1.0).item() == 8.0
    # with biases and norms: + |5| * 2, and 20 norm parameters of 7 (BN, LN, GN, IN: 2 + 2 each; RMS 2)
    assert l1_penalty(net, exclude_defaults=False).item() == 8 + 10 + 18 * 7
    assert l2_penalty(net, exclude_defaults=False).item() == 16 + 50 + 18 * 49


def test_penalty_gradients():
    net = small_net()
    w = net[0].weight
    (g,) = torch.autograd.grad(l2_penalty(net), w)
    torch.testing.assert_close(g, 2 * w.detach())  # d/dw sum w^2 = 2w
    (g,) = torch.autograd.grad(l2_penalty(net, half=True), w)
    torch.testing.assert_close(g, w.detach())
    (g,) = torch.autograd.grad(l1_penalty(net), w)
    torch.testing.assert_close(g, torch.tensor([[1.0, -1.0], [1.0, 0.0]]))  # sign(w)


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"include": "0.*"}, ["0.weight"]),
    ({"include": ["*.weight"], "exclude_defaults": False}, ["0.weight", "1.weight", "2.weight", "3.weight",
                                                           "4.weight", "6.weight"]),
    ({"include": "re:^6\\."}, ["6.weight"]),
    ({"include": re.compile(r"weight$"), "exclude": [nn.Linear]}, []),
    ({"include": nn.Linear, "exclude_defaults": False}, ["0.weight", "0.bias", "6.weight"]),
    ({"exclude": "6.*"}, ["0.weight"]),
    ({"include": [MyRMSNorm, nn.LayerNorm], "exclude_defaults": False}, ["2.weight", "2.bias", "5.scale"]),
    ({"include": "type:torch.nn.LayerNorm", "exclude": "*.bias", "exclude_defaults": False}, ["2.weight"]),
])
def test_filters(kwargs, expected):
    assert [n for n, _ in selected_parameters(small_net(), **kwargs)] == expected


def test_filter_errors_and_empty_selection():
    with pytest.raises(ValueError, match="select no parameter of the Sequential"):
        l2_penalty(small_net(), include="nothing.*")
    with pytest.raises(TypeError, match="nn.Module class"):
        selected_parameters(small_net(), include=int)
    with pytest.raises(TypeError, match="globs"):
        selected_parameters(small_net(), include=[3])
    with pytest.raises(ValueError, match="l1_ratio must be in"):
        elastic_net_penalty(small_net(), l1_ratio=1.5)
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        l1_penalty([torch.zeros(2)])


def test_embeddings_are_penalized_and_tied_parameters_count_once():
    emb = nn.Embedding(3, 2)
    head = nn.Linear(2, 3, bias=False)
    head.weight = emb.weight  # tied
    net = nn.Sequential(emb, head)
    with torch.no_grad():
        emb.weight.fill_(1.0)
    assert [n for n, _ in selected_parameters(net)] == ["0.weight"]
    assert l2_penalty(net).item() == 6.0  # 3 x 2 ones, once
    with pytest.raises(ValueError, match="select no parameter"):
        l2_penalty(net, exclude=[nn.Embedding, nn.Linear])


def test_half_precision_parameters_sum_in_float32():
    net = nn.Linear(2, 1, bias=False).half()
    with torch.no_grad():
        net.weight.fill_(200.0)  # 2 * 200^2 = 80000 overflows float16 (max 65504)
    value = l2_penalty(net)
    assert value.dtype == torch.float32 and value.item() == 80000.0


def test_penalty_module_is_a_composite_term():
    net = small_net()
    criterion = lnn.MSELoss() + 0.1 * L2Penalty(net, half=True)
    assert [(t.name, t.weight) for t in criterion.terms] == [("mse", 1.0), ("l2_penalty", 0.1)]
    assert list(criterion.parameters()) == [] and list(criterion.state_dict()) == ["_extra_state"]  # no model
    x, y = torch.tensor([1.0, 3.0]), torch.zeros(2)  # mse 5; 0.1 * 8
    out = criterion(x, y)
    assert out.item() == pytest.approx(5.8)
    assert out.unweighted["l2_penalty"].item() == 8.0
    out.backward()
    torch.testing.assert_close(net[0].weight.grad, 0.1 * net[0].weight.detach())
    assert L1Penalty(net)("ignored", "arguments").item() == 8.0
    # learned weighting leaves penalties at their fixed weight
    learned = CompositeLoss(criterion, weighting="uncertainty")
    assert list(learned.log_variance) == ["mse"]
    assert learned(x, y).item() == pytest.approx(5.8)  # s = 0: e^0 * 5 + 0, plus 0.8


def test_penalties_in_build_strings_and_configs():
    net = small_net()
    spec = "mse + 1e-2*l2_penalty(half=True, exclude=['re:^6\\\\.']) + 1e-3*elastic_net(l1_ratio=0.2)"
    c = losskit.build(spec, model=net)
    assert [t.name for t in c.terms] == ["mse", "l2_penalty", "elastic_net_penalty"]
    out = c(torch.tensor([1.0]), torch.zeros(1))
    # l2 half over layer 0 only: (1 + 4 + 9) / 2 = 7; elastic: 0.2 * 8 + 0.8 * 16 = 14.4
    assert out.unweighted["l2_penalty"].item() == 7.0
    assert out.unweighted["elastic_net_penalty"].item() == pytest.approx(14.4)
    config = c.get_config()
    assert config["terms"][1]["loss"] == {"name": "l2_penalty", "half": True, "exclude": ["re:^6\\."]}
    assert losskit.build(config, model=net).get_config() == config
    assert losskit.build(c.to_toml(), model=net).get_config() == config
    typed = ElasticNetPenalty(net, include=[nn.Linear, re.compile("weight")], exclude_defaults=False)
    rebuilt = losskit.build(CompositeLoss(typed).get_config(), model=net)
    assert rebuilt.terms[0].loss().item() == typed().item()  # Linear weights and bias: 0.5 * 18 + 0.5 * 66
    with pytest.raises(ValueError, match="model=model"):
        losskit.build(config)


def test_param_groups_split_like_the_penalties():
    net = small_net()
    decay, rest = param_groups(net, 0.05)
    assert decay["weight_decay"] == 0.05 and rest["weight_decay"] == 0.0
    assert [id(p) for p in decay["params"]] == [id(p) for _, p in selected_parameters(net)]
    assert len(decay["params"]) + len(rest["params"]) == len(list(net.parameters()))


# --- L2 in the loss vs decoupled weight decay --------------------------------------------------------


def one_step(make_opt, lam_in_loss, half=True):
    """One optimizer step on mse(w . x, y) + lam_in_loss * penalty, from the same start."""
    torch.manual_seed(0)
    net = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[0.5, -1.0, 2.0]]))
    x = torch.tensor([[1.0, 2.0, -1.0], [0.5, -0.5, 1.0]])
    y = torch.tensor([[0.3], [-0.2]])
    opt = make_opt(net.parameters())
    loss = losskit.mse_loss(net(x), y)
    if lam_in_loss:
        loss = loss + lam_in_loss * l2_penalty(net, half=half)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return net.weight.detach().clone()


def test_l2_in_the_loss_versus_decoupled_weight_decay():
    lam, lr = 0.1, 0.05
    w0 = torch.tensor([[0.5, -1.0, 2.0]])
    # SGD: lam/2 ||w||^2 in the loss (half=True) has gradient lam*w, the same update as SGD(weight_decay=lam)
    # and as the decoupled step w - lr*lam*w - lr*grad(data) (AdamW's decay form): they coincide.
    sgd_l2 = one_step(lambda p: torch.optim.SGD(p, lr=lr), lam, half=True)
    sgd_wd = one_step(lambda p: torch.optim.SGD(p, lr=lr, weight_decay=lam), 0.0)
    sgd_plain = one_step(lambda p: torch.optim.SGD(p, lr=lr), 0.0)
    torch.testing.assert_close(sgd_l2, sgd_wd)
    decoupled = sgd_plain - lr * lam * w0  # w - lr*grad - lr*lam*w
    torch.testing.assert_close(sgd_l2, decoupled)
    # without the 1/2, lam ||w||^2 has gradient 2*lam*w: it equals weight_decay=2*lam, not lam
    sgd_l2_full = one_step(lambda p: torch.optim.SGD(p, lr=lr), lam, half=False)
    sgd_wd_2 = one_step(lambda p: torch.optim.SGD(p, lr=lr, weight_decay=2 * lam), 0.0)
    torch.testing.assert_close(sgd_l2_full, sgd_wd_2)
    assert (sgd_l2_full - sgd_wd).abs().max() > 1e-4
    # Adam: the L2 gradient goes through the adaptive normalisation; Adam(weight_decay) does the same
    # (coupled), AdamW decays the weights directly. After one step Adam moves each weight by ~lr * sign(g):
    adam_l2 = one_step(lambda p: torch.optim.Adam(p, lr=lr), lam, half=True)
    adam_wd = one_step(lambda p: torch.optim.Adam(p, lr=lr, weight_decay=lam), 0.0)
    adamw = one_step(lambda p: torch.optim.AdamW(p, lr=lr, weight_decay=lam), 0.0)
    adam_plain = one_step(lambda p: torch.optim.Adam(p, lr=lr), 0.0)
    torch.testing.assert_close(adam_l2, adam_wd)
    torch.testing.assert_close(adamw, adam_plain - lr * lam * w0)  # AdamW: w(1 - lr*lam) - lr * adam(grad)
    assert (adam_l2 - adamw).abs().max() > 1e-3
