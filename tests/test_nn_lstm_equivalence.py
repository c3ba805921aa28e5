"""rbn.LSTM is torch.nn.LSTM: same parameter names and layout, same outputs and gradients, with
either backend (torch's fused op, or the Python loop)."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rbn

CONFIGS = [
    dict(num_layers=1),
    dict(num_layers=2),
    dict(num_layers=2, bidirectional=True),
    dict(num_layers=2, bidirectional=True, batch_first=True),
    dict(num_layers=1, bias=False),
]


@pytest.fixture(params=["auto", "eager"])
def backend(request) -> str:
    return request.param


def pair(backend, **config):
    reference = torch.nn.LSTM(3, 5, **config)
    ours = rbn.LSTM(3, 5, backend=backend, **config)
    ours.load_state_dict(reference.state_dict())
    return reference, ours


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_parameter_names_and_shapes_match_nn_lstm(config):
    reference, ours = pair("auto", **config)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    assert [name for name, _ in ours.named_parameters()] == [name for name, _ in reference.named_parameters()]


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_outputs_and_gradients_match_nn_lstm(config, backend):
    reference, ours = pair(backend, **config)
    shape = (4, 7, 3) if config.get("batch_first") else (7, 4, 3)
    x = torch.randn(shape)
    hx = tuple(torch.randn(config["num_layers"] * (2 if config.get("bidirectional") else 1), 4, 5) for _ in range(2))
    expected, (h_ref, c_ref) = reference(x, hx)
    output, (h_n, c_n) = ours(x, hx)
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h_n, h_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c_n, c_ref, atol=1e-5, rtol=1e-5)
    (expected.square().sum() + c_ref.sum()).backward()
    (output.square().sum() + c_n.sum()).backward()
    for (name, p_ref), p in zip(reference.named_parameters(), ours.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_lengths_match_a_packed_sequence(bidirectional, backend):
    reference, ours = pair(backend, num_layers=2, bidirectional=bidirectional)
    x = torch.randn(6, 5, 3)
    lengths = torch.tensor([3, 6, 1, 4, 6])
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    expected, (h_ref, c_ref) = reference(packed)
    expected, _ = pad_packed_sequence(expected, total_length=6)
    output, (h_n, c_n) = ours(x, lengths=lengths)
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h_n, h_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c_n, c_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("enforce_sorted", [False, True])
def test_a_packed_sequence_gives_nn_lstms_packed_output_and_state(batch_first, enforce_sorted, backend):
    """Lengths with ties, so that the output's order of sequences is the input's, not a sort's."""
    reference, ours = pair(backend, num_layers=2, bidirectional=True, batch_first=batch_first)
    lengths = torch.tensor([6, 4, 4, 2, 1] if enforce_sorted else [4, 6, 1, 4, 2])
    x = torch.randn((5, 6, 3) if batch_first else (6, 5, 3))
    hx = tuple(torch.randn(4, 5, 5) for _ in range(2))
    packed = pack_padded_sequence(x, lengths, batch_first, enforce_sorted)
    expected, (h_ref, c_ref) = reference(packed, hx)
    output, (h_n, c_n) = ours(packed, hx)
    assert output.batch_sizes.equal(expected.batch_sizes)
    for indices in ("sorted_indices", "unsorted_indices"):
        assert (getattr(output, indices) is None) == enforce_sorted
        assert enforce_sorted or getattr(output, indices).equal(getattr(expected, indices))
    torch.testing.assert_close(output.data, expected.data, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close((h_n, c_n), (h_ref, c_ref), atol=1e-5, rtol=1e-5)


def test_nn_lstms_optional_arguments_are_taken_in_its_order():
    reference = torch.nn.LSTM(3, 5, 2, True, True, 0.5, True, 0, "cpu", torch.float64)
    ours = rbn.LSTM(3, 5, 2, True, True, 0.5, True, 0, "cpu", torch.float64)
    ours.flatten_parameters()
    for attribute in ("num_layers", "bias", "batch_first", "dropout", "bidirectional", "proj_size"):
        assert getattr(ours, attribute) == getattr(reference, attribute), attribute
    assert {p.dtype for p in ours.parameters()} == {torch.float64}


def test_unbatched_input_matches_nn_lstm(backend):
    reference, ours = pair(backend, num_layers=2)
    x = torch.randn(7, 3)
    expected, (h_ref, _) = reference(x)
    output, (h_n, _) = ours(x)
    assert output.shape == (7, 5) and h_n.shape == (2, 5)
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h_n, h_ref, atol=1e-5, rtol=1e-5)


def test_a_layer_prints_its_options_as_nn_lstm_does():
    options = dict(num_layers=2, bias=False, batch_first=True, dropout=0.5, bidirectional=True)
    expected = repr(torch.nn.LSTM(3, 4, **options)).removeprefix("LSTM(").removesuffix(")")
    for layer in (rbn.LSTM(3, 4, **options), rbn.LNLSTM(3, 4, **options), rbn.BNLSTM(3, 4, max_length=7, **options)):
        assert layer.extra_repr().startswith(f"{expected}, init=")


def test_a_layer_prints_the_options_that_change_what_it_computes_in_training():
    layer = rbn.LSTM(3, 4, h0_noise_std=0.5, compile=True)
    assert layer.extra_repr().endswith(", init='orthogonal', h0_noise_std=0.5, compile=True")


@pytest.mark.parametrize("bias", [True, False])
def test_all_weights_are_nn_lstms(bias):
    options = dict(num_layers=2, bias=bias, bidirectional=True)
    reference, ours = torch.nn.LSTM(3, 4, **options), rbn.LSTM(3, 4, **options)
    names = {id(parameter): name for name, parameter in ours.named_parameters()}
    assert [[names[id(weight)] for weight in weights] for weights in ours.all_weights] == reference._all_weights


def test_uniform_init_is_nn_lstm_init():
    torch.manual_seed(1)
    reference = torch.nn.LSTM(3, 5, num_layers=2)
    torch.manual_seed(1)
    ours = rbn.LSTM(3, 5, num_layers=2, init="uniform")
    for (name, expected), actual in zip(reference.named_parameters(), ours.parameters()):
        torch.testing.assert_close(actual, expected, msg=name)
