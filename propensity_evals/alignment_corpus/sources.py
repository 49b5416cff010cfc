"""Which sources exist: a listing of the hub repo (or of an offline mirror) decides.

Every root-level ``<source>.jsonl`` is a source. The hub listing also resolves ``--revision``
(a branch, tag or commit) to the commit it points at, so the manifest records exactly what
was fetched, and gives each file's size and LFS sha256 for verification.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import REPO_ID
from .errors import CorpusError, one_line
from .files import sha256_of

SUFFIX = ".jsonl"
DEFAULT_REVISION = "main"


@dataclass
class SourceFile:
    source: str
    filename: str
    size: int | None = None
    sha256: str | None = None  # known up front for hub LFS files; hashed lazily for a mirror
    local_path: Path | None = None  # set for an offline mirror

    def expected_sha256(self) -> str | None:
        if self.sha256 is None and self.local_path is not None:
            self.sha256 = sha256_of(self.local_path)
        return self.sha256


@dataclass
class Listing:
    origin: str  # "hf:<repo>" or the mirror's absolute path
    revision: str  # what the manifest records
    files: dict[str, SourceFile] = field(default_factory=dict)

    @property
    def is_hub(self) -> bool:
        return self.origin.startswith("hf:")


def source_name(filename: str) -> str | None:
    """``aisafety.info.jsonl`` -> ``aisafety.info``; nested or other files are not sources."""
    if "/" in filename or not filename.endswith(SUFFIX) or filename == SUFFIX:
        return None
    return filename[: -len(SUFFIX)]


def list_hub(revision: str | None) -> Listing:
    """Resolve the revision to a commit and list the sources there (one API call)."""
    # Imported here so the offline paths never pay for (or depend on) the hub client.
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    wanted = revision or DEFAULT_REVISION
    try:
        info = HfApi().dataset_info(REPO_ID, revision=wanted, files_metadata=True)
    except RevisionNotFoundError as err:
        raise CorpusError(
            f"revision {wanted!r} does not exist in {REPO_ID}; pass a branch, tag or commit "
            "that does (e.g. --revision main)"
        ) from err
    except RepositoryNotFoundError as err:
        raise CorpusError(f"the hub says {REPO_ID} does not exist or is private: {err}") from err
    except Exception as err:  # offline mode, DNS, proxy, HTTP errors: all mean "unreachable"
        raise CorpusError(
            f"cannot reach the Hugging Face hub ({one_line(err, 300)}); check the network, or "
            "fetch from an offline mirror with --source-dir DIR"
        ) from err
    listing = Listing(origin=f"hf:{REPO_ID}", revision=info.sha or wanted)
    for sibling in info.siblings or []:
        name = source_name(sibling.rfilename)
        if name is None:
            continue
        lfs = sibling.lfs
        listing.files[name] = SourceFile(
            source=name,
            filename=sibling.rfilename,
            size=(lfs.size if lfs else sibling.size),
            sha256=(lfs.sha256 if lfs else None),
        )
    if not listing.files:
        raise CorpusError(f"{REPO_ID} at {listing.revision} has no root-level *{SUFFIX} files")
    return listing


def list_local(source_dir: Path, revision: str | None) -> Listing:
    """An offline mirror: same file names as the hub repo, at its root."""
    if not source_dir.is_dir():
        raise CorpusError(
            f"--source-dir {source_dir} is not a directory; point it at a folder holding the "
            f"<source>{SUFFIX} files"
        )
    root = source_dir.resolve()
    # The mirror cannot tell which commit it came from, so record what the user says it is
    # (--revision) or, failing that, where it came from.
    listing = Listing(origin=str(root), revision=revision or f"local:{root}")
    for path in sorted(root.iterdir()):
        name = source_name(path.name)
        if name is not None and path.is_file():
            listing.files[name] = SourceFile(
                source=name, filename=path.name, size=path.stat().st_size, local_path=path
            )
    if not listing.files:
        raise CorpusError(f"--source-dir {source_dir} holds no <source>{SUFFIX} files")
    return listing


def parse_names(text: str | None) -> list[str] | None:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``; empty or None means every source."""
    if not text:
        return None
    names = [part.strip() for part in text.split(",") if part.strip()]
    return list(dict.fromkeys(names)) or None


def select(listing: Listing, names: list[str] | None) -> list[SourceFile]:
    if names is None:
        return [listing.files[name] for name in sorted(listing.files)]
    unknown = [name for name in names if name not in listing.files]
    if unknown:
        where = REPO_ID
        if not listing.is_hub:
            missing = ", ".join(f"{name}{SUFFIX}" for name in unknown)
            where = f"--source-dir {listing.origin} (it has no {missing})"
        raise CorpusError(
            f"unknown source(s) {', '.join(unknown)} in {where}; valid sources: "
            f"{', '.join(sorted(listing.files))}"
        )
    return [listing.files[name] for name in names]
