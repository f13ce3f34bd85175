"""Shared fixtures: one tiny corpus and one tiny dialogue corpus per test session, built through the CLI."""

from __future__ import annotations

import pytest
import torch

from michi_lite.cli import main


@pytest.fixture(scope="module")
def one_thread():
    """The two cores are shared: a second OpenMP thread spin-waits and makes tiny convs ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_corpus")
    main(["data", "build", "--preset", "tiny", "--out", str(out)])
    return out


@pytest.fixture(scope="session")
def tiny_dialogues(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_dialogues")
    main(["data", "dialogues", "--preset", "tiny", "--out", str(out)])
    return out


@pytest.fixture(scope="session")
def tokenizer():
    from michi_lite.backbone import load_tokenizer

    return load_tokenizer()
