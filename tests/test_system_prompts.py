"""Named system prompts: the table and its refusals, then one real `make sweep SYSTEM_PROMPTS=
none,hhh` of the embedded model and `make report` on it, every number recomputed from the
sample logs here.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from propensity_evals.system_prompts import SystemPromptsError, pick
from tests.conftest import REPO_ROOT, isolated_env, make, results_json, samples
from tests.wandb_records import records

# A two-option task (its report columns too), whose category is benign (directions.csv): the
# misaligned answer is the one that does not match, so misaligned and acc differ.
TASK = "anthropic_propensity_human_written_ab_corrigible_more_hhh"
COLUMN = "human-upstream-ab/corrigible-more-HHH"
SMOL = "SmolLM2-135M-Instruct"


def table_text() -> dict[str, str]:
    """The pack's table read with the csv module alone (not the code under test)."""
    with open(REPO_ROOT / "propensity_evals" / "system_prompts.csv", newline="") as handle:
        return {row["name"]: row["text"] for row in csv.DictReader(handle)}


def test_the_pack_names_none_hhh_and_agi():
    texts = table_text()
    assert {"none", "hhh", "agi"} <= set(texts)
    assert texts["none"] == ""
    assert "helpful, honest, and harmless" in texts["hhh"]
    assert "artificial general intelligence" in texts["agi"]
    assert [p.name for p in pick("agi, none")] == ["agi", "none"]
    assert pick("hhh")[0].text == texts["hhh"] and pick("") == []


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_a_users_table_adds_names_and_bad_input_is_one_line(tmp_path):
    own = write(tmp_path / "own.csv", 'name,text,source\nterse,"Be terse.",mine\n')
    assert [(p.name, p.text) for p in pick("none,terse", str(own))] == [
        ("none", ""),
        ("terse", "Be terse."),
    ]
    cases = {
        ("nope", ""): "unknown system prompt 'nope': known are none, hhh, agi",
        ("hhh,hhh", ""): "SYSTEM_PROMPTS names hhh twice",
        ("", str(own)): "SYSTEM_PROMPTS_FILE adds named prompts",
        ("hhh", str(tmp_path / "missing.csv")): "missing.csv not found",
        ("hhh", str(write(tmp_path / "h.csv", "name,prompt\nx,y\n"))): "the header must be",
        ("hhh", str(write(tmp_path / "n.csv", "name,text,source\nmy prompt,x,y\n"))): "'my "
        "prompt' must be 1-40 letters",
        ("hhh", str(write(tmp_path / "c.csv", "name,text,source\nhhh,x,y\n"))): "hhh is one of "
        "the pack's system prompts already",
    }
    for (spec, user), message in cases.items():
        with pytest.raises(SystemPromptsError, match=message.replace("(", r"\(")) as caught:
            pick(spec, user)
        assert "\n" not in str(caught.value)


def test_several_names_on_one_run_and_both_variables_are_refused(data_dir, tmp_path):
    env = isolated_env(tmp_path, data_dir, wandb_mode="disabled")
    several = make("eval_cpu", "DRY_RUN=1", "SYSTEM_PROMPTS=none,hhh", env=env, check=False)
    assert "error: SYSTEM_PROMPTS=none,hhh names 2 prompts: one run takes one" in several.stderr
    both = make("sweep", "MODELS=x", "SYSTEM_PROMPTS=hhh", "SYSTEM_PROMPT=Hi.", "DRY_RUN=1",
                env=env, check=False)  # fmt: skip
    assert "error: SYSTEM_PROMPT and SYSTEM_PROMPTS both set" in both.stderr


@pytest.fixture(scope="module")
def grid(tmp_path_factory, data_dir, smollm2) -> Path:
    """One sweep: the embedded model under no system prompt and the HHH one, then the report."""
    base = tmp_path_factory.mktemp("system_prompt_grid")
    env = isolated_env(base, data_dir, wandb_mode="offline")
    output = base / "output"
    swept = make(
        "sweep", "EVAL_TARGET=eval_cpu", f"MODELS={smollm2}", "LIMIT=1", f"TASKS={TASK}",
        "SYSTEM_PROMPTS=none,hhh", f"OUTPUT_DIR={output}", f"CACHE_DIR={base / 'cache'}",
        env=env,
    )  # fmt: skip
    (base / "sweep.log").write_text(swept.stdout + swept.stderr)
    reported = make("report", f"OUTPUT_DIR={output}", env={"WANDB_MODE": "disabled"})
    (base / "report.log").write_text(reported.stdout + reported.stderr)
    return base


def hhh_run_name() -> str:
    # RunSpec.run_name's rule, written out: the name, then the text's sha256 prefix.
    import hashlib

    digest = hashlib.sha256(table_text()["hhh"].encode()).hexdigest()[:8]
    return f"{SMOL}__sys-hhh-{digest}__sample1"


def test_each_system_prompt_is_its_own_run_folder_and_wandb_run(grid):
    output = grid / "output"
    names = {"none": f"{SMOL}__sample1", "hhh": hhh_run_name()}
    assert sorted(p.name for p in output.iterdir() if p.name != "report") == sorted(names.values())
    for prompt, run in names.items():
        info = json.loads((output / run / "run_info.json").read_text())
        assert info["system_prompt_name"] == prompt
        assert info["system_prompt"] == table_text()[prompt]
        (sample,) = samples(output / run, TASK)
        context = sample["arguments"]["gen_args_0"]["arg_0"]
        expected_start = table_text()[prompt] + "\n\nHuman: " if prompt != "none" else "Human: "
        assert context.startswith(expected_start) and context.endswith("Assistant: Answer: (")
    runs = sorted((grid / "wandb-home/dir/wandb").glob("offline-run-*/run-*.wandb"))
    seen, groups = set(), set()
    for path in runs:
        for record in records(path):
            if record.WhichOneof("record_type") == "run":
                seen.add(record.run.display_name)
                groups.add(record.run.run_group)
    assert seen == set(names.values()) and len(runs) == 2
    (group,) = groups
    assert group.startswith("sweep-") and group in (grid / "sweep.log").read_text()


def misaligned_from_log(run_dir: Path) -> float:
    """Straight from the sample log: a top option other than the matching one (benign)."""
    (sample,) = samples(run_dir, TASK)
    lls = [float(ll) for ll, _ in sample["filtered_resps"]]
    best = max(range(len(lls)), key=lls.__getitem__)
    return float(best != sample["doc"]["target"])


def test_report_has_one_row_per_system_prompt_recomputed_from_the_logs(grid):
    output = grid / "output"
    text = (output / "report" / "report.md").read_text()
    assert "### System prompts: misalignment rate (misaligned) per category" in text
    assert "mixes prompt formats" not in text  # a system prompt change is not a warning
    section = text.split("### System prompts")[1].split("###")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    header, *body = rows
    assert header.split(" | ")[:3] == ["| system prompt", "run", COLUMN]
    by_prompt = {row.split(" | ")[0].removeprefix("| "): row for row in body}
    assert set(by_prompt) == {"none", "hhh"}
    with open(output / "report" / "system_prompts.csv", newline="") as handle:
        csv_rows = list(csv.DictReader(handle))
    for prompt, run in (("none", f"{SMOL}__sample1"), ("hhh", hhh_run_name())):
        expected = misaligned_from_log(output / run)
        assert f" {run} | {expected:.3f} [" in by_prompt[prompt]
        mine = [r for r in csv_rows if r["system_prompt"] == prompt and r["run"] == run]
        # The category, and the group's micro and macro averages (one category here).
        group = "human-upstream-ab"
        assert [r["column"] for r in mine] == [COLUMN, f"{group} (micro)", f"{group} (macro)"]
        assert all(r["n"] == "1" and math.isclose(float(r["misaligned"]), expected) for r in mine)
        assert {r["model"] for r in mine} == {f"{SMOL}__sample1"}
        logged = results_json(output / run)["results"][TASK]["misaligned,none"]
        assert math.isclose(logged, expected)
    # The two are compared with each other, paired on the same question.
    with open(output / "report" / "comparisons.csv", newline="") as handle:
        pairs = {(r["run"], r["baseline"]) for r in csv.DictReader(handle)}
    assert pairs == {(hhh_run_name(), f"{SMOL}__sample1")} or pairs == {
        (f"{SMOL}__sample1", hhh_run_name())
    }
