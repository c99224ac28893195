"""Train a model on Fashion-MNIST. Examples:

python scripts/train.py
python scripts/train.py loss=torch optimizer.lr=0.05 trainer.max_epochs=3 seed=1
python scripts/train.py -m loss=scratch,torch seed=0,1,2
"""

import hydra
from omegaconf import DictConfig

import fmnist.cli
import fmnist.train


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> float:
    return fmnist.train.main(cfg)


if __name__ == "__main__":
    fmnist.cli.run(main)
