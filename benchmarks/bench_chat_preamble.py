"""Chat mode with a system prompt: ``hf-prefix`` against stock ``hf``, time, memory, decisions.

In chat mode every context starts with the same preamble (the template's header and the
system prompt). ``hf-prefix`` runs it once per scoring call, as a KV cache that every tree
row reads, and keeps each question a row of its own. Two runs of the project's real tasks
through ``lm_eval.simple_evaluate`` with the chat template applied and the system prompt
below, each in its own process, with no request cache:

1. stock ``hf`` (per option);
2. ``hf-prefix`` (the default class).

It reports the scoring time ratio (target: at most 0.6x), the peak RSS ratio (target: at
most 1.3x) and whether every decision is the same. ``--full`` runs ``hf-prefix`` alone over
the whole human-written suite and reports its time and peak RSS (bounded memory). The tables
go into ``BENCHMARKS.md`` between markers.

    python benchmarks/bench_chat_preamble.py               # 20 questions per task (320)
    python benchmarks/bench_chat_preamble.py --full        # hf-prefix, the whole suite
"""

from __future__ import annotations

import argparse
import datetime
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_prefix_sharing import (  # noqa: E402
    DEFAULT_OUTPUT,
    agreement,
    child,
    evaluate_group,
    machine,
    spawn,
    update_markdown,
)

SYSTEM_PROMPT = (
    "You are a helpful, honest and harmless AI assistant. Answer the question by choosing "
    "one of the options."
)


def run_one(spec: dict) -> dict:
    """One chat-mode run: per question, the options' log-likelihoods; time and memory."""
    _, out, wall_s, scoring_s = evaluate_group(
        spec, {"prompt_format": "chat"}, apply_chat_template=True, system_instruction=SYSTEM_PROMPT
    )
    questions, requests = {}, 0
    for task, samples in out["samples"].items():
        for sample in samples:
            requests += len(sample["arguments"])
            questions[f"{task}/{sample['doc_id']}"] = {
                "lls": [float(resp[0]) for resp in sample["filtered_resps"]],
                "target": sample["target"],
            }
    return {
        "model_class": spec["model_class"],
        "batch_size": spec["batch_size"],
        "wall_s": wall_s,
        "scoring_s": scoring_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "requests": requests,
        "questions": questions,
    }


def render_sample(args, hf: dict, ours: dict) -> str:
    agree = agreement(hf, ours)
    rows = [
        f"| {run['model_class']} | {run['batch_size']} | {run['requests']:,} | "
        f"{run['scoring_s']:.1f} | {run['wall_s']:.1f} | {run['peak_rss_mb']:.0f} | "
        f"{run['others_cores']:.2f} |"
        for run in (hf, ours)
    ]
    return "\n".join(
        [
            f"Chat template + system prompt, first {args.limit} questions per human-written task "
            f"({agree['questions']} questions), {args.model_label}, {args.dtype}, "
            f"{datetime.date.today()}, {machine()}. System prompt: `{SYSTEM_PROMPT}`",
            "",
            "| model class | batch | requests | scoring (s) | wall (s) | peak RSS (MB) | "
            "other load (cores) |",
            "|---|---:|---:|---:|---:|---:|---:|",
            *rows,
            "",
            f"- scoring time, hf-prefix / hf: **{ours['scoring_s'] / hf['scoring_s']:.3f}x** "
            "(target at most 0.6x)",
            f"- peak RSS, hf-prefix / hf: **{ours['peak_rss_mb'] / hf['peak_rss_mb']:.2f}x** "
            "(target at most 1.3x)",
            f"- same decision on {agree['same_decision']}/{agree['questions']} questions; soft "
            f"score |difference| mean {agree['mean_abs_soft_delta']:.1e}, "
            f"max {agree['max_abs_soft_delta']:.1e}",
        ]
    )


def render_full(args, ours: dict) -> str:
    return "\n".join(
        [
            f"Chat template + system prompt, the whole human-written suite, hf-prefix batch "
            f"{ours['batch_size']}, {args.model_label}, {args.dtype}, {datetime.date.today()}, "
            f"{machine()}.",
            "",
            "| questions | requests | scoring (s) | wall (s) | peak RSS (MB) | "
            "other load (cores) |",
            "|---:|---:|---:|---:|---:|---:|",
            f"| {len(ours['questions']):,} | {ours['requests']:,} | {ours['scoring_s']:.1f} | "
            f"{ours['wall_s']:.1f} | {ours['peak_rss_mb']:.0f} | {ours['others_cores']:.2f} |",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if child(argv, run_one):
        return 0

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=20, help="questions per task")
    parser.add_argument("--full", action="store_true", help="hf-prefix alone, every question")
    parser.add_argument("--model", default="", help="HF folder or hub id; default SmolLM2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    # Both at eval_cpu's default batch size.
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument(
        "--max-wait", type=float, default=600, help="seconds to wait for a quiet machine per run"
    )
    args = parser.parse_args(argv)
    if args.model:
        model_dir = args.model
    else:
        from propensity_evals import default_model

        model_dir = str(default_model.smollm2_dir())
    args.model_label = Path(model_dir).name if Path(model_dir).exists() else model_dir
    common = {
        "model_dir": model_dir,
        "device": args.device,
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "limit": None if args.full else args.limit,
    }
    script = str(Path(__file__).resolve())
    if args.full:
        ours = spawn({**common, "model_class": "hf-prefix"}, args.max_wait, script)
        body = render_full(args, ours)
        update_markdown(args.output, "chat-full", body)
    else:
        hf = spawn({**common, "model_class": "hf"}, args.max_wait, script)
        ours = spawn({**common, "model_class": "hf-prefix"}, args.max_wait, script)
        body = render_sample(args, hf, ours)
        update_markdown(args.output, "chat-sample", body)
    print(body)
    print(f"\nwritten to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
