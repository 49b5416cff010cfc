"""Print exactly what the model scores for a few questions per task (``make prompts``).

The context comes from :mod:`propensity_evals.prompts`, the same function the launcher uses
to hand lm-eval the system instruction and this pack's model classes use to render a chat
prompt (a reasoning model's thinking block closed and empty), followed by each scored
continuation. With ``--mode generate`` the prompts are those of the ``_gen`` tasks, in the
format the launcher would choose (the model's chat template when it has one, unless
``--no-chat``), with the thinking block left open.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from propensity_evals import default_model
from propensity_evals.anthropic_data import DATASET_DIR_NAME, DataError
from propensity_evals.audit import relabels_of_file
from propensity_evals.catalog import (
    DEFAULT_GROUP,
    UnknownTaskError,
    resolve_tasks,
    task_files,
    two_option_names,
    uses_audited_labels,
)
from propensity_evals.generate_mode import GenerateModeError, load_tokenizer, settle
from propensity_evals.generation import generation_prompt
from propensity_evals.hygiene import exclusions_of
from propensity_evals.prompts import (
    CLOSURE_DESCRIPTIONS,
    continuations,
    render_context,
    thinking_closure,
)
from propensity_evals.system_prompts import SystemPromptsError, pick
from propensity_evals.task_docs import build_docs, load_task_dataset, resolve_data_dir

REPO_ROOT = Path(__file__).resolve().parents[1]


def task_docs(root: Path, file: str, task: str, prompt_format: str) -> list[dict]:
    """A generate-mode task's documents as lm-eval gets them: an audited task's targets (the
    "matching" shown) are the audited labels, its dropped questions and the excluded items
    are left out."""
    relabels = relabels_of_file(file) if uses_audited_labels(task) else None
    return build_docs(root / file, prompt_format, relabels=relabels, exclusions=exclusions_of(file))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=DEFAULT_GROUP)
    parser.add_argument("--n", type=int, default=2, help="questions per task")
    parser.add_argument("--model", default="", help="needed for --chat (its chat template)")
    parser.add_argument("--revision", default="")
    parser.add_argument("--system-prompt", default="")
    parser.add_argument("--system-prompts", default="", help="one named system prompt")
    parser.add_argument("--system-prompts-file", default="")
    parser.add_argument("--chat", action="store_true")
    parser.add_argument("--no-chat", action="store_true", help="generate mode: plain format")
    parser.add_argument("--mode", default="", help="loglik (default) or generate")
    args = parser.parse_args(argv)
    try:
        picked = pick(args.system_prompts, args.system_prompts_file)
    except SystemPromptsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if len(picked) > 1 or (picked and args.system_prompt):
        print("error: give one system prompt: SYSTEM_PROMPT or one SYSTEM_PROMPTS name",
              file=sys.stderr)  # fmt: skip
        return 2
    if picked:
        args.system_prompt = picked[0].text
    try:
        if args.mode.strip() not in ("", "loglik"):
            return show_generation_prompts(args)
        tasks = resolve_tasks(args.tasks)
        tokenizer = None
        if args.chat:
            from transformers import AutoTokenizer

            model = args.model or str(default_model.smollm2_dir())
            tokenizer = AutoTokenizer.from_pretrained(model, revision=args.revision or None)
            if not getattr(tokenizer, "chat_template", None):
                raise DataError(f"{model} has no chat template: run without CHAT_TEMPLATE=1")
            closure = thinking_closure(tokenizer)
            if closure:
                print(
                    f"note: {model} is a reasoning model: {CLOSURE_DESCRIPTIONS[closure]}, as "
                    "BACKEND=hf-prefix scores it (stock hf and vllm refuse it)",
                    file=sys.stderr,
                )
        two_option = two_option_names()
        for task in tasks:
            docs = task_documents(task, "chat" if args.chat else "plain")
            delimiter = "" if task in two_option else " "
            for doc in docs[: args.n]:
                context = render_context(
                    doc["prompt"], args.system_prompt, tokenizer, doc.get("gen_prefix") or ""
                )
                options = continuations(doc["choices"], args.chat, delimiter)
                print(f"=== {task} #{doc['id']} (matching: {options[doc['target']]!r})")
                print(context, end="")
                print(f"⟨{' | '.join(options)}⟩\n")
    except (UnknownTaskError, DataError, default_model.ModelError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def task_documents(task: str, prompt_format: str) -> list[dict]:
    """The task's documents exactly as lm-eval loads them: its YAML's dataset arguments (which
    file, audited labels, two options) through the tasks' own loader."""
    import yaml

    (path,) = (REPO_ROOT / "lm_eval_tasks").glob(f"*/{task}.yaml")
    kwargs = yaml.safe_load(path.read_text())["dataset_kwargs"]
    loaded = load_task_dataset(REPO_ROOT / "data", prompt_format=prompt_format, **kwargs)
    return list(loaded["test"])


def show_generation_prompts(args: argparse.Namespace) -> int:
    """The prompts of the generate-mode tasks, each followed by where the reply begins."""
    try:
        model = args.model or str(default_model.smollm2_dir())
        settings = settle(
            model=model,
            revision=args.revision,
            backend="hf",
            tasks=args.tasks,
            mode=args.mode,
            chat=args.chat,
            no_chat=args.no_chat,
            max_gen_toks="",
            base_url="",
            model_args="",
        )
        tokenizer = load_tokenizer(model, args.revision) if settings.chat else None
        root = resolve_data_dir(REPO_ROOT / "data") / DATASET_DIR_NAME
        files = task_files()
        for task in resolve_tasks(settings.tasks):
            docs = task_docs(root, files[task], task, "chat" if settings.chat else "plain")
            for doc in docs[: args.n]:
                prompt = generation_prompt(doc["question"], "chat" if settings.chat else "plain")
                context = render_context(prompt, args.system_prompt, tokenizer)
                print(f"=== {task} #{doc['id']} (matching: {doc['choices'][doc['target']]})")
                print(context, end="")
                print(f"⟨the reply: up to {settings.max_gen_toks} tokens⟩\n")
    except (UnknownTaskError, DataError, GenerateModeError, default_model.ModelError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
