"""Where ``hf-prefix`` may share token prefixes: an allow-list of verified model families.

Sharing a question's prefix (tree rows, or KV-cache passes) is exact only where every layer
computes a token from its own prefix through attention that takes an explicit mask and
explicit positions. Families whose layers read the row in row order (convolutions, state
space and linear-attention layers: LFM2, Jamba, Mamba hybrids), bias attention by distance
in their own way (Falcon's ALiBi) or window some layers by a mask of their own (GPT-Neo's
local layers) give other numbers than lm-eval's ``hf``, or crash. So sharing is allowed, not
forbidden: only for the model types below, each checked against stock ``hf`` within 1e-4 on
real questions in plain, chat (with a system prompt) and cyclic-order prompts, by both the
tree rows and the cache passes (``tests/test_model_families.py``), and only with the
attention kernels those tests ran. Anything else is scored one option at a time by ``hf``'s
own code, and the run says so (``run_info.json``: ``scoring``; it is part of the
fingerprint).

A sliding window shorter than a request is handled inside ``hf-prefix`` (it takes the cache
passes, which keep the model's own mask), so Mistral and the Gemma 2/3 families are listed.

This module reads nothing but the config it is given (no torch), so the launcher stays quick.
"""

from __future__ import annotations

# model_type (config.json) -> the real models it stands for here.
VERIFIED_MODEL_TYPES: dict[str, str] = {
    "gemma": "Gemma",
    "gemma2": "Gemma 2",
    "gemma3_text": "Gemma 3 (text; the embedded gemma-3-270m)",
    "gpt2": "GPT-2",
    "gpt_neox": "Pythia, deep-ignorance",
    "llama": "Llama 2/3, SmolLM2 (the embedded default)",
    "mistral": "Mistral",
    "opt": "OPT",
    "phi": "Phi-1/2",
    "phi3": "Phi-3/4",
    "qwen2": "Qwen2, DeepSeek-R1-Distill-Qwen",
    "qwen3": "Qwen3",
}
# The kernels the tests ran: both take a custom mask and explicit positions. flash-attention
# (the CUDA default) has no test here, so it scores per option until one shows it exact.
VERIFIED_ATTENTION = ("sdpa", "eager")

SHARED = "shared prefixes"
PER_OPTION = "per option"


def model_type_of(config: dict) -> str | None:
    """The language model's type: a multimodal config's text part where it has one."""
    text = config.get("text_config")
    if isinstance(text, dict) and text.get("model_type"):
        return str(text["model_type"])
    value = config.get("model_type")
    return str(value) if value else None


def refusal(model_type: str | None, attention: str | None) -> str | None:
    """Why ``hf-prefix`` must not share prefixes for this model (None: it may).

    ``attention``: the attention implementation the model runs (None or empty: transformers'
    default, which is ``sdpa`` for every verified family)."""
    if model_type not in VERIFIED_MODEL_TYPES:
        return (
            f"model type {model_type or 'unknown'!r} is not verified exact for shared-prefix "
            "scoring"
        )
    if attention and attention not in VERIFIED_ATTENTION:
        return f"attention {attention!r} is not verified exact for shared-prefix scoring"
    return None


def scoring(model_type: str | None, attention: str | None) -> str:
    """What ``run_info.json`` and the fingerprint record for an ``hf-prefix`` run."""
    reason = refusal(model_type, attention)
    return SHARED if reason is None else f"{PER_OPTION} ({reason})"


def scoring_of_run(config: dict | None, model_args: dict) -> str:
    """``scoring`` for an ``hf-prefix`` run of a model with this ``config.json`` (None: it
    could not be read before the run; the model class decides when it has loaded it), loaded
    with these model arguments (the launcher's merged with any ``--model_args`` in
    ``EXTRA_ARGS``, as lm-eval merges them)."""
    if config is None:
        return "decided when the model loads (config.json not readable beforehand)"
    attention = model_args.get("attn_implementation")
    return scoring(model_type_of(config), str(attention) if attention else None)
