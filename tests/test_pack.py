"""The speaker training pack: the corpus's log-mel in 8 bits and its phonemes, read back as the corpus's."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

import michi_lite.data.phonemes
from michi_lite.audio import SILENCE_MEL, MelSpectrogram, normalize_mel
from michi_lite.cli import main
from michi_lite.data.pack import MEL_SPAN, MEL_STEPS, dequantize_mel, quantize_mel
from michi_lite.model import speech_model_config
from michi_lite.train_speaker import SpeakerUtterances
from michi_lite.train import latest_checkpoint

TINY = speech_model_config("tiny")
HALF_STEP = MEL_SPAN / MEL_STEPS / 2


@pytest.fixture(scope="module")
def pack(tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("pack")
    main(["data", "pack", "--data", str(tiny_corpus), "--out", str(out)])
    return out


def test_eight_bits_keep_the_log_mel_within_half_a_step_and_silence_exact():
    silence = normalize_mel(MelSpectrogram(TINY.audio)(torch.zeros(1600))).T  # digital silence, through the frontend
    rows = torch.cat([silence, torch.empty(50, TINY.audio.n_mels).uniform_(SILENCE_MEL, 3.0)])
    back = dequantize_mel(quantize_mel(rows))
    assert back.shape == rows.shape and quantize_mel(rows).flags.c_contiguous  # a pack's rows are read in order
    assert (back - rows).abs().max() <= HALF_STEP + 1e-6
    assert (back[:len(silence)] == SILENCE_MEL).all()  # padding and pauses stay the silence the model knows
    assert dequantize_mel(quantize_mel(torch.full((1, 80), 9.0))).max() == pytest.approx(SILENCE_MEL + MEL_SPAN)


def test_a_pack_gives_what_the_corpus_gives_without_asking_espeak(pack, tiny_corpus, tokenizer, monkeypatch):
    corpus = SpeakerUtterances(tiny_corpus, TINY, tokenizer)
    torch.manual_seed(3)  # prompts are drawn from torch's RNG
    expected = [corpus[i] for i in range(len(corpus))]

    def no_espeak(chunk):
        raise AssertionError(f"espeak-ng was asked for {chunk!r}")

    monkeypatch.setattr(michi_lite.data.phonemes, "chunk_phonemes", no_espeak)
    packed = SpeakerUtterances(pack, TINY, tokenizer)
    torch.manual_seed(3)
    assert [r["id"] for r in packed.records] == [r["id"] for r in corpus.records]
    for i, (streams, prompt) in enumerate(expected):
        got, got_prompt = packed[i]
        for name in ("tokens", "phonemes", "since", "text"):
            assert torch.equal(getattr(got, name), getattr(streams, name)), name
        assert (got.patches - streams.patches).abs().max() <= HALF_STEP + 1e-5
        assert (got_prompt - prompt).abs().max() <= HALF_STEP + 1e-5  # the same prompt, from the same utterance
    assert len(pickle.dumps(packed.pack)) < packed.pack.mels.nbytes / 10  # workers map the frames, not copy them


def test_train_speaker_takes_a_pack_for_its_data(pack, tmp_path):
    run = tmp_path / "run"
    main(["train", "speaker", "--preset", "tiny", "--data", str(pack), "--out", str(run),
          "--steps", "2", "--batch-size", "2", "--checkpoint-every", "1"])
    assert latest_checkpoint(run).name == "step_00000002"


def test_a_pack_of_other_audio_or_another_version_or_with_damaged_frames_is_refused(pack, tmp_path, tokenizer):
    other = tmp_path / "other"
    other.mkdir()
    about = json.loads((pack / "pack.json").read_text())
    (other / "mels.npy").symlink_to(pack / "mels.npy")
    for change, message in (({"audio": {**about["audio"], "sample_rate": 24000}}, "preset"),
                            ({"quantisation": {**about["quantisation"], "span": 6.0}}, "quantised"),
                            ({"format": "michi_lite.speaker_pack/0"}, "version")):
        (other / "pack.json").write_text(json.dumps({**about, **change}))
        with pytest.raises(ValueError, match=message):
            SpeakerUtterances(other, TINY, tokenizer)

    (other / "pack.json").write_text(json.dumps(about))
    (other / "mels.npy").unlink()
    mels = np.load(pack / "mels.npy")
    np.save(other / "mels.npy", mels[: len(mels) // 2])  # a copy cut short
    with pytest.raises(ValueError, match="rebuild"):
        SpeakerUtterances(other, TINY, tokenizer)
    (other / "mels.npy").write_bytes((pack / "mels.npy").read_bytes()[:1000])  # not even its header's promise
    with pytest.raises(ValueError, match="rebuild"):
        SpeakerUtterances(other, TINY, tokenizer)


def test_packing_into_the_corpus_itself_is_refused(tiny_corpus, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["data", "pack", "--data", str(tiny_corpus), "--out", str(tiny_corpus)])
    assert exit.value.code == 2 and "another directory" in capsys.readouterr().err
    assert not (tiny_corpus / "pack.json").exists()
