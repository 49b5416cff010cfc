"""Fetch sources into ``<out>/``: skip what is complete, stage, verify, install, record.

Both origins end in the same code path (:func:`_install`): hash and count the staged file,
check it against what the listing promised, ``fsync`` + ``os.replace`` it into place, then
rewrite the manifest. Only the staging differs:

- hub: ``hf_hub_download(local_dir=<out>/.hub)``. The hub client already writes to a temporary
  file and renames it when complete, so an interrupted transfer never leaves a file that looks
  finished; a staged file that finished but was not yet installed is reused by the next run.
- mirror (``--source-dir``): a chunked copy into ``<out>/<file>.part``. A leftover ``.part``
  is resumed from its size only when it is a byte-for-byte prefix of the mirror file, otherwise
  it is discarded and the copy restarts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from . import manifest
from .errors import CorpusError, one_line
from .files import CHUNK, digest, install, sha256_of
from .sources import REPO_ID, Listing, SourceFile

HUB_STAGING = ".hub"
Log = Callable[[str], None]


def _progress(total: int | None, initial: int, desc: str) -> tqdm:
    # disable=None: a live bar on a terminal, nothing in captured logs.
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="B",
        unit_scale=True,
        disable=None,
        leave=False,
    )


def _is_prefix(part: Path, source: Path, length: int) -> bool:
    with open(part, "rb") as left, open(source, "rb") as right:
        remaining = length
        while remaining:
            size = min(CHUNK, remaining)
            if left.read(size) != right.read(size):
                return False
            remaining -= size
    return True


def _stage_from_mirror(item: SourceFile, out_dir: Path, log: Log) -> Path:
    assert item.local_path is not None
    src = item.local_path
    total = src.stat().st_size
    part = out_dir / f"{item.filename}.part"
    start = 0
    if part.exists():
        have = part.stat().st_size
        if have <= total and _is_prefix(part, src, have):
            start = have
            log(f"{item.source}: resuming interrupted copy at {have:,} of {total:,} bytes")
        else:
            log(f"{item.source}: leftover {part.name} does not match the mirror; restarting copy")
    with (
        open(src, "rb") as reader,
        open(part, "r+b" if start else "wb") as writer,
        _progress(total, start, item.source) as bar,
    ):
        writer.truncate(start)
        writer.seek(start)
        reader.seek(start)
        while chunk := reader.read(CHUNK):
            writer.write(chunk)
            bar.update(len(chunk))
    return part


def _stage_from_hub(item: SourceFile, out_dir: Path, revision: str) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(
            REPO_ID,
            item.filename,
            repo_type="dataset",
            revision=revision,  # the resolved commit, so every file comes from the same snapshot
            local_dir=out_dir / HUB_STAGING,
        )
    except Exception as err:  # network and HTTP failures surface as many different types
        raise CorpusError(
            f"{item.source}: download failed ({one_line(err, 300)}); rerun to retry, or use "
            "--source-dir DIR with an offline mirror"
        ) from err
    return Path(path)


def _install(staged: Path, final: Path, item: SourceFile, listing: Listing) -> dict:
    """The shared post-fetch path: verify against the listing, move into place, describe it."""
    got = digest(staged)
    expected_sha = item.expected_sha256()
    problems = []
    if item.size is not None and got.bytes != item.size:
        problems.append(f"{got.bytes:,} bytes instead of {item.size:,}")
    if expected_sha is not None and got.sha256 != expected_sha:
        problems.append("sha256 mismatch")
    if problems:
        staged.unlink(missing_ok=True)  # never keep (or resume from) a file known to be wrong
        raise CorpusError(
            f"{item.source}: fetched file failed verification ({', '.join(problems)}); "
            "it was deleted, rerun to fetch it again"
        )
    install(staged, final)
    return {
        "source": item.source,
        "file": item.filename,
        "bytes": got.bytes,
        "rows": got.rows,
        "sha256": got.sha256,
        "revision": listing.revision,
        "origin": listing.origin,
        "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _is_complete(final: Path, entry: dict | None, item: SourceFile, listing: Listing) -> bool:
    """Complete = on disk, recorded, size and sha256 as recorded, and still what the origin has."""
    if entry is None or not final.is_file() or final.stat().st_size != entry.get("bytes"):
        return False
    if item.size is not None and item.size != entry["bytes"]:
        return False
    expected_sha = item.expected_sha256()
    if expected_sha is None and entry.get("revision") != listing.revision:
        return False  # nothing to compare content with: only the same revision is known-equal
    if expected_sha is not None and expected_sha != entry.get("sha256"):
        return False
    return sha256_of(final) == entry.get("sha256")


def fetch(listing: Listing, items: list[SourceFile], out_dir: Path, log: Log = print) -> dict:
    """Bring every selected source up to date in ``out_dir``; return the manifest entries."""
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = manifest.load(out_dir)
    log(
        f"fetching {len(items)} source(s) from {listing.origin} at {listing.revision} "
        f"into {out_dir}"
    )
    for item in items:
        final = out_dir / item.filename
        entry = entries.get(item.source)
        if _is_complete(final, entry, item, listing):
            size = f"{entry['bytes']:,} bytes, {entry['rows']:,} rows"
            log(f"{item.source}: already complete ({size}), skipped")
            continue
        if final.exists():
            stale = "incomplete, unrecorded or outdated"
            log(f"{item.source}: {final.name} on disk is {stale}; replacing it")
        if listing.is_hub:
            staged = _stage_from_hub(item, out_dir, listing.revision)
        else:
            staged = _stage_from_mirror(item, out_dir, log)
        entries[item.source] = _install(staged, final, item, listing)
        manifest.save(out_dir, entries)
        new = entries[item.source]
        log(f"{item.source}: wrote {final.name} ({new['bytes']:,} bytes, {new['rows']:,} rows)")
    log(f"manifest: {manifest.manifest_path(out_dir)}")
    return entries
