"""The arena's tasks: a data set, a model, how to build a loss from a spec, and the validation metrics.

Every data set is generated or ships offline (scikit-learn's digits and diabetes), so a
comparison runs anywhere, with no download. Metrics come from torchmetrics, and detection mAP
from faster-coco-eval; they are imported when a task is evaluated, so importing this module needs
torch alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

import losskit
from losskit._core.checks import did_you_mean

__all__ = ["TASKS", "Task", "get_task", "register_task"]


@dataclass
class Task:
    """What a comparison trains and measures.

    Attributes:
        name: The task's name on the command line.
        description: One paragraph for the report.
        default_losses: Loss specs compared when none are given.
        make_data: ``seed -> (train, val)``, each a tuple of tensors indexed by sample (or a
            list of samples with ``collate``).
        make_model: A fresh model (the caller seeds the RNG first).
        metrics: Validation metric name -> ``"max"`` or ``"min"`` (which way is better).
        primary_metric: The metric the report ranks and correlates by.
        evaluate: ``(model, val, device) -> {metric: value}``.
        make_loss: ``spec -> loss module``; by default ``losskit.build(spec)``.
        collate: ``samples -> (inputs, targets)`` for data that are not plain tensors.
        verdict: ``results -> sentence or None``: what the comparison says about the question
            the task asks.
        train_epoch: For tasks that make their own data while training (reinforcement learning):
            ``(model, loss, epoch, seed, device)`` -> an iterator of loss results, one per
            optimizer step; the runner steps the optimizer after each. ``None`` for data sets.
        steps_per_epoch: Optimizer steps per epoch of ``train_epoch`` (for the progress bar).
        epochs, batch_size, lr: Defaults of a run.
    """

    name: str
    description: str
    default_losses: tuple[str, ...]
    make_data: Callable[[int], tuple[Any, Any]]
    make_model: Callable[[], nn.Module]
    metrics: dict[str, str]
    primary_metric: str
    evaluate: Callable[[nn.Module, Any, torch.device], dict[str, float]]
    make_loss: Callable[[str], nn.Module] = field(default=lambda spec: losskit.build(spec))
    collate: Callable[[Sequence[Any]], tuple[Any, Any]] | None = None
    verdict: Callable[[dict], str | None] | None = None
    train_epoch: Callable[..., Any] | None = None
    steps_per_epoch: int | None = None
    epochs: int = 10
    batch_size: int = 32
    lr: float = 3e-3


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    if name not in TASKS:
        hint = did_you_mean(name, TASKS, 1) or f"; tasks: {', '.join(sorted(TASKS))}"
        raise ValueError(f"unknown task {name!r}{hint}")
    return TASKS[name]


def _batched(model: nn.Module, inputs: Tensor, device: torch.device, size: int = 256) -> Tensor:
    return torch.cat([model(inputs[i:i + size].to(device)).cpu() for i in range(0, len(inputs), size)])


def _last_value(run: dict, metric: str) -> float | None:
    epochs = [e for e in run.get("epochs", []) if e.get("val")]
    return epochs[-1]["val"].get(metric) if epochs else None


def _run_named(results: dict, *names: str) -> dict | None:
    return next((r for r in results["runs"] if r["name"] in names and r["status"] == "finished"), None)


# --- segmentation: tiny lesions -----------------------------------------------------------------

LESION_SIZE = 48


def make_lesion_images(n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``n`` grey 48 x 48 images with 1-3 faint round lesions (about 1-2% of the pixels) and their masks."""
    size = LESION_SIZE
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images = torch.empty(n, 1, size, size)
    masks = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        # a smooth background (a random tilted plane) plus pixel noise
        tilt = (torch.rand(2, generator=generator) - 0.5) * 0.6
        image = tilt[0] * xx / size + tilt[1] * yy / size + 0.2 * torch.randn(size, size, generator=generator)
        for _ in range(int(torch.randint(1, 4, (), generator=generator))):
            r = 1.5 + 2.0 * float(torch.rand((), generator=generator))
            cx, cy = (4 + (size - 8) * torch.rand(2, generator=generator)).tolist()
            lesion = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
            masks[i][lesion] = 1
            image = image + 0.25 * lesion
        images[i, 0] = image
    return images, masks


class TinyUNet(nn.Module):
    """Two down and two up steps with skip connections: a U-Net small enough for a CPU."""

    def __init__(self, in_channels: int = 1, classes: int = 2, width: int = 8) -> None:
        super().__init__()

        def conv(cin: int, cout: int) -> nn.Module:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.SiLU(),
                                 nn.Conv2d(cout, cout, 3, padding=1), nn.SiLU())

        self.enc1, self.enc2, self.enc3 = conv(in_channels, width), conv(width, 2 * width), conv(2 * width, 4 * width)
        self.up2, self.dec2 = nn.ConvTranspose2d(4 * width, 2 * width, 2, 2), conv(4 * width, 2 * width)
        self.up1, self.dec1 = nn.ConvTranspose2d(2 * width, width, 2, 2), conv(2 * width, width)
        self.head = nn.Conv2d(width, classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(nn.functional.max_pool2d(e1, 2))
        e3 = self.enc3(nn.functional.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat((self.up2(e3), e2), 1))
        d1 = self.dec1(torch.cat((self.up1(d2), e1), 1))
        return self.head(d1)


def _lesion_data(seed: int) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return make_lesion_images(256, gen), make_lesion_images(96, gen)


def _lesion_metrics(model: nn.Module, val: tuple[Tensor, Tensor], device: torch.device) -> dict[str, float]:
    from torchmetrics.functional.classification import binary_f1_score, binary_precision, binary_recall

    images, masks = val
    predicted = _batched(model, images, device).argmax(1).flatten()
    truth = masks.flatten()
    # Pooled over every validation pixel: the Dice score of the lesion class is its F1 score.
    return {"dice": float(binary_f1_score(predicted, truth)), "sensitivity": float(binary_recall(predicted, truth)),
            "precision": float(binary_precision(predicted, truth))}


def _lesion_verdict(results: dict) -> str | None:
    ce, dice = _run_named(results, "ce", "cross_entropy"), _run_named(results, "dice")
    if ce is None or dice is None:
        return None
    a, b = _last_value(dice, "sensitivity"), _last_value(ce, "sensitivity")
    if a is None or b is None:
        return None
    if a > b:
        outcome = "raised"
    elif a == b:
        outcome = "did not change"
    else:
        outcome = "did not raise"
    return (f"On this data Dice {outcome} lesion sensitivity over cross-entropy: {a:.3f} vs {b:.3f} at the last "
            f"epoch (Dice score {_last_value(dice, 'dice'):.3f} vs {_last_value(ce, 'dice'):.3f}).")


register_task(Task(
    name="segmentation",
    description=("Tiny-lesion segmentation: 48 x 48 grey images with one to three faint round lesions that "
                 "cover about 1.5% of the pixels, a small U-Net, 256 training and 96 validation images. "
                 "Pixel-wise cross-entropy is dominated by the background; region losses weigh the lesion "
                 "class as much as the background. Metrics pool every validation pixel."),
    default_losses=("ce", "dice", "dice + ce", "focal_tversky"),
    make_data=_lesion_data,
    make_model=TinyUNet,
    metrics={"dice": "max", "sensitivity": "max", "precision": "max"},
    primary_metric="dice",
    evaluate=_lesion_metrics,
    verdict=_lesion_verdict,
    epochs=8,
    batch_size=16,
    lr=3e-3,
))


# --- classification: digits ---------------------------------------------------------------------


def _split(n: int, val: int, seed: int) -> tuple[Tensor, Tensor]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[val:], order[:val]


def _digits_data(seed: int) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    train, val = _split(len(x), 500, seed)
    return (x[train], y[train]), (x[val], y[val])


def _digits_model() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 10))


def _digits_metrics(model: nn.Module, val: tuple[Tensor, Tensor], device: torch.device) -> dict[str, float]:
    from torchmetrics.functional.classification import (
        multiclass_accuracy,
        multiclass_calibration_error,
        multiclass_f1_score,
    )

    x, y = val
    logits = _batched(model, x, device)
    probs = logits.softmax(-1)
    return {"accuracy": float(multiclass_accuracy(logits, y, num_classes=10, average="micro")),
            "macro_f1": float(multiclass_f1_score(logits, y, num_classes=10, average="macro")),
            "ece": float(multiclass_calibration_error(probs, y, num_classes=10, n_bins=10))}


register_task(Task(
    name="classification",
    description=("Handwritten digits (scikit-learn's 8 x 8 digits, 1297 training and 500 validation images), "
                 "a one-hidden-layer MLP. Accuracy and macro F1 measure the decisions, the expected "
                 "calibration error (ECE) how far the predicted probabilities are from the observed accuracy."),
    default_losses=("ce", "ce(label_smoothing=0.1)", "softmax_focal(gamma=2.0)", "poly1"),
    make_data=_digits_data,
    make_model=_digits_model,
    metrics={"accuracy": "max", "macro_f1": "max", "ece": "min"},
    primary_metric="accuracy",
    evaluate=_digits_metrics,
    epochs=10,
    batch_size=64,
    lr=3e-3,
))


# --- regression: diabetes with outliers ---------------------------------------------------------


def _diabetes_data(seed: int) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0)
    y = (y - y.mean()) / y.std()
    train, val = _split(len(x), 100, seed)
    y_train = y[train].clone()
    # 10% of the training targets become gross outliers; the validation targets stay clean.
    gen = torch.Generator().manual_seed(seed + 1)
    hit = torch.randperm(len(train), generator=gen)[: len(train) // 10]
    y_train[hit] += 6.0 + 4.0 * torch.rand(len(hit), generator=gen)
    return (x[train], y_train[:, None]), (x[val], y[val][:, None])


def _diabetes_model() -> nn.Module:
    return nn.Sequential(nn.Linear(10, 32), nn.SiLU(), nn.Linear(32, 1))


def _diabetes_metrics(model: nn.Module, val: tuple[Tensor, Tensor], device: torch.device) -> dict[str, float]:
    from torchmetrics.functional import mean_absolute_error, mean_squared_error, r2_score

    x, y = val
    predicted = _batched(model, x, device)
    return {"mae": float(mean_absolute_error(predicted, y)),
            "rmse": float(mean_squared_error(predicted, y, squared=False)),
            "r2": float(r2_score(predicted.flatten(), y.flatten()))}


register_task(Task(
    name="regression",
    description=("scikit-learn's diabetes data (342 training and 100 validation patients, standardized), "
                 "with 10% of the training targets turned into gross outliers (+6 to +10 standard "
                 "deviations); the validation targets are clean. A one-hidden-layer MLP."),
    default_losses=("mse", "huber", "l1", "log_cosh", "quantile"),
    make_data=_diabetes_data,
    make_model=_diabetes_model,
    metrics={"mae": "min", "rmse": "min", "r2": "max"},
    primary_metric="mae",
    evaluate=_diabetes_metrics,
    epochs=30,
    batch_size=32,
    lr=3e-3,
))


# --- detection: rectangles ----------------------------------------------------------------------

SHAPES_SIZE, SHAPES_STRIDES, SHAPES_REG_MAX, SHAPES_CLASSES = 64, (8, 16), 8, 2
SHAPE_COLOURS = torch.tensor([[1.0, 0.1, 0.1], [0.1, 1.0, 0.1]])


def make_shapes(n: int, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
    """``n`` RGB 64 x 64 images with 1-3 red (class 0) or green (class 1) rectangles, and the YOLO target table."""
    size = SHAPES_SIZE
    images = 0.1 * torch.rand(n, 3, size, size, generator=generator)
    rows = []
    for i in range(n):
        for _ in range(int(torch.randint(1, 4, (), generator=generator))):
            w, h = torch.randint(10, 29, (2,), generator=generator).tolist()
            x = int(torch.randint(0, size - w + 1, (), generator=generator))
            y = int(torch.randint(0, size - h + 1, (), generator=generator))
            label = int(torch.randint(0, SHAPES_CLASSES, (), generator=generator))
            images[i, :, y:y + h, x:x + w] = SHAPE_COLOURS[label, :, None, None]
            rows.append([i, label, (x + w / 2) / size, (y + h / 2) / size, w / size, h / size])
    table = torch.tensor(rows)
    return images, {"batch_idx": table[:, 0], "cls": table[:, 1], "bboxes": table[:, 2:]}


class TinyDetector(nn.Module):
    """Six convolutions and a YOLOv8-style head (DFL box bins and class logits) at strides 8 and 16."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int = 2) -> nn.Module:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(4, cout), nn.SiLU())

        self.stem = nn.Sequential(block(3, width), block(width, width), block(width, width),
                                  block(width, width, 1))  # stride 8
        self.down = nn.Sequential(block(width, width), block(width, width, 1))  # stride 16
        outputs = 4 * SHAPES_REG_MAX + SHAPES_CLASSES
        self.heads = nn.ModuleList(nn.Conv2d(width, outputs, 1) for _ in SHAPES_STRIDES)
        for head in self.heads:  # start from a low class prior, as YOLO heads do
            nn.init.constant_(head.bias[4 * SHAPES_REG_MAX:], -4.0)

    def forward(self, x: Tensor) -> list[Tensor]:
        p3 = self.stem(x)
        p4 = self.down(p3)
        return [head(p) for head, p in zip(self.heads, (p3, p4), strict=True)]


def decode_detections(maps: list[Tensor], *, conf: float = 0.05, iou: float = 0.6, max_det: int = 100,
                      ) -> list[dict[str, Tensor]]:
    """Per image, ``boxes`` (xyxy pixels), ``scores`` and ``labels`` after class-wise NMS."""
    from losskit.boxes import box_iou
    from losskit.detection import dfl_decode, dist2bbox, make_anchors

    points, strides = make_anchors(maps, SHAPES_STRIDES)
    flat = torch.cat([m.flatten(2) for m in maps], -1).transpose(1, 2)
    boxes = dist2bbox(points, dfl_decode(flat[..., :4 * SHAPES_REG_MAX], SHAPES_REG_MAX)) * strides
    scores, labels = flat[..., 4 * SHAPES_REG_MAX:].sigmoid().max(-1)
    out = []
    for b, s, c in zip(boxes, scores, labels, strict=True):
        keep = (s > conf).nonzero().flatten()
        keep = keep[s[keep].argsort(descending=True)]
        chosen: list[int] = []
        for i in keep.tolist():  # greedy NMS per class, highest score first
            if len(chosen) == max_det:
                break
            same = [j for j in chosen if c[j] == c[i]]
            if not same or box_iou(b[i:i + 1], b[same]).max() <= iou:
                chosen.append(i)
        index = torch.tensor(chosen, dtype=torch.long)
        out.append({"boxes": b[index], "scores": s[index], "labels": c[index]})
    return out


def _shapes_collate(samples: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, dict[str, Tensor]]:
    images = torch.stack([image for image, _ in samples])
    rows = [torch.cat((torch.full((len(t), 1), float(i)), t), 1) for i, (_, t) in enumerate(samples)]
    table = torch.cat(rows) if rows else torch.zeros(0, 6)
    return images, {"batch_idx": table[:, 0], "cls": table[:, 1], "bboxes": table[:, 2:]}


def _shapes_samples(n: int, generator: torch.Generator) -> list[tuple[Tensor, Tensor]]:
    images, t = make_shapes(n, generator)
    table = torch.cat((t["cls"][:, None], t["bboxes"]), 1)
    return [(images[i], table[t["batch_idx"] == i]) for i in range(n)]


def _shapes_data(seed: int) -> tuple[list, list]:
    gen = torch.Generator().manual_seed(seed)
    return _shapes_samples(384, gen), _shapes_samples(96, gen)


def _shapes_loss(spec: str) -> nn.Module:
    from losskit.detection import YOLOLoss

    # distributed=True: under torchrun the target-score normalizer is the global one (a no-op otherwise)
    return YOLOLoss(num_classes=SHAPES_CLASSES, strides=SHAPES_STRIDES, reg_max=SHAPES_REG_MAX,
                    box_loss=spec.strip(), distributed=True)


def _shapes_metrics(model: nn.Module, val: list, device: torch.device) -> dict[str, float]:
    """COCO mAP with faster-coco-eval (boxes in COCO's x, y, w, h pixels)."""
    from faster_coco_eval import COCO, COCOeval_faster

    from losskit.boxes import box_convert

    images, annotations, detections = [], [], []
    for start in range(0, len(val), 32):
        batch, targets = _shapes_collate(val[start:start + 32])
        predictions = decode_detections([m.cpu() for m in model(batch.to(device))])
        for i, found in enumerate(predictions):
            image_id = start + i + 1
            images.append({"id": image_id, "width": SHAPES_SIZE, "height": SHAPES_SIZE})
            rows = targets["batch_idx"] == i
            gt_boxes = box_convert(targets["bboxes"][rows] * SHAPES_SIZE, "cxcywh", "xywh")  # COCO x, y, w, h
            for label, box in zip(targets["cls"][rows].tolist(), gt_boxes.tolist(), strict=True):
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label) + 1,
                                    "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
            found_boxes = box_convert(found["boxes"], "xyxy", "xywh").tolist()
            for box, score, label in zip(found_boxes, found["scores"].tolist(), found["labels"].tolist(), strict=True):
                detections.append({"image_id": image_id, "category_id": int(label) + 1, "bbox": box, "score": score})
    truth = COCO({"images": images, "annotations": annotations,
                  "categories": [{"id": c + 1, "name": str(c)} for c in range(SHAPES_CLASSES)]})
    if not detections:
        return {"map50": 0.0, "map50_95": 0.0}
    evaluation = COCOeval_faster(truth, truth.loadRes(detections), iouType="bbox")
    evaluation.run()
    stats = evaluation.stats_as_dict
    return {"map50": float(stats["AP_50"]), "map50_95": float(stats["AP_all"])}


register_task(Task(
    name="detection",
    description=("Rectangles: 64 x 64 images with one to three red or green rectangles (10-28 px sides), a "
                 "six-layer detector with a YOLOv8-style head at strides 8 and 16, trained with "
                 "losskit.detection.YOLOLoss; the specs name its box term (ciou, giou, diou, eiou, siou). "
                 "COCO mAP from faster-coco-eval, after class-wise NMS."),
    default_losses=("ciou", "giou", "siou"),
    make_data=_shapes_data,
    make_model=TinyDetector,
    metrics={"map50": "max", "map50_95": "max"},
    primary_metric="map50_95",
    evaluate=_shapes_metrics,
    make_loss=_shapes_loss,
    collate=_shapes_collate,
    epochs=6,
    batch_size=16,
    lr=3e-3,
))


# --- reinforcement learning: cart-pole ----------------------------------------------------------


class CartPole:
    """The classic cart-pole balancing task (Barto, Sutton & Anderson 1983; the equations and
    constants of Gymnasium's ``CartPole-v1``), ``envs`` copies stepped together in torch.

    Reward 1 per step; an episode ends when the pole leans past 12 degrees, the cart leaves
    [-2.4, 2.4], or after ``max_steps`` steps, and the copy restarts.
    """

    GRAVITY, CART_MASS, POLE_MASS, HALF_LENGTH, FORCE, TAU = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02

    def __init__(self, envs: int, generator: torch.Generator, max_steps: int = 200) -> None:
        self.generator, self.max_steps = generator, max_steps
        self.state = self._reset(envs)
        self.steps = torch.zeros(envs, dtype=torch.long)

    def _reset(self, n: int) -> Tensor:
        return (torch.rand(n, 4, generator=self.generator) - 0.5) * 0.1

    def step(self, action: Tensor) -> tuple[Tensor, Tensor]:
        x, x_dot, theta, theta_dot = self.state.unbind(-1)
        force = (2 * action - 1).float() * self.FORCE
        total = self.CART_MASS + self.POLE_MASS
        cos, sin = torch.cos(theta), torch.sin(theta)
        temp = (force + self.POLE_MASS * self.HALF_LENGTH * theta_dot**2 * sin) / total
        theta_acc = (self.GRAVITY * sin - cos * temp) / (
            self.HALF_LENGTH * (4.0 / 3.0 - self.POLE_MASS * cos**2 / total))
        x_acc = temp - self.POLE_MASS * self.HALF_LENGTH * theta_acc * cos / total
        self.state = torch.stack((x + self.TAU * x_dot, x_dot + self.TAU * x_acc, theta + self.TAU * theta_dot,
                                  theta_dot + self.TAU * theta_acc), -1)
        self.steps += 1
        done = (self.state[:, 0].abs() > 2.4) | (self.state[:, 2].abs() > 0.2095) | (self.steps >= self.max_steps)
        reward = torch.ones(len(done))
        if bool(done.any()):
            self.state[done] = self._reset(int(done.sum()))
            self.steps[done] = 0
        return reward, done


class ActorCritic(nn.Module):
    """A shared two-layer body with a policy head (2 action logits) and a value head."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh())
        self.policy, self.value = nn.Linear(width, 2), nn.Linear(width, 1)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body(obs)
        return self.policy(h), self.value(h).squeeze(-1)


RL_ENVS, RL_HORIZON, RL_ROLLOUTS, PPO_EPOCHS, PPO_MINIBATCHES, GAMMA, LAM = 16, 128, 4, 4, 4, 0.99, 0.95


def _rollout(model: nn.Module, env: CartPole, generator: torch.Generator, device: torch.device) -> dict[str, Tensor]:
    """``RL_HORIZON`` steps of every copy, time along dim 0."""
    obs, actions, log_probs, values, rewards, dones = [], [], [], [], [], []
    with torch.no_grad():
        for _ in range(RL_HORIZON):
            o = env.state.clone()
            logits, value = model(o.to(device))
            logp = torch.log_softmax(logits.cpu(), -1)
            a = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)
            r, d = env.step(a)
            obs.append(o)
            actions.append(a)
            log_probs.append(logp.gather(1, a[:, None]).squeeze(1))
            values.append(value.cpu())
            rewards.append(r)
            dones.append(d)
        next_value = model(env.state.to(device))[1].cpu()
    out = {k: torch.stack(v) for k, v in dict(obs=obs, actions=actions, log_probs=log_probs, values=values,
                                               rewards=rewards, dones=dones).items()}
    out["next_value"] = next_value
    return out


def _cartpole_train_epoch(model: nn.Module, loss: nn.Module, epoch: int, seed: int, device: torch.device):
    """Rollouts with the current policy, then the loss's updates: one REINFORCE step per rollout, or
    PPO's epochs of minibatches (clipped surrogate + value loss + entropy bonus) on GAE advantages."""
    from losskit import rl

    name = loss.registered_name
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    env = CartPole(RL_ENVS, generator)
    for _ in range(RL_ROLLOUTS):
        batch = _rollout(model, env, generator, device)
        if name == "reinforce":
            returns = rl.discounted_returns(batch["rewards"], batch["dones"], GAMMA)
            logp = torch.log_softmax(model(batch["obs"].to(device))[0], -1)
            taken = logp.gather(-1, batch["actions"].to(device)[..., None]).squeeze(-1)
            yield loss(taken.flatten(), returns.flatten().to(device))
            continue
        advantages, returns = rl.gae(batch["rewards"], batch["values"], batch["dones"], GAMMA, LAM,
                                     next_value=batch["next_value"])
        flat = {k: v.flatten(0, 1) for k, v in batch.items() if k != "next_value"}
        flat.update(advantages=advantages.flatten(), returns=returns.flatten())
        n = len(flat["actions"])
        for _ in range(PPO_EPOCHS):
            order = torch.randperm(n, generator=generator)
            for part in order.chunk(PPO_MINIBATCHES):
                mb = {k: v[part].to(device) for k, v in flat.items()}
                logits, values = model(mb["obs"])
                logp = torch.log_softmax(logits, -1).gather(-1, mb["actions"][:, None]).squeeze(-1)
                policy = loss(logp, mb["log_probs"], advantages=mb["advantages"])
                value = losskit.value_loss(values, mb["returns"], old_values=mb["values"], clip_eps=0.2)
                entropy = losskit.entropy_bonus(logits)
                yield _Parts(policy + 0.5 * value + 0.01 * entropy,
                             {"policy": policy.detach(), "value": value.detach(), "entropy": -entropy.detach()})


@dataclass
class _Parts:
    """A loss with named parts, as the runner logs it."""

    total: Tensor
    components: dict[str, Tensor]


def _policy_objective(spec: str) -> nn.Module:
    """One policy objective (not a weighted sum): the loop around it differs between the two."""
    loss = losskit.get(spec.strip())
    if loss.registered_name not in ("reinforce", "ppo_clip"):
        raise ValueError(f"the rl task compares 'reinforce' and 'ppo_clip' (alias 'ppo'), got {spec.strip()!r}")
    return loss


def _cartpole_metrics(model: nn.Module, val: Any, device: torch.device) -> dict[str, float]:
    """Mean return of 32 greedy episodes (capped at 200 steps)."""
    env = CartPole(32, torch.Generator().manual_seed(12345))
    returns = torch.zeros(32)
    alive = torch.ones(32, dtype=torch.bool)
    for _ in range(env.max_steps):
        action = model(env.state.to(device))[0].argmax(-1).cpu()
        reward, done = env.step(action)
        returns += reward * alive
        alive &= ~done
        if not alive.any():
            break
    return {"return": float(returns.mean())}


def _cartpole_verdict(results: dict) -> str | None:
    ppo, reinforce = _run_named(results, "ppo", "ppo_clip"), _run_named(results, "reinforce")
    if ppo is None or reinforce is None:
        return None
    a, b = _last_value(ppo, "return"), _last_value(reinforce, "return")
    better = "PPO" if a > b else "REINFORCE" if b > a else "neither"
    return (f"After the same number of environment steps, the greedy policy balances for {a:.0f} (PPO) and "
            f"{b:.0f} (REINFORCE) steps on average, out of 200: {better} learned faster here.")


register_task(Task(
    name="rl",
    description=("Cart-pole balancing (16 copies, episodes of at most 200 steps): per epoch 4 rollouts of 128 "
                 "steps each, used for one REINFORCE step each, or for PPO's 4 epochs of 4 minibatches "
                 "(clipped surrogate, clipped value loss, entropy bonus) on GAE advantages; the same "
                 "environment steps for both. The metric is the mean return of 32 greedy episodes."),
    default_losses=("reinforce", "ppo"),
    make_data=lambda seed: ((), ()),
    make_model=ActorCritic,
    metrics={"return": "max"},
    primary_metric="return",
    evaluate=_cartpole_metrics,
    make_loss=_policy_objective,
    verdict=_cartpole_verdict,
    train_epoch=_cartpole_train_epoch,
    steps_per_epoch=RL_ROLLOUTS * PPO_EPOCHS * PPO_MINIBATCHES,
    epochs=10,
    batch_size=RL_ENVS,
    lr=3e-3,
))
