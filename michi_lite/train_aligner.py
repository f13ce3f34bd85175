"""The phoneme aligner's training recipe (``michi-lite train aligner``), on the shared loop of ``train.py``.

The classifier learns from the utterances whose engine timed its phonemes
(espeak-ng's), a cross-entropy on every column. Each batch's mel is shifted
up or down by a few mel bands at random, as a higher or lower voice would
shift it, so that what it learns from espeak-ng's voices carries over to the
other engines' it will align.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from .acoustic import AcousticUtterances, acoustic_config
from .aligner import PhonemeClassifier, aligner_config, phoneme_classes, save_aligner
from .train import LengthBuckets, ScheduledTrainer, fit, started_config, training_device, warmup_cosine

logger = logging.getLogger(__name__)

MAX_BAND_SHIFT = 3  # mel bands a batch is shifted by, at most, either way


def shift_bands(mel: torch.Tensor, shift: int) -> torch.Tensor:
    """Mel columns (..., n_mels) moved ``shift`` bands up (or down, if negative), the edge band repeated."""
    if shift == 0:
        return mel
    if shift > 0:
        return torch.cat([mel[..., :1].expand(*mel.shape[:-1], shift), mel[..., :-shift]], dim=-1)
    return torch.cat([mel[..., -shift:], mel[..., -1:].expand(*mel.shape[:-1], -shift)], dim=-1)


class AlignerTrainer(ScheduledTrainer):
    """The phoneme classifier and its optimizer, for ``fit``."""

    def __init__(self, model: PhonemeClassifier, preset: str, device: torch.device, total_steps: int,
                 learning_rate: float = 2e-3, warmup_steps: int = 100, recipe: dict | None = None) -> None:
        self.model, self.preset, self.device = model.to(device), preset, device
        self.total_steps, self.peak_learning_rate, self.recipe = total_steps, learning_rate, recipe or {}
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=learning_rate, weight_decay=0.01)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_cosine(warmup_steps, total_steps))

    def step(self, batch) -> dict[str, float]:
        self.model.train()
        batch = batch.to(self.device)
        shift = int(torch.randint(-MAX_BAND_SHIFT, MAX_BAND_SHIFT + 1, ()))
        loss = self.model.loss(shift_bands(batch.mel, shift), batch.column_mask, phoneme_classes(batch.ids))
        self.update(loss)
        return {"loss": loss.item()}

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"aligner": self.model}

    def config(self) -> dict:
        return {**self.shape(), "total_steps": self.total_steps, "learning_rate": self.peak_learning_rate,
                **self.recipe}

    def shape(self) -> dict:
        return {"model": self.model.cfg.to_dict()}

    def export(self, out_dir: Path) -> None:
        save_aligner(out_dir / "aligner.safetensors", self.model, self.preset)


def train_aligner(
    preset: str,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    steps: int = 2_000,
    batch_size: int | None = None,
    resume: bool = False,
    checkpoint_every: int = 250,
    log_every: int = 10,
    max_minutes: float | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> Path:
    """Train the phoneme classifier on the engine-timed train utterances of ``data_dir``; see ``fit``.

    A resumed run keeps the batch size and seed it started with.
    """
    started = started_config(out_dir) if resume else None
    if started is not None:
        batch_size, seed = batch_size or started["batch_size"], started["seed"]
    batch_size = batch_size or 16
    device = training_device(device)
    torch.manual_seed(seed)
    model = PhonemeClassifier(aligner_config(preset))
    trainer = AlignerTrainer(model, preset, device, steps, recipe={"batch_size": batch_size, "seed": seed})
    dataset = AcousticUtterances(data_dir, acoustic_config(preset), "train", engine_timed_only=True)
    logger.info("aligner %s: %.2fM parameters, %d steps of %d utterances (%d engine-timed in the train split) on %s",
                preset, sum(p.numel() for p in model.parameters()) / 1e6, steps, batch_size, len(dataset), device)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=LengthBuckets(dataset.lengths(), batch_size, seed),
                                         collate_fn=dataset.collate)
    return fit(trainer, loader, out_dir, steps, ["loss"], resume=resume, checkpoint_every=checkpoint_every,
               log_every=log_every, max_minutes=max_minutes, desc="aligner")
