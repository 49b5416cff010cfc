"""Numbers are never silently wrong: new weights under an old name, a run killed mid-scoring,
a write that fails midway, a download killed mid-file. Real lm-eval runs of the embedded model.
"""

from __future__ import annotations

import http.server
import json
import math
import os
import re
import resource
import shlex
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from propensity_evals import anthropic_data
from propensity_evals.prefix_sharing_lm import PrefixSharingLM
from tests.conftest import REPO_ROOT, isolated_env, make, samples

TASK = "anthropic_propensity_human_written_coordinate_itself"
LIMIT = 12  # 24 requests; BATCH_SIZE=2 makes each batch two questions


def cached_count(log: str) -> tuple[int, int]:
    """lm-eval's own report of what its request cache served."""
    match = re.search(r"Cached requests: (\d+), Requests remaining: (\d+)", log)
    assert match, log[-2000:]
    return int(match.group(1)), int(match.group(2))


def eval_args(model: Path, base: Path, **extra) -> list[str]:
    values = {
        "MODEL": str(model),
        "TASKS": TASK,
        "LIMIT": str(LIMIT),
        "BATCH_SIZE": "2",
        "OUTPUT_DIR": str(base / "output"),
        "CACHE_DIR": str(base / "cache"),
        "WANDB_MODE": "disabled",
        **extra,
    }
    return [f"{key}={value}" for key, value in values.items()]


def soft_scores(run_dir: Path) -> dict[int, float]:
    return {s["doc_id"]: s["soft_match"] for s in samples(run_dir, TASK)}


def cache_rows(cache_dir: Path) -> int:
    total = 0
    for db in cache_dir.glob("*_rank0.db"):
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1) as connection:
                total += connection.execute("SELECT COUNT(*) FROM unnamed").fetchone()[0]
        except sqlite3.Error:
            pass
    return total


def new_weights(folder: Path) -> None:
    """What a training loop does: save different weights into the same folder."""
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    torch.manual_seed(0)
    with torch.no_grad():
        for layer in model.model.layers[:4]:
            layer.mlp.down_proj.weight.add_(0.05 * torch.randn_like(layer.mlp.down_proj.weight))
    model.save_pretrained(folder)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, smollm2) -> Path:
    folder = tmp_path_factory.mktemp("ckpt") / "latest"
    shutil.copytree(smollm2, folder)
    return folder


def test_new_weights_in_the_same_folder_and_a_killed_run(
    checkpoint, data_dir, tmp_path, tmp_path_factory
):
    base = tmp_path
    env = isolated_env(base, data_dir, wandb_mode="disabled")
    args = eval_args(checkpoint, base)
    first = make("eval_cpu", *args, env=env)
    assert cached_count(first.stdout + first.stderr) == (0, 2 * LIMIT)
    run_dir = base / "output" / f"latest__sample{LIMIT}"
    old = soft_scores(run_dir)
    # Nothing changed: the same inputs are served from the cache.
    sweep_plan = make("sweep", "EVAL_TARGET=eval_cpu", "DRY_RUN=1", *args, env=env)
    assert "complete for this model and settings, skipped" in sweep_plan.stdout

    new_weights(checkpoint)
    sweep_plan = make("sweep", "EVAL_TARGET=eval_cpu", "DRY_RUN=1", *args, env=env)
    assert "1 of 1 task(s) to run" in sweep_plan.stdout, sweep_plan.stdout

    # Killed (SIGKILL, the whole process group) once some answers of the new model are cached.
    before = cache_rows(base / "cache")
    process = subprocess.Popen(
        ["make", "--no-print-directory", "eval_cpu", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    while cache_rows(base / "cache") < before + 4:
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    partial = cache_rows(base / "cache") - before
    assert 0 < partial < 2 * LIMIT
    # The killed run added nothing a reader would take as complete.
    assert len(list(run_dir.rglob("results_*.json"))) == 1

    resumed = make("eval_cpu", *args, env=env)
    hits, remaining = cached_count(resumed.stdout + resumed.stderr)
    # Only the new model's own answers are served: never the first model's 24.
    assert 0 < hits < 2 * LIMIT and hits + remaining == 2 * LIMIT
    new = soft_scores(run_dir)
    assert max(abs(new[i] - old[i]) for i in old) > 1e-3  # the new model's numbers

    # An uninterrupted scoring of the same requests by the new weights: same decisions, soft
    # scores within 1e-5 (one question per call here, two per forward pass in the run: the
    # padding changes floating-point rounding only; the new weights moved them by > 1e-3).
    lm = PrefixSharingLM(pretrained=str(checkpoint), device="cpu", batch_size=2, dtype="float32")
    from lm_eval.api.instance import Instance

    for sample in samples(run_dir, TASK):
        requests = [
            Instance("loglikelihood", sample["doc"], (a["arg_0"], a["arg_1"]), i)
            for i, a in enumerate(sample["arguments"].values())
        ]
        lls = [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]
        logged = [float(ll) for ll, _ in sample["filtered_resps"]]
        assert lls.index(max(lls)) == logged.index(max(logged))
        weights = [math.exp(ll) for ll in lls]
        soft = weights[sample["doc"]["target"]] / sum(weights)
        assert soft == pytest.approx(sample["soft_match"], abs=1e-5)

    # The report flags the model change under the same name and uses the newest results only.
    report = make("report", f"OUTPUT_DIR={base / 'output'}", env=env)
    assert "the model behind this name changed" in report.stdout + report.stderr


def test_a_write_that_fails_midway_leaves_no_results_file(data_dir, smollm2, tmp_path):
    env = isolated_env(tmp_path, data_dir, wandb_mode="disabled")
    output = tmp_path / "output"

    def small_files() -> None:
        # Ignore SIGXFSZ so a write past the limit fails with EFBIG instead of killing.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (6000, 6000))

    result = subprocess.run(
        ["make", "--no-print-directory", "eval_cpu", f"TASKS={TASK}", "LIMIT=1",
         f"OUTPUT_DIR={output}", "CACHE_DIR=", "WANDB_MODE=disabled"],
        cwd=REPO_ROOT, env={**os.environ, **env}, capture_output=True, text=True,
        preexec_fn=small_files, timeout=900,
    )  # fmt: skip
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-2]  # the last line is make's own "Error 1"
    assert last.startswith("error: lm-eval finished but wrote 1 task(s) incompletely"), last
    assert "File too large" in last or "Could not save" in last, last
    run_dir = output / "SmolLM2-135M-Instruct__sample1"
    assert not list(run_dir.rglob("results_*.json")) and not list(run_dir.rglob("samples_*"))
    report = make("report", f"OUTPUT_DIR={output}", env=env, check=False)
    assert report.returncode != 0 and "no eval runs found" in report.stderr


class _SlowRangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the mirror with HTTP Range support; the first file slowly, to be killed."""

    ranges: list[tuple[str, str]] = []
    slow_path = ""

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        data = path.read_bytes()
        start = 0
        header = self.headers.get("Range")
        self.ranges.append((self.path, header or ""))
        if header:
            start = int(header.removeprefix("bytes=").split("-")[0])
        self.send_response(206 if header else 200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        slow = self.path.endswith(self.slow_path) and not header
        step = 16 << 10
        for offset in range(0, len(body), step):
            self.wfile.write(body[offset : offset + step])
            if slow:
                time.sleep(0.05)


def test_a_download_killed_mid_file_resumes(mirror, tmp_path):
    slow = "advanced-ai-risk/lm_generated_evals/coordinate-itself.jsonl"
    handler = type("Handler", (_SlowRangeHandler,), {"ranges": [], "slow_path": slow})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a: handler(*a, directory=str(mirror))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        env = {**os.environ, anthropic_data.UPSTREAM_URL_ENV: url}
        data = tmp_path / "data"
        command = [str(REPO_ROOT / ".venv/bin/python"), "-m", "propensity_evals.anthropic_data",
                   "--data-dir", str(data)]  # fmt: skip
        part = data / "advanced-ai-risk" / "lm_generated_evals" / "coordinate-itself.jsonl.part"
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not (part.exists() and part.stat().st_size >= 128 << 10):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        process.kill()
        process.wait()
        have = part.stat().st_size
        total = (mirror / slow).stat().st_size
        assert 0 < have < total
        done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        # The rerun asked only for the missing bytes of the interrupted file.
        assert (f"/{slow}", f"bytes={have}-") in handler.ranges
        assert (data / slow).read_bytes() == (mirror / slow).read_bytes()
        assert not part.exists()
    finally:
        server.shutdown()


def test_quotes_and_dollars_reach_the_launcher_intact(data_dir, tmp_path):
    env = isolated_env(tmp_path, data_dir, wandb_mode="disabled")
    prompt = 'Say "no" to $HOME and $(id) `x`'
    dry = make("eval_cpu", "DRY_RUN=1", f"SYSTEM_PROMPT={prompt}", 'LABEL=a "b" $c', env=env)
    printed = dry.stdout[dry.stdout.index("+ ") + 2 :]  # the command spans lines: "\n\n"
    command = shlex.split(printed)
    assert command[command.index("--system_instruction") + 1] == prompt + "\n\n"
    plan = make("eval_cpu", "PLAN_JSON=1", "-s", 'LABEL=a "b" $c', env=env)
    assert json.loads(plan.stdout.strip().splitlines()[-1])["run_name"] == "a_b_c"
    missing = make("eval_cpu", "DRY_RUN=1", "MODEL=/nowhere/a$b", env=env, check=False)
    assert "model path /nowhere/a$b not found" in missing.stderr
