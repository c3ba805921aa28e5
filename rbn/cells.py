"""The three LSTM cells, one signature for all.

A cell is a view over one layer and direction of a stack's parameters, built at each forward
(so parametrizations and ``functional_call`` see the parameters the stack holds now). Every
cell has:

- ``input_term(x, batch_sizes)``: everything that does not depend on h_{t-1}, for all T
  timesteps at once: x (T, B, I) -> (T, B, 4H);
- ``step_inputs(x, batch_sizes)``: what the eager loop hands the step at each timestep: the
  input term, unbound along time (or, for the normalized cells on CPU, x_t itself, which the
  step turns into its input term);
- ``probe(t, batch)``: step t of the tensor that carries W_h's gradient (see
  ``defer_weight_gradient``), or None; taken outside the step, so that a compiled step never
  indexes a Python sequence by t;
- ``cell(x_t, (h, c), t, probe_t) -> (h, c)``: one recurrent step, at timestep
  t = ``first_step`` + its index in the call (a long sequence read in chunks continues its
  timesteps; only batch-normalized cells, whose statistics are per timestep, read t);
- ``keep_hidden(h_prev)``: called after the loop with h_{t-1} of every step;
- ``update_running_stats(batch_sizes)``: called after the loop; each normalization in training
  mode (its own, as a ``_BatchNorm``'s) folds in the statistics the steps gathered.

Gates are laid out as in ``torch.nn.LSTM``: (i, f, g, o), each block ``hidden_size`` rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from .norm import SequenceBatchNorm

State = tuple[Tensor, Tensor]


def lstm_memory(gates: Tensor, c: Tensor) -> State:
    """c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g); returns (sigmoid(o), c_t)."""
    i, f, g, o = gates.chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o), c


def refuse_second_derivatives(what: str, instead: str) -> None:
    """Called in a backward whose results autograd cannot differentiate again, and would take
    for constants in a backward that builds a graph (``create_graph=True``, under which grad
    mode is on inside it): second derivatives silently wrong. Raises in one line instead."""
    if torch.is_grad_enabled():
        raise RuntimeError(f"{what} cannot be differentiated twice (a backward with create_graph=True); {instead}")


class _RecurrentWeightGradient(torch.autograd.Function):
    """Identity on ``probe`` (T, B, 4H), which the steps add to W_h h_{t-1}: its gradient is
    then d(W_h h_{t-1}) for every t, and W_h's gradient, sum_t d_t^T h_{t-1}, one GEMM over
    all T*B rows instead of T thin ones that each write and accumulate a (4H, H) gradient.
    Its h_{t-1} are detached and the steps' W_h too: second derivatives through them are
    refused (``Cell.keep_hidden``), under torch.func's transforms as well (whose grad builds a
    graph in backward): with ``setup_context`` they reach that refusal, which names the way
    out, rather than refusing the Function in a message of their own."""

    @staticmethod
    def forward(probe: Tensor, weight_hh: Tensor, hidden: list[Tensor]) -> Tensor:
        return probe.view_as(probe)

    @staticmethod
    def setup_context(ctx, inputs: tuple[Tensor, Tensor, list[Tensor]], output: Tensor) -> None:
        _, weight_hh, hidden = inputs
        ctx.hidden = hidden  # h_{t-1} of every step, filled by ``keep_hidden`` after the loop
        ctx.weight_dtype = weight_hh.dtype

    @staticmethod
    def backward(ctx, d_probe: Tensor):
        # Sequences that ended leave the batch: their rows of h are zero-padded here, and
        # their rows of d_probe are zero since those steps never ran.
        h_prev = pad_sequence(ctx.hidden, batch_first=True).to(d_probe.dtype)  # bf16 under autocast
        weight_grad = d_probe.flatten(0, 1).t() @ h_prev.flatten(0, 1)
        return d_probe, weight_grad.to(ctx.weight_dtype), None


@dataclass
class Cell:
    """What every cell holds: W_x (4H, I) and W_h (4H, H), and how it multiplies by W_h."""

    weight_ih: Tensor
    weight_hh: Tensor
    first_step: int = field(default=0, kw_only=True)  # the timestep of the call's first step

    # From this hidden size on, W_h's gradient is deferred to one GEMM. Where the probe is an
    # extra (T, B, 4H) tensor (the normalized cells), collecting its gradient costs more than
    # the thin per-step GEMMs save for small H: on CPU with batch 64, measured a loss at
    # H = 100, 256 and 400 and a gain at H = 1000.
    defer_from_hidden_size: ClassVar[int] = 512

    # Devices on which the eager loop's step computes its input term from x_t, as the most-used
    # public BN-LSTM port does, rather than for all steps at once in ``input_term``. On CPU a
    # whole sequence's (T, B, 4H) tensor (125 MB at the seqMNIST preset's batch of 100) is
    # memory that glibc maps afresh at every call and the kernel faults in page by page, and
    # the whole-sequence input term of a normalized cell makes several of them per forward and
    # backward: more than its larger kernels save (docs/speed.md). CUDA's caching allocator
    # keeps its blocks, and there each per-step kernel is one more launch. A cell that sets it
    # computes its input term from x_t in ``__call__`` when ``input_per_step``.
    per_step_input_devices: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        self.hidden: list[Tensor] | None = None  # h_{t-1} of every step, when deferring
        self.input_per_step = False
        self.probes: tuple[Tensor, ...] | None = None
        # Transposed once per sequence, not at every step: a per-step transpose costs a
        # backward node and a strided gradient accumulation per step.
        self.weight_hh_t = self.weight_hh.t()

    def defer_weight_gradient(self, probe: Tensor) -> Tensor:
        """Returns ``probe`` (T, B, 4H), through which W_h's gradient will flow when deferring
        pays; the steps must then add its slice t to W_h h_{t-1} (see ``recurrent``)."""
        if not (
            torch.is_grad_enabled()
            and self.weight_hh.requires_grad
            and self.weight_hh.shape[1] >= self.defer_from_hidden_size
            # torch.compile traces the backward with the forward, before the loop hands it h_{t-1}.
            and not torch.compiler.is_compiling()
        ):
            return probe
        self.hidden = []
        self.weight_hh_t = self.weight_hh_t.detach()
        return _RecurrentWeightGradient.apply(probe, self.weight_hh, self.hidden)

    def recurrent(self, h: Tensor, probe_t: Tensor | None) -> Tensor:
        """W_h h_{t-1} + probe_t."""
        return h @ self.weight_hh_t if probe_t is None else torch.addmm(probe_t, h, self.weight_hh_t)

    def keep_hidden(self, h_prev: list[Tensor]) -> None:
        """Hands the deferred gradient h_{t-1} of every step. After the loop, not inside the
        step: a compiled step that appended to a list would recompile at every length."""
        if self.hidden is None:
            return
        self.hidden.extend(h.detach() for h in h_prev)
        # The steps multiplied h_{t-1} by a detached W_h, so d h_{t-1} = d(W_h h_{t-1}) W_h
        # carries no graph back to W_h: a backward that builds one, for second derivatives,
        # must not pass through them. Any backward into the recurrence reaches some h_{t-1}.
        what = (f"W_h's gradient as one GEMM after the loop (rbn.cells.{type(self).__name__}.defer_from_hidden_size"
                f" = {self.defer_from_hidden_size} <= hidden_size {self.weight_hh.shape[1]})")

        def refuse(grad: Tensor) -> None:
            refuse_second_derivatives(what, "set it to math.inf to compute it per step, differentiably")

        for h in h_prev:
            if h.requires_grad:
                h.register_hook(refuse)

    def step_inputs(self, x: Tensor, batch_sizes: list[int]) -> tuple[Tensor, ...]:
        """x_t of every step of the eager loop: the input term, unbound along time, or, on
        ``per_step_input_devices``, x_t itself, which the step multiplies and normalizes."""
        self.input_per_step = self.per_step_input_for(x)
        if not self.input_per_step:
            return self.input_term(x, batch_sizes).unbind(0)
        self.zero_probes(x.new_zeros(()).expand(*x.shape[:2], len(self.weight_ih)))
        return x.unbind(0)

    def per_step_input_for(self, x: Tensor) -> bool:
        return x.device.type in self.per_step_input_devices

    def zero_probes(self, like: Tensor) -> None:
        """A zero probe, for cells that normalize W_h h_{t-1} before adding anything to it."""
        probe = self.defer_weight_gradient(like.new_zeros(()).expand_as(like))
        if self.hidden is not None:
            self.probes = probe.unbind(0)

    def probe(self, t: int, batch: int) -> Tensor | None:
        """Step t of the zero probe, or None when W_h's gradient is not deferred (or, as in
        ``LSTMCell``, the input term itself is the probe)."""
        return None if self.probes is None else self.probes[t][:batch]

    def update_running_stats(self, batch_sizes: list[int]) -> None:
        """Called after the loop; only batch-normalized cells keep statistics, each
        normalization updating its own in its own training mode."""


@dataclass
class LSTMCell(Cell):
    """(i, f, g, o) = W_x x_t + W_h h_{t-1} + b;  h_t = sigmoid(o) * tanh(c_t).

    Cooijmans et al. 2016, §2; these are ``torch.nn.LSTM``'s equations, with b = b_ih + b_hh.
    """

    bias_ih: Tensor | None
    bias_hh: Tensor | None

    defer_from_hidden_size: ClassVar[int] = 0  # the probe is the input term: deferring is free

    def input_term(self, x: Tensor, batch_sizes: list[int]) -> Tensor:
        bias = None if self.bias_ih is None else self.bias_ih + self.bias_hh
        # W_h h_{t-1} is added to this term unchanged, so it carries W_h's gradient.
        return self.defer_weight_gradient(F.linear(x, self.weight_ih, bias))

    def __call__(self, x_t: Tensor, state: State, t: int, probe_t: Tensor | None) -> State:
        h, c = state
        o, c = lstm_memory(self.recurrent(h, x_t), c)
        return o * torch.tanh(c), c


@dataclass
class BNLSTMCell(Cell):
    """The BN-LSTM of Cooijmans et al. 2016, §4:

        (i, f, g, o) = BN(W_h h_{t-1}; gamma_h, 0) + BN(W_x x_t; gamma_x, 0) + b
        c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
        h_t = sigmoid(o) * tanh(BN(c_t; gamma_c, beta_c))

    with statistics per timestep. The unnormalized c_t is carried to the next step.
    """

    bias: Tensor | None
    bn_x: SequenceBatchNorm
    bn_h: SequenceBatchNorm
    bn_c: SequenceBatchNorm

    per_step_input_devices: ClassVar[tuple[str, ...]] = ("cpu",)

    def input_term(self, x: Tensor, batch_sizes: list[int]) -> Tensor:
        # W_x x laid out (B, T, 4H) in memory, so that BN over the batch for every timestep
        # is a single kernel over (B, T*4H) channels; the loop reads it as (T, B, 4H).
        wx = F.linear(x.transpose(0, 1), self.weight_ih).transpose(0, 1)
        self.zero_probes(wx)
        return self.bn_x(wx, batch_sizes, shift=self.bias, first_step=self.first_step)

    def per_step_input_for(self, x: Tensor) -> bool:
        # Statistics shared over time need the whole sequence.
        return super().per_step_input_for(x) and not self.bn_x.shared

    def step_inputs(self, x: Tensor, batch_sizes: list[int]) -> tuple[Tensor, ...]:
        for norm in (self.bn_x, self.bn_h, self.bn_c):
            if norm.training:  # only steps in training fill its rows
                norm.start_sequence()
        inputs = super().step_inputs(x, batch_sizes)
        if self.input_per_step:  # else bn_x's forward, over the whole sequence, checked it
            self.bn_x.check_batch(x.shape[1])
        return inputs

    def __call__(self, x_t: Tensor, state: State, t: int, probe_t: Tensor | None) -> State:
        h, c = state
        if self.input_per_step:
            x_t = self.bn_x.step(F.linear(x_t, self.weight_ih), t, shift=self.bias)
        w_h = self.recurrent(h, probe_t)
        o, c = lstm_memory(x_t + self.bn_h.step(w_h, t), c)
        return o * torch.tanh(self.bn_c.step(c, t)), c

    def fused_recurrence(self, term: Tensor, state: State) -> tuple[Tensor, State]:
        """All steps at once in the Triton kernels (``rbn.kernels.bn_lstm``): (T, B, H) outputs
        and the final state. Normalizes with batch statistics when the normalizations are in
        training mode, and keeps them for ``update_running_stats``, as the steps do."""
        from .kernels.bn_lstm import bn_lstm  # imports Triton, only when the kernels run

        bn_h, bn_c = self.bn_h, self.bn_c
        population = None
        if not bn_h.training:
            population = (*bn_h.population_statistics(len(term), term.device, self.first_step),
                          *bn_c.population_statistics(len(term), term.device, self.first_step))
        out, c_n, batch_statistics = bn_lstm(
            term, *state, self.weight_hh, bn_h.gamma, bn_c.gamma, bn_c.beta, bn_h.eps, bn_c.eps, population
        )
        if batch_statistics is not None:
            mean_h, var_h, mean_c, var_c = batch_statistics
            bn_h.keep_batch_statistics(mean_h, var_h, self.first_step)
            bn_c.keep_batch_statistics(mean_c, var_c, self.first_step)
        return out, (out[-1], c_n)

    def update_running_stats(self, batch_sizes: list[int]) -> None:
        if self.input_per_step:
            self.bn_x.update_running_stats(batch_sizes, self.first_step)
        self.bn_h.update_running_stats(batch_sizes, self.first_step)
        self.bn_c.update_running_stats(batch_sizes, self.first_step)


@dataclass
class LNLSTMCell(Cell):
    """The LN-LSTM of Ba et al. 2016 (supplementary material):

        (i, f, g, o) = LN(W_h h_{t-1}; alpha_1, beta_1) + LN(W_x x_t; alpha_2, beta_2) + b
        c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
        h_t = sigmoid(o) * tanh(LN(c_t; alpha_3, beta_3))

    alpha and beta are the ``weight`` and ``bias`` of ``nn.LayerNorm``. The unnormalized c_t
    is carried to the next step.
    """

    bias: Tensor | None
    ln_x: nn.LayerNorm
    ln_h: nn.LayerNorm
    ln_c: nn.LayerNorm

    per_step_input_devices: ClassVar[tuple[str, ...]] = ("cpu",)

    def input_term(self, x: Tensor, batch_sizes: list[int]) -> Tensor:
        wx = F.linear(x, self.weight_ih)
        self.zero_probes(wx)
        return self.normalized_input(wx)

    def normalized_input(self, wx: Tensor) -> Tensor:
        """LN(W_x x; alpha_2, beta_2) + b, for any number of leading dimensions."""
        term = self.ln_x(wx)
        return term if self.bias is None else term + self.bias

    def __call__(self, x_t: Tensor, state: State, t: int, probe_t: Tensor | None) -> State:
        h, c = state
        if self.input_per_step:
            x_t = self.normalized_input(F.linear(x_t, self.weight_ih))
        w_h = self.recurrent(h, probe_t)
        o, c = lstm_memory(x_t + self.ln_h(w_h), c)
        return o * torch.tanh(self.ln_c(c)), c

    def fused_recurrence(self, term: Tensor, state: State) -> tuple[Tensor, State]:
        """All steps at once in the Triton kernels (``rbn.kernels.ln_lstm``): (T, B, H) outputs
        and the final state."""
        from .kernels.ln_lstm import ln_lstm  # imports Triton, only when the kernels run

        ln_h, ln_c = self.ln_h, self.ln_c
        out, c_n = ln_lstm(term, *state, self.weight_hh, ln_h.weight, ln_h.bias, ln_c.weight, ln_c.bias, ln_h.eps)
        return out, (out[-1], c_n)
