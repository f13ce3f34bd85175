# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python (michi-lite)
#     language: python
#     name: michi-lite
# ---

# %% [markdown]
# # 05 · Joint training: one model that hears and answers
#
# Notebooks 02 to 04 built the pieces: a vocoder, a speaking head on a
# SmolLM2 backbone, a listening head. A full-duplex model puts them on one
# clock. Every 80 ms the backbone reads, at one position, what *both* sides
# did in the last frame: its own text token and mel patch, and what the
# listening head heard of the user (an embedding and a token). From the
# same position it says its next token and patch. Joint training teaches it
# when to answer, what to say, and when to stop, from dialogues.
#
# 1. a dialogue corpus, offline: two voices, questions and answers, with
#    the timing people have (gaps, overlaps, interruptions, "mm-hm");
# 2. the streams on the frame clock, as a real dialogue lays them out;
# 3. the losses, text mixed in, and a short run on `tiny`;
# 4. the same steps in two processes;
# 5. what the `michi` preset costs in memory, and what a 24 GB card runs;
# 6. the `lite` reference on held-out dialogues: the evaluation, its training;
# 7. the reference answering a held-out user, both sides played back.
#
# Sections 1 to 4 train on the `tiny` preset, with the committed `lite`
# listening head to hear the dialogues; 6 and 7 load the committed `lite`
# joint reference (`data/joint/`), trained by the commands in its README.

# %%
# %matplotlib inline
import csv
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from IPython.display import Audio, Markdown, display

from michi_lite.audio import load_audio
from michi_lite.backbone import load_tokenizer
from michi_lite.cli import main as michi_lite
from michi_lite.config import FRAME_SECONDS
from michi_lite.data.dialogues import load_dialogues
from michi_lite.duplex import converse, load_engine
from michi_lite.listen import load_listener
from michi_lite.memory import StepShape, estimate, largest_batch
from michi_lite.model import speech_model_config
from michi_lite.plots import dialogue_streams_figure, loss_curves
from michi_lite.train_joint import JointDialogues
from michi_lite.weights import (REFERENCE_ACOUSTIC, REFERENCE_CONVERSATION, REFERENCE_JOINT, REFERENCE_LISTENER,
                                REFERENCE_VOCODER, REFERENCE_VOICE)

logging.basicConfig(level=logging.WARNING)
torch.manual_seed(0)  # every random draw below in order: a re-run gives the outputs stored here
torch.set_num_threads(1)
ROOT = Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()
WORK = Path(tempfile.mkdtemp(prefix="michi-joint-"))
tokenizer = load_tokenizer()

# %% [markdown]
# ## 1. A dialogue corpus
#
# `michi-lite data dialogues` writes two-party conversations as stereo
# files, the user on channel 0 and the assistant on channel 1, and a
# manifest with both sides' turns and word timings. The user speaks in many
# voices of the corpus engines; the assistant in one (flite's `awb`). What
# the user says comes from a line bank: questions about a made-up town
# whose facts the assistant is given as a text prefix (a small RAG), general
# questions, requests, small talk, facts to remember ("My sister is called
# Ana") and questions back about them. The assistant's answers are written
# by SmolLM2-135M-Instruct (the `tiny` preset uses the line bank's own
# answers, to build in seconds). Timing is part of the data: gaps of varying
# length, long silences, overlaps, users cutting in (the assistant stops two
# to four frames later, its words cut where it stopped) and backchannels
# (the assistant goes on). Held out by dialogue, by user voice, and by a
# quarter of the questions, asked only in test dialogues.

# %%
# NBVAL_IGNORE_OUTPUT
# the build's progress bar shows its timing
michi_lite(["data", "dialogues", "--preset", "tiny", "--out", str(WORK / "dialogues")])

# %%
dialogues = load_dialogues(WORK / "dialogues")
summary = json.loads((WORK / "dialogues" / "dialogues.json").read_text())
print({k: summary[k] for k in ("dialogues", "hours")}, "splits:", {s: sum(d["split"] == s for d in dialogues)
                                                                   for s in ("train", "val", "test")})
record = max(dialogues, key=lambda d: sum(t["interrupted"] for t in d["turns"]))  # one with an interruption
print(f"dialogue {record['id']} ({record['duration']:.1f} s); its facts: {record['rag']}")
rows = ["| start | end | channel | kind | text |", "|---|---|---|---|---|"]
for turn in record["turns"]:
    said = turn.get("heard_text", turn["text"]) if turn["interrupted"] else turn["text"]
    cut = " *(cut here)*" if turn["interrupted"] else ""
    rows.append(f"| {turn['start']:.2f} | {turn['end']:.2f} | {turn['channel']} | {turn['kind']} | {said}{cut} |")
display(Markdown("\n".join(rows)))
stereo, rate = sf.read(WORK / "dialogues" / record["path"], dtype="float32", always_2d=True)
display(Markdown("The user's channel, then the assistant's:"), Audio(stereo[:, 0], rate=rate),
        Audio(stereo[:, 1], rate=rate))

# %% [markdown]
# ## 2. The streams on the frame clock
#
# `JointDialogues` lays a dialogue out as the speech model's streams. The
# model plays the assistant: its **text stream** has each word's tokens on
# the frames where the word starts (PAD elsewhere) and `<|im_end|>` on the
# frame where an answer stops, finished or cut (only the words heard are
# said); its **audio stream** is the assistant channel's mel patches, two
# frames behind the text (`text_lead_frames`: the text says what is coming,
# the audio says it). The **user's streams** are what the listening head
# makes of channel 0, frame by frame, mistakes included: the model learns
# from the hearing it will have. Frame p of both sides enters the backbone
# at position p + 1, after the rag prefix and the voice vector; the hidden
# state at position p + 1 says the model's frame p + 1.
#
# Here the committed `lite` listener hears the dialogue above:

# %%
listener = load_listener(ROOT / "data" / "listener" / "lite_listener.safetensors", "lite", len(tokenizer))
laid_out = JointDialogues(WORK / "dialogues", speech_model_config("lite"), tokenizer, listener, split=record["split"])
streams = laid_out.streams[[r["id"] for r in laid_out.records].index(record["id"])]
pad = laid_out.pad_id


def shown(token: int) -> str:
    return "" if token == pad else tokenizer.convert_ids_to_tokens(token).replace("Ġ", " ").strip() or "␣"


lead = speech_model_config("lite").text_lead_frames
frames = len(streams.tokens) - lead
figure = dialogue_streams_figure(stereo[:frames * round(FRAME_SECONDS * rate)].T, rate,
                                 [shown(t) for t in streams.user.tokens[:frames].tolist()],
                                 [shown(t) for t in streams.tokens[:frames].tolist()],
                                 f"dialogue {record['id']}: what the listener heard, what the model is taught to say")
figure.savefig(ROOT / "figures" / "05_dialogue_streams.png", dpi=110)
figure

# %% [markdown]
# Bottom: the assistant's channel and its text stream: each answer's words
# where they start, and `<|im_end|>` where it stops; where the user cut in
# ("Wait, how much is a ticket..."), it stops within a few frames, its
# sentence unfinished. Top: the user's channel and the tokens the listener
# emitted, a word's tokens a few frames after it is said. It heard little of
# these users (espeak-ng and festival voices reading questions it was not
# trained on), and in the silences it emits dots and dashes: the listening
# head's generality is the open listening issue, and the joint model learns
# from exactly this hearing.
#
# ## 3. The losses, text mixed in, and a short run
#
# The joint stage keeps the speaker stage's losses (notebook 03): the text
# stream's cross-entropy, the speaking head's flow loss, and the keep loss,
# a KL divergence that holds the adapted backbone to pretrained SmolLM2 on
# plain text. Two additions. The text loss is also logged per kind of frame:
# a word's token, PAD, and `<|im_end|>`, the rare frames that carry turn
# taking and interruption. And the keep loss reads, beside each dialogue's
# answers, `--text-ratio` passages of text from outside the dialogues
# (Bible verses, fortunes, the corpus's stress sentences; never the GPL that
# evaluation reads), so the language model keeps what it knew.
#
# A few steps on `tiny` (a random backbone and a random listener): the
# command a `lite` run uses, small.

# %%
# NBVAL_IGNORE_OUTPUT
# the run's progress bar shows its timing
run = WORK / "joint_tiny"
michi_lite(["train", "joint", "--preset", "tiny", "--data", str(WORK / "dialogues"), "--out", str(run),
            "--steps", "6", "--batch-size", "2", "--checkpoint-every", "3"])

# %%
with (run / "train_log.csv").open() as f:
    log = list(csv.DictReader(f))
columns = ["step", "text_loss", "word_loss", "pad_loss", "end_loss", "flow_loss", "keep_loss"]
rows = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
rows += ["| " + " | ".join(f"{float(r[c]):.3f}" if r[c] and c != "step" else r[c] or "" for c in columns) + " |"
         for r in log]
display(Markdown("\n".join(rows)))

# %% [markdown]
# `--resume` goes on from the newest checkpoint with the batches an
# uninterrupted run would have seen (notebook 03, section 4 tests it for the
# speaker stage; `tests/test_joint.py` for this one).
#
# ## 4. The same steps in two processes
#
# `accelerate launch --multi_gpu --num_processes N -m michi_lite.cli train
# joint ...` starts N copies (gloo on CPUs, NCCL on GPUs). Each draws the
# same batch and keeps every N-th dialogue of it; each loss, a mean over its
# share's frames or tokens, is weighted by the share it holds, and the
# gradients are averaged, so every copy takes the step one process would
# take on the whole batch (`michi_lite/parallel.py`). Two processes against
# one, the flow loss off (its noise is drawn per process, so with it the
# two agree in expectation, not to the bit):

# %%
# NBVAL_IGNORE_OUTPUT
# two launches of the same command: their progress shows timings
common = ["train", "joint", "--preset", "tiny", "--data", str(WORK / "dialogues"), "--steps", "3",
          "--batch-size", "4", "--checkpoint-every", "3", "--flow-loss-weight", "0"]
michi_lite(common + ["--out", str(WORK / "one")])
launched = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "michi_lite.cli",
                           *common, "--out", str(WORK / "two")], check=True, capture_output=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"})

# %%
for name in ("one", "two"):
    with (WORK / name / "train_log.csv").open() as f:
        last = list(csv.DictReader(f))[-1]
    processes = "one process" if name == "one" else "two processes"
    print(f"{processes}: step {last['step']}, text loss {float(last['text_loss']):.5f}, "
          f"word loss {float(last['word_loss']):.5f}")

# %% [markdown]
# ## 5. The `michi` preset on a 24 GB card
#
# MichiAI's author trained on one RTX 4090. The `michi` preset is that
# scale: SmolLM2-360M's shape (387M parameters with the heads, 25M of them
# trained), 24 kHz audio. No GPU was lent to measure it; `michi-lite bench
# joint` measured a step on these two CPU cores (random weights of that
# shape, float32) beside `michi_lite/memory.py`'s model, whose activation
# term is calibrated on the first row:

# %%
rows = ["| two 20 s dialogues a step | step (s) | positions/s | peak memory (GB) | the model's estimate (GB) |",
        "|---|---|---|---|---|"]
for name, label in (("no_checkpointing", "every activation kept"), ("checkpointing", "activations recomputed")):
    bench = json.loads((ROOT / "data" / "joint" / f"michi_bench_cpu_{name}.json").read_text())
    rows.append(f"| {label} | {bench['step_seconds_median']:.0f} | {bench['positions_per_second']:.1f} | "
                f"{bench['peak_rss_gb']:.2f} | {bench['estimate_gb']['total']:.2f} |")
display(Markdown("\n".join(rows)))

# %% [markdown]
# Scaled to a GPU's batch, the model says where the memory goes. With
# activations recomputed in backward (`--checkpointing`), the backbone's
# activations are small; the text head's logits are not: every frame is
# scored against 49,152 tokens, in float32.

# %%
shape = StepShape(parameters=bench["parameters"], trained_parameters=bench["trained_parameters"], layers=32,
                  hidden_size=960, intermediate_size=2560, vocab_size=len(tokenizer), batch_size=16,
                  frames=round(30 / FRAME_SECONDS), text_tokens=16 * round(30 / FRAME_SECONDS / 2))
rows = ["| 16 dialogues of 30 s, bf16 | weights | gradients + Adam | activations | logits | total (with 20%) |",
        "|---|---|---|---|---|---|"]
for checkpointing in (False, True):
    e = estimate(shape, bf16=True, checkpointing=checkpointing)
    rows.append(f"| {'recomputed' if checkpointing else 'kept'} | {e['weights']:.1f} | "
                f"{e['gradients_and_adam']:.1f} | {e['activations']:.1f} | {e['logits']:.1f} | {e['total']:.1f} |")
display(Markdown("\n".join(rows)))
one_dialogue = StepShape(**{**shape.__dict__, "batch_size": 1, "text_tokens": round(30 / FRAME_SECONDS / 2)})
print("dialogues of 30 s a step within 22 GB, bf16, activations recomputed:", largest_batch(one_dialogue, 22.0))

# %% [markdown]
# So a 4090 owner runs `michi-lite train joint --preset michi
# --checkpointing --bf16 --batch-size 16` on dialogues of about 30 s: about
# 13 GB by the model, with room for what it leaves out (a GPU measurement,
# `torch.cuda.max_memory_allocated` in the same `bench joint`, is still to
# come). On these two cores the same preset trains at 8 to 10 positions a
# second: a GPU's job.

# %% [markdown]
# ## 6. Evaluation on held-out dialogues
#
# `michi-lite eval joint` streams each test dialogue's user channel through
# the duplex engine (notebook 06), 80 ms at a time, the dialogue's facts
# read first; the model answers in its own words and time, and its frame
# log is read against the user's turns. Before joint training, with the
# speaker stage's model (it hears nothing: its user projection is zero),
# and after a first, short joint run on the `lite` dialogue corpus
# (`data/joint/README.md` has both commands). Last, Whisper tiny.en hears
# each answer's audio, from its first word to the user's next turn, and
# its words are scored against the model's own text stream for those
# frames (the judge WER: does it say what it writes), and DNSMOS rates
# the sound:

# %%
reports = {"the speaker stage's model (before joint training)": "lite_eval_speaker_before_joint_sampled.json",
           "a text-stream joint run (40 CPU minutes)": "lite_eval_text_joint_run.json",
           "the reference: its own adapter stacked on the speaker stage's": "lite_eval.json"}
reports = {label: json.loads((ROOT / "data" / "joint" / name).read_text()) for label, name in reports.items()}
measures = [("spoken-question answering", "spoken_qa_accuracy", "{:.2f}"),
            ("the same questions as text to SmolLM2", "text_qa_accuracy", "{:.2f}"),
            ("response gap, median (s)", "response_gap_seconds_median", "{:.2f}"),
            ("response gap, p95 (s)", "response_gap_seconds_p95", "{:.2f}"),
            ("turns left unanswered", "turns_unanswered", "{}"),
            ("frames to stop when cut in on, median", "interruption_stop_frames_median", "{:.1f}"),
            ("backchannels that stopped it", "backchannel_stop_rate", "{:.2f}"),
            ("answers heard by the judge", "answers_judged", "{}"),
            ("judge WER of the answers against the model's own text", "judge_wer", "{:.2f}"),
            ("DNSMOS of the answers (overall)", "dnsmos_ovrl", "{:.2f}")]
n_dialogues = {r["dialogues"] for r in reports.values()}
rows = [f"| {'/'.join(map(str, sorted(n_dialogues)))} test dialogues | " + " | ".join(reports) + " |",
        "|---" * (len(reports) + 1) + "|"]
for label, key, form in measures:
    rows.append(f"| {label} | " + " | ".join("-" if r.get(key) is None else form.format(r[key])
                                            for r in reports.values()) + " |")
rows.append("| far-text perplexity, adapted / pretrained | " + " | ".join(
    f"{r['far_text_perplexity']['ratio']:.3f}" for r in reports.values()) + " |")
display(Markdown("\n".join(rows)))

# %% [markdown]
# The first column is the speaker stage's model (it hears nothing: its
# user projection is zero), the others after joint training, all voiced by
# the acoustic model that `say` speaks with (notebook 03;
# `michi_lite/voicing.py`; the speech model's own flow head is not yet
# intelligible, `data/joint/README.md` has those runs). Their words are
# drawn from the 25 likeliest at temperature 0.7, whether to say one on a
# frame at the model's own odds (`DuplexEngine.sampled`). Gaps are timed
# from the first frame that sounds a phoneme.
#
# The middle column trained the speaker stage's own adapters for 160 steps
# (40 minutes, the text stream alone, the keep loss weighed 4 with two
# outside passages a dialogue). It learnt to take turns (7 of 86 left
# unanswered instead of 27) and answered no question. Its weights are a
# whole speaker file, 34 MB, and `data/` has room for less. The reference
# trains instead an adapter of its own, rank 4, stacked on the speaker
# stage's merged weights, with the user's projection and the text-head
# bias (`train joint --stack-rank 4`; `SpeechModel.stack_adapters`): its
# file is 3.9 MB and names the speaker file beneath by its SHA-256. The
# same recipe ran for 318 steps (90 minutes on these two cores), with one
# more rule in the sampler: no run of three tokens said twice in a turn.
#
# It answers 2 of the 42 held-out questions ("When is the farmers
# market?": "The fish market is held every Saturday morning."), the first
# the model has got right; more of its answers are about what was asked
# ("Where is the bakery?": "The bakery is on Hill"), though most are still
# the fact base's sentences about the wrong place, or courtesies. It takes
# turns a little later than the text run (0.87 s median), stops 3 frames
# after being cut in on, and is heard at judge WER 0.40. Its far-text
# perplexity, 1.058 times pretrained SmolLM2's, misses the bar of 1.05 that
# the text run met: a rank-4 adapter pulled the speaker stage's 1.069 back
# less far. SmolLM2 given the same questions as text answers 69%: the gap
# that listening and 90 CPU minutes leave is most of it.
#
# Its training log (every 10 steps, two dialogues a step, so each point is
# noisy, shown as a running mean of three): unlike the shorter runs, whose
# losses stayed flat, the text stream's losses fall, on the rare end-of-turn
# frames too, while the keep loss pulls the plain text back towards
# SmolLM2's.

# %%
with (ROOT / "data" / "joint" / "lite_train_log.csv").open() as f:
    reference_log = list(csv.DictReader(f))
steps = np.array([int(r["step"]) for r in reference_log])
curves = {f"{kind} frames" if kind in ("word", "pad", "end") else kind: (steps, np.array(
    [float(r[f"{kind}_loss"]) for r in reference_log])) for kind in ("text", "word", "pad", "end", "keep")}
figure = loss_curves(curves, "loss", smooth=3, title=f"the joint reference: {steps[-1]} steps, "
                     f"{float(reference_log[-1]['seconds']) / 60:.0f} minutes on 2 CPU cores (running mean of 3)")
figure.savefig(ROOT / "figures" / "05_reference_losses.png", dpi=110)
display(figure)

# %% [markdown]
# ## 7. The reference answering a held-out user
#
# The conversation `michi-lite demo` plays (`data/duplex/demo_user.flac`:
# the user's side of a test dialogue, in a voice no model trained on),
# streamed through the duplex engine with the joint reference, 80 ms at a
# time, its facts read first; notebook 06 takes the engine apart. Each
# user turn as it was spoken, what the listener heard of it, and what the
# model said before the next one:

# %%
engine = load_engine("lite", REFERENCE_JOINT, REFERENCE_LISTENER, REFERENCE_VOCODER, REFERENCE_VOICE,
                     acoustic=REFERENCE_ACOUSTIC)
bundled = json.loads(REFERENCE_CONVERSATION.with_suffix(".json").read_text())
user = load_audio(REFERENCE_CONVERSATION, engine.listener.cfg.audio.sample_rate)
both, timeline = converse(engine, user, tail_seconds=3.0, prefix=bundled["rag"])
print("the facts it read first:", bundled["rag"])
turns = bundled["turns"]
rows = ["| the user said | the listener heard | the model said, until the next turn |", "|---|---|---|"]
for k, turn in enumerate(turns):
    start, stop = round(turn["start"] / FRAME_SECONDS), round(turn["end"] / FRAME_SECONDS)
    following = round(turns[k + 1]["start"] / FRAME_SECONDS) if k + 1 < len(turns) else len(engine.log)
    heard = engine.said("user", start, following).strip()
    rows.append(f"| {turn['text']} | {heard or '-'} | {engine.said('model', stop, following).strip() or '-'} |")
display(Markdown("\n".join(rows)))
display(Markdown("Both sides, the user left and the model right:"),
        Audio(both, rate=engine.model.cfg.audio.sample_rate))

# %% [markdown]
# The listener heard most of this user (an HTS voice of festival that no
# model trained on) nearly word for word. The model took its turns and
# spoke of the museum and the hours the facts name, but answered neither
# question: asked who the museum guide is, it said "my own own color.", and
# asked the user's favourite colour, the post office's hours as the
# museum's. (The model hears its own voice, so what it says moves with how
# that voice is sampled: with four Euler steps instead of the engine's one,
# its answer to the guide question was "I'm glad to be in the morning of
# the morning and enjoy the best".) That is where the reference stands: it
# hears, takes turns and stops when cut in on, and only now and then says
# the fact that was asked for (2 of 42 test questions). Joint training on
# these two cores has had 90 minutes; the recipe scales with `accelerate
# launch` and the `michi` preset on a GPU (section 5).
