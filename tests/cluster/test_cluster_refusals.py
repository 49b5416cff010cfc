"""Bad settings for `make sweep EXECUTOR=slurm` are refused in one line, and nothing is submitted.

"Nothing submitted" is read from SLURM itself: its next job id moves with every sbatch that
got through, even for a job that ended at once.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.cluster.conftest import ClusterSweep, error_lines, next_job_id, queue

REFUSED = {
    "misspelt executor": ({"EXECUTOR": "slurmm"}, "EXECUTOR=slurmm: use local"),
    "unknown partition": (
        {"CLUSTER_PARTITION": "gpu-h100"},
        "CLUSTER_PARTITION=gpu-h100: no such partition on this cluster (sinfo lists: debug)",
    ),
    "bad time": ({"CLUSTER_TIME": "12h"}, "CLUSTER_TIME='12h': use minutes or SLURM's"),
    "bad gpu count": ({"CLUSTER_GPUS": "two"}, "CLUSTER_GPUS='two': expected a whole number"),
    "short sbatch option": (
        {"CLUSTER_SBATCH_EXTRA": "-C a100"},
        "CLUSTER_SBATCH_EXTRA: write each option as --name=value or --flag (got '-C')",
    ),
    "model path that does not exist": (
        {"MODELS": "/no/such/model"},
        "cannot plan /no/such/model: error: model path /no/such/model not found",
    ),
    "option sbatch does not know": (
        {"CLUSTER_SBATCH_EXTRA": "--no-such-option=1"},
        "sbatch refused the job: sbatch: unrecognized option '--no-such-option=1'",
    ),
}


@pytest.fixture
def sweep(tmp_path, data_dir, smollm2, slurm_conf) -> ClusterSweep:
    return ClusterSweep(tmp_path, data_dir, slurm_conf, MODELS=str(smollm2))


def assert_refused(sweep: ClusterSweep, result, message: str, first_job: int) -> None:
    assert result.returncode != 0
    (line,) = error_lines(result)
    assert message in line
    assert "submitted SLURM job" not in result.stdout
    assert next_job_id(sweep.conf) == first_job
    assert not queue(sweep.conf)
    assert not (sweep.cluster_dir / "last_submission.json").exists()


@pytest.mark.parametrize("variables, message", REFUSED.values(), ids=REFUSED.keys())
def test_a_bad_setting_is_refused_before_submitting(sweep, variables, message):
    first_job = next_job_id(sweep.conf)
    result = sweep.make("sweep", check=False, **variables)
    assert_refused(sweep, result, message, first_job)


def test_no_sbatch_on_path_is_refused(sweep, tmp_path):
    first_job = next_job_id(sweep.conf)
    bin_dir = tmp_path / "bin"  # make alone: no SLURM command can be found
    bin_dir.mkdir()
    os.symlink(shutil.which("make"), bin_dir / "make")
    result = sweep.make("sweep", check=False, env={"PATH": str(bin_dir)})
    message = "sbatch not found on PATH: run `make sweep EXECUTOR=slurm` on a SLURM login node"
    assert_refused(sweep, result, message, first_job)


def test_the_local_executor_is_still_the_default(sweep):
    result = sweep.make("sweep", EXECUTOR=None, DRY_RUN="1")
    assert "1 run(s) of `make eval_cpu`, W&B group" in result.stdout
    assert "on SLURM" not in result.stdout
    assert "make --no-print-directory eval_cpu MODEL=" in result.stdout


@pytest.mark.parametrize("target", ["sweep_status", "sweep_cancel"])
def test_status_and_cancel_without_a_submission(sweep, target):
    result = sweep.make(target, check=False)
    assert result.returncode != 0
    (line,) = error_lines(result)
    assert line == (
        f"error: no SLURM submission recorded under {sweep.cluster_dir}: submit one with "
        "`make sweep EXECUTOR=slurm ...` (with the same CLUSTER_DIR)"
    )
