"""Real read speech from LibriTTS-R, as manifest records beside the synthetic corpus.

LibriTTS-R (Koizumi et al., 2023) is LibriTTS with its audio restored: 585
hours of audiobooks read by 2,456 speakers, at 24 kHz. The Hugging Face copy
``mythicinfinity/libritts_r`` has one row per utterance::

    audio            {"bytes": <a wav file>, "path": str}   (24 kHz)
    text_original    the book's text, digits and abbreviations as printed
    text_normalized  the same, numbers and abbreviations spelt out
    speaker_id, chapter_id, id ("19_198_000000_000000"), path

``load_libritts_r`` turns such rows into our manifest records and writes each
utterance as a FLAC file at the preset's sample rate. The rows come from the
hub, from local parquet files (a copy of the hub's ``data/`` shards), or from
any iterable of dicts in the same schema. LibriTTS has no word timings, so
Whisper times the words, as it does for synthetic voices that give none.

LibriTTS keeps its dev and test speakers out of its training subsets, so rows
from ``dev.*`` and ``test.*`` are voices our model never hears in training.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from tqdm.auto import tqdm

from ..audio import AudioError, save_audio, validate_waveform
from ..backbone import hub_is_reachable

logger = logging.getLogger(__name__)

HUB_NAME = "mythicinfinity/libritts_r"
ENGINE = "libritts-r"
# LibriTTS split -> (our split, our voice split); see the module docstring.
_SPLITS = {"train": ("train", "seen"), "dev": ("val", "unseen"), "test": ("test", "unseen")}


class LibriTTSUnavailable(RuntimeError):
    """LibriTTS-R cannot be read: no network to the hub and no local copy."""


def _manifest_split(split: str) -> tuple[str, str]:
    """``"train.clean.100"`` -> ``("train", "seen")``, ``"dev.clean"`` -> ``("val", "unseen")``."""
    subset = split.split(".")[0]
    if subset not in _SPLITS:
        raise ValueError(f"unknown LibriTTS-R split {split!r}: expected train.*, dev.* or test.*")
    return _SPLITS[subset]


def _unavailable(reason: str) -> LibriTTSUnavailable:
    return LibriTTSUnavailable(
        f"LibriTTS-R is unavailable: {reason}. It needs a network connection to the "
        f"Hugging Face hub ({HUB_NAME}), a copy in the local datasets cache (with "
        "HF_HUB_OFFLINE=1), or a local copy passed as data_files= (its parquet files) "
        "or rows= (dicts in the same schema)."
    )


def _hub_rows(name: str, config: str, split: str, streaming: bool,
              cache_dir: str | os.PathLike | None) -> Iterable[Mapping]:
    """The rows of one hub split, audio left as undecoded file bytes."""
    import datasets  # imported here: the rest of michi_lite never needs it

    if not datasets.config.HF_HUB_OFFLINE and not hub_is_reachable():
        raise _unavailable("the hub cannot be reached")
    try:
        rows = datasets.load_dataset(name, config, split=split, streaming=streaming, cache_dir=cache_dir)
    except (ConnectionError, FileNotFoundError) as err:  # offline and not cached
        # The message carries the cause; its traceback from deep inside datasets would only bury it.
        raise _unavailable(f"{type(err).__name__}: {err}") from None
    # We decode with soundfile ourselves: datasets' own decoder needs torchcodec.
    return rows.cast_column("audio", datasets.Audio(decode=False))


def _parquet_rows(data_files: str | os.PathLike | Sequence[str | os.PathLike]) -> Iterator[dict]:
    """The rows of local parquet files (a file, a list of files, or a folder of them).

    Read with pyarrow directly: the hub stores the audio column as a struct of
    file bytes and path, which arrives here as the same dict the hub gives.
    """
    import pyarrow.parquet as pq

    paths = [Path(data_files)] if isinstance(data_files, (str, os.PathLike)) else [Path(p) for p in data_files]
    paths = [f for p in paths for f in (sorted(p.glob("*.parquet")) if p.is_dir() else [p])]
    missing = [str(p) for p in paths if not p.is_file()]
    if not paths or missing:  # checked now, not when the first row is read
        raise _unavailable(f"no parquet files at {missing or data_files}")
    return (row for path in paths for batch in pq.ParquetFile(path).iter_batches(batch_size=64)
            for row in batch.to_pylist())


def _decode(audio: Mapping) -> tuple[np.ndarray, int]:
    """A row's audio as a float32 waveform and its rate, from any of its three forms."""
    if audio.get("array") is not None:  # already decoded, as datasets' Audio feature gives it
        return np.asarray(audio["array"], dtype=np.float32), int(audio["sampling_rate"])
    source = io.BytesIO(audio["bytes"]) if audio.get("bytes") else audio["path"]
    data, rate = sf.read(source, dtype="float32", always_2d=True)  # (samples, channels)
    return data.mean(axis=1), rate


def load_libritts_r(
    out_dir: str | os.PathLike,
    sample_rate: int,
    split: str = "train.clean.100",
    *,
    max_utterances: int | None = None,
    max_seconds: float = 30.0,
    text_column: str = "text_original",
    rows: Iterable[Mapping] | None = None,
    data_files: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    name: str = HUB_NAME,
    config: str = "clean",
    streaming: bool = True,
    cache_dir: str | os.PathLike | None = None,
    align: bool = True,
) -> list[dict]:
    """Write LibriTTS-R utterances under ``out_dir/audio/`` and return their manifest records.

    The rows come from ``rows`` if given, else from the parquet ``data_files``,
    else from the hub (``name``, ``config``, ``split``; streamed, so only the
    utterances used are downloaded). ``split`` also decides each record's
    ``split`` and ``voice_split``. The text is ``text_original`` by default,
    digits and all, like the rest of the corpus: the model reads raw text.
    Utterances longer than ``max_seconds`` are skipped. With ``align`` (the
    default) Whisper times every word, as for synthetic voices without timings;
    without it ``words`` stays empty and ``alignment`` is "none".

    Raises ``LibriTTSUnavailable`` at once when the hub is out of reach and no
    local copy was given.
    """
    from .alignment import whisper_words  # Whisper loads only when asked to align

    our_split, voice_split = _manifest_split(split)
    if rows is None:
        rows = _parquet_rows(data_files) if data_files is not None else _hub_rows(
            name, config, split, streaming, cache_dir)
    out_dir = Path(out_dir)
    records: list[dict] = []
    skipped = 0
    bar = tqdm(total=max_utterances, desc=f"LibriTTS-R {split}", unit="utt")
    for row in rows:
        if max_utterances is not None and len(records) >= max_utterances:
            break
        utterance_id = f"{ENGINE}-{row['id']}"
        try:
            waveform, rate = _decode(row["audio"])
            if rate != sample_rate:
                waveform = soxr.resample(waveform, rate, sample_rate, quality="HQ")
            waveform = validate_waveform(waveform, sample_rate, source=utterance_id, max_seconds=max_seconds)
        except (AudioError, sf.LibsndfileError) as err:
            logger.warning("skipping %s: %s", utterance_id, err)
            skipped += 1
            continue
        words = whisper_words(waveform, sample_rate) if align else []
        if align and not words:
            logger.warning("skipping %s: Whisper heard no words", utterance_id)
            skipped += 1
            continue
        path = Path("audio") / f"{utterance_id}.flac"
        save_audio(out_dir / path, waveform, sample_rate)
        records.append({
            "id": utterance_id,
            "path": str(path),
            "text": " ".join(row[text_column].split()),
            "voice": f"{ENGINE}-{row['speaker_id']}",
            "speaker": f"{ENGINE}-{row['speaker_id']}",
            "engine": ENGINE,
            "sample_rate": sample_rate,
            "duration": round(len(waveform) / sample_rate, 4),
            "split": our_split,
            "voice_split": voice_split,
            "category": "libritts",
            "alignment": "whisper" if align else "none",
            "words": [w.to_dict() for w in words],
        })
        bar.update(1)
    bar.close()
    logger.info("LibriTTS-R %s: %d utterances written to %s, %d skipped", split, len(records), out_dir, skipped)
    return records
