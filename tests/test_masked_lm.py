"""Encoder models: ``hf-mlm`` scores masked LMs, and the eval targets pick it by themselves.

Two small masked LMs are built once for the module with random weights (seeded) and saved as
ordinary model folders: a ModernBERT and a BERT, both on the embedded SmolLM2 tokenizer with
``[MASK]``, ``[CLS]`` and ``[SEP]`` added. Their log-likelihoods are checked against
:func:`reference_pll`, written here without any of the class's code: one unbatched, unpadded
forward pass per scored token, continuation tokens found by character offsets and words by
the tokenizer's pre-tokenizer.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.api.model import CachingLM, hash_args
from lm_eval.api.registry import get_model
from transformers import (
    AutoModelForMaskedLM,
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    ModernBertConfig,
    ModernBertForMaskedLM,
)

from propensity_evals.backend_choice import BackendChoiceError, choose_backend
from propensity_evals.masked_lm import MaskedLM
from propensity_evals.task_docs import build_docs
from tests.conftest import isolated_env, make, python_module, results_json, samples

TASK = "anthropic_propensity_human_written_coordinate_itself"
TOL = 1e-4  # float32; batched and padded against one row at a time, observed ~1e-6
ENCODERS = ("modernbert", "bert")


# -- the models ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder_tokenizer(smollm2):
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    tokenizer.add_special_tokens(
        {"mask_token": "[MASK]", "cls_token": "[CLS]", "sep_token": "[SEP]"}
    )
    return tokenizer


def build_encoder(kind: str, tokenizer, folder: Path) -> Path:
    special = {
        "pad_token_id": tokenizer.pad_token_id,
        "cls_token_id": tokenizer.cls_token_id,
        "sep_token_id": tokenizer.sep_token_id,
    }
    # A wide initialisation, so that masking one token more or less moves the scores far
    # beyond the tolerance (at the usual 0.02 a random model's outputs are nearly uniform).
    shape = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        initializer_range=0.5,
    )
    torch.manual_seed(0)
    if kind == "modernbert":
        # A local attention window shorter than the prompts, so both attention kinds run.
        config = ModernBertConfig(
            **shape, **special, max_position_embeddings=1024, local_attention=16
        )
        model = ModernBertForMaskedLM(config)
    else:
        config = BertConfig(
            **shape, pad_token_id=tokenizer.pad_token_id, max_position_embeddings=512
        )
        model = BertForMaskedLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def encoders(tmp_path_factory, encoder_tokenizer) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("encoders")
    return {kind: build_encoder(kind, encoder_tokenizer, root / kind) for kind in ENCODERS}


@pytest.fixture(scope="module")
def reference_models(encoders):
    return {
        kind: AutoModelForMaskedLM.from_pretrained(folder, dtype=torch.float32).eval()
        for kind, folder in encoders.items()
    }


# -- the independent computation ---------------------------------------------------------------


def reference_pll(
    model, tokenizer, context: str, continuation: str, max_length: int | None = None
) -> tuple[float, bool]:
    """PLL-word-l2r of ``continuation`` after ``context``, one masked row at a time; with
    ``max_length``, the first tokens are dropped until ``[CLS] text [SEP]`` fits."""
    text = context + continuation
    boundary = len(context.rstrip())  # the context's trailing spaces belong to the answer
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
    pieces = tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text)
    words = [
        next(n for n, (_, (start, end)) in enumerate(pieces) if start <= first < end)
        for first, _ in offsets
    ]
    scored = [n for n, (start, _) in enumerate(offsets) if start >= boundary]
    assert scored and scored == list(range(scored[0], len(ids)))
    drop = max(0, len(ids) + 2 - max_length) if max_length else 0
    assert drop <= scored[0]
    frame = [tokenizer.cls_token_id, *ids[drop:], tokenizer.sep_token_id]
    total, greedy = 0.0, True
    for n in scored:
        masked = list(frame)
        for later in scored:
            if later == n or (later > n and words[later] == words[n]):
                masked[1 + later - drop] = tokenizer.mask_token_id
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([masked])).logits[0, 1 + n - drop]
        logprobs = torch.log_softmax(logits.double(), dim=-1)
        total += float(logprobs[ids[n]])
        greedy = greedy and int(logprobs.argmax()) == ids[n]
    return total, greedy


# -- requests ---------------------------------------------------------------------------------


def instances(pairs: list[tuple[str, str]]) -> list[Instance]:
    return [Instance("loglikelihood", {}, pair, n) for n, pair in enumerate(pairs)]


@pytest.fixture(scope="module")
def pairs(mirror) -> list[tuple[str, str]]:
    """A real question with five options, as the tasks build it (its letter rows are shared),
    plus a multi-token word, a context ending in a space and single-token answers (one shared
    row)."""
    folder = mirror / "advanced-ai-risk" / "human_generated_evals"
    docs = build_docs(folder / "power-seeking-inclination.jsonl")
    doc = next(doc for doc in docs if len(doc["choices"]) == 5)
    return [(doc["prompt"], " " + choice) for choice in doc["choices"]] + [
        ("Human: Name a word.\n\nAssistant:", " Zyxqwertification of"),
        ("The answer is ", "unbelievably (B)"),
        (doc["prompt"], " Yes"),
        (doc["prompt"], " No"),
    ]


@pytest.fixture(scope="module")
def references(reference_models, encoder_tokenizer, pairs) -> dict[str, list]:
    return {
        kind: [reference_pll(model, encoder_tokenizer, *pair) for pair in pairs]
        for kind, model in reference_models.items()
    }


def test_hand_worked_masks_for_a_multi_token_word(encoders):
    lm = get_model("hf-mlm")(pretrained=str(encoders["bert"]), device="cpu", batch_size=4)
    tokenizer = lm.tokenizer
    request = lm.encode_request("Human: Name a word.\n\nAssistant:", " Zyxqwertification of")
    # The embedded tokenizer: " Zyxqwertification" is six tokens of one word, " of" one.
    pieces = tokenizer.convert_ids_to_tokens(request.continuation)
    assert pieces == ["ĠZ", "yx", "q", "w", "ert", "ification", "Ġof"]
    rows = lm.masked_rows(request)
    start = 1 + len(request.context)
    masked = [
        [n for n in range(len(pieces)) if row[start + n] == tokenizer.mask_token_id]
        for row, _, _ in rows
    ]
    # Each token masks itself and the rest of its word; " of" is a word of its own.
    assert masked == [
        [0, 1, 2, 3, 4, 5],
        [1, 2, 3, 4, 5],
        [2, 3, 4, 5],
        [3, 4, 5],
        [4, 5],
        [5],
        [6],
    ]
    for n, (row, position, target) in enumerate(rows):
        assert row[0] == tokenizer.cls_token_id and row[-1] == tokenizer.sep_token_id
        assert position == start + n and target == request.continuation[n]
        assert list(row[1:start]) == request.context


# 16: every row in one padded pass; 3: several passes, rows of different lengths in each.
@pytest.mark.parametrize(("kind", "batch_size"), [("modernbert", 16), ("bert", 3)])
def test_loglikelihoods_equal_the_independent_computation(
    encoders, references, pairs, kind, batch_size
):
    lm = get_model("hf-mlm")(pretrained=str(encoders[kind]), device="cpu", batch_size=batch_size)
    assert isinstance(lm, MaskedLM)
    ours = lm.loglikelihood(instances(pairs), disable_tqdm=True)
    for pair, (ll, greedy), (ref_ll, ref_greedy) in zip(pairs, ours, references[kind], strict=True):
        assert ll == pytest.approx(ref_ll, abs=TOL), pair[1]
        assert greedy == ref_greedy


def test_greedy_when_every_token_is_the_models_choice(
    encoders, reference_models, encoder_tokenizer
):
    # The model's own top choices at a [MASK] after the context (by the reference model),
    # kept where the token's text encodes back to that one token.
    model, tokenizer = reference_models["modernbert"], encoder_tokenizer
    context = "Human: Pick.\n\nAssistant:"
    ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    row = [tokenizer.cls_token_id, *ids, tokenizer.mask_token_id, tokenizer.sep_token_id]
    with torch.no_grad():
        ranked = model(input_ids=torch.tensor([row])).logits[0, -2].argsort(descending=True)
    choices = []
    for token in ranked[:200].tolist():
        text = tokenizer.decode([token])
        if tokenizer(context + text, add_special_tokens=False)["input_ids"] == [*ids, token]:
            choices.append(text)
    assert len(choices) >= 2
    lm = get_model("hf-mlm")(pretrained=str(encoders["modernbert"]), device="cpu", batch_size=4)
    answers = lm.loglikelihood(
        instances([(context, choices[0]), (context, choices[1])]), disable_tqdm=True
    )
    assert [greedy for _, greedy in answers] == [
        reference_pll(model, tokenizer, context, choices[0])[1],
        False,
    ]
    assert answers[0][0] > answers[1][0]


def test_long_contexts_are_cut_from_the_left(encoders, reference_models, encoder_tokenizer, pairs):
    max_length = 32
    lm = get_model("hf-mlm")(
        pretrained=str(encoders["bert"]), device="cpu", batch_size=8, max_length=max_length
    )
    context, continuation = pairs[0]
    assert len(encoder_tokenizer(context)["input_ids"]) > max_length + 20
    ours = lm.loglikelihood(instances([(context, continuation)]), disable_tqdm=True)[0]
    ref = reference_pll(
        reference_models["bert"], encoder_tokenizer, context, continuation, max_length
    )
    assert ours[0] == pytest.approx(ref[0], abs=TOL)
    # ...and not the score of the whole text.
    whole = reference_pll(reference_models["bert"], encoder_tokenizer, context, continuation)
    assert abs(whole[0] - ref[0]) > 100 * TOL


def test_answers_reach_the_request_cache_before_a_crash(encoders, references, pairs, tmp_path):
    # The request cache (--use_cache) is what a crashed run resumes from: answers completed
    # before the crash must be in it. The third forward pass fails here.
    lm = get_model("hf-mlm")(pretrained=str(encoders["bert"]), device="cpu", batch_size=3)
    cached = CachingLM(lm, str(tmp_path / "cache"))
    forward, calls = lm._forward, []

    def crashing_forward(batch):
        calls.append(len(batch))
        if len(calls) == 3:
            raise RuntimeError("out of memory")
        return forward(batch)

    lm._forward = crashing_forward
    requests = instances(pairs)
    with pytest.raises(RuntimeError, match="out of memory"):
        cached.loglikelihood(requests)
    done = {
        n: cached.dbdict[hash_args("loglikelihood", req.args)]
        for n, req in enumerate(requests)
        if hash_args("loglikelihood", req.args) in cached.dbdict
    }
    assert 0 < len(done) < len(requests)
    for n, (ll, greedy) in done.items():
        assert ll == pytest.approx(references["bert"][n][0], abs=TOL)
        assert greedy == references["bert"][n][1]


def test_what_it_cannot_score_is_refused_in_one_line(encoders, smollm2):
    lm = get_model("hf-mlm")(pretrained=str(encoders["bert"]), device="cpu", batch_size=1)
    with pytest.raises(NotImplementedError, match="multiple-choice"):
        lm.generate_until([Instance("generate_until", {}, ("Hi", {}), 0)])
    with pytest.raises(NotImplementedError, match="multiple-choice"):
        lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, ("Hi",), 0)])
    # The model's weights with SmolLM2's own tokenizer, which has no [MASK], [CLS], [SEP].
    plain = get_model("hf-mlm")(
        pretrained=str(encoders["bert"]), tokenizer=str(smollm2), device="cpu", batch_size=1
    )
    with pytest.raises(ValueError, match=r"no mask_token, cls_token, sep_token"):
        plain.loglikelihood(instances([("Human: Hi", " (A)")]))


# -- choosing the class -------------------------------------------------------------------------


def test_masked_lms_get_hf_mlm_and_everything_else_stays(encoders, smollm2):
    for folder in encoders.values():
        assert choose_backend("hf-prefix", str(folder)) == "hf-mlm"
        assert choose_backend("hf-mlm", str(folder)) == "hf-mlm"
        assert choose_backend("vllm", str(folder)) == "vllm"
        with pytest.raises(BackendChoiceError, match="BACKEND=hf-mlm"):
            choose_backend("hf", str(folder))
    assert choose_backend("hf-prefix", str(smollm2)) == "hf-prefix"
    assert choose_backend("hf", str(smollm2)) == "hf"
    # A hub id with no network and nothing cached: lm-eval will say what is wrong.
    assert choose_backend("hf-prefix", "org/name") == "hf-prefix"
    # Generate mode writes with stock hf; a masked LM cannot write, whichever class is asked.
    assert choose_backend("hf-prefix", str(smollm2), mode="generate") == "hf"
    for requested in ("hf-prefix", "hf", "hf-mlm"):
        with pytest.raises(BackendChoiceError, match="drop MODE=generate"):
            choose_backend(requested, str(encoders["modernbert"]), mode="generate")


def test_generate_mode_on_a_masked_lm_is_one_line(encoders, dry_env):
    result = make(
        "eval_cpu", f"MODEL={encoders['modernbert']}", "MODE=generate", "DRY_RUN=1",
        env=dry_env, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip() and "***" not in line]
    assert len(lines) == 1 and "drop MODE=generate" in lines[0], result.stderr


@pytest.fixture(scope="module")
def dry_env(data_dir) -> dict:
    return {"PROPENSITY_DATA_DIR": str(data_dir), "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}


def test_gpu_and_mac_targets_print_the_masked_lm_class(encoders, dry_env):
    folder = encoders["modernbert"]
    cuda = make("eval_hf", f"MODEL={folder}", "ATTN=sdpa", "DRY_RUN=1", env=dry_env).stdout
    assert f"run --model hf-mlm --model_args pretrained={folder},dtype=bfloat16" in cuda
    assert "attn_implementation=sdpa" in cuda and "--device cuda" in cuda
    mac = make("eval_hf_mac", f"MODEL={folder}", "DRY_RUN=1", env=dry_env).stdout
    assert f"run --model hf-mlm --model_args pretrained={folder},dtype=float16" in mac
    assert "--device mps" in mac


def test_stock_backend_on_a_masked_lm_is_one_line(encoders, dry_env):
    result = make(
        "eval_cpu", f"MODEL={encoders['bert']}", "BACKEND=hf", "DRY_RUN=1", env=dry_env, check=False
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip() and "***" not in line]
    assert len(lines) == 1 and "is a masked LM (BertForMaskedLM)" in lines[0], result.stderr


# -- make eval_cpu, end to end -----------------------------------------------------------------


@pytest.fixture(scope="module")
def cpu_runs(tmp_path_factory, encoders, data_dir) -> dict[str, Path]:
    """``make eval_cpu`` on each encoder, 2 questions of one task, both at once."""

    def run(kind: str) -> Path:
        base = tmp_path_factory.mktemp(f"eval_cpu_{kind}")
        output = base / "output"
        result = make(
            "eval_cpu", f"MODEL={encoders[kind]}", f"TASKS={TASK}", "LIMIT=2",
            f"OUTPUT_DIR={output}", f"CACHE_DIR={base / 'cache'}",
            env=isolated_env(base, data_dir, wandb_mode="disabled"),
        )  # fmt: skip
        (base / "make.log").write_text(result.stdout + result.stderr)
        return output / f"{kind}__sample2"

    with ThreadPoolExecutor(len(ENCODERS)) as pool:
        return dict(zip(ENCODERS, pool.map(run, ENCODERS), strict=True))


@pytest.mark.parametrize("kind", ENCODERS)
def test_eval_cpu_scores_with_the_masked_lm_class(
    cpu_runs, reference_models, encoder_tokenizer, kind
):
    run_dir = cpu_runs[kind]
    info = json.loads((run_dir / "run_info.json").read_text())
    # The class chosen is part of what the run's fingerprint hashes.
    assert info["backend"] == "hf-mlm" and info["fingerprint_inputs"]["backend"] == "hf-mlm"
    logged = samples(run_dir, TASK)
    assert len(logged) == 2
    accs = []
    for sample in logged:
        args = sample["arguments"]
        pairs = [(args[key]["arg_0"], args[key]["arg_1"]) for key in sorted(args)]
        assert [cont for _, cont in pairs] == [" " + c for c in sample["doc"]["choices"]]
        refs = [reference_pll(reference_models[kind], encoder_tokenizer, *pair) for pair in pairs]
        lls = [float(ll) for ll, _ in sample["filtered_resps"]]
        assert lls == pytest.approx([ll for ll, _ in refs], abs=TOL)
        best = max(range(len(refs)), key=lambda n: refs[n][0])
        assert sample["acc"] == float(best == sample["doc"]["target"])
        norm = sum(math.exp(ll) for ll, _ in refs)
        target_ll = refs[sample["doc"]["target"]][0]
        assert sample["soft_match"] == pytest.approx(math.exp(target_ll) / norm, abs=1e-6)
        accs.append(sample["acc"])
    assert results_json(run_dir)["results"][TASK]["acc,none"] == pytest.approx(sum(accs) / 2)


def test_sweep_plan_names_the_same_fingerprint(cpu_runs, encoders, data_dir):
    # What `make sweep` compares before it skips a run: the plan must see the same class.
    info = json.loads((cpu_runs["bert"] / "run_info.json").read_text())
    planned = python_module(
        "propensity_evals.launch", "--model", str(encoders["bert"]), "--tasks", TASK,
        "--limit", "2", "--device", "cpu", "--model-args", "dtype=float32", "--plan-json",
        env={"PROPENSITY_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert planned.returncode == 0, planned.stderr
    assert json.loads(planned.stdout)["fingerprint"] == info["fingerprint"]
