"""A generated reply -> the option it answers, or a failed parse. Never a guess.

Every generate-mode score rests on this reading, so it is strict and works on the raw text
(lm-eval is never asked to strip anything first):

1. Thinking is dropped: everything up to the last ``</think>``. A thinking block that was opened
   (``<think>`` in the reply, or by the prompt itself: some chat templates end the prompt with
   ``<think>``) and never closed means the reply stopped while thinking: failed.
2. A reply that is exactly one option's text (case-insensitive, surrounding whitespace, markdown
   emphasis and a final full stop aside; e.g. ``Yes``) is that option.
3. Otherwise every letter the reply names is collected, in the forms models use: ``(B)``,
   ``B)`` (not inside a word), ``Answer: B`` / ``The answer is B``, and a reply that is just the
   letter. Exactly one distinct letter, and it is one of the question's options: that option.
   No letter, two different letters, or a letter that is not an option: failed.

In the ``answer is X`` form a capital letter that is not an option and is followed by a space is
read as a word, not a letter: ``Answer: I would choose (B)`` names B only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

# "(B)": a capital letter in parentheses.
_PARENTHESISED = re.compile(r"\(([A-Z])\)")
# "B)": a capital letter closed by a parenthesis, not the end of a word ("OK)") nor "(B)".
_CLOSED = re.compile(r"(?<![A-Za-z0-9(])([A-Z])\)")
# "Answer: B", "The answer is (B)", "answer is **B**": the letter may not start a word.
_ANSWER_IS = re.compile(
    r"\b(?i:answer)\b[\s*_]*(?:(?i:is)\b|[:=])?[\s*_]*\(?([A-Z])(?![A-Za-z0-9])"
)
# Markdown emphasis, quotes and a final full stop around a whole reply or option text.
_WRAPPING = " \t\r\n*_`\"'"


@dataclass(frozen=True)
class ParsedAnswer:
    index: int | None  # the option answered (index into the question's letters); None: failed
    reason: str  # "letter", "option text", or why the parse failed

    @property
    def failed(self) -> bool:
        return self.index is None


def opens_think(text: str) -> bool:
    """True if ``text`` leaves a thinking block open (its last ``<think>`` is never closed)."""
    opened = text.rfind(THINK_OPEN)
    return opened >= 0 and text.find(THINK_CLOSE, opened) < 0


def final_answer(reply: str, think_opened: bool = False) -> str | None:
    """The reply after its thinking; None when a thinking block is left open.

    ``think_opened``: the prompt itself ended inside a thinking block.
    """
    closed = reply.rfind(THINK_CLOSE)
    if closed >= 0:
        answer = reply[closed + len(THINK_CLOSE) :]
        return None if THINK_OPEN in answer else answer
    if think_opened or THINK_OPEN in reply:
        return None
    return reply


def _bare(text: str) -> str:
    text = text.strip(_WRAPPING)
    return " ".join(text.removesuffix(".").strip(_WRAPPING).split())


def named_letters(answer: str, letters: tuple[str, ...]) -> set[str]:
    """Every letter the answer names in one of the recognised forms."""
    named = {match.group(1) for match in _PARENTHESISED.finditer(answer)}
    named |= {match.group(1) for match in _CLOSED.finditer(answer)}
    for match in _ANSWER_IS.finditer(answer):
        letter, after = match.group(1), answer[match.end() : match.end() + 1]
        # "Answer: I would..." : a capital word, not a letter, unless it is an option.
        if letter in letters or not after.isspace():
            named.add(letter)
    bare = _bare(answer)
    if len(bare) == 1 and bare.isupper():
        named.add(bare)
    return named


def parse_answer(
    reply: str, letters: tuple[str, ...], options: tuple[str, ...], think_opened: bool = False
) -> ParsedAnswer:
    """Read which of the options (``letters[i]``, text ``options[i]``) the reply answers."""
    answer = final_answer(reply, think_opened)
    if answer is None:
        return ParsedAnswer(None, "thinking never closed")
    if not answer.strip():
        return ParsedAnswer(None, "empty answer")
    text = _bare(answer).casefold()
    same_text = [i for i, option in enumerate(options) if text and _bare(option).casefold() == text]
    if len(same_text) == 1:
        return ParsedAnswer(same_text[0], "option text")
    named = named_letters(answer, letters)
    if not named:
        return ParsedAnswer(None, "no answer letter")
    if len(named) > 1:
        return ParsedAnswer(None, f"several letters: {', '.join(sorted(named))}")
    (letter,) = named
    if letter not in letters:
        return ParsedAnswer(None, f"({letter}) is not an option")
    return ParsedAnswer(letters.index(letter), "letter")
