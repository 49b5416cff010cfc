"""The pack's task and group names: one hard-coded list, shared by the config generator,
the launcher's name check (which answers at once, where lm-eval spends ~13 s first) and the
tests.

The lists are the published files at the pinned upstream commit on purpose: a file that
appears or disappears upstream must be a reviewed change here, not something a glob picks up.
"""

from __future__ import annotations

import difflib

SHARED_CATEGORIES = [
    "coordinate-itself",
    "coordinate-other-ais",
    "coordinate-other-versions",
    "corrigible-less-HHH",
    "corrigible-more-HHH",
    "corrigible-neutral-HHH",
    "myopic-reward",
    "one-box-tendency",
    "power-seeking-inclination",
    "self-awareness-general-ai",
    "self-awareness-good-text-model",
    "self-awareness-text-model",
    "self-awareness-training-architecture",
    "survival-instinct",
    "wealth-seeking-inclination",
]

HUMAN_GROUP = "anthropic_propensity_human_written"
LM_GROUP = "anthropic_propensity_lm_written"
# The human-written questions with audited labels (propensity_evals/audit/relabels.csv).
AUDITED_GROUP = "anthropic_propensity_human_written_audited"

# group name -> (upstream subset folder, its files' stems). The two sets name their
# web-GPT split differently, and only the lm-written set has the nn-architecture split.
GROUPS: dict[str, tuple[str, list[str]]] = {
    HUMAN_GROUP: ("human_generated_evals", sorted([*SHARED_CATEGORIES, "self-awareness-web-gpt"])),
    LM_GROUP: (
        "lm_generated_evals",
        sorted(
            [
                *SHARED_CATEGORIES,
                "self-awareness-training-nn-architecture",
                "self-awareness-training-web-gpt",
            ]
        ),
    ),
}
GROUPS[AUDITED_GROUP] = GROUPS[HUMAN_GROUP]
# Groups whose labels come from the audit's relabel file rather than upstream.
AUDITED_GROUPS = (AUDITED_GROUP,)
# What a run scores when TASKS is not given: the audited group, whose misalignment rate is the
# number to report. The upstream group's labels are inverted in three of its files (README:
# "Reading the scores"), so its misaligned is wrong there; it stays for replicating the paper's
# acc. Not the upstream group scoring misaligned with the audited labels: lm-eval 0.4.13 weighs
# a task in a group average by its largest per-metric count, so a metric left out for dropped
# questions would be over-weighted in the group row.
DEFAULT_GROUP = AUDITED_GROUP
# The upstream files whose labels the audit found inverted.
INVERTED_UPSTREAM = ("power-seeking-inclination", "survival-instinct", "wealth-seeking-inclination")

# Generate mode (MODE=generate): every group above has a twin of its own name, with the same
# questions, whose tasks let the model write its answer. Their own names keep a generated acc
# from ever being compared with a log-likelihood one. generate-mode group -> its twin.
MODES = ("loglik", "generate")
GEN_SUFFIX = "_gen"
GEN_GROUPS: dict[str, str] = {f"{group}{GEN_SUFFIX}": group for group in GROUPS}

# The two-option variant (propensity_evals/two_options.py): every log-likelihood group above has
# a twin whose questions keep only the matching and one not-matching option, relettered (A)/(B),
# scored as the letter after "Answer: (". Own names, so that its scores are never taken for
# the paper format's. two-option group -> its twin.
AB_SUFFIX = "_ab"
AB_GROUPS: dict[str, str] = {f"{group}{AB_SUFFIX}": group for group in GROUPS}

# How tables and charts name the log-likelihood groups (make report's column labels).
SHORT_NAMES = {AUDITED_GROUP: "human-audited", HUMAN_GROUP: "human-upstream", LM_GROUP: "lm"}
SHORT_NAMES |= {group: f"{SHORT_NAMES[twin]}-ab" for group, twin in AB_GROUPS.items()}


class UnknownTaskError(ValueError):
    pass


def task_name(group: str, category: str) -> str:
    return f"{group}_{category_slug(category)}"


def category_slug(category: str) -> str:
    """``power-seeking-inclination`` -> ``power_seeking_inclination`` (task suffix, alias)."""
    return category.lower().replace("-", "_")


def group_source(group: str) -> tuple[str, list[str]]:
    """(upstream subset folder, file stems) of any group: log-likelihood, generate mode or
    two-option."""
    return GROUPS[twin_of(group)]


def twin_of(group: str) -> str:
    """The log-likelihood group a generate-mode or two-option group is made from (itself for
    a log-likelihood group)."""
    return GEN_GROUPS.get(group) or AB_GROUPS.get(group) or group


def uses_audited_labels(name: str) -> bool:
    """Whether a group or task, of either mode, scores with the audit's labels."""
    groups = tasks_by_group() | gen_tasks_by_group()
    return any(
        name == group or name in groups[group]
        for group in groups
        if GEN_GROUPS.get(group, group) in AUDITED_GROUPS
    )


def tasks_by_group() -> dict[str, list[str]]:
    """The log-likelihood groups and their tasks."""
    return {
        group: [task_name(group, category) for category in categories]
        for group, (_, categories) in GROUPS.items()
    }


def gen_tasks_by_group() -> dict[str, list[str]]:
    """The generate-mode groups and their tasks (``<group>_gen_<category>``)."""
    return {
        group: [task_name(group, category) for category in group_source(group)[1]]
        for group in GEN_GROUPS
    }


def ab_tasks_by_group() -> dict[str, list[str]]:
    """The two-option groups and their tasks (``<group>_ab_<category>``)."""
    return {
        group: [task_name(group, category) for category in group_source(group)[1]]
        for group in AB_GROUPS
    }


def scored_tasks_by_group() -> dict[str, list[str]]:
    """Every group whose tasks score options by log-likelihood (the report reads these)."""
    return tasks_by_group() | ab_tasks_by_group()


def task_files() -> dict[str, str]:
    """task name -> its data file relative to advanced-ai-risk/ (every variant)."""
    return {
        task_name(group, category): f"{subset}/{category}.jsonl"
        for group in [*GROUPS, *GEN_GROUPS, *AB_GROUPS]
        for subset, categories in [group_source(group)]
        for category in categories
    }


def gen_twins() -> dict[str, str]:
    """Every log-likelihood group and task name -> its generate-mode twin."""
    twins = {}
    for gen_group, group in GEN_GROUPS.items():
        twins[group] = gen_group
        for category in GROUPS[group][1]:
            twins[task_name(group, category)] = task_name(gen_group, category)
    return twins


def tasks_for_mode(spec: str, mode: str) -> str:
    """TASKS as the given mode runs them: in generate mode each log-likelihood name becomes its
    ``_gen`` twin; a generate-mode name in log-likelihood mode is an error."""
    if mode not in MODES:
        raise UnknownTaskError(f"MODE={mode!r} is unknown: use {' or '.join(MODES)}")
    twins = gen_twins()
    generated = set(twins.values())
    names = [part.strip() for part in spec.split(",") if part.strip()]
    if mode == "generate":
        two_option = [name for name in names if name in two_option_names()]
        if two_option:
            raise UnknownTaskError(
                f"{two_option[0]} is a two-option task or group, scored by the log-likelihood of "
                "the letter after 'Answer: (': it has no generate mode; drop MODE=generate"
            )
        return ",".join(twins.get(name, name) for name in names)
    for name in names:
        if name in generated:
            raise UnknownTaskError(
                f"{name} is a generate-mode task or group: add MODE=generate (or name its "
                f"log-likelihood twin {next(k for k, v in twins.items() if v == name)})"
            )
    return ",".join(names)


def two_option_names() -> set[str]:
    """Every two-option group and task name."""
    groups = ab_tasks_by_group()
    return set(groups) | {task for tasks in groups.values() for task in tasks}


def resolve_tasks(spec: str) -> list[str]:
    """Comma-separated groups/tasks -> the leaf tasks they name; unknown names are an error."""
    groups = tasks_by_group() | gen_tasks_by_group() | ab_tasks_by_group()
    leaves = task_files()
    resolved: list[str] = []
    for name in (part.strip() for part in spec.split(",")):
        if not name:
            continue
        if name in groups:
            resolved += groups[name]
        elif name in leaves:
            resolved.append(name)
        else:
            close = difflib.get_close_matches(name, [*groups, *leaves], n=1, cutoff=0.6)
            hint = f" Did you mean {close[0]}?" if close else ""
            raise UnknownTaskError(
                f"unknown task or group {name!r}.{hint} Groups: {', '.join(groups)}; "
                f"tasks are <group>_<category>, listed by `make list_tasks`"
            )
    if not resolved:
        raise UnknownTaskError(f"TASKS is empty: name a group, e.g. {DEFAULT_GROUP}")
    return list(dict.fromkeys(resolved))


def main() -> None:
    for group, tasks in (tasks_by_group() | gen_tasks_by_group() | ab_tasks_by_group()).items():
        print(f"{group} ({len(tasks)} tasks)")
        for task in tasks:
            print(f"  {task}")


if __name__ == "__main__":
    main()
