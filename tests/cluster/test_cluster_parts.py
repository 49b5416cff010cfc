"""The cluster modules' pieces that need no cluster: settings, publishing, reading a log.

The sbatch text is rendered by submitit itself, from the parameters the settings hand it.
"""

from __future__ import annotations

import csv
import os
import pickle
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from submitit.slurm.slurm import _make_sbatch_string

from propensity_evals import sweep
from propensity_evals.cluster import settings as settings_module
from propensity_evals.cluster.job import JobRequest, submission_environment
from propensity_evals.cluster.publish import publish
from propensity_evals.cluster.settings import (
    ClusterSettings,
    ClusterSettingsError,
    sbatch_options,
    time_minutes,
)
from propensity_evals.cluster.status import last_error_line
from tests.conftest import REPO_ROOT, isolated_env


@pytest.mark.parametrize(
    "text, minutes",
    [
        ("90", 90),
        ("1:30", 2),  # 90 seconds: rounded up, never below what was asked
        ("12:00:00", 720),
        ("2-0", 2 * 24 * 60),
        ("1-02:03", 24 * 60 + 2 * 60 + 3),
        ("1-02:03:04", 24 * 60 + 2 * 60 + 3 + 1),
    ],
)
def test_slurm_time_forms_in_minutes(text, minutes):
    assert time_minutes(text) == minutes


@pytest.mark.parametrize("text", ["", "0", "0:00:00", "12h", "1:2:3:4", "-5", "1.5"])
def test_a_bad_time_is_refused(text):
    with pytest.raises(ClusterSettingsError, match=r"^CLUSTER_TIME="):
        time_minutes(text)


def test_sbatch_extra_options():
    text = "--constraint=a100 --exclusive #SBATCH --mail-type=END,FAIL --comment='two words'"
    assert sbatch_options(text) == {
        "constraint": "a100",
        "exclusive": True,
        "mail-type": "END,FAIL",
        "comment": "two words",
    }
    with pytest.raises(ClusterSettingsError, match="got 'constraint=a100'"):
        sbatch_options("constraint=a100")


def sbatch_lines(settings: ClusterSettings, folder: Path) -> list[str]:
    return _make_sbatch_string(command="true", folder=folder, **settings.submitit_parameters())


def test_defaults_give_a_real_time_limit_and_run_in_the_repository(tmp_path):
    text = sbatch_lines(ClusterSettings.from_environ({}), tmp_path)
    lines = text.splitlines()
    for option in ("--time=720", "--gpus-per-node=1", "--cpus-per-task=8", "--nodes=1"):
        assert f"#SBATCH {option}" in lines
    assert f"#SBATCH --chdir={REPO_ROOT}" in lines
    assert not [line for line in lines if re.match(r"#SBATCH --(partition|account|qos|mem)=", line)]


def test_every_setting_reaches_the_batch_script(tmp_path):
    environ = {
        "CLUSTER_PARTITION": "gpu",
        "CLUSTER_ACCOUNT": "lab",
        "CLUSTER_QOS": "high",
        "CLUSTER_TIME": "1-00:00:00",
        "CLUSTER_GPUS": "0",
        "CLUSTER_CPUS": "4",
        "CLUSTER_MEM": "64G",
        "CLUSTER_SETUP": "module load cuda/12.1\nexport HF_HOME=$SCRATCH/hf",
        "CLUSTER_SBATCH_EXTRA": "--constraint=a100 --exclusive",
    }
    lines = sbatch_lines(ClusterSettings.from_environ(environ), tmp_path).splitlines()
    for option in ("partition=gpu", "account=lab", "qos=high", "time=1440", "cpus-per-task=4"):
        assert f"#SBATCH --{option}" in lines
    assert "#SBATCH --mem=64G" in lines
    assert "#SBATCH --constraint=a100" in lines and "#SBATCH --exclusive" in lines
    assert not [line for line in lines if "gpus" in line]  # CLUSTER_GPUS=0
    setup = lines.index("# setup")
    assert lines[setup + 1 : setup + 3] == ["module load cuda/12.1", "export HF_HOME=$SCRATCH/hf"]
    assert setup < lines.index("# command")  # before the job's own command


def test_array_parallelism_is_the_array_limit(tmp_path):
    settings = ClusterSettings.from_environ({"CLUSTER_PARALLELISM": "3"})
    text = _make_sbatch_string(
        command="true", folder=tmp_path, map_count=10, **settings.submitit_parameters()
    )
    assert "#SBATCH --array=0-9%3" in text.splitlines()


@pytest.mark.parametrize(
    "name, value",
    [("CLUSTER_CPUS", "0"), ("CLUSTER_GPUS", "-1"), ("CLUSTER_PARALLELISM", "0"),
     ("CLUSTER_MEM", "lots"), ("CLUSTER_TIME", "forever")],
)  # fmt: skip
def test_a_bad_value_is_refused_in_one_line_naming_it(name, value):
    with pytest.raises(ClusterSettingsError) as raised:
        ClusterSettings.from_environ({name: value})
    assert str(raised.value).startswith(f"{name}=") and "\n" not in str(raised.value)


def test_makefile_defaults_match_the_module():
    makefile = (REPO_ROOT / "Makefile").read_text()

    def default(name: str) -> str:
        return re.search(rf"^export {name} \?=(.*)$", makefile, re.MULTILINE).group(1).strip()

    assert default("CLUSTER_TIME") == settings_module.DEFAULT_TIME
    assert default("CLUSTER_GPUS") == str(settings_module.DEFAULT_GPUS)
    assert default("CLUSTER_CPUS") == str(settings_module.DEFAULT_CPUS)
    assert default("CLUSTER_DIR") == settings_module.DEFAULT_CLUSTER_DIR


def test_publish_moves_a_run_into_place_results_last(tmp_path):
    staged = tmp_path / "staged" / "run"
    files = {
        "run_info.json": "{}",
        "model/samples_task_2026-01-01T00-00-00.jsonl": '{"doc_id": 0}\n',
        "model/results_2026-01-01T00-00-00.json": '{"results": {}}',
    }
    for name, text in files.items():
        (staged / name).parent.mkdir(parents=True, exist_ok=True)
        (staged / name).write_text(text)
    target = tmp_path / "output" / "run"
    (target / "model").mkdir(parents=True)
    (target / "model" / "results_2025-01-01T00-00-00.json").write_text("older")  # stays
    written = publish(staged, target)
    assert [path.relative_to(target).as_posix() for path in written][-1] == (
        "model/results_2026-01-01T00-00-00.json"
    )
    on_disk = {p.relative_to(target).as_posix(): p.read_text() for p in target.rglob("*")
               if p.is_file()}  # fmt: skip
    assert on_disk == {**files, "model/results_2025-01-01T00-00-00.json": "older"}


LOG_CANCELLED = """\
+ make --no-print-directory eval_cpu MODEL=/m
2026-01-01:00:00:00 WARNING  [evaluator:184] chat template is not applied.
slurmstepd-node1: error: *** JOB 12 ON node1 CANCELLED AT 2026-01-01T00:01:00 ***
make[1]: *** [Makefile:124: eval_cpu] Terminated
submitit ERROR (2026-01-01 00:01:00,000) - Submitted job triggered an exception
propensity_evals.cluster.job.EvalFailed: make eval_cpu was stopped by SIGTERM
"""
LOG_LAUNCH_ERROR = """\
+ make --no-print-directory eval_cpu MODEL=/no/such/model
error: model path /no/such/model not found: pass an existing folder or a hub id
make[1]: *** [Makefile:124: eval_cpu] Error 2
submitit ERROR (2026-01-01 00:01:00,000) - Submitted job triggered an exception
Traceback (most recent call last):
  File "/x/job.py", line 81, in run_one
propensity_evals.cluster.job.EvalFailed: make eval_cpu exited with status 2
srun: error: node1: task 0: Exited with exit code 1
"""


def test_the_error_line_of_a_log(tmp_path):
    log = tmp_path / "1_0_0_log.out"
    log.write_text(LOG_CANCELLED)
    assert last_error_line(log) == LOG_CANCELLED.splitlines()[2]
    log.write_text(LOG_LAUNCH_ERROR)
    assert last_error_line(log) == LOG_LAUNCH_ERROR.splitlines()[1]
    log.write_text("all fine\nstill fine\n")
    assert last_error_line(log) == "still fine"
    assert last_error_line(tmp_path / "missing.out").startswith("no log at ")


def test_a_system_prompt_grid_gives_each_array_task_its_own_prompt(
    data_dir, smollm2, tmp_path, monkeypatch
):
    """The SLURM executor plans with the local sweep and each array task runs the sweep's own
    make command (job.run_one): with SYSTEM_PROMPTS=none,hhh that is one run per prompt, each
    task's command naming its prompt, which reaches lm-eval as that prompt's text."""
    for name, value in isolated_env(tmp_path, data_dir, wandb_mode="disabled").items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MAKEFLAGS", raising=False)
    task = "anthropic_propensity_human_written_survival_instinct"
    argv = ["--models", str(smollm2), "--eval-target", "eval_cpu", "--tasks", task,
            "--limit", "1", "--output-dir", str(tmp_path / "out"),
            "--system-prompts", "none,hhh"]  # fmt: skip
    args = sweep.parse_args(argv)
    runs = sweep.plan(args)
    with open(REPO_ROOT / "propensity_evals" / "system_prompts.csv", newline="") as handle:
        hhh = {row["name"]: row["text"] for row in csv.DictReader(handle)}["hhh"]
    assert [run.system_prompt_name for run in runs] == ["none", "hhh"]
    assert runs[0].name == "SmolLM2-135M-Instruct__sample1"
    assert runs[1].name.startswith("SmolLM2-135M-Instruct__sys-hhh-")
    for run, text in zip(runs, ["", hhh], strict=True):
        request = JobRequest(args, run, [task], tmp_path / "out", "group", tmp_path / "staging",
                             submission_environment(args.system_prompt))  # fmt: skip
        request = pickle.loads(pickle.dumps(request))  # as submitit hands it to the node
        command = sweep.make_command(request.args, request.run, tmp_path / "staging", "group")
        assert f"SYSTEM_PROMPTS={run.system_prompt_name}" in command
        dry = subprocess.run([*command, "DRY_RUN=1"], cwd=REPO_ROOT, capture_output=True,
                             text=True, env={**os.environ, **request.environment})  # fmt: skip
        assert dry.returncode == 0, dry.stderr
        lm_eval = shlex.split(dry.stdout[dry.stdout.index("+ ") + 2 :])
        if text:
            assert lm_eval[lm_eval.index("--system_instruction") + 1] == text + "\n\n"
        else:
            assert "--system_instruction" not in lm_eval
