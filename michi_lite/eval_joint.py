"""``michi-lite eval joint``: the duplex model on held-out dialogues, as a conversation partner.

Each test dialogue's user channel is streamed through the ``DuplexEngine``
80 ms at a time, as a microphone would deliver it (the recorded assistant is
not played: the model answers in its own words and time), and what the
model said and when is read off its frame log against the user's turns:

* **spoken-question answering**: for each question of the fact base (its
  answer in the dialogue's rag prefix) or of general knowledge, whether the
  model's words between the end of the question and the user's next turn
  say one of the right answer's key words (``mentions``). Beside it, the
  same question answered by SmolLM2-135M-Instruct given it as text, with
  the same rag prefix (``LlmAnswers``): how much understanding the listening
  path loses is the gap between the two;
* **response gap**: from the end of a user's turn (not a backchannel) to the
  model's first word's audio, median and p95, and how many turns got no
  answer before the user spoke again. The first sample of a step's audio
  plays when the step has heard its frame, plus the vocoder's lag; the
  first word's audio is the first frame the acoustic voice sounds a phoneme
  in (``FrameRecord.sounding``), or, with the speech model's own head, its
  token's frame ``text_lead_frames`` later. Beside the response gap, the
  engine's own compute for the step (notebook 06) makes the time to first
  audio;
* **interruption**: when the user cuts in while the model is talking, the
  frames from the user's first word to the model's ``<|im_end|>``; and the
  share of backchannels ("mm-hm") during which the model stopped, which
  should be near zero;
* **repetition**: the share of answers that say some run of three words
  twice (``repeats_a_run``): what a sharpened sampler does to a weak model;
* **far-text perplexity**: the backbone with its adapters against the
  pretrained one on text no stage trains on (the GNU GPL), the ratio of
  their perplexities (the bar is 1.05);
* **the answers as heard** (``judge_answers``): each answer's audio, from
  its first word's frame to the user's next turn (and on while an acoustic
  voice that ran behind its text still sounds), transcribed by Whisper
  tiny.en and scored against the model's own text stream for those frames
  (the judge WER: does it say what it writes), and its DNSMOS. Whisper
  loads after every dialogue has streamed: once CTranslate2 has loaded a
  model, torch's products in the same process run slower (the duplex
  README), and the dialogues stream as a user's would.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .audio import prepare_waveform
from .config import FRAME_SECONDS
from .data.dialogue_lines import FACT_BASE, GENERAL_QUESTIONS, INTERJECTIONS
from .data.dialogues import load_dialogues, mentions
from .data.words import normalize_text
from .duplex import DuplexEngine, converse
from .model import SpeechModel
from .voicing import MAX_LAG_FRAMES

FAR_TEXT = Path("/usr/share/common-licenses/GPL-3")  # Debian's base-files: text no stage trains on
STILL_TALKING_FRAMES = 5  # the model is talking if it said a word in the last this many frames
KEYED = {line.text: line for line in (*FACT_BASE, *GENERAL_QUESTIONS)}


def asked(text: str) -> str:
    """A user turn's question as the line bank has it: an interjection's opening ("Sorry, ...") taken off."""
    for opening in INTERJECTIONS:
        if text.startswith(opening + " "):
            rest = text[len(opening) + 1:]
            return rest[:1].upper() + rest[1:]
    return text


def far_text_perplexity(model: SpeechModel, tokenizer, path: Path = FAR_TEXT, max_tokens: int = 2048,
                        window: int = 512) -> dict[str, float]:
    """Perplexity of the backbone (its token embeddings as the LM head, as the keep loss scores it) on
    ``max_tokens`` of ``path``, in windows of ``window``, adapted and as pretrained (``SpeechModel.pretrained``);
    ``model`` in full precision, not the int8 copy."""
    ids = tokenizer(path.read_text(), add_special_tokens=False)["input_ids"][:max_tokens]
    weight = model.token_embedding.weight
    chunks = [torch.tensor(ids[start:start + window + 1])[None] for start in range(0, len(ids) - 1, window)]

    def summed(decoder: torch.nn.Module) -> list[tuple[float, int]]:  # (summed loss, tokens) a window
        sums = []
        for chunk in chunks:
            hidden = decoder(input_ids=chunk[:, :-1]).last_hidden_state
            loss = F.cross_entropy((hidden @ weight.T)[0], chunk[0, 1:], reduction="sum")
            sums.append((float(loss), chunk.shape[1] - 1))
        return sums

    with torch.inference_mode():
        losses = {"adapted": summed(model.decoder)}
        with model.pretrained() as decoder:
            losses["pretrained"] = summed(decoder)
    perplexity = {name: math.exp(sum(l for l, _ in v) / sum(n for _, n in v)) for name, v in losses.items()}
    return {**perplexity, "ratio": perplexity["adapted"] / perplexity["pretrained"], "tokens": len(ids)}


def read_dialogue(engine: DuplexEngine, record: dict) -> dict:
    """One streamed dialogue's events: per user turn, what the model said after it, how soon, and how it
    took being interrupted or backchannelled."""
    model, log = engine.model, engine.log
    pad, end = model.pad_id, model.end_id
    words = [r.model_token not in (pad, end) for r in log]
    user_turns = [t for t in record["turns"] if t["channel"] == "user"]
    vocoder_lag = engine.vocoder.cfg.lookahead_samples / model.cfg.audio.sample_rate
    voiced = engine.voicer is not None  # the acoustic voice logs when it sounds; the speech model's head does not
    lead = 0 if voiced else model.cfg.text_lead_frames  # a word's first token to its first audio frame
    events = []
    for i, turn in enumerate(user_turns):
        start, stop = (int(turn[k] / FRAME_SECONDS) for k in ("start", "end"))
        following = int(user_turns[i + 1]["start"] / FRAME_SECONDS) if i + 1 < len(user_turns) else len(log)
        talking = any(words[max(0, start - STILL_TALKING_FRAMES):start])
        event = {"kind": turn["kind"], "text": turn["text"], "talking_at_start": talking}
        if turn["kind"] == "backchannel":
            event["stopped"] = talking and any(r.model_token == end for r in log[start:stop + 2])
        else:
            first_word = next((f for f in range(stop, following) if words[f]), None)
            if first_word is not None and voiced:  # the voice may run up to MAX_LAG_FRAMES and a word behind
                first_word = next((f for f in range(first_word, min(len(log), following + MAX_LAG_FRAMES))
                                   if log[f].sounding), None)
            sounds = None if first_word is None else first_word + lead  # the frame its first audio is in
            event["gap_seconds"] = None if sounds is None else (sounds + 1) * FRAME_SECONDS + vocoder_lag - turn["end"]
            event["answer"] = engine.said("model", stop, following)
            if sounds is not None:  # where it sounds in ``converse``'s model channel
                last = following + lead
                while voiced and last < len(log) and log[last].sounding:  # a voice behind its text says the rest
                    last += 1
                event["answer_seconds"] = [sounds * FRAME_SECONDS, last * FRAME_SECONDS]
            line = KEYED.get(asked(turn["text"]))
            if turn["kind"] == "question" and line is not None and line.key:
                event["key"] = list(line.key)
                event["correct"] = mentions(event["answer"], line.key)
            if turn["interjected"] and talking:
                ended = next((f for f in range(start, len(log)) if log[f].model_token == end), None)
                event["stop_frames"] = None if ended is None else ended - start
        events.append(event)
    return {"id": record["id"], "events": events, "model_said": engine.said("model"), "user_heard": engine.said("user")}


def judge_answers(dialogues: list[dict], model_audio: list[np.ndarray], sample_rate: int) -> dict:
    """Whisper on each answer's audio against the model's text stream, and its DNSMOS; fills the events in.

    ``model_audio`` is each dialogue's model channel (``converse``), at ``sample_rate``.
    """
    from speechmos import dnsmos

    from .backbone import load_whisper
    from .data.alignment import transcribe, word_error_rate

    judge, said, heard, quality = load_whisper(), [], [], []
    for dialogue, wave in zip(dialogues, model_audio):
        for event in dialogue["events"]:
            if "answer_seconds" not in event or not normalize_text(event["answer"]):
                continue
            first, last = (round(t * sample_rate) for t in event["answer_seconds"])
            clip = wave[first:last]
            if len(clip) < sample_rate // 2:  # DNSMOS and Whisper need some audio: the dialogue ended first
                continue
            event["answer_heard"] = transcribe(clip, sample_rate, judge)
            clip16 = prepare_waveform(clip, sample_rate, 16_000) if sample_rate != 16_000 else clip
            event["answer_dnsmos"] = {k: float(v) for k, v in dnsmos.run(clip16, sr=16_000).items()
                                      if k.endswith("_mos")}  # numpy scalars, which JSON does not take
            said.append(event["answer"])
            heard.append(event["answer_heard"])
            quality.append(event["answer_dnsmos"])
    if not said:
        return {"answers_judged": 0, "judge_wer": None, **{f"dnsmos_{k}": None for k in ("ovrl", "sig", "bak")}}
    return {"answers_judged": len(said), "judge_wer": word_error_rate(said, heard),
            **{f"dnsmos_{k}": float(np.mean([q[f"{k}_mos"] for q in quality])) for k in ("ovrl", "sig", "bak")}}


def text_answers_correct(records: list[dict]) -> list[bool]:
    """SmolLM2-135M-Instruct given each keyed question as text, with its dialogue's rag prefix: right or not."""
    from .data.dialogues import SYSTEM_PROMPT, LlmAnswers

    llm, right = LlmAnswers(), []
    for record in records:
        system = SYSTEM_PROMPT + (f" Facts you know: {record['rag']}" if record["rag"] else "")
        for turn in record["turns"]:
            line = KEYED.get(asked(turn["text"]))
            if turn["channel"] == "user" and turn["kind"] == "question" and line is not None and line.key:
                reply = llm.generate([{"role": "system", "content": system}, {"role": "user", "content": line.text}])
                right.append(mentions(reply, line.key))
    return right


def repeats_a_run(text: str, n: int = 3) -> bool:
    """Whether ``text`` says some run of ``n`` words twice (case and punctuation aside)."""
    words = normalize_text(text).split()
    runs = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return len(set(runs)) < len(runs)


def summarize(dialogues: list[dict], text_right: list[bool] | None) -> dict:
    events = [e for d in dialogues for e in d["events"]]
    answers = [e["answer"] for e in events if normalize_text(e.get("answer") or "")]
    gaps = [e["gap_seconds"] for e in events if "gap_seconds" in e]
    answered = [g for g in gaps if g is not None]
    keyed = [e["correct"] for e in events if "correct" in e]
    stops = [e["stop_frames"] for e in events if "stop_frames" in e]
    backchannels = [e["stopped"] for e in events if e["kind"] == "backchannel" and e["talking_at_start"]]

    def share(flags: list[bool]) -> float | None:
        return float(np.mean(flags)) if flags else None

    return {
        "spoken_qa_accuracy": share(keyed), "spoken_qa_questions": len(keyed),
        "text_qa_accuracy": None if text_right is None else share(text_right),
        "response_gap_seconds_median": float(np.median(answered)) if answered else None,
        "response_gap_seconds_p95": float(np.percentile(answered, 95)) if answered else None,
        "turns": len(gaps), "turns_unanswered": sum(g is None for g in gaps),
        "interruptions": len(stops), "interruption_stop_frames_median":
            float(np.median([s for s in stops if s is not None])) if any(s is not None for s in stops) else None,
        "interruptions_never_stopped": sum(s is None for s in stops),
        "backchannels_while_talking": len(backchannels), "backchannel_stop_rate": share(backchannels),
        "answers_repeating_a_run": share([repeats_a_run(a) for a in answers]),
    }


def evaluate_joint(engine: DuplexEngine, data_dir: str | os.PathLike, split: str = "test",
                   max_dialogues: int | None = None, full_model: SpeechModel | None = None,
                   text_baseline: bool = True, tail_seconds: float = 3.0, judge: bool = True) -> dict:
    """Stream ``split``'s dialogues through ``engine`` and measure them (see the module docstring).

    ``full_model`` is the engine's speech model in full precision (the
    engine's may be an int8 copy), for the far-text perplexity (None: not
    measured); ``judge`` hears the answers
    (``judge_answers``).
    """
    records = load_dialogues(data_dir, split)[:max_dialogues]
    if not records:
        raise ValueError(f"{data_dir}: no {split} dialogues")
    rate = engine.listener.cfg.audio.sample_rate
    dialogues, model_audio = [], []
    for record in tqdm(records, desc=f"eval joint, {split}", unit="dialogue"):
        stereo, file_rate = sf.read(Path(data_dir) / record["path"], dtype="float32", always_2d=True)
        user = stereo[:, 0]
        if file_rate != rate:
            user = prepare_waveform(user, file_rate, rate)
        both, _ = converse(engine, user, tail_seconds, prefix=record.get("rag") or None)
        dialogues.append(read_dialogue(engine, record))
        model_audio.append(both[1])
    report = {"split": split, "dialogues": len(dialogues),
              **summarize(dialogues, text_answers_correct(records) if text_baseline else None)}
    if judge:
        report.update(judge_answers(dialogues, model_audio, engine.model.cfg.audio.sample_rate))
    if full_model is not None:
        report["far_text_perplexity"] = far_text_perplexity(full_model, engine.tokenizer)
    report["per_dialogue"] = dialogues
    return report
