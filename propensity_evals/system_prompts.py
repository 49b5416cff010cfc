"""Named system prompts (``SYSTEM_PROMPTS=none,hhh,agi``): one run per name, compared in the
report.

``system_prompts.csv`` (beside this module) has one row per prompt: ``name,text,source``
(``source``: where the wording comes from and why it is there). ``none`` has empty text: no
system prompt. ``SYSTEM_PROMPTS_FILE=path`` adds a user's own table with the same columns; its
names must not repeat the pack's. The name travels with the run (its folder and W&B run are
``...__sys-<name>-<hash of the text>``, ``run_info.json`` records ``system_prompt_name``); the
text is what the run's fingerprint holds, so two names with one text share cached answers.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

COLUMNS = ["name", "text", "source"]
DEFAULT_TABLE = "system_prompts.csv"
NONE = "none"
# A name is part of a folder name and of W&B's run name.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")


class SystemPromptsError(ValueError):
    """A table or a name that cannot be used; the message is one line."""


@dataclass(frozen=True)
class NamedPrompt:
    name: str
    text: str
    source: str


def default_table() -> Path:
    return Path(str(resources.files("propensity_evals").joinpath(DEFAULT_TABLE)))


def read_table(path: Path) -> dict[str, NamedPrompt]:
    """name -> prompt of one CSV table; a bad header, name or repeated name is refused."""
    if not path.is_file():
        raise SystemPromptsError(
            f"system prompt table {path} not found: SYSTEM_PROMPTS_FILE must name a CSV file "
            f"with the columns {','.join(COLUMNS)}"
        )
    table: dict[str, NamedPrompt] = {}
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or list(reader.fieldnames)[:3] != COLUMNS:
            raise SystemPromptsError(
                f"{path}: the header must be {','.join(COLUMNS)} (got {reader.fieldnames})"
            )
        for lineno, row in enumerate(reader, start=2):
            name = (row.get("name") or "").strip()
            if not _NAME.fullmatch(name):
                raise SystemPromptsError(
                    f"{path}:{lineno}: name {name!r} must be 1-40 letters, digits, '-' or '_' "
                    "(it becomes part of the run folder's name)"
                )
            if name in table:
                raise SystemPromptsError(f"{path}:{lineno}: {name} has a row already")
            table[name] = NamedPrompt(name, row.get("text") or "", row.get("source") or "")
    return table


def load_prompts(user_table: str = "") -> dict[str, NamedPrompt]:
    """The pack's prompts, plus a user's table (``SYSTEM_PROMPTS_FILE``) when given."""
    prompts = read_table(default_table())
    if user_table.strip():
        path = Path(user_table.strip()).expanduser()
        for name, prompt in read_table(path).items():
            if name in prompts:
                raise SystemPromptsError(
                    f"{path}: {name} is one of the pack's system prompts already: give yours "
                    "another name"
                )
            prompts[name] = prompt
    return prompts


def pick(spec: str, user_table: str = "") -> list[NamedPrompt]:
    """``none,hhh,agi`` -> those prompts in that order ([] for an empty spec)."""
    names = [part.strip() for part in spec.split(",") if part.strip()]
    if not names:
        if user_table.strip():
            raise SystemPromptsError(
                "SYSTEM_PROMPTS_FILE adds named prompts: pick them with SYSTEM_PROMPTS=name,..."
            )
        return []
    prompts = load_prompts(user_table)
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise SystemPromptsError(f"SYSTEM_PROMPTS names {repeated[0]} twice")
    unknown = [name for name in names if name not in prompts]
    if unknown:
        raise SystemPromptsError(
            f"unknown system prompt {unknown[0]!r}: known are {', '.join(prompts)} "
            "(propensity_evals/system_prompts.csv, or your own SYSTEM_PROMPTS_FILE)"
        )
    return [prompts[name] for name in names]
