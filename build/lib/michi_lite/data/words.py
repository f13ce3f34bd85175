"""The word timing record every engine, aligner and manifest shares, and the one text normaliser."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Word:
    word: str
    start: float  # seconds from the start of the utterance
    end: float

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Word":
        return cls(word=str(d["word"]), start=float(d["start"]), end=float(d["end"]))


def normalize_text(text: str) -> str:
    """The one normaliser used for word error rate and for matching words, everywhere.

    Lowercase; every punctuation mark or symbol becomes a word break
    ("well-known" -> "well known"), except apostrophes inside a word
    ("don't" stays, 'quoted' loses its quotes); runs of whitespace become one space.

    Numbers are left as written. Saying "20" as "twenty" is part of what a
    speech model's text normalisation must get right, and rewriting numbers
    here would hide its mistakes from the word error rate; references that
    should not test it are better written in words.
    """
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'")  # typographic apostrophes
    text = re.sub(r"[^\w\s']|_", " ", text)
    text = re.sub(r"(?<!\w)'|'(?!\w)", " ", text)
    return " ".join(text.split())
