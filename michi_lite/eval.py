"""Measurements. Every report is a JSON object of plain numbers plus where it ran."""

from __future__ import annotations

import logging
import math
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import soxr
import torch
from pesq import PesqError, pesq
from pystoi import stoi
from tqdm.auto import tqdm

from .audio import MelSpectrogram, load_audio, normalize_mel
from .backbone import load_whisper
from .config import get_config
from .data.alignment import boundary_differences, summarize_differences, transcribe, word_error_rate
from .data.corpus import load_manifest
from .data.words import Word
from .provenance import run_info
from .vocoder import GriffinLim, load_vocoder, stft_distance

logger = logging.getLogger(__name__)


def alignment_differences(data_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """Per engine, the signed boundary differences (ms), Whisper's timing minus the engine's."""
    per_engine: dict[str, list[np.ndarray]] = defaultdict(list)
    for record in load_manifest(data_dir):
        if record.get("alignment") != "engine" or "whisper_words" not in record:
            continue
        engine_words = [Word.from_dict(w) for w in record["words"]]
        whisper = [Word.from_dict(w) for w in record["whisper_words"]]
        per_engine[record["engine"]].append(boundary_differences(engine_words, whisper))
    return {engine: np.concatenate(diffs) for engine, diffs in per_engine.items()}


def evaluate_alignment(data_dir: str | os.PathLike, preset: str) -> dict:
    """Median and 95th percentile word-boundary difference, engine timings vs Whisper.

    Both the start and the end of every word that the two alignments agree on
    count as one boundary each; ``median_signed_ms`` > 0 means Whisper puts
    boundaries later than the engine.
    """
    per_engine = alignment_differences(data_dir)
    if not per_engine:
        raise ValueError(f"{data_dir}: no utterance has both engine and Whisper word timings to compare")
    return {
        "engines": {engine: summarize_differences(diffs) for engine, diffs in sorted(per_engine.items())},
        "all": summarize_differences(np.concatenate(list(per_engine.values()))),
        "run": run_info(preset),
    }


# --- vocoder -----------------------------------------------------------------------

PESQ_SAMPLE_RATE = 16_000  # wide-band PESQ (ITU-T P.862.2) is defined at 16 kHz only


def pesq_wideband(reference: np.ndarray, degraded: np.ndarray, sample_rate: int) -> float:
    """Wide-band PESQ of ``degraded`` against ``reference``, both (samples,): about 1.0 (bad) to 4.64 (identical).

    NaN where PESQ finds no speech to compare (a silent output from an early
    or collapsed generator), so one such clip cannot end a long evaluation.
    """
    if sample_rate != PESQ_SAMPLE_RATE:
        reference = soxr.resample(reference, sample_rate, PESQ_SAMPLE_RATE)
        degraded = soxr.resample(degraded, sample_rate, PESQ_SAMPLE_RATE)
    score = pesq(PESQ_SAMPLE_RATE, reference.astype(np.float64), degraded.astype(np.float64), "wb",
                 on_error=PesqError.RETURN_VALUES)
    return float(score) if score >= 0 else float("nan")  # errors come back as negative codes


def short_time_intelligibility(reference: np.ndarray, degraded: np.ndarray, sample_rate: int) -> float:
    """STOI of ``degraded`` against ``reference``: 0 to 1 (identical). pystoi resamples to 10 kHz itself."""
    return float(stoi(reference.astype(np.float64), degraded.astype(np.float64), sample_rate))


def mean_or_none(values: list[float]) -> float | None:
    """The mean of the values that could be measured; None (JSON null) if none could."""
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def voice_groups_of_test_split(data_dir: str | os.PathLike) -> dict[str, list[dict]]:
    """The corpus's test split by voice group: "seen" (voices heard in training) and "unseen" (held out)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for record in load_manifest(data_dir, "test"):
        groups[record["voice_split"]].append(record)
    if not groups:
        raise ValueError(f"{data_dir}: the corpus has no test utterances to evaluate on")
    return groups


def evaluate_vocoder(
    preset: str, ckpt: str | os.PathLike, data_dir: str | os.PathLike, max_utterances: int | None = None
) -> dict:
    """Resynthesise the test split from its mels with HiFi-GAN (``ckpt``) and Griffin-Lim; measure both.

    Per voice group (``seen``: voices heard in training, ``unseen``: held out;
    the test sentences are never in training) and per system: the mean
    multi-resolution STFT distance, wide-band PESQ and STOI against the
    original audio, and the Whisper judge's corpus WER on the vocoded audio,
    beside ``judge_wer_original``, its WER on the originals: the floor a
    perfect vocoder would reach. ``ckpt`` is a training run's directory or a
    ``save_vocoder`` file. The originals are cut to frames * hop samples, the
    length both vocoders return. ``max_utterances`` caps each group.
    """
    groups = voice_groups_of_test_split(data_dir)
    audio = get_config(preset).audio
    device = "cuda" if torch.cuda.is_available() else "cpu"
    systems = {"hifigan": load_vocoder(ckpt, preset, device), "griffin_lim": GriffinLim(audio).to(device)}
    frontend = MelSpectrogram(audio).to(device)
    judge = load_whisper()

    report: dict = {"groups": {}}
    for group, records in sorted(groups.items()):
        records = records[:max_utterances]
        scores: dict[str, dict[str, list[float]]] = {name: defaultdict(list) for name in systems}
        heard: dict[str, list[str]] = defaultdict(list)  # what the judge heard, per system and "original"
        n_samples = 0
        for record in tqdm(records, desc=f"vocoder eval, {group} voices", unit="utt"):
            wave = load_audio(Path(data_dir) / record["path"], audio.sample_rate)
            reference = wave[:len(wave) // audio.hop_length * audio.hop_length]  # (frames * hop,)
            n_samples += len(reference)
            with torch.inference_mode():
                mel = normalize_mel(frontend(torch.from_numpy(reference).to(device)))  # (n_mels, frames)
                vocoded = {name: system.vocode(mel).float().cpu() for name, system in systems.items()}
            heard["original"].append(transcribe(reference, audio.sample_rate, judge))
            for name, output in vocoded.items():  # output: (frames * hop,)
                scores[name]["stft_distance"].append(stft_distance(output, torch.from_numpy(reference)))
                output = output.numpy()
                scores[name]["pesq_wb"].append(pesq_wideband(reference, output, audio.sample_rate))
                scores[name]["stoi"].append(short_time_intelligibility(reference, output, audio.sample_rate))
                heard[name].append(transcribe(output, audio.sample_rate, judge))
        texts = [record["text"] for record in records]
        report["groups"][group] = {
            "n_utterances": len(records),
            "audio_seconds": round(n_samples / audio.sample_rate, 2),
            "judge_wer_original": word_error_rate(texts, heard["original"]),
            **{
                name: {**{metric: mean_or_none(values) for metric, values in scores[name].items()},
                       "pesq_failures": int(np.isnan(scores[name]["pesq_wb"]).sum()),
                       "judge_wer": word_error_rate(texts, heard[name])}
                for name in systems
            },
        }
        logger.info("vocoder eval, %s voices: %s", group, report["groups"][group])
    report["n_utterances"] = sum(g["n_utterances"] for g in report["groups"].values())
    report["checkpoint"] = str(ckpt)
    report["run"] = run_info(preset)
    return report


def emission_delays(spoken: list[Word], heard: list, max_seconds: float = 2.0) -> np.ndarray:
    """Emission time minus the spoken word's end (ms), for each spoken word the listener emitted.

    Each spoken word, in order, takes the first unused emitted word of the
    same spelling that came after the spoken word began and at most
    ``max_seconds`` after it ended: so a repeated "the" is not paired with
    one said seconds later.
    """
    from .data.words import normalize_text

    delays, used = [], set()
    keys = [normalize_text(h.word) for h in heard]
    for word in spoken:
        key = normalize_text(word.word)
        for j, h in enumerate(heard):
            if j not in used and keys[j] == key and word.start <= h.emitted <= word.end + max_seconds:
                delays.append(1000 * (h.emitted - word.end))
                used.add(j)
                break
    return np.array(delays)


def evaluate_listener(preset: str, ckpt: str | os.PathLike, data_dir: str | os.PathLike,
                      max_utterances: int | None = None, delays_path: str | os.PathLike | None = None) -> dict:
    """The listening head on the test split, per voice group, with the stress sentences on their own.

    For each group:

    * ``wer_streaming``: the corpus WER of what the head's emitted tokens
      spell, run on whole clips (equal to a frame-by-frame fp32 stream, see
      ``tests/test_listen.py``, and faster to score);
    * ``wer_streaming_int8``: the same for the int8 version a CPU streams
      with, fed 80 ms at a time as a microphone would;
    * ``wer_whisper_offline``: Whisper tiny.en (the judge) on the same audio,
      with the whole clip in view: the full-context baseline;
    * the emission delay, emission time minus the aligned end of the word,
      over the words the head got right (``emission_delays``): median and
      95th percentile in ms, and every delay in ``delays_path`` (.npz, one
      array per group) if it is given;
    * the frame accuracy against the emission grid, over all frames and over
      the frames that carry a token.

    Each clip gets the trailing silence ``ListenerStream.flush`` adds.
    """
    from .backbone import load_tokenizer
    from .data.frames import PAD_TOKEN
    from .listen import (
        QUIET_FRAMES,
        clip_features,
        emission_grid,
        load_listener,
        quantized_for_cpu,
        transcribe_stream,
        words_from_logits,
    )

    groups = voice_groups_of_test_split(data_dir)
    tokenizer = load_tokenizer()
    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    listener = load_listener(ckpt, preset, len(tokenizer))
    listener_int8 = quantized_for_cpu(listener)
    audio = listener.cfg.audio
    judge = load_whisper()

    def summary(rows: list[dict]) -> dict:
        delays = np.concatenate([r["delays"] for r in rows]) if rows else np.zeros(0)
        frames = sum(r["frames"] for r in rows)
        token_frames = sum(r["token_frames"] for r in rows)
        return {
            "n_utterances": len(rows),
            "wer_streaming": word_error_rate([r["text"] for r in rows], [r["heard"] for r in rows]),
            "wer_streaming_int8": word_error_rate([r["text"] for r in rows], [r["heard_int8"] for r in rows]),
            "wer_whisper_offline": word_error_rate([r["text"] for r in rows], [r["whisper"] for r in rows]),
            "emission_delay_ms_median": float(np.median(delays)) if len(delays) else None,
            "emission_delay_ms_p95": float(np.percentile(delays, 95)) if len(delays) else None,
            "n_words_timed": int(len(delays)),
            "frame_accuracy": sum(r["frames_right"] for r in rows) / max(frames, 1),
            "token_frame_accuracy": sum(r["token_frames_right"] for r in rows) / max(token_frames, 1),
        }

    report: dict = {"groups": {}}
    all_delays = {}
    for group, records in sorted(groups.items()):
        rows = []
        for record in tqdm(records[:max_utterances], desc=f"listener eval, {group} voices", unit="utt"):
            wave = load_audio(Path(data_dir) / record["path"], audio.sample_rate)
            words = [Word.from_dict(w) for w in record["words"]]
            # as a stream ends: whole frames, then the quiet frames ``ListenerStream.flush`` adds
            frames = math.ceil(len(wave) / audio.samples_per_frame) + QUIET_FRAMES
            grid = torch.tensor(emission_grid(record["text"], words, tokenizer, frames).tokens)
            padded = torch.from_numpy(np.pad(wave, (0, len(grid) * audio.samples_per_frame - len(wave))))
            with torch.inference_mode():
                _, logits = listener(clip_features(padded, audio)[None])
            logits = logits[0]  # (frames, vocab)
            heard = words_from_logits(logits, tokenizer)
            right, tokens = logits.argmax(-1) == grid, grid != pad_id
            delays = emission_delays(words, heard)
            rows.append({
                "text": record["text"], "heard": " ".join(h.word for h in heard),
                "heard_int8": " ".join(h.word for h in transcribe_stream(listener_int8, torch.from_numpy(wave),
                                                                         tokenizer)),
                "whisper": transcribe(wave, audio.sample_rate, judge),
                "delays": delays, "category": record["category"],
                "frames": len(grid), "frames_right": int(right.sum()),
                "token_frames": int(tokens.sum()), "token_frames_right": int((right & tokens).sum()),
            })
        report["groups"][group] = {
            "all": summary(rows),
            "stress": summary([r for r in rows if r["category"].startswith("stress")]),
            "plain": summary([r for r in rows if not r["category"].startswith("stress")]),
        }
        all_delays[group] = np.concatenate([r["delays"] for r in rows])
        logger.info("listener eval, %s voices: %s", group, report["groups"][group]["all"])
    if delays_path:
        np.savez_compressed(delays_path, **all_delays)
    report["checkpoint"] = str(ckpt)
    report["run"] = run_info(preset)
    return report
