"""Masked language models as an lm-eval model class: registered as ``hf-mlm``.

lm-eval scores an option by the log-likelihood of its continuation given the context, which
a masked LM (ModernBERT, BERT, RoBERTa, DeBERTa-v2) does not define. This class answers with
the continuation's pseudo-log-likelihood (PLL; Salazar et al. 2020, "Masked Language Model
Scoring") in the within-word left-to-right variant of Kauf & Ivanova (2023, "A Better Way to
Do Masked Language Model Scoring"; PLL-word-l2r)::

    score = sum over continuation tokens t of
            log P(t | [CLS] context continuation [SEP] with t and every later token of
                      t's word replaced by [MASK])

- Tokens: the context and context + continuation are encoded without special tokens and the
  continuation is what the whole adds after the context, as lm-eval's ``hf`` does (trailing
  spaces of the context move to the continuation first). The frame is the tokenizer's own
  ``cls_token`` and ``sep_token`` (``<s>``/``</s>`` for RoBERTa).
- Words: the tokenizer's word ids (its pre-tokenizer's split), as in the authors' code
  (minicons, ``PLL_metric="within_word_l2r"``). Only continuation tokens are ever masked; the
  context stays whole.
- ``is_greedy``: every scored token is the most likely one at its masked position.
- Batching: one row per scored token; identical rows run once (the row scoring the letter of
  ``" (A)"`` is ``... ( [MASK] )``, the same for every option of a question, and single-token
  answers all share one row). Rows are sorted by length, right-padded with an attention mask,
  ``batch_size`` rows per forward pass. Each answer goes to lm-eval's request cache as soon as
  its last row has run, so a crashed run resumes from there, as with ``hf``.
- Too long: the context is cut from the left so that ``[CLS] context continuation [SEP]`` fits
  the model's length, as ``hf`` cuts from the left.

Only ``loglikelihood`` requests (every task of this pack); generation and rolling
log-likelihoods stop with a one-line error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import lm_eval.models  # noqa: F401  (registers lm-eval's own model names before ours)
import torch
import torch.nn.functional as F
import transformers
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from tqdm import tqdm

from propensity_evals.backend_choice import MASKED_LM_BACKEND


class Encoded(NamedTuple):
    """One request as scored: tokens without special tokens, and each continuation token's
    word id (None for a special token written in the text)."""

    context: list[int]
    continuation: list[int]
    words: list[int | None]


# A scored token: (request index, position in the row, target token id).
Target = tuple[int, int, int]


@register_model(MASKED_LM_BACKEND)
class MaskedLM(HFLM):
    """``HFLM`` loading ``AutoModelForMaskedLM``; log-likelihoods are PLL-word-l2r."""

    AUTO_MODEL_CLASS = transformers.AutoModelForMaskedLM

    def _get_backend(self, config, backend="default", trust_remote_code=False) -> None:
        # HFLM knows "causal" and "seq2seq" only; neither of its scoring paths runs here.
        self.backend = "masked"

    @property
    def max_length(self) -> int:
        length = super().max_length
        # RoBERTa has 514 position embeddings but 512 usable positions; its tokenizer knows.
        limit = getattr(self.tokenizer, "model_max_length", None)
        if not self._max_length and isinstance(limit, int) and 0 < limit < length:
            return limit
        return length

    # -- lm-eval's entry points ------------------------------------------------------------

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        self._check_special_tokens()
        encoded = [self.encode_request(*req.args) for req in requests]

        def cache(index: int, answer: tuple[float, bool]) -> None:
            self.cache_hook.add_partial("loglikelihood", requests[index].args, answer)

        return self.score(encoded, disable_tqdm=disable_tqdm, on_answer=cache)

    def _loglikelihood_tokens(self, requests, disable_tqdm=False, override_bs=None):
        raise NotImplementedError(
            f"{MASKED_LM_BACKEND} scores text requests (loglikelihood); token requests carry "
            "no word boundaries"
        )

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError(
            f"{MASKED_LM_BACKEND} scores multiple-choice (loglikelihood) tasks only, not "
            "loglikelihood_rolling"
        )

    def generate_until(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError(
            f"{MASKED_LM_BACKEND} scores multiple-choice (loglikelihood) tasks only: a masked "
            "LM does not generate"
        )

    # -- tokens ----------------------------------------------------------------------------

    def _check_special_tokens(self) -> None:
        missing = [
            name
            for name in ("mask_token", "cls_token", "sep_token")
            if getattr(self.tokenizer, f"{name}_id", None) is None
        ]
        if missing:
            raise ValueError(
                f"the tokenizer of {self.pretrained} has no {', '.join(missing)}: "
                f"{MASKED_LM_BACKEND} needs [MASK], [CLS] and [SEP] (is this a masked LM?)"
            )

    def encode_request(self, context: str, continuation: str) -> Encoded:
        # lm-eval's rule: trailing spaces of the context belong to the continuation.
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        whole = self.tokenizer(context + continuation, add_special_tokens=False)
        if not getattr(whole, "is_fast", False):
            raise ValueError(
                f"{MASKED_LM_BACKEND} needs a fast (tokenizers-backed) tokenizer for word "
                "boundaries; load the model's tokenizer.json"
            )
        context_ids = (
            self.tokenizer(context, add_special_tokens=False)["input_ids"] if context else []
        )
        start = len(context_ids)
        return Encoded(context_ids, whole["input_ids"][start:], whole.word_ids()[start:])

    def masked_rows(self, request: Encoded) -> list[tuple[tuple[int, ...], int, int]]:
        """(input ids, position, target) per continuation token: the token and the later
        tokens of its word masked, in ``[CLS] context continuation [SEP]``."""
        context = self._fit(request)
        mask, cls, sep = (
            self.tokenizer.mask_token_id,
            self.tokenizer.cls_token_id,
            self.tokenizer.sep_token_id,
        )
        tokens, words = request.continuation, request.words
        rows = []
        for j, target in enumerate(tokens):
            masked = list(tokens)
            masked[j] = mask
            for k in range(j + 1, len(tokens)):
                if words[j] is None or words[k] != words[j]:
                    break  # words are contiguous: the first other word ends this one
                masked[k] = mask
            rows.append(((cls, *context, *masked, sep), 1 + len(context) + j, target))
        return rows

    def _fit(self, request: Encoded) -> list[int]:
        room = self.max_length - 2  # [CLS] and [SEP]
        if len(request.continuation) > room:
            raise ValueError(
                f"a continuation of {len(request.continuation)} tokens does not fit the "
                f"model's {self.max_length} positions"
            )
        keep = room - len(request.continuation)
        context = request.context
        return context[len(context) - keep :] if len(context) > keep else context

    # -- the forward passes ----------------------------------------------------------------

    def score(
        self,
        requests: list[Encoded],
        disable_tqdm: bool = False,
        on_answer: Callable[[int, tuple[float, bool]], None] | None = None,
    ) -> list[tuple[float, bool]]:
        """(PLL-word-l2r of each continuation, whether every token was the argmax);
        ``on_answer(index, answer)`` as soon as a request's last token is scored."""
        # Identical rows run once: input ids -> the tokens read from that row.
        rows: dict[tuple[int, ...], list[Target]] = {}
        for i, request in enumerate(requests):
            for row, position, target in self.masked_rows(request):
                rows.setdefault(row, []).append((i, position, target))
        totals = [0.0] * len(requests)
        greedy = [True] * len(requests)
        unscored = [len(request.continuation) for request in requests]
        for i in range(len(requests)):
            if not unscored[i] and on_answer:  # an empty continuation: log 1 = 0
                on_answer(i, (0.0, True))
        if not rows:
            return list(zip(totals, greedy, strict=True))

        ordered = sorted(rows, key=len, reverse=True)  # longest first: little padding, OOM early
        rows_per_batch = self._rows_per_batch(ordered[0])
        pbar = tqdm(
            total=len(ordered),
            disable=(disable_tqdm or self.rank != 0),
            desc="Running loglikelihood requests (masked LM)",
        )
        for start in range(0, len(ordered), rows_per_batch):
            batch = ordered[start : start + rows_per_batch]
            logits = self._forward(batch)
            for row_index, row in enumerate(batch):
                targets = rows[row]
                positions = sorted({position for _, position, _ in targets})
                logprobs = F.log_softmax(
                    logits[row_index, positions], dim=-1, dtype=self.softmax_dtype
                )
                best = logprobs.argmax(dim=-1).tolist()
                at = {position: k for k, position in enumerate(positions)}
                for i, position, target in targets:
                    totals[i] += float(logprobs[at[position], target])
                    greedy[i] = greedy[i] and best[at[position]] == target
                    unscored[i] -= 1
                    if not unscored[i] and on_answer:
                        on_answer(i, (totals[i], greedy[i]))
            pbar.update(len(batch))
        pbar.close()
        return list(zip(totals, greedy, strict=True))

    def _rows_per_batch(self, longest: tuple[int, ...]) -> int:
        if self.batch_size != "auto":
            return int(self.batch_size)
        # hf's probe runs rows of len(context + continuation) - 1 tokens: give it ours.
        return self._detect_batch_size([(None, list(longest), [0])], 0)

    def _forward(self, batch: list[tuple[int, ...]]) -> torch.Tensor:
        width = len(batch[0])
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row_index, row in enumerate(batch):
            ids[row_index, : len(row)] = torch.tensor(row)
            attention[row_index, : len(row)] = 1
        with (
            torch.no_grad(),
            torch.autocast(
                device_type=self.device.type,
                dtype=self.mixed_precision_dtype,
                enabled=self.mixed_precision_dtype is not None,
            ),
        ):
            return self.model(
                input_ids=ids.to(self.device), attention_mask=attention.to(self.device)
            ).logits
