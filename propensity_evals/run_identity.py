"""What a run is: its folder name, and the fingerprint of everything that changes its numbers.

Two names per run, for two jobs:

- ``RunSpec.run_name``: the folder under ``OUTPUT_DIR`` and the W&B run name, readable and
  stable (model, revision, generate mode, option orders, prompt mode, system prompt, sample
  size; ``__api`` for
  a model behind an OpenAI-compatible server). A training loop that saves new weights into the
  same folder keeps the same run name.
- ``fingerprint``: a hash of everything that changes a question's scores: the model's
  identity (see below), backend and model class, dtype, device and every other model
  argument, prompt format and system prompt (and, for a reasoning model in chat mode, how its
  thinking block is closed), the task version and the pinned data, the extra lm-eval
  arguments, the sha256 of the direction table, of the audit's relabel file and of the
  exclusion list (propensity_evals/hygiene/excluded.csv), and in
  generate mode the mode, MAX_GEN_TOKS, the instruction and the parser's version; and the code
  that computes the answers (``code_identity``: the pack's version and the sha256 of its eval
  sources, the installed lm-eval, transformers and torch versions), and for ``hf-prefix``
  whether it shares prefixes or scores per option (``scoring``). Less the parser's version
  (the cache holds raw replies, which any parser can read again) it keys lm-eval's request
  cache (whose own key hashes only the request text); it is written into
  every results file through lm-eval's ``--metadata`` and into
  ``run_info.json``, and is what ``make sweep`` compares before it skips a run and what
  ``make report`` compares before it puts two results files in one run. The sample size and
  the task list are left out on purpose: they choose which requests are made, not what a
  request's answer is, so a ``LIMIT=10`` run's cached answers serve the full run.

The model's identity:

- a local folder: the sha256 of its config and tokenizer files' bytes plus the name, size
  and modification time of every other file (the weights). Reading 140 GB of weights on every
  start would cost minutes; a training loop that saves new weights rewrites the files, which
  changes their modification times.
- a model behind an OpenAI-compatible server (``make eval_api``): its name and the server's
  URL, all that can be known of it; the weights behind that name are the server's business.
- a hub id: the commit its REVISION resolves to (asked of the hub; offline, the commit of the
  snapshot in the local Hugging Face cache). lm-eval then loads exactly that commit. If no
  commit can be resolved the run has no identity: it goes without the request cache and says
  so, and its results are never taken as complete by the sweep.
- what the model is loaded with: a ``tokenizer=``, ``peft=`` or ``delta=`` model argument
  (also one given in EXTRA_ARGS as ``--model_args``), hashed as above (a local folder by its
  files, a hub id by the commit of the revision lm-eval loads it at), under ``loaded_with``.

Every eval target (the launcher), the sweep and the report use this one module.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from propensity_evals.answer_parser import PARSER_VERSION
from propensity_evals.anthropic_data import pinned_files
from propensity_evals.generation import API_BACKEND, GENERATION_VERSION, INSTRUCTION

RUN_INFO_FILE = "run_info.json"
# The key in each results file's task metadata (lm-eval copies --metadata there).
FINGERPRINT_KEY = "run_fingerprint"
MODEL_IDENTITY_KEY = "model_identity"
# Bump with lm_eval_tasks/_generate_configs.py's TASK_VERSION: it is part of the fingerprint.
TASK_VERSION = 1.2
# Files hashed by content in a local model folder; everything else by name, size and mtime.
_SMALL_FILE_BYTES = 16 << 20
_HEX_COMMIT = re.compile(r"[0-9a-f]{40}")
# Model arguments that name more files lm-eval loads beside ``pretrained=``; their identities
# go into the model's, under LOADED_WITH (a new adapter is a new model, for the report too).
LOADED_PATH_ARGS = ("tokenizer", "peft", "delta", "lora_local_path")
LOADED_WITH = "loaded_with"


def model_slug(model: str) -> str:
    """A readable, filesystem-safe name for a hub id or a local path.

    A local path keeps only its last component (a site-packages path says nothing); a hub id
    ``org/name`` becomes ``org__name`` as lm-eval itself does.
    """
    path = Path(model)
    if path.is_absolute() or model.startswith((".", "~")) or path.exists():
        model = path.expanduser().name or "model"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model.replace("/", "__")).strip("_") or "model"


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


def _digest(value) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


# -- the model's identity ----------------------------------------------------------------------


def local_model_identity(folder: Path) -> dict:
    """Small files by content, large ones (weights) by name, size and mtime; see the module
    docstring for why."""
    folder = Path(folder)
    listing = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if not path.is_file() or any(part.startswith(".") for part in Path(relative).parts):
            continue
        stat = path.stat()
        if stat.st_size <= _SMALL_FILE_BYTES:
            listing.append([relative, "sha256", _file_sha256(path)])
        else:
            listing.append([relative, "stat", stat.st_size, stat.st_mtime_ns])
    return {"kind": "local", "files": _digest(listing), "count": len(listing)}


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cached_hub_commit(repo_id: str, revision: str) -> str | None:
    """The commit of the snapshot of ``repo_id@revision`` in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json", revision=revision or None)
    if not isinstance(found, str):
        return None
    # .../models--org--name/snapshots/<commit>/config.json
    commit = Path(found).parent.name
    return commit if _HEX_COMMIT.fullmatch(commit) else None


def hub_commit(repo_id: str, revision: str) -> tuple[str | None, str]:
    """(commit, how it was found). Asks the hub unless offline; falls back to the cache."""
    if _HEX_COMMIT.fullmatch(revision or ""):
        return revision, "revision is a commit"
    offline = any(
        os.environ.get(var, "").lower() in ("1", "true", "yes", "on")
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
    if not offline:
        try:
            from huggingface_hub import HfApi

            info = HfApi().model_info(repo_id, revision=revision or None)
            if info.sha:
                return info.sha, "hub"
        except Exception as error:  # network, gated, not found: the cache may still know
            reason = type(error).__name__
        else:
            reason = "hub gave no commit"
    else:
        reason = "offline"
    commit = cached_hub_commit(repo_id, revision)
    if commit:
        return commit, f"local cache ({reason})"
    return None, reason


def model_identity(model: str, revision: str = "") -> dict:
    """The identity of what ``pretrained=model`` (and ``revision``) loads."""
    path = Path(model).expanduser()
    if path.is_dir():
        return local_model_identity(path)
    if path.is_file():  # a single GGUF file
        stat = path.stat()
        return {"kind": "file", "name": path.name, "size": stat.st_size, "mtime": stat.st_mtime_ns}
    commit, source = hub_commit(model, revision)
    return {"kind": "hub", "repo": model, "revision": revision, "commit": commit, "via": source}


def api_model_identity(model: str, base_url: str) -> dict:
    return {"kind": "api", "model": model, "base_url": base_url}


def identity_known(identity: dict) -> bool:
    """False when a hub id (the model's, or one it is loaded with) has no commit."""
    if identity.get("kind") == "hub" and not identity.get("commit"):
        return False
    return all(identity_known(part) for part in (identity.get(LOADED_WITH) or {}).values())


def unknown_part(identity: dict) -> tuple[str, dict] | None:
    """(which, its identity) for the first hub id without a commit: the model's or a part's."""
    if identity.get("kind") == "hub" and not identity.get("commit"):
        return "pretrained", identity
    for name, part in (identity.get(LOADED_WITH) or {}).items():
        if not identity_known(part):
            return name, part
    return None


def loaded_path_identity(value: str, revision: str) -> dict:
    """The identity of a ``tokenizer=``, ``peft=``, ``delta=`` (or vllm's ``lora_local_path=``)
    model argument: a local folder as a model folder is hashed; a single file by content up to
    16 MB; a hub id by the commit ``revision`` resolves to in it, which is the revision lm-eval
    loads it at (it passes the model's revision to all of them)."""
    path = Path(value).expanduser()
    if path.is_dir():
        return local_model_identity(path)
    if path.is_file():
        stat = path.stat()
        if stat.st_size <= _SMALL_FILE_BYTES:
            return {"kind": "file", "name": path.name, "sha256": _file_sha256(path)}
        return {"kind": "file", "name": path.name, "size": stat.st_size, "mtime": stat.st_mtime_ns}
    commit, source = hub_commit(value, revision)
    return {"kind": "hub", "repo": value, "revision": revision, "commit": commit, "via": source}


def loaded_with_identity(model_args: dict, revision: str) -> dict:
    """{argument: identity} for each of LOADED_PATH_ARGS that ``model_args`` (lm-eval's merged
    model arguments) sets; {} when none is set."""
    return {
        name: loaded_path_identity(str(model_args[name]), revision)
        for name in LOADED_PATH_ARGS
        if model_args.get(name) not in (None, "")
    }


def data_fingerprint() -> str:
    """The pinned upstream files every task reads (their sha256 sums)."""
    return _digest([[item.relpath, item.sha256] for item in pinned_files()])


# -- the run -------------------------------------------------------------------------------------


@dataclass
class RunSpec:
    """What one eval run is: its folder name, its labels, and what its numbers depend on."""

    model: str
    revision: str = ""
    limit: str = ""
    prompt_format: str = "plain"
    system_prompt: str = ""
    # SYSTEM_PROMPTS' name for the text (system_prompts.csv); names the run, not its numbers.
    system_prompt_name: str = ""
    tasks: str = ""
    label: str = ""
    # What the numbers depend on beyond the fields above (filled by the launcher).
    backend: str = ""
    model_args: str = ""
    device: str = ""
    extra_args: list[str] = field(default_factory=list)
    identity: dict = field(default_factory=dict)
    directions: str = ""  # a user's direction table (DIRECTIONS=), "" for the pack's own
    directions_sha256: str = ""
    relabels_sha256: str = ""
    exclusions_sha256: str = ""
    # Generate mode (MODE=generate): the replies are written, not the options scored.
    mode: str = "loglik"
    max_gen_toks: int = 0
    prompt_opens_think: bool = False  # the chat template ends the prompt inside <think>
    # ORDERS: "cyclic" also scores every cyclic order of each question's options.
    orders: str = "original"
    # How a reasoning model's thinking block is closed in chat mode (prompts.thinking_closure);
    # "" for a template without one, and always in plain mode.
    thinking_closure: str = ""
    # hf-prefix only: "shared prefixes", or "per option (why)" for a model type or attention
    # kernel not verified exact for sharing (shared_scoring.py); "" for every other class.
    scoring: str = ""
    # The pack's version and sources, lm-eval/transformers/torch versions (code_identity).
    code: dict = field(default_factory=dict)

    @property
    def run_name(self) -> str:
        name = model_slug(self.label or self.model)
        if self.revision:
            name += f"@{re.sub(r'[^A-Za-z0-9._-]+', '_', self.revision)}"
        if self.backend == API_BACKEND:
            name += "__api"
        if self.mode == "generate":
            # A generated acc is never to be compared with a log-likelihood one.
            name += "__gen"
        if self.orders != "original":
            name += f"__{self.orders}"
        if self.prompt_format != "plain":
            name += f"__{self.prompt_format}"
        if self.system_prompt:
            named = f"{self.system_prompt_name}-" if self.system_prompt_name else ""
            name += f"__sys-{named}{short_hash(self.system_prompt)}"
        if self.limit:
            # A LIMIT run scores a sample of each task: say so wherever its numbers appear.
            name += f"__sample{self.limit}"
        return name

    def fingerprint_inputs(self) -> dict:
        """Everything that changes a request's answer (not which requests are made).

        The generate-mode keys are added only in that mode, so that the fingerprints of
        log-likelihood runs (and their caches and complete runs) stay what they were.
        """
        inputs = {
            "model": self.identity,
            "backend": self.backend,
            "model_args": self.model_args,
            "device": self.device,
            "prompt_format": self.prompt_format,
            "system_prompt": self.system_prompt,
            "task_version": TASK_VERSION,
            "data": data_fingerprint(),
            "extra_args": list(self.extra_args),
            "directions_sha256": self.directions_sha256,
            "relabels_sha256": self.relabels_sha256,
            "code": self.code,
            "exclusions_sha256": self.exclusions_sha256,
        }
        if self.orders != "original":
            # Only for cyclic runs, so that original-order runs keep their fingerprints.
            inputs["orders"] = self.orders
        if self.thinking_closure:
            # Only where there is one, so that every other run keeps its fingerprint (and its
            # request cache and complete results) from before reasoning models were handled.
            inputs["thinking_closure"] = self.thinking_closure
        if self.scoring:
            inputs["scoring"] = self.scoring
        if self.mode != "loglik":
            inputs |= {
                "mode": self.mode,
                "max_gen_toks": self.max_gen_toks,
                "prompt_opens_think": self.prompt_opens_think,
                "instruction": INSTRUCTION,
                "generation_version": GENERATION_VERSION,
                "parser_version": PARSER_VERSION,
            }
        return inputs

    @property
    def request_fingerprint(self) -> str | None:
        """The fingerprint less what only reads the answers (the parser's version): the key of
        lm-eval's request cache, which holds raw replies, so that a new parser reads the
        replies already generated instead of generating them again. A run under parser
        version 1 had no such key, so its cache serves later versions."""
        if not identity_known(self.identity):
            return None
        inputs = self.fingerprint_inputs()
        inputs.pop("parser_version", None)
        return _digest(inputs)

    @property
    def fingerprint(self) -> str | None:
        """None when the model's identity is unknown: such a run is never cached or reused."""
        if not identity_known(self.identity):
            return None
        return _digest(self.fingerprint_inputs())

    def write(self, output_dir: Path) -> Path:
        run_dir = Path(output_dir) / self.run_name
        run_dir.mkdir(parents=True, exist_ok=True)
        info = asdict(self) | {
            "run_name": self.run_name,
            "fingerprint": self.fingerprint,
            "fingerprint_inputs": self.fingerprint_inputs(),
            "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        write_json_atomic(run_dir / RUN_INFO_FILE, info)
        return run_dir


def write_json_atomic(path: Path, data: dict) -> None:
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(part, path)


def results_fingerprint(results: dict, task: str) -> str | None:
    """The fingerprint a results file records for ``task`` (None: an older or foreign run)."""
    metadata = ((results.get("configs") or {}).get(task) or {}).get("metadata") or {}
    value = metadata.get(FINGERPRINT_KEY)
    return str(value) if value else None


def results_model_identity(results: dict, task: str) -> str | None:
    metadata = ((results.get("configs") or {}).get(task) or {}).get("metadata") or {}
    value = metadata.get(MODEL_IDENTITY_KEY)
    return str(value) if value else None


def model_identity_digest(identity: dict) -> str:
    return _digest(identity)[:16]
