"""Word alignment by Whisper, the one text normaliser, and how to compare alignments.

Text tokens sit on the frame where their word starts, so every utterance
needs word timings. Some synthesis engines report their own; for the rest,
and as an independent check on the engines, Whisper tiny.en (faster-whisper,
``word_timestamps=True``) listens to the audio and times the words it hears.

Two alignments of one utterance are compared word by word: the words both
agree on are paired up, and the start and end differences of each pair are
summarised as a median and 95th percentile in milliseconds.
"""

from __future__ import annotations

import difflib

import jiwer
import numpy as np
import soxr
from faster_whisper import WhisperModel
from faster_whisper.transcribe import Segment

from ..backbone import load_whisper
from .words import Word, normalize_text

WHISPER_SAMPLE_RATE = 16_000
# faster-whisper's default beam: with beam 1, tiny.en misheard synthetic speech
# noticeably more often in our trials, and word timings come from the chosen beam.
BEAM_SIZE = 5
WHISPER_WORD_STEP = 0.02  # Whisper's timestamps come in steps of 20 ms


def _whisper_segments(waveform: np.ndarray, sample_rate: int, model: WhisperModel | None, language: str,
                      word_timestamps: bool) -> list[Segment]:
    """Run Whisper on a mono waveform at any sample rate; the decoded segments."""
    if waveform.ndim != 1:
        raise ValueError(f"expected a mono waveform of shape (samples,), got {waveform.shape}")
    audio = waveform.astype(np.float32, copy=False)
    if sample_rate != WHISPER_SAMPLE_RATE:
        audio = soxr.resample(audio, sample_rate, WHISPER_SAMPLE_RATE)
    model = model or load_whisper()
    # vad_filter off: the VAD would cut the quiet word edges whose timing we want to measure.
    segments, _info = model.transcribe(audio, language=language, beam_size=BEAM_SIZE,
                                       word_timestamps=word_timestamps, vad_filter=False)
    return list(segments)  # transcribe is lazy: decoding happens here


def whisper_words(waveform: np.ndarray, sample_rate: int, model: WhisperModel | None = None,
                  language: str = "en") -> list[Word]:
    """Whisper's word timings, in seconds from the start of the waveform, each inside it and never empty.

    Whisper times words to 20 ms and sometimes gives a word no time at all
    (start = end) or ends one past the audio; such a word keeps 20 ms of the
    audio from where it starts (or ending at the end).
    """
    segments = _whisper_segments(waveform, sample_rate, model, language, word_timestamps=True)
    duration = len(waveform) / sample_rate
    words = []
    for w in (w for segment in segments for w in segment.words):
        if not w.word.strip():  # Whisper's words carry their leading space (" fox"); a lone space is dropped
            continue
        end = min(float(w.end), duration)
        start = min(float(w.start), end)
        if end - start < WHISPER_WORD_STEP:
            start = min(start, duration - WHISPER_WORD_STEP)
            end = start + WHISPER_WORD_STEP
        words.append(Word(w.word.strip(), round(max(start, 0.0), 4), round(end, 4)))
    return words


def transcribe(waveform: np.ndarray, sample_rate: int, model: WhisperModel | None = None,
               language: str = "en") -> str:
    """What Whisper hears, as one string."""
    segments = _whisper_segments(waveform, sample_rate, model, language, word_timestamps=False)
    return "".join(segment.text for segment in segments).strip()


def word_error_rate(refs: list[str], hyps: list[str]) -> float:
    """Corpus word error rate: all edits over all reference words, after :func:`normalize_text`."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    refs = [normalize_text(r) for r in refs]
    if not all(refs):
        raise ValueError("a reference is empty after normalisation: its word error rate is undefined")
    return float(jiwer.wer(refs, [normalize_text(h) for h in hyps]))


def match_words(a: list[Word], b: list[Word]) -> list[tuple[Word, Word]]:
    """Pair up the words two alignments of one utterance agree on, in order.

    A sequence alignment of the normalised words keeps only equal words, so a
    word one side misheard or missed simply goes unpaired.
    """
    a = [w for w in a if normalize_text(w.word)]  # a word of pure punctuation has nothing to match
    b = [w for w in b if normalize_text(w.word)]
    # autojunk off: otherwise, in utterances over 200 words, frequent words like "the" are never matched.
    matcher = difflib.SequenceMatcher(a=[normalize_text(w.word) for w in a],
                                      b=[normalize_text(w.word) for w in b], autojunk=False)
    return [(a[i + k], b[j + k]) for i, j, size in matcher.get_matching_blocks() for k in range(size)]


def boundary_differences(a: list[Word], b: list[Word]) -> np.ndarray:
    """Signed differences in ms, ``b`` minus ``a``, of matched words' starts, then of their ends.

    Shape (2 * pairs,). Positive means ``b`` puts the boundary later; the sign
    shows a constant lag that the absolute size alone would hide.
    """
    pairs = match_words(a, b)
    starts = [y.start - x.start for x, y in pairs]
    ends = [y.end - x.end for x, y in pairs]
    return np.array(starts + ends, dtype=np.float64) * 1000.0


def summarize_differences(diffs: np.ndarray) -> dict:
    """Median and 95th percentile of the absolute boundary differences, the median
    signed difference (a constant lag), and counts; None where there is nothing to measure.

    ``diffs`` is one or more :func:`boundary_differences` arrays concatenated:
    two boundaries per word compared.
    """
    diffs = np.asarray(diffs, dtype=np.float64)
    empty = diffs.size == 0
    return {
        "median_ms": None if empty else round(float(np.median(np.abs(diffs))), 1),
        "p95_ms": None if empty else round(float(np.percentile(np.abs(diffs), 95)), 1),
        "median_signed_ms": None if empty else round(float(np.median(diffs)), 1),
        "n_words": diffs.size // 2,
        "n_boundaries": int(diffs.size),
    }
