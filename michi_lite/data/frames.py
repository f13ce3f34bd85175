"""Text tokens on the 12.5 Hz frame grid.

The backbone sees one position per 80 ms frame, so text must be laid out in
time: each token of an utterance's text sits on the frame where its word
starts, frames without a new token carry PAD, and a word with more tokens
than frames before the next word spills into the following frames. Reading
the non-PAD tokens back in order gives the text again, exactly: the grid
moves tokens in time but never drops, adds or reorders one.

    text    "The quick brown fox"        words start at 0.05, 0.30, 0.55, 0.90 s
    frames   0     1   2   3     4   5   6   7     8   9   10   11
    tokens  "The"  .   .   " quick" .  .   " brown" .  .   .    .    " fox"
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from ..config import FRAME_SECONDS
from .words import Word, normalize_text

logger = logging.getLogger(__name__)

# SmolLM2 reserves <|endoftext|> and its chat text never uses it mid-turn (turns
# end with <|im_end|>), so it can stand for "no new token on this frame" without
# growing the vocabulary or the pretrained embedding matrix.
PAD_TOKEN = "<|endoftext|>"


@dataclass(frozen=True)
class TokenGrid:
    tokens: list[int]  # (frames,) one token id per 80 ms frame, pad_id where none starts
    pad_id: int

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def text_token_ids(self) -> list[int]:
        return [t for t in self.tokens if t != self.pad_id]

    def labels(self, tokenizer) -> list[str]:
        """Each frame's token as text, "" for PAD: for printing and plotting."""
        return ["" if t == self.pad_id else tokenizer.decode([t]) for t in self.tokens]


def chunk_start_times(text: str, words: list[Word]) -> list[tuple[int, int, float]]:
    """Give every whitespace-separated chunk of ``text`` a start time.

    Word timings come from engines and aligners that do not always split the
    text the way it is written ("1,250,000" may come back as several spoken
    words, punctuation is dropped), so chunks are matched to timed words by
    normalised spelling, in order; a chunk that matches nothing takes the time
    of the chunk before it, and the grid then places its tokens just after.
    Returns (char_start, char_end, seconds) per chunk.
    """
    chunks = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    timed = [(normalize_text(w.word), w) for w in words]
    times: list[float] = []
    cursor = 0  # index into ``timed`` of the next unused word
    last = words[0].start if words else 0.0
    for start, end in chunks:
        key = normalize_text(text[start:end])
        found = None
        # look a few words ahead only, so one miss cannot swallow the sentence
        for j in range(cursor, min(cursor + 4, len(timed))):
            if key and timed[j][0] == key:
                found = j
                break
        if found is not None:
            last = timed[found][1].start
            cursor = found + 1
        elif cursor < len(timed) and not key:
            last = timed[cursor][1].start  # punctuation-only chunk: time of the next word
        times.append(last)
    # enforce monotonic time so tokens never run backwards
    for i in range(1, len(times)):
        times[i] = max(times[i], times[i - 1])
    return [(s, e, t) for (s, e), t in zip(chunks, times)]


def chunk_end_times(text: str, words: list[Word]) -> list[float]:
    """Give every whitespace-separated chunk of ``text`` the time its last spoken word ends.

    Chunks are matched to timed words by normalised spelling, in order, as
    in ``chunk_start_times``. A run of chunks that matches nothing ("$23.10"
    spoken as "twenty three dollars ten cents") covers the words spoken
    between its matched neighbours and ends when the last of them does, so
    nothing is timed before it has been said. Never decreasing.
    """
    chunks = [m.group() for m in re.finditer(r"\S+", text)]
    timed = [normalize_text(w.word) for w in words]
    matched: list[int | None] = []  # the word index of each chunk, None where none matches
    cursor = 0
    for chunk in chunks:
        key = normalize_text(chunk)
        found = next((j for j in range(cursor, min(cursor + 4, len(timed))) if key and timed[j] == key), None)
        matched.append(found)
        if found is not None:
            cursor = found + 1
    ends: list[float] = []
    for i, found in enumerate(matched):
        if found is None:  # up to the word before the next matched chunk's, or the last word
            following = next((j for j in matched[i + 1:] if j is not None), len(words))
            found = following - 1
        end = words[found].end if 0 <= found < len(words) else 0.0
        ends.append(max(end, ends[-1]) if ends else end)
    return ends


def token_chunks(text: str, tokenizer) -> tuple[list[int], list[int]]:
    """The tokens of ``text`` and, for each, the index of the whitespace-separated chunk it belongs to.

    A token belongs to the chunk it starts in, or to the next one if it
    starts on the space before it (" quick", or a lone " " before a digit).
    """
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ends = [m.end() for m in re.finditer(r"\S+", text)]
    chunk_of = [next((i for i, end in enumerate(ends) if end > char_start), max(len(ends) - 1, 0))
                for char_start, _ in encoded["offset_mapping"]]
    return encoded["input_ids"], chunk_of


def frame_tokens(text: str, words: list[Word], tokenizer, n_frames: int | None = None) -> TokenGrid:
    """Lay the tokens of ``text`` on the frame grid by word start time.

    ``n_frames`` is the utterance length in frames (None: just long enough for
    the text). If the text needs more frames than that (a fast speaker reading
    digits), the grid grows and a warning is logged rather than a token lost.
    """
    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    token_ids, chunk_of = token_chunks(text, tokenizer)
    chunks = chunk_start_times(text, words)

    grid: list[int] = [pad_id] * (n_frames or 0)
    next_free = 0
    for token_id, chunk in zip(token_ids, chunk_of):
        seconds = chunks[chunk][2] if chunks else 0.0
        # whole milliseconds first: 2.32 / 0.08 is 28.999... in floating point, not 29
        frame = max(round(seconds * 1000) // round(FRAME_SECONDS * 1000), next_free)
        if frame >= len(grid):
            grid.extend([pad_id] * (frame + 1 - len(grid)))
        grid[frame] = token_id
        next_free = frame + 1
    if n_frames is not None and len(grid) > n_frames:
        logger.warning("text needs %d frames but the audio has %d; grid extended", len(grid), n_frames)
    return TokenGrid(tokens=grid, pad_id=pad_id)


def text_from_grid(grid: TokenGrid, tokenizer) -> str:
    """The inverse of ``frame_tokens``: the text the grid carries."""
    return tokenizer.decode(grid.text_token_ids)
