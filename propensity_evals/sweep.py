"""``make sweep``: one eval target over several models and/or revisions, resumable.

Each (model, revision) is one ``make <EVAL_TARGET> MODEL=... REVISION=...`` run (with
``SYSTEM_PROMPTS=none,hhh,...``: each (model, revision, named system prompt)), one after
the other, into its own ``OUTPUT_DIR/<run_name>/`` and one W&B run each, all in one W&B group.
Before running, the sweep asks the same make target for the run's folder and fingerprint
(``PLAN_JSON=1``: the launcher answers without running anything), so the names and the
fingerprint come from the one place that runs it. A run whose folder already holds, for every
requested task, results with that fingerprint and a complete sample log is skipped; a run of a
model whose weights or revision changed under the same name is not. A sweep that stopped
halfway resumes with the rest (and the request cache makes a re-run of a crashed model cheap).
A failed run does not stop the sweep; the failures are listed at the end
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
from dataclasses import dataclass, field
from pathlib import Path

from propensity_evals.catalog import DEFAULT_GROUP, UnknownTaskError, resolve_tasks, tasks_for_mode
from propensity_evals.run_files import incomplete_tasks
from propensity_evals.run_identity import short_hash
from propensity_evals.system_prompts import SystemPromptsError, pick

REPO_ROOT = Path(__file__).resolve().parents[1]
TRUTHY = ("1", "true", "yes", "on")  # as the Makefile's `truthy`


class SweepError(RuntimeError):
    """A sweep request that cannot run as given; the message is one line."""


@dataclass(frozen=True)
class PlannedRun:
    model: str
    revision: str
    name: str  # the run folder, as the launcher names it
    fingerprint: str | None  # None: the model's identity is unknown, never skipped
    system_prompt_name: str = ""  # SYSTEM_PROMPTS: this run's named system prompt
    # What the fingerprint hashes, as the launcher said (a SLURM job logs what changed since).
    inputs: dict = field(default_factory=dict, compare=False, hash=False, repr=False)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run an eval target for each model and revision (see `make help`).",
        epilog="VAR=value arguments are passed to every `make` call unchanged.",
    )
    add = parser.add_argument
    add("--models", default="", help="space-separated hub ids or local folders")
    add("--revisions", default="", help="space-separated revisions, applied to every model")
    add("--eval-target", default="eval_hf", help="the Makefile target run for each model")
    add("--tasks", default=DEFAULT_GROUP)
    add("--limit", default="")
    add("--output-dir", default="data/output")
    add("--label", default="", help="only with a single model")
    add("--chat-template", default="", help="as CHAT_TEMPLATE: 1/true/yes/on = chat format")
    add("--system-prompt", default=os.environ.get("SYSTEM_PROMPT", ""))
    add("--system-prompts", default="", help="as SYSTEM_PROMPTS: names, one run per name")
    add("--system-prompts-file", default="", help="as SYSTEM_PROMPTS_FILE: your own table")
    add("--mode", default="", help="as MODE: loglik (empty) or generate")
    add("--orders", default="", help="as ORDERS: original (empty) or cyclic")
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


def output_dir_of(args: argparse.Namespace) -> Path:
    """OUTPUT_DIR as an absolute path (relative ones are relative to the repository root)."""
    output_dir = Path(args.output_dir).expanduser()
    return output_dir if output_dir.is_absolute() else REPO_ROOT / output_dir


def ask_launcher(
    args: argparse.Namespace, model: str, revision: str, output_dir: Path, system_prompt_name=""
) -> dict:
    """The launcher's plan for one run: ``make <target> ... PLAN_JSON=1`` runs nothing."""
    request = PlannedRun(model, revision, "", None, system_prompt_name)
    command = [*make_command(args, request, output_dir, group=""), "PLAN_JSON=1", "-s"]
    env = dict(os.environ, SYSTEM_PROMPT=args.system_prompt)
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        lines = result.stderr.strip().splitlines() or ["no output"]
        # The launcher's own one-line error, not make's "*** Error 2" trailer after it.
        reason = next((line for line in reversed(lines) if line.startswith("error:")), lines[-1])
        what = model + (f"@{revision}" if revision else "")
        what += f" with system prompt {system_prompt_name}" if system_prompt_name else ""
        raise SweepError(f"cannot plan {what}: {reason}")
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError:
        raise SweepError(f"`make {args.eval_target}` gave no plan: {lines[-1][:200]}") from None


def plan(args: argparse.Namespace) -> list[PlannedRun]:
    """Every (model, revision) of the request, named and fingerprinted by the eval target."""
    output_dir = output_dir_of(args)
    models = args.models.split()
    if not models:
        raise SweepError('MODELS is empty: e.g. make sweep MODELS="org/a org/b" (or MODEL=org/a '
                         'REVISIONS="step1000 step2000")')  # fmt: skip
    if args.label and len(models) > 1:
        raise SweepError("LABEL names a single model's runs: leave it empty with several MODELS")
    revisions = args.revisions.split() or [""]
    runs = []
    for model in models:
        model = absolute_model(model)
        for revision in revisions:
            for prompt in system_prompt_names(args):
                answer = ask_launcher(args, model, revision, output_dir, prompt)
                runs.append(planned_run(model, revision, answer, prompt))
    seen: dict[str, PlannedRun] = {}
    for run in runs:
        if run.name in seen:
            other = seen[run.name]
            if other.model == run.model:  # two named prompts with one (empty) text
                raise SweepError(
                    f"system prompts {other.system_prompt_name} and {run.system_prompt_name} "
                    f"would share the run folder {run.name}: pick only one of them"
                )
            raise SweepError(
                f"{other.model} and {run.model} would share the run folder {run.name}: "
                "give the local folders distinct names"
            )
        seen[run.name] = run
    return runs


def system_prompt_names(args: argparse.Namespace) -> list[str]:
    """SYSTEM_PROMPTS' names, checked here so that a bad one stops the sweep before any plan
    ([""] without it: one run per model and revision, with SYSTEM_PROMPT if any)."""
    try:
        picked = pick(args.system_prompts, args.system_prompts_file)
    except SystemPromptsError as error:
        raise SweepError(str(error)) from None
    if picked and args.system_prompt:
        raise SweepError(
            "SYSTEM_PROMPT and SYSTEM_PROMPTS both set: give one text (SYSTEM_PROMPT) or "
            "names (SYSTEM_PROMPTS), not both"
        )
    return [prompt.name for prompt in picked] or [""]


def missing_tasks(run: PlannedRun, tasks: list[str], output_dir: Path) -> dict[str, str]:
    """The tasks of ``run`` not complete for its fingerprint under ``output_dir``, with why."""
    return incomplete_tasks(Path(output_dir) / run.name, tasks, run.fingerprint)


def runs_to_do(runs: list[PlannedRun], tasks: list[str], output_dir: Path) -> list[PlannedRun]:
    """The planned runs that are not complete for their fingerprint.

    The one place that decides what a sweep still has to run: the local loop, the SLURM
    submission, each SLURM job and `make sweep_status` all ask here.
    """
    return [run for run in runs if missing_tasks(run, tasks, output_dir)]


def requested_tasks(args: argparse.Namespace) -> list[str]:
    """The leaf tasks the sweep's runs will write, in the mode they run in."""
    # As the launcher decides (generate_mode.settle): eval_api always generates.
    mode = args.mode or ("generate" if args.eval_target == "eval_api" else "loglik")
    return resolve_tasks(tasks_for_mode(args.tasks, mode))


def default_group(args: argparse.Namespace) -> str:
    """Stable for one request, so that a resumed sweep logs into the same W&B group."""
    request = [args.models.split(), args.revisions.split(), args.tasks, args.limit, args.label]
    request += [args.chat_template, args.system_prompt, args.eval_target]
    if args.mode:  # only when set, so that existing sweeps keep their group
        request += [args.mode]
    if args.orders:
        request += [f"orders={args.orders}"]
    if args.system_prompts:
        request += [f"system_prompts={args.system_prompts}", args.system_prompts_file]
    return f"sweep-{short_hash(json.dumps(request))}"


def make_command(
    args: argparse.Namespace, run: PlannedRun, output_dir: Path, group: str
) -> list[str]:
    return [
        "make", "--no-print-directory", args.eval_target,
        f"MODEL={run.model}",
        f"REVISION={run.revision}",
        f"LABEL={args.label}",
        f"TASKS={args.tasks}",
        f"LIMIT={args.limit}",
        f"OUTPUT_DIR={output_dir}",
        f"CHAT_TEMPLATE={args.chat_template}",
        f"MODE={args.mode}",
        f"ORDERS={args.orders}",
        # One name per run (it overrides the sweep's list, which MAKEFLAGS carries along).
        f"SYSTEM_PROMPTS={run.system_prompt_name}",
        f"SYSTEM_PROMPTS_FILE={system_prompts_file(args)}",
        f"WANDB_GROUP={group}",
        *args.make_vars,
    ]  # fmt: skip


def system_prompts_file(args: argparse.Namespace) -> str:
    """SYSTEM_PROMPTS_FILE as an absolute path (relative ones are relative to the repository
    root, where the eval targets run), "" when unset."""
    if not args.system_prompts_file.strip():
        return ""
    path = Path(args.system_prompts_file.strip()).expanduser()
    return str(path if path.is_absolute() else REPO_ROOT / path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    output_dir = output_dir_of(args)
    try:
        tasks = requested_tasks(args)
        runs = plan(args)
    except (UnknownTaskError, SweepError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    group = args.wandb_group or default_group(args)
    env = dict(os.environ, SYSTEM_PROMPT=args.system_prompt)
    print(f"sweep: {len(runs)} run(s) of `make {args.eval_target}`, W&B group {group}")
    todo = {run.name: missing_tasks(run, tasks, output_dir) for run in runs}
    todo = {name: missing for name, missing in todo.items() if missing}
    failed: list[str] = []
    ran = 0
    for number, run in enumerate(runs, start=1):
        prefix = f"sweep [{number}/{len(runs)}] {run.name}"
        if run.name not in todo:
            print(f"{prefix}: complete for this model and settings, skipped", flush=True)
            continue
        missing = todo[run.name]
        command = make_command(args, run, output_dir, group)
        first = next(iter(missing.values()))
        print(f"{prefix}: {len(missing)} of {len(tasks)} task(s) to run ({first})", flush=True)
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
        # The run may have resolved a newer commit than the plan did: ask again.
        still = missing_tasks(plan_one(args, run, output_dir), tasks, output_dir)
        seconds = time.monotonic() - started
        if code != 0:
            failed.append(f"{run.name} (make {args.eval_target} exit {code})")
        elif still:
            failed.append(f"{run.name} (finished, but {len(still)} task(s) are incomplete)")
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


def plan_one(args: argparse.Namespace, run: PlannedRun, output_dir: Path) -> PlannedRun:
    answer = ask_launcher(args, run.model, run.revision, output_dir, run.system_prompt_name)
    return planned_run(run.model, run.revision, answer, run.system_prompt_name)


def planned_run(model: str, revision: str, answer: dict, system_prompt_name: str) -> PlannedRun:
    inputs = answer.get("fingerprint_inputs") or {}
    name, fingerprint = answer["run_name"], answer["fingerprint"]
    return PlannedRun(model, revision, name, fingerprint, system_prompt_name, inputs)


if __name__ == "__main__":
    sys.exit(main())
