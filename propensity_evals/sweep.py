"""``make sweep``: one eval target over several models and/or revisions, resumable.

Each (model, revision) is one ``make <EVAL_TARGET> MODEL=... REVISION=...`` run, one after
the other, into its own ``OUTPUT_DIR/<run_name>/`` (the launcher's naming, computed here with
the same ``RunSpec``) and one W&B run each, all in one W&B group. A run whose folder already
holds results and complete sample logs for every requested task is skipped, so a sweep that
stopped halfway resumes with the rest (and lm-eval's ``--use_cache`` makes a re-run of a
crashed model cheap). A failed run does not stop the sweep; the failures are listed at the end
and the exit status is non-zero.

Relative paths (models, OUTPUT_DIR) are relative to the repository root, where the eval
targets run. Any other ``VAR=value`` argument goes to every ``make`` call unchanged; under
``make sweep`` the command-line variables reach them through make's own MAKEFLAGS anyway.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from propensity_evals.catalog import HUMAN_GROUP, UnknownTaskError, resolve_tasks
from propensity_evals.report.load import missing_tasks
from propensity_evals.run_naming import RunSpec, short_hash

REPO_ROOT = Path(__file__).resolve().parents[1]
TRUTHY = ("1", "true", "yes", "on")  # as the Makefile's `truthy`


class SweepError(RuntimeError):
    """A sweep request that cannot run as given; the message is one line."""


@dataclass(frozen=True)
class PlannedRun:
    model: str
    revision: str
    spec: RunSpec

    @property
    def name(self) -> str:
        return self.spec.run_name


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run an eval target for each model and revision (see `make help`).",
        epilog="VAR=value arguments are passed to every `make` call unchanged.",
    )
    add = parser.add_argument
    add("--models", default="", help="space-separated hub ids or local folders")
    add("--revisions", default="", help="space-separated revisions, applied to every model")
    add("--eval-target", default="eval_hf", help="the Makefile target run for each model")
    add("--tasks", default=HUMAN_GROUP)
    add("--limit", default="")
    add("--output-dir", default="data/output")
    add("--label", default="", help="only with a single model")
    add("--chat-template", default="", help="as CHAT_TEMPLATE: 1/true/yes/on = chat format")
    add("--system-prompt", default=os.environ.get("SYSTEM_PROMPT", ""))
    add("--wandb-group", default="", help="default: sweep-<hash of the request>")
    add("--dry-run", action="store_true", help="print the plan, run nothing")
    add("make_vars", nargs="*", metavar="VAR=value")
    args = parser.parse_args(argv)
    for assignment in args.make_vars:
        if "=" not in assignment or not assignment.split("=", 1)[0].strip():
            parser.error(f"{assignment!r} is not a VAR=value make variable")
    return args


def absolute_model(model: str) -> str:
    """A local folder as an absolute path (make runs in the repository root); a hub id as is."""
    path = Path(model).expanduser()
    candidate = path if path.is_absolute() else REPO_ROOT / path
    return str(candidate.resolve()) if candidate.exists() else model


def plan(args: argparse.Namespace) -> list[PlannedRun]:
    models = args.models.split()
    if not models:
        raise SweepError('MODELS is empty: e.g. make sweep MODELS="org/a org/b" (or MODEL=org/a '
                         'REVISIONS="step1000 step2000")')  # fmt: skip
    if args.label and len(models) > 1:
        raise SweepError("LABEL names a single model's runs: leave it empty with several MODELS")
    revisions = args.revisions.split() or [""]
    chat = args.chat_template.strip().lower() in TRUTHY
    runs = []
    for model in models:
        model = absolute_model(model)
        for revision in revisions:
            spec = RunSpec(
                model=model,
                revision=revision,
                limit=str(args.limit).strip(),
                prompt_format="chat" if chat else "plain",
                system_prompt=args.system_prompt,
                tasks=args.tasks,
                label=args.label or model,
            )
            runs.append(PlannedRun(model, revision, spec))
    seen: dict[str, str] = {}
    for run in runs:
        if run.name in seen:
            raise SweepError(
                f"{seen[run.name]} and {run.model} would share the run folder {run.name}: "
                "give the local folders distinct names"
            )
        seen[run.name] = run.model
    return runs


def default_group(args: argparse.Namespace) -> str:
    """Stable for one request, so that a resumed sweep logs into the same W&B group."""
    request = [args.models.split(), args.revisions.split(), args.tasks, args.limit, args.label]
    request += [args.chat_template, args.system_prompt, args.eval_target]
    return f"sweep-{short_hash(json.dumps(request))}"


def runs_to_do(runs: list[PlannedRun], tasks: list[str], output_dir: Path) -> list[PlannedRun]:
    """The planned runs whose folder does not yet hold every requested task in full.

    The one place that decides what a sweep still has to run: the local loop, the SLURM
    submission and `make sweep_status` all ask here.
    """
    return [run for run in runs if missing_tasks(Path(output_dir) / run.name, tasks)]


def make_command(args, run: PlannedRun, output_dir: Path, group: str) -> list[str]:
    return [
        "make", "--no-print-directory", args.eval_target,
        f"MODEL={run.model}",
        f"REVISION={run.revision}",
        f"LABEL={args.label}",
        f"TASKS={args.tasks}",
        f"LIMIT={args.limit}",
        f"OUTPUT_DIR={output_dir}",
        f"CHAT_TEMPLATE={args.chat_template}",
        f"WANDB_GROUP={group}",
        *args.make_vars,
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        tasks = resolve_tasks(args.tasks)
        runs = plan(args)
    except (UnknownTaskError, SweepError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    output_dir = Path(args.output_dir).expanduser()
    output_dir = output_dir if output_dir.is_absolute() else REPO_ROOT / output_dir
    group = args.wandb_group or default_group(args)
    env = dict(os.environ, SYSTEM_PROMPT=args.system_prompt)
    print(f"sweep: {len(runs)} run(s) of `make {args.eval_target}`, W&B group {group}")
    failed: list[str] = []
    ran = 0
    pending = runs_to_do(runs, tasks, output_dir)
    for number, run in enumerate(runs, start=1):
        prefix = f"sweep [{number}/{len(runs)}] {run.name}"
        if run not in pending:
            print(f"{prefix}: complete, skipped", flush=True)
            continue
        todo = missing_tasks(output_dir / run.name, tasks)
        command = make_command(args, run, output_dir, group)
        print(f"{prefix}: {len(todo)} of {len(tasks)} task(s) to run", flush=True)
        if args.dry_run:
            print("  " + shlex.join(command), flush=True)
            continue
        started = time.monotonic()
        ran += 1
        try:
            code = subprocess.call(command, cwd=REPO_ROOT, env=env)
        except KeyboardInterrupt:
            print(f"{prefix}: interrupted; run the sweep again to resume", file=sys.stderr)
            return 130
        seconds = time.monotonic() - started
        if code != 0:
            failed.append(f"{run.name} (make {args.eval_target} exit {code})")
        elif runs_to_do([run], tasks, output_dir):
            failed.append(f"{run.name} (finished, but its folder is still incomplete)")
        else:
            print(f"{prefix}: done in {seconds:.0f} s", flush=True)
    if failed:
        print(
            f"sweep: {len(failed)} of {len(runs)} run(s) failed: {'; '.join(failed)}; "
            "run the same sweep again to retry them (complete runs are skipped)",
            file=sys.stderr,
        )
        return 1
    if args.dry_run:
        print("sweep: dry run, nothing was run")
        return 0
    print(f"sweep: all {len(runs)} run(s) complete ({ran} run now) under {output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
