"""Measure fmnist against the standard PyTorch pipeline, side by side (configs/benchmark.yaml)."""

import hydra
from omegaconf import DictConfig

import fmnist.benchmark
import fmnist.cli


@hydra.main(version_base="1.3", config_path="../configs", config_name="benchmark")
def main(cfg: DictConfig) -> None:
    fmnist.benchmark.main(cfg)


if __name__ == "__main__":
    fmnist.cli.run(main)
