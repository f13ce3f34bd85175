"""How fast does the acoustic model learn to speak? Its exports judged against the CPU minutes that made them.

Every export a run kept (``train acoustic --keep-exports``) speaks the same
held-out test sentences of one voice group from their text, with its own
timing, through the reference vocoder (``evaluate_acoustic``, 4 Euler
steps). Beside the Whisper judge's WER are two cheap proxies: the phoneme
aligner's classifier hearing, under each generated column, the phoneme asked
for there, and the mel L1 of the same phonemes held for as long as the engine
held them, against the real mel. The first speech model (``data/speaker/``)
is drawn from its committed evals for comparison: a different test set (16
sentences of 36 voices), so read it as where it stood, not as a paired
comparison. data/acoustic/README.md reports runs of::

    python experiments/acoustic_curve.py --run runs/acoustic_one_voice --data corpus/one_voice \\
        --max-utterances 12 --json data/acoustic/lite_one_voice_curve.json
    python experiments/acoustic_curve.py --run runs/acoustic_lite --data corpus/lite_3h \\
        --max-utterances 24 --every 2 --json data/acoustic/lite_voice_turns_curve.json

Notebook 03 draws the figure from the JSONs; ``--figure`` draws one here too.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path

from matplotlib.figure import Figure

from michi_lite.data.corpus import load_manifest
from michi_lite.eval import evaluate_acoustic

# The first speech model's parts (data/speaker/README.md): CPU minutes so far and the eval made after it
FIRST_DESIGN = ((213, "data/speaker/lite_eval_part3.json"), (275, "data/speaker/lite_eval_part4.json"),
                (337, "data/speaker/lite_eval.json"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="a `train acoustic --keep-exports` run directory")
    parser.add_argument("--data", required=True, help="the corpus it trained on (its test split is judged)")
    parser.add_argument("--vocoder", default="data/vocoder/lite_vocoder.safetensors")
    parser.add_argument("--aligner", default="data/aligner/lite_aligner.safetensors",
                        help="the phoneme aligner whose classifier gives the phoneme proxy")
    parser.add_argument("--group", default="seen", help="the test voices judged: seen or unseen")
    parser.add_argument("--max-utterances", type=int, default=12)
    parser.add_argument("--every", type=int, default=1, help="judge every N-th export")
    parser.add_argument("--json", required=True)
    parser.add_argument("--figure", help="a .png to draw the curve in")
    args = parser.parse_args()

    run = Path(args.run)
    with (run / "train_log.csv").open() as f:
        seconds = {int(row["step"]): float(row["seconds"]) for row in csv.DictReader(f)}
    exports = sorted(run.glob("exports/step_*.safetensors"))
    exports = sorted({*exports[args.every - 1::args.every], exports[-1]})  # the last one always
    voices = sorted({r["voice"] for r in load_manifest(args.data, "test") if r["voice_split"] == args.group})
    points = []
    for path in exports:
        step = int(re.search(r"step_(\d+)", path.name).group(1))
        report = evaluate_acoustic("lite", path, args.data, args.vocoder, voices=voices,
                                   max_utterances=args.max_utterances, steps=(4,), aligner_ckpt=args.aligner)
        summary = report["groups"][args.group]["all"]
        points.append({"step": step, "cpu_minutes": seconds[step] / 60, "judge_wer": summary["judge_wer"],
                       "judge_wer_real": summary["judge_wer_real"],
                       "phoneme_accuracy": summary["phoneme_accuracy"],
                       "phoneme_accuracy_real": summary["phoneme_accuracy_real"],
                       "mel_l1_engine_timed": summary["mel_l1_engine_timed"]})
        print(points[-1], flush=True)
    first = [{"cpu_minutes": minutes,
              "judge_wer": json.loads(Path(path).read_text())["groups"]["seen"]["all"]["judge_wer"]}
             for minutes, path in FIRST_DESIGN]
    Path(args.json).write_text(json.dumps({"acoustic": points, "first_design": first, "args": vars(args),
                                           "run": report["run"]}, indent=1) + "\n")

    if args.figure is None:
        return
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    wer, proxy = fig.subplots(1, 2)
    wer.plot([p["cpu_minutes"] for p in points], [p["judge_wer"] for p in points], "o-",
             label=f"acoustic model, {len(voices)} {args.group} voices")
    wer.axhline(points[-1]["judge_wer_real"], color="gray", ls="--", label="the real audio, same sentences")
    wer.plot([p["cpu_minutes"] for p in first], [p["judge_wer"] for p in first], "s-", color="tab:red",
             label="first design, 36 voices (16 sentences)")
    wer.set(xlabel="training, CPU minutes (2 cores)", ylabel="Whisper judge WER", ylim=(0, 1.5),
            title="heard as words")
    wer.legend(fontsize=7)
    proxy.plot([p["cpu_minutes"] for p in points], [p["phoneme_accuracy"] for p in points], "o-")
    proxy.axhline(points[-1]["phoneme_accuracy_real"], color="gray", ls="--", label="the real audio")
    proxy.set(xlabel="training, CPU minutes (2 cores)", ylabel="phoneme accuracy", ylim=(0, 1),
              title="the proxy: the asked phoneme heard under each column")
    proxy.legend(fontsize=7)
    fig.savefig(args.figure, dpi=120)


if __name__ == "__main__":
    main()
