"""rbn.LSTM's backends: "auto" runs torch's fused LSTM op, "eager" the Python loop, and the two
compute the same outputs, states and gradients."""

import pytest
import torch

import rbn
from conftest import make


@pytest.fixture
def fused_calls(monkeypatch):
    """The calls of ``torch._VF.lstm``, the op that torch.nn.LSTM runs."""
    calls = []
    lstm = torch._VF.lstm

    def counted(*args):
        calls.append(args)
        return lstm(*args)

    monkeypatch.setattr(torch._VF, "lstm", counted)
    return calls


def pair(**kwargs):
    """The same float64 LSTM with each backend."""
    auto = make("LSTM", **kwargs).double()
    eager = make("LSTM", backend="eager", **kwargs).double()
    eager.load_state_dict(auto.state_dict())
    return auto, eager


def run(model, x, hx=None, **kwargs):
    """Forward and backward; returns the outputs and the gradients of everything."""
    x = x.clone().requires_grad_()
    hx = None if hx is None else tuple(s.clone().requires_grad_() for s in hx)
    output, (h_n, c_n) = model(x, hx, **kwargs)
    (output.square().sum() + h_n.square().sum() + c_n.sum()).backward()
    gradients = {name: p.grad for name, p in model.named_parameters()}
    gradients["input"] = x.grad
    if hx is not None:
        gradients["h_0"], gradients["c_0"] = hx[0].grad, hx[1].grad
    return (output, h_n, c_n), gradients


def assert_same(auto, eager, x, hx=None, **kwargs):
    (values, gradients), (expected, expected_gradients) = run(auto, x, hx, **kwargs), run(eager, x, hx, **kwargs)
    for name, value, reference in zip(("output", "h_n", "c_n"), values, expected):
        torch.testing.assert_close(value, reference, msg=name)
    assert gradients.keys() == expected_gradients.keys()
    for name, gradient in gradients.items():
        torch.testing.assert_close(gradient, expected_gradients[name], msg=name)


def state(layers_and_directions, batch=3, hidden=4):
    return tuple(torch.randn(layers_and_directions, batch, hidden, dtype=torch.float64) for _ in range(2))


def test_auto_runs_the_fused_op_once_per_layer(fused_calls):
    model = make("LSTM", num_layers=2, bidirectional=True)
    model(torch.randn(5, 3, 3))
    model(torch.randn(5, 3, 3), lengths=[2, 5, 4])
    assert len(fused_calls) == 4
    packed = fused_calls[2]
    assert torch.equal(packed[1], torch.tensor([3, 3, 2, 2, 1]))  # the PackedSequence overload: batch sizes


@pytest.mark.parametrize("kwargs", [dict(backend="eager"), dict(compile=True)], ids=str)
def test_eager_backend_and_compiled_step_run_the_python_loop(fused_calls, kwargs):
    model = make("LSTM", **kwargs)
    model._step = rbn.cells.LSTMCell.__call__  # the compiled step's choice of loop, without compiling it
    model(torch.randn(5, 3, 3))
    assert fused_calls == []


def test_auto_under_cpu_autocast_runs_the_python_loop(fused_calls):
    """oneDNN's LSTM has no bf16 on CPUs without bf16 instructions: nn.LSTM fails there."""
    model = make("LSTM")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(torch.randn(5, 3, 3))[0]
    assert fused_calls == []
    assert torch.isfinite(output).all()


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_layers=2, bidirectional=True),
        dict(num_layers=2, bidirectional=True, batch_first=True),
        dict(bias=False),
        dict(num_layers=2, dropout=0.5),  # in eval mode: no dropout
    ],
    ids=str,
)
def test_auto_equals_eager_with_initial_state(kwargs):
    auto, eager = pair(**kwargs)
    auto.eval(), eager.eval()
    x = torch.randn((3, 5, 3) if kwargs.get("batch_first") else (5, 3, 3), dtype=torch.float64)
    assert_same(auto, eager, x, state(auto.num_layers * auto.num_directions))


def test_auto_equals_eager_without_initial_state():
    assert_same(*pair(num_layers=2), torch.randn(5, 3, 3, dtype=torch.float64))


def test_auto_equals_eager_on_unbatched_input():
    auto, eager = pair(num_layers=2, bidirectional=True)
    hx = tuple(s[:, 0] for s in state(4))
    assert_same(auto, eager, torch.randn(5, 3, dtype=torch.float64), hx)
    assert auto(torch.randn(5, 3, dtype=torch.float64))[0].shape == (5, 8)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_auto_equals_eager_on_padded_batches(bidirectional, batch_first):
    auto, eager = pair(num_layers=2, bidirectional=bidirectional, batch_first=batch_first)
    x = torch.randn((4, 5, 3) if batch_first else (5, 4, 3), dtype=torch.float64)
    lengths = torch.tensor([2, 5, 1, 4])  # unsorted, one full, one of a single step
    assert_same(auto, eager, x, state(auto.num_layers * auto.num_directions, batch=4), lengths=lengths)
    output = auto(x, lengths=lengths)[0]
    padded = torch.arange(5)[:, None] >= lengths
    assert (output.transpose(0, 1) if batch_first else output)[padded].eq(0).all()


def test_auto_equals_eager_in_training_with_h0_noise_and_dropout():
    """Both draw the noise in ``_initial_state`` and the dropout masks with ``F.dropout`` on
    (T, B, features), in the same order, so the same seed gives the same numbers."""
    auto, eager = pair(num_layers=3, dropout=0.5, h0_noise_std=0.3)
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    torch.manual_seed(1)
    values, _ = run(auto, x)
    torch.manual_seed(1)
    expected, _ = run(eager, x)
    for value, reference in zip(values, expected):
        torch.testing.assert_close(value, reference)


def test_backend_is_shown_unless_auto():
    assert "backend" not in repr(make("LSTM"))
    assert "backend='eager'" in repr(make("LSTM", backend="eager"))


def test_auto_equals_eager_when_every_sequence_ends_before_the_last_step():
    """The fused op on the packed data gives as many steps as the longest sequence; the
    output is padded back to the input's T, as the eager loop gives it."""
    auto, eager = pair(num_layers=2)
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    lengths = torch.tensor([3, 2, 1])
    assert auto(x, lengths=lengths)[0].shape == (5, 3, 4)
    assert_same(auto, eager, x, lengths=lengths)
