"""Which lm-eval model class scores a model: encoders with an MLM head get ``hf-mlm``.

The eval targets default to ``hf-prefix``, which loads ``AutoModelForCausalLM``; a masked LM
(ModernBERT, BERT, RoBERTa, DeBERTa-v2) has no causal head and lm-eval stops with a long
traceback. The launcher asks :func:`choose_backend` first: when the model's ``config.json``
names a ``*ForMaskedLM`` architecture, the run uses ``hf-mlm``
(:mod:`propensity_evals.masked_lm`) instead, and that name is what the run's fingerprint and
``run_info.json`` record.

Only ``architectures`` decides, not ``model_type``: ``bert`` and ``roberta`` also have causal
heads in transformers, so the type alone does not say which head a checkpoint carries. A
config that names no architecture is left alone; ``BACKEND=hf-mlm`` forces the class.

This module reads JSON only (no torch, no transformers), so the launcher stays quick.
"""

from __future__ import annotations

import json
from pathlib import Path

DEFAULT_BACKEND = "hf-prefix"
STOCK_BACKEND = "hf"
MASKED_LM_BACKEND = "hf-mlm"
_MASKED_LM_SUFFIX = "ForMaskedLM"


class BackendChoiceError(ValueError):
    """A backend that cannot score the model; the message says what to pass instead."""


def masked_lm_architecture(config: dict) -> str | None:
    """The ``*ForMaskedLM`` class a config names (None for anything else)."""
    if config.get("is_decoder"):
        return None
    for name in config.get("architectures") or []:
        if isinstance(name, str) and name.endswith(_MASKED_LM_SUFFIX):
            return name
    return None


def read_config(model: str, revision: str = "") -> dict | None:
    """The model's config.json as a dict: from a local folder, else from the Hugging Face
    cache or hub (offline: the cache only). None when it cannot be read; lm-eval then reports
    the real problem itself."""
    path = Path(model).expanduser()
    if path.is_dir():
        config_file = path / "config.json"
    elif path.exists():
        return None  # a single file (GGUF) holds no config.json
    else:
        config_file = _hub_config_file(model, revision)
    if config_file is None:
        return None
    try:
        config = json.loads(Path(config_file).read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def _hub_config_file(repo_id: str, revision: str) -> str | None:
    try:
        from huggingface_hub import hf_hub_download

        # Offline (HF_HUB_OFFLINE=1) this only looks in the local cache.
        return hf_hub_download(repo_id, "config.json", revision=revision or None)
    except Exception:  # not found, gated, offline without a cached copy, bad id
        return None


def choose_backend(
    requested: str, model: str, revision: str = "", mode: str = "loglik", config: dict | None = None
) -> str:
    """The lm-eval model class for ``model`` (``config``: its config.json, if already read).

    Log-likelihood mode: ``hf-mlm`` in place of the default ``hf-prefix`` when the model is a
    masked LM; every other request as given, except ``hf`` on a masked LM, which lm-eval
    cannot score and which is refused.

    Generate mode: lm-eval's stock ``hf`` in place of ``hf-prefix``, which shares contexts
    between scored options (nothing to share when the model writes) and closes a reasoning
    model's thinking block (which generate mode leaves open); a masked LM is refused.
    """
    generate = mode == "generate"
    if requested not in (DEFAULT_BACKEND, STOCK_BACKEND, MASKED_LM_BACKEND):
        return requested
    if generate and requested == MASKED_LM_BACKEND:
        raise BackendChoiceError(
            f"BACKEND={MASKED_LM_BACKEND} scores options and cannot write: drop MODE=generate"
        )
    if requested == MASKED_LM_BACKEND:
        return requested
    if config is None:
        config = read_config(model, revision)
    architecture = masked_lm_architecture(config or {})
    if architecture is None:
        return STOCK_BACKEND if generate else requested
    if generate:
        raise BackendChoiceError(
            f"{model} is a masked LM ({architecture}), which scores options but does not "
            "write answers: drop MODE=generate"
        )
    if requested == STOCK_BACKEND:
        raise BackendChoiceError(
            f"{model} is a masked LM ({architecture}), which lm-eval's hf backend cannot "
            f"score: leave BACKEND unset or pass BACKEND={MASKED_LM_BACKEND}"
        )
    return MASKED_LM_BACKEND
