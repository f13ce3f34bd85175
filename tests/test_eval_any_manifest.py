"""Every evaluation measures on a folder it was not built from: a hand-written manifest of path and text."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from michi_lite.cli import main
from michi_lite.data.corpus import load_eval_manifest, load_manifest

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clips(tiny_corpus, tmp_path_factory):
    """Three short espeak clips of the tiny corpus, copied to a folder of their own, and their records."""
    folder = tmp_path_factory.mktemp("clips")
    records = sorted((r for r in load_manifest(tiny_corpus) if r.get("phonemes")), key=lambda r: r["duration"])[:3]
    for i, record in enumerate(records):
        shutil.copyfile(tiny_corpus / record["path"], folder / f"clip{i}.flac")
    return folder, records


def write_manifest(folder, lines: list[dict]) -> None:
    (folder / "manifest.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


@pytest.fixture
def plain(clips, tmp_path):
    """A folder whose manifest says only where each clip is (one path absolute, two relative) and what it says."""
    folder, records = clips
    write_manifest(tmp_path, [{"path": str(folder / "clip0.flac"), "text": records[0]["text"]}] + [
        {"path": os.path.relpath(folder / f"clip{i}.flac", tmp_path), "text": r["text"]}
        for i, r in enumerate(records) if i > 0])
    return tmp_path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tokenizer):
    """Random-weight tiny files of every stage: each evaluation runs through, measuring nothing learnt."""
    from michi_lite.acoustic import AcousticModel, acoustic_config, save_acoustic
    from michi_lite.aligner import PhonemeClassifier, aligner_config, save_aligner
    from michi_lite.listen import build_listener, save_listener
    from michi_lite.model import build_speech_model, save_speaker
    from michi_lite.vocoder import HiFiGANGenerator, save_vocoder, vocoder_config

    out = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    return {
        "vocoder": save_vocoder(out / "vocoder.safetensors", HiFiGANGenerator(vocoder_config("tiny")), "tiny"),
        "listener": save_listener(out / "listener.safetensors", build_listener("tiny", len(tokenizer)), "tiny"),
        "speaker": save_speaker(out / "speaker.safetensors", build_speech_model("tiny", tokenizer), "tiny"),
        "acoustic": save_acoustic(out / "acoustic.safetensors", AcousticModel(acoustic_config("tiny")), "tiny"),
        "aligner": save_aligner(out / "aligner.safetensors", PhonemeClassifier(aligner_config("tiny")), "tiny"),
    }


def eval_command(stage: str, data, checkpoints: dict, json_out=None, *extra: str) -> list[str]:
    command = ["eval", stage, "--preset", "tiny", "--data", str(data), *extra]
    if stage != "alignment":
        command += ["--ckpt", str(checkpoints[stage])]
    if stage in ("speaker", "acoustic"):
        command += ["--vocoder", str(checkpoints["vocoder"])]
    return command + (["--json", str(json_out)] if json_out else [])


def run_eval(stage: str, data, checkpoints: dict, tmp_path, *extra: str) -> dict:
    out = tmp_path / f"{stage}.json"
    main(eval_command(stage, data, checkpoints, out, *extra))
    return json.loads(out.read_text())


def refusal(stage: str, data, checkpoints: dict, capsys) -> str:
    """The one line an evaluation that cannot use the manifest exits with."""
    with pytest.raises(SystemExit) as exit:
        main(eval_command(stage, data, checkpoints))
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "Traceback" not in err
    return next(line for line in err.splitlines() if line.startswith("michi-lite: error:"))


def test_a_plain_manifest_is_filled_in_as_one_held_out_voice_of_test_clips(clips, plain):
    folder, _ = clips
    records = load_eval_manifest(plain)
    assert [r["path"] for r in records] == [str((folder / f"clip{i}.flac").resolve()) for i in range(3)]
    assert {(r["split"], r["voice"], r["voice_split"], r["engine"], r["category"]) for r in records} == {
        ("test", "unknown", "unseen", "unknown", "")}
    assert len({r["id"] for r in records}) == 3


def test_a_manifest_that_names_voices_and_splits_keeps_them(clips, tmp_path):
    folder, records = clips
    write_manifest(tmp_path, [{"path": str(folder / f"clip{i}.flac"), "text": r["text"], "voice": f"v{i % 2}",
                               "split": "train" if i == 2 else "test"} for i, r in enumerate(records)])
    test = load_eval_manifest(tmp_path)
    assert [r["voice"] for r in test] == ["v0", "v1"] and {r["voice_split"] for r in test} == {"unseen"}
    assert len(load_eval_manifest(tmp_path, split=None)) == 3


@pytest.mark.parametrize("stage", ["alignment", "vocoder", "listener", "speaker", "acoustic", "aligner"])
def test_every_eval_refuses_a_line_without_text_in_one_line_naming_it(stage, plain, checkpoints, capsys):
    lines = [json.loads(line) for line in (plain / "manifest.jsonl").read_text().splitlines()]
    del lines[1]["text"]
    write_manifest(plain, lines)
    assert "manifest.jsonl line 2: no 'text' field" in refusal(stage, plain, checkpoints, capsys)


def test_eval_alignment_times_given_words_with_whisper_and_asks_for_words_it_lacks(clips, plain, checkpoints,
                                                                                   tmp_path, capsys):
    assert "no line of the manifest has 'words'" in refusal("alignment", plain, checkpoints, capsys)
    _, records = clips
    lines = [json.loads(line) for line in (plain / "manifest.jsonl").read_text().splitlines()]
    write_manifest(plain, [{**line, "words": r["words"]} for line, r in zip(lines, records)])
    report = run_eval("alignment", plain, checkpoints, tmp_path)
    assert set(report["engines"]) == {"unknown"}
    assert report["all"]["n_words"] > 0 and 0 <= report["all"]["median_ms"] < 1000  # the same speech's words


def test_eval_vocoder_measures_the_test_lines_of_a_hand_written_manifest(clips, checkpoints, tmp_path):
    folder, records = clips
    write_manifest(tmp_path, [{"path": os.path.relpath(folder / f"clip{i}.flac", tmp_path), "text": r["text"],
                               "voice": "someone", "split": "train" if i == 2 else "test"}
                              for i, r in enumerate(records)])
    report = run_eval("vocoder", tmp_path, checkpoints, tmp_path)
    assert set(report["groups"]) == {"unseen"} and report["n_utterances"] == 2  # the train line is left out
    group = report["groups"]["unseen"]
    assert 0 <= group["judge_wer_original"] < 1 and group["griffin_lim"]["stoi"] > 0


def test_eval_listener_times_the_words_of_a_plain_manifest_with_whisper(plain, checkpoints, tmp_path):
    report = run_eval("listener", plain, checkpoints, tmp_path, "--max-utterances", "1")
    result = report["groups"]["held_out"]["all"]
    assert set(report["groups"]) == {"held_out"} and result["n_utterances"] == 1  # one engine: "unknown"
    assert set(report["groups"]["held_out"]["engines"]) == {"unknown"}
    assert result["wer_whisper_offline"] < 1 and result["token_frame_accuracy"] >= 0
    assert report["groups"]["held_out"]["plain"]["n_utterances"] == 1  # no category: a plain sentence


def test_eval_speaker_prompts_each_line_with_another_of_the_one_unknown_voice(plain, checkpoints, tmp_path):
    report = run_eval("speaker", plain, checkpoints, tmp_path, "--max-utterances", "1")
    assert set(report["groups"]) == {"unseen"} and report["n_test_voices"] == 1
    result = report["groups"]["unseen"]["all"]
    assert result["n_utterances"] == 1 and result["judge_wer_real"] < 1
    assert result["speaker_id_accuracy"] == 1.0  # one voice to choose from


def test_eval_acoustic_speaks_the_lines_of_a_plain_manifest(plain, checkpoints, tmp_path):
    report = run_eval("acoustic", plain, checkpoints, tmp_path, "--max-utterances", "1")
    assert set(report["groups"]) == {"unseen"} and report["voices"] == ["unknown"]
    result = report["groups"]["unseen"]["all"]
    assert result["n_utterances"] == 1 and result["judge_wer_real"] < 1
    assert result["judge_wer_engine_timed"] is None  # no phonemes given: nothing timed by the engine


def test_eval_aligner_asks_for_phonemes_and_measures_against_them(clips, plain, checkpoints, tmp_path, capsys):
    assert "no test utterance has 'phonemes'" in refusal("aligner", plain, checkpoints, capsys)
    _, records = clips
    lines = [json.loads(line) for line in (plain / "manifest.jsonl").read_text().splitlines()]
    write_manifest(plain, [{**line, "phonemes": r["phonemes"]} for line, r in zip(lines, records)])
    report = run_eval("aligner", plain, checkpoints, tmp_path)
    group = report["groups"]["unseen"]
    assert group["n_utterances"] == 3 and group["n_voices"] == 1 and group["n_borders"] > 0
    assert 0 <= group["column_accuracy"] <= 1
