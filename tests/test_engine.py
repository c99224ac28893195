"""Test-time augmentation: the views it averages over, and the logits it returns."""

from __future__ import annotations

import torch
from torch import nn

from fmnist import data
from fmnist.engine import SHIFTS, Compute, predict, tta_views

CPU32 = Compute(torch.device("cpu"), bf16=False, channels_last=False)


def test_views_are_the_image_its_mirror_and_their_one_pixel_shifts():
    images = torch.randn(3, 1, 28, 28)
    assert len(tta_views(images, "none")) == 1
    image, mirror = tta_views(images, "flip")
    assert torch.equal(image, images) and torch.equal(mirror, images.flip(-1))

    views = tta_views(images, "flip_shift")
    assert len(views) == 18 and all(v.shape == images.shape for v in views)
    assert torch.equal(views[SHIFTS.index((0, 0))], images)
    assert torch.equal(views[9 + SHIFTS.index((0, 0))], images.flip(-1))
    down_right = views[SHIFTS.index((1, 1))]  # the window moves down-right: content up-left
    assert torch.equal(down_right[..., :27, :27], images[..., 1:, 1:])
    assert (down_right[..., 27, :] == data.BACKGROUND).all()  # padded with black
    assert (down_right[..., :, 27] == data.BACKGROUND).all()


def test_predict_averages_the_logits_of_every_view():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    images = torch.randn(4, 1, 28, 28)
    assert torch.equal(predict(model, images, CPU32), model(images))
    for tta in ("flip", "flip_shift"):
        expected = torch.stack([model(v) for v in tta_views(images, tta)]).mean(0)
        torch.testing.assert_close(predict(model, images, CPU32, tta), expected)
