"""scripts/population_gap.py, in process on the trainer's tiny data (the ``tiny_data`` fixture)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from trainer_helpers import TINY, compose_config

from rbn.trainer import Trainer

pytestmark = pytest.mark.usefixtures("tiny_data")
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "population_gap.py"


def population_gap(monkeypatch, capsys, *args: str) -> list[str]:
    spec = importlib.util.spec_from_file_location("population_gap", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", ["population_gap.py", *args])
    module.main()
    return capsys.readouterr().out.splitlines()


def accuracy_and_loss(row: str) -> tuple[float, float]:
    accuracy, loss = row.split("|")[-3:-1]
    return float(accuracy.strip(" %")) / 100, float(loss)


def test_all_batch_and_all_population_rows_reproduce_the_final_evaluation(tmp_path, monkeypatch, capsys):
    # Without h0 noise the population estimate draws no random numbers: both must match exactly.
    Trainer(compose_config(*TINY, "model.h0_noise_std=0"), tmp_path).run()
    results = json.loads((tmp_path / "results.json").read_text())
    rows = population_gap(monkeypatch, capsys, str(tmp_path), "--batches", "2", "--estimate-batches", "2")
    table = [row for row in rows if row.startswith("| batch") or row.startswith("| population")]
    assert len(table) == 8
    for row, split in ((table[0], "valid_batch_statistics"), (table[-1], "valid")):
        accuracy, loss = accuracy_and_loss(row)
        assert accuracy == pytest.approx(results[split]["accuracy"], abs=5e-5), split  # printed to 0.01 %
        assert loss == pytest.approx(results[split]["loss"], abs=5e-5), split

def test_a_model_without_batch_normalization_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    Trainer(compose_config(*TINY, "model=lnlstm"), tmp_path).run()
    with pytest.raises(SystemExit):
        population_gap(monkeypatch, capsys, str(tmp_path))
    assert "has no batch normalization" in capsys.readouterr().err
