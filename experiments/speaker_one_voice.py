"""Does the speech model become intelligible sooner on one voice? The reference, trained on one voice alone.

Starts from the reference's weights and trains the whole speech model,
adapters and heads, with ``SpeakerTrainer`` on the train utterances of one
seen voice only (about 15 minutes of speech each in the lite corpus), for
as long as ``--max-minutes`` allows. Before and after, the Whisper judge
hears that voice's held-out test sentences, and 8 of the utterances it
trains on, as the head makes their patches from the real past
(teacher-forced, 4 Euler steps) through the reference vocoder; the real
mels through the same vocoder are the ceiling. If one voice's held-out
sentences turn into words where 36 voices' did not, spreading the same
training over fewer voices is what the CPU budget can afford; if not, it is
not the number of voices that keeps the words out. data/speaker/README.md
reports a run of::

    michi-lite data pack --data corpus/lite --out corpus/lite_pack
    python experiments/speaker_one_voice.py --data corpus/lite_pack --test corpus/lite --steps 180 \
        --max-minutes 42 --json data/speaker/lite_one_voice.json
"""

from __future__ import annotations

import argparse
import json
import random
import time

import numpy as np
import torch

from michi_lite.backbone import load_tokenizer, load_whisper
from michi_lite.data.alignment import word_error_rate
from michi_lite.eval import hear_patches, next_patch_errors, teacher_forced_patches
from michi_lite.model import load_speaker
from michi_lite.train import LengthBuckets
from michi_lite.train_speaker import SpeakerTrainer, SpeakerUtterances
from michi_lite.vocoder import load_vocoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="a built lite corpus, or a pack of it")
    parser.add_argument("--json", required=True, help="where the results go")
    parser.add_argument("--voice", default="piper-joe-l085", help="a voice heard in training")
    parser.add_argument("--init", default="data/speaker/lite_speaker.safetensors")
    parser.add_argument("--vocoder", default="data/vocoder/lite_vocoder.safetensors")
    parser.add_argument("--test", default=None, help="a corpus for the test sentences (default: --data)")
    parser.add_argument("--max-test", type=int, default=12, help="held-out sentences judged")
    parser.add_argument("--steps", type=int, default=400, help="the schedule's length")
    parser.add_argument("--max-minutes", type=float, default=50.0)
    args = parser.parse_args()

    torch.manual_seed(0)
    tokenizer = load_tokenizer()
    model = load_speaker(args.init, "lite", tokenizer, merge=False)  # the adapters stay apart, to train
    audio = model.cfg.audio
    train = SpeakerUtterances(args.data, model.cfg, tokenizer, "train")
    test = SpeakerUtterances(args.test or args.data, model.cfg, tokenizer, "test", max_seconds=6.0)
    own = train.by_voice.get(args.voice)
    if not own:
        raise SystemExit(f"{args.voice} speaks no train utterance; voices: {sorted(train.by_voice)}")
    judged = {"test": (test, test.by_voice.get(args.voice, [])[:args.max_test]),  # sentences it never trains on
              "train": (train, random.Random(0).sample(own, 8))}  # utterances it trains on
    items = {name: [data[i] for i in ids] for name, (data, ids) in judged.items()}  # each with its voice prompt
    texts = {name: [data.records[i]["text"] for i in ids] for name, (data, ids) in judged.items()}
    trainer = SpeakerTrainer(model, "lite", torch.device("cpu"), total_steps=args.steps, warmup_steps=20)
    vocoder, judge = load_vocoder(args.vocoder, "lite"), load_whisper()
    results: dict = {
        "args": vars(args), "train_utterances": len(own),
        "train_hours": sum(train.records[i]["duration"] for i in own) / 3600, "texts": texts,
        "real_mels_vocoded": {name: word_error_rate(texts[name], [
            hear_patches(streams.patches, vocoder, judge, audio) for streams, _ in items[name]]) for name in items},
        "judged": {}, "log": []}

    def judge_now(step: int) -> None:
        model.eval()
        results["judged"][step] = {}
        with torch.inference_mode():
            for name in items:
                hyps, errors = [], []
                for streams, prompt in items[name]:
                    voice = model.prompt_voice(prompt)
                    forced = teacher_forced_patches(model, streams, voice, 4, torch.Generator().manual_seed(0))
                    hyps.append(hear_patches(forced, vocoder, judge, audio))
                    errors.append(next_patch_errors(model, streams, voice, torch.Generator().manual_seed(0))[0])
                results["judged"][step][name] = {"judge_wer": word_error_rate(texts[name], hyps),
                                                 "error_1_step": float(np.mean(errors)), "heard": hyps}
                print(f"step {step}, {name}: judge WER {results['judged'][step][name]['judge_wer']:.3f}, "
                      f"1-step error {np.mean(errors):.3f}", flush=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)

    judge_now(0)
    batches = LengthBuckets([train.records[i]["duration"] for i in own], 8, seed=0)
    started, step = time.perf_counter(), 0
    while step < args.steps and time.perf_counter() - started < 60 * args.max_minutes:
        for positions in batches:
            losses = trainer.step(SpeakerUtterances.collate([train[own[p]] for p in positions]))
            step += 1
            if step % 10 == 0:
                results["log"].append({"step": step, "seconds": time.perf_counter() - started, **losses})
                print(step, {k: round(v, 4) for k, v in losses.items()}, flush=True)
            if step >= args.steps or time.perf_counter() - started >= 60 * args.max_minutes:
                break
    results["steps"], results["seconds"] = step, time.perf_counter() - started
    judge_now(step)


if __name__ == "__main__":
    main()
