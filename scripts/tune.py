"""Search training settings with Optuna, on the validation split. Examples:

python scripts/tune.py hparams_search=fast
python scripts/tune.py hparams_search=fast search.n_trials=60 search.storage=postgresql://u:p@db/fmnist
python scripts/tune.py -m hparams_search=fast search.worker=range(4) hydra/launcher=submitit_local
"""

import hydra
from omegaconf import DictConfig

import fmnist.cli
import fmnist.search.main


@hydra.main(version_base="1.3", config_path="../configs", config_name="tune")
def main(cfg: DictConfig) -> None:
    fmnist.search.main.main(cfg)


if __name__ == "__main__":
    fmnist.cli.run(main)
