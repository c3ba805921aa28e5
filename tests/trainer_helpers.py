"""Configs and tiny in-memory datasets for the trainer's tests, and the scripts run in process."""

import importlib.util
import signal
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import data.mnist
import rbn.config  # noqa: F401  (registers the schemas)
from data.text import build_corpus
from rbn.trainer import Trainer

CONF = Path(__file__).resolve().parents[1] / "conf"
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"

# Small enough for milliseconds per step; every trainer feature still runs.
TINY = [
    "model.hidden_size=4", "trainer.batch_size=4", "trainer.max_steps=6", "trainer.eval_interval=3",
    "trainer.limit_eval_batches=2", "trainer.log_interval=2", "trainer.sample_length=12", "trainer.progress_bar=false",
    "trainer.gradient_flow=false",  # two more passes per validation: on only where a test is about it
]
TINY_TEXT = ["experiment=shakespeare", "data.segment_length=8", *TINY]
GRADIENT_FLOW = ["trainer.gradient_flow=true"]  # the default, which TINY turns off


def compose_config(*overrides: str):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


TINY_PIXELS = 49  # conftest.use_tiny_data's images by default, 7 x 7


def tiny_mnist(root, source, download):
    generator = torch.Generator().manual_seed(0)
    sizes = {"train": 12, "valid": 6, "test": 6}
    return {
        split: (torch.randint(256, (n, data.mnist.PIXELS), generator=generator, dtype=torch.uint8), torch.randint(10, (n,), generator=generator))
        for split, n in sizes.items()
    }


def tiny_text(root=None, segment_length=100, segments="streams", download=True):
    words = "to be or not that is the question whether tis nobler in mind suffer".split()
    generator = torch.Generator().manual_seed(0)

    def text(n: int) -> str:
        return " ".join(words[i] for i in torch.randint(len(words), (n,), generator=generator).tolist())

    return build_corpus({"train": text(90), "valid": text(30), "test": text(30)}, segment_length, segments)


def interrupt_at(monkeypatch, step: int, signum: int = signal.SIGINT, times: int = 1) -> None:
    """Sends Ctrl-C (SIGINT), or ``signum``, to this process while training step ``step`` runs,
    ``times`` times in a row."""
    train_step = Trainer._train_step

    def step_then_interrupt(self, *args):
        if self.progress.step == step - 1:
            for _ in range(times):
                signal.raise_signal(signum)
        train_step(self, *args)

    monkeypatch.setattr(Trainer, "_train_step", step_then_interrupt)


def stopped_run(cfg, run_dir: Path, monkeypatch, step: int, signum: int = signal.SIGINT) -> int:
    """Runs the trainer in ``run_dir`` until ``signum``, sent during step ``step``, stops it;
    returns the exit status."""
    with monkeypatch.context() as patch, pytest.raises(SystemExit) as stopped:
        interrupt_at(patch, step, signum)
        Trainer(cfg, run_dir).run()
    return stopped.value.code


def diverged_run(cfg, run_dir: Path, monkeypatch) -> Path:
    """Runs the trainer in ``run_dir`` with infinite gradients from step 5 on, so that it diverges there."""
    trainer = Trainer(cfg, run_dir)
    backward = torch.Tensor.backward

    def infinite_gradients_from_step_5(loss, *args, **kwargs):
        backward(loss * float("inf") if trainer.progress.step >= 4 else loss, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(torch.Tensor, "backward", infinite_gradients_from_step_5)
        assert trainer.run()["status"] == "diverged"
    return run_dir


# The one-line error of a script asked to rebuild such a run where there is no GPU.
NO_GPU_HERE = "ran on trainer.device=cuda, which is not here: --device cpu (or another) runs it here"


def as_if_trained_on_a_gpu(path: Path) -> None:
    """Rewrites the checkpoint at ``path`` with the config of a run carried from a GPU, where it
    trained on the Triton kernels in CUDA graphs."""
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["config"]["trainer"].update(device="cuda", cuda_graphs=True)
    checkpoint["config"]["model"]["backend"] = "triton"
    torch.save(checkpoint, path)


def load_script(name: str, directory: Path = SCRIPTS):
    """<directory>/<name>.py, scripts/ unless told, imported afresh in this process."""
    spec = importlib.util.spec_from_file_location(name, directory / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(monkeypatch, module, *args) -> None:
    """A script's ``main()`` with these command-line arguments."""
    monkeypatch.setattr(sys, "argv", [Path(module.__file__).name, *map(str, args)])
    module.main()


def script_error(run, capsys, script: str) -> str:
    """The error of a script that ``run`` runs in process, after checking that argparse's exit
    gave it in one line."""
    with pytest.raises(SystemExit) as exit:
        run()
    assert exit.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"{script}: error: ")
    return error
