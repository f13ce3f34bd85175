"""The first speech model's training recipe (``michi-lite train speaker``), on the shared loop of ``train.py``.

``SpeakerUtterances`` gives each utterance of a corpus (or of its pack) as the
model's streams: its text tokens on the frames where the words start, its
audio patches and phonemes, and a voice prompt from another utterance of
the same voice. ``SpeakerTrainer`` is one step: the speaking head's flow
loss, the text loss and the text-keeping loss, weighted as below, on the
adapters and the new modules only (``TrainedWeights``: what a checkpoint
holds); ``train_speaker`` runs it with checkpoints, resuming and the log.
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import parallel
from .audio import SILENCE_MEL, audio_patches, load_audio, speech_patches
from .config import FRAME_SECONDS
from .data.corpus import load_manifest
from .data.pack import SpeakerPack, is_pack
from .data.words import Word
from .model import (
    NEW_MODULES,
    SpeakerBatch,
    SpeakerStreams,
    SpeechModel,
    SpeechModelConfig,
    build_speech_model,
    read_speaker,
    save_speaker,
    speaker_streams,
    text_frame_kinds,
)
from .train import LengthBuckets, ScheduledTrainer, fit, loader_workers, training_device, warmup_cosine

logger = logging.getLogger(__name__)


class SpeakerUtterances(torch.utils.data.Dataset):
    """A corpus split's utterances as (text stream, audio stream, voice prompt from another utterance).

    ``data_dir`` is a corpus, or a pack of one (``data.pack``): its log-mel
    and phonemes computed before, so that no audio is decoded and espeak-ng
    is not asked.
    """

    def __init__(self, data_dir: str | os.PathLike, cfg: SpeechModelConfig, tokenizer, split: str = "train",
                 max_seconds: float = 8.0, prompt_seconds: tuple[float, float] = (2.0, 5.0)) -> None:
        self.data_dir, self.cfg, self.tokenizer = Path(data_dir), cfg, tokenizer
        self.pack = SpeakerPack(data_dir, cfg.audio) if is_pack(data_dir) else None
        records = self.pack.records if self.pack else load_manifest(data_dir)
        self.records = [r for r in records if r["split"] == split and r["duration"] <= max_seconds and r["words"]]
        if not self.records:
            raise ValueError(f"{data_dir}: no {split} utterances of at most {max_seconds} s with words")
        self.by_voice: dict[str, list[int]] = {}
        for i, r in enumerate(self.records):
            self.by_voice.setdefault(r["voice"], []).append(i)
        self.prompt_seconds = prompt_seconds

    def __len__(self) -> int:
        return len(self.records)

    def patches(self, index: int) -> torch.Tensor:
        record = self.records[index]
        if self.pack is not None:
            return self.pack.patches(record)
        wave = torch.from_numpy(load_audio(self.data_dir / record["path"], self.cfg.audio.sample_rate))
        return audio_patches(wave, self.cfg.audio)

    def __getitem__(self, index: int) -> tuple[SpeakerStreams, torch.Tensor]:
        record = self.records[index]
        words = [Word.from_dict(w) for w in record["words"]]
        streams = speaker_streams(record["text"], words, self.patches(index), self.tokenizer, self.cfg,
                                  self.pack.phonemes if self.pack else None)
        others = [i for i in self.by_voice[record["voice"]] if i != index] or [index]
        prompt = speech_patches(self.patches(others[int(torch.randint(len(others), ()))]))
        low, high = self.prompt_seconds
        frames = round((low + (high - low) * float(torch.rand(()))) / FRAME_SECONDS)
        start = int(torch.randint(max(0, len(prompt) - frames) + 1, ()))
        return streams, prompt[start:start + frames]

    def lengths(self) -> list[float]:
        return [r["duration"] for r in self.records]

    @staticmethod
    def collate(items: list[tuple[SpeakerStreams, torch.Tensor]]) -> SpeakerBatch:
        frames = max(len(s.tokens) for s, _ in items)
        prompt_frames = max(1, max(len(p) for _, p in items))
        words = max(len(s.text) for s, _ in items)

        def stack(name: str, value: float = 0) -> torch.Tensor:
            rows = [getattr(s, name) for s, _ in items]
            return torch.stack([F.pad(r, (0, 0) * (r.dim() - 1) + (0, frames - len(r)), value=value) for r in rows])

        return SpeakerBatch(
            tokens=stack("tokens"), patches=stack("patches", SILENCE_MEL), phonemes=stack("phonemes"),
            since=stack("since"), mask=torch.stack([torch.arange(frames) < len(s.tokens) for s, _ in items]),
            prompt=torch.stack([F.pad(p, (0, 0, 0, prompt_frames - len(p))) for _, p in items]),
            prompt_mask=torch.stack([torch.arange(prompt_frames) < len(p) for _, p in items]),
            text=torch.stack([F.pad(s.text, (0, words - len(s.text))) for s, _ in items]),
            text_mask=torch.stack([torch.arange(words) < len(s.text) for s, _ in items]))


LOSSES = ["loss", "text_loss", "word_loss", "pad_loss", "end_loss", "flow_loss", "keep_loss", "timing_accuracy"]
TEXT_LOSS_WEIGHT = 1.0
KEEP_LOSS_WEIGHT = 1.0  # text keeping (``SpeechModel.text_keeping_loss``): a KL divergence, on the text loss's scale
# The flow loss (a mean squared error near 0.1) pulls on the shared adapters far more weakly than the text
# loss (a cross-entropy near 1): 0.01-0.04 against 1.2 in gradient norm at step 2,459 of the lite reference.
# Weighting it 30 times for 900 more steps did not make the speech intelligible (data/speaker/README.md),
# so the two weigh the same. Adam's steps do not grow with a weight; it changes how the losses share weights.
FLOW_LOSS_WEIGHT = 1.0


class SpeakerTrainer(ScheduledTrainer):
    """The speech model's adapters and new modules, and their optimizer.

    The loss is ``flow_weight * flow_loss + TEXT_LOSS_WEIGHT * text_loss
    + keep_weight * keep_loss``. The adapters learn at a third of the new
    modules' rate; the rate warms up linearly, then falls along a half cosine
    to a tenth at ``total_steps``. Among many processes each loss, a mean
    over its share's frames or tokens, is weighted by that share
    (``parallel.Shares``), so the step is the one a single process would
    take on the whole batch.
    """

    def __init__(self, model: SpeechModel, preset: str, device: torch.device, total_steps: int,
                 learning_rate: float = 6e-4, warmup_steps: int = 100, bf16: bool | None = None,
                 hears_user: bool = False, flow_weight: float = FLOW_LOSS_WEIGHT,
                 keep_weight: float = KEEP_LOSS_WEIGHT) -> None:
        self.model, self.preset, self.device = model.to(device), preset, device
        self.weights = {"text_loss": TEXT_LOSS_WEIGHT, "flow_loss": flow_weight, "keep_loss": keep_weight}
        parallel.broadcast_parameters(model)
        adapters = [p for n, p in model.backbone.named_parameters() if p.requires_grad]
        # the user's projection learns in the joint stage (``hears_user``): a speaker's utterances have no user;
        # without the flow loss the speaking head stays as it was (weight decay alone would shrink it)
        heads = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("backbone.")
                 and (hears_user or not n.startswith("user_in."))
                 and (flow_weight or not n.startswith("speaking_head."))]
        self.optimizer = torch.optim.AdamW([{"params": adapters, "lr": learning_rate / 3},
                                            {"params": heads, "lr": learning_rate}], weight_decay=0.01)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_cosine(warmup_steps, total_steps))
        # bf16 autocast (by default on a GPU; CPUs without bf16 instructions run it slower than fp32): fp32's
        # range, so no loss scaling; the weights, the optimizer and the losses stay fp32
        self.bf16 = device.type == "cuda" if bf16 is None else bf16
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()

    def step(self, batch: SpeakerBatch) -> dict[str, float]:
        self.model.train()
        batch = batch.to(self.device)
        with self.autocast:
            losses = self.model(batch)
        frames, tokens = batch.mask.sum(), batch.text_mask.sum()
        kinds = text_frame_kinds(batch.tokens[batch.mask], self.model.pad_id, self.model.end_id)
        shares = parallel.Shares({"text_loss": frames, "flow_loss": frames, "timing_accuracy": frames,
                                  "keep_loss": tokens, **{f"{k}_loss": where.sum() for k, where in kinds.items()}})
        self.update(sum(w * shares.weight(name) * losses[name] for name, w in self.weights.items()))
        logged = shares.mean({k: v.item() for k, v in losses.items()})  # the whole batch's, on every process
        logged = {k: v for k, v in logged.items() if shares.total(k)}  # a kind of frame the batch lacks: no value
        return {"loss": sum(w * logged[name] for name, w in self.weights.items()), **logged}

    def modules(self) -> dict[str, nn.Module]:
        return {"speaker": TrainedWeights(self.model)}

    def config(self) -> dict:
        stacked = self.model.stacked  # a run stacked on one speaker file resumes on the same bytes
        return {**self.model.cfg.to_dict(),
                "stacked": {k: stacked[k] for k in ("rank", "alpha", "base_sha256")} if stacked else None}

    def shape(self) -> dict:
        return self.config()

    def export(self, out_dir: Path) -> None:
        save_speaker(out_dir / "speaker.safetensors", self.model, self.preset)


class TrainedWeights:
    """What a checkpoint holds of a speech model: only the weights training changes, not SmolLM2's own."""

    def __init__(self, model: SpeechModel) -> None:
        self.model = model

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.trained_state()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_trained_state(state, fresh=("user_in",))  # a run from before the user streams: none


def speech_model_from(preset: str, tokenizer, init: str | os.PathLike | None) -> SpeechModel:
    """A fresh speech model for training, or one with ``init``'s weights (a ``save_speaker`` file or a run), the
    modules that file lacks (added since it was made) fresh."""
    if init is None:
        return build_speech_model(preset, tokenizer)
    logger.info("speech model: starting from %s", init)
    return read_speaker(init, preset, tokenizer, fresh=NEW_MODULES)


def train_speaker(
    preset: str,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    steps: int,
    resume: bool = False,
    batch_size: int = 8,
    checkpoint_every: int = 100,
    log_every: int = 10,
    max_minutes: float | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    init: str | os.PathLike | None = None,
) -> Path:
    """Train the speech model on the corpus's train split (see ``fit`` for checkpoints and resuming).

    ``init`` starts from another speech model's weights (a ``save_speaker``
    file or a run) instead of fresh adapters and heads; modules it lacks (one
    added since it was made) start fresh. The optimizer starts afresh.
    """
    from .backbone import load_tokenizer

    tokenizer = load_tokenizer()
    device = training_device(device)
    torch.manual_seed(seed)
    model = speech_model_from(preset, tokenizer, None if resume else init)
    trainer = SpeakerTrainer(model, preset, device, total_steps=steps)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("speaker %s: %.2fM trained parameters, %d steps of %d utterances on %s", preset, trained / 1e6,
                steps, batch_size, device)
    dataset = SpeakerUtterances(data_dir, model.cfg, tokenizer)
    workers = loader_workers(device)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=LengthBuckets(dataset.lengths(), batch_size, seed),
                                         num_workers=workers, collate_fn=SpeakerUtterances.collate)
    return fit(trainer, loader, out_dir, steps, LOSSES, resume=resume, checkpoint_every=checkpoint_every,
               log_every=log_every, max_minutes=max_minutes, desc="speaker")
