"""On a GPU the layers compute what they compute on the CPU. CI has no GPU, so these are
skipped there; run them on a GPU machine with ``pytest tests/test_cuda.py``."""

import copy

import pytest
import torch

from conftest import make

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def forward_backward(model, x, lengths):
    output, (h_n, c_n) = model(x, lengths=lengths)
    (output.square().sum() + h_n.sum() + c_n.sum()).backward()
    return output, h_n, c_n


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_layer_on_cuda_matches_the_cpu(layer_name, weight_gradient, train):
    """In float64, so that the kernels' different summation orders stay far below the tolerance."""
    cpu = make(layer_name, num_layers=2, bidirectional=True).double().train(train)
    gpu = copy.deepcopy(cpu).cuda()
    x, lengths = torch.randn(7, 5, 3, dtype=torch.float64), torch.tensor([7, 2, 4, 7, 3])
    expected = forward_backward(cpu, x, lengths)
    for value, reference in zip(forward_backward(gpu, x.cuda(), lengths), expected):
        torch.testing.assert_close(value.cpu(), reference)
    for (name, p), q in zip(cpu.named_parameters(), gpu.parameters()):
        torch.testing.assert_close(q.grad.cpu(), p.grad, msg=name)
    for (name, b), c in zip(cpu.named_buffers(), gpu.buffers()):
        torch.testing.assert_close(c.cpu(), b, msg=name)


def test_rbn_lstm_on_cuda_matches_cudnn():
    reference = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True).double().cuda()
    model = make("LSTM", num_layers=2, bidirectional=True).double().cuda()
    model.load_state_dict(reference.state_dict())
    x = torch.randn(7, 5, 3, dtype=torch.float64, device="cuda")
    for value, expected in zip(model(x)[1], reference(x)[1]):
        torch.testing.assert_close(value, expected)


@pytest.mark.slow
def test_compiled_step_on_cuda_matches_eager(layer_name):
    torch._dynamo.reset()
    eager = make(layer_name).cuda()
    compiled = make(layer_name, compile=True).cuda()
    compiled.load_state_dict(eager.state_dict())
    x = torch.randn(9, 5, 3, device="cuda")
    expected, output = eager(x)[0], compiled(x)[0]
    torch.testing.assert_close(output, expected)
    expected.sum().backward()
    output.sum().backward()
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name)
