#!/usr/bin/env bash
# What the fused kernels need a GPU for (README, "GPU: fused Triton kernels"), as one command
# that goes on past a failing part: the tests that need CUDA or the kernels, the benchmark
# against cuDNN with and without CUDA graphs, and the trainer's steps per second with BN-LSTM.
# The parts run in order of what a short loan of a GPU must bring back first: the tests (the
# kernels become `auto`'s choice only once they pass), the issue's target shapes (with each
# row's top kernels and one grid barrier's time alone: where the time goes should a target be
# missed), the seqmnist preset's speed, then the other shapes and PTB-char's model (on the
# embedded corpus, so that no download is needed: the speed depends on the shapes, not on the
# text).
#
#   bash scripts/gpu_check.sh [OUTDIR]                       # default OUTDIR: gpu-check
#   SECONDS_LEFT=540 bash scripts/gpu_check.sh "$OUT"        # a machine lent for 9 minutes
#
# Each part writes OUTDIR/<part>.log (and its JSON beside it). With SECONDS_LEFT, a part may use
# half the time the earlier ones left (the last part all of it), so that a hung or slow part
# leaves time to the next; the parts past the deadline are reported as not run.
# Exit status: the number of parts that failed or did not run.
set -u
out=${1:-gpu-check}
python=${PYTHON:-python}
deadline=$(( SECONDS + ${SECONDS_LEFT:-0} ))
failed=0

part() {  # NAME COMMAND...; all_left=1 part ... for the last part
  local name=$1 limit=0 status=0
  shift
  if [ -n "${SECONDS_LEFT:-}" ]; then
    limit=$(( deadline - SECONDS ))
    if [ "$limit" -le 0 ]; then
      echo "$name: not run, no time left"; failed=$(( failed + 1 )); return
    fi
    [ -n "${all_left:-}" ] || limit=$(( (limit + 1) / 2 ))
  fi
  timeout "$limit" "$@" > "$out/$name.log" 2>&1 || status=$?
  if [ "$status" -eq 0 ]; then
    echo "$name: passed ($out/$name.log)"
  else
    [ "$status" -eq 124 ] && status="124, out of time"
    echo "$name: FAILED with status $status ($out/$name.log)"; failed=$(( failed + 1 ))
  fi
}

"$python" -c "
import sys, torch
from importlib.metadata import version
torch.cuda.is_available() or sys.exit('gpu_check.sh: no CUDA device here; these checks need a GPU')
print(f'torch {torch.__version__}, triton {version(\"triton\")}, {torch.cuda.get_device_name()}')" || exit 1
mkdir -p "$out"
# A kernel that never returns (a grid barrier not met) fails its test, not the whole part, where
# pytest-timeout is installed: its thread method ends the worker, which xdist replaces.
hang_limit=$("$python" -c "import pytest_timeout" 2>/dev/null && echo "--timeout=120 --timeout-method=thread")
part tests "$python" -m pytest -k "cuda or kernels or triton" -n 8 -v --durations=15 $hang_limit
part bench_targets "$python" scripts/bench.py --shapes seqmnist100 ptb_char --cuda-graphs --no-compile --no-loaders \
    --profile --kernels --json "$out/bench_targets.json"
part speed_seqmnist "$python" scripts/train_speed.py --json "$out/speed_seqmnist.json" experiment=seqmnist model=bnlstm
part bench_other_shapes "$python" scripts/bench.py --shapes seqmnist text8 --cuda-graphs --no-compile --no-loaders \
    --json "$out/bench_other_shapes.json"
all_left=1 part speed_ptb_char "$python" scripts/train_speed.py --json "$out/speed_ptb_char.json" \
    experiment=ptb_char model=bnlstm data=shakespeare
exit "$failed"
