"""What the scripts' command lines share. ``positive``, ``output_file`` and ``figure_file`` are
argparse types; with ``device``, ``distinct_names`` and ``checkpoint``, each refuses a bad value
in argparse's one line before the script does any work, not after minutes of it.
``rebuilt_trainer`` is a run's trainer in a scratch directory, for the scripts that take a run
further without touching it; ``computed_here`` sets a run's config to compute on this machine."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from data import DataError
from rbn.config import Backend, ConfigError, from_dict
from rbn.trainer import CHECKPOINT_KEYS, RunError, Trainer, read_checkpoint, resolve_device


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def output_file(text: str) -> Path:
    """A file the script will write, in a directory that exists."""
    path = Path(text)
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write {path}: {path.parent} is not a directory")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write {path}: it is a directory")
    return path


def figure_file(text: str) -> Path:
    """An ``output_file`` in a format matplotlib writes, named by its suffix (none: PNG, the
    suffix matplotlib would add)."""
    from matplotlib.backend_bases import FigureCanvasBase

    path = output_file(text)
    if not path.suffix:
        return path.with_suffix(".png")
    formats = FigureCanvasBase.get_supported_filetypes()
    if path.suffix[1:].lower() not in formats:
        raise argparse.ArgumentTypeError(f"cannot write a figure as {path.suffix}: matplotlib writes {', '.join(sorted(formats))}")
    return path


def distinct_names(parser: argparse.ArgumentParser, paths: list[Path], labels: str) -> None:
    """Refuses directories that share a name, which labels what the script writes of each
    (``labels`` says what, e.g. "the ROOTs' names label their runs")."""
    if len({path.name for path in paths}) < len(paths):
        parser.error(f"{labels}, and two are the same: " + " ".join(map(str, paths)))


def output_directory(parser: argparse.ArgumentParser, path: Path) -> Path:
    """``--out``, created now rather than after the script's work."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a file in its place or on its path, no permission
        parser.error(f"cannot create --out {path}: {error.strerror}")
    return path


def device(parser: argparse.ArgumentParser, name: str) -> torch.device:
    """The device ``--device name`` stands for, read as the trainer reads ``trainer.device``."""
    try:
        return resolve_device(name, option="--device")
    except ConfigError as error:
        parser.error(str(error))


def checkpoint(parser: argparse.ArgumentParser, path: Path, keys: set[str]) -> dict[str, Any]:
    """The trainer's checkpoint at ``path``, holding at least ``keys``."""
    if not path.is_file():
        parser.error(f"{path} does not exist")
    try:
        return read_checkpoint(path, keys, "a checkpoint of rbn's trainer")
    except RunError as error:
        parser.error(str(error))


def computed_here(cfg: DictConfig, device: torch.device) -> None:
    """A run's config, set to compute on ``device``: off a CUDA device, without CUDA graphs
    and the Triton kernels, which compute what the eager loop does."""
    if device.type != "cuda":
        cfg.trainer.cuda_graphs = False
        if Backend(cfg.model.get("backend", "auto")) == Backend.triton:  # older configs lack it
            cfg.model.backend = Backend.auto.value


def rebuilt_trainer(parser: argparse.ArgumentParser, path: Path, saved: dict[str, Any], scratch: Path,
                    best: Path | None = None, device: str | None = None) -> Trainer:
    """The trainer of the run that wrote ``saved``, the checkpoint read from ``path``, rebuilt from its
    config (whatever conf/ says now) and resuming from a copy of it in ``scratch``, with a copy
    of ``best`` as its best.pt: the run's own directory is only read. ``device`` (``--device``)
    replaces the run's ``trainer.device``; CUDA graphs and the Triton kernels stay on only on a
    CUDA device (elsewhere the layer computes the same in its eager loop)."""
    shutil.copyfile(path, scratch / "last.pt")
    if best is not None and best.is_file():
        if best != path:  # named where it is: the trainer would name the scratch copy
            checkpoint(parser, best, CHECKPOINT_KEYS)
        shutil.copyfile(best, scratch / "best.pt")
    try:
        cfg = from_dict(saved["config"])
        cfg.trainer.progress_bar = False  # the scripts print their own lines
        cfg.trainer.device = device or cfg.trainer.device
        try:
            here = resolve_device(cfg.trainer.device)
        except ConfigError:
            parser.error(f"the run of {path} ran on trainer.device={cfg.trainer.device}, which is not here: "
                         "--device cpu (or another) runs it here")
        computed_here(cfg, here)
        return Trainer(cfg, scratch)
    except (ConfigError, DataError, RunError) as error:
        parser.error(f"cannot rebuild the run of {path}: {error}")
