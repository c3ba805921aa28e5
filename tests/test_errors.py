"""Bad input gets a clear one-line error that names what is wrong."""

import pytest
import torch

import rbn
from conftest import make
from rbn.models import CharLM, SequenceClassifier


def raises(error, match, call):
    with pytest.raises(error, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_input_of_wrong_rank(layer_name):
    model = make(layer_name)
    raises(ValueError, r"input must be 3-D .* got shape \(2, 3, 4, 3\)", lambda: model(torch.randn(2, 3, 4, 3)))


def test_input_of_wrong_feature_size(layer_name):
    model = make(layer_name)
    raises(ValueError, "input has 5 features, expected input_size=3", lambda: model(torch.randn(6, 2, 5)))


def test_input_that_is_not_a_tensor(layer_name):
    raises(TypeError, "input must be a Tensor or a PackedSequence, got list", lambda: make(layer_name)([[0.0, 1.0, 2.0]]))


def test_lengths_given_with_a_packed_sequence(layer_name):
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.randn(6, 2, 3), torch.tensor([6, 3]))
    raises(ValueError, "a PackedSequence holds its lengths: pass lengths=None with it",
           lambda: make(layer_name)(packed, lengths=torch.tensor([6, 3])))


def test_input_of_integer_dtype(layer_name):
    raises(TypeError, "floating-point", lambda: make(layer_name)(torch.ones(6, 2, 3, dtype=torch.long)))


def test_empty_input(layer_name):
    raises(ValueError, "must not be empty", lambda: make(layer_name)(torch.randn(0, 2, 3)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_input_of_another_dtype_than_the_layer(layer_name, dtype):
    model = make(layer_name)
    match = rf"input dtype {dtype} does not match the layer's torch.float32: convert the input, or the layer"
    raises(ValueError, match, lambda: model(torch.randn(6, 2, 3, dtype=dtype)))


def test_input_of_another_dtype_runs_under_autocast(layer_name):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output, _ = make(layer_name)(torch.randn(6, 2, 3, dtype=torch.bfloat16))
    assert output.isfinite().all()


def test_input_on_another_device_than_the_layer(layer_name):
    model = make(layer_name).to("meta")
    raises(ValueError, "input is on cpu and the layer on meta: move one of them", lambda: model(torch.randn(6, 2, 3)))


@pytest.mark.parametrize(
    "lengths, match",
    [
        ([6, 0], r"lengths must be between 1 and the sequence length 6, got min 0 and max 6"),
        ([7, 2], r"lengths must be between 1 and the sequence length 6, got min 2 and max 7"),
        ([6, 2, 3], r"lengths must be 1-D with one entry per sequence \(2\), got shape \(3,\)"),
        ([[6, 2]], r"lengths must be 1-D"),
        (torch.tensor([6.0, 2.0]), "lengths must be integers, got torch.float32"),
        (["6", "2"], r"lengths must be integers, a list or a 1-D tensor; got \['6', '2'\]"),
        ([6, None], r"lengths must be integers, a list or a 1-D tensor; got \[6, None\]"),
    ],
)
def test_lengths_out_of_range_or_of_wrong_shape(layer_name, lengths, match):
    model = make(layer_name)
    raises((ValueError, TypeError), match, lambda: model(torch.randn(6, 2, 3), lengths=lengths))


def test_lengths_of_a_narrow_integer_type_are_read_as_their_values():
    """uint8 lengths beside a sequence longer than 255 steps: nn.LSTM's packing reads them."""
    model, x = make("LSTM"), torch.randn(300, 2, 3)
    expected = model(x, lengths=torch.tensor([200, 3]))
    for got, want in zip(model(x, lengths=torch.tensor([200, 3], dtype=torch.uint8)), expected):
        torch.testing.assert_close(got, want)


def test_initial_state_of_wrong_shape(layer_name):
    model = make(layer_name, num_layers=2)
    hx = (torch.zeros(1, 2, 4), torch.zeros(2, 2, 4))
    raises(ValueError, r"h_0 must have shape \(2, 2, 4\), got \(1, 2, 4\)", lambda: model(torch.randn(6, 2, 3), hx))
    raises(TypeError, r"hx must be a tuple \(h_0, c_0\)", lambda: model(torch.randn(6, 2, 3), torch.zeros(2, 2, 4)))


def test_initial_state_that_is_not_a_tensor(layer_name):
    model = make(layer_name)
    hx = (torch.zeros(1, 2, 4), None)
    raises(TypeError, "c_0 must be a Tensor, got NoneType", lambda: model(torch.randn(6, 2, 3), hx))
    raises(TypeError, "c_0 must be a Tensor, got NoneType", lambda: model(torch.randn(6, 3), (torch.zeros(1, 4), None)))


def test_initial_state_of_another_dtype_than_the_input(layer_name):
    model = make(layer_name)
    hx = (torch.zeros(1, 2, 4, dtype=torch.float64), torch.zeros(1, 2, 4, dtype=torch.float64))
    raises(ValueError, "h_0 must have the input's dtype torch.float32, got torch.float64", lambda: model(torch.randn(6, 2, 3), hx))


def test_under_autocast_an_initial_state_in_the_autocast_dtype_is_taken(layer_name):
    model = make(layer_name)
    hx = (torch.zeros(1, 2, 4, dtype=torch.bfloat16), torch.zeros(1, 2, 4, dtype=torch.bfloat16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output, _ = model(torch.randn(6, 2, 3), hx)
    assert output.isfinite().all()


def test_initial_state_on_another_device_than_the_input(layer_name):
    model = make(layer_name)
    hx = (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4, device="meta"))
    raises(ValueError, "c_0 must be on the input's device cpu, got meta", lambda: model(torch.randn(6, 2, 3), hx))


def test_sequence_batch_norm_input_that_is_not_a_sequence_of_num_features():
    norm = rbn.SequenceBatchNorm(3, max_length=4)
    expected = r"SequenceBatchNorm expects a sequence \(T, B, C\) with C = num_features = 3, got shape "
    raises(ValueError, expected + r"\(5, 3\); .step\(x, t\) normalizes a single timestep", lambda: norm(torch.randn(5, 3)))
    raises(ValueError, expected + r"\(4, 5, 2\)", lambda: norm(torch.randn(4, 5, 2)))


@pytest.mark.parametrize("input_stats", ["per_step", "shared"])
def test_batch_norm_training_on_a_single_sequence(input_normalization, input_stats):
    """Refused where the input term is normalized step by step (the CPU's loop) and where it
    is normalized whole (the GPU's), with statistics per step or shared over time."""
    model = make("BNLSTM", input_stats=input_stats).train()
    raises(ValueError, "needs at least 2 sequences per batch, got 1", lambda: model(torch.randn(6, 1, 3)))
    raises(ValueError, "needs at least 2 sequences per batch, got 1", lambda: model(torch.randn(6, 3)))
    model.eval()
    assert model(torch.randn(6, 1, 3))[0].shape == (6, 1, 4)


@pytest.mark.parametrize("max_length", [0, -3, 2.5])
def test_max_length_below_one(max_length):
    raises(ValueError, "max_length must be a positive integer", lambda: rbn.BNLSTM(3, 4, max_length=max_length))
    if isinstance(max_length, int):
        raises(ValueError, "max_length must be at least 1", lambda: rbn.SequenceBatchNorm(4, max_length))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(hidden_size=0), "hidden_size must be a positive integer, got 0"),
        (dict(num_layers=0), "num_layers must be a positive integer, got 0"),
        (dict(input_size=2.0), "input_size must be a positive integer, got 2.0"),
        (dict(dropout=1.5), r"dropout must be a number in \[0, 1\], got 1.5"),
        (dict(dropout=True, num_layers=2), r"dropout must be a number in \[0, 1\], got True"),
        (dict(init="xavier"), "init must be one of orthogonal, identity_g, uniform; got 'xavier'"),
        (dict(h0_noise_std=-1.0), "h0_noise_std must be a finite number >= 0, got -1.0"),
        (dict(h0_noise_std=float("nan")), "h0_noise_std must be a finite number >= 0, got nan"),
        (dict(h0_noise_std=float("inf")), "h0_noise_std must be a finite number >= 0, got inf"),
        (dict(backend="cudnn"), "backend must be one of auto, triton, eager; got 'cudnn'"),
        (dict(proj_size=2), r"proj_size must be 0 \(rbn's layers have no projection\), got 2"),
    ],
)
def test_bad_constructor_arguments(layer_name, kwargs, match):
    raises(ValueError, match, lambda: make(layer_name, **kwargs))


@pytest.mark.parametrize("name", ["bias", "batch_first", "compile"])
def test_a_flag_that_is_not_a_bool_is_refused_as_nn_lstm_refuses_it(layer_name, name):
    """A truthy string would read time as batch: batch_first="False"."""
    raises(TypeError, f"{name} should be of type bool, got 'False'", lambda: make(layer_name, **{name: "False"}))


@pytest.mark.parametrize("momentum", [1.5, "0.1", float("nan")])
def test_batch_norm_momentum_outside_zero_to_one(momentum):
    raises(ValueError, "momentum must be None .a cumulative average. or a number in \\[0, 1\\]", lambda: make("BNLSTM", momentum=momentum))


def test_the_shared_time_loop_alone_is_not_a_layer():
    raises(TypeError, "rbn.Recurrent is the time loop that LSTM, BNLSTM and LNLSTM share: make one of them",
           lambda: rbn.Recurrent(3, 4))


def test_lstm_has_no_triton_backend():
    raises(ValueError, "rbn.LSTM has no Triton kernel; backend='auto' runs torch's fused LSTM", lambda: make("LSTM", backend="triton"))


def test_batch_norms_converted_to_sync_batch_norm():
    model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(make("BNLSTM"))
    raises(TypeError, "bn_x_l0 is a SyncBatchNorm, not a SequenceBatchNorm: BN-LSTM keeps statistics per timestep",
           lambda: model(torch.randn(6, 2, 3)))


def test_bad_input_statistics_option():
    raises(ValueError, "input_stats must be 'per_step' or 'shared', got 'global'", lambda: make("BNLSTM", input_stats="global"))


def test_dropout_on_a_single_layer_warns_as_nn_lstm_does(layer_name):
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1") as warned:
        make(layer_name, dropout=0.5)
    with pytest.warns(UserWarning) as expected:
        torch.nn.LSTM(3, 4, dropout=0.5)
    assert str(warned[0].message) == str(expected[0].message)


@pytest.mark.parametrize("first_step", [-1, 1.5, True])
def test_first_step_that_is_not_a_timestep(layer_name, first_step):
    raises(ValueError, "first_step must be a non-negative integer", lambda: make(layer_name)(torch.randn(6, 2, 3), first_step=first_step))


def test_first_step_of_a_bidirectional_layer(layer_name):
    model = make(layer_name, bidirectional=True)
    raises(ValueError, "a bidirectional layer reads it both ways", lambda: model(torch.randn(6, 2, 3), first_step=6))


def test_a_classifier_on_a_layer_that_reads_time_first(layer_name):
    raises(ValueError, "SequenceClassifier reads .batch, time, features.: build the layer with batch_first=True",
           lambda: SequenceClassifier(make(layer_name), 10))


@pytest.mark.parametrize("options", [{"batch_first": False}, {"batch_first": True, "bidirectional": True}], ids=["time-first", "bidirectional"])
def test_a_language_model_on_a_layer_it_cannot_read_with(layer_name, options):
    raises(ValueError, "CharLM needs a unidirectional layer built with batch_first=True",
           lambda: CharLM(make(layer_name, 7, **options), 7))


def test_a_language_model_whose_layer_does_not_read_its_one_hot_characters(layer_name):
    raises(ValueError, "CharLM reads one-hot characters: input_size must be vocab_size=8",
           lambda: CharLM(make(layer_name, 7, batch_first=True), 8))
