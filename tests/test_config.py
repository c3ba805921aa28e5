"""The configs in conf/: composition, the paper's presets, and bad configs."""

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ValidationError
from trainer_helpers import CONF, TINY, TINY_TEXT, compose_config

import data
from data import DataError
import rbn
from rbn.config import GROUPS, ConfigError, Segments, check, from_dict, to_dict
from rbn.models import CharLM, SequenceClassifier
from rbn.trainer import Trainer, build_dataset, build_model, build_optimizer

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


def stand_in_dataset(cfg):
    """What build_model reads from a dataset, without its files (PTB and text8 are not here)."""
    if cfg.data.name in ("seqmnist", "pmnist"):
        return SimpleNamespace(task="classification", input_size=1, num_classes=10, max_length=784)
    return SimpleNamespace(task="language_model", vocab_size=50, max_length=cfg.data.segment_length)


def test_the_experiments_are_the_papers_four_and_shakespeare():
    assert EXPERIMENTS == ["pmnist", "ptb_char", "seqmnist", "shakespeare", "text8"]
    assert MODELS == ["bnlstm", "lnlstm", "lstm"]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_and_model_composes_and_builds(experiment, model, monkeypatch):
    # Building text8's 2000-unit model is the point; its orthogonal init (a QR of each
    # 2000 x 2000 block) is not, so it is stubbed here (tests/test_init.py covers it).
    monkeypatch.setattr(torch.nn.init, "orthogonal_", lambda tensor: tensor)
    cfg = compose_config(f"experiment={experiment}", f"model={model}")
    check(cfg)
    built = build_model(cfg, stand_in_dataset(cfg))
    build_optimizer(cfg, built)
    expected = {"lstm": rbn.LSTM, "bnlstm": rbn.BNLSTM, "lnlstm": rbn.LNLSTM}[model]
    assert type(built.recurrent) is expected
    assert isinstance(built, SequenceClassifier if "mnist" in experiment else CharLM)
    assert built.recurrent.hidden_size == cfg.model.hidden_size


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_a_saved_config_rebuilds_the_typed_config_it_was_saved_from(experiment, model):
    cfg = compose_config(f"experiment={experiment}", f"model={model}")
    rebuilt = from_dict(to_dict(cfg))
    check(rebuilt)
    assert rebuilt == cfg
    assert all(OmegaConf.get_type(rebuilt[group]) is OmegaConf.get_type(cfg[group]) for group in GROUPS)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda saved: saved["model"].update(name="gru"), "the saved config's model.name, 'gru', is not one of lstm, bnlstm, lnlstm"),
        (lambda saved: saved["trainer"].update(retired_option=1), "the saved config's trainer.retired_option does not fit this version"),
        (lambda saved: saved["model"].update(hidden_size="big"), "the saved config's model.hidden_size does not fit this version"),
    ],
    ids=["unknown-model", "unknown-key", "wrong-type"],
)
def test_a_saved_config_this_version_cannot_rebuild_is_one_clear_line(change, message):
    saved = to_dict(compose_config("experiment=pmnist"))
    change(saved)
    with pytest.raises(ConfigError, match="^" + re.escape(message)) as error:
        from_dict(saved)
    assert "\n" not in str(error.value)


# ptb_char's preset now has independent segments; a config from before the option trained on streams.
@pytest.mark.parametrize("experiment, key, default", [("pmnist", "with_replacement", False), ("ptb_char", "segments", Segments.streams)])
def test_a_saved_config_from_before_an_option_existed_rebuilds_with_its_default(experiment, key, default):
    saved = to_dict(compose_config(f"experiment={experiment}"))
    del saved["data"][key]
    assert from_dict(saved).data[key] is default


@pytest.mark.parametrize("model", MODELS)
def test_the_backend_reaches_the_layer(model):
    cfg = compose_config(f"model={model}", "model.backend=eager")
    assert build_model(cfg, stand_in_dataset(cfg)).recurrent.backend == "eager"


def test_no_arguments_is_bnlstm_on_sequential_mnist_with_the_papers_settings():
    cfg = compose_config()
    assert (cfg.model.name, cfg.data.name, cfg.optim.name) == ("bnlstm", "seqmnist", "rmsprop")
    assert cfg.data.source.value == "embedded"
    assert cfg.model.h0_noise_std == 0.1
    assert cfg.model.gamma_init == 0.1


# (hidden, optimizer, lr, batch, segment, epochs): Cooijmans et al. 2016 §5 and the authors' scripts.
PAPER = {
    "seqmnist": (100, "rmsprop", 1e-3, 100, None, 200),
    "pmnist": (100, "rmsprop", 1e-3, 100, None, 200),
    "ptb_char": (1000, "adam", 2e-3, 64, 100, 50),
    "text8": (2000, "adam", 1e-3, 128, 180, 50),
}


@pytest.mark.parametrize("experiment", sorted(PAPER))
def test_presets_pin_the_papers_hyperparameters(experiment):
    cfg = compose_config(f"experiment={experiment}")
    hidden, optimizer, lr, batch, segment, epochs = PAPER[experiment]
    assert cfg.model.hidden_size == hidden
    assert (cfg.optim.name, cfg.optim.lr) == (optimizer, lr)
    assert (cfg.trainer.batch_size, cfg.trainer.max_epochs, cfg.trainer.max_steps) == (batch, epochs, None)
    assert cfg.data.get("segment_length") == segment
    assert cfg.trainer.clip_grad_norm == 1.0
    assert cfg.model.dropout == 0 and cfg.model.num_layers == 1
    assert cfg.model.init.value == ("identity_g" if "mnist" in experiment else "orthogonal")
    if optimizer == "rmsprop":  # the authors' scripts: decay 0.9, no momentum (conf/optim/rmsprop.yaml)
        assert (cfg.optim.alpha, cfg.optim.momentum) == (0.9, 0.0)
    if segment is not None:  # the authors' penntreebank.py and text8.py: shuffled segments from h_0
        assert cfg.data.segments.value == "independent"


@pytest.mark.parametrize(("experiment", "momentum"), [("seqmnist", 0.01), ("pmnist", 0.01), ("ptb_char", 0.05), ("text8", 0.05)])
def test_bn_lstm_keeps_running_statistics_with_the_authors_decay(experiment, momentum):
    assert compose_config(f"experiment={experiment}", "model=bnlstm").model.momentum == momentum


def test_h0_noise_is_for_the_normalized_models_where_black_pixels_zero_their_variance():
    noise = {
        (experiment, model): compose_config(f"experiment={experiment}", f"model={model}").model.h0_noise_std
        for experiment in EXPERIMENTS for model in MODELS
    }
    noisy = {key for key, value in noise.items() if value}
    assert noisy == {(experiment, model) for experiment in ("seqmnist", "pmnist") for model in ("bnlstm", "lnlstm")}


def test_the_optimizer_can_be_swapped_within_a_preset():
    cfg = compose_config("experiment=seqmnist", "optim=adam")
    assert (cfg.optim.name, cfg.optim.lr) == ("adam", 1e-3)


@pytest.mark.parametrize(
    "override, error",
    [
        ("model.hiden_size=3", ConfigAttributeError),
        ("model.hidden_size=many", ValidationError),
        ("model.init=random", ValidationError),
        ("model.backend=cudnn", ValidationError),
        ("trainer.precision=fp8", ValidationError),
        ("model.momentum=0.1", ConfigAttributeError),  # lstm has no batch statistics
    ],
)
def test_a_wrong_key_or_type_fails_when_composing(override, error):
    extra = ["model=lstm"] if "momentum" in override else []
    with pytest.raises(ConfigCompositionException) as raised:
        compose_config(*extra, override)
    assert isinstance(raised.value.__cause__, error)


def test_an_unknown_config_option_fails_when_composing():
    with pytest.raises(ConfigCompositionException, match="Could not find 'model/gru'"):
        compose_config("model=gru")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.hidden_size=-1"], "model.hidden_size must be positive, got -1"),
        (["trainer.batch_size=0"], "trainer.batch_size must be positive, got 0"),
        (["optim.lr=-0.1"], "optim.lr must be positive"),
        (["data.segment_length=0", "experiment=shakespeare"], "data.segment_length must be positive"),
        (["model.dropout=1.5", "model.num_layers=2"], r"model.dropout must be in \[0.0, 1.0\]"),
        (["model.dropout=0.2"], "needs model.num_layers >= 2"),
        (["trainer.batch_size=1"], "BN-LSTM trains on batch statistics"),
        (["experiment=shakespeare", "model.bidirectional=true"], "cannot be a language model"),
        (["model.name=lstm"], "does not match the model config; choose it with model=lstm"),
        (["trainer.clip_grad_norm=0"], "trainer.clip_grad_norm must be positive, got 0"),
        (["trainer.clip_grad_norm=nan"], "trainer.clip_grad_norm must be finite, got nan"),
        (["optim.lr=inf"], "optim.lr must be finite, got inf"),
        (["model.eps=0"], "model.eps must be positive, got 0"),
        (["model=lnlstm", "model.eps=-1"], "model.eps must be positive, got -1"),
        (["seed=-1"], r"seed must be in \[0, 9223372036854775807\], got -1"),
        (["experiment=pmnist", "data.seed=-1"], r"data.seed must be in \[0, 9223372036854775807\], got -1"),
        (["experiment=pmnist", "data.with_replacement=true", "data.seed=4294967296"],
         r"data.seed must be in \[0, 4294967295\], got 4294967296"),
        (["optim.alpha=2"], r"optim.alpha must be in \[0.0, 1.0\], got 2"),
        (["model.h0_noise_std=inf"], "model.h0_noise_std must be finite and >= 0.0, got inf"),
        (["optim.weight_decay=inf"], "optim.weight_decay must be finite and >= 0.0, got inf"),
        (["model.gamma_init=nan"], "model.gamma_init must be finite, got nan"),
        (["model.dropout=nan", "model.num_layers=2"], r"model.dropout must be in \[0.0, 1.0\], got nan"),
        (["optim=adam", "optim.betas=[0.9]"], r"optim.betas must be two numbers, got \[0.9\]"),
        (["+trainer.max_step=3"], r"trainer.max_step is not a config key \(misspelt\?\); `python train.py --cfg job` lists them"),
        (["+model.foo=1"], r"model.foo is not a config key"),
        (["+foo=1"], r"^foo is not a config key"),
        (["model=lstm", "model.backend=triton"], "model.backend=triton: rbn.LSTM has no Triton kernel"),
        (["model.name=gru"], "model.name='gru' is not one of lstm, bnlstm, lnlstm"),
        (["model.momentum=1.5"], r"model.momentum must be in \[0.0, 1.0\], got 1.5"),
        (["trainer.sample_length=-1"], "trainer.sample_length must be >= 0, got -1"),
        (["model.hidden_size=${oops}"], "^model.hidden_size: Interpolation key 'oops' not found$"),
        (["trainer.max_steps=${data.name}"], "^trainer.max_steps: While dereferencing interpolation '\\$\\{data.name\\}': Value"),
    ],
)
def test_an_impossible_value_or_combination_is_one_clear_line(overrides, message):
    with pytest.raises(ConfigError, match=message) as error:
        check(compose_config(*overrides))
    assert "\n" not in str(error.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_is_one_clear_line(tmp_path: Path):
    with pytest.raises(ConfigError, match="CUDA is not available here"):
        Trainer(compose_config("trainer.device=cuda"), tmp_path)


def test_cuda_graphs_on_the_cpu_are_one_clear_line(tmp_path: Path):
    with pytest.raises(ConfigError, match="trainer.cuda_graphs=true needs a CUDA device") as error:
        Trainer(compose_config("trainer.device=cpu", "trainer.cuda_graphs=true"), tmp_path)
    assert "\n" not in str(error.value)


def test_a_device_name_that_is_not_a_device_is_one_clear_line(tmp_path: Path):
    with pytest.raises(ConfigError, match="trainer.device='gpu0' is not a device"):
        Trainer(compose_config("trainer.device=gpu0"), tmp_path)


@pytest.mark.parametrize("device", ["meta", "mps"])
def test_a_device_that_is_neither_cpu_nor_cuda_is_one_clear_line(tmp_path, device):
    with pytest.raises(ConfigError, match=f"^trainer.device={device}: rbn runs on cpu or cuda$"):
        Trainer(compose_config(f"trainer.device={device}"), tmp_path)


def test_a_gpu_index_this_machine_lacks_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"trainer.device=cuda:1 but this machine has 1 GPU\(s\)$"):
        Trainer(compose_config("trainer.device=cuda:1"), tmp_path)


def test_an_optimizer_setting_that_torch_refuses_is_one_clear_line():
    with pytest.raises(ConfigError, match=r"optim=adam: Invalid beta parameter at index 1: 1.5") as error:
        build_optimizer(compose_config("optim=adam", "optim.betas=[0.9,1.5]"), torch.nn.Linear(2, 2))
    assert "\n" not in str(error.value)


@pytest.mark.usefixtures("tiny_data")
def test_a_batch_larger_than_the_training_split_is_one_clear_line_before_training(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"trainer.batch_size=1000: the train split \(\d+ characters\) is too short"):
        Trainer(compose_config(*TINY_TEXT, "trainer.batch_size=1000"), tmp_path)
    assert not (tmp_path / "last.pt").exists()


@pytest.mark.usefixtures("tiny_data")
def test_a_batch_larger_than_the_mnist_training_split_is_one_clear_line_before_training(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"trainer.batch_size=13: the train split \(12 images\) is smaller than a batch of 13"):
        Trainer(compose_config(*TINY, "trainer.batch_size=13"), tmp_path)
    assert not (tmp_path / "last.pt").exists()


@pytest.mark.usefixtures("tiny_data")
def test_kernels_that_cannot_run_here_are_one_clear_line_before_training(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(rbn.kernels, "interpreted", lambda: False)
    with pytest.raises(ConfigError, match="model.backend=triton does not support CPU tensors") as error:
        Trainer(compose_config(*TINY_TEXT, "model=bnlstm", "model.backend=triton", "trainer.device=cpu"), tmp_path)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("experiment", ["seqmnist", "shakespeare"])
def test_a_data_root_that_is_a_file_is_one_clear_line(tmp_path, experiment):
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match=f"^data={experiment}: Not a directory: {tmp_path / 'file'}"):
        build_dataset(compose_config(f"experiment={experiment}", f"data.root={tmp_path / 'file'}"))


def test_a_run_name_too_long_for_a_directory_is_cut_and_stays_a_function_of_the_command():
    def run_name(overrides: str) -> str:  # as conf/config.yaml resolves it
        return OmegaConf.create({"overrides": overrides, "name": "${run_name:${overrides}}"}).name

    names = [run_name("a=1," * 80), run_name("a=1," * 81)]
    assert all(len(name.encode()) == 255 and name.startswith("a=1,a=1,") for name in names)
    assert names[0] != names[1] and run_name("a=1," * 80) == names[0]
    assert (run_name("a=1"), run_name("")) == ("a=1", "default")


def test_a_data_error_the_os_gives_without_a_file_name_keeps_its_message(monkeypatch):
    def timed_out(**_):
        raise TimeoutError("The read operation timed out")

    monkeypatch.setattr(data, "shakespeare", timed_out)
    with pytest.raises(DataError, match="^data=shakespeare: The read operation timed out$"):
        build_dataset(compose_config("experiment=shakespeare"))


def test_a_run_name_that_just_fits_a_directory_is_kept_whole():
    overrides = "a=" + "1" * 253  # 255 bytes
    assert OmegaConf.create({"overrides": overrides, "name": "${run_name:${overrides}}"}).name == overrides
