"""The held-out voices: engines no model trains on, speaking a corpus's test sentences."""

from __future__ import annotations

import numpy as np
import pytest

from michi_lite.cli import main
from michi_lite.data import held_out
from michi_lite.data.corpus import load_eval_manifest, load_manifest
from michi_lite.data.engines import ENGINES, SpeechEngine, Synthesis, Voice
from michi_lite.data.held_out import HELD_OUT_ENGINES, SPARE_SPEAKERS, build_held_out_set, spare_voice_engines
from michi_lite.data.words import Word


class ToneEngine(SpeechEngine):
    """Stands in for an installed held-out engine: a tone per word, at another rate than 16 kHz."""

    name = "tone"
    gives_word_timings = False

    def available(self) -> tuple[bool, str]:
        return True, ""

    def voices(self) -> list[Voice]:
        return [Voice(self.name, f"tone-{hz}", (("hz", hz),)) for hz in (200, 300)]

    def synthesize(self, text: str, voice: Voice) -> Synthesis:
        seconds = 0.3 * len(self._check(text, voice).split())
        t = np.arange(int(seconds * 22_050)) / 22_050
        return Synthesis((0.3 * np.sin(2 * np.pi * voice.settings["hz"] * t)).astype(np.float32), 22_050, None)


def test_no_held_out_engine_is_one_the_corpus_trains_on():
    assert not set(HELD_OUT_ENGINES) & set(ENGINES)


def test_the_held_out_set_speaks_test_sentences_in_every_voice_and_resumes(tiny_corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(held_out, "HELD_OUT_ENGINES", {"tone": ToneEngine})
    monkeypatch.setattr(held_out, "_engines", {})
    records = build_held_out_set(tiny_corpus, tmp_path, per_voice=2)
    test_sentences = {r["text"] for r in load_manifest(tiny_corpus, "test")}
    assert len(records) == 4 and {r["voice"] for r in records} == {"tone-200", "tone-300"}
    assert all(r["text"] in test_sentences for r in records)
    assert len({r["text"] for r in records}) == min(4, len(test_sentences))  # the voices take turns
    loaded = load_eval_manifest(tmp_path)
    assert [r["id"] for r in loaded] == [r["id"] for r in records]
    assert {r["voice_split"] for r in loaded} == {"unseen"} and {r["engine"] for r in loaded} == {"tone"}
    assert {r["sample_rate"] for r in records} == {16_000}

    first = tmp_path / records[0]["path"]
    written = first.stat().st_mtime_ns
    more = build_held_out_set(tiny_corpus, tmp_path, per_voice=3)  # a longer build keeps what is there
    assert first.stat().st_mtime_ns == written
    assert [r["path"] for r in more][:2] == [r["path"] for r in records][:2]


class TimedToneEngine(ToneEngine):
    """A held-out engine's spare voices, standing in: a timed tone per word."""

    gives_word_timings = True

    def synthesize(self, text: str, voice: Voice) -> Synthesis:
        words = self._check(text, voice).split()
        spoken = super().synthesize(text, voice)
        return Synthesis(spoken.waveform, spoken.sample_rate, [Word(w, 0.3 * i, 0.3 * i + 0.25)
                                                               for i, w in enumerate(words)])


def test_the_spare_voices_are_none_of_the_test_sets():
    for name, speakers in SPARE_SPEAKERS.items():
        engine = HELD_OUT_ENGINES[name](speakers)
        assert not set(speakers) & set(HELD_OUT_ENGINES[name].speakers)
        assert {v.settings["speaker"] for v in engine.voices()} == set(speakers)
        assert not {v.name for v in engine.voices()} & {v.name for v in HELD_OUT_ENGINES[name]().voices()}
    assert "slt" not in SPARE_SPEAKERS["rhvoice"]  # flite's and festival's held-out slt is the same person
    assert "pico" not in SPARE_SPEAKERS  # Pico stays an engine no model hears


def test_a_spare_voice_corpus_is_spoken_by_them_alone_every_voice_seen(tmp_path, monkeypatch):
    monkeypatch.setattr(held_out, "spare_voice_engines", lambda: [TimedToneEngine()])
    main(["data", "build", "--preset", "tiny", "--spare-voices", "--out", str(tmp_path)])
    records = load_manifest(tmp_path)
    assert {r["voice"] for r in records} == {"tone-200", "tone-300"} and {r["engine"] for r in records} == {"tone"}
    assert {r["voice_split"] for r in records} == {"seen"}  # no voice is kept for testing: they are all spare
    assert {r["split"] for r in records} >= {"train", "test"}


def test_spare_voices_of_an_engine_not_installed_are_a_clear_error(monkeypatch):
    monkeypatch.setattr(held_out.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="rhvoice: not installed.*listener_test_sets.sh"):
        spare_voice_engines()


@pytest.mark.parametrize("name", sorted(HELD_OUT_ENGINES))
def test_each_installed_held_out_engine_speaks(name):
    engine = HELD_OUT_ENGINES[name]()
    ok, reason = engine.available()
    if not ok:
        pytest.skip(reason)
    voice = engine.voices()[0]
    spoken = engine.synthesize("Good morning, how are you?", voice)
    assert spoken.waveform.dtype == np.float32 and spoken.duration > 0.5
    assert 0.01 < np.abs(spoken.waveform).max() <= 1.0
    with pytest.raises(ValueError, match="empty"):
        engine.synthesize("  ", voice)
