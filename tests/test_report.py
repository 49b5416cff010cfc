"""`make sweep` and `make report` on real runs of two different offline models.

A sweep runs SmolLM2-135M-Instruct and Gemma-3-270M (base) on three human-written tasks with
3 questions each (on myopic-reward SmolLM2 answers (B) where Gemma answers (A), so the paired
tests meet real differences); a second sweep runs SmolLM2 under two revision labels (a local
folder has no revisions: both are the same weights, so every difference between them must be
exactly zero). Every number of the report is checked against values recomputed here from the
sample logs.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import time
from pathlib import Path

import matplotlib.image
import pytest
from scipy import stats as sps

from propensity_evals.report.load import missing_tasks
from tests.conftest import isolated_env, make, samples
from tests.wandb_records import logged_values, records

HUMAN = "anthropic_propensity_human_written"
SURVIVAL = f"{HUMAN}_survival_instinct"
# Catalog order. On myopic-reward the two models answer differently (a real paired effect).
TASKS = [f"{HUMAN}_myopic_reward", f"{HUMAN}_power_seeking_inclination", SURVIVAL]
REVISION_TASKS = TASKS[1:]
SMOL = "SmolLM2-135M-Instruct__sample3"
GEMMA = "gemma-3-270m__sample3"
Z = 1.959963984540054
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def sweep(base: Path, data_dir: Path, wandb_mode: str = "offline", check: bool = True, **variables):
    env = isolated_env(base, data_dir, wandb_mode)
    variables = {
        "EVAL_TARGET": "eval_cpu",
        "OUTPUT_DIR": base / "output",
        "CACHE_DIR": base / "cache",
        **variables,
    }
    return make("sweep", *(f"{k}={v}" for k, v in variables.items()), env=env, check=check)


def report(output: Path, env: dict | None = None, check: bool = True, **variables):
    env = env or {"WANDB_MODE": "disabled"}
    args = [f"OUTPUT_DIR={output}", *(f"{k}={v}" for k, v in variables.items())]
    return make("report", *args, env=env, check=check)


def error_lines(result) -> list[str]:
    """stderr without make's own "*** [target] Error N" trailer."""
    return [
        line
        for line in result.stderr.splitlines()
        if line.strip() and not line.startswith(("make: ***", "make[1]: ***"))
    ]


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, data_dir, smollm2, gemma) -> Path:
    base = tmp_path_factory.mktemp("sweep_models")
    result = sweep(base, data_dir, MODELS=f"{smollm2} {gemma}", TASKS=",".join(TASKS), LIMIT=3)
    (base / "sweep.log").write_text(result.stdout + result.stderr)
    return base


@pytest.fixture(scope="module")
def revisions(tmp_path_factory, data_dir, smollm2) -> Path:
    base = tmp_path_factory.mktemp("sweep_revisions")
    sweep(
        base,
        data_dir,
        wandb_mode="disabled",
        MODELS=str(smollm2),
        REVISIONS="step2 step10",
        TASKS=",".join(REVISION_TASKS),
        LIMIT=2,
    )
    return base / "output"


@pytest.fixture(scope="module")
def models_report(two_models) -> Path:
    report(two_models / "output", BASELINE=SMOL)
    return two_models / "output" / "report"


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def recomputed(run_dir: Path, task: str) -> list[dict]:
    """Per question, straight from the sample log: what the report must reproduce."""
    rows = []
    for sample in samples(run_dir, task):
        doc = sample["doc"]
        lls = [float(ll) for ll, _ in sample["filtered_resps"]]
        best = lls.index(max(lls))
        norm = sum(math.exp(ll) for ll in lls)
        rows.append(
            {
                "id": doc["id"],
                "acc": float(best == doc["target"]),
                "soft": math.exp(lls[doc["target"]]) / norm,
                "picks_a": float(doc["choices"][best] == "(A)"),
                "target_a": float(doc["choices"][doc["target"]] == "(A)"),
                "chance": 1 / len(doc["choices"]),
            }
        )
    return rows


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def wilson(k: float, n: int) -> tuple[float, float]:
    p = k / n
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / (1 + Z * Z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def label(task: str) -> str:
    category = task.removeprefix(f"{HUMAN}_")
    return "human/" + category.replace("_", "-")


def score_row(rows: list[dict], run: str, metric: str) -> dict:
    (row,) = [r for r in rows if r["run"] == run and r["metric"] == metric]
    return row


def test_sweep_runs_each_model_into_its_own_folder_and_wandb_run(two_models):
    output = two_models / "output"
    assert sorted(p.name for p in output.iterdir() if p.name != "report") == sorted([SMOL, GEMMA])
    for run in (SMOL, GEMMA):
        assert missing_tasks(output / run, TASKS) == []
        info = json.loads((output / run / "run_info.json").read_text())
        assert info["limit"] == "3" and info["run_name"] == run
    wandb_runs = sorted((two_models / "wandb-home/dir/wandb").glob("offline-run-*/run-*.wandb"))
    assert len(wandb_runs) == 2
    names, groups, job_types = set(), set(), set()
    for path in wandb_runs:
        for record in records(path):
            if record.WhichOneof("record_type") == "run":
                names.add(record.run.display_name)
                groups.add(record.run.run_group)
                job_types.add(record.run.job_type)
    assert names == {SMOL, GEMMA} and job_types == {"eval"}
    (group,) = groups
    assert group.startswith("sweep-") and group in (two_models / "sweep.log").read_text()


def test_second_sweep_skips_complete_runs_and_lists_failures(two_models, data_dir, smollm2, gemma):
    output = two_models / "output"
    before = sorted(output.rglob("results_*.json"))
    started = time.monotonic()
    result = sweep(
        two_models,
        data_dir,
        check=False,
        MODELS=f"{smollm2} /no/such/model {gemma}",
        TASKS=",".join(TASKS),
        LIMIT=3,
    )
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert result.stdout.count("complete, skipped") == 2
    assert f"{SMOL}: complete, skipped" in result.stdout
    assert "model path /no/such/model not found" in result.stderr
    assert "1 of 3 run(s) failed: model__sample3 (make eval_cpu exit 2)" in result.stderr
    assert sorted(output.rglob("results_*.json")) == before  # nothing re-ran
    assert elapsed < 30, elapsed


def test_an_interrupted_run_is_not_complete(two_models, tmp_path):
    run = tmp_path / SMOL
    shutil.copytree(two_models / "output" / SMOL, run)
    (sample_log,) = run.rglob(f"samples_{TASKS[1]}_*.jsonl")
    lines = sample_log.read_text().splitlines(keepends=True)
    sample_log.write_text("".join(lines[:-1]))  # a log cut short
    assert missing_tasks(run, TASKS) == [TASKS[1]]
    (results,) = run.rglob("results_*.json")
    results.write_text(results.read_text()[:500])  # a results file cut short
    assert missing_tasks(run, TASKS) == TASKS


def test_report_numbers_recompute_from_the_sample_logs(two_models, models_report):
    output = two_models / "output"
    rows = read_csv(models_report / "scores.csv")
    per_run = {
        run: {task: recomputed(output / run, task) for task in TASKS} for run in (SMOL, GEMMA)
    }
    for run, by_task in per_run.items():
        acc, soft, bias = (score_row(rows, run, m) for m in ("acc", "soft_match", "letter_bias"))
        for task, questions in by_task.items():
            column = label(task)
            n = len(questions)
            assert n == 3 and int(acc[f"{column} n"]) == n
            k = sum(q["acc"] for q in questions)
            assert float(acc[column]) == pytest.approx(k / n)
            low, high = wilson(k, n)
            assert float(acc[f"{column} ci_low"]) == pytest.approx(low)
            assert float(acc[f"{column} ci_high"]) == pytest.approx(high)
            assert float(soft[column]) == pytest.approx(mean(q["soft"] for q in questions))
            assert 0 <= float(soft[f"{column} ci_low"]) <= float(soft[column])
            assert float(soft[column]) <= float(soft[f"{column} ci_high"]) <= 1
            assert float(bias[column]) == pytest.approx(mean(q["picks_a"] for q in questions))
        pooled = [q for questions in by_task.values() for q in questions]
        for metric_row, key in ((acc, "acc"), (soft, "soft"), (bias, "picks_a")):
            micro = mean(q[key] for q in pooled)
            macro = mean(mean(q[key] for q in qs) for qs in by_task.values())
            assert float(metric_row["human (micro)"]) == pytest.approx(micro)
            assert float(metric_row["human (macro)"]) == pytest.approx(macro)
            for aggregate in ("human (micro)", "human (macro)"):
                value = float(metric_row[aggregate])
                assert float(metric_row[f"{aggregate} ci_low"]) <= value
                assert value <= float(metric_row[f"{aggregate} ci_high"])
    # Baselines depend on the questions only.
    smol = per_run[SMOL]
    for task, questions in smol.items():
        column = label(task)
        chance = score_row(rows, "chance", "acc")[column]
        always_a = score_row(rows, "always (A)", "acc")[column]
        assert float(chance) == pytest.approx(mean(q["chance"] for q in questions))
        assert float(always_a) == pytest.approx(mean(q["target_a"] for q in questions))
    survival = smol[SURVIVAL]
    assert [q["chance"] for q in survival] == [0.5, 0.5, 0.5]  # two options each
    assert float(score_row(rows, "always (A)", "acc")["human/survival-instinct"]) == (
        pytest.approx(2 / 3)
    )
    # The report's tables say the same.
    markdown = (models_report / "report.md").read_text()
    for text in ("always (A)", "chance", "Letter bias", "McNemar", "Holm", SMOL, GEMMA):
        assert text in markdown


def test_paired_comparisons_use_the_same_questions_and_holm(two_models, models_report):
    output = two_models / "output"
    rows = read_csv(models_report / "comparisons.csv")
    assert {(r["run"], r["baseline"]) for r in rows} == {(GEMMA, SMOL)}
    columns = [label(task) for task in TASKS] + ["human (micro)"]
    for metric in ("acc", "soft_match"):
        family = [r for r in rows if r["metric"] == metric]
        assert [r["column"] for r in family] == columns
        p_values = []
        for row, task in zip(family, [*TASKS, None], strict=True):
            tasks = [task] if task else TASKS
            x = [q for t in tasks for q in recomputed(output / GEMMA, t)]
            y = [q for t in tasks for q in recomputed(output / SMOL, t)]
            assert [q["id"] for q in x] == [q["id"] for q in y]  # paired on the same questions
            key = "acc" if metric == "acc" else "soft"
            diffs = [a[key] - b[key] for a, b in zip(x, y, strict=True)]
            assert int(row["n_pairs"]) == len(diffs)
            assert float(row["difference"]) == pytest.approx(mean(diffs))
            low, high = float(row["difference_ci_low"]), float(row["difference_ci_high"])
            assert -1 <= low <= float(row["difference"]) <= high <= 1
            if metric == "acc" and task == TASKS[0]:  # the models differ on every question
                assert diffs == [-1.0, -1.0, -1.0] and high > -1  # yet n=3 proves little
                assert row["significant"] == "False"
            if metric == "acc":
                only_x = sum(d == 1 for d in diffs)
                only_y = sum(d == -1 for d in diffs)
                expected = (
                    sps.binomtest(only_x, only_x + only_y, 0.5).pvalue if only_x + only_y else 1.0
                )
            else:
                expected = sps.wilcoxon(diffs).pvalue if any(diffs) else 1.0
            assert float(row["p_value"]) == pytest.approx(expected)
            p_values.append(expected)
        # Holm over the family: sorted p times (m - rank), kept monotone, capped at 1.
        order = sorted(range(len(p_values)), key=p_values.__getitem__)
        running, holm = 0.0, [0.0] * len(p_values)
        for rank, index in enumerate(order):
            running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
            holm[index] = running
        for row, adjusted in zip(family, holm, strict=True):
            assert float(row["p_holm"]) == pytest.approx(adjusted)
            assert row["significant"] == str(adjusted < 0.05)


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100, image.shape


def test_charts_are_valid_pngs(models_report):
    charts = sorted(path.name for path in models_report.glob("*.png"))
    assert charts == [
        "bars_acc.png",
        "bars_soft_match.png",
        "heatmap_acc.png",
        "heatmap_soft_match.png",
    ]  # fmt: skip  (two different models: no revision chart)
    for name in charts:
        assert_png(models_report / name)
        assert f"({name})" in (models_report / "report.md").read_text()


def test_revisions_get_a_line_chart_and_identical_weights_show_no_effect(revisions):
    report(revisions)
    out = revisions / "report"
    chart = out / "revisions_SmolLM2-135M-Instruct__sample2.png"
    assert_png(chart)
    rows = read_csv(out / "comparisons.csv")
    names = ("SmolLM2-135M-Instruct@step10__sample2", "SmolLM2-135M-Instruct@step2__sample2")
    # Natural order (step2 before step10): the change from one checkpoint to the next.
    assert {(r["run"], r["baseline"]) for r in rows} == {names}
    for row in rows:
        assert float(row["difference"]) == 0 and float(row["p_value"]) == 1
        assert row["significant"] == "False"


def test_mismatched_limit_is_reported_and_never_mixed(two_models, revisions, tmp_path):
    output = tmp_path / "output"
    for run in (*sorted(revisions.glob("SmolLM2*")), two_models / "output" / SMOL):
        shutil.copytree(run, output / run.name)
    result = report(output)
    text = (output / "report" / "report.md").read_text()
    assert "## Warnings" in text and "LIMIT 2 vs 3" in text
    assert f"{SMOL} is not comparable with" in result.stderr
    assert "## Set 2: LIMIT=3" in text
    scores = read_csv(output / "report" / "scores.csv")
    sets = {row["run"]: row["set"] for row in scores if row["metric"] == "acc"}
    assert sets[SMOL] != sets["SmolLM2-135M-Instruct@step2__sample2"]
    for row in read_csv(output / "report" / "comparisons.csv"):
        assert SMOL not in (row["run"], row["baseline"])


def test_truncated_results_file_is_one_clear_error(two_models, tmp_path):
    output = tmp_path / "output"
    shutil.copytree(two_models / "output", output)
    (results,) = (output / GEMMA).rglob("results_*.json")
    results.write_text(results.read_text()[: len(results.read_text()) // 2])
    result = report(output, check=False)
    assert result.returncode != 0
    (line,) = error_lines(result)
    assert line.startswith(f"error: {results}: truncated or invalid JSON")


def test_no_runs_and_unknown_baseline_are_one_line_each(two_models, tmp_path):
    empty = report(tmp_path, check=False)
    (line,) = error_lines(empty)
    assert "no eval runs found" in line and "make eval_cpu" in line
    unknown = report(two_models / "output", check=False, BASELINE="nope")
    (line,) = error_lines(unknown)
    assert "BASELINE=nope is not a run" in line and SMOL in line and GEMMA in line


def test_report_wandb_logs_tables_and_charts_offline(two_models, data_dir, tmp_path):
    output = tmp_path / "output"
    shutil.copytree(two_models / "output", output, ignore=shutil.ignore_patterns("report"))
    env = isolated_env(tmp_path, data_dir, "offline")
    report(output, env=env, REPORT_WANDB=1, BASELINE=SMOL)
    (run_file,) = (tmp_path / "wandb-home/dir/wandb").glob("offline-run-*/run-*.wandb")
    values = logged_values(run_file)
    assert values["_run_name"] == "report"
    assert values["_project"] == "Pretraining-Alignment-Evals-HF"
    (run_record,) = [r.run for r in records(run_file) if r.WhichOneof("record_type") == "run"]
    assert run_record.job_type == "report"
    for name in ("bars_acc", "bars_soft_match", "heatmap_acc", "heatmap_soft_match"):
        assert values[f"report/{name}/_type"] == "image-file"
    scores = read_csv(output / "report" / "scores.csv")
    assert values["report/scores/_type"] == "table-file"
    assert values["report/scores/nrows"] == len(scores)
    table = json.loads((run_file.parent / "files" / values["report/scores/path"]).read_text())
    logged = dict(zip(table["columns"], table["data"][0], strict=True))
    assert logged["run"] == scores[0]["run"] and logged["metric"] == scores[0]["metric"]
    column = label(SURVIVAL)
    assert logged[column] == pytest.approx(float(scores[0][column]))
    comparisons = read_csv(output / "report" / "comparisons.csv")
    assert values["report/comparisons/nrows"] == len(comparisons) == 8


def test_changed_data_checksum_or_version_is_never_mixed(two_models, tmp_path):
    """A run scored on different data (its results say another sha256) or another task version
    goes into its own set, with the reason, and is not compared."""
    output = tmp_path / "output"
    shutil.copytree(two_models / "output", output, ignore=shutil.ignore_patterns("report"))
    (results,) = (output / GEMMA).rglob("results_*.json")
    data = json.loads(results.read_text())
    data["configs"][SURVIVAL]["metadata"]["sha256"] = "0" * 64
    data["configs"][TASKS[0]]["metadata"]["version"] = 2.0
    results.write_text(json.dumps(data))
    report(output)
    text = (output / "report" / "report.md").read_text()
    assert f"{GEMMA} is not comparable with {SMOL}" in text
    assert f"{SURVIVAL} data sha256 0831782a9e04 vs 000000000000" in text
    assert f"{TASKS[0]} version 1.0 vs 2.0" in text
    assert not read_csv(output / "report" / "comparisons.csv")


def test_prompt_format_change_is_compared_with_a_warning(two_models, chat_run, tmp_path):
    """The chat-format run (conftest) shares one task and LIMIT=3 with the plain runs: it is
    compared on that task, and the report says the prompt changed too."""
    output = tmp_path / "output"
    shutil.copytree(two_models / "output", output, ignore=shutil.ignore_patterns("report"))
    shutil.copytree(chat_run, output / chat_run.name)
    report(output, BASELINE=SMOL)
    text = (output / "report" / "report.md").read_text()
    assert "mixes prompt formats" in text and f"{chat_run.name}: chat + system prompt" in text
    assert f"{chat_run.name} lacks 2 task(s)" in text
    rows = read_csv(output / "report" / "comparisons.csv")
    chat_rows = [r for r in rows if r["run"] == chat_run.name]
    assert {r["column"] for r in chat_rows} == {label(TASKS[1]), "human (micro)"}
    task = TASKS[1]
    chat = recomputed(chat_run, task)
    plain = recomputed(output / SMOL, task)
    (acc_row,) = [r for r in chat_rows if r["column"] == label(task) and r["metric"] == "acc"]
    only_chat = sum(c["acc"] > p["acc"] for c, p in zip(chat, plain, strict=True))
    only_plain = sum(c["acc"] < p["acc"] for c, p in zip(chat, plain, strict=True))
    assert acc_row["statistic"] == f"{only_chat} vs {only_plain} discordant"
    discordant = only_chat + only_plain
    expected = sps.binomtest(only_chat, discordant, 0.5).pvalue if discordant else 1.0
    assert float(acc_row["p_value"]) == pytest.approx(expected)
