"""The exact context lm-eval scores the options after: one function for the launcher (which
hands lm-eval the system instruction) and ``make prompts`` (which shows the result), so that
what a user is shown is what is scored.

lm-eval 0.4.13 builds the context as follows (checked against real sample logs in
tests/test_end_to_end.py): plain mode is ``system_instruction + prompt``, glued with no
separator; chat mode is the model's chat template over a system turn holding
``system_instruction`` (when there is one) and the user turn, with the assistant header opened.
"""

from __future__ import annotations


def system_instruction(system_prompt: str, chat: bool) -> str:
    """What the launcher passes as ``--system_instruction`` ("" for none).

    Trailing whitespace is dropped in both modes; plain mode then gets a blank line, since
    lm-eval concatenates the system text and ``Human: ...`` directly.
    """
    text = system_prompt.rstrip()
    if not text:
        return ""
    return text if chat else text + "\n\n"


def render_context(prompt: str, system_prompt: str = "", tokenizer=None) -> str:
    """The context string lm-eval builds; a tokenizer means chat mode."""
    instruction = system_instruction(system_prompt, chat=tokenizer is not None)
    if tokenizer is None:
        return instruction + prompt
    messages = [{"role": "system", "content": instruction}] if instruction else []
    messages.append({"role": "user", "content": prompt})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def continuations(choices: list[str], chat: bool) -> list[str]:
    # lm-eval drops the target delimiter (" ") when a chat template is applied.
    return [choice if chat else f" {choice}" for choice in choices]
