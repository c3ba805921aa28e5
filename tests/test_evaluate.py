"""scripts/evaluate.py, in process on the trainer's tiny data (the ``tiny_data`` fixture)."""

import json

import pytest
import torch
from trainer_helpers import (
    NO_GPU_HERE, TINY, TINY_TEXT, as_if_trained_on_a_gpu, compose_config, load_script, run_script, script_error, stopped_run,
)

import rbn
from rbn.trainer import Trainer

pytestmark = pytest.mark.usefixtures("tiny_data")
SPLITS = ("valid_batch_statistics", "valid", "test")


def evaluate(monkeypatch, capsys, *args) -> list[str]:
    run_script(monkeypatch, load_script("evaluate"), *args)
    return capsys.readouterr().out.splitlines()


def evaluate_error(monkeypatch, capsys, *args) -> str:
    return script_error(lambda: run_script(monkeypatch, load_script("evaluate"), *args), capsys, "evaluate.py")


def contents(run_dir) -> dict[str, bytes]:
    return {str(path.relative_to(run_dir)): path.read_bytes() for path in sorted(run_dir.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("overrides", [TINY, [*TINY_TEXT, "model=lnlstm"]], ids=["bnlstm-seqmnist", "lnlstm-text"])
def test_the_results_are_the_final_evaluations_of_the_best_checkpoint(tmp_path, monkeypatch, capsys, overrides):
    results = Trainer(compose_config(*overrides), tmp_path / "run").run()
    evaluate(monkeypatch, capsys, tmp_path / "run", "--json", tmp_path / "now.json")
    now = json.loads((tmp_path / "now.json").read_text())
    assert (now["status"], now["step"]) == ("finished", results["best_step"])
    for split in SPLITS:
        assert now[split] == pytest.approx(results[split], rel=1e-6), split


def printed_rows(lines: list[str]) -> dict[str, dict[str, float]]:
    """{label: {metric: value}} of the rows below the heading ("test: loss 1.2345 bpc 1.7810")."""
    rows = {}
    for line in lines[2:]:
        label, _, metrics = line.partition(": ")
        words = metrics.split()
        rows[label] = {name: float(value) for name, value in zip(words[::2], words[1::2])}
    return rows


def test_bn_lstm_prints_validation_with_batch_and_population_statistics_and_test(tmp_path, monkeypatch, capsys):
    results = Trainer(compose_config(*TINY), tmp_path).run()
    lines = evaluate(monkeypatch, capsys, tmp_path)
    assert lines[0] == f"{tmp_path}: best.pt of step {results['best_step']} (trained to step 6), the paper's test procedure"
    rows = printed_rows(lines)
    assert list(rows) == ["valid, batch statistics", "valid, population statistics", "test, population statistics"]
    for label, split in zip(rows, SPLITS):  # each row's own numbers, printed to 4 decimals
        assert rows[label] == pytest.approx(results[split], abs=5e-5), label


def test_a_layer_without_batch_statistics_prints_validation_and_test(tmp_path, monkeypatch, capsys):
    results = Trainer(compose_config(*TINY_TEXT, "model=lstm"), tmp_path).run()
    rows = printed_rows(evaluate(monkeypatch, capsys, tmp_path))
    assert list(rows) == ["valid", "test"]
    for split in rows:
        assert rows[split] == pytest.approx(results[split], abs=5e-5), split


def test_a_run_still_training_is_evaluated_at_its_best_so_far_and_left_as_it_was(tmp_path, monkeypatch, capsys):
    stopped_run(compose_config(*TINY), tmp_path, monkeypatch, 5)  # validated at step 3, stopped at 5
    before = contents(tmp_path)
    lines = evaluate(monkeypatch, capsys, tmp_path)
    assert lines[0] == f"{tmp_path}: best.pt of step 3 (trained to step 5), the paper's test procedure"
    assert contents(tmp_path) == before


def test_device_evaluates_a_run_trained_with_cuda_graphs_on_a_cpu(tmp_path, monkeypatch, capsys):
    Trainer(compose_config(*TINY), tmp_path).run()
    as_if_trained_on_a_gpu(tmp_path / "best.pt")
    monkeypatch.setattr(rbn.kernels, "interpreted", lambda: False)  # as outside the tests: no kernels on a CPU
    if not torch.cuda.is_available():
        assert evaluate_error(monkeypatch, capsys, tmp_path).endswith(NO_GPU_HERE)
    assert evaluate(monkeypatch, capsys, tmp_path, "--device", "cpu")[-1].startswith("test, population statistics: loss ")


def test_a_run_that_has_not_validated_yet_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    stopped_run(compose_config(*TINY), tmp_path, monkeypatch, 2)
    error = evaluate_error(monkeypatch, capsys, tmp_path)
    assert error.endswith(f"{tmp_path / 'best.pt'} does not exist: {tmp_path} has not validated yet")


def test_a_directory_without_a_run_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    assert evaluate_error(monkeypatch, capsys, tmp_path).endswith(f"{tmp_path / 'best.pt'} does not exist")


def test_an_unknown_device_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    assert "--device" in evaluate_error(monkeypatch, capsys, tmp_path, "--device", "tpu")


def test_json_inside_the_run_directory_is_a_one_line_error_that_leaves_the_run_as_it_was(tmp_path, monkeypatch, capsys):
    """A results.json written there would mark the run finished."""
    stopped_run(compose_config(*TINY_TEXT), tmp_path, monkeypatch, 5)
    before = contents(tmp_path)
    error = evaluate_error(monkeypatch, capsys, tmp_path, "--json", tmp_path / "results.json")
    assert error.endswith(f"--json {tmp_path / 'results.json'} is inside {tmp_path}, which this script only reads")
    assert contents(tmp_path) == before


def test_an_unreadable_last_pt_is_a_one_line_error_before_the_evaluation(tmp_path, monkeypatch, capsys):
    stopped_run(compose_config(*TINY_TEXT), tmp_path, monkeypatch, 5)
    (tmp_path / "last.pt").write_bytes((tmp_path / "last.pt").read_bytes()[:2000])
    evaluations = []
    monkeypatch.setattr(Trainer, "final_evaluation", lambda self: evaluations.append(self))
    error = evaluate_error(monkeypatch, capsys, tmp_path)
    assert error.endswith(f"{tmp_path / 'last.pt'} is unreadable (RuntimeError)") and not evaluations
