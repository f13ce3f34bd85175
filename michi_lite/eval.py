"""Measurements. Every report is a JSON object of plain numbers plus where it ran."""

from __future__ import annotations

import os
import platform
import subprocess
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from .data.alignment import boundary_differences, summarize_differences
from .data.corpus import load_manifest
from .data.words import Word


def run_info(preset: str) -> dict:
    """Hardware, software and revision a measurement was taken on."""
    try:
        revision = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        revision = "unknown"
    return {
        "preset": preset,
        "git_revision": revision,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


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
