"""The engine: test-time augmentation (its views, the logits it returns) and the step loop's
handling of non-finite losses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fmnist import data
from fmnist.config import compose_train
from fmnist.engine import (
    SHIFTS,
    Compute,
    NonFiniteLoss,
    Position,
    bf16_is_fast,
    device,
    evaluate,
    predict,
    train_epoch,
    tta_views,
)
from fmnist.errors import UserError
from fmnist.train import build

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


# --------------------------------------------------------------------------------------------
# Skipping non-finite steps (trainer.skip_nonfinite)
# --------------------------------------------------------------------------------------------


class PoisonedBatches:
    """The smoke run's training loader, with the images of some batches (1-based) made NaN."""

    def __init__(self, loader, poisoned: set[int]) -> None:
        self.loader, self.poisoned = loader, poisoned

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int = 0, start_batch: int = 0):
        for number, (images, labels) in enumerate(self.loader.epoch(epoch, start_batch), 1):
            yield (images * float("nan") if number in self.poisoned else images), labels


def poisoned_training(poisoned: set[int]):
    training = build(compose_train(["experiment=smoke", "trainer.deterministic=true"]))
    training.data.train = PoisonedBatches(training.data.train, poisoned)
    return training


@pytest.mark.slow
def test_skipped_steps_leave_a_usable_model_and_the_schedule_in_step(data_root):
    """NaN images in batches 3 and 4 of each epoch: those steps are skipped; BatchNorm counts
    and statistics are as if the batches never came, and the schedule still ends at 0."""
    training, position = poisoned_training({3, 4}), Position()
    for _ in range(2):
        steps = list(train_epoch(training, position, max_skipped=10))
        assert len(steps) == 6
    assert position.skipped == 4 and position.step == 12
    for buffer in training.model.buffers():  # NaN running statistics if the batches counted
        assert torch.isfinite(buffer.float()).all()
    tracked = [b for name, b in training.model.named_buffers() if "num_batches_tracked" in name]
    assert tracked and all(count.item() == 12 for count in tracked)
    assert training.scheduler.last_epoch == 16  # every batch, taken or skipped
    assert training.optimizer.param_groups[0]["lr"] == 0.0
    # A usable model: NaN statistics would predict class 0 for everything (10%).
    val = evaluate(training.model, training.data.val, training.compute)
    assert val.accuracy > 0.3, val.accuracy


def test_too_many_skips_in_a_row_stop_training(data_root):
    training, position = poisoned_training(set(range(2, 9))), Position()  # 7 bad in a row
    with pytest.raises(NonFiniteLoss, match=r"the 4th non-finite loss in a row \(trainer"):
        list(train_epoch(training, position, max_skipped=3))
    assert position.skipped == 4 and position.step == 1


def test_without_skipping_a_non_finite_loss_stops_at_once(data_root):
    training, position = poisoned_training({2}), Position()
    with pytest.raises(
        NonFiniteLoss,
        match=r"the loss is nan at step 2 \(epoch 1, batch 2\): .* trainer.skip_nonfinite=true",
    ):
        list(train_epoch(training, position))
    assert position.step == 1


# --------------------------------------------------------------------------------------------
# The average of the weights (trainer.ema_decay)
# --------------------------------------------------------------------------------------------


def test_the_weight_average_is_the_hand_computed_one_after_3_steps(data_root):
    training = build(compose_train(["experiment=smoke", "trainer.ema_decay=0.75"]))
    seen = []  # the weights (and BatchNorm statistics) after each step
    for step in train_epoch(training, Position()):
        seen.append({k: v.detach().clone().float() for k, v in training.model.state_dict().items()})
        if step.number == 3:
            break
    expected = seen[0]  # the first update copies
    for weights in seen[1:]:
        expected = {k: 0.75 * expected[k] + 0.25 * weights[k] for k in weights}
    average = training.ema.module.state_dict()
    for name, value in expected.items():
        if "num_batches_tracked" in name:
            continue  # an integer count: not averaged
        torch.testing.assert_close(average[name].float(), value, rtol=1e-6, atol=1e-7)
    assert training.evaluated is training.ema.module
    assert not torch.equal(average["head.3.weight"], training.model.state_dict()["head.3.weight"])


@pytest.mark.parametrize(
    ("cuda", "mps", "chosen", "bf16"),
    [
        (True, True, "cuda", True),  # a CUDA GPU first
        (False, True, "mps", False),  # then Apple's GPU, in float32
        (False, False, "cpu", None),  # then the CPU (bf16 where it has AVX-512-BF16 or AMX)
    ],
)
def test_device_auto_is_cuda_then_mps_then_the_cpu(monkeypatch, cuda, mps, chosen, bf16):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    compute = Compute.choose("auto", "auto", channels_last=False)
    assert compute.device.type == chosen
    assert compute.bf16 == (bf16_is_fast(torch.device("cpu")) if bf16 is None else bf16)
    assert device("cpu").type == "cpu"
    if not mps:
        with pytest.raises(UserError, match=r"trainer.device=mps but no Apple GPU \(MPS\)"):
            device("mps")
