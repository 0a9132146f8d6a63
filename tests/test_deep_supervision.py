"""DeepSupervisionLoss against MONAI 1.6 DeepSupervisionLoss, live."""

from __future__ import annotations

import pytest
import torch

import losskit
from losskit.compose import DeepSupervisionLoss

monai_losses = pytest.importorskip("monai.losses")


def _outputs(gen):
    return [torch.randn((2, 3, *size), generator=gen, dtype=torch.float64) for size in ((8, 8, 6), (4, 4, 3),
                                                                                         (2, 2, 2), (1, 1, 1),
                                                                                         (1, 1, 1))]


@pytest.mark.parametrize(("weight_mode", "weights"), [("exp", None), ("two", None), ("same", None),
                                                      ("exp", [0.7, 0.2, 0.1, 0.3, 0.05, 9.0])])
def test_matches_monai_with_index_labels(weight_mode, weights):
    gen = torch.Generator().manual_seed(0)
    outputs = _outputs(gen)
    labels = torch.randint(3, (2, 1, 8, 8, 6), generator=gen)
    monai = monai_losses.DeepSupervisionLoss(monai_losses.DiceLoss(softmax=True, to_onehot_y=True),
                                             weight_mode=weight_mode, weights=weights)
    ours = DeepSupervisionLoss(losskit.nn.DiceLoss(), weight_mode=weight_mode, weights=weights)
    # MONAI casts each output to float32 and resizes the label map as floats (nearest-exact)
    expected = monai(outputs, labels.double())
    assert ours(outputs, labels).item() == pytest.approx(expected.item(), rel=1e-6)
    assert ours(outputs, labels.squeeze(1)).item() == pytest.approx(expected.item(), rel=1e-6)


def test_one_hot_targets_and_a_single_tensor():
    gen = torch.Generator().manual_seed(1)
    outputs = _outputs(gen)[:3]
    labels = torch.randint(3, (2, 8, 8, 6), generator=gen)
    one_hot = torch.nn.functional.one_hot(labels, 3).movedim(-1, 1).double()
    ours = DeepSupervisionLoss(losskit.nn.DiceFocalLoss())
    torch.testing.assert_close(ours(outputs, one_hot), ours(outputs, labels), rtol=1e-12, atol=0)
    assert ours(outputs[0], labels).item() == losskit.dice_focal_loss(outputs[0], labels).item()


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="weight_mode"):
        DeepSupervisionLoss(losskit.nn.DiceLoss(), weight_mode="linear")
    with pytest.raises(ValueError, match="weights"):
        DeepSupervisionLoss(losskit.nn.DiceLoss(), weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="weights has 1 entries for 2 levels"):
        DeepSupervisionLoss(losskit.nn.DiceLoss(), weights=[1.0])(_outputs(torch.Generator())[:2],
                                                                  torch.zeros(2, 8, 8, 6, dtype=torch.long))
