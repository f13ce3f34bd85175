"""Paired PESQ-wb of vocoders on the same validation utterances: is a small gain a real one?

``eval vocoder`` reports each vocoder's mean PESQ-wb; between two generators
of nearly the same quality, two means a few hundredths apart may be noise.
Here every vocoder given (``save_vocoder`` files or runs, or
``griffin-lim``) resynthesises the same validation utterances of seen
voices from their mels, as ``eval vocoder`` does, and each pair is
compared utterance by utterance (any utterance PESQ fails on is left out
of all): the mean difference in PESQ-wb, its standard error, and on how
many utterances the first scored higher. Without the judge or STOI it
takes about a second an utterance for three generators on 2 CPU cores.
``--split test --group unseen --per-voice N`` takes a folder's test
utterances instead, N of each voice (a folder from ``data held-out`` or
``data recordings``: voices and people no vocoder trained on).

data/vocoder/README.md reports part 9 against its control and part 6, and the
pghi head on other engines' voices and on people (``lite_vocoder.safetensors``
was the advance head then, ``lite_advance.safetensors`` now)::

    python experiments/vocoder_paired_pesq.py --data corpus/lite --max-utterances 200 \\
        --json data/vocoder/lite_paired_pesq_part9.json \\
        runs/parts/part6.safetensors runs/vocoder_lite_part9_control.safetensors runs/vocoder_lite_part9.safetensors
    python experiments/vocoder_paired_pesq.py --data corpus/held_out_voices --split test --group unseen \\
        --per-voice 6 --json data/vocoder/lite_pghi_held_out_engines.json \\
        data/vocoder/lite_pghi.safetensors data/vocoder/lite_vocoder.safetensors griffin-lim
    python experiments/vocoder_paired_pesq.py --data corpus/people --split test --group unseen \\
        --per-voice 3 --json data/vocoder/lite_pghi_people.json \\
        data/vocoder/lite_pghi.safetensors data/vocoder/lite_vocoder.safetensors griffin-lim
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from michi_lite.audio import MelSpectrogram, load_audio, normalize_mel
from michi_lite.config import get_config
from michi_lite.eval import pesq_wideband, voice_groups
from michi_lite.provenance import run_info
from michi_lite.vocoder import GriffinLim, load_vocoder


def paired(first: np.ndarray, second: np.ndarray) -> dict:
    """How ``first`` scored against ``second`` on the same utterances."""
    difference = first - second
    return {
        "mean_difference": float(difference.mean()),
        "standard_error": float(difference.std(ddof=1) / np.sqrt(len(difference))),
        "first_higher": int((difference > 0).sum()),
        "n_utterances": len(difference),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("vocoders", nargs="+",
                        help="save_vocoder files or runs (or griffin-lim) to compare, two or more")
    parser.add_argument("--data", required=True, help="the corpus directory")
    parser.add_argument("--preset", default="lite")
    parser.add_argument("--max-utterances", type=int, default=200)
    parser.add_argument("--split", default="val", help="the split to take utterances from (default: val)")
    parser.add_argument("--group", default="seen", help="the voice group: seen or unseen (default: seen)")
    parser.add_argument("--per-voice", type=int, help="at most this many utterances of each voice")
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    if len(args.vocoders) < 2:
        parser.error("give two or more vocoders to compare")

    audio = get_config(args.preset).audio
    systems = {path: GriffinLim(audio) if path == "griffin-lim" else load_vocoder(path, args.preset)
               for path in args.vocoders}
    frontend = MelSpectrogram(audio)
    records = voice_groups(args.data, args.split)[args.group]
    if args.per_voice:
        taken: Counter[str] = Counter()
        kept = []
        for record in records:
            if taken[record["voice"]] < args.per_voice:
                taken[record["voice"]] += 1
                kept.append(record)
        records = kept
    records = records[:args.max_utterances]
    scores: dict[str, list[float]] = {name: [] for name in systems}
    for record in records:
        wave = load_audio(Path(args.data) / record["path"], audio.sample_rate)
        reference = wave[:len(wave) // audio.hop_length * audio.hop_length]  # frames * hop, as eval vocoder cuts it
        with torch.inference_mode():
            mel = normalize_mel(frontend(torch.from_numpy(reference)))
            for name, system in systems.items():
                scores[name].append(pesq_wideband(reference, system.vocode(mel).float().numpy(), audio.sample_rate))
    scored = np.all([np.isfinite(values) for values in scores.values()], axis=0)  # PESQ can fail on one
    arrays = {name: np.array(values)[scored] for name, values in scores.items()}
    report = {
        "data": args.data, "split": args.split, "voices": args.group, "n_utterances": len(records),
        "pesq_failures": int((~scored).sum()),
        "pesq_wb": {name: float(values.mean()) for name, values in arrays.items()},
        "pairs": [{"first": a, "second": b, **paired(arrays[a], arrays[b])}
                  for a, b in itertools.combinations(arrays, 2)],
        "per_utterance": {name: [round(float(value), 4) for value in values] for name, values in scores.items()},
        "utterances": [{"id": record["id"], "voice": record["voice"]} for record in records],  # in that order
        "run": run_info(args.preset),
    }
    for pair in report["pairs"]:
        print(f"{pair['first']} - {pair['second']}: {pair['mean_difference']:+.4f} "
              f"(s.e. {pair['standard_error']:.4f}), higher on {pair['first_higher']} of {pair['n_utterances']}")
    Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
