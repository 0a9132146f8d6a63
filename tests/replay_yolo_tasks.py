"""Replaying the Ultralytics segmentation and pose golden vectors (tests/golden/yolo_tasks/) through losskit.

``tests/golden/generate_yolo_task_vectors.py`` ran Ultralytics 8.4.190 (torch 2.14.1, CPU, float32);
``tests/test_yolo_segment.py`` and ``tests/test_yolo_pose.py`` replay its files with the options that
reproduce Ultralytics exactly (``clip_boxes=False``: it does not clip target boxes; ``dense_topk=True``:
its top-k runs ``torch.topk`` over each object's dense row of anchors), ``scale_by_batch=True`` (it
returns the loss times the batch size), and the gains and the end-to-end weights of the file.

Tolerances, as for the detection vectors (tests/test_golden_yolo.py): totals and components
``rtol=1e-5``; each gradient within 1e-5 of its norm, and entry by entry ``rtol=1e-4, atol=1e-6``
(float32 sums in another order); the foreground mask exact.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch
from torch import nn

FOLDER = Path(__file__).resolve().parent / "golden" / "yolo_tasks"
TOL_LOSS = {"rtol": 1e-5, "atol": 1e-6}
TOL_GRAD = {"rtol": 1e-4, "atol": 1e-6}
GRAD_NORM_RTOL = 1e-5


def assert_gradient_matches(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    """``got`` within 1e-5 of ``want``'s norm (the parity claim) and within ``TOL_GRAD`` entry by entry."""
    error = (got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-30)
    assert error <= GRAD_NORM_RTOL, f"{what}: {error:.2e} of the gradient's norm"
    torch.testing.assert_close(got, want, **TOL_GRAD, msg=lambda m: f"{what}: {m}")
ULTRALYTICS_MODE = {"clip_boxes": False, "dense_topk": True, "scale_by_batch": True}


class AffineFlow(nn.Module):
    """The generator's RLE flow: independent Gaussians N(loc, exp(log_scale)^2), closed-form log-density."""

    def __init__(self, loc: torch.Tensor, log_scale: torch.Tensor) -> None:
        super().__init__()
        self.loc = nn.Parameter(loc.clone())
        self.log_scale = nn.Parameter(log_scale.clone())

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.loc) / self.log_scale.exp()
        return (-0.5 * z * z - self.log_scale - 0.5 * math.log(2 * math.pi)).sum(-1)


@functools.cache
def load(name: str) -> dict:
    return torch.load(FOLDER / f"{name}.pt", weights_only=True)


def cases(task: str) -> list[str]:
    return sorted(p.stem for p in FOLDER.glob("*.pt") if load(p.stem)["config"]["task"] == task)


def leaves(case: dict, semantic_pair: bool = False) -> tuple[dict, dict[str, torch.Tensor]]:
    """Fresh leaf inputs (per branch dicts for the criterion) and every leaf by the generator's gradient name.

    The semantic logits go under ``"semantic"``, or with ``semantic_pair=True`` in Ultralytics' form
    ``"proto": (prototypes, semantic logits)``."""
    named: dict[str, torch.Tensor] = {}
    proto = semantic = None
    if "proto" in case["inputs"]:
        proto = named["proto"] = case["inputs"]["proto"].clone().requires_grad_()
    if "semantic" in case["inputs"]:
        semantic = named["semantic"] = case["inputs"]["semantic"].clone().requires_grad_()
    branches = {}
    for name in ("one2many", "one2one"):
        if name not in case["inputs"]:
            continue
        inputs = case["inputs"][name]
        branch = {"maps": []}
        for i, m in enumerate(inputs["maps"]):
            named[f"{name}.maps.{i}"] = leaf = m.clone().requires_grad_()
            branch["maps"].append(leaf)
        for key in ("mask_coefficient", "kpts", "kpts_sigma"):
            if key in inputs:
                named[f"{name}.{key}"] = branch[key] = inputs[key].clone().requires_grad_()
        if proto is not None:
            branch["proto"] = proto if name == "one2many" else proto.detach()  # YOLO26 detaches the o2o prototypes
        if semantic is not None:
            branch["semantic"] = semantic if name == "one2many" else semantic.detach()  # and semantic logits
            if semantic_pair:
                branch["proto"] = (branch["proto"], branch.pop("semantic"))
        branches[name] = branch
    preds = branches if case["config"]["end2end"] else branches["one2many"]
    return preds, named


def common_options(case: dict) -> dict:
    cfg = case["config"]
    gains = cfg["gains"]
    return dict(strides=tuple(cfg["strides"]), reg_max=cfg["reg_max"], box=gains["box"], cls=gains["cls"],
                dfl=gains["dfl"], end2end=cfg["end2end"], **ULTRALYTICS_MODE)


def check_replay(case: dict, criterion, preds: dict, named: dict, extra_leaves: dict | None = None) -> None:
    """Total, each branch's components (Ultralytics' loss items), foreground masks and every gradient."""
    out = criterion(preds, case["batch"])
    expected = case["expected"]
    torch.testing.assert_close(out.total.detach(), expected["total"], **TOL_LOSS)
    branches = out.branches or {"one2many": out}
    batch_size = len(case["inputs"]["one2many"]["maps"][0])
    for name, result in branches.items():
        want = dict(zip(expected[name]["loss_names"], expected[name]["loss_items"], strict=True))
        for key, value in result.components.items():
            ul_key = {"box": "box_loss", "seg": "seg_loss", "cls": "cls_loss", "dfl": "dfl_loss", "l1": "l1_loss",
                      "pose": "pose_loss", "kobj": "kobj_loss", "rle": "rle_loss", "sem": "sem_loss"}[key]
            torch.testing.assert_close(value.detach() / batch_size, want[ul_key], **TOL_LOSS,
                                       msg=lambda m, key=key, name=name: f"{name} {key}: {m}")
        assert torch.equal(result.assignment.fg_mask, expected[name]["fg_mask"]), f"{name}: foreground differs"
    named = {**named, **(extra_leaves or {})}
    grads = torch.autograd.grad(out.total, list(named.values()), allow_unused=True)
    for (key, leaf), grad in zip(named.items(), grads, strict=True):
        grad = torch.zeros_like(leaf) if grad is None else grad
        assert_gradient_matches(grad, expected["grads"][key], f"gradient of {key}")
