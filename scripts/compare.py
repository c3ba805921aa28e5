"""Compares the runs of a sweep: ``python scripts/compare.py ROOT [--out DIR]``.

Reads every ``results.json`` under ROOT (one per run, as train.py writes them) and each run's
TensorBoard events. Runs that differ only in their seed form a group. Writes to DIR (default
ROOT):

- ``compare.md``: per dataset, one row per group: test and validation metrics as mean ± std
  over its seeds (population statistics; validation with batch statistics too);
- ``curves_<data>.png``: the validation metric against training steps, mean over seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

METRICS = {"accuracy": "accuracy", "bpc": "bits per character"}
# Overrides that choose what a row is (data, model) or repeat it (seed) are not part of its label.
NOT_IN_LABEL = ("seed=", "model=", "data=", "experiment=")


def load_runs(root: Path) -> list[dict]:
    runs = []
    for path in sorted(root.rglob("results.json")):
        results = json.loads(path.read_text())
        if results.get("status") == "finished":
            runs.append({**results, "dir": path.parent})
        else:
            print(f"skipped {path.parent}: {results.get('status')}", file=sys.stderr)
    return runs


def group_runs(runs: list[dict]) -> dict[str, dict[str, list[dict]]]:
    """{data: {label: runs}}: the label is the model and the overrides that vary between the
    dataset's runs, other than the seed."""
    by_data: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        by_data[run["run"]["data"]].append(run)
    groups: dict[str, dict[str, list[dict]]] = {}
    for data, data_runs in by_data.items():
        overrides = [[o for o in run["run"]["overrides"] if not o.startswith(NOT_IN_LABEL)] for run in data_runs]
        common = set.intersection(*(set(o) for o in overrides))
        groups[data] = defaultdict(list)
        for run, own in zip(data_runs, overrides):
            label = " ".join([run["run"]["model"], *(o for o in own if o not in common)])
            groups[data][label].append(run)
    return groups


def metric_of(run: dict) -> str:
    return "accuracy" if "accuracy" in run["test"] else "bpc"


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def table(data: str, groups: dict[str, list[dict]]) -> str:
    metric = metric_of(next(iter(groups.values()))[0])
    lines = [
        f"## {data}",
        "",
        f"| model | seeds | test {metric} | valid {metric} | valid {metric}, batch statistics | steps |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, runs in sorted(groups.items()):
        cells = [mean_std([run[key][metric] for run in runs]) for key in ("test", "valid", "valid_batch_statistics")]
        steps = sorted({run["step"] for run in runs})
        lines.append(f"| {label} | {len(runs)} | {' | '.join(cells)} | {', '.join(map(str, steps))} |")
    return "\n".join(lines) + "\n"


def validation_curve(run_dir: Path, metric: str) -> dict[int, float]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    if f"valid/{metric}" not in events.Tags()["scalars"]:
        return {}
    return {event.step: event.value for event in events.Scalars(f"valid/{metric}")}


def plot(data: str, groups: dict[str, list[dict]], path: Path) -> None:
    metric = metric_of(next(iter(groups.values()))[0])
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for label, runs in sorted(groups.items()):
        curves = [validation_curve(run["dir"], metric) for run in runs]
        steps = sorted(set.intersection(*(set(curve) for curve in curves)))
        if steps:
            axes.plot(steps, [statistics.mean(curve[s] for curve in curves) for s in steps], marker=".", label=f"{label} ({len(runs)})")
    axes.set(title=f"{data}: validation", xlabel="step", ylabel=METRICS[metric])
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="a sweep's directory, or any directory of runs")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: ROOT)")
    args = parser.parse_args()
    if not args.root.is_dir():
        parser.error(f"{args.root} is not a directory")
    runs = load_runs(args.root)
    if not runs:
        parser.error(f"no finished runs (results.json) under {args.root}")
    out = args.out or args.root
    out.mkdir(parents=True, exist_ok=True)
    groups = group_runs(runs)
    report = "\n".join(table(data, groups[data]) for data in sorted(groups))
    (out / "compare.md").write_text(f"# Runs under {args.root}\n\n{report}")
    for data in sorted(groups):
        plot(data, groups[data], out / f"curves_{data}.png")
    print(report)
    print(f"wrote {out / 'compare.md'} and {len(groups)} curve file(s)")


if __name__ == "__main__":
    main()
