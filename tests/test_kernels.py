"""The Triton kernels (``backend="triton"``) compute what the eager cells compute.

Without a GPU they run under Triton's interpreter (conftest sets TRITON_INTERPRET=1), slowly,
so the shapes are tiny but chosen to reach every path: H = 20 is two blocks of 16 hidden units,
one of them partly masked; B = 5 is not a multiple of 16; T = 6 goes beyond max_length = 4.
tests/test_cuda.py repeats the comparisons on a GPU at the benchmark shapes.
"""

import importlib.util

import numpy
import pytest
import torch
from torch.optim.swa_utils import update_bn

import rbn
from conftest import NEEDS_KERNELS, make
from rbn.trainer import using_batch_statistics

triton = pytest.importorskip("triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
T, B, I, H = 6, 5, 3, 20
NORMALIZED = ["BNLSTM", "LNLSTM"]


@pytest.fixture(autouse=True)
def no_tf32(monkeypatch):
    """On a GPU the kernels' GEMMs follow cuDNN's TF32 setting (on by default), and the eager
    reference's do not: these float32 tolerances are for float32 GEMMs."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def pair(name: str, **kwargs) -> tuple[rbn.Recurrent, rbn.Recurrent]:
    """The same layer with the eager and the Triton backend, gains and shifts randomized so
    that no gradient is trivially structured."""
    eager = make(name, I, H, backend="eager", **kwargs).to(DEVICE)
    with torch.no_grad():
        for parameter_name, parameter in eager.named_parameters():
            if parameter_name.startswith(("bn_", "ln_")):
                parameter.uniform_(0.5, 1.5) if "gamma" in parameter_name or "weight" in parameter_name else parameter.normal_(0, 0.5)
    fused = make(name, I, H, backend="triton", **kwargs).to(DEVICE)
    fused.load_state_dict(eager.state_dict())
    return eager, fused


def forward_backward(model: rbn.Recurrent, x: torch.Tensor, hx: tuple | None = None) -> dict[str, torch.Tensor]:
    """Outputs, final state and every gradient (input, initial state, parameters) of a loss
    that weighs each output differently; and the persistent buffers afterwards."""
    generator = torch.Generator().manual_seed(1)
    x = x.clone().requires_grad_()
    hx = None if hx is None else tuple(s.clone().requires_grad_() for s in hx)
    output, (h_n, c_n) = model(x, hx)
    loss = sum((value * torch.randn(value.shape, generator=generator).to(DEVICE)).sum() for value in (output, h_n, c_n))
    loss.backward()
    result = {"output": output, "h_n": h_n, "c_n": c_n, "d input": x.grad}
    if hx is not None:
        result |= {"d h_0": hx[0].grad, "d c_0": hx[1].grad}
    result |= {f"d {name}": p.grad for name, p in model.named_parameters()}
    return result | persistent_buffers(model)


def persistent_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The buffers of the state dict: without the scratch rows of batch statistics, which
    each implementation fills in its own way."""
    persistent = model.state_dict()
    return {name: buffer for name, buffer in model.named_buffers() if name in persistent}


def assert_same(fused: dict, eager: dict) -> None:
    """Equal to float32 rounding, which different summation orders leave relative to each
    tensor's largest value."""
    assert fused.keys() == eager.keys()
    for name, expected in eager.items():
        scale = max(1.0, float(expected.detach().abs().max()))
        torch.testing.assert_close(fused[name], expected, rtol=1e-4, atol=1e-5 * scale, msg=lambda m: f"{name}: {m}")


def inputs(num_directions: int = 1, num_layers: int = 1, steps: int = T) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    shape = (num_layers * num_directions, B, H)
    return torch.randn(steps, B, I, device=DEVICE), (torch.randn(shape, device=DEVICE), torch.randn(shape, device=DEVICE))


@NEEDS_KERNELS
def test_bn_lstm_kernels_train_as_the_eager_cells():
    """Batch statistics at every step, running statistics updated for the first max_length."""
    eager, fused = pair("BNLSTM", max_length=4)
    x, hx = inputs()
    assert_same(forward_backward(fused, x, hx), forward_backward(eager, x, hx))


@NEEDS_KERNELS
def test_bn_lstm_kernels_evaluate_with_population_statistics():
    """Steps beyond max_length reuse its last row of statistics."""
    eager, fused = pair("BNLSTM", max_length=4)
    with torch.no_grad():
        for model in (eager, fused):
            for name, buffer in model.named_buffers():
                torch.manual_seed(len(name))
                if name.endswith("running_mean"):
                    buffer.normal_()
                elif name.endswith("running_var"):
                    buffer.uniform_(0.5, 2.0)
    x, hx = inputs()
    assert_same(forward_backward(fused.eval(), x, hx), forward_backward(eager.eval(), x, hx))


@NEEDS_KERNELS
def test_bn_lstm_kernels_validate_with_batch_statistics_and_keep_the_running_ones():
    """How the trainer validates BN-LSTM: the layer in eval mode, its normalizations not."""
    eager, fused = pair("BNLSTM", max_length=4)
    x, _ = inputs()
    results = []
    for model in (eager, fused):
        model.eval()
        norms = [m for m in model.modules() if isinstance(m, rbn.SequenceBatchNorm)]
        before = {name: b.clone() for name, b in persistent_buffers(model).items()}
        with torch.no_grad(), using_batch_statistics(norms):
            results.append(model(x)[0])
        for name, buffer in before.items():
            torch.testing.assert_close(model.get_buffer(name), buffer, rtol=0, atol=0, msg=name)
    torch.testing.assert_close(results[1], results[0], rtol=1e-4, atol=1e-5)


@NEEDS_KERNELS
def test_bn_lstm_kernels_normalize_as_the_eager_cells_with_normalizations_frozen_in_a_layer_that_trains():
    """Each normalization in eval mode: population statistics, left as they were."""
    eager, fused = pair("BNLSTM", max_length=4)
    eager.train()(torch.randn(T, B, I, device=DEVICE))  # running statistics that differ by step
    fused.load_state_dict(eager.state_dict())
    for model in (eager, fused):
        for module in model.modules():
            if isinstance(module, rbn.SequenceBatchNorm):
                module.eval()
    x, hx = inputs()
    assert_same(forward_backward(fused, x, hx), forward_backward(eager, x, hx))


@NEEDS_KERNELS
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_bn_lstm_kernels_continue_a_sequence_from_its_first_step(mode):
    """A chunk that starts at timestep 2 of max_length 4: population statistics of steps 2, 3
    and then the last; in training, batch statistics kept in rows 2 and 3 only."""
    eager, fused = pair("BNLSTM", max_length=4)
    eager.train()(torch.randn(T, B, I, device=DEVICE))  # running statistics that differ by step
    fused.load_state_dict(eager.state_dict())
    x, hx = inputs()
    results = []
    for model in (eager, fused):
        model.train(mode == "train")
        x_grad = x.clone().requires_grad_()
        output, (h_n, c_n) = model(x_grad, hx, first_step=2)
        (output.square().sum() + h_n.sum() + c_n.sum()).backward()
        results.append({"output": output, "d input": x_grad.grad,
                        **{f"d {name}": p.grad for name, p in model.named_parameters()}} | persistent_buffers(model))
    assert_same(results[1], results[0])


@NEEDS_KERNELS
def test_ln_lstm_kernels_compute_the_eager_cell():
    eager, fused = pair("LNLSTM")
    x, hx = inputs()
    assert_same(forward_backward(fused, x, hx), forward_backward(eager, x, hx))


@NEEDS_KERNELS
@pytest.mark.slow
@pytest.mark.parametrize("layer_name", NORMALIZED)
def test_kernels_run_every_layer_and_direction_of_a_stack(layer_name):
    """Two bidirectional layers with dropout and h_0 noise between the kernel calls: the
    stack draws the same random numbers around either backend. Three steps: the steps' paths
    are the single layer's tests' (the interpreter's time grows with steps x layers x directions)."""
    eager, fused = pair(layer_name, num_layers=2, bidirectional=True, dropout=0.3, h0_noise_std=0.1)
    x, hx = inputs(num_directions=2, num_layers=2, steps=3)
    results = []
    for model in (eager, fused):
        torch.manual_seed(0)
        results.append(forward_backward(model, x, hx))
    assert_same(results[1], results[0])


@NEEDS_KERNELS
def test_population_statistics_re_estimated_through_the_kernels_equal_eager():
    """update_bn's cumulative average (momentum None), per timestep, over several batches."""
    eager, fused = pair("BNLSTM", max_length=4)
    batches = [torch.randn(T, B, I, device=DEVICE) for _ in range(3)]
    for model in (eager, fused):
        update_bn(batches, model)
    expected, actual = persistent_buffers(eager), persistent_buffers(fused)
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, rtol=1e-5, atol=1e-6, msg=name)


# --- which calls run on the kernels ------------------------------------------------------------


def refusal(model: rbn.Recurrent, x: torch.Tensor, **kwargs) -> str:
    with pytest.raises(ValueError) as error:
        model(x, **kwargs)
    message = str(error.value)
    assert "\n" not in message
    return message


@NEEDS_KERNELS
@pytest.mark.parametrize("layer_name", NORMALIZED)
def test_kernels_refuse_second_derivatives_in_one_line(layer_name):
    """Their backward is not differentiable: autograd would take its results for constants."""
    model = make(layer_name, I, H, backend="triton").to(DEVICE)
    x = torch.randn(T, B, I, device=DEVICE, requires_grad=True)
    loss = model(x)[0].square().sum()
    with pytest.raises(RuntimeError) as refusal:
        torch.autograd.grad(loss, x, create_graph=True)
    assert str(refusal.value) == ("backend='triton' cannot be differentiated twice (a backward with "
                                  "create_graph=True); backend='eager' can be")


@pytest.mark.parametrize("layer_name", NORMALIZED)
def test_triton_backend_refuses_float64_in_one_line(layer_name):
    model = make(layer_name, backend="triton").double()
    message = refusal(model, torch.randn(T, B, 3, dtype=torch.float64))
    assert message == ("backend='triton' does not support torch.float64 parameters (float32 only; for bf16, use "
                       "autocast); backend='auto' runs such calls eagerly")


@pytest.mark.parametrize("layer_name", NORMALIZED)
def test_triton_backend_runs_padded_batches_in_the_eager_loop(layer_name, monkeypatch):
    model = make(layer_name, backend="triton")
    eager = make(layer_name, backend="eager")
    eager.load_state_dict(model.state_dict())
    monkeypatch.setattr(model.cell_class, "fused_recurrence", None)  # the kernels would fail
    x, lengths = torch.randn(T, B, 3), torch.arange(B) % T + 1
    output, (h_n, c_n) = model(x, lengths=lengths)
    expected, (h_expected, c_expected) = eager(x, lengths=lengths)
    torch.testing.assert_close(output, expected, rtol=0, atol=0)
    torch.testing.assert_close((h_n, c_n), (h_expected, c_expected), rtol=0, atol=0)


def test_triton_backend_refuses_a_cells_normalizations_in_different_modes():
    model = make("BNLSTM", backend="triton", bidirectional=True)
    model.bn_c_l0_reverse.eval()
    message = refusal(model, torch.randn(T, B, 3))
    assert "does not support bn_h_l0_reverse and bn_c_l0_reverse in different train/eval modes" in message


def test_triton_backend_refuses_a_compiled_step():
    message = refusal(make("LNLSTM", backend="triton", compile=True), torch.randn(T, B, 3))
    assert "does not support compile=True, which compiles the eager loop's step" in message


def test_a_layer_without_kernels_names_itself_as_what_they_cannot_run():
    assert make("LSTM").kernels_unsupported(torch.randn(T, B, 3)) == "LSTM, which has no Triton kernel"


def test_triton_backend_refuses_cpu_tensors_unless_interpreted(monkeypatch):
    monkeypatch.setattr(rbn.kernels, "interpreted", lambda: False)
    message = refusal(make("BNLSTM", backend="triton"), torch.randn(T, B, 3))
    assert "does not support CPU tensors (set TRITON_INTERPRET=1 before the first call" in message


@pytest.mark.parametrize(("triton_version", "numpy_version", "needs"), [
    ("3.1.0", "2.0.0", "NumPy 1.x or Triton 3.2+"),
    ("3.6.0", "2.4.6", "NumPy < 2.4 or Triton 3.7+"),
])
def test_triton_backend_refuses_an_interpreter_that_the_installed_numpy_breaks(triton_version, numpy_version, needs, monkeypatch):
    monkeypatch.setattr(rbn.kernels, "interpreted", lambda: True)
    monkeypatch.setattr(triton, "__version__", triton_version)
    monkeypatch.setattr(numpy, "__version__", numpy_version)
    message = refusal(make("BNLSTM", backend="triton"), torch.randn(T, B, 3))
    assert f"does not support Triton {triton_version}'s interpreter with NumPy {numpy_version} (it needs {needs})" in message


@pytest.mark.parametrize(("triton_version", "numpy_version"), [("3.1.0", "1.26.4"), ("3.2.0", "2.3.5"), ("3.7.0", "2.4.6")])
def test_the_interpreter_is_taken_beside_the_numpy_it_works_with(triton_version, numpy_version, monkeypatch):
    monkeypatch.setattr(triton, "__version__", triton_version)
    monkeypatch.setattr(numpy, "__version__", numpy_version)
    assert rbn.kernels.interpreter_unsupported() is None


def test_the_kernels_need_a_triton_that_launches_a_cooperative_grid_on_a_gpu(monkeypatch):
    monkeypatch.setattr(triton, "__version__", "3.2.0")
    assert rbn.kernels.compiler_unsupported() == (
        "Triton 3.2.0 on a GPU (the kernels' grid barrier needs a cooperative launch: Triton 3.3+, torch 2.7+)")
    monkeypatch.setattr(triton, "__version__", "3.3.0")
    assert rbn.kernels.compiler_unsupported() is None


def test_triton_backend_refuses_batches_too_large_for_one_program():
    message = refusal(make("LNLSTM", backend="triton"), torch.randn(1, rbn.kernels.MAX_BATCH + 1, 3))
    assert f"does not support batches over {rbn.kernels.MAX_BATCH} sequences (got {rbn.kernels.MAX_BATCH + 1})" in message


def test_triton_backend_refuses_tensors_on_a_device_it_has_no_kernels_for():
    model = make("BNLSTM", backend="triton").to("meta")
    assert "does not support meta tensors" in refusal(model, torch.randn(T, B, 3, device="meta"))


def test_triton_backend_refuses_gates_beyond_int32_offsets():
    steps = 2**31 // (rbn.kernels.MAX_BATCH * 4 * 4) + 1  # T x B x 4H just past 2^31 for H 4
    x = torch.zeros(1, 1, 3).expand(steps, rbn.kernels.MAX_BATCH, 3)  # no memory behind it
    message = refusal(make("LNLSTM", backend="triton"), x)
    assert "does not support sequences whose gates, T x B x 4H, have 2^31 elements or more (int32 offsets)" in message


def test_triton_backend_refuses_without_triton(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "triton" else find_spec(name, *args))
    message = refusal(make("BNLSTM", backend="triton"), torch.randn(T, B, 3))
    assert "does not support this environment, which has no Triton" in message


def test_backend_must_be_one_of_the_three():
    with pytest.raises(ValueError, match="backend must be one of auto, triton, eager; got 'cudnn'"):
        make("BNLSTM", backend="cudnn")


@pytest.mark.parametrize("layer_name", NORMALIZED)
def test_auto_runs_the_eager_loop_on_the_cpu_even_when_interpreting(layer_name, monkeypatch):
    """The interpreter is for testing the kernels, far slower than the eager loop."""
    def no_kernels(*args):
        raise AssertionError("the kernels ran")

    monkeypatch.setattr(make(layer_name).cell_class, "fused_recurrence", no_kernels)
    output, _ = make(layer_name)(torch.randn(T, B, 3))
    assert output.shape == (T, B, 4)
