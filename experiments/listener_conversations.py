"""Does the listener hear a conversation, sentence after sentence, or only its first sentence?

Each listener file streams (int8, 80 ms at a time, as the duplex engine hears
the user) the same streams ``eval listener`` reports under ``conversations``:
each engine's test clips four to a stream with 0.5 to 2 s of silence between
(``eval.conversation_streams``, ``--per-engine`` clips of each engine of each
group), and the same clips one at a time. A file whose decoder starts over
after each sentence (``ListenerConfig.text_sentences``) does; ``--restart``
makes any text listener do it, to see what that does to a decoder taught
without silence around its clips. data/listener/README.md reports::

    python experiments/listener_conversations.py data/listener/lite_listener.safetensors \\
        runs/listener_text_quiet runs/lite_listener_sentences.safetensors \\
        --data corpus/lite_3h_engines --held-out corpus/held_out_voices --held-out corpus/people \\
        --per-engine 8 --json data/listener/lite_conversations.json
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import torch

from michi_lite import listen
from michi_lite.audio import load_audio
from michi_lite.backbone import load_tokenizer
from michi_lite.data.alignment import word_error_rate
from michi_lite.eval import conversation_streams, listener_groups, per_engine
from michi_lite.listen import load_listener, quantized_for_cpu, transcribe_stream
from michi_lite.provenance import run_info


def heard(listener, wave, tokenizer) -> str:
    return " ".join(h.word for h in transcribe_stream(listener, torch.from_numpy(wave), tokenizer))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("listeners", nargs="+", help="listener files or runs, each with a text decoder")
    parser.add_argument("--data", required=True)
    parser.add_argument("--held-out", action="append", default=[])
    parser.add_argument("--per-engine", type=int, default=8)
    parser.add_argument("--restart", action="store_true", help="every listener starts over after each sentence")
    parser.add_argument("--stall-frames", type=int, metavar="N",
                        help="a listener that starts over does after N frames without a word (default: the "
                             "stream's own, listen.STALL_FRAMES; 0: never)")
    parser.add_argument("--json", required=True)
    args = parser.parse_args()

    if args.stall_frames is not None:  # what ListenerStream passes to its TextStream
        listen.STALL_FRAMES = args.stall_frames or None
    tokenizer = load_tokenizer()
    groups = {group: per_engine(records, args.per_engine)
              for group, records in listener_groups(args.data, tuple(args.held_out)).items()}
    streams = {group: conversation_streams(rows, 16_000) for group, rows in groups.items()}
    report = {"per_engine": args.per_engine, "listeners": {}}
    for path in args.listeners:
        listener = load_listener(path, "lite", len(tokenizer))
        if args.restart:
            listener.cfg = replace(listener.cfg, text_sentences=True)
        listener = quantized_for_cpu(listener)
        result = {"text_sentences": listener.cfg.text_sentences, "stall_frames": listen.STALL_FRAMES}
        for group, group_streams in streams.items():
            by_engine = {}
            for wave, rows in group_streams:
                engine = rows[0]["engine"]
                texts, said, alone = by_engine.setdefault(engine, ([], [], []))
                texts.append(" ".join(r["text"] for r in rows))
                said.append(heard(listener, wave, tokenizer))
                alone.append(" ".join(heard(listener, load_audio(r["path"], 16_000), tokenizer) for r in rows))
            every = [sum((columns[i] for columns in by_engine.values()), []) for i in range(3)]
            result[group] = {
                name: {"n_streams": len(texts), "wer_stream": word_error_rate(texts, said),
                       "wer_one_at_a_time": word_error_rate(texts, alone), "example": [texts[0], said[0]]}
                for name, (texts, said, alone) in {"all": every, **by_engine}.items()}
            print(path, group, {k: round(v["wer_stream"], 3) for k, v in result[group].items()}, flush=True)
        report["listeners"][str(path)] = result
    report["run"] = run_info("lite")
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
