"""lm-eval's HF backend, scoring each shared context once: registered as ``hf-prefix``.

A multiple-choice question becomes one loglikelihood request per option, all with the same
context (``Human: ...\\n\\nAssistant:``) and a short continuation (`` (A)``, `` (B)``, ...).
lm-eval's ``hf`` model runs the whole context again for every option. This class groups the
requests by their context tokens, runs each context through the model once, keeps its KV
cache, and scores every continuation of that context from the cache: about half the tokens
for this suite, and the same numbers up to floating-point rounding.

What stays exactly as in ``hf``:

- tokenisation: requests arrive already encoded by lm-eval's ``_encode_pair``, and the model
  sees precisely ``context_enc + continuation_enc[:-1]``, the tokens ``hf`` feeds it;
- the answer per request, ``(sum of continuation token logprobs, is_greedy)``, returned in the
  original order and written to lm-eval's request cache (``--use_cache``);
- everything else: generation, ``loglikelihood_rolling``, seq2seq models, requests that
  ``hf`` would truncate, and models whose forward takes no KV cache or position ids all go
  through ``HFLM`` unchanged.

``batch_size`` counts scored requests (continuation rows) per forward pass, as in ``hf``;
whole questions are packed into a batch, so its memory stays below that of an ``hf`` batch of
the same size. Contexts in a batch are left-padded, the layout of batched generation that every
HF attention implementation supports, so each row's last context token sits in the last column
and the continuations append without holes in the cache.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import lm_eval.models  # noqa: F401  (registers lm-eval's own model names before ours)
import torch
import torch.nn.functional as F
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from tqdm import tqdm

from propensity_evals.chat_rendering import ClosedThinkingChatMixin

# lm-eval's encoded request: ((context, continuation) or None, context_enc, continuation_enc)
Request = tuple[tuple[str, str] | None, list[int], list[int]]


@register_model("hf-prefix")
class PrefixSharingLM(ClosedThinkingChatMixin, HFLM):
    """``HFLM`` that runs each distinct context once per loglikelihood call (and renders chat
    prompts with any thinking block closed: :mod:`propensity_evals.chat_rendering`)."""

    def _loglikelihood_tokens(
        self,
        requests: list[Request],
        disable_tqdm: bool = False,
        override_bs: int | None = None,
    ) -> list[tuple[float, bool]]:
        # loglikelihood_rolling passes windows with no request key: the parent handles those
        # (and adds their cache entries per document itself).
        if not self._can_share_prefixes() or all(req[0] is None for req in requests):
            return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)

        rows_per_batch = self._rows_per_batch(requests, override_bs)
        results: list[tuple[float, bool] | None] = [None] * len(requests)

        shared = [i for i, req in enumerate(requests) if self._fits_without_truncation(req)]
        rest = sorted(set(range(len(requests))) - set(shared))
        if rest:
            # Requests hf would left-truncate (or that are malformed) get hf's own treatment.
            scored = super()._loglikelihood_tokens(
                [requests[i] for i in rest], disable_tqdm, override_bs=rows_per_batch
            )
            for i, answer in zip(rest, scored, strict=True):
                results[i] = answer

        # context tokens -> {continuation tokens -> indices of the requests asking for it}
        groups: dict[tuple[int, ...], dict[tuple[int, ...], list[int]]] = {}
        for i in shared:
            _, context_enc, continuation_enc = requests[i]
            conts = groups.setdefault(tuple(context_enc), {})
            conts.setdefault(tuple(continuation_enc), []).append(i)

        pbar = tqdm(
            total=len(shared),
            disable=(disable_tqdm or self.rank != 0),
            desc="Running loglikelihood requests (shared prefixes)",
        )
        # Longest contexts first, as in hf: little padding within a batch, and an
        # out-of-memory error shows up at once rather than at the end.
        ordered = sorted(groups.items(), key=lambda item: (-len(item[0]), item[0]))
        for batch in _pack(ordered, rows_per_batch):
            for (_, conts), answers in zip(batch, self._score_batch(batch), strict=True):
                for indices, answer in zip(conts.values(), answers, strict=True):
                    for i in indices:
                        results[i] = answer
                        if requests[i][0] is not None:
                            self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
                    pbar.update(len(indices))
        pbar.close()
        return results  # type: ignore[return-value]

    # -- when and how much to share --------------------------------------------------------

    def _can_share_prefixes(self) -> bool:
        """A decoder-only model whose forward takes a KV cache and explicit position ids."""
        if self.backend != "causal":
            return False
        if not hasattr(self, "_forward_params"):
            # A PEFT wrapper passes its arguments on to the model it wraps: ask that one.
            base = getattr(self.model, "get_base_model", None)
            model = base() if callable(base) else self.model
            self._forward_params = inspect.signature(model.forward).parameters
        params = self._forward_params
        return "position_ids" in params and bool({"cache", "past_key_values"} & params.keys())

    def _fits_without_truncation(self, request: Request) -> bool:
        # hf feeds (context + continuation)[:-1] and truncates it from the left past
        # max_length; only untruncated requests are scored here, so the tokens are the same.
        _, context_enc, continuation_enc = request
        return (
            len(context_enc) > 0
            and len(continuation_enc) > 0
            and len(context_enc) + len(continuation_enc) <= self.max_length + 1
        )

    def _rows_per_batch(self, requests: Sequence[Request], override_bs: int | None) -> int:
        if override_bs is not None:
            return override_bs
        if self.batch_size != "auto":
            return int(self.batch_size)
        # Detected once per call, on every rank alike (the detection gathers across data
        # parallel ranks). hf's probe runs full context+continuation rows, which use more
        # memory than the rows here, so the size it finds is safe.
        longest = max(range(len(requests)), key=lambda i: len(requests[i][1]) + len(requests[i][2]))
        return self._detect_batch_size(requests, longest)

    # -- the forward passes ------------------------------------------------------------------

    def _score_batch(
        self, batch: list[tuple[tuple[int, ...], dict[tuple[int, ...], list[int]]]]
    ) -> list[list[tuple[float, bool]]]:
        """Per context in ``batch``, the answer for each of its continuations, in order."""
        device = self.device
        contexts = [context for context, _ in batch]
        width = max(len(c) for c in contexts)
        pad = self.tokenizer.pad_token_id or 0
        ctx_ids = torch.full((len(contexts), width), pad, dtype=torch.long, device=device)
        ctx_mask = torch.zeros((len(contexts), width), dtype=torch.long, device=device)
        for row, context in enumerate(contexts):
            ctx_ids[row, width - len(context) :] = torch.tensor(context, device=device)
            ctx_mask[row, width - len(context) :] = 1
        ctx_lens = ctx_mask.sum(dim=1)

        # One row per continuation; continuation_enc[0] is predicted by the context's last
        # logit, the rest by a second pass over continuation_enc[:-1] on top of the cache.
        owners: list[int] = []
        conts: list[tuple[int, ...]] = []
        for row, (_, group_conts) in enumerate(batch):
            for cont in group_conts:
                owners.append(row)
                conts.append(cont)
        owner_idx = torch.tensor(owners, dtype=torch.long, device=device)

        with torch.no_grad(), self._autocast():
            padded = {
                "attention_mask": ctx_mask,
                "position_ids": (ctx_mask.cumsum(1) - 1).clamp(min=0),
            }
            first = self._forward(
                input_ids=ctx_ids,
                use_cache=True,
                last_only=True,
                # Without padding the model's own causal mask is the same thing, and lets
                # attention take its faster is_causal path (~20% less time on CPU at 500 tokens).
                **(padded if bool((ctx_mask == 0).any()) else {}),
            )
            first_logprobs = F.log_softmax(first.logits[:, -1, :], dim=-1, dtype=self.softmax_dtype)
            first_logprobs = first_logprobs[owner_idx]  # [rows, vocab]

            tail_len = max(len(cont) for cont in conts) - 1
            tail_logprobs = None
            if tail_len > 0:
                cache = _select_rows(_cache_of(first), owner_idx)
                del first
                tail_ids = torch.full((len(conts), tail_len), pad, dtype=torch.long, device=device)
                tail_mask = torch.zeros_like(tail_ids)
                for row, cont in enumerate(conts):
                    tail_ids[row, : len(cont) - 1] = torch.tensor(cont[:-1], device=device)
                    tail_mask[row, : len(cont) - 1] = 1
                positions = ctx_lens[owner_idx, None] + torch.arange(tail_len, device=device)
                tail = self._forward(
                    input_ids=tail_ids,
                    attention_mask=torch.cat([ctx_mask[owner_idx], tail_mask], dim=1),
                    position_ids=positions,
                    use_cache=True,
                    **{self._cache_arg(): cache},
                )
                tail_logprobs = F.log_softmax(tail.logits, dim=-1, dtype=self.softmax_dtype)

        answers: list[list[tuple[float, bool]]] = [[] for _ in batch]
        for row, (owner, cont) in enumerate(zip(owners, conts, strict=True)):
            logprobs = first_logprobs[row, None, :]  # [1, vocab]
            if len(cont) > 1:
                logprobs = torch.cat([logprobs, tail_logprobs[row, : len(cont) - 1]], dim=0)
            target = torch.tensor(cont, dtype=torch.long, device=logprobs.device)
            is_greedy = bool((logprobs.argmax(dim=-1) == target).all())
            # Summed as hf sums them: the gathered logprobs of the continuation tokens.
            token_logprobs = torch.gather(logprobs, 1, target[:, None]).squeeze(-1)
            answers[owner].append((float(token_logprobs.sum()), is_greedy))
        return answers

    def _autocast(self):
        # The autocast hf's _model_call applies (a no-op unless mixed_precision_dtype is set).
        return torch.autocast(
            device_type=self.device.type,
            dtype=self.mixed_precision_dtype,
            enabled=self.mixed_precision_dtype is not None,
        )

    def _cache_arg(self) -> str:
        # transformers 5 renamed the forward argument ``past_key_values`` to ``cache``.
        return "past_key_values" if "past_key_values" in self._forward_params else "cache"

    def _forward(self, *, last_only: bool = False, **inputs):
        # Only the last context position needs logits: skipping the vocabulary projection
        # for the rest saves a fifth of the work for a small model like SmolLM2.
        if last_only and "logits_to_keep" in self._forward_params:
            inputs["logits_to_keep"] = 1
        return self.model(**inputs)


# Padding a batch may add, as a share of its context tokens. Padding costs as much as real
# tokens: measured on CPU over 96 real questions of all lengths, unlimited padding made batch
# 32 take 1.7x as long as batch 8 (40% of its context tokens were padding).
MAX_PADDING = 0.1


def _pack(ordered: list, rows_per_batch: int):
    """Whole context groups, longest context first, at most ``rows_per_batch`` rows (but at
    least one group) and at most ``MAX_PADDING`` padding: a batch is cut where the contexts
    get much shorter, so big batches form only where many contexts have similar lengths."""
    batch, rows, tokens = [], 0, 0
    for item in ordered:
        context, conts = item
        if batch:
            width = len(batch[0][0])  # the longest, as ``ordered`` is sorted by length
            padding = (len(batch) + 1) * width - (tokens + len(context))
            if rows + len(conts) > rows_per_batch or padding > MAX_PADDING * (
                tokens + len(context)
            ):
                yield batch
                batch, rows, tokens = [], 0, 0
        batch.append(item)
        rows += len(conts)
        tokens += len(context)
    if batch:
        yield batch


def _cache_of(output):
    # The output field followed the same rename as the argument.
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _select_rows(cache, index: torch.Tensor):
    """The cache with row ``index[i]`` at row i: one copy of the context per continuation."""
    if hasattr(cache, "reorder_cache"):
        # transformers' Cache: index_select along the batch dimension, layer by layer, on
        # each layer's own device (layers may sit on different GPUs with parallelize=True).
        cache.reorder_cache(index)
        return cache
    # Legacy tuple-of-tuples cache from older remote-code models.
    return tuple(tuple(t.index_select(0, index.to(t.device)) for t in layer) for layer in cache)
