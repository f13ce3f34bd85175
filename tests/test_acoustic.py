"""The acoustic model: engine phoneme timings, the phoneme stream, streaming look-ahead, training and its files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from michi_lite.acoustic import (
    AcousticModel,
    AcousticUtterances,
    acoustic_config,
    columns_per_phoneme,
    lay_out,
    load_acoustic,
    phoneme_stream,
    save_acoustic,
    text_phoneme_ids,
)
from michi_lite.cli import main
from michi_lite.data.corpus import load_manifest
from michi_lite.data.engines import get_engine
from michi_lite.data.phonemes import PAD_PHONEME, sentence_phonemes, stressed
from michi_lite.train_acoustic import log_validation, validation_losses

TINY = acoustic_config("tiny")
TEXT = "Hello there, Dr. Smith read 12.5 pages."


def test_espeak_says_when_each_phoneme_sounds_and_they_tile_the_utterance():
    engine = get_engine("espeak")
    voice = next(v for v in engine.voices() if v.settings["voice"].startswith("en-us+"))
    synthesis = engine.synthesize(TEXT, voice)
    phonemes = synthesis.phonemes
    assert phonemes[0].start == 0 and phonemes[-1].end == pytest.approx(synthesis.duration, abs=1e-4)
    assert all(a.end == b.start for a, b in zip(phonemes, phonemes[1:]))
    assert all(p.end >= p.start for p in phonemes)
    # what it spoke is what ``sentence_phonemes`` reads for the text, so the stress marks can be laid on it
    written = sentence_phonemes(TEXT)
    spoken = [p.name for p in phonemes]
    assert stressed(spoken, written) == written
    assert written.count("_") == 4  # before, between the three clauses, after
    assert stressed(["h", "@"], written) == ["h", "@"]  # where the two disagree the spoken names stay


def test_phonemising_many_sentences_first_loses_no_phoneme_of_the_next_synthesis():
    # each voice selection queues an event for the next synthesis; hundreds of them
    # (one per phonemised sentence, as `data align` does) once overflowed espeak-ng's event list
    engine = get_engine("espeak")
    voice = next(v for v in engine.voices() if v.settings["voice"].startswith("en-us+"))
    before = [p.name for p in engine.synthesize(TEXT, voice).phonemes]
    for i in range(300):
        sentence_phonemes(f"Sentence number {i} of many.", "en-gb" if i % 2 else "en-us")
    assert [p.name for p in engine.synthesize(TEXT, voice).phonemes] == before


def test_a_built_corpus_keeps_espeak_phoneme_timings(tiny_corpus):
    espeak = [r for r in load_manifest(tiny_corpus) if r["engine"] == "espeak"]
    assert espeak and all(r.get("phonemes") for r in espeak)
    for r in espeak:
        rows = r["phonemes"]
        assert rows[0][1] == 0 and rows[-1][2] == pytest.approx(r["duration"], abs=1e-3)
        assert all(a[2] == b[1] for a, b in zip(rows, rows[1:]))


def test_one_voice_speaks_the_plan_each_sentence_in_the_split_it_always_has(tiny_corpus, tmp_path, capsys):
    voice = next(r["voice"] for r in load_manifest(tiny_corpus) if r["engine"] == "espeak")
    main(["data", "build", "--preset", "tiny", "--out", str(tmp_path), "--voice", voice])
    split_of = {r["text"]: r["split"] for r in load_manifest(tiny_corpus)}
    records = load_manifest(tmp_path)
    assert {r["voice"] for r in records} == {voice}
    assert all(split_of.get(r["text"], r["split"]) == r["split"] for r in records)
    assert {r["text"] for r in records} >= set(split_of)  # every planned sentence, one voice
    with pytest.raises(SystemExit):
        main(["data", "build", "--preset", "tiny", "--out", str(tmp_path / "x"), "--voice", "nobody"])
    assert "no installed engine has a voice 'nobody'" in capsys.readouterr().err


def test_columns_go_to_the_phoneme_their_window_centres_on():
    # the 40 ms causal window of column c ends at (c + 1) * 10 ms: its centre is at (c - 1) * 10 ms
    durations = columns_per_phoneme(np.array([0.035, 0.095, 0.2]), 20, TINY.audio)
    assert durations.tolist() == [5, 6, 9]  # centres -10, 0, ..., 30 ms | 40 ... 90 | 100 ... and the rest
    ids, since, until = phoneme_stream(torch.tensor([0, 7, 9]), torch.tensor([2, 3, 0]), max_count=8)
    assert ids.tolist() == [0, 0, 7, 7, 7]
    assert since.tolist() == [0, 1, 0, 1, 2] and until.tolist() == [1, 0, 2, 1, 0]
    assert lay_out(torch.tensor([3, 4, 2]), 8).tolist() == [3, 4, 9]  # whole frames


def test_a_column_depends_on_the_stream_at_most_lookahead_columns_ahead():
    torch.manual_seed(0)
    model = AcousticModel(TINY).eval()
    ids = torch.randint(2, 50, (1, 40))
    since, until = torch.zeros_like(ids), torch.zeros_like(ids)
    voice = torch.randn(1, TINY.width)
    before = model.hidden(ids, since, until, voice)
    c = 20
    changed = ids.clone()
    changed[0, c + TINY.lookahead_columns + 1:] = 60
    after = model.hidden(changed, since, until, voice)
    assert torch.allclose(before[0, :c + 1], after[0, :c + 1], atol=1e-6)
    assert not torch.allclose(before[0, c + 1:], after[0, c + 1:])


def test_a_new_speaking_head_starts_as_the_regression_it_refines():
    torch.manual_seed(0)
    model = AcousticModel(TINY).eval()
    phonemes, voice = text_phoneme_ids(TEXT), torch.randn(1, TINY.width)
    regressed, durations = model.speak(phonemes, voice, steps=0)
    for temperature in (0.0, 1.0):  # the head guesses the prior unchanged; the last Euler step lands on its guess
        sampled, _ = model.speak(phonemes, voice, steps=4, durations=durations, temperature=temperature)
        assert torch.allclose(sampled, regressed, atol=1e-5)


def test_train_acoustic_resumes_with_its_own_recipe_and_its_file_speaks(tiny_corpus, tmp_path, one_thread):
    run = tmp_path / "run"
    voice = next(r["voice"] for r in load_manifest(tiny_corpus, "train") if r["engine"] == "espeak")
    base = ["train", "acoustic", "--preset", "tiny", "--data", str(tiny_corpus), "--out", str(run)]
    main(base + ["--steps", "2", "--batch-size", "2", "--voice", voice, "--keep-exports", "--checkpoint-every", "1",
                 "--dropout", "0.1", "--duration-dropout", "0.3"])
    main(base + ["--steps", "4", "--resume", "--checkpoint-every", "2"])
    state = json.loads(max(run.glob("checkpoints/step_*")).joinpath("state.json").read_text())
    assert state["step"] == 4 and state["config"]["voices"] == [voice] and state["config"]["batch_size"] == 2
    assert state["config"]["dropout"] == 0.1 and state["config"]["duration_dropout"] == 0.3
    assert sorted(p.name for p in (run / "exports").iterdir()) == [f"step_0000000{n}.safetensors" for n in (1, 2, 4)]
    rows = (run / "train_log.csv").read_text().splitlines()
    assert rows[0] == "step,loss,mel_loss,flow_loss,duration_loss,lr,seconds"
    val_rows = (run / "val_log.csv").read_text().splitlines()  # one a checkpoint, the average's, on the val split
    assert val_rows[0] == "step,mel_loss,flow_loss,duration_loss"
    assert [row.split(",")[0] for row in val_rows[1:]] == ["1", "2", "4"]

    model = load_acoustic(run, "tiny")
    phonemes = text_phoneme_ids("Read it twice.")
    assert phonemes[0] == phonemes[-1] == PAD_PHONEME
    voice_vector = model.voice(torch.randn(1, 30, TINY.audio.n_mels))
    for steps in (0, 1, 4):
        patches, durations = model.speak(phonemes, voice_vector, steps)
        assert patches.shape == (int(durations.sum()) // 8, TINY.patch_dim) and torch.isfinite(patches).all()
        assert (durations[phonemes != PAD_PHONEME] >= 1).all()


def test_validation_losses_repeat_and_leave_the_training_rng_alone(tiny_corpus, tmp_path):
    data = AcousticUtterances(tiny_corpus, TINY, "val")
    model = AcousticModel(TINY, dropout=0.5)  # in training mode, as the trainer holds it
    torch.manual_seed(3)
    before = torch.random.get_rng_state()
    first, second = validation_losses(model, data), validation_losses(model, data)
    assert first == second and set(first) == {"mel_loss", "flow_loss", "duration_loss"}
    assert torch.equal(torch.random.get_rng_state(), before) and model.training

    log = tmp_path / "val_log.csv"
    for step in (10, 20, 30, 20):  # a run killed after step 30's row and resumed from its step-10 checkpoint
        log_validation(log, step, first)
    assert [row.split(",")[0] for row in log.read_text().splitlines()] == ["step", "10", "20"]


def test_acoustic_files_refuse_another_preset_a_truncated_file_and_another_stage(tmp_path):
    path = save_acoustic(tmp_path / "acoustic.safetensors", AcousticModel(TINY), "tiny", torch.float16)
    assert load_acoustic(path, "tiny").phoneme.weight.dtype == torch.float32
    with pytest.raises(ValueError, match="preset 'tiny'"):
        load_acoustic(path, "lite")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="not a michi_lite acoustic checkpoint"):
        load_acoustic(truncated, "tiny")
    with pytest.raises(FileNotFoundError):
        load_acoustic(tmp_path / "missing", "tiny")


def test_say_speaks_with_an_acoustic_model_and_its_stream_is_its_whole(tmp_path, capsys, one_thread):
    import soundfile as sf

    from michi_lite.audio import save_audio, voice_prompt
    from michi_lite.say import AcousticSpeaker
    from michi_lite.vocoder import HiFiGANGenerator, load_vocoder, save_vocoder, vocoder_config

    torch.manual_seed(0)
    model_file = save_acoustic(tmp_path / "acoustic.safetensors", AcousticModel(TINY), "tiny")
    vocoder_file = save_vocoder(tmp_path / "vocoder.safetensors", HiFiGANGenerator(vocoder_config("tiny")), "tiny")
    rng = np.random.default_rng(0)
    prompt = (rng.standard_normal(2 * 16_000) * 0.3).astype(np.float32)
    speaker = AcousticSpeaker(load_acoustic(model_file, "tiny"), load_vocoder(vocoder_file, "tiny"),
                              voice_prompt(prompt, TINY.audio), steps=2)
    text = "Two sentences. The second, with a comma."
    chunks = list(speaker.stream(text))
    assert all(len(c) == TINY.audio.samples_per_frame for c in chunks[:-1])
    lag = speaker.vocoder.cfg.lookahead_samples
    assert np.allclose(np.concatenate(chunks)[lag:], AcousticSpeaker(
        speaker.model, speaker.vocoder, voice_prompt(prompt, TINY.audio), steps=2).say(text), atol=1e-5)

    save_audio(tmp_path / "voice.wav", prompt, 16_000)
    main(["say", text, "--out", str(tmp_path / "out.wav"), "--voice-prompt", str(tmp_path / "voice.wav"),
          "--preset", "tiny", "--ckpt", str(model_file), "--vocoder", str(vocoder_file)])
    wave, rate = sf.read(str(tmp_path / "out.wav"))
    assert rate == 16_000 and len(wave) > 0 and "first audio after" in capsys.readouterr().out


def test_bench_acoustic_times_each_piece_and_a_new_say_process(tmp_path):
    from michi_lite.bench import bench_acoustic

    report = bench_acoustic("tiny", runs=2, threads=1)
    frames = report["sentence_frames"]
    assert frames >= 1 and report["run"]["preset"] == "tiny"  # an untrained model says it quickly
    for k in (0, 1, 4):
        assert report[f"sentence_pass_{k}_steps"]["ms_per_frame"] * frames == pytest.approx(
            report[f"sentence_pass_{k}_steps"]["ms_median"])
    assert 0 < report["time_to_first_audio_ms"]["median"] and 0 < report["say_real_time_factor"]
    assert report["new_process_say_seconds"]["median"] > report["time_to_first_audio_ms"]["median"] / 1000
    json.dumps(report)  # plain numbers


def test_eval_acoustic_judges_its_speech_beside_the_real_audio(tiny_corpus, tmp_path, one_thread):
    from michi_lite.vocoder import HiFiGANGenerator, save_vocoder, vocoder_config

    torch.manual_seed(0)
    model_file = save_acoustic(tmp_path / "acoustic.safetensors", AcousticModel(TINY), "tiny")
    vocoder_file = save_vocoder(tmp_path / "vocoder.safetensors", HiFiGANGenerator(vocoder_config("tiny")), "tiny")
    out = tmp_path / "eval.json"
    main(["eval", "acoustic", "--preset", "tiny", "--ckpt", str(model_file), "--data", str(tiny_corpus),
          "--vocoder", str(vocoder_file), "--max-utterances", "1", "--json", str(out)])
    report = json.loads(out.read_text())
    assert set(report["groups"]) == {"seen", "unseen"}
    # each seen voice of the tiny corpus has one test utterance: none has another to be prompted with
    assert report["groups"]["seen"]["all"]["n_utterances"] == 0
    unseen = report["groups"]["unseen"]["all"]
    assert unseen["n_utterances"] == 1 and set(unseen["by_steps"]) == {"0", "1", "4"}
    assert 0 <= unseen["judge_wer_real"] < unseen["judge_wer"]  # an untrained model says nothing the judge can hear
    assert 0 <= unseen["identified_real"] <= 1 and -1 <= unseen["similarity"] <= 1
    assert report["groups"]["unseen"]["by_engine"]["espeak"]["judge_wer"] == unseen["judge_wer"]  # its one engine
    assert report["n_test_voices"] == len({r["voice"] for r in load_manifest(tiny_corpus, "test")})
    assert report["split"] == "test"

    # the validation split, to choose a setting on: its voices are all seen ones
    main(["eval", "acoustic", "--preset", "tiny", "--ckpt", str(model_file), "--data", str(tiny_corpus),
          "--vocoder", str(vocoder_file), "--max-utterances", "1", "--split", "val", "--json", str(out)])
    report = json.loads(out.read_text())
    assert report["split"] == "val" and set(report["groups"]) == {"seen"}
    assert report["n_test_voices"] == len({r["voice"] for r in load_manifest(tiny_corpus, "val")})
