"""How written chunks sound: espeak-ng's phonemes and their ids."""

from michi_lite.data.frames import token_chunks
from michi_lite.data.phonemes import (
    N_PHONEME_IDS,
    PAD_PHONEME,
    UNKNOWN_PHONEME,
    chunk_phoneme_ids,
    chunk_phonemes,
    phoneme_id,
    phoneme_name,
)


def test_a_word_becomes_its_phonemes_with_stress():
    assert chunk_phonemes("Hello,") == ["h", "@", "l", "'oU"]  # punctuation says nothing
    assert chunk_phonemes("cat") == ["k", "'a", "t"]


def test_numbers_and_abbreviations_are_read_as_words():
    # espeak-ng's number rules pick a slightly different vowel than its dictionary's "forty"
    assert [p.lstrip("'") for p in chunk_phonemes("42")] == ["f", "o@", "t#", "i", "t", "u:"]
    assert chunk_phonemes("Dr.") == chunk_phonemes("doctor")


def test_ids_tell_stress_apart_and_fit_the_table():
    ids = {phoneme_id(name) for name in ("oU", ",oU", "'oU")}
    assert len(ids) == 3 and all(PAD_PHONEME < i < N_PHONEME_IDS for i in ids) and UNKNOWN_PHONEME not in ids
    assert phoneme_id("not-a-phoneme") == UNKNOWN_PHONEME
    assert [phoneme_name(phoneme_id(name)) for name in chunk_phonemes("Hello")] == chunk_phonemes("Hello")


def test_a_silent_chunk_has_no_phonemes_and_a_long_one_is_cut():
    assert chunk_phonemes("...") == []
    assert len(chunk_phoneme_ids("1,250,000", 8)) == 8 < len(chunk_phonemes("1,250,000"))


def test_every_token_belongs_to_the_chunk_it_starts_in_or_the_next(tokenizer):
    ids, chunk_of = token_chunks("The 1,250,000 people", tokenizer)
    assert len(ids) == len(chunk_of) and chunk_of[0] == 0 and chunk_of[-1] == 2
    assert chunk_of == sorted(chunk_of) and set(chunk_of) == {0, 1, 2}
    assert token_chunks("", tokenizer) == ([], [])
