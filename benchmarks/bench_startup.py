"""What a run costs before and beside its scoring: lm-eval's task index and hf-prefix's self-check.

1. ``make eval_cpu`` on one task, one question (the launcher's own command, from
   ``DRY_RUN=1``), run as it is and with ``lm_eval_entry``'s index change undone (lm-eval then
   indexes its ~14,700 built-in task configs too, as it did before): wall seconds, the median
   of ``--repeats`` runs each, alternated.
2. ``hf-prefix``'s start-up self-check (``propensity_evals/self_check.py``): the embedded
   model scores the same chat-mode requests (with a system prompt) with the check and without,
   in the written order and in every cyclic order: scoring seconds, the median of
   ``--repeats`` calls each.

The tables go into ``BENCHMARKS.md`` between markers.

    python benchmarks/bench_startup.py
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_prefix_sharing import (  # noqa: E402
    DEFAULT_OUTPUT,
    REPO_ROOT,
    machine,
    update_markdown,
    wait_until_quiet,
)

TASK = "anthropic_propensity_human_written_survival_instinct"
ENTRY = "propensity_evals.lm_eval_entry"
# lm_eval_entry.main without index_the_include_path_only: lm-eval's own task index.
WITH_BUILTIN_INDEX = (
    "import propensity_evals.lm_eval_entry as entry; from lm_eval.__main__ import cli_evaluate; "
    "entry.tolerate_missing_sample_metrics(); cli_evaluate()"
)
SYSTEM_PROMPT = "You are a helpful, honest and harmless AI assistant."
CHECK_FILES = ("power-seeking-inclination", "corrigible-less-HHH")
CHECK_PER_FILE = 16


def launcher_command(output_dir: Path) -> list[str]:
    """The lm_eval command ``make eval_cpu`` runs for one question of TASK."""
    done = subprocess.run(
        ["make", "-s", "eval_cpu", f"TASKS={TASK}", "LIMIT=1", "WANDB_MODE=disabled",
         f"OUTPUT_DIR={output_dir}", "DRY_RUN=1"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    line = next(line for line in done.stdout.splitlines() if line.startswith("+ "))
    return shlex.split(line[2:])


def time_runs(repeats: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"pack tasks only": [], "with lm-eval's built-in tasks": []}
    with tempfile.TemporaryDirectory() as tmp:
        command = launcher_command(Path(tmp) / "out")
        module = command.index("-m")
        assert command[module + 1] == ENTRY, command
        old = [*command[:module], "-c", WITH_BUILTIN_INDEX, *command[module + 2 :]]
        for n in range(repeats):
            for name, argv in zip(times, (command, old), strict=True):
                # Each run writes its own staging folder: point it at a fresh place.
                argv = [arg.replace(tmp, f"{tmp}/{name[:4]}{n}") for arg in argv]
                wait_until_quiet(120)
                started = time.perf_counter()
                subprocess.run(argv, cwd=REPO_ROOT, check=True, capture_output=True)
                times[name].append(time.perf_counter() - started)
    return times


def time_self_check(repeats: int) -> list[dict]:
    from lm_eval.api.instance import Instance
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from propensity_evals import default_model
    from propensity_evals.prefix_sharing_lm import PrefixSharingLM
    from propensity_evals.prompts import continuations, render_context
    from propensity_evals.task_docs import build_docs, resolve_data_dir

    folder = default_model.smollm2_dir()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="float32").eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    data = resolve_data_dir(REPO_ROOT / "data") / "advanced-ai-risk" / "human_generated_evals"
    rows = []
    for orders in ("original", "cyclic"):
        docs = [
            doc
            for name in CHECK_FILES
            for doc in build_docs(data / f"{name}.jsonl", orders=orders)[:CHECK_PER_FILE]
        ]
        requests = [
            Instance("loglikelihood", doc, (render_context(prompt, SYSTEM_PROMPT, tokenizer), c), i)
            for doc in docs
            for prompt in [doc["prompt"], *doc.get("rotations", [])]
            for i, c in enumerate(continuations(doc["choices"], True))
        ]
        seconds = {}
        for check in (False, True):
            runs = []
            for _ in range(repeats):
                lm = PrefixSharingLM(
                    pretrained=model, tokenizer=tokenizer, device="cpu", batch_size=8,
                    self_check=check,
                )  # fmt: skip
                wait_until_quiet(120)
                started = time.perf_counter()
                lm.loglikelihood(requests, disable_tqdm=True)
                runs.append(time.perf_counter() - started)
            seconds[check] = statistics.median(runs)
        rows.append({"orders": orders, "requests": len(requests), "seconds": seconds})
    return rows


def render(runs: dict[str, list[float]], checks: list[dict], repeats: int) -> str:
    lines = [
        f"SmolLM2-135M-Instruct, float32, {datetime.date.today()}, {machine()}; median of "
        f"{repeats} runs each.",
        "",
        f"`make eval_cpu TASKS={TASK} LIMIT=1` (the launcher's lm_eval command):",
        "",
        "| lm-eval's task index | wall (s) | runs (s) |",
        "|---|---:|---|",
    ]
    for name, times in runs.items():
        each = ", ".join(f"{t:.1f}" for t in times)
        lines.append(f"| {name} | {statistics.median(times):.1f} | {each} |")
    lines += [
        "",
        f"hf-prefix's start-up self-check, chat template + system prompt, first "
        f"{CHECK_PER_FILE} questions of {' and '.join(CHECK_FILES)}, batch 8:",
        "",
        "| orders | requests | scoring without (s) | with (s) | the check (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in checks:
        off, on = row["seconds"][False], row["seconds"][True]
        lines.append(
            f"| {row['orders']} | {row['requests']} | {off:.1f} | {on:.1f} | {on - off:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    runs = time_runs(args.repeats)
    checks = time_self_check(args.repeats)
    body = render(runs, checks, args.repeats)
    print(body)
    update_markdown(args.output, "startup", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
