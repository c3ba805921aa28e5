"""scripts/train_speed.py, in process on the trainer's tiny data (the ``tiny_data`` fixture)."""

import json

import pytest
import torch
from trainer_helpers import load_script, run_script

from rbn.config import Backend
from rbn.trainer import Diverged, Trainer

pytestmark = pytest.mark.usefixtures("tiny_data")
TINY = ["model.hidden_size=4", "trainer.batch_size=4"]
TINY_TEXT = ["experiment=shakespeare", "data.segment_length=8", *TINY]  # 12 steps per epoch


def train_speed(monkeypatch, *args: str) -> None:
    run_script(monkeypatch, load_script("train_speed"), *args)


def test_a_variant_gives_its_speed_and_the_whole_runs_estimate(tmp_path, monkeypatch):
    report = tmp_path / "speed.json"
    train_speed(monkeypatch, "--variants", "eager", "--steps", "2", "--eval-batches", "2", "--json", str(report), *TINY)
    (row,) = json.loads(report.read_text())["rows"]
    assert row["variant"] == "eager"
    # The preset on 12 / 6 images: 200 epochs of 3 steps, validated at each epoch's end.
    assert (row["steps"], row["validations"], row["epoch_length"], row["valid_batches"]) == (600, 200, 3, 2)
    assert row["steps_per_second"] > 0 and row["eval_seconds_per_batch"] > 0
    one_epoch = row["epoch_length"] / row["steps_per_second"] + row["valid_batches"] * row["eval_seconds_per_batch"]
    assert row["whole_run_hours"] == pytest.approx(200 * one_epoch / 3600)


@pytest.mark.parametrize(
    ("schedule", "steps", "validations"),
    [
        ([], 24, 1),  # the preset's: 2 epochs, within its 2,000 steps; 250 steps between validations: only the last step
        (["trainer.max_steps=20", "trainer.eval_interval=8"], 20, 3),  # at 8, 16 and the last step
        (["trainer.eval_interval=null", "trainer.max_steps=18"], 18, 2),  # at the end of epoch 1 and the last step
        (["trainer.eval_interval=null"], 24, 2),  # the last step ends epoch 2: one validation there
    ],
)
def test_the_whole_run_estimate_follows_the_runs_own_steps_and_validations(tmp_path, monkeypatch, schedule, steps, validations):
    report = tmp_path / "speed.json"
    train_speed(monkeypatch, "--variants", "eager", "--steps", "2", "--eval-batches", "2", "--json", str(report), *TINY_TEXT, *schedule)
    (row,) = json.loads(report.read_text())["rows"]
    assert (row["steps"], row["validations"]) == (steps, validations)
    validation = row["valid_batches"] * row["eval_seconds_per_batch"]
    assert row["whole_run_hours"] == pytest.approx((steps / row["steps_per_second"] + validations * validation) / 3600)


def test_the_timed_steps_may_outnumber_the_runs_epochs(tmp_path, monkeypatch):
    report = tmp_path / "speed.json"
    train_speed(monkeypatch, "--variants", "eager", "--steps", "13", "--eval-batches", "1", "--json", str(report),
                *TINY_TEXT, "trainer.max_epochs=1")
    (row,) = json.loads(report.read_text())["rows"]
    assert row["steps"] == 12 and row["steps_per_second"] > 0  # the run's one epoch; 26 steps timed


def test_a_schedule_the_trainer_refuses_is_refused_in_one_line(monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit:
        train_speed(monkeypatch, "--variants", "eager", *TINY_TEXT, "trainer.eval_interval=0")
    assert exit.value.code == 2
    assert "trainer.eval_interval must be positive, got 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.hidden_sz=3", "Could not override 'model.hidden_sz'"),
        ("model=foo", "Could not find 'model/foo'"),
        ("model.hidden_size=[", "no viable alternative at input '['"),
        ("data.download=false", "missing"),
    ],
    ids=["unknown-key", "unknown-option", "unparsable", "no-data"],
)
def test_an_override_hydra_refuses_or_missing_data_is_one_line_before_any_timing(tmp_path, monkeypatch, capsys, override, message):
    monkeypatch.setattr(Trainer, "__init__", lambda *_: pytest.fail("a variant was timed"))
    with pytest.raises(SystemExit) as exit:
        train_speed(monkeypatch, "--variants", "eager", "experiment=ptb_char", f"data.root={tmp_path}", override)
    assert exit.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("train_speed.py: error:") and message in error[-1]


def test_a_variant_the_trainer_refuses_is_refused_in_one_line_before_any_is_timed(monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit:
        train_speed(monkeypatch, "--variants", "eager,kernels", "model=lstm", *TINY_TEXT)
    assert exit.value.code == 2
    printed = capsys.readouterr()
    error = printed.err.strip().splitlines()[-1]
    assert "error: variant kernels: model.backend=triton: rbn.LSTM has no Triton kernel" in error
    assert error.endswith(": choose --variants eager")
    assert printed.out == ""  # no table: nothing was timed


def test_a_json_in_no_directory_is_refused_in_one_line_before_anything_is_timed(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Trainer, "__init__", lambda *_: pytest.fail("a variant was timed"))
    with pytest.raises(SystemExit) as exit:
        train_speed(monkeypatch, "--variants", "eager", "--json", str(tmp_path / "missing" / "speed.json"), *TINY_TEXT)
    assert exit.value.code == 2
    printed = capsys.readouterr()
    error = printed.err.strip().splitlines()[-1]
    assert f"error: argument --json: cannot write {tmp_path / 'missing' / 'speed.json'}: {tmp_path / 'missing'} is not a directory" in error
    assert printed.out == ""  # no table: nothing was timed


def test_the_variants_measured_before_one_that_fails_are_in_the_json(tmp_path, monkeypatch):
    report = tmp_path / "speed.json"
    fit = Trainer.fit

    def fail_with_kernels(self):
        if self.cfg.model.backend == Backend.triton:
            raise RuntimeError("the kernels failed")
        fit(self)

    monkeypatch.setattr(Trainer, "fit", fail_with_kernels)
    with pytest.raises(RuntimeError, match="the kernels failed"):
        train_speed(monkeypatch, "--variants", "eager,kernels", "--steps", "2", "--eval-batches", "2", "--json", str(report), *TINY_TEXT)
    assert [row["variant"] for row in json.loads(report.read_text())["rows"]] == ["eager"]


def test_a_variant_that_diverges_is_one_line_naming_it_and_the_json_of_those_before_it(tmp_path, monkeypatch, capsys):
    report = tmp_path / "speed.json"
    fit = Trainer.fit

    def diverge_when_compiled(self):
        if self.cfg.model.compile:
            raise Diverged("the training loss is nan at step 1")
        fit(self)

    monkeypatch.setattr(Trainer, "fit", diverge_when_compiled)
    with pytest.raises(SystemExit) as exit:
        train_speed(monkeypatch, "--variants", "eager,compiled", "--steps", "2", "--eval-batches", "2", "--json", str(report), *TINY_TEXT)
    assert exit.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.endswith(f"error: variant compiled: the training loss is nan at step 1; the variants before it are in {report}")
    assert [row["variant"] for row in json.loads(report.read_text())["rows"]] == ["eager"]


def test_a_batch_the_trainer_refuses_is_refused_in_one_line_before_any_variant_is_timed(monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit:
        train_speed(monkeypatch, "--variants", "eager", *TINY_TEXT, "trainer.batch_size=1000")
    assert exit.value.code == 2
    printed = capsys.readouterr()
    assert "error: variant eager: trainer.batch_size=1000: the train split" in printed.err.strip().splitlines()[-1]
    assert printed.out == ""  # no table: nothing was timed


def test_without_variants_a_cpu_times_the_eager_loop_and_the_compiled_step(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    script = load_script("train_speed")
    timed = []

    def measure(cfg, eval_batches):
        timed.append((cfg.model.backend, cfg.model.compile, cfg.trainer.cuda_graphs))
        return dict(steps_per_second=1.0, eval_seconds_per_batch=1.0, epoch_length=3, valid_batches=2)

    monkeypatch.setattr(script, "measure", measure)
    report = tmp_path / "speed.json"
    run_script(monkeypatch, script, "--json", str(report), *TINY)
    assert [row["variant"] for row in json.loads(report.read_text())["rows"]] == ["eager", "compiled"]
    assert timed == [(Backend.eager, False, False), (Backend.eager, True, False)]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_cuda_graph_variants_without_cuda_are_refused_in_one_line(monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit:
        train_speed(monkeypatch, "--variants", "eager,graphs", *TINY)
    assert exit.value.code == 2
    assert "the CUDA-graph variants need a CUDA device" in capsys.readouterr().err


def test_an_unknown_variant_is_refused_in_one_line(monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit:
        train_speed(monkeypatch, "--variants", "eager,cudnn", *TINY)
    assert exit.value.code == 2
    assert "unknown variant 'cudnn': choose from eager, graphs, kernels, kernels+graphs, compiled" in capsys.readouterr().err
