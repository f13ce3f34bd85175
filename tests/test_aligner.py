"""The phoneme aligner: forced alignment, timed rows, training on engine timings, aligning a corpus, its files."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from michi_lite.acoustic import AcousticUtterances, acoustic_config, columns_per_phoneme, save_acoustic, AcousticModel
from michi_lite.aligner import (
    ALIGNED_FILE,
    N_CLASSES,
    aligner_config,
    class_prior,
    force_align,
    load_aligner,
    phoneme_classes,
    read_aligned,
    timed_rows,
)
from michi_lite.cli import main
from michi_lite.data.corpus import load_manifest
from michi_lite.data.phonemes import PAD_PHONEME, phoneme_id, sentence_phonemes
from michi_lite.train import latest_checkpoint, started_config
from michi_lite.train_acoustic import engine_balanced

AUDIO = aligner_config("lite").audio


def test_stress_marks_share_a_class_and_a_pause_is_class_zero():
    ids = torch.tensor([phoneme_id(n) for n in ["_", "aI", ",aI", "'aI", "t", "?"]])
    classes = phoneme_classes(ids)
    assert classes[0] == 0 and classes[1] == classes[2] == classes[3] != classes[4]
    assert int(classes.max()) < N_CLASSES and phoneme_classes(torch.tensor([PAD_PHONEME])) == 0


def test_forced_alignment_follows_the_scores_in_order_and_gives_every_phoneme_a_column():
    truth = [0] * 3 + [5] * 2 + [7] * 4 + [0]
    log_probs = np.full((len(truth), N_CLASSES), -5.0)
    log_probs[np.arange(len(truth)), truth] = 0.0
    assert force_align(log_probs, np.array([0, 5, 7, 0])).tolist() == [3, 2, 4, 1]
    # a phoneme the audio does not show still gets one column; the counts still sum to the columns
    durations = force_align(log_probs, np.array([0, 5, 9, 7, 0]))
    assert durations.min() >= 1 and durations.sum() == len(truth)
    with pytest.raises(ValueError, match="cannot fit"):
        force_align(log_probs[:3], np.array([0, 5, 7, 0]))


def test_a_minimum_length_keeps_an_unsure_phoneme_from_a_single_column():
    # the scores favour 5 throughout the first word: unsure, a plain path gives 9 one column
    truth = [0] * 2 + [5] * 6 + [7] * 4 + [0] * 2
    log_probs = np.full((len(truth), N_CLASSES), -5.0)
    log_probs[np.arange(len(truth)), truth] = 0.0
    classes = np.array([0, 5, 9, 7, 0])
    assert force_align(log_probs, classes)[2] == 1
    durations = force_align(log_probs, classes, min_columns=3)
    assert durations.tolist()[1:4] == [3, 3, 4] and durations.sum() == len(truth)
    assert durations[0] >= 1 and durations[-1] >= 1  # pauses keep a minimum of one column
    # too short for three columns a phoneme: one each, as before
    assert force_align(log_probs[:6], classes, min_columns=3).sum() == 6


def test_the_class_prior_is_the_mean_posterior():
    posteriors = [np.array([[0.5, 0.5], [1.0, 0.0]]), np.array([[0.0, 1.0]])]
    prior = class_prior([np.log(p + 1e-12) for p in posteriors])
    assert np.exp(prior) == pytest.approx([0.5, 0.5], abs=1e-5)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=30), st.integers(0, 7))
def test_timed_rows_give_the_same_columns_back(durations, extra):
    columns = sum(durations)
    duration = (columns + 2) * AUDIO.hop_length / AUDIO.sample_rate + extra * 1e-3
    rows = timed_rows([f"p{i}" for i in range(len(durations))], np.array(durations), duration, AUDIO)
    assert rows[0][1] == 0 and rows[-1][2] == pytest.approx(duration, abs=1e-4)
    assert all(a[2] == b[1] and a[1] <= a[2] for a, b in zip(rows, rows[1:]))
    back = columns_per_phoneme(np.array([r[2] for r in rows]), columns, AUDIO)
    assert back.tolist() == durations


@pytest.fixture(scope="module")
def aligned_corpus(tiny_corpus, tmp_path_factory):
    """A copy of the tiny corpus, an aligner trained on its espeak utterances, and the others aligned."""
    data = tmp_path_factory.mktemp("aligned") / "corpus"
    shutil.copytree(tiny_corpus, data)
    run = data.parent / "aligner"
    main(["train", "aligner", "--preset", "tiny", "--data", str(data), "--out", str(run), "--steps", "4",
          "--checkpoint-every", "2"])
    main(["data", "align", "--preset", "tiny", "--data", str(data), "--aligner", str(run)])
    return data, run


def test_the_aligner_trains_on_engine_timings_and_resumes(aligned_corpus, tmp_path):
    data, run = aligned_corpus
    assert latest_checkpoint(run).name.endswith("4")
    main(["train", "aligner", "--preset", "tiny", "--data", str(data), "--out", str(run), "--steps", "6",
          "--resume"])
    assert latest_checkpoint(run).name.endswith("6")
    model = load_aligner(run, "tiny")
    mel = torch.randn(50, model.cfg.audio.n_mels)
    assert model.log_probs(mel).shape == (50, N_CLASSES)


def test_every_utterance_without_engine_timings_gets_aligned_rows_that_tile_it(aligned_corpus):
    data, _ = aligned_corpus
    aligned = read_aligned(data)
    untimed = [r for r in load_manifest(data) if not r.get("phonemes")]
    assert untimed and {r["id"] for r in untimed} == set(aligned)
    for r in untimed:
        rows = aligned[r["id"]]
        assert [row[0] for row in rows] == sentence_phonemes(r["text"])
        assert rows[0][1] == 0 and rows[-1][2] == pytest.approx(r["duration"])
        assert all(a[2] == b[1] and a[1] <= a[2] for a, b in zip(rows, rows[1:]))


def test_aligning_again_resumes_and_a_cut_last_line_is_dropped(aligned_corpus):
    data, run = aligned_corpus
    path = data / ALIGNED_FILE
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    main(["data", "align", "--preset", "tiny", "--data", str(data), "--aligner", str(run)])
    again = path.read_text().splitlines()
    assert again[:-1] == lines[:-1]  # what was done stays as it was
    assert [json.loads(line)["id"] for line in again] == [json.loads(line)["id"] for line in lines]


def test_the_acoustic_model_trains_on_aligned_voices_unless_told_engine_timings_only(aligned_corpus):
    data, _ = aligned_corpus
    cfg = acoustic_config("tiny")
    everything = AcousticUtterances(data, cfg, "train", max_seconds=60)
    engine = AcousticUtterances(data, cfg, "train", max_seconds=60, engine_timed_only=True)
    assert {r["engine"] for r in engine.records} == {"espeak"}
    assert len(everything) > len(engine) and {r["engine"] for r in everything.records} > {"espeak"}


def test_balancing_engines_repeats_the_rarer_engines_utterances_by_the_root_of_their_rarity():
    records = [{"engine": "espeak"}] * 36 + [{"engine": "flite"}] * 4 + [{"engine": "piper"}]
    counts = Counter(records[i]["engine"] for i in engine_balanced(records))
    assert counts == {"espeak": 36, "flite": 12, "piper": 6}


def test_a_balanced_run_starts_from_another_models_weights_and_resumes_balanced(aligned_corpus, tmp_path):
    data, _ = aligned_corpus
    torch.manual_seed(1)
    start = save_acoustic(tmp_path / "start.safetensors", AcousticModel(acoustic_config("tiny")), "tiny")
    run = tmp_path / "run"
    train = ["train", "acoustic", "--preset", "tiny", "--data", str(data), "--out", str(run), "--batch-size", "2",
             "--checkpoint-every", "2"]
    main([*train, "--steps", "2", "--balance-engines", "--init", str(start)])
    main([*train, "--steps", "4", "--resume"])
    config = started_config(run)
    assert config["balance_engines"] and config["init"] == str(start)
    assert latest_checkpoint(run).name.endswith("4")


def test_an_aligner_file_refuses_another_preset_and_another_kind_of_file(aligned_corpus, tmp_path):
    _, run = aligned_corpus
    with pytest.raises(ValueError, match="preset"):
        load_aligner(run, "lite")
    other = save_acoustic(tmp_path / "acoustic.safetensors", AcousticModel(acoustic_config("tiny")), "tiny")
    with pytest.raises(ValueError):
        load_aligner(other, "tiny")
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes((run / "aligner.safetensors").read_bytes()[:100])
    with pytest.raises(ValueError):
        load_aligner(truncated, "tiny")
