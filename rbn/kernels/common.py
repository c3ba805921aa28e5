"""What the BN-LSTM and LN-LSTM kernels share: the tiling, the grid barrier, the gate math.

Both kernels are persistent: one launch runs all T steps, and the loop over time is inside the
kernel. Program p owns blocks of ``BLOCK_H`` hidden units (their four gates) with all batch
rows, so W_h's columns are spread over the GPU's SMs and every batch statistic stays inside one
program. h_t must be complete before step t + 1 multiplies it by W_h, so the programs meet at a
grid barrier once per step (more where a statistic spans all columns, as LN's does).

The barrier is a spin on a global counter, which needs every program resident at once: the
grid never exceeds the SM count, and is launched cooperatively where Triton can. Triton's CPU
interpreter runs programs one after another, so there the grid is one program that loops over
all blocks, and every barrier is met at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def tanh(x):
    """tanh(x) = 2 sigmoid(2x) - 1: exact to 1.2e-7 in float32, never NaN for large |x|, and
    available under the interpreter, where libdevice's tanh is not."""
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def grid_barrier(counter, arrivals):
    """Publishes this program's stores and waits until the programs have arrived ``arrivals``
    times in all. The counter only grows, so barrier k of a launch waits for k * NPROG."""
    tl.debug_barrier()
    tl.atomic_add(counter, 1, sem="release")
    while tl.atomic_add(counter, 0, sem="acquire") < arrivals:
        pass
    tl.debug_barrier()


@triton.jit
def barriers_only(counter, count):
    """Meets ``count`` grid barriers and does nothing else: what a barrier costs the kernels'
    steps, apart from their work (``scripts/bench.py --kernels``)."""
    for k in range(count):
        grid_barrier(counter, (k + 1) * tl.num_programs(0))


@triton.jit
def load_tile(base, rows, cols, row_stride, mask):
    """A (rows, cols) tile of a row-major matrix. ``.cg`` reads through L2 only: other
    programs write these tensors during the launch, and L1 is not coherent across SMs."""
    return tl.load(base + rows[:, None] * row_stride + cols[None, :], mask=mask, other=0.0, cache_modifier=".cg")


@triton.jit
def matmul_columns(a, K, b, ldb, b_cols, rows, row_ok, col_ok,
                   BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """(a @ b)[rows, b_cols]: a is (B, K) row-major, b is (K, ldb) row-major."""
    acc = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < K
        a_tile = load_tile(a, rows, k, K, row_ok[:, None] & k_ok[None, :])
        b_tile = load_tile(b, k, b_cols, ldb, k_ok[:, None] & col_ok[None, :])
        acc = tl.dot(a_tile, b_tile, acc, input_precision=PRECISION)
    return acc


@triton.jit
def matmul_gates(h, H, w_t, cols, rows, row_ok, col_ok,
                 BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """The four gates' columns of W_h h for the block's hidden units: h is (B, H) and w_t,
    W_h transposed, (H, 4H), both row-major. One pass over K serves all four gates."""
    a_i = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    a_f = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    a_g = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    a_o = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < H
        h_tile = load_tile(h, rows, k, H, row_ok[:, None] & k_ok[None, :])
        w_mask = k_ok[:, None] & col_ok[None, :]
        a_i = tl.dot(h_tile, load_tile(w_t, k, cols, 4 * H, w_mask), a_i, input_precision=PRECISION)
        a_f = tl.dot(h_tile, load_tile(w_t, k, H + cols, 4 * H, w_mask), a_f, input_precision=PRECISION)
        a_g = tl.dot(h_tile, load_tile(w_t, k, 2 * H + cols, 4 * H, w_mask), a_g, input_precision=PRECISION)
        a_o = tl.dot(h_tile, load_tile(w_t, k, 3 * H + cols, 4 * H, w_mask), a_o, input_precision=PRECISION)
    return a_i, a_f, a_g, a_o


@dataclass(frozen=True)
class Tiling:
    """How a (batch, hidden) problem is cut into programs."""

    block_b: int  # all batch rows, padded to a power of two
    block_h: int  # hidden units per block
    block_k: int
    blocks: int
    programs: int
    num_warps: int
    precision: str  # tl.dot's input precision for float32 operands

    @property
    def launch(self) -> dict:
        # One stage: the K loops are a few iterations long, and pipelining them made the
        # kernels spill registers (compiled for sm_90: up to 632 bytes of stack at B 64).
        options = dict(num_warps=self.num_warps, num_stages=1)
        if not INTERPRETED:
            options["launch_cooperative_grid"] = True
        return options


def multiprocessors(device: torch.device) -> int:
    """How many programs can run at once: the GPU's SMs; one under the interpreter, which runs
    programs one after another."""
    return 1 if INTERPRETED else torch.cuda.get_device_properties(device).multi_processor_count


def tiling(batch: int, hidden: int, multiprocessors: int) -> Tiling:
    """Blocks of 16 hidden units (tl.dot's smallest width), wider where 16 would need more
    programs than there are SMs."""
    block_b = max(16, triton.next_power_of_2(batch))
    block_h = 16
    while triton.cdiv(hidden, block_h) > multiprocessors and multiprocessors > 1:
        block_h *= 2
    blocks = triton.cdiv(hidden, block_h)
    return Tiling(
        block_b=block_b, block_h=block_h, block_k=32, blocks=blocks, programs=min(blocks, multiprocessors),
        num_warps=4 if block_b <= 32 else 8, precision=dot_precision(),
    )


def dot_precision() -> str:
    """tl.dot's input precision for float32 operands: TF32 on the tensor cores where cuDNN's
    RNNs use it too (torch.backends.cudnn.allow_tf32); IEEE under the interpreter."""
    return "tf32" if torch.backends.cudnn.allow_tf32 and not INTERPRETED else "ieee"


def state_sequences(term: Tensor, h0: Tensor, c0: Tensor) -> tuple[Tensor, Tensor]:
    """hs and cs, (T+1, B, H), with h_0 and c_0 in slot 0: the forward kernels write h_t and
    c_t into slot t + 1, and the backward reads h_{t-1} and c_{t-1} from slot t."""
    steps, batch, gates = term.shape
    hs = term.new_empty(steps + 1, batch, gates // 4)
    cs = torch.empty_like(hs)
    hs[0], cs[0] = h0, c0
    return hs, cs


def backward_buffers(d_out: Tensor | None, d_c_n: Tensor | None, cs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The backward kernels' d_out (T, B, H), d_c (B, H), which carries dL/dc_t from c_n's
    gradient down to c_0's, and d_a (T+1, B, 4H), where step t reads dA_{t+1} = dL/d(W_h h_t)
    from slot t + 1 (slot T: zero) and writes dA_t to slot t."""
    steps, batch, hidden = cs.shape[0] - 1, cs.shape[1], cs.shape[2]
    d_out = cs.new_zeros(steps, batch, hidden) if d_out is None else d_out.contiguous()
    d_c = cs.new_zeros(batch, hidden) if d_c_n is None else d_c_n.clone(memory_format=torch.contiguous_format)
    d_a = cs.new_empty(steps + 1, batch, 4 * hidden)
    d_a[steps].zero_()
    return d_out, d_c, d_a


def recurrent_weight_gradients(d_a: Tensor, hs: Tensor, weight_hh: Tensor) -> tuple[Tensor, Tensor]:
    """W_h's gradient, sum_t dA_t^T h_{t-1}, as one GEMM over all T*B rows, and h_0's,
    dA_0 W_h. In float32 whatever autocast says: a backward on the CPU runs in the thread
    that may still be inside an autocast block."""
    steps, _, gates = d_a.shape
    steps -= 1
    with torch.autocast(d_a.device.type, enabled=False):
        d_weight_hh = d_a[:steps].reshape(-1, gates).t() @ hs[:steps].reshape(-1, gates // 4)
        return d_weight_hh, d_a[0] @ weight_hh
