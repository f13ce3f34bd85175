"""Does the speaking head make words if it reads more than the backbone gives it? Fresh heads on cached conditions.

The speech model's backbone and phoneme reader (the reference's, frozen)
give each frame's head condition from the real past (teacher-forced); those
are cached for a sample of train utterances, and fresh heads of the
reference's shape are trained on them, each reading something different:

* ``base``: the condition alone, as the speech model's own head reads it;
* ``previous``: the condition and the previous frame's real patch;
* ``guided``: as ``previous``, with the text part of the condition (hidden
  state and token) dropped for 15% of the frames in training, so that
  sampling can push away from "continue the sound in this voice" towards
  what the text says (classifier-free guidance, Ho and Salimans 2022).

Each head, and the reference's own, then makes every patch of some test
utterances of seen voices from the real past in 4 Euler steps; the
reference vocoder makes them audio and the Whisper judge writes down what it
hears. data/speaker/README.md reports a run of::

    python experiments/speaker_head_inputs.py --data corpus/lite --json head_inputs.json
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
from michi_lite.eval import hear_patches, voice_groups
from michi_lite.flow import MIN_REMAINING_TIME, SpeakingHead, euler_sample
from michi_lite.model import SILENCE_MEL, load_speaker
from michi_lite.train_speaker import SpeakerUtterances
from michi_lite.vocoder import load_vocoder

DROP_TEXT = 0.15  # the share of training frames the guided head sees without its text part


def previous_patches(streams, model) -> torch.Tensor:
    """(frames, patch_dim): the real patch before each frame's (silence before the first)."""
    patches = streams.patches
    return torch.cat([torch.full_like(patches[:1], SILENCE_MEL), patches[:-1]])


def cached_conditions(model, dataset: SpeakerUtterances, indices: list[int], previous=previous_patches) -> list[dict]:
    """Each utterance's head conditions from its real past, its patches and ``previous(streams, model)``.

    ``previous`` is what a variant reads beside the condition, one row per
    frame: by default the patch before each.
    """
    rows = []
    with torch.inference_mode():
        for i in indices:
            streams, prompt = dataset[i]
            _, cond = model.teacher_forced(streams, model.prompt_voice(prompt))
            rows.append({"cond": cond[0], "patches": streams.patches, "previous": previous(streams, model),
                         "text": dataset.records[i]["text"]})
    return rows


class HeadVariant:
    """A fresh speaking head reading the condition, and for some variants the previous patch."""

    def __init__(self, name: str, model, width: int, depth: int) -> None:
        self.name, self.text_width = name, 2 * model.cfg.hidden_size  # the hidden state and the token: what to say
        self.reads_previous = name != "base"
        cond_dim = 3 * model.cfg.hidden_size + (model.cfg.patch_dim if self.reads_previous else 0)
        self.head = SpeakingHead(model.cfg.patch_dim, cond_dim, width, depth)

    def condition(self, cond: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        return torch.cat([cond, previous], -1) if self.reads_previous else cond

    def without_text(self, cond: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(cond[:, :self.text_width]), cond[:, self.text_width:]], -1)

    def train(self, rows: list[dict], steps: int, batch: int, lr: float = 1e-3) -> None:
        cond, patches, previous = (torch.cat([r[k] for r in rows]) for k in ("cond", "patches", "previous"))
        torch.manual_seed(0)
        generator = torch.Generator().manual_seed(0)
        optimizer = torch.optim.AdamW(self.head.parameters(), lr, weight_decay=0.01)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.05)
        for step in range(steps):
            pick = torch.randint(len(cond), (batch,), generator=generator)
            c = self.condition(cond[pick], previous[pick])
            if self.name == "guided":
                drop = torch.rand(len(c), generator=generator) < DROP_TEXT
                c = torch.where(drop[:, None], self.without_text(c), c)
            loss = self.head.loss(patches[pick], c, generator)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            if step % 100 == 0 or step == steps - 1:
                print(f"  {self.name} step {step}: clean-patch error {loss.item():.4f}", flush=True)
        self.head.eval()

    def sample(self, cond: torch.Tensor, previous: torch.Tensor, steps: int, guidance: float = 1.0) -> torch.Tensor:
        c = self.condition(cond, previous)

        def velocity(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            clean = self.head.denoise(x, t, c)
            if guidance != 1.0:
                unguided = self.head.denoise(x, t, self.without_text(c))
                clean = unguided + guidance * (clean - unguided)
            return (clean - x) / (1 - t[:, None]).clamp(min=MIN_REMAINING_TIME)

        return euler_sample(velocity, c, self.head.patch_dim, steps, generator=torch.Generator().manual_seed(0))


def judged(sample, rows: list[dict], model, vocoder, judge) -> dict:
    """The judge's WER on 4-step teacher-forced patches, and the 1-step squared error after the text lead."""
    heard, errors = [], []
    audio, lead = model.cfg.audio, model.cfg.text_lead_frames
    with torch.inference_mode():
        for r in rows:
            one = sample(r["cond"], r["previous"], 1)
            errors.append(((one[lead:] - r["patches"][lead:]) ** 2).mean().item())
            heard.append(hear_patches(sample(r["cond"], r["previous"], 4), vocoder, judge, audio))
    return {"judge_wer": word_error_rate([r["text"] for r in rows], heard), "error_1_step": float(np.mean(errors)),
            "heard": heard}


def arguments(description: str) -> argparse.ArgumentParser:
    """The command line these experiments share; each may add its own arguments before parsing."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", required=True, help="a built lite corpus")
    parser.add_argument("--json", required=True, help="where the results go")
    parser.add_argument("--ckpt", default="data/speaker/lite_speaker.safetensors")
    parser.add_argument("--vocoder", default="data/vocoder/lite_vocoder.safetensors")
    parser.add_argument("--train-utterances", type=int, default=400)
    parser.add_argument("--test-utterances", type=int, default=16)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=256, help="frames per training step")
    return parser


def prepare(args: argparse.Namespace, previous=previous_patches):
    """The reference model, vocoder and judge, and cached rows for train and test utterances.

    ``args`` come from ``arguments``; ``previous`` is passed to ``cached_conditions``.

    Returns (model, vocoder, judge, train rows, test rows, results so far:
    the args and the judge's WER on the test rows' real mels, vocoded).
    """
    tokenizer = load_tokenizer()
    model = load_speaker(args.ckpt, "lite", tokenizer)
    vocoder, judge = load_vocoder(args.vocoder, "lite"), load_whisper()
    started = time.perf_counter()
    train = SpeakerUtterances(args.data, model.cfg, tokenizer, "train")
    train_rows = cached_conditions(model, train, random.Random(0).sample(range(len(train)), args.train_utterances),
                                   previous)
    test = SpeakerUtterances(args.data, model.cfg, tokenizer, "test", max_seconds=6.0)
    seen = {r["voice"] for r in voice_groups(args.data)["seen"]}
    test_rows = cached_conditions(model, test, random.Random(1).sample(
        [i for i, r in enumerate(test.records) if r["voice"] in seen], args.test_utterances), previous)
    print(f"cached {len(train_rows)} train and {len(test_rows)} test utterances "
          f"in {time.perf_counter() - started:.0f} s", flush=True)

    heard = [hear_patches(r["patches"], vocoder, judge, model.cfg.audio) for r in test_rows]
    results = {"args": vars(args), "real_mels_vocoded": word_error_rate([r["text"] for r in test_rows], heard)}
    return model, vocoder, judge, train_rows, test_rows, results


def main() -> None:
    args = arguments(__doc__.split("\n")[0]).parse_args()
    model, vocoder, judge, train_rows, test_rows, results = prepare(args)
    reference = model.speaking_head
    results["reference"] = judged(lambda c, p, k: reference.sample(c, k, torch.Generator().manual_seed(0)),
                                  test_rows, model, vocoder, judge)
    for name in ("base", "previous", "guided"):
        variant = HeadVariant(name, model, model.cfg.head_width, model.cfg.head_depth)
        variant.train(train_rows, args.steps, args.batch)
        for guidance in (1.0, 1.5, 2.5) if name == "guided" else (1.0,):
            key = name if guidance == 1.0 else f"{name}_{guidance:g}"
            results[key] = judged(lambda c, p, k, g=guidance: variant.sample(c, p, k, g), test_rows, model,
                                  vocoder, judge)
            print(key, {k: v for k, v in results[key].items() if k != "heard"}, flush=True)
        # the same head on 8 of the utterances it trained on
        results[name + "_train"] = judged(lambda c, p, k: variant.sample(c, p, k), train_rows[:8], model, vocoder,
                                          judge)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
