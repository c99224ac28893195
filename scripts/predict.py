"""Predict the class of your own pictures with a trained checkpoint or an .onnx export. Examples:

python scripts/predict.py ckpt_path=outputs/runs/2025-01-01_12-00-00 images=[shirt.jpg,photos/]
python scripts/predict.py ckpt_path=outputs/runs/2025-01-01_12-00-00 images=[coat.png] target=coat
"""

import hydra
from omegaconf import DictConfig

import fmnist.cli
import fmnist.predict


@hydra.main(version_base="1.3", config_path="../configs", config_name="predict")
def main(cfg: DictConfig) -> None:
    fmnist.predict.main(cfg)


if __name__ == "__main__":
    fmnist.cli.run(main)
