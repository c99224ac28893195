"""Evaluate a trained checkpoint on Fashion-MNIST. Examples:

python scripts/evaluate.py ckpt_path=outputs/runs/2025-01-01_12-00-00
python scripts/evaluate.py ckpt_path=outputs/runs/2025-01-01_12-00-00/checkpoints/last.pt split=val
"""

import hydra
from omegaconf import DictConfig

import fmnist.cli
import fmnist.evaluate


@hydra.main(version_base="1.3", config_path="../configs", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    fmnist.evaluate.main(cfg)


if __name__ == "__main__":
    fmnist.cli.run(main)
