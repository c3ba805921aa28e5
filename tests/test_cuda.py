"""On a GPU the layers compute what they compute on the CPU. CI has no GPU, so these are
skipped there; run them on a GPU machine with ``pytest tests/test_cuda.py``."""

import copy
import warnings

import pytest
import torch
from torch._dynamo.utils import counters
from conftest import NEEDS_KERNELS, make

import rbn

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def forward_backward(model, x, lengths):
    output, (h_n, c_n) = model(x, lengths=lengths)
    (output.square().sum() + h_n.sum() + c_n.sum()).backward()
    return output, h_n, c_n


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_layer_on_cuda_matches_the_cpu(layer_name, weight_gradient, train):
    """The eager loop, in float64, so that the kernels' different summation orders stay far
    below the tolerance."""
    cpu = make(layer_name, num_layers=2, bidirectional=True, backend="eager").double().train(train)
    gpu = copy.deepcopy(cpu).cuda()
    x, lengths = torch.randn(7, 5, 3, dtype=torch.float64), torch.tensor([7, 2, 4, 7, 3])
    expected = forward_backward(cpu, x, lengths)
    for value, reference in zip(forward_backward(gpu, x.cuda(), lengths), expected):
        torch.testing.assert_close(value.cpu(), reference)
    for (name, p), q in zip(cpu.named_parameters(), gpu.parameters()):
        torch.testing.assert_close(q.grad.cpu(), p.grad, msg=name)
    gpu_state = gpu.state_dict()  # the persistent buffers: on CPU, BN-LSTM's loop also fills bn_x's scratch rows
    for name, value in cpu.state_dict().items():
        torch.testing.assert_close(gpu_state[name].cpu(), value, msg=name)


@pytest.mark.parametrize("backend", ["auto", "eager"])
def test_rbn_lstm_on_cuda_matches_cudnn(backend):
    reference = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True).double().cuda()
    model = make("LSTM", num_layers=2, bidirectional=True, backend=backend).double().cuda()
    model.load_state_dict(reference.state_dict())
    x = torch.randn(7, 5, 3, dtype=torch.float64, device="cuda")
    torch.testing.assert_close(model(x), reference(x))  # the output sequence, and (h_n, c_n)


@pytest.mark.slow
def test_compiled_step_on_cuda_matches_eager(layer_name):
    torch._dynamo.reset()
    counters.clear()
    eager = make(layer_name, backend="eager").cuda()
    compiled = make(layer_name, compile=True).cuda()
    compiled.load_state_dict(eager.state_dict())
    x = torch.randn(9, 5, 3, device="cuda")
    expected, output = eager(x)[0], compiled(x)[0]
    torch.testing.assert_close(output, expected)
    expected.sum().backward()
    output.sum().backward()
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name)
    assert counters["frames"]["ok"] >= 1  # what ran was compiled


def lstm_forward_backward(model, x, hx, lengths):
    x, hx = x.clone().requires_grad_(), tuple(s.clone().requires_grad_() for s in hx)
    output, (h_n, c_n) = model(x, hx, lengths=lengths)
    (output.square().sum() + h_n.square().sum() + c_n.sum()).backward()
    return [output, h_n, c_n, x.grad, *(s.grad for s in hx), *(p.grad for p in model.parameters())]


# float32: cuDNN may use TF32 tensor cores (torch.backends.cudnn.allow_tf32, on by default).
TOLERANCES = {torch.float64: {}, torch.float32: dict(atol=1e-2, rtol=1e-2)}


@pytest.mark.parametrize("dtype", TOLERANCES, ids=str)
@pytest.mark.parametrize("lengths", [None, [7, 2, 4, 7, 3]], ids=["full", "padded"])
def test_lstm_auto_on_cuda_equals_eager(dtype, lengths):
    auto = make("LSTM", num_layers=2, bidirectional=True).to("cuda", dtype)
    eager = make("LSTM", num_layers=2, bidirectional=True, backend="eager").to("cuda", dtype)
    eager.load_state_dict(auto.state_dict())
    x = torch.randn(7, 5, 3, dtype=dtype, device="cuda")
    hx = tuple(torch.randn(4, 5, 4, dtype=dtype, device="cuda") for _ in range(2))
    for value, expected in zip(lstm_forward_backward(auto, x, hx, lengths), lstm_forward_backward(eager, x, hx, lengths)):
        torch.testing.assert_close(value, expected, **TOLERANCES[dtype])


def runs_without_copying_weights(model, x) -> bool:
    """Whether cuDNN runs without its warning that the weights are not in one buffer (it then
    copies them at every call)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model(x)[0].sum().backward()
    return not any("contiguous chunk of memory" in str(w.message) for w in caught)


def test_lstm_on_cuda_keeps_its_weights_where_cudnn_wants_them():
    model = make("LSTM", num_layers=2, bidirectional=True)
    parameters = list(model.parameters())
    x = torch.randn(7, 5, 3, device="cuda")
    model.cuda()
    assert list(model.parameters()) == parameters  # the same objects, now in cuDNN's buffers
    assert runs_without_copying_weights(model, x)
    model.load_state_dict(torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True).state_dict())
    assert runs_without_copying_weights(model, x)
    model.reset_parameters()
    assert runs_without_copying_weights(model, x)
    assert runs_without_copying_weights(model.double(), x.double())
    model.weight_hh_l1.data = model.weight_hh_l1.data.clone()  # out of its buffer: the negative control
    assert not runs_without_copying_weights(model, x.double())
    model.flatten_parameters()
    assert runs_without_copying_weights(model, x.double())


class _Outputs(torch.nn.Module):
    """A layer with tensors only out, as make_graphed_callables wants them."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        output, (h_n, c_n) = self.layer(x)
        return output, h_n, c_n


def test_lstm_in_a_cuda_graph_computes_what_it_computes_eagerly():
    """As the trainer captures it (trainer.cuda_graphs=true): forward and backward, in training,
    with random numbers (h0 noise) drawn inside the graph."""
    model = _Outputs(make("LSTM", num_layers=2, bidirectional=True, h0_noise_std=0.1).cuda())
    x = torch.randn(7, 5, 3, device="cuda")

    def step(forward):
        torch.cuda.manual_seed(0)  # the same h0 noise
        outputs = forward(x)
        sum(value.square().sum() for value in outputs).backward()
        results = [value.detach().clone() for value in outputs] + [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        return results

    expected = step(model)
    graphed = step(torch.cuda.make_graphed_callables(model, (x,)))  # replaces model.forward: after the eager step
    for value, reference in zip(graphed, expected):
        torch.testing.assert_close(value, reference)


# --- the Triton kernels (backend="triton"; "auto" on CUDA) ------------------------------------
# At the benchmark shapes the kernels are held to the eager loop's own accuracy against the
# eager loop in float64, at the same precision: a long recurrence amplifies rounding, and no
# fixed tolerance fits every case. LN-LSTM's gradients over 784 steps grow by ~1e5, and there
# the float32 eager loop itself differs from float64 by 1e-3 to 10 (measured on CPU, 4 seeds),
# while BN-LSTM stays near 1e-5.

BENCHMARK_SHAPES = {"seqmnist": (64, 784, 1, 100), "seqmnist_b100": (100, 784, 1, 100), "ptb_char": (64, 100, 50, 1000)}
NORMALIZED = ["BNLSTM", "LNLSTM"]


@pytest.fixture
def tf32(request, monkeypatch):
    """TF32 in the kernels' GEMMs (they follow torch.backends.cudnn.allow_tf32, as cuDNN's RNNs
    do) and in the eager loop's (torch.backends.cuda.matmul.allow_tf32), or in neither."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", request.param)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", request.param)
    return request.param


def kernel_pair(layer_name, input_size, hidden_size, steps, **kwargs):
    if layer_name == "BNLSTM":
        kwargs["max_length"] = steps
    eager = getattr(rbn, layer_name)(input_size, hidden_size, backend="eager", **kwargs).cuda()
    fused = getattr(rbn, layer_name)(input_size, hidden_size, backend="triton", **kwargs).cuda()
    fused.load_state_dict(eager.state_dict())
    return eager, fused


def run_with_gradients(model, x, hx):
    torch.manual_seed(1)
    hx = tuple(s.clone().requires_grad_() for s in hx)
    output, (h_n, c_n) = model(x, hx)
    # The loss's weights drawn in float32 whatever the model's dtype: the same in float64.
    loss = sum((value * torch.randn(value.shape, device=value.device).to(value.dtype)).sum() for value in (output, h_n, c_n))
    loss.backward()
    values = {"output": output, "h_n": h_n, "c_n": c_n, "d h_0": hx[0].grad, "d c_0": hx[1].grad}
    # The state dict's buffers: not the scratch rows of batch statistics, which each path fills its own way.
    persistent = model.state_dict()
    buffers = {name: buffer for name, buffer in model.named_buffers() if name in persistent}
    return values | {f"d {name}": p.grad for name, p in model.named_parameters()} | buffers


def relative_errors(actual: dict, expected: dict) -> dict[str, float]:
    return {
        name: float((actual[name].float() - value.float()).norm() / value.float().norm().clamp(min=1e-30))
        for name, value in expected.items() if value.is_floating_point()
    }


def errors_against_float64(eager, fused, x, hx) -> dict[str, float]:
    """The largest relative error (outputs, state, every gradient, running statistics) of the
    kernels and of the eager loop, against the eager loop in float64."""
    reference = copy.deepcopy(eager).double()
    expected = run_with_gradients(reference, x.double(), tuple(s.double() for s in hx))
    return {name: max(relative_errors(run_with_gradients(model, x, hx), expected).values())
            for name, model in (("fused", fused), ("eager", eager))}


@NEEDS_KERNELS
@pytest.mark.parametrize("tf32", [False, True], ids=["fp32", "tf32"], indirect=True)
@pytest.mark.parametrize("shape", BENCHMARK_SHAPES)
@pytest.mark.parametrize("layer_name", NORMALIZED)
def test_kernels_are_as_accurate_as_the_eager_loop_at_the_benchmark_shapes(layer_name, shape, tf32):
    batch, steps, input_size, hidden = BENCHMARK_SHAPES[shape]
    eager, fused = kernel_pair(layer_name, input_size, hidden, steps)
    x = torch.randn(steps, batch, input_size, device="cuda")
    hx = torch.randn(2, 1, batch, hidden, device="cuda").unbind(0)
    errors = errors_against_float64(eager, fused, x, hx)
    assert errors["fused"] < max(4 * errors["eager"], 1e-5), errors


@NEEDS_KERNELS
@pytest.mark.parametrize("layer_name", NORMALIZED)
def test_kernels_under_bf16_autocast_stay_as_close_to_float32_as_the_eager_loop(layer_name, monkeypatch):
    """bf16 reaches the kernels only through the input term; statistics and c are float32."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    batch, steps, input_size, hidden = 64, 100, 50, 256
    eager, fused = kernel_pair(layer_name, input_size, hidden, steps)
    x = torch.randn(steps, batch, input_size, device="cuda")
    hx = torch.zeros(2, 1, batch, hidden, device="cuda").unbind(0)
    reference = run_with_gradients(eager, x, hx)
    errors = {}
    for name, model in (("eager", eager), ("fused", fused)):
        model.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            result = run_with_gradients(model, x, hx)
        assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in model.parameters())
        errors[name] = max(relative_errors(result, reference).values())
    assert errors["fused"] < max(2 * errors["eager"], 1e-2), errors


@NEEDS_KERNELS
@pytest.mark.parametrize("layer_name", NORMALIZED)
def test_kernels_run_a_two_layer_bidirectional_stack_with_dropout(layer_name, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    eager, fused = kernel_pair(layer_name, 10, 64, 50, num_layers=2, bidirectional=True, dropout=0.3, h0_noise_std=0.1)
    x = torch.randn(50, 32, 10, device="cuda")
    hx = torch.randn(2, 4, 32, 64, device="cuda").unbind(0)
    errors = relative_errors(run_with_gradients(fused, x, hx), run_with_gradients(eager, x, hx))
    # Against the eager loop with the same dropout masks (float64 would draw others): float32
    # in another summation order, which the float32 loop's own error against float64 (3e-5 to
    # 1e-4 for LN-LSTM here, measured on CPU) bounds.
    assert max(errors.values()) < 5e-4, errors


@NEEDS_KERNELS
@pytest.mark.parametrize("layer_name", NORMALIZED)
def test_kernels_captured_in_a_cuda_graph_compute_what_they_compute_uncaptured(layer_name):
    """No host synchronization inside: make_graphed_callables captures forward and backward,
    and a replay gives exactly the uncaptured kernels' outputs, gradients and statistics."""
    _, fused = kernel_pair(layer_name, 1, 100, 784)
    uncaptured = copy.deepcopy(fused)
    x = torch.randn(784, 64, 1, device="cuda")
    graphed = torch.cuda.make_graphed_callables(_Outputs(fused), (x,))
    fused.load_state_dict(uncaptured.state_dict())  # the capture's warm-up updated running statistics
    for model in (graphed, _Outputs(uncaptured)):
        sum(value.square().sum() for value in model(x)).backward()
    for (name, expected), actual in zip(uncaptured.state_dict().items(), fused.state_dict().values()):
        assert torch.equal(actual, expected), name
    for (name, expected), actual in zip(uncaptured.named_parameters(), fused.parameters()):
        assert torch.equal(actual.grad, expected.grad), name


@NEEDS_KERNELS
@pytest.mark.parametrize("layer_name", NORMALIZED)
def test_auto_keeps_the_eager_loop_until_the_kernels_have_passed_on_a_gpu(layer_name, monkeypatch):
    """Once this file passes on a GPU, auto is to choose the kernels on CUDA where they support
    the call (issue: fused Triton recurrences); this test then asserts that instead."""
    calls = []
    cell_class = getattr(rbn, layer_name).cell_class
    fused_recurrence = cell_class.fused_recurrence
    monkeypatch.setattr(cell_class, "fused_recurrence", lambda *args: calls.append(1) or fused_recurrence(*args))
    x = torch.randn(6, 5, 3, device="cuda")
    make(layer_name).cuda()(x)
    assert calls == []
    make(layer_name, backend="triton").cuda()(x)
    assert calls == [1]


def test_triton_backend_refuses_a_triton_without_cooperative_launches_on_a_gpu(monkeypatch):
    triton = pytest.importorskip("triton")
    monkeypatch.setattr(triton, "__version__", "3.2.0")
    with pytest.raises(ValueError, match=r"does not support Triton 3\.2\.0 on a GPU \(the kernels' grid barrier"):
        make("BNLSTM", backend="triton").cuda()(torch.randn(6, 5, 3, device="cuda"))
