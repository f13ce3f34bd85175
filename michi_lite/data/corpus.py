"""Build a speech corpus: sentences × voices -> audio files + ``manifest.jsonl``.

The corpus is the ground every later stage trains and is measured on, so it is
built with three guarantees:

* **held out by sentence**: a sentence belongs to exactly one of train, val
  and test, whoever speaks it, so no test sentence is ever heard in training;
* **held out by voice**: a few voice identities speak only test sentences, so
  later stages can report voices they have heard and voices they have not;
* **deterministic and resumable**: the same preset and seed give the same
  plan, and a re-run skips every utterance already written.

Each manifest line is one utterance::

    {"id", "path", "text", "voice", "speaker", "engine", "sample_rate", "duration",
     "split", "voice_split", "category", "alignment", "words", ["whisper_words"], ["phonemes"]}

``words`` are the engine's own word timings where it gives them (``alignment``
is then "engine"), else Whisper's ("whisper"). For a sample of utterances per
engine, ``whisper_words`` holds Whisper's timings too, for the comparison that
``michi-lite eval alignment`` reports. Where the engine says when each
phoneme sounds (espeak), ``phonemes`` holds ``[name, start, end]`` rows that
tile the utterance, pauses named "_", stress marks as ``sentence_phonemes``
writes them.

``--voice`` builds the same plan spoken by one voice alone: every sentence
keeps the split it has in the full corpus, so the one-voice corpus's test
sentences are the full corpus's, never trained on.

Training reads a built corpus (``load_manifest``); the evaluations read any
folder whose ``manifest.jsonl`` has at least ``path`` and ``text`` on each
line (``load_eval_manifest``). Both check every line as they read it and
name the line and the field that is wrong.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import shutil
import subprocess
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..audio import prepare_waveform, save_audio
from ..config import Config, get_config
from .engines import SpeechEngine, Synthesis, Voice, available_engines
from .phonemes import sentence_phonemes, stressed
from .text import Sentence, sentences
from .words import normalize_text

logger = logging.getLogger(__name__)

MAX_UTTERANCE_SECONDS = 30.0
WORD_END_SLACK = 0.005  # resampling may shorten the audio by a sample: a word ending that much past it is clipped
PEAK_LEVEL = 0.9  # engines speak at very different levels; every file is peak-normalised to this


@dataclass(frozen=True)
class PlannedUtterance:
    id: str
    sentence: Sentence
    voice: Voice
    split: str  # train | val | test, decided by the sentence
    voice_split: str  # seen | unseen, decided by the voice


def choose_voices(voices: list[Voice], n_seen: int, n_unseen: int, seed: int) -> tuple[list[Voice], list[Voice]]:
    """Pick the seen and the unseen voices: one voice per speaker, engines in turn.

    A speaker is a person, whatever the pitch or speed (``Voice.speaker``), so
    an unseen voice is never a seen one slowed down. Unseen speakers are picked
    first, from engines that have more than one speaker, leaving each such
    engine at least one speaker for training: an engine heard only through
    unseen voices would confuse "a voice the model has not heard" with "a
    synthesiser it has not heard". Seen speakers then go round all engines.
    """
    rng = np.random.default_rng(seed)
    by_engine: dict[str, list[Voice]] = defaultdict(list)
    for voice in voices:
        by_engine[voice.engine].append(voice)
    queues = {engine: [pool[i] for i in rng.permutation(len(pool))] for engine, pool in sorted(by_engine.items())}
    taken: set[str] = set()  # speakers, across engines: flite and festival share some

    def untaken(engine: str) -> int:
        return len({v.speaker for v in queues[engine]} - taken)

    def take(n: int, engines: list[str], keep: int = 0) -> list[Voice]:
        """Up to ``n`` voices of new speakers, round the engines, leaving ``keep`` speakers in each."""
        picked: list[Voice] = []
        while len(picked) < n:
            progress = False
            for engine in engines:
                if len(picked) == n or untaken(engine) <= keep:
                    continue
                voice = next(v for v in queues[engine] if v.speaker not in taken)
                queues[engine].remove(voice)
                taken.add(voice.speaker)
                picked.append(voice)
                progress = True
            if not progress:
                break
        return picked

    unseen = take(n_unseen, list(queues), keep=1)
    seen = take(n_seen, list(queues))
    return seen, unseen


def split_sequence(val_fraction: float, test_fraction: float) -> Iterator[str]:
    """Splits for a stream of sentences, spread evenly: "train", "val" or "test".

    Each sentence goes to whichever of val and test is a whole sentence behind
    its share so far, else to train, so any prefix of the stream (even a
    24-utterance corpus) holds its fractions to within one sentence.
    """
    given = Counter()
    for n in itertools.count(1):
        behind = {"test": test_fraction * n - given["test"], "val": val_fraction * n - given["val"]}
        split = max(behind, key=behind.get)
        split = split if behind[split] >= 1 - 1e-9 else "train"
        given[split] += 1
        yield split


def turns(voices: list[Voice], by: str) -> Iterator[Voice]:
    """The voices in turn, endlessly: each in turn (``by="voice"``), or each engine in turn, in the
    order its first voice comes, and that engine's voices in turn (``by="engine"``)."""
    if by == "voice":
        return itertools.cycle(voices)
    by_engine: dict[str, list[Voice]] = {}
    for voice in voices:
        by_engine.setdefault(voice.engine, []).append(voice)
    engines = itertools.cycle([itertools.cycle(pool) for pool in by_engine.values()])
    return (next(engine) for engine in engines)


def plan(cfg: Config, voices: list[Voice], only: str | None = None) -> Iterator[PlannedUtterance]:
    """The corpus as a deterministic stream of utterances, longest possible.

    Train and val sentences are spoken by one seen voice each, in turn; a test
    sentence is spoken by a seen voice *and* an unseen one, so the two kinds of
    voice are measured on the same sentences. With ``turns="engine"`` the
    sentences go round the engines first and round each engine's seen voices
    second, so an engine with one speaker gets as many sentences as one with
    thirty (espeak-ng has most of the speakers), and val and test sentences
    go round them in turns of their own, so every split hears every engine.
    Sentences that differ only in case or punctuation ("7 pm", "7 PM.") share
    one split. ``only`` names the one voice that speaks every sentence instead.
    """
    c = cfg.corpus
    if only is None:
        seen, unseen = choose_voices(voices, c.seen_voices, c.unseen_voices, c.seed)
    else:
        seen, unseen = [v for v in voices if v.name == only], []
        if not seen:
            raise ValueError(f"no installed engine has a voice {only!r}")
    if not seen:
        raise RuntimeError("no voice available to speak the corpus")
    seen_turn, unseen_turn = turns(seen, c.turns), itertools.cycle(unseen)
    # Val and test sentences come at a steady period (every 20th for 5%), which shares factors
    # with the number of engines: taking their voices from the same turn as train's would hear
    # them in one or two engines only. With engine turns each has a turn of its own.
    own_turns = {split: turns(seen, c.turns) for split in ("val", "test")} if c.turns == "engine" else {}
    splits = split_sequence(c.val_fraction, c.test_fraction)
    split_of: dict[str, str] = {}
    for index, sentence in enumerate(sentences(c.max_utterances, seed=c.seed)):
        key = normalize_text(sentence.text)
        if key not in split_of:
            split_of[key] = next(splits)
        split = split_of[key]
        train_voice = next(seen_turn)  # a train sentence's voice follows its place in the plan
        speakers = [(next(own_turns[split]) if split in own_turns else train_voice, "seen")]
        if split == "test" and unseen:
            speakers.append((next(unseen_turn), "unseen"))
        for voice, voice_split in speakers:
            yield PlannedUtterance(f"{index:06d}-{voice.name}", sentence, voice, split, voice_split)


def numbered_records(path: Path, log: bool = True) -> Iterator[tuple[int, dict]]:
    """The JSON objects of a .jsonl file, one a line, each with its line number; blank lines are skipped.

    A ``log`` is appended to as work is done, so a killed run may leave its
    last line cut short: that line is skipped with a warning. Any other line
    that is not a JSON object, and in a file written whole (``log=False``:
    a manifest) a cut last line too, raises ValueError naming the line.
    """
    lines = path.read_bytes().splitlines(keepends=True)  # bytes: a cut may split a character too
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            if log and number == len(lines) and not line.endswith(b"\n"):
                logger.warning("%s: ignoring a last line cut short", path)
                continue
            reason = f"{error.msg} at column {error.colno}" if isinstance(error, json.JSONDecodeError) else "not UTF-8"
            raise ValueError(f"{path} line {number}: not a JSON object ({reason})") from error
        if not isinstance(record, dict):
            raise ValueError(f"{path} line {number}: not a JSON object but a {type(record).__name__}")
        yield number, record


def read_records(path: Path) -> list[dict]:
    """The records of a log (``numbered_records``), a cut last line skipped; [] if there is no file yet."""
    return [record for _, record in numbered_records(path)] if path.exists() else []


def speak(utterance: PlannedUtterance, engine: SpeechEngine, sample_rate: int) -> tuple[np.ndarray, Synthesis]:
    """Synthesise one utterance: its waveform at the corpus rate, peak-normalised, and the engine's own output."""
    synthesis = engine.synthesize(utterance.sentence.text, utterance.voice)
    waveform = prepare_waveform(synthesis.waveform, synthesis.sample_rate, sample_rate, source=utterance.id)
    waveform = waveform * (PEAK_LEVEL / float(np.abs(waveform).max()))
    return waveform, synthesis


def phoneme_rows(utterance: PlannedUtterance, synthesis: Synthesis, duration: float) -> list[list]:
    """The engine's timed phonemes as manifest rows ``[name, start, end]``, stress marks added where they agree."""
    spoken = [p.name for p in synthesis.phonemes]
    accent = utterance.voice.settings.get("voice", "en-us").split("+")[0]
    names = stressed(spoken, sentence_phonemes(utterance.sentence.text, accent))
    scale = duration / synthesis.duration  # resampling may shorten the audio by a sample
    return [[name, round(p.start * scale, 4), round(p.end * scale, 4)] for name, p in zip(names, synthesis.phonemes)]


def make_record(utterance: PlannedUtterance, engine: SpeechEngine, cfg: Config, out: Path,
                compare_with_whisper: bool) -> dict | None:
    """Speak, align and save one utterance; its manifest record, or None if it must be skipped."""
    from .alignment import whisper_words  # Whisper loads only once some utterance needs it

    rate = cfg.audio.sample_rate
    try:
        waveform, synthesis = speak(utterance, engine, rate)
    except (ValueError, RuntimeError, subprocess.SubprocessError) as error:  # AudioError is a ValueError
        logger.warning("skipping %s: %s", utterance.id, error)
        return None
    words, duration = synthesis.words, len(waveform) / rate
    if duration > MAX_UTTERANCE_SECONDS:
        logger.warning("skipping %s: %.1f s is longer than %.0f s", utterance.id, duration, MAX_UTTERANCE_SECONDS)
        return None
    record = {
        "id": utterance.id,
        "path": str(Path("audio") / f"{utterance.id}.flac"),
        "text": utterance.sentence.text,
        "voice": utterance.voice.name,
        "speaker": utterance.voice.speaker,
        "engine": utterance.voice.engine,
        "sample_rate": rate,
        "duration": round(duration, 4),
        "split": utterance.split,
        "voice_split": utterance.voice_split,
        "category": utterance.sentence.source,
        "alignment": "engine" if words is not None else "whisper",
    }
    if words is None or compare_with_whisper:
        heard = whisper_words(waveform, rate)
        if not heard:
            logger.warning("skipping %s: Whisper heard no words", utterance.id)
            return None
    if words is None:
        record["words"] = [w.to_dict() for w in heard]
    else:
        record["words"] = [w.to_dict() for w in words]
        if compare_with_whisper:
            record["whisper_words"] = [w.to_dict() for w in heard]
    for w in record["words"]:  # clipped to the duration as written, which is rounded
        if w["end"] <= duration + WORD_END_SLACK:
            w["end"] = min(w["end"], record["duration"])
    broken = [w for w in record["words"] if not 0 <= w["start"] < w["end"] <= record["duration"]]
    if broken:  # no engine or aligner may write a word outside the audio or without time
        logger.warning("skipping %s: word timings outside [0, %.4f] s or empty: %s", utterance.id,
                       record["duration"], broken)
        return None
    if synthesis.phonemes:
        record["phonemes"] = phoneme_rows(utterance, synthesis, duration)
    save_audio(out / record["path"], waveform, rate)
    return record


def build_corpus(cfg: Config, out: str | os.PathLike, voice: str | None = None,
                 engines: list[SpeechEngine] | None = None) -> Path:
    """Build (or finish building) the corpus of ``cfg`` in ``out``, or its plan spoken by one ``voice``.

    ``engines`` (default: every installed corpus engine) speak it. Returns the manifest path.
    """
    out = Path(out)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    engines = {e.name: e for e in (available_engines() if engines is None else engines)}
    if not engines:
        raise RuntimeError(
            "no speech engine is installed: install espeak-ng, flite or festival "
            "(apt install espeak-ng flite festival) or the piper-tts / hibari-tts Python packages"
        )
    voices = [v for e in engines.values() for v in e.voices()]
    c = cfg.corpus
    partial = out / "manifest.partial.jsonl"
    done = {r["id"]: r for r in read_records(partial) if (out / r["path"]).exists()}
    if partial.exists():
        # drop what a killed run left half-written, so appending starts on a clean line
        partial.write_text("".join(json.dumps(r) + "\n" for r in done.values()))
    if done:
        logger.info("resuming: %d utterances already built in %s", len(done), out)

    target_seconds = c.min_hours * 3600
    by_utterances = target_seconds == 0
    bar = tqdm(total=c.max_utterances if by_utterances else target_seconds, desc="corpus",
               unit="utt" if by_utterances else "s audio", unit_scale=not by_utterances)
    records: list[dict] = []
    total_seconds = 0.0
    whisper_compared: Counter = Counter()
    with partial.open("a") as log:
        for utterance in plan(cfg, voices, voice):
            if len(records) >= c.max_utterances or (target_seconds and total_seconds >= target_seconds):
                break
            record = done.get(utterance.id)
            if record is None:
                engine = engines[utterance.voice.engine]
                compare = engine.gives_word_timings and whisper_compared[engine.name] < c.whisper_sample
                record = make_record(utterance, engine, cfg, out, compare)
                if record is None:
                    continue
                log.write(json.dumps(record) + "\n")
                log.flush()  # a killed build loses at most the utterance in flight
            records.append(record)
            whisper_compared[record["engine"]] += "whisper_words" in record
            total_seconds += record["duration"]
            bar.update(1 if by_utterances else record["duration"])
    bar.close()
    if total_seconds < target_seconds:
        logger.warning("the sentence plan ran out at %.2f h of the %.2f h asked for; raise max_utterances",
                       total_seconds / 3600, c.min_hours)

    manifest = out / "manifest.jsonl"
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    tmp.replace(manifest)
    summary = summarize(records, cfg)
    (out / "corpus.json").write_text(json.dumps(summary, indent=2) + "\n")
    logger.info("corpus: %d utterances, %.2f h, %d speakers in %s",
                summary["utterances"], summary["hours"], summary["speakers"], out)
    return manifest


def summarize(records: list[dict], cfg: Config) -> dict:
    """What the corpus holds: sizes per split, engine and voice, and how it was made."""
    hours = sum(r["duration"] for r in records) / 3600
    voices: dict[str, dict] = {}
    for r in records:
        v = voices.setdefault(r["voice"], {"engine": r["engine"], "speaker": r["speaker"],
                                           "voice_split": r["voice_split"], "utterances": 0})
        v["utterances"] += 1
    return {
        "preset": cfg.name,
        "speakers": len({r["speaker"] for r in records}),
        "seed": cfg.corpus.seed,
        "turns": cfg.corpus.turns,
        "sample_rate": cfg.audio.sample_rate,
        "utterances": len(records),
        "hours": round(hours, 4),
        "splits": dict(Counter(r["split"] for r in records)),
        "engines": dict(Counter(r["engine"] for r in records)),
        "categories": dict(Counter(r["category"] for r in records)),
        "alignment": dict(Counter(r["alignment"] for r in records)),
        "voices": voices,
    }


def is_number(value) -> bool:
    """A finite JSON number that a float holds: Python's json also reads NaN, Infinity and 400-digit integers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):  # a bool is an int to Python
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def are_timed_words(value) -> bool:
    return isinstance(value, list) and all(
        isinstance(w, dict) and isinstance(w.get("word"), str) and is_number(w.get("start"))
        and is_number(w.get("end")) for w in value)


def are_timed_phonemes(value) -> bool:
    return isinstance(value, list) and all(
        isinstance(p, list) and len(p) == 3 and isinstance(p[0], str) and is_number(p[1]) and is_number(p[2])
        for p in value)


# what each manifest field must hold, checked as a manifest is read: (test, what it says when it fails)
FIELD_CHECKS = {
    **{name: (lambda v: isinstance(v, str), "a string")
       for name in ("id", "path", "text", "voice", "speaker", "engine", "split", "voice_split", "category",
                    "alignment")},
    "sample_rate": (lambda v: is_number(v) and v == int(v) and v > 0, "a positive whole number"),
    "duration": (lambda v: is_number(v) and v > 0, "a positive number of seconds"),
    "words": (are_timed_words, 'a list of {"word", "start", "end"}'),
    "whisper_words": (are_timed_words, 'a list of {"word", "start", "end"}'),
    "phonemes": (are_timed_phonemes, "a list of [name, start, end]"),
}
# what every built corpus has had on every line (newer fields, like "speaker", may be missing from older ones)
CORPUS_FIELDS = ("id", "path", "text", "voice", "engine", "sample_rate", "duration", "split", "voice_split",
                 "category", "alignment", "words")


def check_record(record: dict, where: str, required: tuple[str, ...]) -> None:
    """Raise ValueError, naming ``where`` and the field, if a field is missing or holds the wrong kind of value."""
    for name in required:
        if name not in record:
            raise ValueError(f"{where}: no {name!r} field")
    for name, (fits, kind) in FIELD_CHECKS.items():
        if name in record and not fits(record[name]):
            raise ValueError(f"{where}: {name!r} should be {kind}, not {json.dumps(record[name])[:60]}")


def read_manifest(path: Path, required: tuple[str, ...]) -> Iterator[tuple[str, dict]]:
    """A manifest's records, each checked (``check_record``) and with where it is; FileNotFoundError if none."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: build the corpus first with `michi-lite data build`")
    for number, record in numbered_records(path, log=False):
        where = f"{path} line {number}"
        check_record(record, where, required)
        yield where, record


def load_manifest(data_dir: str | os.PathLike, split: str | None = None) -> list[dict]:
    """The manifest of a built corpus, optionally one split of it, for training on.

    Raises FileNotFoundError if there is none, and ValueError, naming the
    line and the field, for a line that is not a JSON object, lacks one of
    ``CORPUS_FIELDS`` or holds a value of the wrong kind (``FIELD_CHECKS``).
    """
    records = [r for _, r in read_manifest(Path(data_dir) / "manifest.jsonl", CORPUS_FIELDS)]
    return [r for r in records if split is None or r["split"] == split]


# what the evaluations assume of a line whose manifest does not say (see ``load_eval_manifest``)
EVAL_DEFAULTS = {"split": "test", "voice": "unknown", "voice_split": "unseen", "engine": "unknown", "category": ""}


def load_eval_manifest(data_dir: str | os.PathLike, split: str | None = "test") -> list[dict]:
    """The ``split`` (None: all) of any folder's ``manifest.jsonl``, filled in for measuring on.

    A built corpus's manifest, or any other whose lines have at least
    ``path`` (relative to the folder, or absolute) and ``text``. What a line
    does not say is taken to be ``EVAL_DEFAULTS``: split "test", all one
    voice "unknown", held out ("unseen": who knows whether a training corpus
    had the voice), engine "unknown", category "" (plain); ``id`` is the
    path as written. ``path`` comes back absolute (the evaluation that reads
    it says if no audio is there). Other fields an evaluation needs
    (``words``, ``phonemes``, ...) are its to fill in or to ask for.

    Raises FileNotFoundError if there is no manifest, and ValueError naming
    the line and the field for a line that is not a JSON object, lacks
    ``path`` or ``text``, holds a value of the wrong kind, has a text without
    words, or has another line's ``id``.
    """
    folder = Path(data_dir)
    chosen, ids = [], set()
    for where, record in read_manifest(folder / "manifest.jsonl", ("path", "text")):
        record = {**EVAL_DEFAULTS, "id": record["path"], **record}
        if not normalize_text(record["text"]):
            raise ValueError(f"{where}: 'text' has no words to measure against")
        if record["id"] in ids:
            raise ValueError(f"{where}: the id {record['id']!r} is an earlier line's too; give each line its own")
        ids.add(record["id"])
        if split is None or record["split"] == split:
            record["path"] = str((folder / record["path"]).resolve())
            chosen.append(record)
    return chosen


def subset_corpus(data_dir: str | os.PathLike, out: str | os.PathLike, hours: float,
                  splits: tuple[str, ...] = ("train",), seed: int = 0) -> Path:
    """Copy about ``hours`` of a built corpus's ``splits`` into ``out``, spread evenly over its speakers.

    Speakers take turns, each giving its utterances in a seeded random order,
    until the hours are reached, so a small subset still holds every voice.
    Sentences stay in the splits they had, so the source's test split remains
    unheard by anything trained on the subset. For a stage trained where the
    whole corpus cannot go (a lent GPU that takes a few dozen MB, say).
    Returns the new manifest.
    """
    if hours <= 0:
        raise ValueError(f"hours must be positive, not {hours}")
    source, out = Path(data_dir), Path(out)
    if out.resolve() == source.resolve():
        raise ValueError("the subset must go to another directory than its corpus")
    about = json.loads((source / "corpus.json").read_text())
    by_speaker: dict[str, list[dict]] = defaultdict(list)
    for record in load_manifest(source):
        if record["split"] in splits:
            by_speaker[record["speaker"]].append(record)
    if not by_speaker:
        raise ValueError(f"{source}: no utterances in the split(s) {', '.join(splits)}")
    rng = np.random.default_rng(seed)
    queues = [[by_speaker[s][i] for i in rng.permutation(len(by_speaker[s]))] for s in sorted(by_speaker)]
    chosen: list[dict] = []
    total = 0.0
    for record in (r for turn in itertools.zip_longest(*queues) for r in turn if r is not None):
        if total >= hours * 3600:
            break
        chosen.append(record)
        total += record["duration"]

    (out / "audio").mkdir(parents=True, exist_ok=True)
    for record in tqdm(chosen, desc="subset", unit="utt"):
        shutil.copyfile(source / record["path"], out / record["path"])
    manifest = out / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in chosen))
    summary = summarize(chosen, get_config(about["preset"]))
    summary["subset_of"] = {"corpus": str(source), "hours": hours, "splits": list(splits), "seed": seed}
    (out / "corpus.json").write_text(json.dumps(summary, indent=2) + "\n")
    logger.info("subset: %d utterances, %.2f h, %d speakers in %s",
                summary["utterances"], summary["hours"], summary["speakers"], out)
    return manifest
