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

from .norm import SequenceBatchNorm

State = tuple[Tensor, Tensor]


def lstm_memory(gates: Tensor, c: Tensor) -> State:
    """c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g); returns (sigmoid(o), c_t)."""
    i, f, g, o = gates.chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o), c


@dataclass
class Cell:
    """What every cell holds: W_x (4H, I) and W_h (4H, H)."""

    weight_ih: Tensor
    weight_hh: Tensor

    def __post_init__(self) -> None:
        # Transposed once per sequence, not at every step: a per-step transpose costs a
        # backward node and a strided gradient accumulation per step.
        self.weight_hh_t = self.weight_hh.t()

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
        return F.linear(x, self.weight_ih, bias)

    def __call__(self, x_t: Tensor, state: State, t: int) -> State:
        h, c = state
        o, c = lstm_memory(torch.addmm(x_t, h, self.weight_hh_t), c)
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
        term = self.bn_x(wx, batch_sizes)
        return term if self.bias is None else term + self.bias

    def __call__(self, x_t: Tensor, state: State, t: int) -> State:
        h, c = state
        o, c = lstm_memory(x_t + self.bn_h.step(h @ self.weight_hh_t, t), c)
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
        term = self.ln_x(F.linear(x, self.weight_ih))
        return term if self.bias is None else term + self.bias

    def __call__(self, x_t: Tensor, state: State, t: int) -> State:
        h, c = state
        o, c = lstm_memory(x_t + self.ln_h(h @ self.weight_hh_t), c)
        return o * torch.tanh(self.ln_c(c)), c
