"""fmnist: Fashion-MNIST end to end, with a from-scratch softmax cross-entropy at its centre."""

__version__ = "0.1.0"
