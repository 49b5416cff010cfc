"""``<out>/manifest.json``: what was fetched, from where, and how to tell it is complete.

One entry per source: source, file, bytes, rows, sha256, revision, origin, fetched_at. A file
counts as complete only when its size and sha256 match its entry, so a truncated file left by
an interrupted run is never mistaken for a finished one.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import CorpusError
from .files import atomic_write_text

MANIFEST_NAME = "manifest.json"
FIELDS = ("source", "file", "bytes", "rows", "sha256", "revision", "origin", "fetched_at")


def manifest_path(out_dir: Path) -> Path:
    return out_dir / MANIFEST_NAME


def load(out_dir: Path) -> dict[str, dict]:
    """Entries keyed by source; an absent manifest means nothing is known to be complete."""
    path = manifest_path(out_dir)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {entry["source"]: entry for entry in data["sources"]}
    except (ValueError, KeyError, TypeError) as err:
        raise CorpusError(
            f"{path} is not a valid manifest ({err}); move it aside and rerun to rebuild it"
        ) from err


def save(out_dir: Path, entries: dict[str, dict]) -> None:
    """Rewrite atomically after every source, so an interruption keeps what already finished."""
    body = {"sources": [entries[name] for name in sorted(entries)]}
    atomic_write_text(manifest_path(out_dir), json.dumps(body, indent=2, ensure_ascii=False) + "\n")
