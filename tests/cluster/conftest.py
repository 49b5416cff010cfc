"""A real, throwaway SLURM cluster for the cluster tests (`make test_cluster`).

``local_slurm.sh`` starts one node on this machine (own slurm.conf, munge key, ports; needs
root, installs slurm-wlm with apt) and stops it when the session ends, also after a failure.
Where it cannot start, every test here fails with its reason: these tests never skip.
Jobs run on this machine, as the submitting user, with this checkout's .venv.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import isolated_env, make

CLUSTER_SCRIPT = Path(__file__).with_name("local_slurm.sh")
HUMAN = "anthropic_propensity_human_written"
SURVIVAL = f"{HUMAN}_survival_instinct"


@pytest.fixture(scope="session", autouse=True)
def no_inherited_cluster_settings():
    """`make test_cluster` exports the Makefile's CLUSTER_* defaults: each test sets its own."""
    with pytest.MonkeyPatch.context() as patch:
        for name in [name for name in os.environ if name.startswith("CLUSTER_")]:
            patch.delenv(name)
        yield


@pytest.fixture(scope="session")
def slurm_conf(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("slurm")
    command = ["bash", str(CLUSTER_SCRIPT)]
    try:
        started = subprocess.run(
            [*command, "start", str(folder)], capture_output=True, text=True, timeout=900
        )
        if started.returncode != 0:
            reason = started.stderr.strip().splitlines() or [f"exit {started.returncode}"]
            pytest.fail(f"the local SLURM cluster did not start: {reason[-1]}", pytrace=False)
        yield folder / "slurm.conf"
    finally:
        subprocess.run([*command, "stop", str(folder)], capture_output=True, timeout=300)


def slurm(conf: Path, *command: str) -> str:
    """A SLURM client command against the test cluster; its stdout."""
    result = subprocess.run(
        command, env={**os.environ, "SLURM_CONF": str(conf)}, capture_output=True, text=True
    )
    assert result.returncode == 0, f"{' '.join(command)}: {result.stderr}"
    return result.stdout


def queue(conf: Path) -> dict[str, str]:
    """task id -> state, for every job the cluster still holds."""
    lines = slurm(conf, "squeue", "-h", "-r", "-o", "%i %T").split()
    return dict(zip(lines[::2], lines[1::2], strict=True))


def next_job_id(conf: Path) -> int:
    """SLURM's next job id: it moves with every job submitted, even one that ended at once."""
    for line in slurm(conf, "scontrol", "show", "config").splitlines():
        if line.startswith("NEXT_JOB_ID"):
            return int(line.split("=")[1])
    raise AssertionError("scontrol show config has no NEXT_JOB_ID")


def wait_for(condition, timeout: float, what: str, interval: float = 1.0, explain=None):
    """Poll ``condition`` until it returns something truthy; fail with ``explain()`` after."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    details = explain() if explain else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{details}")


class ClusterSweep:
    """One sweep's folders and variables, and the make targets run on them."""

    def __init__(self, base: Path, data_dir: Path, conf: Path, **variables):
        self.base, self.conf = base, conf
        self.output = base / "output"
        self.cluster_dir = base / "cluster"
        self.env = {**isolated_env(base, data_dir, wandb_mode="disabled"), "SLURM_CONF": str(conf)}
        self.variables = {
            "EXECUTOR": "slurm",
            "EVAL_TARGET": "eval_cpu",
            "TASKS": SURVIVAL,
            "LIMIT": "1",
            "OUTPUT_DIR": str(self.output),
            "CACHE_DIR": str(base / "cache"),
            "CLUSTER_DIR": str(self.cluster_dir),
            "CLUSTER_GPUS": "0",  # the test node has none
            "CLUSTER_CPUS": "1",
            "CLUSTER_TIME": "20",
            **variables,
        }

    def make(self, target: str, check: bool = True, env: dict | None = None, **variables):
        merged = {**self.variables, **variables}  # None: leave the variable to the Makefile
        args = [f"{key}={value}" for key, value in merged.items() if value is not None]
        return make(target, *args, env={**self.env, **(env or {})}, check=check, timeout=600)

    def submit(self, **variables):
        return self.make("sweep", **variables)

    def status(self) -> str:
        return self.make("sweep_status").stdout

    def last_submission(self) -> dict:
        return json.loads((self.cluster_dir / "last_submission.json").read_text())

    def run_state(self, status: str, run: str) -> str:
        """The state column of ``run``'s line in `make sweep_status`."""
        for line in status.splitlines():
            words = line.split()
            if len(words) >= 3 and words[1] == run:
                return words[2]
        raise AssertionError(f"{run} is not in the status:\n{status}")

    def explain(self) -> str:
        logs = sorted((self.cluster_dir / "logs").glob("*_log.out"))
        tails = [f"--- {log}\n" + "\n".join(log.read_text().splitlines()[-15:]) for log in logs]
        return "\n".join([self.status(), *tails])


def error_lines(result) -> list[str]:
    """stderr without make's own "*** [target] Error N" trailer."""
    return [
        line
        for line in result.stderr.splitlines()
        if line.strip() and not line.startswith(("make: ***", "make[1]: ***"))
    ]
