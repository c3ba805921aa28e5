"""Times rbn's layers against torch.nn.LSTM (oneDNN on CPU, cuDNN on GPU) in one process,
and against a BN-LSTM of the most-used public port's design (a per-step Python loop, see
``PortStyleBNLSTM``), which rbn.BNLSTM must not be slower than.

Forward + backward per batch, the variants interleaved within each round, medians over
rounds. Prints a table of ratios to nn.LSTM and writes JSON. A row per implementation:
"LSTM" is torch's fused LSTM op and "LSTM eager" rbn's Python loop; "BNLSTM eager" and
"LNLSTM eager" are the loops and "BNLSTM triton" and "LNLSTM triton" the fused Triton
kernels, wherever rbn.kernels.unsupported lets them run (on a CPU, only under
TRITON_INTERPRET=1); "compiled" rows compile the loop's step, and --cuda-graphs adds each
row captured whole in CUDA graphs. Compile time (first call of a compiled layer minus its
median) is reported separately, cold: inductor gets a fresh cache directory, and dynamo
compiles each cell class once per process, so a later shape shows only its recompilation.

On CUDA each row also gives its peak memory, and its ratio to nn.LSTM's. The header says
where TF32 was on: cuDNN's LSTM and the Triton kernels' tl.dot use it by default, the other
GEMMs only with --tf32. --profile shows where each row's time goes, kernel by kernel.

It also times the data loaders (training batches per second of every dataset whose files
are present), which must stay far faster than a training step.

    python scripts/bench.py                       # seqmnist and ptb_char, eager and compiled, loaders
    python scripts/bench.py --shapes seqmnist --no-compile --rounds 7
    python scripts/bench.py --shapes seqmnist --kernels --no-loaders   # one timestep's kernels alone
    python scripts/bench.py --shapes 32,200,10,256 --no-compile        # any B,T,I,H
    python scripts/bench.py --shapes ptb_char --no-compile --no-loaders --profile   # each row's top kernels
    TRITON_INTERPRET=1 python scripts/bench.py --shapes 8,12,3,5 --no-compile --no-loaders   # triton rows on a CPU

    # on a GPU: the README's table
    python scripts/bench.py --shapes seqmnist seqmnist100 ptb_char text8 --cuda-graphs --no-loaders
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data  # noqa: E402
import rbn  # noqa: E402
from rbn.cells import lstm_memory  # noqa: E402
from scripts import arguments  # noqa: E402

SHAPES = {  # name: (batch, steps, input_size, hidden_size), the paper's tasks
    "seqmnist": (64, 784, 1, 100),
    "seqmnist100": (100, 784, 1, 100),  # the seqmnist preset's batch
    "ptb_char": (64, 100, 50, 1000),
    "text8": (128, 180, 27, 2000),
}
DEFAULT_SHAPES = ("seqmnist", "ptb_char")  # the others take long on a CPU
LAYERS = {
    "LSTM": lambda i, h, T, **kw: rbn.LSTM(i, h, **kw),
    "BNLSTM": lambda i, h, T, **kw: rbn.BNLSTM(i, h, max_length=T, **kw),
    "LNLSTM": lambda i, h, T, **kw: rbn.LNLSTM(i, h, **kw),
}
BACKENDS = {  # each layer's rows: its fused implementation, if any, and its Python loop
    "LSTM": ("auto", "eager"),  # auto: torch's fused LSTM op (cuDNN on CUDA)
    "BNLSTM": ("eager", "triton"),
    "LNLSTM": ("eager", "triton"),
}
PORT_STYLE = "port-style BN-LSTM"
PROFILE_TOP = 10  # kernels shown per variant
Result = TypeVar("Result")


class PerStepBatchNorm(torch.nn.Module):
    """nn.BatchNorm1d with a row of running statistics per timestep, which F.batch_norm
    updates in place at every step, and gains shared over time."""

    def __init__(self, features: int, max_length: int, center: bool) -> None:
        super().__init__()
        self.gamma = torch.nn.Parameter(torch.full((features,), 0.1))
        self.beta = torch.nn.Parameter(torch.zeros(features)) if center else None
        self.register_buffer("running_mean", torch.zeros(max_length, features))
        self.register_buffer("running_var", torch.ones(max_length, features))

    def forward(self, x: torch.Tensor, t: int) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean[t], self.running_var[t], self.gamma, self.beta, self.training, 0.1, 1e-5)


class PortStyleBNLSTM(torch.nn.Module):
    """A baseline BN-LSTM of the design of the most-used public PyTorch port (written here,
    not copied): a Python loop over timesteps that multiplies and batch-normalizes W_x x_t and
    W_h h_{t-1} at every step, with statistics for each of max_length timesteps. rbn.BNLSTM's
    equations, gate order and gains, and its names less "_l0", so that its state loads here."""

    def __init__(self, input_size: int, hidden_size: int, max_length: int) -> None:
        super().__init__()
        bound = hidden_size**-0.5
        self.weight_ih = torch.nn.Parameter(torch.empty(4 * hidden_size, input_size).uniform_(-bound, bound))
        self.weight_hh = torch.nn.Parameter(torch.empty(4 * hidden_size, hidden_size).uniform_(-bound, bound))
        self.bias = torch.nn.Parameter(torch.zeros(4 * hidden_size))
        self.bn_x = PerStepBatchNorm(4 * hidden_size, max_length, center=False)
        self.bn_h = PerStepBatchNorm(4 * hidden_size, max_length, center=False)
        self.bn_c = PerStepBatchNorm(hidden_size, max_length, center=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        h = c = x.new_zeros(x.shape[1], self.weight_hh.shape[1])
        outputs = []
        for t, x_t in enumerate(x.unbind(0)):
            gates = self.bn_x(F.linear(x_t, self.weight_ih), t) + self.bn_h(F.linear(h, self.weight_hh), t) + self.bias
            i, f, g, o = gates.chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(self.bn_c(c, t))
            outputs.append(h)
        return torch.stack(outputs), (h, c)


def shape(spec: str) -> tuple[str, tuple[int, int, int, int]]:
    """A shape's name in SHAPES, or batch,steps,input_size,hidden_size."""
    if spec in SHAPES:
        return spec, SHAPES[spec]
    try:
        dims = tuple(int(n) for n in spec.split(","))
    except ValueError:
        dims = ()
    if len(dims) != 4 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"{spec!r} is neither {' nor '.join(SHAPES)} nor four positive integers B,T,I,H")
    return spec, dims


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def forward_backward(model: torch.nn.Module, x: torch.Tensor) -> None:
    output, _ = model(x)
    output.sum().backward()


def time_batch(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Seconds for one forward + backward pass."""
    synchronize(x.device)
    start = time.perf_counter()
    forward_backward(model, x)
    synchronize(x.device)
    return time.perf_counter() - start


def peak_mb(run: Callable[[], Result]) -> tuple[Result, float]:
    """What run() returns, and the most CUDA memory it held at once beyond what was allocated
    before it, in MB."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = run()
    torch.cuda.synchronize()
    return result, (torch.cuda.max_memory_allocated() - before) / 2**20


def profile_kernels(model: torch.nn.Module, x: torch.Tensor) -> dict:
    """One forward + backward under torch.profiler: the self time and calls of all its CUDA
    kernels (on CPU, of its operators), and the PROFILE_TOP with the most self time."""
    on_cuda = x.device.type == "cuda"
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if on_cuda else [ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities) as profiler:
        forward_backward(model, x)
        synchronize(x.device)

    def self_us(event) -> float:
        return event.self_device_time_total if on_cuda else event.self_cpu_time_total

    def counted(event) -> bool:
        if not on_cuda:
            return True
        # Only the device's own events: operators and record_function ranges carry their
        # kernels' device time too. The filter of key_averages().table()'s own device total.
        return event.device_type != DeviceType.CPU and not event.is_user_annotation

    events = sorted((event for event in profiler.key_averages() if counted(event) and self_us(event) > 0),
                    key=self_us, reverse=True)
    return dict(
        self_ms=sum(map(self_us, events)) / 1e3,
        calls=sum(event.count for event in events),
        kernels=[
            dict(kernel=event.key, calls=event.count, self_ms=self_us(event) / 1e3,
                 total_ms=(event.device_time_total if on_cuda else event.cpu_time_total) / 1e3)
            for event in events[:PROFILE_TOP]
        ],
    )


def bench_shape(name: str, dims: tuple[int, ...], device: torch.device, rounds: int, compile: bool,
                cuda_graphs: bool, profile: bool = False) -> tuple[list[dict], dict[str, str], list[dict]]:
    """A row per variant, the variants not run with why, and with profile each variant's
    profile_kernels. On CUDA, a row's peak memory is that of one forward + backward,
    gradients included; a CUDA graph's is its capture's, as a graph allocates all it needs
    then, in a pool of its own that its replays reuse."""
    batch, steps, input_size, hidden = dims
    torch.manual_seed(0)
    x = torch.randn(steps, batch, input_size, device=device)
    if profile and cuda_graphs:
        # The profiler set up before any graph is captured, as torch.profiler._utils.
        # _init_for_cuda_graphs does: profiling graphs captured before CUPTI started can fault
        # (pytorch#75504). Not yet seen on this project's GPU.
        with torch.profiler.profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]):
            pass
    models = {"nn.LSTM": torch.nn.LSTM(input_size, hidden).to(device), PORT_STYLE: PortStyleBNLSTM(input_size, hidden, steps).to(device)}
    first_call, skipped, peak = {}, {}, {}
    for layer, make in LAYERS.items():
        backends = []
        for backend in BACKENDS[layer]:
            label = layer if backend == "auto" else f"{layer} {backend}"
            model = make(input_size, hidden, steps, backend=backend).to(device)
            # Asked of the kernels, not of the device: they also run on CPU under TRITON_INTERPRET=1.
            reason = rbn.kernels.unsupported(x, model.weight_hh_l0) if backend == "triton" else None
            if reason is None:
                models[label] = model
                backends.append((label, backend))
            else:
                skipped[label] = reason
        if compile:
            models[f"{layer} compiled"] = make(input_size, hidden, steps, compile=True).to(device)
        for label, backend in backends if cuda_graphs else []:
            model = make(input_size, hidden, steps, backend=backend).to(device)
            graph = f"{label} CUDA graph"
            start = time.perf_counter()
            models[graph], peak[graph] = peak_mb(lambda: torch.cuda.make_graphed_callables(model, (x,)))
            first_call[graph] = time.perf_counter() - start
    for label, model in models.items():  # warm-up; compiles
        first_call[label] = first_call.get(label, 0.0) + time_batch(model, x)
    for label, model in models.items() if device.type == "cuda" else []:
        if label not in peak:
            model.zero_grad(set_to_none=True)  # so that the gradients count, as in a capture
            _, peak[label] = peak_mb(lambda: forward_backward(model, x))
    times = {label: [] for label in models}
    for _ in range(rounds):
        for label, model in models.items():
            times[label].append(time_batch(model, x))
    baseline = statistics.median(times["nn.LSTM"])
    rows = []
    for label, samples in times.items():
        median = statistics.median(samples)
        rows.append(
            dict(
                shape=name, layer=label, batch=batch, steps=steps, input_size=input_size, hidden_size=hidden,
                median_s=median, ratio=median / baseline, rounds=rounds,
                peak_mb=peak.get(label), peak_ratio=peak[label] / peak["nn.LSTM"] if peak else None,
                compile_s=first_call[label] - median if label.endswith(("compiled", "graph")) else None,
            )
        )
    profiles = [dict(shape=name, layer=label, **profile_kernels(model, x)) for label, model in models.items()] if profile else []
    return rows, skipped, profiles


def bench_kernels(name: str, dims: tuple[int, ...], device: torch.device, rounds: int, compile: bool) -> list[dict]:
    """One timestep's kernels on the shape, each timed alone, forward + backward, against
    nn.LSTM's time per timestep: what any loop over time pays before its Python overhead.
    Each row includes a fixed cost of the timing itself (an autograd.grad call), which the
    row of a one-element addition measures; but the row of one grid barrier, one launch of
    ``steps`` barriers divided by their number, where the Triton kernels run."""
    batch, steps, input_size, hidden = dims
    torch.manual_seed(0)

    def leaf(*size: int) -> torch.Tensor:
        return torch.randn(*size, device=device, requires_grad=True)

    h, c, gates, weight, gamma = leaf(batch, hidden), leaf(batch, hidden), leaf(batch, 4 * hidden), leaf(4 * hidden, hidden), leaf(4 * hidden)

    def gate_math(gates: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        o, c = lstm_memory(gates, c)
        return o * torch.tanh(c)

    one = leaf(1)
    kernels = {
        "x + 1 (the timing's own cost)": (lambda: one + 1, (one,)),  # in every row but the barrier's: subtract it
        # The layers take W_h's gradient in one GEMM after the loop: per step, only h's.
        "W_h h (GEMM), d/dh": (lambda: h @ weight.t(), (h,)),
        "gate math": (lambda: gate_math(gates, c), (gates, c)),
        "batch_norm(gates)": (lambda: F.batch_norm(gates, None, None, gamma, None, True, 0.0, 1e-5), (gates, gamma)),
        "layer_norm(gates)": (lambda: F.layer_norm(gates, (4 * hidden,), gamma), (gates, gamma)),
    }
    if compile:
        fused = torch.compile(gate_math)
        kernels["gate math, compiled"] = (lambda: fused(gates, c), (gates, c))

    def forward_backward(run, inputs) -> None:
        out = run()
        torch.autograd.grad(out, inputs, torch.ones_like(out))

    reference, x = torch.nn.LSTM(input_size, hidden).to(device), torch.randn(steps, batch, input_size, device=device)
    times = {"nn.LSTM, per timestep": []} | {label: [] for label in kernels}
    for run, inputs in kernels.values():  # warm-up; compiles
        forward_backward(run, inputs)
    time_batch(reference, x)
    barriers = grid_barriers(batch, hidden, device) if rbn.kernels.unsupported(x, weight) is None else None
    if barriers is not None:
        barrier_label, time_barriers = barriers
        times[barrier_label] = []
        time_barriers(steps)  # warm-up; compiles
    for _ in range(rounds):
        times["nn.LSTM, per timestep"].append(time_batch(reference, x) / steps)
        for label, (run, inputs) in kernels.items():
            synchronize(device)
            start = time.perf_counter()
            for _ in range(steps):
                forward_backward(run, inputs)
            synchronize(device)
            times[label].append((time.perf_counter() - start) / steps)
        if barriers is not None:
            times[barrier_label].append(time_barriers(steps) / steps)
    return [dict(shape=name, kernel=label, median_us=1e6 * statistics.median(samples)) for label, samples in times.items()]


def grid_barriers(batch: int, hidden: int, device: torch.device) -> tuple[str, Callable[[int], float]]:
    """A row's label, and a timer of one launch of ``rbn.kernels.common.barriers_only`` with
    the programs that the kernels launch on this shape: called with a count, it returns the
    seconds that many grid barriers took. The kernels meet one a step (BN-LSTM) or three
    (LN-LSTM), each way."""
    from rbn.kernels import common  # imports Triton

    tiles = common.tiling(batch, hidden, common.multiprocessors(device))
    counter = torch.zeros(1, dtype=torch.int32, device=device)

    def run(count: int) -> float:
        counter.zero_()
        synchronize(device)
        start = time.perf_counter()
        common.barriers_only[(tiles.programs,)](counter, count, **tiles.launch)
        synchronize(device)
        return time.perf_counter() - start

    return f"one grid barrier, {tiles.programs} program{'s' * (tiles.programs > 1)}", run


LOADERS = {  # name: training batch size of the paper's preset
    "seqmnist": 100, "pmnist": 100, "shakespeare": 64, "ptb_char": 64, "text8": 128,
}


def bench_loaders(seconds: float = 2.0) -> list[dict]:
    """Training batches per second of each dataset present (nothing is downloaded)."""
    rows = []
    for name, batch_size in LOADERS.items():
        try:
            dataset = getattr(data, name)(download=False)
        except data.DataError:
            continue
        batches, start = 0, time.perf_counter()
        generator = torch.Generator().manual_seed(0)
        while time.perf_counter() - start < seconds:
            for _ in dataset.batches("train", batch_size, generator):
                batches += 1
                if time.perf_counter() - start >= seconds:
                    break
        elapsed = time.perf_counter() - start
        rows.append(dict(dataset=name, batch_size=batch_size, batches_per_s=batches / elapsed))
    return rows


def tf32_settings() -> dict:
    """Where float32 math runs in TF32: cuDNN (nn.LSTM, and rbn.LSTM's fused op on CUDA),
    float32 matmuls (every other GEMM: the eager loops', the input terms'), and the Triton
    kernels' tl.dot, whose input precision rbn.kernels.common.dot_precision derives from cuDNN's
    setting ("ieee" under the interpreter; None without Triton)."""
    triton_dot = None
    if importlib.util.find_spec("triton") is not None:
        from rbn.kernels import common  # imports Triton

        triton_dot = common.dot_precision()
    return dict(cudnn=torch.backends.cudnn.allow_tf32, matmul=torch.backends.cuda.matmul.allow_tf32, triton_dot=triton_dot)


def print_profile(entry: dict, where: str) -> None:
    print(f"\n{entry['layer']}: {entry['calls']} calls, {entry['self_ms']:.3f} ms self {where} time in all")
    print(f"| {'kernel' if where == 'device' else 'operator':<60} | {'calls':>6} | {'self ms':>9} | {'total ms':>9} | {'% of all':>8} |")
    print(f"|{'-' * 62}|{'-' * 8}|{'-' * 11}|{'-' * 11}|{'-' * 10}|")
    for kernel in entry["kernels"]:
        # CUDA kernels' names are whole template signatures; the JSON keeps them whole.
        name = kernel["kernel"] if len(kernel["kernel"]) <= 60 else kernel["kernel"][:57] + "..."
        share = 100 * kernel["self_ms"] / entry["self_ms"]
        print(f"| {name:<60} | {kernel['calls']:>6} | {kernel['self_ms']:>9.3f} | {kernel['total_ms']:>9.3f} | {share:>8.1f} |")


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
              if line.startswith("model name")] if cpuinfo.exists() else []
    return f"{models[0] if models else platform.machine()}, {torch.get_num_threads()} threads"


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", type=shape, default=[shape(name) for name in DEFAULT_SHAPES],
                        help=f"{', '.join(SHAPES)} (default: {' '.join(DEFAULT_SHAPES)}), "
                             "or B,T,I,H: batch, steps, input and hidden size")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip the compiled variants")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="also time each layer's rows, triton ones included, captured whole (forward "
                             "and backward) in CUDA graphs")
    parser.add_argument("--tf32", action="store_true",
                        help="run float32 matmuls in TF32 (torch.backends.cuda.matmul.allow_tf32), so that the GEMMs "
                             "outside cuDNN (the eager loops', the input terms) match cuDNN's LSTM and the Triton "
                             "kernels' tl.dot, which use TF32 by default (torch.backends.cudnn.allow_tf32); "
                             "default: off")
    parser.add_argument("--no-loaders", dest="loaders", action="store_false", help="skip timing the data loaders")
    parser.add_argument("--kernels", action="store_true",
                        help="also time one timestep's kernels alone against nn.LSTM's time per timestep, and, where the "
                             "Triton kernels run, one of their grid barriers alone")
    parser.add_argument("--profile", action="store_true",
                        help=f"also profile one forward+backward of each row: its {PROFILE_TOP} kernels with the most "
                             "self device time (on CPU, operators by self CPU time), with calls and total time")
    parser.add_argument("--json", type=arguments.output_file, default="bench.json")
    args = parser.parse_args(argv)
    if args.rounds < 5:
        parser.error("--rounds must be at least 5 for a meaningful median")
    args.device = arguments.device(parser, args.device)
    if args.cuda_graphs and args.device.type != "cuda":
        parser.error("--cuda-graphs needs --device cuda")
    return args


def main() -> None:
    args = parse_arguments()
    # Cold compile times; set here, not on import, so that importing this module (the tests
    # do) leaves the process's cache alone. Inductor reads it at its first compilation.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="rbn-bench-inductor-")
    device = args.device
    where = "device" if device.type == "cuda" else "CPU"
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    tf32 = tf32_settings()
    print(f"torch {torch.__version__} on {device} ({machine(device)}); forward+backward per batch, "
          f"median of {args.rounds} interleaved rounds")
    matmul = "on" if tf32["matmul"] else "off (--tf32 turns them on)"
    print(f"TF32: cuDNN {'on' if tf32['cudnn'] else 'off'}, float32 matmuls {matmul}, "
          f"Triton kernels' tl.dot input_precision={tf32['triton_dot']}")
    rows, skipped, profiles = [], [], []
    for name, dims in args.shapes:
        batch, steps, input_size, hidden = dims
        print(f"\n{name}: batch {batch}, T {steps}, input {input_size}, hidden {hidden}")
        print(f"| {'layer':<24} | {'ms/batch':>9} | {'x nn.LSTM':>9} | {'peak MB':>9} | {'MB x nn.LSTM':>12} | {'compile s':>9} |")
        print(f"|{'-' * 26}|{'-' * 11}|{'-' * 11}|{'-' * 11}|{'-' * 14}|{'-' * 11}|")
        shape_rows, shape_skipped, shape_profiles = bench_shape(
            name, dims, device, args.rounds, args.compile, args.cuda_graphs, args.profile
        )
        for row in shape_rows:
            compile_s = "" if row["compile_s"] is None else f"{row['compile_s']:.1f}"
            peak = "" if row["peak_mb"] is None else f"{row['peak_mb']:.1f}"
            peak_ratio = "" if row["peak_ratio"] is None else f"{row['peak_ratio']:.2f}"
            print(f"| {row['layer']:<24} | {1e3 * row['median_s']:>9.1f} | {row['ratio']:>9.2f} | {peak:>9} "
                  f"| {peak_ratio:>12} | {compile_s:>9} |")
        for label, reason in shape_skipped.items():
            print(f"{label}: not run, as the Triton kernels do not support {reason}")
        if shape_profiles:
            print(f"\n{name}: profile of one forward+backward, top {PROFILE_TOP} by self {where} time")
        for entry in shape_profiles:
            print_profile(entry, where)
        rows += shape_rows
        skipped += [dict(shape=name, layer=label, reason=reason) for label, reason in shape_skipped.items()]
        profiles += shape_profiles
    kernels = []
    for name, dims in args.shapes if args.kernels else []:
        print(f"\n| {name + ': one timestep':<32} | {'us fwd+bwd':>10} |")
        print(f"|{'-' * 34}|{'-' * 12}|")
        for row in bench_kernels(name, dims, device, args.rounds, args.compile):
            print(f"| {row['kernel']:<32} | {row['median_us']:>10.1f} |")
            kernels.append(row)
    loaders = bench_loaders() if args.loaders else []
    if loaders:
        print(f"\n| {'dataset':<12} | {'batch':>5} | {'batches/s':>9} | {'ms/batch':>8} |")
        print(f"|{'-' * 14}|{'-' * 7}|{'-' * 11}|{'-' * 10}|")
        for row in loaders:
            ms = 1e3 / row["batches_per_s"]
            print(f"| {row['dataset']:<12} | {row['batch_size']:>5} | {row['batches_per_s']:>9.0f} | {ms:>8.2f} |")
    report = dict(torch=torch.__version__, device=str(device), machine=machine(device), tf32=tf32,
                  results=rows, skipped=skipped, profile=profiles, kernels=kernels, loaders=loaders)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
