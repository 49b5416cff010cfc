"""Durable file operations: atomic writes (temp file in the same dir, fsync, os.replace)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1 << 20


def fsync_dir(directory: Path) -> None:
    """Persist a rename: without syncing the directory a crash can forget it (POSIX only)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def install(staged: Path, final: Path) -> None:
    """Move a verified file into place so readers see either the old file or the new one."""
    with open(staged, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(staged, final)
    fsync_dir(final.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp: str, path: Path) -> None:
    # mkstemp creates files readable by the owner only; give the final file the permissions a
    # plain open() would have, so reports and the manifest stay shareable.
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@dataclass(frozen=True)
class Digest:
    bytes: int
    sha256: str
    rows: int


def digest(path: Path) -> Digest:
    """Size, sha256 and line count in one chunked pass (memory stays at one chunk)."""
    sha = hashlib.sha256()
    size = rows = 0
    last = b"\n"
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            sha.update(chunk)
            size += len(chunk)
            rows += chunk.count(b"\n")
            last = chunk[-1:]
    if last != b"\n":  # a final line without its newline is still a row
        rows += 1
    return Digest(size, sha.hexdigest(), rows)


def sha256_of(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            sha.update(chunk)
    return sha.hexdigest()
