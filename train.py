"""Trains one of the paper's models: ``python train.py [experiment=NAME] [model=NAME] [key=value ...]``.

Without arguments: BN-LSTM on sequential MNIST with the paper's settings. Configs are in
conf/ (see the README); ``-m`` sweeps, e.g. ``python train.py -m model=lstm,bnlstm seed=0,1``.
"""

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException
from omegaconf import DictConfig, OmegaConf

from data import DataError
from rbn.config import ConfigError
from rbn.trainer import SELECTION, RunError, Trainer

log = logging.getLogger("train")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Returns the validation metric (accuracy or bits per character, by the paper's procedure:
    population statistics for BN-LSTM), for sweepers that optimize it: never the test's, which
    choosing hyperparameters by would leak."""
    hydra_config = HydraConfig.get()
    sweep = hydra_config.mode == RunMode.MULTIRUN
    try:
        trainer = Trainer(cfg, hydra_config.runtime.output_dir)
        results = trainer.run()
    except (ConfigError, RunError, DataError) as error:
        log.error("%s", error)
        if sweep:
            # An exception, unlike SystemExit, lets Hydra run the sweep's other jobs first; without
            # its traceback, which Hydra prints, the one line above is all there is to read.
            raise error.with_traceback(None) from None
        sys.exit(f"error: {error}")
    if results["status"] != "finished":  # diverged
        if not sweep:
            sys.exit(f"error: {results['error']}")  # so that `train.py ... && next` stops here
        return None
    return results["valid"][SELECTION[trainer.task][0]]


NAMING = "hydra.job.config.override_dirname.exclude_keys"


def name_sweep_runs_by_what_varies(argv: list[str]) -> list[str]:
    """In a sweep (-m), names run directories by the overrides that vary between its jobs and
    by nothing else, so that the runs' names, which TensorBoard shows, say what differs:
    ``model=lstm,seed=1``. Overrides that are the same in every job join the keys that runs
    are not named by (NAMING in conf/config.yaml); a key of that list that the sweep varies
    leaves it, or its jobs would share one directory. A run's name stays a function of the
    command, so re-running a sweep into the same ``hydra.sweep.dir`` resumes its runs."""
    if not {"-m", "--multirun"} & set(argv) or any(arg.lstrip("+").startswith(NAMING) for arg in argv):
        return argv
    try:
        overrides = OverridesParser.create().parse_overrides(
            [arg for arg in argv[1:] if ("=" in arg or arg.startswith("~")) and not arg.startswith("-")]
        )
    except OverrideParseException:
        return argv  # Hydra reports it
    constant = [o.key_or_group for o in overrides if not o.is_sweep_override() and not o.is_hydra_override()]
    swept = {o.key_or_group for o in overrides if o.is_sweep_override()}
    configured = OmegaConf.select(OmegaConf.load(Path(__file__).parent / "conf" / "config.yaml"), NAMING)
    unnamed = [key for key in dict.fromkeys([*configured, *constant]) if key not in swept]
    return [*argv, f"{NAMING}=[{','.join(unnamed)}]"]


if __name__ == "__main__":
    sys.argv = name_sweep_runs_by_what_varies(sys.argv)
    main()
