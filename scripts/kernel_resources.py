"""Compiles the Triton kernels for a GPU target without a GPU and prints what each uses:
registers, stack (spilled registers) and shared memory, read from the cubin with the
``cuobjdump`` that Triton ships. For tuning the kernels' tiling on a machine with no GPU, and
for catching code that Triton's interpreter accepts but its compiler rejects.

    python scripts/kernel_resources.py                   # sm_90 (H100), the batch sizes the tiling uses
    python scripts/kernel_resources.py --arch 80 --batch 64 128
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # the kernels must be built for the compiler, not the interpreter
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
    """cuobjdump's resource line of the kernel compiled with these constants, specialized as
    a launch on these sizes (T, B, H) would be."""
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
        tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        report = subprocess.run([str(tool), "-res-usage", cubin.name], capture_output=True, text=True, check=True).stdout
    usage = next(line for line in report.splitlines() if "REG:" in line)
    fields = dict(field.split(":") for field in usage.split() if ":" in field)
    return f"{fields['REG']:>4} | {fields['STACK']:>5} | {compiled.metadata.shared:>6}"


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
          "shared memory per program")
    print(f"| {'kernel':<17} | {'batch':>5} | {'warps':>5} | regs | stack | shared |")
    print(f"|{'-' * 19}|{'-' * 7}|{'-' * 7}|{'-' * 6}|{'-' * 7}|{'-' * 8}|")
    for batch in args.batch:
        tiles = dataclasses.replace(tiling(batch, args.hidden, args.sms), precision="tf32")
        for name, (kernel, constants) in KERNELS.items():
            usage = resources(kernel, constants, tiles, args.arch, {"T": args.steps, "B": batch, "H": args.hidden})
            print(f"| {name:<17} | {batch:>5} | {tiles.num_warps:>5} | {usage} |")


if __name__ == "__main__":
    main()
