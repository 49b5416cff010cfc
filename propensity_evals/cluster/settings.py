"""The CLUSTER_* make variables, checked, as submitit's parameters for one SLURM job array.

The Makefile exports them (``CLUSTER_*``, not ``SLURM_*``: those are SLURM's own environment
variables, which make would import as its own). Empty means the default below; every value is
checked here so that a typo is refused in one line before anything reaches ``sbatch``.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TIME = "12:00:00"  # submitit's own default is 5 minutes: too short for any real eval
DEFAULT_GPUS = 1
DEFAULT_CPUS = 8
DEFAULT_CLUSTER_DIR = "data/cluster"
JOB_NAME = "propensity-sweep"

# SLURM's --time forms: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S.
_TIME_FORMS = (
    (re.compile(r"(\d+)"), ("minutes",)),
    (re.compile(r"(\d+):(\d+)"), ("minutes", "seconds")),
    (re.compile(r"(\d+):(\d+):(\d+)"), ("hours", "minutes", "seconds")),
    (re.compile(r"(\d+)-(\d+)"), ("days", "hours")),
    (re.compile(r"(\d+)-(\d+):(\d+)"), ("days", "hours", "minutes")),
    (re.compile(r"(\d+)-(\d+):(\d+):(\d+)"), ("days", "hours", "minutes", "seconds")),
)
_SECONDS = {"days": 86400, "hours": 3600, "minutes": 60, "seconds": 1}
_MEMORY = re.compile(r"\d+[KMGT]?B?", re.IGNORECASE)


class ClusterSettingsError(ValueError):
    """A CLUSTER_* value that cannot work; the message is one line naming the variable."""


def time_minutes(text: str) -> int:
    """SLURM's --time text as whole minutes (submitit counts its requeue budget in minutes)."""
    for pattern, units in _TIME_FORMS:
        match = pattern.fullmatch(text)
        if match:
            seconds = sum(
                int(value) * _SECONDS[unit]
                for value, unit in zip(match.groups(), units, strict=True)
            )
            if seconds <= 0:
                break
            return -(-seconds // 60)
    raise ClusterSettingsError(
        f"CLUSTER_TIME={text!r}: use minutes or SLURM's [days-]hours:minutes:seconds, e.g. 12:00:00"
    )


def count(name: str, text: str, minimum: int) -> int:
    if not re.fullmatch(r"\d+", text) or int(text) < minimum:
        raise ClusterSettingsError(f"{name}={text!r}: expected a whole number >= {minimum}")
    return int(text)


def sbatch_options(text: str) -> dict[str, str | bool]:
    """CLUSTER_SBATCH_EXTRA ("--constraint=a100 --exclusive", or #SBATCH lines) -> options."""
    try:
        words = shlex.split(text, comments=False)
    except ValueError as error:
        raise ClusterSettingsError(f"CLUSTER_SBATCH_EXTRA: {error}") from None
    options: dict[str, str | bool] = {}
    for word in words:
        if word == "#SBATCH":
            continue
        name, has_value, value = word.partition("=")
        if not re.fullmatch(r"--[a-z][a-z0-9-]*", name):
            raise ClusterSettingsError(
                f"CLUSTER_SBATCH_EXTRA: write each option as --name=value or --flag (got {word!r})"
            )
        options[name[2:]] = value if has_value else True
    return options


@dataclass(frozen=True)
class ClusterSettings:
    partition: str = ""
    account: str = ""
    qos: str = ""
    time: str = DEFAULT_TIME
    gpus: int = DEFAULT_GPUS
    cpus: int = DEFAULT_CPUS
    mem: str = ""
    parallelism: int | None = None
    setup: tuple[str, ...] = ()
    sbatch_extra: dict[str, str | bool] = field(default_factory=dict)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> ClusterSettings:
        def get(name: str) -> str:
            return environ.get(f"CLUSTER_{name}", "").strip()

        mem = get("MEM")
        if mem and not _MEMORY.fullmatch(mem):
            raise ClusterSettingsError(f"CLUSTER_MEM={mem!r}: use SLURM's --mem form, e.g. 64G")
        parallelism = get("PARALLELISM")
        settings = cls(
            partition=get("PARTITION"),
            account=get("ACCOUNT"),
            qos=get("QOS"),
            time=get("TIME") or DEFAULT_TIME,
            gpus=count("CLUSTER_GPUS", get("GPUS") or str(DEFAULT_GPUS), 0),
            cpus=count("CLUSTER_CPUS", get("CPUS") or str(DEFAULT_CPUS), 1),
            mem=mem,
            parallelism=count("CLUSTER_PARALLELISM", parallelism, 1) if parallelism else None,
            # Newlines separate commands; each line goes into the batch script as written.
            setup=tuple(line for line in environ.get("CLUSTER_SETUP", "").splitlines() if line),
            sbatch_extra=sbatch_options(get("SBATCH_EXTRA")),
        )
        time_minutes(settings.time)  # refuse a bad CLUSTER_TIME now, not at submission
        return settings

    def submitit_parameters(self) -> dict:
        """Keyword arguments for ``submitit.SlurmExecutor.update_parameters``."""
        parameters: dict = {
            "job_name": JOB_NAME,
            "time": time_minutes(self.time),
            "nodes": 1,
            "ntasks_per_node": 1,
            "cpus_per_task": self.cpus,
            # One log per task: make's, the launcher's and lm-eval's lines in the order written.
            "stderr_to_stdout": True,
            # Each task runs in the repository root: make finds the Makefile, python this package.
            "additional_parameters": {"chdir": str(REPO_ROOT), **self.sbatch_extra},
        }
        optional = {
            "partition": self.partition,
            "account": self.account,
            "qos": self.qos,
            "gpus_per_node": self.gpus,
            "mem": self.mem,
            "array_parallelism": self.parallelism,
            "setup": list(self.setup),
        }
        parameters.update({key: value for key, value in optional.items() if value})
        return parameters

    def describe(self) -> str:
        parts = [f"partition {self.partition or '(the default)'}", f"time {self.time}"]
        parts += [f"{self.gpus} GPU(s)", f"{self.cpus} CPU(s)"]
        if self.mem:
            parts.append(f"mem {self.mem}")
        if self.account:
            parts.append(f"account {self.account}")
        if self.qos:
            parts.append(f"qos {self.qos}")
        return ", ".join(parts)
