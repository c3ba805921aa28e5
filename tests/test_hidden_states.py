"""recording_hidden_states: the h_t of every step as the time loop made them, through which
autograd gives d loss / d h_t (the paper's gradient flow)."""

import pytest
import torch

import rbn
from conftest import make


def test_recorded_states_are_the_output_of_every_step(layer_name):
    layer = make(layer_name, num_layers=2, bidirectional=True)
    x = torch.randn(5, 3, 3)
    with layer.recording_hidden_states() as recorded:
        output, _ = layer(x)
    assert [len(steps) for steps in recorded] == [5, 5, 5, 5]  # layer 0 and 1, each both ways
    top_forward, top_backward = recorded[2], recorded[3]
    torch.testing.assert_close(torch.stack(top_forward), output[..., :4])
    torch.testing.assert_close(torch.stack(top_backward[::-1]), output[..., 4:])  # run backward in time


def test_gradients_through_the_recorded_states_are_those_of_an_nn_lstm_cell_loop():
    """The reference adds a zero leaf to each h_t of an nn.LSTMCell loop: its gradient is
    d loss / d h_t through every later step."""
    layer = rbn.LSTM(3, 4).double()
    cell = torch.nn.LSTMCell(3, 4).double()
    cell.load_state_dict({name.removesuffix("_l0"): value for name, value in layer.state_dict().items()})
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    with layer.recording_hidden_states() as recorded:
        loss = layer(x)[0][-1].square().sum()  # on the last step, as the paper's Figure 1
    gradients = torch.autograd.grad(loss, recorded[0])
    h = c = torch.zeros(2, 4, dtype=torch.float64)
    leaves = []
    for x_t in x:
        h, c = cell(x_t, (h, c))
        leaves.append(torch.zeros_like(h, requires_grad=True))
        h = h + leaves[-1]
    expected = torch.autograd.grad(h.square().sum(), leaves)
    for t, (gradient, reference) in enumerate(zip(gradients, expected)):
        torch.testing.assert_close(gradient, reference, msg=f"step {t}")
    assert gradients[0].abs().sum() > 0  # the earliest step is reached through the recurrence alone


@pytest.mark.parametrize(("layer_name", "backend"), [("LSTM", "auto"), ("BNLSTM", "triton"), ("LNLSTM", "triton")])
def test_recording_runs_the_eager_loop_whatever_the_backend(layer_name, backend, monkeypatch):
    eager = make(layer_name, backend="eager")
    layer = make(layer_name, backend=backend)
    layer.load_state_dict(eager.state_dict())
    monkeypatch.setattr(torch._VF, "lstm", None)  # fused paths would fail on these
    monkeypatch.setattr(layer.cell_class, "fused_recurrence", None, raising=False)
    x = torch.randn(5, 3, 3)
    with layer.recording_hidden_states() as recorded:
        output, _ = layer(x)
    assert len(recorded) == 1
    torch.testing.assert_close(output, eager(x)[0])


def test_with_lengths_each_step_holds_the_sequences_still_running():
    layer = make("LNLSTM")
    with layer.recording_hidden_states() as recorded:
        layer(torch.randn(5, 3, 3), lengths=[2, 5, 4])
    assert [len(h) for h in recorded[0]] == [3, 3, 2, 2, 1]


def test_nothing_is_recorded_outside_the_context_even_after_an_error(layer_name):
    layer = make(layer_name)
    with pytest.raises(ValueError), layer.recording_hidden_states() as recorded:
        layer(torch.randn(5, 3, 7))  # wrong input size
    layer(torch.randn(5, 3, 3))
    assert recorded == []
