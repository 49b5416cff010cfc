"""Shared fixtures: the real data mirror, the embedded model, and real lm-eval runs.

Everything runs offline on real files: the advanced-ai-risk mirror (from
$ANTHROPIC_EVALS_MIRROR, default ../shared/data/anthropic-evals, which tests fail without,
never skip) and the SmolLM2 model shipped on PyPI. Each lm-eval run costs ~30-50 s of start-up
here, so runs are session fixtures shared by every test that reads them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from propensity_evals import anthropic_data, default_model
from propensity_evals.task_docs import DATA_DIR_ENV

REPO_ROOT = Path(__file__).resolve().parents[1]
MIRROR_ENV = "ANTHROPIC_EVALS_MIRROR"
BOTH_GROUPS = "anthropic_propensity_human_written,anthropic_propensity_lm_written"
ALL_GROUPS = BOTH_GROUPS + ",anthropic_propensity_human_written_audited"


# `make test` exports the checkout's data folder as $PROPENSITY_DATA_DIR (the Makefile does so
# for every target). It would override the folder a test hands a loader, and a clean clone has
# no data/ there: each test names its own folder (the `data_dir` fixture) instead.
os.environ.pop(DATA_DIR_ENV, None)


def mirror_root() -> Path:
    root = Path(os.environ.get(MIRROR_ENV) or REPO_ROOT.parent / "shared/data/anthropic-evals")
    if not (root / "advanced-ai-risk").is_dir():
        pytest.fail(
            f"advanced-ai-risk mirror not found at {root}: set ${MIRROR_ENV} to a folder "
            "holding advanced-ai-risk/ as upstream does",
            pytrace=False,
        )
    return root.resolve()


@pytest.fixture(scope="session")
def mirror() -> Path:
    return mirror_root()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory, mirror) -> Path:
    """A verified data/ folder made by the real sync code from the mirror."""
    root = tmp_path_factory.mktemp("data")
    anthropic_data.sync(root, mirror, quiet=True)
    return root


@pytest.fixture(scope="session")
def smollm2() -> Path:
    return default_model.smollm2_dir()


@pytest.fixture(scope="session")
def gemma() -> Path:
    return default_model.gemma_dir()


def make(*args: str, env: dict | None = None, check: bool = True, timeout: int = 900):
    """Run a Makefile target as a user would; returns the CompletedProcess.

    W&B settings of the calling shell are dropped so that each test states its own.
    """
    inherited = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "WANDB_API_KEY")}
    result = subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=REPO_ROOT,
        env={**inherited, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"make {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def python_module(module: str, *args: str, env: dict | None = None):
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


def isolated_env(base: Path, data_dir: Path, wandb_mode: str = "offline") -> dict:
    """Environment for a real eval run whose every output stays under ``base``.

    An empty ``wandb_mode`` leaves the choice to the launcher, as for a user who never ran
    ``wandb login``: HOME points at an empty folder (no netrc) and no API key is set.
    """
    wandb = base / "wandb-home"
    for sub in ("dir", "data", "cache", "config", "home"):
        (wandb / sub).mkdir(parents=True, exist_ok=True)
    login = {"WANDB_MODE": wandb_mode} if wandb_mode else {"HOME": str(wandb / "home")}
    return {
        **login,
        "PROPENSITY_DATA_DIR": str(data_dir),
        "WANDB_DIR": str(wandb / "dir"),
        "WANDB_DATA_DIR": str(wandb / "data"),
        "WANDB_CACHE_DIR": str(wandb / "cache"),
        "WANDB_CONFIG_DIR": str(wandb / "config"),
        "WANDB_SILENT": "true",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


def run_eval(
    base: Path, data_dir: Path, target: str = "eval_cpu", wandb_mode: str = "offline", **variables
) -> Path:
    """``make <target>`` into ``base/output``; returns the run folder it wrote."""
    output = base / "output"
    env = isolated_env(base, data_dir, wandb_mode)
    args = [f"{key}={value}" for key, value in variables.items()]
    result = make(target, f"OUTPUT_DIR={output}", f"CACHE_DIR={base / 'cache'}", *args, env=env)
    (base / "make.log").write_text(result.stdout + result.stderr)
    run_dirs = sorted(path.parent for path in output.glob("*/run_info.json"))
    assert run_dirs, f"no run folder under {output}:\n{result.stdout}\n{result.stderr}"
    return run_dirs[-1]


def results_json(run_dir: Path) -> dict:
    files = sorted(run_dir.rglob("results_*.json"))
    assert files, f"no results JSON under {run_dir}"
    return json.loads(files[-1].read_text())


def samples(run_dir: Path, task: str) -> list[dict]:
    files = sorted(run_dir.rglob(f"samples_{task}_*.jsonl"))
    assert files, f"no sample log for {task} under {run_dir}"
    return [json.loads(line) for line in files[-1].read_text().splitlines()]


@pytest.fixture(scope="session")
def plain_run(tmp_path_factory, data_dir, smollm2) -> Path:
    """The embedded model, plain prompt format, all three groups, 2 questions per task."""
    base = tmp_path_factory.mktemp("plain_run")
    return run_eval(base, data_dir, TASKS=ALL_GROUPS, LIMIT="2")


@pytest.fixture(scope="session")
def chat_run(tmp_path_factory, data_dir, smollm2) -> Path:
    """Chat template plus a system prompt, on the task with up to 8 options."""
    base = tmp_path_factory.mktemp("chat_run")
    return run_eval(
        base,
        data_dir,
        TASKS="anthropic_propensity_human_written_power_seeking_inclination",
        LIMIT="3",
        CHAT_TEMPLATE="1",
        SYSTEM_PROMPT='You are a careful "assistant" ($5 is cheap).  ',
    )


@pytest.fixture(scope="session")
def system_prompt_run(tmp_path_factory, data_dir, smollm2) -> Path:
    """Plain format with a system prompt (separated from Human: by a blank line), run as a
    user who never logged in to W&B."""
    base = tmp_path_factory.mktemp("system_run")
    return run_eval(
        base,
        data_dir,
        wandb_mode="",
        TASKS="anthropic_propensity_human_written_survival_instinct",
        LIMIT="1",
        SYSTEM_PROMPT="Answer as yourself.",
    )
