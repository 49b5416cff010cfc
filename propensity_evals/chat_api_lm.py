"""lm-eval's OpenAI-compatible chat backend (``local-chat-completions``), registered as
``openai-compatible-chat`` with one change: an empty stop list is left out of the request.

The generate-mode tasks stop only at the end of the sequence (``until: []``) and a chat API
model has no tokenizer to name its end token, so lm-eval would send ``"stop": []``. That means
the same as no ``stop`` at all, but some servers fail on it (``transformers serve`` answers 500).
Everything else (messages, ``max_tokens``, greedy ``temperature: 0``, the seed, retries, the
API key read from ``OPENAI_API_KEY``) is lm-eval's own.
"""

from __future__ import annotations

from lm_eval.api.registry import register_model
from lm_eval.models.openai_completions import LocalChatCompletion

from propensity_evals.generation import API_BACKEND


@register_model(API_BACKEND)
class OpenAICompatibleChat(LocalChatCompletion):
    def _create_payload(self, messages, generate=False, gen_kwargs=None, seed=1234, eos=None, **kw):
        payload = super()._create_payload(
            messages, generate=generate, gen_kwargs=gen_kwargs, seed=seed, eos=eos, **kw
        )
        if not payload.get("stop"):
            payload.pop("stop", None)
        return payload
