"""The shared training loop: a resumed run continues the data order and the random draws where it stopped;
and the recipes stay out of the models."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import michi_lite
from michi_lite.train import LengthBuckets, ShuffledBatches, fit


class RecordingTrainer:
    """A trainer that learns nothing and writes down each batch and what it drew from each RNG."""

    preset = "tiny"
    device = torch.device("cpu")

    def __init__(self) -> None:
        self.weights = nn.Linear(1, 1)
        self.seen: list[tuple] = []

    def step(self, batch) -> dict[str, float]:
        self.seen.append((batch.tolist(), float(torch.rand(())), random.random(), float(np.random.rand())))
        return {"loss": 0.0}

    def modules(self) -> dict[str, nn.Module]:
        return {"weights": self.weights}

    def optimizer_state(self) -> dict:
        return {}

    def load_optimizer_state(self, state: dict) -> None:
        pass

    def learning_rate(self) -> float:
        return 0.0

    def config(self) -> dict:
        return {}

    def shape(self) -> dict:
        return {}

    def export(self, out_dir: Path) -> None:
        pass


def seed(value: int) -> None:
    torch.manual_seed(value)
    random.seed(value)
    np.random.seed(value)


class Items(torch.utils.data.Dataset):
    """Item i is i; item (i, n), from numbered batches, is i drawn in batch n, as 1000 n + i."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, item) -> torch.Tensor:
        index, draw = item if isinstance(item, tuple) else (item, 0)
        return torch.tensor(1000 * draw + index)


def loader(order) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(Items(), batch_sampler=order)


@pytest.mark.parametrize("order", [lambda: ShuffledBatches(10, 3, seed=5, drop_last=True),
                                   lambda: LengthBuckets([float(i % 4) for i in range(10)], 3, seed=5, pool=2),
                                   lambda: ShuffledBatches(10, 3, seed=5, drop_last=True).with_numbers()])
def test_a_resumed_run_sees_the_batches_and_draws_an_uninterrupted_one_would(order, tmp_path):
    seed(0)
    whole = RecordingTrainer()
    fit(whole, loader(order()), tmp_path / "whole", steps=11, losses=["loss"])  # several passes

    seed(0)
    first = RecordingTrainer()
    fit(first, loader(order()), tmp_path / "parts", steps=4, losses=["loss"])
    seed(123)  # as in a new process, the RNGs start elsewhere
    second = RecordingTrainer()
    fit(second, loader(order()), tmp_path / "parts", steps=11, losses=["loss"], resume=True)
    assert first.seen + second.seen == whole.seen
    assert len({tuple(b) for b, *_ in whole.seen}) > len(order())  # not one pass replayed


def test_every_pass_holds_every_item_once_in_a_new_order():
    for order in (ShuffledBatches(10, 3, seed=1), LengthBuckets([1.0] * 10, 3, seed=1)):
        passes = [list(order), list(order)]
        for batches in passes:
            assert sorted(i for b in batches for i in b) == list(range(10))
            assert len(batches) == len(order)
        assert passes[0] != passes[1]
    assert sum(len(b) for b in ShuffledBatches(10, 3, seed=1, drop_last=True)) == 9


def test_numbered_batches_give_each_item_the_number_of_its_batch_in_the_whole_run():
    plain = ShuffledBatches(10, 3, seed=1, drop_last=True)
    numbered = ShuffledBatches(10, 3, seed=1, drop_last=True).with_numbers()
    batches = list(numbered) + list(numbered)  # two passes
    assert [{n for _, n in batch} for batch in batches] == [{n} for n in range(6)]
    assert [[i for i, _ in batch] for batch in batches] == list(plain) + list(plain)


def test_models_and_inference_import_no_trainer():
    """Each stage's recipe sits in a ``train_*`` module beside the shared loop; a model, a loader or an
    inference path never imports one (only the command line, which dispatches to them)."""
    package = Path(michi_lite.__file__).parent
    recipes = {"train"} | {path.stem for path in package.glob("train_*.py")}
    assert {"train_vocoder", "train_listener", "train_speaker", "train_acoustic", "train_aligner"} <= recipes
    importers = {}
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module or "", *(alias.name for alias in node.names)] if isinstance(node, ast.ImportFrom)
                     else [alias.name for alias in node.names] if isinstance(node, ast.Import) else [])
            hits = {name.split(".")[-1] for name in names} & recipes  # `from .train_x import y`, `from . import train_x`
            if hits:
                importers.setdefault(path.stem, set()).update(hits)
    assert set(importers) <= recipes | {"cli"}, {k: v for k, v in importers.items() if k not in recipes | {"cli"}}
