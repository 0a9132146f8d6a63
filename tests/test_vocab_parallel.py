"""Vocabulary-parallel losses on 2 and 4 gloo ranks equal one process on the full head.

Each world size is started once per module and runs every check. Every
rank holds the same tokens and targets and its own contiguous block of the vocabulary (uneven
blocks: 4 + 7 of 11 classes on two ranks, 1 + 3 + 2 + 5 on four). The reference is the plain
:func:`losskit.cross_entropy` of the full logits ``hidden @ W.T + b`` in one process (itself
checked against ``torch.nn.functional.cross_entropy``), differentiated by autograd; values and
the gradients of hidden, weight and bias (each rank's block) must agree in float64 to 1e-10,
relative to the largest entry. Bad setups must raise on every rank (a hang would time out).

The same ranks also check, as data parallelism: a head sharded by FSDP2 (``fully_shard`` runs on
the CPU with gloo in torch 2.13) read by the fused loss, and gradient accumulation with the
token normalizer over micro-steps and context-parallel slices.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import torch
import torch.distributed as dist
import torch.distributed.tensor  # noqa: F401  (imported once here, inherited by the forked ranks)
from torch.distributed.fsdp import fully_shard

import losskit.functional as LF
from losskit.distributed import token_normalizer

TOL = 1e-10
VOCAB, DIM, TOKENS = 11, 5, 9
SHARDS = {2: (4, 7), 4: (1, 3, 2, 5)}
IGNORE = -100


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300)) if b.numel() else 0.0


def _block(sizes: tuple[int, ...]) -> slice:
    me = dist.get_rank()
    return slice(sum(sizes[:me]), sum(sizes[: me + 1]))


def _data(seed: int, scale: float = 1.0, tokens: tuple[int, ...] = (TOKENS,)):
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    hidden = torch.randn(*tokens, DIM, generator=g, dtype=f64) * scale
    weight = torch.randn(VOCAB, DIM, generator=g, dtype=f64)
    bias = torch.randn(VOCAB, generator=g, dtype=f64)
    target = torch.randint(VOCAB, tokens, generator=g)
    if target.numel() > 4:
        target.view(-1)[[1, 4]] = IGNORE  # two ignored tokens
    upstream = torch.rand(tokens, generator=g, dtype=f64) + 0.5
    class_weight = torch.rand(VOCAB, generator=g, dtype=f64) + 0.2
    return hidden, weight, bias, target, upstream, class_weight


def _max_over_ranks(errors: dict[str, float]) -> dict[str, float]:
    names = sorted(errors)
    values = torch.tensor([errors[n] for n in names], dtype=torch.float64)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return dict(zip(names, values.tolist(), strict=True))


def _fused_case(sizes, *, seed=0, scale=1.0, tokens=(TOKENS,), use_bias=True, target_fn=None, weight_fn=None,
                **options) -> dict[str, float]:
    """Fused cross-entropy on this rank's block against cross_entropy on the full logits."""
    hidden, weight, bias, target, upstream, class_weight = _data(seed, scale, tokens)
    if target_fn is not None:
        target = target_fn(target)
    if weight_fn is not None:
        weight = weight_fn(weight)
    if options.pop("class_weight", False):
        options["class_weight"] = class_weight
    block = _block(sizes)
    h = hidden.clone().requires_grad_()
    w = weight[block].clone().requires_grad_()
    b = bias[block].clone().requires_grad_() if use_bias else None
    loss = LF.fused_linear_cross_entropy(h, w, target, bias=b, process_group=dist.group.WORLD, **options)
    up = upstream if options.get("reduction") == "none" else torch.tensor(0.7, dtype=torch.float64)
    grads = torch.autograd.grad(loss, [t for t in (h, w, b) if t is not None], up)

    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    b1 = bias.clone().requires_grad_() if use_bias else None
    logits = h1 @ w1.T + (b1 if use_bias else 0)
    ref_options = {k: v for k, v in options.items() if k != "chunk_size"}
    ref_options["weight"] = ref_options.pop("class_weight", None)
    ref = LF.cross_entropy(logits.reshape(-1, VOCAB), target.reshape(-1), **ref_options)
    ref = ref.view(target.shape) if options.get("reduction") == "none" else ref
    ref_grads = torch.autograd.grad(ref, [t for t in (h1, w1, b1) if t is not None], up)
    errors = {"value": _rel(loss.detach(), ref.detach()), "grad_hidden": _rel(grads[0], ref_grads[0]),
              "grad_weight": _rel(grads[1], ref_grads[1][block])}
    if use_bias:
        errors["grad_bias"] = _rel(grads[2], ref_grads[2][block])
    return {**_max_over_ranks(errors), "magnitude": float(ref.detach().abs().max())}


def _components_case(sizes, **options) -> dict[str, float]:
    """return_components: the parts equal those of one process on the full head (a tie for the
    largest logit across two ranks' blocks included, where the first column wins)."""
    hidden, weight, bias, target, _, class_weight = _data(3)
    # Classes 0 (first block) and V-1 (last block) tie exactly at the top of every token's logits:
    # zero weight rows, the same large bias (other logits stay below 10 here).
    weight[0] = weight[VOCAB - 1] = 0.0
    bias[0] = bias[VOCAB - 1] = 20.0
    target[0], target[2] = VOCAB - 1, 0
    block = _block(sizes)
    out = LF.fused_linear_cross_entropy(hidden, weight[block], target, bias=bias[block], class_weight=class_weight,
                                        process_group=dist.group.WORLD, return_components=True, **options)
    ref = LF.fused_linear_cross_entropy(hidden, weight, target, bias=bias, class_weight=class_weight,
                                        return_components=True, **options)
    logits = hidden @ weight.T + bias
    assert bool((logits.argmax(1) == 0).all())  # argmax: the first of the tied columns
    hits = (logits.argmax(1) == target) & (target != IGNORE)
    accuracy = hits.double() if options.get("reduction") == "none" else hits.double().sum() / (target != IGNORE).sum()
    errors = {name: _rel(getattr(out, name), getattr(ref, name)) for name in ("loss", "cross_entropy", "z_loss")}
    errors["accuracy"] = _rel(out.accuracy, accuracy)
    errors["accuracy_vs_single"] = _rel(out.accuracy, ref.accuracy)
    return {**_max_over_ranks(errors), "magnitude": float(ref.loss.abs().max())}


def _logits_case(sizes, *, soft=False, spatial=False, seed=1, **options) -> dict[str, float]:
    """vocab_parallel_cross_entropy on this rank's columns against cross_entropy on all of them."""
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    shape = (TOKENS, VOCAB, 2) if spatial else (TOKENS, VOCAB)
    logits = torch.randn(shape, generator=g, dtype=f64) * 3
    if soft:
        target = torch.softmax(torch.randn(shape, generator=g, dtype=f64), 1)
        target[0, 1] = 0.0  # an exact zero
        target = target / target.sum(1, keepdim=True)
    else:
        target = torch.randint(VOCAB, (shape[0], *shape[2:]), generator=g)
        target.view(-1)[[0, 3]] = IGNORE
    if options.pop("class_weight", False):
        options["weight"] = torch.rand(VOCAB, generator=g, dtype=f64) + 0.2
    per_token = (shape[0], *shape[2:])
    up = torch.rand(per_token, generator=g, dtype=f64) + 0.5 if options.get("reduction") == "none" else \
        torch.tensor(1.3, dtype=f64)
    block = _block(sizes)
    x = logits[:, block].clone().requires_grad_()
    t = target[:, block] if soft else target
    loss = LF.vocab_parallel_cross_entropy(x, t, process_group=dist.group.WORLD, **options)
    (grad,) = torch.autograd.grad(loss, x, up)
    x1 = logits.clone().requires_grad_()
    ref = LF.cross_entropy(x1, target, **options)
    (ref_grad,) = torch.autograd.grad(ref, x1, up)
    errors = {"value": _rel(loss.detach(), ref.detach()), "grad_logits": _rel(grad, ref_grad[:, block])}
    return {**_max_over_ranks(errors), "magnitude": float(ref.detach().abs().max())}


def _divergence_case(sizes, *, kind="kl", seed=2, frozen_teacher=False, with_target=True, **options
                     ) -> dict[str, float]:
    """Fused KL or JSD over both heads' blocks against the same loss on the full heads in one process
    (itself checked against losskit.kl_div and js_div on the logits in test_large_vocab)."""
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    tokens = options.pop("tokens", (TOKENS,))
    tensors = {"student_hidden": torch.randn(*tokens, DIM, generator=g, dtype=f64),
               "student_weight": torch.randn(VOCAB, DIM, generator=g, dtype=f64),
               "teacher_hidden": torch.randn(*tokens, DIM + 1, generator=g, dtype=f64) * 2,
               "teacher_weight": torch.randn(VOCAB, DIM + 1, generator=g, dtype=f64),
               "student_bias": torch.randn(VOCAB, generator=g, dtype=f64),
               "teacher_bias": torch.randn(VOCAB, generator=g, dtype=f64)}
    target = torch.randint(VOCAB, tokens, generator=g)
    target.view(-1)[[0, 5]] = IGNORE
    if with_target:
        options["target"] = target
    if options.pop("token_weight", False):
        options["weight"] = torch.rand(tokens, generator=g, dtype=f64) + 0.5
    up = torch.rand(tokens, generator=g, dtype=f64) + 0.5 if options.get("reduction") == "none" else \
        torch.tensor(0.9, dtype=f64)
    fn = LF.fused_linear_kl_div if kind == "kl" else LF.fused_linear_js_div
    block = _block(sizes)
    blocks = ("student_weight", "teacher_weight", "student_bias", "teacher_bias")
    grads_of = [n for n in tensors if not (frozen_teacher and n.startswith("teacher"))]

    leaves = {n: (t[block] if n in blocks else t).clone().requires_grad_(n in grads_of) for n, t in tensors.items()}
    full = {n: t.clone().requires_grad_(n in grads_of) for n, t in tensors.items()}
    outs = []
    for tensors_now, extra in ((leaves, {"process_group": dist.group.WORLD}), (full, {})):
        args = dict(tensors_now)
        loss = fn(args.pop("student_hidden"), args.pop("student_weight"), args.pop("teacher_hidden"),
                  args.pop("teacher_weight"), **args, **options, **extra)
        grads = torch.autograd.grad(loss, [tensors_now[n] for n in grads_of], up)
        outs.append((loss.detach(), dict(zip(grads_of, grads, strict=True))))
    (loss, grads), (ref, ref_grads) = outs
    errors = {"value": _rel(loss, ref)}
    for n in grads_of:
        errors[f"grad_{n}"] = _rel(grads[n], ref_grads[n][block] if n in blocks else ref_grads[n])
    return {**_max_over_ranks(errors), "magnitude": float(ref.abs().max())}


def _accumulation_case(world: int, *, steps: int = 3, naive: bool = False) -> dict[str, float]:
    """Data and context parallelism with gradient accumulation: every rank holds a slice of each
    sequence (uneven; one rank's slice of one micro-step is all ignored) for ``steps`` micro-steps;
    the gradients accumulated over the micro-steps and averaged over the ranks (as DDP does) must
    equal those of one process on the whole step's tokens. ``naive``: each micro-batch's own mean."""
    g = torch.Generator().manual_seed(7)
    f64 = torch.float64
    length = 4 * world + 1
    x = torch.randn(steps, 2, length, DIM, generator=g, dtype=f64)
    labels = torch.randint(VOCAB, (steps, 2, length), generator=g)
    labels[torch.rand(labels.shape, generator=g) < 0.3] = IGNORE
    cuts = [0, *(3 * r + 3 for r in range(world - 1)), length]  # slices of 3, 3, ... and the rest
    me = dist.get_rank()
    labels[1, :, cuts[-2]:] = IGNORE  # the last rank's slice of micro-step 1
    theta = torch.randn(DIM, DIM, generator=g, dtype=f64)
    head = torch.randn(VOCAB, DIM, generator=g, dtype=f64)

    def local_slices(t):
        return [t[m, :, cuts[me]:cuts[me + 1]] for m in range(steps)]

    th, hw = theta.clone().requires_grad_(), head.clone().requires_grad_()
    mine = local_slices(labels)
    normalizer = token_normalizer(mine)
    for xs, ys in zip(local_slices(x), mine, strict=True):
        loss = LF.fused_linear_cross_entropy(xs @ th, hw, ys, normalizer=None if naive else normalizer)
        loss.backward()
    grads = torch.cat((th.grad.reshape(-1), hw.grad.reshape(-1)))
    dist.all_reduce(grads)
    grads /= world
    t1, h1 = theta.clone().requires_grad_(), head.clone().requires_grad_()
    ref = LF.cross_entropy((x @ t1 @ h1.T).reshape(-1, VOCAB), labels.reshape(-1))
    ref_grads = torch.cat([g.reshape(-1) for g in torch.autograd.grad(ref, (t1, h1))])
    return {"grad": _rel(grads, ref_grads), "magnitude": float(ref)}


def _fsdp_case(world: int, *, reduction: str = "mean", label_smoothing: float = 0.0) -> dict[str, float]:
    """A head sharded by FSDP2 (fully_shard: Shard(0) DTensor parameters), each rank with its own
    tokens. The fused loss, reading the sharded weight directly (never calling the head's
    forward), must give the gradients FSDP2 gives through the head's own forward, and those must
    be every rank's contribution averaged (independently: plain autograd on the full weight,
    averaged over the ranks, this rank's rows)."""
    f64 = torch.float64
    me = dist.get_rank()
    g = torch.Generator().manual_seed(11)
    weight, bias = torch.randn(VOCAB, DIM, generator=g, dtype=f64), torch.randn(VOCAB, generator=g, dtype=f64)
    g_rank = torch.Generator().manual_seed(100 + me)  # each rank its own batch
    hidden = torch.randn(TOKENS, DIM, generator=g_rank, dtype=f64)
    target = torch.randint(VOCAB, (TOKENS,), generator=g_rank)
    target[me] = IGNORE

    def sharded_head() -> torch.nn.Linear:
        head = torch.nn.Linear(DIM, VOCAB).to(f64)
        with torch.no_grad():
            head.weight.copy_(weight)
            head.bias.copy_(bias)
        return fully_shard(head)

    options = {"reduction": reduction, "label_smoothing": label_smoothing}
    fused_head, plain_head = sharded_head(), sharded_head()
    h1, h2 = hidden.clone().requires_grad_(), hidden.clone().requires_grad_()
    fused = LF.fused_linear_cross_entropy(h1, fused_head.weight, target, bias=fused_head.bias, **options)
    fused.sum().backward()
    plain = LF.cross_entropy(plain_head(h2), target, **options)
    plain.sum().backward()

    w3, b3 = weight.clone().requires_grad_(), bias.clone().requires_grad_()
    ref = LF.cross_entropy(hidden @ w3.T + b3, target, **options)
    ref_grads = torch.cat([t.reshape(-1) for t in torch.autograd.grad(ref.sum(), (w3, b3))]) / world
    dist.all_reduce(ref_grads)
    ref_w, ref_b = ref_grads[:VOCAB * DIM].view(VOCAB, DIM), ref_grads[VOCAB * DIM:]
    rows = fused_head.weight.grad.to_local().shape[0]
    counts: list[object] = [None] * world
    dist.all_gather_object(counts, rows)
    lo = sum(counts[:me])
    local = slice(lo, lo + rows)

    def shard(p: torch.nn.Parameter) -> torch.Tensor:
        return p.grad.to_local()

    errors = {"value": _rel(fused.detach(), plain.detach()), "grad_hidden": _rel(h1.grad, h2.grad),
              "grad_weight_vs_fsdp": _rel(shard(fused_head.weight), shard(plain_head.weight)),
              "grad_bias_vs_fsdp": _rel(shard(fused_head.bias), shard(plain_head.bias)),
              "grad_weight_vs_average": _rel(shard(fused_head.weight), ref_w[local]),
              "grad_bias_vs_average": _rel(shard(fused_head.bias), ref_b[local]),
              "placements": float(str(fused_head.weight.grad.placements) != "(Shard(dim=0),)")}
    return {**_max_over_ranks(errors), "magnitude": float(fused.detach().abs().max())}


def _raises(fn: Callable[[], object]) -> dict[str, str]:
    """The error every rank raised (type and message per rank); a rank that returned records "".
    The barrier after it proves no rank is left waiting in a collective."""
    try:
        fn()
        mine = ""
    except (ValueError, TypeError) as error:
        mine = f"{type(error).__name__}: {error}"
    dist.barrier()
    data = [None] * dist.get_world_size()
    dist.all_gather_object(data, mine)
    return {str(r): m for r, m in enumerate(data)}


def _error_cases(sizes) -> dict[str, dict[str, str]]:
    hidden, weight, bias, target, _, class_weight = _data(5)
    block, me = _block(sizes), dist.get_rank()
    group = dist.group.WORLD
    w, b = weight[block], bias[block]

    def fused(**kw):
        args = {"hidden": hidden, "weight": w, "target": target, "bias": b, "process_group": group, **kw}
        return LF.fused_linear_cross_entropy(args.pop("hidden"), args.pop("weight"), args.pop("target"), **args)

    outside = target.clone()
    outside[0] = VOCAB  # one past the global vocabulary (but inside no block's local range check)
    other_target = target.clone()
    other_target[0] = (int(other_target[0]) + me) % VOCAB
    return {
        "different_options": _raises(lambda: fused(label_smoothing=0.1 * me)),
        "different_reduction": _raises(lambda: fused(reduction="sum" if me else "mean")),
        "different_chunks": _raises(lambda: fused(chunk_size=2 + me)),
        "different_targets": _raises(lambda: fused(target=other_target)),
        "target_outside_vocabulary": _raises(lambda: fused(target=outside)),
        "one_rank_bad_argument": _raises(lambda: fused(weight=w.float() if me == 1 else w)),
        "class_weight_of_the_block": _raises(lambda: fused(class_weight=class_weight[block])),
        "triton_kernel": _raises(lambda: fused(backend="triton")),
        "logits_target_outside": _raises(lambda: LF.vocab_parallel_cross_entropy(
            hidden @ w.T, outside, process_group=group)),
        "logits_different_options": _raises(lambda: LF.vocab_parallel_cross_entropy(
            hidden @ w.T, target, process_group=group, z_loss=1e-3 * me)),
    }


def _checks(world: int) -> dict[str, object]:
    sizes = SHARDS[world]
    first_block = lambda t: torch.where(t == IGNORE, t, t % sizes[0])  # noqa: E731  targets in rank 0's block only
    results: dict[str, object] = {}
    fused_cases = {
        "mean": {},
        "sum": {"reduction": "sum"},
        "none": {"reduction": "none"},
        "normalizer": {"normalizer": 4.0},
        "normalizer_tensor": {"normalizer": torch.tensor(3.0, dtype=torch.float64)},
        "class_weight": {"class_weight": True},
        "label_smoothing": {"label_smoothing": 0.2},
        "label_smoothing_class_weight": {"label_smoothing": 0.3, "class_weight": True},
        "z_loss": {"z_loss": 0.1, "class_weight": True},
        "softcap": {"softcap": 2.5, "scale": 4.0},
        "saturated": {"scale": 40.0},
        "no_bias": {"use_bias": False, "label_smoothing": 0.1},
        "chunks": {"chunk_size": 2, "z_loss": 0.05},
        "leading_dims": {"tokens": (3, 4), "reduction": "none", "label_smoothing": 0.1},
        "every_option_none": {"class_weight": True, "label_smoothing": 0.15, "z_loss": 0.02, "softcap": 3.0,
                              "chunk_size": 4, "reduction": "none", "scale": 3.0},
        "every_option_mean": {"class_weight": True, "label_smoothing": 0.15, "z_loss": 0.02, "softcap": 3.0,
                              "chunk_size": 3},
        "every_option_normalizer": {"class_weight": True, "label_smoothing": 0.15, "z_loss": 0.02,
                                    "softcap": 3.0, "normalizer": 5.0},
        "targets_in_the_first_block_only": {"target_fn": first_block, "label_smoothing": 0.1},
        "tie_across_blocks": {"weight_fn": lambda w: torch.cat((w[:-1], w[:1])), "scale": 5.0},
    }
    for name, options in fused_cases.items():
        results[f"fused/{name}"] = _fused_case(sizes, **options)
    results["fused/all_ignored"] = _fused_case(sizes, target_fn=lambda t: torch.full_like(t, IGNORE))
    results["fused/empty"] = _fused_case(sizes, tokens=(0,))
    results["components/mean"] = _components_case(sizes, z_loss=0.01)
    results["components/none"] = _components_case(sizes, z_loss=0.01, reduction="none", label_smoothing=0.1)

    logits_cases = {
        "mean": {},
        "none": {"reduction": "none"},
        "sum_weighted_smoothing": {"reduction": "sum", "class_weight": True, "label_smoothing": 0.2},
        "z_loss_softcap": {"z_loss": 0.05, "softcap": 2.0, "class_weight": True},
        "normalizer": {"normalizer": 7.0, "label_smoothing": 0.1},
        "spatial": {"spatial": True, "reduction": "none", "label_smoothing": 0.1},
        "soft": {"soft": True},
        "soft_every_option": {"soft": True, "class_weight": True, "label_smoothing": 0.2, "z_loss": 0.05,
                              "softcap": 2.0},
        "soft_none": {"soft": True, "reduction": "none", "class_weight": True},
        "soft_spatial": {"soft": True, "spatial": True, "label_smoothing": 0.1},
    }
    for name, options in logits_cases.items():
        results[f"logits/{name}"] = _logits_case(sizes, **options)
    divergence_cases = {
        "kl": {},
        "kl_none_chunks": {"reduction": "none", "chunk_size": 4},
        "kl_temperature_weight_sum": {"temperature": 2.0, "token_weight": True, "reduction": "sum"},
        "kl_frozen_teacher_normalizer": {"frozen_teacher": True, "normalizer": 6.0},
        "kl_no_target_leading_dims": {"with_target": False, "tokens": (2, 5), "reduction": "none"},
        "js": {"kind": "js"},
        "js_beta_none": {"kind": "js", "beta": 0.3, "reduction": "none", "temperature": 0.7},
        "js_frozen_teacher_weight": {"kind": "js", "frozen_teacher": True, "token_weight": True, "chunk_size": 3},
    }
    for name, options in divergence_cases.items():
        results[f"divergence/{name}"] = _divergence_case(sizes, **options)
    results["accumulation/token_normalizer"] = _accumulation_case(world)
    results["naive_accumulation"] = _accumulation_case(world, naive=True)
    results["fsdp2/mean"] = _fsdp_case(world)
    results["fsdp2/none_smoothing"] = _fsdp_case(world, reduction="none", label_smoothing=0.1)
    results["errors"] = _error_cases(sizes)
    return results


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        results = _checks(world)
        if rank == 0:
            with open(out, "w") as f:
                json.dump(results, f)
    finally:
        dist.destroy_process_group()


def _spawn(world: int, tmp_path_factory) -> dict[str, object]:
    folder = tmp_path_factory.mktemp(f"vocab_parallel_{world}")
    out = folder / "results.json"
    # Forked, not spawned: the children inherit the imported modules (a spawned child spends
    # seconds importing torch and losskit again); safe here, where no GPU is initialized.
    torch.multiprocessing.start_processes(_worker, args=(world, str(folder / "init"), str(out)), nprocs=world,
                                          join=True, start_method="fork")
    return json.loads(out.read_text())


@pytest.fixture(scope="module", params=[2, 4], ids=["2_ranks", "4_ranks"])
def ranks(request, tmp_path_factory) -> tuple[int, dict[str, object]]:
    return request.param, _spawn(request.param, tmp_path_factory)


def test_every_option_equals_one_process_on_the_full_head(ranks):
    _, results = ranks
    cases = {name: r for name, r in results.items() if name not in ("errors", "naive_accumulation")}
    assert len(cases) >= 40
    bad = {name: r for name, r in cases.items() if max(v for k, v in r.items() if k != "magnitude") > TOL}
    assert not bad, f"vocabulary-parallel results differ from one process: {bad}"
    # The checks compare real values (a zero loss everywhere would prove nothing) ...
    assert all(r["magnitude"] > 0.1 for name, r in cases.items() if name not in ("fused/all_ignored", "fused/empty"))
    # ... and an empty or fully ignored batch gives 0 with a zero gradient on every rank.
    assert results["fused/all_ignored"]["magnitude"] == 0 and results["fused/empty"]["magnitude"] == 0


def test_a_bad_setup_raises_on_every_rank(ranks):
    world, results = ranks
    errors = results["errors"]
    expected = {
        "different_options": "different options",
        "different_reduction": "different options",
        "different_chunks": "different options",
        "different_targets": "different options, shapes or targets",
        "target_outside_vocabulary": r"outside \[0, 10\]",
        "class_weight_of_the_block": "class.weight",
        "triton_kernel": "no vocabulary-parallel form",
        "logits_target_outside": r"outside \[0, 10\]",
        "logits_different_options": "different options",
    }
    import re
    for case, pattern in expected.items():
        for rank, message in errors[case].items():
            assert message.startswith("ValueError") and re.search(pattern, message), (case, rank, message)
    bad_rank = errors["one_rank_bad_argument"]
    assert bad_rank["1"].startswith("TypeError") and "weight" in bad_rank["1"]
    for rank in range(world):
        if rank != 1:
            assert bad_rank[str(rank)].startswith("ValueError") and "rank(s) [1]" in bad_rank[str(rank)]


def test_without_an_initialized_group_a_process_group_is_an_error():
    assert not dist.is_initialized()
    hidden, weight = torch.randn(2, 3), torch.randn(4, 3)
    with pytest.raises(ValueError, match="process_group.*not initialized"):
        LF.fused_linear_cross_entropy(hidden, weight, torch.tensor([0, 1]), process_group=object())
    # None is the single-process loss
    assert torch.equal(LF.vocab_parallel_cross_entropy(hidden @ weight.T, torch.tensor([0, 1]), process_group=None),
                       LF.cross_entropy(hidden @ weight.T, torch.tensor([0, 1])))


def test_accumulated_micro_steps_over_ranks_equal_one_large_batch(ranks):
    _, results = ranks
    assert results["accumulation/token_normalizer"]["grad"] <= TOL  # also in the test above
    # Each micro-batch's own mean is not the large batch's gradient (what the normalizer fixes).
    assert results["naive_accumulation"]["grad"] > 1e-3


def test_token_normalizer_counts_every_micro_step_in_one_process():
    steps = [torch.tensor([[3, IGNORE, 4, 4]]), torch.tensor([[IGNORE, IGNORE]]), torch.tensor([[0, 1, IGNORE]])]
    assert token_normalizer(steps) == 5  # 3 + 0 + 2 valid labels
    assert token_normalizer(steps, shift=True) == 3  # labels[..., 1:]: (4, 4), (), (1,)
    assert token_normalizer(steps[1]) == 1  # nothing valid: the floor of 1 (a loss of 0, not NaN)
    assert token_normalizer(torch.tensor([7, 7]), ignore_index=7) == 1
    with pytest.raises(TypeError, match="labels"):
        token_normalizer([torch.ones(3)])
