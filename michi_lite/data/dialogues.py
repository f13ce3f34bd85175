"""Build spoken two-party conversations: a user and an assistant, each on its own channel.

A full-duplex model listens and speaks at once, so it must learn from
conversations where timing is part of the data: when to start answering,
when to go on through a user's "mm-hm", and when to stop because the user
has started talking. Each dialogue here is one stereo file (channel 0 the
user, channel 1 the assistant) and one ``manifest.jsonl`` line saying who
said what, and when, to the word.

* **The user** asks questions (about a small made-up town, ``FACT_BASE``, or
  general ones), makes requests, makes small talk, and tells the assistant
  something to remember ("My sister's name is Ada.") that a later turn asks
  back ("What's my sister's name?"). One user voice speaks a whole dialogue;
  the voices come from every engine, an equal share of dialogues each.
* **The assistant** answers in one fixed voice, ``DialogueConfig.assistant_voice``:
  flite's ``awb`` by default. It is among the clearest of the engine voices
  (when it was chosen, Whisper tiny.en misheard 7.8% of the words of 16 plain
  sentences in it; slt 8.8%, rms 7.4%, festival's HTS slt 8.3%, kal16 13.7%),
  flite's library times every word it says (piper times none without the
  ``onnx`` package, hibari none at all), it speaks in milliseconds
  in-process, and it is the voice ``michi-lite say`` speaks in by default, so
  the joint model's speaking path starts from a voice the reference acoustic
  model and vocoder already speak. Its speaker is never a user.
* **Answers** come from SmolLM2-135M-Instruct (``answers="llm"``: its chat
  template, greedy, cut to two sentences and checked speakable) or from the
  fact base's own answers (``"templates"``: instant and the same everywhere;
  the ``tiny`` preset's). An LLM answer that is not speakable, or that misses
  the one fact a question asks for (the 135M model often does), is replaced
  by the template answer, and the turn's ``answer_source`` says so. The
  facts a dialogue's questions ask about, with one unrelated fact beside them,
  are its ``rag`` text prefix: what the assistant is given before the talk.

Timing, drawn per dialogue from the seed (rates are per answer):

* gaps between turns: mostly 0.15-0.8 s, ``LONG_PAUSE_RATE`` of them 1.2-3 s
  of silence, and ``OVERLAP_RATE`` negative (the next speaker starts 80-320 ms
  before the last one ends, nobody stops);
* ``INTERRUPTION_RATE`` of the answers followed by another user turn are
  interrupted: that turn starts 30-70% into the answer, and the assistant stops
  ``REACTION_FRAMES`` frames (80 ms each) later, fading out over
  ``FADE_SECONDS``. Its turn then ends at the stop, its ``words`` are the
  ones heard (begun before the fade; cut ones end at the stop) and
  ``heard_text`` says them; ``text`` is still the whole answer it meant;
* ``BACKCHANNEL_RATE`` of the answers hear a user backchannel ("Mm-hm.")
  just after a word ends (``BACKCHANNEL_DELAY`` later), the word ending
  nearest a point 30-70% in where it fits; it overlaps the assistant, who
  goes on.

An answer too short to hold its event (an interruption that would cut less
than ``MIN_CUT_SECONDS`` of it, or none of its words; no room for the
backchannel) goes without. Turns of one channel never overlap.

Each manifest line (``load_dialogues`` checks them all)::

    {"id", "path", "split", "voice_split", "user_voice", "user_speaker", "user_engine",
     "assistant_voice", "sample_rate", "duration", "answers", "rag",
     "turns": [{"channel", "kind", "text", "start", "end", "words", "alignment", "interrupted",
                ["interjected"], ["heard_text"], ["answer_source"]}, ...]}

Turns come in time order. ``kind`` is "question", "recall", "request",
"small_talk", "fact" or "backchannel" for the user and "answer" for the
assistant; ``words`` are ``{"word", "start", "end"}`` in seconds of the clip,
as the corpus writes them, timed by the engine ("engine"), by Whisper where
the engine gives no timings ("whisper"), or, for a one-word turn, by its
sound ("audio"). Every user turn says whether it is ``interjected``: its
text opens with "Sorry,", "Wait,"... because it was planned to cut the
answer before it off. The plan decides that, so the opening stays when the
answer turned out too short to cut (that answer is not ``interrupted``).
Every answer says its ``answer_source``, "llm" or "templates"; only an
interrupted answer has a ``heard_text``.

Dialogues are held out like the corpus's sentences: each belongs to one of
train, val and test, and a few user voices (``voice_split`` "unseen") speak
only in test dialogues, every other test dialogue. A quarter (rounded up)
of the town questions and a quarter of the general ones (``is_held_out``)
are asked only in val and test dialogues, so a model is tested on answers
it never learnt. The plan is the same for the same preset and seed, and a
re-run skips every dialogue already written; it refuses a directory built
with another plan (another seed, preset or config).
(espeak-ng's audio and word times jitter by milliseconds from call to call,
so a dialogue rebuilt after a kill says the same but may be timed a few
milliseconds apart from the one that was lost.)
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import re
import subprocess
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

from ..audio import prepare_waveform, save_audio
from ..config import ANSWER_SOURCES, FRAME_SECONDS, Config
from .corpus import (FIELD_CHECKS, PEAK_LEVEL, are_timed_words, choose_voices, is_number, numbered_records,
                     read_records, split_sequence, turns)
from .dialogue_lines import (BACKCHANNELS, FACT_BASE, GENERAL_QUESTIONS, GREETINGS, INTERJECTIONS, REQUESTS,
                             SMALL_TALK, USER_KINDS, UserLine, memory_lines)
from .engines import Voice, available_engines, get_engine
from .text import is_speakable
from .words import Word, normalize_text

if TYPE_CHECKING:  # importing transformers for real takes seconds: only the LLM answers need it
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

CHANNELS = ("user", "assistant")  # channel 0, channel 1
SPLITS = ("train", "val", "test")

# -- Timing (seconds unless named otherwise) ------------------------------------------------

INTERRUPTION_RATE = 0.15  # answers (with a user turn after them) that the next user turn starts over
BACKCHANNEL_RATE = 0.25  # answers during which the user says "mm-hm" and the assistant goes on
OVERLAP_RATE = 0.10  # turn changes where the next speaker starts a little before the last one ends
LONG_PAUSE_RATE = 0.10  # turn changes with a long silence between
GAP_SECONDS = (0.15, 0.8)  # an ordinary gap between turns
LONG_PAUSE_SECONDS = (1.2, 3.0)
OVERLAP_SECONDS = (0.08, 0.32)  # how early an overlapping turn starts
EDGE_SECONDS = (0.2, 1.0)  # silence before the first turn and after the last
EVENT_AT = (0.3, 0.7)  # where in an answer an interruption or backchannel comes, as a fraction of it
REACTION_FRAMES = (2, 4)  # an interrupted assistant stops this many 80 ms frames after the user starts
FADE_SECONDS = 0.03  # and fades out over the last of them, so the cut makes no click
MIN_CUT_SECONDS = 0.2  # an interruption must cut at least this much of the answer, or it is none
BACKCHANNEL_DELAY = 0.05  # a backchannel starts this long after the word it follows
BACKCHANNEL_CLEARANCE = 0.5  # and ends at least this long before the answer does
MIN_TURN_GAP = 0.1  # two turns of one channel are never closer than this
SPEECH_LEVEL = 0.02  # a 10 ms frame above this share of the loudest one's RMS is speech, not the engine's padding
TRIM_MARGIN = 0.02  # of padding kept around a turn's speech
TIME_SLACK = 1e-3  # what the reader forgives: times are rounded to 0.1 ms, the audio to a sample

# -- What is said -------------------------------------------------------------------------

MEMORY_RATE = 0.5  # dialogues where the user tells a fact and, at least one exchange later, asks it back
GREETING_RATE = 0.5  # dialogues that open with a greeting
KIND_WEIGHTS = {"town": 0.35, "question": 0.2, "request": 0.25, "small_talk": 0.2}  # every other exchange
RAG_DISTRACTORS = 1  # facts in the rag prefix that no question asks about
SYSTEM_PROMPT = "You are a friendly voice assistant. Answer in one or two short, plain sentences."
HELD_OUT_QUESTIONS = 4  # one in this many town, and general, questions is asked in val and test dialogues only
MAX_ANSWER_TOKENS = 60
MAX_ANSWER_SENTENCES = 2


# -- The plan -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedExchange:
    """One user turn and the assistant's answer to it, with how the two are timed."""

    line: UserLine
    text: str  # the line's text, after an interjection ("Sorry, ...") when the answer before is planned to be
    # interrupted: kept even if ``interrupt`` finds no room and that answer runs on (see ``interjected``)
    gap_before: float  # silence before the user starts: after the last answer (the first: after the clip starts)
    answer_gap: float  # from the user's end to the answer's start; negative: the assistant starts early
    event: str  # during the answer: "interrupted" (by the next user turn), "backchannel" or ""
    event_at: float  # where in the answer, as a fraction of its length
    reaction_frames: int  # an interrupted answer stops this many 80 ms frames after the user starts
    backchannel: str  # what the user says for a backchannel

    @property
    def interjected(self) -> bool:
        return self.text != self.line.text


@dataclass(frozen=True)
class PlannedDialogue:
    id: str
    split: str  # train | val | test
    voice_split: str  # seen | unseen, decided by the user voice
    user_voice: Voice
    exchanges: tuple[PlannedExchange, ...]
    rag: str | None  # the facts the assistant is given before the dialogue, one text
    closing: float  # silence after the last turn


def gap(rng: np.random.Generator) -> float:
    """A gap between two turns: mostly short, sometimes a long silence, sometimes an overlap (negative)."""
    kind = rng.random()
    if kind < OVERLAP_RATE:
        return -float(rng.uniform(*OVERLAP_SECONDS))
    if kind < OVERLAP_RATE + LONG_PAUSE_RATE:
        return float(rng.uniform(*LONG_PAUSE_SECONDS))
    return float(rng.uniform(*GAP_SECONDS))


def interjected(text: str, rng: np.random.Generator) -> str:
    """``text`` as a turn that cuts in: "Sorry, what's my sister's name?"."""
    first = text.split()[0]
    keep_case = first == "I" or first.startswith("I'")
    return f"{INTERJECTIONS[rng.integers(len(INTERJECTIONS))]} {text if keep_case else text[0].lower() + text[1:]}"


def dialogue_lines(rng: np.random.Generator, n: int, held_out: bool) -> list[UserLine]:
    """What the user says in an ``n``-exchange dialogue: maybe a greeting, maybe a fact told and asked back, the
    rest drawn by ``KIND_WEIGHTS``, no line twice. The questions with one right answer are those
    ``is_held_out`` keeps for val and test dialogues if ``held_out``, the others if not."""
    slots: list[UserLine | None] = [None] * n
    if rng.random() < GREETING_RATE:
        slots[0] = GREETINGS[rng.integers(len(GREETINGS))]
    free = [i for i, s in enumerate(slots) if s is None]
    if len(free) >= 3 and rng.random() < MEMORY_RATE:
        told = int(rng.choice(free[:-2]))
        asked = int(rng.choice([i for i in free if i >= told + 2]))
        slots[told], slots[asked] = memory_lines(rng)
    pools = {"town": [line for line in FACT_BASE if is_held_out(line) == held_out],
             "question": [line for line in GENERAL_QUESTIONS if is_held_out(line) == held_out],
             "request": REQUESTS, "small_talk": SMALL_TALK}
    queues = {kind: [pool[i] for i in rng.permutation(len(pool))] for kind, pool in pools.items()}
    for i in range(n):
        if slots[i] is None:
            kinds = [kind for kind in KIND_WEIGHTS if queues[kind]]  # a long dialogue may use a pool up
            weights = np.array([KIND_WEIGHTS[kind] for kind in kinds])
            slots[i] = queues[kinds[rng.choice(len(kinds), p=weights / weights.sum())]].pop()
    return slots


def held_out_questions() -> frozenset[str]:
    """The texts of the questions kept for val and test: in each pool (town, general), the lines ranked by the
    crc32 of their text, every ``HELD_OUT_QUESTIONS``-th of them from the first, so a quarter of each, rounded up."""
    held = []
    for pool in (FACT_BASE, GENERAL_QUESTIONS):
        ranked = sorted((line.text for line in pool), key=lambda text: zlib.crc32(text.encode()))
        held += ranked[::HELD_OUT_QUESTIONS]
    return frozenset(held)


HELD_OUT = held_out_questions()


def is_held_out(line: UserLine) -> bool:
    """Whether a question is asked only in val and test dialogues (``held_out_questions``). So the answers a model
    is tested on were never answered in its training dialogues (what the town's facts say still reaches it, in
    the rag prefix, as it does the pretrained backbone)."""
    return line.text in HELD_OUT


def plan_dialogue(dialogue_id: str, split: str, voice_split: str, voice: Voice, cfg: Config,
                  rng: np.random.Generator) -> PlannedDialogue:
    """One dialogue's words and timing, all drawn from ``rng``."""
    d = cfg.dialogues
    n = int(rng.integers(d.min_exchanges, d.max_exchanges + 1))
    lines = dialogue_lines(rng, n, held_out=split != "train")
    exchanges: list[PlannedExchange] = []
    for i, line in enumerate(lines):
        interrupting = bool(exchanges) and exchanges[-1].event == "interrupted"
        chance = rng.random()
        event = ("interrupted" if chance < INTERRUPTION_RATE and i + 1 < n
                 else "backchannel" if INTERRUPTION_RATE <= chance < INTERRUPTION_RATE + BACKCHANNEL_RATE else "")
        exchanges.append(PlannedExchange(
            line=line,
            text=interjected(line.text, rng) if interrupting else line.text,
            gap_before=float(rng.uniform(*EDGE_SECONDS)) if i == 0 else gap(rng),
            answer_gap=gap(rng),
            event=event,
            event_at=float(rng.uniform(*EVENT_AT)),
            reaction_frames=int(rng.integers(REACTION_FRAMES[0], REACTION_FRAMES[1] + 1)),
            backchannel=BACKCHANNELS[rng.integers(len(BACKCHANNELS))],
        ))
    asked = list(dict.fromkeys(line.fact for line in lines if line.fact))
    rag = None
    if asked:
        others = [f for f in dict.fromkeys(line.fact for line in FACT_BASE) if f not in asked]
        facts = asked + [others[i] for i in rng.choice(len(others), RAG_DISTRACTORS, replace=False)]
        rag = " ".join(facts[i] for i in rng.permutation(len(facts)))
    return PlannedDialogue(dialogue_id, split, voice_split, voice, tuple(exchanges), rag,
                           float(rng.uniform(*EDGE_SECONDS)))


def user_voices(cfg: Config, voices: list[Voice]) -> list[Voice]:
    """The voices that may play the user: of the configured engines, and never the assistant's speaker."""
    d = cfg.dialogues
    assistant = assistant_voice(cfg, voices)
    return [v for v in voices if (not d.user_engines or v.engine in d.user_engines) and v.speaker != assistant.speaker]


def assistant_voice(cfg: Config, voices: list[Voice]) -> Voice:
    found = [v for v in voices if v.name == cfg.dialogues.assistant_voice]
    if not found:
        raise RuntimeError(f"the assistant voice {cfg.dialogues.assistant_voice!r} is not installed "
                           "(apt install flite, or choose another DialogueConfig.assistant_voice)")
    return found[0]


def plan_dialogues(cfg: Config, voices: list[Voice]) -> Iterator[PlannedDialogue]:
    """The dialogues as a deterministic stream, ``max_dialogues`` long, from every installed voice ``voices``.

    Splits go by dialogue (``split_sequence``). Seen user voices take the
    dialogues round the engines first and round each engine's voices second,
    so piper's one speaker is heard as often as espeak-ng's dozens; val and
    test go round in turns of their own, so every split hears every engine.
    Every other test dialogue is spoken by an unseen voice, which is heard
    nowhere else. Each dialogue draws its words and timing from a generator
    of its own (seed, index), so one dialogue's plan never shifts another's.
    """
    d = cfg.dialogues
    candidates = user_voices(cfg, voices)
    seen, unseen = choose_voices(candidates, d.seen_user_voices, d.unseen_user_voices, d.seed)
    if not seen:
        raise RuntimeError("no voice is available to play the user (check DialogueConfig.user_engines)")
    voice_turns = {split: turns(seen, "engine") for split in SPLITS}
    unseen_turn = itertools.cycle(unseen)
    splits = split_sequence(d.val_fraction, d.test_fraction)
    tests = 0
    for index in range(d.max_dialogues):
        split = next(splits)
        if split == "test" and unseen and tests % 2 == 0:
            voice, voice_split = next(unseen_turn), "unseen"
        else:
            voice, voice_split = next(voice_turns[split]), "seen"
        tests += split == "test"
        rng = np.random.default_rng([d.seed, index])
        yield plan_dialogue(f"{index:06d}", split, voice_split, voice, cfg, rng)


# -- Answers --------------------------------------------------------------------------------


class AnswerSource(Protocol):
    def __call__(self, dialogue: PlannedDialogue, history: list[tuple[str, str]],
                 exchange: PlannedExchange) -> tuple[str, str]:
        """The assistant's answer to ``exchange`` after ``history`` (user text, assistant text as heard), and
        which source wrote it ("llm" or "templates")."""


def template_answer(dialogue: PlannedDialogue, history: list[tuple[str, str]],
                    exchange: PlannedExchange) -> tuple[str, str]:
    return exchange.line.answer, "templates"


_SENTENCE = re.compile(r"[^.!?]*[.!?]+[\"')]*(?=\s|$)")
_TYPOGRAPHY = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u2013": ", ",
                             "\u2014": ", ", "\u2026": "."})


def speakable_answer(text: str) -> str | None:
    """An LLM's answer made ready for the engines, or None if it cannot be.

    Its first paragraph, typographic marks made plain, markdown and anything
    outside ASCII dropped, cut to its first ``MAX_ANSWER_SENTENCES`` whole
    sentences (an unfinished last one is dropped), and then the corpus's own
    speakability check (4 to 25 words of plain text).
    """
    first = text.strip().split("\n")[0].translate(_TYPOGRAPHY)
    plain = " ".join(re.sub(r"[*_#`~]", "", first.encode("ascii", "ignore").decode()).split())
    plain = re.sub(r" ([,.!?])", r"\1", plain)  # "day , enjoy" where a dash was
    sentences = [s.strip() for s in _SENTENCE.findall(plain)]
    for kept in (MAX_ANSWER_SENTENCES, 1):  # sentences too long together: the first alone
        answer = " ".join(sentences[:kept])
        if sentences and is_speakable(answer):
            return answer
    return None


def mentions(answer: str, key: tuple[str, ...]) -> bool:
    """Whether ``answer`` says one of ``key`` as whole words (any key if there is none)."""
    said = f" {normalize_text(answer)} "
    return not key or any(f" {normalize_text(k)} " in said for k in key)


class LlmAnswers:
    """Answers written by SmolLM2-135M-Instruct, greedy, through its chat template.

    The packaged weights (``source="packaged"``), not the hub's, so a build
    writes the same answers on every machine. The dialogue's rag prefix goes
    into the system message, the dialogue so far (the assistant's turns as
    they were heard) into the chat.
    """

    def __init__(self) -> None:
        self._model: PreTrainedModel | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self.fallbacks = 0  # answers the templates gave instead

    def _load(self) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        if self._model is None:
            from ..backbone import load_smollm

            self._model, self._tokenizer = load_smollm(source="packaged")
        return self._model, self._tokenizer

    def generate(self, messages: list[dict[str, str]]) -> str:
        """The model's greedy reply to ``messages``, stopped after ``MAX_ANSWER_SENTENCES`` sentences."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        model, tokenizer = self._load()
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)["input_ids"]  # (1, prompt tokens)
        start = prompt.shape[1]

        class EnoughSentences(StoppingCriteria):
            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
                # a sentence counts once the token after its stop has come (not "9." of "9.5")
                reply = tokenizer.decode(input_ids[0, start:], skip_special_tokens=True)
                done = len(re.findall(r"[.!?][\"')]*\s", reply)) >= MAX_ANSWER_SENTENCES
                return torch.full((input_ids.shape[0],), done, dtype=torch.bool)

        with torch.inference_mode():
            out = model.generate(prompt, max_new_tokens=MAX_ANSWER_TOKENS, do_sample=False,
                                 stopping_criteria=StoppingCriteriaList([EnoughSentences()]),
                                 pad_token_id=tokenizer.eos_token_id)
        return tokenizer.decode(out[0, start:], skip_special_tokens=True)

    def __call__(self, dialogue: PlannedDialogue, history: list[tuple[str, str]],
                 exchange: PlannedExchange) -> tuple[str, str]:
        system = SYSTEM_PROMPT + (f" Facts you know: {dialogue.rag}" if dialogue.rag else "")
        messages = [{"role": "system", "content": system}]
        for user, assistant in history:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        messages.append({"role": "user", "content": exchange.text})
        reply = self.generate(messages)
        answer = speakable_answer(reply)
        if answer is None or not mentions(answer, exchange.line.key):
            logger.debug("%s: LLM answer %r to %r replaced by the template's", dialogue.id, reply, exchange.text)
            self.fallbacks += 1
            return exchange.line.answer, "templates"
        return answer, "llm"


def answer_source(name: str) -> AnswerSource:
    """The source ``DialogueConfig.answers`` names (the config has checked the name)."""
    return LlmAnswers() if name == "llm" else template_answer


# -- Speaking and placing turns -------------------------------------------------------------


@dataclass
class SpokenTurn:
    """One turn's audio, trimmed to its speech, and its words in seconds from its first sample."""

    waveform: np.ndarray  # (samples,) at the dialogue's rate, peak-normalised
    words: list[Word]
    alignment: str  # engine | whisper | audio


def speech_span(waveform: np.ndarray, sample_rate: int) -> tuple[int, int]:
    """(first, one past the last) sample of the speech in ``waveform``, ``TRIM_MARGIN`` of padding kept.

    Engines pad their audio with silence (flite about 0.2 s before the first
    word); gaps between turns are meant between speech, not between padding.
    """
    hop = sample_rate // 100
    frames = waveform[: len(waveform) // hop * hop].reshape(-1, hop)  # (frames, 10 ms)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    loud = np.nonzero(rms > SPEECH_LEVEL * rms.max(initial=0.0))[0]
    if not len(loud):
        return 0, len(waveform)
    margin = round(TRIM_MARGIN * sample_rate)
    return max(0, loud[0] * hop - margin), min(len(waveform), (loud[-1] + 1) * hop + margin)


def speak(text: str, voice: Voice, sample_rate: int, source: str) -> SpokenTurn:
    """Synthesise one turn at ``sample_rate``: trimmed, peak-normalised, with word timings.

    Engines without word timings are timed by Whisper, or, for one word (a
    backchannel), by where the sound is. Raises ValueError (no words) or the
    engine's error.
    """
    synthesis = get_engine(voice.engine).synthesize(text, voice)
    waveform = prepare_waveform(synthesis.waveform, synthesis.sample_rate, sample_rate, source=source)
    first, last = speech_span(waveform, sample_rate)
    waveform = waveform[first:last]
    waveform = waveform * (PEAK_LEVEL / float(np.abs(waveform).max()))
    seconds, shift = len(waveform) / sample_rate, first / sample_rate
    if synthesis.words is not None:
        words, alignment = synthesis.words, "engine"
        words = [Word(w.word, max(0.0, w.start - shift), min(seconds, w.end - shift)) for w in words]
    elif len(text.split()) == 1:
        words, alignment = [Word(re.sub(r"[^\w'-]", "", text), 0.0, seconds)], "audio"
    else:
        from .alignment import whisper_words  # Whisper loads only once some turn needs it

        words, alignment = whisper_words(waveform, sample_rate), "whisper"
    words = [w for w in words if w.end > w.start]
    if not words:
        raise ValueError(f"{source}: no timed words for {text!r}")
    return SpokenTurn(waveform.astype(np.float32), words, alignment)


@dataclass
class PlacedTurn:
    """A turn at its place in the clip."""

    channel: str
    kind: str
    text: str
    offset: int  # its first sample in the clip
    spoken: SpokenTurn  # as it sounds in the clip: cut and faded if interrupted
    interrupted: bool = False
    interjected: bool = False  # a user turn that opens with a planned interjection
    answer_source: str | None = None
    heard_text: str | None = None

    @property
    def end(self) -> int:
        return self.offset + len(self.spoken.waveform)

    def record(self, sample_rate: int) -> dict:
        start = self.offset / sample_rate
        turn = {
            "channel": self.channel, "kind": self.kind, "text": self.text,
            "start": round(start, 4), "end": round(self.end / sample_rate, 4),
            "words": [{"word": w.word, "start": round(start + w.start, 4), "end": round(start + w.end, 4)}
                      for w in self.spoken.words],
            "alignment": self.spoken.alignment, "interrupted": self.interrupted,
        }
        if self.channel == "user":
            turn["interjected"] = self.interjected
        if self.interrupted:
            turn["heard_text"] = self.heard_text
        if self.answer_source is not None:
            turn["answer_source"] = self.answer_source
        return turn


def cut(spoken: SpokenTurn, end: int, sample_rate: int) -> SpokenTurn:
    """``spoken`` stopped at sample ``end``, fading out over ``FADE_SECONDS`` before it.

    The words heard are those begun before the fade; one still being said
    ends at the stop.
    """
    fade = round(FADE_SECONDS * sample_rate)
    waveform = spoken.waveform[:end].copy()
    waveform[end - fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    heard = [Word(w.word, w.start, min(w.end, end / sample_rate)) for w in spoken.words
             if w.start < (end - fade) / sample_rate]
    return SpokenTurn(waveform, heard, spoken.alignment)


@dataclass
class Timeline:
    """The turns placed so far and where each channel is free again."""

    sample_rate: int
    turns: list[PlacedTurn] = field(default_factory=list)

    def at(self, seconds: float) -> int:
        return round(seconds * self.sample_rate)

    def free(self, channel: str) -> int:
        """The first sample a new turn of ``channel`` may start on."""
        ends = [t.end for t in self.turns if t.channel == channel]
        return max(ends) + self.at(MIN_TURN_GAP) if ends else 0

    def place(self, turn: PlacedTurn) -> PlacedTurn:
        turn.offset = max(turn.offset, self.free(turn.channel))
        self.turns.append(turn)
        return turn


def interrupt(timeline: Timeline, answer: PlacedTurn, exchange: PlannedExchange) -> int | None:
    """Cut ``answer`` off for the next user turn; the sample that turn starts on, or None if the answer is too short.

    The user cuts in ``event_at`` into the answer, once at least its first
    word is out; the assistant stops ``reaction_frames`` frames later.
    """
    spoken, rate = answer.spoken, timeline.sample_rate
    cut_in = max(answer.offset + timeline.at(max(exchange.event_at * len(spoken.waveform) / rate,
                                                 spoken.words[0].end)),
                 timeline.free("user"))
    stop = cut_in - answer.offset + timeline.at(exchange.reaction_frames * FRAME_SECONDS)
    if (stop > len(spoken.waveform) - timeline.at(MIN_CUT_SECONDS)
            or stop - timeline.at(FADE_SECONDS) > timeline.at(spoken.words[-1].start)):
        return None  # too late to cut a word: the answer goes on, and the next turn comes after it ("Sorry," and all)
    answer.spoken = cut(spoken, stop, rate)
    answer.interrupted = True
    answer.heard_text = " ".join(w.word for w in answer.spoken.words)
    return cut_in


def add_backchannel(timeline: Timeline, answer: PlacedTurn, exchange: PlannedExchange, user: Voice,
                    where: str) -> None:
    """Place the user's backchannel in ``answer``: ``BACKCHANNEL_DELAY`` after the word ending nearest ``event_at``
    into it where the backchannel fits before ``BACKCHANNEL_CLEARANCE``, or nowhere (a short answer has no room).
    It overlaps the assistant's next words: the assistant goes on."""
    spoken, rate = answer.spoken, timeline.sample_rate
    if len(spoken.words) < 2:
        return
    nod = speak(exchange.backchannel, user, rate, f"{where} (backchannel)")
    at = exchange.event_at * len(spoken.waveform) / rate
    for word in sorted(spoken.words[:-1], key=lambda w: abs(w.end - at)):
        start = max(answer.offset + timeline.at(word.end + BACKCHANNEL_DELAY), timeline.free("user"))
        if start + len(nod.waveform) <= answer.end - timeline.at(BACKCHANNEL_CLEARANCE):
            timeline.place(PlacedTurn("user", "backchannel", exchange.backchannel, start, nod))
            return


def make_dialogue(dialogue: PlannedDialogue, answers: AnswerSource, assistant: Voice, cfg: Config) \
        -> tuple[np.ndarray, list[dict]]:
    """Speak and time one planned dialogue: its audio (2, samples) and its turns, in time order."""
    rate = cfg.audio.sample_rate
    timeline = Timeline(rate)
    exchanges, user = dialogue.exchanges, dialogue.user_voice
    history: list[tuple[str, str]] = []
    next_start = timeline.at(exchanges[0].gap_before)
    for i, exchange in enumerate(exchanges):
        where = f"{dialogue.id} exchange {i}"
        asked = timeline.place(PlacedTurn("user", exchange.line.kind, exchange.text, next_start,
                                          speak(exchange.text, user, rate, f"{where} (user)"),
                                          interjected=exchange.interjected))
        text, source = answers(dialogue, history, exchange)
        spoken = speak(text, assistant, rate, f"{where} (assistant)")
        # an early answer still starts after the user's first half: an answer needs something to answer
        start = max(asked.end + timeline.at(exchange.answer_gap), (asked.offset + asked.end) // 2)
        answer = timeline.place(PlacedTurn("assistant", "answer", text, start, spoken, answer_source=source))
        cut_in = None
        if exchange.event == "interrupted":
            cut_in = interrupt(timeline, answer, exchange)
        elif exchange.event == "backchannel":
            add_backchannel(timeline, answer, exchange, user, where)
        history.append((exchange.text, answer.heard_text or text))
        if i + 1 < len(exchanges):
            next_start = cut_in if cut_in is not None else answer.end + timeline.at(exchanges[i + 1].gap_before)
    samples = max(t.end for t in timeline.turns) + timeline.at(dialogue.closing)
    audio = np.zeros((len(CHANNELS), samples), dtype=np.float32)  # (channels, samples)
    for turn in timeline.turns:
        audio[CHANNELS.index(turn.channel), turn.offset:turn.end] += turn.spoken.waveform
    placed = sorted(timeline.turns, key=lambda t: (t.offset, CHANNELS.index(t.channel)))
    return audio, [t.record(rate) for t in placed]


def make_record(dialogue: PlannedDialogue, answers: AnswerSource, assistant: Voice, cfg: Config,
                out: Path) -> dict | None:
    """Speak, time and save one dialogue; its manifest record, or None if it must be skipped."""
    try:
        audio, turn_records = make_dialogue(dialogue, answers, assistant, cfg)
    except (ValueError, RuntimeError, subprocess.SubprocessError) as error:  # AudioError is a ValueError
        logger.warning("skipping dialogue %s: %s", dialogue.id, error)
        return None
    rate = cfg.audio.sample_rate
    record = {
        "id": dialogue.id,
        "path": str(Path("audio") / f"{dialogue.id}.flac"),
        "split": dialogue.split,
        "voice_split": dialogue.voice_split,
        "user_voice": dialogue.user_voice.name,
        "user_speaker": dialogue.user_voice.speaker,
        "user_engine": dialogue.user_voice.engine,
        "assistant_voice": assistant.name,
        "sample_rate": rate,
        "duration": round(audio.shape[1] / rate, 4),
        "answers": cfg.dialogues.answers,
        "rag": dialogue.rag,
        "turns": turn_records,
    }
    save_audio(out / record["path"], audio, rate)
    return record


def check_reused(record: dict, dialogue: PlannedDialogue, assistant: Voice, answers: str, out: Path) -> None:
    """Raise ValueError if the finished dialogue ``record`` in ``out`` is not the one planned under its id.

    Ids number the plan, whatever the seed, preset or config, so a directory
    built under another plan would otherwise mix its dialogues with this
    plan's, and its splits with this plan's held-out voices and questions.
    """
    planned = {"split": dialogue.split, "voice_split": dialogue.voice_split, "user_voice": dialogue.user_voice.name,
               "assistant_voice": assistant.name, "answers": answers}
    differ = [f"{name} {record.get(name)!r}, not {value!r}" for name, value in planned.items()
              if record.get(name) != value]
    if differ:
        raise ValueError(f"{out} was built with another plan or config: its dialogue {dialogue.id} has "
                         f"{'; '.join(differ)}: build into another directory (another --out)")


def build_dialogues(cfg: Config, out: str | os.PathLike) -> Path:
    """Build (or finish building) the dialogues of ``cfg`` in ``out``; returns the manifest path.

    Finished dialogues are appended to ``manifest.partial.jsonl`` one by one,
    after their audio, so a killed build loses at most the dialogue in
    flight; ``manifest.jsonl`` is written whole at the end. A finished
    dialogue that is not the one this plan has under its id (``check_reused``)
    stops the build with a ValueError.
    """
    out = Path(out)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    voices = [v for e in available_engines() for v in e.voices()]
    assistant = assistant_voice(cfg, voices)
    d = cfg.dialogues
    partial = out / "manifest.partial.jsonl"
    done = {r["id"]: r for r in read_records(partial) if (out / r["path"]).exists()}
    mixed = {r["answers"] for r in done.values()} - {d.answers}
    if mixed:
        raise ValueError(f"{out} holds dialogues answered by {', '.join(sorted(mixed))}, not {d.answers}: "
                         "finish it with the same --answers, or build into another directory")
    if partial.exists():  # drop what a killed run left half-written, so appending starts on a clean line
        partial.write_text("".join(json.dumps(r) + "\n" for r in done.values()))
    if done:
        logger.info("resuming: %d dialogues already built in %s", len(done), out)

    answers = answer_source(d.answers)
    target = d.hours * 3600
    bar = tqdm(total=target or d.max_dialogues, desc="dialogues", unit="s audio" if target else "dialogue",
               unit_scale=bool(target))
    records: list[dict] = []
    total = 0.0
    with partial.open("a") as log:
        for dialogue in plan_dialogues(cfg, voices):
            if target and total >= target:
                break
            record = done.get(dialogue.id)
            if record is not None:
                check_reused(record, dialogue, assistant, d.answers, out)
            else:
                record = make_record(dialogue, answers, assistant, cfg, out)
                if record is None:
                    continue
                log.write(json.dumps(record) + "\n")
                log.flush()  # a killed build loses at most the dialogue in flight
            records.append(record)
            total += record["duration"]
            bar.update(record["duration"] if target else 1)
    bar.close()
    if total < target:
        logger.warning("the plan ran out at %.2f h of the %.2f h asked for; raise max_dialogues",
                       total / 3600, d.hours)
    if isinstance(answers, LlmAnswers) and answers.fallbacks:
        logger.info("%d LLM answers were replaced by the templates' (unspeakable, or missing the fact asked for)",
                    answers.fallbacks)

    manifest = out / "manifest.jsonl"
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    tmp.replace(manifest)
    summary = summarize(records, cfg)
    (out / "dialogues.json").write_text(json.dumps(summary, indent=2) + "\n")
    logger.info("dialogues: %d, %.2f h, %d user voices in %s", summary["dialogues"], summary["hours"],
                len(summary["user_voices"]), out)
    return manifest


def summarize(records: list[dict], cfg: Config) -> dict:
    """What the dialogues hold: sizes, voices, and how often each timing event actually happened."""
    answers = [t for r in records for t in r["turns"] if t["channel"] == "assistant"]
    # turn changes, and those where the next speaker starts before the last one ended, without cutting it
    changes = overlaps = 0
    for r in records:
        speech = [t for t in r["turns"] if t["kind"] != "backchannel"]
        changes += len(speech) - 1
        overlaps += sum(b["start"] < a["end"] and not a["interrupted"] for a, b in zip(speech, speech[1:]))
    voices: dict[str, dict] = {}
    for r in records:
        v = voices.setdefault(r["user_voice"], {"engine": r["user_engine"], "voice_split": r["voice_split"],
                                                "dialogues": 0})
        v["dialogues"] += 1

    def share(n: int, of: int) -> float:
        return round(n / max(of, 1), 4)

    return {
        "preset": cfg.name,
        "seed": cfg.dialogues.seed,
        "answers": cfg.dialogues.answers,
        "assistant_voice": cfg.dialogues.assistant_voice,
        "sample_rate": cfg.audio.sample_rate,
        "dialogues": len(records),
        "hours": round(sum(r["duration"] for r in records) / 3600, 4),
        "splits": dict(Counter(r["split"] for r in records)),
        "user_engines": dict(Counter(r["user_engine"] for r in records)),
        "kinds": dict(Counter(t["kind"] for r in records for t in r["turns"])),
        "answers_interrupted": share(sum(t["interrupted"] for t in answers), len(answers)),
        "answers_with_backchannel": share(sum(t["kind"] == "backchannel" for r in records for t in r["turns"]),
                                          len(answers)),
        "answers_by_llm": share(sum(t.get("answer_source") == "llm" for t in answers), len(answers)),
        "overlapping_turn_changes": share(overlaps, changes),
        "with_rag": share(sum(r["rag"] is not None for r in records), len(records)),
        "user_voices": voices,
    }


# -- Reading ---------------------------------------------------------------------------------


# what each field must hold, checked as a manifest is read: (test, what it says when it fails)
DIALOGUE_FIELDS = {
    **{name: (lambda v: isinstance(v, str), "a string")
       for name in ("id", "path", "user_voice", "user_speaker", "user_engine", "assistant_voice")},
    "split": (lambda v: v in SPLITS, f"one of {', '.join(SPLITS)}"),
    "voice_split": (lambda v: v in ("seen", "unseen"), "seen or unseen"),
    "sample_rate": FIELD_CHECKS["sample_rate"],
    "duration": FIELD_CHECKS["duration"],
    "answers": (lambda v: v in ANSWER_SOURCES, f"one of {', '.join(ANSWER_SOURCES)}"),
    "rag": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "turns": (lambda v: isinstance(v, list) and all(isinstance(t, dict) for t in v), "a list of objects"),
}
TURN_FIELDS = {
    "channel": (lambda v: v in CHANNELS, f"one of {', '.join(CHANNELS)}"),
    "kind": (lambda v: v in USER_KINDS + ("answer",), f"one of {', '.join(USER_KINDS + ('answer',))}"),
    "text": (lambda v: isinstance(v, str) and bool(v.strip()), "a non-empty string"),
    "start": (lambda v: is_number(v) and v >= 0, "a number of seconds, 0 or more"),
    "end": (is_number, "a number of seconds"),
    "words": (lambda v: are_timed_words(v) and bool(v), 'a non-empty list of {"word", "start", "end"}'),
    "alignment": (lambda v: v in ("engine", "whisper", "audio"), "engine, whisper or audio"),
    "interrupted": (lambda v: isinstance(v, bool), "true or false"),
}


def _check_fields(record: dict, checks: dict, where: str) -> None:
    for name, (fits, kind) in checks.items():
        if name not in record:
            raise ValueError(f"{where}: no {name!r} field")
        if not fits(record[name]):
            raise ValueError(f"{where}: {name!r} should be {kind}, not {json.dumps(record[name])[:60]}")


def check_dialogue(record: dict, folder: Path, where: str) -> None:
    """Raise ValueError, naming ``where``, for a dialogue line that its audio or its own timing contradicts."""
    _check_fields(record, DIALOGUE_FIELDS, where)
    audio = folder / record["path"]
    if not audio.is_file():
        raise ValueError(f"{where}: its audio {record['path']} is missing")
    info = sf.info(str(audio))
    if info.channels != len(CHANNELS):
        raise ValueError(f"{where}: {record['path']} has {info.channels} channel(s), not 2 (user, assistant)")
    if info.samplerate != record["sample_rate"] or abs(info.frames / info.samplerate - record["duration"]) > TIME_SLACK:
        raise ValueError(f"{where}: {record['path']} is {info.frames / info.samplerate:.4f} s at {info.samplerate} Hz,"
                         f" not {record['duration']} s at {record['sample_rate']} Hz as the line says")
    last: dict[str, dict] = {}
    previous_start = 0.0
    for n, turn in enumerate(record["turns"]):
        at = f"{where}, turn {n}"
        _check_fields(turn, TURN_FIELDS, at)
        kinds = USER_KINDS if turn["channel"] == "user" else ("answer",)
        if turn["kind"] not in kinds:
            raise ValueError(f"{at}: kind {turn['kind']!r} does not fit the {turn['channel']} channel "
                             f"(only {', '.join(kinds)})")
        if turn["channel"] == "user" and not isinstance(turn.get("interjected"), bool):
            raise ValueError(f"{at}: a user turn must say whether it is 'interjected' (true or false)")
        if turn["channel"] == "assistant" and "answer_source" not in turn:
            raise ValueError(f"{at}: an answer must say its 'answer_source'")
        if "answer_source" in turn and turn["answer_source"] not in ANSWER_SOURCES:
            raise ValueError(f"{at}: 'answer_source' should be one of {', '.join(ANSWER_SOURCES)}, "
                             f"not {json.dumps(turn['answer_source'])[:60]}")
        if "heard_text" in turn and not turn["interrupted"]:
            raise ValueError(f"{at}: a turn that is not interrupted has no 'heard_text'")
        if not turn["start"] < turn["end"] <= record["duration"] + TIME_SLACK:
            raise ValueError(f"{at}: runs from {turn['start']} to {turn['end']} s, outside the clip's "
                             f"{record['duration']} s")
        if turn["start"] < previous_start:
            raise ValueError(f"{at}: starts at {turn['start']} s, before the turn listed above it")
        previous_start = turn["start"]
        before = last.get(turn["channel"])
        if before is not None and turn["start"] < before["end"]:
            raise ValueError(f"{at}: the {turn['channel']} starts at {turn['start']} s while still speaking the turn "
                             f"that ends at {before['end']} s")
        last[turn["channel"]] = turn
        outside = [w for w in turn["words"] if not turn["start"] - TIME_SLACK <= w["start"] < w["end"]
                   <= turn["end"] + TIME_SLACK]
        if outside:
            raise ValueError(f"{at}: words outside the turn's {turn['start']}-{turn['end']} s: {outside[:3]}")
        if turn["interrupted"] and not (turn["channel"] == "assistant" and isinstance(turn.get("heard_text"), str)):
            raise ValueError(f"{at}: an interrupted turn must be the assistant's and say its 'heard_text'")
    missing = [c for c in CHANNELS if c not in last]
    if missing:
        raise ValueError(f"{where}: no {' or '.join(missing)} turn: a dialogue needs both channels")


def load_dialogues(data_dir: str | os.PathLike, split: str | None = None) -> list[dict]:
    """The dialogues built in ``data_dir``, optionally one split of them, each line checked.

    Raises FileNotFoundError if there is no manifest, and ValueError naming the
    manifest, the line (and the turn) and the problem: a missing field or one
    of the wrong kind, audio that is missing, not 2 channels, or not as long as
    the line says, a turn whose kind does not fit its channel, a user turn
    without ``interjected``, an answer without its ``answer_source``, a
    ``heard_text`` on a turn not interrupted or none on one that is, a turn
    outside the clip or overlapping the last turn of its channel, words
    outside their turn, a dialogue without one of the channels.
    """
    folder = Path(data_dir)
    path = folder / "manifest.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: build the dialogues first with `michi-lite data dialogues`")
    chosen = []
    for number, record in numbered_records(path, log=False):
        check_dialogue(record, folder, f"{path} line {number}")
        if split is None or record["split"] == split:
            chosen.append(record)
    return chosen


def speaking_frames(dialogue: dict) -> np.ndarray:
    """Who speaks on each 80 ms frame of a dialogue: (2, frames) bool, row 0 the user, row 1 the assistant.

    A turn marks every frame it overlaps, so the first and last frames of a
    turn may hold only part of it: the frame clock the joint model runs on.
    """
    ms = round(FRAME_SECONDS * 1000)  # whole milliseconds: 2.32 / 0.08 is 28.999... in floating point
    frames = math.ceil(round(dialogue["duration"] * 1000) / ms)
    speaking = np.zeros((len(CHANNELS), frames), dtype=bool)
    for turn in dialogue["turns"]:
        first = round(turn["start"] * 1000) // ms
        last = math.ceil(round(turn["end"] * 1000) / ms)
        speaking[CHANNELS.index(turn["channel"]), first:last] = True
    return speaking
