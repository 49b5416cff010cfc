"""Check an eval request, then run lm-eval on it: what every ``make eval_*`` target calls.

Everything a user can get wrong is checked here first and answered in one line (lm-eval
itself spends ~13 s loading before it notices an unknown task, then prints a traceback):
MODEL unset or not found, unknown task, data missing or modified, chat mode on a model
without a chat template (or on a reasoning model's, with a model class that would score inside
its open thinking block), flash-attn missing, a few-shot request. Then it composes the
lm-eval command (printed before it runs, so a run is reproducible by hand):

- output into ``OUTPUT_DIR/<run_name>/`` (model, revision, prompt mode, sample size), with a
  ``run_info.json`` beside lm-eval's results and per-sample logs;
- ``--use_cache data/cache/<run_name>`` so a crashed run resumes where it stopped;
- W&B logging named after the run; with no W&B login it logs offline (never prompts) and
  prints how to sync later;
- plain mode separates a system prompt from ``Human:`` by a blank line (lm-eval glues them);
  ``SYSTEM_PROMPTS=name`` takes a named one (``propensity_evals/system_prompts.py``);
- ``MODE=generate`` runs the ``_gen`` twins of the tasks, with MAX_GEN_TOKS passed as
  ``--gen_kwargs``; ``make eval_api`` runs them on a model behind an OpenAI-compatible server
  (the API key stays in the environment, as ``OPENAI_API_KEY``, and is never written anywhere).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
from collections import deque
from datetime import datetime
from pathlib import Path

from propensity_evals import default_model
from propensity_evals.anthropic_data import DATASET_DIR_NAME, missing_or_modified
from propensity_evals.audit import relabels_sha256
from propensity_evals.backend_choice import (
    DEFAULT_BACKEND,
    STOCK_BACKEND,
    BackendChoiceError,
    choose_backend,
    read_config,
)
from propensity_evals.catalog import DEFAULT_GROUP, UnknownTaskError, resolve_tasks, task_files
from propensity_evals.chat_rendering import CLOSING_BACKENDS
from propensity_evals.code_identity import code_identity, pack_label
from propensity_evals.directions import DirectionsError, load_directions, table_sha256
from propensity_evals.generate_mode import GenerateModeError, ModeSettings, settle
from propensity_evals.generation import API_BACKEND, THINK_OPENED_KEY
from propensity_evals.headline import summary, upstream_label_note
from propensity_evals.hygiene import exclusions_sha256
from propensity_evals.option_orders import ORDERS
from propensity_evals.prompts import CLOSED_BY_PACK, system_instruction, thinking_closure
from propensity_evals.run_files import STAGING_PREFIX
from propensity_evals.run_identity import (
    FINGERPRINT_KEY,
    LOADED_WITH,
    MODEL_IDENTITY_KEY,
    RunSpec,
    api_model_identity,
    loaded_with_identity,
    model_identity,
    model_identity_digest,
    unknown_part,
)
from propensity_evals.shared_scoring import PER_OPTION, scoring_of_run
from propensity_evals.system_prompts import SystemPromptsError, pick
from propensity_evals.task_docs import DATA_DIR_ENV, FETCH_HINT, resolve_data_dir
from propensity_evals.wandb_mode import WandbModeError, choose_wandb_mode

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
    add("--tasks", default=DEFAULT_GROUP)
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
    add("--no-chat", action="store_true", help="never apply it (CHAT_TEMPLATE=0)")
    add("--mode", default="", help="loglik (default) or generate (the _gen tasks)")
    add("--max-gen-toks", default="", help="generate mode: most tokens per reply")
    add("--orders", default="", help="original (default) or cyclic (every order of the options)")
    add("--base-url", default="", help="the chat API's root, e.g. http://host:8000/v1")
    add("--system-prompt", default="")
    add("--system-prompts", default="", help="a named system prompt (system_prompts.csv)")
    add("--system-prompts-file", default="", help="your own table of named system prompts")
    add("--directions", default="", help="a direction table (CSV); empty: the pack's own")
    add("--output-dir", default="data/output")
    add("--cache-dir", default="data/cache", help="empty: no lm-eval request cache")
    add("--wandb-project", default="Pretraining-Alignment-Evals-HF")
    add("--wandb-entity", default="")
    add("--wandb-group", default="")
    add("--wandb-mode", default="", help="online, offline or disabled; empty: by login")
    add("--num-gpus", type=int, default=1, help=">1: data parallel via accelerate launch")
    add("--dry-run", action="store_true", help="check and print the command, run nothing")
    add(
        "--plan-json",
        action="store_true",
        help="print the run's folder and fingerprint as one JSON line and exit (for the sweep)",
    )
    add("extra", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    args.extra = [arg for arg in args.extra if arg != "--"]
    return args


def resolve_model(args: argparse.Namespace) -> tuple[str, str]:
    """(what lm-eval loads, the label folders and W&B show)."""
    model = args.model.strip()
    if args.backend == API_BACKEND:
        if not model:
            raise LaunchError(
                "MODEL is required: the server's name for the model, e.g. make eval_api "
                "MODEL=name BASE_URL=http://localhost:8000/v1"
            )
        return model, args.label or model
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


def check_chat_template(model: str, revision: str) -> str:
    """Refuses a model without a chat template; returns how its thinking block is closed
    (:func:`propensity_evals.prompts.thinking_closure`, "" for none)."""
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
    return thinking_closure(tokenizer)


def check_thinking_backend(model: str, backend: str, closure: str) -> None:
    """Log-likelihood chat mode on a reasoning model needs a model class that closes its
    thinking block; lm-eval's own (hf, vllm) would score the options inside it."""
    if not closure or backend in CLOSING_BACKENDS:
        return
    where = (
        "opens a thinking block (<think>) in its generation prompt"
        if closure == CLOSED_BY_PACK
        else "leaves the model to think unless told enable_thinking=False"
    )
    raise LaunchError(
        f"{model}'s chat template {where}: BACKEND={backend} would score the options where the "
        "model starts to reason; use BACKEND=hf-prefix (scores them after a closed, empty "
        "<think></think>) or MODE=generate (lets the model think, then reads its answer)"
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


def model_args_for(args: argparse.Namespace, model: str, spec: RunSpec) -> str:
    if args.backend == API_BACKEND:
        # lm-eval reads the key from OPENAI_API_KEY itself: it never enters the command.
        parts = [f"model={model}", f"base_url={args.settings.endpoint}"]
        return ",".join([*parts, args.model_args] if args.model_args else parts)
    parts = [f"pretrained={model}"]
    # A hub model is loaded at the commit its revision resolved to, so that the weights scored
    # are the ones the fingerprint names even if the branch moves during the run.
    revision = spec.identity.get("commit") or args.revision
    if revision:
        parts.append(f"revision={revision}")
    if args.model_args:
        parts.append(args.model_args)
    return ",".join(parts)


def lm_eval_model_args(model_args: str, extra: list[str]) -> dict:
    """The model arguments lm-eval will use: ours, then any ``--model_args`` in EXTRA_ARGS,
    merged by lm-eval's own argparse action (later keys win)."""
    from lm_eval._cli.utils import MergeDictAction

    parser = _RaisingParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    parser.add_argument("--model_args", "-a", nargs="+", action=MergeDictAction, default=None)
    argv = ["--model_args", model_args] if model_args else []
    try:
        known, _ = parser.parse_known_args([*argv, *extra])
    except (ValueError, argparse.ArgumentError) as error:
        raise LaunchError(
            f"EXTRA_ARGS: {error}; write them as --model_args key=value, e.g. peft=/path/adapter"
        ) from None
    return known.model_args or {}


class _RaisingParser(argparse.ArgumentParser):
    """Raises instead of printing its usage and exiting: the launcher answers in one line."""

    def error(self, message: str):
        raise ValueError(message)


def model_identity_of(args: argparse.Namespace, model: str) -> dict:
    """The model's identity, with the files it is loaded with (tokenizer=, peft=, delta=)."""
    if args.backend == API_BACKEND:
        return api_model_identity(model, args.settings.base_url)
    identity = model_identity(model, args.revision)
    # lm-eval loads them at the revision it loads the model at: the commit model_args_for pins.
    revision = identity.get("commit") or args.revision
    loaded_with = loaded_with_identity(lm_eval_model_args(args.model_args, args.extra), revision)
    return identity | {LOADED_WITH: loaded_with} if loaded_with else identity


def cache_path(args: argparse.Namespace, spec: RunSpec) -> Path | None:
    """lm-eval's request cache, keyed by the run's request fingerprint (lm-eval's own key
    hashes only the request text); None without a cache folder or when the model's identity is
    unknown."""
    if not args.cache_dir or spec.request_fingerprint is None:
        return None
    return Path(args.cache_dir) / spec.request_fingerprint[:32]


def run_metadata(spec: RunSpec) -> str:
    """--metadata: lm-eval copies it into every task's config in the results file, and hands
    it to the dataset loader (which reads prompt_format)."""
    directions = {"directions": spec.directions} if spec.directions else {}
    think = {THINK_OPENED_KEY: True} if spec.prompt_opens_think else {}
    return json.dumps(
        {
            **directions,
            **think,
            "directions_sha256": spec.directions_sha256,
            "prompt_format": spec.prompt_format,
            **({"orders": spec.orders} if spec.orders != "original" else {}),
            FINGERPRINT_KEY: spec.fingerprint or "",
            MODEL_IDENTITY_KEY: model_identity_digest(spec.identity),
        }
    )


def build_command(
    args: argparse.Namespace, model: str, spec: RunSpec, wandb_mode: str, output_path: Path
) -> list[str]:
    entry = [sys.executable, "-m", LM_EVAL_MODULE]
    if args.num_gpus > 1:
        launcher = [*ACCELERATE_LAUNCH, "--multi_gpu", "--num_processes", str(args.num_gpus)]
        entry = [*launcher, "-m", LM_EVAL_MODULE]
    command = [
        *entry,
        "run",
        "--model", spec.backend,
        "--model_args", model_args_for(args, model, spec),
        "--include_path", str(TASKS_DIR),
        "--tasks", args.tasks,
        "--batch_size", str(args.batch_size),
        "--output_path", str(output_path),
        "--log_samples",
        "--metadata", run_metadata(spec),
    ]  # fmt: skip
    if args.device:
        command += ["--device", args.device]
    if args.limit:
        command += ["--limit", str(args.limit)]
    if spec.mode == "generate":
        command += ["--gen_kwargs", f"max_gen_toks={spec.max_gen_toks}"]
    cache = cache_path(args, spec)
    if cache is not None:
        command += ["--use_cache", str(cache)]
    if args.chat:
        command += ["--apply_chat_template"]
    instruction = system_instruction(args.system_prompt, args.chat)
    if instruction:
        command += ["--system_instruction", instruction]
    if wandb_mode != "disabled":
        wandb_args = f"project={args.wandb_project},name={spec.run_name},job_type=eval"
        if args.wandb_entity:
            wandb_args += f",entity={args.wandb_entity}"
        if args.wandb_group:
            wandb_args += f",group={args.wandb_group}"
        command += ["--wandb_args", wandb_args]
        config = f"{FINGERPRINT_KEY}={spec.fingerprint or 'unknown'}"
        config += f",thinking_closure={spec.thinking_closure or 'none'}"
        # Quoted: lm-eval would read a version such as 2.5 as a number.
        config += f",pack_version='{pack_label(spec.code)}'"
        for library, version in (spec.code.get("libraries") or {}).items():
            config += f",{library}_version='{version}'"
        if spec.system_prompt_name:
            config += f",system_prompt={spec.system_prompt_name}"
        command += ["--wandb_config_args", config]
    return command + args.extra


def check_directions(path: str) -> str:
    """The direction table's absolute path ("" for the pack's own), refused if unusable."""
    if not path:
        return ""
    try:
        load_directions(Path(path).expanduser())
    except DirectionsError as error:
        raise LaunchError(str(error)) from None
    return str(Path(path).expanduser().resolve())


def check_orders(orders: str, mode: str) -> str:
    """ORDERS as the run uses it: original (default) or cyclic, log-likelihood mode only."""
    orders = orders.strip() or "original"
    if orders not in ORDERS:
        raise LaunchError(f"ORDERS={orders} is unknown: use {' or '.join(ORDERS)}")
    if orders != "original" and mode != "loglik":
        raise LaunchError(
            "ORDERS=cyclic reorders the options the model scores; a generated answer is read, "
            "not scored: drop ORDERS or MODE=generate"
        )
    return orders


def settle_system_prompt(args: argparse.Namespace) -> None:
    """SYSTEM_PROMPTS (one name per run) -> its text and name, written back into ``args``."""
    args.system_prompt_name = ""
    try:
        picked = pick(args.system_prompts, args.system_prompts_file)
    except SystemPromptsError as error:
        raise LaunchError(str(error)) from None
    if not picked:
        return
    if len(picked) > 1:
        raise LaunchError(
            f"SYSTEM_PROMPTS={args.system_prompts} names {len(picked)} prompts: one run takes "
            "one; run them all with `make sweep SYSTEM_PROMPTS=...` (one run per prompt)"
        )
    if args.system_prompt:
        raise LaunchError(
            "SYSTEM_PROMPT and SYSTEM_PROMPTS both set: give the text (SYSTEM_PROMPT) or a name "
            "(SYSTEM_PROMPTS), not both"
        )
    args.system_prompt, args.system_prompt_name = picked[0].text, picked[0].name


def settle_mode(args: argparse.Namespace, model: str) -> None:
    """MODE's decisions (generate_mode.settle), written back into ``args`` so that the plan,
    the checks, the spec and the command all see the same tasks and prompt format."""
    try:
        # The model class, chosen once (it reads the model's config): a masked LM gets hf-mlm,
        # generate mode stock hf; a masked LM asked to write is refused here, before generate
        # mode reads its context length. (eval_api's backend is never replaced.)
        # The model's config.json, read once: the class choice and hf-prefix's scoring path
        # (run_spec) both need it; a server's model (eval_api, vllm) is never looked up.
        looked_up = args.backend in (DEFAULT_BACKEND, STOCK_BACKEND)
        args.model_config = read_config(model, args.revision) if looked_up else None
        args.chosen_backend = choose_backend(
            args.backend, model, args.revision, args.mode.strip() or "loglik", args.model_config
        )
    except BackendChoiceError as error:
        raise LaunchError(str(error)) from None
    try:
        settings = settle(
            model=model,
            revision=args.revision,
            backend=args.backend,
            tasks=args.tasks,
            mode=args.mode,
            chat=args.chat,
            no_chat=args.no_chat,
            max_gen_toks=str(args.max_gen_toks),
            base_url=args.base_url,
            model_args=args.model_args,
        )
    except (GenerateModeError, UnknownTaskError) as error:
        raise LaunchError(str(error)) from None
    args.settings: ModeSettings = settings
    args.tasks, args.chat = settings.tasks, settings.chat


def loglik_chat_closure(args: argparse.Namespace, model: str) -> str:
    """How the chat prompt's thinking block is closed (prompts.thinking_closure): only in
    log-likelihood chat mode. Generate mode lets the model think; the chat API's template is
    the server's."""
    if not args.chat or args.backend == API_BACKEND:
        return ""
    closure = check_chat_template(model, args.revision)
    return closure if args.settings.mode == "loglik" else ""


def run_spec(args: argparse.Namespace, model: str, label: str, closure: str = "") -> RunSpec:
    directions = check_directions(args.directions)
    settings = args.settings
    return RunSpec(
        model=model,
        revision=args.revision,
        limit=str(args.limit).strip(),
        prompt_format="chat" if args.chat else "plain",
        system_prompt=args.system_prompt,
        system_prompt_name=args.system_prompt_name,
        tasks=args.tasks,
        label=label,
        backend=args.chosen_backend,  # settle_mode's choice (README: Encoder models)
        model_args=args.model_args,
        device=args.device,
        extra_args=list(args.extra),
        identity=model_identity_of(args, model),
        directions=directions,
        directions_sha256=table_sha256(directions or None),
        relabels_sha256=relabels_sha256(),
        exclusions_sha256=exclusions_sha256(),
        mode=settings.mode,
        orders=check_orders(args.orders, settings.mode),
        max_gen_toks=settings.max_gen_toks,
        prompt_opens_think=settings.prompt_opens_think,
        thinking_closure=closure,
        scoring=(
            scoring_of_run(args.model_config, lm_eval_model_args(args.model_args, args.extra))
            if args.chosen_backend == DEFAULT_BACKEND
            else ""
        ),
        code=code_identity(args.chosen_backend),
    )


def plan(args: argparse.Namespace) -> dict:
    """What the sweep needs to know before it runs (or skips) this request."""
    model, label = resolve_model(args)
    settle_system_prompt(args)
    settle_mode(args, model)
    try:
        tasks = resolve_tasks(args.tasks)
    except UnknownTaskError as error:
        raise LaunchError(str(error)) from None
    # The closure is part of the fingerprint, so the plan asks the template as the run does.
    closure = loglik_chat_closure(args, model)
    spec = run_spec(args, model, label, closure)
    return {
        "run_name": spec.run_name,
        "run_dir": str(Path(args.output_dir).resolve() / spec.run_name),
        "fingerprint": spec.fingerprint,
        # What the fingerprint hashes: a SLURM job that re-plans says what changed.
        "fingerprint_inputs": spec.fingerprint_inputs(),
        "tasks": tasks,
        "model": model,
    }


def prepare(args: argparse.Namespace) -> tuple[RunSpec, list[str], str]:
    """Every check, then the run's spec, its leaf tasks and the W&B mode."""
    model, label = resolve_model(args)
    settle_system_prompt(args)
    settle_mode(args, model)
    try:
        tasks = resolve_tasks(args.tasks)
    except UnknownTaskError as error:
        raise LaunchError(str(error)) from None
    check_data(tasks)
    check_extra_args(args.extra)
    lm_eval_model_args(args.model_args, args.extra)  # a malformed one is refused before W&B
    check_backend(args.backend)
    check_attention(args.model_args)
    closure = loglik_chat_closure(args, model)
    if closure:
        check_thinking_backend(model, args.backend, closure)
    try:
        wandb_mode = choose_wandb_mode(args.wandb_mode)
    except WandbModeError as error:
        raise LaunchError(str(error)) from None
    spec = run_spec(args, model, label, closure)
    if spec.scoring.startswith(PER_OPTION):
        print(f"note: {spec.backend}: {spec.scoring}, as lm-eval's hf scores", file=sys.stderr)
    unknown = unknown_part(spec.identity)
    if unknown:
        which, part = unknown
        print(
            f"note: cannot resolve {which}={part.get('repo')}@{part.get('revision') or 'main'} "
            f"to a commit ({part.get('via')}): this run goes without the request cache",
            file=sys.stderr,
        )
    return spec, tasks, wandb_mode


def latest_offline_run(wandb_dir: Path) -> Path | None:
    runs = sorted(wandb_dir.glob("offline-run-*"), key=lambda path: path.stat().st_mtime)
    return runs[-1] if runs else None


def run_lm_eval(command: list[str], env: dict | None) -> tuple[int, str]:
    """Run lm-eval, its stderr passed through as it comes; returns (exit code, the last line
    that names an error, for a one-line summary)."""
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, bufsize=0)
    tail: deque[str] = deque(maxlen=200)

    def pump() -> None:
        # Raw chunks, not lines: progress bars redraw with "\r" and must show as they come.
        pending = b""
        while chunk := os.read(process.stderr.fileno(), 65536):
            sys.stderr.buffer.write(chunk)
            sys.stderr.buffer.flush()
            *lines, pending = (pending + chunk).split(b"\n")
            tail.extend(line.decode("utf-8", "replace").rstrip() for line in lines)
        if pending:
            tail.append(pending.decode("utf-8", "replace").rstrip())

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code = process.wait()
    except KeyboardInterrupt:
        process.terminate()
        code = process.wait()
    reader.join()
    return code, last_error_line(list(tail))


def last_error_line(lines: list[str]) -> str:
    markers = ("Error", "error:", "Could not save", "Traceback", "Killed")
    for line in reversed(lines):
        text = line.strip()
        if text and any(marker in text for marker in markers) and text != "Traceback":
            return text[:300]
    return ""


def promote(staging: Path, run_dir: Path) -> list[Path]:
    """Move lm-eval's files from the staging folder into the run folder: sample logs first,
    results last (a results file is what marks a task complete); never over an existing file."""
    files = sorted(path for path in staging.rglob("*") if path.is_file())
    files.sort(key=lambda path: path.name.startswith("results_"))
    moved = []
    for path in files:
        target = run_dir / path.relative_to(staging)
        if target.exists():
            raise LaunchError(f"{target} already exists: not overwritten; the new copy is {path}")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
        moved.append(target)
    shutil.rmtree(staging, ignore_errors=True)
    return moved


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.plan_json:
            print(json.dumps(plan(args)))
            return 0
        spec, tasks, wandb_mode = prepare(args)
    except LaunchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    run_dir = Path(args.output_dir) / spec.run_name
    # lm-eval writes into a hidden staging folder that the report and the sweep never read;
    # its files join the run folder only once every requested task is complete on disk.
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
    staging = run_dir / f"{STAGING_PREFIX}{stamp}-{os.getpid()}"
    model = spec.model
    command = build_command(args, model, spec, wandb_mode, staging)
    print("+ " + shlex.join(command), flush=True)
    if note := upstream_label_note(tasks):
        print(note, file=sys.stderr)
    if args.dry_run:
        return 0
    spec.write(Path(args.output_dir))
    env = dict(os.environ, WANDB_MODE=wandb_mode) if wandb_mode != "disabled" else None
    code, error_line = run_lm_eval(command, env)
    if code == 0:
        from propensity_evals.run_files import unwritten_tasks

        missing = unwritten_tasks(staging, tasks)
        if missing:
            task, reason = next(iter(missing.items()))
            detail = f" ({error_line})" if error_line else ""
            print(
                f"error: lm-eval finished but wrote {len(missing)} task(s) incompletely (first: "
                f"{task}: {reason}){detail}; nothing was added to {run_dir}; fix the cause and "
                "rerun (answers so far are in the request cache)",
                file=sys.stderr,
            )
            shutil.rmtree(staging, ignore_errors=True)
            return 1
        try:
            moved = promote(staging, run_dir)
        except LaunchError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        for results in (path for path in moved if path.name.startswith("results_")):
            print(summary(results))
        print(f"results and per-sample logs: {run_dir}")
        offline = latest_offline_run(Path(os.environ.get("WANDB_DIR", ".")) / "wandb")
        if wandb_mode == "offline" and offline:
            print(f"W&B run saved offline; upload it with: wandb sync {offline}")
        return 0
    shutil.rmtree(staging, ignore_errors=True)
    print(
        f"error: lm-eval failed (exit {code}){': ' + error_line if error_line else ''}; "
        f"nothing was added to {run_dir}; rerun to resume from the request cache",
        file=sys.stderr,
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
