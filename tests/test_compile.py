"""compile=True runs the same step through torch.compile: same outputs, gradients and statistics."""

import io

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from conftest import defer_weight_gradient_from, make


@pytest.mark.slow
def test_compiled_step_matches_eager(layer_name, weight_gradient):
    torch._dynamo.reset()
    counters.clear()
    eager = make(layer_name, bidirectional=True, backend="eager")
    compiled = make(layer_name, bidirectional=True, compile=True)
    compiled.load_state_dict(eager.state_dict())
    for lengths in (None, torch.tensor([6, 2, 4, 6, 3])):
        x = torch.randn(6, 5, 3)
        expected, _ = eager(x, lengths=lengths)
        output, _ = compiled(x, lengths=lengths)
        torch.testing.assert_close(output, expected)
        expected.square().sum().backward()
        output.square().sum().backward()
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        # inductor fuses and reorders the float32 sums, torch 2.4's differently from later ones
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-5, msg=name)
    for (name, b), c in zip(eager.named_buffers(), compiled.buffers()):
        torch.testing.assert_close(c, b, msg=name)
    assert counters["frames"]["ok"] >= 1  # what ran was compiled


@pytest.mark.slow
def test_compiled_step_compiles_a_few_times_not_once_per_timestep(layer_name, weight_gradient):
    torch._dynamo.reset()
    counters.clear()
    model = make(layer_name, compile=True, **({"max_length": 16} if layer_name == "BNLSTM" else {}))
    for steps in (12, 20):
        model(torch.randn(steps, 3, 3))[0].sum().backward()
    # Compiled, and below the limit past which dynamo would stop compiling the step and run it eagerly.
    assert 1 <= counters["frames"]["ok"] < torch._dynamo.config.cache_size_limit


@pytest.mark.slow
def test_a_compiled_layer_pickles_whole_and_compiles_its_step_again_when_loaded(layer_name):
    torch._dynamo.reset()
    counters.clear()
    model = make(layer_name, compile=True)
    buffer = io.BytesIO()
    torch.save(model, buffer)  # the whole module, as torch.save(model) users do
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=False)
    eager = make(layer_name, backend="eager")
    eager.load_state_dict(model.state_dict())
    x = torch.randn(6, 5, 3)
    torch.testing.assert_close(restored(x)[0], eager(x)[0])
    assert counters["frames"]["ok"] >= 1  # what ran was compiled


@pytest.mark.slow
def test_torch_compile_of_the_whole_layer_trains_as_the_layer_does(layer_name, monkeypatch):
    """``torch.compile(model)``, as users compile whole models: rbn.LSTM's fused op runs
    eagerly inside it, as nn.LSTM does, and W_h's gradient, deferred here, is not deferred
    there (dynamo traces the backward with the forward, before the loop has its h_{t-1}).
    aot_eager traces as inductor does, without its code generation."""
    defer_weight_gradient_from(monkeypatch, 0)
    torch._dynamo.reset()
    model = make(layer_name)
    x = torch.randn(3, 5, 3)
    expected, (h_n, c_n) = model(x)
    (expected.square().sum() + c_n.sum()).backward()
    gradients = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    output, (h_n, c_n) = torch.compile(model, backend="aot_eager")(x)
    (output.square().sum() + c_n.sum()).backward()
    torch.testing.assert_close(output, expected)
    for (name, p), expected_gradient in zip(model.named_parameters(), gradients):
        torch.testing.assert_close(p.grad, expected_gradient, msg=name)


@pytest.mark.slow
def test_torch_compile_of_a_whole_bn_lstm_compiles_once_for_the_sequence_length_it_trains_on():
    """Its statistics count the rows that training reached; a count read in training would be
    a guard, and the model compiled again after the first batch."""
    torch._dynamo.reset()
    counters.clear()
    model = make("BNLSTM", max_length=4)
    compiled = torch.compile(model, backend="aot_eager")
    for _ in range(3):
        compiled(torch.randn(4, 5, 3))[0].sum().backward()
    assert counters["frames"]["ok"] == 1
