"""Explain softmax + cross-entropy step by step. Examples:

python scripts/explain.py
python scripts/explain.py logits=[1,2,3] targets=0
python scripts/explain.py probs=[0.7,0.2,0.1] target=0
"""

import hydra
from omegaconf import DictConfig

import fmnist.cli
import fmnist.explain


@hydra.main(version_base="1.3", config_path="../configs", config_name="explain")
def main(cfg: DictConfig) -> None:
    fmnist.explain.main(cfg)


if __name__ == "__main__":
    fmnist.cli.run(main)
