"""The three LSTM cells, one signature for all.

A cell is a view over one layer and direction of a stack's parameters, built at each forward
(so parametrizations and ``functional_call`` see the parameters the stack holds now). Every
cell has:

- ``input_term(x, batch_sizes)``: everything that does not depend on h_{t-1}, for all T
  timesteps at once: x (T, B, I) -> (T, B, 4H);
- ``cell(x_t, (h, c), t) -> (h, c)``: one recurrent step;
- ``update_running_stats(batch_sizes)``: called after the loop in training mode.

Gates are laid out as in ``torch.nn.LSTM``: (i, f, g, o), each block ``hidden_size`` rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn.utils.rnn import pad_sequence

from .norm import SequenceBatchNorm

State = tuple[Tensor, Tensor]


def lstm_memory(gates: Tensor, c: Tensor) -> State:
    """c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g); returns (sigmoid(o), c_t)."""
    i, f, g, o = gates.chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o), c


class _RecurrentWeightGradient(torch.autograd.Function):
    """Identity on ``probe`` (T, B, 4H), which the steps add to W_h h_{t-1}: its gradient is
    then d(W_h h_{t-1}) for every t, and W_h's gradient, sum_t d_t^T h_{t-1}, one GEMM over
    all T*B rows instead of T thin ones that each write and accumulate a (4H, H) gradient."""

    @staticmethod
    def forward(ctx, probe: Tensor, weight_hh: Tensor, hidden: list[Tensor]) -> Tensor:
        ctx.hidden = hidden  # h_{t-1} of every step, appended by the steps after this call
        return probe.view_as(probe)

    @staticmethod
    @once_differentiable
    def backward(ctx, d_probe: Tensor):
        # Sequences that ended leave the batch: their rows of h are zero-padded here, and
        # their rows of d_probe are zero since those steps never ran.
        h_prev = pad_sequence(ctx.hidden, batch_first=True)
        weight_grad = d_probe.flatten(0, 1).t() @ h_prev.flatten(0, 1)
        return d_probe, weight_grad, None


@dataclass
class Cell:
    """What every cell holds: W_x (4H, I) and W_h (4H, H), and how it multiplies by W_h."""

    weight_ih: Tensor
    weight_hh: Tensor

    def __post_init__(self) -> None:
        self.hidden: list[Tensor] | None = None
        # Transposed once per sequence, not at every step: a per-step transpose costs a
        # backward node and a strided gradient accumulation per step.
        self.weight_hh_t = self.weight_hh.t()

    def defer_weight_gradient(self, probe: Tensor) -> Tensor:
        """Returns ``probe``, through which W_h's gradient will flow (see ``recurrent``)."""
        if not (torch.is_grad_enabled() and self.weight_hh.requires_grad):
            return probe
        self.hidden = []
        self.weight_hh_t = self.weight_hh_t.detach()
        return _RecurrentWeightGradient.apply(probe, self.weight_hh, self.hidden)

    def recurrent(self, h: Tensor, probe_t: Tensor) -> Tensor:
        """W_h h_{t-1} + probe_t."""
        if self.hidden is not None:
            self.hidden.append(h.detach())
        return torch.addmm(probe_t, h, self.weight_hh_t)

    def update_running_stats(self, batch_sizes: list[int]) -> None:
        """Called after the loop in training mode; only batch-normalized cells keep statistics."""


@dataclass
class LSTMCell(Cell):
    """(i, f, g, o) = W_x x_t + W_h h_{t-1} + b;  h_t = sigmoid(o) * tanh(c_t).

    Cooijmans et al. 2016, eqs. 1-3, which are ``torch.nn.LSTM``'s: b = b_ih + b_hh.
    """

    bias_ih: Tensor | None
    bias_hh: Tensor | None

    def input_term(self, x: Tensor, batch_sizes: list[int]) -> Tensor:
        bias = None if self.bias_ih is None else self.bias_ih + self.bias_hh
        # W_h h_{t-1} is added to this term unchanged, so it carries W_h's gradient.
        return self.defer_weight_gradient(F.linear(x, self.weight_ih, bias))

    def __call__(self, x_t: Tensor, state: State, t: int) -> State:
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

    def input_term(self, x: Tensor, batch_sizes: list[int]) -> Tensor:
        # W_x x laid out (B, T, 4H) in memory, so that BN over the batch for every timestep
        # is a single kernel over (B, T*4H) channels; the loop reads it as (T, B, 4H).
        wx = F.linear(x.transpose(0, 1), self.weight_ih).transpose(0, 1)
        self.probes = self.defer_weight_gradient(wx.new_zeros(()).expand_as(wx)).unbind(0)
        return self.bn_x(wx, batch_sizes, shift=self.bias)

    def __call__(self, x_t: Tensor, state: State, t: int) -> State:
        h, c = state
        w_h = self.recurrent(h, self.probes[t][: len(h)])
        o, c = lstm_memory(x_t + self.bn_h.step(w_h, t), c)
        return o * torch.tanh(self.bn_c.step(c, t)), c

    def update_running_stats(self, batch_sizes: list[int]) -> None:
        self.bn_h.update_running_stats(batch_sizes)
        self.bn_c.update_running_stats(batch_sizes)


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

    def input_term(self, x: Tensor, batch_sizes: list[int]) -> Tensor:
        wx = F.linear(x, self.weight_ih)
        self.probes = self.defer_weight_gradient(wx.new_zeros(()).expand_as(wx)).unbind(0)
        term = self.ln_x(wx)
        return term if self.bias is None else term + self.bias

    def __call__(self, x_t: Tensor, state: State, t: int) -> State:
        h, c = state
        o, c = lstm_memory(x_t + self.ln_h(self.recurrent(h, self.probes[t][: len(h)])), c)
        return o * torch.tanh(self.ln_c(c)), c
