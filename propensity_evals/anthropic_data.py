"""Pinned, verified download of Anthropic's advanced-ai-risk JSONL files (``make data``).

Every file is fetched from the upstream repository at one fixed commit (or copied from a
local mirror with the same layout, ``--source DIR``) and checked against the sha256 sums
committed beside this module. Writes are atomic (``<file>.part`` then ``os.replace``), an
interrupted transfer resumes from its ``.part``, a file already verified is skipped, and a file
that does not match its pinned sum is refused without touching the good copy on disk.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import shutil
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tqdm import tqdm

UPSTREAM_REPO = "anthropics/evals"
UPSTREAM_COMMIT = "84fcc677e52e1902d696c32cd1a6b663e70d3993"
UPSTREAM_URL = f"https://raw.githubusercontent.com/{UPSTREAM_REPO}/{UPSTREAM_COMMIT}"
# Another server with the same layout (a mirror; the tests' local server); same sha256 checks.
UPSTREAM_URL_ENV = "ANTHROPIC_EVALS_URL"
DATASET_DIR_NAME = "advanced-ai-risk"
SUBSETS = ("human_generated_evals", "lm_generated_evals", "prompts_for_few_shot_generation")
_CHUNK = 1 << 20
# Downloads write in smaller pieces, so that an interrupted transfer keeps what arrived.
_DOWNLOAD_CHUNK = 64 << 10


class DataError(RuntimeError):
    """A data problem the user can fix; its message is one line that says how."""


@dataclass(frozen=True)
class PinnedFile:
    relpath: str  # relative to advanced-ai-risk/, e.g. "human_generated_evals/x.jsonl"
    sha256: str


@functools.cache
def pinned_files() -> tuple[PinnedFile, ...]:
    """The committed manifest: one ``<sha256>  <subset>/<file>`` line per upstream file.

    Read once per process: the launcher and the config generator look up many files."""
    text = resources.files("propensity_evals").joinpath("advanced_ai_risk.sha256").read_text()
    files = []
    for line in text.splitlines():
        if line.strip():
            digest, relpath = line.split(maxsplit=1)
            files.append(PinnedFile(relpath.strip(), digest))
    return tuple(files)


def pinned_sha256(relpath: str) -> str:
    for pinned in pinned_files():
        if pinned.relpath == relpath:
            return pinned.sha256
    raise KeyError(relpath)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _append_from_local(source: Path, part: Path) -> None:
    """Copy what ``part`` still lacks from a local mirror (resume = seek past what we have)."""
    if not source.is_file():
        raise DataError(
            f"{source} is missing: SOURCE must hold {DATASET_DIR_NAME}/ laid out as upstream"
        )
    have = part.stat().st_size if part.exists() else 0
    with open(source, "rb") as src, open(part, "ab") as dst:
        src.seek(have)
        shutil.copyfileobj(src, dst, _CHUNK)


def _append_from_upstream(url: str, part: Path) -> None:
    """HTTP download into ``part``, asking only for the missing bytes (Range) on resume."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            # 206 = the server honoured Range; 200 = it sent the whole file again.
            mode = "ab" if response.status == 206 else "wb"
            with open(part, mode) as dst:
                shutil.copyfileobj(response, dst, _DOWNLOAD_CHUNK)
    except urllib.error.HTTPError as error:
        if error.code == 416:  # our .part is already complete (or longer): verify decides
            return
        raise DataError(f"download of {url} failed: HTTP {error.code}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DataError(
            f"cannot reach {url} ({reason}); offline? use `make data SOURCE=DIR` with a local "
            f"copy holding {DATASET_DIR_NAME}/ (rerun resumes where it stopped)"
        ) from None


def upstream_url() -> str:
    return os.environ.get(UPSTREAM_URL_ENV) or UPSTREAM_URL


def _fetch_verified(pinned: PinnedFile, dest: Path, source_root: Path | None) -> None:
    part = dest.with_name(dest.name + ".part")
    origin = (
        source_root / DATASET_DIR_NAME / pinned.relpath
        if source_root
        else f"{upstream_url()}/{DATASET_DIR_NAME}/{pinned.relpath}"
    )
    # Two tries: the first resumes a leftover .part; if that result is wrong (the .part came
    # from a different file, say), start again from nothing before blaming the source.
    for _ in range(2):
        if source_root:
            _append_from_local(Path(origin), part)
        else:
            _append_from_upstream(str(origin), part)
        actual = sha256_of(part)
        if actual == pinned.sha256:
            with open(part, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(part, dest)
            return
        part.unlink()
    raise DataError(
        f"checksum mismatch for {origin}: sha256 {actual[:12]}..., pinned {pinned.sha256[:12]}... "
        f"(not upstream commit {UPSTREAM_COMMIT[:12]}); nothing was written, fix the source "
        f"and rerun"
    )


def sync(data_dir: Path, source_root: Path | None = None, quiet: bool = False) -> dict[str, int]:
    """Make ``data_dir/advanced-ai-risk`` hold every pinned file, verified.

    Returns counts of files ``verified`` (already there and correct) and ``fetched``.
    """
    root = Path(data_dir) / DATASET_DIR_NAME
    counts = {"verified": 0, "fetched": 0}
    pinned = pinned_files()
    for item in tqdm(pinned, desc="advanced-ai-risk", unit="file", disable=quiet):
        dest = root / item.relpath
        if dest.is_file() and sha256_of(dest) == item.sha256:
            counts["verified"] += 1
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        _fetch_verified(item, dest, source_root)
        counts["fetched"] += 1
    return counts


def missing_or_modified(data_dir: Path, relpaths: list[str]) -> list[str]:
    """The named files that are absent or differ from their pinned sums."""
    root = Path(data_dir) / DATASET_DIR_NAME
    bad = []
    for relpath in relpaths:
        path = root / relpath
        if not path.is_file() or sha256_of(path) != pinned_sha256(relpath):
            bad.append(relpath)
    return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data", type=Path, help="default: data")
    parser.add_argument(
        "--source",
        type=Path,
        default=None,
        help=f"local folder holding {DATASET_DIR_NAME}/ as upstream does (offline machines)",
    )
    args = parser.parse_args(argv)
    try:
        counts = sync(args.data_dir, args.source)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    origin = args.source or f"{UPSTREAM_REPO}@{UPSTREAM_COMMIT[:12]}"
    print(
        f"{args.data_dir / DATASET_DIR_NAME}: {counts['fetched']} fetched from {origin}, "
        f"{counts['verified']} already verified; all {sum(counts.values())} match pinned sha256"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
