"""The trainer's speed on a preset, per way of running the layer, and what a whole run of the
preset would take at that speed.

Each variant trains in a temporary directory for 2 x --steps steps, logging every --steps:
the first interval absorbs CUDA-graph capture and kernel compilation, the second is the
measurement (the trainer's own train/steps_per_second). Validation is timed on --eval-batches
batches and scaled to the split. The estimate follows the run's own schedule, the preset's with
the overrides given: min(max_steps, max_epochs x batches per epoch) steps, and a validation
every eval_interval steps (or at each epoch's end) and at the last step; the final evaluation
is left out. A variant the trainer would refuse is refused before anything is timed, and the
JSON is rewritten after each variant, so a variant that fails loses none measured before it.

    python scripts/train_speed.py experiment=seqmnist model=bnlstm
    python scripts/train_speed.py experiment=ptb_char model=bnlstm data=shakespeare   # PTB's model on text at hand
    python scripts/train_speed.py --variants eager,kernels experiment=pmnist model=lnlstm

Without --variants it times the ways of running the layer that make sense on the machine: on a
GPU the eager loop, CUDA graphs, the kernels and both; on CPUs the eager loop and the compiled
step.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.errors import HydraException  # noqa: E402

from data import DataError  # noqa: E402
from rbn.config import ConfigError, check  # noqa: E402
from rbn.trainer import Diverged, RunError, Trainer, build_dataset, epoch_length, schedule, validations  # noqa: E402
from scripts import arguments  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf"
VARIANTS = {  # name: overrides
    "eager": ["model.backend=eager", "trainer.cuda_graphs=false"],
    "graphs": ["model.backend=eager", "trainer.cuda_graphs=true"],
    "kernels": ["model.backend=triton", "trainer.cuda_graphs=false"],
    "kernels+graphs": ["model.backend=triton", "trainer.cuda_graphs=true"],
    "compiled": ["model.backend=eager", "model.compile=true", "trainer.cuda_graphs=false"],
}


def default_variants() -> list[str]:
    return ["eager", "graphs", "kernels", "kernels+graphs"] if torch.cuda.is_available() else ["eager", "compiled"]


def variants(spec: str) -> list[str]:
    """Comma-separated variants: a list would swallow the Hydra overrides that follow it."""
    names = spec.split(",")
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown variant {', '.join(map(repr, unknown))}: choose from {', '.join(VARIANTS)}")
    return names


def compose_config(overrides: list[str]):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides)


def timed_config(overrides: list[str], steps: int, eval_batches: int):
    """The config a variant is timed with: the run's, cut to two logged intervals and a short
    validation, with epochs enough for them however short the run's epochs and few its epochs."""
    return compose_config([
        *overrides, f"trainer.max_steps={2 * steps}", f"trainer.max_epochs={2 * steps}", f"trainer.log_interval={steps}",
        f"trainer.eval_interval={10 * steps}", f"trainer.limit_eval_batches={eval_batches}",
        "trainer.progress_bar=false", "trainer.sample_length=0",
    ])


def measure(cfg, eval_batches: int) -> dict:
    """Steps per second of the second interval, seconds per validation batch (the second of
    two validations), and the batches per epoch of training and of validation."""
    with tempfile.TemporaryDirectory(prefix="rbn-train-speed-") as run_dir:
        trainer = Trainer(cfg, run_dir)
        trainer.fit()
        trainer.writer.close()
        events = EventAccumulator(run_dir)
        events.Reload()
        speeds = {event.step: event.value for event in events.Scalars("train/steps_per_second")}
        steps_per_second = speeds[cfg.trainer.max_steps]  # the second interval: after compiling and capturing
        for _ in range(2):
            started = time.perf_counter()
            trainer.evaluate("valid", batch_statistics=trainer.has_batch_norm())
            eval_seconds = time.perf_counter() - started
        batch_size = cfg.trainer.batch_size
        return dict(
            steps_per_second=steps_per_second, eval_seconds_per_batch=eval_seconds / eval_batches,
            epoch_length=epoch_length(trainer.dataset, batch_size),
            valid_batches=sum(1 for _ in trainer.dataset.batches("valid", batch_size)),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as train.py takes them")
    default = ",".join(default_variants())
    parser.add_argument("--variants", type=variants, default=default,
                        help=f"comma-separated, of {', '.join(VARIANTS)} (default: {default})")
    parser.add_argument("--steps", type=arguments.positive, default=50, help="steps per interval (two intervals per variant)")
    parser.add_argument("--eval-batches", type=arguments.positive, default=5)
    parser.add_argument("--json", type=arguments.output_file, default="train_speed.json")
    args = parser.parse_args()
    if not torch.cuda.is_available() and any("graphs" in variant for variant in args.variants):
        parser.error(f"the CUDA-graph variants need a CUDA device: choose --variants {default}")
    try:
        run = compose_config(args.overrides)  # the schedule to estimate, without the timing's
        check(run)
        build_dataset(run)  # here, not in the first variant's trainer
    except HydraException as error:  # an override Hydra cannot parse or apply
        parser.error(" ".join(f"{error}: {error.__cause__ or ''}".split()).rstrip(":"))
    except (ConfigError, DataError) as error:
        parser.error(str(error))
    # Every variant's config is checked before any is timed. One the trainer refuses (the
    # kernels of model=lstm, which has none) is a one-line error naming those that can run, the
    # default's too, as the CUDA-graph variants are without CUDA: skipped, it would leave a
    # table that passes for every way of running the layer; found later, minutes of timing.
    configs, refused = {}, {}
    for variant in args.variants:
        configs[variant] = timed_config([*args.overrides, *VARIANTS[variant]], args.steps, args.eval_batches)
        try:
            with tempfile.TemporaryDirectory(prefix="rbn-train-speed-") as scratch:
                Trainer(configs[variant], scratch)  # its checks before training: the batch, the kernels
        except (ConfigError, RunError) as error:
            refused[variant] = error
    if refused:
        runnable = [variant for variant in args.variants if variant not in refused]
        parser.error("; ".join(f"variant {variant}: {error}" for variant, error in refused.items())
                     + (f": choose --variants {','.join(runnable)}" if runnable else ""))
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}; "
          f"{' '.join(args.overrides) or 'the default preset'}")
    print(f"| {'variant':<15} | {'steps/s':>8} | {'s/validation':>12} | {'whole run h':>11} |")
    print(f"|{'-' * 17}|{'-' * 10}|{'-' * 14}|{'-' * 13}|")
    rows = []
    for variant in args.variants:
        try:
            row = measure(configs[variant], args.eval_batches)
        except Diverged as error:
            measured = f"; the variants before it are in {args.json}" if rows else ""
            parser.error(f"variant {variant}: {error}{measured}")
        steps, every = schedule(run.trainer, row["epoch_length"])
        row.update(steps=steps, validations=validations(1, steps, every))
        valid_seconds = row["eval_seconds_per_batch"] * row["valid_batches"]
        hours = (row["steps"] / row["steps_per_second"] + row["validations"] * valid_seconds) / 3600
        rows.append(dict(variant=variant, whole_run_hours=hours, **row))
        args.json.write_text(json.dumps(dict(overrides=args.overrides, rows=rows), indent=2))
        print(f"| {variant:<15} | {row['steps_per_second']:>8.2f} | {valid_seconds:>12.1f} | {hours:>11.2f} |")
    print(f"\nwhole run: {rows[0]['steps']} steps ({run.trainer.max_epochs} epochs of {rows[0]['epoch_length']} at most) "
          f"and {rows[0]['validations']} validations of {rows[0]['valid_batches']} batches, at the measured speeds; "
          f"wrote {args.json}")


if __name__ == "__main__":
    main()
