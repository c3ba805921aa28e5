"""The trainer's speed on a preset, per way of running the layer, and what a whole run of the
preset would take at that speed.

Each variant trains in a temporary directory for 2 x --steps steps, logging every --steps:
the first interval absorbs CUDA-graph capture and kernel compilation, the second is the
measurement (the trainer's own train/steps_per_second). Validation is timed on --eval-batches
batches and scaled to the split. The estimate is training plus one validation per epoch, the
preset's schedule; the final evaluation is left out.

    python scripts/train_speed.py experiment=seqmnist model=bnlstm
    python scripts/train_speed.py experiment=ptb_char model=bnlstm data=shakespeare   # PTB's model on text at hand
    python scripts/train_speed.py --variants eager,kernels experiment=pmnist model=lnlstm
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

from rbn.trainer import Trainer, epoch_length  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf"
VARIANTS = {  # name: overrides
    "eager": ["model.backend=eager", "trainer.cuda_graphs=false"],
    "graphs": ["model.backend=eager", "trainer.cuda_graphs=true"],
    "kernels": ["model.backend=triton", "trainer.cuda_graphs=false"],
    "kernels+graphs": ["model.backend=triton", "trainer.cuda_graphs=true"],
}


def variants(spec: str) -> list[str]:
    """Comma-separated variants: a list would swallow the Hydra overrides that follow it."""
    names = spec.split(",")
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown variant {', '.join(map(repr, unknown))}: choose from {', '.join(VARIANTS)}")
    return names


def measure(overrides: list[str], steps: int, eval_batches: int) -> dict:
    """Steps per second of the second interval, seconds per validation batch (the second of
    two validations), and the preset's epochs and batches per epoch."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[
            *overrides, f"trainer.max_steps={2 * steps}", f"trainer.log_interval={steps}",
            f"trainer.eval_interval={10 * steps}", f"trainer.limit_eval_batches={eval_batches}",
            "trainer.progress_bar=false", "trainer.sample_length=0",
        ])
    with tempfile.TemporaryDirectory(prefix="rbn-train-speed-") as run_dir:
        trainer = Trainer(cfg, run_dir)
        trainer.fit()
        trainer.writer.close()
        events = EventAccumulator(run_dir)
        events.Reload()
        steps_per_second = events.Scalars("train/steps_per_second")[-1].value
        for _ in range(2):
            started = time.perf_counter()
            trainer.evaluate("valid", batch_statistics=trainer.has_batch_norm())
            eval_seconds = time.perf_counter() - started
        batch_size = cfg.trainer.batch_size
        return dict(
            steps_per_second=steps_per_second, eval_seconds_per_batch=eval_seconds / eval_batches,
            epochs=cfg.trainer.max_epochs, epoch_length=epoch_length(trainer.dataset, batch_size),
            valid_batches=sum(1 for _ in trainer.dataset.batches("valid", batch_size)),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as train.py takes them")
    parser.add_argument("--variants", type=variants, default=list(VARIANTS),
                        help=f"comma-separated, of {', '.join(VARIANTS)} (default: all)")
    parser.add_argument("--steps", type=int, default=50, help="steps per interval (two intervals per variant)")
    parser.add_argument("--eval-batches", type=int, default=5)
    parser.add_argument("--json", type=Path, default=Path("train_speed.json"))
    args = parser.parse_args()
    if not torch.cuda.is_available() and any("graphs" in variant for variant in args.variants):
        parser.error("the CUDA-graph variants need a CUDA device: choose --variants eager,kernels")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}; "
          f"{' '.join(args.overrides) or 'the default preset'}")
    print(f"| {'variant':<15} | {'steps/s':>8} | {'valid s/epoch':>13} | {'whole run h':>11} |")
    print(f"|{'-' * 17}|{'-' * 10}|{'-' * 15}|{'-' * 13}|")
    rows = []
    for variant in args.variants:
        row = measure([*args.overrides, *VARIANTS[variant]], args.steps, args.eval_batches)
        valid_seconds = row["eval_seconds_per_batch"] * row["valid_batches"]
        hours = row["epochs"] * (row["epoch_length"] / row["steps_per_second"] + valid_seconds) / 3600
        rows.append(dict(variant=variant, whole_run_hours=hours, **row))
        print(f"| {variant:<15} | {row['steps_per_second']:>8.2f} | {valid_seconds:>13.1f} | {hours:>11.2f} |")
    args.json.write_text(json.dumps(dict(overrides=args.overrides, rows=rows), indent=2))
    print(f"\nwhole run: {rows[0]['epochs']} epochs of {rows[0]['epoch_length']} steps and {rows[0]['valid_batches']} "
          f"validation batches, at the measured speeds; wrote {args.json}")


if __name__ == "__main__":
    main()
