"""scripts/archive_runs.py, in process on runs of the trainer's tiny data (the ``tiny_data`` fixture); and the
records it archived in docs/runs."""

import json
import shutil
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from trainer_helpers import GRADIENT_FLOW, TINY_TEXT, compose_config, diverged_run, load_script, run_script, stopped_run

from rbn.trainer import Trainer

pytestmark = pytest.mark.usefixtures("tiny_data")


def archive_runs(monkeypatch, *args: str) -> None:
    run_script(monkeypatch, load_script("archive_runs"), *args)


def events(run_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return accumulator


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    accumulator = events(run_dir)
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def finished_run(run_dir: Path, *overrides: str) -> Path:
    Trainer(compose_config(*TINY_TEXT, *overrides), run_dir).run()
    (run_dir / ".hydra").mkdir()
    for name in ("config.yaml", "overrides.yaml", "hydra.yaml"):
        (run_dir / ".hydra" / name).write_text(f"{name}\n")
    return run_dir


def test_an_archived_run_has_its_results_config_and_the_scalars_tensorboard_shows(tmp_path, monkeypatch):
    """A run resumed from step 3 after an attempt that logged step 4: step 4 is archived once."""
    run_dir = tmp_path / "runs" / "model=bnlstm"
    stopped_run(compose_config(*TINY_TEXT), run_dir, monkeypatch, 5)
    shutil.copyfile(run_dir / "best.pt", run_dir / "last.pt")  # the validation at step 3
    finished_run(run_dir)
    archive_runs(monkeypatch, tmp_path / "runs", tmp_path / "archive")
    kept = tmp_path / "archive" / "model=bnlstm"
    assert (kept / "results.json").read_text() == (run_dir / "results.json").read_text()
    assert {p.name for p in (kept / ".hydra").iterdir()} == {"config.yaml", "overrides.yaml"}
    assert scalars(kept) == scalars(run_dir)
    assert [step for step, _ in scalars(kept)["train/loss"]] == [2, 4, 6]


def test_an_archived_runs_scalars_keep_their_wall_times(tmp_path, monkeypatch):
    """TensorBoard's relative and wall-time axes read them."""
    finished_run(tmp_path / "runs" / "run")
    archive_runs(monkeypatch, tmp_path / "runs", tmp_path / "archive")
    kept, run = events(tmp_path / "archive" / "run"), events(tmp_path / "runs" / "run")
    assert [e.wall_time for e in kept.Scalars("train/loss")] == [e.wall_time for e in run.Scalars("train/loss")]


def test_histograms_figures_samples_and_checkpoints_stay_behind(tmp_path, monkeypatch):
    run_dir = finished_run(tmp_path / "runs" / "text", *GRADIENT_FLOW)
    assert events(run_dir).Tags()["histograms"] and events(run_dir).Tags()["images"]
    archive_runs(monkeypatch, tmp_path / "runs", tmp_path / "archive")
    kept = tmp_path / "archive" / "text"
    tags = events(kept).Tags()
    assert tags["scalars"] and not tags["histograms"] and not tags["images"] and not tags["tensors"]
    assert not list(kept.glob("*.pt"))


def test_finished_and_diverged_runs_are_archived_and_stopped_ones_are_not(tmp_path, monkeypatch):
    finished_run(tmp_path / "runs" / "finished")
    diverged = diverged_run(compose_config(*TINY_TEXT), tmp_path / "runs" / "diverged", monkeypatch)
    stopped_run(compose_config(*TINY_TEXT), tmp_path / "runs" / "interrupted", monkeypatch, 2)
    archive_runs(monkeypatch, tmp_path / "runs", tmp_path / "archive")
    assert sorted(p.name for p in (tmp_path / "archive").iterdir()) == ["diverged", "finished"]
    assert scalars(tmp_path / "archive" / "diverged") == scalars(diverged)


def test_archiving_a_run_again_replaces_its_records(tmp_path, monkeypatch):
    finished_run(tmp_path / "runs" / "run")
    for _ in range(2):
        archive_runs(monkeypatch, tmp_path / "runs", tmp_path / "archive")
    kept = tmp_path / "archive" / "run"
    assert len(list(kept.glob("events.out.tfevents.*"))) == 1
    assert scalars(kept) == scalars(tmp_path / "runs" / "run")


def test_a_run_whose_events_cannot_be_read_is_a_one_line_error_that_keeps_its_earlier_records(tmp_path, monkeypatch, capsys):
    finished_run(tmp_path / "runs" / "run")
    archive_runs(monkeypatch, tmp_path / "runs", tmp_path / "archive")
    before = {path: path.read_bytes() for path in (tmp_path / "archive").rglob("*") if path.is_file()}
    (tmp_path / "runs" / "run" / "events.out.tfevents.2.x").mkdir()  # unreadable as a file (chmod is not, to root)
    with pytest.raises(SystemExit) as stopped:
        archive_runs(monkeypatch, tmp_path / "runs", tmp_path / "archive")
    assert stopped.value.code == 2
    assert "cannot archive" in capsys.readouterr().err.strip().splitlines()[-1]
    assert {path: path.read_bytes() for path in (tmp_path / "archive").rglob("*") if path.is_file()} == before


def test_a_root_that_is_not_a_directory_is_refused(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as stopped:
        archive_runs(monkeypatch, tmp_path / "missing", tmp_path / "archive")
    assert stopped.value.code == 2
    assert f"{tmp_path / 'missing'} is not a directory" in capsys.readouterr().err
    assert not (tmp_path / "archive").exists()


def test_a_directory_without_finished_or_diverged_runs_is_refused(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as stopped:
        archive_runs(monkeypatch, tmp_path, tmp_path / "archive")
    assert stopped.value.code == 2
    assert "no finished or diverged runs" in capsys.readouterr().err


def test_records_archived_inside_root_are_not_taken_for_runs(tmp_path, monkeypatch):
    finished_run(tmp_path / "runs" / "run")
    for _ in range(2):
        archive_runs(monkeypatch, tmp_path / "runs", tmp_path / "runs" / "archive")
    assert [p.name for p in (tmp_path / "runs" / "archive").iterdir()] == ["run"]


@pytest.mark.parametrize("second", ["aaa", "bbb"], ids=["same-dest", "another-dest"])
def test_records_archived_inside_root_are_archived_again_from_their_run(tmp_path, monkeypatch, second):
    """The first records sort before the run they come from ("aaa" < "run"), and are not taken for it."""
    finished_run(tmp_path / "runs" / "run")
    archive_runs(monkeypatch, tmp_path / "runs", tmp_path / "runs" / "aaa")
    archive_runs(monkeypatch, tmp_path / "runs", tmp_path / "runs" / second)
    assert [p.name for p in (tmp_path / "runs" / second).iterdir()] == ["run"]


def test_a_dest_holding_a_run_of_the_same_name_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys):
    finished_run(tmp_path / "runs" / "run")
    stopped_run(compose_config(*TINY_TEXT), tmp_path / "other" / "run", monkeypatch, 2)
    before = {path: path.read_bytes() for path in (tmp_path / "other").rglob("*") if path.is_file()}
    with pytest.raises(SystemExit) as stopped:
        archive_runs(monkeypatch, tmp_path / "runs", tmp_path / "other")
    assert stopped.value.code == 2
    assert "holds a run, whose records archiving would replace" in capsys.readouterr().err.strip().splitlines()[-1]
    assert {path: path.read_bytes() for path in (tmp_path / "other").rglob("*") if path.is_file()} == before


def test_a_dest_that_is_a_file_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    finished_run(tmp_path / "runs" / "run")
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as stopped:
        archive_runs(monkeypatch, tmp_path / "runs", tmp_path / "file")
    assert stopped.value.code == 2
    assert "is not a directory" in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("root", [".", "sweep"], ids=["dest-is-root", "dest-holds-root"])
def test_a_dest_that_is_root_or_holds_it_is_a_one_line_error(tmp_path, monkeypatch, capsys, root):
    finished_run(tmp_path / root / "run")
    with pytest.raises(SystemExit) as stopped:
        archive_runs(monkeypatch, tmp_path / root, tmp_path)
    assert stopped.value.code == 2
    assert "is ROOT or holds it" in capsys.readouterr().err.strip().splitlines()[-1]


ARCHIVE = Path(__file__).resolve().parents[1] / "docs" / "runs"


FINISHED = sorted(path.parent for path in ARCHIVE.glob("*/*/results.json") if json.loads(path.read_text())["status"] == "finished")


@pytest.mark.parametrize("run_dir", FINISHED, ids=lambda path: path.parent.name + "/" + path.name)
def test_the_repositorys_finished_runs_validated_at_their_best_step_what_their_results_say(run_dir):
    """The records in docs/runs agree with themselves: the final evaluation of best.pt on the
    validation set (with batch statistics for BN-LSTM, as the runs were selected) equals the
    scalar logged when that step was validated."""
    results = json.loads((run_dir / "results.json").read_text())
    metric = "accuracy" if "accuracy" in results["test"] else "bpc"
    valid = results.get("valid_batch_statistics", results["valid"])[metric]
    assert dict(scalars(run_dir)[f"valid/{metric}"])[results["best_step"]] == pytest.approx(valid, rel=1e-6)
