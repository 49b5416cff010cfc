"""The exact context lm-eval scores the options after: one function for the launcher (which
hands lm-eval the system instruction), this pack's model classes (which render the chat
template through :func:`render_chat`) and ``make prompts`` (which shows the result), so that
what a user is shown is what is scored.

lm-eval 0.4.13 builds the context as follows (checked against real sample logs in
tests/test_end_to_end.py): plain mode is ``system_instruction + prompt``, glued with no
separator; chat mode is the model's chat template over a system turn holding
``system_instruction`` (when there is one) and the user turn, with the assistant header opened.

Reasoning models. A reasoning model's chat template either opens a thinking block in its
generation prompt (DeepSeek-R1-Distill: ``<｜Assistant｜><think>\\n``) or leaves the model to
open one unless told ``enable_thinking=False`` (Qwen3). Scoring `` (A)`` right there asks how
likely the model is to *start its reasoning* with "(A)": a number, but not an answer. Scored
here instead: the block closed and empty, ``<think>\\n\\n</think>\\n\\n``, the form Qwen3's
own template writes with ``enable_thinking=False``. ``enable_thinking=False`` is passed to
every template (templates that do not know it ignore it); a generation prompt that still ends
in an open ``<think>`` gets that block closed here. :func:`thinking_closure` says which of the
two happened, for the run's records.
"""

from __future__ import annotations

import re

import jinja2

THINK_OPEN = "<think>"
# What Qwen3's template writes after the assistant header with enable_thinking=False.
EMPTY_THINKING = "<think>\n\n</think>\n\n"
# A generation prompt that ends inside a thinking block: the opening tag, then only whitespace.
_OPEN_AT_END = re.compile(re.escape(THINK_OPEN) + r"\s*\Z")

# thinking_closure() values; "" when the template has no thinking block to close.
CLOSED_BY_TEMPLATE = "template"  # the template's own enable_thinking=False closes it
CLOSED_BY_PACK = "appended"  # the template opens <think>; this module closes it
CLOSURE_DESCRIPTIONS = {
    CLOSED_BY_TEMPLATE: "thinking block closed and empty by the template's enable_thinking=False",
    CLOSED_BY_PACK: "thinking block opened by the template, closed and empty by the pack",
}
# Asked of a template to learn how it treats thinking; any user text would do.
_PROBE = [{"role": "user", "content": "Is the sky blue?"}]


def system_instruction(system_prompt: str, chat: bool) -> str:
    """What the launcher passes as ``--system_instruction`` ("" for none).

    Trailing whitespace is dropped in both modes; plain mode then gets a blank line, since
    lm-eval concatenates the system text and ``Human: ...`` directly.
    """
    text = system_prompt.rstrip()
    if not text:
        return ""
    return text if chat else text + "\n\n"


def render_context(
    prompt: str, system_prompt: str = "", tokenizer=None, gen_prefix: str = ""
) -> str:
    """The context string lm-eval builds; a tokenizer means chat mode, where ``gen_prefix``
    (a task's start of the assistant's turn, e.g. ``Answer: (``) follows the opened turn."""
    instruction = system_instruction(system_prompt, chat=tokenizer is not None)
    if tokenizer is None:
        return instruction + prompt
    messages = [{"role": "system", "content": instruction}] if instruction else []
    messages.append({"role": "user", "content": prompt})
    if gen_prefix:
        messages.append({"role": "assistant", "content": gen_prefix})
    return render_chat(tokenizer, messages)


def render_chat(tokenizer, messages: list[dict], template_args: dict | None = None) -> str:
    """The chat template over ``messages`` with the assistant's turn opened, any thinking block
    closed and empty: what this pack's model classes score the options after.

    A last assistant message is the start of the scored turn (lm-eval's ``gen_prefix``): it
    follows the opened turn, after the closed thinking block, as written. (lm-eval's own
    classes continue it with the template's ``continue_final_message``, which gives the same
    text on templates without a thinking block, tested on SmolLM2's.)

    ``template_args`` are the extra template variables a model was given (lm-eval's
    ``chat_template_args``); they override the ``enable_thinking=False`` passed here.
    """
    start = ""
    if messages and messages[-1]["role"] == "assistant":
        messages, start = messages[:-1], messages[-1]["content"]
    text = apply_template(tokenizer, messages, {"enable_thinking": False, **(template_args or {})})
    return close_open_thinking(text) + start


def apply_template(tokenizer, messages: list[dict], template_args: dict) -> str:
    """``tokenizer.apply_chat_template`` as lm-eval's hf model class calls it, including its
    fallback: a template that refuses a system turn gets the conversation without it."""
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **template_args
        )
    except jinja2.exceptions.TemplateError:
        messages = [message for message in messages if message["role"] != "system"]
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **template_args
        )


def close_open_thinking(text: str) -> str:
    """``text`` with a thinking block left open at its end closed and empty."""
    match = _OPEN_AT_END.search(text)
    return text if match is None else text[: match.start()] + EMPTY_THINKING


def thinking_closure(tokenizer, template_args: dict | None = None) -> str:
    """How :func:`render_chat` treats this template's thinking: "" (it renders exactly what
    lm-eval's stock model classes render), ``CLOSED_BY_TEMPLATE`` or ``CLOSED_BY_PACK``."""
    template_args = dict(template_args or {})
    stock = apply_template(tokenizer, _PROBE, template_args)
    ours = render_chat(tokenizer, _PROBE, template_args)
    if ours == stock:
        return ""
    switched = apply_template(tokenizer, _PROBE, {"enable_thinking": False, **template_args})
    return CLOSED_BY_TEMPLATE if ours == switched else CLOSED_BY_PACK


def continuations(choices: list[str], chat: bool, delimiter: str = " ") -> list[str]:
    # lm-eval drops the target delimiter (" ") when a chat template is applied; the two-option
    # tasks have none ("" : the letter follows "Answer: (").
    return [choice if chat else f"{delimiter}{choice}" for choice in choices]
