"""The models: a small BatchNorm CNN (the default) and softmax regression on raw pixels."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from torch import Tensor, nn

IMAGE_SIDE = 28
NUM_CLASSES = 10


def conv_block(in_channels: int, out_channels: int, convs: int) -> nn.Sequential:
    """`convs` times (3x3 conv -> BatchNorm -> ReLU); the last conv's output is max-pooled 2x2.

    Pooling before, not after, that conv's BatchNorm and ReLU gives almost the same function
    (both are monotonic per channel) while they run on a quarter of the pixels: about 6% faster
    training for the default model, 10% for the one-conv blocks of `experiment=fast`.
    """
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [
            nn.Conv2d(
                in_channels if i == 0 else out_channels, out_channels, 3, padding=1, bias=False
            ),
            *([nn.MaxPool2d(2)] if i == convs - 1 else []),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


class SmallCNN(nn.Module):
    """Conv blocks of growing width (28 -> 14 -> 7 -> 3 pixels), global max-pool, dropout, linear.

    The default (fmnist.config.SmallCNNConfig: widths 32, 64, 128, two convs per block) has 288k
    parameters; with one conv per block it has 94k, the size of the benchmark table's "2 Conv
    <100K parameters" entry.
    """

    def __init__(
        self,
        *,
        widths: Sequence[int],
        convs_per_block: int,
        dropout: float,
        num_classes: int = NUM_CLASSES,
    ) -> None:
        super().__init__()
        channels = [1, *widths]
        self.features = nn.Sequential(
            *(conv_block(i, o, convs_per_block) for i, o in pairwise(channels))
        )
        self.head = nn.Sequential(
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(widths[-1], num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Images (N, 1, 28, 28), normalised, to logits (N, 10)."""
        logits: Tensor = self.head(self.features(x))
        return logits

    def embed(self, x: Tensor) -> Tensor:
        """What the last layer sees: the pooled features (N, widths[-1]) (TensorBoard's
        projector shows them)."""
        features: Tensor = self.head[:-1](self.features(x))
        return features


class Linear(nn.Module):
    """Softmax regression: logits = W x + b on the 784 raw pixels (softmax lives in the loss)."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.fc = nn.Linear(IMAGE_SIDE * IMAGE_SIDE, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Images (N, 1, 28, 28) to logits (N, 10)."""
        logits: Tensor = self.fc(self.embed(x))
        return logits

    def embed(self, x: Tensor) -> Tensor:
        """What the layer sees: the 784 pixels."""
        return x.flatten(1)
