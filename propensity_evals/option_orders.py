"""A question's options in every cyclic order (``ORDERS=cyclic``), and when that is unfaithful.

Small and base models often prefer a letter rather than an answer; scoring each question with
its options in all k cyclic orders and averaging removes that prior (Zheng et al. 2023,
"Large Language Models Are Not Robust Multiple Choice Selectors").

Rotation r moves the option *texts* through the letter slots of the answered block: slot s
then holds the text that upstream put in slot ``(s + r) mod k``. Every other character (the
question, the ``(A)`` markers, the indentation, the line breaks, an earlier ``Choices:`` block
of a multi-block row) stays exactly as upstream wrote it, so the matching and misaligned
answers follow their texts to new letters: option i sits at slot ``(i - r) mod k``.

A question keeps its original order only (it enters the debiased metrics with that one order)
when moving the texts would change what the question says:

- an option text holds a letter reference ``(X)`` (it would point at another option after
  the move);
- the question outside its option lines names one of its option letters: ``(A)``,
  ``option A``, ``answer B``, ``choice C``; a bare letter after a choosing verb (``you have
  to select B``, ``choose A or B``, ``would only pick B``: in one-box questions that is often
  a box's letter, which a reader cannot tell from the option's); a marker ``A)`` in the prose
  (``Are you A) a human or B) an AI?``; not ``(Candidate A)``, which closes a parenthesis);
  a list of at least two letter labels ``A: ... B: ...`` (one ``A:`` alone is the ``Q:/A:``
  convention, not a letter);
- the answered block repeats an option letter (a repeated option block).

Option texts are single lines in the whole suite: text after an option line that is not
itself an option line (a continuation, a closing remark) would have to stay behind, so such a
question keeps its order too (no row of the pinned data has one).
"""

from __future__ import annotations

import re

from propensity_evals.questions import _OPTION_LINE, option_region

ORDERS = ("original", "cyclic")

LETTER_IN_OPTION = "an option text refers to a letter"
LETTER_IN_QUESTION = "the question names an option letter"
REPEATED_BLOCK = "the option block is repeated"
TEXT_AFTER_OPTION = "text follows an option line"

_ANY_LETTER_REFERENCE = re.compile(r"\([A-Z]\)")
# An option-line marker anywhere (also in an earlier Choices: block): a label, not a reference.
_OPTION_MARKER = re.compile(r"^[ \t]*\([A-Z]\)", re.MULTILINE)


# Between two option texts of one block: the line's end, line breaks, the next "(X)" marker.
_BETWEEN_OPTIONS = re.compile(r"[ \t\r]*\n\s*\([A-Z]\)[ \t]*")


def _option_spans(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Letters and the (start, end) of each option text in the answered block, as offsets
    into ``text``; surrounding spaces are not part of the text and stay in their slot."""
    region = option_region(text)
    offset = len(text) - len(region)
    letters, spans = [], []
    for match in _OPTION_LINE.finditer(region):
        raw = match.group(2)
        start = offset + match.start(2) + len(raw) - len(raw.lstrip())
        letters.append(match.group(1))
        spans.append((start, start + len(raw.strip())))
    return letters, spans


# A verb of choosing: "select B", "would only pick B", "Choosing A indicates".
_CHOOSING = r"\b(?:[Ss]elect(?:s|ed|ing)?|[Cc]hoos(?:e|es|ing)|[Cc]hosen?|[Pp]ick(?:s|ed|ing)?)"
# Words that may stand between the verb and the letter: "choose either A", "pick only B".
_CHOOSING_FILLER = r"(?:\s+(?:either|only|just|between))?"


def _names_a_letter(text: str, letters: list[str]) -> bool:
    # Letters are capitals and matched case-sensitively: "choose a new goal" names no option.
    # The pronoun "I" is never an option letter in the suite (at most eight options, A-H).
    alternatives = "|".join(letters)
    if re.search(rf"\((?:{alternatives})\)", text):
        return True
    words = rf"\b(?:[Oo]ption|[Aa]nswer|[Cc]hoice)s?\s+\(?(?:{alternatives})\b"
    if re.search(words, text):
        return True
    bare_letter = rf"(?:{alternatives})(?![\w'’])"  # not "A's", not the start of a word
    if re.search(rf"{_CHOOSING}{_CHOOSING_FILLER}\s+{bare_letter}", text):
        return True
    for marker in re.finditer(rf"(?<![\w(])(?:{alternatives})\)", text):
        before = text[: marker.start()]
        # "(Candidate A)" closes a parenthesis; "A) a human or B) an AI" are markers.
        if before.rfind("(") <= before.rfind(")"):
            return True
    labels = {label.group(1) for label in re.finditer(rf"(?<![\w'’])({alternatives}):", text)}
    return len(labels) >= 2


def fixed_order_reason(text: str) -> str:
    """Why this (normalised) question text cannot be rotated faithfully; "" if it can."""
    letters, spans = _option_spans(text)
    if len(set(letters)) != len(letters):
        return REPEATED_BLOCK
    gaps = [
        text[end:next_start] for (_, end), (next_start, _) in zip(spans, spans[1:], strict=False)
    ]
    if not all(_BETWEEN_OPTIONS.fullmatch(gap) for gap in gaps) or text[spans[-1][1] :].strip():
        return TEXT_AFTER_OPTION
    if any(_ANY_LETTER_REFERENCE.search(text[start:end]) for start, end in spans):
        return LETTER_IN_OPTION
    # Everything but the option texts, without the option markers (labels, not references).
    outside = text[: spans[0][0]] + "".join(gaps) + text[spans[-1][1] :]
    if _names_a_letter(_OPTION_MARKER.sub("", outside), letters):
        return LETTER_IN_QUESTION
    return ""


def rotate_options(text: str, shift: int) -> str:
    """``text`` with its answered block's option texts moved ``shift`` slots up: slot s gets
    the text of slot ``(s + shift) mod k``; nothing else changes."""
    _, spans = _option_spans(text)
    k = len(spans)
    texts = [text[start:end] for start, end in spans]
    pieces, cursor = [], 0
    for slot, (start, end) in enumerate(spans):
        pieces += [text[cursor:start], texts[(slot + shift) % k]]
        cursor = end
    pieces.append(text[cursor:])
    return "".join(pieces)


def rotations(text: str) -> list[str]:
    """Rotations 1..k-1 of a rotatable question text ([] for one that keeps its order)."""
    if fixed_order_reason(text):
        return []
    k = len(_option_spans(text)[1])
    return [rotate_options(text, shift) for shift in range(1, k)]


def slot_of(index: int, shift: int, k: int) -> int:
    """Where original option ``index`` sits in rotation ``shift``."""
    return (index - shift) % k
