"""scripts/compare.py in process, on runs written here: results.json and events as the trainer
writes them, with values chosen so that every mean can be checked."""

import json
from pathlib import Path

import pytest
import torch
from torch.utils.tensorboard import SummaryWriter
from trainer_helpers import TINY_TEXT, compose_config, diverged_run, load_script, run_script, stopped_run

from rbn.trainer import comparison_charts


def write_run(
    path: Path, model: str, seed: int, offset: float, data: str = "shakespeare", experiment: str | None = None,
    overrides: tuple[str, ...] = (), **results,
) -> None:
    """A finished run (Shakespeare unless ``data`` is another; of the experiment of that name
    unless ``experiment`` is another) whose every scalar at step s is s + offset; ``overrides``
    adds to its command line's, ``results`` to its results.json (or replaces what it holds)."""
    path.mkdir(parents=True)
    metric = "accuracy" if data.endswith("mnist") else "bpc"
    metrics = {"loss": 1.0 + offset, metric: 2.0 + offset}
    results = dict(
        status="finished", step=4, test=metrics, valid=metrics, valid_batch_statistics=metrics,
        run=dict(experiment=experiment or data, model=model, data=data, optim="adam", seed=seed,
                 overrides=[f"model={model}", f"seed={seed}", *overrides]),
    ) | results
    (path / "results.json").write_text(json.dumps(results))
    with SummaryWriter(path) as writer:
        for tag in {tag for tags in comparison_charts(metric).values() for tag in tags}:
            for step in (2, 4):
                writer.add_scalar(tag, step + offset, step)


def compare(monkeypatch, *args: str) -> list:
    """Runs compare.py; returns the figures it drew."""
    module = load_script("compare")
    figures = []
    close = module.plt.close
    monkeypatch.setattr(module.plt, "close", lambda figure: figures.append(figure) or close(figure))
    run_script(monkeypatch, module, *args)
    return figures


@pytest.fixture
def two_sweeps(tmp_path) -> tuple[Path, Path]:
    """Sweep "a": bnlstm with seeds 0 and 1 (offsets 0 and 1); sweep "b": bnlstm, one seed (offset 10)."""
    write_run(tmp_path / "a" / "model=bnlstm,seed=0", "bnlstm", 0, 0.0)
    write_run(tmp_path / "a" / "model=bnlstm,seed=1", "bnlstm", 1, 1.0)
    write_run(tmp_path / "b" / "model=bnlstm,seed=0", "bnlstm", 0, 10.0)
    return tmp_path / "a", tmp_path / "b"


def test_several_sweeps_are_one_table_with_rows_named_by_sweep(tmp_path, monkeypatch, two_sweeps):
    compare(monkeypatch, *map(str, two_sweeps), "--out", str(tmp_path / "out"))
    report = (tmp_path / "out" / "compare.md").read_text()
    assert "| a: bnlstm | 2 | 2.5000 ± 0.7071 |" in report
    assert "| b: bnlstm | 1 | 12.0000 |" in report


def test_the_figure_has_the_layouts_charts_with_each_groups_mean_over_seeds(tmp_path, monkeypatch, two_sweeps):
    (figure,) = compare(monkeypatch, *map(str, two_sweeps), "--out", str(tmp_path / "out"))
    assert (tmp_path / "out" / "curves_shakespeare.png").stat().st_size > 0
    charts = comparison_charts("bpc")
    panels = [axes for axes in figure.axes if axes.get_title()]
    assert [axes.get_title() for axes in panels] == list(charts)
    for axes, tags in zip(panels, charts.values()):
        lines = {line.get_label(): list(line.get_ydata()) for line in axes.get_lines()}
        for tag in tags:
            kind = tag.split("/")[0]
            assert lines[f"a: bnlstm (2) {kind}"] == [2.5, 4.5]  # steps 2 and 4, offsets 0 and 1
            assert lines[f"b: bnlstm (1) {kind}"] == [12.0, 14.0]


def test_a_run_resumed_after_a_hard_kill_is_drawn_from_its_checkpoints_step_on_without_warnings(tmp_path, monkeypatch, caplog):
    """Its first attempt logged step 4 after the checkpoint at step 2 and was killed; the
    resumed attempt's events start at step 3 (the trainer's purge_step) and replace it."""
    write_run(tmp_path / "sweep" / "model=bnlstm,seed=0", "bnlstm", 0, 0.0)
    with SummaryWriter(tmp_path / "sweep" / "model=bnlstm,seed=0", purge_step=3) as writer:
        for tag in comparison_charts("bpc")["loss"]:
            writer.add_scalar(tag, 40.0, 4)
    (figure,) = compare(monkeypatch, str(tmp_path / "sweep"))
    (panel,) = [axes for axes in figure.axes if axes.get_title() == "loss"]
    assert {tuple(line.get_ydata()) for line in panel.get_lines()} == {(2.0, 40.0)}
    assert not [record for record in caplog.records if record.name.startswith("tensorboard")]


def test_one_sweep_writes_into_itself_with_plain_labels(monkeypatch, two_sweeps):
    compare(monkeypatch, str(two_sweeps[0]))
    assert "| bnlstm | 2 |" in (two_sweeps[0] / "compare.md").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{a}", "{b}"], "several ROOTs need --out"),
        (["{a}", "{a}", "--out", "{out}"], "the ROOTs' names label their runs, and two are the same"),
        (["{out}"], "is not a directory"),
        (["{a}", "--out", "{file}"], "cannot create --out"),
        (["{empty}"], "no readable runs (results.json or last.pt)"),
    ],
)
def test_bad_roots_are_one_line(tmp_path, monkeypatch, capsys, two_sweeps, args, message):
    paths = dict(a=two_sweeps[0], b=two_sweeps[1], out=tmp_path / "out", file=tmp_path / "a-file", empty=tmp_path / "empty")
    (tmp_path / "a-file").write_text("")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit:
        compare(monkeypatch, *(arg.format(**paths) for arg in args))
    assert exit.value.code == 2
    assert message in capsys.readouterr().err


def test_a_row_has_the_papers_test_number_the_mean_times_and_the_devices(tmp_path, monkeypatch):
    write_run(tmp_path / "s" / "model=bnlstm,seed=0", "bnlstm", 0, 0.0, "pmnist", train_seconds=3600.0, wall_seconds=4000.0, devices=["H100"])
    write_run(tmp_path / "s" / "model=bnlstm,seed=1", "bnlstm", 1, 0.0, "pmnist", train_seconds=5400.0, wall_seconds=6000.0, devices=["H100", "H200"])
    compare(monkeypatch, str(tmp_path / "s"))
    report = (tmp_path / "s" / "compare.md").read_text()
    assert "| bnlstm | 2 | 2.0000 ± 0.0000 | 0.9540 | 2.0000 ± 0.0000 | 2.0000 ± 0.0000 | 4 | 1.25 h | 1.39 h | H100, H200 |" in report


def test_a_model_the_paper_did_not_run_has_no_paper_number(tmp_path, monkeypatch):
    write_run(tmp_path / "s" / "model=lnlstm", "lnlstm", 0, 0.0, "pmnist")
    compare(monkeypatch, str(tmp_path / "s"))
    assert "| lnlstm | 1 | 2.0000 |  | 2.0000 | 2.0000 | 4 |  |  |  |" in (tmp_path / "s" / "compare.md").read_text()


def test_a_rows_test_valid_and_batch_statistics_columns_each_show_their_own_split(tmp_path, monkeypatch):
    write_run(tmp_path / "s" / "model=bnlstm", "bnlstm", 0, 0.0,
              test={"bpc": 1.5}, valid={"bpc": 1.6}, valid_batch_statistics={"bpc": 1.7})
    compare(monkeypatch, str(tmp_path / "s"))
    assert "| bnlstm | 1 | 1.5000 |  | 1.6000 | 1.7000 |" in (tmp_path / "s" / "compare.md").read_text()


def test_a_rows_steps_are_those_its_runs_ended_at_and_its_times_their_mean(tmp_path, monkeypatch):
    for seed, (step, seconds) in enumerate([(4, 60.0), (6, 120.0), (4, 600.0)]):
        write_run(tmp_path / "s" / f"model=bnlstm,seed={seed}", "bnlstm", seed, 0.0, step=step,
                  train_seconds=seconds, wall_seconds=seconds)
    compare(monkeypatch, str(tmp_path / "s"))
    assert "| 4, 6 | 4.3 min | 4.3 min |  |" in (tmp_path / "s" / "compare.md").read_text()  # not the median's 2.0 min


def test_the_paper_number_is_the_datasets_not_the_experiments(tmp_path, monkeypatch):
    """ptb_char's experiment run on Shakespeare, which the paper did not run."""
    write_run(tmp_path / "s" / "data=shakespeare", "bnlstm", 0, 0.0, experiment="ptb_char", overrides=("data=shakespeare",))
    compare(monkeypatch, str(tmp_path / "s"))
    assert "| bnlstm | 1 | 2.0000 |  | 2.0000 |" in (tmp_path / "s" / "compare.md").read_text()


def test_runs_of_two_experiments_on_one_dataset_are_two_rows(tmp_path, monkeypatch):
    write_run(tmp_path / "s" / "experiment=shakespeare", "bnlstm", 0, 0.0, overrides=("experiment=shakespeare",))
    write_run(tmp_path / "s" / "data=shakespeare,experiment=ptb_char", "bnlstm", 0, 1.0, experiment="ptb_char",
              overrides=("experiment=ptb_char", "data=shakespeare"))
    compare(monkeypatch, str(tmp_path / "s"))
    report = (tmp_path / "s" / "compare.md").read_text()
    assert "| bnlstm experiment=ptb_char | 1 | 3.0000 |" in report
    assert "| bnlstm experiment=shakespeare | 1 | 2.0000 |" in report


def test_a_run_resumed_with_overrides_that_change_nothing_computed_stays_in_its_group(tmp_path, monkeypatch):
    write_run(tmp_path / "s" / "model=bnlstm,seed=0", "bnlstm", 0, 0.0)
    write_run(tmp_path / "s" / "model=bnlstm,seed=1", "bnlstm", 1, 1.0, overrides=("trainer.device=cpu", "trainer.progress_bar=false", "model.backend=eager"))
    compare(monkeypatch, str(tmp_path / "s"))
    assert "| bnlstm | 2 | 2.5000 ± 0.7071 |" in (tmp_path / "s" / "compare.md").read_text()


def test_a_sweep_over_a_key_that_changes_nothing_computed_has_a_row_per_value(tmp_path, monkeypatch):
    for offset, value in enumerate(("false", "true")):
        override = f"trainer.cuda_graphs={value}"
        write_run(tmp_path / "s" / override, "bnlstm", 0, float(offset), overrides=(override,))
    compare(monkeypatch, str(tmp_path / "s"))
    report = (tmp_path / "s" / "compare.md").read_text()
    assert "| bnlstm trainer.cuda_graphs=false | 1 | 2.0000 |" in report
    assert "| bnlstm trainer.cuda_graphs=true | 1 | 3.0000 |" in report


def test_overrides_that_all_of_a_datasets_runs_share_are_not_in_their_labels(tmp_path, monkeypatch):
    for offset, lr in enumerate(("0.001", "0.002")):
        overrides = ("model.hidden_size=64", f"optim.lr={lr}")
        write_run(tmp_path / "s" / f"model.hidden_size=64,optim.lr={lr}", "bnlstm", 0, float(offset), overrides=overrides)
    compare(monkeypatch, str(tmp_path / "s"))
    report = (tmp_path / "s" / "compare.md").read_text()
    assert "| bnlstm optim.lr=0.001 | 1 | 2.0000 |" in report
    assert "| bnlstm optim.lr=0.002 | 1 | 3.0000 |" in report


def test_runs_named_alike_in_two_sweeps_under_one_root_both_count(tmp_path, monkeypatch):
    write_run(tmp_path / "s" / "a" / "model=bnlstm,seed=0", "bnlstm", 0, 0.0)
    write_run(tmp_path / "s" / "b" / "model=bnlstm,seed=0", "bnlstm", 0, 1.0)
    compare(monkeypatch, str(tmp_path / "s"))
    assert "| bnlstm | 2 | 2.5000 ± 0.7071 |" in (tmp_path / "s" / "compare.md").read_text()


@pytest.mark.parametrize("saved", [{"model": {}}, torch.zeros(3)], ids=["a dict without a checkpoint's keys", "a tensor"])
def test_a_last_pt_that_is_not_a_checkpoint_is_skipped_in_one_line(tmp_path, monkeypatch, capsys, saved):
    write_run(tmp_path / "s" / "model=bnlstm,seed=0", "bnlstm", 0, 0.0)
    (tmp_path / "s" / "model=bnlstm,seed=1").mkdir()
    torch.save(saved, tmp_path / "s" / "model=bnlstm,seed=1" / "last.pt")
    compare(monkeypatch, str(tmp_path / "s"))
    assert f"skipped: {tmp_path / 's' / 'model=bnlstm,seed=1' / 'last.pt'} is not a checkpoint of rbn's trainer" in capsys.readouterr().err
    report = (tmp_path / "s" / "compare.md").read_text()
    assert "| bnlstm | 1 | 2.0000 |" in report and "Not finished" not in report


def test_a_run_and_its_records_archived_inside_the_root_count_once(tmp_path, monkeypatch, capsys):
    write_run(tmp_path / "s" / "model=bnlstm,seed=0", "bnlstm", 0, 0.0)
    records = tmp_path / "s" / "zz-archive" / "model=bnlstm,seed=0"
    records.mkdir(parents=True)
    (records / "results.json").write_bytes((tmp_path / "s" / "model=bnlstm,seed=0" / "results.json").read_bytes())
    compare(monkeypatch, str(tmp_path / "s"))
    assert "| bnlstm | 1 | 2.0000 |" in (tmp_path / "s" / "compare.md").read_text()
    assert f"skipped {records}: the records of {tmp_path / 's' / 'model=bnlstm,seed=0'}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, message",
    [("garbage{", "skipped: {path} is unreadable (JSONDecodeError)"), ("[1]", "skipped: {path} is not the results of a run"),
     ('{"status": "finished"}', "skipped {path}: finished, but without its run description (experiment, model, data, seed, overrides)"),
     ('{"status": "finished", "run": {}}', "skipped {path}: finished, but without its run description"),
     ('{"status": "finished", "run": {"experiment": null, "model": "lstm", "data": "pmnist", "seed": 0, "overrides": []},'
      ' "test": {"accuracy": "high"}}', "skipped {path}: finished, but without a number for its test accuracy"),
     ('{"status": "finished", "run": {"experiment": null, "model": "lstm", "data": "pmnist", "seed": 0, "overrides": []},'
      ' "test": {"bpc": 1}, "valid": {"bpc": 1}, "valid_batch_statistics": {"bpc": 1}}',
      "skipped {path}: finished, but without numbers for its step and times")],
    ids=["not-json", "not-results", "no-run", "empty-run", "metric-not-a-number", "no-step"],
)
def test_a_damaged_results_file_is_skipped_in_one_line(tmp_path, monkeypatch, capsys, content, message):
    write_run(tmp_path / "s" / "model=bnlstm,seed=0", "bnlstm", 0, 0.0)
    (tmp_path / "s" / "damaged").mkdir()
    (tmp_path / "s" / "damaged" / "results.json").write_text(content)
    compare(monkeypatch, str(tmp_path / "s"))
    assert message.format(path=tmp_path / "s" / "damaged" / "results.json") in capsys.readouterr().err
    assert "| bnlstm | 1 | 2.0000 |" in (tmp_path / "s" / "compare.md").read_text()


def test_a_results_json_that_cannot_be_read_as_a_file_is_skipped_in_one_line(tmp_path, monkeypatch, capsys):
    write_run(tmp_path / "s" / "model=bnlstm,seed=0", "bnlstm", 0, 0.0)
    (tmp_path / "s" / "damaged" / "results.json").mkdir(parents=True)
    compare(monkeypatch, str(tmp_path / "s"))
    assert f"{tmp_path / 's' / 'damaged' / 'results.json'} is unreadable" in capsys.readouterr().err
    assert "| bnlstm | 1 | 2.0000 |" in (tmp_path / "s" / "compare.md").read_text()


def test_a_run_whose_events_cannot_be_read_keeps_its_row_and_is_said_in_one_line(tmp_path, monkeypatch, capsys, two_sweeps):
    unreadable = two_sweeps[0] / "model=bnlstm,seed=1"
    (unreadable / "events.out.tfevents.2.x").mkdir()  # unreadable as a file (chmod is not, to root)
    compare(monkeypatch, str(two_sweeps[0]))
    assert f"skipped the events of {unreadable}: [Errno 21] Is a directory" in capsys.readouterr().err
    assert "| bnlstm | 2 |" in (two_sweeps[0] / "compare.md").read_text()


def stopped_progress(run_dir: Path, monkeypatch, step: int) -> dict:
    """A tiny BN-LSTM character model stopped at ``step`` of 6 (validations at 3 and 6), in the
    first of its 2 epochs; its progress."""
    stopped_run(compose_config(*TINY_TEXT), run_dir, monkeypatch, step)
    return torch.load(run_dir / "last.pt", weights_only=True)["progress"]


@pytest.mark.usefixtures("tiny_data")
def test_runs_not_finished_are_listed_with_where_they_stand(tmp_path, monkeypatch):
    write_run(tmp_path / "s" / "model=bnlstm,seed=0", "bnlstm", 0, 0.0)
    progress = stopped_progress(tmp_path / "s" / "model=bnlstm,seed=1", monkeypatch, 4)
    compare(monkeypatch, str(tmp_path / "s"))
    report = (tmp_path / "s" / "compare.md").read_text()
    assert "| bnlstm | 1 | 2.0000 |" in report  # the finished run alone in its group
    [row] = not_finished_rows(tmp_path / "s")
    assert row.startswith(f"| model=bnlstm,seed=1 | not finished | 1 / 2 | 4 / 6 | {progress['best']:.4f} (3) | ")
    assert row.endswith("| cpu |")


@pytest.mark.usefixtures("tiny_data")
def test_a_diverged_run_is_listed_as_such_without_a_time_to_go(tmp_path, monkeypatch, capsys):
    diverged_run(compose_config(*TINY_TEXT), tmp_path / "s" / "run", monkeypatch)
    compare(monkeypatch, str(tmp_path / "s"))
    [row] = not_finished_rows(tmp_path / "s")
    assert row.startswith("| run | diverged | 1 / 2 | 3 / 6 |") and row.endswith(" |  | cpu |")  # no time to go
    assert f"skipped {tmp_path / 's' / 'run'}: diverged" in capsys.readouterr().err


def not_finished_section(report_dir: Path) -> str:
    return (report_dir / "compare.md").read_text().split("## Not finished")[1]


def not_finished_rows(report_dir: Path) -> list[str]:
    """The rows of the table of runs not finished, without its header."""
    return [line for line in not_finished_section(report_dir).splitlines() if line.startswith("|")][2:]


@pytest.mark.usefixtures("tiny_data")
def test_runs_not_finished_say_that_a_bn_lstms_validation_there_uses_batch_statistics(tmp_path, monkeypatch):
    stopped_run(compose_config(*TINY_TEXT), tmp_path / "s" / "model=bnlstm,seed=0", monkeypatch, 4)
    compare(monkeypatch, str(tmp_path / "s"))
    assert not_finished_section(tmp_path / "s").rstrip().endswith(load_script("compare").BATCH_STATISTICS_NOTE)


@pytest.mark.usefixtures("tiny_data")
def test_runs_not_finished_without_a_bn_lstm_have_no_note_on_batch_statistics(tmp_path, monkeypatch):
    stopped_run(compose_config(*TINY_TEXT, "model=lnlstm"), tmp_path / "s" / "model=lnlstm,seed=0", monkeypatch, 4)
    compare(monkeypatch, str(tmp_path / "s"))
    assert "batch statistics" not in not_finished_section(tmp_path / "s")


@pytest.mark.usefixtures("tiny_data")
def test_an_archived_diverged_run_is_listed_from_its_records(tmp_path, monkeypatch):
    run_dir = diverged_run(compose_config(*TINY_TEXT), tmp_path / "s" / "run", monkeypatch)
    run_script(monkeypatch, load_script("archive_runs"), tmp_path / "s", tmp_path / "archive")
    [figure] = compare(monkeypatch, str(tmp_path / "archive"))
    assert "run (diverged) train" in [line.get_label() for line in figure.axes[0].lines]
    assert [axes.get_yscale() for axes in figure.axes if axes.get_title().startswith("gradient norm")] == ["log"]
    results = json.loads((run_dir / "results.json").read_text())
    best, time = results["best_valid"]["bpc"], load_script("compare").duration(results["train_seconds"])
    [row] = not_finished_rows(tmp_path / "archive")
    assert row.startswith(f"| run | diverged |  / 2 | 4 / 6 | {best:.4f} (3) | {time} | ")  # epoch unknown
    assert row.endswith(" |  | cpu |")


@pytest.mark.usefixtures("tiny_data")
def test_a_diverged_run_and_its_records_inside_the_root_are_listed_once(tmp_path, monkeypatch):
    diverged_run(compose_config(*TINY_TEXT), tmp_path / "s" / "run", monkeypatch)
    run_script(monkeypatch, load_script("archive_runs"), tmp_path / "s", tmp_path / "s" / "archive")
    compare(monkeypatch, str(tmp_path / "s"))
    [row] = not_finished_rows(tmp_path / "s")
    assert row.startswith("| run | diverged | 1 / 2 | 3 / 6 |")  # from its checkpoint


def set_where_it_stands(run_dir: Path, speeds: dict[int, float], max_steps: int | None, **progress) -> None:
    """Rewrites a stopped run's last.pt with ``progress`` and its max_steps (10 epochs at most),
    and its events with the steps per second logged at each step of ``speeds``."""
    checkpoint = torch.load(run_dir / "last.pt", weights_only=True)
    checkpoint["progress"].update(progress)
    checkpoint["config"]["trainer"].update(max_epochs=10, max_steps=max_steps)
    torch.save(checkpoint, run_dir / "last.pt")
    for events in run_dir.glob("events.out.tfevents.*"):
        events.unlink()
    with SummaryWriter(run_dir) as writer:
        for step, speed in speeds.items():
            writer.add_scalar("train/steps_per_second", speed, step)


@pytest.mark.usefixtures("tiny_data")
@pytest.mark.parametrize(
    "max_steps, progress, to_go",
    [(None, dict(epoch=3, epoch_step=10, step=70), "| 2.00 | 1.1 min |"),  # 20 steps an epoch: 130 steps at 2 a second
     (100, dict(epoch=3, epoch_step=10, step=70), "| 2.00 | 15 s |"),  # max_steps comes first
     (None, dict(epoch=0, epoch_step=10, step=10), "| 2.00 |  |"),  # no epoch finished: its length is not known
     (100, dict(epoch=0, epoch_step=10, step=10), "| 2.00 | 45 s |")],
    ids=["epochs", "max-steps", "first-epoch", "first-epoch-max-steps"],
)
def test_a_run_not_finished_says_its_speed_and_the_time_its_steps_to_go_take(tmp_path, monkeypatch, max_steps, progress, to_go):
    stopped_progress(tmp_path / "s" / "run", monkeypatch, 4)
    set_where_it_stands(tmp_path / "s" / "run", {2: 2.0, progress["step"]: 2.0}, max_steps, **progress)
    compare(monkeypatch, str(tmp_path / "s"))
    assert to_go in (tmp_path / "s" / "compare.md").read_text()


@pytest.mark.usefixtures("tiny_data")
def test_a_run_not_finished_goes_on_at_its_recent_median_speed_not_its_last_intervals(tmp_path, monkeypatch):
    """Its first ten intervals ran on a faster machine, and the last was slowed by another
    process on this one."""
    stopped_progress(tmp_path / "s" / "run", monkeypatch, 4)
    speeds = {**{step: 100.0 for step in range(1, 11)}, **{step: 2.0 for step in range(11, 20)}, 20: 0.5}
    set_where_it_stands(tmp_path / "s" / "run", speeds, 110, epoch=0, epoch_step=20, step=20)
    compare(monkeypatch, str(tmp_path / "s"))
    assert "| 2.00 | 45 s |" in (tmp_path / "s" / "compare.md").read_text()


@pytest.mark.usefixtures("tiny_data")
def test_a_run_not_finished_goes_on_at_the_median_of_exactly_its_last_ten_speeds(tmp_path, monkeypatch):
    """The last ten are five at 2 and five at 4 a second (median 3); the last nine or eleven have a median of 4."""
    stopped_progress(tmp_path / "s" / "run", monkeypatch, 4)
    speeds = {**{step: 100.0 for step in range(1, 11)}, **{step: 2.0 for step in range(11, 16)}, **{step: 4.0 for step in range(16, 21)}}
    set_where_it_stands(tmp_path / "s" / "run", speeds, 110, epoch=0, epoch_step=20, step=20)
    compare(monkeypatch, str(tmp_path / "s"))
    assert "| 3.00 | 30 s |" in (tmp_path / "s" / "compare.md").read_text()


@pytest.mark.usefixtures("tiny_data")
def test_a_sweep_with_no_finished_run_yet_gets_its_table_and_curves_of_where_runs_stand(tmp_path, monkeypatch):
    stopped_progress(tmp_path / "s" / "model=bnlstm", monkeypatch, 2)
    compare(monkeypatch, str(tmp_path / "s"))
    assert "| model=bnlstm | not finished | 1 / 2 | 2 / 6 |  | " in (tmp_path / "s" / "compare.md").read_text()
    assert (tmp_path / "s" / "curves_shakespeare.png").stat().st_size > 0


@pytest.mark.usefixtures("tiny_data")
def test_a_run_not_finished_is_a_dashed_line_of_its_own_up_to_where_it_stands(tmp_path, monkeypatch):
    write_run(tmp_path / "s" / "model=bnlstm,seed=0", "bnlstm", 0, 0.0)
    stopped_progress(tmp_path / "s" / "model=bnlstm,seed=1", monkeypatch, 4)
    (figure,) = compare(monkeypatch, str(tmp_path / "s"))
    (bpc,) = [axes for axes in figure.axes if axes.get_title() == "bpc"]
    lines = {line.get_label(): line for line in bpc.get_lines()}
    stopped = lines["model=bnlstm,seed=1 (not finished) valid"]
    assert stopped.get_linestyle() == "--" and list(stopped.get_xdata()) == [3]  # validated at 3 of 6
    assert lines["bnlstm (1) valid"].get_linestyle() == "-"
