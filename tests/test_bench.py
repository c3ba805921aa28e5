"""scripts/bench.py on a tiny shape: every layer's backends (the Triton kernels' too, under the
interpreter), every kernel and the Triton kernels' grid barrier are timed against nn.LSTM,
profiled, with their peak memory on CUDA and the TF32 settings in the report; and the
port-style baseline computes what rbn.BNLSTM computes, so that their times compare. Bad
options are one-line errors before anything is timed."""

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from trainer_helpers import load_script

import rbn
from conftest import NEEDS_INTERPRETER

BENCH = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"
TINY_SHAPE = "4,3,2,3"  # batch, steps, input size, hidden size: few steps, as the interpreter runs them one by one


def bench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=300,
                          env=None if env is None else os.environ | env)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
    """One run on the tiny shape, shared by the tests that read it (each run starts torch).
    Triton's interpreter runs the kernels on CPU, so that their rows are there too."""
    report_path = tmp_path_factory.mktemp("bench") / "bench.json"
    run = bench("--shapes", TINY_SHAPE, "--device", "cpu", "--no-compile", "--no-loaders", "--kernels", "--tf32",
                "--profile", "--json", str(report_path), env={"TRITON_INTERPRET": "1"})
    assert run.returncode == 0, run.stderr
    return run, json.loads(report_path.read_text())


@functools.cache
def bench_module():
    """scripts/bench.py imported in this process, for what needs no subprocess."""
    return load_script("bench")


def port_style_bnlstm(*args, **kwargs) -> torch.nn.Module:
    return bench_module().PortStyleBNLSTM(*args, **kwargs)


def forward_backward(module: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Outputs, the gradients of the parameters and the running statistics, by name less "_l0"."""
    output, (h_n, c_n) = module(x)
    torch.manual_seed(1)  # the same gradients of the output and of c_n for both modules
    loss = (output * torch.randn_like(output)).sum() + (c_n.flatten() * torch.randn_like(c_n.flatten())).sum()
    parameters = dict(module.named_parameters())
    grads = dict(zip(parameters, torch.autograd.grad(loss, list(parameters.values()))))
    statistics = {name: value for name, value in module.state_dict().items() if "running" in name}
    named = dict(output=output, h_n=h_n.flatten(), c_n=c_n.flatten(), **grads, **statistics)
    return {name.replace("_l0", ""): value for name, value in named.items()}


@pytest.mark.parametrize("training", [True, False])
def test_the_port_style_baseline_computes_what_bnlstm_computes(training):
    steps, batch, input_size, hidden = 5, 4, 2, 3
    layer = rbn.BNLSTM(input_size, hidden, max_length=steps).double().train(training)
    with torch.no_grad():  # every parameter and statistic away from its initial value
        for tensor in layer.state_dict().values():
            if tensor.is_floating_point():
                tensor.uniform_(0.5, 1.5)
    port = port_style_bnlstm(input_size, hidden, max_length=steps).double().train(training)
    state = {name.replace("_l0", ""): value.clone() for name, value in layer.state_dict().items()}
    port.load_state_dict({name: state[name] for name in port.state_dict()})
    x = torch.randn(steps, batch, input_size, dtype=torch.double)
    expected, actual = forward_backward(layer, x), forward_backward(port, x)
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, msg=name)


@NEEDS_INTERPRETER  # the tiny run interprets the kernels, for their rows among the others
@pytest.mark.slow  # starts a Python process that imports torch
def test_every_layer_and_kernel_is_timed_against_nn_lstm(tiny_run):
    run, report = tiny_run
    assert [row["layer"] for row in report["results"]] == [
        "nn.LSTM", "port-style BN-LSTM", "LSTM", "LSTM eager", "BNLSTM eager", "BNLSTM triton", "LNLSTM eager", "LNLSTM triton",
    ]
    assert report["results"][0]["ratio"] == 1.0
    assert all(row["median_s"] > 0 and row["shape"] == TINY_SHAPE for row in report["results"])
    kernels = {row["kernel"]: row["median_us"] for row in report["kernels"]}
    assert {"nn.LSTM, per timestep", "W_h h (GEMM), d/dh", "gate math", "batch_norm(gates)",
            "one grid barrier, 1 program"} <= kernels.keys()  # one program: the interpreter runs them one by one
    assert all(us > 0 for us in kernels.values())
    assert "| LNLSTM triton" in run.stdout


@pytest.mark.slow
def test_peak_memory_is_left_blank_on_cpu(tiny_run):
    _, report = tiny_run
    assert all(row["peak_mb"] is None and row["peak_ratio"] is None for row in report["results"])


@pytest.mark.slow
def test_the_profile_gives_each_rows_top_kernels_by_self_time_with_calls_and_total_time(tiny_run):
    _, report = tiny_run
    assert [entry["layer"] for entry in report["profile"]] == [row["layer"] for row in report["results"]]
    for entry in report["profile"]:
        self_ms = [kernel["self_ms"] for kernel in entry["kernels"]]
        assert 0 < len(self_ms) <= 10 and self_ms == sorted(self_ms, reverse=True)
        assert all(kernel["calls"] > 0 and kernel["total_ms"] >= kernel["self_ms"] > 0 for kernel in entry["kernels"])
        assert entry["calls"] >= sum(kernel["calls"] for kernel in entry["kernels"])  # of all, not only the top


@pytest.mark.slow
def test_the_report_says_where_tf32_was_on(tiny_run):
    _, report = tiny_run  # with --tf32; cuDNN's TF32 is torch's default; the interpreter computes in IEEE float32
    assert report["tf32"] == {"cudnn": True, "matmul": True, "triton_dot": "ieee"}


def test_float32_matmuls_stay_out_of_tf32_unless_asked():
    assert not bench_module().parse_arguments([]).tf32
    assert bench_module().parse_arguments(["--tf32"]).tf32


@pytest.fixture(scope="module")
def cuda_run() -> tuple[list[dict], list[dict]]:
    rows, _, profiles = bench_module().bench_shape(
        TINY_SHAPE, (4, 3, 2, 3), torch.device("cuda"), 5, compile=False, cuda_graphs=True, profile=True
    )
    return rows, profiles


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_every_row_has_its_peak_memory_and_its_ratio_to_nn_lstms(cuda_run):
    cuda_rows, _ = cuda_run
    assert all(row["peak_mb"] > 0 for row in cuda_rows)
    assert cuda_rows[0]["layer"] == "nn.LSTM" and cuda_rows[0]["peak_ratio"] == 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graphs_capture_every_backend_of_every_layer(cuda_run):
    cuda_rows, _ = cuda_run
    graphs = [row["layer"] for row in cuda_rows if row["layer"].endswith("CUDA graph")]
    assert graphs == [f"{label} CUDA graph" for label in
                      ("LSTM", "LSTM eager", "BNLSTM eager", "BNLSTM triton", "LNLSTM eager", "LNLSTM triton")]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_profile_lists_kernels_not_the_operators_that_launch_them(cuda_run):
    _, profiles = cuda_run
    for entry in profiles:
        assert entry["kernels"] and not any(kernel["kernel"].startswith("aten::") for kernel in entry["kernels"])


def test_a_triton_row_the_kernels_cannot_run_is_left_out_with_their_reason(monkeypatch):
    monkeypatch.setattr(rbn.kernels, "unsupported", lambda x, weight: "tiny things")
    rows, skipped, _ = bench_module().bench_shape(
        TINY_SHAPE, (4, 3, 2, 3), torch.device("cpu"), 5, compile=False, cuda_graphs=False
    )
    assert skipped == {"BNLSTM triton": "tiny things", "LNLSTM triton": "tiny things"}
    assert not any(row["layer"].endswith("triton") for row in rows)


def test_by_default_only_the_shapes_a_cpu_runs_in_minutes_are_timed():
    assert [name for name, _ in bench_module().parse_arguments([]).shapes] == ["seqmnist", "ptb_char"]


def test_the_named_shapes_are_the_tasks_batch_steps_input_and_hidden_sizes():
    assert bench_module().SHAPES["seqmnist100"] == (100, 784, 1, 100)
    assert bench_module().SHAPES["text8"] == (128, 180, 27, 2000)


@pytest.mark.slow
def test_a_shape_that_is_not_four_positive_integers_is_one_line():
    run = bench("--shapes", "4,6,0,3")
    assert run.returncode == 2
    assert "four positive integers B,T,I,H" in run.stderr.splitlines()[-1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "bogus"], "--device='bogus' is not a device"),
        (["--json", "missing/b.json"], "cannot write missing/b.json: missing is not a directory"),
    ],
    ids=["not-a-device", "json-in-no-directory"],
)
def test_bad_options_are_one_line_errors_before_anything_is_timed(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit:
        bench_module().parse_arguments(args)
    assert exit.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_where_there_is_none_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as exit:
        bench_module().parse_arguments(["--device", "cuda"])
    assert exit.value.code == 2
    assert "CUDA is not available" in capsys.readouterr().err.strip().splitlines()[-1]
