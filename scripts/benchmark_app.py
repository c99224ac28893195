"""The page's /predict under load: 200 calls from 8 gradio_client clients at once. Examples:

python scripts/benchmark_app.py ckpt_path=outputs/runs/2025-01-01_12-00-00
python scripts/benchmark_app.py calls=40 clients=2
"""

import hydra
from omegaconf import DictConfig

import fmnist.app.load
import fmnist.cli


@hydra.main(version_base="1.3", config_path="../configs", config_name="benchmark_app")
def main(cfg: DictConfig) -> None:
    fmnist.app.load.main(cfg)


if __name__ == "__main__":
    fmnist.cli.run(main)
