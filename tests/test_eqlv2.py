"""EQLv2 against a float64 transcription of the authors' implementation, over training steps.

Provenance: the authors' mmdetection fork, github.com/tztztztztz/eqlv2, file
``mmdet/models/losses/eqlv2.py`` at commit 907fad905b0cac6372f7ec4035f48ef3d0801098 (class
``EQLv2``, defaults ``gamma=12, mu=0.8, alpha=4.0``). Per call it computes:

* the one-hot target over the ``C + 1`` columns of ``cls_score`` (the background label is ``C``,
  the last column);
* ``neg_w = [map(pos_neg), 1]`` with ``map(r) = 1 / (1 + exp(-gamma (r - mu)))``,
  ``pos_w = 1 + alpha (1 - neg_w)``, and the element weight ``pos_w t + neg_w (1 - t)``;
* the loss ``sum(BCE_with_logits(cls_score, t) * weight) / N``;
* then, on detached tensors, ``grad = |t (sigmoid - 1) + (1 - t) sigmoid|``, the sums over the
  batch of ``grad * t * weight`` and ``grad * (1 - t) * weight`` without the last column,
  all-reduced over the ranks, added to the buffers ``pos_grad`` and ``neg_grad``, and
  ``pos_neg = pos_grad / (neg_grad + 1e-10)``. ``pos_neg`` starts at 100, which maps to weights 1.

The earlier commit 6e003b9 of the same file starts from ``None`` statistics and weights 1 on the
first call, the same values. mmcv cannot be installed here, so the computation is written out
below in float64 (one process: the all-reduce is the identity).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as TF

import losskit


class _AuthorsEQLv2:
    """The reference's state and per-call computation (see the module docstring), in float64."""

    def __init__(self, num_classes: int, gamma: float = 12.0, mu: float = 0.8, alpha: float = 4.0):
        self.gamma, self.mu, self.alpha = gamma, mu, alpha
        self.pos_grad = torch.zeros(num_classes, dtype=torch.float64)
        self.neg_grad = torch.zeros(num_classes, dtype=torch.float64)
        self.pos_neg = torch.full((num_classes,), 100.0, dtype=torch.float64)

    def __call__(self, cls_score: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        n, columns = cls_score.shape
        target = torch.zeros(n, columns, dtype=torch.float64)
        target[torch.arange(n), label] = 1
        neg_w = torch.cat([1 / (1 + torch.exp(-self.gamma * (self.pos_neg - self.mu))), torch.ones(1)])
        pos_w = 1 + self.alpha * (1 - neg_w)
        weight = pos_w * target + neg_w * (1 - target)
        loss = (TF.binary_cross_entropy_with_logits(cls_score, target, reduction="none") * weight).sum() / n
        prob = torch.sigmoid(cls_score.detach())
        grad = (target * (prob - 1) + (1 - target) * prob).abs()
        self.pos_grad += (grad * target * weight).sum(0)[:-1]
        self.neg_grad += (grad * (1 - target) * weight).sum(0)[:-1]
        self.pos_neg = self.pos_grad / (self.neg_grad + 1e-10)
        return loss


NUM_CLASSES = 6
# A long tail behind the background (label 6): class 5 never appears, so its ratio stays 0.
LABEL_PROBS = torch.tensor([0.2, 0.12, 0.1, 0.05, 0.03, 0.0, 0.5], dtype=torch.float64)


def _batch(gen: torch.Generator, n: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    features = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    return features, torch.multinomial(LABEL_PROBS, n, replacement=True, generator=gen)


@pytest.mark.parametrize(("gamma", "mu", "alpha"), [(12.0, 0.8, 4.0), (6.0, 0.3, 1.5)])
def test_training_steps_match_the_authors_eqlv2(gamma, mu, alpha):
    # One linear head trained by SGD twice, once with each loss: at every step the loss, the
    # logits' gradient and the statistics agree, so the parameters evolve the same.
    gen = torch.Generator().manual_seed(0)
    head = torch.randn(5, NUM_CLASSES + 1, generator=gen, dtype=torch.float64)
    ours_w, ref_w = head.clone().requires_grad_(), head.clone().requires_grad_()
    criterion = losskit.EQLv2Loss(num_classes=NUM_CLASSES, gamma=gamma, mu=mu, alpha=alpha)
    reference = _AuthorsEQLv2(NUM_CLASSES, gamma, mu, alpha)
    for step in range(8):
        features, labels = _batch(gen)
        ours_logits, ref_logits = features @ ours_w, features @ ref_w
        ours_logits.retain_grad()
        ref_logits.retain_grad()
        ours = criterion(ours_logits, labels)
        criterion.update(ours_logits, labels)  # after forward, before the next one: the reference's order
        expected = reference(ref_logits, labels)
        ours.backward()
        expected.backward()
        where = f"step {step}"
        assert ours.item() == pytest.approx(expected.item(), rel=1e-12), where
        torch.testing.assert_close(ours_logits.grad, ref_logits.grad, rtol=1e-12, atol=1e-15, msg=where)
        torch.testing.assert_close(criterion.pos_grad, reference.pos_grad, rtol=1e-12, atol=0, msg=where)
        torch.testing.assert_close(criterion.neg_grad, reference.neg_grad, rtol=1e-12, atol=0, msg=where)
        with torch.no_grad():
            for w in (ours_w, ref_w):
                w -= 0.5 * w.grad
                w.grad = None
    assert criterion.pos_grad[-1] == 0 and criterion.pos_grad[:-1].min() > 0  # the absent class and the others
    # the weights moved away from 1: the rarest seen class has its negatives down-weighted
    neg_w = torch.sigmoid(gamma * (criterion.pos_grad / (criterion.neg_grad + 1e-10) - mu))
    assert neg_w.min() < 0.5


def test_gradient_sums_are_what_a_backward_hook_on_the_logits_collects():
    # The reference's closed form |sigmoid(x) - t| * weight is the magnitude of the gradient of the
    # summed loss with respect to each logit; collect it with a hook and compare.
    gen = torch.Generator().manual_seed(1)
    features, labels = _batch(gen, 40)
    logits = (features @ torch.randn(5, NUM_CLASSES + 1, generator=gen, dtype=torch.float64)).requires_grad_()
    sums = {"pos_grad": torch.tensor([9.0, 4.0, 1.0, 0.5, 0.0, 0.0], dtype=torch.float64),
            "neg_grad": torch.tensor([8.0, 9.0, 9.0, 9.5, 3.0, 0.0], dtype=torch.float64)}  # class 5: unseen
    seen = []
    logits.register_hook(seen.append)
    losskit.eqlv2_loss(logits, labels, **sums, reduction="sum").backward()
    onehot = TF.one_hot(labels, NUM_CLASSES + 1).double()
    magnitude = seen[0].abs()
    positive, negative = losskit.eqlv2_gradient_sums(logits, labels, **sums)
    torch.testing.assert_close(positive, (magnitude * onehot).sum(0)[:-1], rtol=1e-13, atol=0)
    torch.testing.assert_close(negative, (magnitude * (1 - onehot)).sum(0)[:-1], rtol=1e-13, atol=0)


def test_gradient_is_the_weighted_sigmoid_residual_and_passes_gradcheck():
    # d/dx_ij of sum_i l_i = w_ij (sigmoid(x_ij) - t_ij), w = pos_w at the label, neg_w elsewhere,
    # 1 in the background column; written from the formula here.
    gen = torch.Generator().manual_seed(2)
    logits = (torch.randn(6, 4, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    labels = torch.tensor([0, 1, 2, 3, 3, 1])
    pos, neg = torch.tensor([3.0, 0.2, 0.0], dtype=torch.float64), torch.tensor([2.0, 8.0, 0.0], dtype=torch.float64)
    z = 12 * (pos / (neg + 1e-10) - 0.8)
    neg_w = torch.cat([torch.tensor([torch.sigmoid(z[0]), torch.sigmoid(z[1]), 1.0]), torch.ones(1)])
    pos_w = torch.cat([1 + 4 * torch.tensor([torch.sigmoid(-z[0]), torch.sigmoid(-z[1]), 0.0]), torch.ones(1)])
    onehot = TF.one_hot(labels, 4).double()
    expected = torch.where(onehot > 0, pos_w, neg_w) * (torch.sigmoid(logits.detach()) - onehot)
    (grad,) = torch.autograd.grad(losskit.eqlv2_loss(logits, labels, pos_grad=pos, neg_grad=neg, reduction="sum"),
                                  logits)
    torch.testing.assert_close(grad, expected, rtol=1e-14, atol=1e-16)
    assert torch.autograd.gradcheck(lambda x: losskit.eqlv2_loss(x, labels, pos_grad=pos, neg_grad=neg), (logits,))
    assert torch.autograd.gradgradcheck(lambda x: losskit.eqlv2_loss(x, labels, pos_grad=pos, neg_grad=neg),
                                        (logits,))


def _plain_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    onehot = TF.one_hot(labels, logits.shape[1]).to(logits.dtype)
    return TF.binary_cross_entropy_with_logits(logits, onehot, reduction="none").sum(1)


def test_with_weights_of_one_it_is_sigmoid_bce_over_all_columns():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(30, 5, generator=gen, dtype=torch.float64) * 4
    labels = torch.randint(5, (30,), generator=gen)
    pos, neg = torch.tensor([5.0, 0.1, 2.0, 0.0], dtype=torch.float64), torch.tensor([1.0, 9.0, 2.0, 7.0])
    plain = _plain_bce(logits, labels)
    # alpha = 0 makes w_pos = 1; mu = -100 puts every ratio (>= 0) 1200 past the centre, so
    # w_neg = sigmoid(>= 1200) = 1 exactly
    same = losskit.eqlv2_loss(logits, labels, pos_grad=pos, neg_grad=neg.double(), alpha=0.0, mu=-100.0,
                              reduction="none")
    torch.testing.assert_close(same, plain, rtol=1e-14, atol=0)
    # no statistics yet (the reference's first iteration): every weight is 1 too
    fresh = losskit.eqlv2_loss(logits, labels, pos_grad=torch.zeros(4), neg_grad=torch.zeros(4))
    assert fresh.item() == pytest.approx(plain.mean().item(), rel=1e-14)
    # gamma = 0: w_neg = 1/2 and w_pos = 1 + alpha/2 for every class with statistics
    half = losskit.eqlv2_loss(logits, labels, pos_grad=pos, neg_grad=neg.double(), gamma=0.0, alpha=2.0,
                              reduction="none")
    onehot = TF.one_hot(labels, 5).double()
    weights = torch.where(onehot > 0, 2.0, 0.5)
    weights[:, -1] = 1.0
    bce = TF.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
    torch.testing.assert_close(half, (weights * bce).sum(1), rtol=1e-14, atol=0)


def test_saturated_and_near_converged_logits_keep_their_digits_in_float32():
    # every logit 20 on its target's side: l = sum_j w_j log(1 + e^-20), 5 columns with weights 1
    logits = torch.tensor([[20.0, -20.0, -20.0, -20.0, -20.0], [1e4, -1e4, -1e4, -1e4, -1e4]])
    labels = torch.tensor([0, 0])
    value = losskit.eqlv2_loss(logits, labels, pos_grad=torch.zeros(4), neg_grad=torch.zeros(4), reduction="none")
    assert value[0].item() == pytest.approx(5 * math.log1p(math.exp(-20.0)), rel=1e-6)
    assert value[1].item() == 0.0
    x = logits.clone().requires_grad_()
    losskit.eqlv2_loss(x, labels, pos_grad=torch.zeros(4), neg_grad=torch.zeros(4)).backward()
    assert torch.isfinite(x.grad).all()


def test_forward_leaves_the_state_and_update_follows_its_rules():
    criterion = losskit.EQLv2Loss(num_classes=2)
    logits, labels = torch.zeros(3, 3), torch.tensor([0, 1, 2])
    criterion(logits, labels)
    assert criterion.pos_grad.tolist() == [0.0, 0.0] and criterion.neg_grad.tolist() == [0.0, 0.0]
    # weights 1, |sigmoid(0) - t| = 0.5: each class is positive once and negative twice; sample 1 weighs 0
    pos, neg = criterion.update(logits, labels, weight=torch.tensor([1.0, 0.0, 1.0]))
    assert pos.tolist() == [0.5, 0.0] and neg.tolist() == [0.5, 1.0]
    assert pos is criterion.pos_grad and pos.dtype == torch.float64
    criterion.update(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))  # an empty batch changes nothing
    assert criterion.pos_grad.tolist() == [0.5, 0.0]
    # a checkpoint carries the statistics
    restored = losskit.EQLv2Loss(num_classes=2)
    restored.load_state_dict(criterion.state_dict())
    assert torch.equal(restored(logits, labels), criterion(logits, labels))
    rebuilt = losskit.get(criterion.get_config())
    assert rebuilt.get_config() == criterion.get_config() and rebuilt.num_classes == 2
    assert losskit.get("equalization_loss_v2", num_classes=3).num_classes == 3
    # the options reach update: gamma = 0 gives w_neg = 1/2 once there are statistics
    flat = losskit.EQLv2Loss(pos_grad=[1.0, 1.0], neg_grad=[1.0, 1.0], gamma=0.0)
    _, neg = flat.update(logits, labels)
    assert neg.tolist() == [1.0 + 0.5, 1.0 + 0.5]


def test_bad_input_raises_naming_the_argument():
    logits, labels, sums = torch.zeros(4, 3), torch.tensor([0, 1, 2, 0]), torch.zeros(2)
    cases = [
        (ValueError, "input", dict(input=torch.zeros(4, 1))),  # no foreground class
        (ValueError, "input", dict(input=torch.zeros(4, 3, 2))),
        (TypeError, "input", dict(input=torch.zeros(4, 3, dtype=torch.long))),
        (ValueError, "target", dict(target=torch.tensor([0, 1]))),
        (TypeError, "target", dict(target=torch.zeros(4))),
        (ValueError, "target", dict(target=torch.tensor([0, 1, 3, 0]))),  # 3 is past the background, 2
        (ValueError, "pos_grad", dict(pos_grad=torch.zeros(3))),  # (C + 1,): the background has none
        (ValueError, "neg_grad", dict(neg_grad=torch.tensor([1.0, -1.0]))),
        (ValueError, "neg_grad", dict(neg_grad=torch.tensor([1.0, math.nan]))),
        (TypeError, "pos_grad", dict(pos_grad=torch.zeros(2, dtype=torch.long))),
        (ValueError, "gamma", dict(gamma=-1.0)),
        (ValueError, "alpha", dict(alpha=-0.5)),
        (ValueError, "mu", dict(mu=math.nan)),
        (ValueError, "weight", dict(weight=torch.ones(3))),
    ]
    for error, name, change in cases:
        options = {"pos_grad": sums, "neg_grad": sums, **change}
        input, target = options.pop("input", logits), options.pop("target", labels)
        for fn in (losskit.eqlv2_loss, losskit.eqlv2_gradient_sums):
            with pytest.raises(error, match=name):
                fn(input, target, **options)
    module_cases = [
        (ValueError, "num_classes", dict()),
        (ValueError, "num_classes", dict(num_classes=0)),
        (ValueError, "neg_grad", dict(pos_grad=[1.0])),
        (ValueError, "pos_grad", dict(num_classes=3, pos_grad=[1.0, 2.0], neg_grad=[1.0, 2.0])),
        (ValueError, "neg_grad", dict(pos_grad=[1.0, 2.0], neg_grad=[1.0])),
        (ValueError, "pos_grad", dict(pos_grad=[-1.0], neg_grad=[1.0])),
        (TypeError, "distributed", dict(num_classes=2, distributed="yes")),
        (TypeError, "did you mean 'gamma'", dict(num_classes=2, gama=2.0)),
    ]
    for error, name, options in module_cases:
        with pytest.raises(error, match=name):
            losskit.EQLv2Loss(**options)
    with pytest.raises(ValueError, match="pos_grad"):  # 2 classes held, logits for 3
        losskit.EQLv2Loss(num_classes=2)(torch.zeros(4, 4), labels)


def _two_rank_worker(rank: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        gen = torch.Generator().manual_seed(4)
        steps = [_batch(gen, 20) for _ in range(3)]
        head = torch.randn(5, NUM_CLASSES + 1, generator=gen, dtype=torch.float64)
        shared = losskit.EQLv2Loss(num_classes=NUM_CLASSES, distributed=True)
        alone = losskit.EQLv2Loss(num_classes=NUM_CLASSES)
        for features, labels in steps:
            shard = slice(0, 7) if rank == 0 else slice(7, 20)  # unequal shards
            shared.update(features[shard] @ head, labels[shard])
            alone.update(features @ head, labels)  # one process on the whole batch
        if rank == 0:
            with open(out, "w") as f:
                json.dump({"shared": [shared.pos_grad.tolist(), shared.neg_grad.tolist()],
                           "alone": [alone.pos_grad.tolist(), alone.neg_grad.tolist()]}, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_update_sums_every_ranks_share(tmp_path):
    # Forked (no GPU is initialized): the children inherit the imported modules.
    out = tmp_path / "result.json"
    torch.multiprocessing.start_processes(_two_rank_worker, args=(str(tmp_path / "init"), str(out)), nprocs=2,
                                          join=True, start_method="fork")
    result = json.loads(out.read_text())
    torch.testing.assert_close(torch.tensor(result["shared"]), torch.tensor(result["alone"]), rtol=1e-12, atol=0)
    assert min(result["alone"][1]) > 0


def test_distributed_without_a_process_group_is_the_single_process_update():
    assert not dist.is_initialized()
    logits, labels = torch.randn(5, 3, dtype=torch.float64), torch.tensor([0, 1, 2, 2, 0])
    a, b = losskit.EQLv2Loss(num_classes=2, distributed=True), losskit.EQLv2Loss(num_classes=2)
    assert all(torch.equal(x, y) for x, y in zip(a.update(logits, labels), b.update(logits, labels), strict=True))
