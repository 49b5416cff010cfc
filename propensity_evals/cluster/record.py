"""What was submitted, kept in CLUSTER_DIR for `make sweep_status` and `make sweep_cancel`.

A record holds the sweep's own arguments and the make variables it ran with (so that its runs
can be planned again exactly as the submission planned them) and, per submitted run, its SLURM
task id and log file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from propensity_evals.cluster.settings import DEFAULT_CLUSTER_DIR, REPO_ROOT

LAST_FILE = "last_submission.json"
SUBMISSIONS_DIR = "submissions"
LOGS_DIR = "logs"
STAGING_DIR = "staging"


class RecordError(RuntimeError):
    """No usable submission record; the message is one line saying what to do."""


def cluster_dir(environ: Mapping[str, str] | None = None) -> Path:
    """CLUSTER_DIR as an absolute path (relative ones are relative to the repository root)."""
    environ = os.environ if environ is None else environ
    path = Path(environ.get("CLUSTER_DIR", "").strip() or DEFAULT_CLUSTER_DIR).expanduser()
    return (path if path.is_absolute() else REPO_ROOT / path).resolve()


@dataclass
class SubmittedRun:
    name: str
    task_id: str  # "123_4" in an array, "123" for a one-run submission
    log: str


@dataclass
class Submission:
    job_id: str
    submitted_at: str
    eval_target: str
    output_dir: str
    sweep_argv: list[str]
    runs: list[SubmittedRun] = field(default_factory=list)
    # The make variables and SYSTEM_PROMPT the submission ran with (job.submission_environment):
    # `make sweep_status` plans with them, whatever the shell that calls it has set.
    environment: dict[str, str] = field(default_factory=dict)

    def save(self, root: Path) -> None:
        text = json.dumps(asdict(self), indent=2) + "\n"
        for path in (root / SUBMISSIONS_DIR / f"{self.job_id}.json", root / LAST_FILE):
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.name}.partial")
            temporary.write_text(text)
            os.replace(temporary, path)

    @classmethod
    def read(cls, path: Path) -> Submission:
        try:
            data = json.loads(path.read_text())
            data["runs"] = [SubmittedRun(**run) for run in data["runs"]]
            return cls(**data)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise RecordError(f"{path}: unreadable submission record ({error})") from None


def last_submission(root: Path) -> Submission:
    path = root / LAST_FILE
    if not path.is_file():
        raise RecordError(
            f"no SLURM submission recorded under {root}: submit one with "
            "`make sweep EXECUTOR=slurm ...` (with the same CLUSTER_DIR)"
        )
    return Submission.read(path)


def all_submissions(root: Path) -> list[Submission]:
    return [Submission.read(path) for path in sorted((root / SUBMISSIONS_DIR).glob("*.json"))]
