"""ORDERS=original vs ORDERS=cyclic with ``hf-prefix``: wall time, tokens, agreement.

Three runs of the project's real tasks through ``lm_eval.simple_evaluate``, each in its own
process, with no request cache:

1. ``hf-prefix``, original order;
2. ``hf-prefix``, every cyclic order (``--metadata '{"orders": "cyclic"}'``);
3. stock ``hf`` on a few cyclic questions per task, the reference for every rotation's
   per-option log-likelihoods.

It reports the wall-time ratio (target: at most 1.6x), the context tokens of both runs and
the token floor (every distinct context once, the stem shared by a question's rotations once:
``bench_prefix_sharing.py --count-tokens`` gives the suite-wide numbers), whether the cyclic
run's original-order scores equal the original run's, and the agreement of ``hf-prefix`` with
stock ``hf`` on rotated prompts. The table goes into ``BENCHMARKS.md`` between markers.

    python benchmarks/bench_cyclic_orders.py               # 15 questions per task (~240)
    python benchmarks/bench_cyclic_orders.py --full        # the whole human-written suite
"""

from __future__ import annotations

import argparse
import datetime
import math
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_prefix_sharing import (  # noqa: E402
    DEFAULT_OUTPUT,
    GROUP,
    child,
    evaluate_group,
    machine,
    spawn,
    update_markdown,
)


def run_one(spec: dict) -> dict:
    """One run: per question, every order's log-likelihoods; times and token counts."""
    lm, out, wall_s, scoring_s = evaluate_group(spec, {"orders": spec["orders"]})
    questions, requests, context_tokens, continuation_tokens = {}, 0, 0, 0
    for task, samples in out["samples"].items():
        for sample in samples:
            pairs = [lm._encode_pair(ctx, cont) for ctx, cont in sample["arguments"]]
            requests += len(pairs)
            # Each distinct context once (what identical-context sharing runs).
            context_tokens += sum(len(ctx) for ctx in {tuple(c) for c, _ in pairs})
            continuation_tokens += sum(len(cont) for _, cont in pairs)
            questions[f"{task}/{sample['doc_id']}"] = {
                "lls": [float(resp[0]) for resp in sample["filtered_resps"]],
                "k": len(sample["doc"]["choices"]),
                "target": sample["target"],
            }
    group = out["results"].get(GROUP, {})
    metrics = ("acc", "acc_debiased", "misaligned", "misaligned_debiased", "soft_match_debiased")
    per_task = {
        task: {name: values.get(f"{name},none") for name in metrics}
        for task, values in out["results"].items()
    }
    return {
        **spec,
        "per_task": per_task,
        "wall_s": wall_s,
        "scoring_s": scoring_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "requests": requests,
        "context_tokens": context_tokens,
        "continuation_tokens": continuation_tokens,
        "acc": group.get("acc,none"),
        "acc_debiased": group.get("acc_debiased,none"),
        "questions": questions,
    }


def softmax(lls: list[float]) -> list[float]:
    top = max(lls)
    weights = [math.exp(ll - top) for ll in lls]
    return [weight / sum(weights) for weight in weights]


def original_agreement(original: dict, cyclic: dict) -> tuple[int, int, float]:
    """(questions, same decision, max |soft difference|) of the cyclic run's original order."""
    same, worst = 0, 0.0
    for key, question in original["questions"].items():
        k = question["k"]
        ours = cyclic["questions"][key]["lls"][:k]
        theirs = question["lls"]
        same += ours.index(max(ours)) == theirs.index(max(theirs))
        target = question["target"]
        worst = max(worst, abs(softmax(ours)[target] - softmax(theirs)[target]))
    return len(original["questions"]), same, worst


def stock_agreement(cyclic: dict, stock: dict) -> tuple[int, float, int, int]:
    """(requests, max |log-likelihood difference|, orders, same decision) on the questions
    the stock run scored."""
    count, worst, orders, same = 0, 0.0, 0, 0
    for key, question in stock["questions"].items():
        ours, theirs, k = cyclic["questions"][key]["lls"], question["lls"], question["k"]
        count += len(theirs)
        worst = max(worst, max(abs(a - b) for a, b in zip(ours, theirs, strict=True)))
        for start in range(0, len(theirs), k):
            a, b = ours[start : start + k], theirs[start : start + k]
            orders += 1
            same += a.index(max(a)) == b.index(max(b))
    return count, worst, orders, same


def render(args, original: dict, cyclic: dict, stock: dict) -> str:
    n, same, worst_soft = original_agreement(original, cyclic)
    count, worst_ll, orders, same_orders = stock_agreement(cyclic, stock)
    scope = "full human-written suite" if args.full else f"first {args.limit} questions per task"
    lines = [
        f"Run {datetime.date.today().isoformat()} on {machine()}; model `{args.model_label}` "
        f"(float32, cpu), `hf-prefix` batch {args.batch_size}; {scope}: {n} questions. "
        "Wall = `simple_evaluate`; scoring = inside `loglikelihood`; each run in its own "
        "process, no request cache. Context tokens: each distinct context once.",
        "",
        "| ORDERS | requests | context tokens | continuation tokens | wall (s) | scoring (s) "
        "| acc | acc_debiased | other load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in (original, cyclic):
        debiased = f"{run['acc_debiased']:.4f}" if run["acc_debiased"] is not None else "—"
        lines.append(
            f"| {run['orders']} | {run['requests']:,} | {run['context_tokens']:,} "
            f"| {run['continuation_tokens']:,} | {run['wall_s']:.1f} | {run['scoring_s']:.1f} "
            f"| {run['acc']:.4f} | {debiased} | {run['others_cores']:.2f} |"
        )
    lines += [
        "",
        f"- Wall time cyclic / original: **{cyclic['wall_s'] / original['wall_s']:.3f}x** "
        f"(scoring only {cyclic['scoring_s'] / original['scoring_s']:.3f}x; target <= 1.6x). "
        f"Distinct-context tokens: {cyclic['context_tokens'] / original['context_tokens']:.3f}x.",
        f"- Original order inside the cyclic run vs the original run: same decision on "
        f"{same}/{n} questions, soft score |difference| max {worst_soft:.1e}.",
        f"- Rotated prompts, `hf-prefix` vs stock `hf` ({args.stock_limit} questions per task, "
        f"every order): {count:,} requests, log-likelihood |difference| max {worst_ll:.1e}; "
        f"same decision in {same_orders}/{orders} orders.",
    ]
    lines += [
        "",
        "Raw (original order) vs debiased (mean over every cyclic order) per category, from the "
        "cyclic run; misaligned only where the category has a direction:",
        "",
        "| task | acc | acc_debiased | misaligned | misaligned_debiased |",
        "|---|---:|---:|---:|---:|",
    ]
    for task, values in sorted(cyclic["per_task"].items()):
        cells = [
            "—" if values[name] is None else f"{values[name]:.4f}"
            for name in ("acc", "acc_debiased", "misaligned", "misaligned_debiased")
        ]
        lines.append(f"| {task.replace(GROUP + '_', '')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if child(argv, run_one):
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=15, help="questions per task (sample)")
    parser.add_argument("--full", action="store_true", help="every question (~50 min, 2 CPUs)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--stock-limit", type=int, default=2, help="questions per task for hf")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--max-wait", type=float, default=1800)
    args = parser.parse_args(argv)
    from propensity_evals import default_model

    model_dir = str(default_model.smollm2_dir())
    args.model_label = Path(model_dir).name
    common = {"model_dir": model_dir, "device": "cpu", "dtype": "float32"}
    limit = None if args.full else args.limit
    shared = {**common, "model_class": "hf-prefix", "batch_size": args.batch_size, "limit": limit}
    original = spawn({**shared, "orders": "original"}, args.max_wait, __file__)
    cyclic = spawn({**shared, "orders": "cyclic"}, args.max_wait, __file__)
    stock_spec = {**common, "model_class": "hf", "batch_size": 8, "limit": args.stock_limit}
    stock = spawn({**stock_spec, "orders": "cyclic"}, args.max_wait, __file__)
    body = render(args, original, cyclic, stock)
    update_markdown(args.output, "cyclic-full" if args.full else "cyclic-sample", body)
    print(body)
    print(f"\nwritten to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
