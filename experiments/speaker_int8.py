"""What the int8 copy ``say`` runs on a CPU costs in accuracy, against the fp32 reference it is made from.

Two measurements, both on the test split:

* **text**: the test sentences as plain text (the perplexity sentences of
  ``eval speaker``), through the backbone stepped a position at a time with
  ``FrameDecoder`` as ``say`` steps it, in fp32 and in int8. Reported: how
  often int8 picks fp32's next token, the relative error of its hidden
  states, and both perplexities. The int8 copy also runs a whole sentence in
  one pass (``transformers``' layout, as the eval's teacher forcing runs
  it): reported beside, since dynamic quantisation then gives all positions
  one scale.
* **speech**: the eval's utterances (``--max-utterances`` per voice group,
  the same ones ``eval speaker`` picks, prompted the same way), the speaking
  head's 1-step guess of every patch from the real past (the eval's
  next-patch error) in fp32, in int8 as the eval runs it (one pass), and in
  int8 stepped as ``say`` runs it.

data/speaker/README.md reports a run of::

    python experiments/speaker_int8.py --data corpus/lite --json data/speaker/lite_int8.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from michi_lite.audio import load_audio
from michi_lite.backbone import load_tokenizer
from michi_lite.data.corpus import load_manifest
from michi_lite.data.words import Word
from michi_lite.eval import next_patch_errors, perplexity_sentences, spread_over_voices, voice_groups
from michi_lite.frame_decoder import FrameCache
from michi_lite.audio import audio_patches, voice_prompt
from michi_lite.model import load_speaker, quantized_for_cpu, speaker_streams


def stepped(model, inputs: torch.Tensor) -> torch.Tensor:
    """(1, n, hidden) fed to ``model.frame_decoder()`` one position a call -> hidden states (1, n, hidden)."""
    cache = FrameCache()
    return torch.cat([model.frame_decoder()(inputs[:, i:i + 1], cache) for i in range(inputs.shape[1])], dim=1)


def stepped_patch_error(model, streams, voice: torch.Tensor) -> float:
    """``next_patch_errors``' first number with the backbone stepped as ``say`` steps it."""
    tokens, patches = streams.tokens[None], streams.patches[None]
    inputs = torch.cat([voice[:, None], model.frame_inputs(tokens[:, :-1], patches[:, :-1])], dim=1)
    cond = model.head_condition(stepped(model, inputs), tokens, voice[:, None], streams.phonemes[None],
                                streams.since[None])
    guess = model.speaking_head.sample(cond[0], 1, generator=torch.Generator().manual_seed(0))
    spoken = slice(max(model.cfg.text_lead_frames, 1), None)
    return ((guess[spoken] - streams.patches[spoken]) ** 2).mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="a built lite corpus")
    parser.add_argument("--json", required=True, help="where the results go")
    parser.add_argument("--ckpt", default="data/speaker/lite_speaker.safetensors")
    parser.add_argument("--sentences", type=int, default=100, help="test sentences as plain text")
    parser.add_argument("--max-utterances", type=int, default=16, help="per voice group, as eval speaker")
    args = parser.parse_args()

    torch.set_num_threads(2)
    tokenizer = load_tokenizer()
    fp32 = load_speaker(args.ckpt, "lite", tokenizer).eval()
    int8 = quantized_for_cpu(fp32)
    audio = fp32.cfg.audio
    test = load_manifest(args.data, "test")
    results: dict = {"args": vars(args)}

    nll = {"fp32": 0.0, "int8": 0.0}
    agree, count, errors, errors_one_pass = 0, 0, [], []
    with torch.inference_mode():
        for text in perplexity_sentences(test, args.sentences):
            ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
            inputs = fp32.token_embedding(ids)
            hidden = {"fp32": stepped(fp32, inputs), "int8": stepped(int8, inputs)}
            one_pass = int8.decode(inputs)
            # SmolLM2's own head, as text_perplexity
            logits = {name: h[0, :-1] @ fp32.token_embedding.weight.T for name, h in hidden.items()}
            for name, scores in logits.items():
                nll[name] += F.cross_entropy(scores, ids[0, 1:], reduction="sum").item()
            agree += (logits["int8"].argmax(-1) == logits["fp32"].argmax(-1)).sum().item()
            count += ids.shape[1] - 1
            reference = hidden["fp32"].norm(dim=-1)
            errors += ((hidden["int8"] - hidden["fp32"]).norm(dim=-1) / reference)[0].tolist()
            errors_one_pass += ((one_pass - hidden["fp32"]).norm(dim=-1) / reference)[0].tolist()
    results["text"] = {
        "sentences": args.sentences, "tokens_predicted": count,
        "int8_picks_fp32_next_token": agree / count,
        "hidden_relative_error_int8_stepped": {"mean": float(np.mean(errors)), "max": float(np.max(errors))},
        "hidden_relative_error_int8_one_pass": {"mean": float(np.mean(errors_one_pass)),
                                                "max": float(np.max(errors_one_pass))},
        "perplexity": {name: math.exp(value / count) for name, value in nll.items()},
    }
    print(json.dumps(results["text"], indent=1), flush=True)

    by_voice: dict[str, list[dict]] = {}
    for record in test:
        by_voice.setdefault(record["voice"], []).append(record)
    results["speech"] = {}
    for group, records in sorted(voice_groups(args.data).items()):
        promptable = [r for r in records if len(by_voice[r["voice"]]) > 1]
        rows = {"fp32": [], "int8_one_pass": [], "int8_stepped": []}
        for record in spread_over_voices(promptable, args.max_utterances):
            voice_records = by_voice[record["voice"]]
            prompt = voice_records[(voice_records.index(record) + 1) % len(voice_records)]  # as eval speaker
            wave = load_audio(Path(args.data) / record["path"], audio.sample_rate)
            streams = speaker_streams(record["text"], [Word.from_dict(w) for w in record["words"]],
                                      audio_patches(torch.from_numpy(wave), audio), tokenizer, fp32.cfg)
            prompt_patches = voice_prompt(load_audio(Path(args.data) / prompt["path"], audio.sample_rate), audio)
            with torch.inference_mode():
                for name, model in (("fp32", fp32), ("int8_one_pass", int8)):
                    voice = model.prompt_voice(prompt_patches)
                    rows[name].append(next_patch_errors(model, streams, voice, torch.Generator().manual_seed(0))[0])
                rows["int8_stepped"].append(stepped_patch_error(int8, streams, int8.prompt_voice(prompt_patches)))
        results["speech"][group] = {"n_utterances": len(rows["fp32"]),
                                    **{f"next_patch_error_{k}": float(np.mean(v)) for k, v in rows.items()}}
        print(group, results["speech"][group], flush=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
