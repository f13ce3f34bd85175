"""Does the reference's speaking head make words if it trains far longer? Its head alone, on cached conditions.

A step of the whole speech model costs 5 to 11 s on 2 CPU cores, nearly
all of it in the backbone; a step of the head alone, on conditions the
backbone has already given, a small fraction of that. So the reference's
backbone and phoneme reader (frozen) give each frame's condition from the
real past (teacher-forced) for a sample of train utterances, as in
``speaker_head_inputs.py`` (whose caching and judging this reuses), and the
reference's own head trains on them alone, at the learning rate the speech
model gives its heads, with a warm-up and a half cosine.

Every ``--judge-every`` steps the Whisper judge hears its 4-step patches,
made from the real past, for test utterances of seen voices and for 8 of
its train utterances, through the reference vocoder; the head so far is
written beside the JSON each time. data/speaker/README.md reports a run of::

    python experiments/speaker_head_long.py --data corpus/lite --json head_long.json \\
        --train-utterances 2000 --steps 6000 --batch 512 --judge-every 1500
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from speaker_head_inputs import arguments, judged, prepare

from michi_lite.train import warmup_cosine

HEAD_LEARNING_RATE = 6e-4  # the speech model's for its heads (``SpeakerTrainer``)
WARMUP_STEPS = 100


def main() -> None:
    parser = arguments(__doc__.split("\n")[0])
    parser.add_argument("--judge-every", type=int, default=2000, help="steps between the judge's hearings")
    args = parser.parse_args()
    model, vocoder, judge, train_rows, test_rows, results = prepare(args)
    head = copy.deepcopy(model.speaking_head).train()
    cond, patches = (torch.cat([r[k] for r in train_rows]) for k in ("cond", "patches"))
    results.update(train_frames=len(cond), log=[], judged={})
    print(f"{len(cond)} train frames cached", flush=True)

    def sample(c: torch.Tensor, previous: torch.Tensor, steps: int) -> torch.Tensor:  # as ``judged`` calls it
        return head.sample(c, steps, torch.Generator().manual_seed(0))

    def hear(step: int) -> None:
        head.eval()
        results["judged"][step] = {"test": judged(sample, test_rows, model, vocoder, judge),
                                   "train": judged(sample, train_rows[:8], model, vocoder, judge)}
        head.train()
        summary = {split: {k: round(v, 4) for k, v in scores.items() if k != "heard"}
                   for split, scores in results["judged"][step].items()}
        print(f"step {step}: {summary}", flush=True)
        save_file({k: v.contiguous() for k, v in head.state_dict().items()},
                  Path(args.json).with_suffix(".head.safetensors"), {"step": str(step)})
        Path(args.json).write_text(json.dumps(results, indent=1))

    hear(0)
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(head.parameters(), HEAD_LEARNING_RATE, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(WARMUP_STEPS, args.steps))
    started, running = time.perf_counter(), []
    for step in range(1, args.steps + 1):
        pick = torch.randint(len(cond), (args.batch,), generator=generator)
        loss = head.loss(patches[pick], cond[pick], generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        running.append(loss.item())
        if step % 100 == 0:
            row = {"step": step, "clean_patch_error": sum(running) / len(running),
                   "seconds": round(time.perf_counter() - started, 1)}
            results["log"].append(row)
            running = []
            print(row, flush=True)
        if step % args.judge_every == 0 or step == args.steps:
            hear(step)


if __name__ == "__main__":
    main()
