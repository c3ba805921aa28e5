"""BN-LSTM's population statistics against time, the paper's figure of their convergence
(Cooijmans et al. 2016, Penn Treebank): ``python scripts/population_statistics.py RUN_DIR
[--units 30] [--layer 0] [--out DIR]``.

Reads a BN-LSTM run's ``final.pt``: the population statistics its final evaluation estimated
over the training set, one row per timestep up to ``max_length``. Plots, for a random subset
of units, the mean and the variance of the recurrent term W_h h_{t-1} and of the cell state
c_t against the timestep, as the paper does. They move away from the initial state's and
settle; timesteps beyond ``max_length`` reuse the last row, which is sound where they have.

How far each timestep is from the last, per unit: a mean in the last timestep's standard
deviations, |mean_t - mean_last| / sqrt(var_last), and a variance as a ratio,
|var_t / var_last - 1|. The table gives the 90th percentile of that over the units at a few
timesteps, and the first timestep from which it stays below ``--tolerance``.

Writes ``population_statistics.md`` (the table, also printed) and ``population_statistics.png``
to ``--out`` (default: the current directory).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rbn.trainer import RunError, read_final  # noqa: E402
from scripts import arguments  # noqa: E402

# The paper's panels: (normalization, what it normalizes).
TERMS = {"bn_h": "recurrent term W_h h", "bn_c": "cell state c"}
PERCENTILE = 0.9


def load_statistics(run_dir: Path, layer: int) -> tuple[dict[str, dict[str, Tensor]], int]:
    """{term: {"mean": (T, C), "var": (T, C)}} of one layer (its forward direction), and its
    max_length; a one-line RunError for a run that has none."""
    final = read_final(run_dir)
    model = final["config"]["model"]
    if model["name"] != "bnlstm":
        raise RunError(f"{run_dir} holds a {model['name']} model, which has no batch normalization")
    if not 0 <= layer < model["num_layers"]:
        raise RunError(f"--layer {layer}: {run_dir}'s model has layers 0 to {model['num_layers'] - 1}")
    state = final["model"]
    statistics = {
        term: {stat: state[f"recurrent.{term}_l{layer}.running_{stat}"].double() for stat in ("mean", "var")}
        for term in TERMS
    }
    return statistics, len(statistics["bn_h"]["mean"])


def distance_from_last(mean: Tensor, var: Tensor) -> dict[str, Tensor]:
    """Per timestep and unit, (T, C): how far the mean is from the last timestep's, in its
    standard deviations, and the variance's ratio to the last one's, less 1."""
    last_var = var[-1].clamp(min=torch.finfo(var.dtype).tiny)  # a unit constant at the last step
    return {
        "mean": (mean - mean[-1]).abs() / last_var.sqrt(),
        "var": (var / last_var - 1).abs(),
    }


def settled_from(distance: Tensor, tolerance: float) -> int:
    """The first timestep from which the PERCENTILE of ``distance`` over units stays at or
    below ``tolerance``; the last timestep always is."""
    above = (distance.quantile(PERCENTILE, dim=1) > tolerance).nonzero()
    return int(above[-1]) + 1 if len(above) else 0


def table(run_dir: Path, statistics: dict, max_length: int, tolerance: float) -> str:
    shown = sorted({t for t in (0, 1, 2, 5, 10, 20, 50, 100, 200, 500) if t < max_length} | {max_length - 1})
    lines = [
        f"# Population statistics of {run_dir} against time",
        "",
        f"{PERCENTILE * 100:.0f}th percentile over units of the distance from the last timestep ({max_length - 1}): "
        "means in its standard deviations, variances as a ratio less 1.",
        "",
        f"| statistic | {' | '.join(f't={t}' for t in shown)} | below {tolerance:g} from t |",
        f"|---|{'---:|' * len(shown)}---:|",
    ]
    for term, name in TERMS.items():
        for stat, distance in distance_from_last(**statistics[term]).items():
            percentile = distance.quantile(PERCENTILE, dim=1)
            cells = " | ".join(f"{float(percentile[t]):.3f}" for t in shown)
            lines.append(f"| {stat} of {name} | {cells} | {settled_from(distance, tolerance)} |")
    return "\n".join(lines) + "\n"


def plot(run_dir: Path, statistics: dict, units: int, path: Path) -> None:
    """The paper's four panels: mean and variance of each term, one line per unit shown."""
    channels = {term: len(statistics[term]["mean"][0]) for term in TERMS}
    generator = torch.Generator().manual_seed(0)
    figure, axes = plt.subplots(2, 2, figsize=(10, 6), sharex=True)
    for column, (term, name) in enumerate(TERMS.items()):
        subset = torch.randperm(channels[term], generator=generator)[:units]
        for row, stat in enumerate(("mean", "var")):
            axes[row, column].plot(statistics[term][stat][:, subset].numpy(), linewidth=0.8)
            axes[row, column].set_title(f"{'mean' if stat == 'mean' else 'variance'} of {name}")
            axes[row, column].grid(alpha=0.3)
        axes[1, column].set_xlabel("timestep")
    figure.suptitle(f"Population statistics of {run_dir.name}, {min(units, min(channels.values()))} units per panel")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a finished BN-LSTM run")
    parser.add_argument("--units", type=arguments.positive, default=30, help="units drawn per panel")
    parser.add_argument("--layer", type=int, default=0, help="which layer's statistics")
    parser.add_argument("--tolerance", type=float, default=0.1, help="distance from the last timestep taken as settled")
    parser.add_argument("--out", type=Path, default=Path("."), help="where to write the table and the figure")
    args = parser.parse_args()
    if not args.tolerance > 0:
        parser.error(f"--tolerance must be positive, got {args.tolerance}")
    try:
        statistics, max_length = load_statistics(args.run_dir, args.layer)
    except RunError as error:
        parser.error(str(error))
    arguments.output_directory(parser, args.out)
    report = table(args.run_dir, statistics, max_length, args.tolerance)
    (args.out / "population_statistics.md").write_text(report)
    plot(args.run_dir, statistics, args.units, args.out / "population_statistics.png")
    print(report)
    print(f"wrote {args.out / 'population_statistics.md'} and {args.out / 'population_statistics.png'}")


if __name__ == "__main__":
    main()
