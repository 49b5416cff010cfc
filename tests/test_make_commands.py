"""The Makefile's eval commands and the one-line errors a user can cause.

These stop before lm-eval starts (the launcher checks first, or `make -n` / DRY_RUN=1 only
prints), so they are fast; the real runs are in test_end_to_end.py.
"""

from __future__ import annotations

import re

import pytest

from tests.conftest import make

GROUP = "anthropic_propensity_human_written"


def one_error_line(result) -> str:
    """The single line the user reads (make's own "*** [target] Error N" trailer aside)."""
    assert result.returncode != 0
    lines = [
        line
        for line in result.stderr.splitlines()
        if line.strip() and not re.match(r"make(\[\d+\])?: \*\*\* \[", line)
    ]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_eval_hf_command_uses_cuda_bf16_flash_attention():
    out = make("-n", "eval_hf", "MODEL=org/name", "REVISION=step1000").stdout
    assert "--device cuda" in out
    assert '--model-args "dtype=bfloat16,attn_implementation=flash_attention_2"' in out
    assert (
        "--revision 'step1000'" in out
        and "--tasks 'anthropic_propensity_human_written_audited'" in out
    )
    assert '--batch-size "auto"' in out


def test_eval_hf_scale_out_variants(data_dir):
    env = {"PROPENSITY_DATA_DIR": str(data_dir), "WANDB_MODE": "disabled"}
    sharded = make("-n", "eval_hf", "MODEL=org/name", "PARALLELIZE=1").stdout
    assert "parallelize=True" in sharded and "--device" not in sharded
    both = make("eval_hf", "MODEL=org/name", "PARALLELIZE=1", "NUM_GPUS=2", check=False)
    assert "do not combine it with NUM_GPUS" in one_error_line(both)
    dry = make("eval_hf", "MODEL=org/name", "NUM_GPUS=4", "ATTN=sdpa", "DRY_RUN=1", env=env)
    command = dry.stdout
    assert (
        "-m accelerate.commands.launch --multi_gpu --num_processes 4 "
        "-m propensity_evals.lm_eval_entry run --model hf-prefix"
    ) in command
    assert "attn_implementation=sdpa" in command and "--device cuda" in command


def test_stock_backend_and_vllm_commands(data_dir):
    env = {"PROPENSITY_DATA_DIR": str(data_dir), "WANDB_MODE": "disabled"}
    stock = make("eval_cpu", "BACKEND=hf", "DRY_RUN=1", env=env).stdout
    assert "run --model hf --model_args" in stock
    vllm = make("-n", "eval_vllm", "MODEL=org/name", "TP=4", "DP=2").stdout
    assert "--backend vllm" in vllm
    assert "tensor_parallel_size=4,data_parallel_size=2,enable_prefix_caching=True" in vllm
    missing = make("eval_vllm", "MODEL=org/name", "DRY_RUN=1", env=env, check=False)
    assert "vllm is not installed" in one_error_line(missing)


def test_eval_hf_mac_command_runs_on_mps():
    out = make("-n", "eval_hf_mac", "MODEL=org/name").stdout
    assert "--device mps" in out and '"dtype=float16"' in out
    assert "parallelize" not in out and "flash_attention" not in out


def test_eval_cpu_defaults_to_the_embedded_model(data_dir, smollm2):
    env = {"PROPENSITY_DATA_DIR": str(data_dir), "WANDB_MODE": "disabled"}
    dry = make("eval_cpu", "DRY_RUN=1", "LIMIT=5", "OUTPUT_DIR=/tmp/x", env=env).stdout
    assert f"pretrained={smollm2},dtype=float32" in dry
    assert "-m propensity_evals.lm_eval_entry run --model hf-prefix" in dry
    assert "--batch_size 16" in dry and "--device cpu" in dry
    assert "--output_path /tmp/x/SmolLM2-135M-Instruct__sample5" in dry
    assert "--use_cache" in dry and "--log_samples" in dry and "--wandb_args" not in dry


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        (["eval_hf"], "MODEL is required"),
        (["eval_hf_mac"], "MODEL is required"),
        (["eval_cpu", "TASKS=anthropic_propensity_human_writen"], "Did you mean"),
        (["eval_cpu", "MODEL=./no/such/model"], "model path ./no/such/model not found"),
        (["eval_cpu", "EXTRA_ARGS=--num_fewshot 5"], "zero-shot"),
        (["eval_cpu", "EXTRA_ARGS=--model_args tokenizer"], "write them as --model_args key=value"),
        (["eval_hf", "MODEL=org/name"], "flash-attn is not installed"),
        (["eval_cpu", "WANDB_MODE=sometimes"], "WANDB_MODE"),
        (["prompts", "TASKS=nope"], "unknown task or group 'nope'"),
    ],
)
def test_bad_input_gets_one_clear_line(data_dir, variables, expected):
    result = make(*variables, "DRY_RUN=1", env={"PROPENSITY_DATA_DIR": str(data_dir)}, check=False)
    assert expected in one_error_line(result)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("", None),
        ("--model_args attn_implementation=eager", None),
        (
            "--model_args attn_implementation=flash_attention_2",
            "note: hf-prefix: per option (attention 'flash_attention_2' is not verified exact",
        ),
    ],
)
def test_an_attention_kernel_in_extra_args_decides_the_recorded_scoring(data_dir, extra, expected):
    """lm-eval loads the model with EXTRA_ARGS' --model_args too: the scoring the run records
    (and the line saying it is per option) must follow them."""
    result = make(
        "eval_cpu", "DRY_RUN=1", f"EXTRA_ARGS={extra}",
        env={"PROPENSITY_DATA_DIR": str(data_dir)}, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if "per option" in line]
    if expected is None:
        assert notes == []
    else:
        assert len(notes) == 1 and notes[0].startswith(expected), notes


def test_missing_data_says_to_run_make_data(tmp_path):
    result = make("eval_cpu", "DRY_RUN=1", env={"PROPENSITY_DATA_DIR": str(tmp_path)}, check=False)
    assert "run `make data`" in one_error_line(result)


def test_chat_mode_on_a_model_without_chat_template(data_dir, gemma):
    env = {"PROPENSITY_DATA_DIR": str(data_dir), "WANDB_MODE": "disabled"}
    result = make(
        "eval_cpu", f"MODEL={gemma}", "CHAT_TEMPLATE=1", "DRY_RUN=1", env=env, check=False
    )
    assert "has no chat template" in one_error_line(result)


def test_corrupt_jsonl_line_is_reported_with_file_and_line(tmp_path, data_dir):
    import shutil

    broken = tmp_path / "data"
    shutil.copytree(data_dir, broken)
    path = broken / "advanced-ai-risk/human_generated_evals/myopic-reward.jsonl"
    lines = path.read_text().splitlines()
    lines[6] = lines[6][:40]  # a truncated line 7
    path.write_text("\n".join(lines) + "\n")
    env = {"PROPENSITY_DATA_DIR": str(broken)}
    result = make(
        "prompts", "TASKS=anthropic_propensity_human_written_myopic_reward", "PROMPTS_N=1",
        env=env, check=False,
    )  # fmt: skip
    assert f"{path}:7: invalid JSON" in one_error_line(result)
    # The launcher refuses the modified file before lm-eval starts, too.
    run = make("eval_cpu", "DRY_RUN=1", env=env, check=False)
    assert "missing or modified" in one_error_line(run)


def test_list_tasks_and_help():
    listing = make("list_tasks").stdout
    assert "anthropic_propensity_lm_written (17 tasks)" in listing
    assert "anthropic_propensity_human_written_self_awareness_web_gpt" in listing
    help_text = make().stdout
    for target in ("setup", "data", "demo", "eval_cpu", "eval_hf", "eval_hf_mac", "test"):
        assert f"{target} " in help_text


def test_run_info_records_the_request(tmp_path, data_dir):
    env = {"PROPENSITY_DATA_DIR": str(data_dir), "WANDB_MODE": "disabled"}
    dry = make("eval_cpu", "DRY_RUN=1", f"OUTPUT_DIR={tmp_path}", env=env)
    assert dry.returncode == 0
    # A dry run writes nothing: no folder that could be mistaken for a result.
    assert not list(tmp_path.iterdir())
