"""scripts/kernel_resources.py compiles every kernel for the H100 without a GPU: code that
Triton's interpreter accepts but its compiler rejects fails here, in CI. Sizes that are not
positive are one-line errors."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "kernel_resources.py"
pytestmark = pytest.mark.slow  # compiles four kernels: seconds
pytest.importorskip("triton", minversion="3.3")  # the script's oldest (torch 2.7's)


def test_every_kernel_compiles_for_the_h100_and_reports_its_resources():
    run = subprocess.run([sys.executable, str(SCRIPT), "--batch", "100"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    rows = [line.split("|") for line in run.stdout.splitlines() if line.startswith("| ") and "regs" not in line]
    assert [row[1].strip() for row in rows] == ["BN-LSTM forward", "BN-LSTM backward", "LN-LSTM forward", "LN-LSTM backward"]
    for row in rows:
        registers, stack, shared = (int(cell) for cell in row[4:7])
        assert 0 < registers <= 255 and stack >= 0 and shared > 0


@pytest.mark.parametrize("args", [["--hidden", "0"], ["--batch", "16", "0"], ["--sms", "-1"]], ids=" ".join)
def test_sizes_that_are_not_positive_are_one_line_errors(args):
    run = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)
    assert run.returncode == 2
    assert "must be a positive integer" in run.stderr.strip().splitlines()[-1]
