"""Sequential and permuted MNIST: the paper's split, both sources, the permutation, batching."""

import gzip
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

import data
from data import mnist
from conftest import embedded_or_skip
from data.sources import DataError


@pytest.fixture(scope="session")
def embedded():
    return embedded_or_skip(mnist.load_mnist)


def test_embedded_split_is_50k_10k_10k_of_784_pixels(embedded):
    assert {split: tuple(x.shape) for split, (x, _) in embedded.items()} == {
        "train": (50_000, 784), "valid": (10_000, 784), "test": (10_000, 784),
    }
    assert all(y.dtype == torch.long and y.min() == 0 and y.max() == 9 for _, y in embedded.values())


def test_embedded_data_are_the_official_images_in_order(embedded):
    # The first labels of MNIST's official training and test files.
    assert embedded["train"][1][:8].tolist() == [5, 0, 4, 1, 9, 2, 1, 3]
    assert embedded["test"][1][:8].tolist() == [7, 2, 1, 0, 4, 1, 4, 9]
    assert embedded["train"][0].dtype == torch.uint8 and embedded["train"][0].max() == 255


def write_idx(path, tensor):
    """MNIST's IDX format: magic (type 0x08, rank), big-endian sizes, then the bytes."""
    header = struct.pack(">I", 0x0800 + tensor.dim()) + struct.pack(f">{tensor.dim()}I", *tensor.shape)
    path.write_bytes(header + tensor.to(torch.uint8).numpy().tobytes())


def write_torchvision_files(raw, train_pixels, train_labels, test_pixels, test_labels):
    """torchvision.datasets.MNIST's four files, as it extracts them into MNIST/raw."""
    raw.mkdir(parents=True, exist_ok=True)
    for name, tensor in zip(mnist.TORCHVISION_FILES, (train_pixels.view(-1, 28, 28), train_labels, test_pixels.view(-1, 28, 28), test_labels)):
        write_idx(raw / name, tensor)


def official_files(embedded, raw):
    train, valid, test = (embedded[split] for split in mnist.SPLITS)
    write_torchvision_files(raw, torch.cat([train[0], valid[0]]), torch.cat([train[1], valid[1]]), *test)


def test_torchvision_files_give_the_same_split_as_the_embedded_source(embedded, tmp_path):
    official_files(embedded, tmp_path / "torchvision" / "MNIST" / "raw")
    loaded = mnist.load_mnist(tmp_path, source="torchvision", download=False)
    for split in mnist.SPLITS:
        assert torch.equal(loaded[split][0], embedded[split][0])
        assert torch.equal(loaded[split][1], embedded[split][1])


def test_torchvision_files_placed_again_with_other_contents_rebuild_the_cache(embedded, tmp_path):
    raw = tmp_path / "torchvision" / "MNIST" / "raw"
    official_files(embedded, raw)
    mnist.load_mnist(tmp_path, source="torchvision", download=False)
    test_pixels, test_labels = embedded["test"]
    write_idx(raw / "t10k-labels-idx1-ubyte", test_labels.roll(1))
    loaded = mnist.load_mnist(tmp_path, source="torchvision", download=False)
    assert torch.equal(loaded["test"][1], test_labels.roll(1))


def test_torchvision_files_of_another_size_than_mnist_are_a_one_line_error(tmp_path):
    pixels, labels = torch.zeros(100, 784, dtype=torch.uint8), torch.zeros(100, dtype=torch.long)
    write_torchvision_files(tmp_path / "torchvision" / "MNIST" / "raw", pixels, labels, pixels, labels)
    with pytest.raises(DataError, match="is not the official one .*: it holds train-images-idx3-ubyte 100, "):
        mnist.load_mnist(tmp_path, source="torchvision", download=False)


@pytest.mark.parametrize("download", [False, True])
def test_a_torchvision_file_without_mnists_header_is_a_one_line_error_naming_it_whatever_the_download(tmp_path, download):
    pixels, labels = torch.zeros(100, 784, dtype=torch.uint8), torch.zeros(100, dtype=torch.long)
    write_torchvision_files(tmp_path / "torchvision" / "MNIST" / "raw", pixels, labels, pixels, labels)
    (tmp_path / "torchvision" / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"not mnist at all")
    with pytest.raises(DataError, match=f"^a file of MNIST under {tmp_path / 'torchvision'} is not in MNIST's format: "
                                        "replace it") as error:
        mnist.load_mnist(tmp_path, source="torchvision", download=download)
    assert "\n" not in str(error.value)


def test_an_empty_torchvision_file_is_a_one_line_error(tmp_path):
    pixels, labels = torch.zeros(100, 784, dtype=torch.uint8), torch.zeros(100, dtype=torch.long)
    write_torchvision_files(tmp_path / "torchvision" / "MNIST" / "raw", pixels, labels, pixels, labels)
    (tmp_path / "torchvision" / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"")
    with pytest.raises(DataError, match=f"MNIST under {tmp_path / 'torchvision'} is missing or unreadable: ") as error:
        mnist.load_mnist(tmp_path, source="torchvision", download=False)
    assert "\n" not in str(error.value)


def test_torchvision_source_without_files_or_network_says_where_they_go(tmp_path):
    with pytest.raises(DataError, match=f"MNIST under {tmp_path / 'torchvision'} is missing or unreadable: .* place torchvision's MNIST/raw files there"):
        mnist.load_mnist(tmp_path, source="torchvision", download=False)


def test_a_failed_torchvision_download_is_a_one_line_error(tmp_path, monkeypatch):
    from torchvision.datasets import MNIST

    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])
    with pytest.raises(DataError) as error:
        mnist.load_mnist(tmp_path, source="torchvision", download=True)
    message = str(error.value)
    assert "\n" not in message and "http://127.0.0.1:9/" in message


def test_unknown_source_is_refused(tmp_path):
    with pytest.raises(ValueError, match="MNIST source must be one of embedded, torchvision; got 'kaggle'"):
        mnist.load_mnist(tmp_path, source="kaggle")


def test_a_tampered_pickle_is_refused_before_it_is_unpickled(tmp_path):
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "mnist.pkl.gz").write_bytes(gzip.compress(b"cos\nsystem\n(S'echo owned'\ntR."))
    with pytest.raises(DataError, match="has sha256"):
        mnist.load_mnist(tmp_path, download=False)


def test_permutation_is_a_true_permutation_fixed_by_its_seed():
    order = mnist.permutation(0)
    assert torch.equal(order.sort().values, torch.arange(784))
    assert torch.equal(order, mnist.permutation(0))
    assert not torch.equal(order, mnist.permutation(1))


def test_permutation_is_the_same_in_another_process():
    code = "import data.mnist as m; print(m.permutation(3)[:20].tolist())"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == str(mnist.permutation(3)[:20].tolist())


def test_a_seed_gives_the_permutation_it_gave_earlier_runs():
    """Runs are compared by their config: the same data.seed must be the same task."""
    assert mnist.permutation(0)[:10].tolist() == [60, 361, 167, 578, 107, 772, 313, 626, 81, 367]


def test_the_authors_order_is_their_codes_draws_with_replacement():
    np.random.seed(1)  # their sequential_mnist.py, run with its default seed and --permuted
    theirs = np.random.randint(0, 784, size=(784,))
    order = mnist.authors_order(1)
    assert order.tolist() == theirs.tolist()
    assert order.unique().numel() < 784  # pixels read twice, others never


def test_a_saved_permutation_with_repeats_is_refused(embedded):
    with pytest.raises(ValueError, match="must be a permutation of 0..783"):
        data.pmnist(fixed_permutation=mnist.authors_order(1))


def test_a_saved_order_with_repeats_is_kept_with_replacement(embedded):
    saved = mnist.authors_order(1)
    assert torch.equal(data.pmnist(with_replacement=True, fixed_permutation=saved).permutation, saved)


def test_with_replacement_pmnist_reads_the_authors_order_drawn_from_its_seed(embedded):
    assert torch.equal(data.pmnist(seed=1, with_replacement=True).permutation, mnist.authors_order(1))


@pytest.mark.parametrize(
    "order",
    [torch.arange(783), torch.arange(784.0), torch.ones(784, dtype=torch.bool), torch.arange(1, 785)],
    ids=["short", "float", "mask", "784"],
)
def test_a_pixel_order_that_is_not_784_positions_is_refused(order):
    with pytest.raises(ValueError, match="must be 784 int64 positions in 0..783"):
        mnist.SequentialMNIST(tiny_splits(), order)


def tiny_splits(n=10):
    pixels = torch.arange(n * 784).remainder(256).to(torch.uint8).view(n, 784)
    return {split: (pixels, torch.arange(n) % 10) for split in mnist.SPLITS}


def test_batches_are_pixel_sequences_in_unit_range():
    x, y = next(mnist.SequentialMNIST(tiny_splits()).batches("train", 4))
    assert x.shape == (4, 784, 1) and x.dtype == torch.float32
    assert x.min() == 0 and x.max() == 1
    torch.testing.assert_close(x[0, :3, 0], torch.tensor([0, 1, 2]) / 255)


@pytest.mark.parametrize("split, seed", [("test", None), ("train", 3)], ids=["evaluation", "training"])
def test_batches_read_pixels_in_the_permuted_order(split, seed):
    def pixels(dataset):
        generator = None if seed is None else torch.Generator().manual_seed(seed)  # the same shuffle for both
        return torch.cat([x for x, _ in dataset.batches(split, 4, generator)])

    order = mnist.permutation(0)
    plain, permuted = pixels(mnist.SequentialMNIST(tiny_splits())), pixels(mnist.SequentialMNIST(tiny_splits(), order))
    assert torch.equal(permuted, plain[:, order])


def test_shuffled_batches_cover_each_example_once_in_an_order_fixed_by_the_generator():
    dataset = mnist.SequentialMNIST(tiny_splits())
    labels = [y for _, y in dataset.batches("train", 3, torch.Generator().manual_seed(5))]
    again = [y for _, y in dataset.batches("train", 3, torch.Generator().manual_seed(5))]
    assert [len(y) for y in labels] == [3, 3, 3, 1]
    assert torch.equal(torch.cat(labels), torch.cat(again))
    assert sorted(torch.cat(labels).tolist()) == sorted((torch.arange(10) % 10).tolist())


def test_a_training_batch_as_large_as_the_split_is_the_whole_split():
    dataset = mnist.SequentialMNIST(tiny_splits())
    labels = [y for _, y in dataset.batches("train", 10, torch.Generator().manual_seed(5))]
    assert [sorted(y.tolist()) for y in labels] == [list(range(10))]


def test_pmnist_reuses_a_saved_permutation(embedded):
    saved = data.pmnist(seed=7).permutation
    assert torch.equal(data.pmnist(seed=0, fixed_permutation=saved).permutation, saved)
