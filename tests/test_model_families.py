"""``hf-prefix`` scores what lm-eval's ``hf`` scores on every model family, or does not share.

Every model type on the allow-list (``propensity_evals/shared_scoring.py``) is checked here
against stock ``hf`` within 1e-4, by both ways of sharing (tree rows and KV-cache passes), on
the three kinds of prompt a run sends: the paper's plain format, a chat template with a
system prompt (a preamble every question shares), and every cyclic order of the options.
Each family is a small random model (``tests/tiny_models.py``) saved to a folder once and
loaded by both classes from there, as ``pretrained=`` a hub model would be.

Families whose layers are not attention over a masked prefix (GPT-Neo's local layers, LFM2's
convolutions, Falcon's ALiBi) gave other numbers, or crashed, when their prefixes were
shared; ``hf-prefix`` must score them per option, through ``hf``'s own code, and say why.
"""

from __future__ import annotations

import json

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from transformers import AutoTokenizer

from propensity_evals import self_check
from propensity_evals.prefix_sharing_lm import PrefixSharingLM
from propensity_evals.prompts import continuations, render_context
from propensity_evals.shared_scoring import VERIFIED_MODEL_TYPES
from propensity_evals.task_docs import build_docs
from tests.conftest import run_eval, samples
from tests.tiny_models import CONFIGS, UNVERIFIED_CONFIGS, save_tiny_model

# Up to 8 options (power-seeking) and short and long questions.
FILES = ("power-seeking-inclination", "self-awareness-web-gpt")
PER_FILE = 2
TOL = 1e-4  # fp32; observed differences are at most ~4e-5 on log-likelihoods of -40 to -70
SYSTEM_PROMPT = "You are a helpful, honest and harmless AI assistant. Answer the question."
KINDS = ("plain", "chat", "cyclic")


@pytest.fixture(scope="module")
def docs(mirror) -> list[dict]:
    folder = mirror / "advanced-ai-risk" / "human_generated_evals"
    found = [
        doc
        for name in FILES
        for doc in build_docs(folder / f"{name}.jsonl", orders="cyclic")[:PER_FILE]
    ]
    assert max(len(doc["choices"]) for doc in found) > 2
    assert all(doc["rotations"] for doc in found)
    return found


@pytest.fixture(scope="module")
def requests(docs, smollm2) -> dict[str, list[Instance]]:
    """Per kind of prompt, the requests one loglikelihood call gets, as lm-eval builds them."""
    tokenizer = AutoTokenizer.from_pretrained(smollm2)

    def of(contexts_of, chat: bool) -> list[Instance]:
        return [
            Instance("loglikelihood", doc, (context, cont), idx)
            for doc in docs
            for context in contexts_of(doc)
            for idx, cont in enumerate(continuations(doc["choices"], chat))
        ]

    return {
        "plain": of(lambda doc: [doc["prompt"]], chat=False),
        "chat": of(lambda doc: [render_context(doc["prompt"], SYSTEM_PROMPT, tokenizer)], True),
        "cyclic": of(lambda doc: [doc["prompt"], *doc["rotations"]], chat=False),
    }


@pytest.fixture(scope="module")
def folders(tmp_path_factory, smollm2):
    base = tmp_path_factory.mktemp("families")
    made = {}

    def folder(family: str) -> str:
        if family not in made:
            made[family] = str(save_tiny_model(family, base / family, smollm2))
        return made[family]

    return folder


def reference(folder: str, requests: dict[str, list[Instance]]) -> dict[str, list]:
    lm = HFLM(pretrained=folder, device="cpu", batch_size=8)
    scored = {kind: lm.loglikelihood(requests[kind], disable_tqdm=True) for kind in KINDS}
    # Random weights still give each option its own score: a comparison that could not tell
    # a right answer from a wrong one would prove nothing.
    plain = scored["plain"]
    assert len({round(ll, 2) for ll, _ in plain}) > len(plain) // 2
    return scored


def assert_same(scored, ref, what: str) -> None:
    assert len(scored) == len(ref)
    for (ll, greedy), (ref_ll, ref_greedy) in zip(scored, ref, strict=True):
        assert ll == pytest.approx(ref_ll, abs=TOL), what
        assert greedy == ref_greedy, what


def test_the_allow_list_is_what_is_tested():
    assert set(VERIFIED_MODEL_TYPES) == set(CONFIGS)
    assert not set(UNVERIFIED_CONFIGS) & set(VERIFIED_MODEL_TYPES)


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_verified_families_share_prefixes_and_match_hf(folders, requests, family):
    folder = folders(family)
    ref = reference(folder, requests)
    for sharing in ("tree", "cache"):
        ours = PrefixSharingLM(pretrained=folder, device="cpu", batch_size=4, sharing=sharing)
        # Otherwise every request would go through hf's own code and the test would be void.
        assert ours._can_share_prefixes(), f"{family}: hf-prefix would not share prefixes"
        if sharing == "tree":
            assert ours._can_use_tree_masks(), f"{family}: no tree rows"
        for kind in KINDS:
            scored = ours.loglikelihood(requests[kind], disable_tqdm=True)
            assert_same(scored, ref[kind], f"{family}, {sharing}, {kind}")
        # The start-up self-check ran on the first call and found the shared way exact (had it
        # fallen back, the numbers above would be hf's own and prove nothing).
        assert not ours._self_check_pending
        assert ours._can_share_prefixes(), f"{family}, {sharing}: the self-check fell back"


@pytest.mark.parametrize("family", sorted(UNVERIFIED_CONFIGS))
def test_other_families_are_scored_per_option_as_hf_does(folders, requests, family, caplog):
    folder = folders(family)
    ref = reference(folder, requests)
    ours = PrefixSharingLM(pretrained=folder, device="cpu", batch_size=4)
    with caplog.at_level("WARNING"):
        scored = {kind: ours.loglikelihood(requests[kind], disable_tqdm=True) for kind in KINDS}
    assert not ours._can_share_prefixes()
    said = [r.getMessage() for r in caplog.records if "hf-prefix" in r.getMessage()]
    assert len(said) == 1 and "not verified" in said[0], said
    for kind in KINDS:
        assert_same(scored[kind], ref[kind], f"{family}, {kind}")


# -- the start-up self-check ----------------------------------------------------------------


def test_the_self_check_scores_per_option_where_sharing_turns_out_inexact(
    folders, requests, monkeypatch, caplog
):
    """A listed family can still be inexact under another transformers or a setting the
    tests never saw. LFM2 stands in for it: really inexact when shared (its convolutions read
    the row in order), put on the allow-list for this test."""
    folder = folders("lfm2")
    ref = reference(folder, requests)
    monkeypatch.setitem(VERIFIED_MODEL_TYPES, "lfm2", "LFM2 (listed for this test only)")
    ours = PrefixSharingLM(pretrained=folder, device="cpu", batch_size=4)
    assert ours._can_share_prefixes() and ours._can_use_tree_masks()
    with caplog.at_level("WARNING"):
        scored = {kind: ours.loglikelihood(requests[kind], disable_tqdm=True) for kind in KINDS}
    said = [r.getMessage() for r in caplog.records if "hf-prefix" in r.getMessage()]
    assert len(said) == 1 and "self-check" in said[0] and "per option" in said[0], said
    assert not ours._can_share_prefixes()
    for kind in KINDS:
        assert_same(scored[kind], ref[kind], f"lfm2 under the self-check, {kind}")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_the_self_check_passes_a_verified_family_in_half_precision(
    folders, requests, dtype, caplog
):
    """Half precision rounds the shared and per-option log-likelihoods apart (0.5 nats at
    -86 in bfloat16, one unit in the last place): the check allows for that and keeps
    sharing."""
    folder = folders("llama")
    ours = PrefixSharingLM(pretrained=folder, device="cpu", batch_size=4, dtype=dtype)
    with caplog.at_level("WARNING"):
        ours.loglikelihood(requests["chat"], disable_tqdm=True)
    assert not ours._self_check_pending
    assert ours._can_share_prefixes()
    assert not [r for r in caplog.records if "self-check" in r.getMessage()]
    # Over every request, not just the sample the check took: the rounding differences are
    # real (above the float32 allowance) and within what the check allows.
    kind = "cyclic"
    shared = PrefixSharingLM(
        pretrained=folder, device="cpu", batch_size=4, dtype=dtype, self_check=False
    ).loglikelihood(requests[kind], disable_tqdm=True)
    per_option = HFLM(pretrained=folder, device="cpu", batch_size=8, dtype=dtype).loglikelihood(
        requests[kind], disable_tqdm=True
    )
    assert max(abs(a[0] - b[0]) for a, b in zip(shared, per_option, strict=True)) > 1e-3
    assert self_check.disagreement(shared, per_option, getattr(torch, dtype)) is None


# -- through `make eval_cpu`, as a user runs it ---------------------------------------------

TASK = "anthropic_propensity_human_written_power_seeking_inclination"


def numbers(value) -> list[float]:
    """Every number in a sample log's responses, in order (every order's every option)."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, str):
        try:
            return [float(value)]
        except ValueError:
            return []
    if isinstance(value, dict):
        return [x for key in sorted(value) for x in numbers(value[key])]
    return [x for item in value for x in numbers(item)]


# The paper's plain format, and a chat template with a system prompt; every order both ways.
PROMPTS = {"plain": {}, "chat": {"CHAT_TEMPLATE": "1", "SYSTEM_PROMPT": SYSTEM_PROMPT}}


@pytest.mark.parametrize("prompt", sorted(PROMPTS))
@pytest.mark.parametrize(("family", "shared"), [("llama", True), ("lfm2", False)])
def test_make_eval_cpu_matches_backend_hf_with_every_order(
    tmp_path, data_dir, folders, family, shared, prompt
):
    model = folders(family)
    runs = {}
    for backend in ("hf-prefix", "hf"):
        runs[backend] = run_eval(
            tmp_path / backend, data_dir, MODEL=model, BACKEND=backend, TASKS=TASK, LIMIT="2",
            ORDERS="cyclic", WANDB_MODE="disabled", **PROMPTS[prompt],
        )  # fmt: skip
    info = json.loads((runs["hf-prefix"] / "run_info.json").read_text())
    log = (tmp_path / "hf-prefix" / "make.log").read_text()
    if shared:
        assert info["scoring"] == "shared prefixes"
        assert "not verified" not in log and "self-check" not in log
    else:
        assert info["scoring"].startswith("per option") and repr(family) in info["scoring"]
        assert "not verified exact" in log
    assert info["fingerprint_inputs"]["scoring"] == info["scoring"]
    ours, ref = (samples(runs[b], TASK) for b in ("hf-prefix", "hf"))
    assert len(ours) == len(ref) == 2
    for mine, theirs in zip(ours, ref, strict=True):
        got, want = numbers(mine["resps"]), numbers(theirs["resps"])
        assert len(got) == len(want) >= len(mine["doc"]["choices"])
        assert got == pytest.approx(want, abs=TOL)
    # Every order of the options was scored, not the written one alone.
    assert any(len(numbers(s["resps"])) > len(s["doc"]["choices"]) for s in ours)
