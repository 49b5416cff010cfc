"""lm-eval's HF backend, scoring each shared token prefix once: registered as ``hf-prefix``.

A multiple-choice question becomes one loglikelihood request per option, all with the same
context (``Human: ...\\n\\nAssistant:``) and a short continuation (`` (A)``, `` (B)``, ...).
lm-eval's ``hf`` model runs the whole context again for every option. This class runs each
token prefix that several requests share once: the same numbers up to floating-point
rounding. Requests are grouped in two steps:

- requests with identical context tokens form one context (about half the tokens of ``hf``
  for this suite, the options in one order);
- distinct contexts that share a stem form a cluster: sorted by their tokens, contexts with a
  common prefix are neighbours, and a context joins its neighbours' cluster when the stem
  they would share (at least ``MIN_STEM`` tokens) saves more tokens than the cluster saved
  without it. The case this is for: a question scored in every cyclic order of its options
  sends k contexts that agree up to the option block. Over the human-written suite with the
  SmolLM2 tokenizer, every order with each context run whole costs 2.17x the context tokens
  of the written order alone; with the stem once per question, 1.38x (lm-written: 2.00x and
  1.39x; ``benchmarks/bench_prefix_sharing.py --count-rotations``).

How a cluster runs (``sharing``):

- ``tree`` (the default where the model allows it): the cluster is one row of one forward
  pass, the token trie of all its requests (``token_trees.py``: the stem, each order's option
  block, the `` (`` the options share, each letter) under a tree attention mask with each
  token at its depth. Each batch of clusters is a single pass, reading no KV cache but the
  preamble's (below). This
  needs a custom 4D mask to reach attention unchanged (``sdpa`` and ``eager`` attention;
  not flash-attention), ``logits_to_keep`` in the forward (the vocabulary projection runs
  for the trie's last columns only, where the nodes whose log-probabilities are needed are
  placed), and no sliding window shorter than a request (a tree mask would replace it).
- ``cache`` (otherwise, or ``sharing=cache`` in the model args): the stem runs once, each
  context's suffix (its option block and the assistant cue) on a copy of the stem's cache,
  then its continuations on copies of the context's cache: three kinds of pass per batch.

On 2 CPU cores per-pass overhead dominates small models (a pass streams all weights once),
so the tree rows are what bring every cyclic order close to the token ratio: 1.40x the wall
time of the written order on a 240-question sample, against 2.0x with the cache passes
(BENCHMARKS.md).

A preamble every context of the call starts with (a chat template's header, a system prompt,
``Human:``) runs once for the call in the tree path: its KV cache is computed once, every
tree row reads a copy of it (each node may attend to it; positions continue after it), and
clusters form on what follows it, so it never chains questions into one row. Without it, a
long system prompt made every question join one cluster, a single row whose dense mask grew
with the square of the run. Rows are bounded too: a cluster stops at
``MAX_CLUSTER_TOKENS`` of its own, and a pass holds no more tokens than ``batch_size`` rows of
the longest request (what ``hf``'s pass would hold, and what ``auto`` measures).

Which models share at all is an allow-list (:mod:`propensity_evals.shared_scoring`): a model
type or attention kernel not shown exact against ``hf`` is scored per option by ``HFLM``'s
own code, with one line saying so. On top of it, the first batch scored the shared way is
checked against ``hf``'s per-option scores of a few of its requests
(:mod:`propensity_evals.self_check`); on a mismatch the run scores everything per option
and says so. ``self_check=False`` in the model args skips the check.

What stays exactly as in ``hf``:

- tokenisation: requests arrive already encoded by lm-eval's ``_encode_pair``, and the model
  sees precisely ``context_enc + continuation_enc[:-1]``, the tokens ``hf`` feeds it, each
  at the position it has there;
- the answer per request, ``(sum of continuation token logprobs, is_greedy)``, returned in the
  original order and written to lm-eval's request cache (``--use_cache``) as each batch ends;
- everything else: generation, ``loglikelihood_rolling``, seq2seq models, requests that
  ``hf`` would truncate, and models whose forward takes no KV cache or position ids all go
  through ``HFLM`` unchanged.

``batch_size`` bounds the rows of every forward pass, as in ``hf``. Tree rows: a batch holds at
most ``batch_size`` clusters, widest first, and no more tokens (preamble included) than
``batch_size`` rows of the longest request left, each row keeping logits only for its last
columns (its contexts' ends and continuation tokens; an ``hf`` row keeps them for every token),
and no KV cache but a copy of the preamble's. Cache passes: a batch holds whole clusters, at
most ``batch_size`` contexts in all (one cluster of more contexts runs alone, its suffixes in
several passes from copies of the stem's cache), and its continuations are scored
``batch_size`` rows per pass from copies of the contexts' cache; stems and suffixes are
left-padded in their passes (the padding between a stem and its suffix is masked out, and
position ids count real tokens only), so each context's last token sits in the last column.
Either way, batches are cut where padding would pass ``MAX_PADDING`` of their tokens.

``batch_size=auto`` and ``auto:N`` run ``hf``'s probe (the largest of ``max_batch_size``,
0.9 times that, ... that runs rows of the longest request 5 times) at the same fractions of the
run as ``hf``, for the longest request left, but on each data-parallel rank alone: ``hf``
takes the minimum over ranks with an all-gather, which hangs a run when one rank has nothing to
score (all its answers cached by ``--use_cache``) and never reaches it. No rank needs
another's size, as scoring here involves no collective.
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import lm_eval.models  # noqa: F401  (registers lm-eval's own model names before ours)
import numpy as np
import torch
import torch.nn.functional as F
from accelerate import find_executable_batch_size
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils_hf import clear_torch_cache
from tqdm import tqdm

from propensity_evals import self_check
from propensity_evals.chat_rendering import ClosedThinkingChatMixin
from propensity_evals.shared_scoring import PER_OPTION, model_type_of, refusal
from propensity_evals.token_trees import TokenTree, build_tree

logger = logging.getLogger(__name__)

# lm-eval's encoded request: ((context, continuation) or None, context_enc, continuation_enc)
Request = tuple[tuple[str, str] | None, list[int], list[int]]
# A context and its continuations, each with the indices of the requests asking for it.
Group = tuple[tuple[int, ...], dict[tuple[int, ...], list[int]]]
# (rows already scored, tokens of the longest request left) -> rows each pass may hold
RowLimit = Callable[[int, int], int]


@register_model("hf-prefix")
class PrefixSharingLM(ClosedThinkingChatMixin, HFLM):
    """``HFLM`` that runs each shared context prefix once per loglikelihood call (and renders
    chat prompts with any thinking block closed: :mod:`propensity_evals.chat_rendering`).

    ``sharing``: ``tree`` (default) runs each cluster as one row under a tree attention mask
    where the model's attention takes one (``sdpa``, ``eager``), else ``cache``;
    ``cache`` always runs stems, suffixes and continuations as passes on KV caches."""

    def __init__(self, *args, sharing: str = "tree", self_check: bool | str = True, **kwargs):
        if sharing not in ("tree", "cache"):
            raise ValueError(f"hf-prefix: sharing={sharing!r}: use sharing=tree or sharing=cache")
        self.sharing = sharing
        # The first shared batch is checked against hf's per-option scores (self_check.py);
        # self_check=False skips that (the tests of the pass structure log shared passes only).
        self._self_check_pending = str(self_check).lower() not in ("false", "0", "no")
        super().__init__(*args, **kwargs)

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
            # Requests hf would left-truncate (or that are malformed) get hf's own treatment.
            override_bs = self._score_per_option(requests, rest, results, disable_tqdm, override_bs)
        if not shared:
            return results  # type: ignore[return-value]

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
        longest = max(len(ctx) + len(cont) - 1 for ctx, conts in groups.items() for cont in conts)
        tree = self._can_use_tree_masks(longest)
        # Tree rows: the tokens every context starts with (a chat template's header, a system
        # prompt, ``Human:``) run once for the call, as a KV cache every row reads, and
        # clusters form on what follows, so that no preamble chains questions together. The
        # cache passes run each stem whole, so they cluster on whole contexts (a cluster's
        # width is capped either way).
        preamble = _preamble(list(groups)) if tree else ()
        # Longest stems first (for contexts alone, longest contexts first, as in hf): little
        # padding within a batch, and an out-of-memory error shows up early.
        clusters = sorted(
            _cluster(groups, skip=len(preamble)),
            key=lambda c: (-c.stem, -c.longest, c.groups[0][0]),
        )
        rows = sum(len(conts) for conts in groups.values())
        row_limit = self._row_limit(rows, override_bs)
        if tree:
            for cluster in clusters:
                cluster.tree = build_tree(
                    [
                        (ctx[len(preamble) :], cont)
                        for ctx, conts in cluster.groups
                        for cont in conts
                    ]
                )
            # One row per cluster, widest first.
            clusters.sort(key=lambda cluster: -cluster.tree.width)
            batches = _pack(
                clusters,
                row_limit,
                lambda cluster: 1,
                _tree_padding,
                # The row holds the preamble's width too (as cached keys and values).
                row_tokens=lambda batch: len(batch) * (len(preamble) + _widest(batch)),
            )
            preamble_cache = self._run_preamble(preamble)

            def score(batch, limit):
                return self._score_trees(batch, len(preamble), preamble_cache)

        else:
            batches = _pack(clusters, row_limit, lambda cluster: len(cluster.groups), _padding)
            score = self._score_batch
        for batch, limit in batches:
            per_cluster = _by_cluster(batch, score(batch, limit))
            if self._self_check_pending:
                self._self_check_pending = False
                reason = self._self_check(requests, per_cluster, limit)
                if reason is not None:
                    # Nothing shared has been returned or cached yet: all of it goes to hf.
                    pbar.close()
                    self._score_per_option(requests, shared, results, disable_tqdm, override_bs)
                    return results  # type: ignore[return-value]
            for pairs in per_cluster:
                for indices, answer in pairs:
                    for i in indices:
                        results[i] = answer
                        # Cached as each batch finishes, as hf does: a run that stops later
                        # keeps these answers (--use_cache).
                        if requests[i][0] is not None:
                            self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
                    pbar.update(len(indices))
        pbar.close()
        return results  # type: ignore[return-value]

    def _score_per_option(
        self, requests: list[Request], indices: list[int], results: list, disable_tqdm: bool,
        override_bs: int | None,
    ) -> int | None:  # fmt: skip
        """``requests[i]`` for each i in ``indices`` scored by hf's own code, into
        ``results[i]``; returns the batch size it used. With ``auto``, the size comes from our
        probe: hf's own detection would gather across ranks."""
        if override_bs is None and self.batch_size == "auto":
            override_bs = self._probe_rows(self.max_length)
        scored = super()._loglikelihood_tokens(
            [requests[i] for i in indices], disable_tqdm, override_bs=override_bs
        )
        for i, answer in zip(indices, scored, strict=True):
            results[i] = answer
        return override_bs

    def _self_check(
        self, requests: list[Request], per_cluster: list[list[tuple[list[int], tuple]]], limit
    ) -> str | None:
        """Score a sample of the first batch's requests per option with hf's own code and
        compare (self_check.py). On a mismatch, say so once and share nothing from here on
        (this call and every later one); return the reason, else None."""
        picked = self_check.sample([[indices[0] for indices, _ in pairs] for pairs in per_cluster])
        shared = {indices[0]: answer for pairs in per_cluster for indices, answer in pairs}
        per_option = super()._loglikelihood_tokens(
            [requests[i] for i in picked], disable_tqdm=True, override_bs=min(limit, len(picked))
        )
        dtype = self.mixed_precision_dtype or self.model.dtype
        reason = self_check.disagreement([shared[i] for i in picked], per_option, dtype)
        if reason is not None:
            self._refusal = reason
            if self.rank == 0:
                logger.warning(
                    "hf-prefix: %s; scoring %s from here on, as lm-eval's hf does",
                    reason,
                    PER_OPTION,
                )
        return reason

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
        if "position_ids" not in params or not ({"cache", "past_key_values"} & params.keys()):
            return False
        return self._sharing_refusal() is None

    def _sharing_refusal(self) -> str | None:
        """Why this model's prefixes must not be shared (shared_scoring's allow-list), said
        once in one line; None where sharing is verified exact."""
        if not hasattr(self, "_refusal"):
            config = self.model.config
            text_config = getattr(config, "get_text_config", lambda: config)()
            self._refusal = refusal(
                model_type_of(config.to_dict()),
                getattr(text_config, "_attn_implementation", None),
            )
            if self._refusal is not None and self.rank == 0:
                logger.warning(
                    "hf-prefix: %s; scoring %s, as lm-eval's hf does (same numbers, no "
                    "shared work)",
                    self._refusal,
                    PER_OPTION,
                )
        return self._refusal

    def _can_use_tree_masks(self, longest_request: int = 0) -> bool:
        """Whether a custom 4D attention mask reaches attention unchanged (``sdpa`` and
        ``eager`` take it as given; flash-attention takes none), the forward can limit its
        logits, and no sliding window is shorter than the longest request (the tree mask
        would replace the window's own mask)."""
        if self.sharing != "tree" or "logits_to_keep" not in self._forward_params:
            return False
        config = self.model.config
        config = getattr(config, "get_text_config", lambda: config)()
        if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager"):
            return False
        window = getattr(config, "sliding_window", None)
        return not window or longest_request <= window

    def _run_preamble(self, preamble: tuple[int, ...]):
        """The KV cache of the tokens every context starts with (None if there are none)."""
        if not preamble:
            return None
        with torch.no_grad(), self._autocast():
            ids = torch.tensor([preamble], dtype=torch.long, device=self.device)
            return _cache_of(self.model(input_ids=ids, use_cache=True, logits_to_keep=1))

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
        """How many rows each pass of a batch may hold, as the run goes."""
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

    def _score_batch(self, batch: list[Cluster], limit: int) -> list[list[tuple[float, bool]]]:
        """Per context in ``batch`` (its clusters' contexts, in order), the answer for each of
        its continuations, in order; at most ``limit`` rows per forward pass."""
        groups = [group for cluster in batch for group in cluster.groups]
        owners = [n for n, cluster in enumerate(batch) for _ in cluster.groups]
        stems = [cluster.groups[0][0][: cluster.stem] for cluster in batch]
        suffixes = [group[0][cluster.stem :] for cluster in batch for group in cluster.groups]
        with torch.no_grad(), self._autocast():
            stem_ids, stem_mask = self._left_padded(stems)
            first = self._forward(
                input_ids=stem_ids,
                use_cache=True,
                last_only=True,
                # Without padding the model's own causal mask is the same thing, and lets
                # attention take its faster is_causal path (~20% less time on CPU at 500 tokens).
                **(self._padded_inputs(stem_mask) if bool((stem_mask == 0).any()) else {}),
            )
            stem_logprobs = self._logprobs(first.logits[:, -1, :])
            stem_cache = _cache_of(first)
            del first
            if not any(suffixes):
                # Every context is its cluster's stem: identical contexts only, as in a run
                # with each question's options in one order.
                lens = stem_mask.sum(dim=1)
                return self._score_continuations(
                    groups, stem_cache, stem_mask, lens, stem_logprobs, limit
                )

            answers: list[list[tuple[float, bool]]] = []
            chunks = list(_chunks(groups, limit))
            for chunk in chunks:
                rows = torch.tensor(owners[chunk.start : chunk.stop], device=self.device)
                cache = _select_rows(stem_cache, rows, keep=chunk is not chunks[-1])
                mask, lens, first_logprobs, cache = self._run_suffixes(
                    [suffixes[i] for i in chunk], cache, stem_mask[rows], stem_logprobs[rows]
                )
                answers += self._score_continuations(
                    groups[chunk.start : chunk.stop], cache, mask, lens, first_logprobs, limit
                )
            return answers

    def _score_trees(
        self, batch: list[Cluster], skip: int = 0, preamble_cache=None
    ) -> list[list[tuple[float, bool]]]:
        """Per context in ``batch``, the answer for each of its continuations, from one
        forward pass: one row per cluster (as many as ``_pack`` kept), the trie of its
        requests after their first ``skip`` tokens (the preamble every context starts with)
        under a tree mask; those ``skip`` tokens are read from ``preamble_cache``, which every
        node may attend to."""
        trees = [cluster.tree for cluster in batch]
        width = max(tree.width for tree in trees)
        kept = max(tree.kept for tree in trees)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(trees), width), pad, dtype=torch.long)
        positions = torch.full((len(trees), width), skip, dtype=torch.long)
        allowed = np.zeros((len(trees), width, skip + width), dtype=bool)
        allowed[:, :, :skip] = True  # the preamble precedes every node
        allowed[:, range(width), range(skip, skip + width)] = True  # padding: itself only
        for row, tree in enumerate(trees):
            start = width - tree.width  # left-padded: every row's kept nodes end it
            ids[row, start:] = torch.tensor(tree.tokens)
            positions[row, start:] = skip + torch.tensor(tree.depths)
            allowed[row, start:, skip + start :] = tree.ancestors()
        dtype = self.mixed_precision_dtype or self.model.dtype
        mask = torch.zeros((len(trees), 1, width, skip + width), dtype=dtype)
        mask.masked_fill_(~torch.from_numpy(allowed)[:, None], torch.finfo(dtype).min)
        inputs = {}
        if preamble_cache is not None:
            # One copy of the preamble's cache per row; the pass appends the row to it.
            rows = torch.zeros(len(trees), dtype=torch.long, device=self.device)
            inputs[self._cache_arg()] = _select_rows(preamble_cache, rows, keep=True)

        with torch.no_grad(), self._autocast():
            logits = self.model(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=positions.to(self.device),
                use_cache=preamble_cache is not None,
                logits_to_keep=kept,
                **inputs,
            ).logits
            del inputs
            # Row ``row``'s tree column c sits at logits column kept - tree.width + c.
            rows, cols, targets, spans = [], [], [], []
            for row, (tree, cluster) in enumerate(zip(trees, batch, strict=True)):
                conts = [cont for _, group_conts in cluster.groups for cont in group_conts]
                for predictors, cont in zip(tree.predictors, conts, strict=True):
                    spans.append((len(targets), len(targets) + len(cont)))
                    rows += [row] * len(cont)
                    cols += [kept - tree.width + col for col in predictors]
                    targets += cont
            logprobs = self._logprobs(logits[torch.tensor(rows), torch.tensor(cols)])
            del logits
            target = torch.tensor(targets, device=logprobs.device)
            token_logprobs = logprobs.gather(1, target[:, None]).squeeze(-1)
            greedy = logprobs.argmax(dim=-1) == target

        answers: list[list[tuple[float, bool]]] = []
        spans_left = iter(spans)
        for cluster in batch:
            for _, conts in cluster.groups:
                context_answers = []
                for _ in conts:
                    a, b = next(spans_left)
                    context_answers.append(
                        (float(token_logprobs[a:b].sum()), bool(greedy[a:b].all()))
                    )
                answers.append(context_answers)
        return answers

    def _run_suffixes(self, suffixes, cache, stem_mask, stem_logprobs):
        """Each context's tokens after its stem, on top of a copy of the stem's cache (row i:
        context i's stem): the contexts' attention mask, lengths, logprobs of the token after
        each, and their cache.

        Suffixes are left-padded, so each context's last token sits in the last column and
        its continuations append without a gap; the padding between stem and suffix is masked
        out, and position ids count real tokens only, so each token sees what it would in the
        context run alone. A context that is its stem (an empty suffix: all padding here)
        keeps the stem pass's logprobs."""
        suffix_ids, suffix_mask = self._left_padded(suffixes)
        stem_lens = stem_mask.sum(dim=1, keepdim=True)
        mask = torch.cat([stem_mask, suffix_mask], dim=1)
        out = self._forward(
            input_ids=suffix_ids,
            attention_mask=mask,
            position_ids=stem_lens + (suffix_mask.cumsum(1) - 1).clamp(min=0),
            use_cache=True,
            last_only=True,
            **{self._cache_arg(): cache},
        )
        empty = suffix_mask[:, -1:] == 0
        logprobs = torch.where(empty, stem_logprobs, self._logprobs(out.logits[:, -1, :]))
        return mask, mask.sum(dim=1), logprobs, _cache_of(out)

    def _score_continuations(
        self, groups: list[Group], cache, ctx_mask, ctx_lens, first_logprobs, limit: int
    ) -> list[list[tuple[float, bool]]]:
        """Per context (row i of ``cache``, ``ctx_mask``...: ``groups[i]``), the answer for
        each of its continuations: continuation_enc[0] is predicted by the context's last
        logit (``first_logprobs``), the rest by a pass over continuation_enc[:-1] on top of
        a copy of the context's cache."""
        device = self.device
        owners = [row for row, (_, conts) in enumerate(groups) for _ in conts]
        conts = [cont for _, group_conts in groups for cont in group_conts]
        owner_idx = torch.tensor(owners, dtype=torch.long, device=device)
        pad = self.tokenizer.pad_token_id or 0

        answers: list[list[tuple[float, bool]]] = [[] for _ in groups]
        # Only contexts with more continuations than ``limit`` take several chunks; all but
        # the last keep the contexts' cache.
        starts = range(0, len(conts), limit)
        for start in starts:
            chunk = range(start, min(start + limit, len(conts)))
            tail_logprobs = None
            tail_len = max(len(conts[row]) for row in chunk) - 1
            if tail_len > 0:
                rows = owner_idx[chunk.start : chunk.stop]
                chunk_cache = _select_rows(cache, rows, keep=start != starts[-1])
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
                tail_logprobs = self._logprobs(tail.logits)
                del tail
            for i, row in enumerate(chunk):
                cont = conts[row]
                logprobs = first_logprobs[owners[row], None, :]  # [1, vocab]
                if len(cont) > 1:
                    logprobs = torch.cat([logprobs, tail_logprobs[i, : len(cont) - 1]], dim=0)
                answers[owners[row]].append(_answer(logprobs, cont))
        return answers

    def _left_padded(self, seqs: list[tuple[int, ...]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask of ``seqs``, each ending in the last column."""
        width = max(len(seq) for seq in seqs)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            if seq:
                ids[row, width - len(seq) :] = torch.tensor(seq)
                mask[row, width - len(seq) :] = 1
        return ids.to(self.device), mask.to(self.device)

    @staticmethod
    def _padded_inputs(mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"attention_mask": mask, "position_ids": (mask.cumsum(1) - 1).clamp(min=0)}

    def _logprobs(self, logits: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)

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


# Tokens a cluster's row may hold beyond the preamble (contexts beyond it start a cluster of
# their own; the numbers stay the same, less is shared). A question's every cyclic order fits:
# about 1,500 tokens for the longest eight-option human-written question.
MAX_CLUSTER_TOKENS = 4096

# Contexts that share fewer tokens than this run whole: a shorter stem saves less than the
# bookkeeping of one more pass costs. Every question's rendered prompt starts with a few
# shared tokens (``Human:``), so a small floor keeps distinct questions apart.
MIN_STEM = 16


@dataclass
class Cluster:
    """Distinct contexts that share their first ``stem`` tokens, run once for all of them;
    each context's remaining tokens (its suffix, empty for a context that is the stem) run on
    top of a copy of the stem's cache."""

    stem: int
    groups: list[Group]
    tree: TokenTree | None = None  # its requests' trie, where it runs as one row

    @property
    def rows(self) -> int:
        return sum(len(conts) for _, conts in self.groups)

    @property
    def longest_request(self) -> int:
        """Tokens the model sees for its longest request, as hf feeds it."""
        return max(len(ctx) + len(cont) - 1 for ctx, conts in self.groups for cont in conts)

    @property
    def longest(self) -> int:
        return max(len(context) for context, _ in self.groups)


def _cluster(
    groups: dict[tuple[int, ...], dict[tuple[int, ...], list[int]]], skip: int = 0
) -> list[Cluster]:
    """The distinct contexts in clusters of shared stems: the second level of a token trie.

    In sorted order, contexts sharing a prefix are neighbours (the rotations of one
    question's options share everything up to the option block), and a run's common prefix
    is the shortest common prefix of neighbours in it. Only what follows the first ``skip``
    tokens counts (the preamble every context starts with, run once for the call): a context
    joins the run before it when the stem it leaves there saves more tokens than the run
    saved without it (n contexts on a stem s run (n-1)s fewer tokens), unless it shares at
    least twice as many tokens with the context after it: that is the start of the next
    question's run. A cluster stops growing at ``MAX_CLUSTER_TOKENS`` of its own (its row's
    width), so no row grows with the number of questions: a chat template's header or a
    system prompt, however long, never pulls questions together.
    A context alone is its own stem, as identical contexts were before: one pass, no
    suffix.
    """
    ordered = sorted(groups.items())
    clusters: list[Cluster] = []
    for i, (context, conts) in enumerate(ordered):
        if clusters:
            last = clusters[-1]
            shared = _common_prefix(last.groups[-1][0], context) - skip
            after = _common_prefix(context, ordered[i + 1][0]) - skip if i + 1 < len(ordered) else 0
            n = len(last.groups)
            own = shared if n == 1 else min(last.stem - skip, shared)
            saved_before = 0 if n == 1 else (n - 1) * (last.stem - skip)
            contexts = [*(ctx for ctx, _ in last.groups), context]
            width = sum(len(ctx) - skip for ctx in contexts) - n * own
            if (
                own >= MIN_STEM
                and n * own > saved_before
                and after < 2 * shared
                and width <= MAX_CLUSTER_TOKENS
            ):
                last.stem = skip + own
                last.groups.append((context, conts))
                continue
        clusters.append(Cluster(stem=len(context), groups=[(context, conts)]))
    for cluster in clusters:
        # Longest suffix first: little padding when a cluster's suffixes take several passes.
        cluster.groups.sort(key=lambda group: -len(group[0]))
    return clusters


def _preamble(contexts: list[tuple[int, ...]]) -> tuple[int, ...]:
    """The tokens every context starts with, leaving each at least its last token (whose
    logits predict the continuations)."""
    shortest = min(len(context) for context in contexts)
    first = contexts[0]
    n = shortest - 1
    for context in contexts[1:]:
        n = min(n, _common_prefix(first[:n], context))
    return first[:n]


def _common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


# Padding a batch may add, as a share of its context tokens. Padding costs as much as real
# tokens: measured on CPU over 96 real questions of all lengths, unlimited padding made batch
# 32 take 1.7x as long as batch 8 (40% of its context tokens were padding).
MAX_PADDING = 0.1


def _padding(batch: list[Cluster]) -> tuple[int, int]:
    """(padding, real tokens) of the stem pass and, where any context has a suffix, the
    suffix pass that ``_score_batch`` runs for ``batch`` in one go."""
    stems = [cluster.stem for cluster in batch]
    suffixes = [len(ctx) - cluster.stem for cluster in batch for ctx, _ in cluster.groups]
    padding = len(stems) * max(stems) - sum(stems)
    if any(suffixes):
        padding += len(suffixes) * max(suffixes) - sum(suffixes)
    return padding, sum(stems) + sum(suffixes)


def _widest(batch: list[Cluster]) -> int:
    return max(cluster.tree.width for cluster in batch)


def _tree_padding(batch: list[Cluster]) -> tuple[int, int]:
    """(padding, real tokens) of the one pass that ``_score_trees`` runs for ``batch``."""
    widths = [cluster.tree.width for cluster in batch]
    return len(widths) * max(widths) - sum(widths), sum(widths)


def _pack(
    ordered: list[Cluster],
    row_limit: RowLimit,
    rows_of: Callable[[Cluster], int],
    padding_of: Callable[[list[Cluster]], tuple[int, int]],
    row_tokens: Callable[[list[Cluster]], int] | None = None,
) -> Iterator[tuple[list[Cluster], int]]:
    """Batches of whole clusters, in ``ordered``'s order, each with its row limit: clusters
    taking at most that many rows by ``rows_of`` (but at least one cluster; cache passes:
    contexts, whose continuations then take as many passes of that many rows as they need;
    tree rows: one per cluster), and at most ``MAX_PADDING`` padding by ``padding_of``: a
    batch is cut where the rows get much shorter, so big batches form only where many have
    similar lengths. The limit is asked for as each batch starts, after the one before has
    been scored (when auto:N detects again), for the longest request from there on.

    ``row_tokens`` (tree rows, which are wider than any one request): the tokens a batch's
    pass holds, kept within the limit's rows of the longest request from there on, the
    tokens an ``hf`` pass of that many rows would hold (what ``auto`` measures); a cluster
    wider than that still runs, alone."""
    # Requests from each cluster on, longest: what the batch-size probe must fit.
    longest = [cluster.longest_request for cluster in ordered]
    for i in range(len(longest) - 2, -1, -1):
        longest[i] = max(longest[i], longest[i + 1])
    batch: list[Cluster] = []
    taken = done = rows = limit = budget = 0
    for i, cluster in enumerate(ordered):
        if batch:
            padding, tokens = padding_of([*batch, cluster])
            over_budget = row_tokens is not None and row_tokens([*batch, cluster]) > budget
            if taken + rows_of(cluster) > limit or padding > MAX_PADDING * tokens or over_budget:
                yield batch, limit
                batch, done, taken, rows = [], done + rows, 0, 0
        if not batch:
            limit = max(1, row_limit(done, longest[i]))
            budget = limit * longest[i]
        batch.append(cluster)
        taken += rows_of(cluster)
        rows += cluster.rows
    if batch:
        yield batch, limit


def _by_cluster(
    batch: list[Cluster], answers: list[list[tuple[float, bool]]]
) -> list[list[tuple[list[int], tuple[float, bool]]]]:
    """Per cluster of ``batch``, (indices of the requests asking, answer) for each of its
    requests; ``answers``: per context in the batch, one answer per continuation."""
    per_context = iter(answers)
    return [
        [
            (indices, answer)
            for _, conts in cluster.groups
            for indices, answer in zip(conts.values(), next(per_context), strict=True)
        ]
        for cluster in batch
    ]


def _chunks(groups: list[Group], limit: int) -> Iterator[range]:
    """Consecutive runs of at most ``limit`` contexts: the suffix passes of a batch (several
    only for a cluster of more contexts than a pass holds)."""
    for start in range(0, len(groups), limit):
        yield range(start, min(start + limit, len(groups)))


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
