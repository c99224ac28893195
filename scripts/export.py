"""Export a trained checkpoint as a self-contained ONNX or TorchScript model. Examples:

python scripts/export.py ckpt_path=outputs/runs/2025-01-01_12-00-00
python scripts/export.py ckpt_path=outputs/runs/2025-01-01_12-00-00 format=torchscript
"""

import hydra
from omegaconf import DictConfig

import fmnist.cli
import fmnist.export


@hydra.main(version_base="1.3", config_path="../configs", config_name="export")
def main(cfg: DictConfig) -> None:
    fmnist.export.main(cfg)


if __name__ == "__main__":
    fmnist.cli.run(main)
