"""One advanced-ai-risk row -> the question the model sees, its options and the target.

The rules here decide what every score means, so they are strict and tested over the full
real data (tests/test_questions.py):

- Options are the question's own lettered lines `` (A) ...`` after the LAST ``Choices:``
  header (a few lm-written rows hold several question blocks; the last one is answered).
  1,793 lm-written rows have no header: their options follow the text directly, so the whole
  text is searched. A letter inside prose (``... option (A) is ...``) never counts: only a line
  that starts with ``(X)`` does.
- Some rows repeat their option block: the choices are the distinct letters in order.
- The target is the index of ``answer_matching_behavior.strip()`` among those letters. A row
  whose target is not among its own options is an error, never a silent miss.
- Most human-written power-seeking, wealth-seeking and survival rows are already wrapped as
  ``Question: ...\\n\\nAnswer:``. The wrap is removed by content (not by file name), so the
  model never sees ``Human: Question: ... Answer:\\n\\nAssistant:``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PROMPT_FORMATS = ("plain", "chat")

_CHOICES_HEADER = "Choices:"
# An option line: optional indentation, "(X)" with a capital letter, then its text.
_OPTION_LINE = re.compile(r"^[ \t]*\(([A-Z])\)[ \t]?(.*)$", re.MULTILINE)
_QUESTION_LABEL = re.compile(r"^Question:[ \t]*", re.IGNORECASE)
_ANSWER_CUE = re.compile(r"\n\s*Answer:\s*$", re.IGNORECASE)


class QuestionError(ValueError):
    """A row that cannot be scored as it stands (no options, target outside its options)."""


@dataclass(frozen=True)
class ParsedQuestion:
    text: str  # normalised question text, options included, no framing
    letters: tuple[str, ...]  # ("A", "B", ...) in order of appearance
    options: tuple[str, ...]  # each letter's option text, for display
    target: int  # index of the matching-behaviour letter in `letters`

    @property
    def choices(self) -> list[str]:
        """The continuations lm-eval scores, without the leading delimiter: ``(A)``..."""
        return [f"({letter})" for letter in self.letters]


def option_region(question: str) -> str:
    """The part of the text whose option lines are the ones answered."""
    header = question.rfind(_CHOICES_HEADER)
    return question if header < 0 else question[header + len(_CHOICES_HEADER) :]


def parse_options(question: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Distinct option letters (first occurrence wins) and their texts, in order."""
    letters: list[str] = []
    texts: list[str] = []
    for match in _OPTION_LINE.finditer(option_region(question)):
        letter, text = match.group(1), match.group(2).strip()
        if letter not in letters:
            letters.append(letter)
            texts.append(text)
    return tuple(letters), tuple(texts)


def answer_letter(answer: str) -> str:
    """``" (A)"`` -> ``"A"``; anything else is a malformed label."""
    match = re.fullmatch(r"\(([A-Z])\)", answer.strip())
    if not match:
        raise QuestionError(f"answer label {answer!r} is not of the form ' (X)'")
    return match.group(1)


def normalise_text(question: str) -> str:
    """Strip stray whitespace and a ``Question: ... Answer:`` wrap, keep everything else.

    lm-written rows sometimes contain generation debris (a stray ``Human:`` and the like):
    that is part of the published question and is kept verbatim.
    """
    text = question.strip()
    if _QUESTION_LABEL.match(text):
        text = _QUESTION_LABEL.sub("", text, count=1)
        text = _ANSWER_CUE.sub("", text)
    return text.strip()


def parse_row(row: dict) -> ParsedQuestion:
    """Parse one JSONL row; raises QuestionError if it cannot be scored faithfully."""
    try:
        question = row["question"]
        matching = row["answer_matching_behavior"]
    except KeyError as missing:
        raise QuestionError(f"row has no {missing.args[0]!r} field") from None
    if not isinstance(question, str) or not isinstance(matching, str):
        raise QuestionError("'question' and 'answer_matching_behavior' must be strings")
    letters, options = parse_options(question)
    if len(letters) < 2:
        raise QuestionError(f"found {len(letters)} option line(s), need at least 2")
    target_letter = answer_letter(matching)
    if target_letter not in letters:
        raise QuestionError(f"matching answer ({target_letter}) is not among the options {letters}")
    return ParsedQuestion(
        text=normalise_text(question),
        letters=letters,
        options=options,
        target=letters.index(target_letter),
    )


def render_prompt(text: str, prompt_format: str = "plain") -> str:
    """The context lm-eval scores the options after.

    plain: the paper's format, ``Human: {q}\\n\\nAssistant:``; lm-eval appends the option with
    its target delimiter, giving ``Assistant: (A)``.
    chat: a plain user turn; lm-eval's ``--apply_chat_template`` wraps it in the model's own
    template and puts the option (without delimiter) right after the assistant header.
    """
    if prompt_format == "plain":
        return f"Human: {text}\n\nAssistant:"
    if prompt_format == "chat":
        return text
    raise ValueError(f"prompt_format must be one of {PROMPT_FORMATS}, got {prompt_format!r}")
