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
# # 06 · Duplex inference: listening and speaking at once
#
# A full-duplex model has no turns to wait for. Every 80 ms it takes 80 ms
# of the user's audio and gives back 80 ms of its own, whether it is
# talking, listening or both: one step of the frame clock. This notebook
# runs that step with the committed `lite` pieces and measures it.
#
# 1. the engine and what it keeps from frame to frame;
# 2. one frame, stage by stage: listen, text, speak, vocode, backbone;
# 3. a conversation on held-out audio, both channels on the frame clock;
# 4. what a frame costs, stage by stage, and over long runs;
# 5. the features: a RAG prefix, forced speech then free, a voice prompt,
#    a cap on how long it talks, and what it does when talked over.
#
# The speech model here is the speaker stage's (`data/speaker/`): trained to
# speak text, not to converse. It hears the user (the listener's words are
# right below) but was never taught to answer, so what it says is fluent
# nonsense that starts on the first frame. The engine, its timings and its
# features do not depend on that: the joint reference (notebook 05, section
# 7; what `chat`, `serve` and `demo` run by default) steps in the same
# engine, with the same costs.
#
# Its words are voiced by the acoustic model that `michi-lite say` speaks
# with (notebook 03): the speech model's own speaking head, MichiAI's
# end-to-end path, does not speak intelligibly yet, and the engine can use
# either.

# %%
# %matplotlib inline
import json
import logging
from pathlib import Path

import numpy as np
import torch
from IPython.display import Audio, Markdown, display

from michi_lite.audio import load_audio, load_voice_prompt, mel_from_patches
from michi_lite.config import FRAME_SECONDS
from michi_lite.duplex import STAGES, DuplexEngine, converse, load_engine
from michi_lite.model import UserStreams
from michi_lite.plots import dialogue_streams_figure, frame_times_figure
from michi_lite.weights import (
    REFERENCE_ACOUSTIC,
    REFERENCE_ACOUSTIC_VOICE,
    REFERENCE_CONVERSATION,
    REFERENCE_LISTENER,
    REFERENCE_SPEAKER,
    REFERENCE_VOCODER,
    REFERENCE_VOICE,
)

logging.basicConfig(level=logging.WARNING)
torch.set_num_threads(1)  # the same arithmetic on every run: the outputs stored here are what a re-run gives
ROOT = Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()
FIGURES = ROOT / "figures"

# %% [markdown]
# ## 1. The engine
#
# `load_engine` reads five committed files: the speech model (SmolLM2-135M
# with its text head, speaking head and the user's projection), the
# listening head, the vocoder, a voice prompt and the acoustic model that
# voices the text stream. On a CPU the speech model and the listener run as
# int8 copies. What lasts from one frame to the next has a fixed size: the
# listener's state, the backbone's window of the last 1,000 positions (80 s,
# more than the longest dialogue of joint training) as a key-value cache,
# the vocoder's stream, and the acoustic voice's words laid out as 10 ms
# mel columns, as far back as its attention looks (2 s). Nothing is
# recomputed over the conversation.

# %%
engine = load_engine("lite", REFERENCE_SPEAKER, REFERENCE_LISTENER, REFERENCE_VOCODER, REFERENCE_VOICE,
                     acoustic=REFERENCE_ACOUSTIC)
model, tokenizer = engine.model, engine.tokenizer
rate_in, rate_out = engine.listener.cfg.audio.sample_rate, model.cfg.audio.sample_rate
print(f"a step takes {engine.samples_in} samples of the user ({rate_in} Hz) and gives "
      f"{model.cfg.audio.samples_per_frame} of the model ({rate_out} Hz)")
print(f"the backbone's window: {engine.context_frames} positions, "
      f"{engine.context_frames * FRAME_SECONDS:.0f} s of conversation")
print(f"kept between frames besides it: the listener's {engine.hearing.cache_numel():,} numbers, "
      f"the vocoder's {engine.speaking.cache_numel():,}")

# %% [markdown]
# ## 2. One frame, stage by stage
#
# `DuplexEngine.step` is five stages. Here they are one by one on the first
# 80 ms of the bundled conversation (`data/duplex/demo_user.flac`: the
# user's side of a held-out dialogue, in a voice no model trained on), with
# what each hands the next; then the engine's own `step` on the same audio,
# from the same start, gives the same samples.

# %%
bundled = json.loads(REFERENCE_CONVERSATION.with_suffix(".json").read_text())
user = load_audio(REFERENCE_CONVERSATION, rate_in)
first = torch.from_numpy(user[:engine.samples_in])

engine.reset()
with torch.inference_mode():
    (heard,) = engine.hearing.push(first)  # 1. listen: an embedding, and a token (PAD: no word yet)
    token = engine.next_token()  # 2. text: the text head reads the backbone's last hidden state
    if token not in (model.pad_id, model.end_id):  # 3. speak: the acoustic voice gathers the words
        engine.voicer.token(tokenizer.decode([token]))
    patch = engine.voicer.next_patch()[None]  # and voices the next 80 ms of those laid out (or silence)
    mel = mel_from_patches(patch, model.cfg.audio)
    samples = engine.speaking.push(mel).numpy()  # 4. vocode: 80 ms of samples
    streams = UserStreams(heard.embedding[None, None], torch.tensor([[heard.token_id]]))
    inputs = model.frame_inputs(torch.tensor([[token]]), patch[None], streams)  # 5. backbone: the frame goes in
    engine.hidden = engine.decoder(inputs, engine.cache)[:, -1]

def token_text(token: int) -> str:
    return {model.pad_id: "PAD", model.end_id: "<|im_end|>"}.get(token) or tokenizer.decode([token])


print(f"1. listen:   token {token_text(heard.token_id)!r}, "
      f"embedding {tuple(heard.embedding.shape)}")
print(f"2. text:     token {token_text(token)!r}")
print(f"3. speak:    a mel patch {tuple(patch.shape)} -> mel {tuple(mel.shape)} (8 frames of 10 ms)")
print(f"4. vocode:   {samples.shape[0]} samples")
print(f"5. backbone: one position in, hidden state {tuple(engine.hidden.shape)} for the next frame's text")

engine.reset()
same = engine.step(first.numpy())
print(f"the engine's step from the same start: max |difference| = {np.abs(same - samples).max():.1e}")

# %% [markdown]
# Frame *p* of both sides enters the backbone at position *p* + 1, as in
# training, so the model can answer frame *p* of the user from frame *p* + 1
# on: that one frame (80 ms) and the vocoder's 30 ms are the least the clock
# adds to any answer.
#
# ## 3. A conversation on held-out audio
#
# The engine hears the bundled user's 21.7 s, 80 ms at a time, having read
# the dialogue's facts first (a RAG text prefix), and 3 s of silence after
# it to answer in. `converse` returns both sides lined up (user, model) and
# a timeline of every frame. The user's words below are the listener's, as
# it emitted them; the model's are its text stream, each on the frame it
# said it. The engine draws that stream in two (`DuplexEngine.sampled`):
# whether to say a word on this frame, at the model's own odds, then which
# word, among the 25 likeliest at temperature 0.7. Drawn from all of them
# at the model's odds, a weak model strings unrelated words together.

# %%
print("the user's turns:", " / ".join(turn["text"] for turn in bundled["turns"]))
print("the facts it reads first:", bundled["rag"])
both, timeline = converse(engine, user, tail_seconds=3.0, prefix=bundled["rag"])
print(f"\n{timeline['frames']} frames\nheard: {timeline['user_said']!r}\nsaid:  {timeline['model_said'][:300]!r} ...")

# %%
silent = (model.pad_id, model.end_id)
words = {side: [engine.token_text(getattr(r, f"{side}_token")) for r in engine.log] for side in ("user", "model")}
first_seconds = round(10 / FRAME_SECONDS)
figure = dialogue_streams_figure(both[:, :first_seconds * model.cfg.audio.samples_per_frame], rate_out,
                                 words["user"][:first_seconds], words["model"][:first_seconds],
                                 title="the first 10 s: the user as the listener heard it, and the model")
figure.savefig(FIGURES / "06_conversation.png", dpi=110)
display(figure)
display(Markdown("The user's side, then the model's:"))
display(Audio(both[0], rate=rate_out), Audio(both[1], rate=rate_out))

# %% [markdown]
# One thing is wrong here, and it is not the engine's. The model talks
# from the first frame and does not stop when the user speaks: nothing
# taught it to, which is joint training's work (notebook 05). The listener
# hears every turn, with mistakes ("isn't it" as "as", "Wait," as "Wait a
# day." when this notebook was run). Its first decoder heard the first two
# turns and then nothing: it learnt from clips of one sentence each and,
# after "yellow.", waited for good. Now its stream starts over after each
# sentence, and training teaches what a restart hears: on the project's
# test sets, each engine's clips four to a stream with silences between,
# its WER went from 0.754 to 0.362 in seen voices and from 0.780 to 0.443
# in held-out ones (`data/listener/README.md`, "Conversations").
#
# ## 4. What a frame costs
#
# Every frame of the conversation was timed, stage by stage. On these two
# CPU cores (one thread here) the step must stay under the 80 ms it is given.

# %%
# NBVAL_IGNORE_OUTPUT
# wall-clock times: they differ on every run
seconds = {stage: np.array([r.seconds[stage] for r in engine.log]) for stage in STAGES}
figure = frame_times_figure(seconds, title="the frame step of the conversation above, one thread")
figure.savefig(FIGURES / "06_frame_times.png", dpi=110)
display(figure)
steps = sum(seconds.values()) * 1000
print(f"the step: {np.median(steps):.1f} ms median, {np.percentile(steps, 95):.1f} ms p95; "
      + ", ".join(f"{stage} {np.median(s) * 1000:.1f}" for stage, s in seconds.items()) + " ms median")

# %% [markdown]
# `michi-lite bench duplex` times the same step over long runs, with two
# threads (`data/duplex/`): the user's side is noise at speech level (the
# work does not depend on what is heard). Resident memory is read after the
# warm-up and at the end; the step's p95 over the first and the last part
# of the run shows whether it drifts as the backbone's window fills.

# %%
runs = [("60 s, the listener before its text decoder", "lite_bench_cpu.json"),
        ("60 s, its first text decoder (a slower draw)", "lite_bench_cpu_text_listener.json"),
        ("10 minutes, the listener before its text decoder", "lite_bench_cpu_10min.json"),
        ("1 hour, its first text decoder", "lite_bench_cpu_hour.json")]
rows = ["| run | frames | step median (ms) | p95 | p95 at the start | p95 at the end | memory (GB) start → end |",
        "|---|---|---|---|---|---|---|"]
for label, name in runs:
    b = json.loads((ROOT / "data" / "duplex" / name).read_text())
    start = b.get("step_ms_p95_first_5_minutes", b["step_ms_p95_first_fifth"])
    end = b.get("step_ms_p95_last_5_minutes", b["step_ms_p95_last_fifth"])
    rows.append(f"| {label} | {b['frames']:,} | {b['step_ms_median']:.1f} | {b['step_ms_p95']:.1f} | {start:.1f} | "
                f"{end:.1f} | {b['rss_gb_start']:.2f} → {b['rss_gb_end']:.2f} |")
display(Markdown("\n".join(rows)))

# %% [markdown]
# (The start and end columns are the first and last fifth of a run, and
# the first and last 5 minutes of the hour. Over the hour resident memory
# grew by the frame log's small record a frame, 45,000 of them.)
#
# ## 5. The features
#
# Each is a way of filling the streams, not a second model.
#
# **A RAG text prefix.** `reset(prefix)` has the model read text before the
# conversation, as joint training lays it out: facts it may be asked about.
# It is in the backbone's window like everything else, so it changes what
# every frame says; here, the first frame's likeliest tokens:

# %%
def first_frame_tokens(prefix: str | None, k: int = 5) -> str:
    engine.reset(prefix)
    with torch.inference_mode():
        probabilities = model.text_logits(engine.hidden)[0].float().softmax(-1)
    top = probabilities.topk(k)
    return ", ".join(f"{token_text(int(t))!r} {float(p):.2f}"
                     for p, t in zip(top.values, top.indices))


for prefix in (None, bundled["rag"], "The bakery on Elm Street opens at seven."):
    label = "(no prefix)" if prefix is None else repr(prefix[:56])
    print(f"{label:60} -> {first_frame_tokens(prefix)}")

# %% [markdown]
# **Forced speech, then free.** `say(text)` feeds the text's tokens in place
# of the model's own, each on a frame where its text head would rather say a
# token than not, with the text's own phonemes: the head keeps the pace,
# the text decides the words. Once the text is said, it goes on freely.
# Here with the user silent:

# %%
def run_silent(engine: DuplexEngine, seconds: float) -> np.ndarray:
    silence = np.zeros(engine.samples_in, dtype=np.float32)
    return np.concatenate([engine.step(silence) for _ in range(round(seconds / FRAME_SECONDS))])


engine.reset()
engine.say("Hello, my name is Michi. I can listen and speak at the same time.")
forced = run_silent(engine, 8.0)
said = engine.said()
print(f"forced, then free: {said!r}")
display(Audio(forced, rate=rate_out))

# %% [markdown]
# **A voice prompt.** The voice the model answers in is a few seconds of
# anyone's speech (`voice_patches`, here the acoustic model's own prompt
# instead of the speaker stage's): the same forced sentence in the other
# voice. A second engine shares the first one's weights; only its streams
# are its own.

# %%
other = DuplexEngine(model, engine.listener, engine.vocoder, tokenizer,
                     load_voice_prompt(REFERENCE_ACOUSTIC_VOICE, model.cfg.audio), steps=engine.steps,
                     acoustic=engine.acoustic)
other.say("Hello, my name is Michi. I can listen and speak at the same time.")
in_other_voice = run_silent(other, 8.0)
print(f"in the other voice: {other.said()!r}")
display(Audio(in_other_voice, rate=rate_out))
del other

# %% [markdown]
# **A cap on how long it talks.** `max_talk_frames` ends a turn that many
# frames after its first word: the engine makes the text head say
# `<|im_end|>`, and the turn's next word starts a new one.

# %%
engine.max_talk_frames = round(2.0 / FRAME_SECONDS)  # load_engine(..., max_talk_frames=N) sets it too
engine.reset()
run_silent(engine, 6.0)
engine.max_talk_frames = None
ends = [r.index for r in engine.log if r.model_token == model.end_id]
print(f"turns ended at frames {ends} (2 s = {round(2.0 / FRAME_SECONDS)} frames after each turn's first word)")

# %% [markdown]
# **Talked over.** When the user speaks while the model does, a joint model
# should stop within a few frames, and go on through a backchannel
# ("mm-hm"). The engine logs both sides on every frame, which is how
# `michi-lite eval joint` measures it. Here the model reads the facts and
# talks (as in section 3); 2 s in, the user cuts in with one of the
# bundled turns; how much it says before, while and after the user speaks:

# %%
turn = bundled["turns"][2]
words_of_user = user[round(turn["start"] * rate_in):round(turn["end"] * rate_in)]
quiet = np.zeros(round(2.0 * rate_in), dtype=np.float32)
converse(engine, np.concatenate([quiet, words_of_user, quiet]), tail_seconds=0.0, prefix=bundled["rag"])
cut_in, cut_out = round(2.0 / FRAME_SECONDS), round((2.0 + len(words_of_user) / rate_in) / FRAME_SECONDS)
talking = np.array([r.model_token not in silent for r in engine.log])
for label, frames in (("before the user", talking[:cut_in]), ("while the user speaks", talking[cut_in:cut_out]),
                      ("after", talking[cut_out:])):
    print(f"{label:22} a token on {frames.sum():2d} of {len(frames)} frames ({frames.mean():.0%})")
print(f"the user said {turn['text']!r}; the listener heard {engine.said('user')!r}")

# %% [markdown]
# It heard every word. This run fell quiet as the user began (an earlier one,
# its voice sampled in four Euler steps, said 2 tokens while the user spoke
# and 3 after): the speaker stage's model was never taught when to stop, so
# one cut-in shows little. Stopping is a choice the text head makes from
# what the backbone heard, which is what joint training's interrupted
# dialogues teach, and `michi-lite eval joint` counts over every
# interruption of its test dialogues; the engine needs no rule for it.

# %% [markdown]
# ## 6. Where it stands
#
# What Whisper tiny.en hears of the model's side of section 3's
# conversation, against the model's own text stream: the judge of
# `michi-lite eval joint`, run last because CTranslate2 (Whisper's runtime)
# slows torch in any process that has loaded it.

# %%
# NBVAL_IGNORE_OUTPUT
# Whisper's words follow the CPU's float kernels (as in notebook 01)
from michi_lite.backbone import load_whisper
from michi_lite.data.alignment import transcribe, word_error_rate

judge_heard = transcribe(both[1], rate_out, load_whisper())
print(f"said:  {timeline['model_said']!r}\nheard: {judge_heard!r}")
print(f"judge WER against its text stream: {word_error_rate([timeline['model_said']], [judge_heard]):.2f}")

# %% [markdown]
# The engine steps the whole `lite` model in real time on two CPU cores with
# its state bounded, logs every frame, and has the features a duplex model
# needs; `michi-lite chat` runs it on a file, `michi-lite serve` behind a
# web page and a microphone, `michi-lite demo` on the conversation above.
# Voiced by the acoustic model, its words are heard: on the 15 test
# dialogues of `michi-lite eval joint` (`data/joint/`), Whisper tiny.en
# hears the speaker stage's answers at WER 0.43 against their text stream
# (words from the 25 likeliest; 0.56 drawn from all) and DNSMOS rates them
# 2.08, where the speech model's own speaking head gave 1.04 and 1.14
# ("Thank you." or nothing for most answers). (Those evaluations voiced
# the words in four Euler steps; the engine now takes one,
# `duplex.VOICE_STEPS`, heard as well by `eval acoustic` and 8.5 ms
# cheaper a voiced frame.)
#
# What it lacks is a model that answers: the time to first audio (the
# user's end of speech to the model's first sounding frame, plus one
# step's compute) and the stop when talked over are what joint training
# teaches. The `lite` joint reference (`data/joint/`: a rank-4 adapter
# stacked on this model, 318 steps in 90 CPU minutes) answers 77 of the 86
# test turns, 0.87 s after the user stops at the median and 2.1 s at p95,
# stops 3 frames after being cut in on, is heard at judge WER 0.40, and
# says the right thing to 2 of 42 held-out questions; notebook 05 plays it
# a conversation.
