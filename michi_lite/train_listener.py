"""The listener's training recipe (``michi-lite train listener``), on the shared loop of ``train.py``.

``ListenerUtterances`` gives each utterance as the listener hears it (by
chance changed: speed, loudness, a room, a telephone band, noise) and as the
teacher hears it, with its emission grid (``listen.emission_grid``);
``ListenerTrainer`` is one step: the frame-level cross-entropy against the
grid, plus the distance of the causal encoder's states from the offline
Whisper encoder's on the clean clip (``distillation_loss``);
``train_listener`` runs it with checkpoints, resuming and the log, and
exports the file ``load_listener`` reads.

A second stage gives that listener words from Whisper's own decoder
(``listen_text``): ``EncodedUtterances`` encodes the corpus once with the
frozen listener, ``ListenerTextTrainer`` teaches the decoder's adapters and
gate what to commit on which frame, ``train_listener_text`` runs it.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf
import soxr
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .audio import load_audio
from .config import AudioConfig
from .data.augment import Augmenter
from .data.corpus import load_manifest
from .data.frames import PAD_TOKEN, token_chunks
from .data.words import Word
from .listen import (
    CHECKPOINT_FORMAT,
    WHISPER_FLOOR,
    WHISPER_POSITIONS,
    Listener,
    ListenerConfig,
    StreamingWhisperEncoder,
    build_listener,
    clip_features,
    emission_grid,
    load_listener,
    save_listener,
    whisper_encoder_state,
)
from .listen_text import (TextDecoder, TextQueries, TextTargets, ends_a_sentence, text_queries, text_targets,
                          whisper_text_tokenizer)
from .train import ScheduledTrainer, ShuffledBatches, fit, loader_workers, started_config, training_device
from .weights import fitting_weights, read_weights

logger = logging.getLogger(__name__)


def timed_words(record: dict, speed: float = 1.0) -> list[Word]:
    """A manifest line's word timings, for its clip played ``speed`` times as fast."""
    return [Word(w["word"], w["start"] / speed, w["end"] / speed) for w in record["words"]]


def spoken_clips(data_dir: str | os.PathLike, split: str = "train") -> list[dict]:
    """A corpus's clips to hear, as manifest lines whose ``path`` includes the folder.

    A corpus built by ``michi-lite data build`` gives its utterances; a
    dialogue corpus (``michi-lite data dialogues``) its turns, each channel's
    cut out (``load_clip``): every turn that was not interrupted, with its
    words timed from the turn's start and the voice of its channel.
    """
    folder = Path(data_dir)
    if not (folder / "dialogues.json").is_file():
        return [{**r, "path": str(folder / r["path"])} for r in load_manifest(folder, split)]
    from .data.dialogues import load_dialogues

    clips = []
    for dialogue in load_dialogues(folder, split):
        for number, turn in enumerate(dialogue["turns"]):
            if turn["interrupted"]:  # its text was not all said
                continue
            start = turn["start"]
            clips.append({
                "id": f"{dialogue['id']}_{number:02d}", "path": str(folder / dialogue["path"]),
                "channel": ("user", "assistant").index(turn["channel"]), "start": start,
                "duration": turn["end"] - start, "text": turn["text"], "voice": dialogue[f"{turn['channel']}_voice"],
                "words": [{**w, "start": w["start"] - start, "end": w["end"] - start} for w in turn["words"]],
            })
    return clips


def load_clip(record: dict, sample_rate: int) -> np.ndarray:
    """A ``spoken_clips`` line's audio, mono at ``sample_rate``: a dialogue turn is its channel's stretch."""
    if "channel" not in record:
        return load_audio(record["path"], sample_rate)
    info = sf.info(record["path"])
    start = round(record["start"] * info.samplerate)
    wave, _ = sf.read(record["path"], start=start, stop=start + round(record["duration"] * info.samplerate),
                      dtype="float32", always_2d=True)
    wave = wave[:, record["channel"]]
    return wave if info.samplerate == sample_rate else soxr.resample(wave, info.samplerate, sample_rate)


class ListenerUtterances(torch.utils.data.Dataset):
    """A corpus split's utterances up to ``max_seconds``, as (heard features, clean features, targets).

    The heard features are what the listener learns from; the clean ones are
    what the teacher hears (``ListenerTrainer``), both Whisper-scale. With an
    ``augment``, an item is an ``(index, batch number)`` pair (from
    ``EpochBatches.with_numbers``) that seeds the clip's random changes, so a
    resumed run hears the clips an uninterrupted one would; the clean clip
    keeps its speed change, the heard one has the room and the noise too.
    Without, both are the clip as it is.
    """

    def __init__(self, data_dir: str | os.PathLike, cfg: ListenerConfig, tokenizer, split: str = "train",
                 max_seconds: float = 12.0, augment: Augmenter | None = None, seed: int = 0) -> None:
        self.data_dir, self.cfg, self.tokenizer = Path(data_dir), cfg, tokenizer
        self.augment, self.seed = augment, seed
        self.records = [r for r in load_manifest(data_dir, split) if r["duration"] <= max_seconds]
        if not self.records:
            raise ValueError(f"{data_dir}: no {split} utterances of at most {max_seconds} s")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index, draw = item if isinstance(item, tuple) else (item, 0)
        record = self.records[index]
        clean = load_audio(self.data_dir / record["path"], self.cfg.audio.sample_rate)
        heard, speed = clean, 1.0
        if self.augment is not None:
            clean, heard, speed = self.augment(clean, np.random.default_rng([self.seed, draw, index]))
        frame = self.cfg.audio.samples_per_frame
        words = timed_words(record, speed)
        grid = emission_grid(record["text"], words, self.tokenizer, math.ceil(len(clean) / frame),
                             self.cfg.delay_frames)

        def features(wave: np.ndarray) -> torch.Tensor:  # whole frames, and silence for spilled tokens
            wave = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
            return clip_features(F.pad(wave, (0, len(grid) * frame - len(wave))), self.cfg.audio)

        heard_features = features(heard)
        clean_features = heard_features if heard is clean else features(clean)
        return heard_features, clean_features, torch.tensor(grid.tokens)

    @staticmethod
    def collate(items: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pad to the longest: features with the floor value (silence), targets with -100 (no loss)."""
        frames = max(len(item[-1]) for item in items)
        mels_per_frame = items[0][0].shape[-1] // len(items[0][-1])
        silence = (WHISPER_FLOOR + 4) / 4

        def padded(f: torch.Tensor) -> torch.Tensor:
            return F.pad(f, (0, frames * mels_per_frame - f.shape[-1]), value=silence)

        heard = torch.stack([padded(item[0]) for item in items])
        clean = torch.stack([padded(item[1]) for item in items])
        targets = torch.stack([F.pad(item[-1], (0, frames - len(item[-1])), value=-100) for item in items])
        return heard, clean, targets  # (batch, n_mels, frames * mels_per_frame) twice, (batch, frames)


LOSSES = ["loss", "token_loss", "distill_loss", "frame_accuracy", "token_accuracy"]


def teacher_encoder(cfg: ListenerConfig) -> StreamingWhisperEncoder:
    """The frozen encoder the listener learns to sound like: Whisper's pretrained one (a random one for ``tiny``).

    It runs offline, as Whisper does (``forward(whisper=True)``: the whole
    clip in view), on the clean clip.
    """
    teacher = StreamingWhisperEncoder(cfg)
    if cfg.whisper is not None:
        teacher.load_state_dict(whisper_encoder_state(cfg.whisper))
    return teacher.requires_grad_(False).eval()


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, valid_frames: torch.Tensor,
                      per_frame: int, delay_frames: int) -> torch.Tensor:
    """Mean squared distance between the causal encoder's states and the offline teacher's, ``delay_frames`` back.

    ``student``, ``teacher``: (batch, positions, width); ``valid_frames``
    (batch, frames) marks the frames that are not batch padding. The student
    at frame t has heard up to the end of frame t and is compared with the
    teacher's frame t - delay_frames, which is what it will emit words from.
    """
    shift = per_frame * delay_frames
    valid = valid_frames.repeat_interleave(per_frame, dim=1)[:, shift:]  # (batch, positions - shift)
    error = (student[:, shift:] - teacher[:, :teacher.shape[1] - shift]).pow(2).mean(-1)
    return (error * valid).sum() / valid.sum().clamp(min=1)


class ListenerRun:
    """What both listener stages write: the listener's config with the recipe, its shape, its file."""

    listener: Listener
    preset: str
    recipe: dict

    def config(self) -> dict:
        return {**self.listener.cfg.to_dict(), "recipe": self.recipe}

    def shape(self) -> dict:
        return self.listener.cfg.to_dict()

    def export(self, out_dir: Path) -> None:
        save_listener(out_dir / "listener.safetensors", self.listener, self.preset)


class ListenerTrainer(ListenerRun, ScheduledTrainer):
    """The listener and its optimizer: cross-entropy against the emission grid, plus distillation.

    The token loss is the frame-level cross-entropy on the heard clip, whose
    encoder positions start at a random point of ``WHISPER_POSITIONS`` (drawn
    from torch's generator, which a checkpoint keeps). With
    ``distill`` > 0 the encoder's states are also pulled towards the offline
    ``teacher_encoder``'s on the clean clip (``distillation_loss``, weighted
    by ``distill``): what Whisper knows of voices the corpus never had is
    kept rather than traded for the corpus's own. The pretrained encoder
    learns at a tenth of the new head's rate, after a linear warm-up, so the
    first steps of a random head do not wreck it.
    """

    def __init__(self, listener: Listener, preset: str, device: torch.device, pad_id: int,
                 learning_rate: float = 3e-4, warmup_steps: int = 50, distill: float = 0.0,
                 recipe: dict | None = None) -> None:
        self.listener, self.preset, self.device, self.pad_id = listener.to(device), preset, device, pad_id
        self.distill, self.recipe = distill, {"distill": distill, **(recipe or {})}
        self.teacher = teacher_encoder(listener.cfg).to(device) if distill > 0 else None
        head = [*listener.project.parameters(), listener.token_bias]
        self.optimizer = torch.optim.AdamW([
            {"params": listener.encoder.parameters(), "lr": learning_rate / 10},
            {"params": head, "lr": learning_rate},
        ], weight_decay=0.01)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: min(1.0, (s + 1) / warmup_steps))

    def step(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> dict[str, float]:
        heard, clean, targets = (t.to(self.device) for t in batch)
        self.listener.train()
        hidden = self.listener.encoder(heard, start=int(torch.randint(WHISPER_POSITIONS, ())))
        _, logits = self.listener.head(hidden)  # (batch, frames, vocab)
        token_loss = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100)
        loss, result = token_loss, {"token_loss": token_loss.item()}
        if self.teacher is not None:
            with torch.no_grad():
                taught = self.teacher(clean, whisper=True)
            cfg = self.listener.cfg
            distill = distillation_loss(hidden, taught, targets != -100, cfg.positions_per_frame, cfg.delay_frames)
            loss = loss + self.distill * distill
            result["distill_loss"] = distill.item()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.listener.parameters(), 1.0)
        self.optimizer.step()
        self.schedule.step()
        with torch.no_grad():
            predicted, counted = logits.argmax(-1), targets != -100
            tokens = counted & (targets != self.pad_id)
            right = (predicted == targets) & counted
        return {"loss": loss.item(), **result, "frame_accuracy": (right.sum() / counted.sum()).item(),
                "token_accuracy": ((right & tokens).sum() / tokens.sum().clamp(min=1)).item()}

    def modules(self) -> dict[str, nn.Module]:
        return {"listener": self.listener}


def train_listener(
    preset: str,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    steps: int,
    resume: bool = False,
    batch_size: int = 8,
    checkpoint_every: int = 200,
    log_every: int = 10,
    max_minutes: float | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    augment: bool | None = None,
    distill: float | None = None,
    init: str | os.PathLike | None = None,
) -> Path:
    """Fine-tune the listener on the corpus's train split (see ``fit`` for checkpoints and resuming).

    ``augment`` (default on): each clip with a random speed, loudness, room,
    band limit and noise (``Augmenter``); ``distill`` (default 1): the
    weight of the teacher's loss (0: none); ``init``: start from a listener
    file's weights instead of Whisper's (its emission delay may differ: the
    head learns the new one). A resumed run keeps the recipe it started
    with, batch size and seed included.
    """
    from .backbone import load_tokenizer

    started = started_config(out_dir) if resume else None
    if started is not None and "recipe" in started:
        recipe = started["recipe"]
        augment, distill, batch_size, seed = recipe["augment"], recipe["distill"], recipe["batch_size"], recipe["seed"]
        init = None  # the checkpoint's weights are loaded over any start
    augment = True if augment is None else augment
    distill = 1.0 if distill is None else distill
    tokenizer = load_tokenizer()
    device = training_device(device)
    torch.manual_seed(seed)
    listener = build_listener(preset, len(tokenizer))
    if init is not None:
        path, _, tensors = read_weights(init, "listener", CHECKPOINT_FORMAT, preset)
        with fitting_weights(path, "listener"):
            listener.load_state_dict({k: v.float() for k, v in tensors.items()})
    recipe = {"augment": augment, "batch_size": batch_size, "seed": seed, "init": None if init is None else str(init)}
    trainer = ListenerTrainer(listener, preset, device, tokenizer.convert_tokens_to_ids(PAD_TOKEN), distill=distill,
                              recipe=recipe)
    logger.info("listener %s: %.2fM trained parameters, %d steps of %d utterances on %s", preset,
                sum(p.numel() for p in listener.parameters()) / 1e6, steps, batch_size, device)
    augmenter = Augmenter(listener.cfg.audio.sample_rate) if augment else None
    dataset = ListenerUtterances(data_dir, listener.cfg, tokenizer, augment=augmenter, seed=seed)
    workers = loader_workers(device)
    order = ShuffledBatches(len(dataset), batch_size, seed, drop_last=len(dataset) > batch_size).with_numbers()
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=order, num_workers=workers,
                                         collate_fn=ListenerUtterances.collate)
    return fit(trainer, loader, out_dir, steps, LOSSES, resume=resume, checkpoint_every=checkpoint_every,
               log_every=log_every, max_minutes=max_minutes, desc="listener")


# --- the text decoder: Whisper's decoder, adapted on a frozen listener's states ----------------


QUIET_SECONDS = (1.0, 3.0)  # the most silence before and after a clip the text decoder learns from
TEACHER_TOP = 16  # the word teacher's likeliest next tokens kept for each target token


def framed_features(wave: np.ndarray, n_frames: int, audio: AudioConfig) -> torch.Tensor:
    """``clip_features`` of ``wave`` padded with silence to ``n_frames`` whole frames, as a batch of one."""
    return clip_features(torch.from_numpy(np.pad(wave, (0, n_frames * audio.samples_per_frame - len(wave)))),
                         audio)[None]


class EncodedClip(NamedTuple):
    """One draw of a clip as ``EncodedUtterances`` keeps it (fp16 states)."""

    states: torch.Tensor  # (positions, width): the encoder's output from the decoder's first frame on, or, when
    # its last layers train, their input from ``context`` positions earlier (what they attend to before it)
    targets: TextTargets
    frames: int  # the frames the decoder runs on
    context: int = 0
    teacher: torch.Tensor | None = None  # offline Whisper's states on the clean audio, the output's positions
    words: NextTokens | None = None  # Whisper's own decoder's expectations for the targets' tokens


class NextTokens(NamedTuple):
    """For each of a clip's target tokens, the likeliest next tokens of Whisper's own decoder and their shares."""

    ids: torch.Tensor  # (tokens, top)
    probs: torch.Tensor  # (tokens, top), each row summing to 1

    def after(self, k: int) -> NextTokens:
        return NextTokens(self.ids[k:], self.probs[k:])


class EncodedUtterances(torch.utils.data.Dataset):
    """A split's utterances as a frozen listener's encoder hears them, encoded once, with their text targets.

    ``data_dir`` is a corpus or a list of them, each built or of dialogues
    (``spoken_clips``: a dialogue corpus gives its turns). Each clip is
    heard ``draws`` times: as it is, then changed by chance (``Augmenter``),
    each time with up to ``quiet_seconds[0]`` of silence before it and up
    to ``quiet_seconds[1]`` after (at least a frame past the frame its last
    token commits on, so that commit is heard), and from
    a random position of the encoder's 30 s round, as a stream hears a
    sentence at any point of a conversation.

    A share ``follows`` of the draws hears the clip after another sentence of
    the same voice and ``gap_seconds`` of silence, as a text stream that
    starts over after each sentence (``TextStream``, ``ListenerConfig.
    text_sentences``) meets it: the encoder hears both sentences, the
    decoder starts on the frame after its restart would keep (the previous
    sentence's last commit, up to two frames late, keeping
    ``cfg.delay_frames`` frames) and only this clip's words are its targets.
    The silence after a sentence, with the end of the last one in view, is
    where a restarted stream must wait. A share ``joins`` starts the decoder
    the same way after a word inside the clip, as a stream that took a word
    for a sentence's end ("Dr", "November.") meets the rest of it; its
    targets are the words after. Taught only to start at a sentence, a
    restarted decoder writes loops ("in a in a in a") mid-sentence.

    With ``encoder_layers`` > 0 those last layers of the encoder learn with
    the decoder: the clip keeps the input of the first of them instead of
    the output, from as far back as they attend to (``EncodedClip.context``),
    and the offline ``teacher_encoder``'s states on the clean audio, which
    ``ListenerTextTrainer`` pulls the output towards.

    With a ``word_teacher`` (Whisper's decoder without adapters,
    ``TextDecoder.without_adapters``) each clip also keeps what that decoder
    expects every target token to be (``NextTokens``: its ``TEACHER_TOP``
    likeliest), hearing the clip alone, clean and whole through offline
    Whisper's encoder; once a clip, whatever its draws.

    All of it is drawn from the seed, the draw and the clip, so a resumed
    run encodes the same. The states are kept in fp16 (a 3-hour corpus,
    twice: about 1.3 GB; with ``encoder_layers``, about twice that). An item
    is an ``(index, batch number)`` pair (``EpochBatches.with_numbers``),
    the number seeding the probes ``text_queries`` draws.
    """

    def __init__(self, data_dir: str | os.PathLike | list, listener: Listener, split: str = "train", draws: int = 2,
                 max_seconds: float = 12.0, seed: int = 0, probes: int = 48,
                 quiet_seconds: tuple[float, float] = QUIET_SECONDS, follows: float = 0.0, joins: float = 0.0,
                 gap_seconds: tuple[float, float] = (0.3, 2.0), encoder_layers: int = 0,
                 word_teacher: TextDecoder | None = None) -> None:
        self.cfg, self.per_frame, self.probes, self.seed = listener.cfg, listener.cfg.positions_per_frame, probes, seed
        self.listener = listener
        if not (0 <= follows and 0 <= joins and follows + joins <= 1):
            raise ValueError(f"follows ({follows}) and joins ({joins}) are shares of the draws: each 0 or more, "
                             "together at most 1")
        if not 0 <= encoder_layers <= self.cfg.layers:
            raise ValueError(f"encoder_layers ({encoder_layers}): the encoder has {self.cfg.layers} layers")
        self.encoder_layers = encoder_layers
        self.teacher = teacher_encoder(self.cfg) if encoder_layers else None
        self.word_teacher = word_teacher
        offline = (self.teacher or teacher_encoder(self.cfg)) if word_teacher is not None else None
        folders = data_dir if isinstance(data_dir, (list, tuple)) else [data_dir]
        records = [r for folder in folders for r in spoken_clips(folder, split) if r["duration"] <= max_seconds]
        if not records:
            raise ValueError(f"{', '.join(map(str, folders))}: no {split} utterances of at most {max_seconds} s")
        self.tokenizer, self.augment = whisper_text_tokenizer(), Augmenter(self.cfg.audio.sample_rate)
        sentences: dict[str, list[int]] = {}  # voice -> the clips that end a sentence, to be heard before another
        for index, record in enumerate(records):
            tokens = self.tokenizer.encode(" " + record["text"].strip(), add_special_tokens=False)
            if ends_a_sentence(tokens):
                sentences.setdefault(record["voice"], []).append(index)
        rate = self.cfg.audio.sample_rate
        self.items = []
        for index, record in enumerate(tqdm(records, desc="encoding the corpus", unit="clip")):
            clip = load_clip(record, rate)
            earlier = [i for i in sentences.get(record["voice"], []) if i != index]
            expected = None if offline is None else self._next_tokens(offline, record, clip)
            for draw in range(draws):
                chance = np.random.default_rng([seed, draw, index, 1])
                before, after = (round(chance.uniform(0, most) * rate) for most in quiet_seconds)
                kind, previous = chance.random(), None
                if earlier and kind < follows:
                    previous = records[earlier[chance.integers(len(earlier))]]
                    before = round(chance.uniform(*gap_seconds) * rate)
                join = follows <= kind < follows + joins
                self.items.append(self._encode(record, clip, previous, join, before, after, draw, index, chance,
                                               expected))

    def _next_tokens(self, offline: StreamingWhisperEncoder, record: dict, clip: np.ndarray) -> NextTokens:
        """What the word teacher expects each of the clip's tokens to be, hearing the clip clean and whole."""
        tokens, _ = token_chunks(" " + record["text"].strip(), self.tokenizer)
        frames = math.ceil(len(clip) / self.cfg.audio.samples_per_frame)
        with torch.inference_mode():
            encoded = offline(framed_features(clip, frames, self.cfg.audio), whisper=True)
        return NextTokens(*self.word_teacher.next_tokens(encoded, tokens, TEACHER_TOP))

    def _encode(self, record: dict, clip: np.ndarray, previous: dict | None, join: bool, before: int, after: int,
                draw: int, index: int, chance: np.random.Generator, expected: NextTokens | None) -> EncodedClip:
        """One draw of a clip: its states from the decoder's first frame on, its targets, its frames."""
        cfg, rate, frame = self.cfg, self.cfg.audio.sample_rate, self.cfg.audio.samples_per_frame
        wave = np.pad(clip, (before, after))
        if previous is not None:
            wave = np.concatenate([load_clip(previous, rate), wave])
        lead = len(wave) - len(clip) - after  # samples before the clip
        speed, clean = 1.0, wave
        if draw:  # the augmenter returns new arrays: ``clip`` stays as it is for the next draw
            clean, wave, speed = self.augment(wave, np.random.default_rng([self.seed, draw, index]))
        words = [Word(w.word, w.start + lead / rate / speed, w.end + lead / rate / speed)
                 for w in timed_words(record, speed)]
        targets = text_targets(record["text"], words, self.tokenizer, cfg.delay_frames)
        if expected is not None and len(expected.ids) != len(targets.tokens):
            raise RuntimeError(f"{record['id']}: the word teacher has {len(expected.ids)} tokens, the targets "
                               f"{len(targets.tokens)}")
        n_frames = max(math.ceil(len(wave) / frame), targets.frames[-1] + 1) + 1
        with torch.inference_mode():
            start = int(chance.integers(WHISPER_POSITIONS))
            frozen = self.cfg.layers - self.encoder_layers if self.encoder_layers else None  # None: all, and the norm
            states = self.listener.encoder(framed_features(wave, n_frames, cfg.audio), start=start, layers=frozen)[0]
            teacher = (None if self.teacher is None
                       else self.teacher(framed_features(clean, n_frames, cfg.audio), whisper=True)[0])
        # the stream starts over when the last token it says (the previous sentence's, or a word's of this clip)
        # commits, on frame ``said``, or a frame or two late; it keeps that frame and the ones before it and runs
        # its decoder from the next frame on
        tokens, frames = targets.tokens, targets.frames
        word_starts = [k for k in range(1, len(tokens))
                       if frames[k] > frames[k - 1] and self.tokenizer.decode(tokens[k]).startswith(" ")]
        if join and word_starts:
            k = word_starts[chance.integers(len(word_starts))]
            said, late = frames[k - 1], min(3, frames[k] - frames[k - 1])
            tokens, frames = tokens[k:], frames[k:]
            expected = None if expected is None else expected.after(k)
        elif previous is not None:
            said, late = text_targets(previous["text"], timed_words(previous, speed), self.tokenizer,
                                      cfg.delay_frames).frames[-1], 3
        else:
            said = None
        kept_from = 0 if said is None else max(said + int(chance.integers(late)) - cfg.delay_frames + 1, 0)
        if said is not None:
            first = cfg.delay_frames
            targets = TextTargets(tokens, [max(f - kept_from, first) for f in frames], start=first)
        if self.teacher is None:
            return EncodedClip(states[kept_from * self.per_frame:].half(), targets, n_frames - kept_from,
                               words=expected)
        # the layers that train see the window before the kept frames, and so on back, layer by layer
        context = min(kept_from, self.encoder_layers * (cfg.window_frames - 1)) * self.per_frame
        kept = kept_from * self.per_frame
        return EncodedClip(states[kept - context:].half(), targets, n_frames - kept_from, context,
                           teacher[kept:].half(), expected)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, item: tuple[int, int]) -> tuple:
        index, number = item
        return (*self.items[index], number)

    def collate(self, items: list[tuple]) -> EncodedBatch:
        """States padded to the longest (batch, positions, width) and the batch's ``TextQueries``."""
        clips: list[EncodedClip] = [EncodedClip(*item[:-1]) for item in items]

        def padded(tensors: list[torch.Tensor]) -> torch.Tensor:
            n = max(t.shape[0] for t in tensors)
            return torch.stack([F.pad(t.float(), (0, 0, 0, n - t.shape[0])) for t in tensors])

        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + items[0][-1])
        queries = text_queries([(clip.targets, clip.frames) for clip in clips], self.per_frame, self.probes, generator)
        batch = EncodedBatch(padded([clip.states for clip in clips]), queries)
        if self.teacher is not None:
            batch = batch._replace(context=torch.tensor([clip.context for clip in clips]),
                                   frames=torch.tensor([clip.frames for clip in clips]),
                                   teacher=padded([clip.teacher for clip in clips]))
        if self.word_teacher is not None:
            batch = batch._replace(words=queried_next_tokens(queries, [clip.words for clip in clips]))
        return batch


def queried_next_tokens(queries: TextQueries, clips: list[NextTokens]) -> NextTokens:
    """The word teacher's next tokens for every query that is taught a token: (batch, queries, top), zero elsewhere.

    A query at text position p is taught the clip's p-th token (``text_queries``), row p - 1.
    """
    top = clips[0].ids.shape[1]
    ids = torch.zeros(*queries.targets.shape, top, dtype=torch.long)
    probs = torch.zeros(*queries.targets.shape, top)
    for b, clip in enumerate(clips):
        taught = queries.targets[b] >= 0
        rows = queries.positions[b, taught] - 1
        ids[b, taught], probs[b, taught] = clip.ids[rows], clip.probs[rows]
    return NextTokens(ids, probs)


class EncodedBatch(NamedTuple):
    """``EncodedUtterances.collate``'s batch: the states, the queries, and what the encoder's last layers need."""

    states: torch.Tensor  # (batch, positions, width)
    queries: TextQueries
    context: torch.Tensor | None = None  # (batch,) positions before each clip's first kept frame
    frames: torch.Tensor | None = None  # (batch,) each clip's frames
    teacher: torch.Tensor | None = None  # (batch, frames * per_frame, width)
    words: NextTokens | None = None  # (batch, queries, top): Whisper's own decoder's next tokens for taught queries


TEXT_LOSSES = ["loss", "token_loss", "gate_loss", "token_accuracy", "gate_accuracy"]


class ListenerTextTrainer(ListenerRun, ScheduledTrainer):
    """The text decoder's adapters and gate: cross-entropy on the tokens to commit, and the gate's decisions.

    Everything else (the encoder, the frame head, Whisper's weights) stays
    as it is, unless ``encoder_layers`` > 0: then the encoder's last that
    many layers and its final norm learn too, at a tenth of the rate, from
    the decoder's losses and, weighted by ``distill``, the pull towards
    offline Whisper's states (``distillation_loss``) that keeps what it
    knows of voices the corpus never had. With ``word_teacher`` > 0 the
    decoder's next-token distribution on every taught query is also pulled,
    at that weight, towards Whisper's own decoder's on the clean clip heard
    whole (``EncodedBatch.words``; the cross-entropy against its shares),
    so that what the adapters learn of the corpus's sentences does not
    replace what Whisper knows of English. The learning rate warms up, then
    falls linearly to a twentieth at step ``decay_steps`` (a recipe setting,
    not the run's end, so a run stopped early and resumed learns as an
    uninterrupted one).
    """

    def __init__(self, listener: Listener, preset: str, device: torch.device, decay_steps: int,
                 learning_rate: float = 1e-3, warmup_steps: int = 50, encoder_layers: int = 0, distill: float = 1.0,
                 word_teacher: float = 0.0, recipe: dict | None = None) -> None:
        self.listener, self.preset, self.device, self.recipe = listener.to(device), preset, device, recipe or {}
        self.encoder_layers, self.distill, self.word_teacher = encoder_layers, distill, word_teacher
        for frozen in (listener.encoder, listener.project):
            frozen.requires_grad_(False)
        listener.token_bias.requires_grad_(False)
        groups = [{"params": [p for p in listener.text.parameters() if p.requires_grad], "lr": learning_rate}]
        if encoder_layers:
            trained = [*listener.encoder.layers[-encoder_layers:], listener.encoder.norm]
            groups.append({"params": [p for m in trained for p in m.parameters()], "lr": learning_rate / 10})
            for p in groups[-1]["params"]:
                p.requires_grad_(True)
        self.optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup_steps) * max(0.05, 1 - s / decay_steps))

    def step(self, batch: EncodedBatch) -> dict[str, float]:
        q = TextQueries(**{k: v.to(self.device) for k, v in vars(batch.queries).items()})
        encoded, result = batch.states.to(self.device), {}
        if self.encoder_layers:
            encoded, distill = self.heard(batch, encoded)
            result["distill_loss"] = distill.item()
        text = self.listener.text.train()
        states = text(q.tokens, q.positions, q.self_mask, encoded, q.cross_mask)
        taught, gated = q.targets >= 0, q.commit >= 0
        logits = text.logits(states[taught])
        token_loss = F.cross_entropy(logits, q.targets[taught])
        gate = text.commit_logit(states[gated])
        gate_loss = F.binary_cross_entropy_with_logits(gate, q.commit[gated])
        loss = token_loss + gate_loss
        pulled = loss + self.distill * distill if self.encoder_layers else loss
        if self.word_teacher:
            expected = NextTokens(*(t.to(self.device)[taught] for t in batch.words))
            teacher_loss = -(expected.probs * logits.log_softmax(-1).gather(-1, expected.ids)).sum(-1).mean()
            result["teacher_loss"] = teacher_loss.item()
            pulled = pulled + self.word_teacher * teacher_loss
        self.update(pulled)
        with torch.no_grad():
            token_accuracy = (logits.argmax(-1) == q.targets[taught]).float().mean().item()
            gate_accuracy = ((gate > 0).float() == q.commit[gated]).float().mean().item()
        return {"loss": loss.item(), "token_loss": token_loss.item(), "gate_loss": gate_loss.item(),
                "token_accuracy": token_accuracy, "gate_accuracy": gate_accuracy, **result}

    def heard(self, batch: EncodedBatch, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's last layers on the batch's kept inputs -> (the decoder's states, the distillation loss)."""
        cfg = self.listener.cfg
        hidden = self.listener.encoder.finish(inputs, cfg.layers - self.encoder_layers)
        teacher = batch.teacher.to(self.device)
        per_frame, n = cfg.positions_per_frame, teacher.shape[1]
        states = torch.stack([F.pad(hidden[i, context:context + frames * per_frame],
                                    (0, 0, 0, n - frames * per_frame))
                              for i, (context, frames) in enumerate(zip(batch.context.tolist(),
                                                                        batch.frames.tolist()))])
        valid = torch.arange(n // per_frame, device=self.device)[None] < batch.frames.to(self.device)[:, None]
        return states, distillation_loss(states, teacher, valid, per_frame, cfg.delay_frames)

    def modules(self) -> dict[str, nn.Module]:
        if self.encoder_layers:
            return {"text": self.listener.text, "encoder": self.listener.encoder}
        return {"text": self.listener.text}


def train_listener_text(
    preset: str,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    listener_path: str | os.PathLike,
    steps: int,
    resume: bool = False,
    rank: int = 16,
    batch_size: int = 16,
    draws: int = 2,
    decay_steps: int = 1000,
    follows: float = 0.4,
    joins: float = 0.2,
    encoder_layers: int = 0,
    distill: float = 1.0,
    word_teacher: float = 0.0,
    extra_data: tuple = (),
    checkpoint_every: int = 100,
    log_every: int = 10,
    max_minutes: float | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> Path:
    """Teach a listener file's encoder states to Whisper's decoder (adapters of ``rank``); export the listener.

    The listener of ``listener_path`` is frozen: its encoder hears the
    corpus once (``EncodedUtterances``, ``draws`` times each clip, a share
    ``follows`` of them after another sentence, ``joins`` from a word inside
    the clip) and only the text decoder's adapters and gate learn, with the
    encoder's last ``encoder_layers`` layers if that is more than 0 (pulled
    towards offline Whisper by ``distill``), and its words towards Whisper's
    own decoder's by ``word_teacher``, the learning rate falling until
    ``decay_steps``. ``extra_data`` are more corpora to hear (``spoken_clips``:
    a dialogue corpus gives its turns). The exported file is that
    listener with the text decoder added. A listener that has one already
    goes on from its adapters (``rank`` is then its own). A resumed run
    keeps the recipe it started with.
    """
    from .backbone import load_tokenizer

    started = started_config(out_dir) if resume else None
    quiet_seconds = QUIET_SECONDS
    if started is not None and "recipe" in started:
        recipe = started["recipe"]
        rank, batch_size, draws, seed = recipe["rank"], recipe["batch_size"], recipe["draws"], recipe["seed"]
        decay_steps, listener_path = recipe["decay_steps"], recipe["listener"]
        follows, joins = recipe.get("follows", 0.0), recipe.get("joins", 0.0)  # runs from before either
        encoder_layers, distill = recipe.get("encoder_layers", 0), recipe.get("distill", 1.0)
        word_teacher = recipe.get("word_teacher", 0.0)
        extra_data = tuple(recipe.get("extra_data", ()))
        quiet_seconds = tuple(recipe.get("quiet_seconds", QUIET_SECONDS))
    device = training_device(device)
    torch.manual_seed(seed)
    frozen = load_listener(listener_path, preset, len(load_tokenizer()))
    if frozen.text is not None:  # its adapters and gate are where this run starts
        if rank != frozen.cfg.text_rank:
            logger.info("%s has a text decoder of rank %d: going on from it at that rank", listener_path,
                        frozen.cfg.text_rank)
        listener, rank = frozen, frozen.cfg.text_rank
        listener.cfg = replace(listener.cfg, text_sentences=True)
    else:
        # taught with silence around its clips (``EncodedUtterances``): its stream may start over after a sentence
        listener = Listener(replace(frozen.cfg, text_rank=rank, text_sentences=True), frozen.token_table)
        listener.load_state_dict(frozen.state_dict(), strict=False)  # all but the new text decoder
    recipe = {"rank": rank, "batch_size": batch_size, "draws": draws, "seed": seed, "decay_steps": decay_steps,
              "listener": str(listener_path), "follows": follows, "joins": joins,
              "quiet_seconds": list(quiet_seconds), "encoder_layers": encoder_layers, "distill": distill,
              "word_teacher": word_teacher,
              "extra_data": [str(d) for d in extra_data]}
    trainer = ListenerTextTrainer(listener, preset, device, decay_steps, encoder_layers=encoder_layers,
                                  distill=distill, word_teacher=word_teacher, recipe=recipe)
    logger.info("listener text decoder %s: %.2fM trained parameters, %d steps of %d utterances on %s", preset,
                sum(p.numel() for p in listener.parameters() if p.requires_grad) / 1e6, steps, batch_size, device)
    dataset = EncodedUtterances([data_dir, *extra_data], frozen, draws=draws, seed=seed, quiet_seconds=quiet_seconds,
                                follows=follows, joins=joins, encoder_layers=encoder_layers,
                                word_teacher=listener.text.without_adapters() if word_teacher else None)
    order = ShuffledBatches(len(dataset), batch_size, seed, drop_last=len(dataset) > batch_size).with_numbers()
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=order, collate_fn=dataset.collate)
    losses = TEXT_LOSSES + (["distill_loss"] if encoder_layers else []) + (["teacher_loss"] if word_teacher else [])
    return fit(trainer, loader, out_dir, steps, losses, resume=resume, checkpoint_every=checkpoint_every,
               log_every=log_every, max_minutes=max_minutes, desc="listener text")
