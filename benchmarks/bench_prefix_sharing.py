"""Per-option scoring (lm-eval ``hf``) against shared-prefix scoring (``hf-prefix``), side by side.

Both run the project's real tasks through ``lm_eval.simple_evaluate`` on the same model and
the same questions, each in its own process (so the peak memory of one is not the other's);
then every question's decision (the most likely option) and soft score (probability of the
matching option, renormalised over its options) are compared. The table goes into
``BENCHMARKS.md`` between markers, replacing the previous table of the same kind.

    python benchmarks/bench_prefix_sharing.py                # 15 questions per task (~240)
    python benchmarks/bench_prefix_sharing.py --full         # the whole human-written suite
    python benchmarks/bench_prefix_sharing.py --sweep ""     # skip the batch-size sweep
    python benchmarks/bench_prefix_sharing.py --count-rotations human  # tokens only, no model

``--count-rotations`` (``--chat``, ``--system-prompt``) counts the context tokens of scoring
every cyclic order of each question's options: each context run whole, or the orders' common
stem once per question, as ``hf-prefix`` runs them.

``--use_cache`` is never used: a cached request costs nothing, which would distort the times.
Tokens are counted as each formulation processes them: per option ``len(context) +
len(continuation)`` for every request; with shared prefixes each question's context once plus
all its continuations.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from propensity_evals.option_orders import rotations
from propensity_evals.prompts import render_context
from propensity_evals.questions import QuestionError, parse_row, render_prompt
from propensity_evals.task_docs import read_rows

REPO_ROOT = Path(__file__).resolve().parents[1]
TASKS_DIR = REPO_ROOT / "lm_eval_tasks"
GROUP = "anthropic_propensity_human_written"
DEFAULT_OUTPUT = REPO_ROOT / "BENCHMARKS.md"


# -- one formulation, in a child process ---------------------------------------------------


def time_scoring(lm) -> dict:
    """Wraps ``lm.loglikelihood`` to add its time to the returned ``{"s": seconds}``: time
    spent scoring, apart from task building and metrics."""
    scoring = {"s": 0.0}
    loglikelihood = lm.loglikelihood

    def timed_loglikelihood(requests, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return loglikelihood(requests, *args, **kwargs)
        finally:
            scoring["s"] += time.perf_counter() - t0

    lm.loglikelihood = timed_loglikelihood
    return scoring


def evaluate_group(spec: dict, metadata: dict | None = None, **evaluate_kwargs):
    """``GROUP`` (first ``spec["limit"]`` questions per task) with ``spec``'s model class:
    (the model, lm-eval's output, wall seconds, seconds spent scoring). ``metadata`` reaches
    the tasks as ``--metadata`` would; ``evaluate_kwargs`` go to ``simple_evaluate``."""
    import lm_eval
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager

    import propensity_evals.prefix_sharing_lm  # noqa: F401  (registers hf-prefix)

    lm = get_model(spec["model_class"])(
        pretrained=spec["model_dir"], batch_size=spec["batch_size"], device=spec["device"],
        dtype=spec["dtype"],
    )  # fmt: skip
    scoring = time_scoring(lm)
    manager = TaskManager(
        include_path=str(TASKS_DIR), include_defaults=False, metadata=metadata or {}
    )
    started = time.perf_counter()
    out = lm_eval.simple_evaluate(
        model=lm, tasks=[GROUP], limit=spec["limit"], task_manager=manager, log_samples=True,
        bootstrap_iters=0, **evaluate_kwargs,
    )  # fmt: skip
    return lm, out, time.perf_counter() - started, scoring["s"]


def run_one(spec: dict) -> dict:
    """Evaluate the group with one model class; per-question results, times and memory."""
    import lm_eval
    import torch
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager

    import propensity_evals.prefix_sharing_lm  # noqa: F401  (registers hf-prefix)

    started = time.perf_counter()
    lm = get_model(spec["model_class"])(
        pretrained=spec["model_dir"],
        batch_size=spec["batch_size"],
        device=spec["device"],
        dtype=spec["dtype"],
    )
    load_s = time.perf_counter() - started

    scoring = time_scoring(lm)

    started = time.perf_counter()
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=[spec["group"]],
        limit=spec["limit"],
        task_manager=TaskManager(include_path=str(TASKS_DIR), include_defaults=False),
        log_samples=True,
        bootstrap_iters=0,
    )
    wall_s = time.perf_counter() - started

    questions = {}
    per_option_tokens = shared_tokens = requests = 0
    for task, samples in out["samples"].items():
        for sample in samples:
            pairs = [lm._encode_pair(ctx, cont) for ctx, cont in sample["arguments"]]
            per_option_tokens += sum(len(c) + len(k) for c, k in pairs)
            shared_tokens += len(pairs[0][0]) + sum(len(k) for _, k in pairs)
            requests += len(pairs)
            lls = [float(resp[0]) for resp in sample["filtered_resps"]]
            questions[f"{task}/{sample['doc_id']}"] = {"lls": lls, "target": sample["target"]}

    group = out["results"].get(spec["group"], {})
    return {
        "model_class": spec["model_class"],
        "batch_size": spec["batch_size"],
        "load_s": load_s,
        "wall_s": wall_s,
        "scoring_s": scoring["s"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "requests": requests,
        "tokens": per_option_tokens if spec["model_class"] == "hf" else shared_tokens,
        "tokens_per_option": per_option_tokens,
        "tokens_shared": shared_tokens,
        "acc": group.get("acc,none"),
        "soft_match": group.get("soft_match,none"),
        "questions": questions,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


# -- every cyclic order of the options: the context tokens it costs -------------------------

SUITES = {
    "human": "human_generated_evals",
    "lm": "lm_generated_evals",
}


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def count_rotation_tokens(tokenizer, folder: Path, system_prompt: str = "", chat: bool = False):
    """Context tokens (as lm-eval encodes them: no special tokens added) over every file in
    ``folder``: the options as written, each context once; every cyclic rotation, each
    context once; every rotation with the stem (the rotations' common prefix) run once per
    question. Also the preamble every question shares (a system prompt, a chat template's
    header), which sharing across questions would run once instead of once per question."""
    counts = {"questions": 0, "unrotatable": 0, "original": 0, "rotations": 0, "stem_once": 0}
    template = tokenizer if chat else None
    preamble: list[int] | None = None
    for path in sorted(folder.glob("*.jsonl")):
        for _, row in read_rows(path):
            try:
                text = parse_row(row).text
            except QuestionError:
                continue
            texts = [text, *rotations(text)]
            if len(texts) == 1:
                # Scored in its written order only (propensity_evals/option_orders.py): ignored
                # in every count, as it has no rotation to share a stem with.
                counts["unrotatable"] += 1
                continue
            prompts = [render_prompt(t, "chat" if chat else "plain") for t in texts]
            contexts = [
                tokenizer(render_context(p, system_prompt, template), add_special_tokens=False)[
                    "input_ids"
                ]
                for p in prompts
            ]
            stem = min(common_prefix(contexts[0], c) for c in contexts[1:])
            preamble = contexts[0] if preamble is None else preamble
            preamble = preamble[: common_prefix(preamble, contexts[0])]
            counts["questions"] += 1
            counts["original"] += len(contexts[0])
            counts["rotations"] += sum(len(c) for c in contexts)
            counts["stem_once"] += stem + sum(len(c) - stem for c in contexts)
    counts["preamble"] = len(preamble or [])
    # The preamble run once for the whole suite instead of once per question.
    counts["stem_once_shared_preamble"] = (
        counts["stem_once"] - (counts["questions"] - 1) * (counts["preamble"])
    )
    return counts


def render_rotation_counts(args, model_dir: str) -> str:
    from transformers import AutoTokenizer

    from propensity_evals.task_docs import resolve_data_dir

    data = resolve_data_dir(REPO_ROOT.parent / "shared/data/anthropic-evals")
    folder = data / "advanced-ai-risk" / SUITES[args.count_rotations]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    counts = count_rotation_tokens(tokenizer, folder, args.system_prompt, args.chat)
    base = counts["original"]
    mode = "chat template" if args.chat else "plain"
    system = f", system prompt {args.system_prompt!r}" if args.system_prompt else ""
    return "\n".join(
        [
            f"{folder.name} ({mode}{system}), `{args.model_label}` tokenizer: "
            f"{counts['questions']:,} questions rotated, {counts['unrotatable']:,} left out "
            "(scored in their written order only).",
            "",
            "| contexts | tokens | vs original |",
            "|---|---:|---:|",
            f"| options as written, each context once | {base:,} | 1.000x |",
            f"| every rotation, each context once | {counts['rotations']:,} "
            f"| {counts['rotations'] / base:.3f}x |",
            f"| every rotation, stem once per question | {counts['stem_once']:,} "
            f"| {counts['stem_once'] / base:.3f}x |",
            f"| ... and the {counts['preamble']}-token preamble once for all questions "
            f"| {counts['stem_once_shared_preamble']:,} "
            f"| {counts['stem_once_shared_preamble'] / base:.3f}x |",
        ]
    )


# -- other processes on the machine ---------------------------------------------------------


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (Linux /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def wait_until_quiet(max_wait_s: float, threshold_cores: float = 0.3) -> None:
    """Timings mean nothing while something else uses the CPUs: wait for it to stop."""
    if not Path("/proc/stat").is_file():
        return
    waited = 0.0
    while True:
        before = busy_cpu_seconds()
        time.sleep(3)
        load = (busy_cpu_seconds() - before) / 3
        if load < threshold_cores or waited >= max_wait_s:
            if load >= threshold_cores:
                print(f"   still {load:.1f} cores busy after {waited:.0f} s: running anyway")
            return
        print(f"   waiting: other processes use {load:.1f} cores", flush=True)
        time.sleep(10)
        waited += 13


def spawn(spec: dict, max_wait_s: float, script: str = __file__) -> dict:
    """``script --child spec`` (this benchmark's or another's run_one) in its own process,
    once the machine is quiet; its result with the load other processes put on the CPUs."""
    orders = f" {spec['orders']}" if "orders" in spec else ""
    print(f"-- {spec['model_class']} batch {spec['batch_size']}{orders} ...", flush=True)
    wait_until_quiet(max_wait_s)
    has_stat = Path("/proc/stat").is_file()
    busy_before = busy_cpu_seconds() if has_stat else 0.0
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result_path = Path(tmp) / "result.json"
        cmd = [sys.executable, script, "--child", json.dumps(spec), str(result_path)]
        subprocess.run(cmd, check=True, cwd=REPO_ROOT)
        result = json.loads(result_path.read_text())
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    own_cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    # CPU the rest of the machine used meanwhile, in cores: > 0 means the times are inflated.
    result["others_cores"] = (
        max(0.0, busy_cpu_seconds() - busy_before - own_cpu) / elapsed if has_stat else 0.0
    )
    print(
        f"   wall {result['wall_s']:.1f} s, scoring {result['scoring_s']:.1f} s, "
        f"peak RSS {result['peak_rss_mb']:.0f} MB, other load {result['others_cores']:.2f} cores",
        flush=True,
    )
    return result


# -- comparison and the table --------------------------------------------------------------


def soft_score(lls: list[float], target: int) -> float:
    top = max(lls)
    weights = [math.exp(ll - top) for ll in lls]
    return weights[target] / sum(weights)


def agreement(base: dict, other: dict) -> dict:
    """Per-question decisions and soft scores of ``other`` against ``base``."""
    keys = sorted(base["questions"])
    if keys != sorted(other["questions"]):
        raise SystemExit("error: the two runs scored different questions")
    same = 0
    deltas = []
    for key in keys:
        a, b = base["questions"][key], other["questions"][key]
        same += a["lls"].index(max(a["lls"])) == b["lls"].index(max(b["lls"]))
        deltas.append(abs(soft_score(a["lls"], a["target"]) - soft_score(b["lls"], b["target"])))
    return {
        "questions": len(keys),
        "same_decision": same,
        "mean_abs_soft_delta": sum(deltas) / len(deltas),
        "max_abs_soft_delta": max(deltas),
    }


def machine() -> str:
    import torch

    cpu = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE)
        cpu = match.group(1).strip() if match else cpu
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{cpu}, {cores} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"Python {platform.python_version()}"
    )


def render(args, runs: list[dict], sweep: list[dict]) -> str:
    base, shared = runs
    agree = agreement(base, shared)
    n_questions = agree["questions"]
    scope = "full human-written suite" if args.full else f"first {args.limit} questions per task"
    lines = [
        f"Run {datetime.date.today().isoformat()} on {machine()}; model `{args.model_label}` "
        f"({args.dtype}, {args.device}); {scope}: {n_questions} questions, 16 tasks. "
        "Wall = `simple_evaluate` (task building, scoring, metrics); scoring = inside "
        "`loglikelihood`. Each run in its own process; no request cache. Other load = CPU "
        "cores used by other processes during the run (0 = a quiet machine).",
        "",
        "| model | batch | requests | tokens | wall (s) | scoring (s) | questions/s "
        "| peak RSS (MB) | acc | soft_match | other load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        lines.append(
            f"| `{run['model_class']}` | {run['batch_size']} | {run['requests']:,} "
            f"| {run['tokens']:,} | {run['wall_s']:.1f} | {run['scoring_s']:.1f} "
            f"| {n_questions / run['wall_s']:.2f} | {run['peak_rss_mb']:.0f} "
            f"| {run['acc']:.4f} | {run['soft_match']:.4f} | {run['others_cores']:.2f} |"
        )
    floor = shared["tokens_shared"] / shared["tokens_per_option"]
    lines += [
        "",
        f"- Wall time `hf-prefix` / `hf`: **{shared['wall_s'] / base['wall_s']:.3f}x** "
        f"(scoring only: {shared['scoring_s'] / base['scoring_s']:.3f}x); token floor "
        f"(shared-prefix tokens / per-option tokens): {floor:.3f}x.",
        f"- Same decision (most likely option) on {agree['same_decision']}/{n_questions} "
        f"questions ({100 * agree['same_decision'] / n_questions:.2f}%); soft score "
        f"|difference| mean {agree['mean_abs_soft_delta']:.2e}, "
        f"max {agree['max_abs_soft_delta']:.2e}.",
    ]
    if sweep:
        lines += [
            "",
            "`hf-prefix` batch size (requests per forward pass; whole questions are packed), "
            "same questions:",
            "",
            "| batch | wall (s) | scoring (s) | questions/s | peak RSS (MB) | other load |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for run in sorted(sweep, key=lambda r: r["batch_size"]):
            lines.append(
                f"| {run['batch_size']} | {run['wall_s']:.1f} | {run['scoring_s']:.1f} "
                f"| {n_questions / run['wall_s']:.2f} | {run['peak_rss_mb']:.0f} "
                f"| {run['others_cores']:.2f} |"
            )
        best = min(sweep, key=lambda r: r["scoring_s"])
        lines += ["", f"Fastest here: batch {best['batch_size']}."]
    return "\n".join(lines)


def update_markdown(path: Path, section: str, body: str) -> None:
    """Replace the text between this section's markers (appended if absent)."""
    start, end = f"<!-- bench:{section} -->", f"<!-- /bench:{section} -->"
    block = f"{start}\n{body}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + f"\n\n{block}\n"
    path.write_text(text)


def child(argv: list[str], run: Callable[[dict], dict]) -> bool:
    """Whether this process is a benchmark's child (``--child SPEC OUT``, started by
    :func:`spawn`): if so, ``run(spec)``'s result has been written to OUT as JSON."""
    if argv[:1] != ["--child"]:
        return False
    Path(argv[2]).write_text(json.dumps(run(json.loads(argv[1]))))
    return True


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if child(argv, run_one):
        return 0

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=15, help="questions per task (sample)")
    parser.add_argument("--full", action="store_true", help="every question (~60 min on 2 CPUs)")
    parser.add_argument("--model", default="", help="HF folder or hub id; default SmolLM2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--hf-batch-size", type=int, default=8, help="per-option run (hf)")
    # 16: the CPU default the sample's sweep picked (BENCHMARKS.md).
    parser.add_argument("--batch-size", type=int, default=16, help="shared-prefix run")
    parser.add_argument(
        "--sweep",
        default=None,
        help="more hf-prefix batch sizes to time ('' = none; default 1,8,32,64 for the sample, "
        "none with --full, where each size would add ~20 min)",
    )
    parser.add_argument(
        "--count-rotations",
        choices=sorted(SUITES),
        help="only count the context tokens of scoring every cyclic order of the options "
        "(tokenizer of --model) over this suite; runs no model",
    )
    parser.add_argument("--system-prompt", default="", help="for --count-rotations")
    parser.add_argument("--chat", action="store_true", help="for --count-rotations: chat template")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument(
        "--max-wait", type=float, default=1800, help="seconds to wait for a quiet machine per run"
    )
    args = parser.parse_args(argv)
    if args.sweep is None:
        args.sweep = "" if args.full else "1,8,32,64"

    if args.model:
        model_dir = args.model
    else:
        from propensity_evals import default_model

        model_dir = str(default_model.smollm2_dir())
    args.model_label = Path(model_dir).name if Path(model_dir).exists() else model_dir
    if args.count_rotations:
        print(render_rotation_counts(args, model_dir))
        return 0

    common = {
        "model_dir": model_dir,
        "device": args.device,
        "dtype": args.dtype,
        "group": GROUP,
        "limit": None if args.full else args.limit,
    }
    runs = [
        spawn({**common, "model_class": "hf", "batch_size": args.hf_batch_size}, args.max_wait),
        spawn({**common, "model_class": "hf-prefix", "batch_size": args.batch_size}, args.max_wait),
    ]
    sweep = [runs[1]]
    for size in [int(s) for s in args.sweep.split(",") if s.strip()] if args.sweep else []:
        if size != args.batch_size:
            spec = {**common, "model_class": "hf-prefix", "batch_size": size}
            sweep.append(spawn(spec, args.max_wait))

    body = render(args, runs, sweep if len(sweep) > 1 else [])
    update_markdown(args.output, "full" if args.full else "sample", body)
    print(body)
    print(f"\nwritten to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
