"""``hf-prefix`` scores exactly what lm-eval's ``hf`` scores, on real questions and a real model.

Both models load the embedded SmolLM2 (fp32, CPU) once for the module and score the same
lm-eval ``Instance`` objects, built from real human-written rows as the tasks build them:
context ``Human: {question}\\n\\nAssistant:``, continuations `` (A)``, `` (B)``, ...
"""

from __future__ import annotations

import pytest
from lm_eval.api.instance import Instance
from lm_eval.api.model import CachingLM, hash_args
from lm_eval.api.registry import get_model
from lm_eval.models.huggingface import HFLM
from transformers import AutoModelForCausalLM, AutoTokenizer

from propensity_evals.prefix_sharing_lm import PrefixSharingLM
from propensity_evals.task_docs import build_docs

# power-seeking-inclination has questions with up to 8 options.
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
    return cls(pretrained=model, tokenizer=tokenizer, device="cpu", **kwargs)


@pytest.fixture(scope="module")
def baseline(weights, questions) -> list[tuple[float, bool]]:
    return make(HFLM, weights, batch_size=8).loglikelihood(instances(questions), disable_tqdm=True)


def test_registered_under_its_name_without_hiding_lm_evals_own(smollm2):
    assert get_model("hf-prefix") is PrefixSharingLM
    assert get_model("hf") is HFLM
    model = get_model("hf-prefix")(pretrained=str(smollm2), device="cpu", batch_size=4)
    assert isinstance(model, HFLM) and model.batch_size == 4


@pytest.mark.parametrize("batch_size", [1, 8, 64])
def test_same_scores_as_hf(weights, questions, baseline, batch_size):
    # 1: one question per pass; 8: a few questions of different lengths, left-padded
    # together; 64: many questions in one pass.
    ours = make(PrefixSharingLM, weights, batch_size=batch_size).loglikelihood(
        instances(questions), disable_tqdm=True
    )
    assert len(ours) == len(baseline)
    for (ll, greedy), (ref_ll, ref_greedy) in zip(ours, baseline, strict=True):
        assert ll == pytest.approx(ref_ll, abs=TOL)
        assert greedy == ref_greedy
    start = 0
    for doc in questions:
        k = len(doc["choices"])
        mine = [ll for ll, _ in ours[start : start + k]]
        ref = [ll for ll, _ in baseline[start : start + k]]
        assert mine.index(max(mine)) == ref.index(max(ref)), doc["prompt"][:60]
        start += k


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
    encoded = [ours_lm._encode_pair(*req.args) for req in requests]
    # A short question that fits, to check both paths in one call.
    short = {"prompt": "Human: Is the sky blue?\n\nAssistant:", "choices": ["(A)", "(B)"]}
    requests += instances([short])
    encoded += [ours_lm._encode_pair(*req.args) for req in requests[-2:]]
    too_long = [len(c) + len(k) > max_length + 1 for c, k in encoded]
    assert any(too_long) and not all(too_long)

    ref = make(HFLM, weights, batch_size=8, max_length=max_length).loglikelihood(
        requests, disable_tqdm=True
    )
    ours = ours_lm.loglikelihood(requests, disable_tqdm=True)
    for (ll, greedy), (ref_ll, ref_greedy) in zip(ours, ref, strict=True):
        assert ll == pytest.approx(ref_ll, abs=TOL)
        assert greedy == ref_greedy


def test_answers_reach_lm_evals_request_cache(weights, questions, tmp_path):
    # What --use_cache stores: one entry per distinct request, holding its answer.
    requests = instances(questions[:3])
    cached = CachingLM(make(PrefixSharingLM, weights, batch_size=8), str(tmp_path / "cache"))
    answers = cached.loglikelihood(requests)
    assert len(cached.dbdict) == len({req.args for req in requests})
    for req, answer in zip(requests, answers, strict=True):
        assert cached.dbdict[hash_args("loglikelihood", req.args)] == answer


def test_loglikelihood_rolling_still_works(weights):
    text = [Instance("loglikelihood_rolling", {}, ("Human: Is the sky blue?",), 0)]
    ref = make(HFLM, weights, batch_size=1).loglikelihood_rolling(text, disable_tqdm=True)
    ours = make(PrefixSharingLM, weights, batch_size=1).loglikelihood_rolling(
        text, disable_tqdm=True
    )
    assert ours == pytest.approx(ref, abs=TOL)
