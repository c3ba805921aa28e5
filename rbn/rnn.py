"""Recurrent layers with the interface of ``torch.nn.LSTM``: LSTM, BNLSTM and LNLSTM."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import _VF, Tensor, nn
from torch.backends.cudnn import rnn as cudnn_rnn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import kernels
from .cells import BNLSTMCell, Cell, LNLSTMCell, LSTMCell, State
from .norm import SequenceBatchNorm

INITS = ("orthogonal", "identity_g", "uniform")
BACKENDS = ("auto", "triton", "eager")


class Recurrent(nn.Module):
    """A stack of LSTM-style layers with ``torch.nn.LSTM``'s constructor, shapes and names
    (``proj_size`` must be 0: no layer here has a projection).

    ``forward(input, hx=None, lengths=None, *, first_step=0) -> output, (h_n, c_n)`` with
    nn.LSTM's shapes; ``lengths`` (valid length of each sequence, batch order) makes padded
    steps invisible: they enter no statistic, leave the state unchanged and give zero outputs.
    A ``PackedSequence`` input is the padded batch with its lengths, and its output is packed
    as nn.LSTM packs it.
    A bidirectional layer reverses only the valid part of each sequence. ``first_step`` is the
    timestep of the input's first step, for a sequence read in chunks with its state carried
    (chunk k of length L: k * L): BN-LSTM's statistics are per timestep, and with it, chunks
    compute what the whole sequence would. The other layers are the same at every timestep.

    A subclass names its cell (``cell_class``), the parameters and modules the cell reads for
    each layer and direction (``cell_parameters``, of which the stack registers the weights and
    ``bias_names``), and adds its normalization modules in ``_add_norms``. The time loop here
    is the same for all of them.

    Extra options: ``init`` is "orthogonal" (each gate block of W_x and W_h orthogonal,
    forget-gate bias 1, other biases 0), "identity_g" (as orthogonal, but the g block of W_h
    is the identity: the authors' ``--init id`` for MNIST) or "uniform" (nn.LSTM's own);
    ``h0_noise_std`` adds Gaussian noise to h_0 in training, zeros or given (a state carried
    into the call too): the authors' fix for the zero batch variance that the constant first
    pixels of seqMNIST cause;
    ``compile`` runs the recurrent step through ``torch.compile``, in the eager loop.

    ``backend`` chooses the implementation: "eager" is the Python loop here, the readable
    reference; "auto" is a fused implementation where the layer has one (``LSTM``: torch's
    fused LSTM), else the eager loop; "triton" asks for the fused Triton kernels. With
    ``compile=True``, "auto" runs the eager loop, whose step is what gets compiled.
    """

    cell_class: type[Cell]
    cell_parameters: tuple[str, ...]
    bias_names: tuple[str, ...] = ("bias",)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        init: str = "orthogonal",
        h0_noise_std: float = 0.0,
        compile: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if not hasattr(self, "cell_class"):
            raise TypeError("rbn.Recurrent is the time loop that LSTM, BNLSTM and LNLSTM share: make one of them")
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if proj_size != 0:
            raise ValueError(f"proj_size must be 0 (rbn's layers have no projection), got {proj_size!r}")
        for name, value in (("bias", bias), ("batch_first", batch_first), ("compile", compile)):
            if not isinstance(value, bool):  # as nn.LSTM: a truthy string would read time as batch
                raise TypeError(f"{name} should be of type bool, got {value!r}")
        if not _is_real(dropout) or not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must be a number in [0, 1], got {dropout!r}")
        if dropout and num_layers == 1:  # as nn.LSTM warns
            warnings.warn(
                "dropout option adds dropout after all but last recurrent layer, so non-zero dropout expects "
                f"num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}",
                stacklevel=2,
            )
        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}; got {init!r}")
        if not _is_real(h0_noise_std) or not 0 <= h0_noise_std < math.inf:
            raise ValueError(f"h0_noise_std must be a finite number >= 0, got {h0_noise_std!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = 0
        self.init = init
        self.h0_noise_std = h0_noise_std
        self.compile_step = compile
        self.backend = backend
        self._recorded_hidden: list[list[Tensor]] | None = None
        self._step = self._step_function()
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else hidden_size * self.num_directions
            for suffix in self._suffixes(layer):
                self.register_parameter(f"weight_ih{suffix}", nn.Parameter(torch.empty(4 * hidden_size, layer_input)))
                self.register_parameter(f"weight_hh{suffix}", nn.Parameter(torch.empty(4 * hidden_size, hidden_size)))
                for name in self.bias_names:
                    bias_vector = nn.Parameter(torch.empty(4 * hidden_size)) if bias else None
                    self.register_parameter(f"{name}{suffix}", bias_vector)
                self._add_norms(suffix)
        self.reset_parameters()
        # Initialized on the CPU, then moved: the same draws on every device.
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)

    def _step_function(self):
        # Compiled per cell class: dynamo caches per code object, so one shared step function
        # would hit its recompile limit across cell types and fall back to eager.
        return torch.compile(self.cell_class.__call__) if self.compile_step else self.cell_class.__call__

    def __getstate__(self) -> dict:
        # A compiled function does not pickle (torch.save(model)); the loaded layer compiles its own.
        return {key: value for key, value in super().__getstate__().items() if key != "_step"}

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._step = self._step_function()

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        """As nn.LSTM's: per layer and direction, W_ih, W_hh and the biases."""
        return [self._weights(suffix) for layer in range(self.num_layers) for suffix in self._suffixes(layer)]

    def _weights(self, suffix: str) -> list[nn.Parameter]:
        """One layer and direction's W_ih, W_hh and, with bias, its biases, in nn.LSTM's order.
        Read at each call, so that ``torch.func.functional_call`` and parametrizations are seen."""
        names = ("weight_ih", "weight_hh", *self.bias_names) if self.bias else ("weight_ih", "weight_hh")
        return [getattr(self, f"{name}{suffix}") for name in names]

    def _suffixes(self, layer: int) -> list[str]:
        return [f"_l{layer}", f"_l{layer}_reverse"][: self.num_directions]

    def _add_norms(self, suffix: str) -> None:
        """Adds the normalization modules of one layer and direction."""

    def _cell(self, suffix: str, first_step: int) -> Cell:
        """The cell that reads the parameters of one layer and direction, for a call whose
        first step is timestep ``first_step``."""
        parameters = (getattr(self, f"{name}{suffix}") for name in self.cell_parameters)
        return self.cell_class(*parameters, first_step=first_step)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        s += f", init={self.init!r}"
        if self.h0_noise_std:
            s += f", h0_noise_std={self.h0_noise_std}"
        if self.compile_step:
            s += ", compile=True"
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        return s

    def reset_parameters(self) -> None:
        hidden = self.hidden_size
        for module in self.children():
            module.reset_parameters()
        if self.init == "uniform":
            bound = 1.0 / math.sqrt(hidden)
            for parameter in self.parameters(recurse=False):
                nn.init.uniform_(parameter, -bound, bound)
            return
        for layer in range(self.num_layers):
            for suffix in self._suffixes(layer):
                for weight in (getattr(self, f"weight_ih{suffix}"), getattr(self, f"weight_hh{suffix}")):
                    for block in weight.detach().chunk(4, 0):
                        nn.init.orthogonal_(block)
                if self.init == "identity_g":
                    nn.init.eye_(getattr(self, f"weight_hh{suffix}").detach()[2 * hidden : 3 * hidden])
                if self.bias:
                    biases = [getattr(self, f"{name}{suffix}") for name in self.bias_names]
                    for bias in biases:
                        nn.init.zeros_(bias)
                    nn.init.ones_(biases[0].detach()[hidden : 2 * hidden])  # forget gate

    def forward(
        self, input: Tensor | PackedSequence, hx: State | None = None, lengths: Tensor | Sequence[int] | None = None,
        *, first_step: int = 0,
    ) -> tuple[Tensor | PackedSequence, State]:
        if isinstance(input, PackedSequence):
            return self._forward_packed(input, hx, lengths, first_step)
        x = self._check_input(input)
        self._check_first_step(first_step)
        batched = x.dim() == 3
        if self.batch_first and batched:
            x = x.transpose(0, 1)
        if not batched:
            x = x.unsqueeze(1)
        steps, batch, _ = x.shape
        h0, c0 = self._initial_state(hx, batch, x, batched)
        order = None
        if lengths is not None:
            lengths = self._check_lengths(lengths, batch, steps)
            lengths, order = lengths.sort(descending=True)
            order = order.to(x.device)
            x, h0, c0 = x[:, order], h0[:, order], c0[:, order]
        x, h_n, c_n = self._layers(x, (h0, c0), lengths, first_step)
        if order is not None:
            restore = order.argsort()
            x, h_n, c_n = x[:, restore], h_n[:, restore], c_n[:, restore]
        if not batched:
            return x.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        if self.batch_first:
            x = x.transpose(0, 1)
        return x, (h_n, c_n)

    def _forward_packed(
        self, input: PackedSequence, hx: State | None, lengths: Tensor | Sequence[int] | None, first_step: int
    ) -> tuple[PackedSequence, State]:
        """nn.LSTM's PackedSequence in and out: the padded batch and the lengths it holds, the
        output packed in the input's order of sequences; h_n and c_n in the batch's order."""
        if lengths is not None:
            raise ValueError("a PackedSequence holds its lengths: pass lengths=None with it")
        padded, lengths = pad_packed_sequence(input, self.batch_first)
        output, state = self.forward(padded, hx, lengths, first_step=first_step)
        if input.sorted_indices is not None:
            output = output.index_select(0 if self.batch_first else 1, input.sorted_indices)
            lengths = lengths[input.sorted_indices.cpu()]
        data = pack_padded_sequence(output, lengths, self.batch_first).data
        return PackedSequence(data, input.batch_sizes, input.sorted_indices, input.unsorted_indices), state

    def flatten_parameters(self) -> None:
        """nn.LSTM's, for code written for it: a no-op, since the eager loop and the kernels read
        the weights where they are (``LSTM``, which calls cuDNN, has its own)."""

    def _layers(
        self, x: Tensor, state: State, lengths: Tensor | None, first_step: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The stack on x (T, B, I) from state (h_0, c_0), the batch sorted by ``lengths``
        (descending) when given: each layer's directions, then dropout between layers. Returns
        the last layer's output, h_n and c_n."""
        h0, c0 = state
        steps, batch, _ = x.shape
        if lengths is None:
            batch_sizes = [batch] * steps
        else:
            valid = torch.arange(steps)[:, None] < lengths
            batch_sizes = valid.sum(1).tolist()
            # Zeros where the padding was: the input term covers every step, and a non-finite
            # pad (NaN * 0) would reach W_x's gradient and the batch statistics.
            x = x.masked_fill(~valid.to(x.device).unsqueeze(-1), 0)
        run = self._run_kernels if self._uses_kernels(x, lengths) else self._run
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            outputs = []
            for direction, suffix in enumerate(self._suffixes(layer)):
                k = layer * self.num_directions + direction
                sequence = x if direction == 0 else _reverse(x, lengths)
                out, (h, c) = run(self._cell(suffix, first_step), sequence, (h0[k], c0[k]), batch_sizes)
                outputs.append(out if direction == 0 else _reverse(out, lengths))
                h_n.append(h)
                c_n.append(c)
            x = torch.cat(outputs, 2) if self.bidirectional else outputs[0]
            if self.dropout and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, self.training)
        return x, torch.stack(h_n), torch.stack(c_n)

    @contextmanager
    def recording_hidden_states(self) -> Iterator[list[list[Tensor]]]:
        """Within it, each forward appends, per layer and direction (nn.LSTM's order), the
        list of h_t of every step as the time loop made them: the tensors in the autograd graph,
        so that ``torch.autograd.grad(loss, h)`` gives d loss / d h_t through every later step
        (the gradient flow of the paper's Figure 1). A reverse direction's list runs backward
        in time; with ``lengths``, step t holds only the sequences still running, longest first.
        The layer runs its eager loop meanwhile, whatever its backend: the fused
        implementations keep no h_t of their own."""
        self._recorded_hidden = recorded = []
        try:
            yield recorded
        finally:
            self._recorded_hidden = None

    def _uses_kernels(self, x: Tensor, lengths: Tensor | Sequence[int] | None) -> bool:
        """Whether this call runs on the Triton kernels: with backend "triton", or a one-line
        error naming what they do not support. A padded batch (``lengths``) runs the eager loop
        whatever the backend: the kernels know no lengths, and a language model's evaluation
        ends in such a batch. "auto" does not choose them yet: they have passed under Triton's
        interpreter and compile for sm_90, but have not run on a GPU."""
        if self.backend != "triton" or self._recorded_hidden is not None or lengths is not None:
            return False
        reason = self.kernels_unsupported(x)
        if reason is not None:
            raise ValueError(f"backend='triton' does not support {reason}; backend='auto' runs such calls eagerly")
        return True

    def kernels_unsupported(self, x: Tensor) -> str | None:
        """What about a call on x (T, B, I) the Triton kernels cannot run, or None."""
        if not hasattr(self.cell_class, "fused_recurrence"):
            return f"{type(self).__name__}, which has no Triton kernel"
        if self.compile_step:
            return "compile=True, which compiles the eager loop's step"
        return kernels.unsupported(x, self.weight_hh_l0)

    def _run_kernels(self, cell: Cell, x: Tensor, state: State, batch_sizes: list[int]) -> tuple[Tensor, State]:
        """``_run`` in the Triton kernels: the input term as there, then the whole recurrence."""
        # Triton launches on the current CUDA device, not on the tensors' (autograd's backward
        # runs in a thread that makes the gradients' device current).
        with torch.cuda.device(x.device) if x.is_cuda else nullcontext():
            output = cell.fused_recurrence(cell.input_term(x, batch_sizes), state)
        cell.update_running_stats(batch_sizes)
        return output

    def _run(self, cell: Cell, x: Tensor, state: State, batch_sizes: list[int]) -> tuple[Tensor, State]:
        """Runs one layer in one direction over time; the batch is sorted by length, and the
        sequences that have ended leave it (as in a ``PackedSequence``)."""
        h, c = state
        outputs, ended = [], []
        for t, (x_t, n) in enumerate(zip(cell.step_inputs(x, batch_sizes), batch_sizes)):
            if n < len(h):
                ended.append((h[n:], c[n:]))
                h, c = h[:n], c[:n]
            if n < len(x_t):
                x_t = x_t[:n]
            h, c = self._step(cell, x_t, (h, c), cell.first_step + t, cell.probe(t, n))
            outputs.append(h)
        cell.keep_hidden([state[0], *outputs[:-1]])
        if self._recorded_hidden is not None:
            self._recorded_hidden.append(outputs)
        # Each normalization in its own mode, as a _BatchNorm is: one frozen with .eval() in a
        # layer that trains keeps its statistics.
        cell.update_running_stats(batch_sizes)
        ended.append((h, c))
        h_n = torch.cat([h for h, _ in reversed(ended)])
        c_n = torch.cat([c for _, c in reversed(ended)])
        batch = len(h_n)
        if batch_sizes[-1] < batch:
            outputs = [F.pad(out, (0, 0, 0, batch - len(out))) for out in outputs]
        return torch.stack(outputs), (h_n, c_n)

    def _check_input(self, input: Tensor) -> Tensor:
        if not isinstance(input, Tensor):
            raise TypeError(f"input must be a Tensor or a PackedSequence, got {type(input).__name__}")
        if input.dim() not in (2, 3):
            raise ValueError(
                f"input must be 3-D ({'batch, time' if self.batch_first else 'time, batch'}, features) "
                f"or 2-D (time, features), got shape {tuple(input.shape)}"
            )
        if input.shape[-1] != self.input_size:
            raise ValueError(f"input has {input.shape[-1]} features, expected input_size={self.input_size}")
        if not input.is_floating_point():
            raise TypeError(f"input must be a floating-point tensor, got {input.dtype}")
        if input.numel() == 0:
            raise ValueError(f"input must not be empty, got shape {tuple(input.shape)}")
        weight = self.weight_ih_l0
        if input.device != weight.device:
            raise ValueError(f"input is on {input.device} and the layer on {weight.device}: move one of them")
        # Under autocast, products cast both to its dtype: nn.LSTM takes mixed dtypes there too.
        if input.dtype != weight.dtype and not torch.is_autocast_enabled(input.device.type):
            raise ValueError(
                f"input dtype {input.dtype} does not match the layer's {weight.dtype}: "
                f"convert the input, or the layer with .to({input.dtype})"
            )
        return input

    def _initial_state(self, hx: State | None, batch: int, x: Tensor, batched: bool) -> State:
        shape = (self.num_layers * self.num_directions, batch, self.hidden_size)
        if hx is None:
            h0 = x.new_zeros(shape)
            c0 = x.new_zeros(shape)
        else:
            if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
                raise TypeError("hx must be a tuple (h_0, c_0)")
            expected = shape if batched else (shape[0], shape[2])
            for name, s in zip(("h_0", "c_0"), hx):
                if not isinstance(s, Tensor):
                    raise TypeError(f"{name} must be a Tensor, got {type(s).__name__}")
                if tuple(s.shape) != expected:
                    raise ValueError(f"{name} must have shape {expected}, got {tuple(s.shape)}")
                if s.device != x.device:
                    raise ValueError(f"{name} must be on the input's device {x.device}, got {s.device}")
                # Under autocast, products cast both to its dtype: nn.LSTM takes mixed dtypes there too.
                if s.dtype != x.dtype and not torch.is_autocast_enabled(x.device.type):
                    raise ValueError(f"{name} must have the input's dtype {x.dtype}, got {s.dtype}")
            h0, c0 = (s if batched else s.unsqueeze(1) for s in hx)
        if self.training and self.h0_noise_std:
            h0 = h0 + self.h0_noise_std * torch.randn_like(h0)
        return h0, c0

    def _check_first_step(self, first_step: int) -> None:
        if not isinstance(first_step, int) or isinstance(first_step, bool) or first_step < 0:
            raise ValueError(f"first_step must be a non-negative integer, got {first_step!r}")
        if first_step and self.bidirectional:
            raise ValueError("first_step continues a sequence forward in time; a bidirectional layer reads it both ways")

    def _check_lengths(self, lengths: Tensor | Sequence[int], batch: int, steps: int) -> Tensor:
        try:
            lengths = torch.as_tensor(lengths).cpu()
        except (TypeError, ValueError, RuntimeError, NotImplementedError):  # strings, None, meta tensors
            raise TypeError(f"lengths must be integers, a list or a 1-D tensor; got {lengths!r}") from None
        if lengths.dim() != 1 or len(lengths) != batch:
            raise ValueError(f"lengths must be 1-D with one entry per sequence ({batch}), got shape {tuple(lengths.shape)}")
        if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
            raise TypeError(f"lengths must be integers, got {lengths.dtype}")
        lengths = lengths.long()  # compared with steps, which a uint8 would wrap
        if lengths.min() < 1 or lengths.max() > steps:
            raise ValueError(
                f"lengths must be between 1 and the sequence length {steps}, "
                f"got min {int(lengths.min())} and max {int(lengths.max())}"
            )
        return lengths


def _fused_lstm(*args) -> tuple[Tensor, Tensor, Tensor]:
    """``torch._VF.lstm``, which ``torch.compile`` runs eagerly, as it runs ``torch.nn.LSTM``:
    traced, the op's oneDNN backward fails on its fake tensors."""
    if torch.compiler.is_compiling():
        # Wrapped here, not at import: torch.compiler.disable imports dynamo, a second's work.
        return torch.compiler.disable(_VF.lstm)(*args)
    return _VF.lstm(*args)


def _is_real(value) -> bool:
    """A real number, not a bool (which Python counts as one) and not NaN."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value


def _reverse(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverses each sequence of x (T, B, F) in time, only its first ``lengths[b]`` steps."""
    if lengths is None:
        return x.flip(0)
    steps = len(x)
    t = torch.arange(steps)[:, None]
    index = torch.where(t < lengths, lengths - 1 - t, t).to(x.device)
    return x.gather(0, index.unsqueeze(-1).expand_as(x))


class LSTM(Recurrent):
    """``torch.nn.LSTM``, with the same parameters (names, shapes, gate order), so
    ``LSTM(...).load_state_dict(torch.nn.LSTM(...).state_dict())`` works.

    ``backend="auto"`` runs the op that ``torch.nn.LSTM.forward`` runs, ``torch._VF.lstm``
    (cuDNN on CUDA, oneDNN or native on CPU), on a ``PackedSequence``'s data when ``lengths``
    are given; ``backend="eager"`` (or ``compile=True``, autocast on a CPU, or
    ``recording_hidden_states``) runs ``Recurrent``'s Python loop, the reference. There is no
    Triton kernel.
    """

    bias_names = ("bias_ih", "bias_hh")

    cell_class = LSTMCell
    cell_parameters = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")

    def __init__(self, *args, backend: str = "auto", **kwargs) -> None:
        if backend == "triton":
            raise ValueError("rbn.LSTM has no Triton kernel; backend='auto' runs torch's fused LSTM (cuDNN on CUDA)")
        super().__init__(*args, backend=backend, **kwargs)

    def _layer_weights(self, layer: int) -> list[Tensor]:
        """One layer's weights in ``torch.nn.LSTM._flat_weights``' order: per direction, W_ih,
        W_hh, and with bias b_ih, b_hh."""
        return [weight for suffix in self._suffixes(layer) for weight in self._weights(suffix)]

    def flatten_parameters(self) -> None:
        """``torch.nn.RNNBase.flatten_parameters``, layer by layer (as ``_layers`` calls cuDNN):
        on CUDA, moves each layer's weights into one buffer laid out as cuDNN wants it, so that
        cuDNN neither warns nor copies them at every call. The parameters stay the same objects,
        now views into those buffers. A no-op elsewhere."""
        weights = [w for layer in range(self.num_layers) for w in self._layer_weights(layer)]
        first = weights[0]
        if not all(w.is_cuda and w.dtype == first.dtype and torch.backends.cudnn.is_acceptable(w) for w in weights):
            return
        if len({w.data_ptr() for w in weights}) != len(weights):
            return  # tied weights would be untied
        with torch.cuda.device_of(first), torch.no_grad():
            if torch._use_cudnn_rnn_flatten_weight():
                for layer in range(self.num_layers):
                    layer_weights = self._layer_weights(layer)
                    torch._cudnn_rnn_flatten_weight(
                        layer_weights,
                        4 if self.bias else 2,
                        layer_weights[0].shape[1],  # the layer's input size
                        cudnn_rnn.get_cudnn_mode("LSTM"),
                        self.hidden_size,
                        0,  # proj_size
                        1,  # num_layers
                        self.batch_first,
                        self.bidirectional,
                    )

    def _apply(self, fn, recurse=True):
        # As torch.nn.RNNBase._apply: .to(), .cuda(), .double() give each weight a new buffer.
        module = super()._apply(fn, recurse)
        self.flatten_parameters()
        return module

    def _layers(
        self, x: Tensor, state: State, lengths: Tensor | None, first_step: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``torch._VF.lstm``, called as ``torch.nn.LSTM.forward`` calls it (on x, or on a
        ``PackedSequence``'s data and batch sizes), one layer at a time with ``F.dropout``
        between layers as in the eager loop: given the dropout, cuDNN would draw it from a
        generator state of its own, which checkpoints and CUDA graphs do not restore.

        Under autocast on a CPU, the eager loop runs instead: oneDNN has no bf16 LSTM on CPUs
        without bf16 instructions, and there ``torch.nn.LSTM`` itself fails."""
        cpu_autocast = x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
        if self.backend == "eager" or self.compile_step or cpu_autocast or self._recorded_hidden is not None:
            return super()._layers(x, state, lengths, first_step)
        steps = len(x)
        batch_sizes = None
        if lengths is not None:
            x, batch_sizes = pack_padded_sequence(x, lengths)[:2]
        h0, c0 = state
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            if layer and self.dropout:
                x = F.dropout(x, self.dropout, self.training)
            k = slice(layer * self.num_directions, (layer + 1) * self.num_directions)
            options = (self._layer_weights(layer), self.bias, 1, 0.0, self.training, self.bidirectional)
            if batch_sizes is None:
                x, h, c = _fused_lstm(x, (h0[k], c0[k]), *options, False)  # batch_first=False: x is (T, B, I)
            else:
                x, h, c = _fused_lstm(x, batch_sizes, (h0[k], c0[k]), *options)
            h_n.append(h)
            c_n.append(c)
        if batch_sizes is not None:
            x = pad_packed_sequence(PackedSequence(x, batch_sizes), total_length=steps)[0]
        return x, torch.cat(h_n), torch.cat(c_n)

class BNLSTM(Recurrent):
    """The batch-normalized LSTM of Cooijmans et al. 2016 (see ``BNLSTMCell``); ``Recurrent``'s
    arguments, and:

    ``max_length``: timesteps with statistics of their own; later ones reuse the last. The
    training sequences' length: a row that training never reaches keeps mean 0 and variance 1.
    ``momentum``, ``eps``: as in ``torch.nn.BatchNorm1d``. ``gamma_init``: every gain starts
    here (0.1: 1.0 saturates tanh). ``input_stats="shared"`` keeps one set of statistics over
    time for the input term (the paper's BN-e* for padded data). Population statistics are
    re-estimated with ``torch.optim.swa_utils.update_bn(loader, model)``.
    """

    def __init__(
        self,
        *args,
        max_length: int,
        momentum: float | None = 0.1,
        eps: float = 1e-5,
        gamma_init: float = 0.1,
        input_stats: str = "per_step",
        **kwargs,
    ) -> None:
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
            raise ValueError(f"max_length must be a positive integer, got {max_length!r}")
        if input_stats not in ("per_step", "shared"):
            raise ValueError(f"input_stats must be 'per_step' or 'shared', got {input_stats!r}")
        if momentum is not None and not (_is_real(momentum) and 0 <= momentum <= 1):
            raise ValueError(f"momentum must be None (a cumulative average) or a number in [0, 1], got {momentum!r}")
        self.max_length = max_length
        self.norm_options = dict(eps=eps, momentum=momentum, gamma_init=gamma_init)
        self.input_stats = input_stats
        super().__init__(*args, **kwargs)

    def _add_norms(self, suffix: str) -> None:
        gates, options = 4 * self.hidden_size, self.norm_options
        shared = self.input_stats == "shared"
        self.add_module(f"bn_x{suffix}", SequenceBatchNorm(gates, self.max_length, center=False, shared=shared, **options))
        self.add_module(f"bn_h{suffix}", SequenceBatchNorm(gates, self.max_length, center=False, **options))
        self.add_module(f"bn_c{suffix}", SequenceBatchNorm(self.hidden_size, self.max_length, **options))

    cell_class = BNLSTMCell
    cell_parameters = ("weight_ih", "weight_hh", "bias", "bn_x", "bn_h", "bn_c")

    def kernels_unsupported(self, x: Tensor) -> str | None:
        for layer in range(self.num_layers):
            for suffix in self._suffixes(layer):
                if getattr(self, f"bn_h{suffix}").training != getattr(self, f"bn_c{suffix}").training:
                    return f"bn_h{suffix} and bn_c{suffix} in different train/eval modes"
        return super().kernels_unsupported(x)

    def _cell(self, suffix: str, first_step: int) -> Cell:
        # nn.SyncBatchNorm.convert_sync_batchnorm, the usual step before DDP, replaces every
        # _BatchNorm, ours too, with one that keeps a single row of statistics.
        for name in ("bn_x", "bn_h", "bn_c"):
            norm = getattr(self, f"{name}{suffix}")
            if not isinstance(norm, SequenceBatchNorm):
                raise TypeError(
                    f"{name}{suffix} is a {type(norm).__name__}, not a SequenceBatchNorm: BN-LSTM keeps statistics "
                    "per timestep, which nn.SyncBatchNorm cannot (without conversion, each DDP process "
                    "normalizes with its own batch's statistics)")
        return super()._cell(suffix, first_step)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, max_length={self.max_length}, input_stats={self.input_stats!r}"


class LNLSTM(Recurrent):
    """The layer-normalized LSTM of Ba et al. 2016 (see ``LNLSTMCell``); ``Recurrent``'s
    arguments, and ``eps`` and ``gamma_init`` (where every gain starts; the LN paper: 1).
    No batch statistics: any batch size works, in training too."""

    def __init__(self, *args, eps: float = 1e-5, gamma_init: float = 1.0, **kwargs) -> None:
        self.eps = eps
        self.gamma_init = gamma_init
        super().__init__(*args, **kwargs)

    def _add_norms(self, suffix: str) -> None:
        gates = 4 * self.hidden_size
        for name, size in (("ln_x", gates), ("ln_h", gates), ("ln_c", self.hidden_size)):
            self.add_module(f"{name}{suffix}", nn.LayerNorm(size, eps=self.eps))

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for module in self.children():
            nn.init.constant_(module.weight, self.gamma_init)

    cell_class = LNLSTMCell
    cell_parameters = ("weight_ih", "weight_hh", "bias", "ln_x", "ln_h", "ln_c")
