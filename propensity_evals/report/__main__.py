"""``python -m propensity_evals.report --output-dir data/output [--baseline RUN] [--wandb]``.

Writes ``OUTPUT_DIR/report/``: ``report.md``, ``scores.csv``, ``comparisons.csv``
(``system_prompts.csv`` when runs differ only in their system prompt) and the PNG charts. Any
input it cannot use is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from propensity_evals.report import plots, tables
from propensity_evals.report.load import REPORT_DIR_NAME, ReportError, discover
from propensity_evals.report.summary import build

OWN_FILES = ("report.md", "scores.csv", "comparisons.csv", "system_prompts.csv", "*.png")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Compare the eval runs under OUTPUT_DIR.")
    add = parser.add_argument
    add("--output-dir", default="data/output", help="where the eval runs are (OUTPUT_DIR)")
    add("--baseline", default="", help="run name every other run is compared against")
    add("--wandb", action="store_true", help="also log the tables and charts to W&B")
    add("--wandb-project", default="Pretraining-Alignment-Evals-HF")
    add("--wandb-entity", default="")
    add("--wandb-mode", default="", help="online, offline or disabled; empty: by login")
    add("--wandb-group", default="")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    output_dir = Path(args.output_dir)
    try:
        runs, notes = discover(output_dir)
        report = build(runs, output_dir, args.baseline.strip() or None, notes)
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = output_dir / REPORT_DIR_NAME
    out.mkdir(parents=True, exist_ok=True)
    for pattern in OWN_FILES:  # a chart that no longer applies must not linger
        for stale in out.glob(pattern):
            stale.unlink()
    charts = {run_set.index: plots.draw(run_set, out) for run_set in report.sets}
    tables.write_markdown(report, out / "report.md", charts)
    scores = tables.scores_table(report)
    comparisons = tables.comparisons_table(report)
    tables.write_csv(out / "scores.csv", *scores)
    tables.write_csv(out / "comparisons.csv", *comparisons)
    system_prompts = tables.system_prompts_table(report)
    if system_prompts[1]:
        tables.write_csv(out / "system_prompts.csv", *system_prompts)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"report: {out / 'report.md'} ({len(runs)} runs, {len(report.sets)} comparable set(s))")
    if args.wandb:
        from propensity_evals.report.wandb_log import WandbError, log_report

        images = [chart for group in charts.values() for chart in group]
        try:
            log_report(
                {"scores": scores, "comparisons": comparisons}
                | ({"system_prompts": system_prompts} if system_prompts[1] else {}),
                images,
                project=args.wandb_project,
                entity=args.wandb_entity,
                mode=args.wandb_mode,
                group=args.wandb_group,
            )
        except WandbError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
