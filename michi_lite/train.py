"""What every training stage shares: checkpoints that survive a kill, resuming, the loop and its CSV log.

A stage supplies a ``Trainer``: its modules and optimizers, one ``step`` on a
batch, and an ``export`` of the file inference loads (``weights.py``). Each
stage's recipe is a module beside this one (``train_vocoder``,
``train_listener``, ``train_speaker``, ``train_acoustic``,
``train_aligner``); the models never import them. ``fit`` runs it:

* a checkpoint every N steps (and at the end, and when ``max_minutes`` is
  up) into ``checkpoints/step_N/``: weights as safetensors, optimizer moments,
  schedules and RNG states as plain tensors (read back with
  ``weights_only=True``), written to a temporary directory and renamed into
  place, so a kill mid-write leaves the previous checkpoint whole;
* ``resume``: the newest checkpoint is loaded, log rows past it are dropped
  (they are logged again), and training goes on, losing at most one
  checkpoint interval. The data order goes on too: batches come from an
  ``EpochBatches`` sampler, whose order is a function of its seed and the
  pass alone, and ``fit`` starts it at the batch the checkpoint's step
  reached; the RNGs (torch, Python's, NumPy's) are restored, so what a
  batch draws at random (a crop, a prompt, the flow's noise) is drawn again
  as it would have been;
* a progress bar with the losses and ``train_log.csv`` with a row every
  ``log_every`` steps. A loss the step did not compute (the vocoder's
  discriminators' while they wait) is left out of both: an empty cell in the
  log, where a loss that diverged is ``nan``;
* many processes (``parallel.py``): under ``accelerate launch`` each
  process trains on its share of every batch, the gradients averaged;
  rank 0 alone writes the log and the checkpoints, which keep every
  process's RNGs.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from . import parallel

logger = logging.getLogger(__name__)


class Trainer(Protocol):
    """One stage's training: what ``fit`` and the checkpoints need from it."""

    preset: str
    device: torch.device

    def step(self, batch) -> dict[str, float]: ...  # one update; the losses it computed, by name
    def modules(self) -> dict[str, nn.Module]: ...  # everything with weights, by file name
    def optimizer_state(self) -> dict: ...
    def load_optimizer_state(self, state: dict) -> None: ...
    def learning_rate(self) -> float: ...
    def config(self) -> dict: ...  # the run's full configuration, kept in every checkpoint
    def shape(self) -> dict: ...  # the part of it a checkpoint must match to load
    def export(self, out_dir: Path) -> None: ...  # refresh the file inference reads


class ScheduledTrainer:
    """What most stages share: one optimizer and its learning-rate schedule, kept in checkpoints.

    A subclass sets ``self.optimizer`` and ``self.schedule`` and writes its
    ``step`` around ``update``.
    """

    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler

    def update(self, loss: torch.Tensor, max_norm: float = 1.0) -> None:
        """One optimizer step on ``loss``: gradients averaged over the processes (if many) and clipped to
        ``max_norm``, then the schedule moves on."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        parameters = [p for g in self.optimizer.param_groups for p in g["params"]]
        parallel.average_gradients(parameters)
        torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        self.optimizer.step()
        self.schedule.step()

    def optimizer_state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict()}

    def load_optimizer_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])

    def learning_rate(self) -> float:
        return self.schedule.get_last_lr()[-1]


def training_device(device: str | torch.device | None = None) -> torch.device:
    """The device a stage trains on: the one asked for, else the GPU when there is one."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def loader_workers(device: torch.device) -> int:
    """Data-loading processes: on a GPU they keep it fed; on a CPU they would only compete with the model."""
    return min(8, (os.cpu_count() or 1) - 1) if device.type == "cuda" else 0


class EpochBatches(torch.utils.data.Sampler):
    """Batches of dataset indices whose order depends only on a seed and the pass: resumable to the batch.

    A subclass says how one pass is batched (``pass_batches``, from a
    ``random.Random`` seeded by the seed and the pass's number). Each
    ``iter`` yields the rest of the current pass, so a ``DataLoader`` on it
    goes on pass after pass; ``start_at(n)`` makes the next batch the
    ``n``-th of the whole sequence, which is what ``fit`` does on resume.
    Among many processes each gets its share of every batch
    (``parallel.shard``).
    """

    def __init__(self, n_batches: int, seed: int) -> None:
        if n_batches < 1:
            raise ValueError("no batch to train on: the dataset is empty")
        self.n_batches, self.seed, self.served = n_batches, seed, 0
        self.numbered = False

    def with_numbers(self) -> EpochBatches:
        """Yield ``(index, batch number)`` pairs instead of indices: a dataset that draws random changes
        per item seeds them with the pair, so a resumed run draws what an uninterrupted one would."""
        self.numbered = True
        return self

    def pass_batches(self, rng: random.Random) -> list[list[int]]:
        raise NotImplementedError

    def start_at(self, batches_done: int) -> None:
        self.served = batches_done

    def __iter__(self) -> Iterator[list[int]]:
        index, offset = divmod(self.served, self.n_batches)
        for batch in self.pass_batches(random.Random(f"{self.seed}/{index}"))[offset:]:
            self.served += 1
            yield parallel.shard([(i, self.served - 1) for i in batch] if self.numbered else batch)

    def __len__(self) -> int:
        return self.n_batches


class ShuffledBatches(EpochBatches):
    """Every pass, the dataset shuffled and cut into batches (the last, shorter one dropped if ``drop_last``)."""

    def __init__(self, size: int, batch_size: int, seed: int = 0, drop_last: bool = False) -> None:
        self.size, self.batch_size, self.drop_last = size, batch_size, drop_last
        super().__init__(size // batch_size if drop_last else math.ceil(size / batch_size), seed)

    def pass_batches(self, rng: random.Random) -> list[list[int]]:
        order = list(range(self.size))
        rng.shuffle(order)
        return [order[i:i + self.batch_size] for i in range(0, self.n_batches * self.batch_size, self.batch_size)]


class LengthBuckets(EpochBatches):
    """Batches of utterances of similar length (less padding), in a fresh random order every pass."""

    def __init__(self, lengths: list[float], batch_size: int, seed: int = 0, pool: int = 50) -> None:
        self.lengths, self.batch_size, self.pool = lengths, batch_size, pool
        super().__init__(sum(math.ceil(len(lengths[i:i + batch_size * pool]) / batch_size)
                             for i in range(0, len(lengths), batch_size * pool)), seed)

    def pass_batches(self, rng: random.Random) -> list[list[int]]:
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        batches = []
        span = self.batch_size * self.pool
        for start in range(0, len(order), span):
            chunk = sorted(order[start:start + span], key=self.lengths.__getitem__)
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        rng.shuffle(batches)
        return batches


def rng_state() -> dict:
    """Every RNG a training step may draw from, as tensors and plain values ``torch.load(weights_only=True)`` reads."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore ``rng_state``'s RNGs (a checkpoint from before Python's and NumPy's were kept restores torch's)."""
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        kind, keys, position, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))


def warmup_cosine(warmup_steps: int, total_steps: int, floor: float = 0.1):
    """A learning-rate factor per step: a linear warm-up, then a half cosine down to ``floor`` at the last step."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        done = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * done))
    return factor


def without_drawing(batches: Iterable) -> Iterator:
    """Iterate ``batches`` without the global RNG draw a ``DataLoader`` makes to start each pass.

    A resumed run starts its iterator mid-pass, where the uninterrupted run
    drew nothing; with the draw the two would part from there on.
    """
    state = rng_state()
    iterator = iter(batches)
    set_rng_state(state)
    return iterator


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint directory of a run (half-written ones are never named step_*)."""
    steps = sorted(Path(out_dir).glob("checkpoints/step_*"))
    return steps[-1] if steps else None


def save_checkpoint(out_dir: Path, trainer: Trainer, step: int, seconds: float, keep: int = 2,
                    process_rngs: list[dict] | None = None) -> Path:
    """Write everything a resume needs into a temporary directory, then rename it into place.

    The trainer's export may draw random numbers (building a model to save
    draws its initial weights); the RNGs are put back afterwards, as the
    checkpoint has them, since a resumed run never makes those draws.
    ``process_rngs`` are every process's RNG states, in rank order, when
    many train together (this one's is the first).
    """
    state = rng_state()
    checkpoints = out_dir / "checkpoints"
    final = checkpoints / f"step_{step:08d}"
    tmp = checkpoints / f".tmp_step_{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, module in trainer.modules().items():
        tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        save_file(tensors, str(tmp / f"{name}.safetensors"))
    rngs = {"rng": state} if process_rngs is None else {"rng": state, "process_rngs": process_rngs}
    torch.save({**trainer.optimizer_state(), **rngs}, tmp / "optimizers.pt")
    meta = {"step": step, "seconds": seconds, "preset": trainer.preset, "config": trainer.config()}
    (tmp / "state.json").write_text(json.dumps(meta, indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(checkpoints.glob("step_*"))[:-keep]:
        shutil.rmtree(old)
    trainer.export(out_dir)
    set_rng_state(state)
    return final


def load_checkpoint(checkpoint: Path, trainer: Trainer) -> tuple[int, float]:
    """Restore a ``save_checkpoint`` directory into ``trainer``; returns (step, seconds trained)."""
    meta = json.loads((checkpoint / "state.json").read_text())
    if meta["preset"] != trainer.preset:
        raise ValueError(f"{checkpoint}: this run was trained with preset {meta['preset']!r}, not {trainer.preset!r}")
    if {k: meta["config"].get(k) for k in trainer.shape()} != trainer.shape():
        raise ValueError(f"{checkpoint}: this run's model has another shape than preset {meta['preset']!r} "
                         "now has (or it is another stage's run, or stacked on another file)")
    for name, module in trainer.modules().items():
        module.load_state_dict(load_file(str(checkpoint / f"{name}.safetensors"), device=str(trainer.device)))
    state = torch.load(checkpoint / "optimizers.pt", map_location=trainer.device, weights_only=True)
    trainer.load_optimizer_state(state)
    process_rngs = state.get("process_rngs", [state["rng"]])
    if len(process_rngs) != parallel.world_size():
        logger.warning("%s was written by %d processes, not %d: each starts from the first one's random state",
                       checkpoint, len(process_rngs), parallel.world_size())
        process_rngs = [state["rng"]] * parallel.world_size()
    set_rng_state(process_rngs[parallel.rank()])
    return meta["step"], meta["seconds"]


def started_config(out_dir: str | os.PathLike) -> dict | None:
    """The configuration a run was started with, from its newest checkpoint (None for a new run)."""
    checkpoint = latest_checkpoint(out_dir)
    return None if checkpoint is None else json.loads((checkpoint / "state.json").read_text())["config"]


def truncate_log(log_path: Path, step: int, columns: list[str]) -> None:
    """Drop log rows past ``step`` (after a resume they are logged again) and any row a kill cut short
    (one whose last column is missing or empty)."""
    if not log_path.exists():
        return
    with log_path.open(newline="") as f:
        rows = [row for row in csv.DictReader(f)
                if None not in row.values() and row[columns[-1]] and int(row["step"]) <= step]
    tmp = log_path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, log_path)  # a kill mid-rewrite leaves the old log, not half of it


def fit(
    trainer: Trainer,
    batches: Iterable,
    out_dir: str | os.PathLike,
    steps: int,
    losses: list[str],
    resume: bool = False,
    checkpoint_every: int = 1000,
    log_every: int = 10,
    max_minutes: float | None = None,
    desc: str = "train",
) -> Path:
    """Train ``trainer`` on ``batches`` (iterated again and again) until step ``steps``; returns ``out_dir``.

    ``batches`` is a ``DataLoader`` whose ``batch_sampler`` is an
    ``EpochBatches`` (or such a sampler's batches themselves), so that a
    resumed run goes on with the batches an uninterrupted one would see; any
    other iterable starts again from its beginning.

    ``losses`` are the names ``trainer.step`` returns, in the log's column
    order; a loss a step did not compute is NaN, and the progress bar leaves
    it out. With ``resume=True`` training continues from the newest
    checkpoint; without it, an ``out_dir`` that already holds a run is
    refused. ``max_minutes`` ends this call early, with a checkpoint. Among
    many processes (``parallel.start``) rank 0 writes the files, and all
    stop together.
    """
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be at least 1, not {checkpoint_every}")
    out_dir = Path(out_dir)
    main = parallel.is_main()
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    columns = ["step", *losses, "lr", "seconds"]
    log_path = out_dir / "train_log.csv"
    checkpoint = latest_checkpoint(out_dir)
    step, seconds = 0, 0.0
    if resume and checkpoint is not None:
        step, seconds = load_checkpoint(checkpoint, trainer)
        if main:
            truncate_log(log_path, step, columns)
        logger.info("resuming from %s at step %d", checkpoint, step)
    elif checkpoint is not None:
        raise ValueError(f"{out_dir} already holds a run; pass resume=True (--resume) or choose another --out")
    elif resume:
        logger.info("no checkpoint in %s: starting from step 0", out_dir)
    if main and (not log_path.exists() or step == 0):
        with log_path.open("w", newline="") as f:
            csv.writer(f).writerow(columns)
    order = getattr(batches, "batch_sampler", batches)
    if isinstance(order, EpochBatches):
        order.start_at(step)  # one batch a step
    elif step:
        logger.warning("resuming with batches that are not an EpochBatches: the data order starts again")

    quiet = {} if main else {"disable": True}  # one bar, rank 0's (TQDM_DISABLE still silences it)
    bar = tqdm(total=steps, initial=step, desc=desc, unit="step", **quiet)
    started = time.perf_counter() - seconds
    deadline = math.inf if max_minutes is None else time.perf_counter() + 60 * max_minutes
    out_of_time = False
    while step < steps and not out_of_time:
        for batch in without_drawing(batches):
            result = trainer.step(batch)
            step += 1
            out_of_time = parallel.any_process(time.perf_counter() >= deadline)
            bar.update()
            shown = [name for name in losses if name in result][:3]  # a diverged loss shows as nan
            bar.set_postfix({name: f"{result[name]:.3f}" for name in shown})
            if main and (step % log_every == 0 or step == steps or out_of_time):
                row = {**result, "step": step, "lr": trainer.learning_rate(),
                       "seconds": round(time.perf_counter() - started, 2)}
                with log_path.open("a", newline="") as f:
                    csv.DictWriter(f, columns).writerow(row)
            if step % checkpoint_every == 0 or step == steps or out_of_time:
                process_rngs = parallel.gather_objects(rng_state()) if parallel.world_size() > 1 else None
                if main:
                    save_checkpoint(out_dir, trainer, step, time.perf_counter() - started, process_rngs=process_rngs)
            if step == steps or out_of_time:
                break
    bar.close()
    if out_of_time and step < steps:
        logger.info("stopping at step %d after %.1f minutes; --resume goes on", step, max_minutes)
    return out_dir
