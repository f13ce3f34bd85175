"""Measurements. Every report is a JSON object of plain numbers plus where it ran."""

from __future__ import annotations

import logging
import math
import os
import time
from collections import defaultdict

import numpy as np
import soxr
import torch
from pesq import PesqError, pesq
from pystoi import stoi
from tqdm.auto import tqdm

from .audio import AudioError, MelSpectrogram, load_audio, mel_from_patches, normalize_mel, voice_prompt
from .backbone import load_whisper
from .config import AudioConfig, get_config
from .data.alignment import (
    WHISPER_SAMPLE_RATE,
    boundary_differences,
    summarize_differences,
    transcribe,
    whisper_words,
    word_error_rate,
)
from .data.corpus import load_eval_manifest
from .data.words import Word
from .provenance import run_info
from .vocoder import GriffinLim, load_vocoder, stft_distance

logger = logging.getLogger(__name__)


def alignment_differences(data_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """Per engine, the signed boundary differences (ms), Whisper's timing minus the engine's.

    A built corpus compares the utterances it had Whisper time beside the
    engine when it was built (``whisper_words``). A manifest made elsewhere
    (no ``alignment`` field) has the ``words`` of each line compared with
    Whisper's timing of its audio, made here.
    """
    records = load_eval_manifest(data_dir, split=None)
    if not any(r.get("words") for r in records):
        raise ValueError(f"{data_dir}: no line of the manifest has 'words', word timings to compare with Whisper's")
    per_engine: dict[str, list[np.ndarray]] = defaultdict(list)
    judge = None
    for record in records:
        timed_by = record.get("alignment", "given")  # "given": timings from a manifest not built here
        if timed_by not in ("engine", "given") or not record.get("words"):
            continue
        if "whisper_words" in record:
            whisper = [Word.from_dict(w) for w in record["whisper_words"]]
        elif timed_by == "given":
            judge = judge or load_whisper()
            wave = load_audio(record["path"], WHISPER_SAMPLE_RATE)
            whisper = whisper_words(wave, WHISPER_SAMPLE_RATE, judge)
        else:
            continue
        engine_words = [Word.from_dict(w) for w in record["words"]]
        per_engine[record["engine"]].append(boundary_differences(engine_words, whisper))
    return {engine: np.concatenate(diffs) for engine, diffs in per_engine.items()}


def evaluate_alignment(data_dir: str | os.PathLike, preset: str, diffs_path: str | os.PathLike | None = None) -> dict:
    """Median and 95th percentile word-boundary difference, engine timings vs Whisper.

    Both the start and the end of every word that the two alignments agree on
    count as one boundary each; ``median_signed_ms`` > 0 means Whisper puts
    boundaries later than the engine. Every difference goes to ``diffs_path``
    (.npz, one array per engine) if it is given.
    """
    per_engine = alignment_differences(data_dir)
    if not per_engine:
        raise ValueError(f"{data_dir}: no utterance has both engine and Whisper word timings to compare")
    if diffs_path:
        np.savez_compressed(diffs_path, **per_engine)
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


def voice_groups(data_dir: str | os.PathLike, split: str = "test") -> dict[str, list[dict]]:
    """A split of the corpus by voice group: "seen" (voices heard in training) and "unseen" (held out).

    The test split has both; the validation split, for choosing between
    checkpoints without looking at the test split, only seen voices. A
    manifest that does not say puts all its voices in "unseen"
    (``load_eval_manifest``).
    """
    groups: dict[str, list[dict]] = defaultdict(list)
    for record in load_eval_manifest(data_dir, split):
        groups[record["voice_split"]].append(record)
    if not groups:
        raise ValueError(f"{data_dir}: the corpus has no {split} utterances to evaluate on")
    return groups


def evaluate_vocoder(
    preset: str, ckpt: str | os.PathLike, data_dir: str | os.PathLike, max_utterances: int | None = None,
    split: str = "test",
) -> dict:
    """Resynthesise the test split (or ``split``) from its mels with a vocoder (``ckpt``) and Griffin-Lim; measure both.

    Per voice group (``seen``: voices heard in training, ``unseen``: held out;
    the test sentences are never in training) and per system: the mean
    multi-resolution STFT distance, wide-band PESQ and STOI against the
    original audio, and the Whisper judge's corpus WER on the vocoded audio,
    beside ``judge_wer_original``, its WER on the originals: the floor a
    perfect vocoder would reach. ``ckpt`` is a training run's directory or a
    ``save_vocoder`` file. The originals are cut to frames * hop samples, the
    length both vocoders return. ``max_utterances`` caps each group. The
    learnt vocoder's results are under its architecture's name (``"hifigan"``
    or ``"istft"``, also in ``"arch"``), Griffin-Lim's under ``"griffin_lim"``;
    its ``stream_max_difference`` is the largest |streamed - offline| sample
    of any utterance, streamed 80 ms at a time (``vocode_streaming``).
    """
    groups = voice_groups(data_dir, split)
    audio = get_config(preset).audio
    device = "cuda" if torch.cuda.is_available() else "cpu"
    learnt = load_vocoder(ckpt, preset, device)
    systems = {learnt.cfg.arch: learnt, "griffin_lim": GriffinLim(audio).to(device)}
    frontend = MelSpectrogram(audio).to(device)
    chunk_frames = audio.mels_per_frame  # streamed 80 ms at a time
    judge = load_whisper()

    report: dict = {"groups": {}}
    for group, records in sorted(groups.items()):
        records = records[:max_utterances]
        scores: dict[str, dict[str, list[float]]] = {name: defaultdict(list) for name in systems}
        heard: dict[str, list[str]] = defaultdict(list)  # what the judge heard, per system and "original"
        stream_differences: list[float] = []  # the learnt vocoder's max |streamed - offline| per utterance
        n_samples = 0
        for record in tqdm(records, desc=f"vocoder eval, {group} voices", unit="utt"):
            wave = load_audio(record["path"], audio.sample_rate)
            reference = wave[:len(wave) // audio.hop_length * audio.hop_length]  # (frames * hop,)
            n_samples += len(reference)
            with torch.inference_mode():
                mel = normalize_mel(frontend(torch.from_numpy(reference).to(device)))  # (n_mels, frames)
                vocoded = {name: system.vocode(mel).float().cpu() for name, system in systems.items()}
                streamed = learnt.vocode_streaming(mel, chunk_frames).float().cpu()
            stream_differences.append(float((streamed - vocoded[learnt.cfg.arch]).abs().max()))
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
        report["groups"][group][learnt.cfg.arch]["stream_max_difference"] = max(stream_differences, default=None)
        logger.info("vocoder eval, %s voices: %s", group, report["groups"][group])
    report["n_utterances"] = sum(g["n_utterances"] for g in report["groups"].values())
    report["split"] = split
    report["arch"] = learnt.cfg.arch
    report["checkpoint"] = str(ckpt)
    report["run"] = run_info(preset)
    return report


def spoken_words(record: dict, wave: np.ndarray, sample_rate: int, judge) -> list[Word]:
    """A manifest line's word timings, or Whisper's timing of its audio (as ``data build`` does) if it has none."""
    if record.get("words"):
        return [Word.from_dict(w) for w in record["words"]]
    words = whisper_words(wave, sample_rate, judge)
    if not words:
        raise ValueError(f"{record['path']}: the manifest gives no 'words' and Whisper heard none to time")
    return words


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


# What ``evaluate_listener``'s robustness table does to each clip: (name, change); the noise is pink.
ROBUSTNESS_CONDITIONS = (
    ("clean", {}),
    ("noise_snr_20db", {"snr_db": 20}),
    ("noise_snr_10db", {"snr_db": 10}),
    ("noise_snr_5db", {"snr_db": 5}),
    ("reverb_rt60_0.6s", {"rt60": 0.6}),
    ("band_limit_8khz", {"band_limit": 8000}),
    ("speed_0.9", {"speed": 0.9}),
    ("speed_1.1", {"speed": 1.1}),
)


def changed_clip(wave: np.ndarray, sample_rate: int, change: dict, seed: int) -> np.ndarray:
    """One ``ROBUSTNESS_CONDITIONS`` change applied to a clip, its noise or room drawn from ``seed``."""
    from .data.augment import add_noise, band_limit, change_speed, reverberate

    rng = np.random.default_rng(seed)
    if "snr_db" in change:
        return add_noise(wave, change["snr_db"], rng, "pink")
    if "rt60" in change:
        return reverberate(wave, sample_rate, change["rt60"], rng)
    if "band_limit" in change:
        return band_limit(wave, sample_rate, change["band_limit"])
    if "speed" in change:
        return change_speed(wave, change["speed"])[0]
    return wave


def listener_groups(data_dir: str | os.PathLike, held_out_dirs: tuple = ()) -> dict[str, list[dict]]:
    """The listener's test sets: the corpus test split's "seen" and held-out voices, and other folders'.

    Each folder of ``held_out_dirs`` (any manifest ``load_eval_manifest``
    reads: other engines' voices, people's recordings) joins the held-out
    group, its lines reported by their ``engine`` (say "people" for
    recordings).
    """
    groups = voice_groups(data_dir)
    held_out = groups.pop("unseen", [])
    for folder in held_out_dirs:
        held_out += load_eval_manifest(folder)
    return {"seen": groups.get("seen", []), "held_out": held_out}


def per_engine(records: list[dict], n: int | None) -> list[dict]:
    """Up to ``n`` records of each engine (in engine order), each engine's spread over its voices."""
    by_engine: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        by_engine[record["engine"]].append(record)
    return [r for _, engine_records in sorted(by_engine.items()) for r in spread_over_voices(engine_records, n)]


def wer_summary(rows: list[dict]) -> dict:
    """The listener's WERs over some of ``evaluate_listener``'s rows, beside offline Whisper's, and their ratio."""
    texts = [r["text"] for r in rows]
    streaming = word_error_rate(texts, [r["heard"] for r in rows])
    whisper = word_error_rate(texts, [r["whisper"] for r in rows])
    return {"n_utterances": len(rows), "wer_streaming": streaming, "wer_whisper_offline": whisper,
            "wer_ratio": streaming / whisper if whisper > 0 else None}


def evaluate_listener(preset: str, ckpt: str | os.PathLike, data_dir: str | os.PathLike,
                      max_utterances: int | None = None, delays_path: str | os.PathLike | None = None,
                      held_out_dirs: tuple = (), robustness: int = 0) -> dict:
    """The listening head on held-out sentences: voices seen in training, and voices, engines and people never heard.

    ``listener_groups`` makes the groups; ``max_utterances`` caps each
    engine of each group (spread over its voices). For each group, over all
    its clips, its plain and stress sentences, each stress category
    (numbers, units, abbreviations, homographs, ...) and each engine:

    * ``wer_streaming``: the corpus WER of what the head's emitted tokens
      spell, run on whole clips (equal to a frame-by-frame fp32 stream, see
      ``tests/test_listen.py``, and faster to score);
    * ``wer_streaming_int8`` (over all, plain and stress): the same for the
      int8 version a CPU streams with, fed 80 ms at a time as a microphone
      would;
    * ``wer_whisper_offline``: Whisper tiny.en (the judge) on the same audio,
      with the whole clip in view: the full-context baseline; ``wer_ratio``,
      the streaming WER over it;
    * the emission delay, emission time minus the aligned end of the word,
      over the words the head got right (``emission_delays``): median and
      95th percentile in ms, and every delay in ``delays_path`` (.npz, one
      array per group) if it is given;
    * the frame accuracy against the emission grid, over all frames and over
      the frames that carry a token.

    And ``conversations`` per group: its clips of each engine, in order, four
    to a stream with 0.5 to 2 s of silence between (``conversation_streams``),
    as a conversation brings sentence after sentence: the int8 stream's WER
    on them beside the same clips streamed one at a time, and offline
    Whisper's on the joined audio.

    ``robustness`` > 0 adds a table: on that many held-out clips (spread
    over engines), the streaming and Whisper WERs under each
    ``ROBUSTNESS_CONDITIONS`` change. Each clip gets the trailing silence
    ``ListenerStream.flush`` adds. A manifest line without ``words`` is
    timed by Whisper (``spoken_words``).
    """
    from .backbone import load_tokenizer
    from .data.frames import PAD_TOKEN
    from .listen import (
        QUIET_FRAMES,
        clip_logits,
        clip_words,
        emission_grid,
        load_listener,
        quantized_for_cpu,
        transcribe_stream,
        words_from_logits,
    )

    groups = listener_groups(data_dir, tuple(held_out_dirs))
    tokenizer = load_tokenizer()
    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    listener = load_listener(ckpt, preset, len(tokenizer))
    listener_int8 = quantized_for_cpu(listener)
    audio = listener.cfg.audio
    judge = load_whisper()

    def heard_offline(wave: np.ndarray) -> str:
        return " ".join(h.word for h in clip_words(listener, wave, tokenizer))

    def summary(rows: list[dict]) -> dict:
        delays = np.concatenate([r["delays"] for r in rows]) if rows else np.zeros(0)
        frames = sum(r.get("frames", 0) for r in rows)  # a text decoder has no grid to be scored against
        token_frames = sum(r.get("token_frames", 0) for r in rows)
        return {
            **wer_summary(rows),
            "wer_streaming_int8": word_error_rate([r["text"] for r in rows], [r["heard_int8"] for r in rows]),
            "emission_delay_ms_median": float(np.median(delays)) if len(delays) else None,
            "emission_delay_ms_p95": float(np.percentile(delays, 95)) if len(delays) else None,
            "n_words_timed": int(len(delays)),
            "frame_accuracy": sum(r["frames_right"] for r in rows) / frames if frames else None,
            "token_frame_accuracy": sum(r["token_frames_right"] for r in rows) / token_frames if token_frames else None,
        }

    report: dict = {"groups": {}}
    all_delays = {}
    for group, records in groups.items():
        rows = []
        for record in tqdm(per_engine(records, max_utterances), desc=f"listener eval, {group} voices", unit="utt"):
            wave = load_audio(record["path"], audio.sample_rate)
            words = spoken_words(record, wave, audio.sample_rate, judge)
            grid_scores = {}
            if listener.text is None:  # the frame head: against the grid it was taught
                # as a stream ends: whole frames, then the quiet frames ``ListenerStream.flush`` adds
                frames = math.ceil(len(wave) / audio.samples_per_frame) + QUIET_FRAMES
                grid = torch.tensor(emission_grid(record["text"], words, tokenizer, frames,
                                                  listener.cfg.delay_frames).tokens)
                logits = clip_logits(listener, wave, len(grid))
                heard = words_from_logits(logits, tokenizer)
                right, tokens = logits.argmax(-1) == grid, grid != pad_id
                grid_scores = {"frames": len(grid), "frames_right": int(right.sum()),
                               "token_frames": int(tokens.sum()), "token_frames_right": int((right & tokens).sum())}
            else:
                heard = clip_words(listener, wave, tokenizer)
            rows.append({
                "text": record["text"], "heard": " ".join(h.word for h in heard),
                "heard_int8": " ".join(h.word for h in transcribe_stream(listener_int8, torch.from_numpy(wave),
                                                                         tokenizer)),
                "whisper": transcribe(wave, audio.sample_rate, judge),
                "delays": emission_delays(words, heard), "category": record["category"],
                "engine": record["engine"], "path": record["path"], **grid_scores,
            })
        if not rows:
            continue
        categories = sorted({r["category"] for r in rows if r["category"].startswith("stress")})
        engines = sorted({r["engine"] for r in rows})
        report["groups"][group] = {
            **by_category(rows, summary),
            "categories": {c: wer_summary([r for r in rows if r["category"] == c]) for c in categories},
            "engines": {e: summary([r for r in rows if r["engine"] == e]) for e in engines},
        }
        report["groups"][group]["conversations"] = conversation_summary(
            conversation_streams(rows, audio.sample_rate), listener_int8, tokenizer, judge, audio.sample_rate)
        all_delays[group] = np.concatenate([r["delays"] for r in rows])
        logger.info("listener eval, %s voices: %s", group, report["groups"][group]["all"])
        if group == "held_out" and robustness:
            report["robustness"] = robustness_table(
                spread_over_engines(rows, robustness), audio.sample_rate, heard_offline, judge)
    if delays_path:
        np.savez_compressed(delays_path, **all_delays)
    report["conditions"] = {name: change for name, change in ROBUSTNESS_CONDITIONS} if robustness else None
    report["checkpoint"] = str(ckpt)
    report["held_out_dirs"] = [str(d) for d in held_out_dirs]
    report["run"] = run_info(preset)
    return report


def conversation_streams(rows: list[dict], sample_rate: int, per_stream: int = 4,
                         seed: int = 0) -> list[tuple[np.ndarray, list[dict]]]:
    """``evaluate_listener``'s rows joined into streams: each engine's clips in order, ``per_stream`` at a time
    (fewer for the last), 0.3 s of silence first and 0.5 to 2 s between (drawn from ``seed``) -> (audio, rows)."""
    rng = np.random.default_rng(seed)
    streams = []
    for engine in sorted({r["engine"] for r in rows}):
        mine = [r for r in rows if r["engine"] == engine]
        for start in range(0, len(mine), per_stream):
            parts = [np.zeros(round(0.3 * sample_rate), dtype=np.float32)]
            for row in mine[start:start + per_stream]:
                parts += [load_audio(row["path"], sample_rate),
                          np.zeros(round(rng.uniform(0.5, 2.0) * sample_rate), dtype=np.float32)]
            streams.append((np.concatenate(parts), mine[start:start + per_stream]))
    return streams


def conversation_summary(streams: list[tuple[np.ndarray, list[dict]]], listener, tokenizer, judge,
                         sample_rate: int) -> dict:
    """WERs on ``conversation_streams``: ``listener`` streaming each whole (``wer_stream``), the same clips
    streamed one at a time (``wer_one_at_a_time``, their rows' ``heard_int8``), and offline Whisper on each
    stream's audio."""
    from .listen import transcribe_stream

    texts = [" ".join(r["text"] for r in rows) for _, rows in streams]
    heard = [" ".join(h.word for h in transcribe_stream(listener, torch.from_numpy(wave), tokenizer))
             for wave, _ in tqdm(streams, desc="listener eval, conversations", unit="stream")]
    return {
        "n_streams": len(streams), "n_utterances": sum(len(rows) for _, rows in streams),
        "seconds": sum(len(wave) for wave, _ in streams) / sample_rate,
        "wer_stream": word_error_rate(texts, heard),
        "wer_one_at_a_time": word_error_rate(texts, [" ".join(r["heard_int8"] for r in rows) for _, rows in streams]),
        "wer_whisper_offline": word_error_rate(texts, [transcribe(wave, sample_rate, judge) for wave, _ in streams]),
    }


def spread_over_engines(rows: list[dict], n: int) -> list[dict]:
    """Up to ``n`` rows taken from each engine in turn."""
    return spread_over_voices([{**r, "voice": r["engine"]} for r in rows], n)


def robustness_table(rows: list[dict], sample_rate: int, heard_offline, judge) -> dict:
    """The streaming listener's and offline Whisper's WER on ``rows``' clips under each robustness condition."""
    table = {}
    for name, change in ROBUSTNESS_CONDITIONS:
        changed = []
        for i, row in enumerate(tqdm(rows, desc=f"listener robustness, {name}", unit="utt")):
            wave = changed_clip(load_audio(row["path"], sample_rate), sample_rate, change, seed=i)
            changed.append({"text": row["text"], "heard": heard_offline(wave),
                            "whisper": transcribe(wave, sample_rate, judge)})
        table[name] = wer_summary(changed)
        logger.info("listener robustness, %s: %s", name, table[name])
    return table


# --- the speech model ------------------------------------------------------------------------

SPEAKER_STEPS = (1, 2, 4, 8)
SPEAKER_MAIN_STEPS = 4


def prompt_partners(test: list[dict], real: dict[str, np.ndarray], audio: AudioConfig) -> dict[str, dict]:
    """By test utterance id, the utterance whose audio prompts its voice: the next of the same voice in ``test``
    (cyclically, never itself) with enough speech for a voice prompt (``audio.voice_prompt``). An utterance
    whose voice has no other such utterance is left out."""
    def can_prompt(record: dict) -> bool:
        try:
            voice_prompt(real[record["id"]], audio)
            return True
        except AudioError:
            return False

    usable = {r["id"]: can_prompt(r) for r in test}
    by_voice: dict[str, list[dict]] = defaultdict(list)
    for r in test:
        by_voice[r["voice"]].append(r)
    partners = {}
    for same_voice in by_voice.values():
        for at, record in enumerate(same_voice):
            partner = next((r for r in same_voice[at + 1:] + same_voice[:at] if usable[r["id"]]), None)
            if partner is not None:
                partners[record["id"]] = partner
    return partners


def spread_over_voices(records: list[dict], n: int | None) -> list[dict]:
    """Up to ``n`` records taken from each voice in turn, so a short eval still hears every voice."""
    by_voice: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        by_voice[record["voice"]].append(record)
    queues = [list(v) for _, v in sorted(by_voice.items())]
    spread = []
    while any(queues) and (n is None or len(spread) < n):
        for queue in queues:
            if queue and (n is None or len(spread) < n):
                spread.append(queue.pop(0))
    return spread


def perplexity_sentences(test: list[dict], n: int = 200) -> list[str]:
    """The test split's sentences the backbone's plain-text perplexity is measured on: ``n``, sorted, no repeats."""
    return sorted({r["text"] for r in test})[:n]


@torch.inference_mode()
def text_perplexity(decoder: torch.nn.Module, tokenizer, texts: list[str]) -> float:
    """A decoder's perplexity on plain text, with its tied token embeddings as the LM head (as SmolLM2's)."""
    weight = decoder.embed_tokens.weight
    total, count = 0.0, 0
    for text in texts:
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]], device=weight.device)
        if ids.shape[1] < 2:
            continue
        hidden = decoder(input_ids=ids).last_hidden_state[0, :-1]
        logits = (hidden @ weight.T).float()
        total += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
        count += ids.shape[1] - 1
    return math.exp(total / max(count, 1))


@torch.inference_mode()
def hear_patches(patches: torch.Tensor, vocoder, judge, audio) -> str:
    """What the judge hears in mel patches (frames, patch_dim) made audio by ``vocoder``."""
    wave = vocoder.vocode(mel_from_patches(patches, audio)).float().cpu().numpy()
    return transcribe(wave, audio.sample_rate, judge)


@torch.inference_mode()
def teacher_forced_patches(model, streams, voice: torch.Tensor, steps: int,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """The speaking head's ``steps``-step sample of every patch of one utterance, each given the real past.

    ``streams`` as ``speaker_streams`` lays them out; ``voice`` (1, hidden).
    Returns (frames, patch_dim). Free of the drift of speaking on from its
    own patches, it shows how well the head makes each patch on its own.
    """
    _, cond = model.teacher_forced(streams, voice)
    return model.speaking_head.sample(cond[0], steps, generator=generator)


@torch.inference_mode()
def next_patch_errors(model, streams, voice: torch.Tensor,
                      generator: torch.Generator | None = None) -> tuple[float, float]:
    """How well the speaking head knows what comes next, on one utterance's real streams (teacher-forced).

    ``streams`` as ``speaker_streams`` lays them out; ``voice`` (1, hidden).
    Returns the mean squared error, per number, of (1) the head's 1-step
    sample given the real past, which from pure noise is its guess of the
    average next patch, and (2) repeating the last mel column of the frame
    before: what a head that ignores the text can do. Over the frames after
    the text lead (the audio itself).
    """
    patches = streams.patches
    guess = teacher_forced_patches(model, streams, voice, 1, generator)
    n_mels = model.cfg.audio.n_mels
    repeat = patches[:-1, -n_mels:].repeat(1, model.cfg.audio.mels_per_frame)  # frame t-1's last column
    spoken = slice(max(model.cfg.text_lead_frames, 1), None)
    return ((guess[spoken] - patches[spoken]) ** 2).mean().item(), \
        ((repeat[spoken.start - 1:] - patches[spoken]) ** 2).mean().item()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


class VoiceIdentifier:
    """Whose voice is it? Resemblyzer's GE2E embeddings of a test split's real audio, one mean per voice.

    ``judge`` compares a generated utterance with the real one it stands
    for (``similarity``, against ``similarity_real``, the real prompt with
    the real utterance: the ceiling) and says whether its nearest voice mean
    is the voice it was prompted with (``identified``, against
    ``identified_real``, the real utterance left out of its own voice's
    mean).
    """

    def __init__(self, real: dict[str, np.ndarray], voice_of: dict[str, str], sample_rate: int, device: str) -> None:
        from resemblyzer import VoiceEncoder

        self.encoder, self.sample_rate, self.voice_of = VoiceEncoder(device, verbose=False), sample_rate, voice_of
        self.embedding = {i: self.embed(wave) for i, wave in tqdm(real.items(), desc="voice embeddings", unit="utt")}
        self.members: dict[str, list[str]] = defaultdict(list)
        for i, voice in voice_of.items():
            self.members[voice].append(i)
        self.sums = {v: np.sum([self.embedding[i] for i in ids], axis=0) for v, ids in self.members.items()}

    def embed(self, wave: np.ndarray) -> np.ndarray:
        from resemblyzer import preprocess_wav

        return self.encoder.embed_utterance(preprocess_wav(wave, source_sr=self.sample_rate))

    def nearest(self, embedding: np.ndarray, leave_out: str | None = None) -> str:
        scores = {}
        for voice, total in self.sums.items():
            n = len(self.members[voice])
            if leave_out is not None and voice == self.voice_of[leave_out]:
                total, n = total - self.embedding[leave_out], n - 1
            scores[voice] = cosine(embedding, total / max(n, 1)) if n else -1.0
        return max(scores, key=scores.get)

    def judge(self, wave: np.ndarray, real_id: str, prompt_id: str) -> dict:
        """``wave`` made to say ``real_id``'s sentence in ``prompt_id``'s voice: similarity and identification."""
        generated, voice = self.embed(wave), self.voice_of[real_id]
        return {"similarity": cosine(generated, self.embedding[real_id]),
                "similarity_real": cosine(self.embedding[prompt_id], self.embedding[real_id]),
                "identified": self.nearest(generated) == voice,
                "identified_real": self.nearest(self.embedding[real_id], leave_out=real_id) == voice}


def evaluate_speaker(preset: str, ckpt: str | os.PathLike, data_dir: str | os.PathLike,
                     vocoder_ckpt: str | os.PathLike, max_utterances: int | None = None,
                     steps: tuple[int, ...] = SPEAKER_STEPS, seed: int = 0) -> dict:
    """The speech model speaking test sentences it never trained on, per voice group; judged independently.

    Every test utterance is spoken by the model (``Speaker``, as ``say`` runs
    it, with the HiFi-GAN ``vocoder_ckpt``) from its text, prompted with *another* test
    utterance of the same voice. Per group (``seen``: voices heard in
    training, ``unseen``: held out), at ``SPEAKER_MAIN_STEPS`` Euler steps:

    * ``judge_wer``: the Whisper judge's corpus WER on the generated speech,
      beside ``judge_wer_real`` on the real audio of the same sentences and
      ``judge_wer_griffin_lim``, the generated mels through Griffin-Lim (the
      speaking head without the learned vocoder's own losses);
    * ``judge_wer_resynthesized``: the judge on the *real* mels through the
      same vocoder, the best the speech model can do with it; and
      ``judge_wer_teacher_forced``: on the head's patches when each is made
      from the real past (``teacher_forced_patches``), the head without the
      drift of speaking on from its own output;
    * ``speaker_similarity``: Resemblyzer cosine between the generated and
      the real utterance (``speaker_similarity_real``: the real prompt
      against the real utterance, the ceiling);
    * ``speaker_id_accuracy``: how often the prompted voice is the nearest
      of all test voices (each the mean embedding of its real test audio),
      and ``speaker_id_accuracy_real`` for the real utterances (their own
      embedding left out of their voice's mean);
    * ``dnsmos_ovrl`` (and ``_sig``, ``_bak``) of the generated and the real
      audio;
    * ``by_steps``: the judge WER and the real-time factor at 1, 2, 4, 8 steps;
    * ``next_patch_error``: teacher-forced, how far the head's guess of each
      patch is from the real one given the real past (``next_patch_errors``),
      beside ``next_patch_error_repeat``, the error of repeating the frame
      before's last mel column. The teacher-forced numbers come from the
      fp32 model, the spoken ones from the model ``say`` runs (int8 on a CPU);
    * all of it again for the ``stress`` sentences (numbers, units,
      abbreviations, homographs) and the ``plain`` ones.

    ``perplexity`` is the backbone's on the test sentences as plain text,
    pretrained SmolLM2 against the speech model's (adapters merged). A
    manifest line without ``words`` is timed by Whisper (``spoken_words``).
    """
    from speechmos import dnsmos

    from .audio import audio_patches
    from .backbone import load_tokenizer
    from .model import build_backbone, load_speaker, quantized_for_cpu, speaker_streams
    from .say import Speaker

    test = load_eval_manifest(data_dir, "test")  # first: a manifest it cannot use fails before anything loads
    if not test:
        raise ValueError(f"{data_dir}: the corpus has no test utterances to evaluate on")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = load_tokenizer()
    model = load_speaker(ckpt, preset, tokenizer, device)
    audio = model.cfg.audio
    texts = perplexity_sentences(test)
    perplexity = {"speech_model": text_perplexity(model.decoder, tokenizer, texts),
                  "pretrained": text_perplexity(build_backbone(model.cfg, len(tokenizer)).to(device).eval(),
                                                tokenizer, texts),
                  "n_sentences": len(texts)}
    logger.info("perplexity on held-out text: %s", perplexity)
    # Speaking runs as ``say`` runs it: int8 on a CPU. The teacher-forced numbers ask what the
    # head knows and run the fp32 model: int8 over a whole utterance at once quantises every
    # position with one scale, which ``say``, stepping a frame at a time, never does
    # (experiments/speaker_int8.py measures both).
    speaking = quantized_for_cpu(model) if device == "cpu" else model
    vocoder = load_vocoder(vocoder_ckpt, preset, device)
    griffin_lim = GriffinLim(audio).to(device)
    judge = load_whisper()
    real = {r["id"]: load_audio(r["path"], audio.sample_rate) for r in test}
    identify = VoiceIdentifier(real, {r["id"]: r["voice"] for r in test}, audio.sample_rate, device)
    prompts = prompt_partners(test, real, audio)

    report: dict = {"groups": {}, "perplexity": perplexity}
    for group, records in sorted(voice_groups(data_dir).items()):
        rows = []
        promptable = [r for r in records if r["id"] in prompts]  # another utterance to prompt with
        if not promptable:
            logger.warning("speaker eval: no %s voice has another test utterance to prompt with; skipped", group)
            continue
        for record in tqdm(spread_over_voices(promptable, max_utterances), desc=f"speaker eval, {group} voices",
                           unit="utt"):
            prompt_id = prompts[record["id"]]["id"]
            voice = voice_prompt(real[prompt_id], audio, source=prompt_id)
            row = {"text": record["text"], "category": record["category"], "voice": record["voice"],
                   "heard_real": transcribe(real[record["id"]], audio.sample_rate, judge), "by_steps": {}}
            words = spoken_words(record, real[record["id"]], audio.sample_rate, judge)
            streams = speaker_streams(record["text"], words, audio_patches(torch.from_numpy(real[record["id"]]), audio),
                                      tokenizer, model.cfg).to(device)
            with torch.inference_mode():
                voice_vector = model.prompt_voice(voice)
                forced = teacher_forced_patches(model, streams, voice_vector, SPEAKER_MAIN_STEPS,
                                                torch.Generator(device).manual_seed(seed))
                row["heard_resynthesized"] = hear_patches(streams.patches, vocoder, judge, audio)
                row["heard_teacher_forced"] = hear_patches(forced, vocoder, judge, audio)
            row["next_patch_error"], row["next_patch_error_repeat"] = next_patch_errors(
                model, streams, voice_vector, torch.Generator(device).manual_seed(seed))
            for k in steps:
                speaker = Speaker(speaking, vocoder, tokenizer, voice, steps=k, seed=seed)
                started = time.perf_counter()
                with torch.inference_mode():  # ``say`` streams the same patches through the same vocoder
                    mel = mel_from_patches(torch.stack(list(speaker.patches(record["text"]))), audio)
                    wave = vocoder.vocode(mel).float().cpu().numpy()
                row["by_steps"][k] = {"heard": transcribe(wave, audio.sample_rate, judge),
                                      "seconds": time.perf_counter() - started,
                                      "audio_seconds": len(wave) / audio.sample_rate}
                if k == SPEAKER_MAIN_STEPS:
                    with torch.inference_mode():
                        row["heard_griffin_lim"] = transcribe(griffin_lim.vocode(mel).float().cpu().numpy(),
                                                              audio.sample_rate, judge)
                    row.update(identify.judge(wave, record["id"], prompt_id))
                    row["dnsmos"] = dnsmos.run(wave, sr=audio.sample_rate)
                    row["dnsmos_real"] = dnsmos.run(real[record["id"]], sr=audio.sample_rate)
            rows.append(row)
        report["groups"][group] = by_category(rows, lambda some: speaker_summary(some, steps))
        logger.info("speaker eval, %s voices: %s", group, report["groups"][group]["all"])
    report["n_test_voices"] = len({r["voice"] for r in test})
    report["checkpoint"], report["vocoder"] = str(ckpt), str(vocoder_ckpt)
    report["run"] = run_info(preset)
    return report


def by_category(rows: list[dict], summarize) -> dict:
    """``summarize`` over all rows, over the ``stress`` sentences' (numbers, units, ...) and the ``plain`` ones'."""
    return {"all": summarize(rows),
            "stress": summarize([r for r in rows if r["category"].startswith("stress")]),
            "plain": summarize([r for r in rows if not r["category"].startswith("stress")])}


def by_steps(rows: list[dict], steps: tuple[int, ...]) -> dict:
    """The judge's WER and the real-time factor of the speech made with each number of Euler steps."""
    texts = [r["text"] for r in rows]
    return {str(k): {"judge_wer": word_error_rate(texts, [r["by_steps"][k]["heard"] for r in rows]),
                     "real_time_factor": sum(r["by_steps"][k]["seconds"] for r in rows)
                     / sum(r["by_steps"][k]["audio_seconds"] for r in rows)}
            for k in steps}


def speaker_summary(rows: list[dict], steps: tuple[int, ...]) -> dict:
    """``evaluate_speaker``'s numbers over some of its rows."""
    if not rows:
        return {"n_utterances": 0}
    texts = [r["text"] for r in rows]
    main = SPEAKER_MAIN_STEPS

    def mos(key: str, part: str) -> float:
        return float(np.mean([r[key][part] for r in rows]))

    return {
        "n_utterances": len(rows),
        "n_voices": len({r["voice"] for r in rows}),
        "steps": main,
        "judge_wer": word_error_rate(texts, [r["by_steps"][main]["heard"] for r in rows]),
        "judge_wer_real": word_error_rate(texts, [r["heard_real"] for r in rows]),
        "judge_wer_griffin_lim": word_error_rate(texts, [r["heard_griffin_lim"] for r in rows]),
        "judge_wer_resynthesized": word_error_rate(texts, [r["heard_resynthesized"] for r in rows]),
        "judge_wer_teacher_forced": word_error_rate(texts, [r["heard_teacher_forced"] for r in rows]),
        "next_patch_error": float(np.mean([r["next_patch_error"] for r in rows])),
        "next_patch_error_repeat": float(np.mean([r["next_patch_error_repeat"] for r in rows])),
        "speaker_similarity": float(np.mean([r["similarity"] for r in rows])),
        "speaker_similarity_real": float(np.mean([r["similarity_real"] for r in rows])),
        "speaker_id_accuracy": float(np.mean([r["identified"] for r in rows])),
        "speaker_id_accuracy_real": float(np.mean([r["identified_real"] for r in rows])),
        **{f"dnsmos_{part}": mos("dnsmos", f"{part}_mos") for part in ("ovrl", "sig", "bak")},
        **{f"dnsmos_{part}_real": mos("dnsmos_real", f"{part}_mos") for part in ("ovrl", "sig", "bak")},
        "by_steps": by_steps(rows, steps),
    }


ACOUSTIC_STEPS = (0, 1, 4)  # Euler steps of the speaking head; 0: the regressed mel, no sampling
ACOUSTIC_MAIN_STEPS = 4


def evaluate_acoustic(preset: str, ckpt: str | os.PathLike, data_dir: str | os.PathLike,
                      vocoder_ckpt: str | os.PathLike, voices: list[str] | None = None,
                      max_utterances: int | None = None, steps: tuple[int, ...] = ACOUSTIC_STEPS,
                      seed: int = 0, temperature: float | None = None,
                      aligner_ckpt: str | os.PathLike | None = None, split: str = "test") -> dict:
    """The acoustic model speaking test sentences it never trained on, from their text alone; judged independently.

    Each test utterance (of ``voices``, if given) is spoken from its text's
    phonemes (``sentence_phonemes``) with the model's own durations, in the
    voice of *another* test utterance of the same voice, through the
    vocoder ``vocoder_ckpt``. Per voice group, and apart for the ``stress``
    sentences (numbers, units, abbreviations, homographs) and the ``plain``:

    * ``judge_wer`` at ``ACOUSTIC_MAIN_STEPS`` steps and ``by_steps`` (0: the
      regressed mel), beside ``judge_wer_real`` (the real audio) and
      ``judge_wer_resynthesized`` (the real mel through the same vocoder:
      the best any mel can do through it);
    * ``judge_wer_engine_timed``: the same phonemes held for as long as the
      engine held them, so timing is not the model's own, and
      ``mel_l1_engine_timed``, that mel's mean absolute error against the
      real one: a cheap proxy of quality, free of the judge's noise;
    * ``duration_ratio``: generated over real seconds (median and the share
      within ±25%), and ``duration_error``, the mean absolute error of the
      predicted log(1 + columns) per phoneme against the engine's;
    * ``similarity`` and ``identified`` (``VoiceIdentifier``, at the most
      Euler steps asked for) among every voice of the test split;
    * ``phoneme_accuracy``, given a phoneme aligner (``aligner_ckpt``): how
      often its classifier hears, under each generated column, the phoneme
      the model was asked to say there (at ``ACOUSTIC_MAIN_STEPS``), beside
      ``phoneme_accuracy_real`` on the real audio with the engine's timing.

    Samples start from noise scaled by ``temperature`` (default: the model's
    ``SAMPLING_TEMPERATURE``). ``split="val"`` measures on the validation
    sentences instead (seen voices only), to choose a setting such as the
    temperature without looking at the test split.
    """
    from .acoustic import SAMPLING_TEMPERATURE, columns_per_phoneme, load_acoustic, prompt_columns, text_phoneme_ids
    from .aligner import load_aligner, phoneme_classes
    from .audio import audio_patches
    from .data.phonemes import phoneme_id

    everyone = load_eval_manifest(data_dir, split)  # first: a manifest it cannot use fails before anything loads
    test = [r for r in everyone if voices is None or r["voice"] in voices]
    if not test:
        raise ValueError(f"{data_dir}: no {split} utterances" + (f" of {', '.join(voices)}" if voices else ""))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_acoustic(ckpt, preset, device)
    audio = model.cfg.audio
    temperature = SAMPLING_TEMPERATURE if temperature is None else temperature
    aligner = None if aligner_ckpt is None else load_aligner(aligner_ckpt, preset, device)

    def heard_phonemes(patches: torch.Tensor, phonemes: torch.Tensor, durations: torch.Tensor) -> float:
        """The share of columns in which the aligner's classifier hears the phoneme laid out there."""
        asked = phoneme_classes(torch.repeat_interleave(phonemes, durations))
        heard = aligner.log_probs(patches.reshape(-1, audio.n_mels)).argmax(-1)[:len(asked)]
        return float((heard == asked[:len(heard)]).float().mean())

    vocoder = load_vocoder(vocoder_ckpt, preset, device)
    judge = load_whisper()
    real = {r["id"]: load_audio(r["path"], audio.sample_rate) for r in everyone}
    identify = VoiceIdentifier(real, {r["id"]: r["voice"] for r in everyone}, audio.sample_rate, device)

    def vocoded(patches: torch.Tensor) -> np.ndarray:
        return vocoder.vocode(mel_from_patches(patches, audio)).float().cpu().numpy()

    prompts = prompt_partners(test, real, audio)
    report: dict = {"groups": {}}
    groups = defaultdict(list)
    for r in test:
        groups[r["voice_split"]].append(r)
    for group, records in sorted(groups.items()):
        rows = []
        promptable = [r for r in records if r["id"] in prompts]
        if len(promptable) < len(records):
            logger.info("acoustic eval, %s voices: %d utterances left out, no other test utterance of their voice "
                        "has speech enough to prompt with", group, len(records) - len(promptable))
        for record in tqdm(spread_over_voices(promptable, max_utterances), desc=f"acoustic eval, {group} voices",
                           unit="utt"):
            prompt = prompts[record["id"]]
            wave = real[record["id"]]
            real_patches = audio_patches(torch.from_numpy(wave), audio).to(device)
            row = {"text": record["text"], "category": record["category"], "voice": record["voice"],
                   "engine": record["engine"], "heard_real": transcribe(wave, audio.sample_rate, judge),
                   "real_seconds": len(wave) / audio.sample_rate, "by_steps": {}}
            with torch.inference_mode():
                voice = model.voice(prompt_columns(real[prompt["id"]], audio, prompt["id"]).to(device)[None])
                row["heard_resynthesized"] = transcribe(vocoded(real_patches), audio.sample_rate, judge)
                phonemes = text_phoneme_ids(record["text"]).to(device)
                for k in steps:
                    started = time.perf_counter()
                    patches, laid_out = model.speak(phonemes, voice, k, torch.Generator(device).manual_seed(seed),
                                                    temperature=temperature)
                    generated = vocoded(patches)
                    row["by_steps"][k] = {"seconds": time.perf_counter() - started,
                                          "heard": transcribe(generated, audio.sample_rate, judge),
                                          "audio_seconds": len(generated) / audio.sample_rate}
                    if k == max(steps):
                        row.update(identify.judge(generated, record["id"], prompt["id"]))
                    if k == ACOUSTIC_MAIN_STEPS and aligner is not None:
                        row["phoneme_accuracy"] = heard_phonemes(patches, phonemes, laid_out)
                if record.get("phonemes"):
                    timed = torch.tensor([phoneme_id(p[0]) for p in record["phonemes"]], device=device)
                    ends = np.array([p[2] for p in record["phonemes"]])
                    columns = real_patches.shape[0] * audio.mels_per_frame
                    durations = torch.from_numpy(columns_per_phoneme(ends, columns, audio)).to(device)
                    patches, _ = model.speak(timed, voice, ACOUSTIC_MAIN_STEPS,
                                             torch.Generator(device).manual_seed(seed), durations=durations,
                                             temperature=temperature)
                    if aligner is not None:
                        row["phoneme_accuracy_real"] = heard_phonemes(real_patches, timed, durations)
                    row["heard_engine_timed"] = transcribe(vocoded(patches), audio.sample_rate, judge)
                    row["mel_l1_engine_timed"] = float((patches - real_patches).abs().mean())
                    predicted = model.durations(timed[None], voice)[0]
                    row["duration_error"] = float((predicted - torch.log1p(durations.float())).abs().mean())
            rows.append(row)
        report["groups"][group] = by_category(rows, lambda some: acoustic_summary(some, steps))
        report["groups"][group]["by_engine"] = {
            engine: acoustic_summary([r for r in rows if r["engine"] == engine], steps)
            for engine in sorted({r["engine"] for r in rows})}
        logger.info("acoustic eval, %s voices: %s", group, report["groups"][group]["all"])
    report["voices"], report["n_test_voices"] = sorted({r["voice"] for r in test}), len(identify.members)
    report["checkpoint"], report["vocoder"] = str(ckpt), str(vocoder_ckpt)
    report["aligner"], report["temperature"] = None if aligner_ckpt is None else str(aligner_ckpt), temperature
    report["split"], report["run"] = split, run_info(preset)
    return report


def acoustic_summary(rows: list[dict], steps: tuple[int, ...]) -> dict:
    """``evaluate_acoustic``'s numbers over some of its rows."""
    if not rows:
        return {"n_utterances": 0}
    texts = [r["text"] for r in rows]
    main = ACOUSTIC_MAIN_STEPS if ACOUSTIC_MAIN_STEPS in steps else steps[-1]
    ratios = np.array([r["by_steps"][main]["audio_seconds"] / r["real_seconds"] for r in rows])
    timed = [r for r in rows if "heard_engine_timed" in r]
    return {
        "n_utterances": len(rows),
        "n_voices": len({r["voice"] for r in rows}),
        "steps": main,
        "judge_wer": word_error_rate(texts, [r["by_steps"][main]["heard"] for r in rows]),
        "judge_wer_real": word_error_rate(texts, [r["heard_real"] for r in rows]),
        "judge_wer_resynthesized": word_error_rate(texts, [r["heard_resynthesized"] for r in rows]),
        "judge_wer_engine_timed": word_error_rate([r["text"] for r in timed], [r["heard_engine_timed"] for r in timed])
        if timed else None,
        "mel_l1_engine_timed": mean_or_none([r["mel_l1_engine_timed"] for r in timed]),
        **{key: float(np.mean([r[key] for r in rows]))
           for key in ("similarity", "similarity_real", "identified", "identified_real")},
        "duration_error": mean_or_none([r["duration_error"] for r in timed]),
        "phoneme_accuracy": mean_or_none([r["phoneme_accuracy"] for r in rows if "phoneme_accuracy" in r]),
        "phoneme_accuracy_real": mean_or_none([r["phoneme_accuracy_real"] for r in timed
                                               if "phoneme_accuracy_real" in r]),
        "duration_ratio_median": float(np.median(ratios)),
        "duration_within_25_percent": float(np.mean(np.abs(ratios - 1) <= 0.25)),
        "by_steps": by_steps(rows, steps),
        "utterances": [{"text": r["text"], "voice": r["voice"], "heard": r["by_steps"][main]["heard"],
                        "heard_real": r["heard_real"]} for r in rows],
    }


def evaluate_aligner(preset: str, ckpt: str | os.PathLike, data_dir: str | os.PathLike,
                     split: str = "test", max_utterances: int | None = None) -> dict:
    """The phoneme aligner against the engine's own timings, on the ``split`` utterances that have them.

    Per voice group: ``border_error_ms`` (the median, mean and 90th
    percentile distance between each aligned phoneme border and the
    engine's), the share of borders within 20 and 40 ms, and
    ``column_accuracy``, how often the classifier's own best class is the
    phoneme sounding under a column (no sequence given: the cheap judge's
    number).
    """
    from .acoustic import columns_per_phoneme
    from .aligner import MIN_PHONEME_COLUMNS, class_prior, force_align, load_aligner, phoneme_classes
    from .audio import audio_patches
    from .data.phonemes import phoneme_id

    groups: dict[str, list[dict]] = defaultdict(list)
    for record in load_eval_manifest(data_dir, split):
        if record.get("phonemes"):
            groups[record["voice_split"]].append(record)
    if not groups:
        raise ValueError(f"{data_dir}: no {split} utterance has 'phonemes', the engine's phoneme timings to measure "
                         "the aligner against")
    aligner = load_aligner(ckpt, preset)
    audio = aligner.cfg.audio
    hop_ms = 1000 * audio.hop_length / audio.sample_rate
    report: dict = {"groups": {}}
    for group, records in sorted(groups.items()):
        errors, correct, columns = [], 0, 0
        heard = []  # (record, columns, their log-probabilities), each computed once
        for record in tqdm(spread_over_voices(records, max_utterances), desc=f"aligner eval, {group} voices",
                           unit="utt"):
            wave = torch.from_numpy(load_audio(record["path"], audio.sample_rate))
            mel = audio_patches(wave, audio).reshape(-1, audio.n_mels)
            heard.append((record, mel, aligner.log_probs(mel).cpu()))
        log_prior = class_prior([log_probs.numpy() for _, _, log_probs in heard])
        for record, mel, log_probs in heard:
            ids = torch.tensor([phoneme_id(row[0]) for row in record["phonemes"]])
            truth = columns_per_phoneme(np.array([row[2] for row in record["phonemes"]]), len(mel), audio)
            keep = truth > 0  # a phoneme shorter than a column has no column to be found in
            aligned = force_align(log_probs.numpy() - log_prior, phoneme_classes(ids[keep]).numpy(),
                                  MIN_PHONEME_COLUMNS)  # as data align decodes
            errors.append(np.abs(np.cumsum(aligned)[:-1] - np.cumsum(truth[keep])[:-1]) * hop_ms)
            guessed = log_probs.argmax(-1)
            correct += int((guessed == phoneme_classes(torch.repeat_interleave(ids, torch.from_numpy(truth)))).sum())
            columns += len(mel)
        borders = np.concatenate(errors)
        report["groups"][group] = {
            "n_utterances": len(errors), "n_voices": len({r["voice"] for r in records}), "n_borders": len(borders),
            "border_error_ms": {"median": float(np.median(borders)), "mean": float(borders.mean()),
                                "p90": float(np.percentile(borders, 90))},
            "borders_within_20_ms": float(np.mean(borders <= 20)),
            "borders_within_40_ms": float(np.mean(borders <= 40)),
            "column_accuracy": correct / columns,
        }
        logger.info("aligner eval, %s voices: %s", group, report["groups"][group])
    report["checkpoint"], report["split"], report["run"] = str(ckpt), split, run_info(preset)
    return report
