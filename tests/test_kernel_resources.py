"""scripts/kernel_resources.py compiles every kernel for the H100 without a GPU: code that
Triton's interpreter accepts but its compiler rejects fails here, in CI. It tells the spills
inside the loop over time from those before it. Sizes that are not positive are one-line
errors."""

import subprocess
import sys
from pathlib import Path

import pytest
from trainer_helpers import load_script, run_script, script_error

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "kernel_resources.py"
pytestmark = pytest.mark.slow  # compiles four kernels: seconds
pytest.importorskip("triton", minversion="3.3")  # the script's oldest (torch 2.7's)


def test_every_kernel_compiles_for_the_h100_and_reports_its_resources():
    run = subprocess.run([sys.executable, str(SCRIPT), "--batch", "100"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    rows = [line.split("|") for line in run.stdout.splitlines() if line.startswith("| ") and "regs" not in line]
    assert [row[1].strip() for row in rows] == ["BN-LSTM forward", "BN-LSTM backward", "LN-LSTM forward", "LN-LSTM backward"]
    for row in rows:
        registers, stack, shared, loop, stores, loads = (int(cell) for cell in row[4:10])
        assert 0 < registers <= 255 and stack >= 0 and shared > 0
        assert 0 <= stores + loads < loop and (stack > 0 or stores == loads == 0)


# nvdisasm's listing, cut down: a value spilled before the loop over time and reloaded in it;
# an inner loop that spills and reloads; a reload after the loop, past a forward branch.
LISTING = """\
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   STL [R1], R2 ;
.L_x_1:
        /*0020*/                   LDL R3, [R1] ;
.L_x_0:
        /*0030*/                   STL.64 [R1+0x8], R4 ;
        /*0040*/              @P0 BRA `(.L_x_0) ;
        /*0050*/                   LDL.64 R4, [R1+0x8] ;
        /*0060*/              @P1 BRA `(.L_x_1) ;
        /*0070*/                   LDL R5, [R1] ;
        /*0080*/              @P2 BRA `(.L_x_2) ;
.L_x_2:
        /*0090*/                   EXIT ;
"""


def test_the_loop_over_time_is_the_outermost_loop_with_its_spill_stores_and_loads():
    assert load_script("kernel_resources").loop_over_time(LISTING) == (5, 1, 2)  # instructions, stores, loads


def test_a_kernel_without_a_loop_has_no_loop_over_time():
    listing = "\n".join(line for line in LISTING.splitlines() if "BRA" not in line)
    assert load_script("kernel_resources").loop_over_time(listing) == (0, 0, 0)


@pytest.mark.parametrize("args", [["--hidden", "0"], ["--batch", "16", "0"], ["--sms", "-1"]], ids=" ".join)
def test_sizes_that_are_not_positive_are_one_line_errors(args, monkeypatch, capsys):
    script = load_script("kernel_resources")
    error = script_error(lambda: run_script(monkeypatch, script, *args), capsys, "kernel_resources.py")
    assert "must be a positive integer" in error
