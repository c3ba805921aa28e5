"""Trains one of the paper's models: ``python train.py [experiment=NAME] [model=NAME] [key=value ...]``.

Without arguments: BN-LSTM on sequential MNIST with the paper's settings. Configs are in
conf/ (see the README); ``-m`` sweeps, e.g. ``python train.py -m model=lstm,bnlstm seed=0,1``.
"""

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from data import DataError
from rbn.config import ConfigError
from rbn.trainer import SELECTION, RunError, Trainer

log = logging.getLogger("train")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Returns the test metric that selects models (accuracy or bits per character), for
    sweepers that optimize it."""
    try:
        trainer = Trainer(cfg, HydraConfig.get().runtime.output_dir)
        results = trainer.run()
    except (ConfigError, RunError, DataError) as error:
        log.error("%s", error)
        sys.exit(f"error: {error}")
    if results["status"] != "finished":
        return None
    return results["test"][SELECTION[trainer.task][0]]


if __name__ == "__main__":
    main()
