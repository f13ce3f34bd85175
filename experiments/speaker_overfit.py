"""Can the speech model learn to say even a handful of utterances? Training on one fixed batch, judged as it goes.

Starts from the reference's weights (or fresh ones), trains the whole
speech model, adapters and heads, with ``SpeakerTrainer`` on one fixed batch
of short train utterances, and every ``--judge-every`` steps lets the Whisper
judge hear that batch's patches made by the head from the real past
(teacher-forced, 4 Euler steps) through the reference vocoder. If even
these do not become words, more data or more steps of the usual training
cannot be all that is missing. data/speaker/README.md reports a run of::

    python experiments/speaker_overfit.py --data corpus/lite --json overfit.json
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
from michi_lite.model import build_speech_model, load_speaker
from michi_lite.train_speaker import SpeakerTrainer, SpeakerUtterances
from michi_lite.vocoder import load_vocoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="a built lite corpus")
    parser.add_argument("--json", required=True, help="where the results go")
    parser.add_argument("--init", default="data/speaker/lite_speaker.safetensors",
                        help="the weights to start from ('none': fresh adapters and heads)")
    parser.add_argument("--vocoder", default="data/vocoder/lite_vocoder.safetensors")
    parser.add_argument("--utterances", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--judge-every", type=int, default=100)
    args = parser.parse_args()

    torch.manual_seed(0)
    tokenizer = load_tokenizer()
    if args.init == "none":
        model = build_speech_model("lite", tokenizer)
    else:
        model = load_speaker(args.init, "lite", tokenizer, merge=False)  # the adapters stay apart, to train
    audio = model.cfg.audio
    dataset = SpeakerUtterances(args.data, model.cfg, tokenizer, "train", max_seconds=4.0)
    short = [i for i, r in enumerate(dataset.records) if r["duration"] >= 2.0]
    chosen = random.Random(0).sample(short, args.utterances)
    items = [dataset[i] for i in chosen]  # each with a voice prompt drawn once, kept for every step
    texts = [dataset.records[i]["text"] for i in chosen]
    batch = SpeakerUtterances.collate(items)
    trainer = SpeakerTrainer(model, "lite", torch.device("cpu"), total_steps=args.steps, warmup_steps=20)
    vocoder, judge = load_vocoder(args.vocoder, "lite"), load_whisper()

    real_heard = [hear_patches(streams.patches, vocoder, judge, audio) for streams, _ in items]
    results: dict = {"args": vars(args), "texts": texts, "real_mels_vocoded": word_error_rate(texts, real_heard),
                     "judged": {}, "log": []}

    def judge_now(step: int) -> None:
        model.eval()
        hyps, errors = [], []
        with torch.inference_mode():
            for (streams, _), voice in zip(items, model.voice(batch.prompt, batch.prompt_mask)):
                forced = teacher_forced_patches(model, streams, voice[None], 4, torch.Generator().manual_seed(0))
                hyps.append(hear_patches(forced, vocoder, judge, audio))
                errors.append(next_patch_errors(model, streams, voice[None], torch.Generator().manual_seed(0))[0])
        results["judged"][step] = {"judge_wer": word_error_rate(texts, hyps), "error_1_step": float(np.mean(errors)),
                                   "heard": hyps}
        print(f"step {step}: judge WER {results['judged'][step]['judge_wer']:.3f}, "
              f"1-step error {np.mean(errors):.3f}", flush=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)

    judge_now(0)
    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        losses = trainer.step(batch)
        if step % 10 == 0:
            results["log"].append({"step": step, "seconds": time.perf_counter() - started, **losses})
            print(step, {k: round(v, 4) for k, v in losses.items()}, flush=True)
        if step % args.judge_every == 0:
            judge_now(step)


if __name__ == "__main__":
    main()
