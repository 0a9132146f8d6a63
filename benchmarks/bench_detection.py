"""YOLO detection criterion forward+backward, label assignment included: losskit vs Ultralytics v8DetectionLoss.

Both run in one process on the same head outputs and targets: per-level maps ``feats[i]`` of
shape (B, 4 * reg_max + nc, H_i, W_i) (box channels first, then class channels; class logits
around N(-4, 1), box logits N(0, 1)) and a batch dict {"batch_idx": (M,), "cls": (M, 1),
"bboxes": (M, 4) normalized cxcywh}. Strides 8/16/32, Ultralytics' gains box=7.5, cls=0.5,
dfl=1.5, and its task-aligned assigner (topk 10, alpha 0.5, beta 6).

Scenarios (640x640 image, feature maps 80x80 + 40x40 + 20x20 = 8400 anchors, 80 classes):

* typical: B=16, 1-30 objects per image, boxes of mixed size (sqrt(w*h) log-uniform 8-400 px,
  aspect 1:3-3:1, sides capped at the image).
  Goal: losskit at least 2x faster than Ultralytics.
* crowded: B=4, 1000 objects per image, small boxes (sides 4-40 px) in overlapping clusters.
  Goal: losskit at least 4x lower peak memory than Ultralytics (by the tracker and by RSS), and faster.

Ultralytics (AGPL-3.0) is called, never copied. Its criterion takes the head outputs flattened
and concatenated over the levels, the way its ``Detect`` head builds them; that step runs inside
the timed callable, as it is part of the work between head and loss. It returns the loss times
the batch size, which ``YOLOLoss(scale_by_batch=True)`` reproduces. Before timing, the script
checks that both compute the same total (relative difference <= 1e-4) and prints the components
side by side.

Ultralytics needs its own torch build, so run this in the peer environment (see
tests/golden/README.md), with losskit installed there without dependencies::

    cd /work/main && /tmp/peer-venv/bin/pip install -e . --no-deps
    YOLO_OFFLINE=1 /tmp/peer-venv/bin/python -m benchmarks.bench_detection [--device cuda]
        [--scenarios typical crowded] [--reg-max 16 1] [--rounds N] [--checks]

Memory is reported twice. The tensor tracker (see ``benchmarks.harness``) gives the peak of live
tensors during one pass; on the CPU (Linux) the script then measures, for each implementation in a
fresh process with its inputs made first, the growth of the peak resident set during one first
forward+backward (``harness.rss_growth``): what a CPU user sees, allocator caching, temporaries the
tracker misses and one-time costs (code pages, first-use initialisation) included. ``--no-rss``
skips it.

``--reg-max 16 1`` also runs YOLO26's reg_max=1 mode (L1 on the side distances instead of DFL).
Without Ultralytics it times losskit alone; ``--peer-only`` times Ultralytics alone (while
``losskit.detection`` is missing). ``--imgsz``, ``--batch`` and ``--objects`` shrink the
scenarios for a quick smoke run.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from types import SimpleNamespace

import torch

import losskit
from benchmarks.harness import compare, report, rss_available, rss_growth

STRIDES = (8, 16, 32)
GAINS = {"box": 7.5, "cls": 0.5, "dfl": 1.5}
ULTRALYTICS = "ultralytics.v8DetectionLoss"
RTOL = 1e-4


@dataclass(frozen=True)
class Scenario:
    batch: int
    objects: tuple[int, int]  # objects per image, inclusive range
    sides: tuple[float, float]  # box side range in pixels
    clustered: bool  # boxes in overlapping clusters (crowded) or spread over the image
    rounds: int
    what: str


SCENARIOS = {
    "typical": Scenario(16, (1, 30), (8.0, 400.0), False, 5,
                        "1-30 objects per image, sqrt(w*h) 8-400 px, aspect 1:3-3:1"),
    "crowded": Scenario(4, (1000, 1000), (4.0, 40.0), True, 3,
                        "1000 objects per image, sides 4-40 px, overlapping clusters"),
}


def make_boxes(n: int, imgsz: int, scenario: Scenario, gen: torch.Generator) -> torch.Tensor:
    """``n`` pixel cxcywh boxes inside an ``imgsz`` square image.

    typical: sqrt(w*h) log-uniform in ``scenario.sides``, aspect ratio log-uniform in 1:3-3:1, centre uniform.
    crowded: width and height uniform in ``scenario.sides``, centres drawn around 25 cluster centres
    (normal, sd 6% of the image), so that boxes overlap as in a crowd.
    """
    lo, hi = scenario.sides
    scale = imgsz / 640
    if scenario.clustered:
        wh = (lo + torch.rand(n, 2, generator=gen) * (hi - lo)) * scale
        clusters = torch.rand(25, 2, generator=gen) * imgsz
        which = torch.randint(25, (n,), generator=gen)
        centre = clusters[which] + torch.randn(n, 2, generator=gen) * 0.06 * imgsz
    else:
        side = torch.exp(math.log(lo) + torch.rand(n, generator=gen) * math.log(hi / lo)) * scale
        aspect = torch.exp((torch.rand(n, generator=gen) * 2 - 1) * math.log(3.0))
        wh = torch.stack([side * aspect.sqrt(), side / aspect.sqrt()], dim=-1).clamp(1.0, imgsz)
        centre = torch.rand(n, 2, generator=gen) * imgsz
    centre = torch.maximum(torch.minimum(centre, imgsz - wh / 2), wh / 2)  # keep the box inside the image
    return torch.cat([centre, wh], dim=-1)


def make_inputs(scenario: Scenario, *, batch: int, imgsz: int, objects: tuple[int, int], num_classes: int,
                reg_max: int, device: torch.device, seed: int = 0) -> tuple[list[torch.Tensor], dict]:
    """Head maps (float32 leaves with ``requires_grad``) and a targets dict, sorted by image as
    Ultralytics' collate function leaves them."""
    gen = torch.Generator().manual_seed(seed)
    feats = []
    for stride in STRIDES:
        side = imgsz // stride
        box = torch.randn(batch, 4 * reg_max, side, side, generator=gen)
        cls = torch.randn(batch, num_classes, side, side, generator=gen) - 4
        feats.append(torch.cat([box, cls], dim=1).to(device).requires_grad_())
    counts = torch.randint(objects[0], objects[1] + 1, (batch,), generator=gen)
    batch_idx = torch.repeat_interleave(torch.arange(batch), counts).float()
    boxes = torch.cat([make_boxes(int(n), imgsz, scenario, gen) for n in counts]) / imgsz
    cls = torch.randint(num_classes, (len(batch_idx), 1), generator=gen).float()
    targets = {"batch_idx": batch_idx.to(device), "cls": cls.to(device), "bboxes": boxes.to(device)}
    return feats, targets


class _DetectStub(torch.nn.Module):
    """What v8DetectionLoss reads from the model: ``args``, ``model[-1]`` (stride, nc, reg_max), a parameter."""

    def __init__(self, num_classes: int, reg_max: int, device: torch.device) -> None:
        super().__init__()
        head = torch.nn.Module()
        head.stride = torch.tensor([float(s) for s in STRIDES], device=device)
        head.nc, head.reg_max = num_classes, reg_max
        self.model = torch.nn.ModuleList([head])
        self.args = SimpleNamespace(**GAINS, epochs=100)
        self.anchor = torch.nn.Parameter(torch.zeros(1, device=device))


def ultralytics_forward(num_classes: int, reg_max: int, device: torch.device, feats: list[torch.Tensor],
                        targets: dict):
    """``(forward, evaluate)``: ``forward()`` runs the head flattening and v8DetectionLoss and returns the
    total; ``evaluate()`` the total and the (box, cls, dfl|l1) terms it sums (gains and batch size applied)."""
    from ultralytics.utils.loss import v8DetectionLoss

    loss_fn = v8DetectionLoss(_DetectStub(num_classes, reg_max, device))
    nb = 4 * reg_max

    def vector() -> torch.Tensor:
        b = feats[0].shape[0]
        preds = {  # as Detect.forward_head builds them: (B, 4 * reg_max, A) and (B, nc, A)
            "boxes": torch.cat([f[:, :nb].reshape(b, nb, -1) for f in feats], dim=-1),
            "scores": torch.cat([f[:, nb:].reshape(b, num_classes, -1) for f in feats], dim=-1),
            "feats": feats,
        }
        return loss_fn(preds, targets)[0]

    def evaluate() -> tuple[float, dict[str, float]]:
        v = vector().detach()
        return v.sum().item(), dict(zip(loss_fn.loss_names, v.tolist(), strict=True))

    return (lambda: vector().sum()), evaluate


def losskit_forward(num_classes: int, reg_max: int, device: torch.device, feats: list[torch.Tensor],
                    targets: dict):
    from losskit.detection import YOLOLoss

    crit = YOLOLoss(num_classes=num_classes, strides=STRIDES, reg_max=reg_max, scale_by_batch=True)
    if isinstance(crit, torch.nn.Module):
        crit = crit.to(device)

    def evaluate() -> tuple[float, dict[str, float]]:
        out = crit(feats, targets)
        return out.total.item(), {str(k): float(v) for k, v in out.components.items()}

    return (lambda: crit(feats, targets).total), evaluate


def rss_step(implementation: str, scenario: str, reg_max: int, batch: int, imgsz: int, objects: list[int],
             num_classes: int, seed: int):
    """For :func:`benchmarks.harness.rss_growth`: the inputs and criterion of one measurement, and a step
    that runs one forward+backward (the maps' gradients included), on the CPU."""
    feats, targets = make_inputs(SCENARIOS[scenario], batch=batch, imgsz=imgsz, objects=tuple(objects),
                                 num_classes=num_classes, reg_max=reg_max, device=torch.device("cpu"), seed=seed)
    make = losskit_forward if implementation == "losskit" else ultralytics_forward
    forward = make(num_classes, reg_max, torch.device("cpu"), feats, targets)[0]

    def step() -> None:
        for f in feats:
            f.grad = None
        forward().backward()

    return step


def rss_table(results: list, spec: tuple, threads: int) -> str:
    """Growth of the peak resident set during one (first) forward+backward, each implementation in a fresh
    process with its inputs made before the reset, beside the tensor tracker's peak; ratios over losskit."""
    growth = {r.label: rss_growth("benchmarks.bench_detection:rss_step",
                                  "losskit" if r.label == "losskit" else "ultralytics", *spec, threads=threads)
              for r in results}
    tracker = {r.label: r.memory_bytes for r in results}
    reference = "losskit" if "losskit" in growth else next(iter(growth))
    lines = [f"{'peak memory, one process each':<34}{'RSS growth (MB)':>17}{'tracker (MB)':>14}"
             f"{'ratio by RSS':>14}{'by tracker':>12}"]
    for label in growth:
        lines.append(f"{label:<34}{growth[label] / 2**20:>17.1f}{tracker[label] / 2**20:>14.1f}"
                     f"{growth[label] / growth[reference]:>14.2f}{tracker[label] / tracker[reference]:>12.2f}")
    return "\n".join(lines)


def _key(name: str) -> str:
    return name.lower().removesuffix("_loss").removeprefix("loss_")


def check_and_show(evaluators: dict) -> str:
    """Assert that every candidate's total is the first one's within RTOL; print the components side by side."""
    totals, parts = {}, {}
    with torch.no_grad():
        for label, evaluate in evaluators.items():
            totals[label], parts[label] = evaluate()
    labels = list(evaluators)
    rows = ["components as each returns them (Ultralytics': gain-weighted, times the batch size)",
            f"{'':<12}" + "".join(f"{label:>30}" for label in labels)]
    keys: list[str] = []
    for label in labels:
        keys += [_key(k) for k in parts[label] if _key(k) not in keys]
    for key in keys:
        cells = []
        for label in labels:
            match = [v for k, v in parts[label].items() if _key(k) == key]
            cells.append(f"{match[0]:>30.6f}" if match else f"{'-':>30}")
        rows.append(f"{key:<12}" + "".join(cells))
    rows.append(f"{'total':<12}" + "".join(f"{totals[label]:>30.6f}" for label in labels))
    reference = totals[labels[0]]
    for label, value in totals.items():
        rel = abs(value - reference) / max(abs(reference), 1e-12)
        assert rel <= RTOL, f"{label} total {value} vs {labels[0]} {reference}: relative difference {rel:.2e}"
    if len(labels) > 1:
        rel = max(abs(v - reference) / max(abs(reference), 1e-12) for v in totals.values())
        rows.append(f"same total: max relative difference {rel:.1e} (<= {RTOL:.0e})")
    text = "\n".join(rows)
    print(text)
    return text


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--reg-max", type=int, nargs="+", default=[16],
                        help="reg_max values to run (default 16; '--reg-max 16 1' adds YOLO26's reg_max=1 mode)")
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default: 5 typical, 3 crowded)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--imgsz", type=int, default=640, help="image side, a multiple of 32 (default 640)")
    parser.add_argument("--batch", type=int, default=None, help="override the scenarios' batch size")
    parser.add_argument("--objects", type=int, default=None,
                        help="override the objects per image (typical: the maximum, crowded: the count)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--peer-only", action="store_true", help="time Ultralytics alone (no losskit.detection)")
    parser.add_argument("--checks", action="store_true", help="keep losskit's value checks on (default: off, "
                        "as the peer runs none)")
    parser.add_argument("--no-rss", action="store_true", help="skip the resident-set measurements (CPU, Linux: "
                        "one fresh process per implementation and scenario)")
    args = parser.parse_args(argv)
    if args.imgsz % 32:
        parser.error("--imgsz must be a multiple of 32")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available in this torch build / machine")

    have_losskit = not args.peer_only
    if have_losskit:
        try:
            from losskit.detection import YOLOLoss  # noqa: F401
        except ImportError as e:
            raise SystemExit(
                f"losskit.detection.YOLOLoss is not available ({e}). Implement src/losskit/detection/ first, "
                "or run with --peer-only to time Ultralytics alone."
            ) from e
    try:
        os.environ.setdefault("YOLO_OFFLINE", "1")  # no update checks or downloads
        import ultralytics
        from ultralytics.utils.loss import v8DetectionLoss  # noqa: F401
    except ImportError:
        if args.peer_only:
            raise SystemExit("--peer-only needs ultralytics (pip install ultralytics==8.4.190)") from None
        ultralytics = None

    versions = f"torch {torch.__version__}, " + (
        f"ultralytics {ultralytics.__version__}" if ultralytics else "ultralytics not installed: losskit alone")
    if device.type == "cuda":
        versions += f", {torch.cuda.get_device_name(device)}"
    print(versions)
    texts = [versions]
    for name in args.scenarios:
        sc = SCENARIOS[name]
        batch = args.batch or sc.batch
        objects = sc.objects if args.objects is None else (min(sc.objects[0], args.objects), args.objects)
        for reg_max in args.reg_max:
            feats, targets = make_inputs(sc, batch=batch, imgsz=args.imgsz, objects=objects,
                                         num_classes=args.classes, reg_max=reg_max, device=device, seed=args.seed)
            counts = torch.bincount(targets["batch_idx"].long().cpu(), minlength=batch)
            anchors = sum(f.shape[2] * f.shape[3] for f in feats)
            what = sc.what if (args.objects is None and args.imgsz == 640) else (
                f"{objects[0]}-{objects[1]} objects per image")
            shapes = (
                f"{name}: B={batch}, {args.imgsz}x{args.imgsz}, feats "
                + " + ".join(str(tuple(f.shape)) for f in feats)
                + f" ({anchors} anchors), {args.classes} classes, reg_max={reg_max}, {what}; "
                f"M={len(targets['batch_idx'])} targets ({int(counts.min())}-{int(counts.max())} per image),"
                f" {device}, float32"
            )
            print(shapes)
            forwards, evaluators = {}, {}
            if have_losskit:
                forwards["losskit"], evaluators["losskit"] = losskit_forward(
                    args.classes, reg_max, device, feats, targets)
            if ultralytics is not None:
                forwards[ULTRALYTICS], evaluators[ULTRALYTICS] = ultralytics_forward(
                    args.classes, reg_max, device, feats, targets)
            values = check_and_show(evaluators)
            rounds = args.rounds or sc.rounds
            with losskit.set_checks(args.checks):
                results = compare(forwards, tuple(feats), rounds=rounds, warmup=args.warmup)
            title = (f"YOLO detection loss fwd+bwd incl. assignment, {name}, reg_max={reg_max}, {rounds} rounds, "
                     f"threads={torch.get_num_threads()}, value checks {'on' if args.checks else 'off'}")
            table = report(title, results, reference="losskit" if have_losskit else ULTRALYTICS)
            print(table)
            if device.type == "cpu" and rss_available() and not args.no_rss:
                spec = (name, reg_max, batch, args.imgsz, list(objects), args.classes, args.seed)
                rss = rss_table(results, spec, torch.get_num_threads())
                print(rss)
                table += "\n" + rss
            print()
            texts.append("\n".join([shapes, values, table]))
            del feats, targets, forwards, evaluators, results
    return "\n\n".join(texts)


if __name__ == "__main__":
    main()
