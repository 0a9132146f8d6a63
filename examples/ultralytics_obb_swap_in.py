"""Train an Ultralytics YOLO-OBB model with losskit's criterion in place of its own, through the model's criterion hook.

Ultralytics models compute their loss with ``model.loss(batch, preds)``, which calls ``model.criterion``
(built by ``model.init_criterion()`` on first use). Setting ``model.criterion`` to an object with the same
call signature swaps the loss: :class:`LosskitOBBCriterion` takes the OBB head's training outputs, lays them
out as per-level maps and returns what Ultralytics' criterion returns (the four components times the batch
size, and the detached items), computed by ``losskit.detection.YOLOOBBLoss``.

The script builds the model from its yaml (nothing is downloaded), checks on the first steps that losskit's
loss equals Ultralytics' own on the same predictions, then trains on generated rotated rectangles to the
end. It needs ultralytics (AGPL-3.0; called, never copied) beside losskit::

    PYTHONPATH=src YOLO_OFFLINE=1 /work/peer-venv/bin/python examples/ultralytics_obb_swap_in.py \
        [--model yolov8n-obb.yaml | yolo26n-obb.yaml] [--steps 40]
"""

from __future__ import annotations

import argparse

import torch

from losskit.arena.tasks.detection_obb import make_rotated_shapes
from losskit.detection import YOLOOBBLoss

NAMES = ("box", "cls", "dfl", "angle")


class LosskitOBBCriterion:
    """Ultralytics' criterion interface, ``(preds, batch) -> (loss * B, items)``, backed by ``YOLOOBBLoss``."""

    def __init__(self, model) -> None:
        head, hyp = model.model[-1], model.args
        self.end2end = getattr(head, "one2one_cv2", None) is not None
        self.loss = YOLOOBBLoss(head.nc, strides=head.stride.tolist(), reg_max=head.reg_max, box=hyp.box,
                                cls=hyp.cls, dfl=hyp.dfl, angle=hyp.angle, end2end=self.end2end, scale_by_batch=True)
        self.epochs, self.epoch = hyp.epochs, 0

    @staticmethod
    def maps(preds: dict) -> list[torch.Tensor]:
        """The head's flat outputs (boxes, angle, scores over all anchors) as per-level maps."""
        flat = torch.cat((preds["boxes"], preds["angle"], preds["scores"]), 1)
        out, start = [], 0
        for feat in preds["feats"]:
            h, w = feat.shape[2:]
            out.append(flat[..., start:start + h * w].unflatten(-1, (h, w)))
            start += h * w
        return out

    def __call__(self, preds, batch):
        preds = preds[1] if isinstance(preds, tuple) else preds
        maps = {k: self.maps(v) for k, v in preds.items()} if self.end2end else self.maps(preds)
        out = self.loss(maps, batch)
        loss = torch.stack(list(out.components.values()))  # times the batch size, as Ultralytics returns it
        logged = out.branches["one2one"] if self.end2end else out  # Ultralytics logs the one-to-one branch
        num_images = batch["batch_idx"].new_tensor(float(len(batch["img"])))
        items = {f"{name}_loss" if name != "l1" else "l1_loss": v.detach() / num_images
                 for name, v in logged.components.items()}
        return loss, items

    def update(self) -> None:
        """Called by Ultralytics' trainer at each epoch's end: YOLO26's progressive branch weights."""
        self.epoch += 1
        self.loss.set_progress(self.epoch / max(self.epochs - 1, 1))


def batches(steps: int, batch_size: int, seed: int = 0):
    """Generated 64 x 64 images of rotated rectangles, in Ultralytics' batch dict."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        images, targets = make_rotated_shapes(batch_size, g)
        yield {"img": images, "batch_idx": targets["batch_idx"], "cls": targets["cls"][:, None],
               "bboxes": targets["bboxes"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="yolov8n-obb.yaml")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--check-steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()

    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import OBBModel

    torch.manual_seed(0)
    model = OBBModel(args.model, nc=2, verbose=False)
    model.args = get_cfg()  # the default hyperparameters: box 7.5, cls 0.5, dfl 1.5, angle 1.0
    own = model.init_criterion()
    model.criterion = LosskitOBBCriterion(model)  # the hook: model.loss() now calls losskit
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = last = None
    for step, batch in enumerate(batches(args.steps, args.batch)):
        preds = model(batch["img"])
        loss, items = model.loss(batch, preds)
        if step < args.check_steps:
            theirs, their_items = own(preds, batch)
            gap = float(((loss.detach() - theirs.detach()).abs() / theirs.detach().abs().clamp(min=1e-12)).max())
            print(f"step {step}: losskit {loss.detach().tolist()} ultralytics {theirs.detach().tolist()} "
                  f"(largest relative gap {gap:.1e})")
            assert gap < 1e-5, "losskit's loss differs from Ultralytics' own"
        optimizer.zero_grad()
        loss.sum().backward()
        optimizer.step()
        last = float(loss.detach().sum())
        first = last if first is None else first
        if step % 10 == 0:
            print(f"step {step}: total {last:.3f} " + ", ".join(f"{k} {float(v):.3f}" for k, v in items.items()))
    print(f"trained {args.steps} steps of {args.model}: total {first:.3f} -> {last:.3f}")


if __name__ == "__main__":
    main()
