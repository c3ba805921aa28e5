"""Tests a run as it stands, by the paper's procedure, without touching it:
``python scripts/evaluate.py RUN_DIR [--device DEVICE] [--json PATH]``.

    python scripts/evaluate.py runs/pmnist/bnlstm-seed0                 # while it trains on
    python scripts/evaluate.py runs/pmnist/bnlstm-seed0 --device cpu --json interim.json

Runs the trainer's final evaluation on the run's best.pt so far: for BN-LSTM, validation with
batch statistics (the metric that chose best.pt), then population statistics re-estimated over
the training set, and validation and test with them; for the other layers, validation and test.
The numbers are those results.json would hold if the run ended now, which the training log's
validation (batch statistics for BN-LSTM) does not show. RUN_DIR is only read: the evaluation
runs in a temporary directory, so a run still training is not disturbed. ``--json`` writes
what results.json would be (less the experiment and overrides that only Hydra knows), outside
RUN_DIR: a results.json there would mark the run finished.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rbn.trainer import CHECKPOINT_KEYS  # noqa: E402
from scripts import arguments  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--device", help="where to evaluate (default: the run's trainer.device)")
    parser.add_argument("--json", type=arguments.output_file, metavar="PATH", help="write the results here")
    args = parser.parse_args()
    if args.device is not None:
        arguments.device(parser, args.device)
    if args.json is not None and args.run_dir.resolve() in args.json.resolve().parents:
        parser.error(f"--json {args.json} is inside {args.run_dir}, which this script only reads")
    best, last = args.run_dir / "best.pt", args.run_dir / "last.pt"
    if not best.is_file() and last.is_file():
        parser.error(f"{best} does not exist: {args.run_dir} has not validated yet")
    checkpoint = arguments.checkpoint(parser, best, CHECKPOINT_KEYS)
    # Read before the evaluation, which an unreadable last.pt would otherwise throw away.
    trained = arguments.checkpoint(parser, last, {"progress"})["progress"]["step"] if last.is_file() else None
    with tempfile.TemporaryDirectory() as scratch:
        trainer = arguments.rebuilt_trainer(parser, best, checkpoint, Path(scratch), best, args.device)
        with trainer.writer:  # closed before its directory goes
            results = trainer.final_evaluation()
    trained = results["step"] if trained is None else trained
    print(f"{args.run_dir}: best.pt of step {results['step']} (trained to step {trained}), the paper's test procedure\n")
    rows = {"valid": results["valid"], "test": results["test"]}
    if trainer.has_batch_norm():
        rows = {"valid, batch statistics": results["valid_batch_statistics"], "valid, population statistics":
                results["valid"], "test, population statistics": results["test"]}
    for split, metrics in rows.items():
        print(f"{split}: " + " ".join(f"{name} {value:.4f}" for name, value in metrics.items()))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
