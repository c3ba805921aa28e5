"""Fused GPU recurrences for BN-LSTM and LN-LSTM, written in Triton.

``bn_lstm`` and ``ln_lstm`` run a layer's whole recurrence (forward and backward) in one
persistent kernel each, on the input term that the cell computed for all timesteps before
(``common`` has the design). They compute what the eager cells compute: the cells stay the
readable reference, and the tests compare the two.

``unsupported`` says why a call cannot run on them. It does not import Triton, which the cells
import only when a kernel is about to run: an environment without Triton loses nothing but the
kernels. With
``TRITON_INTERPRET=1`` set before the first kernel runs, they run on CPU tensors under
Triton's interpreter (slowly): that is how the tests check them on machines without a GPU.
"""

from __future__ import annotations

import importlib.util
import os

import torch
from torch import Tensor
from torch.torch_version import TorchVersion  # compares version strings with tuples

MAX_BATCH = 256  # a program holds all batch rows in registers; beyond this they do not fit


def interpreted() -> bool:
    """Whether the kernels run under Triton's interpreter: as they were built, once built."""
    from sys import modules

    common = modules.get(f"{__name__}.common")
    return common.INTERPRETED if common else os.environ.get("TRITON_INTERPRET") == "1"


def unsupported(x: Tensor, weight: Tensor) -> str | None:
    """What about this call the kernels cannot run, in a few words; None when they can.
    x is the layer's (T, B, I) input, weight its W_h (4H, H)."""
    if importlib.util.find_spec("triton") is None:
        return "this environment, which has no Triton"
    if x.device.type not in ("cuda", "cpu"):
        return f"{x.device.type} tensors"
    if weight.dtype != torch.float32:
        return f"{weight.dtype} parameters (float32 only; for bf16, use autocast)"
    if x.dtype == torch.float64:
        return "float64 input"
    steps, batch, _ = x.shape
    if batch > MAX_BATCH:
        return f"batches over {MAX_BATCH} sequences (got {batch})"
    if steps * batch * weight.shape[0] >= 2**31:
        return "sequences whose gates, T x B x 4H, have 2^31 elements or more (int32 offsets)"
    # After what the call asks, which is refused on every machine (the tests check those
    # messages with CPU tensors, also where CUDA would run them).
    if x.device.type == "cpu" and not interpreted():
        return "CPU tensors (set TRITON_INTERPRET=1 before the first call to interpret the kernels)"
    return interpreter_unsupported() if interpreted() else compiler_unsupported()


def compiler_unsupported() -> str | None:
    """Why the installed Triton cannot launch the kernels on a GPU, or None. Their grid barrier
    needs every program resident at once, which a cooperative launch guarantees; Triton takes
    ``launch_cooperative_grid`` from 3.3 on, and before it refuses the unknown option."""
    import triton

    if TorchVersion(triton.__version__) >= (3, 3):
        return None
    return f"Triton {triton.__version__} on a GPU (the kernels' grid barrier needs a cooperative launch: Triton 3.3+, torch 2.7+)"


def interpreter_unsupported() -> str | None:
    """Why Triton's interpreter cannot run the kernels beside the installed NumPy, or None.
    Found with a probe kernel (tl.dot, tl.sum, a loop to a scalar argument) under each Triton
    from 3.0 to 3.8: Triton 3.0 and 3.1 (torch 2.4's and 2.5's) compute wrong results under
    NumPy 2 (right ones under 1.26) without an error, and Triton 3.2 to 3.6 fail under NumPy
    2.4 (not 2.3), which no longer converts a one-element array to an int."""
    import numpy
    import triton

    triton_version, numpy_version = TorchVersion(triton.__version__), TorchVersion(numpy.__version__)
    if triton_version < (3, 2) and numpy_version >= (2,):
        needs = "NumPy 1.x or Triton 3.2+"
    elif triton_version < (3, 7) and numpy_version >= (2, 4):
        needs = "NumPy < 2.4 or Triton 3.7+"
    else:
        return None
    return f"Triton {triton.__version__}'s interpreter with NumPy {numpy.__version__} (it needs {needs})"
