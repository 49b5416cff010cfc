"""Every task and both groups register with lm-eval, and the YAMLs match their generator.

lm-eval skips a YAML that fails to parse without an error, so registration is checked by
name against the hard-coded catalogue.
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest
import yaml

from propensity_evals.catalog import (
    AB_GROUPS,
    GROUPS,
    ab_tasks_by_group,
    gen_tasks_by_group,
    group_source,
    tasks_by_group,
)
from tests.conftest import REPO_ROOT

TASKS_DIR = REPO_ROOT / "lm_eval_tasks"


@pytest.fixture(scope="module")
def task_manager():
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR))


def test_all_tasks_and_groups_register(task_manager):
    groups = tasks_by_group()
    # human-written, LM-written (the data README: 16 and 17 files), audited human-written.
    assert [len(tasks) for tasks in groups.values()] == [16, 17, 16]
    assert set(groups) <= set(task_manager.all_groups)
    for tasks in groups.values():
        assert set(tasks) <= set(task_manager.all_subtasks)
    # Our folder registers exactly the catalogue's names, and no built-in name: lm-eval indexes
    # one entry per name, so a YAML here reusing a built-in name (or any stray task name) would
    # show up below as an entry whose file is ours.
    from_our_folder = {
        name
        for name, entry in task_manager.task_index.items()
        if entry.yaml_path and TASKS_DIR in Path(entry.yaml_path).resolve().parents
    }
    # and their generate-mode and two-option twins
    every = groups | gen_tasks_by_group() | ab_tasks_by_group()
    assert from_our_folder == set(every) | {task for tasks in every.values() for task in tasks}
    # lm-eval's own advanced_ai_risk tasks stay available beside ours (from lm-eval's files,
    # by the equality above).
    assert "advanced_ai_risk_human-survival-instinct" in task_manager.all_tasks


def test_tasks_load_with_pinned_provenance(task_manager, data_dir, monkeypatch):
    monkeypatch.setenv("PROPENSITY_DATA_DIR", str(data_dir))
    loaded = task_manager.load(["anthropic_propensity_lm_written_survival_instinct"])
    task = loaded["tasks"]["anthropic_propensity_lm_written_survival_instinct"]
    assert task.config.num_fewshot == 0
    assert task.config.metadata["upstream"].endswith("84fcc677e52e1902d696c32cd1a6b663e70d3993")
    # The file's 1,000 rows less the ones the exclusion list names (read here with csv).
    with open(REPO_ROOT / "propensity_evals/hygiene/excluded.csv", newline="") as handle:
        excluded = [
            row
            for row in csv.DictReader(handle)
            if row["file"] == "lm_generated_evals/survival-instinct.jsonl"
        ]
    assert len(task.dataset["test"]) == 1000 - len(excluded) < 1000
    assert task.config.output_type == "multiple_choice"


def test_yaml_files_are_what_the_generator_writes():
    spec = importlib.util.spec_from_file_location("gen", TASKS_DIR / "_generate_configs.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    for group in [*GROUPS, *AB_GROUPS]:
        subset, categories = group_source(group)
        folder = TASKS_DIR / group
        expected = {f"_{group}.yaml": generator.group_config(group, categories)}
        for category in categories:
            config = generator.task_config(group, subset, category)
            expected[f"{config['task']}.yaml"] = config
        on_disk = {path.name for path in folder.glob("*.yaml")}
        assert on_disk == set(expected)
        for name, config in expected.items():
            assert yaml.safe_load((folder / name).read_text()) == config, name
        for required in ("_template_yaml", "utils.py", "README.md"):
            assert (folder / required).is_file(), f"{group}/{required}"


def test_a_run_of_pack_tasks_indexes_the_pack_alone(monkeypatch):
    """lm_eval_entry spares lm-eval the index of its built-in tasks (seconds per run) when
    --tasks names this pack's tasks alone, and only then."""
    from lm_eval.tasks import TaskManager, manager

    from propensity_evals import lm_eval_entry

    ours = "anthropic_propensity_human_written_audited,anthropic_propensity_lm_written_ab"
    assert lm_eval_entry.only_pack_tasks(["--model", "hf", "--tasks", ours, "--limit", "2"])
    assert not lm_eval_entry.only_pack_tasks(["--tasks", f"{ours},hellaswag"])
    builtin = "advanced_ai_risk_human-survival-instinct"
    assert not lm_eval_entry.only_pack_tasks(["--tasks", builtin])
    assert not lm_eval_entry.only_pack_tasks(["--model", "hf"])

    # Put back at teardown: the change is for lm_eval_entry's own process.
    monkeypatch.setattr(manager.TaskManager, "__init__", manager.TaskManager.__init__)
    lm_eval_entry.index_the_include_path_only()
    pack = TaskManager(include_path=str(TASKS_DIR))
    every = tasks_by_group() | gen_tasks_by_group() | ab_tasks_by_group()
    names = set(every) | {task for tasks in every.values() for task in tasks}
    # The catalogue's names and the shared template's helper entries, nothing of lm-eval's.
    assert names <= set(pack.all_tasks)
    assert not [name for name in pack.all_tasks if name.startswith("advanced_ai_risk")]
    assert all(TASKS_DIR in Path(pack.task_index[name].yaml_path).resolve().parents
               for name in names)  # fmt: skip
    # A caller that asks for lm-eval's own tasks gets them.
    assert "hellaswag" in TaskManager(include_path=str(TASKS_DIR), include_defaults=True).all_tasks
