"""scripts/population_statistics.py, on the final.pt of tiny runs and on final.pt files whose
statistics are written by hand."""

from pathlib import Path

import pytest
import torch
from trainer_helpers import TINY, TINY_TEXT, compose_config, load_script, run_script, script_error

from rbn.config import to_dict
from rbn.trainer import Trainer

pytestmark = pytest.mark.usefixtures("tiny_data")


def population_statistics(monkeypatch, capsys, *args) -> list[str]:
    run_script(monkeypatch, load_script("population_statistics"), *args)
    return capsys.readouterr().out.splitlines()


def table_rows(lines: list[str]) -> dict[str, list[float]]:
    """{statistic: its cells} from the printed table."""
    rows = {}
    for line in lines:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if line.startswith("| mean of") or line.startswith("| var of"):
            rows[cells[0]] = [float(cell) for cell in cells[1:]]
    return rows


def write_final(run_dir: Path, mean_h: torch.Tensor, var_h: torch.Tensor, layer: int = 0) -> None:
    """A BN-LSTM final.pt of ``layer + 1`` layers whose ``layer`` holds these statistics of
    W_h h (T, C); every other statistic is settled (mean 0, variance 1 at every step)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = to_dict(compose_config(*TINY, f"model.max_length={len(mean_h)}", f"model.num_layers={layer + 1}"))
    settled = {"mean": torch.zeros_like(mean_h), "var": torch.ones_like(var_h)}
    model = {f"recurrent.{term}_l{index}.running_{stat}": value
             for index in range(layer + 1) for term in ("bn_h", "bn_c") for stat, value in settled.items()}
    model.update({f"recurrent.bn_h_l{layer}.running_mean": mean_h, f"recurrent.bn_h_l{layer}.running_var": var_h})
    torch.save({"model": model, "config": cfg}, run_dir / "final.pt")


def test_the_table_gives_how_far_each_statistic_is_from_its_last_timestep_and_when_it_settles(tmp_path, monkeypatch, capsys):
    """A mean 2 (2^-t - 2^-7) standard deviations from its last value (0.23 at t = 3, 0.11 at
    t = 4, 0.05 at t = 5), a variance twice the last one until t = 2: settled below 0.1 from
    t = 5 and t = 3."""
    steps = 8
    decay = 0.5 ** torch.arange(steps, dtype=torch.float64)
    mean_h = (3.0 + 4.0 * (decay - decay[-1]))[:, None].expand(steps, 5).clone()  # last var 4: sd 2
    var_h = torch.full((steps, 5), 4.0)
    var_h[:3] = 8.0
    write_final(tmp_path / "run", mean_h, var_h)
    rows = table_rows(population_statistics(monkeypatch, capsys, tmp_path / "run", "--out", tmp_path))
    expected_mean = 2.0 * (decay - decay[-1])  # in standard deviations of 2
    assert rows["mean of recurrent term W_h h"][:-1] == pytest.approx(expected_mean[[0, 1, 2, 5, 7]].tolist(), abs=5e-4)
    assert rows["mean of recurrent term W_h h"][-1] == 5
    assert rows["var of recurrent term W_h h"] == [1.0, 1.0, 1.0, 0.0, 0.0, 3]
    assert rows["mean of cell state c"][-1] == 0 and rows["var of cell state c"][-1] == 0


def test_a_distance_equal_to_the_tolerance_counts_as_settled():
    distance = torch.tensor([[0.2], [0.1], [0.0]], dtype=torch.float64)  # (T, units)
    assert load_script("population_statistics").settled_from(distance, tolerance=0.1) == 1


def test_the_table_gives_the_90th_percentile_over_units(tmp_path, monkeypatch, capsys):
    """Eleven units whose means are 0 to 10 standard deviations from their last ones at t = 0."""
    mean_h = torch.zeros(2, 11)
    mean_h[0] = torch.arange(11.0)
    write_final(tmp_path / "run", mean_h, torch.ones(2, 11))
    rows = table_rows(population_statistics(monkeypatch, capsys, tmp_path / "run", "--out", tmp_path))
    assert rows["mean of recurrent term W_h h"][0] == pytest.approx(9.0)


def test_layer_reads_that_layers_statistics(tmp_path, monkeypatch, capsys):
    var_h = torch.ones(4, 3)
    var_h[0] = 2.0  # twice the last one at t = 0, in layer 1 only
    write_final(tmp_path / "run", torch.zeros(4, 3), var_h, layer=1)
    rows = table_rows(population_statistics(monkeypatch, capsys, tmp_path / "run", "--layer", "1", "--out", tmp_path))
    assert rows["var of recurrent term W_h h"][0] == 1.0


def test_a_run_is_plotted_and_tabulated_for_its_max_length(tmp_path, monkeypatch, capsys):
    Trainer(compose_config(*TINY_TEXT, "model=bnlstm"), tmp_path / "run").run()
    lines = population_statistics(monkeypatch, capsys, tmp_path / "run", "--out", tmp_path / "out", "--units", 3)
    assert "| statistic | t=0 | t=1 | t=2 | t=5 | t=7 | below 0.1 from t |" in lines
    rows = table_rows(lines)
    assert len(rows) == 4 and all(cells[-2] == 0 for cells in rows.values())  # the last timestep is at distance 0
    assert (tmp_path / "out" / "population_statistics.md").read_text().splitlines()[4] in lines
    assert (tmp_path / "out" / "population_statistics.png").stat().st_size > 10_000


def one_line_error(monkeypatch, capsys, *args) -> str:
    return script_error(lambda: population_statistics(monkeypatch, capsys, *args), capsys, "population_statistics.py")


@pytest.mark.parametrize(
    "model, arguments, message",
    [
        (None, [], "final.pt does not exist: {run} is not a finished run"),
        ("lnlstm", [], "{run} holds a lnlstm model, which has no batch normalization"),
        ("bnlstm", ["--layer", "1"], "--layer 1: {run}'s model has layers 0 to 0"),
        ("bnlstm", ["--layer", "-1"], "--layer -1: {run}'s model has layers 0 to 0"),
        ("bnlstm", ["--tolerance", "0"], "--tolerance must be positive, got 0.0"),
    ],
    ids=["not-finished", "no-batch-norm", "no-such-layer", "negative-layer", "zero-tolerance"],
)
def test_bad_runs_and_options_are_one_line_errors(tmp_path, monkeypatch, capsys, model, arguments, message):
    run = tmp_path / "run"
    run.mkdir()
    if model is not None:
        Trainer(compose_config(*TINY, f"model={model}", "trainer.max_steps=1"), run).run()
    assert message.format(run=run) in one_line_error(monkeypatch, capsys, run, *arguments)
