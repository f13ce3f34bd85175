"""Which listener file hears best? ``eval listener``'s streaming WER alone, for several files, in minutes.

Each listener file hears the clips ``eval listener`` picks (``--per-engine``
of each engine of each group, as its ``--max-utterances``) whole, as its
``wer_streaming`` does (equal to an fp32 stream), and nothing else: no
Whisper baseline, int8 stream, conversations or robustness table. The same
file gives the same numbers as ``eval listener`` (the reference's seen 0.228
and held-out 0.348 at 30 per engine), in about 6 minutes a file on 2 CPU
cores. data/listener/README.md compares the decoders it tried with::

    python experiments/listener_quick_wer.py runs/listener_text_dialogues runs/listener_text_enc2 \\
        --data corpus/lite_3h_engines --held-out corpus/held_out_voices --held-out corpus/people \\
        --per-engine 30 --json data/listener/lite_quick_wer.json
"""

from __future__ import annotations

import argparse
import json

from michi_lite.audio import load_audio
from michi_lite.backbone import load_tokenizer
from michi_lite.data.alignment import word_error_rate
from michi_lite.eval import listener_groups, per_engine
from michi_lite.listen import clip_words, load_listener
from michi_lite.provenance import run_info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("listeners", nargs="+", help="listener files or runs, each with a text decoder")
    parser.add_argument("--data", required=True)
    parser.add_argument("--held-out", action="append", default=[])
    parser.add_argument("--per-engine", type=int, default=30)
    parser.add_argument("--json", required=True)
    args = parser.parse_args()

    tokenizer = load_tokenizer()
    groups = {group: per_engine(records, args.per_engine)
              for group, records in listener_groups(args.data, tuple(args.held_out)).items()}
    report = {"per_engine": args.per_engine, "listeners": {}}
    for path in args.listeners:
        listener = load_listener(path, "lite", len(tokenizer))
        result = {}
        for group, records in groups.items():
            texts: dict[str, tuple[list[str], list[str]]] = {}
            for record in records:
                wave = load_audio(record["path"], listener.cfg.audio.sample_rate)
                heard = " ".join(h.word for h in clip_words(listener, wave, tokenizer))
                for name in ("all", record["engine"]):
                    texts.setdefault(name, ([], []))[0].append(record["text"])
                    texts[name][1].append(heard)
            result[group] = {name: {"n_utterances": len(said), "wer_streaming": word_error_rate(said, heard)}
                             for name, (said, heard) in texts.items()}
            print(path, group, {k: round(v["wer_streaming"], 3) for k, v in result[group].items()}, flush=True)
        report["listeners"][str(path)] = result
    report["run"] = run_info("lite")
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
