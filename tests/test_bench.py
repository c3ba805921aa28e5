"""scripts/bench.py on a tiny shape: every layer and kernel is timed against nn.LSTM."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"
pytestmark = pytest.mark.slow  # each test starts a Python process that imports torch
TINY_SHAPE = "4,6,2,3"  # batch, steps, input size, hidden size


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=300)


def test_every_layer_and_kernel_is_timed_against_nn_lstm(tmp_path):
    report_path = tmp_path / "bench.json"
    run = bench("--shapes", TINY_SHAPE, "--no-compile", "--no-loaders", "--kernels", "--json", str(report_path))
    assert run.returncode == 0, run.stderr
    report = json.loads(report_path.read_text())
    assert [row["layer"] for row in report["results"]] == ["nn.LSTM", "LSTM", "BNLSTM", "LNLSTM"]
    assert report["results"][0]["ratio"] == 1.0
    assert all(row["median_s"] > 0 and row["shape"] == TINY_SHAPE for row in report["results"])
    kernels = {row["kernel"]: row["median_us"] for row in report["kernels"]}
    assert {"nn.LSTM, per timestep", "W_h h (GEMM), d/dh", "gate math", "batch_norm(gates)"} <= kernels.keys()
    assert all(us > 0 for us in kernels.values())
    assert "| LNLSTM" in run.stdout


def test_a_shape_that_is_not_four_positive_integers_is_one_line():
    run = bench("--shapes", "4,6,0,3")
    assert run.returncode == 2
    assert "four positive integers B,T,I,H" in run.stderr.splitlines()[-1]
