"""The launcher's decisions for ``MODE`` (loglik or generate) and ``make eval_api``.

- TASKS as the mode runs them: in generate mode each group or task becomes its ``_gen`` twin.
- The prompt format: log-likelihood mode is plain unless CHAT_TEMPLATE=1; generate mode uses
  the model's chat template when it has one (CHAT_TEMPLATE=0 forces plain); the chat API is
  always chat.
- MAX_GEN_TOKS: default DEFAULT_MAX_GEN_TOKS; fitted into the model's context where the
  launcher can read it, so that lm-eval never has to cut the question short to make room for
  the reply (it would, silently, from the left).
- Whether the chat template opens a thinking block at the end of the prompt (the answer parser
  then expects a ``</think>``).
- For the chat API: the server's chat-completions endpoint from BASE_URL.

Every error is a :class:`GenerateModeError` whose message is one line saying what to do.
"""

from __future__ import annotations

from dataclasses import dataclass

from propensity_evals.catalog import MODES, tasks_for_mode
from propensity_evals.generation import (
    API_BACKEND,
    DEFAULT_MAX_GEN_TOKS,
    QUESTION_ROOM,
    template_opens_think,
)

CHAT_COMPLETIONS = "/chat/completions"


class GenerateModeError(ValueError):
    """A MODE / MAX_GEN_TOKS / BASE_URL request that cannot run as given."""


@dataclass(frozen=True)
class ModeSettings:
    mode: str
    tasks: str  # TASKS as this mode runs them
    chat: bool
    max_gen_toks: int  # 0 in log-likelihood mode
    prompt_opens_think: bool
    base_url: str  # the chat API's root URL (``.../v1``), "" for other backends

    @property
    def endpoint(self) -> str:
        return self.base_url + CHAT_COMPLETIONS if self.base_url else ""


def model_arg_pairs(model_args: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in model_args.split(",") if "=" in part)


def api_base_url(url: str) -> str:
    """BASE_URL as given (``http://host:port/v1``, or the full chat-completions URL) -> root."""
    url = url.strip().rstrip("/")
    if not url:
        raise GenerateModeError(
            "BASE_URL is required: the server's OpenAI-compatible root, e.g. "
            "make eval_api MODEL=name BASE_URL=http://localhost:8000/v1"
        )
    if not url.startswith(("http://", "https://")):
        raise GenerateModeError(f"BASE_URL={url} must start with http:// or https://")
    return url.removesuffix(CHAT_COMPLETIONS)


def load_tokenizer(model: str, revision: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model, revision=revision or None)
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error)
        raise GenerateModeError(f"cannot load the tokenizer of {model}: {first_line}") from None


def context_length(model: str, revision: str, model_args: str, tokenizer) -> int | None:
    """The context lm-eval's hf and vllm backends will use, as they compute it (None: cannot
    be read here, e.g. a hub model offline and not cached; lm-eval then checks it alone)."""
    pairs = model_arg_pairs(model_args)
    for key in ("max_length", "max_model_len"):
        if key in pairs:
            return int(pairs[key])
    from lm_eval.models.utils import resolve_max_length
    from transformers import AutoConfig

    extra = {"gguf_file": pairs["gguf_file"]} if "gguf_file" in pairs else {}
    try:
        config = AutoConfig.from_pretrained(model, revision=revision or None, **extra)
    except (OSError, ValueError):
        return None
    return resolve_max_length(config, tokenizer)


def fit_max_gen_toks(requested: str, context: int | None) -> int:
    """MAX_GEN_TOKS as a number: the default shrinks to fit the context, an explicit value
    that does not fit is refused."""
    explicit = bool(requested.strip())
    value = DEFAULT_MAX_GEN_TOKS
    if explicit:
        try:
            value = int(requested)
        except ValueError:
            value = 0
        if value < 1:
            raise GenerateModeError(
                f"MAX_GEN_TOKS={requested.strip()} must be a positive whole number of tokens"
            )
    if context is None:
        return value
    room = context - QUESTION_ROOM
    if room < 1:
        raise GenerateModeError(
            f"the model's context ({context} tokens) has no room for a question "
            f"({QUESTION_ROOM} tokens) and a reply: generate mode cannot run it"
        )
    if value <= room:
        return value
    if explicit:
        raise GenerateModeError(
            f"MAX_GEN_TOKS={value} leaves the question less than {QUESTION_ROOM} tokens of the "
            f"model's {context}-token context: set MAX_GEN_TOKS={room} or less"
        )
    return room


def settle(
    *,
    model: str,
    revision: str,
    backend: str,
    tasks: str,
    mode: str,
    chat: bool,
    no_chat: bool,
    max_gen_toks: str,
    base_url: str,
    model_args: str,
) -> ModeSettings:
    """Every MODE-dependent decision of one eval request (see the module docstring)."""
    api = backend == API_BACKEND
    mode = mode.strip() or ("generate" if api else "loglik")
    if mode not in MODES:
        raise GenerateModeError(f"MODE={mode} is unknown: use {' or '.join(MODES)}")
    if api and mode != "generate":
        raise GenerateModeError(
            "make eval_api scores by generation only: leave MODE unset or set MODE=generate"
        )
    if not api and base_url.strip():
        raise GenerateModeError("BASE_URL is for make eval_api (a model behind a server)")
    root = api_base_url(base_url) if api else ""
    tasks = tasks_for_mode(tasks, mode)
    if mode == "generate":
        fit_max_gen_toks(max_gen_toks, None)  # a malformed number is refused before any loading
    if mode == "loglik":
        if max_gen_toks.strip():
            raise GenerateModeError(
                "MAX_GEN_TOKS is for MODE=generate: add MODE=generate or drop MAX_GEN_TOKS"
            )
        return ModeSettings(mode, tasks, chat and not no_chat, 0, False, "")
    if api:
        if no_chat:
            raise GenerateModeError(
                "the chat API always applies the server's chat template: drop CHAT_TEMPLATE=0"
            )
        # The server's template and context are out of sight: lm-eval sends the messages.
        return ModeSettings(mode, tasks, True, fit_max_gen_toks(max_gen_toks, None), False, root)
    tokenizer = load_tokenizer(model, revision)
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if chat and not has_template:
        raise GenerateModeError(
            f"{model} has no chat template (a base model?): run it without CHAT_TEMPLATE=1"
        )
    use_chat = has_template and not no_chat
    opens_think = False
    if use_chat:
        pairs = model_arg_pairs(model_args)
        template_args = {}
        if "enable_thinking" in pairs:
            template_args["enable_thinking"] = pairs["enable_thinking"].lower() == "true"
        opens_think = template_opens_think(tokenizer, **template_args)
    context = context_length(model, revision, model_args, tokenizer)
    return ModeSettings(
        mode, tasks, use_chat, fit_max_gen_toks(max_gen_toks, context), opens_think, ""
    )
