"""The listening head: Whisper's weights ported exactly, then made causal, windowed and streaming."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from michi_lite.backbone import read_ctranslate2_weights, whisper_model_dir
from michi_lite.data.augment import Augmenter
from michi_lite.data.frames import PAD_TOKEN, TokenGrid, text_from_grid
from michi_lite.data.words import Word
from michi_lite.eval import ROBUSTNESS_CONDITIONS, changed_clip
from michi_lite.listen import (
    QUIET_FRAMES,
    WHISPER_POSITIONS,
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
    save_listener,
    sinusoids,
    whisper_encoder_state,
)
from michi_lite.train import latest_checkpoint
from michi_lite.train_listener import ListenerUtterances, distillation_loss

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


def test_a_delayed_grid_emits_each_word_that_many_frames_later(tokenizer):
    words = [Word("Hello", 0.10, 0.42), Word("there.", 0.50, 0.80)]
    grid = emission_grid("Hello there.", words, tokenizer, n_frames=14, delay_frames=2)
    labels = grid.labels(tokenizer)
    assert labels[7] == "Hello" and labels[11] == " there" and labels[12] == "."
    assert text_from_grid(grid, tokenizer) == "Hello there."


def test_the_distillation_loss_compares_each_frame_with_the_teachers_frame_delay_frames_before():
    teacher = torch.randn(2, 6 * 4, 8)  # 6 frames of 4 positions
    student = torch.roll(teacher, shifts=2 * 4, dims=1)  # the teacher, two frames late
    valid = torch.ones(2, 6, dtype=torch.bool)
    assert distillation_loss(student, teacher, valid, per_frame=4, delay_frames=2) == pytest.approx(0.0)
    assert distillation_loss(student, teacher, valid, per_frame=4, delay_frames=1) > 0.5
    valid[:, 3:] = False  # batch padding counts for nothing
    student[:, 3 * 4:] += 100.0
    assert distillation_loss(student, teacher, valid, per_frame=4, delay_frames=2) == pytest.approx(0.0)


def test_training_clips_are_drawn_from_their_index_and_batch_number(tiny_corpus, tokenizer):
    plain = ListenerUtterances(tiny_corpus, TINY, tokenizer)
    heard, clean, targets = plain[0]
    assert torch.equal(heard, clean) and heard.shape[-1] == len(targets) * TINY.audio.mels_per_frame
    augmented = ListenerUtterances(tiny_corpus, TINY, tokenizer, augment=Augmenter(TINY.audio.sample_rate), seed=3)
    draws = [augmented[(0, n)] for n in range(6)]
    assert all(torch.equal(a, b) for a, b in zip(draws[0], augmented[(0, 0)]))
    assert any(not torch.equal(d[0], draws[0][0]) for d in draws[1:])
    for heard, clean, targets in draws:  # the clean clip keeps the speed change, and the targets follow it
        assert heard.shape == clean.shape and heard.shape[-1] == len(targets) * TINY.audio.mels_per_frame
        assert text_from_grid(TokenGrid(targets.tolist(), plain_pad(tokenizer)), tokenizer) == plain.records[0]["text"]


def plain_pad(tokenizer) -> int:
    return tokenizer.convert_tokens_to_ids(PAD_TOKEN)


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


def test_a_resumed_listener_run_ends_with_the_weights_of_an_uninterrupted_one(tiny_corpus, tmp_path):
    from safetensors.torch import load_file

    from michi_lite.cli import main

    def train(out, steps, *extra):
        main(["train", "listener", "--preset", "tiny", "--data", str(tiny_corpus), "--out", str(out),
              "--steps", str(steps), "--batch-size", "2", "--checkpoint-every", "1", *extra])

    train(tmp_path / "whole", 3)
    train(tmp_path / "parts", 2)
    train(tmp_path / "parts", 3, "--resume")  # same augmented clips, teacher and order as the whole run's
    whole, parts = (load_file(str(tmp_path / run / "listener.safetensors")) for run in ("whole", "parts"))
    assert all(torch.equal(whole[name], parts[name]) for name in whole)


def test_a_listener_file_says_its_emission_delay_and_one_from_before_delays_reads_as_none(tmp_path, tokenizer):
    from safetensors.torch import load_file, save_file

    listener = build_listener("tiny", len(tokenizer))
    save_listener(tmp_path / "now.safetensors", listener, "tiny")
    assert load_listener(tmp_path / "now.safetensors", "tiny", len(tokenizer)).cfg.delay_frames == TINY.delay_frames
    config = {k: v for k, v in TINY.to_dict().items() if k != "delay_frames"}
    save_file(load_file(str(tmp_path / "now.safetensors")), str(tmp_path / "before.safetensors"),
              metadata={"format": "michi_lite.listener/1", "preset": "tiny", "config": json.dumps(config)})
    before = load_listener(tmp_path / "before.safetensors", "tiny", len(tokenizer))
    assert before.cfg.delay_frames == 0 and before.encoder.cfg.delay_frames == 0
    wider = {**TINY.to_dict(), "width": 2 * TINY.width}
    save_file(load_file(str(tmp_path / "now.safetensors")), str(tmp_path / "wider.safetensors"),
              metadata={"format": "michi_lite.listener/1", "preset": "tiny", "config": json.dumps(wider)})
    with pytest.raises(ValueError, match="another listener shape"):
        load_listener(tmp_path / "wider.safetensors", "tiny", len(tokenizer))


def test_a_foreign_listener_checkpoint_is_refused(tmp_path, tokenizer):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "listener.safetensors"))
    with pytest.raises(ValueError, match="not a michi_lite listener"):
        load_listener(tmp_path, "tiny", len(tokenizer))


def test_eval_listener_reports_every_measure_per_group_engine_and_category(tiny_corpus, tiny_listener_run, tmp_path):
    from michi_lite.cli import main
    from michi_lite.data.corpus import load_manifest

    people = tmp_path / "people"  # a folder of clips from elsewhere: here two corpus clips named as recordings
    people.mkdir()
    records = load_manifest(tiny_corpus)[:2]
    (people / "manifest.jsonl").write_text("".join(
        json.dumps({"path": str(tiny_corpus / r["path"]), "text": r["text"], "engine": "people"}) + "\n"
        for r in records))
    out = tmp_path / "listener.json"
    main(["eval", "listener", "--preset", "tiny", "--ckpt", str(tiny_listener_run), "--data", str(tiny_corpus),
          "--json", str(out), "--max-utterances", "1", "--delays", str(tmp_path / "delays.npz"),
          "--held-out", str(people), "--robustness", "2"])
    report = json.loads(out.read_text())
    delays = np.load(tmp_path / "delays.npz")
    assert {k: len(delays[k]) for k in delays} == {g: r["all"]["n_words_timed"] for g, r in report["groups"].items()}
    assert set(report["groups"]) == {"seen", "held_out"}
    assert "people" in report["groups"]["held_out"]["engines"]
    for group in report["groups"].values():
        result = group["all"]
        assert result["n_utterances"] == len(group["engines"])  # one clip per engine
        assert sum(e["n_utterances"] for e in group["engines"].values()) == result["n_utterances"]
        assert 0.0 <= result["frame_accuracy"] <= 1.0 and 0.0 <= result["token_frame_accuracy"] <= 1.0
        # Whisper hears the speech; an untrained head emits a word on most frames, far more than were said
        assert result["wer_whisper_offline"] < 1.0 < min(result["wer_streaming"], result["wer_streaming_int8"])
        assert result["wer_ratio"] == pytest.approx(result["wer_streaming"] / result["wer_whisper_offline"])
        assert group["stress"]["n_utterances"] + group["plain"]["n_utterances"] == result["n_utterances"]
        assert all(c.startswith("stress:") for c in group["categories"])
        assert sum(c["n_utterances"] for c in group["categories"].values()) == group["stress"]["n_utterances"]
        talk = group["conversations"]  # one clip per engine here: a stream each
        assert talk["n_utterances"] == talk["n_streams"] == result["n_utterances"]
        assert talk["wer_whisper_offline"] < 1.0 < min(talk["wer_stream"], talk["wer_one_at_a_time"])
    table = report["robustness"]
    assert set(table) == set(report["conditions"]) and {"clean", "noise_snr_5db", "speed_1.1"} <= set(table)
    assert all(row["n_utterances"] == 2 and row["wer_streaming"] > 1.0 for row in table.values())


def test_each_robustness_condition_changes_the_clip_as_named():
    wave = (0.3 * np.sin(np.arange(16_000) * 0.05)).astype(np.float32)
    changed = {name: changed_clip(wave, 16_000, change, seed=0) for name, change in ROBUSTNESS_CONDITIONS}
    assert changed["clean"] is wave
    assert len(changed["speed_1.1"]) < len(wave) < len(changed["speed_0.9"])
    noise = {name: np.mean((changed[name] - wave) ** 2) for name in ("noise_snr_20db", "noise_snr_5db")}
    assert noise["noise_snr_5db"] == pytest.approx(noise["noise_snr_20db"] * 10 ** 1.5, rel=0.01)
    assert not np.allclose(changed["reverb_rt60_0.6s"], wave) and len(changed["band_limit_8khz"]) == len(wave)


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


def test_a_stream_goes_round_whispers_30_s_of_positions_and_hears_alike_on_every_lap(tiny_listener):
    wave = noise(34.0)  # 1,700 encoder positions: past the 1,500 of Whisper's table
    stream = tiny_listener.stream()
    heard = [f for i in range(0, len(wave), 4 * FRAME) for f in stream.push(wave[i:i + 4 * FRAME])]
    assert stream.state.position < WHISPER_POSITIONS
    with torch.no_grad():
        embeddings, _ = tiny_listener(clip_features(wave, TINY.audio)[None])
        # the same 2.4 s of audio, 30 s apart, seen through the same window of positions
        first = tiny_listener.encoder(clip_features(wave[:3 * 16_000], TINY.audio)[None])
        lap = tiny_listener.encoder(clip_features(wave[:3 * 16_000], TINY.audio)[None], start=WHISPER_POSITIONS)
    assert len(heard) == embeddings.shape[1] == 425
    assert (torch.stack([f.embedding for f in heard]) - embeddings[0]).abs().max() < 1e-4
    assert torch.equal(first, lap)


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


def test_conversations_join_each_engines_clips_in_order_with_silences_between(tiny_corpus):
    from michi_lite.audio import load_audio
    from michi_lite.data.corpus import load_manifest
    from michi_lite.eval import conversation_streams

    rows = [{"path": str(tiny_corpus / r["path"]), "engine": r["engine"], "text": r["text"]}
            for r in load_manifest(tiny_corpus)[:9]]
    streams = conversation_streams(rows, 16_000, per_stream=4)
    assert [r for _, stream_rows in streams for r in stream_rows] == sorted(rows, key=lambda r: r["engine"])
    for wave, stream_rows in streams:
        assert 1 <= len(stream_rows) <= 4 and len({r["engine"] for r in stream_rows}) == 1
        speech = sum(len(load_audio(r["path"], 16_000)) for r in stream_rows) / 16_000
        silence = len(wave) / 16_000 - speech
        assert 0.3 + 0.5 * len(stream_rows) - 1e-3 <= silence <= 0.3 + 2.0 * len(stream_rows) + 1e-3
