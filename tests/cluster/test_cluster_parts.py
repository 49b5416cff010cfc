"""The cluster modules' pieces that need no cluster: settings, publishing, reading a log, and
a task's own code (re-planning, publishing beside older results) and the status's plan, run
here in-process on real lm-eval runs.

The sbatch text is rendered by submitit itself, from the parameters the settings hand it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import pickle
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from submitit.slurm.slurm import _make_sbatch_string

from propensity_evals import sweep
from propensity_evals.cluster import record
from propensity_evals.cluster import settings as settings_module
from propensity_evals.cluster.job import (
    JobRequest,
    changed_inputs,
    run_one,
    submission_environ,
    submission_environment,
)
from propensity_evals.cluster.publish import PublishRefused, publish
from propensity_evals.cluster.settings import (
    ClusterSettings,
    ClusterSettingsError,
    sbatch_options,
    time_minutes,
)
from propensity_evals.cluster.status import last_error_line, run_states
from propensity_evals.run_files import incomplete_tasks
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


def test_publish_never_replaces_a_file_with_other_bytes(tmp_path):
    staged, target = tmp_path / "staged", tmp_path / "run"
    for folder, results in ((staged, '{"new": 1}'), (target, '{"old": 1}')):
        (folder / "model").mkdir(parents=True)
        (folder / "model" / "results_2026-01-01T00-00-00.json").write_text(results)
        (folder / "run_info.json").write_text(f'"{folder.name}"')
    (staged / "model" / "samples_task_2026-01-01T00-00-00.jsonl").write_text("{}\n")
    with pytest.raises(PublishRefused, match="results_2026-01-01T00-00-00.json already exists"):
        publish(staged, target)
    # Nothing was written, not even the files that were free.
    assert (target / "model" / "results_2026-01-01T00-00-00.json").read_text() == '{"old": 1}'
    assert not (target / "model" / "samples_task_2026-01-01T00-00-00.jsonl").exists()
    assert (target / "run_info.json").read_text() == '"run"'
    # The same bytes again (a requeued task publishing twice) are no conflict; run_info.json,
    # the record of the latest run, is rewritten.
    shutil.copy(target / "model" / "results_2026-01-01T00-00-00.json", staged / "model")
    publish(staged, target)
    assert (target / "run_info.json").read_text() == '"staged"'
    assert (target / "model" / "samples_task_2026-01-01T00-00-00.jsonl").read_text() == "{}\n"


def test_what_changed_between_two_fingerprints():
    before = {"model": {"kind": "hub", "commit": "a" * 40}, "code": {"libraries": {"torch": "2.1"}},
              "device": "cuda", "orders": "cyclic"}  # fmt: skip
    after = {"model": {"kind": "hub", "commit": "b" * 40}, "code": {"libraries": {"torch": "2.2"}},
             "device": "cuda"}  # fmt: skip
    assert changed_inputs(before, after) == [
        "code.libraries.torch 2.1 -> 2.2",
        f"model.commit {'a' * 12}... -> {'b' * 12}...",
        "orders cyclic -> none",
    ]


# -- a SLURM task's own code, run here in-process (what submitit calls on the node) ----------

SURVIVAL = "anthropic_propensity_human_written_survival_instinct"


def make_flags(*variables: str) -> str:
    """MAKEFLAGS as make itself writes them for these command-line variables."""
    echo = "all:\n\t@printf '%s\\n' \"$$MAKEFLAGS\"\n"
    result = subprocess.run(
        ["make", "-f", "-", *variables],
        input=echo,
        text=True,
        capture_output=True,
        check=True,
        env={"PATH": os.environ["PATH"]},
    )
    return result.stdout.strip()


@dataclass
class Replanned:
    request: JobRequest
    output: Path
    first: str  # what each run_one printed
    second: str
    before: dict[Path, bytes]  # the run folder's files after the first task
    replanned: sweep.PlannedRun  # the run as planned after the model changed
    environment: dict[str, str]
    argv: list[str]  # the sweep's, as submit.py records it


@pytest.fixture(scope="module")
def replanned(tmp_path_factory, data_dir, smollm2) -> Replanned:
    """One run's task twice, as a requeued (or second) SLURM task would: the second time the
    model folder holds new files (a training loop saved into it) since the submission."""
    base = tmp_path_factory.mktemp("replan")
    model = base / "SmolLM2-135M-Instruct"
    model.mkdir()
    for path in smollm2.iterdir():
        if path.name == "model.safetensors":
            (model / path.name).symlink_to(path)  # the weights are only read
        elif path.is_file() and not path.name.startswith("."):
            shutil.copy(path, model)
    tokenizer = base / "tokenizer"
    tokenizer.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(smollm2 / name, tokenizer)
    output = base / "output"
    argv = ["--models", str(model), "--eval-target", "eval_cpu", "--tasks", SURVIVAL, "--limit",
            "1", "--output-dir", str(output), f"CACHE_DIR={base / 'cache'}"]  # fmt: skip
    # A make variable that reaches the runs only through MAKEFLAGS, as under `make sweep`.
    flags = make_flags(f"EXTRA_ARGS=--model_args tokenizer={tokenizer}")
    environment = {"MAKEFLAGS": flags, "SYSTEM_PROMPT": ""}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in isolated_env(base, data_dir, wandb_mode="disabled").items():
            patch.setenv(name, value)
        args = sweep.parse_args(argv)
        with submission_environ(environment):
            (planned,) = sweep.plan(args)
        request = JobRequest(args, planned, sweep.requested_tasks(args), output, "group",
                             base / "staging", environment)  # fmt: skip
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            run_one(request)
        first = printed.getvalue()
        run_dir = output / planned.name
        before = {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()}
        config = json.loads((model / "generation_config.json").read_text())
        (model / "generation_config.json").write_text(json.dumps({**config, "max_length": 99}))
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            run_one(request)  # the same request: planned before the model changed
        second = printed.getvalue()
        with submission_environ(environment):
            (now,) = sweep.plan(args)
    return Replanned(request, output, first, second, before, now, environment, argv)


def test_a_task_evaluates_the_run_as_it_was_planned(replanned):
    run = replanned.request.run
    assert "re-planned" not in replanned.first
    assert (
        replanned.first.splitlines()[-1] == f"{run.name}: complete in {replanned.output / run.name}"
    )
    # As the first task left it (the second rewrote run_info.json, the latest run's record).
    info = json.loads(replanned.before[replanned.output / run.name / "run_info.json"])
    assert info["fingerprint"] == run.fingerprint
    # EXTRA_ARGS reached the run through the submission's MAKEFLAGS.
    assert list(info["identity"]["loaded_with"]) == ["tokenizer"]


def test_a_task_re_plans_when_the_model_changed_since_submission(replanned):
    run, now = replanned.request.run, replanned.replanned
    assert now.fingerprint != run.fingerprint
    lines = replanned.second.splitlines()
    (line,) = [line for line in lines if "re-planned" in line]
    assert line.startswith(
        f"{run.name}: re-planned: fingerprint {run.fingerprint[:12]} at submission, "
        f"{now.fingerprint[:12]} now (model.files "
    )
    assert "evaluating it as it is now" in line
    assert lines[-1] == f"{run.name}: complete in {replanned.output / run.name}"
    run_dir = replanned.output / run.name
    assert not incomplete_tasks(run_dir, [SURVIVAL], now.fingerprint)
    # The results of the model as it was stay, byte for byte; the new ones went beside them.
    for path, data in replanned.before.items():
        if path.name != "run_info.json":
            assert path.read_bytes() == data, path
    old = [path for path in replanned.before if path.name.startswith("results_")]
    new = sorted(set(run_dir.rglob("results_*.json")) - set(old))
    assert len(old) == 1 and len(new) == 1
    assert json.loads(new[0].read_text())["configs"][SURVIVAL]["metadata"]["run_fingerprint"] == (
        now.fingerprint
    )
    assert not list((replanned.request.staging_root).iterdir())


def test_status_plans_with_the_submissions_variables(replanned, tmp_path, monkeypatch, data_dir):
    request = replanned.request
    for name, value in isolated_env(tmp_path, data_dir, wandb_mode="disabled").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MAKEFLAGS", "")  # `make sweep_status` with no variables

    def state(environment: dict) -> str:
        submission = record.Submission(
            job_id="7", submitted_at="", eval_target="eval_cpu", output_dir=str(replanned.output),
            sweep_argv=replanned.argv, environment=environment,
            runs=[record.SubmittedRun(request.run.name, "7_0", str(tmp_path / "7_0_0_log.out"))],
        )  # fmt: skip
        (only,) = run_states(submission, queue={})
        return only.state

    assert state(replanned.environment) == "done"
    # Planned without them (EXTRA_ARGS missing), the same complete run would not be found.
    assert state({}) == "failed"


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
