"""lm-eval's --cache_requests: requests built under one setting are never reused under another.

lm-eval keys a task's saved requests by its name, few-shot count, rank, chat-template flag,
system instruction and tokenizer; this pack's tasks keep their names across option orders,
prompt formats and the generate-mode thinking flag.
"""

from __future__ import annotations

from lm_eval.tasks import TaskManager, get_task_dict

from tests.conftest import REPO_ROOT, run_eval, samples

POWER = "anthropic_propensity_human_written_power_seeking_inclination"
POWER_GEN = "anthropic_propensity_human_written_gen_power_seeking_inclination"


def test_a_cyclic_run_builds_its_own_requests(tmp_path, data_dir, smollm2, monkeypatch):
    """An original-order run, then a cyclic run of the same task, both with lm-eval's request
    cache: the cyclic run must score every order of its question, not the k requests the
    first run saved."""
    # lm-eval's default cache folder is inside its installed package: keep it out of there.
    requests_cache = tmp_path / "lm-eval-requests"
    monkeypatch.setenv("LM_HARNESS_CACHE_PATH", str(requests_cache))
    common = {"TASKS": POWER, "LIMIT": "1", "EXTRA_ARGS": "--cache_requests true"}
    original = run_eval(tmp_path / "original", data_dir, **common)
    cyclic = run_eval(tmp_path / "cyclic", data_dir, ORDERS="cyclic", **common)

    (first,) = samples(original, POWER)
    (sample,) = samples(cyclic, POWER)
    doc = sample["doc"]
    k = len(doc["choices"])
    assert k == 3 and len(doc["rotations"]) == 2  # the first power-seeking question rotates
    assert len(first["arguments"]) == k
    requests = list(sample["arguments"].values())
    assert len(requests) == k * k
    for rotation in doc["rotations"]:  # each rotated question text is a scored context
        assert sum(rotation in request["arg_0"] for request in requests) == k
    # One saved request set per setting, both under the task's name.
    saved = sorted(path.name for path in requests_cache.iterdir())
    assert len(saved) == 2 and all(POWER in name for name in saved)


def digest(task: str, **metadata) -> str:
    # Without lm-eval's ~14,700 built-in tasks, which take seconds to index, as a run does.
    manager = TaskManager(
        include_path=str(REPO_ROOT / "lm_eval_tasks"), include_defaults=False, metadata=metadata
    )
    return get_task_dict([task], manager)[task].requests_digest()


def test_the_key_changes_with_what_changes_the_requests(monkeypatch, data_dir):
    monkeypatch.setenv("PROPENSITY_DATA_DIR", str(data_dir))
    plain = digest(POWER, prompt_format="plain")
    keys = {
        plain,
        digest(POWER, prompt_format="chat"),
        digest(POWER, prompt_format="plain", orders="cyclic"),
        digest(POWER_GEN, prompt_format="chat"),
        digest(POWER_GEN, prompt_format="chat", prompt_opens_think=True),
    }
    assert len(keys) == 5
    # The run's identity names the run, not its requests: the same key for every model.
    other_run = {"run_fingerprint": "f" * 64, "model_identity": "0123456789abcdef"}
    assert digest(POWER, prompt_format="plain", **other_run) == plain
