"""dice_loss(mask=): MONAI 1.6 MaskedDiceLoss live, and the index-label form equal to ignore_index."""

from __future__ import annotations

import pytest
import torch

import losskit

monai_losses = pytest.importorskip("monai.losses")


def _case(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn((2, 3, 6, 5), generator=gen, dtype=torch.float64) * 2
    labels = torch.randint(3, (2, 6, 5), generator=gen)
    mask = (torch.rand((2, 1, 6, 5), generator=gen) < 0.6).double()
    return logits, labels, mask


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
@pytest.mark.parametrize(("squared", "batch"), [(False, False), (True, True)])
def test_masked_dice_matches_monai_with_one_hot_targets(activation, squared, batch):
    logits, labels, mask = _case()
    one_hot = torch.nn.functional.one_hot(labels, 3).movedim(-1, 1).double()
    monai = monai_losses.MaskedDiceLoss(softmax=activation == "softmax", sigmoid=activation == "sigmoid",
                                        squared_pred=squared, batch=batch)
    x_ours, x_monai = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    ours = losskit.dice_loss(x_ours, one_hot, activation=activation, squared=squared,
                             aggregate="batch" if batch else "per_sample", mask=mask)
    expected = monai(x_monai, one_hot, mask=mask)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=0)
    ours.backward()
    expected.backward()
    torch.testing.assert_close(x_ours.grad, x_monai.grad, rtol=1e-10, atol=1e-14)


def test_index_labels_with_a_mask_equal_ignore_index_and_masked_voxels_may_hold_nan():
    logits, labels, mask = _case(1)
    kept = mask.squeeze(1) > 0
    poisoned = torch.where(kept.unsqueeze(1), logits, torch.nan).requires_grad_()
    ours = losskit.dice_loss(poisoned, labels, mask=mask, reduction="none")
    ignored = losskit.dice_loss(logits, torch.where(kept, labels, 7), ignore_index=7, reduction="none")
    torch.testing.assert_close(ours, ignored, rtol=1e-12, atol=0)
    ours.sum().backward()
    assert torch.isfinite(poisoned.grad).all() and (poisoned.grad.masked_select(~kept.unsqueeze(1)) == 0).all()
    # a bool mask of shape (N, *spatial), and a batch of one that broadcasts
    torch.testing.assert_close(losskit.dice_loss(logits, labels, mask=kept), ours.detach().mean())
    first = mask[:1]
    both = losskit.dice_loss(logits, labels, mask=first.expand(2, -1, -1, -1), reduction="none")
    torch.testing.assert_close(losskit.dice_loss(logits, labels, mask=first, reduction="none"), both)


def test_a_mask_that_keeps_everything_changes_nothing():
    logits, labels, _ = _case(2)
    torch.testing.assert_close(losskit.dice_loss(logits, labels, mask=torch.ones(2, 6, 5)),
                               losskit.dice_loss(logits, labels), rtol=1e-14, atol=0)


@pytest.mark.parametrize(("mask", "message"), [
    (torch.ones(2, 6, 4), "mask must have shape"),
    (torch.ones(2, 2, 6, 5), "mask must have shape"),
    (torch.full((2, 6, 5), 0.5), "only 0 and 1"),
])
def test_bad_masks_are_named(mask, message):
    logits, labels, _ = _case()
    with pytest.raises(ValueError, match=message):
        losskit.dice_loss(logits, labels, mask=mask)
