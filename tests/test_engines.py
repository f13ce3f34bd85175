"""Every installed speech engine speaks plausibly, times its words and refuses empty text."""

from __future__ import annotations

import re

import numpy as np
import pytest

from michi_lite.data.engines import ENGINES, SpeechEngine, all_voices, get_engine, synthesize

SENTENCE = "The quick brown fox jumps over the lazy dog."
SENTENCE_WORDS = ["The", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog"]


def engine_or_skip(name: str) -> SpeechEngine:
    try:
        return get_engine(name)
    except RuntimeError as missing:
        pytest.skip(str(missing))


def assert_words_are_timed(words, expected: list[str], duration: float) -> None:
    assert [w.word for w in words] == expected
    for word, following in zip(words, words[1:]):
        assert word.end <= following.start + 1e-6, (word, following)
    assert all(0.0 <= w.start < w.end <= duration + 1e-3 for w in words), words


@pytest.mark.parametrize("name", list(ENGINES))
def test_engine_speaks_a_sentence_as_float32_audio_of_plausible_length(name):
    engine = engine_or_skip(name)
    result = engine.synthesize(SENTENCE, engine.voices()[0])
    waveform = result.waveform
    assert waveform.dtype == np.float32 and waveform.ndim == 1
    assert 1.0 < result.duration < 6.0
    assert np.abs(waveform).max() <= 1.0
    assert np.sqrt(np.mean(waveform**2)) > 0.01  # not silence
    if engine.gives_word_timings:
        assert result.words is not None
    if result.words is not None:
        assert_words_are_timed(result.words, SENTENCE_WORDS, result.duration)


@pytest.mark.parametrize("name", list(ENGINES))
def test_word_timings_follow_the_written_words(name):
    # espeak speaks "in the" as one word and every engine reads "1,250" as several;
    # the timings still come back one per written word.
    engine = engine_or_skip(name)
    if not engine.gives_word_timings:
        pytest.skip(f"{name} gives no word timings")
    result = engine.synthesize("“Well,” it is in the house of 1,250 people.", engine.voices()[0])
    if result.words is None:  # piper times only sentences it can pair word for word
        pytest.skip(f"{name} could not pair its words with the text")
    expected = ["Well", "it", "is", "in", "the", "house", "of", "1,250", "people"]
    assert_words_are_timed(result.words, expected, result.duration)


@pytest.mark.parametrize("name", list(ENGINES))
@pytest.mark.parametrize("text", ["", "   ", "?! —"])
def test_text_with_nothing_to_say_is_refused(name, text):
    engine = engine_or_skip(name)
    with pytest.raises(ValueError, match="text is empty"):
        engine.synthesize(text, engine.voices()[0])


def test_voices_are_many_unique_stable_and_filesystem_safe():
    voices = all_voices()
    assert len(voices) >= 4
    names = [v.name for v in voices]
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9.-]*", n) for n in names), names
    assert all_voices() == voices


def test_synthesize_dispatches_on_the_voice_and_checks_it():
    voices = all_voices()
    if not voices:
        pytest.skip("no speech engine installed")
    voice = voices[0]
    assert synthesize("Hello.", voice).waveform.size > 0
    other = next((name for name in ENGINES if name != voice.engine), None)
    with pytest.raises(ValueError, match="belongs to"):
        ENGINES[other]().synthesize("Hello.", voice)
    with pytest.raises(ValueError, match="unknown speech engine"):
        get_engine("no-such-engine")
