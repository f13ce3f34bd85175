"""Does the acoustic model speak text no corpus ever held, in voices it heard and voices it did not?

The sentences below were written for this script (none comes from the
corpus's sources), and so was the prompt sentence. For each voice, the
engine says the prompt sentence (a few seconds: the whole voice prompt),
then ``say``'s ``AcousticSpeaker`` speaks every sentence in that voice from
the reference ``data/acoustic/lite_acoustic.safetensors``, and the engine
says them too, the real audio's ceiling. The Whisper judge hears both; the
durations are compared. The default voices are four the reference trained on
(one of each engine but espeak-ng) and three it did not. data/acoustic/README.md
reports a run of::

    python experiments/acoustic_own_sentences.py --json data/acoustic/lite_own_sentences.json
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from michi_lite.acoustic import load_acoustic
from michi_lite.audio import prepare_waveform, voice_prompt
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


PROMPT = "A quiet river ran past the old mill, and the children sat watching it for hours."
# one seen voice of each engine but espeak-ng's (whose en-us m5 speaks no train sentence of the
# engine-balanced corpus, so it is heard here as a held-out voice), and two held-out voices
SEEN = ["piper-joe-l085", "flite-awb", "festival-ked-diphone", "hibari-heart-s100"]
HELD_OUT = ["espeak-en-us-m5-p60-s150", "flite-rms", "festival-cmu-us-slt-arctic-hts"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", required=True)
    parser.add_argument("--model", default="data/acoustic/lite_acoustic.safetensors")
    parser.add_argument("--vocoder", default="data/vocoder/lite_vocoder.safetensors")
    parser.add_argument("--voices", nargs="+", default=SEEN + HELD_OUT)
    args = parser.parse_args()

    model, vocoder, judge = load_acoustic(args.model, "lite"), load_vocoder(args.vocoder, "lite"), load_whisper()
    audio = model.cfg.audio
    voices = {v.name: v for v in all_voices()}

    def engine_says(text: str, voice: str) -> np.ndarray:
        clip = synthesize(text, voices[voice])
        return prepare_waveform(clip.waveform, clip.sample_rate, audio.sample_rate)

    report: dict = {"sentences": SENTENCES, "prompt": PROMPT, "held_out": HELD_OUT, "args": vars(args), "voices": {}}
    for name in args.voices:
        real = [engine_says(text, name) for text in SENTENCES]
        speaker = AcousticSpeaker(model, vocoder, voice_prompt(engine_says(PROMPT, name), audio), steps=4)
        spoken = [speaker.say(text) for text in SENTENCES]
        heard_real = [transcribe(wave, audio.sample_rate, judge) for wave in real]
        heard = [transcribe(wave, audio.sample_rate, judge) for wave in spoken]
        ratios = [len(s) / len(r) for s, r in zip(spoken, real)]
        report["voices"][name] = {
            "held_out": name in HELD_OUT, "judge_wer": word_error_rate(SENTENCES, heard),
            "judge_wer_real": word_error_rate(SENTENCES, heard_real), "heard": heard, "heard_real": heard_real,
            "duration_ratio_median": float(np.median(ratios)),
            "duration_ratio_range": [float(min(ratios)), float(max(ratios))]}
        print(name, {k: v for k, v in report["voices"][name].items() if "heard" not in k}, flush=True)
    report["run"] = run_info("lite")
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
