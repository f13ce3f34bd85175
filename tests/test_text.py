"""The corpus's sentences: deterministic, distinct, speakable, and a mix of every source."""

from __future__ import annotations

import random
import re
import shutil
from collections import Counter

import pytest

from michi_lite.data import text
from michi_lite.data.text import MAX_WORDS, MIN_WORDS, STRESS_CATEGORIES, Sentence, sentences

HAVE_BIBLE = shutil.which(text.BIBLE_COMMAND) is not None
HAVE_FORTUNES = text.FORTUNE_DIR.is_dir()


@pytest.fixture(scope="module")
def mix() -> list[Sentence]:
    return sentences(400, seed=0)


@pytest.fixture
def corpora_cache_cleared():
    """Forget the cached corpora before and after a test that points them elsewhere."""
    text.bible_sentences.cache_clear()
    text.fortune_sentences.cache_clear()
    yield
    text.bible_sentences.cache_clear()
    text.fortune_sentences.cache_clear()


def test_sentences_are_deterministic_for_a_seed(mix):
    assert sentences(400, seed=0) == mix


def test_another_seed_gives_other_sentences(mix):
    other = {s.text for s in sentences(400, seed=1)}
    assert len(other & {s.text for s in mix}) < 40


def test_sentences_are_distinct(mix):
    assert len(mix) == 400
    assert len({s.text for s in mix}) == 400


def test_every_stress_category_is_produced(mix):
    sources = Counter(s.source for s in mix)
    for category in STRESS_CATEGORIES:
        assert sources[f"stress:{category}"] > 0, category


@pytest.mark.skipif(not (HAVE_BIBLE and HAVE_FORTUNES), reason="needs Debian bible-kjv and fortunes")
def test_mix_follows_the_source_shares():
    sources = Counter(s.source.split(":")[0] for s in sentences(1000, seed=3))
    assert sources == {"bible": 400, "fortune": 300, "stress": 300}


def test_sentences_are_plain_ascii_of_speakable_length(mix):
    for s in mix:
        assert MIN_WORDS <= len(s.text.split()) <= MAX_WORDS, s
        assert s.text.isascii() and s.text.isprintable(), s
        assert re.match(r"[A-Z0-9\"']", s.text) and s.text[-1] in ".?!\"'", s


@pytest.mark.skipif(not HAVE_BIBLE, reason="needs Debian bible-kjv")
def test_bible_sentences_carry_no_verse_numbers_or_shouted_names():
    bible = text.bible_sentences()
    assert len(bible) > 30_000
    assert "In the beginning God created the heaven and the earth." in bible
    for sentence in bible:
        assert not re.search(r"\d", sentence), sentence
        assert not re.search(r"\b[A-Z]{2,}\b", sentence), sentence  # LORD -> Lord


def test_fortune_filter_keeps_only_short_plain_sayings(tmp_path, monkeypatch, corpora_cache_cleared):
    (tmp_path / "wisdom").write_text(
        "A stitch in time saves nine.\n%\n"
        "Be yourself; everyone else is already taken.\n\t\t-- Oscar Wilde\n%\n"
        "The first paragraph is long enough to keep.\n\nBut there is a second one.\n%\n"
        "Q: Why did the chicken cross the road?\nA: To get to the other side.\n%\n"
        "I am using my X-RAY VISION on this potato.\n%\n"
        "Too short.\n%\n"
        "A fool and his money\nare soon parted.\n%\n"
    )
    (tmp_path / "wisdom.dat").write_bytes(b"\x00\x01 index, not text")
    (tmp_path / "off").mkdir()
    (tmp_path / "off" / "rude").write_text("This rude saying must never be spoken.\n%\n")
    monkeypatch.setattr(text, "FORTUNE_DIR", tmp_path)
    assert text.fortune_sentences() == ("A stitch in time saves nine.", "A fool and his money are soon parted.")


def test_missing_corpora_fall_back_to_stress_sentences(tmp_path, monkeypatch, caplog, corpora_cache_cleared):
    monkeypatch.setattr(text, "BIBLE_COMMAND", "no-such-bible-program")
    monkeypatch.setattr(text, "FORTUNE_DIR", tmp_path / "no-fortunes")
    with caplog.at_level("WARNING", logger=text.__name__):
        got = sentences(70, seed=0)
    assert len({s.text for s in got}) == 70
    assert Counter(s.source for s in got) == {f"stress:{c}": 10 for c in STRESS_CATEGORIES}
    assert "bible-kjv" in caplog.text and "fortunes" in caplog.text  # the apt packages to install


def test_stress_sentences_fill_every_slot():
    rng = random.Random(0)
    for category in STRESS_CATEGORIES:
        for _ in range(300):
            sentence = text.stress_sentence(category, rng)
            assert "{" not in sentence and ".." not in sentence, sentence


def test_ordinals_take_the_english_suffix():
    numbers = (1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 101, 111, 112)
    assert [text._ordinal(n) for n in numbers] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd", "101st", "111th", "112th",
    ]
