"""Check an eval request, then run lm-eval on it: what every ``make eval_*`` target calls.

Everything a user can get wrong is checked here first and answered in one line (lm-eval
itself spends ~13 s loading before it notices an unknown task, then prints a traceback):
MODEL unset or not found, unknown task, data missing or modified, chat mode on a model
without a chat template, flash-attn missing, a few-shot request. Then it composes the
lm-eval command (printed before it runs, so a run is reproducible by hand):

- output into ``OUTPUT_DIR/<run_name>/`` (model, revision, prompt mode, sample size), with a
  ``run_info.json`` beside lm-eval's results and per-sample logs;
- ``--use_cache data/cache/<run_name>`` so a crashed run resumes where it stopped;
- W&B logging named after the run; with no W&B login it logs offline (never prompts) and
  prints how to sync later;
- plain mode separates a system prompt from ``Human:`` by a blank line (lm-eval glues them).
"""

from __future__ import annotations

import argparse
import importlib.util
import netrc
import os
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

from propensity_evals import default_model
from propensity_evals.anthropic_data import DATASET_DIR_NAME, missing_or_modified
from propensity_evals.catalog import UnknownTaskError, resolve_tasks, task_files
from propensity_evals.run_naming import RunSpec
from propensity_evals.task_docs import DATA_DIR_ENV, FETCH_HINT, resolve_data_dir

REPO_ROOT = Path(__file__).resolve().parents[1]
TASKS_DIR = REPO_ROOT / "lm_eval_tasks"
# lm-eval's command line with our model classes registered (hf-prefix); accelerate launches the
# same module once per GPU.
LM_EVAL_MODULE = "propensity_evals.lm_eval_entry"
ACCELERATE_LAUNCH = [sys.executable, "-m", "accelerate.commands.launch"]


class LaunchError(RuntimeError):
    """A request that cannot run as given; the message is one line that says what to do."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run the propensity tasks with lm-eval (see `make help`).",
        epilog="Arguments after `--` go to lm-eval unchanged (EXTRA_ARGS).",
    )
    add = parser.add_argument
    add("--model", default="", help="hub id or local folder; empty = the embedded default")
    add("--allow-default-model", action="store_true", help="empty --model means SmolLM2")
    add("--revision", default="")
    add("--label", default="", help="name for folders and W&B instead of the model's")
    add("--tasks", default="anthropic_propensity_human_written")
    add("--limit", default="", help="questions per task (a sample run, labelled as such)")
    add("--batch-size", default="8")
    add("--device", default="", help="cuda, mps or cpu; empty with --parallelize")
    add("--model-args", default="", help="extra model_args, e.g. dtype=bfloat16")
    add(
        "--backend",
        default="hf-prefix",
        help="lm-eval model type: hf-prefix (default: hf scoring each context once), hf, vllm",
    )
    add("--chat", action="store_true", help="apply the model's chat template")
    add("--system-prompt", default="")
    add("--output-dir", default="data/output")
    add("--cache-dir", default="data/cache", help="empty: no lm-eval request cache")
    add("--wandb-project", default="Pretraining-Alignment-Evals-HF")
    add("--wandb-entity", default="")
    add("--wandb-group", default="")
    add("--wandb-mode", default="", help="online, offline or disabled; empty: by login")
    add("--num-gpus", type=int, default=1, help=">1: data parallel via accelerate launch")
    add("--dry-run", action="store_true", help="check and print the command, run nothing")
    add("extra", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    args.extra = [arg for arg in args.extra if arg != "--"]
    return args


def resolve_model(args: argparse.Namespace) -> tuple[str, str]:
    """(what lm-eval loads, the label folders and W&B show)."""
    model = args.model.strip()
    if not model:
        if not args.allow_default_model:
            raise LaunchError(
                "MODEL is required, e.g. `make eval_hf MODEL=HuggingFaceTB/SmolLM2-135M`"
            )
        try:
            return str(default_model.smollm2_dir()), args.label or default_model.SMOLLM2_NAME
        except default_model.ModelError as error:
            raise LaunchError(str(error)) from None
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file() and "gguf_file=" not in args.model_args:
            raise LaunchError(f"{model} has no config.json: not a Hugging Face model folder")
        if args.revision:
            print(
                f"note: REVISION={args.revision} only labels this run: a local folder holds one "
                "set of weights (transformers ignores revision for it)",
                file=sys.stderr,
            )
        return str(path), args.label or model
    # A hub id is "name" or "org/name"; anything else that does not exist is a bad path.
    if model.startswith(("/", ".", "~")) or model.count("/") > 1:
        raise LaunchError(f"model path {model} not found: pass an existing folder or a hub id")
    return model, args.label or model


def check_data(tasks: list[str]) -> None:
    data_dir = resolve_data_dir(REPO_ROOT / "data")
    files = task_files()
    bad = missing_or_modified(data_dir, [files[task] for task in tasks])
    if bad:
        where = data_dir / DATASET_DIR_NAME
        raise LaunchError(
            f"{len(bad)} data file(s) missing or modified under {where} (first: {bad[0]}); "
            f"{FETCH_HINT}, or point ${DATA_DIR_ENV} at a verified copy"
        )


def check_extra_args(extra: list[str]) -> None:
    for index, arg in enumerate(extra):
        if arg.startswith("--num_fewshot"):
            value = (
                arg.split("=", 1)[1] if "=" in arg else (extra[index + 1 : index + 2] or [""])[0]
            )
            if value.strip() not in ("0", ""):
                raise LaunchError(
                    "these tasks are zero-shot (as in the paper); --num_fewshot would be ignored "
                    "by lm-eval, so remove it"
                )


def check_chat_template(model: str, revision: str) -> None:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model, revision=revision or None)
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error)
        raise LaunchError(f"cannot load the tokenizer of {model}: {first_line}") from None
    if not getattr(tokenizer, "chat_template", None):
        raise LaunchError(
            f"{model} has no chat template (a base model?): run it without CHAT_TEMPLATE=1"
        )


def check_backend(backend: str) -> None:
    if backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise LaunchError(
            "vllm is not installed: `pip install -r requirements-vllm.txt` in a CUDA environment"
        )


def check_attention(model_args: str) -> None:
    wants_flash = "attn_implementation=flash_attention_2" in model_args
    if wants_flash and importlib.util.find_spec("flash_attn") is None:
        raise LaunchError(
            "flash-attn is not installed: `pip install --no-build-isolation -r "
            "requirements-cuda.txt`, or fall back with ATTN=sdpa"
        )


def wandb_logged_in() -> bool:
    """True if W&B has a key without asking: $WANDB_API_KEY or a netrc entry for its host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def choose_wandb_mode(requested: str) -> str:
    mode = requested or os.environ.get("WANDB_MODE", "")
    if mode in ("disabled", "offline", "online", "dryrun"):
        return "offline" if mode == "dryrun" else mode
    if mode:
        raise LaunchError(f"WANDB_MODE={mode!r}: use online, offline or disabled")
    if wandb_logged_in():
        return "online"
    print(
        "W&B: not logged in, so this run logs offline (no prompt); "
        "upload later with `wandb sync` (command printed at the end), or `wandb login` first.",
        file=sys.stderr,
    )
    return "offline"


def model_args_for(args: argparse.Namespace, model: str) -> str:
    parts = [f"pretrained={model}"]
    if args.revision:
        parts.append(f"revision={args.revision}")
    if args.model_args:
        parts.append(args.model_args)
    return ",".join(parts)


def build_command(args: argparse.Namespace, model: str, spec: RunSpec, wandb_mode: str):
    run_dir = Path(args.output_dir) / spec.run_name
    entry = [sys.executable, "-m", LM_EVAL_MODULE]
    if args.num_gpus > 1:
        launcher = [*ACCELERATE_LAUNCH, "--multi_gpu", "--num_processes", str(args.num_gpus)]
        entry = [*launcher, "-m", LM_EVAL_MODULE]
    command = [
        *entry,
        "run",
        "--model", args.backend,
        "--model_args", model_args_for(args, model),
        "--include_path", str(TASKS_DIR),
        "--tasks", args.tasks,
        "--batch_size", str(args.batch_size),
        "--output_path", str(run_dir),
        "--log_samples",
    ]  # fmt: skip
    if args.device:
        command += ["--device", args.device]
    if args.limit:
        command += ["--limit", str(args.limit)]
    if args.cache_dir:
        command += ["--use_cache", str(Path(args.cache_dir) / spec.run_name)]
    if args.chat:
        command += ["--apply_chat_template", "--metadata", '{"prompt_format": "chat"}']
    if args.system_prompt:
        # Outside chat mode lm-eval concatenates the system text and the prompt directly.
        separator = "" if args.chat else "\n\n"
        command += ["--system_instruction", args.system_prompt.rstrip() + separator]
    if wandb_mode != "disabled":
        wandb_args = f"project={args.wandb_project},name={spec.run_name},job_type=eval"
        if args.wandb_entity:
            wandb_args += f",entity={args.wandb_entity}"
        if args.wandb_group:
            wandb_args += f",group={args.wandb_group}"
        command += ["--wandb_args", wandb_args]
    return command + args.extra


def prepare(args: argparse.Namespace) -> tuple[list[str], RunSpec, str]:
    model, label = resolve_model(args)
    try:
        tasks = resolve_tasks(args.tasks)
    except UnknownTaskError as error:
        raise LaunchError(str(error)) from None
    check_data(tasks)
    check_extra_args(args.extra)
    check_backend(args.backend)
    check_attention(args.model_args)
    if args.chat:
        check_chat_template(model, args.revision)
    wandb_mode = choose_wandb_mode(args.wandb_mode)
    spec = RunSpec(
        model=model,
        revision=args.revision,
        limit=str(args.limit),
        prompt_format="chat" if args.chat else "plain",
        system_prompt=args.system_prompt,
        tasks=args.tasks,
        label=label,
    )
    return build_command(args, model, spec, wandb_mode), spec, wandb_mode


def latest_offline_run(wandb_dir: Path) -> Path | None:
    runs = sorted(wandb_dir.glob("offline-run-*"), key=lambda path: path.stat().st_mtime)
    return runs[-1] if runs else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        command, spec, wandb_mode = prepare(args)
    except LaunchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("+ " + shlex.join(command), flush=True)
    if args.dry_run:
        return 0
    run_dir = spec.write(Path(args.output_dir))
    env = dict(os.environ, WANDB_MODE=wandb_mode) if wandb_mode != "disabled" else None
    returncode = subprocess.call(command, env=env)
    if returncode == 0:
        print(f"results and per-sample logs: {run_dir}")
        offline = latest_offline_run(Path(os.environ.get("WANDB_DIR", ".")) / "wandb")
        if wandb_mode == "offline" and offline:
            print(f"W&B run saved offline; upload it with: wandb sync {offline}")
    return returncode


if __name__ == "__main__":
    sys.exit(main())
