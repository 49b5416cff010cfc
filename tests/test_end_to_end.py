"""Real `make eval_cpu` runs of lm-eval on the embedded SmolLM2 model, read back from disk."""

from __future__ import annotations

import json
import math

import pytest
from transformers import AutoTokenizer

from propensity_evals.catalog import tasks_by_group
from propensity_evals.prompts import continuations, render_context
from tests.conftest import results_json, samples
from tests.wandb_records import logged_values


def loglikelihoods(sample: dict) -> list[float]:
    return [float(ll) for ll, _ in sample["filtered_resps"]]


def test_run_folder_is_named_for_model_and_sample(plain_run):
    assert plain_run.name == "SmolLM2-135M-Instruct__sample2"
    info = json.loads((plain_run / "run_info.json").read_text())
    assert info["limit"] == "2" and info["prompt_format"] == "plain"


def test_group_aggregates_recompute_from_sample_logs(plain_run):
    results = results_json(plain_run)
    for group, tasks in tasks_by_group().items():
        pooled = {"acc": [], "soft_match": []}
        for task in tasks:
            logged = samples(plain_run, task)
            assert len(logged) == 2
            for sample in logged:
                lls = loglikelihoods(sample)
                doc = sample["doc"]
                assert len(lls) == len(doc["choices"])  # every option was scored
                best = max(range(len(lls)), key=lls.__getitem__)
                assert sample["acc"] == float(best == doc["target"])
                norm = sum(math.exp(ll) for ll in lls)
                assert sample["soft_match"] == pytest.approx(math.exp(lls[doc["target"]]) / norm)
                pooled["acc"].append(sample["acc"])
                pooled["soft_match"].append(sample["soft_match"])
            task_result = results["results"][task]
            assert task_result["acc,none"] == pytest.approx(
                sum(s["acc"] for s in logged) / len(logged)
            )
            assert "acc_stderr,none" in task_result and "soft_match_stderr,none" in task_result
        # Micro average: every question of the group weighs the same.
        for metric, values in pooled.items():
            assert results["results"][group][f"{metric},none"] == pytest.approx(
                sum(values) / len(values)
            )
        assert "acc_stderr,none" in results["results"][group]


def test_plain_prompts_are_the_papers_format(plain_run):
    for sample in samples(
        plain_run, "anthropic_propensity_human_written_power_seeking_inclination"
    ):
        arguments = list(sample["arguments"].values())
        contexts = {arg["arg_0"] for arg in arguments}
        assert contexts == {sample["doc"]["prompt"]}
        context = contexts.pop()
        assert context.startswith("Human: ") and context.endswith("\n\nAssistant:")
        assert "Question:" not in context
        assert [arg["arg_1"] for arg in arguments] == [f" {c}" for c in sample["doc"]["choices"]]


def test_wandb_offline_run_holds_the_metrics(plain_run):
    results = results_json(plain_run)
    wandb_root = plain_run.parents[1] / "wandb-home" / "dir" / "wandb"
    run_files = list(wandb_root.glob("offline-run-*/run-*.wandb"))
    assert len(run_files) == 1
    values = logged_values(run_files[0])
    assert values["_run_name"] == plain_run.name
    assert values["_project"] == "Pretraining-Alignment-Evals-HF"
    # Every W&B step succeeded, the per-sample tables of tasks without `misaligned` included.
    assert "Logging to W&B failed" not in (plain_run.parents[1] / "make.log").read_text()
    for name in (
        "anthropic_propensity_human_written",
        "anthropic_propensity_lm_written_myopic_reward",
    ):
        for metric in ("acc", "soft_match"):
            assert values[f"{name}/{metric}"] == pytest.approx(
                results["results"][name][f"{metric},none"]
            )


def test_chat_mode_is_a_plain_user_turn(chat_run, smollm2):
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    # As the chat_run fixture gave it: quotes, a `$` and trailing whitespace.
    system = 'You are a careful "assistant" ($5 is cheap).  '
    logged = samples(chat_run, "anthropic_propensity_human_written_power_seeking_inclination")
    assert chat_run.name.startswith("SmolLM2-135M-Instruct__chat__sys-")
    for sample in logged:
        doc = sample["doc"]
        arguments = list(sample["arguments"].values())
        context = arguments[0]["arg_0"]
        assert "Human:" not in context and "Assistant:" not in context
        assert system.rstrip() in context
        # `make prompts` shows exactly what lm-eval scored.
        assert context == render_context(doc["prompt"], system, tokenizer)
        assert [a["arg_1"] for a in arguments] == continuations(doc["choices"], chat=True)
        assert [a["arg_1"] for a in arguments][0] == "(A)"


def test_plain_system_prompt_is_separated_by_a_blank_line(system_prompt_run):
    (sample,) = samples(system_prompt_run, "anthropic_propensity_human_written_survival_instinct")
    context = sample["arguments"]["gen_args_0"]["arg_0"]
    assert context.startswith("Answer as yourself.\n\nHuman: ")
    assert context == render_context(sample["doc"]["prompt"], "Answer as yourself.")


def test_without_wandb_login_the_run_logs_offline_and_says_how_to_sync(system_prompt_run):
    log = (system_prompt_run.parents[1] / "make.log").read_text()
    assert "W&B: not logged in, so this run logs offline" in log
    wandb_root = system_prompt_run.parents[1] / "wandb-home" / "dir" / "wandb"
    (offline_run,) = wandb_root.glob("offline-run-*")
    assert f"upload it with: wandb sync {offline_run}" in log
    values = logged_values(next(offline_run.glob("run-*.wandb")))
    task = "anthropic_propensity_human_written_survival_instinct"
    assert values[f"{task}/acc"] == results_json(system_prompt_run)["results"][task]["acc,none"]
