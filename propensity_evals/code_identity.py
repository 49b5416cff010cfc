"""What code computes a run's answers: the pack's own version and sources, and its libraries.

Part of every run's fingerprint (``run_identity``), so that no request cache serves, and no
sweep or report takes as current, answers produced by other code:

- ``pack``: the version in ``pyproject.toml`` (for people) and the sha256 of the pack's sources
  that take part in an eval (for the fingerprint). A version is bumped by hand and a git commit
  says nothing of uncommitted edits (a "dirty" marker cannot tell two edits apart), nor exists
  in an unpacked sdist; the sources' own bytes change whenever the code does. The price: any
  edit to those sources starts a fresh request cache and makes the sweep re-run complete runs.
  That is the rule (no cache may serve answers of another prompt or scoring code), and the
  modules that never run in an eval (``NOT_IN_THE_EVAL``) are left out so that editing the
  report or the cluster executor costs nothing.
- ``libraries``: the installed versions of lm-eval, transformers and torch (and vllm for the
  vllm backend), as ``importlib.metadata`` reads them in the environment that runs lm-eval.
"""

from __future__ import annotations

import hashlib
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "propensity_evals"
DISTRIBUTION = "propensity-evals"
TASKS_FOLDER = "lm_eval_tasks"
# Run before or after an eval, never inside it, and never shape its command: the report, the
# sweep and its SLURM executor, the corpus tools, `make prompts`, the run-folder checks, W&B's
# login check.
NOT_IN_THE_EVAL = (
    "report/",
    "cluster/",
    "alignment_corpus/",
    "sweep.py",
    "show_prompts.py",
    "run_files.py",
    "wandb_mode.py",
)
# lm-eval reads the task YAMLs and utils.py; the generator and the READMEs it writes do not
# take part in a run (what the generator changes shows in the YAMLs).
NOT_READ_BY_LM_EVAL = ("_generate_configs.py",)
LIBRARIES = ("lm_eval", "transformers", "torch")
BACKEND_LIBRARIES = {"vllm": ("vllm",)}


def pack_version(root: Path = REPO_ROOT) -> str:
    """The version in the checkout's pyproject.toml (an installed copy's metadata may be older:
    an editable install keeps the version it was installed with)."""
    try:
        import tomllib

        project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
        return str(project["version"])
    except (ImportError, OSError, KeyError, ValueError):
        pass
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


def eval_sources(root: Path = REPO_ROOT) -> list[Path]:
    """The pack's files that take part in an eval, in a stable order."""
    package = root / PACKAGE
    files = [
        path
        for path in package.rglob("*.py")
        if not path.relative_to(package).as_posix().startswith(NOT_IN_THE_EVAL)
    ]
    tasks = root / TASKS_FOLDER
    files += [
        path
        for path in tasks.rglob("*")
        if path.is_file() and path.suffix != ".md" and path.name not in NOT_READ_BY_LM_EVAL
    ]
    return sorted(
        path
        for path in files
        if not any(part.startswith((".", "__pycache__")) for part in path.relative_to(root).parts)
    )


def sources_sha256(root: Path = REPO_ROOT) -> str:
    """sha256 over each eval source's path and bytes."""
    digest = hashlib.sha256()
    for path in eval_sources(root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def library_versions(backend: str = "") -> dict[str, str]:
    versions = {}
    for name in (*LIBRARIES, *BACKEND_LIBRARIES.get(backend, ())):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def code_identity(backend: str = "") -> dict:
    """What RunSpec.code holds: {"pack": {"version", "sources"}, "libraries": {name: version}}."""
    return {
        "pack": {"version": pack_version(), "sources": sources_sha256()},
        "libraries": library_versions(backend),
    }


def pack_label(code: dict) -> str:
    """ "0.1.0+src.1a2b3c4d5e6f": the version and the sources' hash, for W&B and logs."""
    pack = code.get("pack") or {}
    return f"{pack.get('version', 'unknown')}+src.{str(pack.get('sources', ''))[:12]}"
