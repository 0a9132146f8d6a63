"""Distributed-aware losses on two gloo ranks equal one process on the concatenated batch.

One spawned pair of processes runs every check (spawning costs seconds). In each check a
shared parameter ``theta`` (the same on both ranks, as DDP keeps it) maps each rank's shard of
a global batch to the loss's input; every rank computes its loss and its gradient of
``theta``; the ranks then average both, as DDP averages gradients, and the result must equal
the loss and gradient of one process on the whole batch (relative difference <= 1e-6, float64).
Shards are unequal, some empty, some without a positive.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import torch
import torch.distributed as dist

import losskit.functional as LF
from losskit import distributed as D
from losskit.detection import YOLOLoss

RTOL = 1e-6
DIM = 4


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) if a.numel() else 0.0


def _check(theta: torch.Tensor, sizes: tuple[int, ...], per_rank: Callable, single: Callable) -> dict[str, float]:
    """Rank ``r`` runs ``per_rank(theta, lo, hi)`` on rows ``[lo, hi)``; compare the DDP-style average
    (mean of losses, mean of gradients) with ``single(theta)`` on every row."""
    world, me = dist.get_world_size(), dist.get_rank()
    lo, hi = sum(sizes[:me]), sum(sizes[: me + 1])
    t = theta.detach().clone().requires_grad_(True)
    loss = per_rank(t, lo, hi)
    (grad,) = torch.autograd.grad(loss, t, allow_unused=True)
    grad = torch.zeros_like(t) if grad is None else grad
    both = torch.cat((loss.detach().reshape(1), grad.reshape(-1)))
    dist.all_reduce(both)
    both /= world
    t1 = theta.detach().clone().requires_grad_(True)
    expected = single(t1)
    (grad1,) = torch.autograd.grad(expected, t1)
    return {"loss": _rel(both[:1], expected.detach().reshape(1)), "grad": _rel(both[1:], grad1.reshape(-1)),
            "value": float(expected.detach())}


def _checks() -> dict[str, dict[str, float]]:
    g = torch.Generator().manual_seed(0)
    f64 = torch.float64
    results: dict[str, dict[str, float]] = {}
    theta = torch.randn(DIM, DIM, generator=g, dtype=f64)

    # all_gather_with_grad: unequal shards (3, 0 and 2, 1), gradient back to each rank's slice.
    for sizes in ((3, 0), (2, 1)):
        x = torch.randn(sum(sizes), DIM, generator=g, dtype=f64)
        w = torch.randn(sum(sizes), DIM, generator=g, dtype=f64)
        results[f"all_gather{sizes}"] = _check(
            theta, sizes,
            lambda t, lo, hi, x=x, w=w: (D.all_gather_with_grad(x[lo:hi] @ t) * w).sum() ** 2 / 2,
            lambda t, x=x, w=w: ((x @ t) * w).sum() ** 2 / 2)

    # A normalizer-using loss: focal with normalizer=global_normalizer(positives); rank 1 has none.
    logits = torch.randn(6, DIM, generator=g, dtype=f64)
    for name, target in (("focal_normalizer", torch.cat((torch.eye(DIM, dtype=f64)[[0, 2, 3]],
                                                          torch.zeros(3, DIM, dtype=f64)))),
                         ("focal_normalizer_no_positives", torch.zeros(6, DIM, dtype=f64))):
        results[name] = _check(
            theta, (3, 3),
            lambda t, lo, hi, target=target: LF.sigmoid_focal_loss(
                logits[lo:hi] @ t, target[lo:hi], normalizer=D.global_normalizer(target[lo:hi].sum())),
            lambda t, target=target: LF.sigmoid_focal_loss(
                logits @ t, target, normalizer=max(float(target.sum()), 1.0)))

    # Batch-pooled region losses with sync_stats=True (rank 1 empty in the second case).
    scale = torch.randn(3, 3, generator=g, dtype=f64)
    seg_x = torch.randn(5, 3, 4, 4, generator=g, dtype=f64)
    seg_y = torch.randint(3, (5, 4, 4), generator=g)

    def seg(fn, **kw):
        def per_rank(t, lo, hi):
            return fn(torch.einsum("nchw,cd->ndhw", seg_x[lo:hi], t), seg_y[lo:hi], aggregate="batch",
                      sync_stats=True, **kw)

        def single(t):
            return fn(torch.einsum("nchw,cd->ndhw", seg_x, t), seg_y, aggregate="batch", **kw)

        return per_rank, single

    for sizes in ((3, 2), (5, 0)):
        results[f"dice_batch{sizes}"] = _check(scale, sizes, *seg(LF.dice_loss))
    results["dice_ce_batch"] = _check(scale, (2, 3), *seg(LF.dice_ce_loss))
    results["generalized_dice_batch"] = _check(scale, (4, 1), *seg(LF.generalized_dice_loss, activation="sigmoid"))

    # Contrastive losses with cross-rank negatives; shards (3, 2) and one empty shard.
    u = torch.randn(5, DIM, generator=g, dtype=f64)
    v = torch.randn(5, DIM, generator=g, dtype=f64)
    labels = torch.tensor([0, 1, 2, 0, 1])  # rank 0 holds the only "2"; 0 and 1 pair across ranks
    weight = torch.rand(5, generator=g, dtype=f64) + 0.5
    cases = {
        "info_nce": (lambda t, a, b, **kw: LF.info_nce_loss(a @ t, b @ t, **kw), {}),
        "info_nce_nt_xent_weighted": (lambda t, a, b, w=None, **kw: LF.info_nce_loss(
            a @ t, b @ t, same_view_negatives=True, weight=w, **kw), {"weighted": True}),
        "supcon": (lambda t, a, y, **kw: LF.supervised_contrastive_loss(a @ t, y, temperature=0.5, **kw), {}),
        "supcon_views_in": (lambda t, a, y, **kw: LF.supervised_contrastive_loss(
            torch.stack((a @ t, a @ t.T), 1), y, variant="in", **kw), {}),
        "triplet_batch_hard": (lambda t, a, y, **kw: LF.triplet_margin_loss(a @ t, y, margin=2.0, **kw), {}),
        "triplet_batch_all": (lambda t, a, y, **kw: LF.triplet_margin_loss(
            a @ t, y, margin=2.0, mining="batch_all", **kw), {}),
        "multi_similarity": (lambda t, a, y, **kw: LF.multi_similarity_loss(a @ t, y, beta=10.0, **kw), {}),
        "circle_weighted": (lambda t, a, y, w=None, **kw: LF.circle_loss(a @ t, y, gamma=8.0, weight=w, **kw),
                            {"weighted": True}),
        "contrastive_pair_weighted": (lambda t, a, y, w=None, **kw: LF.contrastive_pair_loss(
            a @ t, y, neg_margin=2.5, weight=w, **kw), {"weighted": True}),
        "lifted_structure": (lambda t, a, y, **kw: LF.lifted_structure_loss(a @ t, y, **kw), {}),
        "tuplet_margin": (lambda t, a, y, **kw: LF.tuplet_margin_loss(a @ t, y, scale=8.0, **kw), {}),
        "fast_ap": (lambda t, a, y, **kw: LF.fast_ap_loss(a @ t, y, num_bins=4, **kw), {}),
        "npairs": (lambda t, a, y, **kw: LF.npairs_loss(a @ t, y, **kw), {}),
        "proxy_anchor": (lambda t, a, y, **kw: LF.proxy_anchor_loss(a @ t, y, proxies=t[:3], alpha=4.0, **kw), {}),
    }
    for name, (fn, flags) in cases.items():
        second = v if name.startswith("info_nce") else labels
        for sizes in ((3, 2), (0, 5)):
            def per_rank(t, lo, hi, fn=fn, second=second, flags=flags):
                kw = {"w": weight[lo:hi]} if flags.get("weighted") else {}
                return fn(t, u[lo:hi], second[lo:hi], distributed=True, **kw)

            def single(t, fn=fn, second=second, flags=flags):
                kw = {"w": weight} if flags.get("weighted") else {}
                return fn(t, u, second, **kw)

            results[f"{name}{sizes}"] = _check(theta, sizes, per_rank, single)

    # YOLOLoss(distributed=True): images split (2, 2); rank 1's images hold no object.
    strides = (8, 16)
    maps = [torch.randn(4, 4 * 16 + 2, 8, 8, generator=g, dtype=f64),
            torch.randn(4, 4 * 16 + 2, 4, 4, generator=g, dtype=f64)]
    table = {"batch_idx": torch.tensor([0.0, 0.0, 1.0]), "cls": torch.tensor([0.0, 1.0, 1.0]),
             "bboxes": torch.tensor([[0.3, 0.3, 0.4, 0.3], [0.7, 0.6, 0.3, 0.5], [0.5, 0.5, 0.6, 0.6]])}
    gain = torch.ones(1, dtype=f64)

    def yolo_rank(t, lo, hi):
        keep = (table["batch_idx"] >= lo) & (table["batch_idx"] < hi)
        local = {"batch_idx": table["batch_idx"][keep] - lo, "cls": table["cls"][keep],
                 "bboxes": table["bboxes"][keep]}
        return YOLOLoss(2, strides=strides, distributed=True)([m[lo:hi] * t for m in maps], local).total

    results["yolo_normalizer"] = _check(
        gain, (2, 2), yolo_rank, lambda t: YOLOLoss(2, strides=strides)([m * t for m in maps], table).total)
    return results


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        results = _checks()
        if rank == 0:
            with open(out, "w") as f:
                json.dump(results, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_equal_one_process_on_the_concatenated_batch(tmp_path):
    out = tmp_path / "results.json"
    torch.multiprocessing.spawn(_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    results = json.loads(out.read_text())
    assert len(results) >= 20
    bad = {name: r for name, r in results.items() if r["loss"] > RTOL or r["grad"] > RTOL}
    assert not bad, f"two ranks differ from one process: {bad}"
    # The checks compare real values (a zero loss everywhere would prove nothing).
    assert all(r["value"] != 0 for name, r in results.items() if not name.startswith("all_gather"))


def test_one_process_without_init_is_the_single_process_computation():
    assert not dist.is_initialized()
    assert D.world_size() == 1 and D.rank() == 0 and not D.is_distributed()
    x = torch.randn(3, DIM, dtype=torch.float64, requires_grad=True)
    assert D.all_gather_with_grad(x) is x and D.all_reduce_with_grad(x) is x and D.all_gather_no_grad(x) is x
    assert D.shard_offset(3) == 0
    # global_normalizer: max(count, min_count); 0 stays usable (replaced by 1) with min_count=0
    assert D.global_normalizer(torch.tensor(0.0)) == 1.0
    assert D.global_normalizer(torch.tensor(2.5)) == 2.5
    assert D.global_normalizer(0, min_count=0.0) == 1.0
    assert D.global_normalizer(torch.tensor(3, dtype=torch.int64)).is_floating_point()
    assert not D.global_normalizer(x.sum()).requires_grad
    with pytest.raises(ValueError, match="count"):
        D.global_normalizer(torch.ones(2))
    labels = torch.tensor([0, 1, 0])
    for fn, second in ((LF.info_nce_loss, x.detach() + 1), (LF.supervised_contrastive_loss, labels),
                       (LF.triplet_margin_loss, labels)):
        assert torch.equal(fn(x, second, distributed=True), fn(x, second))
    logits = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    target = torch.randint(3, (2, 4, 4))
    for fn in (LF.dice_loss, LF.jaccard_loss, LF.tversky_loss, LF.focal_tversky_loss, LF.mcc_loss,
               LF.generalized_dice_loss, LF.dice_ce_loss):
        assert torch.equal(fn(logits, target, aggregate="batch", sync_stats=True),
                           fn(logits, target, aggregate="batch"))
    with pytest.raises(ValueError, match="sync_stats"):
        LF.dice_loss(logits, target, sync_stats=True)  # needs aggregate="batch"


def test_a_group_of_one_rank_changes_nothing(tmp_path):
    # An initialized process group with world_size=1 (the "single-GPU DDP" setup) is a no-op too.
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        x = torch.randn(4, DIM, dtype=torch.float64)
        labels = torch.tensor([0, 1, 0, 1])
        assert D.world_size() == 1 and not D.is_distributed()
        assert D.global_normalizer(torch.tensor(4.0)) == 4.0
        assert torch.equal(LF.supervised_contrastive_loss(x, labels, distributed=True),
                           LF.supervised_contrastive_loss(x, labels))
    finally:
        dist.destroy_process_group()
