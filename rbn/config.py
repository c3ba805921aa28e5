"""The trainer's typed configuration: one dataclass per config group option in ``conf/``.

Registered in Hydra's ``ConfigStore`` as schemas that the YAML files in ``conf/`` extend, so a
wrong type or an unknown key fails when the config is composed. What types cannot say (sizes
that must be positive, combinations that cannot work) is checked by ``check`` before anything
is built.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A configuration that cannot be trained; the message is one line."""


class Init(Enum):
    orthogonal = "orthogonal"
    identity_g = "identity_g"
    uniform = "uniform"


class Backend(Enum):
    auto = "auto"
    triton = "triton"
    eager = "eager"


class InputStats(Enum):
    per_step = "per_step"
    shared = "shared"


class MNISTSource(Enum):
    embedded = "embedded"
    torchvision = "torchvision"


class Segments(Enum):
    independent = "independent"  # the paper's: shuffled segments, each from the initial state
    streams = "streams"  # contiguous streams, the state carried from segment to segment


class Precision(Enum):
    fp32 = "fp32"
    bf16 = "bf16"


# Models: the keyword arguments of rbn.LSTM / rbn.BNLSTM / rbn.LNLSTM, and the layer's name.


@dataclass
class LSTMConfig:
    name: str = "lstm"
    hidden_size: int = 100
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0
    init: Init = Init.orthogonal
    h0_noise_std: float = 0.0
    compile: bool = False
    backend: Backend = Backend.auto


@dataclass
class BNLSTMConfig(LSTMConfig):
    name: str = "bnlstm"
    max_length: Optional[int] = None  # None: the data's sequence length
    momentum: Optional[float] = 0.1
    eps: float = 1e-5
    gamma_init: float = 0.1
    input_stats: InputStats = InputStats.per_step


@dataclass
class LNLSTMConfig(LSTMConfig):
    name: str = "lnlstm"
    eps: float = 1e-5
    gamma_init: float = 1.0


# Data: the keyword arguments of the factories in data/, and the factory's name.


@dataclass
class DataConfig:
    name: str = MISSING
    root: Optional[str] = None  # None: $RBN_DATA, else ~/.cache/rbn
    download: bool = True


@dataclass
class MNISTConfig(DataConfig):
    name: str = "seqmnist"
    source: MNISTSource = MNISTSource.embedded


@dataclass
class PMNISTConfig(MNISTConfig):
    name: str = "pmnist"
    seed: int = 0  # the permutation's seed, fixed across runs as in the paper
    with_replacement: bool = False  # the authors' code's draws (data.seed=1: their order), not a permutation


@dataclass
class TextConfig(DataConfig):
    segment_length: int = 100
    segments: Segments = Segments.streams


# Optimizers: torch.optim classes and their keyword arguments.


@dataclass
class OptimConfig:
    name: str = MISSING
    lr: float = 1e-3
    weight_decay: float = 0.0


@dataclass
class RMSpropConfig(OptimConfig):
    name: str = "rmsprop"
    alpha: float = 0.99
    momentum: float = 0.0
    eps: float = 1e-8


@dataclass
class AdamConfig(OptimConfig):
    name: str = "adam"
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8


@dataclass
class TrainerConfig:
    device: str = "auto"  # auto: CUDA when there is one
    precision: Precision = Precision.fp32  # bf16: autocast
    batch_size: int = 100
    max_epochs: int = 1
    max_steps: Optional[int] = None  # stops before max_epochs when reached
    clip_grad_norm: Optional[float] = 1.0
    eval_interval: Optional[int] = None  # in steps; None: at the end of every epoch
    limit_eval_batches: Optional[int] = None  # for valid, test and population statistics
    log_interval: int = 50
    sample_length: int = 200  # characters generated at each evaluation (char models)
    gradient_flow: bool = True  # at each validation, d loss / d h_t over t on one batch
    progress_bar: bool = True  # on a terminal; plain periodic lines otherwise
    cuda_graphs: bool = False  # capture each training step's forward and backward (CUDA only)


@dataclass
class Config:
    model: LSTMConfig = MISSING
    data: DataConfig = MISSING
    optim: OptimConfig = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    seed: int = 0


MODELS = {"lstm": LSTMConfig, "bnlstm": BNLSTMConfig, "lnlstm": LNLSTMConfig}
DATASETS = {
    "seqmnist": MNISTConfig, "pmnist": PMNISTConfig,
    "shakespeare": TextConfig, "ptb_char": TextConfig, "text8": TextConfig,
}
OPTIMIZERS = {"rmsprop": RMSpropConfig, "adam": AdamConfig}
GROUPS = {"model": MODELS, "data": DATASETS, "optim": OPTIMIZERS}  # the config groups whose option is a schema


def register() -> None:
    """Stores the schemas: ``config_schema`` for conf/config.yaml, and ``schema/<group>/<name>``
    for the group files."""
    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    for group, schemas in GROUPS.items():
        for name, schema in schemas.items():
            store.store(group=f"schema/{group}", name=name, node=schema)


NAME_BYTES = 255  # a path component's limit on common filesystems


def _run_name(overrides: str) -> str:
    """The run directory's name: the overrides that name runs, or "default". One too long for a
    directory keeps its start and ends in a digest of the whole, so that it is still a function
    of the command (re-running resumes) and still says what differs, mostly."""
    name = overrides or "default"
    if len(name.encode()) <= NAME_BYTES:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    return name.encode()[: NAME_BYTES - len(digest) - 3].decode(errors="ignore") + "..." + digest


register()
if not OmegaConf.has_resolver("run_name"):
    OmegaConf.register_new_resolver("run_name", _run_name)


def check(cfg: DictConfig) -> None:
    """Raises ConfigError for values the types allow but training cannot use."""
    try:  # an override's interpolation, ${...}, is resolved only where it is read
        OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as error:
        raise ConfigError(f"{error.full_key}: {error.msg.splitlines()[0]}") from None
    unknown = _unknown_key(cfg)
    if unknown is not None:  # Hydra's + adds any key, even to a schema's node
        raise ConfigError(f"{unknown} is not a config key (misspelt?); `python train.py --cfg job` lists them")
    for group, schemas in GROUPS.items():
        name = cfg[group].name
        if name not in schemas:
            raise ConfigError(f"{group}.name={name!r} is not one of {', '.join(schemas)}")
        if OmegaConf.get_type(cfg[group]) is not schemas[name]:
            raise ConfigError(f"{group}.name={name!r} does not match the {group} config; choose it with {group}={name}")
    model, trainer = cfg.model, cfg.trainer
    positive = {
        "model.hidden_size": model.hidden_size, "model.num_layers": model.num_layers,
        "trainer.batch_size": trainer.batch_size, "trainer.max_epochs": trainer.max_epochs,
        "trainer.max_steps": trainer.max_steps, "trainer.eval_interval": trainer.eval_interval,
        "trainer.limit_eval_batches": trainer.limit_eval_batches, "trainer.log_interval": trainer.log_interval,
        "optim.lr": cfg.optim.lr, "model.max_length": model.get("max_length"), "model.eps": model.get("eps"),
        "data.segment_length": cfg.data.get("segment_length"), "trainer.clip_grad_norm": trainer.clip_grad_norm,
    }
    for key, value in positive.items():
        if isinstance(value, float) and not math.isfinite(value):  # an int is finite, and may exceed a float
            raise ConfigError(f"{key} must be finite, got {value}")
        if value is not None and value <= 0:
            raise ConfigError(f"{key} must be positive, got {value}")
    _check_range("seed", cfg.seed, 0, 2**63 - 1)  # numpy's SeedSequence and torch.manual_seed take these
    if cfg.data.get("seed") is not None:  # pMNIST's order: numpy's legacy RandomState takes 32 bits
        _check_range("data.seed", cfg.data.seed, 0, 2**32 - 1 if cfg.data.with_replacement else 2**63 - 1)
    if cfg.optim.get("alpha") is not None:
        _check_range("optim.alpha", cfg.optim.alpha, 0.0, 1.0)  # RMSprop's decay: torch checks only >= 0
    if cfg.optim.get("betas") is not None and len(cfg.optim.betas) != 2:
        raise ConfigError(f"optim.betas must be two numbers, got {list(cfg.optim.betas)}")
    _check_range("model.dropout", model.dropout, 0.0, 1.0)
    _check_range("model.h0_noise_std", model.h0_noise_std, 0.0, math.inf)
    _check_range("optim.weight_decay", cfg.optim.weight_decay, 0.0, math.inf)
    if model.get("gamma_init") is not None and not math.isfinite(model.gamma_init):
        raise ConfigError(f"model.gamma_init must be finite, got {model.gamma_init}")
    if model.get("momentum") is not None:
        _check_range("model.momentum", model.momentum, 0.0, 1.0)
    if trainer.sample_length < 0:
        raise ConfigError(f"trainer.sample_length must be >= 0, got {trainer.sample_length}")
    language_model = OmegaConf.get_type(cfg.data) is TextConfig
    if language_model and model.bidirectional:
        raise ConfigError("a bidirectional model cannot be a language model: it would read the characters it predicts")
    if model.name == "bnlstm" and trainer.batch_size < 2:
        raise ConfigError("BN-LSTM trains on batch statistics: trainer.batch_size must be at least 2")
    if model.name == "lstm" and model.backend == Backend.triton:
        raise ConfigError("model.backend=triton: rbn.LSTM has no Triton kernel; model.backend=auto runs torch's fused LSTM")
    if model.dropout and model.num_layers == 1:
        raise ConfigError("model.dropout acts between layers: it needs model.num_layers >= 2")


def _check_range(key: str, value: float, low: float, high: float) -> None:
    """low <= value <= high, and finite."""
    if not (low <= value <= high and (isinstance(value, int) or math.isfinite(value))):
        bounds = f"in [{low}, {high}]" if math.isfinite(high) else f"finite and >= {low}"
        raise ConfigError(f"{key} must be {bounds}, got {value}")


def _unknown_key(node: DictConfig, prefix: str = "") -> str | None:
    """The first key of ``node`` (recursively) that its schema dataclass lacks, or None."""
    schema = OmegaConf.get_type(node)
    known = {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    for key in node.keys():
        if known is not None and key not in known:
            return f"{prefix}{key}"
        child = node[key]
        if isinstance(child, DictConfig):
            found = _unknown_key(child, f"{prefix}{key}.")
            if found is not None:
                return found
    return None


def to_dict(cfg: DictConfig) -> dict[str, Any]:
    """Plain values (enums as strings): what checkpoints and results carry."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def with_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """A saved config (``to_dict``'s) with the keys added to the schemas since it was saved, at
    their defaults. An option is added with the behaviour before it as its default, so this is
    the config the run trained with, and a run begun before the option existed can resume."""
    completed = dict(config)
    for group, schemas in GROUPS.items():
        saved = config.get(group)
        if isinstance(saved, dict) and saved.get("name") in schemas:
            completed[group] = {**_defaults(schemas[saved["name"]]), **saved}
    if isinstance(config.get("trainer"), dict):
        completed["trainer"] = {**_defaults(TrainerConfig), **config["trainer"]}
    return completed


def from_dict(config: dict[str, Any]) -> DictConfig:
    """The typed config of a saved one (``to_dict``'s, as checkpoints carry it), completed by
    ``with_defaults``: the config a script rebuilds a run's trainer with, whatever conf/ says now."""
    completed = with_defaults(config)
    cfg = OmegaConf.structured(Config)
    for group, schemas in GROUPS.items():
        saved = completed.get(group)
        name = saved.get("name") if isinstance(saved, dict) else None
        if name not in schemas:
            raise ConfigError(f"the saved config's {group}.name, {name!r}, is not one of {', '.join(schemas)}")
        cfg[group] = OmegaConf.structured(schemas[name])
    try:
        return OmegaConf.merge(cfg, completed)
    except OmegaConfBaseException as error:  # a key or value this version's schemas do not take
        raise ConfigError(f"the saved config's {error.full_key} does not fit this version: {error.msg.splitlines()[0]}") from None


def _defaults(schema: type) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(schema), enum_to_str=True)
