"""The chat rendering of this pack's model classes: a reasoning model's thinking block closed.

lm-eval's ``hf`` class renders a chat prompt with ``tokenizer.apply_chat_template`` as is, so on
a DeepSeek-R1-Distill template the options are scored right after ``<think>\\n``. A model class
that mixes this in (before ``HFLM``) renders through :func:`propensity_evals.prompts.render_chat`
instead, the function ``make prompts`` shows: any thinking block closed and empty. Templates
without one render exactly as in ``hf``.
"""

from __future__ import annotations

from propensity_evals.prompts import render_chat

# The --model names whose classes mix this in; the launcher refuses every other backend on a
# thinking template in chat mode, since it would score inside the open block.
CLOSING_BACKENDS = ("hf-prefix",)


class ClosedThinkingChatMixin:
    """Overrides lm-eval's ``apply_chat_template`` (HFLM's signature and template arguments)."""

    def apply_chat_template(
        self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        # Without a generation prompt lm-eval asks to continue a written assistant turn (a
        # task's gen_prefix, last in chat_history): render_chat opens the turn, closes any
        # thinking block, then writes that start.
        return render_chat(self.tokenizer, chat_history, getattr(self, "chat_template_args", None))
