"""What a run's fingerprint holds beside the model and the prompts: the code that computes the
answers (the pack's version and eval sources; lm-eval, transformers and torch versions) and the
files the model is loaded with (``tokenizer=``, ``peft=``, ``delta=``), asked of the launcher
the way the sweep asks it (``make eval_cpu PLAN_JSON=1``) and read back from a real run.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import fields
from pathlib import Path

import lm_eval
import torch
import transformers

from propensity_evals.code_identity import pack_version, sources_sha256
from propensity_evals.run_identity import RunSpec
from tests.conftest import REPO_ROOT, make
from tests.wandb_records import records

SURVIVAL = "anthropic_propensity_human_written_survival_instinct"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "config.json")


def plan(data_dir: Path, *variables: str) -> dict:
    """The launcher's plan, as `make sweep` asks for it."""
    env = {"PROPENSITY_DATA_DIR": str(data_dir), "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    result = make("-s", "eval_cpu", "PLAN_JSON=1", f"TASKS={SURVIVAL}", "LIMIT=1", *variables,
                  env=env)  # fmt: skip
    return json.loads(result.stdout.strip().splitlines()[-1])


def tokenizer_copy(model: Path, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name in TOKENIZER_FILES:
        shutil.copy(model / name, folder)
    return folder


def test_a_tokenizer_folder_given_in_extra_args_is_hashed_by_content(tmp_path, data_dir, smollm2):
    tokenizer = tokenizer_copy(smollm2, tmp_path / "tokenizer")
    extra = f"EXTRA_ARGS=--model_args tokenizer={tokenizer}"
    alone = plan(data_dir)
    before = plan(data_dir, extra)
    config_path = tokenizer / "tokenizer_config.json"
    original = config_path.read_bytes()
    config = json.loads(original)
    config["model_max_length"] = 77  # a retokenized copy: same file names, other bytes
    config_path.write_text(json.dumps(config))
    after = plan(data_dir, extra)
    assert len({alone["fingerprint"], before["fingerprint"], after["fingerprint"]}) == 3
    loaded = after["fingerprint_inputs"]["model"]["loaded_with"]
    assert list(loaded) == ["tokenizer"]
    assert loaded["tokenizer"]["kind"] == "local"
    assert loaded["tokenizer"]["count"] == len(TOKENIZER_FILES)
    # The model's own identity is untouched; only what it is loaded with is added.
    model_only = {
        k: v for k, v in after["fingerprint_inputs"]["model"].items() if k != "loaded_with"
    }
    assert model_only == alone["fingerprint_inputs"]["model"]
    # By content, not by modification time: the same bytes written again are the same run.
    config_path.write_bytes(original)
    assert plan(data_dir, extra)["fingerprint"] == before["fingerprint"]


def test_a_hub_tokenizer_that_cannot_be_resolved_leaves_the_run_without_identity(data_dir):
    # Offline, and in no local cache: no commit, so no fingerprint (never cached, never skipped).
    unresolved = plan(data_dir, "EXTRA_ARGS=--model_args tokenizer=nobody-org/no-such-tokenizer")
    assert unresolved["fingerprint"] is None
    tokenizer = unresolved["fingerprint_inputs"]["model"]["loaded_with"]["tokenizer"]
    assert tokenizer["kind"] == "hub" and tokenizer["commit"] is None


def copy_checkout(root: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__")
    for folder in ("propensity_evals", "lm_eval_tasks"):
        shutil.copytree(REPO_ROOT / folder, root / folder, ignore=ignore)
    shutil.copy(REPO_ROOT / "pyproject.toml", root)
    return root


def test_the_sources_hash_follows_the_code_an_eval_runs(tmp_path):
    root = copy_checkout(tmp_path / "checkout")
    same = sources_sha256(root)
    assert same == sources_sha256()  # a copy of this checkout is the same code

    def changed_by(relative: str) -> bool:
        path = root / relative
        kept = path.read_bytes() if path.exists() else None
        with open(path, "a") as handle:
            handle.write("\n# an edit\n")
        changed = sources_sha256(root) != same
        path.unlink()
        if kept is not None:
            path.write_bytes(kept)
        assert sources_sha256(root) == same
        return changed

    human = "lm_eval_tasks/anthropic_propensity_human_written"
    for relative in (
        "propensity_evals/prompts.py",
        "propensity_evals/prefix_sharing_lm.py",
        "propensity_evals/launch.py",
        f"{human}/utils.py",
        f"{human}/{SURVIVAL}.yaml",
        "propensity_evals/a_new_scoring_module.py",  # new code counts until declared otherwise
    ):
        assert changed_by(relative), relative
    for relative in (
        "propensity_evals/report/tables.py",
        "propensity_evals/cluster/job.py",
        "propensity_evals/sweep.py",
        f"{human}/README.md",
        "lm_eval_tasks/_generate_configs.py",
    ):
        assert not changed_by(relative), relative


def test_the_pack_version_is_the_checkouts_pyproject(tmp_path):
    root = copy_checkout(tmp_path / "checkout")
    text = (REPO_ROOT / "pyproject.toml").read_text()
    written = re.search(r'^version = "(.+)"$', text, re.MULTILINE).group(1)
    assert pack_version(root) == written
    (root / "pyproject.toml").write_text(text.replace(f'"{written}"', '"9.9.9"', 1))
    assert pack_version(root) == "9.9.9"


def test_a_run_records_its_code_and_library_versions(system_prompt_run):
    info = json.loads((system_prompt_run / "run_info.json").read_text())
    code = info["fingerprint_inputs"]["code"]
    assert info["code"] == code
    # The versions as the libraries themselves report them.
    assert code["libraries"] == {
        "lm_eval": lm_eval.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }
    assert code["pack"]["sources"] == sources_sha256()
    # The recorded fields give back the recorded fingerprint; another torch gives another one.
    spec = RunSpec(**{f.name: info[f.name] for f in fields(RunSpec)})
    assert spec.fingerprint == info["fingerprint"]
    spec.code = {**code, "libraries": {**code["libraries"], "torch": "2.0.0"}}
    assert spec.fingerprint != info["fingerprint"]
    # W&B: the run's config names them too.
    base = system_prompt_run.parents[1]
    (run_file,) = (base / "wandb-home" / "dir" / "wandb").glob("offline-run-*/*.wandb")
    config = {}
    for record in records(run_file):
        if record.WhichOneof("record_type") == "config":
            for item in record.config.update:
                config[item.key] = json.loads(item.value_json)
    assert config["torch_version"] == torch.__version__
    assert config["transformers_version"] == transformers.__version__
    assert config["lm_eval_version"] == lm_eval.__version__
    assert config["pack_version"] == f"{code['pack']['version']}+src.{sources_sha256()[:12]}"
    assert config["run_fingerprint"] == info["fingerprint"]
