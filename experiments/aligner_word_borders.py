"""How well the phoneme aligner places word borders in voices it never learnt from: flite's and festival's.

Those two engines report when each word ends (their Word relation) but not
their phonemes. The aligner's phonemes are grouped into words (each written
word's own phonemes, ``chunk_phonemes``; sentences whose words do not add up
to the sentence's phonemes are skipped) and each word's end is compared with
the engine's. The phonemes are aligned as ``michi-lite data align`` aligns
them. Prints a JSON summary per engine.

    python experiments/aligner_word_borders.py --aligner data/aligner/lite_aligner.safetensors \
        --data corpus/lite_3h --json data/aligner/lite_word_borders.json
"""

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from michi_lite.aligner import PRIOR_UTTERANCES, class_prior, load_aligner, timed_rows
from michi_lite.audio import audio_patches, load_audio
from michi_lite.data.corpus import load_manifest
from michi_lite.data.phonemes import PAUSE, chunk_phonemes, phoneme_id, sentence_phonemes


def word_ends(rows: list[list], words: list[dict]) -> list[float] | None:
    """The end of each written word in aligned rows, or None when the words' phonemes are not the sentence's."""
    spoken = [row for row in rows if row[0] != PAUSE]
    counts = [len(chunk_phonemes(w["word"])) for w in words]
    if sum(counts) != len(spoken):
        return None
    return [spoken[end - 1][2] for end in np.cumsum(counts) if end > 0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--aligner", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--preset", default="lite")
    parser.add_argument("--json")
    args = parser.parse_args()
    aligner = load_aligner(args.aligner, args.preset)
    audio = aligner.cfg.audio
    errors, skipped = defaultdict(list), defaultdict(int)
    records = [r for r in load_manifest(args.data) if r["engine"] in ("flite", "festival") and r["alignment"] == "engine"]
    mels = [audio_patches(torch.from_numpy(load_audio(Path(args.data) / r["path"], audio.sample_rate)), audio)
            .reshape(-1, audio.n_mels) for r in records]
    log_prior = class_prior([aligner.log_probs(mel).numpy() for mel in mels[:PRIOR_UTTERANCES]])  # as data align
    for record, mel in zip(records, mels):
        names = sentence_phonemes(record["text"])
        ids = torch.tensor([phoneme_id(n) for n in names])
        rows = timed_rows(names, aligner.align(mel, ids, log_prior).numpy(), record["duration"], audio)
        ends = word_ends(rows, record["words"])
        if ends is None or len(ends) != len(record["words"]):
            skipped[record["engine"]] += 1
            continue
        errors[record["engine"]] += [1000 * abs(a - w["end"]) for a, w in zip(ends[:-1], record["words"][:-1])]
    report = {engine: {"n_word_ends": len(e), "median_ms": float(np.median(e)),
                       "p90_ms": float(np.percentile(e, 90)), "within_40_ms": float(np.mean(np.array(e) <= 40)),
                       "within_80_ms": float(np.mean(np.array(e) <= 80)), "sentences_skipped": skipped[engine]}
              for engine, e in sorted(errors.items())}
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
