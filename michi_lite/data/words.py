"""The word timing record every engine, aligner and manifest shares."""

from __future__ import annotations

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
