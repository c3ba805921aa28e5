"""scripts/long_sequences.py, in process on the trainer's tiny corpus (``tiny_text``: test
streams of 34 characters at batch size 4), with runs trained on segments of 8."""

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import use_tiny_data
from omegaconf import OmegaConf
from trainer_helpers import (
    TINY, TINY_TEXT, as_if_trained_on_a_gpu, compose_config, load_script, run_script, script_error, tiny_text,
)

import data
import rbn.trainer
from rbn.config import to_dict
from rbn.trainer import Trainer, build_dataset, build_model

MODELS = ("bnlstm", "lstm", "lnlstm")
TRAINING_LENGTH = 8


@pytest.fixture(scope="module")
def trainers(tmp_path_factory):
    """One finished tiny run per model, trained once for the module's tests, with the whole
    test split evaluated (its last batch padded); the tiny corpus stays in place of
    Shakespeare until the module's tests are done."""
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as patch:
        use_tiny_data(patch)
        runs = {}
        for model in MODELS:
            cfg = compose_config(*TINY_TEXT, f"model={model}", "trainer.limit_eval_batches=null")
            runs[model] = Trainer(cfg, root / model)
            runs[model].run()
        yield runs


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    """The script writes to the current directory unless told --out: each test's own."""
    monkeypatch.chdir(tmp_path)


def long_sequences(monkeypatch, capsys, *args) -> list[str]:
    """The script's printed lines."""
    run_script(monkeypatch, load_script("long_sequences"), *args)
    return capsys.readouterr().out.splitlines()


def table_rows(lines: list[str]) -> dict[tuple[str, str], list[float]]:
    """{(run, statistics): bpc at each length} from the printed table."""
    rows = {}
    for line in lines:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if line.startswith("|") and cells[0] in MODELS:
            rows[cells[0], cells[2]] = [float(cell) for cell in cells[4:]]
    return rows


def recorded_test_bpc(trainer: Trainer) -> float:
    """The run's test bpc as its final evaluation wrote it."""
    return json.loads((trainer.run_dir / "results.json").read_text())["test"]["bpc"]


def run_dirs(trainers) -> list[Path]:
    return [trainer.run_dir for trainer in trainers.values()]


def test_with_the_state_carried_the_training_length_gives_the_trainers_test_bpc(trainers, monkeypatch, capsys):
    results = {model: recorded_test_bpc(trainer) for model, trainer in trainers.items()}
    expected = {
        ("bnlstm", "population"): results["bnlstm"],
        # The trainer tests with population statistics only; its own evaluation with batch statistics:
        ("bnlstm", "batch"): trainers["bnlstm"].evaluate("test", batch_statistics=True)["bpc"],
        ("lstm", "-"): results["lstm"],
        ("lnlstm", "-"): results["lnlstm"],
    }
    rows = table_rows(long_sequences(monkeypatch, capsys, *run_dirs(trainers), "--lengths", TRAINING_LENGTH, "--carry-state"))
    assert rows.keys() == expected.keys()
    for row, bpc in expected.items():
        assert rows[row][0] == pytest.approx(bpc, abs=5e-5), row  # printed to 4 decimals


@pytest.fixture(scope="module")
def independent_bnlstm(tmp_path_factory):
    """A tiny BN-LSTM run trained on independent segments."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(data, "shakespeare", tiny_text)
        cfg = compose_config(*TINY_TEXT, "model=bnlstm", "data.segments=independent", "trainer.limit_eval_batches=null")
        trainer = Trainer(cfg, tmp_path_factory.mktemp("independent") / "bnlstm")
        trainer.run()
        yield trainer


def test_with_the_state_carried_a_run_trained_on_independent_segments_has_its_test_bpc_at_every_length(
    independent_bnlstm, monkeypatch, capsys
):
    arguments = [independent_bnlstm.run_dir, "--lengths", TRAINING_LENGTH, 5, 13, "--carry-state"]
    bpc = table_rows(long_sequences(monkeypatch, capsys, *arguments))["bnlstm", "population"]
    assert bpc == pytest.approx([recorded_test_bpc(independent_bnlstm)] * 3, abs=5e-5)


def test_limit_batches_evaluates_the_first_batches_as_the_trainers_limit_does(trainers, monkeypatch, capsys):
    lstm = trainers["lstm"]
    monkeypatch.setattr(lstm.cfg.trainer, "limit_eval_batches", 2)
    expected = lstm.evaluate("test")["bpc"]
    arguments = [lstm.run_dir, "--lengths", TRAINING_LENGTH, "--carry-state", "--limit-batches", 2]
    rows = table_rows(long_sequences(monkeypatch, capsys, *arguments))
    assert rows["lstm", "-"][0] == pytest.approx(expected, abs=5e-5)
    assert expected != pytest.approx(recorded_test_bpc(lstm), abs=1e-3)  # the limit leaves batches out


@pytest.mark.parametrize("model", ["lstm", "lnlstm"])  # the layers that never mix the sequences of a batch
def test_each_sequence_is_predicted_as_if_read_alone_from_a_zero_state(trainers, model, monkeypatch, capsys):
    length = 2 * TRAINING_LENGTH
    run_dir = trainers[model].run_dir
    final = torch.load(run_dir / "final.pt", weights_only=True)
    cfg = OmegaConf.create(final["config"])
    corpus = build_dataset(cfg)
    lm = build_model(cfg, corpus)
    lm.load_state_dict(final["model"])
    lm.eval()
    nats, count = 0.0, 0
    with torch.no_grad():
        for inputs, targets in data.CharCorpus(corpus.vocab, corpus.splits, length).batches("test", cfg.trainer.batch_size):
            for sequence, following in zip(inputs, targets):
                valid = int((following != data.IGNORE_INDEX).sum())
                if valid:
                    _, loss, _ = lm(sequence[None, :valid], following[None, :valid])
                    nats += float(loss) * valid
                    count += valid
    rows = table_rows(long_sequences(monkeypatch, capsys, run_dir, "--lengths", length))
    assert rows[model, "-"][0] == pytest.approx(data.bits_per_character(nats / count), abs=5e-5)


def test_lengths_beyond_max_length_give_finite_bpc(trainers, monkeypatch, capsys):
    bnlstm = trainers["bnlstm"]
    assert bnlstm.model.recurrent.max_length == TRAINING_LENGTH
    lengths = [TRAINING_LENGTH, 2 * TRAINING_LENGTH, 4 * TRAINING_LENGTH]
    rows = table_rows(long_sequences(monkeypatch, capsys, bnlstm.run_dir, "--lengths", *lengths))
    assert rows.keys() == {("bnlstm", "population"), ("bnlstm", "batch")}
    for row, bpc in rows.items():
        assert len(bpc) == len(lengths) and all(math.isfinite(value) for value in bpc), row


def test_a_length_of_the_whole_test_stream_is_measured(trainers, monkeypatch, capsys):
    rows = table_rows(long_sequences(monkeypatch, capsys, trainers["lstm"].run_dir, "--lengths", 34))  # the streams' length
    assert len(rows[("lstm", "-")]) == 1


def test_writes_the_printed_table_and_a_figure(trainers, tmp_path, monkeypatch, capsys):
    lines = long_sequences(monkeypatch, capsys, *run_dirs(trainers), "--lengths", 8, 16, "--out", tmp_path)
    written = (tmp_path / "long_sequences.md").read_text()
    assert len(table_rows(written.splitlines())) == 4  # BN-LSTM twice, LSTM, LN-LSTM
    assert "\n".join(lines).startswith(written.rstrip("\n"))
    figure = (tmp_path / "long_sequences.png").read_bytes()
    assert figure.startswith(b"\x89PNG") and len(figure) < 150_000


def test_a_run_trained_with_the_kernels_on_a_gpu_is_measured_with_the_eager_loop_here(trainers, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "bnlstm"
    run_dir.mkdir()
    (run_dir / "final.pt").write_bytes((trainers["bnlstm"].run_dir / "final.pt").read_bytes())
    as_if_trained_on_a_gpu(run_dir / "final.pt")
    monkeypatch.setattr(rbn.kernels, "interpreted", lambda: False)  # as outside the tests: no kernels on a CPU
    rows = table_rows(long_sequences(monkeypatch, capsys, run_dir, "--lengths", TRAINING_LENGTH, "--device", "cpu"))
    expected = table_rows(long_sequences(monkeypatch, capsys, trainers["bnlstm"].run_dir, "--lengths", TRAINING_LENGTH))
    assert rows == expected


def write_final(run_dir: Path, *overrides: str) -> Path:
    """A final.pt that holds only a config: enough for the checks made before any model is built."""
    run_dir.mkdir()
    torch.save({"config": to_dict(compose_config(*overrides)), "model": {}, "permutation": None}, run_dir / "final.pt")
    return run_dir


def one_line_error(monkeypatch, capsys, *args) -> str:
    return script_error(lambda: long_sequences(monkeypatch, capsys, *args), capsys, "long_sequences.py")


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["{tmp}"], "final.pt does not exist"),
        (["{mnist}"], "is a seqmnist run; this script reads character-level language models"),
        (["{lstm}", "--lengths", "8", "35"], "--lengths 35 is longer than the test streams of {lstm} (34 characters at batch size 4)"),
        (["{lstm}", "--lengths", "8", "0"], "argument --lengths: must be a positive integer, got 0"),
        (["{lstm}", "--limit-batches", "0"], "argument --limit-batches: must be a positive integer, got 0"),
        (["{lstm}", "{tmp}/other/{name}"], "the RUN_DIRs' names label their rows and lines, and two are the same"),
    ],
    ids=["no-final-pt", "classification-run", "longer-than-streams", "zero-length", "zero-batches", "same-names"],
)
def test_bad_runs_and_options_are_one_line_errors(trainers, tmp_path, monkeypatch, capsys, arguments, message):
    lstm = trainers["lstm"].run_dir
    places = {"tmp": tmp_path, "mnist": write_final(tmp_path / "mnist", *TINY), "lstm": lstm, "name": lstm.name}
    assert message.format(**places) in one_line_error(monkeypatch, capsys, *(argument.format(**places) for argument in arguments))


@pytest.mark.parametrize(
    "write, message",
    [
        (lambda path: path.write_bytes(b"PK\x03\x04 truncated"), "final.pt is unreadable (RuntimeError)"),
        (lambda path: torch.save([1, 2], path), "final.pt is not a final.pt of rbn's trainer"),
    ],
    ids=["truncated", "not-a-checkpoint"],
)
def test_a_final_pt_the_trainer_did_not_write_is_a_one_line_error_naming_it(tmp_path, monkeypatch, capsys, write, message):
    write(tmp_path / "final.pt")
    error = one_line_error(monkeypatch, capsys, tmp_path)
    assert f"{tmp_path / 'final.pt'}" in error and message in error


def test_a_run_whose_data_are_missing_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    def unavailable(**options):
        raise data.DataError("shakespeare.txt is missing: place it there")

    monkeypatch.setattr(data, "shakespeare", unavailable)
    run_dir = write_final(tmp_path / "run", *TINY_TEXT)
    error = one_line_error(monkeypatch, capsys, run_dir)
    assert f"the shakespeare data of {run_dir} are not available: shakespeare.txt is missing" in error


def write_final_of_a_larger_vocabulary(run_dir: Path) -> Path:
    """The final.pt of a tiny LSTM run made when its corpus had one more symbol (as Shakespeare
    had its asterisks): the config builds a model of one symbol fewer now."""
    cfg = compose_config(*TINY_TEXT, "model=lstm")
    corpus = tiny_text(segment_length=TRAINING_LENGTH)
    then = data.CharCorpus([*corpus.vocab, "*"], corpus.splits, corpus.segment_length)
    run_dir.mkdir()
    final = {"config": to_dict(cfg), "model": build_model(cfg, then).state_dict(), "permutation": None}
    torch.save(final, run_dir / "final.pt")
    return run_dir


def test_a_final_pt_that_the_data_no_longer_build_is_a_one_line_error_naming_it_and_the_first_mismatch(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(data, "shakespeare", tiny_text)
    run_dir = write_final_of_a_larger_vocabulary(tmp_path / "run")
    error = one_line_error(monkeypatch, capsys, run_dir, "--lengths", TRAINING_LENGTH)
    first_mismatch = "(size mismatch for recurrent.weight_ih_l0: copying a param with shape torch.Size([16, 20])"
    assert f"{run_dir / 'final.pt'} does not fit the model its config builds now {first_mismatch}" in error


def test_a_final_pt_that_does_not_fit_is_refused_before_any_run_is_measured(trainers, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(rbn.trainer, "Metrics", lambda *_: pytest.fail("a run was measured"))
    arguments = [trainers["lstm"].run_dir, write_final_of_a_larger_vocabulary(tmp_path / "run"), "--lengths", TRAINING_LENGTH]
    assert "does not fit the model its config builds now" in one_line_error(monkeypatch, capsys, *arguments)


def test_an_out_that_cannot_be_a_directory_is_refused_before_any_model_is_measured(trainers, tmp_path, monkeypatch, capsys):
    (tmp_path / "taken").write_text("a file")
    monkeypatch.setattr(rbn.trainer, "Metrics", lambda *_: pytest.fail("a model was measured"))
    arguments = [trainers["lstm"].run_dir, "--lengths", TRAINING_LENGTH, "--out", tmp_path / "taken"]
    assert "cannot create --out" in one_line_error(monkeypatch, capsys, *arguments)
