"""``hf-prefix`` scores what lm-eval's ``hf`` scores on every architecture this pack is run on.

GPT-NeoX (Pythia, deep-ignorance), Llama, and Qwen3 (the reasoning models'; the Qwen2 of
R1-Distill is checked by the real run in tests/test_reasoning_models.py): each a small random
model (tests/tiny_models.py) saved to a folder once for the module and loaded by both classes
from that folder, as ``pretrained=`` a hub model would be. A change to ``hf-prefix`` that
breaks one family's cache or position handling makes its scores drift from ``hf``'s here.
"""

from __future__ import annotations

import pytest
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from propensity_evals.prefix_sharing_lm import PrefixSharingLM
from propensity_evals.task_docs import build_docs
from tests.tiny_models import save_tiny_model

FAMILIES = ("gpt_neox", "llama", "qwen3")

# Up to 8 options (power-seeking) and short and long questions.
FILES = ("power-seeking-inclination", "self-awareness-web-gpt")
PER_FILE = 2
TOL = 1e-3  # fp32; observed differences are ~4e-5 on log-likelihoods of -40 to -70


@pytest.fixture(scope="module")
def requests(mirror) -> list[Instance]:
    folder = mirror / "advanced-ai-risk" / "human_generated_evals"
    docs = [doc for name in FILES for doc in build_docs(folder / f"{name}.jsonl")[:PER_FILE]]
    assert max(len(doc["choices"]) for doc in docs) > 2
    return [
        Instance("loglikelihood", doc, (doc["prompt"], " " + choice), idx)
        for doc in docs
        for idx, choice in enumerate(doc["choices"])
    ]


@pytest.fixture(scope="module")
def models(tmp_path_factory, smollm2) -> dict:
    base = tmp_path_factory.mktemp("families")
    return {family: save_tiny_model(family, base / family, smollm2) for family in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_sharing_matches_hf(models, requests, family):
    folder = str(models[family])
    reference = HFLM(pretrained=folder, device="cpu", batch_size=8).loglikelihood(
        requests, disable_tqdm=True
    )
    # Random weights still give each option its own score: a comparison that could not tell
    # a right answer from a wrong one would prove nothing.
    assert len({round(ll, 2) for ll, _ in reference}) > len(reference) // 2
    for batch_size in (1, 8):
        ours = PrefixSharingLM(pretrained=folder, device="cpu", batch_size=batch_size)
        # Otherwise every request would go through hf's own code and the test would be void.
        assert ours._can_share_prefixes(), f"{family}: hf-prefix would not share prefixes"
        scored = ours.loglikelihood(requests, disable_tqdm=True)
        assert len(scored) == len(reference)
        for (ll, greedy), (ref_ll, ref_greedy) in zip(scored, reference, strict=True):
            assert ll == pytest.approx(ref_ll, abs=TOL), f"{family}, batch {batch_size}"
            assert greedy == ref_greedy
