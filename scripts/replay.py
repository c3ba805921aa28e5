"""Replays a run's training steps from one of its checkpoints, one line a step, to see why it
diverged or what an optimizer option would have changed there:
``python scripts/replay.py RUN_DIR [--checkpoint last|best] [--steps 100] [--optim KEY=VALUE ...]
[--validate-every N] [--device DEVICE]``.

    python scripts/replay.py runs/pmnist/lstm-seed0 --steps 60                # the steps it diverged in
    python scripts/replay.py runs/pmnist/lstm-seed0 --steps 60 --optim momentum=0
    python scripts/replay.py runs/pmnist/lstm-seed0 --checkpoint best --steps 3000 --validate-every 500

The steps are the trainer's own, with the run's config (the checkpoint's, whatever conf/ says
now), batches, random state and carried state: without --optim they repeat the run's steps
exactly on the same machine and torch (``--device cpu`` takes a GPU run's steps on a CPU,
close to them). RUN_DIR is only read; the steps are taken in a temporary directory. ``--optim KEY=VALUE`` sets an option of the optimizer's parameter groups
from the checkpoint on (``momentum=0``: RMSprop leaves its momentum buffer unused;
``lr=1e-4``); the rest of the optimizer's state is the checkpoint's.

Each step prints its training loss, the gradient norm before clipping, the size of the step
taken (the norm of the change of all parameters), and the largest singular value of each
recurrent weight W_h: the recurrent gain that a plain LSTM's gradients explode with (BN-LSTM
normalizes W_h h, so its scale does not matter there). ``--validate-every N`` validates every
N steps as the trainer does, after the step's line. The replay stops at the first non-finite
loss or gradient norm, as the trainer does, and says so.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rbn.trainer import CHECKPOINT_KEYS, Diverged, Trainer  # noqa: E402
from scripts import arguments  # noqa: E402


def optimizer_option(text: str) -> tuple[str, float]:
    key, _, value = text.partition("=")
    try:
        return key, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=NUMBER") from None


def replay(trainer: Trainer, steps: int, validate_every: int | None) -> Iterator[dict[str, float]]:
    """The trainer's next ``steps`` training steps, each a row of the columns above. They are
    the trainer's own step, batches, epochs and validation (its private methods), not a copy of them."""
    parameters = list(trainer.model.parameters())
    recurrent = {name.rpartition(".")[2]: p for name, p in trainer.model.named_parameters() if "weight_hh" in name}
    last = trainer.progress.step + steps
    with trainer._start_training_log() as bar:
        while trainer.progress.step < last:
            for inputs, targets in trainer._remaining_batches():
                before = torch.cat([p.detach().flatten() for p in parameters])
                loss, grad_norm = trainer._train_step(inputs, targets, bar)
                after = torch.cat([p.detach().flatten() for p in parameters])
                row = {"step": trainer.progress.step, "loss": float(loss), "grad norm": float(grad_norm),
                       "step size": float((after - before).norm())}
                for name, weight in recurrent.items():
                    row[f"‖{name}‖₂"] = float(torch.linalg.matrix_norm(weight.detach().float(), 2))
                if validate_every and trainer.progress.step % validate_every == 0:
                    row.update({f"valid {name}": value for name, value in trainer._validate_timed().items()})
                yield row
                if trainer.progress.step == last:
                    return
            trainer._next_epoch()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--checkpoint", choices=["last", "best"], default="last")
    parser.add_argument("--steps", type=arguments.positive, default=100)
    parser.add_argument("--optim", type=optimizer_option, action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--validate-every", type=arguments.positive, metavar="N")
    parser.add_argument("--device", help="where to replay (default: the run's trainer.device)")
    args = parser.parse_args()
    if args.device is not None:
        arguments.device(parser, args.device)
    path = args.run_dir / f"{args.checkpoint}.pt"
    checkpoint = arguments.checkpoint(parser, path, CHECKPOINT_KEYS)
    with tempfile.TemporaryDirectory() as scratch:
        # best.pt as the run had it: the trainer checks it against last.pt.
        trainer = arguments.rebuilt_trainer(parser, path, checkpoint, Path(scratch), args.run_dir / "best.pt", args.device)
        with trainer.writer:  # closed before its directory goes
            unknown = set_options(trainer.optimizer, args.optim)
            if unknown:
                parser.error(f"--optim {unknown}")
            options = trainer.optimizer.param_groups[0]
            print(f"{path}: step {trainer.progress.step}, {type(trainer.optimizer).__name__} "
                  + ", ".join(f"{k}={v:g}" for k, v in options.items() if isinstance(v, float)))
            try:
                print_rows(replay(trainer, args.steps, args.validate_every))
            except Diverged as error:
                print(f"diverged: {error}")


def set_options(optimizer: torch.optim.Optimizer, options: list[tuple[str, float]]) -> str | None:
    """Sets each (key, value) in every parameter group; or says why not, for the first key
    that is not a numeric option of the optimizer, or for values torch refuses."""
    numeric = [key for key, value in optimizer.param_groups[0].items()
               if isinstance(value, (int, float)) and not isinstance(value, bool)]
    for key, _ in options:
        if key not in numeric:
            return f"{key}: {type(optimizer).__name__} has no numeric option {key!r}; it has {', '.join(numeric)}"
    try:  # torch checks the values where an optimizer is made, not where a group changes
        type(optimizer)([torch.zeros(1, requires_grad=True)], **dict(options))
    except ValueError as error:
        return f"{' '.join(f'{key}={value:g}' for key, value in options)}: {error}"
    for key, value in options:
        for group in optimizer.param_groups:
            group[key] = value
    return None


def print_rows(rows: Iterator[dict[str, float]]) -> None:
    """A table of the training columns; a row's validation metrics follow it on its line."""
    widths = None
    for row in rows:
        if widths is None:
            widths = {key: max(12, len(key)) for key in row if not key.startswith("valid")}
            print("  ".join(f"{key:>{width}}" for key, width in widths.items()))
        print("  ".join(f"{row[key]:>{width}.6g}" for key, width in widths.items())
              + "".join(f"  {key} {value:.6g}" for key, value in row.items() if key.startswith("valid")))


if __name__ == "__main__":
    main()
