"""Feed one image to an unfinished network and compute its cross-entropy by hand. Examples:

python scripts/snapshot.py
python scripts/snapshot.py model=linear seed=3 target_class=7
python scripts/snapshot.py ckpt_path=outputs/runs/2025-01-01_12-00-00/checkpoints/last.pt
python scripts/snapshot.py target=4 \\
    probs=[0.1058,0.1043,0.0988,0.1066,0.0875,0.0881,0.1027,0.1046,0.1057,0.0958]
"""

import hydra
from omegaconf import DictConfig

import fmnist.cli
import fmnist.snapshot


@hydra.main(version_base="1.3", config_path="../configs", config_name="snapshot")
def main(cfg: DictConfig) -> None:
    fmnist.snapshot.main(cfg)


if __name__ == "__main__":
    fmnist.cli.run(main)
