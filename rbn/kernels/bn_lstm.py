"""The BN-LSTM recurrence (Cooijmans et al. 2016, §4) as two persistent Triton kernels.

Given the input term u_t = BN(W_x x_t; gamma_x) + b for all t (computed before, by
``BNLSTMCell.input_term``), the forward kernel runs

    a_t = W_h h_{t-1}
    (i, f, g, o) = BN(a_t; gamma_h) + u_t
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
    h_t = sigmoid(o) * tanh(BN(c_t; gamma_c, beta_c))

with the batch statistics of every timestep (or given population statistics), and the backward
kernel runs its reverse, from t = T-1 down to 0. A program owns blocks of hidden units with all
batch rows, so both BN's statistics and their backward sums stay inside it: one grid barrier per
step (``common``). Outside the loops: W_h's gradient, sum_t dA_t^T h_{t-1}, as one GEMM over all
T*B rows, and the gradient to h_0, dA_0 W_h.
"""

# Not ``from __future__ import annotations``: Triton 3.0's interpreter (torch 2.4's) takes a kernel's
# parameters for constexprs only where their annotation is the object, not a string.
import torch
import triton
import triton.language as tl
from torch import Tensor

from ..cells import refuse_second_derivatives
from .common import (backward_buffers, grid_barrier, matmul_columns, matmul_gates, multiprocessors,
                     recurrent_weight_gradients, state_sequences, tanh, tiling)


@triton.jit
def _batch_statistics(x, row_ok, n):
    """Mean and biased variance of each column over the valid rows, in two passes."""
    x = tl.where(row_ok[:, None], x, 0.0)
    mean = tl.sum(x, 0) / n
    centered = tl.where(row_ok[:, None], x - mean[None, :], 0.0)
    return mean, tl.sum(centered * centered, 0) / n


@triton.jit
def _normalize(x, mean_ptr, var_ptr, offsets, col_ok, row_ok, n, eps, BATCH_STATS: tl.constexpr):
    """(x - mean) / sqrt(var + eps) per column; with batch statistics, which are stored at
    ``offsets``, or else with the statistics stored there."""
    if BATCH_STATS:
        mean, var = _batch_statistics(x, row_ok, n)
        tl.store(mean_ptr + offsets, mean, mask=col_ok)
        tl.store(var_ptr + offsets, var, mask=col_ok)
    else:
        mean = tl.load(mean_ptr + offsets, mask=col_ok, other=0.0)
        var = tl.load(var_ptr + offsets, mask=col_ok, other=1.0)
    return (x - mean[None, :]) / tl.sqrt(var[None, :] + eps)


@triton.jit
def _normalize_backward(d_normalized, normalized, var, eps, row_ok, n, BATCH_STATS: tl.constexpr):
    """The gradient to x of x_hat = (x - mean) / sqrt(var + eps). With batch statistics, mean
    and var are functions of x's column: the usual batch-norm backward."""
    rstd = 1.0 / tl.sqrt(var[None, :] + eps)
    if BATCH_STATS:
        d = tl.where(row_ok[:, None], d_normalized, 0.0)
        mean_d = tl.sum(d, 0) / n
        mean_d_x = tl.sum(d * normalized, 0) / n
        return rstd * (d_normalized - mean_d[None, :] - normalized * mean_d_x[None, :])
    return rstd * d_normalized


@triton.jit
def _gate(a, gate, t, term, gamma_h, a_hat, mean_a, var_a, rows, row_ok, cols, col_ok, n, B, H, eps,
          BATCH_STATS: tl.constexpr):
    """One gate's pre-activation BN(a_t; gamma_h) + u_t from its columns of a_t = W_h h_{t-1}.
    Stores BN's output for the backward."""
    G = 4 * H
    columns = gate * H + cols
    normalized = _normalize(a, mean_a, var_a, t * G + columns, col_ok, row_ok, n, eps, BATCH_STATS)
    mask = row_ok[:, None] & col_ok[None, :]
    offsets = t * B * G + rows[:, None] * G + columns[None, :]
    tl.store(a_hat + offsets, normalized, mask=mask)
    gamma = tl.load(gamma_h + columns, mask=col_ok, other=0.0)
    return gamma[None, :] * normalized + tl.load(term + offsets, mask=mask, other=0.0)


@triton.jit
def _forward(term, w_t, gamma_h, gamma_c, beta_c, hs, cs, a_hat, mean_a, var_a, mean_c, var_c, counter,
             T, B, H, eps_h, eps_c,
             BATCH_STATS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
             BLOCKS: tl.constexpr, PROGRAMS: tl.constexpr, PRECISION: tl.constexpr):
    """hs and cs are (T+1, B, H), slot 0 holding h_0 and c_0; step t writes slot t + 1."""
    rows = tl.arange(0, BLOCK_B)
    row_ok = rows < B
    n = B * 1.0
    for t in range(T):
        h_prev = hs + t * B * H
        for block in range(tl.program_id(0), BLOCKS, PROGRAMS):
            cols = block * BLOCK_H + tl.arange(0, BLOCK_H)
            col_ok = cols < H
            mask = row_ok[:, None] & col_ok[None, :]
            state = rows[:, None] * H + cols[None, :]
            a_i, a_f, a_g, a_o = matmul_gates(h_prev, H, w_t, cols, rows, row_ok, col_ok,
                                              BLOCK_B, BLOCK_H, BLOCK_K, PRECISION)
            i = tl.sigmoid(_gate(a_i, 0, t, term, gamma_h, a_hat, mean_a, var_a, rows, row_ok, cols, col_ok,
                                 n, B, H, eps_h, BATCH_STATS))
            f = tl.sigmoid(_gate(a_f, 1, t, term, gamma_h, a_hat, mean_a, var_a, rows, row_ok, cols, col_ok,
                                 n, B, H, eps_h, BATCH_STATS))
            g = tanh(_gate(a_g, 2, t, term, gamma_h, a_hat, mean_a, var_a, rows, row_ok, cols, col_ok,
                           n, B, H, eps_h, BATCH_STATS))
            o = tl.sigmoid(_gate(a_o, 3, t, term, gamma_h, a_hat, mean_a, var_a, rows, row_ok, cols, col_ok,
                                 n, B, H, eps_h, BATCH_STATS))
            c = f * tl.load(cs + t * B * H + state, mask=mask, other=0.0) + i * g
            tl.store(cs + (t + 1) * B * H + state, c, mask=mask)
            c_hat = _normalize(c, mean_c, var_c, t * H + cols, col_ok, row_ok, n, eps_c, BATCH_STATS)
            gamma = tl.load(gamma_c + cols, mask=col_ok, other=0.0)
            beta = tl.load(beta_c + cols, mask=col_ok, other=0.0)
            tl.store(hs + (t + 1) * B * H + state, o * tanh(gamma[None, :] * c_hat + beta[None, :]), mask=mask)
        grid_barrier(counter, (t + 1) * PROGRAMS)


@triton.jit
def _gate_backward(gate, d_pre, t, a_hat, d_term, d_a, d_gamma_h, gamma_h, var_a, rows, row_ok, cols, col_ok,
                   n, B, H, eps, BATCH_STATS: tl.constexpr):
    """From one gate's d(pre-activation): the input term's gradient, gamma_h's (this step's
    share), and dA_t = d(W_h h_{t-1}) through BN. Reads the gate's BN(a_t) here, not before:
    a value loaded earlier would stay live across the stores between (registers spill)."""
    G = 4 * H
    columns = gate * H + cols
    mask = row_ok[:, None] & col_ok[None, :]
    offsets = t * B * G + rows[:, None] * G + columns[None, :]
    normalized = tl.load(a_hat + offsets, mask=mask, other=0.0)
    tl.store(d_term + offsets, d_pre, mask=mask)
    tl.store(d_gamma_h + t * G + columns, tl.sum(tl.where(mask, d_pre * normalized, 0.0), 0), mask=col_ok)
    gamma = tl.load(gamma_h + columns, mask=col_ok, other=0.0)
    var = tl.load(var_a + t * G + columns, mask=col_ok, other=1.0)
    d_a_t = _normalize_backward(gamma[None, :] * d_pre, normalized, var, eps, row_ok, n, BATCH_STATS)
    tl.store(d_a + offsets, d_a_t, mask=mask)


@triton.jit
def _pre_activation(gate, t, term, a_hat, gamma_h, rows, row_ok, cols, col_ok, B, H):
    """A gate's pre-activation BN(a_t; gamma_h) + u_t, from the BN(a_t) the forward stored."""
    G = 4 * H
    columns = gate * H + cols
    mask = row_ok[:, None] & col_ok[None, :]
    offsets = t * B * G + rows[:, None] * G + columns[None, :]
    gamma = tl.load(gamma_h + columns, mask=col_ok, other=0.0)
    return gamma[None, :] * tl.load(a_hat + offsets, mask=mask, other=0.0) + tl.load(term + offsets, mask=mask, other=0.0)


@triton.jit
def _backward(d_out, term, w, gamma_h, gamma_c, beta_c, cs, a_hat, var_a, mean_c, var_c,
              d_a, d_c, d_term, d_gamma_h, d_gamma_c, d_beta_c, counter,
              T, B, H, eps_h, eps_c,
              BATCH_STATS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
              BLOCKS: tl.constexpr, PROGRAMS: tl.constexpr, PRECISION: tl.constexpr):
    """d_a is (T+1, B, 4H) with slot T zero: step t reads dA_{t+1} from slot t + 1 and writes
    dA_t to slot t. d_c carries dL/dc_t (starting from c_n's gradient) and ends as c_0's.
    The parameters' gradients are written per step, (T, C), and summed after."""
    rows = tl.arange(0, BLOCK_B)
    row_ok = rows < B
    n = B * 1.0
    G = 4 * H
    for s in range(T):
        t = T - 1 - s
        for block in range(tl.program_id(0), BLOCKS, PROGRAMS):
            cols = block * BLOCK_H + tl.arange(0, BLOCK_H)
            col_ok = cols < H
            mask = row_ok[:, None] & col_ok[None, :]
            state = rows[:, None] * H + cols[None, :]
            # dL/dh_t: from the output at t, and from step t + 1 through W_h.
            d_h = tl.load(d_out + t * B * H + state, mask=mask, other=0.0) + matmul_columns(
                d_a + (t + 1) * B * G, G, w, H, cols, rows, row_ok, col_ok, BLOCK_B, BLOCK_H, BLOCK_K, PRECISION)
            # Gate by gate, each value read where it is first needed (o first: it alone needs
            # d_h), so that few (BLOCK_B, BLOCK_H) tiles are live at once.
            o = tl.sigmoid(_pre_activation(3, t, term, a_hat, gamma_h, rows, row_ok, cols, col_ok, B, H))
            mean = tl.load(mean_c + t * H + cols, mask=col_ok, other=0.0)
            var = tl.load(var_c + t * H + cols, mask=col_ok, other=1.0)
            c = tl.load(cs + (t + 1) * B * H + state, mask=mask, other=0.0)
            c_hat = (c - mean[None, :]) / tl.sqrt(var[None, :] + eps_c)
            gamma = tl.load(gamma_c + cols, mask=col_ok, other=0.0)
            beta = tl.load(beta_c + cols, mask=col_ok, other=0.0)
            tanh_z = tanh(gamma[None, :] * c_hat + beta[None, :])
            d_z = tl.where(mask, d_h * o * (1.0 - tanh_z * tanh_z), 0.0)
            _gate_backward(3, d_h * tanh_z * o * (1.0 - o), t, a_hat, d_term, d_a, d_gamma_h, gamma_h, var_a,
                           rows, row_ok, cols, col_ok, n, B, H, eps_h, BATCH_STATS)
            tl.store(d_gamma_c + t * H + cols, tl.sum(d_z * c_hat, 0), mask=col_ok)
            tl.store(d_beta_c + t * H + cols, tl.sum(d_z, 0), mask=col_ok)
            d_cell = tl.load(d_c + state, mask=mask, other=0.0) + _normalize_backward(
                gamma[None, :] * d_z, c_hat, var, eps_c, row_ok, n, BATCH_STATS)
            i = tl.sigmoid(_pre_activation(0, t, term, a_hat, gamma_h, rows, row_ok, cols, col_ok, B, H))
            g = tanh(_pre_activation(2, t, term, a_hat, gamma_h, rows, row_ok, cols, col_ok, B, H))
            _gate_backward(0, d_cell * g * i * (1.0 - i), t, a_hat, d_term, d_a, d_gamma_h, gamma_h, var_a,
                           rows, row_ok, cols, col_ok, n, B, H, eps_h, BATCH_STATS)
            _gate_backward(2, d_cell * i * (1.0 - g * g), t, a_hat, d_term, d_a, d_gamma_h, gamma_h, var_a,
                           rows, row_ok, cols, col_ok, n, B, H, eps_h, BATCH_STATS)
            f = tl.sigmoid(_pre_activation(1, t, term, a_hat, gamma_h, rows, row_ok, cols, col_ok, B, H))
            tl.store(d_c + state, d_cell * f, mask=mask)
            c_prev = tl.load(cs + t * B * H + state, mask=mask, other=0.0)
            _gate_backward(1, d_cell * c_prev * f * (1.0 - f), t, a_hat, d_term, d_a, d_gamma_h, gamma_h, var_a,
                           rows, row_ok, cols, col_ok, n, B, H, eps_h, BATCH_STATS)
        grid_barrier(counter, (s + 1) * PROGRAMS)


class BNLSTMRecurrence(torch.autograd.Function):
    """(term, h_0, c_0, W_h, gamma_h, gamma_c, beta_c) -> (h_1..h_T, c_T). ``statistics`` are
    the (T, 4H) mean and variance of W_h h and the (T, H) ones of c_t: written by the forward
    with batch statistics (the biased variance, as BN normalizes with), read otherwise."""

    @staticmethod
    def forward(ctx, term, h0, c0, weight_hh, gamma_h, gamma_c, beta_c, statistics, batch_stats, eps_h, eps_c):
        steps, batch, gates = term.shape
        hidden = gates // 4
        tiles = tiling(batch, hidden, multiprocessors(term.device))
        hs, cs = state_sequences(term, h0, c0)
        a_hat = torch.empty_like(term)
        counter = torch.zeros(1, dtype=torch.int32, device=term.device)
        _forward[(tiles.programs,)](
            term, weight_hh.t().contiguous(), gamma_h, gamma_c, beta_c, hs, cs, a_hat, *statistics, counter,
            steps, batch, hidden, eps_h, eps_c, batch_stats, tiles.block_b, tiles.block_h, tiles.block_k,
            tiles.blocks, tiles.programs, tiles.precision, **tiles.launch,
        )
        ctx.save_for_backward(term, weight_hh, gamma_h, gamma_c, beta_c, hs, cs, a_hat, *statistics)
        ctx.options = batch_stats, eps_h, eps_c, tiles
        return hs[1:], cs[steps]

    @staticmethod
    def backward(ctx, d_out: Tensor | None, d_c_n: Tensor | None):
        refuse_second_derivatives("backend='triton'", "backend='eager' can be")
        term, weight_hh, gamma_h, gamma_c, beta_c, hs, cs, a_hat, mean_a, var_a, mean_c, var_c = ctx.saved_tensors
        batch_stats, eps_h, eps_c, tiles = ctx.options
        steps, batch, gates = term.shape
        hidden = gates // 4
        d_out, d_c, d_a = backward_buffers(d_out, d_c_n, cs)
        d_term = torch.empty_like(term)
        d_gamma_h = term.new_empty(steps, gates)
        d_gamma_c, d_beta_c = term.new_empty(2, steps, hidden)
        counter = torch.zeros(1, dtype=torch.int32, device=term.device)
        _backward[(tiles.programs,)](
            d_out, term, weight_hh.contiguous(), gamma_h, gamma_c, beta_c, cs, a_hat, var_a, mean_c, var_c,
            d_a, d_c, d_term, d_gamma_h, d_gamma_c, d_beta_c, counter,
            steps, batch, hidden, eps_h, eps_c, batch_stats, tiles.block_b, tiles.block_h, tiles.block_k,
            tiles.blocks, tiles.programs, tiles.precision, **tiles.launch,
        )
        d_weight_hh, d_h0 = recurrent_weight_gradients(d_a, hs, weight_hh)
        return (d_term, d_h0, d_c, d_weight_hh, d_gamma_h.sum(0), d_gamma_c.sum(0), d_beta_c.sum(0),
                None, None, None, None)


def bn_lstm(
    term: Tensor, h0: Tensor, c0: Tensor, weight_hh: Tensor, gamma_h: Tensor, gamma_c: Tensor, beta_c: Tensor,
    eps_h: float, eps_c: float, population: tuple[Tensor, Tensor, Tensor, Tensor] | None,
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor, Tensor] | None]:
    """Runs the recurrence over term (T, B, 4H) from (h_0, c_0), each (B, H). ``population``
    is (mean_a, var_a, mean_c, var_c) for every step, (T, 4H) and (T, H); None normalizes with
    batch statistics, which are then returned (the variance unbiased, as running statistics
    take it). Returns h_1..h_T (T, B, H), c_T and those statistics."""
    steps, batch, gates = term.shape
    term = term.float().contiguous()
    if population is None:
        statistics = (term.new_empty(steps, gates), term.new_empty(steps, gates),
                      term.new_empty(steps, gates // 4), term.new_empty(steps, gates // 4))
    else:
        statistics = tuple(s.float().contiguous() for s in population)
    out, c_n = BNLSTMRecurrence.apply(
        term, h0.float().contiguous(), c0.float().contiguous(), weight_hh, gamma_h, gamma_c, beta_c,
        statistics, population is None, eps_h, eps_c,
    )
    if population is not None:
        return out, c_n, None
    mean_a, var_a, mean_c, var_c = statistics
    unbiased = batch / (batch - 1)
    return out, c_n, (mean_a, var_a * unbiased, mean_c, var_c * unbiased)
