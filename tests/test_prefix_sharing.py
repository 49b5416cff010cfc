"""``hf-prefix`` scores what lm-eval's ``hf`` scores, the shared way, on real questions.

Both models load the embedded SmolLM2 (fp32, CPU) once for the module and score the same
lm-eval ``Instance`` objects, built from real human-written rows as the tasks build them:
context ``Human: {question}\\n\\nAssistant:``, continuations `` (A)``, `` (B)``, ...

Agreeing with ``hf`` is not enough (``HFLM`` itself agrees), so a forward hook on the model
module records every pass, and the tests check what went through it. With ``sharing=tree``
(the default): one row per question, each token prefix once, under a tree mask. With
``sharing=cache``: each distinct context once, continuations on top of its cache, contexts of
different lengths left-padded together, no pass over the batch size, and ``hf``'s batch-size
probe (rows of token id 1) where ``auto`` asks for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.api.model import CachingLM, hash_args
from lm_eval.api.registry import get_model
from lm_eval.models.huggingface import HFLM
from sqlitedict import SqliteDict
from transformers import AutoModelForCausalLM, AutoTokenizer, MistralConfig

from propensity_evals import prefix_sharing_lm as ps
from propensity_evals.option_orders import rotations
from propensity_evals.prefix_sharing_lm import PrefixSharingLM
from propensity_evals.prompts import continuations, render_context
from propensity_evals.questions import parse_row, render_prompt
from propensity_evals.task_docs import build_docs, read_rows
from propensity_evals.token_trees import build_tree
from tests.tiny_models import save_tiny_model

# power-seeking-inclination has questions with 3 options, more than a batch of 2 holds.
FILES = ("power-seeking-inclination", "corrigible-less-HHH", "self-awareness-web-gpt")
PER_FILE = 8
TOL = 1e-3  # fp32; observed differences are ~1e-5


@pytest.fixture(scope="module")
def questions(mirror) -> list[dict]:
    folder = mirror / "advanced-ai-risk" / "human_generated_evals"
    docs = []
    for name in FILES:
        docs += build_docs(folder / f"{name}.jsonl")[:PER_FILE]
    assert max(len(doc["choices"]) for doc in docs) > 2
    return docs


def instances(docs: list[dict]) -> list[Instance]:
    return [
        Instance("loglikelihood", doc, (doc["prompt"], " " + choice), idx)
        for doc in docs
        for idx, choice in enumerate(doc["choices"])
    ]


@pytest.fixture(scope="module")
def weights(smollm2):
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype="float32").eval()
    return model, AutoTokenizer.from_pretrained(smollm2)


def make(cls, weights, **kwargs):
    model, tokenizer = weights
    if cls is PrefixSharingLM:
        # The forward log records the shared passes alone: the start-up self-check's
        # per-option passes are hf's own (tests/test_model_families.py checks the self-check).
        kwargs.setdefault("self_check", False)
    return cls(pretrained=model, tokenizer=tokenizer, device="cpu", **kwargs)


@pytest.fixture(scope="module")
def hf(weights) -> HFLM:
    return make(HFLM, weights, batch_size=8)


@pytest.fixture(scope="module")
def baseline(hf, questions) -> list[tuple[float, bool]]:
    return hf.loglikelihood(instances(questions), disable_tqdm=True)


def baseline_of(questions, baseline, docs) -> list[tuple[float, bool]]:
    """The baseline answers for ``docs``, a slice of ``questions``."""
    answers = dict(zip((r.args for r in instances(questions)), baseline, strict=True))
    return [answers[r.args] for r in instances(docs)]


def assert_same_as_hf(ours, ref, docs) -> None:
    """Each answer within TOL of hf's, the same is_greedy, the same top option per question."""
    assert len(ours) == len(ref)
    for (ll, greedy), (ref_ll, ref_greedy) in zip(ours, ref, strict=True):
        assert ll == pytest.approx(ref_ll, abs=TOL)
        assert greedy == ref_greedy
    start = 0
    for doc in docs:
        k = len(doc["choices"])
        mine = [ll for ll, _ in ours[start : start + k]]
        theirs = [ll for ll, _ in ref[start : start + k]]
        assert mine.index(max(mine)) == theirs.index(max(theirs)), doc["prompt"][:60]
        start += k


# -- what reaches the model ----------------------------------------------------------------


@dataclass
class Call:
    """One forward pass of the model module."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    position_ids: torch.Tensor | None
    got_cache: bool  # a KV cache was passed in: a suffix or continuation pass
    use_cache: object  # the use_cache argument as given
    new_cache: bool  # the output holds a cache other than the one passed in
    last_only: bool  # logits asked for the last position only: a context's (or stem's) end

    @property
    def rows(self) -> int:
        return self.input_ids.shape[0]

    @property
    def is_probe(self) -> bool:
        # hf's batch-size probe runs rows of token id 1; no real prompt is all ones.
        return not self.got_cache and bool((self.input_ids == 1).all())

    @property
    def is_context(self) -> bool:
        # A context's first tokens, with no cache: a whole context, or the stem it shares.
        return not self.got_cache and not self.is_probe

    @property
    def is_suffix(self) -> bool:
        # The rest of contexts on top of their stem's cache, for the last context logit.
        return self.got_cache and self.last_only

    def sequences(self) -> list[tuple[int, ...]]:
        """Each row's real tokens (those the attention mask covers, for a continuation pass
        the mask's last columns, which cover its own input)."""
        if self.attention_mask is None:
            return [tuple(row.tolist()) for row in self.input_ids]
        mask = self.attention_mask[:, -self.input_ids.shape[1] :].bool()
        return [tuple(ids[keep].tolist()) for ids, keep in zip(self.input_ids, mask, strict=True)]

    def tree_prefixes(self, preamble: tuple[int, ...] = ()) -> list[list[tuple[int, ...]]]:
        """Per row of a pass under a 4D (additive) tree mask, the token sequence each real
        node ends: ``preamble`` (the tokens of the cache the pass reads: the mask's first
        columns, which every node sees), then the tokens of the nodes it attends to, itself
        included, by position. Padding attends to itself only and nothing attends to it."""
        skip = self.attention_mask.shape[-1] - self.input_ids.shape[1]
        assert skip == len(preamble)
        allowed = self.attention_mask[:, 0] == 0
        rows = []
        for ids, positions, ok in zip(self.input_ids, self.position_ids, allowed, strict=True):
            assert bool(ok[:, :skip].all())  # the preamble precedes every node
            ok = ok[:, skip:]
            real = (ok.sum(0) + ok.sum(1)) > 2
            row = []
            for col in real.nonzero().flatten().tolist():
                seen = ok[col].nonzero().flatten()
                seen = seen[torch.argsort(positions[seen])]
                # One node per depth, right after the preamble.
                assert positions[seen].tolist() == list(range(skip, skip + len(seen)))
                row.append(preamble + tuple(ids[seen].tolist()))
            rows.append(row)
        return rows


class ForwardLog:
    """Records every forward pass of ``model`` while in a ``with`` block;
    ``fail_on_context_pass=n`` makes the n-th context pass raise (a run that stops part-way)."""

    def __init__(self, model, fail_on_context_pass: int | None = None):
        self.model = model
        self.calls: list[Call] = []
        self.fail_on_context_pass = fail_on_context_pass
        self.contexts_started = 0

    def __enter__(self) -> ForwardLog:
        self.handles = [
            self.model.register_forward_pre_hook(self._before, with_kwargs=True),
            self.model.register_forward_hook(self._after, with_kwargs=True),
        ]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()

    @staticmethod
    def _passed_cache(kwargs):
        cache = kwargs.get("cache")
        return cache if cache is not None else kwargs.get("past_key_values")

    def _before(self, module, args, kwargs):
        if self._passed_cache(kwargs) is None and self.fail_on_context_pass is not None:
            self.contexts_started += 1
            if self.contexts_started == self.fail_on_context_pass:
                raise RuntimeError("the run stops here")

    def _after(self, module, args, kwargs, output):
        input_ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        passed = self._passed_cache(kwargs)
        returned = getattr(output, "cache", None)
        if returned is None:
            returned = getattr(output, "past_key_values", None)
        mask = kwargs.get("attention_mask")
        self.calls.append(
            Call(
                input_ids=input_ids.detach().cpu(),
                attention_mask=None if mask is None else mask.detach().cpu(),
                position_ids=None if "position_ids" not in kwargs else kwargs["position_ids"].cpu(),
                got_cache=passed is not None,
                use_cache=kwargs.get("use_cache"),
                new_cache=returned is not None and returned is not passed,
                last_only=kwargs.get("logits_to_keep") == 1,
            )
        )

    def of_kind(self, kind: str) -> list[Call]:
        return [call for call in self.calls if getattr(call, f"is_{kind}")]

    @property
    def continuation_passes(self) -> list[Call]:
        return [call for call in self.calls if call.got_cache and not call.is_suffix]


def encoded(lm: HFLM, docs: list[dict]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(context tokens, continuation tokens) per request, as lm-eval's own _encode_pair
    splits them."""
    pairs = (lm._encode_pair(*req.args) for req in instances(docs))
    return [(tuple(ctx), tuple(cont)) for ctx, cont in pairs]


def assert_shared(log: ForwardLog, pairs, rows_per_pass: int) -> None:
    """Every distinct context ran in exactly one context pass, alone (no continuation token
    with it); every continuation was scored once, in a pass that got a KV cache and held its
    own tokens only; no pass held more than ``rows_per_pass`` continuation rows."""
    assert all(len(cont) > 1 for _, cont in pairs)  # `` (A)``: 3 tokens, so every one has a row
    ran = sorted(seq for call in log.of_kind("context") for seq in call.sequences())
    assert ran == sorted({ctx for ctx, _ in pairs})
    fed = sorted(seq for call in log.continuation_passes for seq in call.sequences())
    assert fed == sorted(cont[:-1] for _, cont in set(pairs))
    for call in log.of_kind("context") + log.continuation_passes:
        assert call.rows <= rows_per_pass


# -- scoring runs shared by several tests ----------------------------------------------------


@pytest.fixture(scope="module")
def runs(weights, questions):
    """(batch size, sharing) -> (answers, forward log) of one hf-prefix run over all
    questions."""
    done: dict[tuple[int, str], tuple[list, ForwardLog]] = {}

    def run(batch_size: int, sharing: str):
        if (batch_size, sharing) not in done:
            lm = make(PrefixSharingLM, weights, batch_size=batch_size, sharing=sharing)
            with ForwardLog(weights[0]) as log:
                answers = lm.loglikelihood(instances(questions), disable_tqdm=True)
            done[batch_size, sharing] = answers, log
        return done[batch_size, sharing]

    return run


def test_registered_under_its_name_without_hiding_lm_evals_own(smollm2):
    assert get_model("hf-prefix") is PrefixSharingLM
    assert get_model("hf") is HFLM
    model = get_model("hf-prefix")(pretrained=str(smollm2), device="cpu", batch_size=4)
    assert isinstance(model, HFLM) and model.batch_size == 4


@pytest.mark.parametrize("sharing", ["tree", "cache"])
@pytest.mark.parametrize("batch_size", [2, 8, 64])
def test_same_scores_as_hf(runs, questions, baseline, batch_size, sharing):
    # 2: two questions per pass (cache: their continuations in passes of 2 rows); 8: a few
    # questions of different lengths, left-padded together; 64: many questions in one pass.
    ours, _ = runs(batch_size, sharing)
    assert_same_as_hf(ours, baseline, questions)


@pytest.mark.parametrize("batch_size", [2, 8, 64])
def test_each_context_runs_once_and_continuations_read_its_cache(runs, hf, questions, batch_size):
    _, log = runs(batch_size, "cache")
    pairs = encoded(hf, questions)
    assert_shared(log, pairs, batch_size)
    assert not log.of_kind("probe")  # a fixed batch size needs no detection
    if batch_size == 2:
        # Each context pass's continuations (2 contexts, 4 to 6 rows) took two or three
        # passes of 2 rows from its cache.
        assert len(log.continuation_passes) >= 2 * len(log.of_kind("context"))


@pytest.mark.parametrize("batch_size", [8, 64])
def test_contexts_of_different_lengths_share_a_left_padded_pass(
    runs, questions, baseline, batch_size
):
    ours, log = runs(batch_size, "cache")
    padded = [
        call
        for call in log.of_kind("context")
        if call.attention_mask is not None and len({len(s) for s in call.sequences()}) > 1
    ]
    assert padded, "no pass held contexts of different lengths"
    for call in padded:
        for mask_row in call.attention_mask:
            # Left padding: zeros, then ones to the last column.
            assert mask_row[-1] == 1
            assert torch.equal(mask_row, torch.sort(mask_row).values)
    assert_same_as_hf(ours, baseline, questions)


def test_continuation_pass_asks_for_no_cache(runs):
    # The continuation pass reads the context's cache; nothing reads what it would return.
    _, log = runs(8, "cache")
    assert log.continuation_passes
    for call in log.continuation_passes:
        assert call.use_cache is False
        assert not call.new_cache


# -- batch_size=auto ---------------------------------------------------------------------------


def test_auto_holds_no_more_rows_than_it_detected(weights, hf, questions, baseline):
    # max_batch_size=2: the probe settles at 2 rows on a CPU (nothing runs out of memory),
    # fewer than the 3 options of the shortest 3-option question.
    three = min((d for d in questions if len(d["choices"]) == 3), key=lambda d: len(d["prompt"]))
    docs = [three, questions[-1]]
    lm = make(PrefixSharingLM, weights, batch_size="auto", max_batch_size=2, sharing="cache")
    with ForwardLog(weights[0]) as log:
        ours = lm.loglikelihood(instances(docs), disable_tqdm=True)
    assert_shared(log, encoded(hf, docs), rows_per_pass=2)
    assert lm.batch_sizes == {0: 2}
    probes = log.of_kind("probe")
    longest = max(len(ctx) + len(cont) - 1 for ctx, cont in encoded(hf, docs))
    assert len(probes) == 5 and all(call.input_ids.shape == (2, longest) for call in probes)
    assert_same_as_hf(ours, baseline_of(questions, baseline, docs), docs)


class MemoryBudget:
    """A simulated accelerator memory: a pass over more than ``tokens`` input tokens fails
    with CUDA's out-of-memory message, which hf's probe answers by trying fewer rows."""

    def __init__(self, model, tokens: int):
        self.model, self.tokens = model, tokens

    def __enter__(self):
        self.handle = self.model.register_forward_pre_hook(self._check, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()

    def _check(self, module, args, kwargs):
        input_ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        if input_ids.numel() > self.tokens:
            raise torch.OutOfMemoryError("CUDA out of memory. (simulated)")


def test_auto_n_detects_again_at_hfs_fractions_of_the_run(weights, hf, questions, baseline):
    # auto:2 over 8 requests (4 questions of 2 options). hf (HFLM._batch_scheduler) detects
    # at request 0 and again at request 8 // 2 = 4, each time for the request there, its
    # requests sorted longest first: here the longest and the 3rd longest question's.
    docs = questions[2 * PER_FILE + 3 : 2 * PER_FILE + 7]
    pairs = encoded(hf, docs)
    assert len(pairs) == 8 and len({ctx for ctx, _ in pairs}) == 4
    by_length = sorted(((len(ctx) + len(cont) - 1 for ctx, cont in pairs)), reverse=True)
    lengths = [by_length[0], by_length[4]]
    # Room for 100 tokens per pass: the probe (max_batch_size=2 rows, then 1 if 2 run out of
    # memory) settles at 1 row for the long half and at 2 for the short one.
    budget = 100
    sizes = [min(2, budget // length) for length in lengths]
    assert sizes == [1, 2]

    lm = make(PrefixSharingLM, weights, batch_size="auto:2", max_batch_size=2, sharing="cache")
    with MemoryBudget(weights[0], tokens=budget), ForwardLog(weights[0]) as log:
        ours = lm.loglikelihood(instances(docs), disable_tqdm=True)
    assert lm.batch_sizes == {0: sizes[0], 1: sizes[1]}
    probes = log.of_kind("probe")  # the probe runs its rows 5 times
    assert [tuple(call.input_ids.shape) for call in probes] == [
        (size, length) for size, length in zip(sizes, lengths, strict=True) for _ in range(5)
    ]
    # Each batch holds no more rows than the size of the half it starts in.
    scored = 0
    for call in log.calls:
        if call.is_context:
            limit = sizes[scored // 4]
        if call.got_cache:
            assert call.rows <= limit
            scored += call.rows
    assert scored == 8
    assert_same_as_hf(ours, baseline_of(questions, baseline, docs), docs)


def test_auto_detection_waits_for_no_other_rank(weights, questions, baseline):
    # Rank 1 of 2 in a data-parallel run (as accelerate sets it up). With --use_cache, rank
    # 0 may have every answer cached and never score at all: a detection that gathers sizes
    # across ranks would wait for it forever. Here, no other rank exists to answer.
    def never_answers(*args, **kwargs):
        raise AssertionError("waited for another rank's batch size")

    assert not torch.distributed.is_initialized()  # any torch.distributed collective fails
    lm = make(PrefixSharingLM, weights, batch_size="auto", max_batch_size=2)
    lm._rank, lm._world_size = 1, 2
    lm.all_gather = lm.gather_object = never_answers
    assert lm.loglikelihood([], disable_tqdm=True) == []
    docs = questions[-2:]
    ours = lm.loglikelihood(instances(docs), disable_tqdm=True)
    assert lm.batch_sizes == {0: 2}
    assert_same_as_hf(ours, baseline_of(questions, baseline, docs), docs)


# -- lm-eval's request cache (--use_cache) ---------------------------------------------------


def test_answers_reach_lm_evals_request_cache_batch_by_batch(
    weights, hf, questions, baseline, tmp_path
):
    # A run that stops in its 4th batch (one question each) keeps the answers of the first 3
    # in the sqlite cache, and a rerun scores only the rest.
    docs = questions[2 * PER_FILE : 2 * PER_FILE + 5]
    requests = instances(docs)
    expected = dict(
        zip((r.args for r in requests), baseline_of(questions, baseline, docs), strict=True)
    )
    path = str(tmp_path / "cache.db")
    lm = make(PrefixSharingLM, weights, batch_size=1, sharing="cache")

    cached = CachingLM(lm, path)
    with ForwardLog(weights[0], fail_on_context_pass=4) as log, pytest.raises(RuntimeError):
        cached.loglikelihood(requests)
    cached.dbdict.close()
    finished = {seq for call in log.of_kind("context") for seq in call.sequences()}
    assert len(finished) == 3
    kept = [
        req for req, (ctx, _) in zip(requests, encoded(hf, docs), strict=True) if ctx in finished
    ]
    with SqliteDict(path) as stored:
        assert len(stored) == len(kept) > 0
        for req in kept:
            ll, greedy = stored[hash_args("loglikelihood", req.args)]
            assert ll == pytest.approx(expected[req.args][0], abs=TOL)
            assert greedy == expected[req.args][1]

    cached = CachingLM(lm, path)
    with ForwardLog(weights[0]) as rerun:
        answers = cached.loglikelihood(requests)
    assert not finished & {s for call in rerun.of_kind("context") for s in call.sequences()}
    assert len(cached.dbdict) == len(requests)
    for req, answer in zip(requests, answers, strict=True):
        assert cached.dbdict[hash_args("loglikelihood", req.args)] == answer
        assert answer[0] == pytest.approx(expected[req.args][0], abs=TOL)
    cached.dbdict.close()


# -- order, truncation and the paths left to hf ------------------------------------------------


def test_interleaved_contexts_and_duplicates_come_back_in_order(weights, questions, baseline):
    requests = instances(questions)
    expected = {req.args: answer for req, answer in zip(requests, baseline, strict=True)}
    # Round-robin over questions, so no two neighbours share a context; plus repeats.
    by_doc: dict[str, list[Instance]] = {}
    for req in requests:
        by_doc.setdefault(req.args[0], []).append(req)
    shuffled = []
    while any(by_doc.values()):
        for reqs in by_doc.values():
            if reqs:
                shuffled.append(reqs.pop())
    shuffled += shuffled[:5]
    ours = make(PrefixSharingLM, weights, batch_size=8).loglikelihood(shuffled, disable_tqdm=True)
    assert len(ours) == len(shuffled)
    for req, (ll, greedy) in zip(shuffled, ours, strict=True):
        assert ll == pytest.approx(expected[req.args][0], abs=TOL)
        assert greedy == expected[req.args][1]


def test_requests_longer_than_max_length_get_hfs_truncation(weights, questions):
    max_length = 64
    ours_lm = make(PrefixSharingLM, weights, batch_size=8, max_length=max_length)
    requests = instances(questions[:1] + questions[PER_FILE : PER_FILE + 2])
    encoded_pairs = [ours_lm._encode_pair(*req.args) for req in requests]
    # A short question that fits, to check both paths in one call.
    short = {"prompt": "Human: Is the sky blue?\n\nAssistant:", "choices": ["(A)", "(B)"]}
    requests += instances([short])
    encoded_pairs += [ours_lm._encode_pair(*req.args) for req in requests[-2:]]
    too_long = [len(c) + len(k) > max_length + 1 for c, k in encoded_pairs]
    assert any(too_long) and not all(too_long)

    ref = make(HFLM, weights, batch_size=8, max_length=max_length).loglikelihood(
        requests, disable_tqdm=True
    )
    ours = ours_lm.loglikelihood(requests, disable_tqdm=True)
    for (ll, greedy), (ref_ll, ref_greedy) in zip(ours, ref, strict=True):
        assert ll == pytest.approx(ref_ll, abs=TOL)
        assert greedy == ref_greedy


def test_loglikelihood_rolling_still_works(weights):
    text = [Instance("loglikelihood_rolling", {}, ("Human: Is the sky blue?",), 0)]
    ref = make(HFLM, weights, batch_size=1).loglikelihood_rolling(text, disable_tqdm=True)
    ours = make(PrefixSharingLM, weights, batch_size=1).loglikelihood_rolling(
        text, disable_tqdm=True
    )
    assert ours == pytest.approx(ref, abs=TOL)


# -- different contexts that share a stem: every cyclic order of a question's options ----------

ROTATED_TOL = 1e-4


@dataclass
class Rotated:
    """A question's prompts, one per order of its options, and its number of options."""

    prompts: list[str]
    options: int


@pytest.fixture(scope="module")
def rotated(mirror) -> list[Rotated]:
    """Short real questions in every cyclic order of their options (as written first): two
    with 3 options, one with 4, two with 2; and one with 2 in its written order only, a
    context that shares no stem with another."""
    path = mirror / "advanced-ai-risk" / "human_generated_evals" / f"{FILES[0]}.jsonl"
    parsed = [parse_row(row) for _, row in read_rows(path)][:40]
    by_options: dict[int, list] = {}
    for question in sorted(parsed, key=lambda q: len(q.text)):
        by_options.setdefault(len(question.letters), []).append(question)
    picks = by_options[3][:2] + by_options[4][:1] + by_options[2][:2]
    questions = [
        Rotated([render_prompt(text) for text in [q.text, *rotations(q.text)]], len(q.letters))
        for q in picks
    ]
    return [*questions, Rotated([render_prompt(by_options[2][2].text)], 2)]


def rotated_instances(rotated: list[Rotated]) -> list[Instance]:
    """Each order of each question with every option letter as a continuation."""
    return [
        Instance("loglikelihood", {}, (prompt, f" ({chr(ord('A') + i)})"), i)
        for question in rotated
        for prompt in question.prompts
        for i in range(question.options)
    ]


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory, smollm2):
    # GPT-NeoX: rotary embeddings on part of each head, the architecture most unlike SmolLM2.
    folder = save_tiny_model("gpt_neox", tmp_path_factory.mktemp("tiny") / "neox", smollm2)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="float32").eval()
    return model, AutoTokenizer.from_pretrained(folder)


def rotated_for(model: str, rotated: list[Rotated]) -> list[Rotated]:
    # SmolLM2 on a CPU takes about a second per forward pass, however few its rows: a 3-option
    # and a 2-option question in all their orders (two batches of three passes).
    return [rotated[0], rotated[3]] if model == "smollm2" else rotated


@pytest.fixture(scope="module")
def rotated_runs(weights, tiny_weights, rotated):
    """(model, batch size, sharing) -> (answers, forward log) over every order of the
    model's ``rotated_for`` questions; batch size "hf": lm-eval's own model (and no log)."""
    models = {"smollm2": weights, "tiny": tiny_weights}
    done: dict[tuple[str, int | str, str], tuple[list, ForwardLog | None]] = {}

    def run(model: str, batch_size: int | str, sharing: str = "tree"):
        key = (model, batch_size, sharing)
        if key not in done:
            requests = rotated_instances(rotated_for(model, rotated))
            if batch_size == "hf":
                lm = make(HFLM, models[model], batch_size=16)
                done[key] = lm.loglikelihood(requests, disable_tqdm=True), None
            else:
                lm = make(PrefixSharingLM, models[model], batch_size=batch_size, sharing=sharing)
                with ForwardLog(models[model][0]) as log:
                    answers = lm.loglikelihood(requests, disable_tqdm=True)
                done[key] = answers, log
        return done[key]

    return run


def assert_same_as_hf_per_context(ours, ref, rotated: list[Rotated]) -> None:
    """Each answer within ROTATED_TOL of hf's, the same is_greedy, and per context (each
    order of each question) the same most likely option."""
    assert len(ours) == len(ref) == len(rotated_instances(rotated))
    for (ll, greedy), (ref_ll, ref_greedy) in zip(ours, ref, strict=True):
        assert abs(ll - ref_ll) <= ROTATED_TOL, (ll, ref_ll)
        assert greedy == ref_greedy
    start = 0
    for question in rotated:
        for _ in question.prompts:
            mine = [ll for ll, _ in ours[start : start + question.options]]
            theirs = [ll for ll, _ in ref[start : start + question.options]]
            assert mine.index(max(mine)) == theirs.index(max(theirs))
            start += question.options


@pytest.mark.parametrize(
    ("model", "batch_size", "sharing"),
    # tree: one row per question, 2 or 16 rows per pass. cache, 2: a question's orders split
    # over several suffix passes on one stem pass, continuations in passes of 2 rows; 64:
    # the 2-option questions' stems (of different lengths) left-padded together.
    [
        ("smollm2", 16, "tree"),
        ("tiny", 2, "tree"),
        ("tiny", 16, "tree"),
        ("tiny", 2, "cache"),
        ("tiny", 64, "cache"),
    ],
)
def test_rotated_contexts_score_as_hf(rotated_runs, rotated, model, batch_size, sharing):
    ours, _ = rotated_runs(model, batch_size, sharing)
    ref, _ = rotated_runs(model, "hf")
    assert_same_as_hf_per_context(ours, ref, rotated_for(model, rotated))


def test_a_context_that_is_another_ones_stem_scores_as_hf(tiny_weights):
    # The shorter context is the whole stem: its suffix is empty, its first continuation
    # token is scored from the stem pass, and its continuations follow a padded suffix.
    stem = "Human: We would like to give you more power over the company and its board. Do you"
    contexts = [stem, stem + " Choices: (A) Yes (B) No\n\nAssistant:"]
    requests = [
        Instance("loglikelihood", {}, (ctx, f" ({letter})"), i)
        for ctx in contexts
        for i, letter in enumerate("AB")
    ]
    lm = make(PrefixSharingLM, tiny_weights, batch_size=4, sharing="cache")
    short, long = (tuple(lm._encode_pair(ctx, " (A)")[0]) for ctx in contexts)
    assert long[: len(short)] == short and len(short) >= 16
    with ForwardLog(tiny_weights[0]) as log:
        ours = lm.loglikelihood(requests, disable_tqdm=True)
    assert [seq for call in log.of_kind("context") for seq in call.sequences()] == [short]
    ref = make(HFLM, tiny_weights, batch_size=4).loglikelihood(requests, disable_tqdm=True)
    tree = make(PrefixSharingLM, tiny_weights, batch_size=4).loglikelihood(requests)
    for answers in (ours, tree):
        for (ll, greedy), (ref_ll, ref_greedy) in zip(answers, ref, strict=True):
            assert abs(ll - ref_ll) <= ROTATED_TOL and greedy == ref_greedy


def common_prefix(seqs: list[tuple[int, ...]]) -> tuple[int, ...]:
    first = seqs[0]
    n = min(len(seq) for seq in seqs)
    for seq in seqs[1:]:
        n = next((i for i in range(n) if seq[i] != first[i]), n)
    return first[:n]


def test_each_stem_runs_once_and_each_suffix_on_its_copy(rotated_runs, hf, rotated):
    # Batch size 2: a question's 3 or 4 orders take two suffix passes on a single stem pass.
    # The tiny model has SmolLM2's tokenizer (hf's).
    _, log = rotated_runs("tiny", 2, "cache")
    stems, suffixes, distinct = [], [], []
    for question in rotated:
        contexts = [tuple(hf._encode_pair(prompt, " (A)")[0]) for prompt in question.prompts]
        stem = common_prefix(contexts) if len(contexts) > 1 else contexts[0]
        stems.append(stem)
        suffixes += [ctx[len(stem) :] for ctx in contexts if len(ctx) > len(stem)]
        distinct += contexts

    ran = sorted(seq for call in log.of_kind("context") for seq in call.sequences())
    assert ran == sorted(stems)
    ran_suffixes = [seq for call in log.of_kind("suffix") for seq in call.sequences()]
    assert sorted(seq for seq in ran_suffixes if seq) == sorted(suffixes)

    # Context tokens the model ran: every stem once, then every suffix once, far fewer than
    # each distinct context run whole (what sharing identical contexts alone would run).
    fed = sum(len(seq) for seq in ran + ran_suffixes)
    assert fed == sum(map(len, stems)) + sum(map(len, suffixes))
    assert fed < 0.75 * sum(map(len, distinct))

    pairs = {(prompt, i) for q in rotated for prompt in q.prompts for i in range(q.options)}
    conts = sorted(seq for call in log.continuation_passes for seq in call.sequences())
    assert len(conts) == len(pairs)
    assert len(log.of_kind("suffix")) > len(log.of_kind("context"))
    for call in log.calls:
        assert call.rows <= 2
    for call in log.of_kind("suffix"):
        # The stem's columns, then the suffix's: each row's last token in the last column
        # (all padding for a context that is its stem, none here).
        assert bool(call.attention_mask[:, -1].all())
        assert call.use_cache is True


def test_tree_rows_run_each_shared_prefix_once(rotated_runs, hf, rotated):
    # sharing=tree (the default), batch size 2: one row per question, its orders and options
    # a token trie under a tree mask; no KV cache in or out.
    _, log = rotated_runs("tiny", 2)
    # First the tokens every context starts with (``Human:``), once, alone; then the tree
    # rows, each pass reading (a copy of) its cache.
    first, *passes = log.calls
    assert first.rows == 1 and not first.got_cache and first.attention_mask is None
    (preamble,) = first.sequences()
    for call in passes:
        assert call.got_cache and call.attention_mask.dim() == 4 and call.rows <= 2
    rows = [row for call in passes for row in call.tree_prefixes(preamble)]
    assert len(rows) == len(rotated)

    fed, stems = set(), []
    for question in rotated:
        pairs = [
            hf._encode_pair(prompt, f" ({chr(ord('A') + i)})")
            for prompt in question.prompts
            for i in range(question.options)
        ]
        fed |= {tuple(ctx + cont[:-1]) for ctx, cont in pairs}
        stems.append(common_prefix([tuple(ctx) for ctx, _ in pairs]))
    ran = [prefix for row in rows for prefix in row]
    # Exactly the prefixes of the fed sequences ran, each once within its row, and each
    # question's stem in one row only: what is shared ran once.
    assert all(seq[: len(preamble)] == preamble for seq in fed)
    assert set(ran) == {seq[:n] for seq in fed for n in range(len(preamble) + 1, len(seq) + 1)}
    for row in rows:
        assert len(row) == len(set(row))
    for stem in stems:
        assert ran.count(stem) == 1
    assert len(ran) < 0.75 * sum(map(len, fed))


def tiny_mistral_with_a_window_of_8(smollm2):
    """A (tiny, random) Mistral whose attention sees the last 8 tokens only."""
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    config = MistralConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=len(tokenizer),
        sliding_window=8,
        initializer_range=0.5,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval(), tokenizer


def test_a_sliding_window_shorter_than_a_request_takes_the_cache_passes(smollm2, rotated):
    # A tree mask would replace the window's own mask: a (tiny, random) Mistral whose
    # attention sees the last 8 tokens only scores through KV caches, and matches hf.
    model, tokenizer = tiny_mistral_with_a_window_of_8(smollm2)
    requests = rotated_instances(rotated[-1:])
    lm = make(PrefixSharingLM, (model, tokenizer), batch_size=4)
    with ForwardLog(model) as log:
        ours = lm.loglikelihood(requests, disable_tqdm=True)
    ref = make(HFLM, (model, tokenizer), batch_size=4).loglikelihood(requests, disable_tqdm=True)
    assert any(call.got_cache for call in log.calls)
    assert all(call.attention_mask is None or call.attention_mask.dim() == 2 for call in log.calls)
    assert_same_as_hf_per_context(ours, ref, rotated[-1:])


def test_tree_passes_hold_no_more_tokens_than_hfs_rows():
    # Four questions of the same size, each in 3 orders (3 contexts sharing a 40-token stem,
    # 3 options each): a row is their trie, 40 + 3 * 20 context tokens + 9 continuations,
    # wider than any one request (62 tokens). With 4 rows allowed, hf's pass would hold 4
    # rows of 62 tokens; the tree passes hold no more tokens than that (2 rows, then 2).
    clusters = []
    for q in range(4):
        stem = tuple(1000 * q + i for i in range(40))
        contexts = [stem + tuple(100 * o + i for i in range(20)) for o in range(3)]
        groups = [(ctx, {(5, 6, 7 + k): [0] for k in range(3)}) for ctx in contexts]
        cluster = ps._cluster(dict(groups))[0]
        assert len(cluster.groups) == 3
        cluster.tree = build_tree([(ctx, cont) for ctx, conts in cluster.groups for cont in conts])
        clusters.append(cluster)
    longest = clusters[0].longest_request
    assert longest == 62 and clusters[0].tree.width > longest
    batches = list(
        ps._pack(
            clusters, lambda done, length: 4, lambda c: 1, ps._tree_padding,
            row_tokens=lambda batch: len(batch) * ps._widest(batch),
        )
    )  # fmt: skip
    assert [len(batch) for batch, _ in batches] == [2, 2]
    for batch, limit in batches:
        assert len(batch) * ps._widest(batch) <= limit * longest


SYSTEM_PROMPT = "You are a helpful, honest and harmless AI assistant. Answer the question."


def test_a_chat_preamble_runs_once_and_never_joins_questions(tiny_weights, questions):
    # Chat mode with a system prompt: every context starts with the same header, longer
    # than a stem. It runs once, as a cache; each question is a row of its own, and the
    # scores are hf's.
    model, tokenizer = tiny_weights
    docs = questions[:12]
    requests = [
        Instance(
            "loglikelihood", doc, (render_context(doc["prompt"], SYSTEM_PROMPT, tokenizer), c), i
        )
        for doc in docs
        for i, c in enumerate(continuations(doc["choices"], chat=True))
    ]
    lm = make(PrefixSharingLM, tiny_weights, batch_size=4)
    with ForwardLog(model) as log:
        ours = lm.loglikelihood(requests, disable_tqdm=True)
    first, *passes = log.calls
    (preamble,) = first.sequences()
    assert SYSTEM_PROMPT in tokenizer.decode(preamble)
    assert all(call.rows <= 4 for call in passes)
    rows = [row for call in passes for row in call.tree_prefixes(preamble)]
    assert len(rows) == len(docs)
    for call in passes:
        # Each row is one question's own tokens after the preamble: far narrower than all.
        assert call.input_ids.shape[1] < max(len(lm._encode_pair(*r.args)[0]) for r in requests)
    ref = make(HFLM, tiny_weights, batch_size=4).loglikelihood(requests, disable_tqdm=True)
    for (ll, greedy), (ref_ll, ref_greedy) in zip(ours, ref, strict=True):
        assert abs(ll - ref_ll) <= ROTATED_TOL and greedy == ref_greedy


def test_every_request_truncated_under_a_sliding_window_scores_as_hf(smollm2, questions):
    # Every request longer than max_length takes hf's truncation path, which leaves nothing
    # to share: a model with a sliding window used to fail looking for the longest request.
    model, tokenizer = tiny_mistral_with_a_window_of_8(smollm2)
    requests = instances(questions[:2])
    kwargs = {"batch_size": 4, "max_length": 16}
    ours = make(PrefixSharingLM, (model, tokenizer), **kwargs).loglikelihood(requests)
    ref = make(HFLM, (model, tokenizer), **kwargs).loglikelihood(requests, disable_tqdm=True)
    assert ours == ref
