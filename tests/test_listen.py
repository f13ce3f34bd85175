"""The listening head: Whisper's weights ported exactly, then made causal, windowed and streaming."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from michi_lite.backbone import read_ctranslate2_weights, whisper_model_dir
from michi_lite.data.frames import PAD_TOKEN, text_from_grid
from michi_lite.data.words import Word
from michi_lite.listen import (
    QUIET_FRAMES,
    EncoderState,
    HeardFrame,
    StreamingWhisperEncoder,
    WordAssembler,
    block_causal_mask,
    build_listener,
    clip_features,
    emission_grid,
    listener_config,
    load_listener,
    sinusoids,
    whisper_encoder_state,
)
from michi_lite.train import latest_checkpoint

TINY = listener_config("tiny")
FRAME = TINY.audio.samples_per_frame


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_listener(tokenizer):
    torch.manual_seed(0)
    return build_listener("tiny", len(tokenizer)).eval()


def noise(seconds: float, seed: int = 0) -> torch.Tensor:
    return torch.randn(int(seconds * TINY.audio.sample_rate), generator=torch.Generator().manual_seed(seed)) * 0.1


def test_the_ported_encoder_matches_ctranslate2_on_whisper_features():
    """Whisper tiny.en read from its CTranslate2 file, run as Whisper runs it, gives what CTranslate2 gives."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    from faster_whisper.feature_extractor import FeatureExtractor

    from michi_lite.data.engines import get_engine

    flite = get_engine("flite")
    spoken = flite.synthesize("Listening while speaking.", flite.voices()[0])
    from michi_lite.audio import prepare_waveform

    features = FeatureExtractor(feature_size=80)(prepare_waveform(spoken.waveform, spoken.sample_rate, 16000))
    features = np.ascontiguousarray(features[None, :, :features.shape[-1] // 2 * 2], dtype=np.float32)
    model = ctranslate2.models.Whisper(str(whisper_model_dir("tiny.en", "packaged")), compute_type="float32")
    expected = np.array(model.encode(ctranslate2.StorageView.from_array(features), to_cpu=True))

    encoder = StreamingWhisperEncoder(listener_config("lite"))
    encoder.load_state_dict(whisper_encoder_state("tiny.en", "packaged"))
    with torch.no_grad():
        ours = encoder.eval()(torch.from_numpy(features), whisper=True).numpy()
    assert ours.shape == expected.shape
    assert np.abs(ours - expected).mean() < 1e-3 and np.abs(ours - expected).max() < 0.05


def test_whispers_position_table_is_the_sinusoids_computed_for_any_position():
    table = read_ctranslate2_weights(whisper_model_dir("tiny.en", "packaged"), "encoder/")
    table = table["position_encodings/encodings"].float()  # (1500, 384), stored in fp16
    assert (sinusoids(torch.arange(1500), 384) - table).abs().max() < 1e-3


def test_a_foreign_or_truncated_model_file_is_refused(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"\x06\x00\x00\x00not a model")
    with pytest.raises(ValueError, match="CTranslate2"):
        read_ctranslate2_weights(tmp_path)
    good = (whisper_model_dir("tiny.en", "packaged") / "model.bin").read_bytes()
    (tmp_path / "model.bin").write_bytes(good[:len(good) // 3])
    with pytest.raises(ValueError, match="CTranslate2"):
        read_ctranslate2_weights(tmp_path, "encoder/")


def test_attention_sees_its_frame_and_the_window_before_it_and_nothing_later():
    mask = block_causal_mask(12, per_frame=2, window_frames=3)
    assert mask[0, 1] and mask[1, 0]  # the two positions of frame 0 see each other
    assert not mask[1, 2]  # frame 0 never sees frame 1
    assert mask[11, 6] and not mask[11, 5]  # frame 5 sees frames 3-5, not 2


@pytest.mark.parametrize("push_samples", [FRAME, 700, 3 * FRAME + 17])
def test_streaming_frame_by_frame_equals_the_batched_forward(tiny_listener, push_samples):
    wave = noise(2.0)
    with torch.no_grad():
        embeddings, logits = tiny_listener(clip_features(wave, TINY.audio)[None])
    stream = tiny_listener.stream()
    heard = [f for i in range(0, len(wave), push_samples) for f in stream.push(wave[i:i + push_samples])]
    assert len(heard) == embeddings.shape[1] == len(wave) // FRAME
    assert (torch.stack([f.embedding for f in heard]) - embeddings[0]).abs().max() < 1e-4
    assert [f.token_id for f in heard] == logits[0].argmax(-1).tolist()


def test_a_frame_does_not_depend_on_later_audio(tiny_listener):
    wave = noise(1.6)
    changed = wave.clone()
    changed[10 * FRAME:] = noise(0.8, seed=5)[:len(wave) - 10 * FRAME]
    with torch.no_grad():
        before = tiny_listener(clip_features(wave, TINY.audio)[None])[0][0]
        after = tiny_listener(clip_features(changed, TINY.audio)[None])[0][0]
    assert torch.equal(before[:10], after[:10])  # zero look-ahead: frames 0-9 end before the change
    assert not torch.allclose(before[10], after[10])


def test_the_stream_state_stops_growing_once_the_window_is_full(tiny_listener):
    stream = tiny_listener.stream()
    sizes = []
    for i in range(3 * TINY.window_frames):
        stream.push(noise(0.08, seed=i))
        sizes.append(stream.state.numel())
    full = TINY.window_frames - 1  # the frames a stream keeps behind the current one
    assert len(set(sizes[full - 1:])) == 1
    assert sizes[full - 2] < sizes[-1]  # it grew while the window filled
    stream.reset()
    assert stream.state.numel() == EncoderState.start(TINY).numel()


def test_features_that_are_not_whole_frames_are_refused(tiny_listener):
    with pytest.raises(ValueError, match="whole 80 ms frames"):
        tiny_listener(torch.zeros(1, TINY.audio.n_mels, 12))


def test_the_emission_grid_puts_each_word_on_the_frame_where_it_ends(tokenizer):
    words = [Word("Hello", 0.10, 0.42), Word("there.", 0.50, 0.80)]
    grid = emission_grid("Hello there.", words, tokenizer, n_frames=14)
    labels = grid.labels(tokenizer)
    assert labels[5] == "Hello"  # 0.42 s falls in frame 5, [0.40, 0.48)
    assert labels[9] == " there"  # 0.80 s ends frame 9 exactly, [0.72, 0.80)
    assert labels[10] == "." and len(grid) == 14
    assert text_from_grid(grid, tokenizer) == "Hello there."


def test_words_assemble_from_tokens_with_the_time_of_their_first_token(tokenizer):
    assembler = WordAssembler(tokenizer)
    pad = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    tokens = [pad, *tokenizer.encode("Call"), pad, *tokenizer.encode(" 911"), *[pad] * 5]
    heard = [w for i, t in enumerate(tokens) for w in assembler.add(HeardFrame(i, t, torch.zeros(0)))]
    heard += assembler.finish()
    assert [w.word for w in heard] == ["Call", "911"]
    assert heard[0].emitted == pytest.approx(2 * 0.08)
    assert heard[1].emitted == pytest.approx(4 * 0.08)  # the digits spill over three frames; the word starts on one


@pytest.fixture(scope="module")
def tiny_listener_run(tiny_corpus, tmp_path_factory):
    from michi_lite.cli import main

    run = tmp_path_factory.mktemp("listener_run")
    main(["train", "listener", "--preset", "tiny", "--data", str(tiny_corpus), "--out", str(run),
          "--steps", "2", "--batch-size", "2", "--checkpoint-every", "1"])
    return run


def test_train_listener_checkpoints_logs_and_resumes(tiny_corpus, tiny_listener_run, tokenizer):
    from michi_lite.cli import main

    assert latest_checkpoint(tiny_listener_run).name == "step_00000002"
    main(["train", "listener", "--preset", "tiny", "--data", str(tiny_corpus), "--out", str(tiny_listener_run),
          "--steps", "3", "--batch-size", "2", "--resume"])
    steps = [int(line.split(",")[0]) for line in (tiny_listener_run / "train_log.csv").read_text().split()[1:]]
    assert steps[-1] == 3 and steps == sorted(set(steps))
    listener = load_listener(tiny_listener_run, "tiny", len(tokenizer))
    with pytest.raises(ValueError, match="preset"):
        load_listener(tiny_listener_run, "lite", len(tokenizer))
    with torch.no_grad():
        assert listener(clip_features(noise(0.8), TINY.audio)[None])[1].shape == (1, 10, len(tokenizer))


def test_a_foreign_listener_checkpoint_is_refused(tmp_path, tokenizer):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "listener.safetensors"))
    with pytest.raises(ValueError, match="not a michi_lite listener"):
        load_listener(tmp_path, "tiny", len(tokenizer))


def test_eval_listener_reports_every_measure_per_voice_group(tiny_corpus, tiny_listener_run, tmp_path):
    from michi_lite.cli import main

    out = tmp_path / "listener.json"
    main(["eval", "listener", "--preset", "tiny", "--ckpt", str(tiny_listener_run), "--data", str(tiny_corpus),
          "--json", str(out), "--max-utterances", "1", "--delays", str(tmp_path / "delays.npz")])
    report = json.loads(out.read_text())
    delays = np.load(tmp_path / "delays.npz")
    assert {k: len(delays[k]) for k in delays} == {g: r["all"]["n_words_timed"] for g, r in report["groups"].items()}
    assert set(report["groups"]) == {"seen", "unseen"}
    for group in report["groups"].values():
        result = group["all"]
        assert result["n_utterances"] == 1
        assert 0.0 <= result["frame_accuracy"] <= 1.0 and 0.0 <= result["token_frame_accuracy"] <= 1.0
        # Whisper hears the speech; an untrained head emits a word on most frames, far more than were said
        assert result["wer_whisper_offline"] < 1.0 < min(result["wer_streaming"], result["wer_streaming_int8"])
        assert group["stress"]["n_utterances"] + group["plain"]["n_utterances"] == 1


def test_transcribe_streams_a_file_and_writes_the_words_it_emitted(tiny_listener_run, tmp_path, capsys):
    from michi_lite.audio import save_audio
    from michi_lite.cli import main

    save_audio(tmp_path / "in.wav", noise(1.0).numpy(), TINY.audio.sample_rate)
    main(["transcribe", str(tmp_path / "in.wav"), "--preset", "tiny", "--ckpt", str(tiny_listener_run),
          "--json", str(tmp_path / "words.json")])
    words = json.loads((tmp_path / "words.json").read_text())["words"]
    printed = [line for line in capsys.readouterr().out.splitlines() if re.match(r"^ *\d+\.\d\d s  ", line)]
    assert len(printed) == len(words)
    assert all(0 < w["emitted"] <= 1.04 + QUIET_FRAMES * 0.08 for w in words)  # 13 frames, then the flush's


def test_transcribe_refuses_bad_audio(tiny_listener_run, tmp_path):
    from michi_lite.cli import main

    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(SystemExit):
        main(["transcribe", str(tmp_path / "empty.wav"), "--preset", "tiny", "--ckpt", str(tiny_listener_run)])


def test_a_stream_longer_than_whispers_30_s_runs(tiny_listener_run, tokenizer):
    listener = load_listener(tiny_listener_run, "tiny", len(tokenizer))
    with torch.no_grad():
        _, logits = listener(clip_features(torch.zeros(int(40 * TINY.audio.sample_rate)), TINY.audio)[None])
    assert logits.shape[1] == 500  # 40 s streams past Whisper's 30 s without an error


def test_bench_listener_reports_per_frame_times(tmp_path):
    from michi_lite.cli import main

    out = tmp_path / "bench.json"
    main(["bench", "listener", "--preset", "tiny", "--seconds", "0.8", "--json", str(out)])
    report = json.loads(out.read_text())
    for name in ("fp32", "int8_scorer", "int8"):
        assert report[name]["n_frames"] == 10 and 0 < report[name]["frame_ms_median"] <= report[name]["frame_ms_p95"]


def test_export_writes_an_fp16_listener_that_loads_and_agrees(tiny_listener_run, tmp_path, tokenizer):
    from michi_lite.cli import main

    out = tmp_path / "listener_fp16.safetensors"
    main(["export", "listener", "--preset", "tiny", "--ckpt", str(tiny_listener_run), "--out", str(out)])
    full, half = (load_listener(p, "tiny", len(tokenizer)) for p in (tiny_listener_run, out))
    features = clip_features(noise(0.8), TINY.audio)[None]
    with torch.no_grad():
        assert (full(features)[0] - half(features)[0]).abs().max() < 1e-2


def test_a_stream_refuses_stereo_and_nan_samples_and_keeps_going(tiny_listener):
    stream = tiny_listener.stream()
    with pytest.raises(ValueError, match="mono"):
        stream.push(torch.zeros(2, FRAME))
    with pytest.raises(ValueError, match="NaN"):
        stream.push(torch.full((FRAME,), float("nan")))
    assert len(stream.push(noise(0.16))) == 2  # nothing bad got into its state


def test_emission_delays_pair_each_spoken_word_with_its_own_emission():
    from michi_lite.eval import emission_delays
    from michi_lite.listen import HeardWord

    spoken = [Word("the", 0.0, 0.2), Word("cat", 0.3, 0.6), Word("saw", 0.7, 1.0), Word("the", 3.0, 3.2)]
    heard = [HeardWord("the", 0.24), HeardWord("dog", 0.64), HeardWord("saw", 1.04), HeardWord("the", 3.28)]
    delays = emission_delays(spoken, heard)
    assert np.allclose(delays, [40, 40, 80])  # "cat" was misheard: no delay; the second "the" pairs with its own


def test_flush_pads_the_last_partial_frame_and_adds_the_quiet_frames(tiny_listener):
    stream = tiny_listener.stream()
    assert len(stream.push(noise(0.1))) == 1  # 1600 samples: one frame, 320 waiting
    assert len(stream.flush()) == 1 + QUIET_FRAMES
    assert stream.cache_numel() - stream.state.numel() == stream.history  # nothing left waiting
