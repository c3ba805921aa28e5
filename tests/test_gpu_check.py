"""scripts/gpu_check.sh, the GPU checks as one command, with a stand-in for Python that records
the commands it is given (the parts themselves are tested where they are written)."""

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"
PARTS = ["tests", "bench_targets", "speed_seqmnist", "bench_other_shapes", "speed_ptb_char"]
STAND_IN = """#!/usr/bin/env bash
[ "$1" = -c ] && { echo "torch (stand-in)"; exit 0; }
echo "$*" >> "$CALLS"
case "$*" in *"$FAIL_ON"*) exit 3;; esac
sleep "${SLEEP:-0}"
"""


def gpu_check(tmp_path, **env) -> subprocess.CompletedProcess:
    python = tmp_path / "python"
    python.write_text(STAND_IN)
    python.chmod(0o755)
    env = {**os.environ, "PYTHON": str(python), "CALLS": str(tmp_path / "calls"), "FAIL_ON": "no part", **env}
    return subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], env=env, capture_output=True, text=True,
                          cwd=SCRIPT.parents[1], timeout=60)


def test_every_part_runs_in_order_with_a_log_of_its_own(tmp_path):
    result = gpu_check(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [line.split(":")[0] for line in result.stdout.splitlines()[1:]] == PARTS
    assert all((tmp_path / "out" / f"{part}.log").exists() for part in PARTS)
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[0].startswith("-m pytest -k cuda or kernels or triton")
    assert "--shapes seqmnist100 ptb_char --cuda-graphs" in calls[1]


def test_a_failing_part_is_counted_and_the_others_still_run(tmp_path):
    result = gpu_check(tmp_path, FAIL_ON="-m pytest")
    assert result.returncode == 1
    assert "tests: FAILED with status 3" in result.stdout
    assert len((tmp_path / "calls").read_text().splitlines()) == len(PARTS)


def test_with_a_deadline_a_part_that_outlasts_its_share_is_stopped_and_the_parts_past_it_not_run(tmp_path):
    result = gpu_check(tmp_path, SECONDS_LEFT="4", SLEEP="30")
    assert result.returncode == len(PARTS)
    lines = result.stdout.splitlines()[1:]
    assert lines[0].startswith("tests: FAILED with status 124, out of time")
    assert lines[-1] == f"{PARTS[-1]}: not run, no time left"
    assert all("status 124, out of time" in line or line.endswith("not run, no time left") for line in lines)


def test_without_cuda_it_stops_at_once_in_one_line(tmp_path):
    result = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], env={**os.environ, "PYTHON": sys.executable,
                            "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip() == "gpu_check.sh: no CUDA device here; these checks need a GPU"
    assert not (tmp_path / "out").exists()
