"""Compares the runs of sweeps: ``python scripts/compare.py ROOT [ROOT ...] [--out DIR]``.

Reads every ``results.json`` under each ROOT (one per run, as train.py writes them; a run's
records archived inside ROOT by archive_runs.py count once) and each run's TensorBoard events. Within a ROOT, runs of one experiment that differ only in their seed
form a group: overrides that do not change what is computed (the keys that conf/config.yaml
leaves out of run names, such as ``trainer.device``) do not split it, unless a sweep over one
named its runs by it. With several ROOTs, each group's label starts with its ROOT's name.
Writes to DIR (default: the one ROOT; required with several):

- ``compare.md``: per dataset, one row per group: test and validation metrics as mean ± std
  over its seeds (population statistics; validation with batch statistics too), the paper's
  test number for the model, the mean time in training steps and in all (``train_seconds``,
  ``wall_seconds``) and the devices the runs trained on;
  then the runs not finished (stopped, still training elsewhere, or diverged), from their
  ``last.pt``: the epoch and step reached, the best validation so far, the time so far, and
  the training steps per second lately (the median of the last RECENT_SPEEDS logged, which a
  load spike on a shared machine does not swing) with the time the steps still to go would
  take at it; below them, if a BN-LSTM is among them, a line saying that its validation there
  uses batch statistics (``scripts/evaluate.py`` gives its test procedure's); and
  the diverged runs of which only records are left (archive_runs.py's), from results.json;
- ``curves_<data>.png``: the charts of every run's TensorBoard layout ("compare runs":
  training and validation metric, loss, gradient norm, steps per second) against training
  steps, one line per group, the mean over its seeds; and a dashed line for each run not
  finished, up to where it stands. The gradient norm is on a log scale.

    python scripts/compare.py results/shakespeare
    python scripts/compare.py results/lr1e-3 results/lr2e-3 --out results/lr
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rbn.trainer import CHECKPOINT_KEYS, RunError, comparison_charts, read_checkpoint, read_results  # noqa: E402
from scripts import arguments  # noqa: E402

# A run resumed after a hard kill writes a new event file from its checkpoint's step on (the
# trainer's purge_step), and TensorBoard drops the old file's later steps, as intended, with a
# warning blaming "a TensorFlow restart" for each such run: noise for compare.py's reader.
logging.getLogger("tensorboard").setLevel(logging.ERROR)

METRICS = {"accuracy": "accuracy", "bpc": "bits per character"}
# Cooijmans et al. 2016, test accuracy (Table 1) and bits per character (Tables 2 and 3).
PAPER = {
    ("seqmnist", "lstm"): 0.989, ("seqmnist", "bnlstm"): 0.990, ("pmnist", "lstm"): 0.902, ("pmnist", "bnlstm"): 0.954,
    ("ptb_char", "lstm"): 1.38, ("ptb_char", "bnlstm"): 1.32, ("text8", "lstm"): 1.43, ("text8", "bnlstm"): 1.36,
}
# What a row reads of results.json's "run" (what rbn.trainer's Trainer._describe writes), and its types.
RUN_DESCRIPTION = {"experiment": (str, type(None)), "model": str, "data": str, "seed": int, "overrides": list}
# Overrides that choose what a row is (data, experiment, model) or repeat it (seed) are not part
# of its label; the experiment is, from results.json, where a dataset's runs come from several.
NOT_IN_LABEL = {"seed", "model", "data", "experiment"}
# A run not finished goes on at the median of its last 10 logged speeds: on a shared machine one
# interval can run at a third of the others' speed.
RECENT_SPEEDS = 10
# Under the table of runs not finished that has a BN-LSTM: its validation there is not its test's.
BATCH_STATISTICS_NOTE = (
    "A BN-LSTM's best validation here is training's, with batch statistics, which chose its best.pt; its final "
    "evaluation normalizes with population statistics and can read higher: `python scripts/evaluate.py RUN_DIR` "
    "gives it for the run as it stands."
)
# The keys that do not change what is computed, which runs are not named by: train.py's NAMING.
UNNAMED = set(OmegaConf.select(OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "config.yaml"),
                               "hydra.job.config.override_dirname.exclude_keys"))


def results_or_none(path: Path) -> dict | None:
    """A run's results.json, or None (said on stderr) when it cannot be read as one."""
    try:
        return read_results(path)
    except RunError as error:
        print(f"skipped: {error}", file=sys.stderr)
        return None


def what_the_table_lacks(results: dict) -> str | None:
    """What a finished run's results lack of what its row reads, or None."""
    run = results.get("run")
    if not (isinstance(run, dict) and all(isinstance(run.get(key), kind) for key, kind in RUN_DESCRIPTION.items())):
        return f"its run description ({', '.join(RUN_DESCRIPTION)})"
    metric = metric_of(results) if isinstance(results.get("test"), dict) else "bpc"
    for split in ("test", "valid", "valid_batch_statistics"):
        metrics = results.get(split)
        if not (isinstance(metrics, dict) and _is_number(metrics.get(metric))):
            return f"a number for its {split} {metric}"
    times = [results.get(key, 0) for key in ("train_seconds", "wall_seconds")]  # older runs lack them
    if not all(map(_is_number, [results.get("step"), *times])):
        return "numbers for its step and times"
    devices = results.get("devices", [])
    if not (isinstance(devices, list) and all(isinstance(device, str) for device in devices)):
        return "a list of the devices it ran on"
    return None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_runs(root: Path, outside: Path | None = None, statuses: tuple[str, ...] = ("finished",)) -> list[dict]:
    """The runs under ``root`` whose results have one of ``statuses``, but not under
    ``outside``. A run met more than once (its records archived inside ``root`` by
    archive_runs.py: the same results.json) counts once, from its own directory: the one with
    checkpoints or Hydra's hydra.yaml, which records lack."""
    copies: dict[bytes, list[Path]] = {}
    for path in sorted(root.rglob("results.json")):
        if outside is not None and path.resolve().is_relative_to(outside.resolve()):
            continue
        results = results_or_none(path)
        if results is None:
            continue
        if results["status"] not in statuses:
            print(f"skipped {path.parent}: {results['status']}", file=sys.stderr)
        elif results["status"] == "finished" and (lacking := what_the_table_lacks(results)) is not None:
            print(f"skipped {path}: finished, but without {lacking}", file=sys.stderr)
        else:
            copies.setdefault(path.read_bytes(), []).append(path.parent)
    runs = []
    for record, directories in copies.items():
        origin = next((d for d in directories if any(d.glob("*.pt")) or (d / ".hydra" / "hydra.yaml").is_file()),
                      directories[0])
        for directory in directories:
            if directory != origin:
                print(f"skipped {directory}: the records of {origin}", file=sys.stderr)
        runs.append({**json.loads(record), "dir": origin})
    return sorted(runs, key=lambda run: run["dir"])


def unfinished_runs(root: Path) -> list[dict]:
    """The runs under ``root`` with a ``last.pt`` and no finished results (stopped, still
    training elsewhere, or diverged): where each stands, from its checkpoint. Then the diverged
    runs known only by their records (archive_runs.py's), from their results.json, so that a
    seed that diverged is not lost from an archive's comparison."""
    runs, listed = [], set()
    for path in sorted(root.rglob("last.pt")):
        results = results_or_none(path.parent / "results.json") if (path.parent / "results.json").is_file() else None
        status = results["status"] if results else "not finished"
        if status == "finished":
            continue
        if results:
            listed.add((path.parent / "results.json").read_bytes())
        try:  # a file being replaced, truncated, or anything else saved as last.pt
            checkpoint = read_checkpoint(path, CHECKPOINT_KEYS, "a checkpoint of rbn's trainer")
        except RunError as error:
            print(f"skipped: {error}", file=sys.stderr)
            continue
        trainer, progress = checkpoint["config"]["trainer"], checkpoint["progress"]
        runs.append({
            "dir": path.parent, "data": checkpoint["config"]["data"]["name"],
            "model": checkpoint["config"]["model"]["name"], "status": status,
            "max_epochs": trainer["max_epochs"], "max_steps": trainer["max_steps"],
            **{key: progress[key] for key in ("epoch", "epoch_step", "step", "best", "best_step", "train_seconds")},
            "devices": progress.get("devices", []), "steps_per_second": recent_speed(path.parent),
        })
    for path in sorted(root.rglob("results.json")):
        if (path.parent / "last.pt").exists():
            continue
        try:
            results = read_results(path)
        except RunError:  # load_runs has said so
            continue
        if path.read_bytes() in listed:
            continue
        if results["status"] == "diverged" and (record := diverged_record(path, results)) is not None:
            runs.append(record)
    return runs


def diverged_record(path: Path, results: dict) -> dict | None:
    """A diverged run's row from its results.json alone (its epoch unknown; its best
    validation and time where the trainer wrote them), or None, said on stderr."""
    best = results.get("best_valid") or {}
    try:
        trainer = results["config"]["trainer"]
        return {
            "dir": path.parent, "data": results["run"]["data"], "model": results["run"]["model"], "status": "diverged",
            "max_epochs": trainer["max_epochs"], "max_steps": trainer["max_steps"], "epoch": None,
            "step": results["step"], "best": next((v for k, v in best.items() if k != "step"), None),
            "best_step": best.get("step"), "train_seconds": results.get("train_seconds"),
            "devices": results.get("devices", []), "steps_per_second": recent_speed(path.parent),
        }
    except (KeyError, TypeError, AttributeError):
        print(f"skipped {path}: diverged, but without its config's trainer, its data, model or step", file=sys.stderr)
        return None


def recent_speed(run_dir: Path) -> float | None:
    speeds = scalars(run_dir).get("train/steps_per_second", {})
    return statistics.median(speeds[step] for step in sorted(speeds)[-RECENT_SPEEDS:]) if speeds else None


def steps_to_go(run: dict) -> int | None:
    """The steps a run not finished has left: to its max_steps, or to the end of its max_epochs
    where that comes first and an epoch's length is known (from the epochs it has finished)."""
    epoch_length = (run["step"] - run["epoch_step"]) // run["epoch"] if run["epoch"] else None
    ends = [end for end in (run["max_steps"], epoch_length and run["max_epochs"] * epoch_length) if end]
    return min(ends) - run["step"] if ends else None


def unfinished_table(runs: dict[str, dict]) -> str:
    """{name: run} as a table: epoch and step of the preset's, best validation so far, time so
    far, and the training steps' time still to go at the recent speed (validations not
    counted), for a run that can go on."""
    lines = [
        "## Not finished",
        "",
        "| run | status | epoch | step | best validation (step) | training time | steps/s | time to go | devices |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, run in sorted(runs.items()):
        step = f"{run['step']}" + (f" / {run['max_steps']}" if run["max_steps"] is not None else "")
        best = "" if run["best"] is None else f"{run['best']:.4f} ({run['best_step']})"
        epoch = "" if run["epoch"] is None else run["epoch"] + 1
        speed = run["steps_per_second"]
        to_go = steps_to_go(run) if run["status"] == "not finished" else None
        goes_on = speed and to_go is not None
        time = "" if run["train_seconds"] is None else duration(run["train_seconds"])
        lines.append(
            f"| {name} | {run['status']} | {epoch} / {run['max_epochs']} | {step} | {best}"
            f" | {time} | {'' if speed is None else f'{speed:.2f}'}"
            f" | {duration(to_go / speed) if goes_on else ''} | {', '.join(run['devices'])} |"
        )
    if any(run["model"] == "bnlstm" for run in runs.values()):
        lines += ["", BATCH_STATISTICS_NOTE]
    return "\n".join(lines) + "\n"


def group_runs(runs: list[dict]) -> dict[str, dict[str, list[dict]]]:
    """{data: {label: runs}}: the label is the model, the experiment where the dataset's runs
    come from several, and the overrides that vary between the dataset's runs and may change
    what they compute."""
    by_data: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        by_data[run["run"]["data"]].append(run)
    groups: dict[str, dict[str, list[dict]]] = {}
    for data, data_runs in by_data.items():
        overrides = [label_overrides(run) for run in data_runs]
        common = set.intersection(*(set(o) for o in overrides))
        several_experiments = len({run["run"]["experiment"] for run in data_runs}) > 1
        groups[data] = defaultdict(list)
        for run, own in zip(data_runs, overrides):
            experiment = [f"experiment={run['run']['experiment']}"] if several_experiments else []
            label = " ".join([run["run"]["model"], *experiment, *(o for o in own if o not in common)])
            groups[data][label].append(run)
    return groups


def label_overrides(run: dict) -> list[str]:
    """The run's overrides that may name its group: not those of NOT_IN_LABEL, nor those of
    UNNAMED (a run resumed with trainer.device=cpu is the same run), unless the run's directory
    is named by it, as a sweep over such a key names its runs (train.py)."""
    named = run["dir"].name.split(",")
    keys = [override.lstrip("+~").split("=", 1)[0] for override in run["run"]["overrides"]]
    return [override for override, key in zip(run["run"]["overrides"], keys)
            if key not in NOT_IN_LABEL and (key not in UNNAMED or override in named)]


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
        (f"| model | seeds | test {metric} | paper | valid {metric} | valid {metric}, batch statistics | steps"
         " | training time | wall time | devices |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for label, runs in sorted(groups.items()):
        test, valid, batch = (mean_std([run[key][metric] for run in runs]) for key in ("test", "valid", "valid_batch_statistics"))
        paper = PAPER.get((data, runs[0]["run"]["model"]))
        steps = sorted({run["step"] for run in runs})
        times = {key: [run[key] for run in runs if key in run] for key in ("train_seconds", "wall_seconds")}
        train_time, wall_time = (duration(statistics.mean(values)) if values else "" for values in times.values())
        devices = sorted({device for run in runs for device in run.get("devices", [])})
        lines.append(
            f"| {label} | {len(runs)} | {test} | {'' if paper is None else f'{paper:.4f}'} | {valid} | {batch}"
            f" | {', '.join(map(str, steps))} | {train_time} | {wall_time} | {', '.join(devices)} |"
        )
    return "\n".join(lines) + "\n"


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


@functools.cache  # a run not finished is read for its table row and its curve
def scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    """Every scalar of a run's events: {tag: {step: value}}; none, said on stderr, where an
    event file cannot be read."""
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    try:
        events.Reload()
    except OSError as error:
        print(f"skipped the events of {run_dir}: {error}", file=sys.stderr)
        return {}
    return {tag: {event.step: event.value for event in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def mean_curve(curves: list[dict[int, float]]) -> tuple[list[int], list[float]]:
    """The mean over runs at the steps that all of them logged."""
    steps = sorted(set.intersection(*(set(curve) for curve in curves)))
    return steps, [statistics.mean(curve[step] for curve in curves) for step in steps]


def plot(data: str, groups: dict[str, list[dict]], unfinished: dict[str, dict], path: Path) -> None:
    """One panel per comparison chart; a group's color is the same in every panel, its
    training curve thin and its validation curve marked. A run not finished is a dashed line
    of its own, labelled by its directory and status. The gradient norm is on a log scale: a
    spike before a divergence spans orders of magnitude."""
    lines = [(f"{label} ({len(runs)})", [scalars(run["dir"]) for run in runs], "-") for label, runs in sorted(groups.items())]
    lines += [(f"{name} ({run['status']})", [scalars(run["dir"])], "--") for name, run in sorted(unfinished.items())]
    logged = {tag for _, run_scalars, _ in lines for values in run_scalars for tag in values}
    charts = comparison_charts("accuracy" if "train/accuracy" in logged else "bpc")
    figure, panels = plt.subplots(1, len(charts), figsize=(4.5 * len(charts), 4), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (label, run_scalars, linestyle) in enumerate(lines):
        for axes, tags in zip(panels[0], charts.values()):
            for tag in tags:
                curves = [values[tag] for values in run_scalars if tag in values]
                if len(curves) < len(run_scalars):
                    continue  # a tag some runs lack (older runs, a run not yet logged) would not average
                steps, values = mean_curve(curves)
                validation = tag.startswith("valid/")
                axes.plot(steps, values, color=colors[index % len(colors)], marker="." if validation else None,
                          linewidth=1.5 if validation else 0.8, linestyle=linestyle, label=f"{label} {tag.split('/')[0]}")
    for axes, (title, tags) in zip(panels[0], charts.items()):
        axes.set(title=title, xlabel="step", ylabel=METRICS.get(title, title))
        if "train/grad_norm" in tags:
            axes.set_yscale("log")
        axes.grid(alpha=0.3)
    if panels[0][0].get_legend_handles_labels()[0]:  # a run stopped before it logged has no curve yet
        panels[0][0].legend(fontsize="small")
    figure.suptitle(data)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="+", type=Path, metavar="ROOT", help="a sweep's directory, or any directory of runs")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: the one ROOT)")
    args = parser.parse_args()
    if len(args.roots) > 1 and args.out is None:
        parser.error("several ROOTs need --out: where to write the comparison")
    arguments.distinct_names(parser, args.roots, "the ROOTs' names label their runs")
    groups: dict[str, dict[str, list[dict]]] = defaultdict(dict)
    unfinished: dict[str, dict] = {}
    for root in args.roots:
        if not root.is_dir():
            parser.error(f"{root} is not a directory")
        prefix = f"{root.name}: " if len(args.roots) > 1 else ""
        runs, stopped = load_runs(root), unfinished_runs(root)
        if not runs and not stopped:
            parser.error(f"no readable runs (results.json or last.pt) under {root}")
        for data, data_groups in group_runs(runs).items():
            groups[data].update({prefix + label: group for label, group in data_groups.items()})
        unfinished.update({prefix + str(run["dir"].relative_to(root)): run for run in stopped})
    out = arguments.output_directory(parser, args.out or args.roots[0])
    sections = [table(data, groups[data]) for data in sorted(groups)]
    if unfinished:
        sections.append(unfinished_table(unfinished))
    report = "\n".join(sections)
    (out / "compare.md").write_text(f"# Runs under {', '.join(map(str, args.roots))}\n\n{report}")
    datasets = sorted(set(groups) | {run["data"] for run in unfinished.values()})
    for data in datasets:
        stopped = {name: run for name, run in unfinished.items() if run["data"] == data}
        plot(data, groups.get(data, {}), stopped, out / f"curves_{data}.png")
    print(report)
    print(f"wrote {out / 'compare.md'} and {len(datasets)} curve file(s)")


if __name__ == "__main__":
    main()
