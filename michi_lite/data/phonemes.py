"""How written words sound: espeak-ng's phonemes for each whitespace-separated chunk of text.

The speech model reads SmolLM2's tokens, which say what a word is but not
how it sounds; learning the sound of each of 49k tokens from hours of speech
is slow. espeak-ng's rules and dictionary already know it, including how to
read "1,250,000", "Dr." or "$5", so the speaking head is also shown the
phonemes of the chunk being voiced (``michi_lite.model``).

A chunk is phonemised on its own, without its sentence: a homograph ("read")
gets one reading. Each phoneme becomes one id of a fixed table: espeak-ng's
English phoneme names (``PHONEMES``) times three stress levels (none,
secondary, primary), after ``PAD_PHONEME`` and ``UNKNOWN_PHONEME``.

    >>> chunk_phonemes("Hello,")
    ['h', '@', 'l', "'oU"]
"""

from __future__ import annotations

import ctypes
import functools
import re
import threading

# espeak-ng's English phoneme names (the en-us voice), most frequent first in the lite corpus's text
PHONEMES = (
    "n", "t", "d", "s", "I", "D", "l", "a", "r", "V", "m", "E", "z", "eI", "i:", "f", "k", "@2", "v", "@",
    "aI", "w", "h", "p", "b", "u:", "i", "3", "oU", "T", "0", "aU", "I#", "3:", "I2", "t#", "S", "O@", "O2",
    "N", "g", "j", "dZ", "o@", "O:", "tS", "A@", "t2", "U", "e@", "@L", "a#", "OI", "aa", "i@", "i@3", "U@",
    "A:", "r-", "aI@", "aI3", "@-", "n-", "Z", "O", "e", "o", "aI2", "l-", "x", "?",
)
STRESS_MARKS = {"": 0, ",": 1, "'": 2}  # espeak-ng writes stress before the phoneme it falls on
PAD_PHONEME, UNKNOWN_PHONEME = 0, 1  # PAD is also the id of a pause: no phoneme sounds
PAUSE = "_"  # a pause's name in a timed phoneme sequence (``engines.TimedPhoneme``)
N_PHONEME_IDS = 2 + 3 * len(PHONEMES)
_INDEX = {name: i for i, name in enumerate(PHONEMES)}

_ESPEAK_SYNCHRONOUS, _ESPEAK_DONT_EXIT, _ESPEAK_CHARS_UTF8 = 2, 0x8000, 1
_ESPEAK_PHONEME_EVENTS = 0x0001  # as the espeak engine initialises the library it shares with us
_SEPARATOR = "_"
espeak_lock = threading.RLock()  # the library is one per process: the espeak engine holds this lock too
_library: ctypes.CDLL | None = None
_voice: str | None = None  # the voice last selected in the library, by either of us


class PhonemizerError(RuntimeError):
    pass


def _espeak() -> ctypes.CDLL:
    global _library
    if _library is None:
        try:
            lib = ctypes.CDLL("libespeak-ng.so.1")
        except OSError as e:
            raise PhonemizerError("phonemes need libespeak-ng (apt install espeak-ng)") from e
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int]
        if lib.espeak_Initialize(_ESPEAK_SYNCHRONOUS, 0, None, _ESPEAK_DONT_EXIT | _ESPEAK_PHONEME_EVENTS) <= 0:
            raise PhonemizerError("libespeak-ng failed to initialise")
        if select_voice(lib, "en-us") != 0:
            raise PhonemizerError("libespeak-ng has no en-us voice")
        _library = lib
    return _library


def select_voice(lib: ctypes.CDLL, name: str) -> int:
    """Select espeak-ng's voice ``name`` unless it is selected already; 0 if it exists.

    The caller holds ``espeak_lock``. Selecting a voice loads its files, and
    queues an event that the next synthesis delivers (see ``EspeakEngine``).
    """
    global _voice
    if name == _voice:
        return 0
    status = lib.espeak_SetVoiceByName(name.encode())
    _voice = name if status == 0 else None
    return status


def _clauses(text: str, accent: str) -> list[list[str]]:
    """espeak-ng's phonemes of ``text``, clause by clause, as names with stress marks attached."""
    with espeak_lock:
        lib = _espeak()
        select_voice(lib, accent)  # the speech engine may have left another voice set
        buffer = ctypes.create_string_buffer(text.encode("utf-8"))
        cursor = ctypes.c_char_p(ctypes.addressof(buffer))
        clauses = []
        while cursor.value:  # espeak-ng phonemises one clause per call and moves the cursor on
            out = lib.espeak_TextToPhonemes(ctypes.byref(cursor), _ESPEAK_CHARS_UTF8, ord(_SEPARATOR) << 8)
            clauses.append((out or b"").decode("utf-8", "replace"))
    # ":" marks a pause and ";" palatalises the phoneme before it: neither is a sound of its own
    names = [re.split(r"[_\s]+", clause.replace(";", "")) for clause in clauses]
    return [[n.lstrip(":") for n in clause if n.lstrip(":") not in ("", "!")] for clause in names]


@functools.lru_cache(maxsize=65536)
def chunk_phonemes(chunk: str) -> list[str]:
    """One chunk of written text -> its phonemes as espeak-ng names, stress marks attached ([] if silent)."""
    return [name for clause in _clauses(chunk, "en-us") for name in clause]


def sentence_phonemes(text: str, accent: str = "en-us") -> list[str]:
    """What espeak-ng would say for ``text``, as the speaking path reads it: a pause, then each clause and a pause.

    The same sequence, less stress marks, as espeak-ng speaks with its
    phoneme events (``engines.TimedPhoneme``), but without their timing: how
    long each phoneme lasts is for the model to say.

        >>> sentence_phonemes("Hi, you.")
        ['_', 'h', "'aI", '_', 'j', "u:", '_']
    """
    names = [PAUSE]
    for clause in _clauses(text, accent):
        if clause:
            names += [*clause, PAUSE]
    return names


def stressed(spoken: list[str], written: list[str]) -> list[str]:
    """The names espeak-ng spoke (no stress marks), with the stress marks of ``written`` where the two agree.

    ``written`` is ``sentence_phonemes`` of the same text; where its phonemes,
    stripped of stress, are not the spoken ones in the same order, ``spoken``
    comes back as it is.
    """
    def bare(names: list[str]) -> list[str]:
        return [n.lstrip(",'") for n in names if n != PAUSE]

    if bare(spoken) != bare(written):
        return spoken
    marked = iter(n for n in written if n != PAUSE)
    return [name if name == PAUSE else next(marked) for name in spoken]


def phoneme_id(name: str) -> int:
    """One phoneme name with its stress mark (``"'oU"``) -> its id in the table (a pause: ``PAD_PHONEME``)."""
    if name == PAUSE:
        return PAD_PHONEME
    stress = STRESS_MARKS.get(name[:1], 0)
    index = _INDEX.get(name[1:] if stress else name)
    return UNKNOWN_PHONEME if index is None else 2 + 3 * index + stress


def phoneme_name(phoneme: int) -> str:
    """The inverse of ``phoneme_id``: ``""`` for PAD, ``"?"`` for an unknown phoneme."""
    if phoneme in (PAD_PHONEME, UNKNOWN_PHONEME):
        return "" if phoneme == PAD_PHONEME else "?"
    index, stress = divmod(phoneme - 2, 3)
    return ("", ",", "'")[stress] + PHONEMES[index]


def chunk_phoneme_ids(chunk: str, max_phonemes: int, known: dict[str, list[str]] | None = None) -> list[int]:
    """A chunk's phoneme ids, at most ``max_phonemes`` (a long number is cut: its end is rarely reached).

    ``known`` maps chunks to phonemes computed before (a training pack's,
    ``data.pack``); a chunk found there is not asked of espeak-ng.
    """
    names = known[chunk] if known is not None and chunk in known else chunk_phonemes(chunk)
    return [phoneme_id(name) for name in names[:max_phonemes]]
