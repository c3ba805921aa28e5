"""Keeps the records of finished and diverged runs, small enough for the repository:
``python scripts/archive_runs.py ROOT DEST``.

For every run under ROOT that finished or diverged (a ``results.json`` whose ``"status"`` says
so: a divergence's records show where and how), writes
into DEST, at the run's path relative to ROOT: ``results.json``, Hydra's ``.hydra/config.yaml``
and ``overrides.yaml``, and one event file with every scalar of the run's events, as
TensorBoard shows them (an attempt's steps that a resumed run trained again are left out).
Histograms, figures, samples and checkpoints stay behind. ``scripts/compare.py DEST`` and
``tensorboard --logdir DEST`` read the archive as they read ROOT. Archiving a run again
replaces its records, but not a run's: a directory in DEST that holds checkpoints is refused.
DEST may lie inside ROOT (the records there are not taken for runs), but not be ROOT or hold it.

    python scripts/archive_runs.py multirun/pmnist docs/runs/pmnist
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import load_runs  # noqa: E402

HYDRA_RECORDS = ("config.yaml", "overrides.yaml")


def archive(run_dir: Path, dest: Path) -> None:
    # The run's events are read first and the earlier archive's removed last: a failure on the
    # way (an unreadable file) leaves no records lost.
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    dest.mkdir(parents=True, exist_ok=True)
    earlier = list(dest.glob("events.out.tfevents.*"))
    shutil.copyfile(run_dir / "results.json", dest / "results.json")
    for name in HYDRA_RECORDS:
        if (run_dir / ".hydra" / name).is_file():
            (dest / ".hydra").mkdir(exist_ok=True)
            shutil.copyfile(run_dir / ".hydra" / name, dest / ".hydra" / name)
    with SummaryWriter(dest) as writer:
        for tag in events.Tags()["scalars"]:
            for event in events.Scalars(tag):
                writer.add_scalar(tag, event.value, event.step, walltime=event.wall_time)
    for old in earlier:
        old.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, metavar="ROOT", help="a sweep's directory, or any directory of runs")
    parser.add_argument("dest", type=Path, metavar="DEST", help="where the records go, e.g. docs/runs/pmnist")
    args = parser.parse_args()
    if not args.root.is_dir():
        parser.error(f"{args.root} is not a directory")
    dest = args.dest.resolve()
    if args.root.resolve().is_relative_to(dest):
        parser.error(f"DEST {args.dest} is ROOT or holds it: the records would be written among the runs they come from")
    if args.dest.exists() and not args.dest.is_dir():
        parser.error(f"DEST {args.dest} is not a directory")
    # DEST inside ROOT: the records of an earlier call are not runs, to archive again one level deeper.
    runs = load_runs(args.root, outside=dest, statuses=("finished", "diverged"))
    if not runs:
        parser.error(f"no finished or diverged runs (results.json) under {args.root}")
    for run in runs:  # checked before any is written
        checkpoints = sorted((args.dest / run["dir"].relative_to(args.root)).glob("*.pt"))
        if checkpoints:
            parser.error(f"{checkpoints[0]} is there: {checkpoints[0].parent} holds a run, whose records "
                         "archiving would replace; choose a DEST of records only")
    for run in runs:
        dest = args.dest / run["dir"].relative_to(args.root)
        try:
            archive(run["dir"], dest)
        except OSError as error:
            parser.error(f"cannot archive {run['dir']} into {dest}: {error}")
        size = sum(path.stat().st_size for path in dest.rglob("*") if path.is_file())
        print(f"{run['dir']} -> {dest} ({size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
