"""The acoustic model's training recipe (``michi-lite train acoustic``), on the shared loop of ``train.py``.

One step: a batch of utterances of similar length, the sum of the three
dense losses of ``AcousticModel.forward`` (mel L1, the speaking head's flow
loss, log-duration MSE), AdamW with a warm-up and a half-cosine fall to a
tenth, gradients clipped to norm 1. An exponential moving average of the
weights (its horizon growing to ``1 / (1 - ema_decay)`` steps) is kept beside
them and is what ``acoustic.safetensors`` holds: the averaged weights sound
like the end of a cosine schedule wherever training stops. At every
checkpoint the average's losses on the validation split are appended to
``val_log.csv``, the proxy that shows when more steps stop helping.
"""

from __future__ import annotations

import copy
import csv
import logging
import math
import os
import shutil
from collections import Counter
from pathlib import Path

import torch

from .acoustic import AcousticModel, AcousticUtterances, acoustic_config, load_acoustic, save_acoustic
from .train import LengthBuckets, ScheduledTrainer, fit, started_config, training_device, truncate_log, warmup_cosine

logger = logging.getLogger(__name__)

LOSSES = ["loss", "mel_loss", "flow_loss", "duration_loss"]
VAL_UTTERANCES = 256  # validation utterances scored at every checkpoint (a few seconds on 2 cores)


class AcousticTrainer(ScheduledTrainer):
    """The acoustic model, its moving average and their optimizer, for ``fit``."""

    def __init__(self, model: AcousticModel, preset: str, device: torch.device, total_steps: int,
                 learning_rate: float = 1e-3, warmup_steps: int = 200, ema_decay: float = 0.999,
                 recipe: dict | None = None, validation: AcousticUtterances | None = None) -> None:
        self.model, self.preset, self.device = model.to(device), preset, device
        self.validation = validation
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.ema_decay, self.total_steps, self.peak_learning_rate = ema_decay, total_steps, learning_rate
        self.recipe = recipe or {}
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=learning_rate, weight_decay=0.01)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_cosine(warmup_steps, total_steps))

    def step(self, batch) -> dict[str, float]:
        self.model.train()
        losses = self.model(batch.to(self.device))
        loss = sum(losses.values())
        self.update(loss)
        # the average's horizon grows with the steps taken (at most 1 / (1 - ema_decay)), so that early
        # exports are not mostly the random start
        done = self.schedule.last_epoch
        decay = min(self.ema_decay, (1 + done) / (10 + done))
        with torch.no_grad():
            for average, weight in zip(self.ema.parameters(), self.model.parameters()):
                average.lerp_(weight, 1 - decay)
        return {"loss": loss.item(), **{k: v.item() for k, v in losses.items()}}

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"acoustic": self.model, "acoustic_ema": self.ema}

    def config(self) -> dict:
        return {**self.shape(), "total_steps": self.total_steps, "learning_rate": self.peak_learning_rate,
                "ema_decay": self.ema_decay, **self.recipe}

    def shape(self) -> dict:
        return {"model": self.model.cfg.to_dict()}

    def export(self, out_dir: Path) -> None:
        step = self.schedule.last_epoch
        path = save_acoustic(out_dir / "acoustic.safetensors", self.ema, self.preset)
        if self.recipe.get("keep_exports"):  # one file per checkpoint, for a learning curve
            (out_dir / "exports").mkdir(exist_ok=True)
            shutil.copyfile(path, out_dir / "exports" / f"step_{step:08d}.safetensors")
        if self.validation is not None:
            log_validation(out_dir / "val_log.csv", step, validation_losses(self.ema, self.validation))


@torch.no_grad()
def validation_losses(model: AcousticModel, data: AcousticUtterances, batch_size: int = 16,
                      seed: int = 0) -> dict[str, float]:
    """``model``'s three losses on the first ``VAL_UTTERANCES`` of ``data``, averaged over utterances.

    Its noise and prompts are seeded: the same draws at every call, so two
    checkpoints differ only by their weights. The global RNG is left as it was.
    """
    was_training = model.training
    model.eval()
    n = min(len(data), VAL_UTTERANCES)
    totals: Counter = Counter()
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for start in range(0, n, batch_size):
            indices = range(start, min(n, start + batch_size))
            losses = model(data.collate([data[i] for i in indices]).to(device))
            for name, value in losses.items():
                totals[name] += value.item() * len(indices)
    model.train(was_training)
    return {name: total / n for name, total in totals.items()}


def log_validation(path: Path, step: int, losses: dict[str, float]) -> None:
    """Append a step's validation losses to ``path``, after dropping rows of that step or later (a resumed run's)."""
    columns = ["step", *LOSSES[1:]]
    truncate_log(path, step - 1, columns)
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, columns)
        if new:
            writer.writeheader()
        writer.writerow({"step": step, **{name: f"{losses[name]:.5f}" for name in columns[1:]}})


def engine_balanced(records: list[dict]) -> list[int]:
    """Indices into ``records``, each repeated by sqrt(n_max / n) where its engine has n and the most used n_max.

    The corpus has many espeak-ng voices and one or two of each other engine:
    unbalanced, those few voices are a small share of the batches.
    """
    counts = Counter(r["engine"] for r in records)
    most = max(counts.values())
    return [i for i, r in enumerate(records) for _ in range(round(math.sqrt(most / counts[r["engine"]])))]


def train_acoustic(
    preset: str,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    steps: int = 20_000,
    batch_size: int | None = None,
    voices: list[str] | None = None,
    keep_exports: bool = False,
    balance_engines: bool = False,
    dropout: float = 0.0,
    duration_dropout: float = 0.0,
    init: str | os.PathLike | None = None,
    resume: bool = False,
    checkpoint_every: int = 250,
    log_every: int = 10,
    max_minutes: float | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> Path:
    """Train the acoustic model on the train split of ``data_dir`` (``voices`` only, if given); see ``fit``.

    A resumed run keeps the batch size, voices and seed it started with
    (its data order depends on them) unless they are given again.
    ``keep_exports`` keeps every checkpoint's export in ``exports/``.
    ``balance_engines`` repeats utterances (``engine_balanced``); ``init``
    starts from an acoustic model's weights instead of random ones.
    """
    started = started_config(out_dir) if resume else None
    if started is not None:
        batch_size = batch_size or started["batch_size"]
        voices = voices if voices is not None else started["voices"]
        seed = started["seed"]
        keep_exports = keep_exports or started.get("keep_exports", False)
        balance_engines = started.get("balance_engines", False)
        dropout = started.get("dropout", 0.0)
        duration_dropout = started.get("duration_dropout", 0.0)
        init = started.get("init")  # recorded only: the checkpoint's weights are loaded over the start
    batch_size = batch_size or 16
    device = training_device(device)
    torch.manual_seed(seed)
    model = AcousticModel(acoustic_config(preset), dropout, duration_dropout)
    if init is not None and started is None:
        model.load_state_dict(load_acoustic(init, preset).state_dict())
    dataset = AcousticUtterances(data_dir, model.cfg, "train", voices=voices)
    try:
        validation = AcousticUtterances(data_dir, model.cfg, "val", voices=voices)
    except ValueError:  # a corpus (or a voice) with no timed validation utterance: no val_log.csv
        validation = None
    trainer = AcousticTrainer(model, preset, device, steps, validation=validation,
                              recipe={"batch_size": batch_size, "voices": voices, "seed": seed,
                                      "keep_exports": keep_exports, "balance_engines": balance_engines,
                                      "dropout": dropout, "duration_dropout": duration_dropout,
                                      "init": None if init is None else str(init)})
    indices = engine_balanced(dataset.records) if balance_engines else list(range(len(dataset)))
    logger.info("acoustic %s: %.2fM parameters, %d steps of %d utterances (%d in the train split, %d drawn from) "
                "on %s", preset, sum(p.numel() for p in model.parameters()) / 1e6, steps, batch_size, len(dataset),
                len(indices), device)
    lengths = dataset.lengths()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, indices), collate_fn=dataset.collate,
        batch_sampler=LengthBuckets([lengths[i] for i in indices], batch_size, seed))
    return fit(trainer, loader, out_dir, steps, LOSSES, resume=resume, checkpoint_every=checkpoint_every,
               log_every=log_every, max_minutes=max_minutes, desc="acoustic")
