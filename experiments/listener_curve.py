"""How fast does the listener learn to hear voices it never heard? Its exports against the CPU minutes behind them.

A cheap proxy beside ``eval listener``: each export hears a fixed set of
held-out clips (``--per-engine`` from each engine of each ``--held-out``
folder and of the corpus's held-out voices, spread over their voices), whole
clips in fp32 (what a stream emits, ``tests/test_listen.py``), and its WER
is counted per engine. No Whisper, no int8 stream, no delays: a minute per
export on 2 cores. The exports are the ``step_N.safetensors`` files of each
``--exports`` folder (copies of a run's ``listener.safetensors`` taken as it
trained); a run's ``train_log.csv`` gives the seconds behind each step, and
each ``--exports`` folder's minutes start where the one before ended (a run
started ``--init`` from the one before). data/listener/README.md reports::

    python experiments/listener_curve.py --data corpus/lite_6h_engines \\
        --held-out corpus/held_out_voices --held-out corpus/people \\
        --first runs/first_listener.safetensors --every 200 \\
        --exports runs/listener_general_exports runs/listener_general \\
        --exports runs/listener_general_2_exports runs/listener_general_2 \\
        --json data/listener/lite_curve.json

(``runs/first_listener.safetensors``: the first reference, ``git show
3d507c6:data/listener/lite_listener.safetensors``; its own 83 minutes of
training are not counted.)
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from michi_lite.audio import load_audio
from michi_lite.backbone import load_tokenizer
from michi_lite.data.alignment import word_error_rate
from michi_lite.eval import listener_groups, per_engine
from michi_lite.listen import clip_logits, load_listener, words_from_logits


def proxy_wer(path: Path, clips: list[dict], waves: list[np.ndarray], tokenizer) -> dict[str, float]:
    listener = load_listener(path, "lite", len(tokenizer))
    heard: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for record, wave in zip(clips, waves):
        words = words_from_logits(clip_logits(listener, wave), tokenizer)
        heard[record["engine"]].append((record["text"], " ".join(w.word for w in words)))
    result = {engine: word_error_rate(*zip(*pairs)) for engine, pairs in heard.items()}
    result["all"] = word_error_rate(*zip(*[pair for pairs in heard.values() for pair in pairs]))
    return result


def seconds_at(run: Path) -> dict[int, float]:
    with (run / "train_log.csv").open() as f:
        return {int(row["step"]): float(row["seconds"]) for row in csv.DictReader(f)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--held-out", action="append", default=[])
    parser.add_argument("--first", help="the listener the first run started from (drawn at 0 minutes)")
    parser.add_argument("--exports", nargs=2, action="append", required=True, metavar=("FOLDER", "RUN"))
    parser.add_argument("--per-engine", type=int, default=8)
    parser.add_argument("--every", type=int, default=100, help="only the exports of steps that are multiples of N")
    parser.add_argument("--json", required=True)
    args = parser.parse_args()

    torch.set_num_threads(1)
    tokenizer = load_tokenizer()
    clips = per_engine(listener_groups(args.data, tuple(args.held_out))["held_out"], args.per_engine)
    waves = [load_audio(r["path"], 16_000) for r in clips]
    points = []
    if args.first:
        points.append({"run": "first reference", "step": 0, "cpu_minutes": 0.0,
                       "wer": proxy_wer(Path(args.first), clips, waves, tokenizer)})
    minutes_before = 0.0
    for folder, run in args.exports:
        seconds = seconds_at(Path(run))
        exports = sorted(Path(folder).glob("step_*.safetensors"), key=lambda p: int(re.findall(r"\d+", p.stem)[0]))
        for path in exports:
            step = int(re.findall(r"\d+", path.stem)[0])
            if step % args.every and path != exports[-1]:
                continue
            point = {"run": run, "step": step, "cpu_minutes": minutes_before + seconds[step] / 60,
                     "wer": proxy_wer(path, clips, waves, tokenizer)}
            print(json.dumps(point), flush=True)
            points.append(point)
        minutes_before += max(seconds.values()) / 60
    Path(args.json).write_text(json.dumps({
        "what": "fp32 whole-clip WER of each export on fixed held-out clips, per engine (experiments/listener_curve.py)",
        "n_clips": len(clips), "per_engine": args.per_engine, "points": points}, indent=2) + "\n")


if __name__ == "__main__":
    main()
