"""scripts/replay.py, in process on the trainer's tiny data (the ``tiny_data`` fixture)."""

import math
import shutil
from pathlib import Path

import torch

import pytest
from conftest import use_tiny_data
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from trainer_helpers import NO_GPU_HERE, TINY, as_if_trained_on_a_gpu, compose_config, load_script, run_script, script_error

import rbn
from rbn.trainer import Trainer

pytestmark = pytest.mark.usefixtures("tiny_data")

# BN-LSTM on seqMNIST (h0 noise: the steps draw random numbers), 3 batches an epoch, a step per log line.
PER_STEP = [*TINY, "trainer.log_interval=1"]
COLUMNS = ["step", "loss", "grad norm", "step size", "‖weight_hh_l0‖₂"]


def replay(monkeypatch, capsys, *args) -> tuple[list[dict[str, float]], list[str]]:
    """The printed rows, by column, and the lines that are not rows."""
    run_script(monkeypatch, load_script("replay"), *args)
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["step", "loss"])
    rows, other = [], lines[:header]
    for line in lines[header + 1:]:
        if not line.strip()[0].isdigit():
            other.append(line)
            continue
        values = line.split()
        row = dict(zip(COLUMNS, map(float, values[:len(COLUMNS)])))
        rest = values[len(COLUMNS):]  # "valid NAME VALUE" triples
        row.update({f"valid {rest[i + 1]}": float(rest[i + 2]) for i in range(0, len(rest), 3)})
        rows.append(row)
    return rows, other


@pytest.fixture(scope="module")
def trained_to_step_2(tmp_path_factory) -> Path:
    """A run stopped at step 2, trained once for the tests that copy it."""
    run = tmp_path_factory.mktemp("replay") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_tiny_data(monkeypatch)
        Trainer(compose_config(*PER_STEP, "trainer.max_steps=2"), run).run()
    return run


@pytest.fixture
def run_at_step_2(trained_to_step_2, tmp_path) -> tuple[Path, Path]:
    """The run stopped at step 2, to train on, and a copy of it to replay."""
    for name in ("run", "copy"):
        shutil.copytree(trained_to_step_2, tmp_path / name)
    return tmp_path / "run", tmp_path / "copy"


def test_a_replay_repeats_the_runs_next_steps_exactly(run_at_step_2, monkeypatch, capsys):
    run, copy = run_at_step_2
    Trainer(compose_config(*PER_STEP, "trainer.max_steps=5"), run).run()  # steps 3-5: into the second epoch
    events = EventAccumulator(str(run))
    events.Reload()
    logged = {tag: {e.step: e.value for e in events.Scalars(f"train/{tag}")} for tag in ("loss", "grad_norm")}
    rows, _ = replay(monkeypatch, capsys, copy, "--steps", 3)
    assert [row["step"] for row in rows] == [3, 4, 5]
    for row in rows:
        assert row["loss"] == pytest.approx(logged["loss"][row["step"]], rel=1e-5)
        assert row["grad norm"] == pytest.approx(logged["grad_norm"][row["step"]], rel=1e-5)


def test_the_step_size_and_the_recurrent_weights_norm_are_what_their_columns_say(run_at_step_2, monkeypatch, capsys):
    """The norm of the change of all parameters in the step, and W_h's largest singular value after it."""
    run, copy = run_at_step_2
    trainer = Trainer(compose_config(*PER_STEP, "trainer.max_steps=3"), run)  # resumed at step 2
    before = torch.cat([p.detach().flatten().clone() for p in trainer.model.parameters()])
    trainer.fit()
    after = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    (row,), _ = replay(monkeypatch, capsys, copy, "--steps", 1)
    assert row["step size"] == pytest.approx(float((after - before).norm()), rel=1e-4)
    weight_hh = trainer.model.recurrent.weight_hh_l0.detach()
    assert row["‖weight_hh_l0‖₂"] == pytest.approx(float(torch.linalg.matrix_norm(weight_hh, 2)), rel=1e-4)


def test_validating_during_a_replay_leaves_its_steps_as_they_were(run_at_step_2, monkeypatch, capsys):
    _, copy = run_at_step_2
    plain, _ = replay(monkeypatch, capsys, copy, "--steps", 3)
    validated, _ = replay(monkeypatch, capsys, copy, "--steps", 3, "--validate-every", 2)
    assert [row["loss"] for row in validated] == [row["loss"] for row in plain]
    assert ["valid accuracy" in row for row in validated] == [False, True, False]


def test_the_run_directory_is_left_as_it_was(run_at_step_2, monkeypatch, capsys):
    _, copy = run_at_step_2
    before = {path.name: path.read_bytes() for path in copy.iterdir() if path.is_file()}
    replay(monkeypatch, capsys, copy, "--steps", 2, "--validate-every", 1)
    assert {path.name: path.read_bytes() for path in copy.iterdir() if path.is_file()} == before


def test_an_optimizer_option_applies_from_the_checkpoint_on(run_at_step_2, monkeypatch, capsys):
    _, copy = run_at_step_2
    moving, _ = replay(monkeypatch, capsys, copy, "--steps", 2)
    frozen, header = replay(monkeypatch, capsys, copy, "--steps", 2, "--optim", "lr=0")
    assert all(row["step size"] > 0 for row in moving)
    assert [row["step size"] for row in frozen] == [0, 0]
    assert frozen[0]["‖weight_hh_l0‖₂"] == frozen[1]["‖weight_hh_l0‖₂"]
    assert "lr=0," in header[0]


def test_a_diverging_step_ends_the_replay_and_says_where(run_at_step_2, monkeypatch, capsys):
    _, copy = run_at_step_2
    forward = Trainer._forward

    def nan_loss_at_step_4(self, *args):
        logits, loss, carry = forward(self, *args)
        return logits, loss * math.nan if self.progress.step == 3 else loss, carry

    monkeypatch.setattr(Trainer, "_forward", nan_loss_at_step_4)
    rows, other = replay(monkeypatch, capsys, copy, "--steps", 5)
    assert [row["step"] for row in rows] == [3]
    assert other[-1] == "diverged: the training loss is nan at step 4"


def one_line_error(monkeypatch, capsys, *args) -> str:
    return script_error(lambda: replay(monkeypatch, capsys, *args), capsys, "replay.py")


def test_an_option_the_optimizer_lacks_is_a_one_line_error_listing_its_options(run_at_step_2, monkeypatch, capsys):
    _, copy = run_at_step_2
    error = one_line_error(monkeypatch, capsys, copy, "--optim", "betas=0.5")
    assert error.endswith("--optim betas: RMSprop has no numeric option 'betas'; it has lr, momentum, alpha, eps, weight_decay")


def test_an_option_value_torch_refuses_is_said_why():
    optimizer = torch.optim.RMSprop([torch.zeros(1, requires_grad=True)], lr=1e-3)
    assert load_script("replay").set_options(optimizer, [("lr", -1.0)]) == "lr=-1: Invalid learning rate: -1.0"
    assert optimizer.param_groups[0]["lr"] == 1e-3


def test_an_option_without_a_number_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    assert "'momentum' is not KEY=NUMBER" in one_line_error(monkeypatch, capsys, tmp_path, "--optim", "momentum")


def test_a_missing_checkpoint_is_a_one_line_error_naming_it(tmp_path, monkeypatch, capsys):
    error = one_line_error(monkeypatch, capsys, tmp_path, "--checkpoint", "best")
    assert error.endswith(f"{tmp_path / 'best.pt'} does not exist")


def test_an_unreadable_best_pt_beside_the_checkpoint_is_a_one_line_error_naming_it(run_at_step_2, monkeypatch, capsys):
    _, copy = run_at_step_2
    (copy / "best.pt").write_bytes((copy / "best.pt").read_bytes()[:2000])
    assert one_line_error(monkeypatch, capsys, copy).endswith(f"{copy / 'best.pt'} is unreadable (RuntimeError)")


def test_a_checkpoint_whose_config_this_version_cannot_rebuild_is_a_one_line_error(run_at_step_2, monkeypatch, capsys):
    _, copy = run_at_step_2
    checkpoint = torch.load(copy / "last.pt", weights_only=True)
    checkpoint["config"]["model"]["retired_option"] = 1
    torch.save(checkpoint, copy / "last.pt")
    error = one_line_error(monkeypatch, capsys, copy)
    assert error.endswith("the saved config's model.retired_option does not fit this version: "
                          "Key 'retired_option' not in 'BNLSTMConfig'")


def test_device_replays_a_run_that_trained_on_a_gpu_here(run_at_step_2, monkeypatch, capsys):
    run, copy = run_at_step_2
    Trainer(compose_config(*PER_STEP, "trainer.max_steps=3"), run).run()
    logged = {e.step: e.value for e in EventAccumulator(str(run)).Reload().Scalars("train/loss")}
    as_if_trained_on_a_gpu(copy / "last.pt")
    monkeypatch.setattr(rbn.kernels, "interpreted", lambda: False)  # as outside the tests: no kernels on a CPU
    if not torch.cuda.is_available():
        assert one_line_error(monkeypatch, capsys, copy).endswith(NO_GPU_HERE)
    (row,), _ = replay(monkeypatch, capsys, copy, "--steps", 1, "--device", "cpu")
    assert row["loss"] == pytest.approx(logged[3], rel=1e-5)
