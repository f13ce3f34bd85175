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

    {"id", "path", "text", "voice", "engine", "sample_rate", "duration",
     "split", "voice_split", "category", "alignment", "words", ["whisper_words"]}

``words`` are the engine's own word timings where it gives them (``alignment``
is then "engine"), else Whisper's ("whisper"). For a sample of utterances per
engine, ``whisper_words`` holds Whisper's timings too, for the comparison that
``michi-lite eval alignment`` reports.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr
from tqdm.auto import tqdm

from ..audio import AudioError, save_audio, validate_waveform
from ..config import Config
from .engines import SpeechEngine, Voice, available_engines
from .text import Sentence, sentences

logger = logging.getLogger(__name__)

MAX_UTTERANCE_SECONDS = 30.0
PEAK_LEVEL = 0.9  # engines speak at very different levels; every file is peak-normalised to this


@dataclass(frozen=True)
class PlannedUtterance:
    id: str
    sentence: Sentence
    voice: Voice
    split: str  # train | val | test, decided by the sentence
    voice_split: str  # seen | unseen, decided by the voice


def choose_voices(voices: list[Voice], n_seen: int, n_unseen: int, seed: int) -> tuple[list[Voice], list[Voice]]:
    """Pick the seen and the unseen voices, taking engines in turn.

    Seen voices go round the engines so that every engine is heard. Unseen
    voices then go round the engines the seen voices came from: an engine
    heard only through unseen voices would confuse "a voice the model has not
    heard" with "a synthesiser it has not heard".
    """
    rng = np.random.default_rng(seed)
    by_engine: dict[str, list[Voice]] = defaultdict(list)
    for voice in voices:
        by_engine[voice.engine].append(voice)
    queues = {engine: [pool[i] for i in rng.permutation(len(pool))] for engine, pool in sorted(by_engine.items())}

    def take(n: int, engines: list[str]) -> list[Voice]:
        picked: list[Voice] = []
        while len(picked) < n and any(queues[e] for e in engines):
            for engine in engines:
                if queues[engine] and len(picked) < n:
                    picked.append(queues[engine].pop(0))
        return picked

    seen = take(n_seen, list(queues))
    unseen = take(n_unseen, sorted({v.engine for v in seen}))
    return seen, unseen


def sentence_split(index: int, val_fraction: float, test_fraction: float) -> str:
    """Spread val and test sentences evenly through the stream.

    Bresenham-style counting gives exactly the asked fractions on any prefix,
    so even a 24-utterance corpus has test and val sentences.
    """
    if int((index + 1) * test_fraction) > int(index * test_fraction):
        return "test"
    if int((index + 1) * val_fraction + 0.5) > int(index * val_fraction + 0.5):
        return "val"
    return "train"


def plan(cfg: Config, voices: list[Voice]) -> Iterator[PlannedUtterance]:
    """The corpus as a deterministic stream of utterances, longest possible.

    Train and val sentences are spoken by one seen voice each, in turn; a test
    sentence is spoken by a seen voice *and* an unseen one, so the two kinds of
    voice are measured on the same sentences.
    """
    c = cfg.corpus
    seen, unseen = choose_voices(voices, c.seen_voices, c.unseen_voices, c.seed)
    if not seen:
        raise RuntimeError("no voice available to speak the corpus")
    seen_turn, unseen_turn = itertools.cycle(seen), itertools.cycle(unseen)
    for index, sentence in enumerate(sentences(c.max_utterances, seed=c.seed)):
        split = sentence_split(index, c.val_fraction, c.test_fraction)
        speakers = [(next(seen_turn), "seen")]
        if split == "test" and unseen:
            speakers.append((next(unseen_turn), "unseen"))
        for voice, voice_split in speakers:
            yield PlannedUtterance(f"{index:06d}-{voice.name}", sentence, voice, split, voice_split)


def read_records(path: Path) -> list[dict]:
    """Manifest lines, skipping a last line cut short by a killed run."""
    if not path.exists():
        return []
    records = []
    with path.open() as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                logger.warning("%s: ignoring a truncated line", path)
    return records


def speak(utterance: PlannedUtterance, engine: SpeechEngine, sample_rate: int) -> tuple[np.ndarray, list | None]:
    """Synthesise one utterance at the corpus rate, peak-normalised."""
    synthesis = engine.synthesize(utterance.sentence.text, utterance.voice)
    waveform = validate_waveform(synthesis.waveform, synthesis.sample_rate, source=utterance.id)
    if synthesis.sample_rate != sample_rate:
        waveform = soxr.resample(waveform, synthesis.sample_rate, sample_rate, quality="HQ").astype(np.float32)
    waveform = waveform * (PEAK_LEVEL / max(float(np.abs(waveform).max()), 1e-6))
    return waveform.astype(np.float32), synthesis.words


def build_corpus(cfg: Config, out: str | os.PathLike) -> Path:
    """Build (or finish building) the corpus of ``cfg`` in ``out``; returns the manifest path."""
    from .alignment import whisper_words  # Whisper loads only if some utterance needs it

    out = Path(out)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    engines = {e.name: e for e in available_engines()}
    if not engines:
        raise RuntimeError(
            "no speech engine is installed: install espeak-ng, flite or festival "
            "(apt install espeak-ng flite festival) or the piper-tts / hibari-tts Python packages"
        )
    voices = [v for e in engines.values() for v in e.voices()]
    c = cfg.corpus
    partial = out / "manifest.partial.jsonl"
    done = {r["id"]: r for r in read_records(partial) if (out / r["path"]).exists()}
    if done:
        logger.info("resuming: %d utterances already built in %s", len(done), out)
        # drop what a killed run left half-written, so appending starts on a clean line
        partial.write_text("".join(json.dumps(r) + "\n" for r in done.values()))

    target_seconds = c.min_hours * 3600
    total_seconds = sum(r["duration"] for r in done.values())
    whisper_compared = Counter(r["engine"] for r in done.values() if "whisper_words" in r)
    records: list[dict] = []
    by_utterances = target_seconds == 0
    bar = tqdm(total=c.max_utterances if by_utterances else round(target_seconds), desc="corpus",
               unit="utt" if by_utterances else "s audio")
    bar.update(len(done) if by_utterances else round(total_seconds))
    with partial.open("a") as log:
        for utterance in plan(cfg, voices):
            if len(records) >= c.max_utterances or (target_seconds and total_seconds >= target_seconds):
                break
            if utterance.id in done:
                records.append(done[utterance.id])
                continue
            engine = engines[utterance.voice.engine]
            try:
                waveform, words = speak(utterance, engine, cfg.audio.sample_rate)
            except (AudioError, RuntimeError) as error:
                logger.warning("skipping %s: %s", utterance.id, error)
                continue
            duration = len(waveform) / cfg.audio.sample_rate
            if duration > MAX_UTTERANCE_SECONDS:
                logger.warning("skipping %s: %.1f s is longer than %.0f s", utterance.id, duration, MAX_UTTERANCE_SECONDS)
                continue
            path = Path("audio") / f"{utterance.id}.flac"
            save_audio(out / path, waveform, cfg.audio.sample_rate)
            record = {
                "id": utterance.id,
                "path": str(path),
                "text": utterance.sentence.text,
                "voice": utterance.voice.name,
                "engine": utterance.voice.engine,
                "sample_rate": cfg.audio.sample_rate,
                "duration": round(duration, 4),
                "split": utterance.split,
                "voice_split": utterance.voice_split,
                "category": utterance.sentence.source,
            }
            if words is None:
                record["alignment"] = "whisper"
                record["words"] = [w.to_dict() for w in whisper_words(waveform, cfg.audio.sample_rate)]
            else:
                record["alignment"] = "engine"
                record["words"] = [w.to_dict() for w in words]
                if whisper_compared[engine.name] < c.whisper_sample:
                    record["whisper_words"] = [w.to_dict() for w in whisper_words(waveform, cfg.audio.sample_rate)]
                    whisper_compared[engine.name] += 1
            log.write(json.dumps(record) + "\n")
            log.flush()  # a killed build loses at most the utterance in flight
            records.append(record)
            total_seconds += duration
            bar.update(1 if by_utterances else round(duration))
    bar.close()

    manifest = out / "manifest.jsonl"
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    tmp.replace(manifest)
    summary = summarize(records, cfg)
    (out / "corpus.json").write_text(json.dumps(summary, indent=2) + "\n")
    logger.info("corpus: %d utterances, %.2f h, %d voices in %s",
                summary["utterances"], summary["hours"], len(summary["voices"]), out)
    return manifest


def summarize(records: list[dict], cfg: Config) -> dict:
    """What the corpus holds: sizes per split, engine and voice, and how it was made."""
    hours = sum(r["duration"] for r in records) / 3600
    voices: dict[str, dict] = {}
    for r in records:
        v = voices.setdefault(r["voice"], {"engine": r["engine"], "voice_split": r["voice_split"], "utterances": 0})
        v["utterances"] += 1
    return {
        "preset": cfg.name,
        "seed": cfg.corpus.seed,
        "sample_rate": cfg.audio.sample_rate,
        "utterances": len(records),
        "hours": round(hours, 4),
        "splits": dict(Counter(r["split"] for r in records)),
        "engines": dict(Counter(r["engine"] for r in records)),
        "categories": dict(Counter(r["category"] for r in records)),
        "alignment": dict(Counter(r["alignment"] for r in records)),
        "voices": voices,
    }


def load_manifest(data_dir: str | os.PathLike, split: str | None = None) -> list[dict]:
    """The manifest of a built corpus, optionally one split of it."""
    path = Path(data_dir) / "manifest.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: build the corpus first with `michi-lite data build`")
    records = read_records(path)
    return [r for r in records if split is None or r["split"] == split]
