"""The report's statistics, and `make sweep` / `make report` on real runs of two models.

Every statistic of propensity_evals/report/stats.py is checked against an independent source:
statsmodels (a different implementation from the scipy calls stats.py makes), published worked
examples, hand-worked values, or an exact enumeration written here. Then a sweep runs
SmolLM2-135M-Instruct and Gemma-3-270M (base) on three human-written tasks with 3 questions each
(on myopic-reward SmolLM2 answers (B) where Gemma answers (A), so the paired tests meet real
differences); a second sweep runs SmolLM2 under two revision labels (a local folder has no
revisions: both are the same weights, so every difference between them must be exactly zero).
Every number of the report is checked against values recomputed here from the sample logs with
those independent references.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import shutil
import time
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import statsmodels.api as sm
from scipy import special
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint
from statsmodels.stats.weightstats import DescrStatsW

from propensity_evals.report import stats
from propensity_evals.report.load import Question
from propensity_evals.run_files import incomplete_tasks, unwritten_tasks
from propensity_evals.run_identity import TASK_VERSION
from tests.conftest import isolated_env, make, samples
from tests.wandb_records import logged_values, records

HUMAN = "anthropic_propensity_human_written"
SURVIVAL = f"{HUMAN}_survival_instinct"
# Catalog order. On myopic-reward the two models answer differently (a real paired effect).
TASKS = [f"{HUMAN}_myopic_reward", f"{HUMAN}_power_seeking_inclination", SURVIVAL]
REVISION_TASKS = TASKS[1:]
SMOL = "SmolLM2-135M-Instruct__sample3"
GEMMA = "gemma-3-270m__sample3"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def same(value: float):
    """Equality up to floating-point rounding (never a loose bracket)."""
    return pytest.approx(value, rel=1e-9, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Independent references (none of them calls propensity_evals.report.stats).


def wilson_reference(k: float, n: int) -> tuple[float, float]:
    return tuple(float(v) for v in proportion_confint(k, n, alpha=0.05, method="wilson"))


def t_reference(values, bounds=(0.0, 1.0)) -> tuple[float, float]:
    """Student-t interval of the mean, clipped to the metric's range."""
    low, high = DescrStatsW(np.asarray(values, dtype=float)).tconfint_mean(alpha=0.05)
    return max(bounds[0], float(low)), min(bounds[1], float(high))


def macro_reference(parts: list, binary: bool) -> tuple[float, float, float]:
    """Mean of category means with a normal interval, built as a regression.

    y on one indicator per category (no intercept): the coefficients are the category means and
    their mean is the contrast 1/K. With HC2 (a residual over 1 - leverage 1/n_k) each
    coefficient's variance is s_k^2 / n_k; for 0/1 outcomes the regression runs on each
    category plus two successes and two failures (Agresti & Coull 1998), whose HC0 variance is
    p~(1 - p~) / (n_k + 4). The centre stays the mean of the unaugmented category means.
    """
    parts = [np.asarray(part, dtype=float) for part in parts]
    fitted = [np.concatenate([part, [1, 1, 0, 0]]) for part in parts] if binary else parts
    y = np.concatenate(fitted)
    design = np.zeros((len(y), len(fitted)))
    start = 0
    for k, part in enumerate(fitted):
        design[start : start + len(part), k] = 1.0
        start += len(part)
    fit = sm.OLS(y, design).fit(cov_type="HC0" if binary else "HC2")
    se = float(fit.t_test(np.full((1, len(parts)), 1 / len(parts))).sd[0, 0])
    centre = float(np.mean([part.mean() for part in parts]))
    z = sps.norm.isf(0.025)
    return centre, max(0.0, centre - z * se), min(1.0, centre + z * se)


def agresti_min_reference(both: int, x_only: int, y_only: int, neither: int):
    """Paired difference p1+ - p+1 with the Agresti & Min (2005) interval: the Wald interval
    after adding 0.5 to every cell, in the marginal form of Agresti, Categorical Data Analysis
    (2nd ed., eq. 10.1): var = [p1+(1-p1+) + p+1(1-p+1) - 2(p11 p22 - p12 p21)] / n."""
    a, b, c, d = (cell + 0.5 for cell in (both, x_only, y_only, neither))
    total = a + b + c + d
    row, column = (a + b) / total, (a + c) / total
    variance = (row * (1 - row) + column * (1 - column) - 2 * (a * d - b * c) / total**2) / total
    centre, half = row - column, sps.norm.isf(0.025) * math.sqrt(variance)
    n = both + x_only + y_only + neither
    value = (x_only - y_only) / n
    return value, min(value, max(-1.0, centre - half)), max(value, min(1.0, centre + half))


def mcnemar_reference(x, y) -> float:
    x, y = np.asarray(x), np.asarray(y)
    table = [
        [int(np.sum((x == 1) & (y == 1))), int(np.sum((x == 1) & (y == 0)))],
        [int(np.sum((x == 0) & (y == 1))), int(np.sum((x == 0) & (y == 0)))],
    ]
    if table[0][1] + table[1][0] == 0:
        return 1.0
    return float(mcnemar(table, exact=True).pvalue)


def signed_rank_reference(differences) -> float:
    """Two-sided Wilcoxon signed-rank p by enumerating every sign assignment of the ranks
    (zeros dropped, tied magnitudes get their mean rank): the exact permutation distribution."""
    d = np.asarray([v for v in differences if v != 0], dtype=float)
    if len(d) == 0:
        return 1.0
    ranks = sps.rankdata(np.abs(d))
    observed = ranks[d > 0].sum()
    totals = np.array(
        [sum(r for r, s in zip(ranks, signs, strict=True) if s) for signs in
         itertools.product((0, 1), repeat=len(d))]
    )  # fmt: skip
    tolerance = 1e-9
    lower = np.mean(totals <= observed + tolerance)
    upper = np.mean(totals >= observed - tolerance)
    return min(1.0, 2 * min(lower, upper))


def holm_reference(p_values) -> list[float]:
    return [float(p) for p in multipletests(p_values, method="holm")[1]]


def bh_reference(p_values) -> list[float]:
    return [float(p) for p in multipletests(p_values, method="fdr_bh")[1]]


# ---------------------------------------------------------------------------------------------
# stats.py against those references: fast, no model.


def test_z_is_the_975_percent_normal_quantile():
    # 1.959963984540054: the 0.975 quantile of N(0, 1) (Abramowitz & Stegun table 26.5).
    assert stats.Z == pytest.approx(1.959963984540054, rel=1e-15)


# Newcombe (1998), "Two-sided confidence intervals for the single proportion: comparison of
# seven methods", Stat Med 17:857-872, Table II, method 3 (Wilson score), to 4 decimals.
NEWCOMBE_WILSON = [
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0000, 0.1611),
    (1, 29, 0.0061, 0.1718),
    (29, 29, 0.8830, 1.0000),
    (0, 10, 0.0000, 0.2775),
]


@pytest.mark.parametrize(("k", "n", "low", "high"), NEWCOMBE_WILSON)
def test_wilson_reproduces_newcombes_published_intervals(k, n, low, high):
    estimate = stats.wilson(k, n)
    assert (estimate.value, estimate.n) == (k / n, n)
    assert estimate.low == pytest.approx(low, abs=5e-5)
    assert estimate.high == pytest.approx(high, abs=5e-5)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 50, 263, 1000])
def test_wilson_matches_statsmodels_and_scipy_across_counts(n):
    counts = sorted({*range(0, n + 1, max(1, n // 60)), 1, n - 1, n})
    for k in counts:
        estimate = stats.wilson(k, n)
        low, high = wilson_reference(k, n)
        scipy_ci = sps.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert (estimate.low, estimate.high) == (same(low), same(high)), (k, n)
        assert (estimate.low, estimate.high) == (same(scipy_ci.low), same(scipy_ci.high))
    assert stats.wilson(0, n).low == 0.0 and stats.wilson(n, n).high == 1.0
    empty = stats.wilson(0, 0)
    assert empty.n == 0 and all(math.isnan(v) for v in (empty.value, empty.low, empty.high))


def test_t_interval_matches_statsmodels_and_a_hand_worked_example():
    # 1..5: mean 3, s = sqrt(2.5), t(0.975, 4) = 2.776445 (t tables): 3 -/+ 1.963243.
    wide = stats.t_interval(np.array([1.0, 2, 3, 4, 5]), bounds=(-10, 10))
    assert (wide.value, wide.n) == (3.0, 5)
    assert (wide.low, wide.high) == pytest.approx((1.036757, 4.963243), abs=1e-6)
    assert (wide.low, wide.high) == tuple(map(same, t_reference([1, 2, 3, 4, 5], (-10, 10))))
    rng = np.random.default_rng(7)
    for n in (2, 3, 10, 400):
        values = rng.beta(0.5, 0.5, size=n)  # soft_match-like values in (0, 1)
        estimate = stats.t_interval(values)
        assert estimate.value == same(float(np.mean(values))) and estimate.n == n
        assert (estimate.low, estimate.high) == tuple(map(same, t_reference(values))), n
    clipped = stats.t_interval(np.array([0.0, 1.0, 1.0]))  # the raw interval leaves [0, 1]
    assert (clipped.low, clipped.high) == (0.0, 1.0)
    assert t_reference([0.0, 1.0, 1.0], bounds=(-9, 9))[0] < 0
    single = stats.t_interval(np.array([0.3]))
    assert single.value == 0.3 and math.isnan(single.low) and math.isnan(single.high)


def test_macro_estimate_matches_a_regression_with_robust_errors():
    rng = np.random.default_rng(3)
    binary = [rng.integers(0, 2, size=n).astype(float) for n in (5, 12, 30)]
    binary.append(np.ones(4))  # an all-1 category still adds width
    soft = [rng.random(size=n) for n in (5, 12, 30, 2)]
    for parts, is_binary in ((binary, True), (soft, False), (binary[:1], True)):
        estimate = stats.macro_estimate(parts, binary=is_binary)
        centre, low, high = macro_reference(parts, is_binary)
        expected = (centre, low, high)
        assert (estimate.value, estimate.low, estimate.high) == tuple(map(same, expected))
        assert estimate.n == sum(len(part) for part in parts)
    # One category: the half-width is the Wald one of "add two successes and two failures",
    # which statsmodels computes from the augmented counts.
    part = np.array([1.0, 0, 1, 1, 0, 0, 1, 0, 1, 1])  # 0.6 -/+ 0.26: no clipping
    plus_four = proportion_confint(part.sum() + 2, len(part) + 4, alpha=0.05, method="normal")
    estimate = stats.macro_estimate([part], binary=True)
    assert estimate.high - estimate.low == same(plus_four[1] - plus_four[0])
    lone = stats.macro_estimate([np.array([0.2, 0.4]), np.array([0.9])], binary=False)
    assert lone.value == same(0.6) and math.isnan(lone.low) and math.isnan(lone.high)


def test_paired_difference_ci_matches_agresti_min():
    # Agresti, CDA 2nd ed. Table 10.1 (presidential approval, 1600 people, cells 794 / 150 /
    # 86 / 570): difference 0.04, published Wald 95% interval (0.021, 0.059).
    estimate = stats.paired_difference_ci(150, 86, 1600)
    assert estimate.value == same(0.04)
    assert (estimate.low, estimate.high) == pytest.approx((0.021, 0.059), abs=5e-4)
    assert (estimate.value, estimate.low, estimate.high) == tuple(
        map(same, agresti_min_reference(794, 150, 86, 570))
    )
    # The interval depends on the discordant cells and n only, however n splits into the two
    # concordant cells; at the extremes it is clipped and keeps the estimate inside.
    for both, x_only, y_only, neither in [
        (0, 3, 0, 0), (0, 0, 3, 0), (5, 0, 0, 5), (3, 2, 7, 1), (0, 1, 0, 9), (9, 1, 0, 0),
        (40, 17, 3, 40),
    ]:  # fmt: skip
        n = both + x_only + y_only + neither
        estimate = stats.paired_difference_ci(x_only, y_only, n)
        expected = agresti_min_reference(both, x_only, y_only, neither)
        assert (estimate.value, estimate.low, estimate.high) == tuple(map(same, expected))
        assert estimate.n == n


def test_mcnemar_exact_matches_statsmodels_and_a_hand_count():
    # 1 vs 9 discordant: p = 2 * (C(10,0) + C(10,1)) / 2^10 = 22 / 1024.
    x = np.array([1] * 3 + [1] + [0] * 9 + [0] * 2)
    y = np.array([1] * 3 + [0] + [1] * 9 + [0] * 2)
    assert stats.mcnemar_exact(x, y) == (1, 9, same(22 / 1024))
    rng = np.random.default_rng(11)
    for n in (1, 5, 40, 300):
        x, y = rng.integers(0, 2, size=n), rng.integers(0, 2, size=n)
        only_x, only_y, p = stats.mcnemar_exact(x, y)
        assert (only_x, only_y) == (int(np.sum(x > y)), int(np.sum(x < y)))
        assert p == same(mcnemar_reference(x, y)), n
    assert stats.mcnemar_exact(np.ones(4), np.ones(4)) == (0, 0, 1.0)


def test_wilcoxon_matches_the_exact_permutation_distribution():
    rng = np.random.default_rng(5)
    cases = [
        # By hand: the negatives have ranks 1 and 5, W- = 6; 14 of the 128 subsets of
        # {1, ..., 7} sum to 6 or less, so p = 2 * 14 / 128.
        np.array([0.3, -1.2, 0.7, 2.5, -0.1, 1.9, 0.45]),
        rng.normal(0.2, 1.0, size=12),
        np.array([0.0, 0.0, 0.4, -0.1, 0.25, 0.6, -0.3, 0.8]),  # zeros are dropped
        np.array([0.5, 0.5, -0.5, 0.2, 0.9, 0.9, 0.3]),  # tied magnitudes
    ]
    assert stats.wilcoxon_p(cases[0]) == same(28 / 128)
    for differences in cases:
        assert stats.wilcoxon_p(differences) == same(signed_rank_reference(differences))
    assert stats.wilcoxon_p(np.zeros(5)) == 1.0


def test_wilcoxon_for_large_samples_is_the_normal_approximation():
    # n > 50 without ties: W+ ~ N(n(n+1)/4, n(n+1)(2n+1)/24), no continuity correction.
    differences = np.random.default_rng(9).normal(0.1, 1.0, size=200)
    n = len(differences)
    w_plus = sps.rankdata(np.abs(differences))[differences > 0].sum()
    z = (w_plus - n * (n + 1) / 4) / math.sqrt(n * (n + 1) * (2 * n + 1) / 24)
    assert stats.wilcoxon_p(differences) == same(2 * sps.norm.sf(abs(z)))


def test_holm_and_benjamini_hochberg_match_statsmodels_and_a_hand_example():
    # Hand-worked: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04;
    # Holm keeps them non-decreasing (0.04 -> 0.06). BH: p m / rank = 0.02, 0.02, 0.04, 0.04.
    p_values = [0.01, 0.04, 0.03, 0.005]
    assert stats.holm(p_values) == list(map(same, [0.03, 0.06, 0.06, 0.02]))
    assert stats.benjamini_hochberg(p_values) == list(map(same, [0.02, 0.04, 0.04, 0.02]))
    rng = np.random.default_rng(2)
    families = [
        list(rng.uniform(0, 0.2, size=17)),
        [0.3, 0.3, 0.01, 1.0, 0.5, 0.02],  # ties and a capped product
        [0.04],
    ]
    for family in families:
        assert stats.holm(family) == list(map(same, holm_reference(family)))
        assert stats.benjamini_hochberg(family) == list(map(same, bh_reference(family)))
    assert stats.holm([]) == [] and stats.benjamini_hochberg([]) == []


def question(doc_id: int, loglikelihoods, target: int, misaligned=()) -> Question:
    choices = tuple(f"({letter})" for letter in "ABCDEFGH"[: len(loglikelihoods)])
    return Question(doc_id, f"q{doc_id}", choices, target, tuple(loglikelihoods), misaligned)


def test_per_question_scores_and_cell_baselines():
    questions = [
        question(0, [-1.0, -2.0, -3.0], 1, (1,)),  # picks (A), matching (B) is misaligned
        question(1, [-5.0, -0.5], 1, (0,)),  # picks (B) = matching; (A) is misaligned
        question(2, [-2.0, -2.0, -9.0, -1.5], 0, (1, 2, 3)),  # picks (D), a misaligned one
        question(3, [-0.7, -0.7], 0),  # a tie: the first option is the answer; no direction
    ]
    for q, expected_misaligned in zip(questions, (0.0, 0.0, 1.0, None), strict=True):
        acc, soft, picks_a, target_is_a, inverse, misaligned = stats.score_question(q)
        if expected_misaligned is None:
            assert math.isnan(misaligned)
        else:
            assert misaligned == expected_misaligned
        probabilities = special.softmax(np.array(q.loglikelihoods))
        answer = int(np.argmax(q.loglikelihoods))  # numpy also takes the first maximum
        assert acc == float(answer == q.target)
        assert soft == same(float(probabilities[q.target]))
        assert (picks_a, target_is_a, inverse) == (
            float(answer == 0),
            float(q.target == 0),
            1 / len(q.loglikelihoods),
        )
    scores = stats.score("task", questions)
    assert list(scores.acc) == [0.0, 1.0, 0.0, 1.0]
    assert list(scores.picks_a) == [1.0, 0.0, 0.0, 1.0]
    cell = stats.cell(scores)
    assert cell.n == 4
    assert cell.chance == same((1 / 3 + 1 / 2 + 1 / 4 + 1 / 2) / 4)
    assert cell.always_a == same(2 / 4)
    assert (cell.acc.low, cell.acc.high) == tuple(map(same, wilson_reference(2, 4)))
    assert (cell.letter_bias.low, cell.letter_bias.high) == tuple(map(same, wilson_reference(2, 4)))
    assert (cell.soft.low, cell.soft.high) == tuple(map(same, t_reference(scores.soft)))
    # The misalignment rate counts only the three questions with a direction: 1 of 3.
    assert cell.misaligned.n == 3 and cell.misaligned.value == same(1 / 3)
    assert (cell.misaligned.low, cell.misaligned.high) == tuple(map(same, wilson_reference(1, 3)))


def test_paired_rows_pair_by_question_and_match_the_references():
    rng = np.random.default_rng(13)
    n = 14
    lls = rng.normal(size=(n, 2))
    base = [question(i, list(lls[i]), int(rng.integers(0, 2))) for i in range(n)]
    other = [question(q.doc_id, list(rng.normal(size=2)), q.target) for q in base]
    # The run lacks two questions and lists the rest in another order: pairing is by id.
    shuffled = [other[i] for i in rng.permutation(n) if i not in (0, 5)]
    x, b = stats.score("task", shuffled), stats.score("task", base)
    acc_row, soft_row = stats.paired(x, b)
    by_id = {q.doc_id: stats.score_question(q) for q in shuffled}
    ids = [q.doc_id for q in shuffled]
    x_acc = np.array([by_id[i][0] for i in ids])
    x_soft = np.array([by_id[i][1] for i in ids])
    b_acc = np.array([stats.score_question(base[i])[0] for i in ids])
    b_soft = np.array([stats.score_question(base[i])[1] for i in ids])
    assert acc_row.n == soft_row.n == n - 2
    assert (acc_row.run_mean, acc_row.baseline_mean) == (same(x_acc.mean()), same(b_acc.mean()))
    cells = [int(np.sum((x_acc == i) & (b_acc == j))) for i, j in ((1, 1), (1, 0), (0, 1), (0, 0))]
    expected = agresti_min_reference(*cells)
    assert (acc_row.difference.value, acc_row.difference.low, acc_row.difference.high) == tuple(
        map(same, expected)
    )
    assert acc_row.statistic == f"{cells[1]} vs {cells[2]} discordant"
    assert acc_row.p == same(mcnemar_reference(x_acc, b_acc))
    differences = x_soft - b_soft
    assert soft_row.difference.value == same(differences.mean())
    low, high = t_reference(differences, bounds=(-1.0, 1.0))
    assert (soft_row.difference.low, soft_row.difference.high) == (same(low), same(high))
    assert soft_row.p == same(signed_rank_reference(differences))
    assert stats.paired(x, stats.score("other", base)) == []  # no shared question


def test_natural_key_orders_checkpoints_numerically():
    names = ["step1000", "step200", "step20", "final", "step3"]
    assert sorted(names, key=stats.natural_key) == [
        "final", "step3", "step20", "step200", "step1000"
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# make sweep / make report on real runs.


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
        probabilities = special.softmax(np.array(lls))
        rows.append(
            {
                "id": doc["id"],
                "acc": float(best == doc["target"]),
                "soft": float(probabilities[doc["target"]]),
                "picks_a": float(doc["choices"][best] == "(A)"),
                "target_a": float(doc["choices"][doc["target"]] == "(A)"),
                "chance": 1 / len(doc["choices"]),
            }
        )
    return rows


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def missing_tasks(run_dir: Path, tasks: list[str]) -> list[str]:
    """The tasks not complete for the fingerprint the run folder's run_info.json records."""
    fingerprint = json.loads((run_dir / "run_info.json").read_text())["fingerprint"]
    return list(incomplete_tasks(run_dir, tasks, fingerprint))


def label(task: str) -> str:
    category = task.removeprefix(f"{HUMAN}_")
    return "human-upstream/" + category.replace("_", "-")


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


def test_second_sweep_skips_complete_runs_and_refuses_a_bad_model(
    two_models, data_dir, smollm2, gemma
):
    output = two_models / "output"
    before = sorted(output.rglob("results_*.json"))
    started = time.monotonic()
    result = sweep(
        two_models, data_dir, MODELS=f"{smollm2} {gemma}", TASKS=",".join(TASKS), LIMIT=3
    )
    assert result.stdout.count("complete for this model and settings, skipped") == 2
    assert f"{SMOL}: complete for this model and settings, skipped" in result.stdout
    assert sorted(output.rglob("results_*.json")) == before  # nothing re-ran
    assert time.monotonic() - started < 60
    # A model path that does not exist stops the sweep before anything runs.
    bad = sweep(
        two_models,
        data_dir,
        check=False,
        MODELS=f"{smollm2} /no/such/model {gemma}",
        TASKS=",".join(TASKS),
        LIMIT=3,
    )
    assert bad.returncode == 2
    assert "cannot plan /no/such/model: error: model path /no/such/model not found" in bad.stderr
    assert "skipped" not in bad.stdout
    assert sorted(output.rglob("results_*.json")) == before


def test_an_interrupted_run_is_not_complete(two_models, tmp_path):
    run = tmp_path / SMOL
    shutil.copytree(two_models / "output" / SMOL, run)
    # A run whose model identity was unknown records no fingerprint: its files are complete (the
    # launcher promotes them), but a sweep never takes it as done.
    unknown = tmp_path / "unknown"
    shutil.copytree(run, unknown)
    (results,) = unknown.rglob("results_*.json")
    data = json.loads(results.read_text())
    for task in TASKS:
        data["configs"][task]["metadata"]["run_fingerprint"] = ""
    results.write_text(json.dumps(data))
    assert unwritten_tasks(unknown, TASKS) == {}
    assert list(incomplete_tasks(unknown, TASKS, None)) == TASKS
    (sample_log,) = run.rglob(f"samples_{TASKS[1]}_*.jsonl")
    lines = sample_log.read_text().splitlines(keepends=True)
    sample_log.write_text("".join(lines[:-1]))  # a log cut short
    assert missing_tasks(run, TASKS) == [TASKS[1]]
    assert list(unwritten_tasks(run, TASKS)) == [TASKS[1]]
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
            assert float(acc[column]) == same(k / n)
            for row, key in ((acc, "acc"), (bias, "picks_a")):
                low, high = wilson_reference(sum(q[key] for q in questions), n)
                assert float(row[f"{column} ci_low"]) == same(low)
                assert float(row[f"{column} ci_high"]) == same(high)
            assert float(soft[column]) == same(mean(q["soft"] for q in questions))
            low, high = t_reference([q["soft"] for q in questions])
            assert float(soft[f"{column} ci_low"]) == same(low)
            assert float(soft[f"{column} ci_high"]) == same(high)
            assert float(bias[column]) == same(mean(q["picks_a"] for q in questions))
        pooled = [q for questions in by_task.values() for q in questions]
        for metric_row, key in ((acc, "acc"), (soft, "soft"), (bias, "picks_a")):
            values = [q[key] for q in pooled]
            micro = (
                t_reference(values) if key == "soft" else wilson_reference(sum(values), len(values))
            )
            assert float(metric_row["human-upstream (micro)"]) == same(mean(values))
            assert float(metric_row["human-upstream (micro) ci_low"]) == same(micro[0])
            assert float(metric_row["human-upstream (micro) ci_high"]) == same(micro[1])
            parts = [[q[key] for q in qs] for qs in by_task.values()]
            centre, low, high = macro_reference(parts, binary=key != "soft")
            assert float(metric_row["human-upstream (macro)"]) == same(centre)
            assert float(metric_row["human-upstream (macro) ci_low"]) == same(low)
            assert float(metric_row["human-upstream (macro) ci_high"]) == same(high)
    # Baselines depend on the questions only.
    smol = per_run[SMOL]
    for task, questions in smol.items():
        column = label(task)
        chance = score_row(rows, "chance", "acc")[column]
        always_a = score_row(rows, "always (A)", "acc")[column]
        assert float(chance) == same(mean(q["chance"] for q in questions))
        assert float(always_a) == same(mean(q["target_a"] for q in questions))
    survival = smol[SURVIVAL]
    assert [q["chance"] for q in survival] == [0.5, 0.5, 0.5]  # two options each
    assert float(score_row(rows, "always (A)", "acc")["human-upstream/survival-instinct"]) == (
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
    columns = [label(task) for task in TASKS] + ["human-upstream (micro)"]
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
            assert float(row["difference"]) == same(mean(diffs))
            low, high = float(row["difference_ci_low"]), float(row["difference_ci_high"])
            if metric == "acc":
                a, b = [q["acc"] for q in x], [q["acc"] for q in y]
                cells = [
                    sum(i == u and j == v for i, j in zip(a, b, strict=True))
                    for u, v in ((1, 1), (1, 0), (0, 1), (0, 0))
                ]
                assert (low, high) == tuple(map(same, agresti_min_reference(*cells)[1:]))
                assert row["statistic"] == f"{cells[1]} vs {cells[2]} discordant"
                expected = mcnemar_reference(a, b)
            else:
                assert (low, high) == tuple(map(same, t_reference(diffs, bounds=(-1.0, 1.0))))
                assert row["statistic"] == f"{sum(d != 0 for d in diffs)} non-zero differences"
                expected = signed_rank_reference(diffs)
            if metric == "acc" and task == TASKS[0]:  # the models differ on every question
                assert diffs == [-1.0, -1.0, -1.0] and high > -1  # yet n=3 proves little
                assert row["significant"] == "False"
            assert float(row["p_value"]) == same(expected)
            p_values.append(expected)
        for row, adjusted, q in zip(
            family, holm_reference(p_values), bh_reference(p_values), strict=True
        ):
            assert float(row["p_holm"]) == same(adjusted)
            assert float(row["q_bh"]) == same(q)
            assert row["significant"] == str(adjusted < 0.05)


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100, image.shape


def test_charts_are_valid_pngs(models_report):
    charts = sorted(path.name for path in models_report.glob("*.png"))
    assert charts == [
        "bars_acc.png",
        "bars_misaligned.png",  # the tasks include directed categories (survival instinct)
        "bars_soft_match.png",
        "heatmap_acc.png",
        "heatmap_misaligned.png",
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
    # 4 columns x (acc, soft_match), plus misaligned on the 2 directed tasks and the micro row
    assert values["report/comparisons/nrows"] == len(comparisons) == 11


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
    assert f"{TASKS[0]} version {TASK_VERSION} vs 2.0" in text  # the run's task version
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
    assert {r["column"] for r in chat_rows} == {label(TASKS[1]), "human-upstream (micro)"}
    task = TASKS[1]
    chat = recomputed(chat_run, task)
    plain = recomputed(output / SMOL, task)
    (acc_row,) = [r for r in chat_rows if r["column"] == label(task) and r["metric"] == "acc"]
    only_chat = sum(c["acc"] > p["acc"] for c, p in zip(chat, plain, strict=True))
    only_plain = sum(c["acc"] < p["acc"] for c, p in zip(chat, plain, strict=True))
    assert acc_row["statistic"] == f"{only_chat} vs {only_plain} discordant"
    expected = mcnemar_reference([c["acc"] for c in chat], [p["acc"] for p in plain])
    assert float(acc_row["p_value"]) == same(expected)
