"""Does the acoustic model speak text no corpus ever held? Sentences written for this check, heard by the judge.

The sentences below were written for this script (none comes from the
corpus's sources). Each is spoken by ``say``'s ``AcousticSpeaker`` from the
reference ``data/acoustic/lite_acoustic.safetensors``, with its own voice
prompt and with a prompt in another engine's voice (piper ``joe``, the
first speech model's prompt), and by espeak-ng itself in the voice the
model learned, the real audio's ceiling. The Whisper judge hears all three;
the durations are compared too. data/acoustic/README.md reports a run of::

    python experiments/acoustic_own_sentences.py --json data/acoustic/lite_own_sentences.json
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from michi_lite.acoustic import load_acoustic
from michi_lite.audio import load_voice_prompt, prepare_waveform
from michi_lite.backbone import load_whisper
from michi_lite.data.alignment import transcribe, word_error_rate
from michi_lite.data.engines import all_voices, synthesize
from michi_lite.provenance import run_info
from michi_lite.say import AcousticSpeaker
from michi_lite.vocoder import load_vocoder

SENTENCES = [
    "Our neighbour's cat slept through the thunderstorm on the 3rd of May.",
    "Please turn left after the second bridge and park near the bakery.",
    "The recipe needs 250 grams of flour, two eggs and a pinch of salt.",
    "My grandmother still writes letters by hand every Sunday evening.",
    "If the train is late again, we will take a taxi to the airport.",
    "A small boat drifted past the lighthouse just before sunrise.",
    "Dr. Patel moved the meeting to 4:30 because of the fire drill.",
    "Nobody expected the quiet student to win the chess tournament.",
    "The museum will close for repairs from June until October.",
    "He read the instructions twice, then read them aloud to his brother.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", required=True)
    parser.add_argument("--model", default="data/acoustic/lite_acoustic.safetensors")
    parser.add_argument("--vocoder", default="data/vocoder/lite_vocoder.safetensors")
    parser.add_argument("--voice", default="espeak-en-us-m5-p60-s150", help="the voice the model learned")
    parser.add_argument("--prompts", nargs="+", default=["data/acoustic/voice_prompt.flac",
                                                         "data/speaker/voice_prompt.flac"])
    args = parser.parse_args()

    model, vocoder, judge = load_acoustic(args.model, "lite"), load_vocoder(args.vocoder, "lite"), load_whisper()
    audio = model.cfg.audio
    voice = next(v for v in all_voices() if v.name == args.voice)
    report: dict = {"sentences": SENTENCES, "args": vars(args)}
    real = []
    for text in SENTENCES:
        clip = synthesize(text, voice)
        real.append(prepare_waveform(clip.waveform, clip.sample_rate, audio.sample_rate))
    heard_real = [transcribe(wave, audio.sample_rate, judge) for wave in real]
    report["espeak"] = {"judge_wer": word_error_rate(SENTENCES, heard_real), "heard": heard_real}
    for prompt in args.prompts:
        speaker = AcousticSpeaker(model, vocoder, load_voice_prompt(prompt, audio), steps=4)
        spoken = [speaker.say(text) for text in SENTENCES]
        heard = [transcribe(wave, audio.sample_rate, judge) for wave in spoken]
        ratios = [len(s) / len(r) for s, r in zip(spoken, real)]
        report[prompt] = {"judge_wer": word_error_rate(SENTENCES, heard), "heard": heard,
                          "duration_ratio_median": float(np.median(ratios)),
                          "duration_ratio_range": [float(min(ratios)), float(max(ratios))]}
        print(prompt, report[prompt]["judge_wer"], report["espeak"]["judge_wer"], flush=True)
    report["run"] = run_info("lite")
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
