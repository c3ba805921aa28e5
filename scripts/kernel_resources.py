"""Compiles the Triton kernels for a GPU target without a GPU and prints what each uses:
registers, stack (spilled registers) and shared memory, read from the cubin with the
``cuobjdump`` that Triton ships, and where the spills are: the spill stores and loads inside
the loop over time, read from the machine code with its ``nvdisasm`` (``loop_over_time``).
For tuning the kernels' tiling on a machine with no GPU, and for catching code that Triton's
interpreter accepts but its compiler rejects.

    python scripts/kernel_resources.py                   # sm_90 (H100), the batch sizes the tiling uses
    python scripts/kernel_resources.py --arch 80 --batch 64 128
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

if __name__ == "__main__":  # the kernels must be built for the compiler, not the interpreter
    os.environ.pop("TRITON_INTERPRET", None)
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from torch.torch_version import TorchVersion  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rbn.kernels import bn_lstm, ln_lstm  # noqa: E402
from rbn.kernels.common import Tiling, tiling  # noqa: E402
from scripts import arguments  # noqa: E402

KERNELS = {
    "BN-LSTM forward": (bn_lstm._forward, {"BATCH_STATS": True}),
    "BN-LSTM backward": (bn_lstm._backward, {"BATCH_STATS": True}),
    "LN-LSTM forward": (ln_lstm._forward, {}),
    "LN-LSTM backward": (ln_lstm._backward, {}),
}
OLDEST_TRITON = (3, 3)  # ASTSource(constexprs=...), and the signatures written below
SCALARS = {"T": "i32", "B": "i32", "H": "i32", "eps": "fp32", "eps_h": "fp32", "eps_c": "fp32"}


def specialization(kernel, signature: dict[str, str], sizes: dict[str, int]) -> dict:
    """What Triton's JIT specializes a launch on, which changes the code it compiles (vectorized
    loads, registers, spills): pointers aligned to 16 bytes (torch's allocations are) and
    integers that are multiples of 16."""
    return {(i,): [["tt.divisibility", 16]] for i, name in enumerate(kernel.arg_names)
            if signature[name].startswith("*") or (name in sizes and sizes[name] % 16 == 0)}


def resources(kernel, constants: dict, tiles: Tiling, arch: int, sizes: dict[str, int]) -> str:
    """The table's cells for the kernel compiled with these constants, specialized as a launch
    on these sizes (T, B, H) would be: cuobjdump's registers and stack, the shared memory, and
    the spills in the loop over time."""
    constants = dict(constants, BLOCK_B=tiles.block_b, BLOCK_H=tiles.block_h, BLOCK_K=tiles.block_k,
                     BLOCKS=tiles.blocks, PROGRAMS=tiles.programs, PRECISION=tiles.precision,
                     BLOCKS_P2=triton.next_power_of_2(tiles.blocks))
    constants = {name: value for name, value in constants.items() if name in kernel.arg_names}
    signature = {
        name: "constexpr" if name in constants else SCALARS.get(name, "*i32" if name == "counter" else "*fp32")
        for name in kernel.arg_names
    }
    source = ASTSource(fn=kernel, signature=signature,
                       constexprs={(kernel.arg_names.index(name),): value for name, value in constants.items()},
                       attrs=specialization(kernel, signature, sizes))
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=tiles.launch)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = next(line for line in cuda_tool("cuobjdump", "-res-usage", cubin.name).splitlines() if "REG:" in line)
        step = loop_over_time(cuda_tool("nvdisasm", "--print-code", cubin.name))
    fields = dict(field.split(":") for field in usage.split() if ":" in field)
    return (f"{fields['REG']:>4} | {fields['STACK']:>5} | {compiled.metadata.shared:>6} | {step.instructions:>5} | "
            f"{step.spill_stores:>6} | {step.spill_loads:>5}")


def cuda_tool(name: str, *args: str) -> str:
    """The output of one of the CUDA tools that Triton ships."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    return subprocess.run([str(tool), *args], capture_output=True, text=True, check=True).stdout


class Loop(NamedTuple):
    instructions: int
    spill_stores: int
    spill_loads: int


def loop_over_time(sass: str) -> Loop:
    """The instructions in nvdisasm's listing of a kernel that lie inside its outermost loop,
    which is the loop over time, and among them the spill stores and loads (STL, LDL): what
    each step pays for spilling, in instructions a thread runs at least once a step (those in
    an inner loop, over K or a barrier's spin, more often). The stack's other spills are values
    the compiler computed once before the loop (addresses, masks), stored there and reloaded
    inside it."""
    lines = sass.splitlines()
    labels = {match[1]: n for n, line in enumerate(lines) if (match := re.match(r"\s*(\.L_x_\d+):", line))}
    loops = [(labels[match[1]], n) for n, line in enumerate(lines)
             if (match := re.search(r"\bBRA\b.*`\((\.L_x_\d+)\)", line)) and labels.get(match[1], n) < n]
    if not loops:
        return Loop(0, 0, 0)
    first, last = max(loops, key=lambda loop: loop[1] - loop[0])
    body = [line for line in lines[first:last + 1] if re.match(r"\s*/\*[0-9a-f]+\*/", line)]
    return Loop(len(body), sum(re.search(r"\bSTL\b", line) is not None for line in body),
                sum(re.search(r"\bLDL\b", line) is not None for line in body))


def main() -> None:
    if TorchVersion(triton.__version__) < OLDEST_TRITON:
        sys.exit(f"kernel_resources.py needs Triton {'.'.join(map(str, OLDEST_TRITON))} or later "
                 f"(torch 2.7's) for the compiler interface it calls; this is Triton {triton.__version__}")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability, e.g. 90 for the H100")
    parser.add_argument("--batch", type=arguments.positive, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--hidden", type=arguments.positive, default=100)
    parser.add_argument("--steps", type=arguments.positive, default=784,
                        help="the sequence length (seqMNIST's by default): only whether it is a multiple of 16 matters")
    parser.add_argument("--sms", type=arguments.positive, default=132, help="the GPU's multiprocessors (132 on the H100 SXM)")
    args = parser.parse_args()
    print(f"sm_{args.arch}, hidden {args.hidden}, {args.steps} steps: registers and stack (spills) per thread in bytes, "
          "shared memory per program, and the loop over time's instructions, spill stores and spill loads")
    print(f"| {'kernel':<17} | {'batch':>5} | {'warps':>5} | regs | stack | shared |  loop | stores | loads |")
    print(f"|{'-' * 19}|{'-' * 7}|{'-' * 7}|{'-' * 6}|{'-' * 7}|{'-' * 8}|{'-' * 7}|{'-' * 8}|{'-' * 7}|")
    for batch in args.batch:
        tiles = dataclasses.replace(tiling(batch, args.hidden, args.sms), precision="tf32")
        for name, (kernel, constants) in KERNELS.items():
            usage = resources(kernel, constants, tiles, args.arch, {"T": args.steps, "B": batch, "H": args.hidden})
            print(f"| {name:<17} | {batch:>5} | {tiles.num_warps:>5} | {usage} |")


if __name__ == "__main__":
    main()
