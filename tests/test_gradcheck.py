"""Analytical gradients agree with finite differences in float64, for every layer and path."""

import math

import pytest
import torch

from conftest import defer_weight_gradient_from, make, normalize_input_per_step_on


def check(model, x, by=torch.autograd.gradcheck, **kwargs):
    model = model.double()

    def f(x, *params):
        output, (h_n, c_n) = torch.func.functional_call(model, dict(zip(names, params)), (x,), kwargs)
        return output, h_n, c_n

    names = [name for name, _ in model.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in model.parameters())
    # Fast mode compares random projections of the Jacobian, not all its entries: 5x faster,
    # and with tolerances 100x tighter than the defaults it fails on a deferred W_h gradient
    # 0.1 % off, which the full Jacobian at the defaults let pass.
    assert by(f, (x.double().requires_grad_(), *params), fast_mode=True, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_gradients_are_exact(layer_backend, mode):
    name, backend = layer_backend
    model = make(name, input_size=2, hidden_size=2, num_layers=2, bidirectional=True, backend=backend)
    model.train(mode == "train")
    check(model, torch.randn(4, 3, 2))


def test_gradients_are_exact_with_padding(layer_backend):
    name, backend = layer_backend
    model = make(name, input_size=2, hidden_size=2, bidirectional=True, backend=backend)
    check(model, torch.randn(5, 4, 2), lengths=torch.tensor([5, 2, 4, 5]))


def test_gradients_are_exact_when_every_sequence_ends_before_the_last_step(input_normalization):
    """Steps with no valid sequence have no statistics, which must not leave 0/0 in the backward."""
    model = make("BNLSTM", input_size=2, hidden_size=2, bidirectional=True)
    check(model, torch.randn(5, 4, 2), lengths=torch.tensor([3, 2, 3, 2]))


def test_gradients_are_exact_beyond_max_length():
    check(make("BNLSTM", input_size=2, hidden_size=2, max_length=2), torch.randn(5, 3, 2))


def test_gradients_are_exact_with_a_single_sequence_left_beyond_max_length():
    """Its steps normalize with the last row of population statistics, which the same
    training step then updates in place (with momentum 0, to the same values, so that
    gradcheck's repeated calls see one function)."""
    model = make("BNLSTM", input_size=2, hidden_size=2, max_length=2, momentum=0.0)
    check(model, torch.randn(5, 3, 2), lengths=torch.tensor([5, 2, 3]))


def test_gradients_are_exact_with_shared_input_statistics():
    model = make("BNLSTM", input_size=2, hidden_size=2, input_stats="shared")
    check(model, torch.randn(5, 4, 2), lengths=torch.tensor([5, 2, 4, 5]))
    check(model, torch.randn(5, 4, 2))


def test_gradients_are_exact_either_way_of_computing_the_recurrent_weight_gradient(layer_name, weight_gradient, input_normalization):
    model = make(layer_name, input_size=2, hidden_size=2, bidirectional=True, backend="eager")
    check(model, torch.randn(5, 4, 2), lengths=torch.tensor([5, 2, 4, 5]))


def test_deferred_recurrent_weight_gradient_equals_the_per_step_one(layer_name, monkeypatch):
    model = make(layer_name, num_layers=2, backend="eager").double()
    x = torch.randn(6, 5, 3, dtype=torch.float64)
    gradients = []
    for threshold in (0, 10**9):
        defer_weight_gradient_from(monkeypatch, threshold)
        model.zero_grad()
        model(x, lengths=torch.tensor([6, 2, 4, 6, 3]))[0].square().sum().backward()
        gradients.append([p.grad.clone() for p in model.parameters()])
    for deferred, per_step in zip(*gradients):
        torch.testing.assert_close(deferred, per_step)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_second_derivatives_are_exact_with_the_recurrent_weight_gradient_per_step(layer_backend, mode, monkeypatch):
    """The escape that the refusal below names; rbn.LSTM's "auto" is torch's own LSTM."""
    name, backend = layer_backend
    defer_weight_gradient_from(monkeypatch, math.inf)
    # Three units, not two: LN over two values is nearly a sign, too curved for finite differences.
    model = make(name, input_size=2, hidden_size=3, backend=backend).train(mode == "train")
    check(model, torch.randn(3, 2, 2), by=torch.autograd.gradgradcheck)


@pytest.mark.parametrize("wrt", ["input", "parameters"])
def test_a_second_derivative_through_the_deferred_recurrent_weight_gradient_is_refused_in_one_line(layer_name, wrt, monkeypatch):
    """The steps multiply by a detached W_h: a graph built through them would leave W_h out of
    second derivatives, silently."""
    defer_weight_gradient_from(monkeypatch, 4)
    model = make(layer_name, hidden_size=4, backend="eager")
    x = torch.randn(3, 2, 3, requires_grad=True)
    loss = model(x)[0].square().sum()
    with pytest.raises(RuntimeError) as refusal:
        torch.autograd.grad(loss, x if wrt == "input" else list(model.parameters()), create_graph=True)
    assert str(refusal.value) == (
        f"W_h's gradient as one GEMM after the loop (rbn.cells.{layer_name}Cell.defer_from_hidden_size = 4 <= "
        "hidden_size 4) cannot be differentiated twice (a backward with create_graph=True); set it to math.inf to "
        "compute it per step, differentiably"
    )


def test_torch_func_grad_over_the_deferred_recurrent_weight_gradient_is_refused_in_one_line_naming_the_way_out(monkeypatch):
    """torch.func.grad builds a graph in its backward, as create_graph=True does."""
    defer_weight_gradient_from(monkeypatch, 4)
    model = make("LNLSTM", hidden_size=4, backend="eager")
    params = {name: p.detach() for name, p in model.named_parameters()}
    x = torch.randn(3, 2, 3)

    def loss(params):
        return torch.func.functional_call(model, params, (x,))[0].square().sum()

    with pytest.raises(RuntimeError, match=r"^W_h's gradient as one GEMM .* set it to math.inf"):
        torch.func.grad(loss)(params)
    defer_weight_gradient_from(monkeypatch, math.inf)
    model.zero_grad()
    loss(dict(model.named_parameters())).backward()
    for name, gradient in torch.func.grad(loss)(params).items():
        torch.testing.assert_close(gradient, model.get_parameter(name).grad, msg=name)


@pytest.mark.parametrize("layer_name, mode", [("BNLSTM", "train"), ("BNLSTM", "eval"), ("LNLSTM", "train")])
def test_gradients_are_exact_either_way_of_normalizing_the_input_term(input_normalization, layer_name, mode):
    """LN-LSTM keeps no statistics and no dropout at one layer: its eval mode is its training mode."""
    model = make(layer_name, input_size=2, hidden_size=2, bidirectional=True).train(mode == "train")
    check(model, torch.randn(5, 4, 2), lengths=torch.tensor([5, 2, 4, 5]))


@pytest.mark.parametrize("layer_name, mode", [("BNLSTM", "train"), ("BNLSTM", "eval"), ("LNLSTM", "train")])
def test_normalizing_the_input_term_per_step_equals_normalizing_it_whole(layer_name, mode, monkeypatch):
    """Padded; the outputs and every gradient, and BN-LSTM's running statistics afterwards,
    with a step of a single sequence (population statistics) and steps beyond max_length
    (LN-LSTM keeps no statistics: its eval mode is its training mode)."""
    options = {"max_length": 4} if layer_name == "BNLSTM" else {}
    model = make(layer_name, num_layers=2, **options).double().train(mode == "train")
    with torch.no_grad():  # population statistics away from their initial values, for eval
        for name, buffer in model.named_buffers():
            if "running" in name:
                buffer.uniform_(0.5, 1.5)
    initial = {name: value.clone() for name, value in model.state_dict().items()}
    x = torch.randn(6, 5, 3, dtype=torch.float64)
    results = []
    for devices in (("cpu",), ()):
        normalize_input_per_step_on(monkeypatch, devices)
        model.load_state_dict(initial)
        model.zero_grad()
        output, _ = model(x, lengths=torch.tensor([6, 2, 4, 3, 1]))
        output.square().sum().backward()
        gradients = [p.grad.clone() for p in model.parameters()]
        statistics = [value.clone() for name, value in model.state_dict().items() if "running" in name or "tracked" in name]
        results.append([output, *gradients, *statistics])
    for per_step, whole in zip(*results):
        torch.testing.assert_close(per_step, whole)
