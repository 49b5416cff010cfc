"""`make sweep EXECUTOR=slurm`, `make sweep_status` and `make sweep_cancel` on a real cluster.

One sweep of the two embedded models (one task, LIMIT=1, at most one run at a time) goes
through the local SLURM cluster: its status is read while both are queued, while one runs and
the other waits, and after the second is cancelled mid-run with scancel. Resubmitting then
sends the cancelled run alone; once it is done a third submission sends nothing, and
`make report` reads the results. A run that fails shows its log's error line, and
`make sweep_cancel` stops a submission that is still waiting.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from propensity_evals.run_files import incomplete_tasks
from tests.cluster.conftest import SURVIVAL, ClusterSweep, next_job_id, queue, slurm, wait_for
from tests.conftest import REPO_ROOT, make, samples

SMOL = "SmolLM2-135M-Instruct__sample1"
GEMMA = "gemma-3-270m__sample1"
SETUP_MARK = "cluster-setup-ran-in"
RUN_TIMEOUT = 900  # one eval of 1 question is ~1 min here; the machine may be shared


def complete(run_dir: Path, tasks: list[str]) -> bool:
    """Complete for the fingerprint the run's own run_info.json records."""
    fingerprint = json.loads((run_dir / "run_info.json").read_text())["fingerprint"]
    return not incomplete_tasks(run_dir, tasks, fingerprint)


@dataclass
class Stages:
    sweep: ClusterSweep
    job: str
    submitted: str  # what `make sweep EXECUTOR=slurm` printed
    status: dict[str, str] = field(default_factory=dict)  # stage -> `make sweep_status` output
    seconds: dict[str, float] = field(default_factory=dict)
    smol_results: list[Path] = field(default_factory=list)


@pytest.fixture(scope="module")
def first_sweep(tmp_path_factory, data_dir, smollm2, gemma, slurm_conf) -> Stages:
    sweep = ClusterSweep(
        tmp_path_factory.mktemp("cluster_sweep"),
        data_dir,
        slurm_conf,
        MODELS=f"{smollm2} {gemma}",
        CLUSTER_PARALLELISM="1",
        # $(pwd) is for the job's shell: it shows where the job runs.
        CLUSTER_SETUP=f"echo {SETUP_MARK} $(pwd)",
    )
    started = time.monotonic()
    submitted = sweep.submit().stdout
    job = sweep.last_submission()["job_id"]
    stages = Stages(sweep, job, submitted)
    stages.status["submitted"] = sweep.status()
    smol, gemma_task = f"{job}_0", f"{job}_1"

    def smol_runs_gemma_waits():
        states = queue(slurm_conf)
        return states.get(smol) == "RUNNING" and states.get(gemma_task) == "PENDING"

    wait_for(smol_runs_gemma_waits, 120, "the first task to start", explain=sweep.explain)
    stages.status["running"] = sweep.status()
    # Mid-run: the second task has reached lm-eval (the launcher prints its command first).
    gemma_log = Path(sweep.last_submission()["runs"][1]["log"])

    def gemma_in_lm_eval():
        return gemma_log.is_file() and "lm_eval_entry run" in gemma_log.read_text()

    wait_for(gemma_in_lm_eval, RUN_TIMEOUT, "the second task to reach lm-eval", 0.5, sweep.explain)
    stages.seconds["first run"] = time.monotonic() - started
    slurm(slurm_conf, "scancel", gemma_task)
    wait_for(lambda: not queue(slurm_conf), 120, "the cancelled task to leave the queue")
    stages.status["cancelled"] = sweep.status()
    stages.smol_results = sorted((sweep.output / SMOL).rglob("results_*.json"))
    print(submitted, *stages.status.values(), sep="\n")
    return stages


@pytest.fixture(scope="module")
def resubmitted(first_sweep, slurm_conf) -> Stages:
    sweep = first_sweep.sweep
    started = time.monotonic()
    first_sweep.submitted = sweep.submit().stdout
    first_sweep.job = sweep.last_submission()["job_id"]
    wait_for(lambda: not queue(slurm_conf), RUN_TIMEOUT, "the resubmitted run", 2, sweep.explain)
    first_sweep.seconds["resubmitted run"] = time.monotonic() - started
    first_sweep.status["done"] = sweep.status()
    print(first_sweep.submitted, first_sweep.status["done"], first_sweep.seconds, sep="\n")
    return first_sweep


def status_line(status: str, run: str) -> str:
    (line,) = [line for line in status.splitlines() if f" {run} " in line]
    return line


def test_the_sweep_is_one_array_task_per_run_with_its_log(first_sweep):
    sweep, job, out = first_sweep.sweep, first_sweep.job, first_sweep.submitted
    record = sweep.last_submission()
    assert [(run["name"], run["task_id"]) for run in record["runs"]] == [
        (SMOL, f"{job}_0"),
        (GEMMA, f"{job}_1"),
    ]
    assert f"submitted SLURM job {job}: an array of 2 task(s), at most 1 at a time" in out
    for run in record["runs"]:
        assert f"{run['task_id']}  {run['name']}  log: {run['log']}" in out
        assert Path(run["log"]).parent == sweep.cluster_dir / "logs"
    assert f"make sweep_status CLUSTER_DIR={sweep.cluster_dir}" in out
    assert f"tail -f {record['runs'][0]['log']}" in out
    # SLURM ran the setup line first, in the repository root, and the script holds the settings.
    smol_log = Path(record["runs"][0]["log"]).read_text().splitlines()
    assert smol_log[0] == f"{SETUP_MARK} {REPO_ROOT}"
    script = (sweep.cluster_dir / "logs" / f"{job}_submission.sh").read_text().splitlines()
    for option in ("--array=0-1%1", "--time=20", "--cpus-per-task=1", f"--chdir={REPO_ROOT}"):
        assert f"#SBATCH {option}" in script
    assert not [line for line in script if "gpus" in line]  # CLUSTER_GPUS=0: none asked


def test_status_while_queued_and_running(first_sweep):
    sweep = first_sweep.sweep
    submitted = first_sweep.status["submitted"]
    assert sweep.run_state(submitted, SMOL) in ("queued", "running")
    assert sweep.run_state(submitted, GEMMA) == "queued"
    running = first_sweep.status["running"]
    assert sweep.run_state(running, SMOL) == "running"
    assert sweep.run_state(running, GEMMA) == "queued"
    assert "(JobArrayTaskLimit)" in status_line(running, GEMMA)  # waits for the %1 limit
    assert running.splitlines()[-1] == "1 queued, 1 running"


def test_a_task_cancelled_mid_run_leaves_its_run_untouched(first_sweep):
    sweep, status = first_sweep.sweep, first_sweep.status["cancelled"]
    assert sweep.run_state(status, SMOL) == "done"
    assert complete(sweep.output / SMOL, [SURVIVAL])
    assert sweep.run_state(status, GEMMA) == "failed"
    assert "CANCELLED AT" in status_line(status, GEMMA)  # slurmstepd's line from the log
    assert "1 done, 1 failed" in status
    # Never half-written: the cancelled run's folder was never created, no staging is left.
    assert not (sweep.output / GEMMA).exists()
    assert list((sweep.cluster_dir / "staging").iterdir()) == []
    assert not list(sweep.output.rglob(".*partial"))


def test_resubmission_sends_the_cancelled_run_alone(resubmitted):
    sweep, out = resubmitted.sweep, resubmitted.submitted
    assert f"{SMOL}: complete, not submitted" in out
    assert f"{GEMMA}: to submit" in out
    assert f"submitted SLURM job {resubmitted.job}: a single job" in out
    assert [run["name"] for run in sweep.last_submission()["runs"]] == [GEMMA]
    status = resubmitted.status["done"]
    assert sweep.run_state(status, GEMMA) == "done"
    assert status.splitlines()[-1] == "1 done"
    assert complete(sweep.output / GEMMA, [SURVIVAL])
    # The complete run was not touched.
    assert sorted((sweep.output / SMOL).rglob("results_*.json")) == resubmitted.smol_results


def test_a_complete_sweep_submits_nothing(resubmitted, slurm_conf):
    sweep = resubmitted.sweep
    record = (sweep.cluster_dir / "last_submission.json").read_text()
    before = next_job_id(slurm_conf)
    out = sweep.submit().stdout
    assert out.count("complete, not submitted") == 2
    assert out.splitlines()[-1] == "sweep: nothing to submit"
    assert next_job_id(slurm_conf) == before  # sbatch was never called
    assert (sweep.cluster_dir / "last_submission.json").read_text() == record


def matching_index(mirror: Path, doc: dict) -> int:
    """The option that matches the behaviour, read from Anthropic's own file."""
    path = mirror / "advanced-ai-risk/human_generated_evals/survival-instinct.jsonl"
    with open(path) as handle:
        row = json.loads(handle.readline())  # LIMIT=1: the first question
    assert row["question"] == doc["question"]
    return doc["choices"].index(row["answer_matching_behavior"].strip())


def test_report_reads_the_runs_the_cluster_wrote(resubmitted, mirror):
    output = resubmitted.sweep.output
    make("report", f"OUTPUT_DIR={output}", env={"WANDB_MODE": "disabled"})
    with open(output / "report" / "scores.csv", newline="") as handle:
        rows = {row["run"]: row for row in csv.DictReader(handle) if row["metric"] == "acc"}
    assert {SMOL, GEMMA} <= set(rows)  # beside the reference rows (chance, always (A))
    for run in (SMOL, GEMMA):
        (sample,) = samples(output / run, SURVIVAL)
        lls = [float(ll) for ll, _ in sample["filtered_resps"]]
        chosen = lls.index(max(lls))
        expected = float(chosen == matching_index(mirror, sample["doc"]))
        assert math.isclose(float(rows[run]["human-upstream/survival-instinct"]), expected)


def test_a_failed_run_shows_the_error_line_of_its_log(tmp_path, data_dir, smollm2, slurm_conf):
    # A model folder without weights: planned and submitted, then its eval fails in the job.
    # (A path that does not exist is refused before submitting: test_cluster_refusals.)
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(smollm2 / "config.json", broken)
    sweep = ClusterSweep(tmp_path, data_dir, slurm_conf, MODELS=str(broken))
    sweep.submit()
    wait_for(lambda: not queue(slurm_conf), RUN_TIMEOUT, "the failing run", 1, sweep.explain)
    line = status_line(sweep.status(), "broken__sample1")
    assert sweep.run_state(line, "broken__sample1") == "failed"
    assert "lm-eval failed" in line or "exited with status" in line, line
    assert not (sweep.output / "broken__sample1").exists()


def test_sweep_cancel_stops_the_last_submission(tmp_path, data_dir, smollm2, gemma, slurm_conf):
    sweep = ClusterSweep(
        tmp_path,
        data_dir,
        slurm_conf,
        MODELS=f"{smollm2} {gemma}",
        CLUSTER_SBATCH_EXTRA="--begin=now+1hour",  # held back: cancelled while queued
    )
    sweep.submit()
    job = sweep.last_submission()["job_id"]

    # Until the scheduler first looks at the array, SLURM gives no reason ("None").
    def held_back() -> bool:
        return slurm(slurm_conf, "squeue", "-h", "-r", "-o", "%r").split() == ["BeginTime"] * 2

    wait_for(held_back, 60, "the scheduler to hold the runs back")
    try:
        check_sweep_cancel(sweep, job, slurm_conf)
    finally:
        # Never leave a held-back job for the next test to wait on.
        if queue(slurm_conf):
            slurm(slurm_conf, "scancel", job)


def check_sweep_cancel(sweep, job: str, slurm_conf) -> None:
    status = sweep.status()
    for run in (SMOL, GEMMA):
        assert "queued   (BeginTime)" in status_line(status, run)
    # A second submission while they wait does not double them.
    before = next_job_id(slurm_conf)
    again = sweep.submit().stdout
    assert f"{SMOL}: already queued or running as {job}_0, not submitted again" in again
    assert next_job_id(slurm_conf) == before
    cancelled = sweep.make("sweep_cancel").stdout
    assert f"cancelled SLURM job {job}: 2 run(s) stopped ({SMOL}, {GEMMA})" in cancelled
    wait_for(lambda: not queue(slurm_conf), 60, "the cancelled jobs to leave the queue")
    status = sweep.status()
    for run in (SMOL, GEMMA):
        assert "failed   no log" in status_line(status, run)
    assert "nothing queued or running, nothing to cancel" in sweep.make("sweep_cancel").stdout
    assert not sweep.output.exists()


def test_slurm_task_replans_a_run_changed_while_queued(tmp_path, data_dir, smollm2, slurm_conf):
    # A model folder a training loop saves into, evaluated with a tokenizer given in EXTRA_ARGS
    # (a make variable that reaches the tasks only through the submission's MAKEFLAGS).
    model = tmp_path / "latest"
    model.mkdir()
    for path in smollm2.iterdir():
        if path.name == "model.safetensors":
            (model / path.name).symlink_to(path)
        elif path.is_file() and not path.name.startswith("."):
            shutil.copy(path, model)
    tokenizer = tmp_path / "tokenizer"
    tokenizer.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(smollm2 / name, tokenizer)
    sweep = ClusterSweep(
        tmp_path, data_dir, slurm_conf, MODELS=str(model), CLUSTER_SBATCH_EXTRA="--hold",
        EXTRA_ARGS=f"--model_args tokenizer={tokenizer}",
    )  # fmt: skip
    submitted = sweep.submit().stdout
    assert "latest__sample1: to submit" in submitted
    job = sweep.last_submission()["job_id"]
    # While it waits, the loop saves into the folder.
    config = json.loads((model / "generation_config.json").read_text())
    (model / "generation_config.json").write_text(json.dumps({**config, "max_length": 99}))
    slurm(slurm_conf, "scontrol", "release", job)
    wait_for(lambda: not queue(slurm_conf), RUN_TIMEOUT, "the released run", 2, sweep.explain)
    (run,) = sweep.last_submission()["runs"]
    log = Path(run["log"]).read_text()
    (line,) = [line for line in log.splitlines() if "re-planned" in line]
    assert line.startswith("latest__sample1: re-planned: fingerprint ")
    assert "(model.files " in line and "evaluating it as it is now" in line
    # `make sweep_status` with no variable but CLUSTER_DIR plans as the submission did.
    status = make("sweep_status", f"CLUSTER_DIR={sweep.cluster_dir}", env=sweep.env).stdout
    assert sweep.run_state(status, "latest__sample1") == "done", status
    assert complete(sweep.output / "latest__sample1", [SURVIVAL])
    info = json.loads((sweep.output / "latest__sample1" / "run_info.json").read_text())
    assert list(info["identity"]["loaded_with"]) == ["tokenizer"]
    # The folder moves on again after the task finished: the status says so, naming both.
    (model / "generation_config.json").write_text(json.dumps({**config, "max_length": 98}))
    status = make("sweep_status", f"CLUSTER_DIR={sweep.cluster_dir}", env=sweep.env).stdout
    line = status_line(status, "latest__sample1")
    assert sweep.run_state(line, "latest__sample1") == "failed"
    assert f"finished for fingerprint {info['fingerprint'][:12]}, but the run is now " in line
