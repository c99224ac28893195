"""Serve the lesson as a web page (Gradio). Examples:

python scripts/app.py
python scripts/app.py ckpt_path=outputs/runs/2025-01-01_12-00-00 server.port=7861
"""

import hydra
from omegaconf import DictConfig

import fmnist.app.server
import fmnist.cli


@hydra.main(version_base="1.3", config_path="../configs", config_name="app")
def main(cfg: DictConfig) -> None:
    fmnist.app.server.main(cfg)


if __name__ == "__main__":
    fmnist.cli.run(main)
