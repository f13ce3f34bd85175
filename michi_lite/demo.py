"""``michi-lite demo``: everything built so far, end to end.

First the data's path on one sentence: synthesise it, align its words two
ways (the engine's own timings and Whisper's), lay its tokens on the 12.5 Hz
frame grid, and save the audio, a figure and a JSON summary. Then, with the
``lite`` references, a conversation: the duplex engine hears a bundled
user's side (a held-out dialogue's, ``data/duplex/demo_user.flac``) 80 ms at a
time and answers as it goes (its words voiced by the acoustic model, as
``michi-lite chat`` voices them); the stereo audio, its timeline, both streams on
the frame clock and the frame step's times are saved beside the rest.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from .audio import MelSpectrogram, frame_count, load_audio, prepare_waveform, save_audio
from .backbone import load_tokenizer
from .config import FRAME_SECONDS, Config
from .data.alignment import boundary_differences, summarize_differences, whisper_words
from .data.engines import Voice, available_engines, synthesize
from .data.frames import TokenGrid, frame_tokens, text_from_grid
from .data.words import Word
from .plots import alignment_figure, dialogue_streams_figure, frame_times_figure
from .weights import (
    REFERENCE_ACOUSTIC,
    REFERENCE_CONVERSATION,
    REFERENCE_JOINT,
    REFERENCE_LISTENER,
    REFERENCE_VOCODER,
    REFERENCE_VOICE,
)

logger = logging.getLogger(__name__)

DEMO_TEXT = "On March 3, 1987, Dr. Smith read 12 pages in 45 minutes."


@dataclass
class AlignedUtterance:
    """One sentence spoken, timed two ways and laid on the frame grid."""

    waveform: np.ndarray  # (samples,) at the preset's rate
    mel: np.ndarray  # (n_mels, mel frames), causal log-mel
    engine_words: list[Word] | None  # the engine's own timings, None if it gives none
    whisper_words: list[Word]
    grid: TokenGrid  # one frame per 80 ms of the waveform


def align_utterance(cfg: Config, text: str, voice: Voice, tokenizer) -> AlignedUtterance:
    """Synthesise ``text`` in ``voice`` at the preset's rate and align its words both ways.

    The grid uses the engine's timings where there are some, Whisper's otherwise.
    """
    rate = cfg.audio.sample_rate
    synthesis = synthesize(text, voice)
    waveform = prepare_waveform(synthesis.waveform, synthesis.sample_rate, rate, source=voice.name)
    heard = whisper_words(waveform, rate)
    mel = MelSpectrogram(cfg.audio)(torch.from_numpy(waveform)).numpy()
    grid = frame_tokens(text, synthesis.words or heard, tokenizer, frame_count(len(waveform), cfg.audio))
    return AlignedUtterance(waveform, mel, synthesis.words, heard, grid)


def draw(utterance: AlignedUtterance, cfg: Config, tokenizer, title: str = "") -> Figure:
    """The utterance's waveform, mel, both word alignments and token grid in one figure."""
    return alignment_figure(utterance.waveform, cfg.audio.sample_rate, utterance.mel, utterance.engine_words,
                            utterance.whisper_words, utterance.grid.labels(tokenizer), title=title)


def run_demo(cfg: Config, out: str | os.PathLike, text: str = DEMO_TEXT) -> dict:
    """Run the demo into ``out``; returns a summary whose ``story`` says what happened.

    The conversation runs first, though its story comes second: once
    CTranslate2 (Whisper's runtime) has loaded a model, torch's two-thread
    matrix products in the same process run about 1.4 times slower (634 ->
    868 us for a (64, 384) x (384, 1536) product on the 2-core development
    machine) and the duplex engine's frame step twice as slow (36.7 -> 72.3
    ms median), even with Whisper on one thread and idle
    (data/duplex/README.md).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    engines = available_engines()
    if not engines:
        raise RuntimeError("no speech engine is installed; run `make setup` (as root it installs espeak-ng)")
    references = (REFERENCE_JOINT, REFERENCE_LISTENER, REFERENCE_VOCODER, REFERENCE_VOICE, REFERENCE_ACOUSTIC,
                  REFERENCE_CONVERSATION)
    conversation = None
    if cfg.name == "lite" and all(path.exists() for path in references):
        from .duplex import load_engine

        logger.info("playing the bundled conversation to the duplex engine")
        engine = load_engine("lite", *references[:4], acoustic=REFERENCE_ACOUSTIC)  # as `chat` speaks by default
        bundled = json.loads(REFERENCE_CONVERSATION.with_suffix(".json").read_text())
        user = load_audio(REFERENCE_CONVERSATION, engine.listener.cfg.audio.sample_rate)
        conversation = converse_demo(engine, user, out, prefix=bundled["rag"])
    # the first engine that gives its own word timings, so there are two alignments to compare
    engine = next((e for e in engines if e.gives_word_timings), engines[0])
    voice = engine.voices()[0]
    logger.info("synthesising with %s voice %s and aligning its words with Whisper", engine.name, voice.name)
    tokenizer = load_tokenizer()
    utterance = align_utterance(cfg, text, voice, tokenizer)
    waveform, heard, grid, rate = utterance.waveform, utterance.whisper_words, utterance.grid, cfg.audio.sample_rate
    save_audio(out / "demo.wav", waveform, rate)
    draw(utterance, cfg, tokenizer, title=f"{engine.name} · {voice.name}: {text}").savefig(
        out / "demo_alignment.png", dpi=120)

    timed_by_engine = utterance.engine_words
    diffs = boundary_differences(timed_by_engine, heard) if timed_by_engine else np.zeros(0)
    summary = {
        "text": text,
        "engine": engine.name,
        "voice": voice.name,
        "seconds": round(len(waveform) / rate, 3),
        "whisper_heard": " ".join(w.word for w in heard),
        "boundary_difference_ms": summarize_differences(diffs),
        "frames": len(grid),
        "text_tokens": len(grid.text_token_ids),
        "grid_round_trip_exact": text_from_grid(grid, tokenizer) == text,
        "files": {"audio": str(out / "demo.wav"), "figure": str(out / "demo_alignment.png")},
    }
    summary["story"] = "\n".join([
        f"1. synthesised {summary['seconds']} s of speech with {engine.name} ({voice.name}): {out / 'demo.wav'}",
        f"2. Whisper heard: {summary['whisper_heard']!r}",
        f"3. engine vs Whisper word boundaries: median {summary['boundary_difference_ms']['median_ms']:.0f} ms apart"
        f" (Whisper later by {summary['boundary_difference_ms']['median_signed_ms']:.0f} ms)"
        f" over {summary['boundary_difference_ms']['n_words']} words" if timed_by_engine else
        "3. this engine gives no word timings; Whisper's are used",
        f"4. {summary['text_tokens']} text tokens on {summary['frames']} frames of {FRAME_SECONDS * 1000:.0f} ms;"
        f" reading them back gives the text exactly: {summary['grid_round_trip_exact']}",
        f"5. figure: {out / 'demo_alignment.png'}",
    ])
    if conversation is not None:
        summary["conversation"] = conversation
        summary["story"] += "\n" + "\n".join([
            f"6. a conversation: the duplex engine heard {bundled['seconds']:.1f} s of a held-out user "
            f"({bundled['user_voice']}) 80 ms at a time and answered as it went: {out / 'conversation.wav'}",
            f"7. it heard: {conversation['heard']!r}",
            f"8. it said: {conversation['said']!r}",
            f"9. a frame step took {conversation['step_ms_median']:.1f} ms median, {conversation['step_ms_p95']:.1f} "
            f"ms p95 (real time: 80 ms); figures: {out / 'conversation.png'}, {out / 'conversation_latency.png'}",
        ])
    else:
        summary["story"] += ("\n6. the conversation part plays data/duplex/demo_user.flac to the lite references: "
                             "`michi-lite demo --preset lite` from a source checkout")
    (out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def converse_demo(engine, user: np.ndarray, out: str | os.PathLike, prefix: str | None = None) -> dict:
    """``engine`` (a ``DuplexEngine``) hears ``user`` (mono, at the listener's rate) and answers, then 3 s of
    silence -> into ``out``: conversation.wav (user, model), conversation.json (the timeline),
    conversation.png (both streams on the frame clock) and conversation_latency.png; returns a summary."""
    from .duplex import STAGES, converse

    out = Path(out)
    both, timeline = converse(engine, user, tail_seconds=3.0, prefix=prefix)
    rate = engine.model.cfg.audio.sample_rate
    save_audio(out / "conversation.wav", both, rate)
    (out / "conversation.json").write_text(json.dumps(timeline, indent=1) + "\n")
    words = {side: [engine.token_text(getattr(r, f"{side}_token")) for r in engine.log] for side in ("user", "model")}
    dialogue_streams_figure(both, rate, words["user"], words["model"],
                            title="the user (as the listener heard it) and the model, frame by frame").savefig(
        out / "conversation.png", dpi=110)
    seconds = {stage: np.array([r.seconds[stage] for r in engine.log]) for stage in STAGES}
    frame_times_figure(seconds, title="the duplex engine's frame step, stage by stage").savefig(
        out / "conversation_latency.png", dpi=110)
    steps = sum(seconds.values()) * 1000
    return {
        "heard": timeline["user_said"], "said": timeline["model_said"], "frames": timeline["frames"],
        "step_ms_median": float(np.median(steps)), "step_ms_p95": float(np.percentile(steps, 95)),
        "stage_ms_median": {stage: float(np.median(s) * 1000) for stage, s in seconds.items()},
        "files": {name: str(out / name) for name in ("conversation.wav", "conversation.json", "conversation.png",
                                                     "conversation_latency.png")},
    }
