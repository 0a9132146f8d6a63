"""The SSIM loss against the paper's definition (float64, window by window), against MONAI 1.6.1
running live (``@pytest.mark.peer``: ``SSIMLoss`` and ``SSIMMetric``, values and gradients, 2-D and
3-D, both windows), its properties, its float32 accuracy near convergence and its errors."""

from __future__ import annotations

import json

import pytest
import torch

import losskit
from losskit.examples.ssim import noisy_pair, smooth_images
from losskit.functional import ssim as ssim_module
from losskit.functional.ssim import ssim_loss
from tests.reference_ssim import ssim_loss_per_sample
from tests.test_accuracy import grad_error, value_error

OPTIONS = [
    pytest.param(2, {}, id="2d-defaults"),
    pytest.param(2, {"kernel": "uniform", "win_size": 5, "data_range": 2.0, "k1": 0.02, "k2": 0.05}, id="2d-uniform"),
    pytest.param(2, {"win_size": (5, 9), "kernel_sigma": (0.8, 2.0)}, id="2d-per-axis"),
    pytest.param(3, {"win_size": 5, "kernel_sigma": 1.0}, id="3d-gaussian"),
    pytest.param(3, {"kernel": "uniform", "win_size": (3, 5, 7), "data_range": 0.5}, id="3d-uniform"),
]
SHAPES = {2: (3, 2, 14, 13), 3: (2, 2, 9, 10, 11)}


def _pair(shape, noise=0.2, seed=0):
    case = noisy_pair(shape, noise, torch.Generator().manual_seed(seed))
    return case.input, case.target


@pytest.mark.parametrize(("dims", "options"), OPTIONS)
def test_matches_the_paper_definition_window_by_window(dims, options):
    x, y = _pair(SHAPES[dims])
    expected = ssim_loss_per_sample(x, y, **options)
    torch.testing.assert_close(ssim_loss(x, y, **options, reduction="none"), expected, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(ssim_loss(x, y, **options), expected.mean(), rtol=1e-12, atol=1e-13)


def test_reference_ssim_of_a_hand_worked_window():
    # One 3x3 uniform window: x = 0..8, y = x + 1 (a brightness shift). mu_x = 4, mu_y = 5, both
    # variances and the covariance are 60/9 = 20/3, so the structure term is 1 and
    # SSIM = (2*4*5 + C1) / (16 + 25 + C1) with C1 = 1e-4: 40.0001 / 41.0001.
    x = torch.arange(9, dtype=torch.float64).view(1, 1, 3, 3)
    expected = 1 - 40.0001 / 41.0001
    torch.testing.assert_close(ssim_loss_per_sample(x, x + 1, kernel="uniform", win_size=3),
                               torch.tensor([expected], dtype=torch.float64))
    torch.testing.assert_close(ssim_loss(x, x + 1, kernel="uniform", win_size=3),
                               torch.tensor(expected, dtype=torch.float64), rtol=1e-14, atol=0)


def test_spatial_dims_2_scores_a_volume_slice_by_slice():
    x, y = _pair((2, 3, 4, 12, 12))
    per_slice = ssim_loss(x, y, spatial_dims=2, win_size=7, reduction="none")
    flat = ssim_loss(x.flatten(1, 2), y.flatten(1, 2), win_size=7, reduction="none")
    torch.testing.assert_close(per_slice, flat, rtol=0, atol=0)
    torch.testing.assert_close(per_slice, ssim_loss_per_sample(x.flatten(1, 2), y.flatten(1, 2), win_size=7))


def test_the_window_is_applied_one_axis_at_a_time(monkeypatch):
    seen = []

    def recording(conv):
        def call(images, weight, *args, **kwargs):
            seen.append(tuple(weight.shape[2:]))
            return conv(images, weight, *args, **kwargs)
        return call

    monkeypatch.setattr(ssim_module, "_CONV", {d: recording(c) for d, c in ssim_module._CONV.items()})
    x, y = _pair(SHAPES[3])
    ssim_loss(x, y, win_size=5)
    assert seen == [(5, 1, 1), (1, 5, 1), (1, 1, 5)]


# --- MONAI 1.6.1, live ----------------------------------------------------------------------


def _monai_options(dims, options):
    renamed = {"kernel": "kernel_type"}
    return {"spatial_dims": dims, **{renamed.get(k, k): v for k, v in options.items()}}


def _grad(fn, x, y, **options):
    """``fn(x, y, **options)`` and the gradient of its sum with respect to ``x``."""
    x = x.detach().clone().requires_grad_(True)
    value = fn(x, y, **options)
    (grad,) = torch.autograd.grad(value.sum(), x)
    return value.detach(), grad


@pytest.mark.peer
@pytest.mark.parametrize(("dims", "options"), OPTIONS)
def test_matches_monai_ssim_loss_and_metric(dims, options):
    from monai.losses import SSIMLoss
    from monai.metrics.regression import SSIMMetric

    # MONAI computes in float32 whatever it is given, so it gets float32 images, and losskit
    # float64 on the same values: MONAI's own rounding is the tolerance.
    x, y = (t.float() for t in _pair(SHAPES[dims]))
    monai_options = _monai_options(dims, options)
    for reduction in ("none", "mean", "sum"):
        expected, expected_grad = _grad(SSIMLoss(**monai_options, reduction=reduction), x, y)
        value, grad = _grad(ssim_loss, x.double(), y.double(), **options, reduction=reduction)
        torch.testing.assert_close(value, expected.double().reshape(value.shape), rtol=1e-5, atol=1e-6)
        assert (grad - expected_grad.double()).norm() <= 1e-4 * grad.norm()
    metric = SSIMMetric(**monai_options, reduction="none")
    torch.testing.assert_close(ssim_loss(x.double(), y.double(), **options, reduction="none"),
                               1 - metric(x, y).double().view(-1), rtol=1e-5, atol=1e-6)


@pytest.mark.peer
def test_defaults_are_monai_defaults():
    from monai.losses import SSIMLoss

    x, y = (t.float() for t in _pair((2, 1, 32, 32)))
    torch.testing.assert_close(losskit.SSIMLoss()(x, y), SSIMLoss(spatial_dims=2)(x, y), rtol=1e-5, atol=1e-6)
    x, y = (t.float() for t in _pair((1, 1, 12, 13, 14)))
    torch.testing.assert_close(ssim_loss(x, y), SSIMLoss(spatial_dims=3)(x, y), rtol=1e-5, atol=1e-6)


@pytest.mark.peer
def test_monai_float32_loses_the_near_converged_loss_losskit_keeps():
    from monai.losses import SSIMLoss

    x, y = _pair((2, 1, 48, 48), noise=3e-4)
    x32, y32 = x.float(), y.float()
    exact = ssim_loss(x32.double(), y32.double(), reduction="none")
    assert exact.max() < 1e-4
    ours = ssim_loss(x32, y32, reduction="none")
    monai = SSIMLoss(spatial_dims=2, reduction="none")(x32, y32).view(-1)
    assert value_error(ours, exact, torch.float32) < 1e-5
    # MONAI forms 1 - l * cs with l * cs within 1e-5 of 1: float32 keeps about two digits.
    assert ((monai.double() - exact) / exact).abs().max() > 1e-3


# --- properties -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [SHAPES[2], SHAPES[3]])
def test_identical_images_give_zero_with_zero_gradient(shape):
    x, _ = _pair(shape)
    value, grad = _grad(ssim_loss, x, x, win_size=5, reduction="none")
    assert torch.equal(value, torch.zeros(shape[0], dtype=torch.float64))
    assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize(("dims", "options"), OPTIONS)
def test_symmetric_and_between_zero_and_two(dims, options):
    x, y = _pair(SHAPES[dims], noise=1.0)
    forward = ssim_loss(x, y, **options, reduction="none")
    torch.testing.assert_close(ssim_loss(y, x, **options, reduction="none"), forward, rtol=0, atol=0)
    assert ((forward > 0) & (forward < 2)).all()
    inverted = ssim_loss(x, 1 - x, **options, reduction="none")  # anticorrelated: SSIM < 0
    assert (inverted > 1).all() and (inverted <= 2).all()


@pytest.mark.parametrize(("dims", "options"), [OPTIONS[1], OPTIONS[3], OPTIONS[4]])
def test_float32_keeps_the_budget_near_convergence_in_2d_and_3d(dims, options):
    # The contract's near-converged regime is 2-D with the default window; the same budget holds
    # for the uniform window and in 3-D.
    shape = (2, 1, 24, 24) if dims == 2 else (2, 1, 16, 16, 16)
    x, y = (t.float() for t in _pair(shape, noise=3e-4, seed=1))
    value, grad = _grad(ssim_loss, x, y, **options, reduction="none")
    value64, grad64 = _grad(ssim_loss, x.double(), y.double(), **options, reduction="none")
    assert 0 < value64.max() < 1e-3
    assert value_error(value, value64, torch.float32) <= 1e-5
    assert grad_error(grad, grad64, torch.float32) <= 1e-4


def test_module_takes_per_axis_options_from_a_config():
    config = json.loads(json.dumps(losskit.get("ssim", win_size=(5, 7), kernel_sigma=[1.0, 2.0]).get_config()))
    module = losskit.get(config)
    assert module.buffers() is not None and not list(module.buffers())
    x, y = _pair(SHAPES[2])
    torch.testing.assert_close(module(x, y), ssim_loss(x, y, win_size=(5, 7), kernel_sigma=(1.0, 2.0)))


# --- bad input ------------------------------------------------------------------------------


IMAGE = smooth_images((2, 1, 12, 12), torch.Generator().manual_seed(0))


@pytest.mark.parametrize(("target", "options", "error", "match"), [
    (IMAGE[:, :, :, :11], {}, ValueError, "target must have the same shape"),
    (IMAGE, {"win_size": 13}, ValueError, r"win_size 13 is larger than the image"),
    (IMAGE, {"win_size": (5, 13)}, ValueError, r"win_size \(5, 13\) is larger than the image"),
    (IMAGE, {"win_size": 4}, ValueError, "win_size must be odd"),
    (IMAGE, {"win_size": (5, 5, 5)}, ValueError, "win_size must be one value or 2 values"),
    (IMAGE, {"win_size": 5.0}, TypeError, "win_size must be an integer"),
    (IMAGE, {"data_range": 0.0}, ValueError, r"data_range must be in \(0"),
    (IMAGE, {"data_range": -1.0}, ValueError, r"data_range must be in \(0"),
    (IMAGE, {"kernel_sigma": 0.0}, ValueError, "kernel_sigma must be in"),
    (IMAGE, {"k1": 0.0}, ValueError, "k1 must be in"),
    (IMAGE, {"kernel": "box"}, ValueError, "kernel must be one of"),
    (IMAGE, {"spatial_dims": 3}, ValueError, r"spatial_dims=3 needs input of shape \(N, C, D, H, W\)"),
    (IMAGE, {"spatial_dims": 1}, ValueError, "spatial_dims must be one of"),
])
def test_bad_input_raises_naming_the_argument(target, options, error, match):
    with pytest.raises(error, match=match):
        ssim_loss(IMAGE, target, **options)


@pytest.mark.parametrize("shape", [(12, 12), (1, 12, 12), (1, 1, 1, 1, 12, 12)])
def test_input_that_is_not_a_batch_of_images_raises(shape):
    x = torch.rand(shape)
    with pytest.raises(ValueError, match="input must be a batch of 2-D or 3-D images"):
        ssim_loss(x, x)


def test_integer_images_raise():
    x = torch.zeros(1, 1, 12, 12, dtype=torch.uint8)
    with pytest.raises(TypeError, match="input must be a floating-point tensor"):
        ssim_loss(x, x)


def test_nan_in_an_image_raises_with_value_checks_and_propagates_without():
    x = IMAGE.clone()
    x[0, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="input"):
        ssim_loss(x, IMAGE, win_size=5)
    with losskit.set_checks(False):
        value = ssim_loss(x, IMAGE, win_size=5, reduction="none")
    assert value[0].isnan() and value[1].isfinite()


def test_bright_near_converged_images_keep_their_digits():
    # Values in [0.9, 1.05]: without centring x + y on its channel mean, sigma_s^2 = E[s^2] - mu_s^2
    # loses the digits of s^2 ~ 3.6 against 2 C2 = 1.8e-3, and float32 was measured 5e-6 off on the
    # value and 4e-5 on the gradient norm (inside the budget, with little to spare); centred, 1e-7.
    gen = torch.Generator().manual_seed(0)
    target = 0.9 + 0.1 * smooth_images((2, 1, 32, 32), gen)
    x = (target + 3e-4 * torch.randn(target.shape, generator=gen, dtype=torch.float64)).float()
    y = target.float()
    value, grad = _grad(ssim_loss, x, y, reduction="none")
    value64, grad64 = _grad(ssim_loss, x.double(), y.double(), reduction="none")
    assert 0 < value64.max() < 1e-3
    assert value_error(value, value64, torch.float32) <= 1e-6
    assert grad_error(grad, grad64, torch.float32) <= 1e-5
