"""Batches for training and evaluation, from the verified splits of `fmnist.data`.

Two interchangeable paths, chosen by `data.loader`:

- `device` (default): each split is loaded once, normalised and moved to the training device;
  a batch is an index slice of a seeded permutation, cropped and flipped by one vectorised gather
  (and, with `data.zoom`, scaled by one resample). No per-sample Python work, so the data path
  costs almost nothing next to the model.
- `torch`: the textbook pipeline (torchvision dataset, per-sample PIL transforms, DataLoader),
  kept for comparison and for users who want to plug in their own transforms.

Both yield `(images, labels)` on the device: float32 (B, 1, 28, 28) normalised with the training
set's mean and std, and int64 (B,). Epoch `e` of either is a pure function of (seed, e), so an
interrupted epoch can be resumed at any batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from fmnist import data, distributed
from fmnist.errors import UserError

Batch = tuple[Tensor, Tensor]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator that decides epoch `epoch`'s order and augmentation."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def split_train_val(seed: int, val_size: int, subset: int | None) -> tuple[Tensor, Tensor]:
    """Indices into the official train split: (training, validation), disjoint and seeded.

    The official test split is never touched. `subset` keeps the first N shuffled training samples.
    """
    total = data.SPECS["train"][0].count
    if val_size >= total:
        raise UserError(f"data.val_size={val_size} leaves no training data: use less than {total}")
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    val, train = order[:val_size], order[val_size:]
    if subset is not None:
        if subset > len(train):
            raise UserError(
                f"data.subset={subset} is more than the {len(train)} training samples left "
                f"after data.val_size={val_size}: lower one of them"
            )
        train = train[:subset]
    return train, val


class DeviceLoader:
    """Batches sliced from a split that lives, normalised, on the training device."""

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        device: torch.device,
        seed: int = 0,
        shuffle: bool = False,
        crop_padding: int = 0,
        flip: bool = False,
        erase: float = 0.0,
        zoom: float = 0.0,
        mean: float = data.MEAN,
        std: float = data.STD,
    ) -> None:
        normalised = data.normalise(images.to(device), mean, std)
        # Pad once with black pixels; a crop is then just a window.
        pad = crop_padding
        self.images = F.pad(normalised, (pad, pad, pad, pad), value=data.BACKGROUND)
        self.labels = labels.to(device)
        self.num_samples = len(labels)
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.crop_padding, self.flip, self.erase = crop_padding, flip, erase
        self.zoom = zoom
        self.device = device

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def epoch(self, epoch: int = 0, start_batch: int = 0) -> Iterator[Batch]:
        """Yield epoch `epoch`'s batches, from batch `start_batch` on."""
        n, side = len(self.labels), data.SIDE
        generator = epoch_generator(self.seed, epoch)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        # Every sample's window offset (0..2*padding) and flip, drawn for the whole epoch at once.
        offsets = torch.randint(0, 2 * self.crop_padding + 1, (2, n), generator=generator)
        flips = (
            torch.rand(n, generator=generator) < 0.5
            if self.flip
            else torch.zeros(n, dtype=torch.bool)
        )
        boxes = erasing_boxes(n, self.erase, generator) if self.erase else None
        zoom = self.zoom
        scales = torch.empty(n).uniform_(1 - zoom, 1 + zoom, generator=generator) if zoom else None
        order, offsets, flips = (
            order.to(self.device),
            offsets.to(self.device),
            flips.to(self.device),
        )
        boxes = None if boxes is None else boxes.to(self.device)
        scales = None if scales is None else scales.to(self.device)
        steps = torch.arange(side, device=self.device)
        for start in range(start_batch * self.batch_size, n, self.batch_size):
            # Under torchrun each rank takes its part of the global batch.
            batch = slice(start, start + self.batch_size)
            index = distributed.shard(order[batch])
            dy, dx = distributed.shard(offsets[:, batch].T).T
            flip = distributed.shard(flips[batch])[:, None]
            rows = dy[:, None] + steps  # (B, 28): which padded rows each sample's window covers
            cols = dx[:, None] + torch.where(flip, side - 1 - steps, steps)  # reversed = h-flip
            images = self.images[index[:, None, None], rows[:, :, None], cols[:, None, :]]
            if scales is not None:
                images = zoomed(images, distributed.shard(scales[batch]))
            if boxes is not None:
                top, left, bottom, right = distributed.shard(boxes[:, batch].T).T[..., None]
                inside = (steps >= top) & (steps < bottom), (steps >= left) & (steps < right)
                images = images.masked_fill(
                    inside[0][:, :, None] & inside[1][:, None, :], data.BACKGROUND
                )
            yield images.unsqueeze(1), self.labels[index]


# Random erasing (Zhong et al. 2017), with torchvision's RandomErasing ranges: a box covering
# 2% to 33% of the image, of aspect ratio 0.3 to 3.3 (log-uniform), filled with black.
ERASE_SCALE, ERASE_RATIO = (0.02, 0.33), (0.3, 3.3)


def zoomed(images: Tensor, scales: Tensor) -> Tensor:
    """(B, 28, 28) normalised images, each scaled by its factor in `scales` about the centre
    (bilinear; what comes in from outside the frame is black). Preparing a photo refits its
    object into 28 pixels, a few percent larger or smaller than the dataset's own fit and
    resampled: a random zoom shows the model that in training."""
    n = len(images)
    # affine_grid maps each output pixel to where it samples the input: 1 / scale.
    matrices = torch.zeros(n, 2, 3, device=images.device)
    matrices[:, 0, 0] = matrices[:, 1, 1] = 1 / scales
    grid = F.affine_grid(matrices, [n, 1, data.SIDE, data.SIDE], align_corners=False)
    ink = (images - data.BACKGROUND).unsqueeze(1)
    return F.grid_sample(ink, grid, align_corners=False).squeeze(1) + data.BACKGROUND


def erasing_boxes(n: int, p: float, generator: torch.Generator) -> Tensor:
    """(4, n) int64: each sample's erased box, top, left, bottom, right (exclusive), drawn at
    once for the epoch; with probability 1 - p a sample's box is empty."""
    side = data.SIDE
    area = torch.empty(n).uniform_(*ERASE_SCALE, generator=generator) * side * side
    log_ratio = torch.empty(n).uniform_(*map(math.log, ERASE_RATIO), generator=generator)
    ratio = log_ratio.exp()
    height = (area * ratio).sqrt().round().clamp(1, side).long()
    width = (area / ratio).sqrt().round().clamp(1, side).long()
    top = (torch.rand(n, generator=generator) * (side - height + 1)).long()
    left = (torch.rand(n, generator=generator) * (side - width + 1)).long()
    erased = torch.rand(n, generator=generator) < p
    return torch.stack([top, left, top + height * erased, left + width * erased])


class TorchLoader:
    """The standard pipeline: torchvision dataset, PIL transforms per sample, DataLoader."""

    def __init__(
        self,
        dataset: Dataset[tuple[Tensor, int]],
        indices: Tensor | Sequence[int],
        batch_size: int,
        device: torch.device,
        seed: int = 0,
        shuffle: bool = False,
        num_workers: int = 0,
    ) -> None:
        self.dataset, self.indices = dataset, torch.as_tensor(indices)
        self.num_samples = len(self.indices)
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.num_workers, self.device = num_workers, device

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)

    def epoch(self, epoch: int = 0, start_batch: int = 0) -> Iterator[Batch]:
        """Yield epoch `epoch`'s batches, from batch `start_batch` on."""
        generator = epoch_generator(self.seed, epoch)
        order = self.indices
        if self.shuffle:
            order = order[torch.randperm(len(order), generator=generator)]
        batches = [
            distributed.shard(batch).tolist()
            for batch in order[start_batch * self.batch_size :].split(self.batch_size)
        ]
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=batches,
            num_workers=self.num_workers,
            generator=generator,
            pin_memory=self.device.type == "cuda",
        )
        for images, labels in loader:
            yield (
                images.to(self.device, non_blocking=True),
                labels.to(self.device, non_blocking=True),
            )


def textbook_transform(
    crop_padding: int = 0,
    flip: bool = False,
    erase: float = 0.0,
    zoom: float = 0.0,
) -> Callable[[Image.Image], Tensor]:
    """The per-sample PIL transforms that do what `DeviceLoader` does to a whole batch."""
    from torchvision import transforms

    augment: list[torch.nn.Module] = (
        [transforms.RandomCrop(data.SIDE, padding=crop_padding)] if crop_padding else []
    )
    augment += [transforms.RandomHorizontalFlip()] if flip else []
    bilinear = transforms.InterpolationMode.BILINEAR
    scale = (1 - zoom, 1 + zoom)
    augment += [transforms.RandomAffine(0, scale=scale, interpolation=bilinear)] if zoom else []
    erasing = (
        [transforms.RandomErasing(erase, ERASE_SCALE, ERASE_RATIO, value=data.BACKGROUND)]
        if erase
        else []
    )
    return transforms.Compose(
        [
            *augment,
            transforms.ToTensor(),
            transforms.Normalize((data.MEAN,), (data.STD,)),
            *erasing,
        ]
    )


def torchvision_dataset(
    root: str, train: bool, transform: Callable[[Image.Image], Tensor]
) -> Dataset[tuple[Tensor, int]]:
    """torchvision's FashionMNIST with per-sample transforms."""
    from torchvision import datasets

    return datasets.FashionMNIST(root, train=train, transform=transform, download=False)


Loader = DeviceLoader | TorchLoader


class FashionMNIST:
    """The splits as loaders: `train` (augmented, shuffled), `val` (carved from train), `test`.

    `val` is None when `val_size` is 0; `test` is None (the test split is not even read) when
    `test` is false. Instantiated from the `data` config group, whose
    dataclass (fmnist.config.DataConfig) holds the defaults and the meaning of each argument.
    """

    def __init__(
        self,
        *,
        device: torch.device,
        seed: int,
        root: str | None,
        source_dirs: Sequence[str],
        download: bool,
        loader: str,
        batch_size: int,
        eval_batch_size: int,
        val_size: int,
        subset: int | None,
        crop_padding: int,
        flip: bool,
        erase: float,
        zoom: float,
        num_workers: int,
        test: bool,
    ) -> None:
        distributed.per_rank_batch(batch_size, "data.batch_size")
        distributed.per_rank_batch(eval_batch_size, "data.eval_batch_size")
        self.origin = data.prepare(root, tuple(source_dirs), download)
        root = str(data.resolve_root(root))
        train_index, val_index = split_train_val(seed, val_size, subset)
        if loader == "device":
            images, labels = data.load_split("train", root)
            self.train: Loader = DeviceLoader(
                images[train_index],
                labels[train_index],
                batch_size,
                device,
                seed,
                True,
                crop_padding=crop_padding,
                flip=flip,
                erase=erase,
                zoom=zoom,
            )
            val: Loader = DeviceLoader(
                images[val_index], labels[val_index], eval_batch_size, device
            )
            self.test: Loader | None = (
                DeviceLoader(*data.load_split("test", root), eval_batch_size, device)
                if test
                else None
            )
        else:
            self.train = TorchLoader(
                torchvision_dataset(
                    root, True, textbook_transform(crop_padding, flip, erase, zoom)
                ),
                train_index,
                batch_size,
                device=device,
                seed=seed,
                shuffle=True,
                num_workers=num_workers,
            )
            val = TorchLoader(
                torchvision_dataset(root, True, textbook_transform()),
                val_index,
                eval_batch_size,
                device=device,
                num_workers=num_workers,
            )
            self.test = (
                TorchLoader(
                    torchvision_dataset(root, False, textbook_transform()),
                    range(10000),
                    eval_batch_size,
                    device=device,
                    num_workers=num_workers,
                )
                if test
                else None
            )
        self.val = val if val_size else None
