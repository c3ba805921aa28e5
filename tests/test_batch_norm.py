"""Per-timestep batch normalization: initial values, running statistics, update_bn, max_length;
and where the normalized cells compute their input term (at each step on CPU)."""

import copy

import pytest
import torch
from torch.optim.swa_utils import update_bn

import rbn
from conftest import make, normalize_input_per_step_on


def test_every_gain_starts_at_one_tenth_and_every_shift_at_zero():
    model = make("BNLSTM", num_layers=2, bidirectional=True)
    norms = [m for m in model.modules() if isinstance(m, rbn.SequenceBatchNorm)]
    assert len(norms) == 2 * 2 * 3
    for norm in norms:
        assert (norm.gamma == 0.1).all()
        assert norm.beta is None or (norm.beta == 0).all()


def test_only_the_cell_normalization_has_a_shift():
    model = make("BNLSTM")
    assert model.bn_x_l0.beta is None and model.bn_h_l0.beta is None
    assert model.bn_c_l0.beta.shape == (4,)


@pytest.mark.parametrize("gamma_init", [None, 0.5])
def test_layer_norm_gains_start_at_gamma_init_one_by_default(gamma_init):
    model = make("LNLSTM", **({} if gamma_init is None else {"gamma_init": gamma_init}))
    model.reset_parameters()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 3 and all((m.weight == (gamma_init or 1.0)).all() for m in norms)


@pytest.mark.parametrize("option, value", [("eps", 1e-3), ("momentum", None), ("momentum", 0.5), ("gamma_init", 0.5)])
def test_bn_lstm_options_reach_every_batch_normalization(option, value):
    """Each non-default value: the layer's defaults equal SequenceBatchNorm's own."""
    model = make("BNLSTM", num_layers=2, **{option: value})
    norms = [m for m in model.modules() if isinstance(m, rbn.SequenceBatchNorm)]
    assert len(norms) == 6
    if option == "gamma_init":
        assert all((norm.gamma == value).all() for norm in norms)
    else:
        assert {getattr(norm, option) for norm in norms} == {value}


def test_ln_lstm_eps_reaches_every_layer_normalization():
    model = make("LNLSTM", num_layers=2, eps=1e-3)
    assert [m.eps for m in model.modules() if isinstance(m, torch.nn.LayerNorm)] == [1e-3] * 6


def test_statistics_are_one_buffer_per_normalization_with_a_row_per_timestep():
    model = make("BNLSTM", max_length=7)
    buffers = dict(model.named_buffers())
    assert buffers["bn_x_l0.running_mean"].shape == (7, 16)
    assert buffers["bn_h_l0.running_var"].shape == (7, 16)
    assert buffers["bn_c_l0.num_batches_tracked"].shape == (7,)
    statistics = ["running_mean", "running_var", "num_batches_tracked"]
    assert set(model.state_dict()) == {
        "weight_ih_l0", "weight_hh_l0", "bias_l0",
        *(f"bn_{n}_l0.{s}" for n in "xhc" for s in ["gamma", *statistics]),
        "bn_c_l0.beta",
    }


@pytest.mark.parametrize("shared", [False, True])
def test_eval_normalizes_a_whole_sequence_with_its_population_statistics_and_eps(shared):
    """Variances near eps, where leaving eps out would show."""
    norm = rbn.SequenceBatchNorm(3, max_length=4, shared=shared).eval()
    with torch.no_grad():
        norm.running_mean.normal_()
        norm.running_var.uniform_(1e-5, 1e-4)
        norm.gamma.uniform_(0.5, 1.5)
        norm.beta.uniform_(-1, 1)
    x = torch.randn(4, 5, 3) * 0.01
    mean, var = (statistic.expand(4, 3)[:, None] for statistic in (norm.running_mean, norm.running_var))
    torch.testing.assert_close(norm(x), norm.beta + norm.gamma * (x - mean) / torch.sqrt(var + norm.eps))


def test_training_updates_running_statistics_per_timestep_with_momentum():
    norm = rbn.SequenceBatchNorm(3, max_length=5, momentum=0.1)
    x = torch.randn(4, 8, 3) * torch.arange(1.0, 5.0)[:, None, None] + torch.arange(4.0)[:, None, None]
    norm(x)
    torch.testing.assert_close(norm.running_mean[:4], 0.1 * x.mean(1))
    torch.testing.assert_close(norm.running_var[:4], 0.9 + 0.1 * x.var(1))
    assert norm.num_batches_tracked.tolist() == [1, 1, 1, 1, 0]
    assert (norm.running_mean[4] == 0).all() and (norm.running_var[4] == 1).all()


def test_step_by_step_normalization_equals_the_whole_sequence_at_once():
    whole, steps = rbn.SequenceBatchNorm(3, max_length=4), rbn.SequenceBatchNorm(3, max_length=4)
    x = torch.randn(6, 8, 3) * 5 + 2
    expected = whole(x)
    actual = torch.stack([steps.step(x_t, t) for t, x_t in enumerate(x)])
    steps.update_running_stats([8] * 6)
    torch.testing.assert_close(actual, expected)
    for key, value in whole.state_dict().items():
        torch.testing.assert_close(steps.state_dict()[key], value, msg=key)


def sequence_normalizations(monkeypatch) -> list[rbn.SequenceBatchNorm]:
    """The normalizations whose whole-sequence ``forward`` runs, recorded as it runs."""
    called, forward = [], rbn.SequenceBatchNorm.forward

    def recorded(self, *args, **kwargs):
        called.append(self)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(rbn.SequenceBatchNorm, "forward", recorded)
    return called


def test_on_cpu_the_loop_normalizes_the_input_term_step_by_step(monkeypatch):
    model = make("BNLSTM")
    whole = sequence_normalizations(monkeypatch)
    steps, step = [], rbn.SequenceBatchNorm.step
    monkeypatch.setattr(rbn.SequenceBatchNorm, "step", lambda self, x, t, **kw: steps.append((self, t)) or step(self, x, t, **kw))
    model(torch.randn(6, 5, 3))
    assert not any(norm is model.bn_x_l0 for norm in whole)
    assert [t for norm, t in steps if norm is model.bn_x_l0] == list(range(6))


def input_layer_norm_shapes(model: rbn.LNLSTM) -> list[tuple[int, ...]]:
    """The shapes that an LN-LSTM's LayerNorm of W_x x normalizes, recorded as it runs."""
    shapes = []
    model.ln_x_l0.register_forward_hook(lambda module, args, output: shapes.append(tuple(args[0].shape)))
    return shapes


def test_on_cpu_the_ln_lstm_normalizes_its_input_term_step_by_step():
    """As BN-LSTM does, for the same reason (rbn.cells.Cell.per_step_input_devices): the
    LayerNorm of W_x x sees one step's (B, 4H) at a time, not the sequence's (T, B, 4H)."""
    model = make("LNLSTM")
    shapes = input_layer_norm_shapes(model)
    model(torch.randn(6, 5, 3))
    assert shapes == [(5, 4 * model.hidden_size)] * 6


def test_off_the_per_step_devices_the_input_term_is_normalized_for_the_whole_sequence(monkeypatch):
    normalize_input_per_step_on(monkeypatch, ())
    model = make("BNLSTM")
    whole = sequence_normalizations(monkeypatch)
    model(torch.randn(6, 5, 3))
    assert any(norm is model.bn_x_l0 for norm in whole)
    ln_model = make("LNLSTM")
    shapes = input_layer_norm_shapes(ln_model)
    ln_model(torch.randn(6, 5, 3))
    assert shapes == [(6, 5, 4 * ln_model.hidden_size)]


def test_update_bn_computes_the_average_of_per_timestep_batch_statistics():
    norm = rbn.SequenceBatchNorm(3, max_length=6)
    batches = [torch.randn(6, 8, 3) * (1 + i) + i for i in range(3)]
    norm(torch.randn(6, 8, 3))  # statistics that update_bn must discard
    update_bn([b for b in batches], norm)
    torch.testing.assert_close(norm.running_mean, torch.stack([b.mean(1) for b in batches]).mean(0))
    torch.testing.assert_close(norm.running_var, torch.stack([b.var(1) for b in batches]).mean(0))
    assert norm.momentum == 0.1 and norm.num_batches_tracked.tolist() == [3] * 6


def test_update_bn_through_a_layer_averages_each_timestep_over_the_batches_that_reach_it(input_normalization):
    """Batches of 6 and 3 steps: rows 0-2 average both, rows 3-5 the first only, rows 6-7 none."""
    model = make("BNLSTM", max_length=8)
    batches = [torch.randn(6, 5, 3) * 2 + 1, torch.randn(3, 5, 3)]
    update_bn(batches, model)
    assert all(norm.num_batches_tracked.tolist() == [2, 2, 2, 1, 1, 1, 0, 0]
               for norm in model.modules() if isinstance(norm, rbn.SequenceBatchNorm))
    term = [x @ model.weight_ih_l0.detach().t() for x in batches]  # W_x x, what bn_x normalizes
    mean = torch.cat([(term[0][:3].mean(1) + term[1].mean(1)) / 2, term[0][3:].mean(1)])
    var = torch.cat([(term[0][:3].var(1) + term[1].var(1)) / 2, term[0][3:].var(1)])
    torch.testing.assert_close(model.bn_x_l0.running_mean[:6], mean)
    torch.testing.assert_close(model.bn_x_l0.running_var[:6], var)


def fold_in(norm: rbn.SequenceBatchNorm, x: torch.Tensor, entry: str) -> None:
    """One training batch's statistics into ``norm``, by one of its three entry points."""
    if entry == "whole sequence":
        norm(x)
    elif entry == "step by step":
        for t, x_t in enumerate(x):
            norm.step(x_t, t)
        norm.update_running_stats([x.shape[1]] * len(x))
    else:  # as the Triton kernels hand them over
        norm.keep_batch_statistics(x.mean(1), x.var(1))
        norm.update_running_stats([x.shape[1]] * len(x))


@pytest.mark.parametrize("entry", ["whole sequence", "step by step", "batch statistics kept"])
def test_the_cumulative_average_of_float64_statistics_is_exact_to_float64(entry):
    norm = rbn.SequenceBatchNorm(3, max_length=6, momentum=None).double()
    batches = [torch.randn(6, 8, 3, dtype=torch.double) * (1 + i) + i for i in range(3)]
    for x in batches:
        fold_in(norm, x, entry)
    # Weights 1, 1/2, 1/3: in float32, 1/3 alone would leave a relative error of 3e-8.
    torch.testing.assert_close(norm.running_mean, torch.stack([b.mean(1) for b in batches]).mean(0), rtol=0, atol=1e-14)
    torch.testing.assert_close(norm.running_var, torch.stack([b.var(1) for b in batches]).mean(0), rtol=0, atol=1e-14)


def drifting_batch(steps=12, batch=256):
    """Inputs whose scale grows 100x along time, so statistics must differ per timestep."""
    scale = torch.logspace(0, 2, steps)[:, None, None]
    return torch.randn(steps, batch, 3) * scale


def test_population_statistics_from_update_bn_reproduce_training_outputs():
    model = make("BNLSTM", max_length=12)
    x = drifting_batch()
    trained, _ = model.train()(x)
    update_bn([x], model)
    model.eval()
    torch.testing.assert_close(model(x)[0], trained, atol=2e-2, rtol=0)
    # The test can fail: statistics shared over time do not reproduce training.
    for norm in model.modules():
        if isinstance(norm, rbn.SequenceBatchNorm):
            norm.running_mean[:] = norm.running_mean.mean(0)
            norm.running_var[:] = norm.running_var.mean(0)
    assert (model(x)[0] - trained).abs().max() > 0.1


def statistics(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: buffer.clone() for name, buffer in model.state_dict().items() if "running" in name or "tracked" in name}


def test_normalizations_frozen_in_eval_mode_keep_their_statistics_in_a_layer_that_trains(input_normalization):
    """The fine-tuning idiom: each _BatchNorm put in eval mode normalizes with its population
    statistics and leaves them as they were, whatever mode the model around it is in."""
    model = make("BNLSTM", max_length=4)
    model(torch.randn(6, 5, 3))  # population statistics away from their initial values
    frozen = statistics(model)
    x = torch.randn(6, 5, 3)
    expected, _ = model.eval()(x)
    model.train()
    for module in model.modules():
        if isinstance(module, rbn.SequenceBatchNorm):
            module.eval()
    for _ in range(2):
        output, _ = model(x)
        output.sum().backward()
    torch.testing.assert_close(output, expected)
    for name, value in statistics(model).items():
        torch.testing.assert_close(value, frozen[name], rtol=0, atol=0, msg=name)


def test_normalizations_in_training_mode_update_their_statistics_in_a_layer_in_eval_mode(input_normalization):
    """As a _BatchNorm does: its own mode decides, not the layer's."""
    x = torch.randn(6, 5, 3)
    reference = make("BNLSTM", max_length=4)
    model = copy.deepcopy(reference).eval()
    reference(x)
    for module in model.modules():
        if isinstance(module, rbn.SequenceBatchNorm):
            module.train()
    model(x)
    expected = statistics(reference)
    for name, value in statistics(model).items():
        torch.testing.assert_close(value, expected[name], msg=name)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_update_bn_restores_momentum_and_mode(mode):
    model = make("BNLSTM").train(mode == "train")
    norms = [m for m in model.modules() if isinstance(m, rbn.SequenceBatchNorm)]
    update_bn([torch.randn(6, 4, 3)], model)
    assert all(norm.num_batches_tracked.tolist() == [1] * 6 + [0] * 2 for norm in norms)  # reset, then updated
    assert model.training == (mode == "train")
    assert all(norm.momentum == 0.1 for norm in norms)


def test_training_beyond_max_length_uses_batch_statistics():
    short, long = make("BNLSTM", max_length=2), make("BNLSTM", max_length=10)
    short_weights = {k: v for k, v in short.state_dict().items() if "running" not in k and "tracked" not in k}
    long.load_state_dict(short_weights, strict=False)
    x = torch.randn(10, 5, 3)
    torch.testing.assert_close(short(x)[0], long(x)[0])
    assert short.bn_h_l0.num_batches_tracked.tolist() == [1, 1]


def test_eval_beyond_max_length_reuses_the_last_timestep_statistics():
    short = make("BNLSTM", max_length=3)
    short.train()(drifting_batch(steps=3, batch=16))
    long = make("BNLSTM", max_length=8)
    state = short.state_dict()
    for key, value in state.items():
        if value.dim() and "running" in key:  # rows 3..7 repeat row 2
            state[key] = torch.cat([value, value[-1:].expand(5, -1)])
        elif "tracked" in key:
            state[key] = torch.cat([value, value[-1:].expand(5)])
    long.load_state_dict(state)
    x = torch.randn(8, 4, 3)
    torch.testing.assert_close(short.eval()(x)[0], long.eval()(x)[0])


def test_eval_reads_timesteps_that_training_never_reached_from_the_last_one_it_reached(input_normalization):
    short, long = make("BNLSTM", max_length=3), make("BNLSTM", max_length=8)
    weights = {k: v for k, v in short.state_dict().items() if "running" not in k and "tracked" not in k}
    long.load_state_dict(weights, strict=False)
    batch = drifting_batch(steps=3, batch=16)
    short.train()(batch)
    long.train()(batch)
    x = torch.randn(8, 4, 3)
    torch.testing.assert_close(long.eval()(x)[0], short.eval()(x)[0])


def test_a_loaded_state_dict_brings_the_timesteps_that_training_reached():
    trained = make("BNLSTM", max_length=8)
    trained(drifting_batch(steps=3, batch=16))
    loaded = make("BNLSTM", max_length=8)
    loaded.load_state_dict(trained.state_dict())
    x = torch.randn(8, 4, 3)
    torch.testing.assert_close(loaded.eval()(x)[0], trained.eval()(x)[0])


def test_padded_training_reaches_only_timesteps_with_two_or_more_sequences():
    norm = rbn.SequenceBatchNorm(2, max_length=6)
    norm(torch.randn(5, 3, 2), batch_sizes=[3, 2, 2, 1, 1])
    mean, var = norm.population_statistics(6, torch.device("cpu"))
    torch.testing.assert_close(mean, norm.running_mean[[0, 1, 2, 2, 2, 2]])
    torch.testing.assert_close(var, norm.running_var[[0, 1, 2, 2, 2, 2]])


def test_a_pass_after_reset_running_stats_reaches_only_its_own_timesteps():
    norm = rbn.SequenceBatchNorm(2, max_length=6)
    norm(torch.randn(6, 4, 2))
    norm.reset_running_stats()
    norm(torch.randn(3, 4, 2) + 5)
    mean, _ = norm.population_statistics(6, torch.device("cpu"))
    torch.testing.assert_close(mean, norm.running_mean[[0, 1, 2, 2, 2, 2]])


def test_before_any_training_each_timestep_reads_its_own_row():
    norm = rbn.SequenceBatchNorm(2, max_length=6).eval()
    norm.running_mean.copy_(torch.arange(6.0)[:, None].expand(6, 2))
    x = torch.zeros(6, 3, 2)
    expected = -torch.arange(6.0)[:, None, None] * norm.gamma / (1 + norm.eps) ** 0.5
    torch.testing.assert_close(norm(x), expected.expand(6, 3, 2))
    torch.testing.assert_close(torch.stack([norm.step(x_t, t) for t, x_t in enumerate(x)]), expected.expand(6, 3, 2))


def test_shared_input_statistics_keep_a_single_row():
    model = make("BNLSTM", input_stats="shared")
    assert model.bn_x_l0.running_mean.shape == (1, 16)
    assert model.bn_h_l0.running_mean.shape == (8, 16)
    x = torch.randn(6, 5, 3)
    model(x)
    flat = x.reshape(-1, 3) @ model.weight_ih_l0.T
    torch.testing.assert_close(model.bn_x_l0.running_mean[0], 0.1 * flat.mean(0))


@pytest.mark.parametrize("momentum", [0.1, None])
def test_padded_batches_update_only_timesteps_with_two_or_more_sequences(momentum):
    norm = rbn.SequenceBatchNorm(2, max_length=6, momentum=momentum)
    x = torch.randn(5, 3, 2)  # sorted by length: 5, 3, 1
    norm(x, batch_sizes=[3, 2, 2, 1, 1])
    assert norm.num_batches_tracked.tolist() == [1, 1, 1, 0, 0, 0]
    weight = 0.1 if momentum else 1.0
    torch.testing.assert_close(norm.running_mean[1], weight * x[1, :2].mean(0))
    torch.testing.assert_close(norm.running_var[2], (1 - weight) + weight * x[2, :2].var(0))


@pytest.mark.parametrize("shared", [False, True], ids=["per_step", "shared"])
def test_non_finite_padding_enters_no_statistic_and_no_gradient(shared):
    norm = rbn.SequenceBatchNorm(2, max_length=6, shared=shared)
    twin = copy.deepcopy(norm)
    batch_sizes = [3, 2, 2, 1, 1]
    valid = torch.arange(3) < torch.tensor(batch_sizes)[:, None]
    x = torch.randn(5, 3, 2, requires_grad=True)
    padded = torch.where(valid[..., None], x.detach(), float("nan")).requires_grad_()
    norm(x, batch_sizes=batch_sizes)[valid].sum().backward()
    twin(padded, batch_sizes=batch_sizes)[valid].sum().backward()
    for name, value in norm.state_dict().items():
        torch.testing.assert_close(twin.state_dict()[name], value, msg=name)
    torch.testing.assert_close(padded.grad, x.grad)
    torch.testing.assert_close(twin.gamma.grad, norm.gamma.grad)


@pytest.mark.parametrize("input_stats", ["per_step", "shared"])
def test_padded_batches_train_under_bfloat16_autocast_into_float32_statistics(input_stats, monkeypatch):
    monkeypatch.setattr(rbn.cells.BNLSTMCell, "per_step_input_devices", ())  # the input term's padded path
    mixed, full = make("BNLSTM", input_stats=input_stats), make("BNLSTM", input_stats=input_stats)
    full.load_state_dict(mixed.state_dict())
    x, lengths = torch.randn(6, 5, 3), [6, 5, 3, 2, 2]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed(x, lengths=lengths)
    full(x, lengths=lengths)
    for name, value in full.state_dict().items():
        assert mixed.state_dict()[name].dtype == value.dtype, name
        torch.testing.assert_close(mixed.state_dict()[name], value, atol=2e-2, rtol=2e-2, msg=name)


def test_update_bn_recovers_finite_statistics_after_a_non_finite_batch():
    model = make("BNLSTM", max_length=4)
    batches = [torch.randn(4, 5, 3) for _ in range(3)]
    update_bn(batches, model)
    expected = {name: value.clone() for name, value in model.state_dict().items()}
    overflowed = torch.randn(4, 5, 3)
    overflowed[0, 0, 0] = float("inf")  # as in an fp16 step that GradScaler then skips
    model(overflowed)
    update_bn(batches, model)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, expected[name], msg=name)


def test_training_after_loading_a_state_dict_ignores_an_earlier_non_finite_batch():
    model, fresh = make("BNLSTM", max_length=4), make("BNLSTM", max_length=4)
    saved = fresh.state_dict()
    model(torch.full((4, 5, 3), float("nan")))
    model.load_state_dict(saved)
    x = torch.randn(4, 5, 3)
    model(x)
    fresh(x)
    for name, value in fresh.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, msg=name)


def test_reset_running_stats_forgets_what_step_gathered():
    norm = rbn.SequenceBatchNorm(3, max_length=2)
    norm.step(torch.full((4, 3), float("nan")), 0)
    norm.reset_running_stats()
    x = torch.randn(4, 3)
    norm.step(x, 0)
    norm.update_running_stats([4])
    torch.testing.assert_close(norm.running_mean[0], 0.1 * x.mean(0))


@pytest.mark.parametrize("input_stats", ["per_step", "shared"])
def test_whole_batches_train_under_bfloat16_autocast_into_float32_statistics(input_stats, monkeypatch):
    """The input term normalized for the whole sequence, nothing padded: one F.batch_norm,
    whose statistics stay in the parameters' dtype while the input is bf16."""
    monkeypatch.setattr(rbn.cells.BNLSTMCell, "per_step_input_devices", ())
    mixed, full = make("BNLSTM", input_stats=input_stats), make("BNLSTM", input_stats=input_stats)
    full.load_state_dict(mixed.state_dict())
    x = torch.randn(6, 5, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed(x)
    full(x)
    for name, value in full.state_dict().items():
        assert mixed.state_dict()[name].dtype == value.dtype, name
        torch.testing.assert_close(mixed.state_dict()[name], value, atol=2e-2, rtol=2e-2, msg=name)


def test_steps_of_a_single_sequence_leave_their_running_statistics_as_they_were():
    """Step by step, a step with one sequence left normalizes with the population statistics
    and folds nothing in: the same statistics as the whole padded sequence at once."""
    steps, whole = rbn.SequenceBatchNorm(2, max_length=6), rbn.SequenceBatchNorm(2, max_length=6)
    batch_sizes = [3, 2, 1, 1]
    x = torch.randn(4, 3, 2)
    for t, (x_t, n) in enumerate(zip(x, batch_sizes)):
        steps.step(x_t[:n], t)
    steps.update_running_stats(batch_sizes)
    whole(x, batch_sizes=batch_sizes)
    assert steps.num_batches_tracked.tolist() == [1, 1, 0, 0, 0, 0]
    for name, value in whole.state_dict().items():
        torch.testing.assert_close(steps.state_dict()[name], value, msg=name)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_a_shift_adds_to_the_normalizations_own_beta(mode):
    norm = rbn.SequenceBatchNorm(3, max_length=4).train(mode == "train")
    with torch.no_grad():
        norm.beta.uniform_(-1, 1)
    x, shift = torch.randn(4, 5, 3), torch.randn(3)
    expected = copy.deepcopy(norm)(x) + shift
    torch.testing.assert_close(norm(x, shift=shift), expected)
    torch.testing.assert_close(torch.stack([copy.deepcopy(norm).step(x_t, t, shift=shift) for t, x_t in enumerate(x)]),
                               expected)


def test_shared_statistics_of_a_padded_batch_pool_every_valid_step():
    """BN-e*: one mean and variance over all valid (t, b) of the sequence, none per step."""
    norm = rbn.SequenceBatchNorm(2, max_length=6, shared=True)
    batch_sizes = [3, 2, 2, 1, 1]
    valid = torch.arange(3) < torch.tensor(batch_sizes)[:, None]
    x = torch.randn(5, 3, 2) * 3 + 1
    rows = x[valid]  # (sum of batch_sizes, C)
    expected = 0.1 * (rows - rows.mean(0)) / torch.sqrt(rows.var(0, unbiased=False) + norm.eps)
    torch.testing.assert_close(norm(x, batch_sizes=batch_sizes)[valid], expected)
    torch.testing.assert_close(norm.running_mean[0], 0.1 * rows.mean(0))
    torch.testing.assert_close(norm.running_var[0], 0.9 + 0.1 * rows.var(0))
