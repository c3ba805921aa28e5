"""Properties every layer must have: causality, batch (in)dependence, padding invariance."""

import copy

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from conftest import make

T, B = 6, 5


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_output_at_t_does_not_depend_on_later_inputs(layer_name, mode):
    model = make(layer_name).train(mode == "train")
    x = torch.randn(T, B, 3)
    later = x.clone()
    later[4:] = torch.randn(T - 4, B, 3)
    torch.testing.assert_close(model(later)[0][:4], model(x)[0][:4])
    assert not torch.allclose(model(later)[0][4:], model(x)[0][4:])


@pytest.mark.parametrize("layer_name", ["LSTM", "LNLSTM"])
def test_sequences_do_not_affect_each_other_in_training(layer_name):
    model = make(layer_name).train()
    x = torch.randn(T, B, 3)
    other = x.clone()
    other[:, 1:] = torch.randn(T, B - 1, 3)
    torch.testing.assert_close(model(other)[0][:, 0], model(x)[0][:, 0])


def test_layer_norm_trains_on_a_single_sequence():
    output, _ = make("LNLSTM").train()(torch.randn(T, 1, 3))
    assert output.shape == (T, 1, 4)


def test_batch_norm_mixes_sequences_in_training_but_not_in_eval():
    model = make("BNLSTM")
    x = torch.randn(T, B, 3)
    other = x.clone()
    other[:, 1:] = torch.randn(T, B - 1, 3)
    assert not torch.allclose(model.train()(other)[0][:, 0], model(x)[0][:, 0])
    model.eval()
    torch.testing.assert_close(model(other)[0][:, 0], model(x)[0][:, 0])


def test_eval_on_one_sequence_equals_its_row_in_a_batch(layer_name):
    model = make(layer_name, num_layers=2, bidirectional=True)
    model.train()(torch.randn(T, B, 3))  # move BN's running statistics away from their start
    model.eval()
    x = torch.randn(T, B, 3)
    batched, (h_n, _) = model(x)
    single, (h_1, _) = model(x[:, 2:3])
    torch.testing.assert_close(single[:, 0], batched[:, 2])
    torch.testing.assert_close(h_1[:, 0], h_n[:, 2])


PADDING = {"large": lambda x: 100 * torch.randn_like(x), "non-finite": lambda x: torch.full_like(x, float("nan"))}


@pytest.mark.parametrize("padding", PADDING)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_padding_content_does_not_change_valid_outputs_or_gradients(layer_backend, mode, padding):
    layer_name, backend = layer_backend
    model = make(layer_name, num_layers=2, bidirectional=True, backend=backend).train(mode == "train")
    twin = copy.deepcopy(model)
    lengths = torch.tensor([6, 2, 4, 6, 3])
    valid = torch.arange(T)[:, None] < lengths
    x = torch.randn(T, B, 3)
    padded = torch.where(valid[..., None], x, PADDING[padding](x))
    output, (h_n, c_n) = model(x, lengths=lengths)
    noisy, (h_noisy, c_noisy) = twin(padded, lengths=lengths)
    torch.testing.assert_close(noisy, output)
    torch.testing.assert_close(h_noisy, h_n)
    torch.testing.assert_close(c_noisy, c_n)
    assert (output[~valid] == 0).all()
    (output.sum() + h_n.sum() + c_n.sum()).backward()
    (noisy.sum() + h_noisy.sum() + c_noisy.sum()).backward()
    for (name, parameter), twin_parameter in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(twin_parameter.grad, parameter.grad, msg=name)


@pytest.mark.parametrize("padding", PADDING)
@pytest.mark.parametrize("input_stats", ["per_step", "shared"])
def test_padding_does_not_enter_batch_statistics(input_stats, padding):
    model = make("BNLSTM", input_stats=input_stats)
    twin = copy.deepcopy(model)
    lengths = torch.tensor([6, 2, 4, 6, 3])
    valid = torch.arange(T)[:, None] < lengths
    x = torch.randn(T, B, 3)
    model(x, lengths=lengths)
    twin(torch.where(valid[..., None], x, PADDING[padding](x)), lengths=lengths)
    for key, value in twin.state_dict().items():
        torch.testing.assert_close(value, model.state_dict()[key], msg=key)


def test_final_state_of_a_padded_sequence_is_its_state_at_its_last_step(layer_name):
    model = make(layer_name).eval()
    lengths = torch.tensor([6, 2, 4, 6, 3])
    output, (h_n, _) = model(torch.randn(T, B, 3), lengths=lengths)
    torch.testing.assert_close(h_n[0], output[lengths - 1, torch.arange(B)])


def test_a_packed_sequence_is_the_padded_batch_with_its_lengths(layer_name):
    """In training: outputs, state, gradients and the running statistics afterwards."""
    model = make(layer_name, bidirectional=True, batch_first=True)
    twin = copy.deepcopy(model)
    x, lengths = torch.randn(B, T, 3), torch.tensor([4, 6, 1, 4, 2])
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    output, (h_n, c_n) = model(packed)
    expected, (h_expected, c_expected) = twin(x, lengths=lengths)
    unpacked, unpacked_lengths = pad_packed_sequence(output, batch_first=True, total_length=T)
    assert unpacked_lengths.equal(lengths)
    torch.testing.assert_close(unpacked, expected, rtol=0, atol=0)
    torch.testing.assert_close((h_n, c_n), (h_expected, c_expected), rtol=0, atol=0)
    (output.data.square().sum() + c_n.sum()).backward()
    (expected.square().sum() + c_expected.sum()).backward()
    for (name, parameter), other in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(parameter.grad, other.grad, msg=name)
    for (name, buffer), other in zip(model.named_buffers(), twin.buffers()):
        torch.testing.assert_close(buffer, other, rtol=0, atol=0, msg=name)


def test_device_and_dtype_place_every_parameter_and_statistic(layer_name):
    model = make(layer_name, device="cpu", dtype=torch.float64)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    assert {b.dtype for name, b in model.named_buffers() if "running" in name} <= {torch.float64}
    output, _ = model(torch.randn(T, B, 3, dtype=torch.float64))
    assert output.dtype == torch.float64


def test_reverse_direction_reads_only_the_valid_part(layer_name):
    model = make(layer_name, bidirectional=True)
    model.train()(torch.randn(T, B, 3))
    model.eval()
    x = torch.randn(T, B, 3)
    padded, (h_n, _) = model(x, lengths=torch.tensor([6, 3, 6, 6, 6]))
    alone, (h_alone, _) = model(x[:3, 1:2])
    torch.testing.assert_close(padded[:3, 1], alone[:, 0])
    torch.testing.assert_close(h_n[:, 1], h_alone[:, 0])


def test_dropout_applies_between_layers_in_training_only(layer_name):
    model = make(layer_name, num_layers=2, dropout=0.5)
    x = torch.randn(T, B, 3)
    model.eval()
    torch.testing.assert_close(model(x)[0], model(x)[0])
    model.train()
    assert not torch.allclose(model(x)[0], model(x)[0])
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        one_layer = make(layer_name, num_layers=1, dropout=0.5).train()
    torch.testing.assert_close(one_layer(x)[0], one_layer(x)[0])


def test_batch_first_transposes_input_and_output(layer_name):
    model = make(layer_name, batch_first=True).eval()
    x = torch.randn(B, T, 3)
    output, (h_n, _) = model(x)
    assert output.shape == (B, T, 4) and h_n.shape == (1, B, 4)
    model.batch_first = False
    torch.testing.assert_close(model(x.transpose(0, 1))[0].transpose(0, 1), output)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_shapes_follow_nn_lstm(layer_name, bidirectional):
    model = make(layer_name, num_layers=3, bidirectional=bidirectional)
    output, (h_n, c_n) = model(torch.randn(T, B, 3))
    directions = 2 if bidirectional else 1
    assert output.shape == (T, B, 4 * directions)
    assert h_n.shape == c_n.shape == (3 * directions, B, 4)


@pytest.mark.parametrize("given", [False, True], ids=["zeros", "given"])
def test_h0_noise_is_added_to_the_initial_hidden_state_in_training_only(layer_name, given):
    noisy = make(layer_name, h0_noise_std=0.3)
    plain = copy.deepcopy(noisy)
    plain.h0_noise_std = 0.0
    x = torch.randn(T, B, 3)
    h0, c0 = (torch.randn(1, B, 4) if given else torch.zeros(1, B, 4) for _ in range(2))
    torch.manual_seed(1)
    output = noisy.train()(x, (h0, c0) if given else None)[0]
    torch.manual_seed(1)
    expected = plain.train()(x, (h0 + 0.3 * torch.randn_like(h0), c0))[0]
    torch.testing.assert_close(output, expected)
    torch.testing.assert_close(noisy.eval()(x, (h0, c0))[0], plain.eval()(x, (h0, c0))[0])


def read_in_chunks(model, x: torch.Tensor, chunks: list[int], lengths: torch.Tensor | None = None) -> tuple:
    """x read chunk after chunk, the state carried and each chunk starting at its timestep;
    ``lengths`` of x cut to each chunk (every sequence reaches the last chunk)."""
    outputs, state, first_step = [], None, 0
    for chunk in x.split(chunks):
        chunk_lengths = None if lengths is None else (lengths - first_step).clamp(max=len(chunk))
        output, state = model(chunk, state, chunk_lengths, first_step=first_step)
        outputs.append(output)
        first_step += len(chunk)
    return torch.cat(outputs), state


@pytest.mark.parametrize("padded", [False, True], ids=["whole", "padded"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_a_sequence_read_in_chunks_from_their_first_steps_is_the_sequence_read_whole(
    layer_backend, mode, padded, input_normalization
):
    """Outputs, final state, gradients and BN's running statistics; the chunks cross
    max_length (4) inside one of them and go beyond it."""
    layer_name, backend = layer_backend
    options = {"max_length": 4} if layer_name == "BNLSTM" else {}
    whole = make(layer_name, num_layers=2, backend=backend, **options).train(mode == "train")
    if mode == "eval" and layer_name == "BNLSTM":
        whole.train()(torch.randn(7, B, 3))  # running statistics that differ from step to step
        whole.eval()
    chunked = copy.deepcopy(whole)
    x = torch.randn(7, B, 3)
    lengths = torch.tensor([7, 6, 6, 7, 6]) if padded else None
    results = []
    for model, read in ((whole, lambda x: model(x, None, lengths)), (chunked, lambda x: read_in_chunks(model, x, [3, 2, 2], lengths))):
        x_grad = x.clone().requires_grad_()
        output, (h_n, c_n) = read(x_grad)
        (output.square().sum() + h_n.sum() + c_n.sum()).backward()
        results.append({"output": output, "h_n": h_n, "c_n": c_n, "d input": x_grad.grad,
                        **{f"d {name}": p.grad for name, p in model.named_parameters()},
                        **{name: buffer for name, buffer in model.state_dict().items()}})
    for name, expected in results[0].items():
        torch.testing.assert_close(results[1][name], expected, msg=lambda m: f"{name}: {m}")


def test_first_step_changes_batch_normalized_outputs_only():
    x = torch.randn(3, B, 3)
    for layer_name in ("LSTM", "LNLSTM", "BNLSTM"):
        model = make(layer_name, max_length=4) if layer_name == "BNLSTM" else make(layer_name)
        model.train()(torch.randn(6, B, 3))
        model.eval()
        same = torch.allclose(model(x, first_step=2)[0], model(x)[0])
        assert same == (layer_name != "BNLSTM"), layer_name
