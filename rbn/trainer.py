"""Training and evaluation of the paper's experiments; ``train.py`` is the command line.

A run lives in one directory: TensorBoard events, the checkpoints ``last.pt`` and ``best.pt``,
``results.json`` and ``final.pt``, the model as tested (Hydra adds ``.hydra/`` and
``train.log``). Starting a run in a directory
that holds ``last.pt`` resumes it, exactly: the checkpoint carries the parameters, the
optimizer, the running statistics, the random number generators, the position in the epoch
(whose order is a function of the seed and the epoch) and a language model's carried state
(``data.segments=streams``).

The paper's procedure: model selection on the validation set (batch statistics, as the
authors did; saved to ``best.pt``); then, with the best parameters, validation with batch statistics, population
statistics re-estimated by ``torch.optim.swa_utils.update_bn`` over the training set, and
validation and test with them.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.optim.swa_utils import update_bn
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

import data
from data.sources import atomic_path

from . import BNLSTM, LNLSTM, LSTM, SequenceBatchNorm
from .analysis import hidden_state_gradient_norms
from .cells import State
from .config import Backend, ConfigError, Precision, check, to_dict, with_defaults
from .models import CharLM, SequenceClassifier

log = logging.getLogger(__name__)

LAYERS = {"lstm": LSTM, "bnlstm": BNLSTM, "lnlstm": LNLSTM}
OPTIMIZERS = {"rmsprop": torch.optim.RMSprop, "adam": torch.optim.Adam}
# The validation metric that selects best.pt, and whether higher is better.
SELECTION = {"classification": ("accuracy", True), "language_model": ("bpc", False)}


def comparison_charts(metric: str) -> dict[str, list[str]]:
    """The charts that compare runs, {title: scalar tags}: every run's TensorBoard
    custom-scalars layout, and the panels of scripts/compare.py's figure."""
    return {
        metric: [f"train/{metric}", f"valid/{metric}"],
        "loss": ["train/loss", "valid/loss"],
        "gradient norm (before clipping)": ["train/grad_norm"],
        "log10 |dL/dh_1| / |dL/dh_T|": ["gradient_flow/log10_first_over_last"],
        "steps per second": ["train/steps_per_second"],
    }


class RunError(RuntimeError):
    """A run that cannot start or go on; the message is one line."""


CHECKPOINT_KEYS = {"model", "optimizer", "progress", "rng", "carry", "permutation", "config"}
# The trainer's options that change what is trained: a resumed attempt must keep them (an epoch's
# position is counted in batches). The others (device, limits, intervals, logging) may change.
TRAINING_OPTIONS = ("batch_size", "clip_grad_norm", "precision")
# The layer's options that choose how it computes, not what (the Triton kernels and a compiled
# step compute what the eager loop does): a run started eagerly may go on with the kernels.
IMPLEMENTATION_OPTIONS = ("backend", "compile")
START_OVER = "move the run directory away to start this run over"
REPEATED_SIGNAL_SECONDS = 1.0  # a second stop signal this soon after the first is the same request


def read_checkpoint(path: Path, keys: set[str], kind: str) -> dict[str, Any]:
    """A file the trainer wrote (last.pt, best.pt, final.pt) holding at least ``keys``; for any
    other file, a one-line RunError naming it (``kind``: what it should have been)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unreadable file: truncated, corrupt, not a pickle
        raise RunError(f"{path} is unreadable ({type(error).__name__})") from None
    if not (isinstance(checkpoint, dict) and keys <= checkpoint.keys()):
        raise RunError(f"{path} is not {kind}")
    return checkpoint


def read_final(run_dir: Path) -> dict[str, Any]:
    """A finished run's final.pt: the model as tested and its config; a one-line RunError for
    a run without one."""
    path = run_dir / "final.pt"
    if not path.is_file():
        raise RunError(f"{path} does not exist: {run_dir} is not a finished run")
    return read_checkpoint(path, {"model", "config"}, "a final.pt of rbn's trainer")


def load_parameters(model: nn.Module, checkpoint: dict[str, Any], path: Path) -> None:
    """Loads the parameters of ``checkpoint``, read from ``path``, into ``model``; where they do
    not fit, a one-line RunError with the first misfit (a saved config may build a model of
    other shapes now, e.g. after its data's vocabulary changed)."""
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        misfit = str(error).splitlines()[1].strip()
        raise RunError(f"{path} does not fit the model its config builds now ({misfit}); "
                       "its data may have changed since (a vocabulary)") from None


def read_results(path: Path) -> dict[str, Any]:
    """A run's results.json: a dict with a ``status``; for any other file, a one-line RunError
    naming it."""
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as error:  # ValueError: not JSON, not UTF-8
        raise RunError(f"{path} is unreadable ({type(error).__name__})") from None
    if not (isinstance(results, dict) and isinstance(results.get("status"), str)):
        raise RunError(f"{path} is not the results of a run")
    return results


def what_is_trained(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a run's config (``to_dict``'s) that every attempt of the run must share:
    all of it but where the data are, the layer's IMPLEMENTATION_OPTIONS and the trainer's
    options outside TRAINING_OPTIONS."""
    data = {key: value for key, value in config["data"].items() if key not in ("root", "download")}
    model = {key: value for key, value in config["model"].items() if key not in IMPLEMENTATION_OPTIONS}
    trainer = {key: config["trainer"].get(key) for key in TRAINING_OPTIONS}
    return {**config, "data": data, "model": model, "trainer": trainer}


def build_dataset(cfg: DictConfig, permutation: Tensor | None = None):
    """The dataset of ``cfg.data``; pMNIST with the ``permutation`` a checkpoint saved."""
    options = to_dict(cfg.data)
    name = options.pop("name")
    if options["root"] is not None:
        options["root"] = Path(to_absolute_path(os.path.expanduser(options["root"])))  # no shell expands data.root=~/...
    if permutation is not None:
        options["fixed_permutation"] = permutation
    try:
        return getattr(data, name)(**options)
    except OSError as error:  # a file where a directory goes (data.root=a file), no permission, a full disk
        where = f": {error.filename}" if error.filename else ""
        raise data.DataError(f"data={name}: {error.strerror or error}{where}") from None


def build_model(cfg: DictConfig, dataset) -> nn.Module:
    """The recurrent layer of ``cfg.model`` inside the model the dataset's task needs."""
    options = to_dict(cfg.model)
    layer = LAYERS[options.pop("name")]
    if options.get("max_length", 0) is None:
        options["max_length"] = dataset.max_length
    if dataset.task == "classification":
        return SequenceClassifier(layer(dataset.input_size, batch_first=True, **options), dataset.num_classes)
    return CharLM(layer(dataset.vocab_size, batch_first=True, **options), dataset.vocab_size)


def build_optimizer(cfg: DictConfig, model: nn.Module) -> torch.optim.Optimizer:
    options = to_dict(cfg.optim)
    name = options.pop("name")
    if "betas" in options:
        options["betas"] = tuple(options["betas"])
    try:
        return OPTIMIZERS[name](model.parameters(), **options)
    except ValueError as error:  # torch.optim's checks of its arguments
        raise ConfigError(f"optim={name}: {error}") from None


def resolve_device(name: str, option: str = "trainer.device") -> torch.device:
    """The device ``name`` (auto, cpu, cuda, cuda:N) stands for on this machine; ``option``
    is what the error names: the config key, or a script's flag."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{option}={name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"{option}={name}: rbn runs on cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{option}={name} but CUDA is not available here; use {option}=auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"{option}={name} but this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of an epoch's data order: a function of (seed, epoch) only, so a resumed run
    replays the order of the epoch it stopped in."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


class Metrics:
    """Sums over batches: the loss weighted by its number of targets, and correct answers."""

    def __init__(self, task: str) -> None:
        self.task = task
        self.loss_sum = 0.0
        self.count = 0
        self.correct = 0

    def add(self, logits: Tensor, targets: Tensor, loss: Tensor) -> None:
        if self.task == "classification":
            count = len(targets)
            self.correct += int((logits.argmax(-1) == targets).sum())
        else:
            count = int((targets != data.IGNORE_INDEX).sum())
        self.loss_sum += float(loss) * count
        self.count += count

    def summary(self) -> dict[str, float]:
        loss = self.loss_sum / max(self.count, 1)
        if self.task == "classification":
            return {"loss": loss, "accuracy": self.correct / max(self.count, 1)}
        return {"loss": loss, "bpc": data.bits_per_character(loss)}


@contextmanager
def using_batch_statistics(norms: list[SequenceBatchNorm]) -> Iterator[None]:
    """These normalizations use each batch's statistics, as in training, and leave their
    running statistics as they were; in eval mode, for evaluating with batch statistics."""
    saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in norms]
    for m in norms:
        m.train()
    try:
        yield
    finally:
        for m, state in zip(norms, saved):
            m.load_state_dict(state)
            m.eval()


@dataclass
class Progress:
    step: int = 0  # optimizer steps taken
    epoch: int = 0  # the current epoch, from 0
    epoch_step: int = 0  # batches of the current epoch trained on
    best: float | None = None  # the selection metric of best.pt
    best_step: int = 0
    validated_step: int = 0
    train_seconds: float = 0.0  # in optimizer steps
    wall_seconds: float = 0.0  # in the attempts, up to their last checkpoint: steps, validation, loading
    devices: list[str] = field(default_factory=list)  # what its attempts ran on, e.g. ["NVIDIA H100 80GB HBM3"]


def update_population_statistics(
    model: nn.Module, dataset, cfg: DictConfig, max_batches: int | None = None, device: torch.device | None = None
) -> None:
    """``update_bn`` over the training set in the order of epoch 0 (the first ``max_batches``
    batches), a language model's state carried between segments where training carries it.
    h0 noise and dropout, on in training mode, draw from generators seeded with ``cfg.seed``
    here and restored after: the estimate is a function of the parameters and the config,
    whatever drew before (the trainer's final evaluation and scripts/population_gap.py agree)."""
    generator = torch.Generator().manual_seed(epoch_seed(cfg.seed, 0))
    batches = itertools.islice(dataset.batches("train", cfg.trainer.batch_size, generator), max_batches)
    gpus = sorted({parameter.device for parameter in model.parameters() if parameter.is_cuda}, key=str)
    with torch.random.fork_rng(devices=gpus):
        torch.manual_seed(cfg.seed)
        update_bn(batches, _CarriedState(model) if dataset.carries_state else model, device=device)


class _CarriedState(nn.Module):
    """A language model read segment after segment with its state carried, as in training:
    what ``update_bn`` must see, or the first timesteps' statistics would be those of a zero
    state that evaluation never has."""

    def __init__(self, model: CharLM) -> None:
        super().__init__()
        self.model = model
        self.state = None

    def forward(self, inputs: Tensor) -> None:
        _, _, state = self.model(inputs, state=self.state)
        self.state = tuple(s.detach() for s in state)


class _TrainingForward(nn.Module):
    """The model's training forward with tensors only in and out, as
    ``torch.cuda.make_graphed_callables`` captures it: a language model's state goes in as two
    tensors; the logits and the final state come out detached, so only the loss has a
    backward graph to capture."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: Tensor, targets: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        if not state:
            logits, loss = self.model(inputs, targets)
            return logits.detach(), loss
        logits, loss, (h, c) = self.model(inputs, targets, state)
        return logits.detach(), loss, h.detach(), c.detach()


@dataclass
class _Interval:
    """Training metrics since the last log line, and the time spent validating in it (which
    the interval's steps per second leave out)."""

    metrics: Metrics
    start_step: int  # the step it began after: the last log line's
    grad_norm_sum: float = 0.0
    validation_seconds: float = 0.0
    started: float = field(default_factory=time.perf_counter)


class _StopRequested(Exception):
    pass


class Trainer:
    def __init__(self, cfg: DictConfig, run_dir: Path | str) -> None:
        self.clock = time.perf_counter()  # the wall time since it was last added to progress
        check(cfg)
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.device = resolve_device(cfg.trainer.device)
        if self.device.type == "cuda" and self.device.index is not None:  # cuda:N: graphs and Triton use the current device
            torch.cuda.set_device(self.device)
        if cfg.trainer.cuda_graphs and self.device.type != "cuda":
            raise ConfigError(f"trainer.cuda_graphs=true needs a CUDA device, and this run is on {self.device}")
        self.precision = torch.bfloat16 if cfg.trainer.precision == Precision.bf16 else None
        checkpoint = self._load("last")
        torch.manual_seed(cfg.seed)
        self.dataset = build_dataset(cfg, checkpoint["permutation"] if checkpoint else None)
        self.task = self.dataset.task
        self.model = build_model(cfg, self.dataset).to(self.device)
        self.optimizer = build_optimizer(cfg, self.model)
        self._check_before_training()
        self.progress = Progress()
        self.carry: State | None = None  # a language model's state between segments, if carried
        self.graphed: tuple[torch.Size, nn.Module] | None = None  # with trainer.cuda_graphs
        self.stop_signal: int | None = None  # set by Ctrl-C, SIGTERM or submitit's preemption signal during fit()
        self.hand_over: Callable[[int, Any], Any] | None = None  # submitit's handler of that signal
        self.resumed = checkpoint is not None
        if checkpoint:
            self._restore(checkpoint)
            log.info("resuming %s at step %d (epoch %d)", self.run_dir, self.progress.step, self.progress.epoch + 1)
        device_name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        if device_name not in self.progress.devices:
            self.progress.devices.append(device_name)
        # Events after the resumed step, from an attempt that went further, are discarded.
        self._purge_step = self.progress.step + 1

    @cached_property
    def writer(self) -> SummaryWriter:
        """The run's TensorBoard writer, made at its first use: a finished run, run again,
        gets no event file."""
        return SummaryWriter(self.run_dir, purge_step=self._purge_step)

    def _check_before_training(self) -> None:
        """What only the data or the device can refuse, in one line here rather than at the
        first step: a batch larger than the training split, and kernels that cannot run."""
        try:
            next(self.dataset.batches("train", self.cfg.trainer.batch_size, torch.Generator()))
        except ValueError as error:
            raise ConfigError(f"trainer.batch_size={self.cfg.trainer.batch_size}: {error}") from None
        if self.cfg.model.backend == Backend.triton:
            recurrent = self.model.recurrent
            batch = torch.empty(1, self.cfg.trainer.batch_size, recurrent.input_size, device=self.device)
            reason = recurrent.kernels_unsupported(batch)
            if reason is not None:
                raise ConfigError(f"model.backend=triton does not support {reason}; model.backend=auto runs eagerly")

    # --- the run ---------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Trains to the end, evaluates, writes results.json; returns the results."""
        previous = self._finished_results()
        if previous is not None and not (self.resumed and self._trains_further()):
            log.info("%s has already finished; its results are in %s", self.run_dir, self.run_dir / "results.json")
            return previous
        if previous is not None:
            # Until it finishes again, the run is one in progress (to compare.py too); the results
            # it had are kept beside it.
            kept = self.run_dir / f"results-step{self.progress.step}.json"
            (self.run_dir / "results.json").replace(kept)
            log.info("%s finished at step %d; trainer.max_steps or max_epochs now go further: training on "
                     "(its results so far are now %s)", self.run_dir, self.progress.step, kept.name)
        self._write_hparams_start()
        self._write_layout()
        # Closed on every way out, a stop by signal included: TensorBoard's writer thread is a
        # daemon, which the process's exit kills with the events it has not written yet.
        with self.writer:
            try:
                self.fit()
            except Diverged as error:
                log.error("%s; stopped, %s stays as it was", error, self.run_dir / "last.pt")
                # What it had reached before, and what it cost: a diverged run is a result too.
                best = {SELECTION[self.task][0]: self.progress.best, "step": self.progress.best_step}
                return self._write_results({"status": "diverged", "step": self.progress.step, "error": str(error),
                                            "best_valid": best, **self._times()})
            try:
                return self.final_evaluation()
            except KeyboardInterrupt:
                log.warning("interrupted during the final evaluation; run the same command to evaluate again")
                raise SystemExit(130) from None

    def fit(self) -> None:
        """Trains until max_epochs or max_steps, validating every eval_interval steps (or at
        each epoch's end) and saving last.pt (and best.pt when validation improves). Ctrl-C or
        SIGTERM stops after the current step: last.pt is saved and the process exits with
        128 + the signal's number (130, 143). Under submitit, its preemption signal stops the
        same way, and then goes to submitit's handler, which requeues the job."""
        bar = self._start_training_log()
        with bar, logging_redirect_tqdm(), self._stop_on_signals():
            try:
                self._train_epochs(bar)
            except _StopRequested:
                self.save("last")
                log.warning("%s at step %d; saved %s. Run the same command to resume",
                            signal.Signals(self.stop_signal).name, self.progress.step, self.run_dir / "last.pt")
                if self.hand_over is not None:
                    self.hand_over(self.stop_signal, None)
                raise SystemExit(128 + self.stop_signal) from None

    def _train_epochs(self, bar: tqdm) -> None:
        trainer, progress = self.cfg.trainer, self.progress
        while self._trains_further():
            batches = self._remaining_batches()
            for inputs, targets in batches:
                self._train_step(inputs, targets, bar)
                if trainer.eval_interval and progress.step % trainer.eval_interval == 0:
                    self._validate_timed()
                self._stop_if_requested()
                if self._at_step_limit():
                    # A limit on the epoch's last batch ends the epoch too: else a run whose
                    # max_epochs are then used up would seem to train further with more steps.
                    if next(batches, None) is None:
                        self._next_epoch()
                    break
            else:
                self._next_epoch()
                # Not again where an attempt validated this step before it stopped there (by an
                # eval_interval since dropped, or at a step limit before 810d090).
                if trainer.eval_interval is None and progress.validated_step != progress.step:
                    self._validate_timed()
                    self._stop_if_requested()
        if progress.validated_step != progress.step:
            self._validate_timed()
        self._stop_if_requested()  # a signal during the last validation, which fit() must not swallow

    def _stop_if_requested(self) -> None:
        """Called after each step and after each validation that is due then, so that a
        resumed run has nothing to redo."""
        if self.stop_signal is not None:
            raise _StopRequested

    def _validate_timed(self) -> dict[str, float]:
        """validate(), timed apart from the training steps: the log's steps per second are
        training throughput, and its ETA adds the validations still to come at this one's time."""
        started = time.perf_counter()
        metrics = self.validate()
        self._last_validation_seconds = time.perf_counter() - started
        self._interval.validation_seconds += self._last_validation_seconds
        return metrics

    def _trains_further(self) -> bool:
        return self.progress.epoch < self.cfg.trainer.max_epochs and not self._at_step_limit()

    def _at_step_limit(self) -> bool:
        return self.cfg.trainer.max_steps is not None and self.progress.step >= self.cfg.trainer.max_steps

    def _next_epoch(self) -> None:
        self.progress.epoch += 1
        self.progress.epoch_step = 0
        self.carry = None  # the next epoch starts at a new offset: no continuity

    def _remaining_batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        generator = torch.Generator().manual_seed(epoch_seed(self.cfg.seed, self.progress.epoch))
        batches = self.dataset.batches("train", self.cfg.trainer.batch_size, generator)
        return itertools.islice(batches, self.progress.epoch_step, None)

    def _train_step(self, inputs: Tensor, targets: Tensor, bar: tqdm) -> tuple[Tensor, Tensor]:
        """One optimizer step; returns its loss and its gradient norm before clipping."""
        started = time.perf_counter()
        self.model.train()
        inputs, targets = inputs.to(self.device), targets.to(self.device)
        forward = self._graphed_forward if self.cfg.trainer.cuda_graphs else self._forward
        with self._autocast():
            logits, loss, carry = forward(inputs, targets, self.carry)
        if self.dataset.carries_state:
            self.carry = carry
        if not torch.isfinite(loss):
            raise Diverged(f"the training loss is {loss.item()} at step {self.progress.step + 1}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.cfg.trainer.clip_grad_norm
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip is not None else math.inf)
        if not torch.isfinite(grad_norm):
            raise Diverged(f"the gradient norm is {float(grad_norm)} at step {self.progress.step + 1}")
        self.optimizer.step()
        self.progress.step += 1
        self.progress.epoch_step += 1
        self.progress.train_seconds += time.perf_counter() - started
        self._log_train(logits.detach(), targets, loss.detach(), grad_norm, bar)
        return loss.detach(), grad_norm

    def _forward(
        self, inputs: Tensor, targets: Tensor, state: State | None, first_step: int = 0
    ) -> tuple[Tensor, Tensor, State | None]:
        """Logits, loss and, for a language model, its final state (detached) to carry."""
        if self.task == "classification":
            return *self.model(inputs, targets), None
        # Training batches are never padded, so training steps skip the check (and its device sync).
        lengths = None if self.model.training else data.padded_lengths(targets)
        logits, loss, state = self.model(inputs, targets, state, lengths, first_step)
        return logits, loss, tuple(s.detach() for s in state)

    def _graphed_forward(self, inputs: Tensor, targets: Tensor, state: State | None) -> tuple[Tensor, Tensor, State | None]:
        """``_forward`` replayed from CUDA graphs of the training forward and backward, which
        are captured at the first whole batch; a batch of another shape runs eagerly."""
        if self.graphed is None:
            if len(inputs) != self.cfg.trainer.batch_size:  # an epoch's last, where a resumed run may start
                return self._forward(inputs, targets, state)
            self.graphed = inputs.shape, self._capture(inputs, targets)
        shape, graphed = self.graphed
        if inputs.shape != shape:
            return self._forward(inputs, targets, state)
        if self.task == "classification":
            return *graphed(inputs, targets), None
        logits, loss, h, c = graphed(inputs, targets, *(state or self._zero_state(len(inputs))))
        # The graph's outputs all join the autograd graph. A carried state that stayed there
        # would make the next backward replay this step's graph too, with zero gradients,
        # over the buffers that hold the gradients it has just returned.
        return logits, loss, (h.detach(), c.detach())

    def _capture(self, inputs: Tensor, targets: Tensor) -> nn.Module:
        """``torch.cuda.make_graphed_callables`` of the training forward for batches shaped like
        ``inputs``. Its warm-up passes leave no trace: the running statistics and the random
        number generators are put back as they were, so that a run trains as it would eagerly."""
        state = () if self.task == "classification" else self._zero_state(len(inputs))
        buffers = [buffer.clone() for buffer in self.model.buffers()]
        rng = torch.get_rng_state(), torch.cuda.get_rng_state(self.device)
        graphed = torch.cuda.make_graphed_callables(_TrainingForward(self.model), (inputs, targets, *state))
        for buffer, saved in zip(self.model.buffers(), buffers):
            buffer.copy_(saved)
        torch.set_rng_state(rng[0])
        torch.cuda.set_rng_state(rng[1], self.device)
        return graphed

    def _zero_state(self, batch: int) -> State:
        recurrent = self.model.recurrent
        shape = (recurrent.num_layers * recurrent.num_directions, batch, recurrent.hidden_size)
        return torch.zeros(shape, device=self.device), torch.zeros(shape, device=self.device)

    # --- evaluation ------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, split: str, batch_statistics: bool = False) -> dict[str, float]:
        """Loss and accuracy (or bits per character) on a split, in eval mode: normalized with
        running or population statistics, or with each batch's statistics if asked."""
        self.model.eval()
        metrics = Metrics(self.task)
        state, first_step = None, 0
        batches = itertools.islice(self.dataset.batches(split, self.cfg.trainer.batch_size), self.cfg.trainer.limit_eval_batches)
        with self._autocast(), using_batch_statistics(self._batch_norms() if batch_statistics else []):
            for inputs, targets in batches:
                if batch_statistics and len(targets) < 2:
                    continue  # a last batch of one sequence has no batch statistics
                inputs, targets = inputs.to(self.device), targets.to(self.device)
                logits, loss, state = self._forward(inputs, targets, state, first_step)
                metrics.add(logits, targets, loss)
                if self.dataset.evaluation_continues_time:
                    first_step += inputs.shape[1]
        return metrics.summary()

    def validate(self) -> dict[str, float]:
        """Validation at the current step: scalars, gain histograms, a text sample, and the
        checkpoints; returns the metrics. It draws no random numbers from the training
        generators, so a resumed run that skips it stays exact.

        BN-LSTM is validated with batch statistics, as the authors selected models: statistics
        averaged over training lag behind weights that move fast (docs/results.md, "Sequential
        MNIST, 300 steps": 32.9% with batch statistics, 22.9% with population statistics)."""
        with self._own_rng():
            metrics = self.evaluate("valid", batch_statistics=self.has_batch_norm())
            step = self.progress.step
            for name, value in metrics.items():
                self.writer.add_scalar(f"valid/{name}", value, step)
            if all(math.isfinite(value) for value in metrics.values()):  # else NaN, or sampling from NaN fails
                self._log_gains(step)
                if self.cfg.trainer.gradient_flow:
                    self._log_gradient_flow(step)
                if self.task == "language_model" and self.cfg.trainer.sample_length:
                    self.writer.add_text("samples", self._sample(), step)
        log.info("step %d valid %s", step, _format(metrics))
        name, higher_is_better = SELECTION[self.task]
        value = metrics[name]
        best = self.progress.best
        # A NaN best would compare False with every later value and keep best.pt at its step.
        improved = best is None or math.isnan(best) or (value > best if higher_is_better else value < best)
        self.progress.validated_step = step
        if improved:
            self.progress.best, self.progress.best_step = value, step
        self.save("last")
        if improved:
            self._copy_last_to_best()
        return metrics

    def _copy_last_to_best(self) -> None:
        with atomic_path(self.run_dir / "best.pt") as tmp:
            shutil.copyfile(self.run_dir / "last.pt", tmp)

    def _complete_best(self) -> None:
        """A run killed between saving last.pt at a validation that improved and copying it to
        best.pt (SIGKILL at the end of a scheduler's grace period, a power cut) left best.pt
        behind the step last.pt names as best, whose parameters last.pt holds: they become best.pt."""
        if self.progress.best is None or self.progress.best_step != self.progress.step:
            return
        best = self._load("best")
        if best is None or best["progress"]["step"] != self.progress.best_step:
            log.warning("best.pt was not written at step %d, the best so far; it is now", self.progress.best_step)
            self._copy_last_to_best()

    def final_evaluation(self) -> dict[str, Any]:
        """The paper's test procedure with the parameters of best.pt."""
        best = self._load("best")
        if best is not None:
            self._load_model(best, "best")
        elif self.progress.best is not None:
            raise RunError(f"{self.run_dir / 'best.pt'}, the parameters of step {self.progress.best_step} that "
                           f"validated best, is missing: the run cannot be tested; {START_OVER}")
        results: dict[str, Any] = {"status": "finished", "step": self.progress.step, "best_step": self.progress.best_step}
        if self.has_batch_norm():
            results["valid_batch_statistics"] = self.evaluate("valid", batch_statistics=True)
            self.estimate_population_statistics()
        results["valid"] = self.evaluate("valid")
        results["test"] = self.evaluate("test")
        # The model as tested, for later use: best.pt's parameters with population statistics.
        final = {
            "model": self.model.state_dict(),
            "config": to_dict(self.cfg),
            "permutation": getattr(self.dataset, "permutation", None),
        }
        with atomic_path(self.run_dir / "final.pt") as tmp:
            torch.save(final, tmp)
        if not self.has_batch_norm():
            results["valid_batch_statistics"] = results["valid"]  # nothing is batch-normalized
        results.update(self._times())
        for key in ("valid_batch_statistics", "valid", "test"):
            for name, value in results[key].items():
                self.writer.add_scalar(f"final/{key}_{name}", value, self.progress.step)
        self.writer.file_writer.add_summary(hparams({}, {}, None)[2])  # session end: finished
        log.info("test %s (valid %s)", _format(results["test"]), _format(results["valid"]))
        return self._write_results(results)

    def estimate_population_statistics(self) -> None:
        """``update_population_statistics``, capped by ``limit_eval_batches``."""
        with self._autocast():
            update_population_statistics(self.model, self.dataset, self.cfg, self.cfg.trainer.limit_eval_batches, self.device)

    def _batch_norms(self) -> list[SequenceBatchNorm]:
        return [m for m in self.model.modules() if isinstance(m, SequenceBatchNorm)]

    def has_batch_norm(self) -> bool:
        return bool(self._batch_norms())

    def _sample(self) -> str:
        """A continuation of the validation text's first characters, sampled from the model."""
        length = self.cfg.trainer.sample_length
        prompt = self.dataset.splits["valid"][: length // 4 + 1].long().to(self.device)
        generator = torch.Generator().manual_seed(self.cfg.seed)
        with self._autocast():
            try:
                text = self.model.sample(prompt, length, generator)
            except FloatingPointError as error:  # a diverging model's: the next training step reports it
                log.warning("%s", error)
                return f"({error})"
        return self.dataset.decode(text)

    # --- logging -------------------------------------------------------------------------

    def _start_training_log(self) -> tqdm:
        """Starts the attempt's log of training (the schedule its ETA counts down, the first
        interval's sums), which ``_log_train`` then writes; returns the progress bar it updates."""
        batches = epoch_length(self.dataset, self.cfg.trainer.batch_size)
        self._total_steps, self._validation_every = schedule(self.cfg.trainer, batches)
        self._interval = _Interval(Metrics(self.task), self.progress.step)
        self._last_validation_seconds = 0.0  # once this attempt has made one
        show = self.cfg.trainer.progress_bar and sys.stderr.isatty()
        return tqdm(total=self._total_steps, initial=self.progress.step, unit="step", dynamic_ncols=True, disable=not show)

    def _log_train(self, logits: Tensor, targets: Tensor, loss: Tensor, grad_norm: Tensor, bar: tqdm) -> None:
        """Every log_interval steps: the interval's means to TensorBoard, and to the progress
        bar, or as a line with throughput and ETA when there is no terminal."""
        interval, step = self._interval, self.progress.step
        interval.metrics.add(logits, targets, loss)
        interval.grad_norm_sum += float(grad_norm)
        bar.update(1)
        if step % self.cfg.trainer.log_interval:
            return
        steps = step - interval.start_step
        steps_per_second = steps / (time.perf_counter() - interval.started - interval.validation_seconds)
        summary = interval.metrics.summary()
        scalars = {
            **summary,
            "grad_norm": interval.grad_norm_sum / steps,
            "lr": self.optimizer.param_groups[0]["lr"],
            "steps_per_second": steps_per_second,
        }
        for name, value in scalars.items():
            self.writer.add_scalar(f"train/{name}", value, step)
        bar.set_postfix(summary, refresh=False)
        if bar.disable:
            remaining = (max(self._total_steps - step, 0) / steps_per_second
                         + validations(step, self._total_steps, self._validation_every) * self._last_validation_seconds)
            log.info(
                "step %d/%d epoch %d train %s | %.2f steps/s | ETA %s",
                step, self._total_steps, self.progress.epoch + 1, _format(summary), steps_per_second,
                format_duration(remaining),
            )
        self._interval = _Interval(Metrics(self.task), step)

    def _gains(self) -> dict[str, nn.Parameter]:
        """The normalization gains and shifts (BN: gamma, beta; LN: weight, bias), by name."""
        return {
            f"{name}.{parameter_name}": parameter
            for name, module in self.model.named_modules() if isinstance(module, (SequenceBatchNorm, nn.LayerNorm))
            for parameter_name, parameter in module.named_parameters()
        }

    def _log_gains(self, step: int) -> None:
        """Histograms of the normalization gains and shifts. A diverging run's may hold values
        that TensorBoard cannot bin (NaN, inf, beyond its 1e20 range): they are left out, as
        the divergence is for the next training step to report, not for the logging."""
        for name, parameter in self._gains().items():
            values = parameter.detach().float().cpu()
            try:
                self.writer.add_histogram(f"gains/{name}", values, step)
            except ValueError:
                log.warning("gains/%s not logged at step %d: values TensorBoard cannot bin, e.g. %.3g",
                            name, step, values.flatten()[0].item())

    def _log_gradient_flow(self, step: int) -> None:
        """How far the gradient reaches back in time, on the first validation batch: the norm
        of d loss / d h_t against t as a figure, the log10 ratio of its first step to its last
        as a scalar that compares runs, and the norms of the gains' gradients (a second pass:
        the eager loop's h_t are recorded apart). Measured as a training step sees a batch,
        with h0 noise and dropout: without its noise, an MNIST batch whose first pixels are
        black in every image has zero batch variance there, and BN's gradient explodes through
        those steps (a log10 ratio of 13.6 against training's -1.4 on a pMNIST BN-LSTM). Its
        random numbers come from generators of its own, seeded with the run's seed, and no
        running statistic or ``.grad`` changes, so that a resumed run stays exact."""
        inputs, targets = next(iter(self.dataset.batches("valid", self.cfg.trainer.batch_size)))
        gains = self._gains()
        inputs, targets = inputs.to(self.device), targets.to(self.device)
        self.model.train()
        with self._autocast(), using_batch_statistics(self._batch_norms()), torch.enable_grad(), self._own_rng():
            torch.manual_seed(self.cfg.seed)
            norms = hidden_state_gradient_norms(self.model, inputs, targets).cpu()
            torch.manual_seed(self.cfg.seed)  # the same noise in the gains' pass
            gain_gradients = torch.autograd.grad(self._forward(inputs, targets, None)[1], list(gains.values())) if gains else []
        self.model.eval()
        self.writer.add_scalar("gradient_flow/log10_first_over_last", float((norms[0] / norms[-1]).log10()), step)
        for name, gradient in zip(gains, gain_gradients):
            self.writer.add_scalar(f"gain_gradients/{name}", float(gradient.norm()), step)
        from matplotlib.figure import Figure  # 0.3-0.4 s to import: only runs that draw it pay

        figure = Figure(figsize=(6, 3.5))
        axes = figure.subplots()
        axes.semilogy(range(1, len(norms) + 1), norms.numpy())
        axes.set(xlabel="t", ylabel="|d loss / d h_t|", title=f"gradient flow at step {step}")
        axes.grid(alpha=0.3)
        figure.tight_layout()
        self.writer.add_figure("gradient_flow/hidden_state", figure, step)

    def _write_hparams_start(self) -> None:
        """The hparams plugin's experiment and session start, in this run's own event file
        (SummaryWriter.add_hparams would make a separate run): a sweep is one table."""
        flat = _flatten(to_dict(self.cfg))
        flat["experiment"] = str(self._describe()["experiment"])
        names = ["valid_batch_statistics", "valid", "test"]
        metric = SELECTION[self.task][0]
        metrics = {f"final/{key}_{name}": 0.0 for key in names for name in ("loss", metric)}
        experiment, session_start, _ = hparams(flat, metrics)
        self.writer.file_writer.add_summary(experiment)
        self.writer.file_writer.add_summary(session_start)

    def _write_layout(self) -> None:
        """The comparison charts as TensorBoard's custom-scalars layout: with several runs
        open, each chart shows one line per run (tags are regular expressions, hence anchored)."""
        charts = comparison_charts(SELECTION[self.task][0])
        layout = {title: ["Multiline", [f"^{tag}$" for tag in tags]] for title, tags in charts.items()}
        self.writer.add_custom_scalars({"compare runs": layout})

    def _times(self) -> dict[str, Any]:
        """The run's time in training steps and in all, every attempt's, and its devices."""
        self._add_wall_time()
        return {"train_seconds": round(self.progress.train_seconds, 3),
                "wall_seconds": round(self.progress.wall_seconds, 3), "devices": self.progress.devices}

    def _write_results(self, results: dict[str, Any]) -> dict[str, Any]:
        results = {**results, "run": self._describe(), "config": to_dict(self.cfg)}
        with atomic_path(self.run_dir / "results.json") as tmp:
            tmp.write_text(json.dumps(results, indent=2) + "\n")
        self.writer.flush()
        return results

    def _describe(self) -> dict[str, Any]:
        """What compare.py groups runs by: the experiment preset Hydra chose (if under Hydra),
        model, data, seed and the command line's overrides."""
        hydra = HydraConfig.get() if HydraConfig.initialized() else None
        cfg = self.cfg
        return {
            "experiment": hydra.runtime.choices.get("experiment") if hydra else None,
            "model": cfg.model.name, "data": cfg.data.name, "optim": cfg.optim.name, "seed": cfg.seed,
            "overrides": list(hydra.overrides.task) if hydra else [],
        }

    # --- checkpoints -----------------------------------------------------------------------

    def save(self, name: str) -> None:
        """Writes ``name``.pt atomically: state dicts, plain values and tensors only."""
        self._add_wall_time()
        cuda = self.device.type == "cuda"
        checkpoint = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "progress": asdict(self.progress),
            # The run's GPU only: an attempt may run on a machine with fewer GPUs, or on another index.
            "rng": {"torch": torch.get_rng_state(), "cuda": [torch.cuda.get_rng_state(self.device)] if cuda else []},
            "carry": list(self.carry) if self.carry is not None else None,
            "permutation": getattr(self.dataset, "permutation", None),
            "config": to_dict(self.cfg),
        }
        with atomic_path(self.run_dir / f"{name}.pt") as tmp:
            torch.save(checkpoint, tmp)

    def _add_wall_time(self) -> None:
        now = time.perf_counter()
        self.progress.wall_seconds += now - self.clock
        self.clock = now

    def _load(self, name: str) -> dict[str, Any] | None:
        path = self.run_dir / f"{name}.pt"
        if not self._exists(path):
            return None
        try:
            checkpoint = read_checkpoint(path, CHECKPOINT_KEYS, "a checkpoint of this trainer")
        except RunError as error:
            raise RunError(f"{error}; {START_OVER}") from None
        self._check_same_run(checkpoint["config"], "a run")
        return checkpoint

    def _finished_results(self) -> dict[str, Any] | None:
        """results.json if the run has finished: the results of this config, or a RunError."""
        path = self.run_dir / "results.json"
        if not self._exists(path):
            return None
        try:
            results = read_results(path)
        except RunError as error:
            raise RunError(f"{error}; {START_OVER}") from None
        if results["status"] != "finished":
            return None
        if "test" not in results:
            raise RunError(f"{path} says finished but holds no test results; {START_OVER}")
        if "config" in results:  # written since 2026-12-06
            self._check_same_run(results["config"], "a finished run")
        return results

    def _exists(self, path: Path) -> bool:
        if path.exists() and not path.is_file():
            raise RunError(f"{path} is not a file; {START_OVER}")
        return path.exists()

    def _check_same_run(self, config: dict[str, Any], what: str) -> None:
        saved, current = what_is_trained(with_defaults(config)), what_is_trained(to_dict(self.cfg))
        if saved != current:
            differences = ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in _diff(saved, current).items())
            raise RunError(f"{self.run_dir} holds {what} with another config ({differences}); use another run directory")

    def _load_model(self, checkpoint: dict[str, Any], name: str) -> None:
        try:
            load_parameters(self.model, checkpoint, self.run_dir / f"{name}.pt")
        except RunError as error:  # the same config: its data built another model then
            raise RunError(f"{error}: use another run directory") from None

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        self._load_model(checkpoint, "last")
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.progress = Progress(**checkpoint["progress"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        if checkpoint["rng"]["cuda"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(checkpoint["rng"]["cuda"][0], self.device)
        if checkpoint["carry"] is not None:
            self.carry = tuple(s.to(self.device) for s in checkpoint["carry"])
        self._complete_best()

    # --- context ---------------------------------------------------------------------------

    def _own_rng(self):
        """A fork of the random number generators that training draws from: whatever is drawn
        inside leaves them as they were."""
        return torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else [])

    def _autocast(self):
        if self.precision is None:
            return nullcontext()
        # CUDA graphs capture the casts themselves: make_graphed_callables refuses autocast's cache.
        return torch.autocast(self.device.type, dtype=self.precision, cache_enabled=not self.cfg.trainer.cuda_graphs)

    @contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """The first Ctrl-C or SIGTERM (what `timeout`, SLURM and Kubernetes send before they
        kill) asks to stop after the current step; a second signal acts as it would without
        the trainer, at once. Signals within REPEATED_SIGNAL_SECONDS of the first are that same
        request, sent twice: `pkill -f train.py` matches both a `timeout` wrapper and the run, and
        `timeout` passes its copy on, as it would from any sender that signals a whole job.
        SIGTERM stays with a handler that is already there (submitit's ignores it). Under
        submitit, whose handler of its preemption signal requeues the job and exits at once,
        that signal asks to stop too, and its handler gets it after last.pt is saved: the
        requeued job loses no step."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        signals = [signal.SIGINT]
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signals.append(signal.SIGTERM)
        preemption = submitit_preemption_signal()
        if preemption is not None and preemption not in signals and callable(signal.getsignal(preemption)):
            signals.append(preemption)
        first_signal_at = None

        def request_stop(signum, frame) -> None:
            nonlocal first_signal_at
            if first_signal_at is not None:
                if time.monotonic() - first_signal_at >= REPEATED_SIGNAL_SECONDS:
                    restore()
                    signal.raise_signal(signum)  # now to the handler it would have had
                return
            first_signal_at = time.monotonic()
            self.stop_signal = signum
            if signum == preemption:
                self.hand_over = previous[signum]
            log.warning("%s: stopping after this step (send it again to stop at once, without a checkpoint)",
                        signal.Signals(signum).name)

        def restore() -> None:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

        previous = {signum: signal.signal(signum, request_stop) for signum in signals}
        try:
            yield
        finally:
            restore()


class Diverged(Exception):
    """A training step's loss or gradient norm is not finite; the message says which, and at what step."""


def submitit_preemption_signal() -> signal.Signals | None:
    """The signal that submitit's handler takes as a time limit or a preemption coming: SIGUSR2,
    or the one SUBMITIT_PREEMPT_SIGNAL names (USR1, ...); None where the platform lacks it."""
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)


def epoch_length(dataset, batch_size: int) -> int:
    """Batches per training epoch (for a corpus, at offset 0; a random offset may drop one)."""
    if dataset.task == "classification":
        return math.ceil(len(dataset) / batch_size)
    return max((len(dataset) - 1) // (batch_size * dataset.segment_length), 1)


def schedule(trainer_cfg, batches_per_epoch: int) -> tuple[int, int]:
    """(the last step, the validation interval) of a run under ``trainer_cfg``: max_epochs of
    ``batches_per_epoch`` steps unless max_steps is fewer; validations every eval_interval
    steps, or at each epoch's end."""
    steps = trainer_cfg.max_epochs * batches_per_epoch
    if trainer_cfg.max_steps is not None:
        steps = min(steps, trainer_cfg.max_steps)
    return steps, trainer_cfg.eval_interval or batches_per_epoch


def validations(first: int, last: int, every: int) -> int:
    """The validations a run makes at steps first..last (first >= 1), as Trainer._train_epochs
    makes them: at each multiple of ``every`` (eval_interval, or the epoch's length) and at the
    last step if none was due there."""
    return math.ceil(last / every) - (first - 1) // every if first <= last else 0


def format_duration(seconds: float) -> str:
    """A time left as 17:44:29, or 4d 02:26:25 from a day on (a run on a CPU takes days)."""
    days, rest = divmod(round(seconds), 86400)
    clock = f"{rest // 3600:02d}:{rest // 60 % 60:02d}:{rest % 60:02d}"
    return f"{days}d {clock}" if days else clock


def _format(metrics: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in metrics.items())


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"hidden_size": 100}} -> {"model.hidden_size": 100}, values the hparams
    plugin accepts (numbers, strings, booleans)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


def _diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    old, new = _flatten(old), _flatten(new)
    absent = "(absent)"  # not None: _flatten writes None as "None"
    return {
        k: (old.get(k, absent), new.get(k, absent)) for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)
    }
