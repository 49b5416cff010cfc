"""lm-eval's ``--cache_requests``, keyed by what this pack's requests are built from.

lm-eval saves a task's built requests (contexts, continuations and the documents they came
from) under a key made of the task's name, few-shot count, rank, world size, chat-template flag,
system instruction and tokenizer name, and reuses them whenever that key matches. This pack's
tasks keep their names across settings that change the requests: ``--metadata`` ``orders``
(a cyclic run adds every rotation of each question), ``prompt_format`` (the prompt in the
paper's ``Human:/Assistant:`` form or as a chat turn), ``prompt_opens_think``, the direction
table, and the data and the audit's relabels themselves. Under lm-eval's key alone a cyclic
run would score an original-order run's requests, and a chat-format run a plain one's.

Everything those settings change is in the task's documents (prompt, rotations, choices,
target, misaligned options) or its config, so :class:`DocumentKeyedTask` adds a digest of both
to the key, through the one part of it that is free text (the tokenizer name, which
``build_all_requests`` uses for nothing else). The run's own identity in the metadata (its
fingerprint, the model) is left out: it names the run, not the requests.
"""

from __future__ import annotations

import hashlib
import json

from lm_eval.api.task import ConfigurableTask

# --metadata keys that name the run, not the requests (propensity_evals/run_identity.py).
_RUN_KEYS = ("run_fingerprint", "model_identity")


class DocumentKeyedTask(ConfigurableTask):
    def __init__(self, config: dict | None = None, **kwargs) -> None:
        # lm-eval hands a Python task its whole config, this class's own name included.
        config = {key: value for key, value in (config or {}).items() if key != "class"}
        super().__init__(config=config, **kwargs)

    def requests_digest(self) -> str:
        """A digest of everything this task's requests are built from: its config (without
        the run's identity) and every evaluation document."""
        config = self.config.to_dict()
        metadata = dict(config.pop("metadata", None) or {})
        for key in _RUN_KEYS:
            metadata.pop(key, None)
        digest = hashlib.sha256()
        digest.update(_canonical({"config": config, "metadata": metadata}))
        for doc in self.eval_docs:
            digest.update(_canonical(doc))
        return digest.hexdigest()[:16]

    def build_all_requests(self, *, tokenizer_name: str = "", cache_requests: bool = False, **kw):
        if cache_requests:
            tokenizer_name = f"{tokenizer_name}-requests{self.requests_digest()}"
        super().build_all_requests(
            tokenizer_name=tokenizer_name, cache_requests=cache_requests, **kw
        )


def _canonical(value) -> bytes:
    return json.dumps(value, sort_keys=True, default=str, ensure_ascii=True).encode("ascii")
