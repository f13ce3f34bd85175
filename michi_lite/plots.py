"""Figures the notebooks, the demo and the benchmarks draw (matplotlib, no state)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from .config import FRAME_SECONDS
from .data.words import Word


def draw_words(ax, words: list[Word], color: str, label: str, y: float, linestyle: str = "-") -> None:
    """Word spans as shaded boxes with their text, at height ``y`` (axes fraction)."""
    transform = ax.get_xaxis_transform()
    for i, w in enumerate(words):
        ax.axvspan(w.start, w.end, ymin=y - 0.12, ymax=y + 0.12, color=color, alpha=0.18, lw=0)
        ax.axvline(w.start, ymin=y - 0.15, ymax=y + 0.15, color=color, linestyle=linestyle, lw=1.2,
                   label=label if i == 0 else None)
        ax.text((w.start + w.end) / 2, y, w.word, transform=transform, ha="center", va="center",
                fontsize=8, color=color, clip_on=True)


def alignment_figure(
    waveform: np.ndarray,
    sample_rate: int,
    mel: np.ndarray,
    engine_words: list[Word] | None,
    whisper_words: list[Word] | None,
    grid_labels: list[str] | None = None,
    title: str = "",
) -> Figure:
    """Waveform, log-mel and word boundaries from both aligners, over one time axis.

    ``mel`` is (n_mels, frames); ``grid_labels`` are the token strings on the
    80 ms frame grid ("" for PAD), drawn as a strip under the spectrogram.
    """
    seconds = len(waveform) / sample_rate
    rows = 3 if grid_labels is not None else 2
    fig = Figure(figsize=(12, 2.2 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, 1, sharex=True, height_ratios=[1.2, 1.4, 0.5][:rows])

    ax = axes[0]
    t = np.arange(len(waveform)) / sample_rate
    ax.plot(t, waveform, color="0.35", lw=0.5)
    if engine_words:
        draw_words(ax, engine_words, "tab:blue", "engine", 0.85)
    if whisper_words:
        draw_words(ax, whisper_words, "tab:orange", "Whisper", 0.15, linestyle="--")
    ax.set_ylabel("waveform")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title)

    ax = axes[1]
    ax.imshow(mel, origin="lower", aspect="auto", extent=(0, seconds, 0, mel.shape[0]), cmap="magma")
    for w in engine_words or []:
        ax.axvline(w.start, color="tab:cyan", lw=0.8)
    for w in whisper_words or []:
        ax.axvline(w.start, color="tab:orange", lw=0.8, linestyle="--")
    ax.set_ylabel("mel bin")

    if grid_labels is not None:
        ax = axes[2]
        for frame, label in enumerate(grid_labels):
            start = frame * FRAME_SECONDS
            ax.axvspan(start, start + FRAME_SECONDS, color="tab:green" if label else "0.92",
                       alpha=0.35 if label else 1.0, lw=0.3, ec="white")
            if label:
                ax.text(start + FRAME_SECONDS / 2, 0.5, label.replace(" ", "␣"), ha="center", va="center",
                        rotation=90, fontsize=7)
        ax.set_yticks([])
        ax.set_ylabel("tokens\n12.5 Hz", rotation=0, ha="right", va="center")
    axes[-1].set_xlabel("seconds")
    axes[-1].set_xlim(0, max(seconds, len(grid_labels or []) * FRAME_SECONDS))
    return fig


def boundary_histogram(diffs_by_engine: dict[str, np.ndarray], title: str = "") -> Figure:
    """Distribution of (Whisper − engine) word boundaries in ms, one curve per engine."""
    fig = Figure(figsize=(8, 3.5), layout="constrained")
    ax = fig.subplots()
    all_diffs = np.concatenate(list(diffs_by_engine.values())) if diffs_by_engine else np.zeros(1)
    limit = max(np.percentile(np.abs(all_diffs), 99), 80.0)
    bins = np.linspace(-limit, limit, 61)
    for engine, diffs in sorted(diffs_by_engine.items()):
        ax.hist(np.clip(diffs, -limit, limit), bins=bins, histtype="step", lw=1.6,
                label=f"{engine} (median |Δ| {np.median(np.abs(diffs)):.0f} ms, n={len(diffs)})")
    for edge in (-FRAME_SECONDS * 1000, FRAME_SECONDS * 1000):
        ax.axvline(edge, color="0.5", linestyle=":", label="± one 80 ms frame" if edge > 0 else None)
    ax.axvline(0, color="0.3", lw=0.8)
    ax.set_xlabel("Whisper − engine word boundary (ms); positive: Whisper later")
    ax.set_ylabel("boundaries")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def spectrogram_comparison(mels: dict[str, np.ndarray], hop_seconds: float, title: str = "") -> Figure:
    """Log-mel spectrograms (n_mels, frames) one above the other, on one colour scale and time axis."""
    fig = Figure(figsize=(12, 1.9 * len(mels) + 0.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(mels), 1, sharex=True))
    low = min(float(np.percentile(m, 1)) for m in mels.values())
    high = max(float(m.max()) for m in mels.values())
    for ax, (name, mel) in zip(axes, mels.items()):
        image = ax.imshow(mel, origin="lower", aspect="auto", cmap="magma", vmin=low, vmax=high,
                          extent=(0, mel.shape[1] * hop_seconds, 0, mel.shape[0]))
        ax.set_ylabel("mel bin")
        ax.set_title(name, loc="left", fontsize=10)
    axes[-1].set_xlabel("time (s)")
    fig.colorbar(image, ax=axes, label="log mel", shrink=0.8)
    if title:
        fig.suptitle(title)
    return fig


def loss_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], ylabel: str, title: str = "",
                smooth: int = 1) -> Figure:
    """Training curves: name -> (steps, values), each a running mean over ``smooth`` logged points."""
    fig = Figure(figsize=(8, 3.6), layout="constrained")
    ax = fig.subplots()
    for name, (steps, values) in curves.items():
        if smooth > 1 and len(values) >= smooth:
            values = np.convolve(values, np.ones(smooth) / smooth, mode="valid")
            steps = steps[smooth - 1:]
        ax.plot(steps, values, label=name, lw=1.4)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    return fig


def transcript_figure(waveform: np.ndarray, sample_rate: int, words: list[Word], heard: list[tuple[str, float]],
                      title: str = "") -> Figure:
    """A streamed transcript over the waveform: aligned word spans above, each emitted word at its time below.

    ``heard`` holds (word, emission time in s); a grey arrow joins each
    emitted word to the end of the aligned word it matches by position order.
    """
    seconds = len(waveform) / sample_rate
    fig = Figure(figsize=(12, 3.4), layout="constrained")
    ax = fig.subplots()
    ax.plot(np.arange(len(waveform)) / sample_rate, waveform, color="0.6", lw=0.5)
    draw_words(ax, words, "tab:blue", "spoken (aligned)", 0.85)
    for i, (word, emitted) in enumerate(heard):
        ax.axvline(emitted, ymin=0.05, ymax=0.45, color="tab:red", lw=1.0, label="emitted" if i == 0 else None)
        ax.text(emitted, 0.12 + 0.14 * (i % 2), word, transform=ax.get_xaxis_transform(), fontsize=8,
                color="tab:red", ha="right", va="bottom", clip_on=True)
    for frame in np.arange(0, seconds, FRAME_SECONDS):
        ax.axvline(frame, color="0.9", lw=0.4, zorder=0)
    ax.set_xlim(0, seconds)
    ax.set_xlabel("seconds (grid: 80 ms frames)")
    ax.set_yticks([])
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    ax.set_title(title)
    return fig


def delay_histogram(delays_by_group: dict[str, np.ndarray], title: str = "") -> Figure:
    """Emission delays in ms (emitted minus aligned word end), one curve per voice group."""
    fig = Figure(figsize=(8, 3.5), layout="constrained")
    ax = fig.subplots()
    bins = np.arange(-160, 801, 20)
    for group, delays in sorted(delays_by_group.items()):
        if len(delays):
            ax.hist(np.clip(delays, bins[0], bins[-1]), bins=bins, histtype="step", lw=1.6,
                    label=f"{group} voices (median {np.median(delays):.0f} ms, n={len(delays)})")
    ax.axvline(0, color="0.3", lw=0.8)
    ax.axvline(320, color="0.5", linestyle=":", label="320 ms")
    ax.set_xlabel("emission time − aligned word end (ms)")
    ax.set_ylabel("words")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def step_sweep(wer_by_group: dict[str, dict[int, float]], real_wer: dict[str, float], title: str = "") -> Figure:
    """Judge WER against Euler steps per voice group, each with its WER on the real audio as a dashed line."""
    fig = Figure(figsize=(6, 3.6), layout="constrained")
    ax = fig.subplots()
    for i, (group, by_steps) in enumerate(wer_by_group.items()):
        steps = sorted(by_steps)
        color = f"C{i}"
        ax.plot(steps, [by_steps[k] for k in steps], "o-", color=color, label=f"{group} voices, generated")
        ax.axhline(real_wer[group], color=color, ls="--", lw=1, label=f"{group} voices, real audio")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({k for by_steps in wer_by_group.values() for k in by_steps}))
    ax.get_xaxis().set_major_formatter("{x:.0f}")
    ax.set_xlabel("Euler steps of the speaking head")
    ax.set_ylabel("judge WER")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return fig


def dialogue_streams_figure(stereo: np.ndarray, sample_rate: int, user_tokens: list[str], model_tokens: list[str],
                            title: str = "") -> Figure:
    """A dialogue on the frame clock: each side's waveform, and above it the token its text stream has on each
    80 ms frame (the user's as the listener heard it, the model's as it is taught to say it; PAD left blank).

    ``stereo`` is (2, samples): user, then model; the token lists hold one
    string per frame ("" for PAD).
    """
    seconds = stereo.shape[1] / sample_rate
    fig = Figure(figsize=(14, 4.2), layout="constrained")
    axes = fig.subplots(2, 1, sharex=True)
    for ax, wave, tokens, name, color in zip(axes, stereo, (user_tokens, model_tokens), ("user", "model"),
                                             ("tab:blue", "tab:orange")):
        ax.plot(np.arange(len(wave)) / sample_rate, wave, color="0.65", lw=0.4)
        for frame, token in enumerate(tokens):
            if token:
                ax.text((frame + 0.5) * FRAME_SECONDS, 0.97 - 0.16 * (frame % 3), token, color=color, fontsize=7,
                        ha="center", va="top", transform=ax.get_xaxis_transform(), clip_on=True)
        ax.set_ylabel(name)
        ax.set_yticks([])
    axes[-1].set_xlim(0, seconds)
    axes[-1].set_xlabel("seconds (each token on its 80 ms frame)")
    axes[0].set_title(title)
    return fig


def text_queries_figure(queries: list[tuple[str, int, str]], n_frames: int, title: str = "",
                        heard_from: int = 0) -> Figure:
    """What training asks the text decoder: per query (a label, the last frame it hears, its lesson).

    Each query is a bar over the frames it hears, from ``heard_from`` (a
    decoder restarted mid-stream hears from its kept frames on; the frames
    before are shaded), coloured by what it is taught: "commit" (the next
    token, on its frame), "wait" (too early) or "late" (its frame has
    passed: commit now).
    """
    colours = {"commit": "tab:green", "wait": "0.7", "late": "tab:orange"}
    fig = Figure(figsize=(10, 0.16 * len(queries) + 1.2), layout="constrained")
    ax = fig.subplots()
    if heard_from:
        ax.axvspan(0, heard_from, color="0.93", lw=0)
    for row, (label, frame, lesson) in enumerate(queries):
        ax.barh(row, frame + 1 - heard_from, left=heard_from, height=0.7, color=colours[lesson], lw=0)
    ax.set_yticks(range(len(queries)), [label for label, _, _ in queries], fontsize=6)
    ax.invert_yaxis()
    ax.set_xlim(0, n_frames)
    ax.set_xlabel("frames of audio the query hears (80 ms each)")
    ax.set_ylabel("query: the token it decides on")
    ax.legend(handles=[Patch(color=colour, label=lesson) for lesson, colour in colours.items()], loc="lower right",
              fontsize=8)
    ax.set_title(title)
    return fig


def frame_times_figure(seconds: dict[str, np.ndarray], title: str = "") -> Figure:
    """A conversation's frame step, stage by stage: per frame (stacked, against the 80 ms of real time each
    frame gives) and as distributions (each stage's, and the whole step's).

    ``seconds`` maps each stage's name, in the order the step runs them, to
    its time on every frame (seconds, one value per frame).
    """
    stages = list(seconds)
    ms = np.stack([np.asarray(seconds[stage]) * 1000 for stage in stages])  # (stages, frames)
    clock = np.arange(ms.shape[1]) * FRAME_SECONDS
    fig = Figure(figsize=(14, 4), layout="constrained")
    over_time, spread = fig.subplots(1, 2, width_ratios=(2.2, 1))
    over_time.stackplot(clock, ms, labels=stages, alpha=0.85)
    over_time.axhline(FRAME_SECONDS * 1000, color="black", lw=1, ls="--", label="real time (80 ms)")
    over_time.set_xlim(0, clock[-1] if len(clock) > 1 else FRAME_SECONDS)
    over_time.set_xlabel("conversation time (s)")
    over_time.set_ylabel("ms per frame")
    over_time.legend(loc="upper left", fontsize=8, ncols=len(stages) + 1)
    total = ms.sum(0)
    rows = [*ms, total]
    spread.boxplot(rows, orientation="horizontal", tick_labels=[*stages, "the step"], showfliers=False)
    spread.axvline(FRAME_SECONDS * 1000, color="black", lw=1, ls="--")
    spread.set_xlabel(f"ms (the step: median {np.median(total):.1f}, p95 {np.percentile(total, 95):.1f})")
    spread.invert_yaxis()
    if title:
        over_time.set_title(title)
    return fig
