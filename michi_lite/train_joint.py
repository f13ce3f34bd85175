"""The joint stage: a spoken dialogue as the speech model's streams, the user's among them, and the training.

A dialogue of ``michi-lite data dialogues`` holds the user on channel 0 and
the assistant on channel 1. The speech model plays the assistant, so its own
streams are channel 1's (the text it says, each token on its word's start
frame, ``<|im_end|>`` where each answer stops, interrupted or not, and its
mel patches ``text_lead_frames`` behind), and what it hears of the user is
what the listening head makes of channel 0, frame by frame: its embedding
and the token it emits (``UserStreams``). The listener is frozen and runs
once per dialogue, offline, which gives what its stream would
(``listen.clip_frames``): the model learns from the hearing it will have,
mistakes included, not from the user's true text.

``JointDialogues`` serves a split as ``(SpeakerStreams, voice prompt)``
pairs, the voice prompt an answer from another dialogue (the assistant has
one voice), and ``collate`` batches them as ``train_speaker`` does, with the
user's streams beside. ``train_joint`` (``michi-lite train joint``) trains
the speech model on them with the speaker stage's losses, the user's
projection learning too; ``bench_joint`` (``michi-lite bench joint``)
measures what a step costs, beside ``memory.py``'s model of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from tqdm.auto import tqdm

from . import parallel
from .audio import SILENCE_MEL, audio_patches, prepare_waveform, speech_patches
from .bench import resident_gb, timed
from .config import FRAME_SECONDS, get_config
from .data.dialogues import load_dialogues
from .data.frames import PAD_TOKEN, frame_tokens
from .data.text import sentences
from .data.words import Word
from .listen import Listener, build_listener, clip_frames, load_listener
from .memory import StepShape, estimate
from .model import (END_TOKEN, SpeakerBatch, SpeakerStreams, SpeechModel, SpeechModelConfig, UserStreams, VoicedChunks,
                    random_llama, speech_model_config, tokens_and_chunks)
from .provenance import run_info
from .train import LengthBuckets, fit, loader_workers, training_device
from .train_speaker import (FLOW_LOSS_WEIGHT, KEEP_LOSS_WEIGHT, LOSSES, SpeakerTrainer, SpeakerUtterances,
                            speech_model_from)
from .weights import write_weights


def frame_of(seconds: float) -> int:
    """The 80 ms frame a time falls in (whole milliseconds first, as ``frame_tokens`` counts)."""
    return round(seconds * 1000) // round(FRAME_SECONDS * 1000)


def assistant_text_stream(turns: list[dict], n_frames: int, tokenizer) -> tuple[list[int], list[tuple[int, str]]]:
    """The assistant's text stream (n_frames token ids) and, per answer, the frame its first token is on and the
    text it says.

    Each answer's tokens sit on their words' start frames (``frame_tokens``);
    ``<|im_end|>`` on the frame where it stops (an interrupted one where it
    was cut: only the words heard are said), PAD elsewhere. A token that
    finds its frame taken moves to the next free one.
    """
    pad, end = tokenizer.convert_tokens_to_ids(PAD_TOKEN), tokenizer.convert_tokens_to_ids(END_TOKEN)
    stream = [pad] * n_frames
    said: list[tuple[int, str]] = []
    next_free = 0
    for turn in turns:
        if turn["channel"] != "assistant" or not turn["words"]:
            continue
        text = turn["heard_text"] if turn["interrupted"] else turn["text"]
        grid = frame_tokens(text, [Word.from_dict(w) for w in turn["words"]], tokenizer).tokens
        first = None
        for frame, token in enumerate(grid):
            if token == pad:
                continue
            frame = max(frame, next_free)
            if frame >= n_frames:
                raise ValueError(f"an answer's tokens run past the dialogue's {n_frames} frames: {text!r}")
            stream[frame], next_free = token, frame + 1
            first = frame if first is None else first
        stop = max(frame_of(turn["end"]), next_free)
        if stop < n_frames:
            stream[stop], next_free = end, stop + 1
        said.append((first, text))
    return stream, said


def heard_user(listener: Listener, wave: np.ndarray, n_frames: int, tokenizer=None) -> UserStreams:
    """What the listener makes of the user's channel (at the listener's rate), silence after its end: per
    frame its embedding and the token it emits, (n_frames, hidden) and (n_frames,)."""
    return UserStreams(*clip_frames(listener, wave, n_frames, tokenizer))


def dialogue_channel(path: str | os.PathLike, channel: int, rate: int) -> np.ndarray:
    """One channel of a dialogue's audio file (0 the user, 1 the assistant), at ``rate``."""
    stereo, file_rate = sf.read(path, dtype="float32", always_2d=True)  # (samples, 2)
    return prepare_waveform(stereo[:, channel], file_rate, rate)


DIALOGUES_PER_WORKER = 8


def hear_dialogues(listener: Listener, paths: list[Path], n_frames: list[int], tokenizer,
                   workers: int = 1, desc: str = "hearing") -> list[UserStreams]:
    """What the listener makes of each dialogue's user channel (``heard_user``), in up to ``workers`` processes of
    one thread each: a stream's small steps keep one core busy, not two. A process (torch and the listener loaded
    anew) pays for itself over ``DIALOGUES_PER_WORKER`` dialogues or more; fewer are heard here."""
    rate = listener.cfg.audio.sample_rate
    workers = min(workers, len(paths) // DIALOGUES_PER_WORKER)
    if workers <= 1:
        return [heard_user(listener, dialogue_channel(path, 0, rate), n, tokenizer)
                for path, n in tqdm(list(zip(paths, n_frames)), desc=desc, unit="dialogue")]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, multiprocessing.get_context("spawn"), initializer=_start_hearing,
                             initargs=(listener, tokenizer)) as pool:
        heard = list(tqdm(pool.map(_hear, paths, n_frames), total=len(paths), desc=desc, unit="dialogue"))
    return [UserStreams(torch.from_numpy(embeddings), torch.from_numpy(tokens)) for embeddings, tokens in heard]


_HEARING: tuple[Listener, object] | None = None  # a hearing worker's listener and tokenizer


def _start_hearing(listener: Listener, tokenizer) -> None:
    global _HEARING
    torch.set_num_threads(1)
    _HEARING = listener.eval(), tokenizer


def _hear(path: Path, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    listener, tokenizer = _HEARING
    user = heard_user(listener, dialogue_channel(path, 0, listener.cfg.audio.sample_rate), n_frames, tokenizer)
    return user.embeddings.numpy(), user.tokens.numpy()


HEARING_FORMAT = 1  # bump it when what a hearing file holds, or what `clip_frames` hears, changes: old files go stale


def listener_key(listener: Listener) -> str:
    """A short digest of a listener's shape and weights (what its file keeps): the name of what it heard."""
    digest = hashlib.sha256(json.dumps({"format": HEARING_FORMAT, **listener.cfg.to_dict()}, sort_keys=True).encode())
    for name, tensor in sorted(listener.saved_state().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().float().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def records_key(records: list[dict], n_frames: list[int]) -> str:
    """A digest of a split's dialogues (ids, files, lengths, turns) and how many frames each is heard for."""
    listed = [(r["id"], r["path"], r["duration"], r["turns"], n) for r, n in zip(records, n_frames)]
    return hashlib.sha256(json.dumps(listed, sort_keys=True).encode()).hexdigest()[:16]


def read_hearing(path: Path, records_digest: str, n_records: int) -> list[UserStreams] | None:
    """A split's hearing as ``write_hearing`` kept it, or None where there is none for these dialogues (missing,
    truncated, foreign, or of other dialogues)."""
    try:
        with safe_open(path, "pt") as kept:
            if (kept.metadata() or {}).get("dialogues") != records_digest:
                return None
            return [UserStreams(kept.get_tensor(f"{i}.embeddings"), kept.get_tensor(f"{i}.tokens"))
                    for i in range(n_records)]
    except (OSError, KeyError, SafetensorError):
        return None


def write_hearing(path: Path, heard: list[UserStreams], records_digest: str) -> None:
    """Keep a split's hearing (fp32, as heard) for the next run; written whole or not at all. A corpus folder that
    cannot be written to only costs the next run the hearing again."""
    tensors = {}
    for i, user in enumerate(heard):
        tensors[f"{i}.embeddings"], tensors[f"{i}.tokens"] = user.embeddings, user.tokens
    try:  # several processes may write it (``accelerate launch``): each whole, the last one stays
        write_weights(path, tensors, {"dialogues": records_digest, "format": str(HEARING_FORMAT)})
    except OSError as err:
        warnings.warn(f"could not keep what the listener heard ({err}); the next run hears the dialogues again")


def dialogue_streams(record: dict, user: UserStreams, patches: torch.Tensor, tokenizer,
                     cfg: SpeechModelConfig) -> SpeakerStreams:
    """One dialogue's streams: the assistant's text, audio and phonemes being voiced, the user as heard, and
    the dialogue's rag prefix (the facts it may be asked about) as text to read before everything.

    ``patches`` (frames, patch_dim) are the assistant channel's. The audio
    stream runs ``text_lead_frames`` behind the text, so the streams are
    that much longer than the dialogue, and ``user`` must cover them all
    (the listener hearing the silence after the end).
    """
    n_frames = len(patches)
    lead = cfg.text_lead_frames
    if len(user.tokens) != n_frames + lead:
        raise ValueError(f"dialogue {record['id']}: the user is heard on {len(user.tokens)} frames, "
                         f"the streams are {n_frames + lead} long")
    tokens, said = assistant_text_stream(record["turns"], n_frames + lead, tokenizer)
    silence = torch.full((lead, patches.shape[-1]), SILENCE_MEL)
    audio = torch.cat([silence, patches])  # (n_frames + lead, patch_dim)
    pad = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    starts: dict[int, list[int] | None] = {}  # frame -> the phonemes of the chunk whose first token is there
    for first, text in said:
        frame = first
        for _, chunk in tokens_and_chunks(text, tokenizer, cfg.max_phonemes):
            while tokens[frame] == pad:  # the answer's tokens in order, over the frames between its words
                frame += 1
            starts[frame] = chunk
            frame += 1
    voiced = VoicedChunks(cfg)
    phonemes, since = zip(*(voiced.push(starts.get(frame)) for frame in range(len(tokens))))
    plain = tokenizer(" ".join(text for _, text in said) or " ", add_special_tokens=False)["input_ids"]
    rag = tokenizer(record["rag"], add_special_tokens=False)["input_ids"] if record.get("rag") else []
    return SpeakerStreams(torch.tensor(tokens), audio, torch.tensor(phonemes), torch.tensor(since),
                          torch.tensor(plain), user,  # the answers as plain text: the keep loss's sample
                          torch.tensor(rag, dtype=torch.long))


def outside_passages(tokenizer, n: int, seed: int = 0, sentences_per_passage: int = 3) -> list[torch.Tensor]:
    """``n`` passages of plain text from outside the dialogues, token ids: a few of the corpus sentences each
    (Bible verses, fortunes, stress sentences; ``data.text.sentences``), never the GPL that evaluation reads."""
    pool = [sentence.text for sentence in sentences(n * sentences_per_passage, seed)]
    random.Random(seed).shuffle(pool)  # sentences() comes grouped by source
    k = sentences_per_passage
    return [torch.tensor(tokenizer(" ".join(pool[i:i + k]), add_special_tokens=False)["input_ids"])
            for i in range(0, len(pool) - k + 1, k)]


class JointDialogues(torch.utils.data.Dataset):
    """A dialogue split as ``(SpeakerStreams with the user heard, voice prompt, text passages)``.

    The listener (frozen) hears every user channel when the split is
    opened, once: what it heard is kept in the corpus folder, under
    ``heard/``, named by the split and the listener's weights
    (``listener_key``; ``cache=False``: hear again, keep nothing), and
    read back by the next run with the same listener and dialogues
    (``workers`` processes hear, ``hear_dialogues``). The
    voice prompt is the speech of another dialogue's assistant,
    a random stretch of ``prompt_seconds``. The passages are pure text from
    outside the dialogues for the keep loss, ``text_ratio`` of them per
    dialogue on average (``outside_passages``). Both are drawn from a
    generator seeded by the item's index and batch number (asked for as
    ``(index, number)``, ``EpochBatches.with_numbers``), so a resumed run,
    and a batch split among processes, draw what one uninterrupted process
    would.
    """

    def __init__(self, data_dir: str | os.PathLike, cfg: SpeechModelConfig, tokenizer, listener: Listener,
                 split: str = "train", prompt_seconds: tuple[float, float] = (2.0, 5.0), seed: int = 0,
                 text_ratio: float = 0.0, cache: bool = True, workers: int = 1) -> None:
        if text_ratio < 0:
            raise ValueError(f"text_ratio must be 0 or more, not {text_ratio}")
        self.data_dir, self.cfg, self.tokenizer, self.seed = Path(data_dir), cfg, tokenizer, seed
        self.text_ratio = text_ratio
        self.passages = outside_passages(tokenizer, 1000, seed) if text_ratio else []
        self.pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
        self.records = load_dialogues(data_dir, split)
        if not self.records:
            raise ValueError(f"{data_dir}: no {split} dialogues")
        listener = listener.eval()
        paths = [self.data_dir / record["path"] for record in self.records]
        patches = [audio_patches(torch.from_numpy(dialogue_channel(path, 1, cfg.audio.sample_rate)), cfg.audio)
                   for path in paths]  # the assistant's, (frames, patch_dim) each
        n_frames = [len(p) + cfg.text_lead_frames for p in patches]
        digest = records_key(self.records, n_frames)
        kept = self.data_dir / "heard" / f"{split}-{listener_key(listener)}.safetensors"
        heard = read_hearing(kept, digest, len(self.records)) if cache else None
        if heard is None:
            heard = hear_dialogues(listener, paths, n_frames, tokenizer, workers, f"hearing the {split} dialogues")
            if cache:
                write_hearing(kept, heard, digest)
        self.streams = [dialogue_streams(record, user, p, tokenizer, cfg)
                        for record, user, p in zip(self.records, heard, patches)]
        self.prompt_seconds = prompt_seconds

    def __len__(self) -> int:
        return len(self.records)

    def lengths(self) -> list[float]:
        return [r["duration"] for r in self.records]

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[SpeakerStreams, torch.Tensor, list[torch.Tensor]]:
        index, draw = item if isinstance(item, tuple) else (item, 0)
        rng = np.random.default_rng([self.seed, draw, index])
        others = [i for i in range(len(self.streams)) if i != index] or [index]
        other = self.streams[others[rng.integers(len(others))]]
        prompt = speech_patches(other.patches[self.cfg.text_lead_frames:])
        low, high = self.prompt_seconds
        frames = round(rng.uniform(low, high) / FRAME_SECONDS)
        start = int(rng.integers(max(0, len(prompt) - frames) + 1))
        whole, part = divmod(self.text_ratio, 1.0)
        n_passages = int(whole) + int(rng.random() < part)
        passages = [self.passages[i] for i in rng.integers(len(self.passages), size=n_passages)] if n_passages else []
        return self.streams[index], prompt[start:start + frames], passages

    def collate(self, items: list[tuple[SpeakerStreams, torch.Tensor, list[torch.Tensor]]]) -> SpeakerBatch:
        """``SpeakerUtterances.collate``, with the user's streams beside (padding: PAD, zero embeddings), the rag
        prefixes (left-padded) and the passages as more rows of plain text after the answers'."""
        batch = SpeakerUtterances.collate([(s, p) for s, p, _ in items])
        rows = [s.text for s, _, _ in items] + [passage for _, _, passages in items for passage in passages]
        words = max(len(r) for r in rows)
        batch.text = torch.stack([F.pad(r, (0, words - len(r))) for r in rows])
        batch.text_mask = torch.stack([torch.arange(words) < len(r) for r in rows])
        prefixes = [s.prefix for s, _, _ in items]
        longest = max(len(p) for p in prefixes)
        if longest:  # left-padded, so every row's first frame comes at the same position
            batch.prefix = torch.stack([F.pad(p, (longest - len(p), 0), value=self.pad_id) for p in prefixes])
            batch.prefix_mask = torch.stack([torch.arange(longest) >= longest - len(p) for p in prefixes])
        frames = batch.tokens.shape[1]
        users = [s.user for s, _, _ in items]
        batch.user = UserStreams(
            torch.stack([F.pad(u.embeddings, (0, 0, 0, frames - len(u.tokens))) for u in users]),
            torch.stack([F.pad(u.tokens, (0, frames - len(u.tokens)), value=self.pad_id) for u in users]))
        return batch


def train_joint(
    preset: str,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    steps: int,
    listener: str | os.PathLike | None = None,
    init: str | os.PathLike | None = None,
    resume: bool = False,
    batch_size: int = 4,
    checkpoint_every: int = 100,
    log_every: int = 10,
    max_minutes: float | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    flow_weight: float | None = None,
    text_ratio: float = 1.0,
    keep_weight: float | None = None,
    checkpointing: bool = False,
    bf16: bool | None = None,
    stack_rank: int = 0,
) -> Path:
    """Train the speech model on a dialogue corpus's train split, hearing the user (``fit`` for checkpoints and
    resuming, the data order included).

    The losses are the speaker stage's (``SpeakerTrainer``): the assistant's
    text stream, its patches' flow loss and the keep loss on its answers as
    plain text and on ``text_ratio`` passages of outside text per dialogue
    (``outside_passages``), now with the user's projection learning too. ``listener``
    is the frozen listening head (a file or run; None: a random one, for
    tests); ``init`` a speech model to start from (the speaker stage's),
    modules it lacks fresh. The run exports a speaker file, user projection
    included (``load_speaker``). ``flow_weight`` (None: the speaker
    stage's) 0 trains the text stream alone, for the acoustic model to voice;
    ``keep_weight`` (None: the speaker stage's) weighs the keep loss.
    ``stack_rank`` > 0 folds ``init``'s adapters in and trains fresh ones of
    that rank on top (``SpeechModel.stack_adapters``), with the user's
    projection and the text-head bias: the export holds only those, a few
    MB, and names ``init`` as its base.
    ``checkpointing`` recomputes the backbone's activations in backward;
    ``bf16`` autocasts (None: on a GPU only). ``memory.py`` says what fits.

    Under ``accelerate launch`` (or ``torchrun``) with N processes each
    takes its share of every batch of ``batch_size`` dialogues and the
    gradients are averaged (``parallel.py``): the steps one process
    takes, each process doing an N-th of the work.
    """
    from .backbone import load_tokenizer

    tokenizer = load_tokenizer()
    device = parallel.start(training_device(device))
    torch.manual_seed(seed)
    if stack_rank and init is None:
        raise ValueError("stacked adapters need a speech model to stack on: pass init (--init)")
    model = speech_model_from(preset, tokenizer, init if stack_rank or not resume else None)
    if stack_rank:
        model.stack_adapters(stack_rank, 2 * stack_rank, init)
    if checkpointing:
        model.checkpoint_activations()
    heard_by = (load_listener(listener, preset, len(tokenizer)) if listener is not None
                else build_listener(preset, len(tokenizer), pretrained=False))
    hearing = 1 if parallel.world_size() > 1 else min(8, os.cpu_count() or 1)  # many processes: each hears all
    dataset = JointDialogues(data_dir, model.cfg, tokenizer, heard_by, seed=seed, text_ratio=text_ratio,
                             workers=hearing)
    trainer = SpeakerTrainer(model, preset, device, total_steps=steps, hears_user=True, bf16=bf16,
                             flow_weight=FLOW_LOSS_WEIGHT if flow_weight is None else flow_weight,
                             keep_weight=KEEP_LOSS_WEIGHT if keep_weight is None else keep_weight)
    order = LengthBuckets(dataset.lengths(), batch_size, seed).with_numbers()
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=order, num_workers=loader_workers(device),
                                         collate_fn=dataset.collate)
    try:
        return fit(trainer, loader, out_dir, steps, LOSSES, resume=resume, checkpoint_every=checkpoint_every,
                   log_every=log_every, max_minutes=max_minutes, desc="joint")
    finally:
        parallel.stop()


def bench_joint(preset: str, batch_size: int = 2, seconds: float = 20.0, steps: int = 2, checkpointing: bool = True,
                bf16: bool | None = None, threads: int = 2) -> dict:
    """Peak memory and speed of ``train joint`` steps on random dialogues, beside ``memory.estimate``.

    The backbone has the preset's shape and random weights (``random_llama``:
    nothing to download, the same cost), LoRA, the heads and the user's
    projection train as in ``train joint``. Each dialogue is ``seconds`` of
    frames with random streams and one answer's worth of plain text. After
    one warm-up step, ``steps`` steps are timed. Peak memory is
    ``torch.cuda.max_memory_allocated`` on a GPU; on a CPU, the process's
    peak resident memory less what it held before the model was built
    (Python, torch, the tokenizer), an upper bound: the allocator keeps
    memory it freed.
    """
    import resource

    from .backbone import load_tokenizer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        tokenizer = load_tokenizer()
        cfg = speech_model_config(preset)
        baseline = resident_gb()
        torch.manual_seed(0)
        backbone = random_llama(get_config(preset).backbone, len(tokenizer))
        pad, end = tokenizer.convert_tokens_to_ids(PAD_TOKEN), tokenizer.convert_tokens_to_ids(END_TOKEN)
        model = SpeechModel(cfg, backbone, pad, end)
        if checkpointing:
            model.checkpoint_activations()
        trainer = SpeakerTrainer(model, preset, device, total_steps=steps + 1, hears_user=True, bf16=bf16)
        frames, words = round(seconds / FRAME_SECONDS), round(seconds / FRAME_SECONDS / 2)  # a word every 2 frames
        b, vocab = batch_size, len(tokenizer)

        def integers(high: int, *shape: int) -> torch.Tensor:
            return torch.randint(high, shape)

        tokens = torch.where(torch.rand(b, frames) < 0.5, integers(vocab, b, frames), pad)
        batch = SpeakerBatch(
            tokens=tokens, patches=torch.randn(b, frames, cfg.patch_dim),
            phonemes=integers(40, b, frames, cfg.max_phonemes), since=integers(cfg.max_voiced_frames, b, frames),
            mask=torch.ones(b, frames, dtype=torch.bool), prompt=torch.randn(b, 40, cfg.patch_dim),
            prompt_mask=torch.ones(b, 40, dtype=torch.bool), text=integers(vocab, b, words),
            text_mask=torch.ones(b, words, dtype=torch.bool),
            user=UserStreams(torch.randn(b, frames, cfg.hidden_size), integers(vocab, b, frames)))
        built = resident_gb()
        trainer.step(batch)  # warm-up: first-call allocations, lazy kernel choices
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        seconds_per_step = [timed(lambda: trainer.step(batch), device) for _ in range(steps)]
        peak = (torch.cuda.max_memory_allocated(device) / 1024 ** 3 if device.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2 - baseline)  # KB on Linux
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        shape = StepShape(parameters=sum(p.numel() for p in model.parameters()), trained_parameters=trained,
                          layers=cfg.num_layers, hidden_size=cfg.hidden_size,
                          intermediate_size=cfg.intermediate_size, vocab_size=vocab, batch_size=b, frames=frames,
                          text_tokens=b * words)
        bf16 = trainer.bf16
        report = {
            "device": device.type, "threads": threads, "batch_size": b, "frames_per_dialogue": frames,
            "seconds_per_dialogue": seconds, "checkpointing": checkpointing, "bf16": bf16,
            "parameters": shape.parameters, "trained_parameters": trained,
            "step_seconds_median": float(np.median(seconds_per_step)),
            "positions_per_second": b * frames / float(np.median(seconds_per_step)),
            "estimate_gb": estimate(shape, bf16, checkpointing),
        }
        if device.type == "cuda":
            report["peak_allocated_gb"] = peak
        else:
            report.update(peak_rss_gb=peak, model_built_rss_gb=built - baseline, baseline_rss_gb=baseline)
    finally:
        torch.set_num_threads(previous_threads)
    report["run"] = run_info(preset)
    return report
