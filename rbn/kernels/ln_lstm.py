"""The LN-LSTM recurrence (Ba et al. 2016, supplementary material) as two persistent Triton
kernels.

Given the input term u_t = LN(W_x x_t; alpha_2, beta_2) + b for all t (computed before, by
``LNLSTMCell.input_term``), the forward kernel runs

    a_t = W_h h_{t-1}
    (i, f, g, o) = LN(a_t; alpha_1, beta_1) + u_t
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
    h_t = sigmoid(o) * tanh(LN(c_t; alpha_3, beta_3))

and the backward kernel its reverse. The programs own blocks of hidden units, as in
``bn_lstm``, but LN's statistics are each row's, over all 4H (or H) columns: each program
publishes its block's partial statistics (mean and sum of squared deviations, combined with
Chan's formula, which does not cancel as E[x^2] - E[x]^2 does for an unbounded c_t), and the
programs meet at a grid barrier before they read them. Three barriers per step, each way.
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
def _row_partials(x, valid, count):
    """Each row's mean over the block's ``count`` valid columns, and its sum of squared
    deviations from that mean."""
    mean = tl.sum(tl.where(valid, x, 0.0), 1) / count
    return mean, _squared_deviations(x, mean, valid)


@triton.jit
def _squared_deviations(x, mean, valid):
    """Each row's sum of (x - mean)^2 over the valid columns."""
    centered = tl.where(valid, x - mean[:, None], 0.0)
    return tl.sum(centered * centered, 1)


@triton.jit
def _combine_row_statistics(means, squares, rows, row_ok, B, H, GATES: tl.constexpr,
                            BLOCK_H: tl.constexpr, BLOCKS: tl.constexpr, BLOCKS_P2: tl.constexpr):
    """Mean and biased variance of each row over its GATES * H columns, from every block's
    partials (``_row_partials``), stored (BLOCKS, B)."""
    blocks = tl.arange(0, BLOCKS_P2)
    counts = GATES * tl.minimum(tl.maximum(H - blocks * BLOCK_H, 0), BLOCK_H).to(tl.float32)
    mask = (blocks < BLOCKS)[:, None] & row_ok[None, :]
    offsets = blocks[:, None] * B + rows[None, :]
    block_means = tl.load(means + offsets, mask=mask, other=0.0, cache_modifier=".cg")
    block_squares = tl.load(squares + offsets, mask=mask, other=0.0, cache_modifier=".cg")
    total = GATES * H * 1.0
    mean = tl.sum(counts[:, None] * block_means, 0) / total
    spread = block_means - mean[None, :]
    return mean, (tl.sum(block_squares, 0) + tl.sum(counts[:, None] * spread * spread, 0)) / total


@triton.jit
def _row_sums(partials, rows, row_ok, B, BLOCKS: tl.constexpr, BLOCKS_P2: tl.constexpr):
    """Each row's sum over all blocks of the partial sums stored (BLOCKS, B)."""
    blocks = tl.arange(0, BLOCKS_P2)
    mask = (blocks < BLOCKS)[:, None] & row_ok[None, :]
    return tl.sum(tl.load(partials + blocks[:, None] * B + rows[None, :], mask=mask, other=0.0,
                          cache_modifier=".cg"), 0)


@triton.jit
def _load(base, t, rows, cols, width, B, mask):
    """Rows x cols of step t of a (T, B, width) tensor."""
    return tl.load(base + t * B * width + rows[:, None] * width + cols[None, :], mask=mask, other=0.0,
                   cache_modifier=".cg")


@triton.jit
def _store(base, t, rows, cols, width, B, value, mask):
    tl.store(base + t * B * width + rows[:, None] * width + cols[None, :], value, mask=mask)


@triton.jit
def _pre_activation(gate, t, term, a_hat, alpha_h, beta_h, rows, cols, col_ok, B, H, mask):
    """From the stored LN(a_t) (before its gain), one gate's LN(a_t; alpha_1, beta_1) + u_t."""
    columns = gate * H + cols
    normalized = _load(a_hat, t, rows, columns, 4 * H, B, mask)
    alpha = tl.load(alpha_h + columns, mask=col_ok, other=0.0)
    beta = tl.load(beta_h + columns, mask=col_ok, other=0.0)
    return normalized, alpha[None, :] * normalized + beta[None, :] + _load(term, t, rows, columns, 4 * H, B, mask)


@triton.jit
def _normalized_gate(gate, t, term, a_hat, alpha_h, beta_h, mean, rstd, rows, cols, col_ok, B, H, mask):
    """One gate's LN(a_t; alpha_1, beta_1) + u_t from a_t, which a_hat holds; leaves LN(a_t)
    (before its gain) there for the backward."""
    columns = gate * H + cols
    normalized = (_load(a_hat, t, rows, columns, 4 * H, B, mask) - mean[:, None]) * rstd[:, None]
    _store(a_hat, t, rows, columns, 4 * H, B, normalized, mask)
    alpha = tl.load(alpha_h + columns, mask=col_ok, other=0.0)
    beta = tl.load(beta_h + columns, mask=col_ok, other=0.0)
    return alpha[None, :] * normalized + beta[None, :] + _load(term, t, rows, columns, 4 * H, B, mask)


@triton.jit
def _forward(term, w_t, alpha_h, beta_h, alpha_c, beta_c, hs, cs, a_hat, o_scratch, var_a, mean_c, var_c,
             means_a, squares_a, means_c, squares_c, counter, T, B, H, eps,
             BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, BLOCKS: tl.constexpr,
             BLOCKS_P2: tl.constexpr, PROGRAMS: tl.constexpr, PRECISION: tl.constexpr):
    """hs and cs are (T+1, B, H), slot 0 holding h_0 and c_0; step t writes slot t + 1. Saves
    LN(a_t) before its gain, and the rows' statistics: var_a, mean_c and var_c, each (T, B).

    A partials buffer is written in one phase and read in the next; the barriers between make
    every program finish reading it before any program writes it again."""
    rows = tl.arange(0, BLOCK_B)
    row_ok = rows < B
    G = 4 * H
    for t in range(T):
        # 1. a_t = W_h h_{t-1}, and the partial statistics of the block's part of each row.
        for block in range(tl.program_id(0), BLOCKS, PROGRAMS):
            cols = block * BLOCK_H + tl.arange(0, BLOCK_H)
            col_ok = cols < H
            mask = row_ok[:, None] & col_ok[None, :]
            h_prev = hs + t * B * H
            a_i, a_f, a_g, a_o = matmul_gates(h_prev, H, w_t, cols, rows, row_ok, col_ok,
                                              BLOCK_B, BLOCK_H, BLOCK_K, PRECISION)
            mean = tl.sum(tl.where(mask, a_i + a_f + a_g + a_o, 0.0), 1) / (4.0 * tl.minimum(H - block * BLOCK_H, BLOCK_H))
            square = (_squared_deviations(a_i, mean, mask) + _squared_deviations(a_f, mean, mask)
                      + _squared_deviations(a_g, mean, mask) + _squared_deviations(a_o, mean, mask))
            tl.store(means_a + block * B + rows, mean, mask=row_ok)
            tl.store(squares_a + block * B + rows, square, mask=row_ok)
            _store(a_hat, t, rows, cols, G, B, a_i, mask)
            _store(a_hat, t, rows, H + cols, G, B, a_f, mask)
            _store(a_hat, t, rows, 2 * H + cols, G, B, a_g, mask)
            _store(a_hat, t, rows, 3 * H + cols, G, B, a_o, mask)
        grid_barrier(counter, (3 * t + 1) * PROGRAMS)
        # 2. LN(a_t), the gates and c_t, and the partial statistics of c_t's rows.
        mean_a, variance_a = _combine_row_statistics(means_a, squares_a, rows, row_ok, B, H, 4, BLOCK_H, BLOCKS, BLOCKS_P2)
        rstd_a = 1.0 / tl.sqrt(variance_a + eps)
        for block in range(tl.program_id(0), BLOCKS, PROGRAMS):
            cols = block * BLOCK_H + tl.arange(0, BLOCK_H)
            col_ok = cols < H
            mask = row_ok[:, None] & col_ok[None, :]
            i = tl.sigmoid(_normalized_gate(0, t, term, a_hat, alpha_h, beta_h, mean_a, rstd_a, rows, cols, col_ok, B, H, mask))
            f = tl.sigmoid(_normalized_gate(1, t, term, a_hat, alpha_h, beta_h, mean_a, rstd_a, rows, cols, col_ok, B, H, mask))
            g = tanh(_normalized_gate(2, t, term, a_hat, alpha_h, beta_h, mean_a, rstd_a, rows, cols, col_ok, B, H, mask))
            o = tl.sigmoid(_normalized_gate(3, t, term, a_hat, alpha_h, beta_h, mean_a, rstd_a, rows, cols, col_ok, B, H, mask))
            c = f * _load(cs, t, rows, cols, H, B, mask) + i * g
            _store(cs, t + 1, rows, cols, H, B, c, mask)
            _store(o_scratch, 0, rows, cols, H, B, o, mask)
            mean, square = _row_partials(c, mask, tl.minimum(H - block * BLOCK_H, BLOCK_H) * 1.0)
            tl.store(means_c + block * B + rows, mean, mask=row_ok)
            tl.store(squares_c + block * B + rows, square, mask=row_ok)
            tl.store(var_a + t * B + rows, variance_a, mask=row_ok & (block == 0))
        grid_barrier(counter, (3 * t + 2) * PROGRAMS)
        # 3. h_t = sigmoid(o) * tanh(LN(c_t; alpha_3, beta_3)).
        mean, variance = _combine_row_statistics(means_c, squares_c, rows, row_ok, B, H, 1, BLOCK_H, BLOCKS, BLOCKS_P2)
        for block in range(tl.program_id(0), BLOCKS, PROGRAMS):
            cols = block * BLOCK_H + tl.arange(0, BLOCK_H)
            col_ok = cols < H
            mask = row_ok[:, None] & col_ok[None, :]
            c_hat = (_load(cs, t + 1, rows, cols, H, B, mask) - mean[:, None]) / tl.sqrt(variance[:, None] + eps)
            alpha = tl.load(alpha_c + cols, mask=col_ok, other=0.0)
            beta = tl.load(beta_c + cols, mask=col_ok, other=0.0)
            h = _load(o_scratch, 0, rows, cols, H, B, mask) * tanh(alpha[None, :] * c_hat + beta[None, :])
            _store(hs, t + 1, rows, cols, H, B, h, mask)
            tl.store(mean_c + t * B + rows, mean, mask=row_ok & (block == 0))
            tl.store(var_c + t * B + rows, variance, mask=row_ok & (block == 0))
        grid_barrier(counter, (3 * t + 3) * PROGRAMS)


@triton.jit
def _gate_gains_backward(gate, d_pre, normalized, t, d_alpha_h, d_beta_h, alpha_h, cols, col_ok, H, mask):
    """One gate's share of alpha_1's and beta_1's gradients at step t, and of the row sums
    of d LN(a_t) and d LN(a_t) * LN(a_t) that LN's backward needs."""
    columns = gate * H + cols
    d_pre = tl.where(mask, d_pre, 0.0)
    tl.store(d_alpha_h + t * 4 * H + columns, tl.sum(d_pre * normalized, 0), mask=col_ok)
    tl.store(d_beta_h + t * 4 * H + columns, tl.sum(d_pre, 0), mask=col_ok)
    d_normalized = tl.load(alpha_h + columns, mask=col_ok, other=0.0)[None, :] * d_pre
    return tl.sum(d_normalized, 1), tl.sum(d_normalized * normalized, 1)


@triton.jit
def _backward(d_out, term, w, alpha_h, beta_h, alpha_c, beta_c, cs, a_hat, var_a, mean_c, var_c,
              d_a, d_c, d_c_hat, d_term, d_alpha_h, d_beta_h, d_alpha_c, d_beta_c,
              sums_c, sums_c_x, sums_a, sums_a_x, counter, T, B, H, eps,
              BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, BLOCKS: tl.constexpr,
              BLOCKS_P2: tl.constexpr, PROGRAMS: tl.constexpr, PRECISION: tl.constexpr):
    """d_a is (T+1, B, 4H) with slot T zero: step t reads dA_{t+1} and writes dA_t = dL/da_t.
    d_c carries dL/dc_t and ends as c_0's gradient; d_c_hat is (B, H) scratch. LN's backward
    needs each row's sums of dx_hat and of dx_hat * x_hat, which blocks publish as partials.
    The parameters' gradients are written per step, (T, C), and summed after."""
    rows = tl.arange(0, BLOCK_B)
    row_ok = rows < B
    G = 4 * H
    for s in range(T):
        t = T - 1 - s
        rstd_c = 1.0 / tl.sqrt(tl.load(var_c + t * B + rows, mask=row_ok, other=1.0) + eps)
        mean_c_t = tl.load(mean_c + t * B + rows, mask=row_ok, other=0.0)
        # 1. dL/dh_t, o's gradient, and LN(c_t)'s output gradient with its partial row sums.
        for block in range(tl.program_id(0), BLOCKS, PROGRAMS):
            cols = block * BLOCK_H + tl.arange(0, BLOCK_H)
            col_ok = cols < H
            mask = row_ok[:, None] & col_ok[None, :]
            d_h = _load(d_out, t, rows, cols, H, B, mask) + matmul_columns(
                d_a + (t + 1) * B * G, G, w, H, cols, rows, row_ok, col_ok, BLOCK_B, BLOCK_H, BLOCK_K, PRECISION)
            _, pre_o = _pre_activation(3, t, term, a_hat, alpha_h, beta_h, rows, cols, col_ok, B, H, mask)
            o = tl.sigmoid(pre_o)
            c_hat = (_load(cs, t + 1, rows, cols, H, B, mask) - mean_c_t[:, None]) * rstd_c[:, None]
            alpha = tl.load(alpha_c + cols, mask=col_ok, other=0.0)
            beta = tl.load(beta_c + cols, mask=col_ok, other=0.0)
            tanh_z = tanh(alpha[None, :] * c_hat + beta[None, :])
            _store(d_term, t, rows, 3 * H + cols, G, B, d_h * tanh_z * o * (1.0 - o), mask)
            d_z = tl.where(mask, d_h * o * (1.0 - tanh_z * tanh_z), 0.0)
            tl.store(d_alpha_c + t * H + cols, tl.sum(d_z * c_hat, 0), mask=col_ok)
            tl.store(d_beta_c + t * H + cols, tl.sum(d_z, 0), mask=col_ok)
            d_normalized = alpha[None, :] * d_z
            _store(d_c_hat, 0, rows, cols, H, B, d_normalized, mask)
            tl.store(sums_c + block * B + rows, tl.sum(d_normalized, 1), mask=row_ok)
            tl.store(sums_c_x + block * B + rows, tl.sum(tl.where(mask, d_normalized * c_hat, 0.0), 1), mask=row_ok)
        grid_barrier(counter, (3 * s + 1) * PROGRAMS)
        # 2. dL/dc_t through LN(c_t), the gates' gradients, and LN(a_t)'s partial row sums.
        mean_d = _row_sums(sums_c, rows, row_ok, B, BLOCKS, BLOCKS_P2) / H
        mean_d_x = _row_sums(sums_c_x, rows, row_ok, B, BLOCKS, BLOCKS_P2) / H
        for block in range(tl.program_id(0), BLOCKS, PROGRAMS):
            cols = block * BLOCK_H + tl.arange(0, BLOCK_H)
            col_ok = cols < H
            mask = row_ok[:, None] & col_ok[None, :]
            c_hat = (_load(cs, t + 1, rows, cols, H, B, mask) - mean_c_t[:, None]) * rstd_c[:, None]
            d_cell = _load(d_c, 0, rows, cols, H, B, mask) + rstd_c[:, None] * (
                _load(d_c_hat, 0, rows, cols, H, B, mask) - mean_d[:, None] - c_hat * mean_d_x[:, None])
            a_i, pre_i = _pre_activation(0, t, term, a_hat, alpha_h, beta_h, rows, cols, col_ok, B, H, mask)
            a_f, pre_f = _pre_activation(1, t, term, a_hat, alpha_h, beta_h, rows, cols, col_ok, B, H, mask)
            a_g, pre_g = _pre_activation(2, t, term, a_hat, alpha_h, beta_h, rows, cols, col_ok, B, H, mask)
            a_o, _ = _pre_activation(3, t, term, a_hat, alpha_h, beta_h, rows, cols, col_ok, B, H, mask)
            i, f, g = tl.sigmoid(pre_i), tl.sigmoid(pre_f), tanh(pre_g)
            _store(d_c, 0, rows, cols, H, B, d_cell * f, mask)
            d_i = d_cell * g * i * (1.0 - i)
            d_f = d_cell * _load(cs, t, rows, cols, H, B, mask) * f * (1.0 - f)
            d_g = d_cell * i * (1.0 - g * g)
            _store(d_term, t, rows, cols, G, B, d_i, mask)
            _store(d_term, t, rows, H + cols, G, B, d_f, mask)
            _store(d_term, t, rows, 2 * H + cols, G, B, d_g, mask)
            sum_i, sum_x_i = _gate_gains_backward(0, d_i, a_i, t, d_alpha_h, d_beta_h, alpha_h, cols, col_ok, H, mask)
            sum_f, sum_x_f = _gate_gains_backward(1, d_f, a_f, t, d_alpha_h, d_beta_h, alpha_h, cols, col_ok, H, mask)
            sum_g, sum_x_g = _gate_gains_backward(2, d_g, a_g, t, d_alpha_h, d_beta_h, alpha_h, cols, col_ok, H, mask)
            d_o = _load(d_term, t, rows, 3 * H + cols, G, B, mask)
            sum_o, sum_x_o = _gate_gains_backward(3, d_o, a_o, t, d_alpha_h, d_beta_h, alpha_h, cols, col_ok, H, mask)
            tl.store(sums_a + block * B + rows, sum_i + sum_f + sum_g + sum_o, mask=row_ok)
            tl.store(sums_a_x + block * B + rows, sum_x_i + sum_x_f + sum_x_g + sum_x_o, mask=row_ok)
        grid_barrier(counter, (3 * s + 2) * PROGRAMS)
        # 3. dA_t = dL/da_t through LN(a_t).
        mean_d = _row_sums(sums_a, rows, row_ok, B, BLOCKS, BLOCKS_P2) / G
        mean_d_x = _row_sums(sums_a_x, rows, row_ok, B, BLOCKS, BLOCKS_P2) / G
        rstd_a = 1.0 / tl.sqrt(tl.load(var_a + t * B + rows, mask=row_ok, other=1.0) + eps)
        for block in range(tl.program_id(0), BLOCKS, PROGRAMS):
            cols = block * BLOCK_H + tl.arange(0, BLOCK_H)
            col_ok = cols < H
            mask = row_ok[:, None] & col_ok[None, :]
            for gate in tl.static_range(4):
                columns = gate * H + cols
                alpha = tl.load(alpha_h + columns, mask=col_ok, other=0.0)
                d_normalized = alpha[None, :] * _load(d_term, t, rows, columns, G, B, mask)
                normalized = _load(a_hat, t, rows, columns, G, B, mask)
                d_a_t = rstd_a[:, None] * (d_normalized - mean_d[:, None] - normalized * mean_d_x[:, None])
                _store(d_a, t, rows, columns, G, B, d_a_t, mask)
        grid_barrier(counter, (3 * s + 3) * PROGRAMS)


class LNLSTMRecurrence(torch.autograd.Function):
    """(term, h_0, c_0, W_h, alpha_1, beta_1, alpha_3, beta_3) -> (h_1..h_T, c_T)."""

    @staticmethod
    def forward(ctx, term, h0, c0, weight_hh, alpha_h, beta_h, alpha_c, beta_c, eps):
        steps, batch, gates = term.shape
        hidden = gates // 4
        tiles = tiling(batch, hidden, multiprocessors(term.device))
        hs, cs = state_sequences(term, h0, c0)
        a_hat = torch.empty_like(term)
        var_a, mean_c, var_c = term.new_empty(3, steps, batch)
        partials = term.new_empty(4, tiles.blocks, batch)  # means and squares of a_t's rows, then c_t's
        counter = torch.zeros(1, dtype=torch.int32, device=term.device)
        _forward[(tiles.programs,)](
            term, weight_hh.t().contiguous(), alpha_h, beta_h, alpha_c, beta_c, hs, cs, a_hat,
            term.new_empty(batch, hidden), var_a, mean_c, var_c, *partials, counter, steps, batch, hidden, eps,
            tiles.block_b, tiles.block_h, tiles.block_k, tiles.blocks, triton.next_power_of_2(tiles.blocks),
            tiles.programs, tiles.precision, **tiles.launch,
        )
        ctx.save_for_backward(term, weight_hh, alpha_h, beta_h, alpha_c, beta_c, hs, cs, a_hat, var_a, mean_c, var_c)
        ctx.options = eps, tiles
        return hs[1:], cs[steps]

    @staticmethod
    def backward(ctx, d_out: Tensor | None, d_c_n: Tensor | None):
        refuse_second_derivatives("backend='triton'", "backend='eager' can be")
        term, weight_hh, alpha_h, beta_h, alpha_c, beta_c, hs, cs, a_hat, var_a, mean_c, var_c = ctx.saved_tensors
        eps, tiles = ctx.options
        steps, batch, gates = term.shape
        hidden = gates // 4
        d_out, d_c, d_a = backward_buffers(d_out, d_c_n, cs)
        d_term = torch.empty_like(term)
        d_alpha_h, d_beta_h = term.new_empty(2, steps, gates)
        d_alpha_c, d_beta_c = term.new_empty(2, steps, hidden)
        partials = term.new_empty(4, tiles.blocks, batch)  # LN(c_t)'s and LN(a_t)'s row sums
        counter = torch.zeros(1, dtype=torch.int32, device=term.device)
        _backward[(tiles.programs,)](
            d_out, term, weight_hh.contiguous(), alpha_h, beta_h, alpha_c, beta_c, cs, a_hat, var_a, mean_c, var_c,
            d_a, d_c, term.new_empty(batch, hidden), d_term, d_alpha_h, d_beta_h, d_alpha_c, d_beta_c, *partials,
            counter, steps, batch, hidden, eps,
            tiles.block_b, tiles.block_h, tiles.block_k, tiles.blocks, triton.next_power_of_2(tiles.blocks),
            tiles.programs, tiles.precision, **tiles.launch,
        )
        d_weight_hh, d_h0 = recurrent_weight_gradients(d_a, hs, weight_hh)
        return (d_term, d_h0, d_c, d_weight_hh, d_alpha_h.sum(0), d_beta_h.sum(0), d_alpha_c.sum(0),
                d_beta_c.sum(0), None)


def ln_lstm(
    term: Tensor, h0: Tensor, c0: Tensor, weight_hh: Tensor, alpha_h: Tensor, beta_h: Tensor,
    alpha_c: Tensor, beta_c: Tensor, eps: float,
) -> tuple[Tensor, Tensor]:
    """Runs the recurrence over term (T, B, 4H) from (h_0, c_0), each (B, H); returns
    h_1..h_T (T, B, H) and c_T."""
    return LNLSTMRecurrence.apply(
        term.float().contiguous(), h0.float().contiguous(), c0.float().contiguous(), weight_hh,
        alpha_h, beta_h, alpha_c, beta_c, eps,
    )
