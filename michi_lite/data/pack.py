"""A speaker training pack: a corpus's log-mel and phonemes, computed once.

For every utterance it trains on, the speech model reads the normalised
log-mel of its audio and the espeak-ng phonemes of its words
(``train_speaker.SpeakerUtterances``). Computed from the corpus's FLAC on the fly,
they need libespeak-ng wherever training runs, and they cost little beside a
training step on a CPU but can keep a GPU waiting: on 2 CPU cores a batch of
8 ``lite`` utterances took 130-150 ms to make from the corpus and 21-26 ms
from a pack, beside 11 s for the CPU training step. ``michi-lite data pack``
computes them once, into a folder that ``michi-lite train speaker --data``
takes in place of the corpus:

    pack.json   the audio settings, each utterance's manifest record (less its
                audio path) with the rows of mels.npy it spans, and every
                chunk's phonemes
    mels.npy    (mel_frames, n_mels) uint8: every utterance's normalised
                log-mel, one after another

The log-mel is kept in 8 bits, evenly spaced from ``SILENCE_MEL`` (nothing
is lower: ``MEL_FLOOR`` clamps it) over ``MEL_SPAN``: steps of 0.027, a mean
squared error of 6e-5 (a speaking head's error is above 0.1), and a quarter
of float32's size. A pack holds only what the speech model reads: the
vocoder and the listener train on the waveforms.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..audio import SILENCE_MEL, MelSpectrogram, load_audio, mel_patches, normalize_mel, pad_to_frames
from ..config import AudioConfig, get_config
from .corpus import load_manifest
from .phonemes import chunk_phonemes

PACK_FORMAT = "michi_lite.speaker_pack/1"
MEL_SPAN = 7.0  # normalised log-mel from SILENCE_MEL to SILENCE_MEL + MEL_SPAN (4.57); speech peaks near 2.6
MEL_STEPS = 255  # uint8's 256 values, 255 steps apart
QUANTISATION = {"floor": SILENCE_MEL, "span": MEL_SPAN, "steps": MEL_STEPS}

logger = logging.getLogger(__name__)


def quantize_mel(rows: torch.Tensor) -> np.ndarray:
    """Normalised log-mel rows (mel_frames, n_mels) -> uint8 of the same shape; values above the span are clipped."""
    levels = torch.round((rows - SILENCE_MEL) * (MEL_STEPS / MEL_SPAN))
    return levels.clamp(0, MEL_STEPS).to(torch.uint8).contiguous().numpy()


def dequantize_mel(levels: np.ndarray) -> torch.Tensor:
    """The inverse of ``quantize_mel``, to within half a step: uint8 (mel_frames, n_mels) -> float32."""
    return torch.from_numpy(np.array(levels)).float() * (MEL_SPAN / MEL_STEPS) + SILENCE_MEL


def is_pack(path: str | os.PathLike) -> bool:
    return (Path(path) / "pack.json").is_file()


def build_pack(data_dir: str | os.PathLike, out: str | os.PathLike, splits: tuple[str, ...] = ("train",)) -> Path:
    """Pack the utterances of a built corpus's ``splits`` into ``out``; returns its ``pack.json``.

    Each file is written under a temporary name and renamed into place, and
    ``pack.json`` last, so a folder without it is an unfinished pack, never
    read as a whole one, and a training reading an older pack keeps its frames.
    """
    source, out = Path(data_dir), Path(out)
    if out.resolve() == source.resolve():
        raise ValueError("the pack must go to another directory than its corpus")
    records = [r for r in load_manifest(source) if r["split"] in splits and r["words"]]
    about = json.loads((source / "corpus.json").read_text())
    audio = get_config(about["preset"]).audio
    if not records:
        raise ValueError(f"{source}: no utterances with words in the split(s) {', '.join(splits)}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "pack.json").unlink(missing_ok=True)
    frontend = MelSpectrogram(audio)
    mels, kept, phonemes, start, clipped = [], [], {}, 0, 0
    for record in tqdm(records, desc="pack", unit="utt"):
        wave = torch.from_numpy(load_audio(source / record["path"], audio.sample_rate))
        rows = normalize_mel(frontend(pad_to_frames(wave, audio))).T  # (mel_frames, n_mels)
        clipped += int((rows > SILENCE_MEL + MEL_SPAN).sum())
        mels.append(quantize_mel(rows))
        kept.append({**{k: v for k, v in record.items() if k != "path"}, "mel_rows": [start, len(rows)]})
        start += len(rows)
        for chunk in record["text"].split():
            phonemes.setdefault(chunk, chunk_phonemes(chunk))
    if clipped:
        logger.warning("%d log-mel values lay above the pack's span and were clipped to it", clipped)
    with (out / "mels.npy.partial").open("wb") as f:
        np.save(f, np.concatenate(mels))
    os.replace(out / "mels.npy.partial", out / "mels.npy")
    pack = {"format": PACK_FORMAT, "preset": about["preset"], "audio": asdict(audio), "source": str(source),
            "splits": list(splits), "quantisation": QUANTISATION, "clipped_values": clipped,
            "utterances": kept, "phonemes": phonemes}
    (out / "pack.json.partial").write_text(json.dumps(pack))
    os.replace(out / "pack.json.partial", out / "pack.json")
    return out / "pack.json"


class SpeakerPack:
    """A pack, opened: its records (the manifest's, less the audio path) and each one's patches.

    The frames are memory-mapped, and mapped again in each process that
    reads them (a data-loading worker), never copied into it.
    """

    def __init__(self, path: str | os.PathLike, audio: AudioConfig) -> None:
        self.path, self.audio = Path(path), audio
        try:
            about = json.loads((self.path / "pack.json").read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{self.path}/pack.json cannot be read ({err}); rebuild it with `michi-lite data pack`") \
                from err
        if about.get("format") != PACK_FORMAT:
            raise ValueError(f"{self.path} is not a speaker pack of this version: format {about.get('format')!r}, "
                             f"expected {PACK_FORMAT!r}; rebuild it with `michi-lite data pack`")
        if about["audio"] != asdict(audio):
            raise ValueError(f"{self.path} holds log-mel of the {about['preset']!r} preset's audio settings, "
                             "not this model's: pack the corpus of this preset")
        if about["quantisation"] != QUANTISATION:
            raise ValueError(f"{self.path} quantised its log-mel as {about['quantisation']}, this version reads "
                             f"{QUANTISATION}; rebuild it with `michi-lite data pack`")
        self.records, self.phonemes = about["utterances"], about["phonemes"]
        self._mels: np.ndarray | None = None
        needed = max(sum(r["mel_rows"]) for r in self.records)
        if self.mels.dtype != np.uint8 or self.mels.shape[1:] != (audio.n_mels,) or len(self.mels) < needed:
            raise ValueError(f"{self.path}/mels.npy holds {self.mels.dtype} {self.mels.shape}, not the "
                             f"({needed}, {audio.n_mels}) uint8 rows pack.json points into; rebuild the pack")

    @property
    def mels(self) -> np.ndarray:
        if self._mels is None:
            try:
                self._mels = np.load(self.path / "mels.npy", mmap_mode="r")
            except (OSError, ValueError) as err:
                raise ValueError(f"{self.path}/mels.npy is missing or damaged ({err}); rebuild it with "
                                 "`michi-lite data pack`") from err
        return self._mels

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_mels": None}  # a pickled memory map would carry all its frames along

    def patches(self, record: dict) -> torch.Tensor:
        """One record's normalised log-mel as (frames, patch_dim) patches, as ``model.audio_patches`` makes them."""
        start, count = record["mel_rows"]
        return mel_patches(dequantize_mel(self.mels[start:start + count]).T, self.audio)
