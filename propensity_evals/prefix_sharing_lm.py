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

``batch_size`` counts scored requests (continuation rows) per forward pass, as in ``hf``, and
no pass holds more: whole questions are packed into a batch, and a question with more options
than a batch holds has its context run once and its continuations scored in several passes
from copies of that context's cache, so memory stays below that of an ``hf`` batch of the same
size. Contexts in a batch are left-padded, the layout of batched generation that every HF
attention implementation supports, so each row's last context token sits in the last column
and the continuations append without holes in the cache.

``batch_size=auto`` and ``auto:N`` run ``hf``'s probe (the largest of ``max_batch_size``,
0.9 times that, ... that runs rows of the longest request 5 times) at the same fractions of the
run as ``hf``, but on each data-parallel rank alone: ``hf`` takes the minimum over ranks with an
all-gather, which hangs a run when one rank has nothing to score (all its answers cached by
``--use_cache``) and never reaches it. No rank needs another's size, as scoring here involves no
collective.
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Callable, Iterator

import lm_eval.models  # noqa: F401  (registers lm-eval's own model names before ours)
import torch
import torch.nn.functional as F
from accelerate import find_executable_batch_size
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils_hf import clear_torch_cache
from tqdm import tqdm

from propensity_evals.chat_rendering import ClosedThinkingChatMixin

logger = logging.getLogger(__name__)

# lm-eval's encoded request: ((context, continuation) or None, context_enc, continuation_enc)
Request = tuple[tuple[str, str] | None, list[int], list[int]]
# A context and its continuations, each with the indices of the requests asking for it.
Group = tuple[tuple[int, ...], dict[tuple[int, ...], list[int]]]
# (rows already scored, tokens of the next batch's longest request) -> rows the batch may hold
RowLimit = Callable[[int, int], int]


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
        # (and adds their cache entries per document itself). No requests: nothing to detect.
        if not self._can_share_prefixes() or all(req[0] is None for req in requests):
            return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)

        results: list[tuple[float, bool] | None] = [None] * len(requests)

        shared = [i for i, req in enumerate(requests) if self._fits_without_truncation(req)]
        rest = sorted(set(range(len(requests))) - set(shared))
        if rest:
            # Requests hf would left-truncate (or that are malformed) get hf's own treatment,
            # with a batch size from our probe: hf's own detection would gather across ranks.
            if override_bs is None and self.batch_size == "auto":
                override_bs = self._probe_rows(self.max_length)
            scored = super()._loglikelihood_tokens(
                [requests[i] for i in rest], disable_tqdm, override_bs=override_bs
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
        rows = sum(len(conts) for conts in groups.values())
        for batch, limit in _pack(ordered, self._row_limit(rows, override_bs)):
            for (_, conts), answers in zip(batch, self._score_batch(batch, limit), strict=True):
                for indices, answer in zip(conts.values(), answers, strict=True):
                    for i in indices:
                        results[i] = answer
                        # Cached as each batch finishes, as hf does: a run that stops later
                        # keeps these answers (--use_cache).
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

    def _row_limit(self, total_rows: int, override_bs: int | None) -> RowLimit:
        """How many continuation rows each batch may hold, as the run goes."""
        if override_bs is not None:
            return lambda done, length: override_bs
        if self.batch_size != "auto":
            fixed = int(self.batch_size)
            return lambda done, length: fixed

        # hf's schedule (HFLM._batch_scheduler): auto:N detects again at the start of each
        # N-th of the run (plain auto: N=1), for the longest request from there on, and keeps
        # the sizes in batch_sizes, which lm-eval reports. Sizes are per call, as in hf.
        self.batch_sizes = {}
        span = max(1, int(total_rows / self.batch_schedule))

        def rows_at(done: int, length: int) -> int:
            part = done // span
            if part not in self.batch_sizes:
                last = self.batch_sizes[max(self.batch_sizes)] if self.batch_sizes else None
                # Requests only get shorter, so a size at the maximum stays there (hf skips
                # these probes too).
                if last == self.max_batch_size:
                    self.batch_sizes[part] = last
                else:
                    self.batch_sizes[part] = self._probe_rows(length)
                    logger.info("Detected batch size %d", self.batch_sizes[part])
            return self.batch_sizes[part]

        return rows_at

    def _probe_rows(self, length: int) -> int:
        """hf's batch-size probe (HFLM._detect_batch_size) for rows of ``length`` tokens, on
        this rank alone: the largest of max_batch_size, 0.9x that, ... that runs 5 times.

        hf's rows are full context+continuation rows with logits at every position, more
        memory than a row here takes, so the size it finds is safe for our batches.
        """

        @find_executable_batch_size(starting_batch_size=self.max_batch_size)
        def largest_that_runs(batch_size: int) -> int:
            rows = torch.ones((batch_size, length), dtype=torch.long, device=self.device)
            for _ in range(5):
                F.log_softmax(self._model_call(rows), dim=-1, dtype=self.softmax_dtype)
            return batch_size

        try:
            size = largest_that_runs()
        except RuntimeError as error:
            if "No executable batch size found" not in str(error):
                raise
            size = 1
        clear_torch_cache()
        return size

    # -- the forward passes ------------------------------------------------------------------

    def _score_batch(self, batch: list[Group], limit: int) -> list[list[tuple[float, bool]]]:
        """Per context in ``batch``, the answer for each of its continuations, in order; at
        most ``limit`` continuation rows per forward pass."""
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

        answers: list[list[tuple[float, bool]]] = [[] for _ in batch]
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
            cache = _cache_of(first)
            del first

            # Only a question with more options than ``limit`` (alone in its batch, as _pack
            # makes it) takes several chunks; all but the last keep the context's cache.
            starts = range(0, len(conts), limit)
            for start in starts:
                chunk = range(start, min(start + limit, len(conts)))
                tail_logprobs = None
                tail_len = max(len(conts[row]) for row in chunk) - 1
                if tail_len > 0:
                    rows = owner_idx[chunk.start : chunk.stop]
                    last = start == starts[-1]
                    chunk_cache = _select_rows(cache, rows, keep=not last)
                    tail_ids = torch.full((len(chunk), tail_len), pad, dtype=torch.long)
                    tail_mask = torch.zeros_like(tail_ids)
                    for i, row in enumerate(chunk):
                        tail_ids[i, : len(conts[row]) - 1] = torch.tensor(conts[row][:-1])
                        tail_mask[i, : len(conts[row]) - 1] = 1
                    tail_ids, tail_mask = tail_ids.to(device), tail_mask.to(device)
                    positions = ctx_lens[rows, None] + torch.arange(tail_len, device=device)
                    tail = self._forward(
                        input_ids=tail_ids,
                        attention_mask=torch.cat([ctx_mask[rows], tail_mask], dim=1),
                        position_ids=positions,
                        # The context's cache is read; nothing after this pass needs one.
                        use_cache=False,
                        **{self._cache_arg(): chunk_cache},
                    )
                    del chunk_cache
                    tail_logprobs = F.log_softmax(tail.logits, dim=-1, dtype=self.softmax_dtype)
                    del tail
                for i, row in enumerate(chunk):
                    cont = conts[row]
                    logprobs = first_logprobs[owners[row], None, :]  # [1, vocab]
                    if len(cont) > 1:
                        logprobs = torch.cat([logprobs, tail_logprobs[i, : len(cont) - 1]], dim=0)
                    answers[owners[row]].append(_answer(logprobs, cont))
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


def _pack(ordered: list[Group], row_limit: RowLimit) -> Iterator[tuple[list[Group], int]]:
    """Batches of whole context groups, longest context first, each with its row limit: at
    most that many rows (but at least one group) and at most ``MAX_PADDING`` padding: a batch
    is cut where the contexts get much shorter, so big batches form only where many contexts
    have similar lengths. The limit is asked for as each batch starts, after the one before
    has been scored (when auto:N detects again)."""
    batch: list[Group] = []
    rows = tokens = done = limit = 0
    for item in ordered:
        context, conts = item
        if batch:
            width = len(batch[0][0])  # the longest, as ``ordered`` is sorted by length
            padding = (len(batch) + 1) * width - (tokens + len(context))
            if rows + len(conts) > limit or padding > MAX_PADDING * (tokens + len(context)):
                yield batch, limit
                batch, done, rows, tokens = [], done + rows, 0, 0
        if not batch:
            longest = len(context) + max(len(cont) for cont in conts) - 1
            limit = max(1, row_limit(done, longest))
        batch.append(item)
        rows += len(conts)
        tokens += len(context)
    if batch:
        yield batch, limit


def _answer(logprobs: torch.Tensor, cont: tuple[int, ...]) -> tuple[float, bool]:
    """hf's answer from the logprobs [len(cont), vocab] that predict ``cont``: the logprobs
    of its tokens summed as hf sums them (gathered, then added), and whether each token is the
    most likely one."""
    target = torch.tensor(cont, dtype=torch.long, device=logprobs.device)
    is_greedy = bool((logprobs.argmax(dim=-1) == target).all())
    token_logprobs = torch.gather(logprobs, 1, target[:, None]).squeeze(-1)
    return float(token_logprobs.sum()), is_greedy


def _cache_of(output):
    # The output field followed the same rename as the argument.
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _select_rows(cache, index: torch.Tensor, keep: bool = False):
    """The cache with row ``index[i]`` at row i: one copy of the context per continuation.
    ``keep``: leave ``cache`` usable for another selection (the pass that reads the result
    appends its tokens to it)."""
    if hasattr(cache, "reorder_cache"):
        # transformers' Cache: index_select along the batch dimension, layer by layer, on
        # each layer's own device (layers may sit on different GPUs with parallelize=True),
        # in place, so a cache to keep is copied first (one context: a question cut in chunks).
        if keep:
            cache = copy.deepcopy(cache)
        cache.reorder_cache(index)
        return cache
    # Legacy tuple-of-tuples cache from older remote-code models.
    return tuple(tuple(t.index_select(0, index.to(t.device)) for t in layer) for layer in cache)
