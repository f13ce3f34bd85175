"""The acoustic voice: a text stream's words voiced a frame at a time, as ``speak`` voices them whole."""

from __future__ import annotations

import pytest
import torch

from michi_lite.acoustic import AcousticModel, acoustic_config, lay_out, text_phoneme_ids
from michi_lite.audio import SILENCE_MEL
from michi_lite.data.phonemes import PAD_PHONEME
from michi_lite.voicing import MAX_LAG_FRAMES, MAX_PAUSE_FRAMES, AcousticVoice, word_phoneme_ids

pytestmark = pytest.mark.usefixtures("one_thread")

SENTENCE = "The bakery on Elm Road opens at seven, and it closes when the bread runs out, usually by noon."


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return AcousticModel(acoustic_config("tiny")).eval()


def voice_of(model: AcousticModel, steps: int = 1, delay_frames: int = 2) -> AcousticVoice:
    voice = model.voice(torch.randn(1, 40, model.cfg.audio.n_mels, generator=torch.Generator().manual_seed(1)))
    return AcousticVoice(model, voice, steps, delay_frames, torch.Generator().manual_seed(0))


def is_silence(patch: torch.Tensor) -> bool:
    return bool((patch == SILENCE_MEL).all())


@pytest.mark.parametrize("steps", [0, 2])
def test_a_sentence_laid_whole_is_voiced_frame_by_frame_as_speak_voices_it(model, steps):
    voicer = voice_of(model, steps)
    phonemes = text_phoneme_ids(SENTENCE)
    durations = torch.randint(2, 12, phonemes.shape, generator=torch.Generator().manual_seed(2))
    durations[-1] = voicer.per_frame  # ``end`` closes with at least a frame's pause
    durations = lay_out(durations, voicer.per_frame)
    whole, _ = model.speak(phonemes, voicer.voice, steps, durations=durations, temperature=0.0)
    assert len(whole) * voicer.per_frame > 2 * model.cfg.window  # long enough for the window to slide
    voicer.lay(SENTENCE, phonemes.tolist(), durations.tolist())
    voicer.end()
    streamed = torch.stack([voicer.next_patch() for _ in range(len(whole))])
    torch.testing.assert_close(streamed, whole, atol=1e-5, rtol=1e-5)
    assert is_silence(voicer.next_patch()) and not voicer.phonemes  # said: silence, and the stream let go


def test_tokens_are_gathered_into_words_and_the_voice_starts_a_lead_behind_the_first(model):
    voicer = voice_of(model, delay_frames=2)
    stream = [" The", " bak", "ery", None, None, " opens", ",", " and", None, None, None, None]
    patches = []
    for token in stream:
        if token is not None:
            voicer.token(token)
        patches.append(voicer.next_patch())
        if len(patches) == 3:
            assert list(voicer.words) == ["The"]  # "bak" started the next word: "The" is whole
    assert list(voicer.words) == ["The", "bakery", "opens,", "and"]  # a frame with no token ends a word
    assert [is_silence(p) for p in patches[:3]] == [True, True, False]  # the delay, then "The"
    assert word_phoneme_ids("opens,")[-1] == PAD_PHONEME and word_phoneme_ids("opens")[-1] != PAD_PHONEME


def test_the_voice_pauses_for_a_late_word_then_falls_silent_and_starts_afresh(model):
    voicer = voice_of(model, delay_frames=0)
    voicer.lay("Hello")
    frames = voicer.laid_to // voicer.per_frame
    for _ in range(frames + MAX_PAUSE_FRAMES):
        assert not is_silence(voicer.next_patch())  # the word, then the model's own pause
    assert voicer.phonemes[-1] == PAD_PHONEME and voicer.paused == MAX_PAUSE_FRAMES
    assert is_silence(voicer.next_patch()) and not voicer.phonemes  # then plain silence, nothing kept
    voicer.token(" again")
    voicer.next_patch()
    voicer.next_patch()  # a frame with no token: "again" is whole
    assert list(voicer.words) == ["again"] and voicer.phonemes[0] == PAD_PHONEME  # a new utterance's pause first


def test_the_end_of_a_turn_finishes_the_word_being_said_and_drops_the_rest(model):
    voicer = voice_of(model, delay_frames=1)
    for word in SENTENCE.split():
        voicer.lay(word)
    laid, starts = voicer.laid_to, voicer.word_starts
    voicer.next_patch()
    voicer.end()
    kept = voicer.word_starts
    assert voicer.laid_to < laid and voicer.laid_to % voicer.per_frame == 0
    assert kept == [start for start in starts if start <= voicer.per_frame + voicer.delay_frames * voicer.per_frame]
    assert list(voicer.words) == SENTENCE.split()[:len(kept)]
    frames = (voicer.laid_to - voicer.column) // voicer.per_frame
    assert not any(is_silence(voicer.next_patch()) for _ in range(frames))
    assert is_silence(voicer.next_patch())


def test_a_long_stream_keeps_a_window_of_the_same_size(model):
    voicer = voice_of(model, delay_frames=0)
    for word in ((SENTENCE + " ") * 12).split():
        voicer.token(" " + word)
        for _ in range(3):
            voicer.next_patch()
            # what it keeps behind the voice: the columns its convolutions read (from the phoneme they start
            # in on), and their result as far back as the attention reads
            if voicer.phonemes:
                ahead = model.cfg.lookahead_columns
                assert voicer.column - voicer.first_column < voicer.per_frame + ahead + voicer.durations[0]
                assert voicer.convolved.shape[1] <= voicer.reach + ahead
    assert voicer.first_column > 10 * model.cfg.window  # it spoke on, one utterance


def test_a_new_word_is_held_while_the_voice_is_far_behind_and_a_word_s_next_token_never_is(model):
    voicer = voice_of(model, delay_frames=0)
    phonemes = word_phoneme_ids("one")
    voicer.lay("one", phonemes, [MAX_LAG_FRAMES * voicer.per_frame] * len(phonemes))  # after a frame's pause
    voicer.token(" inter")
    assert voicer.lag_frames > MAX_LAG_FRAMES
    assert voicer.admits("national")  # a word's next token: words are not cut in two
    voicer.token("national")
    assert not voicer.admits(" two") and list(voicer.words) == ["one", "international"]  # laid, then held
    while voicer.lag_frames > MAX_LAG_FRAMES:
        voicer.next_patch()
    assert voicer.admits(" two")


def test_words_laid_one_by_one_get_the_durations_the_whole_sentence_would(model):
    voicer = voice_of(model)
    model.durations.out[-1].bias.data += 1.5  # durations of a few columns: rounding does not hide a difference
    try:
        for word in SENTENCE.split():
            voicer.lay(word)
        phonemes = torch.tensor([voicer.phonemes])
        whole = model.durations.columns(phonemes, voicer.voice)[0].tolist()
    finally:
        model.durations.out[-1].bias.data -= 1.5
    assert voicer.durations[1:] == whole[1:]  # all but the opening pause, which is kept short
