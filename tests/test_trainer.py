"""The trainer, in process, on tiny in-memory data (the ``tiny_data`` fixture)."""

import copy
import json
import logging
import math
import re
import signal
import time

import pytest
import torch
from conftest import NEEDS_KERNELS
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict
from submitit.core.utils import DelayedSubmission, JobPaths
from submitit.local.local import LOCAL_REQUEUE_RETURN_CODE, LocalJobEnvironment
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.summary.writer.record_writer import RecordWriter
from trainer_helpers import (
    CONF,
    GRADIENT_FLOW,
    TINY,
    TINY_PIXELS,
    TINY_TEXT,
    compose_config,
    diverged_run,
    interrupt_at,
    load_script,
    stopped_run,
    tiny_text,
)

import data
import rbn
from data.text import build_corpus
from rbn.trainer import (
    RunError, Trainer, build_dataset, build_model, epoch_seed, format_duration, submitit_preemption_signal, validations,
)

pytestmark = pytest.mark.usefixtures("tiny_data")
NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA_GRAPHS = ["trainer.device=cuda", "trainer.cuda_graphs=true"]


def load(path):
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize(
    "overrides, stop",
    [
        (TINY, 4),  # BN-LSTM on seqMNIST: h0 noise draws from the generator
        # Carried state; with the gradient-flow logging on, which must draw nothing from the generators.
        ([*TINY_TEXT, *GRADIENT_FLOW, "trainer.max_steps=20", "trainer.eval_interval=5"], 7),  # mid-epoch
        ([*TINY_TEXT, *GRADIENT_FLOW, "trainer.max_steps=20", "trainer.eval_interval=5"], 14),  # in the second epoch
        ([*TINY_TEXT, *GRADIENT_FLOW, "trainer.max_steps=20", "trainer.eval_interval=5"], 20),  # the last step, a validation due
        ([*TINY_TEXT, "data.segments=independent", "trainer.max_steps=20", "trainer.eval_interval=5"], 14),  # shuffled segments
        ([*TINY_TEXT, *GRADIENT_FLOW, "model=lnlstm", "model.num_layers=2", "model.dropout=0.5"], 4),  # dropout draws too
        ([*TINY_TEXT, "model=lstm", "model.num_layers=2", "model.dropout=0.5"], 4),  # torch's fused LSTM
        pytest.param([*TINY, "trainer.device=cuda"], 4, marks=NEEDS_CUDA),  # the CUDA generator is saved too
        pytest.param([*TINY, *GRADIENT_FLOW, *CUDA_GRAPHS], 4, marks=NEEDS_CUDA),  # captured again on resume
        pytest.param([*TINY_TEXT, *GRADIENT_FLOW, *CUDA_GRAPHS, "model=lnlstm", "model.num_layers=2", "model.dropout=0.5"], 4, marks=NEEDS_CUDA),
        pytest.param([*TINY_TEXT, *CUDA_GRAPHS, "model=lstm", "model.num_layers=2", "model.dropout=0.5"], 4, marks=NEEDS_CUDA),
    ],
    ids=[
        "seqmnist", "text-mid-epoch", "text-second-epoch", "text-last-step", "text-independent", "lnlstm-dropout", "lstm-dropout",
        "cuda", "cuda-graphs", "cuda-graphs-text", "cuda-graphs-lstm-dropout",
    ],
)
def test_resumed_run_ends_with_the_parameters_of_an_uninterrupted_one(tmp_path, monkeypatch, overrides, stop):
    cfg = compose_config(*overrides)
    Trainer(cfg, tmp_path / "whole").run()
    stopped_run(cfg, tmp_path / "resumed", monkeypatch, stop)
    assert load(tmp_path / "resumed" / "last.pt")["progress"]["step"] == stop
    Trainer(cfg, tmp_path / "resumed").run()
    whole, resumed = load(tmp_path / "whole" / "last.pt"), load(tmp_path / "resumed" / "last.pt")
    for progress in whole["progress"], resumed["progress"]:
        for timing in ("train_seconds", "wall_seconds"):
            progress.pop(timing)
    assert whole["progress"] == resumed["progress"]
    for name, value in whole["model"].items():
        assert torch.equal(value, resumed["model"][name]), name
    assert str(whole["optimizer"]) == str(resumed["optimizer"])
    results = [json.loads((tmp_path / run / "results.json").read_text()) for run in ("whole", "resumed")]
    assert results[0]["test"] == results[1]["test"]


@NEEDS_CUDA
@pytest.mark.parametrize(
    "overrides",
    [
        TINY,  # BN-LSTM with h0 noise: random numbers drawn inside the graph
        [*TINY_TEXT, "model=lnlstm", "model.num_layers=2", "model.dropout=0.5"],  # carried state, dropout
        [*TINY_TEXT, "trainer.precision=bf16"],
        [*TINY, "model.compile=true"],
        [*TINY_TEXT, "model=lstm", "model.num_layers=2", "model.dropout=0.5"],  # cuDNN
        [*TINY_TEXT, "data.segments=independent"],  # every batch from the zero state
    ],
    ids=["seqmnist-bnlstm", "text-lnlstm-dropout", "text-bnlstm-bf16", "compiled", "text-lstm-dropout", "text-independent"],
)
def test_cuda_graphs_train_as_eager_steps_do(tmp_path, overrides):
    for name, graphs in ("eager", "false"), ("graphed", "true"):
        cfg = compose_config(*overrides, *GRADIENT_FLOW, "trainer.device=cuda", f"trainer.cuda_graphs={graphs}")
        Trainer(cfg, tmp_path / name).fit()
    eager, graphed = load(tmp_path / "eager" / "last.pt"), load(tmp_path / "graphed" / "last.pt")
    assert graphed["progress"]["step"] == eager["progress"]["step"] == 6
    for name, value in eager["model"].items():
        torch.testing.assert_close(graphed["model"][name], value, msg=name)


def test_cuda_graphs_are_captured_at_a_whole_batch_not_at_an_epochs_smaller_last(tmp_path, monkeypatch):
    """A run resumed at an epoch's last batch must not capture its shape, or every later
    batch, of the whole size, would run eagerly."""
    trainer = Trainer(compose_config(*TINY), tmp_path)
    captured = []

    def capture(self, inputs, targets):
        captured.append(len(inputs))
        return lambda inputs, targets: self.model(inputs, targets)

    monkeypatch.setattr(Trainer, "_capture", capture)
    whole, smaller = (next(trainer.dataset.batches("train", size)) for size in (4, 3))
    for inputs, targets in (smaller, whole, smaller, whole):
        trainer._graphed_forward(inputs, targets, None)
    assert captured == [4]


def training_losses(run_dir) -> list[float]:
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return [event.value for event in events.Scalars("train/loss")]


@NEEDS_CUDA
@NEEDS_KERNELS
@pytest.mark.parametrize("graphs", ["false", "true"], ids=["kernels", "kernels+graphs"])
@pytest.mark.parametrize("model", ["bnlstm", "lnlstm"])
def test_training_on_the_kernels_follows_the_eager_loss_curve(tmp_path, monkeypatch, model, graphs):
    """30 steps at a step size that moves the weights: the kernels differ from the eager loop
    by summation order only (TF32 off), which training must not amplify past 1e-3."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    common = [*TINY, f"model={model}", "model.hidden_size=48", "trainer.max_steps=30", "trainer.log_interval=1",
              "trainer.eval_interval=30", "trainer.device=cuda", f"trainer.cuda_graphs={graphs}"]
    for backend in ("eager", "triton"):
        Trainer(compose_config(*common, f"model.backend={backend}"), tmp_path / backend).fit()
    eager, kernels = training_losses(tmp_path / "eager"), training_losses(tmp_path / "triton")
    assert len(kernels) == len(eager) >= 20
    assert eager[-1] < eager[0]  # it learned: the curve is not flat
    torch.testing.assert_close(torch.tensor(kernels), torch.tensor(eager), rtol=1e-3, atol=1e-4)


@NEEDS_KERNELS
@pytest.mark.parametrize("batch_statistics", [True, False], ids=["batch", "population"])
def test_a_language_model_on_the_kernels_evaluates_its_padded_last_batch(tmp_path, batch_statistics):
    """On a CUDA device, or under Triton's interpreter: the padded batch runs eagerly."""
    cfg = compose_config(*TINY_TEXT, "model=bnlstm", "model.backend=triton", "trainer.limit_eval_batches=null")
    trainer = Trainer(cfg, tmp_path)
    assert data.padded_lengths(list(trainer.dataset.batches("valid", cfg.trainer.batch_size))[-1][1]) is not None
    metrics = trainer.evaluate("valid", batch_statistics)
    assert math.isfinite(metrics["bpc"])


def test_ctrl_c_saves_the_current_step_and_exits_with_130(tmp_path, monkeypatch):
    assert stopped_run(compose_config(*TINY_TEXT), tmp_path, monkeypatch, 2) == 130
    assert load(tmp_path / "last.pt")["progress"]["step"] == 2
    assert not (tmp_path / "results.json").exists()


def test_ctrl_c_in_the_final_evaluation_exits_with_130_and_a_rerun_evaluates(tmp_path, monkeypatch):
    whole = Trainer(compose_config(*TINY_TEXT), tmp_path / "whole").run()
    evaluate = Trainer.evaluate

    def interrupted_test(self, split, **kwargs):
        if split == "test":
            signal.raise_signal(signal.SIGINT)
        return evaluate(self, split, **kwargs)

    with monkeypatch.context() as patch, pytest.raises(SystemExit) as stopped:
        patch.setattr(Trainer, "evaluate", interrupted_test)
        Trainer(compose_config(*TINY_TEXT), tmp_path / "resumed").run()
    assert stopped.value.code == 130
    assert not (tmp_path / "resumed" / "results.json").exists()
    resumed = Trainer(compose_config(*TINY_TEXT), tmp_path / "resumed").run()
    assert resumed["test"] == whole["test"]


def interrupt_validation_at(monkeypatch, step: int) -> None:
    """Sends Ctrl-C to this process while the validation after step ``step`` runs."""
    validate = Trainer.validate

    def interrupted(self):
        if self.progress.step == step:
            signal.raise_signal(signal.SIGINT)
        validate(self)

    monkeypatch.setattr(Trainer, "validate", interrupted)


def test_ctrl_c_during_an_end_of_epoch_validation_stops_before_the_next_step(tmp_path, monkeypatch):
    cfg = compose_config(*TINY_TEXT, "trainer.max_steps=null", "trainer.eval_interval=null", "trainer.max_epochs=2")
    order = torch.Generator().manual_seed(epoch_seed(cfg.seed, 0))
    epoch = len(list(build_dataset(cfg).batches("train", cfg.trainer.batch_size, order)))
    with monkeypatch.context() as patch, pytest.raises(SystemExit) as stopped:
        interrupt_validation_at(patch, epoch)
        Trainer(cfg, tmp_path).run()
    assert stopped.value.code == 130
    assert load(tmp_path / "last.pt")["progress"]["step"] == epoch


def test_ctrl_c_during_the_last_validation_stops_the_run_before_its_final_evaluation(tmp_path, monkeypatch):
    cfg = compose_config(*TINY_TEXT, "trainer.max_steps=5")  # validations at 3, and at 5 after the loop
    with monkeypatch.context() as patch, pytest.raises(SystemExit) as stopped:
        interrupt_validation_at(patch, 5)
        Trainer(cfg, tmp_path).run()
    assert stopped.value.code == 130
    assert not (tmp_path / "results.json").exists()
    assert Trainer(cfg, tmp_path).run()["status"] == "finished"


def test_a_second_ctrl_c_stops_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(rbn.trainer, "REPEATED_SIGNAL_SECONDS", 0.0)  # the second comes after the first's copies
    interrupt_at(monkeypatch, 1, times=2)
    with pytest.raises(KeyboardInterrupt):
        Trainer(compose_config(*TINY_TEXT), tmp_path).run()
    assert not (tmp_path / "last.pt").exists()


def test_a_signal_sent_twice_at_once_is_one_request_to_stop_after_the_step(tmp_path, monkeypatch):
    """As when `pkill -f` sends SIGTERM to both `timeout` and the run, and `timeout` passes its
    copy on. SIGINT here: the same handler, and a failure raises rather than kills the test runner."""
    interrupt_at(monkeypatch, 2, times=2)
    with pytest.raises(SystemExit) as stopped:
        Trainer(compose_config(*TINY_TEXT), tmp_path).run()
    assert stopped.value.code == 130
    assert load(tmp_path / "last.pt")["progress"]["step"] == 2


def test_results_name_every_device_the_run_trained_on_and_add_up_its_attempts_times(tmp_path, monkeypatch):
    stopped_run(compose_config(*TINY_TEXT), tmp_path, monkeypatch, 3)
    checkpoint = load(tmp_path / "last.pt")
    checkpoint["progress"]["devices"] = ["the GPU of an earlier allocation"]
    checkpoint["progress"]["wall_seconds"] = 1000.0
    checkpoint["progress"]["train_seconds"] = 500.0
    torch.save(checkpoint, tmp_path / "last.pt")
    started = time.perf_counter()
    results = Trainer(compose_config(*TINY_TEXT), tmp_path).run()
    elapsed = time.perf_counter() - started
    assert results["devices"] == ["the GPU of an earlier allocation", "cpu"]
    assert 1000.0 < results["wall_seconds"] <= 1000.0 + elapsed
    assert 500.0 < results["train_seconds"] <= 500.0 + elapsed


@pytest.fixture
def default_sigterm():
    """SIGTERM as a plain process has it, whatever the test runner installed."""
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.usefixtures("default_sigterm")
def test_sigterm_saves_the_current_step_and_exits_with_143_and_a_rerun_resumes(tmp_path, monkeypatch):
    assert stopped_run(compose_config(*TINY_TEXT), tmp_path, monkeypatch, 3, signal.SIGTERM) == 143
    assert load(tmp_path / "last.pt")["progress"]["step"] == 3
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    Trainer(compose_config(*TINY_TEXT), tmp_path).fit()
    assert load(tmp_path / "last.pt")["progress"]["step"] == 6


def test_a_stopped_run_has_written_its_events_when_it_stops(tmp_path, monkeypatch):
    """TensorBoard's writer hands events to a thread of its own, which a process that exits
    kills with what it has not written yet: here a slow one, as on a loaded machine."""
    write = RecordWriter.write
    monkeypatch.setattr(RecordWriter, "write", lambda self, data: (time.sleep(0.02), write(self, data)))
    trainer = Trainer(compose_config(*TINY_TEXT), tmp_path)
    with monkeypatch.context() as patch, pytest.raises(SystemExit):
        interrupt_at(patch, 4)
        trainer.run()
    assert [event.step for event in EventAccumulator(str(tmp_path)).Reload().Scalars("train/loss")] == [2, 4]


@pytest.mark.usefixtures("default_sigterm")
def test_a_sigterm_handler_installed_before_the_run_keeps_sigterm(tmp_path, monkeypatch):
    """submitit's handler ignores SIGTERM (SLURM sends it at the end, after the preemption
    signal): the trainer must not take SIGTERM from it."""
    received = []
    signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    interrupt_at(monkeypatch, 3, signal.SIGTERM)
    Trainer(compose_config(*TINY_TEXT), tmp_path).fit()
    assert received == [signal.SIGTERM]
    assert load(tmp_path / "last.pt")["progress"]["step"] == 6


class SubmititJob:
    """What hydra-submitit-launcher hands submitit to run: a callable that can be checkpointed,
    that is, requeued with the same arguments."""

    def __call__(self) -> None:
        pass

    def checkpoint(self) -> DelayedSubmission:
        return DelayedSubmission(self)


@pytest.fixture
def submitit_job(tmp_path, monkeypatch):
    """This process as a local submitit job's: submitit's own signal handlers installed, as it
    installs them before the job runs. A local job is requeued by exiting with a status of
    its own."""
    for name, value in {"SUBMITIT_LOCAL_JOB_ID": "0", "SUBMITIT_LOCAL_NTASKS": "1", "SUBMITIT_LOCAL_GLOBALID": "0"}.items():
        monkeypatch.setenv(name, value)
    handled = (signal.SIGTERM, signal.SIGCONT, submitit_preemption_signal())
    previous = {signum: signal.getsignal(signum) for signum in handled}
    job = DelayedSubmission(SubmititJob())
    job.set_timeout(timeout_min=60, max_num_timeout=3)
    paths = JobPaths(tmp_path / "submitit", job_id="0")
    paths.folder.mkdir()
    LocalJobEnvironment()._handle_signals(paths, job)
    yield paths.submitted_pickle
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def test_submitits_preemption_signal_saves_the_current_step_before_submitit_requeues_the_job(tmp_path, monkeypatch, submitit_job):
    preemption = submitit_preemption_signal()
    status = stopped_run(compose_config(*TINY_TEXT), tmp_path / "run", monkeypatch, 3, preemption)
    assert status == LOCAL_REQUEUE_RETURN_CODE
    assert submitit_job.is_file()  # what submitit resubmits
    assert load(tmp_path / "run" / "last.pt")["progress"]["step"] == 3
    assert signal.getsignal(preemption).__name__ == "checkpoint_and_try_requeue"


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    forward = rbn.models.SequenceClassifier.forward
    calls = []

    def nan_from_the_fifth_step(self, inputs, targets=None):
        logits, loss = forward(self, inputs, targets)
        if self.training:
            calls.append(1)
            if len(calls) >= 5:
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(rbn.models.SequenceClassifier, "forward", nan_from_the_fifth_step)
    results = Trainer(compose_config(*TINY), tmp_path).run()
    assert results["status"] == "diverged"
    assert "loss is nan at step 5" in results["error"]
    assert load(tmp_path / "last.pt")["progress"]["step"] == 3  # the validation at step 3 saved it
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "diverged"


def test_a_diverged_runs_results_say_its_best_validation_before_and_its_time(tmp_path, monkeypatch):
    diverged_run(compose_config(*TINY), tmp_path, monkeypatch)
    results = json.loads((tmp_path / "results.json").read_text())
    progress = load(tmp_path / "last.pt")["progress"]  # saved at the validation of step 3
    assert results["best_valid"] == {"accuracy": progress["best"], "step": 3}
    assert results["train_seconds"] > 0 and results["wall_seconds"] >= results["train_seconds"]
    assert results["devices"] == ["cpu"]


def test_a_non_finite_gradient_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    backward = torch.Tensor.backward
    calls = []

    def infinite_gradients_at_the_fifth_step(loss, *args, **kwargs):
        calls.append(1)
        backward(loss * float("inf") if len(calls) == 5 else loss, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "backward", infinite_gradients_at_the_fifth_step)
    results = Trainer(compose_config(*TINY), tmp_path).run()
    assert results["status"] == "diverged"
    assert re.search(r"the gradient norm is (inf|nan) at step 5", results["error"])  # the loss was finite
    assert load(tmp_path / "last.pt")["progress"]["step"] == 3


def test_a_diverged_run_run_again_goes_on_from_its_last_good_checkpoint(tmp_path, monkeypatch):
    forward = rbn.models.SequenceClassifier.forward

    def nan_from_the_fifth_step(self, inputs, targets=None):
        logits, loss = forward(self, inputs, targets)
        return logits, loss * float("nan") if self.training and trainer.progress.step == 4 else loss

    with monkeypatch.context() as patch:
        patch.setattr(rbn.models.SequenceClassifier, "forward", nan_from_the_fifth_step)
        trainer = Trainer(compose_config(*TINY), tmp_path)
        assert trainer.run()["status"] == "diverged"
    results = Trainer(compose_config(*TINY), tmp_path).run()  # a transient fault, gone
    assert results["status"] == "finished" and results["step"] == 6


def test_validation_with_batch_statistics_leaves_out_a_last_batch_of_one_sequence(tmp_path):
    trainer = Trainer(compose_config(*TINY, "trainer.batch_size=5", "trainer.limit_eval_batches=null"), tmp_path)
    whole = trainer.evaluate("valid", batch_statistics=True)  # 6 images: a batch of 5, then one
    trainer.cfg.trainer.limit_eval_batches = 1
    assert whole == trainer.evaluate("valid", batch_statistics=True)


def test_a_finished_run_is_not_trained_again_and_its_directory_is_left_as_it_was(tmp_path):
    """Not even an empty event file: a sweep run again to finish its other jobs reruns this one."""
    cfg = compose_config(*TINY_TEXT)
    first = Trainer(cfg, tmp_path).run()
    files = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in tmp_path.iterdir()}
    assert Trainer(cfg, tmp_path).run() == first
    assert {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in tmp_path.iterdir()} == files


def test_a_finished_run_without_its_checkpoints_is_not_trained_again(tmp_path):
    """As a run archived without its checkpoints: its results stand."""
    cfg = compose_config(*TINY_TEXT)
    first = Trainer(cfg, tmp_path).run()
    for checkpoint in tmp_path.glob("*.pt"):
        checkpoint.unlink()
    assert Trainer(cfg, tmp_path).run() == first
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob("results-step*"))


def test_a_finished_run_trains_on_when_its_step_limit_is_raised(tmp_path):
    Trainer(compose_config(*TINY_TEXT, "trainer.max_steps=4"), tmp_path / "extended").run()
    results = Trainer(compose_config(*TINY_TEXT, "trainer.max_steps=8"), tmp_path / "extended").run()
    Trainer(compose_config(*TINY_TEXT, "trainer.max_steps=8"), tmp_path / "whole").run()
    assert results["step"] == 8
    extended, whole = load(tmp_path / "extended" / "last.pt"), load(tmp_path / "whole" / "last.pt")
    for name, value in whole["model"].items():
        assert torch.equal(extended["model"][name], value), name


def test_a_finished_run_that_trains_on_keeps_its_earlier_results_aside_until_it_finishes_again(tmp_path, monkeypatch):
    first = Trainer(compose_config(*TINY_TEXT, "trainer.max_steps=4"), tmp_path).run()
    stopped_run(compose_config(*TINY_TEXT, "trainer.max_steps=8"), tmp_path, monkeypatch, 6)
    assert not (tmp_path / "results.json").exists()  # compare.py lists the run as not finished
    assert json.loads((tmp_path / "results-step4.json").read_text()) == json.loads(json.dumps(first))
    assert Trainer(compose_config(*TINY_TEXT, "trainer.max_steps=8"), tmp_path).run()["step"] == 8


def test_a_step_limit_at_an_epochs_end_is_validated_once_when_the_run_trains_on(tmp_path, monkeypatch):
    validated = []
    validate = Trainer.validate
    monkeypatch.setattr(Trainer, "validate", lambda self: (validated.append(self.progress.step), validate(self))[1])
    epoch = ["trainer.eval_interval=null", "trainer.batch_size=4"]  # 12 training images: 3 steps an epoch
    Trainer(compose_config(*TINY, *epoch, "trainer.max_steps=3"), tmp_path).run()
    Trainer(compose_config(*TINY, *epoch, "trainer.max_steps=6"), tmp_path).run()
    assert validated == [3, 6]


def test_a_run_that_ended_its_last_epoch_at_its_step_limit_stays_finished_when_the_limit_is_raised(tmp_path, caplog):
    epoch = ["model=lstm", "trainer.eval_interval=null", "trainer.batch_size=4", "trainer.max_epochs=1"]  # 3 steps
    first = Trainer(compose_config(*TINY, *epoch, "trainer.max_steps=3"), tmp_path).run()
    events = sorted(tmp_path.glob("events.*"))
    with caplog.at_level(logging.INFO, logger="rbn.trainer"):
        again = Trainer(compose_config(*TINY, *epoch, "trainer.max_steps=6"), tmp_path).run()
    assert "has already finished" in caplog.text
    assert again == first
    assert sorted(tmp_path.glob("events.*")) == events and not list(tmp_path.glob("results-step*"))


def test_the_population_statistics_estimate_does_not_depend_on_what_drew_random_numbers_before(tmp_path):
    trainer = Trainer(compose_config(*TINY), tmp_path)  # BN-LSTM with h0 noise, which draws in training mode
    assert trainer.model.recurrent.h0_noise_std > 0
    estimates = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        trainer.estimate_population_statistics()
        estimates.append({k: v.clone() for k, v in trainer.model.state_dict().items() if "running" in k})
        assert torch.initial_seed() == seed  # the caller's generator is left as it was
    for name, value in estimates[0].items():
        assert torch.equal(estimates[1][name], value), name


class Killed(BaseException):
    """The process dying where the test raises it: no handler runs."""


def test_a_run_killed_before_copying_its_best_checkpoint_writes_it_on_resume(tmp_path, monkeypatch):
    cfg = compose_config(*TINY_TEXT, "trainer.max_steps=10", "trainer.eval_interval=5")

    def killed(*_):
        raise Killed

    with monkeypatch.context() as patch, pytest.raises(Killed):
        patch.setattr("rbn.trainer.shutil.copyfile", killed)
        Trainer(cfg, tmp_path).run()
    last = load(tmp_path / "last.pt")
    assert last["progress"]["best_step"] == last["progress"]["step"] == 5
    assert not (tmp_path / "best.pt").exists()
    Trainer(cfg, tmp_path)
    assert load(tmp_path / "best.pt")["progress"] == last["progress"]


def test_resuming_with_another_config_is_refused(tmp_path):
    Trainer(compose_config(*TINY_TEXT), tmp_path).run()
    with pytest.raises(RunError, match=r"another config \(model.hidden_size: 4 -> 5\)"):
        Trainer(compose_config(*TINY_TEXT, "model.hidden_size=5"), tmp_path)


def test_resuming_with_another_gradient_clipping_is_refused(tmp_path):
    Trainer(compose_config(*TINY_TEXT, "trainer.max_steps=3"), tmp_path).fit()
    with pytest.raises(RunError, match=r"another config \(trainer.clip_grad_norm: 1.0 -> 0.5\)"):
        Trainer(compose_config(*TINY_TEXT, "trainer.clip_grad_norm=0.5"), tmp_path)


def saved_before_the_option_existed(run_dir, group: str, key: str) -> None:
    checkpoint = load(run_dir / "last.pt")
    del checkpoint["config"][group][key]
    torch.save(checkpoint, run_dir / "last.pt")


@pytest.mark.parametrize("group, key", [("model", "h0_noise_std"), ("trainer", "precision")])
def test_a_run_saved_before_an_option_existed_resumes_where_the_option_keeps_its_default(tmp_path, group, key):
    Trainer(compose_config(*TINY_TEXT, "trainer.max_steps=3"), tmp_path).fit()
    saved_before_the_option_existed(tmp_path, group, key)
    assert Trainer(compose_config(*TINY_TEXT), tmp_path).progress.step == 3


def test_a_run_saved_before_an_option_existed_is_taken_to_have_trained_with_its_default(tmp_path):
    Trainer(compose_config(*TINY_TEXT, "trainer.max_steps=3"), tmp_path).fit()
    saved_before_the_option_existed(tmp_path, "optim", "lr")  # the schema's 1e-3; the preset's is 2e-3
    with pytest.raises(RunError, match=r"another config \(optim.lr: 0.001 -> 0.002\)"):
        Trainer(compose_config(*TINY_TEXT), tmp_path)


def test_the_trainers_options_may_change_on_resume(tmp_path):
    Trainer(compose_config(*TINY_TEXT), tmp_path).fit()
    resumed = Trainer(compose_config(*TINY_TEXT, "trainer.max_steps=8"), tmp_path)
    assert resumed.progress.step == 6
    resumed.fit()
    assert load(tmp_path / "last.pt")["progress"]["step"] == 8


@pytest.mark.parametrize("seconds, shown", [(0, "00:00:00"), (63869.4, "17:44:29"), (354385, "4d 02:26:25")])
def test_the_time_left_counts_days_beyond_24_hours(seconds, shown):
    assert format_duration(seconds) == shown


@pytest.mark.parametrize(
    "first, last, every, count",
    [
        (1, 10, 4, 3),  # at 4, 8 and the last step
        (5, 10, 4, 2),  # at 8 and 10
        (8, 8, 4, 1),  # the validation due at the log line's own step is still to come
        (9, 12, 4, 1),  # the last step is a multiple: one validation there
        (11, 10, 4, 0),  # past the end (max_steps lowered on resume)
    ],
)
def test_the_validations_still_to_come_are_counted_as_the_trainer_makes_them(first, last, every, count):
    assert validations(first, last, every) == count


def slow_validations(monkeypatch, seconds: float) -> None:
    validate = Trainer.validate

    def slow(self):
        time.sleep(seconds)
        return validate(self)

    monkeypatch.setattr(Trainer, "validate", slow)


def test_the_logged_steps_per_second_leave_the_validations_out(tmp_path, monkeypatch):
    slow_validations(monkeypatch, 1.0)
    Trainer(compose_config(*TINY_TEXT, "trainer.max_steps=4", "trainer.eval_interval=2"), tmp_path).fit()
    speeds = EventAccumulator(str(tmp_path)).Reload().Scalars("train/steps_per_second")
    # Steps 3-4 follow the validation at step 2: with its second counted they could not reach 2 steps/s.
    assert [event.step for event in speeds] == [2, 4] and speeds[1].value > 2


def test_the_logged_time_left_includes_the_validations_to_come(tmp_path, monkeypatch, caplog):
    slow_validations(monkeypatch, 1.0)
    caplog.set_level("INFO", logger="rbn.trainer")
    Trainer(compose_config(*TINY_TEXT, "trainer.max_steps=8", "trainer.eval_interval=2"), tmp_path).fit()
    (left,) = re.findall(r"step 4/8 .* ETA (\d\d):(\d\d):(\d\d)", caplog.text)
    hours, minutes, seconds = map(int, left)
    assert 3600 * hours + 60 * minutes + seconds >= 3  # the validations at steps 4, 6 and 8, a second each


@pytest.mark.parametrize("implementation", ["model.backend=eager", "model.compile=true"])
def test_a_run_may_go_on_with_another_implementation_of_its_layer(tmp_path, implementation):
    """As when a run started eagerly goes on with the Triton kernels on the next machine."""
    Trainer(compose_config(*TINY_TEXT, "trainer.max_steps=3"), tmp_path).fit()
    assert Trainer(compose_config(*TINY_TEXT, implementation), tmp_path).progress.step == 3


def test_another_model_in_a_run_directory_names_what_it_lacks(tmp_path):
    Trainer(compose_config(*TINY_TEXT, "trainer.max_steps=3"), tmp_path).fit()
    with pytest.raises(RunError, match=r"model.max_length: None -> \(absent\)"):
        Trainer(compose_config(*TINY_TEXT, "model=lstm"), tmp_path)


def test_a_finished_run_without_its_checkpoints_is_not_reported_for_another_config(tmp_path):
    Trainer(compose_config(*TINY_TEXT), tmp_path).run()
    for checkpoint in tmp_path.glob("*.pt"):
        checkpoint.unlink()
    with pytest.raises(RunError, match=r"holds a finished run with another config \(model.hidden_size: 4 -> 5\)"):
        Trainer(compose_config(*TINY_TEXT, "model.hidden_size=5"), tmp_path).run()


def test_a_lost_best_checkpoint_stops_the_final_evaluation_rather_than_test_other_parameters(tmp_path):
    cfg = compose_config(*TINY_TEXT)
    Trainer(cfg, tmp_path).fit()
    last = load(tmp_path / "last.pt")
    last["progress"].update(best=0.0, best_step=3)  # the step-3 validation was the best
    torch.save(last, tmp_path / "last.pt")
    (tmp_path / "best.pt").unlink()
    with pytest.raises(RunError, match=r"best.pt, the parameters of step 3 that validated best, is missing"):
        Trainer(cfg, tmp_path).run()
    assert not (tmp_path / "results.json").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        ("garbage{", r"results.json is unreadable \(JSONDecodeError\); move the run directory away"),
        ("[]", r"results.json is not the results of a run; move the run directory away"),
        ('{"status": "finished"}', r"results.json says finished but holds no test results"),
    ],
    ids=["not-json", "not-results", "no-test"],
)
def test_a_damaged_results_file_is_a_one_line_error(tmp_path, content, message):
    (tmp_path / "results.json").write_text(content)
    with pytest.raises(RunError, match=message):
        Trainer(compose_config(*TINY_TEXT), tmp_path).run()


def test_a_checkpoint_path_that_is_a_directory_is_refused_not_overwritten(tmp_path):
    (tmp_path / "last.pt").mkdir()
    with pytest.raises(RunError, match=r"last.pt is not a file; move the run directory away"):
        Trainer(compose_config(*TINY_TEXT), tmp_path)


def test_resuming_with_another_batch_size_is_refused(tmp_path):
    Trainer(compose_config(*TINY_TEXT), tmp_path).run()
    with pytest.raises(RunError, match=r"another config \(trainer.batch_size: 4 -> 3\)"):
        Trainer(compose_config(*TINY_TEXT, "trainer.batch_size=3"), tmp_path)


def test_a_run_resumes_with_its_data_in_another_place(tmp_path):
    Trainer(compose_config(*TINY_TEXT, "trainer.max_steps=3"), tmp_path).run()
    resumed = Trainer(compose_config(*TINY_TEXT, f"data.root={tmp_path / 'data'}", "data.download=false"), tmp_path)
    assert resumed.progress.step == 3


def test_data_root_may_start_at_the_home_directory(tmp_path, monkeypatch):
    roots = []
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(data, "shakespeare", lambda root, **options: roots.append(root) or tiny_text(**options))
    build_dataset(compose_config(*TINY_TEXT, "data.root='~/corpora'"))  # quoted: Hydra's grammar refuses a bare ~
    assert roots == [tmp_path / "corpora"]


@pytest.mark.parametrize("content", [{"model": {}}, torch.zeros(3)], ids=["dict", "tensor"])
def test_a_file_that_is_not_a_checkpoint_is_a_one_line_error(tmp_path, content):
    torch.save(content, tmp_path / "last.pt")
    with pytest.raises(RunError, match="last.pt is not a checkpoint of this trainer") as error:
        Trainer(compose_config(*TINY_TEXT), tmp_path)
    assert "\n" not in str(error.value)


def test_a_checkpoint_of_a_model_that_the_data_no_longer_build_is_a_one_line_error(tmp_path, monkeypatch):
    Trainer(compose_config(*TINY_TEXT, "trainer.max_steps=3"), tmp_path).run()
    monkeypatch.setattr(data, "shakespeare", lambda **options: build_corpus(
        {"train": "a new symbol: z " * 40, "valid": "z " * 40, "test": "z " * 40}, options["segment_length"]))
    with pytest.raises(RunError, match=r"last.pt does not fit the model its config builds now \(size mismatch") as error:
        Trainer(compose_config(*TINY_TEXT), tmp_path)
    assert "\n" not in str(error.value)


def test_an_unreadable_checkpoint_is_a_one_line_error(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RunError, match="last.pt is unreadable") as error:
        Trainer(compose_config(*TINY_TEXT), tmp_path)
    assert "\n" not in str(error.value)


def test_best_checkpoint_holds_the_step_with_the_best_validation(tmp_path):
    cfg = compose_config(*TINY_TEXT, "trainer.max_steps=12", "trainer.eval_interval=2")
    results = Trainer(cfg, tmp_path).run()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    validation = {e.step: e.value for e in events.Scalars("valid/bpc")}
    best_step = min(validation, key=validation.get)
    assert results["best_step"] == best_step
    assert load(tmp_path / "best.pt")["progress"]["step"] == best_step


@pytest.fixture
def nan_validation_at_step_3(monkeypatch):
    evaluate = Trainer.evaluate

    def nan_at_step_3(self, split, **kwargs):
        metrics = evaluate(self, split, **kwargs)
        return {name: math.nan for name in metrics} if self.progress.step == 3 else metrics

    monkeypatch.setattr(Trainer, "evaluate", nan_at_step_3)


def test_a_validation_that_only_equals_the_best_does_not_replace_it(tmp_path, monkeypatch):
    evaluate = Trainer.evaluate
    monkeypatch.setattr(Trainer, "evaluate", lambda self, split, **kwargs: {**evaluate(self, split, **kwargs), "accuracy": 0.5})
    results = Trainer(compose_config(*TINY), tmp_path).run()  # validations at steps 3 and 6, both 50%
    assert results["best_step"] == 3
    assert load(tmp_path / "best.pt")["progress"]["step"] == 3


@pytest.mark.usefixtures("nan_validation_at_step_3")
def test_a_validation_after_a_nan_one_becomes_the_best(tmp_path):
    assert Trainer(compose_config(*TINY_TEXT), tmp_path).run()["best_step"] == 6


@pytest.mark.usefixtures("nan_validation_at_step_3")
def test_a_validation_with_non_finite_metrics_logs_no_gains_gradient_flow_or_sample(tmp_path):
    Trainer(compose_config(*TINY_TEXT, *GRADIENT_FLOW), tmp_path).fit()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert [event.step for event in events.Scalars("valid/bpc")] == [3, 6]
    assert [event.step for event in events.Scalars("gradient_flow/log10_first_over_last")] == [6]
    assert {event.step for event in events.Histograms("gains/recurrent.bn_c_l0.gamma")} == {6}


def test_gains_tensorboard_cannot_bin_are_left_out_with_a_warning(tmp_path, caplog):
    trainer = Trainer(compose_config(*TINY_TEXT), tmp_path)
    with torch.no_grad():
        trainer.model.recurrent.bn_c_l0.gamma.fill_(1e30)  # as after a step at lr 1e30
    trainer._log_gains(1)
    assert "gains/recurrent.bn_c_l0.gamma not logged at step 1: values TensorBoard cannot bin, e.g. 1e+30" in caplog.text


def test_a_sample_of_a_model_with_non_finite_outputs_is_a_warning_not_a_crash(tmp_path, caplog):
    trainer = Trainer(compose_config(*TINY_TEXT), tmp_path)
    with torch.no_grad():
        trainer.model.head.bias.fill_(math.nan)
    trainer.model.eval()  # as validation samples
    assert trainer._sample().startswith("(no sample: the model's probabilities after")
    assert "no sample" in caplog.text


def test_validation_with_batch_statistics_leaves_running_statistics_unchanged(tmp_path):
    trainer = Trainer(compose_config(*TINY_TEXT), tmp_path)
    trainer.fit()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with_batch_statistics = trainer.evaluate("valid", batch_statistics=True)
    with_running_statistics = trainer.evaluate("valid")
    assert with_batch_statistics != with_running_statistics
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_a_bn_lstm_is_validated_with_batch_statistics(tmp_path):
    trainer = Trainer(compose_config(*TINY), tmp_path)
    trainer.fit()  # its last validation at step 6, with the parameters it ends with
    logged = EventAccumulator(str(tmp_path)).Reload().Scalars("valid/loss")[-1]
    assert logged.step == 6
    assert logged.value == pytest.approx(trainer.evaluate("valid", batch_statistics=True)["loss"], rel=1e-5)
    assert logged.value != pytest.approx(trainer.evaluate("valid")["loss"], rel=1e-5)  # running statistics


def test_a_language_models_batch_statistics_do_not_see_the_padding(tmp_path, monkeypatch):
    trainer = Trainer(compose_config(*TINY_TEXT, "trainer.batch_size=3", "trainer.limit_eval_batches=null"), tmp_path)
    batches = trainer.dataset.batches
    assert any((targets == data.IGNORE_INDEX).any() for _, targets in batches("valid", 3))  # there is padding

    def other_padding(split, batch_size, generator=None):
        for inputs, targets in batches(split, batch_size, generator):
            yield torch.where(targets == data.IGNORE_INDEX, 7, inputs), targets

    expected = trainer.evaluate("valid", batch_statistics=True)
    monkeypatch.setattr(trainer.dataset, "batches", other_padding)
    assert trainer.evaluate("valid", batch_statistics=True) == expected


def test_population_statistics_of_a_language_model_see_the_carried_state(tmp_path):
    trainer = Trainer(compose_config(*TINY_TEXT), tmp_path)
    trainer.estimate_population_statistics()
    first_step_variance = trainer.model.recurrent.bn_h_l0.running_var[0]
    assert first_step_variance.min() > 1e-6
    # Control: from a zero state, W_h h_{-1} has no variance at the first step.
    torch.optim.swa_utils.update_bn(trainer.dataset.batches("train", 4), trainer.model)
    assert trainer.model.recurrent.bn_h_l0.running_var[0].max() == 0


INDEPENDENT = [*TINY_TEXT, "data.segments=independent"]


def test_a_language_models_carried_state_starts_from_zero_at_each_epoch(tmp_path, monkeypatch):
    trainer = Trainer(compose_config(*TINY_TEXT, "trainer.max_steps=null", "trainer.max_epochs=2"), tmp_path)
    starts, forward = [], trainer._forward

    def recording(inputs, targets, state, *rest):
        if trainer.model.training:
            starts.append((trainer.progress.epoch, trainer.progress.epoch_step == 0, state is None))
        return forward(inputs, targets, state, *rest)

    monkeypatch.setattr(trainer, "_forward", recording)
    trainer.fit()
    assert {epoch for epoch, _, _ in starts} == {0, 1}
    assert all(first == from_zero for _, first, from_zero in starts)  # carried within an epoch, not across


def test_independent_segments_each_train_from_the_initial_state(tmp_path, monkeypatch):
    trainer = Trainer(compose_config(*INDEPENDENT, "trainer.max_steps=4"), tmp_path)
    training_states = []
    forward = trainer._forward

    def recording(inputs, targets, state, *rest):
        if trainer.model.training:
            training_states.append(state)
        return forward(inputs, targets, state, *rest)

    monkeypatch.setattr(trainer, "_forward", recording)
    trainer.run()
    assert len(training_states) == 4 and all(state is None for state in training_states)


def test_a_model_trained_on_independent_segments_is_evaluated_on_each_stream_read_as_one_sequence(tmp_path):
    """The paper's test: every stream from h_0, BN-LSTM's statistics of t >= max_length those
    of its last timestep. Read in segments, the loss is that of the streams read whole."""
    trainer = Trainer(compose_config(*INDEPENDENT, "trainer.limit_eval_batches=null"), tmp_path)
    with torch.no_grad():  # statistics of their own for every timestep
        for name, buffer in trainer.model.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                buffer.uniform_(0.5, 2.0)
    batches = list(trainer.dataset.batches("valid", 4))
    assert len(batches) > 2 and sum(x.shape[1] for x, _ in batches) > trainer.model.recurrent.max_length
    inputs, targets = (torch.cat(tensors, 1) for tensors in zip(*batches))
    trainer.model.eval()
    with torch.no_grad():
        _, loss, _ = trainer.model(inputs, targets, None, data.padded_lengths(targets))
    assert trainer.evaluate("valid")["loss"] == pytest.approx(float(loss), rel=1e-5)


def test_population_statistics_of_independent_segments_see_the_initial_state(tmp_path):
    trainer = Trainer(compose_config(*INDEPENDENT), tmp_path)
    trainer.estimate_population_statistics()
    assert trainer.model.recurrent.bn_h_l0.running_var[0].max() == 0  # W_h h_0 is the same for every segment
    assert trainer.model.recurrent.bn_h_l0.running_var[1].min() > 1e-6


def test_final_results_report_batch_and_population_statistics(tmp_path):
    results = Trainer(compose_config(*TINY), tmp_path).run()
    assert results["status"] == "finished"
    for key in ("valid_batch_statistics", "valid", "test"):
        assert set(results[key]) == {"loss", "accuracy"}
        assert 0 <= results[key]["accuracy"] <= 1
    assert results["valid_batch_statistics"] != results["valid"]
    assert results["run"] == {"experiment": None, "model": "bnlstm", "data": "seqmnist", "optim": "rmsprop", "seed": 0, "overrides": []}


def test_train_py_gives_a_sweeper_the_validation_metric_never_the_tests(tmp_path, monkeypatch):
    """What an optimizing sweeper (Optuna's, Nevergrad's) minimizes or maximizes: choosing
    hyperparameters by the test split would leak it into them."""
    train = load_script("train", CONF.parent)
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=TINY_TEXT, return_hydra_config=True)
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # restored afterwards: Hydra's is a singleton
    with open_dict(cfg):  # as Hydra hands a job its config
        cfg.hydra.runtime.output_dir = str(tmp_path)
        HydraConfig.instance().set_config(cfg)
        del cfg["hydra"]
    returned = train.main(cfg)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["valid"]["bpc"] != results["test"]["bpc"]
    assert returned == results["valid"]["bpc"]


@pytest.mark.parametrize("overrides", [TINY, ["experiment=pmnist", *TINY], TINY_TEXT], ids=["seqmnist", "pmnist", "text"])
def test_the_final_model_reproduces_the_test_results(tmp_path, overrides):
    results = Trainer(compose_config(*overrides), tmp_path).run()
    final = load(tmp_path / "final.pt")
    trainer = Trainer(compose_config(*overrides), tmp_path / "untrained")
    cfg = OmegaConf.create(final["config"])  # as the README shows
    dataset = build_dataset(cfg, final["permutation"])
    trainer.dataset, trainer.model = dataset, build_model(cfg, dataset)
    trainer.model.load_state_dict(final["model"])
    assert final["config"] == rbn.config.to_dict(trainer.cfg)
    assert trainer.evaluate("test") == results["test"]


def test_population_statistics_average_every_training_batch(tmp_path):
    cfg = compose_config(*TINY, "trainer.limit_eval_batches=null", "model.h0_noise_std=0")
    trainer = Trainer(cfg, tmp_path)
    # Each training batch's statistics alone: a copy of the model whose running statistics take
    # a batch's at momentum 1.
    batch_statistics = []
    order = torch.Generator().manual_seed(epoch_seed(cfg.seed, 0))
    for inputs, _ in trainer.dataset.batches("train", cfg.trainer.batch_size, order):
        model = copy.deepcopy(trainer.model).train()
        norms = {name: m for name, m in model.named_modules() if isinstance(m, rbn.SequenceBatchNorm)}
        for norm in norms.values():
            norm.momentum = 1.0
        model(inputs)
        batch_statistics.append({name: (norm.running_mean, norm.running_var) for name, norm in norms.items()})
    trainer.estimate_population_statistics()
    assert len(batch_statistics) == 3  # 12 images / 4
    for name, norm in trainer.model.named_modules():
        if isinstance(norm, rbn.SequenceBatchNorm):
            assert norm.num_batches_tracked.tolist() == [3] * TINY_PIXELS
            mean, var = (torch.stack([batch[name][k] for batch in batch_statistics]).mean(0) for k in (0, 1))
            torch.testing.assert_close(norm.running_mean, mean, msg=name)
            torch.testing.assert_close(norm.running_var, var, msg=name)


def test_events_hold_scalars_gain_histograms_hparams_and_samples(tmp_path):
    Trainer(compose_config(*TINY_TEXT), tmp_path).run()
    events = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "train/bpc", "train/lr", "train/grad_norm", "train/steps_per_second", "valid/bpc", "final/test_bpc"} <= set(tags["scalars"])
    assert "gains/recurrent.bn_h_l0.gamma" in tags["histograms"]
    assert "samples/text_summary" in tags["tensors"]
    assert set(events.PluginTagToContent("hparams")) == {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"}


@pytest.mark.parametrize(("overrides", "metric"), [(TINY, "accuracy"), (TINY_TEXT, "bpc")], ids=["seqmnist", "text"])
def test_events_hold_a_layout_whose_charts_show_the_runs_scalars(tmp_path, overrides, metric):
    Trainer(compose_config(*overrides, *GRADIENT_FLOW), tmp_path).run()
    events = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    events.Reload()
    (config,) = events.Tensors("custom_scalars__config__")
    (category,) = layout_pb2.Layout.FromString(config.tensor_proto.string_val[0]).category
    charts = {chart.title: list(chart.multiline.tag) for chart in category.chart}
    assert charts[metric] == [f"^train/{metric}$", f"^valid/{metric}$"]
    scalars = events.Tags()["scalars"]
    for title, patterns in charts.items():
        for pattern in patterns:
            assert any(re.search(pattern, tag) for tag in scalars), (title, pattern)


@pytest.mark.parametrize(("overrides", "gains"), [(TINY, True), ([*TINY_TEXT, "model=lstm"], False)], ids=["bnlstm", "lstm"])
def test_each_validation_logs_the_gradient_flow_and_the_gains_gradients(tmp_path, overrides, gains):
    Trainer(compose_config(*overrides, *GRADIENT_FLOW), tmp_path).fit()
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert [event.step for event in events.Images("gradient_flow/hidden_state")] == [3, 6]
    ratios = events.Scalars("gradient_flow/log10_first_over_last")
    assert [event.step for event in ratios] == [3, 6] and all(math.isfinite(event.value) for event in ratios)
    gain_tags = [tag for tag in events.Tags()["scalars"] if tag.startswith("gain_gradients/")]
    assert ("gain_gradients/recurrent.bn_c_l0.gamma" in gain_tags) == gains
    assert len(gain_tags) == (4 if gains else 0)  # gamma of BN(W_x x), BN(W_h h), BN(c) and beta of BN(c)


def test_the_gradient_flow_changes_no_parameter_gradient_statistic_or_random_state(tmp_path):
    trainer = Trainer(compose_config(*TINY, *GRADIENT_FLOW), tmp_path)
    for parameter in trainer.model.parameters():
        parameter.grad = torch.randn_like(parameter)
    before = {name: value.clone() for name, value in trainer.model.state_dict().items()}
    grads = [parameter.grad.clone() for parameter in trainer.model.parameters()]
    rng = torch.get_rng_state()
    trainer._log_gradient_flow(step=1)
    assert torch.equal(torch.get_rng_state(), rng)
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, before[name]), name
    for parameter, grad in zip(trainer.model.parameters(), grads):
        assert torch.equal(parameter.grad, grad)


def test_the_gradient_flow_sees_the_h0_noise_that_training_adds(tmp_path, monkeypatch):
    """Images black but for their last pixels: without the noise, every image has the same
    state until then, the batch variance of W_h h is zero, and BN's gradient explodes back
    through those steps, which no training step sees."""
    trainer = Trainer(compose_config(*TINY, *GRADIENT_FLOW, "model.h0_noise_std=0.1"), tmp_path)
    images, labels = next(iter(trainer.dataset.batches("valid", 4)))
    images[:, :-8] = 0.0
    monkeypatch.setattr(trainer.dataset, "batches", lambda split, batch_size: iter([(images, labels)]))
    logged = {}
    monkeypatch.setattr(trainer.writer, "add_scalar", lambda tag, value, step: logged.setdefault(tag, value))
    trainer._log_gradient_flow(step=1)
    assert abs(logged["gradient_flow/log10_first_over_last"]) < 3


def test_the_gradient_flow_can_be_turned_off(tmp_path):
    Trainer(compose_config(*TINY, "trainer.gradient_flow=false"), tmp_path).fit()
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    assert events.Tags()["images"] == []
    assert not any(tag.startswith(("gradient_flow/", "gain_gradients/")) for tag in events.Tags()["scalars"])


def test_layer_norm_gains_are_in_the_histograms(tmp_path):
    Trainer(compose_config(*TINY_TEXT, "model=lnlstm"), tmp_path).run()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert {"gains/recurrent.ln_x_l0.weight", "gains/recurrent.ln_c_l0.bias"} <= set(events.Tags()["histograms"])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=NEEDS_CUDA)])
@pytest.mark.parametrize("model", ["lstm", "bnlstm", "lnlstm"])
def test_bf16_autocast_trains(tmp_path, device, model, weight_gradient):
    trainer = Trainer(compose_config(*TINY_TEXT, f"model={model}", f"trainer.device={device}", "trainer.precision=bf16"), tmp_path)
    dtypes = set()
    trainer.model.head.register_forward_hook(lambda module, inputs, output: dtypes.add(output.dtype))
    results = trainer.run()
    assert torch.bfloat16 in dtypes  # the run's forwards went through autocast
    assert results["status"] == "finished"
    assert torch.isfinite(torch.tensor(results["test"]["bpc"]))


def test_pmnist_keeps_the_permutation_its_checkpoint_saved(tmp_path, monkeypatch):
    cfg = compose_config(*TINY, "experiment=pmnist")
    stopped_run(cfg, tmp_path, monkeypatch, 1)
    saved = load(tmp_path / "last.pt")["permutation"]
    assert torch.equal(saved, data.permutation(0))
    monkeypatch.setattr(data, "permutation", lambda seed: torch.arange(TINY_PIXELS))  # as if randperm changed
    assert torch.equal(Trainer(cfg, tmp_path).dataset.permutation, saved)


def test_pmnist_with_replacement_resumes_with_the_order_its_checkpoint_saved(tmp_path, monkeypatch):
    cfg = compose_config(*TINY, "experiment=pmnist", "data.with_replacement=true", "data.seed=1")
    stopped_run(cfg, tmp_path, monkeypatch, 1)
    saved = load(tmp_path / "last.pt")["permutation"]
    assert torch.equal(saved, data.mnist.authors_order(1))
    assert torch.equal(Trainer(cfg, tmp_path).dataset.permutation, saved)


def test_each_epoch_has_its_own_data_order_fixed_by_the_seed(tmp_path, monkeypatch):
    def training_inputs(*overrides: str) -> list[torch.Tensor]:
        seen, train_step = [], Trainer._train_step

        def recording(self, inputs, *args):
            seen.append(inputs)
            train_step(self, inputs, *args)

        cfg = compose_config(*TINY, "model=lstm", "trainer.max_steps=null", "trainer.max_epochs=2", *overrides)
        with monkeypatch.context() as patch:
            patch.setattr(Trainer, "_train_step", recording)
            Trainer(cfg, tmp_path / str(len(list(tmp_path.iterdir())))).fit()
        return seen

    first, again, other_seed = training_inputs(), training_inputs(), training_inputs("seed=1")
    assert len(first) == 6  # two epochs of 12 images / 4
    assert not torch.equal(torch.cat(first[:3]), torch.cat(first[3:]))
    assert torch.equal(torch.cat(first), torch.cat(again))
    assert not torch.equal(torch.cat(first), torch.cat(other_seed))


def test_the_gradient_is_clipped_to_clip_grad_norm_before_the_optimizer_step(tmp_path, monkeypatch):
    trainer = Trainer(compose_config(*TINY_TEXT, "trainer.clip_grad_norm=0.01", "trainer.max_steps=2"), tmp_path)
    clipped, step = [], trainer.optimizer.step

    def recording(*args, **kwargs):
        clipped.append(float(torch.stack([p.grad.norm() for p in trainer.model.parameters() if p.grad is not None]).norm()))
        return step(*args, **kwargs)

    monkeypatch.setattr(trainer.optimizer, "step", recording)
    trainer.fit()
    norms = EventAccumulator(str(tmp_path)).Reload().Scalars("train/grad_norm")  # before clipping
    assert norms[0].value > 0.1  # a limit that clips
    assert len(clipped) == 2 and all(norm == pytest.approx(0.01, rel=1e-4) for norm in clipped)
