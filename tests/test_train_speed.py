"""scripts/train_speed.py, in process on the trainer's tiny data (the ``tiny_data`` fixture)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.usefixtures("tiny_data")
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_speed.py"
TINY = ["model.hidden_size=4", "trainer.batch_size=4"]


def train_speed(monkeypatch, *args: str) -> None:
    spec = importlib.util.spec_from_file_location("train_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", ["train_speed.py", *args])
    module.main()


def test_a_variant_gives_its_speed_and_the_whole_runs_estimate(tmp_path, monkeypatch):
    report = tmp_path / "speed.json"
    train_speed(monkeypatch, "--variants", "eager", "--steps", "2", "--eval-batches", "2", "--json", str(report), *TINY)
    (row,) = json.loads(report.read_text())["rows"]
    assert row["variant"] == "eager"
    assert (row["epochs"], row["epoch_length"], row["valid_batches"]) == (200, 3, 2)  # the preset on 12 / 6 images
    assert row["steps_per_second"] > 0 and row["eval_seconds_per_batch"] > 0
    one_epoch = row["epoch_length"] / row["steps_per_second"] + row["valid_batches"] * row["eval_seconds_per_batch"]
    assert row["whole_run_hours"] == pytest.approx(200 * one_epoch / 3600)


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
    assert "unknown variant 'cudnn': choose from eager, graphs, kernels, kernels+graphs" in capsys.readouterr().err
