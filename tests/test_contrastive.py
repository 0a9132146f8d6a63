"""Contrastive losses: float64 references from the papers, hand-worked values, properties, peers."""

from __future__ import annotations

import math

import pytest
import torch

import losskit
import losskit.functional as LF
from tests import reference_contrastive as ref


def close(actual, expected, rtol=1e-10, atol=1e-12):
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def embeddings(*shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- InfoNCE ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("same_view", [False, True])
@pytest.mark.parametrize("normalize", [True, False])
def test_info_nce_matches_the_reference(symmetric, same_view, normalize):
    u, v = embeddings(6, 4, seed=1), embeddings(6, 4, seed=2)
    tau = 0.3 if normalize else 3.0
    got = LF.info_nce_loss(u, v, temperature=tau, symmetric=symmetric, same_view_negatives=same_view,
                           normalize=normalize, reduction="none")
    close(got, ref.info_nce(u, v, tau, symmetric=symmetric, same_view=same_view, normalize=normalize))


def test_info_nce_hand_worked():
    # u = v = I_2, tau = 1: s = I, each row -log(e / (e + 1)) = log(1 + e^-1) = 0.31326...
    u = torch.eye(2, dtype=torch.float64)
    close(LF.info_nce_loss(u, u, temperature=1.0), torch.tensor(math.log1p(math.exp(-1)), dtype=torch.float64))
    # NT-Xent adds the other row of the same side (s = 0): -log(e / (e + 2)) = log(1 + 2/e)
    close(LF.info_nce_loss(u, u, temperature=1.0, same_view_negatives=True),
          torch.tensor(math.log1p(2 * math.exp(-1)), dtype=torch.float64))


def test_info_nce_properties():
    u, v = embeddings(5, 3, seed=3), embeddings(5, 3, seed=4)
    base = LF.info_nce_loss(u, v, reduction="none")
    # symmetric CLIP loss: swapping the two sides changes nothing, pair by pair
    close(LF.info_nce_loss(v, u, reduction="none"), base)
    # invariant to the scale of each embedding when normalized
    scale = torch.rand(5, 1, dtype=torch.float64) * 10 + 0.1
    close(LF.info_nce_loss(u * scale, v * 3.0, reduction="none"), base)
    # the asymmetric directions average to the symmetric loss
    one = LF.info_nce_loss(u, v, symmetric=False, reduction="none")
    other = LF.info_nce_loss(v, u, symmetric=False, reduction="none")
    close((one + other) / 2, base)
    # a tensor temperature equals the number, and gets a gradient
    tau = torch.tensor(0.07, dtype=torch.float64, requires_grad=True)
    out = LF.info_nce_loss(u, v, temperature=tau)
    close(out, LF.info_nce_loss(u, v, temperature=0.07))
    out.backward()
    assert torch.isfinite(tau.grad) and tau.grad != 0


def test_info_nce_small_temperature_stays_finite_where_monai_overflows():
    monai = pytest.importorskip("monai.losses")
    u = torch.nn.functional.normalize(embeddings(4, 8, seed=5), dim=-1).float()
    v = (u + 0.01 * embeddings(4, 8, seed=6).float())
    ours = LF.info_nce_loss(u, v, temperature=0.005, same_view_negatives=True)
    assert torch.isfinite(ours)
    theirs = monai.ContrastiveLoss(temperature=0.005)(u, v)  # exp(1 / 0.005) overflows float32
    assert not torch.isfinite(theirs)


@pytest.mark.peer
def test_info_nce_nt_xent_matches_monai():
    monai = pytest.importorskip("monai.losses")
    u, v = embeddings(6, 4, seed=7), embeddings(6, 4, seed=8)
    # MONAI ContrastiveLoss: SimCLR's NT-Xent over the 2N views, T = 0.5, mean over the 2N anchors
    expected = monai.ContrastiveLoss(temperature=0.5)(u, v)
    close(LF.info_nce_loss(u, v, temperature=0.5, same_view_negatives=True), expected, rtol=1e-7, atol=1e-9)


def test_info_nce_module_learns_the_temperature_clip_style():
    loss = losskit.InfoNCELoss(learn_temperature=True)
    close(loss.logit_scale.detach(), torch.tensor(math.log(1 / 0.07)))
    u, v = embeddings(4, 3, seed=9).float(), embeddings(4, 3, seed=10).float()
    close(loss(u, v), LF.info_nce_loss(u, v, temperature=0.07), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        loss.logit_scale.fill_(10.0)  # exp(10) > 100: clamped to 1 / tau = 100, gradient 0
    out = loss(u, v)
    close(out, LF.info_nce_loss(u, v, temperature=0.01), rtol=1e-5, atol=1e-6)
    out.backward()
    assert loss.logit_scale.grad == 0
    config = loss.get_config()
    assert config["learn_temperature"] is True and config["max_logit_scale"] == 100.0
    rebuilt = losskit.get(config)
    assert rebuilt.logit_scale is not None and rebuilt.get_config() == config
    state = losskit.get("info_nce", learn_temperature=True)
    state.load_state_dict(loss.state_dict())
    assert state.logit_scale.item() == 10.0


# --- SupCon -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["out", "in"])
def test_supcon_matches_the_reference(variant):
    z = embeddings(6, 2, 4, seed=11)
    labels = torch.tensor([0, 1, 2, 0, 1, 0])
    got = LF.supervised_contrastive_loss(z, labels, temperature=0.2, variant=variant, reduction="none")
    close(got, ref.supcon(z, labels, 0.2, variant=variant))


def test_supcon_single_view_anchor_without_positive_is_left_out():
    z = embeddings(5, 3, seed=12)
    labels = torch.tensor([0, 0, 1, 1, 2])  # sample 4 has no positive
    none = LF.supervised_contrastive_loss(z, labels, temperature=0.5, reduction="none")
    expected = ref.supcon(z.unsqueeze(1), labels, 0.5).squeeze(1)
    close(none, expected)
    assert none[4] == 0
    close(LF.supervised_contrastive_loss(z, labels, temperature=0.5), none[:4].mean())
    # every anchor alone: 0 with a gradient, not NaN
    z.requires_grad_(True)
    out = LF.supervised_contrastive_loss(z, torch.arange(5))
    out.backward()
    assert out == 0 and torch.equal(z.grad, torch.zeros_like(z))


def test_supcon_properties():
    z = embeddings(6, 2, 4, seed=13)
    labels = torch.tensor([0, 1, 0, 1, 2, 2])
    out = LF.supervised_contrastive_loss(z, labels, reduction="none")
    inner = LF.supervised_contrastive_loss(z, labels, variant="in", reduction="none")
    assert (inner <= out + 1e-12).all()  # Jensen: L_in <= L_out
    close(LF.supervised_contrastive_loss(z * 7.0, labels, reduction="none"), out)  # scale invariant
    # with one positive per anchor (two views, distinct labels), SupCon is NT-Xent
    distinct = torch.arange(6)
    nt = LF.info_nce_loss(z[:, 0], z[:, 1], temperature=0.1, same_view_negatives=True, reduction="none")
    close(LF.supervised_contrastive_loss(z, distinct, temperature=0.1, reduction="none").mean(1), nt)
    # base_temperature scales by tau / base
    close(LF.supervised_contrastive_loss(z, labels, temperature=0.07, base_temperature=0.14, reduction="none"),
          LF.supervised_contrastive_loss(z, labels, temperature=0.07, reduction="none") / 2)


# --- triplet --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mining", ["batch_hard", "batch_all"])
@pytest.mark.parametrize("distance", ["euclidean", "squared_euclidean", "cosine"])
@pytest.mark.parametrize("soft", [False, True])
def test_triplet_matches_the_reference(mining, distance, soft):
    x = embeddings(7, 3, seed=14)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 3])  # 6 and 5 have no positive
    loss, valid = ref.triplet(x, labels, 0.5, mining=mining, distance=distance, soft=soft)
    got = LF.triplet_margin_loss(x, labels, margin=0.5, mining=mining, distance=distance, soft=soft,
                                 reduction="none")
    close(got, loss, rtol=1e-9, atol=1e-10)
    close(LF.triplet_margin_loss(x, labels, margin=0.5, mining=mining, distance=distance, soft=soft),
          loss[valid].mean(), rtol=1e-9, atol=1e-10)


def test_triplet_properties():
    x = embeddings(6, 3, seed=15)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    # classes far apart: every margin satisfied, loss 0 (and a gradient of 0)
    far = x * 0.01 + labels[:, None].double() * 100
    far.requires_grad_(True)
    for mining in ("batch_hard", "batch_all"):
        out = LF.triplet_margin_loss(far, labels, margin=1.0, mining=mining)
        assert out == 0
    # batch-hard is the largest violation of its anchor's batch-all triplets
    hard = LF.triplet_margin_loss(x, labels, reduction="none")
    every = LF.triplet_margin_loss(x, labels, mining="batch_all", reduction="none")
    close(hard, every.flatten(1).amax(1))
    # normalize=True is invariant to each embedding's scale
    scale = torch.rand(6, 1, dtype=torch.float64) + 0.5
    close(LF.triplet_margin_loss(x * scale, labels, normalize=True), LF.triplet_margin_loss(x, labels, normalize=True))
    # finite gradient even with duplicated embeddings (distance 0)
    dup = torch.cat((x[:2], x[:2])).requires_grad_(True)
    LF.triplet_margin_loss(dup, torch.tensor([0, 1, 0, 1])).backward()
    assert torch.isfinite(dup.grad).all()


def test_gradcheck_of_the_options():
    x = embeddings(6, 3, seed=16).requires_grad_(True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    tau = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a: LF.triplet_margin_loss(a, labels, mining="batch_all", margin=3.0, reduction="sum"), (x,))
    assert torch.autograd.gradcheck(
        lambda a: LF.triplet_margin_loss(a, labels, soft=True, distance="cosine", reduction="sum"), (x,))
    assert torch.autograd.gradcheck(
        lambda a, t: LF.supervised_contrastive_loss(a, labels, temperature=t, variant="in"), (x, tau))
    assert torch.autograd.gradcheck(
        lambda a, t: LF.info_nce_loss(a[:3], a[3:], temperature=t, same_view_negatives=True), (x, tau))


def test_errors_name_the_argument():
    x, labels = embeddings(4, 3), torch.tensor([0, 0, 1, 1])
    with pytest.raises(TypeError, match="target"):
        LF.triplet_margin_loss(x, labels.double())
    with pytest.raises(ValueError, match="target"):
        LF.supervised_contrastive_loss(x, labels[:3])
    with pytest.raises(ValueError, match="input"):
        LF.triplet_margin_loss(x[0], labels)
    with pytest.raises(ValueError, match="temperature"):
        LF.info_nce_loss(x, x, temperature=0.0)
    with pytest.raises(ValueError, match="mining"):
        LF.triplet_margin_loss(x, labels, mining="semi_hard")
    with pytest.raises(ValueError, match="variant"):
        LF.supervised_contrastive_loss(x, labels, variant="both")
    with pytest.raises(TypeError, match="distributed"):
        LF.info_nce_loss(x, x, distributed=1)


def test_registry_names():
    assert losskit.available("contrastive") == ["info_nce", "supervised_contrastive", "triplet_margin"]
    assert type(losskit.get("supcon")) is losskit.SupervisedContrastiveLoss
    assert type(losskit.get("triplet", margin=0.3)) is losskit.TripletMarginLoss


# --- pytorch-metric-learning, live ------------------------------------------------------------------------


@pytest.mark.peer
def test_pytorch_metric_learning_parity():
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    from pytorch_metric_learning.distances import LpDistance
    from pytorch_metric_learning.miners import BatchHardMiner
    from pytorch_metric_learning.reducers import MeanReducer

    x = embeddings(10, 4, seed=17)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3, 3])
    # Triplet with BatchHardMiner: the mined (anchor, hardest positive, hardest negative), margin 0.2
    distance = LpDistance(normalize_embeddings=False)
    pml = pml_losses.TripletMarginLoss(margin=0.2, distance=distance, reducer=MeanReducer())
    miner = BatchHardMiner(distance=distance)
    close(LF.triplet_margin_loss(x, labels, margin=0.2), pml(x, labels, miner(x, labels)), rtol=1e-7, atol=1e-9)
    # Every triplet (PML's default without a miner), mean over the valid triplets
    close(LF.triplet_margin_loss(x, labels, margin=0.2, mining="batch_all"), pml(x, labels), rtol=1e-7, atol=1e-9)
    # PML normalizes embeddings by default
    pml_norm = pml_losses.TripletMarginLoss(margin=0.2, reducer=MeanReducer())
    close(LF.triplet_margin_loss(x, labels, margin=0.2, mining="batch_all", normalize=True), pml_norm(x, labels),
          rtol=1e-7, atol=1e-9)
    # SupCon (L_out), mean over the anchors
    close(LF.supervised_contrastive_loss(x, labels, temperature=0.1),
          pml_losses.SupConLoss(temperature=0.1, reducer=MeanReducer())(x, labels), rtol=1e-7, atol=1e-9)
    # NT-Xent: both views as one batch, labels pair them (one positive per anchor)
    u, v = x[:5], embeddings(5, 4, seed=18)
    both, pair = torch.cat((u, v)), torch.cat((torch.arange(5), torch.arange(5)))
    close(LF.info_nce_loss(u, v, temperature=0.07, same_view_negatives=True),
          pml_losses.NTXentLoss(temperature=0.07, reducer=MeanReducer())(both, pair), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("mining", ["batch_hard", "batch_all"])
def test_a_triplet_batch_with_nothing_to_score_ignores_every_embedding(mining, value):
    # One class only: no anchor has a negative, the loss is 0, and no embedding gets a gradient,
    # even a non-finite one (its distances entered the masked terms as 0 * NaN before).
    x = torch.randn(3, 4, dtype=torch.float64)
    x[1, 2] = value
    x.requires_grad_()
    out = losskit.triplet_margin_loss(x, torch.tensor([5, 5, 5]), mining=mining, normalize=True)
    (grad,) = torch.autograd.grad(out, x)
    assert out.item() == 0.0 and (grad == 0).all()
    # With a second class every anchor counts and the NaN is found and named.
    with pytest.raises(ValueError, match="input contains non-finite values"):
        losskit.triplet_margin_loss(x.detach(), torch.tensor([5, 5, 6]), mining=mining)
