"""Does the speaking head make words once it knows which phoneme is due? Fresh heads on cached conditions.

The phoneme reader sees the chunk being voiced and the frames since it
began, not how long the chunk will last: four frames into a word, it cannot
tell whether the word is nearly over or has barely begun. This experiment
gives fresh heads the answer, taken from the corpus's word timings: each
frame's place in its chunk (the frames since it began over the frames it
lasts, its next chunk's start or the end of speech) and the phonemes at that
place, spreading the chunk's phonemes evenly over its frames.

As in ``speaker_head_inputs.py`` (whose caching, training and judging this
reuses), the reference's backbone and phoneme reader give each frame's
condition from the real past, and fresh heads of the reference's shape are
trained on them for a sample of train utterances:

* ``base``: the condition alone (as in ``speaker_head_inputs.py``);
* ``due``: the condition, the phoneme due now and the next one (one-hot),
  and the place in the chunk;
* ``due_alone``: only the voice part of the condition with the phonemes and
  the place, no hidden state or token: a lookup from sound to mel, as
  duration-driven TTS models (FastSpeech, Ren et al. 2019) make it.

Each then makes every patch of test utterances of seen voices from the real
past in 4 Euler steps, and the Whisper judge hears them through the
reference vocoder. data/speaker/README.md reports a run of::

    python experiments/speaker_phoneme_timing.py --data corpus/lite --json phoneme_timing.json
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from speaker_head_inputs import HeadVariant, arguments, judged, prepare

from michi_lite.data.phonemes import N_PHONEME_IDS, PAD_PHONEME
from michi_lite.flow import SpeakingHead
from michi_lite.model import SpeakerStreams


def phonemes_due(streams: SpeakerStreams, lead: int, end_id: int) -> torch.Tensor:
    """(frames, 2 * N_PHONEME_IDS + 1): the phoneme due on each audio frame and the next (one-hot), and the place.

    A chunk's frames run from where it begins to where the next begins, or
    to where speech ends (the end token's frame plus the lead); its phonemes
    are spread evenly over them. Frames of no chunk have PAD and place 0.
    """
    frames = len(streams.since)
    ends = (streams.tokens == end_id).nonzero()
    speech_end = min(frames, int(ends[0]) + lead) if len(ends) else frames
    starts = [int(f) for f in (streams.since == 0).nonzero()] + [speech_end]
    now = torch.full((frames,), PAD_PHONEME)
    after = torch.full((frames,), PAD_PHONEME)
    place = torch.zeros(frames)
    for start, stop in zip(starts, starts[1:]):
        ids = streams.phonemes[start]
        ids = ids[ids != PAD_PHONEME]
        for f in range(start, stop):
            place[f] = (f - start + 0.5) / (stop - start)
            if len(ids):
                k = min(int(place[f] * len(ids)), len(ids) - 1)
                now[f] = ids[k]
                after[f] = ids[k + 1] if k + 1 < len(ids) else PAD_PHONEME
    return torch.cat([F.one_hot(now, N_PHONEME_IDS), F.one_hot(after, N_PHONEME_IDS), place[:, None]], -1).float()


def due_of(streams: SpeakerStreams, model) -> torch.Tensor:
    """``phonemes_due`` as ``cached_conditions`` asks for it: read in place of the previous patch."""
    return phonemes_due(streams, model.cfg.text_lead_frames, model.end_id)


class DueVariant(HeadVariant):
    """A fresh head reading the phonemes due (passed where ``HeadVariant`` passes the previous patch)."""

    def __init__(self, name: str, model, width: int, depth: int) -> None:
        self.name, self.reads_previous = name, False
        hidden, due = model.cfg.hidden_size, 2 * N_PHONEME_IDS + 1
        self.voice_from = 2 * hidden  # the condition is [hidden, token, voice]
        cond_dim = {"base": 3 * hidden, "due": 3 * hidden + due, "due_alone": hidden + due}[name]
        self.head = SpeakingHead(model.cfg.patch_dim, cond_dim, width, depth)

    def condition(self, cond: torch.Tensor, due: torch.Tensor) -> torch.Tensor:
        if self.name == "base":
            return cond
        return torch.cat([cond if self.name == "due" else cond[:, self.voice_from:], due], -1)


def main() -> None:
    args = arguments(__doc__.split("\n")[0]).parse_args()
    model, vocoder, judge, train_rows, test_rows, results = prepare(args, due_of)
    for name in ("base", "due", "due_alone"):
        variant = DueVariant(name, model, model.cfg.head_width, model.cfg.head_depth)
        variant.train(train_rows, args.steps, args.batch)
        results[name] = judged(variant.sample, test_rows, model, vocoder, judge)
        results[name + "_train"] = judged(variant.sample, train_rows[:8], model, vocoder, judge)
        print(name, {k: v for k, v in results[name].items() if k != "heard"},
              "train:", {k: v for k, v in results[name + "_train"].items() if k != "heard"}, flush=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
