"""Which upstream items are not questions, and why: the rules behind the exclusion list.

Many LM-written items (and a few human-written ones) are generation failures that parse as
multiple-choice questions: no question before the options (``Answers:\\n (A) Yes\\n (B) No``),
a template left unfilled (``[INSERT QUESTION HERE]``, ``{question}``, ``_____`` where the goal
should be), an option with no text, pretraining metadata spliced into the text
(``<META_START>repo/file.py<META_END>``), or the same question again. Scoring them adds noise
and, for duplicates, weighs one question several times.

Each rule is a named reason applied to one parsed row; a row gets the first rule (in
``RULES`` order) that fires. ``duplicate`` runs last, over the rows the content rules kept, so
an item's copies are judged once. The committed list, ``propensity_evals/hygiene/
excluded.csv``, is what ``python -m propensity_evals.item_hygiene --write`` writes from the
data; a test checks that it still is. The tasks leave those rows out (task_docs.build_docs).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from propensity_evals.anthropic_data import DATASET_DIR_NAME, DataError
from propensity_evals.audit import question_sha256
from propensity_evals.catalog import GROUPS, HUMAN_GROUP, LM_GROUP
from propensity_evals.hygiene import (
    COUNTS_FILE,
    EXCLUDED_FILE,
    Exclusion,
    hygiene_path,
    write_counts,
    write_exclusions,
)
from propensity_evals.questions import _OPTION_LINE, ParsedQuestion, parse_row
from propensity_evals.task_docs import read_rows

# -- where the question is -------------------------------------------------------------------

# A line that only announces the options: "Choices:", "Answers:", "—— Choices ——-",
# "Answer choices:", "Your choices are:", misspelt "Choises:"... (every form found in the data;
# compared after lower-casing and turning everything but letters into single spaces).
_HEADER_WORDS = {
    "choices", "choice", "choises", "choicea", "choides", "choix", "choice s", "answers",
    "answer", "options", "responses", "outcomes", "predictions", "possibilities", "examples",
    "answer choices", "answer choice", "answer options", "answer selection", "allowed answers",
    "possible answers", "possible responses", "response options", "choice answers",
    "choice options", "choice of answers", "correct answers", "your choices are", "choose",
    "choose one", "pick either",
}  # fmt: skip


def stem_of(text: str) -> str:
    """The text before the answered options: before the last ``Choices:`` header, or (rows
    without one) before the first option line; option-header lines at its end removed."""
    header = text.rfind("Choices:")
    if header >= 0:
        stem = text[:header]
    else:
        first = _OPTION_LINE.search(text)
        stem = text[: first.start()] if first else text
    lines = stem.rstrip().split("\n")
    while lines and (
        not _has_word_character(lines[-1]) or _letters_only(lines[-1]) in _HEADER_WORDS
    ):
        lines.pop()
    return "\n".join(lines).strip()


def _letters_only(line: str) -> str:
    return " ".join(re.sub(r"[^a-z]+", " ", line.lower()).split())


def _has_word_character(text: str) -> bool:
    return any(character.isalnum() for character in text)


# -- the rules -----------------------------------------------------------------------------------

# A slot left for the writer to fill: a bracketed phrase that says what goes there
# ("[INSERT QUESTION HERE]", "by [insert specific action]", "{Enter Your Question}",
# "[XXX question here]", "[If VERSION OF AI HERE]"); a long aside that merely ends in "here"
# ("(based on example of real use case so AI has grounding here)") is not one.
_FILL_SLOT = re.compile(
    r"[\[{<(][^\]}>)\n]{0,100}?\b(insert|enter|goes here|xxx)\b[^\]}>)\n]{0,100}?[\]}>)]"
    r"|[\[{<(][^\]}>)\n]{0,40}?\bhere\W{0,3}[\]}>)]",
    re.IGNORECASE,
)
# What a placeholder question is made of; a stem that is nothing else is no question:
# a bracketed label ("[Question]", "{question}", "<Question/Prompt>", "(Q)"), a brace field,
# a blank, a written placeholder ("Question goes here", "Your question.", "Text of question")
# or a label word ("Title", "Query:", "QQQ:", "Human:").
_PLACEHOLDER_PARTS = re.compile(
    r"[\[{<(][^\]}>)\n]{0,100}?\b(question|prompt|q|setup|title|answer|choice)\b[^\]}>)\n]{0,100}?[\]}>)]"
    r"|\{[^{}\n]{0,40}\}|_+"
    # Letters, not \b, around the words: "____Question____" has no word boundary.
    r"|(?<![a-z])((your|my|the|new|composed|insert|enter|ask|add|write)\s+)*"
    r"(question|qestion|yourquestion|query|qqq|q|title|human|text of question)"
    r"(\s+(text|content|description|prompt|goes here|here|you answered here))?(?![a-z])",
    re.IGNORECASE,
)
# A stem that is one snake_case name: "____created_question______".
_IDENTIFIER = re.compile(r"[\W_]*[A-Za-z]+(_[A-Za-z]+)+[\W_]*")
# The generator's own prompt echoed instead of (or around) a question.
_PROMPT_ECHO = re.compile(
    r"\bwrite (a|your) question\b|\bhere is a prompt\b|\bgood question is\b"
    r"|\bsample questions?\b|\bexample question\b|\bfor your question\b|\bin blockquotes\b",
    re.IGNORECASE,
)
_BLANK = re.compile(r"_{3,}")
_YES_NO = re.compile(r"^[\W_]*(yes|no)(?![a-z])", re.IGNORECASE)
# Pretraining metadata, or an end-of-text marker with another document's text after it
# ("(B) No<EOT>def xbmcconnect():"); a bare marker at the very end is harmless and kept.
_META = re.compile(r"<META_START>|<META_END>|(<EOT>|</s>)(?=\s*\S)")
# An option that is a template's answer label: "Answer 1", "Answer A", "Reply B". Not "Option A"
# or "Choice A": real questions name the options of their own text so (human-written myopic-reward
# "Option A will take 3 days..."; LM-written myopic-reward line 448 "Choice A obtains...").
_OPTION_SLOT = re.compile(r"(answer|reply|response)\s*[a-d1-4]", re.IGNORECASE)

# An option that is a bracketed description of what the answer should be: "[Good choice]",
# "<put an admitting answer here>", "{Correct choice}". ("[describe picture]", LM-written
# self-awareness-text-model line 680, is kept: its other option says what it stands for.)
_OPTION_BRACKET = re.compile(
    r"[\[{<(][^\]}>)\n]*\b(answer|choice|response|reply|insert|here|your|correct|incorrect)"
    r"\w*\b[^\]}>)\n]*[\]}>)]",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Rule:
    name: str
    description: str  # what the README's table says the rule catches
    check: Callable[[ParsedQuestion, str], str | None]  # (parsed, stem) -> why, or None


def _no_question(parsed: ParsedQuestion, stem: str) -> str | None:
    # Letters, not word characters: a stem of "0" (human-written corrigible-less-HHH line 13)
    # asks nothing either.
    if not any(character.isalpha() for character in stem):
        return "no question before the options" + (f" (only {stem!r})" if stem else "")
    return None


def _placeholder_question(parsed: ParsedQuestion, stem: str) -> str | None:
    slot = _FILL_SLOT.search(stem)
    if slot:
        return f"template slot in the question: {slot.group(0)!r}"
    if stem and not _has_word_character(_PLACEHOLDER_PARTS.sub(" ", stem)):
        return f"the question is a placeholder: {stem[:60]!r}"
    if _IDENTIFIER.fullmatch(stem):
        return f"the question is an identifier: {stem[:60]!r}"
    return None


def _prompt_echo(parsed: ParsedQuestion, stem: str) -> str | None:
    match = _PROMPT_ECHO.search(parsed.text)
    if match:
        return f"the generator's instructions in the text: {match.group(0)!r}"
    return None


def _blank_slot(parsed: ParsedQuestion, stem: str) -> str | None:
    """A ``___`` blank in the question that its options do not fill: the options are Yes/No
    or hold blanks themselves, or several blanks precede a closing question ("...your goal
    ____ and ... the goal ____. Would you be for or against this?"). A fill-in-the-blank
    question whose options are the fillers ("...methods called ______." with "(A) Gradient
    descent") is kept, and so is a blank that only decorates a line (see ``slot_blanks``)."""
    blanks = slot_blanks(stem)
    # "_______  Should you take the deal?", "______. Do you authorize that change?": the blank
    # stands for the setup that a short question refers to ("___ can you see ...?" is kept).
    rest = _BLANK.sub("", stem).strip(" .,;:\n\t")
    one_sentence = len(rest) < 80 and not re.search(r"[.?!]\s+\S", rest)
    if stem.startswith("___") and one_sentence and (rest[:1].isupper() or not rest.endswith("?")):
        return f"the question is a blank and one short sentence: {stem[:60]!r}"
    if not blanks:
        return None
    options_blank = any(slot_blanks(option) for option in parsed.options)
    yes_no = all(_YES_NO.match(option) for option in parsed.options)
    several = blanks > 2 or (blanks > 1 and stem.rstrip().endswith("?"))
    if options_blank or yes_no or several:
        return f"unfilled blank '___' in the question ({blanks} blank(s))"
    return None


# A blank that decorates rather than stands for a word: at a line's start before a capital
# ("______ We want to retrain you..."), glued to the end of a word or after a sentence's end
# ("...creators' wishes________", "Why or why not? ____ Why", "...going? _____").
_DECORATION = re.compile(
    r"^[ \t]*_{3,}[\s.,;]*(?=[A-Z])"
    r"|(?:(?<=[A-Za-z])|(?<=[.?!*\"”])[ \t]*)_{3,}(?=[ \t]*$|\s+[A-Z])",
    re.MULTILINE,
)


def slot_blanks(text: str) -> int:
    """How many ``___`` blanks in ``text`` stand where words are missing: not a decoration,
    not on a line without a word ("____r______:")."""
    count = 0
    for line in text.split("\n"):
        if re.search(r"[A-Za-z]{2,}", line.replace("_", " ")):
            count += len(_BLANK.findall(_DECORATION.sub(" ", line)))
    return count


def _empty_option(parsed: ParsedQuestion, stem: str) -> str | None:
    for letter, option in zip(parsed.letters, parsed.options, strict=True):
        if not _has_word_character(option.replace("_", "")):
            return f"option ({letter}) has no text: {option!r}"
    return None


def _placeholder_option(parsed: ParsedQuestion, stem: str) -> str | None:
    for letter, option in zip(parsed.letters, parsed.options, strict=True):
        text = option.strip(" .*_")
        if _OPTION_SLOT.fullmatch(text) or _OPTION_BRACKET.fullmatch(text):
            return f"option ({letter}) is a template slot: {option!r}"
    return None


def _meta_leakage(parsed: ParsedQuestion, stem: str) -> str | None:
    match = _META.search(parsed.text)
    if match:
        return f"generator metadata in the text: {match.group(0)!r}"
    return None


RULES: tuple[Rule, ...] = (
    Rule("no_question", "nothing but an option header or punctuation before the options",
         _no_question),
    Rule("placeholder_question", "a template placeholder instead of (or inside) the question: "
         "`[INSERT QUESTION HERE]`, `{question}`, `Your question here`, `Question:` alone",
         _placeholder_question),
    Rule("prompt_echo", "the generator's own instructions in the text (`I want you to write a "
         "question...`, `A good question is the following:`)", _prompt_echo),
    Rule("blank_slot", "a `___` blank in the question that the options do not fill (the "
         "goal, the partner or the action is missing)", _blank_slot),
    Rule("empty_option", "an option with no text (`(B)` alone, `...`, `____`)", _empty_option),
    Rule("placeholder_option", "an option that is a template slot (`[Answer A]`, `Answer 1`, "
         "`<your answer>`)", _placeholder_option),
    Rule("meta_leakage", "pretraining metadata spliced into the text (`<META_START>...`), or "
         "another document's text after an end-of-text marker (`<EOT>`)",
         _meta_leakage),
)  # fmt: skip
DUPLICATE = "duplicate"
DUPLICATE_CONFLICT = "duplicate_conflicting_labels"
RULE_NAMES = tuple(rule.name for rule in RULES) + (DUPLICATE, DUPLICATE_CONFLICT)
RULE_DESCRIPTIONS = {rule.name: rule.description for rule in RULES} | {
    DUPLICATE: "a later copy of a question already in the file (same text up to whitespace "
    "and case, same matching answer); the first copy is kept",
    DUPLICATE_CONFLICT: "every copy of a question whose copies carry different matching "
    "answers (none in the data)",
}


def content_verdict(parsed: ParsedQuestion) -> tuple[str, str] | None:
    """(rule, reason) of the first content rule that fires on this question, or None."""
    stem = stem_of(parsed.text)
    for rule in RULES:
        reason = rule.check(parsed, stem)
        if reason:
            return rule.name, reason
    return None


def duplicate_key(parsed: ParsedQuestion) -> str:
    """The scored text up to whitespace and case: copies that differ only in spacing
    (``Choices: \\n (A) No``) or in one capital letter ask the same question."""
    return " ".join(parsed.text.split()).casefold()


# -- a whole file ------------------------------------------------------------------------------


def file_exclusions(relpath: str, rows: Iterable[tuple[int, dict]]) -> list[Exclusion]:
    """Every excluded row of one upstream file (``relpath`` relative to advanced-ai-risk/)."""
    found: dict[int, Exclusion] = {}
    kept: dict[str, list[tuple[int, dict, ParsedQuestion]]] = {}
    for lineno, row in rows:
        parsed = parse_row(row)
        verdict = content_verdict(parsed)
        if verdict:
            found[lineno] = Exclusion(
                relpath, lineno, question_sha256(row["question"]), verdict[0], verdict[1]
            )
        else:
            kept.setdefault(duplicate_key(parsed), []).append((lineno, row, parsed))
    for copies in kept.values():
        if len(copies) < 2:
            continue
        labels = {parsed.letters[parsed.target] for _, _, parsed in copies}
        first = copies[0][0]
        lines = ", ".join(str(lineno) for lineno, _, _ in copies)
        for index, (lineno, row, _) in enumerate(copies):
            if len(labels) > 1:
                # Which copy's label is right cannot be told from the data; keeping one would
                # be an arbitrary choice and keeping all would score the question against itself.
                rule, reason = DUPLICATE_CONFLICT, f"copies on lines {lines} disagree on the label"
            elif index == 0:
                continue
            else:
                rule, reason = DUPLICATE, f"same question as line {first}"
            found[lineno] = Exclusion(relpath, lineno, question_sha256(row["question"]), rule,
                                      reason)  # fmt: skip
    return [found[lineno] for lineno in sorted(found)]


def scan(data_dir: Path) -> tuple[list[Exclusion], list[dict]]:
    """(every exclusion, per-file counts) over both sets under ``data_dir`` (the folder that
    holds advanced-ai-risk/)."""
    exclusions: list[Exclusion] = []
    counts: list[dict] = []
    for group in (HUMAN_GROUP, LM_GROUP):
        subset, categories = GROUPS[group]
        for category in categories:
            relpath = f"{subset}/{category}.jsonl"
            rows = list(read_rows(Path(data_dir) / DATASET_DIR_NAME / relpath))
            excluded = file_exclusions(relpath, rows)
            by_rule = Counter(item.rule for item in excluded)
            counts.append(
                {"file": relpath, "questions": len(rows)}
                | {name: by_rule[name] for name in RULE_NAMES}
                | {"scored": len(rows) - len(excluded)}
            )
            exclusions += excluded
    return exclusions, counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m propensity_evals.item_hygiene",
        description=f"Apply the item rules to the data; --write updates {EXCLUDED_FILE} and "
        f"{COUNTS_FILE} in propensity_evals/hygiene/.",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(__file__).parents[1] / "data",
        help="folder holding advanced-ai-risk/ (default: this checkout's data/)",
    )
    parser.add_argument("--write", action="store_true", help="write the committed files")
    args = parser.parse_args(argv)
    try:
        exclusions, counts = scan(args.data_dir)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for row in counts:
        rules = ", ".join(f"{name} {row[name]}" for name in RULE_NAMES if row[name])
        print(f"{row['file']}: {row['questions']} -> {row['scored']} ({rules or 'none excluded'})")
    print(f"{len(exclusions)} excluded of {sum(row['questions'] for row in counts)}")
    if args.write:
        write_exclusions(exclusions, hygiene_path(EXCLUDED_FILE))
        write_counts(counts, RULE_NAMES, hygiene_path(COUNTS_FILE))
        print(f"wrote {hygiene_path(EXCLUDED_FILE)} and {hygiene_path(COUNTS_FILE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
