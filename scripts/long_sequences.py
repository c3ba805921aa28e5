"""Test bits per character against sequence length, the paper's figure of generalization to
longer sequences (Cooijmans et al. 2016, Penn Treebank):
``python scripts/long_sequences.py RUN_DIR [RUN_DIR ...] [--lengths 100 200 500 1000]``.

Loads each character model's ``final.pt`` (the model as tested: ``best.pt``'s parameters with
the population statistics, and the run's config) and reads the test split as the trainer's
evaluation cuts it (``batch_size`` contiguous streams that cover it, the last one padded) but
L characters at a time, for each length L. Each sequence starts from a zero state, as in the
paper; with ``--carry-state`` the state is carried along each stream as the trainer's
evaluation does, so that at the training length the bpc is the run's own test bpc: for a run
trained on streams (``data.segments=streams``) only the normalization's timestep restarts
with each sequence; one trained on independent segments is evaluated on each stream read as
one sequence, and then has that bpc at every length.

BN-LSTM is evaluated twice: with its population statistics, where timesteps beyond
``max_length`` (the training length) reuse the last timestep's, and with each batch's own
statistics. LSTM and LN-LSTM have one row each.

Writes ``long_sequences.md`` (the table, also printed) and ``long_sequences.png`` (bpc against
length, one line per run and statistics) to ``--out`` (default: the current directory).
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data  # noqa: E402
from rbn.config import ConfigError, Precision  # noqa: E402
from rbn.norm import SequenceBatchNorm  # noqa: E402
from rbn.trainer import (  # noqa: E402
    Metrics,
    RunError,
    build_dataset,
    build_model,
    load_parameters,
    read_final,
    using_batch_statistics,
)
from scripts import arguments  # noqa: E402

STATISTICS = ("population", "batch")


class UnreadableRun(Exception):
    """A run directory this script cannot evaluate; the message is one line."""


def load_run(run_dir: Path, longest: int, device: torch.device) -> tuple[Path, DictConfig, data.CharCorpus, torch.nn.Module]:
    """The run's config, its corpus (cut at the training length) and its model with final.pt's
    parameters, built now so that a run that cannot be evaluated is refused before any is measured."""
    final = read_final(run_dir)
    cfg = OmegaConf.create(final["config"])
    arguments.computed_here(cfg, device)
    try:
        corpus = build_dataset(cfg)
    except data.DataError as error:
        raise UnreadableRun(f"the {cfg.data.name} data of {run_dir} are not available: {error}") from None
    if corpus.task != "language_model":
        raise UnreadableRun(f"{run_dir} is a {cfg.data.name} run; this script reads character-level language models")
    batch_size = cfg.trainer.batch_size
    stream = math.ceil((len(corpus.splits["test"]) - 1) / batch_size)  # as CharCorpus.batches cuts it
    if longest > stream:
        raise UnreadableRun(
            f"--lengths {longest} is longer than the test streams of {run_dir} ({stream} characters at batch size {batch_size})"
        )
    model = build_model(cfg, corpus)
    load_parameters(model, final, run_dir / "final.pt")
    return run_dir, cfg, corpus, model


@torch.no_grad()
def bpc_on_test_split(
    model: torch.nn.Module, corpus: data.CharCorpus, length: int, batch_size: int, carry_state: bool,
    limit_batches: int | None, device: torch.device,
) -> float:
    """Bits per character on the test split read ``length`` characters at a time (the
    trainer's evaluation batches with another segment length), each sequence from a zero
    state unless ``carry_state``, which reads the streams as the trainer's evaluation does."""
    sequences = data.CharCorpus(corpus.vocab, corpus.splits, length)
    continues_time = carry_state and corpus.evaluation_continues_time
    metrics = Metrics("language_model")
    state, first_step = None, 0
    for inputs, targets in itertools.islice(sequences.batches("test", batch_size), limit_batches):
        inputs, targets = inputs.to(device), targets.to(device)
        logits, loss, state = model(inputs, targets, state if carry_state else None, data.padded_lengths(targets), first_step)
        metrics.add(logits, targets, loss)
        if continues_time:
            first_step += inputs.shape[1]
    return metrics.summary()["bpc"]


def measure(
    run_dir: Path, cfg: DictConfig, corpus: data.CharCorpus, model: torch.nn.Module, lengths: list[int],
    carry_state: bool, limit_batches: int | None, device: torch.device,
) -> list[dict]:
    """One row per way of normalizing the run's model: its bpc at each length."""
    model.to(device).eval()
    norms = [m for m in model.modules() if isinstance(m, SequenceBatchNorm)]
    bf16 = cfg.trainer.precision == Precision.bf16.value
    rows = []
    for statistics in STATISTICS if norms else (None,):
        batch_norms = norms if statistics == "batch" else []
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16), using_batch_statistics(batch_norms):
            bpc = {
                length: bpc_on_test_split(model, corpus, length, cfg.trainer.batch_size, carry_state, limit_batches, device)
                for length in lengths
            }
        rows.append({
            "run": run_dir.name, "model": cfg.model.name, "statistics": statistics,
            "trained_on": corpus.segment_length, "bpc": bpc,
        })
    return rows


def table(rows: list[dict], lengths: list[int], carry_state: bool, limit_batches: int | None) -> str:
    start = "the state carried along each stream" if carry_state else "each sequence from a zero state"
    scope = f"the first {limit_batches} batches at each length" if limit_batches else "the whole test split"
    lines = [
        "# Test bits per character against sequence length",
        "",
        f"{scope[0].upper()}{scope[1:]}, {start}.",
        "",
        f"| run | model | statistics | trained on | {' | '.join(map(str, lengths))} |",
        f"|---|---|---|---:|{'---:|' * len(lengths)}",
    ]
    for row in rows:
        cells = " | ".join(f"{row['bpc'][length]:.4f}" for length in lengths)
        lines.append(f"| {row['run']} | {row['model']} | {row['statistics'] or '-'} | {row['trained_on']} | {cells} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], lengths: list[int], carry_state: bool, path: Path) -> None:
    figure, axes = plt.subplots(figsize=(7, 4.5))
    colors = {run: f"C{i}" for i, run in enumerate(dict.fromkeys(row["run"] for row in rows))}  # a run's two rows share one
    for row in rows:
        label = row["run"] if row["statistics"] is None else f"{row['run']}, {row['statistics']} statistics"
        style = "--" if row["statistics"] == "batch" else "-"
        axes.plot(lengths, [row["bpc"][length] for length in lengths], style, color=colors[row["run"]], marker="o", label=label)
    for trained_on in sorted({row["trained_on"] for row in rows}):
        axes.axvline(trained_on, color="grey", linestyle=":", linewidth=1)
    start = "state carried" if carry_state else "zero state at each sequence"
    axes.set(title=f"Test bpc against sequence length ({start})", xlabel="sequence length (dotted: training length)",
             ylabel="bits per character", xscale="log")
    axes.set_xticks(lengths, [str(length) for length in lengths])
    axes.minorticks_off()
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="runs of a character model")
    parser.add_argument("--lengths", type=arguments.positive, nargs="+", default=[100, 200, 500, 1000], help="test sequence lengths")
    parser.add_argument(
        "--carry-state", action="store_true", help="carry the state along each stream, as the trainer's evaluation does"
    )
    parser.add_argument(
        "--limit-batches", type=arguments.positive, default=None, help="evaluate only the first N batches of each length, for quick runs"
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    parser.add_argument("--out", type=Path, default=Path("."), help="where to write the table and the figure")
    args = parser.parse_args()
    arguments.distinct_names(parser, args.run_dirs, "the RUN_DIRs' names label their rows and lines")
    lengths = sorted(set(args.lengths))
    device = arguments.device(parser, args.device)
    try:
        runs = [load_run(run_dir, lengths[-1], device) for run_dir in args.run_dirs]
    except (ConfigError, RunError, UnreadableRun) as error:
        parser.error(str(error))
    arguments.output_directory(parser, args.out)
    rows = [row for run in runs for row in measure(*run, lengths, args.carry_state, args.limit_batches, device)]
    report = table(rows, lengths, args.carry_state, args.limit_batches)
    (args.out / "long_sequences.md").write_text(report)
    plot(rows, lengths, args.carry_state, args.out / "long_sequences.png")
    print(report)
    print(f"wrote {args.out / 'long_sequences.md'} and {args.out / 'long_sequences.png'}")


if __name__ == "__main__":
    main()
