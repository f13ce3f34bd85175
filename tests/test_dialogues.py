import json
import math
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from michi_lite.cli import main
from michi_lite.config import FRAME_SECONDS, get_config
from michi_lite.data import dialogues as dialogues_module
from michi_lite.data.dialogues import (BACKCHANNEL_RATE, CHANNELS, HELD_OUT_QUESTIONS, INTERRUPTION_RATE,
                                       OVERLAP_SECONDS, REACTION_FRAMES, LlmAnswers, is_held_out, load_dialogues,
                                       plan_dialogues, speakable_answer, speaking_frames)
from michi_lite.data.dialogue_lines import FACT_BASE, GENERAL_QUESTIONS, INTERJECTIONS, memory_lines
from michi_lite.data.engines import all_voices
from michi_lite.data.words import normalize_text

SPEECH_RMS = 0.02  # every turn is peak-normalised to 0.9: speech is far above this
SILENCE_PEAK = 1e-3  # a channel where nobody speaks holds zeros


@pytest.fixture(scope="module")
def dialogues(tiny_dialogues):
    return tiny_dialogues


def stereo(folder: Path, record: dict) -> np.ndarray:
    audio, _ = sf.read(str(folder / record["path"]), dtype="float32", always_2d=True)
    return audio.T  # (channels, samples)


def span(turn: dict, rate: int, margin: int = 0) -> slice:
    """A turn's samples; ``margin`` more each side forgives times rounded to 0.1 ms (1.6 samples at 16 kHz)."""
    return slice(max(0, round(turn["start"] * rate) - margin), round(turn["end"] * rate) + margin)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x**2)))


def test_the_cli_builds_stereo_dialogues_of_every_kind_at_the_preset_rate(dialogues):
    records = load_dialogues(dialogues)
    assert len(records) == get_config("tiny").dialogues.max_dialogues
    for r in records:
        info = sf.info(str(dialogues / r["path"]))
        assert info.channels == 2 and info.samplerate == r["sample_rate"] == 16_000
        assert abs(info.frames / info.samplerate - r["duration"]) < 1e-3
        assert r["answers"] == "templates" and r["assistant_voice"] == "flite-awb"
        assert [t["start"] for t in r["turns"]] == sorted(t["start"] for t in r["turns"])
    kinds = {t["kind"] for r in records for t in r["turns"]}
    assert kinds == {"question", "recall", "request", "small_talk", "fact", "backchannel", "answer"}
    assert len({r["user_voice"] for r in records}) >= 4 and len({r["user_engine"] for r in records}) == 3
    summary = json.loads((dialogues / "dialogues.json").read_text())
    assert summary["dialogues"] == len(records) and summary["answers_by_llm"] == 0


def test_the_assistant_answers_what_the_user_told_it_and_the_rag_holds_the_facts_asked_for(dialogues):
    fact_of = {line.answer: line.fact for line in FACT_BASE}
    recalled = grounded = 0
    for r in load_dialogues(dialogues):
        said = [t for t in r["turns"] if t["kind"] != "backchannel"]
        for n, turn in enumerate(said):
            if turn["kind"] == "recall":
                told = next(t for t in said[:n] if t["kind"] == "fact")  # told before it is asked
                thing = normalize_text(told["text"]).split()[-1]  # "my sister's name is ada" -> "ada"
                assert said[n + 1]["channel"] == "assistant" and thing in normalize_text(said[n + 1]["text"])
                recalled += 1
            if turn["channel"] == "assistant" and turn["text"] in fact_of:
                assert fact_of[turn["text"]] in r["rag"]
                grounded += 1
    assert recalled >= 2 and grounded >= 2


def test_each_turn_is_heard_in_its_own_channel_and_nowhere_else(dialogues):
    for r in load_dialogues(dialogues):
        audio, rate = stereo(dialogues, r), r["sample_rate"]
        for channel, wave in zip(CHANNELS, audio):
            spoken = np.zeros(len(wave), dtype=bool)
            for turn in (t for t in r["turns"] if t["channel"] == channel):
                assert rms(wave[span(turn, rate)]) > SPEECH_RMS, (r["id"], turn["text"])
                spoken[span(turn, rate, margin=2)] = True
            assert np.abs(wave[~spoken]).max() < SILENCE_PEAK, (r["id"], channel)


def test_splits_are_disjoint_by_dialogue_and_unseen_user_voices_speak_only_in_test(dialogues):
    records = load_dialogues(dialogues)
    ids = {split: {r["id"] for r in load_dialogues(dialogues, split)} for split in ("train", "val", "test")}
    assert all(ids.values()) and sum(map(len, ids.values())) == len(records) == len({r["path"] for r in records})
    assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])
    unseen = {r["user_speaker"] for r in records if r["voice_split"] == "unseen"}
    assert unseen and all(r["split"] == "test" for r in records if r["user_speaker"] in unseen)
    assert not unseen & {r["user_speaker"] for r in records if r["voice_split"] == "seen"}
    assert {r["voice_split"] for r in records if r["split"] == "test"} == {"seen", "unseen"}  # to compare them
    assistant = next(v for v in all_voices() if v.name == "flite-awb").speaker
    assert assistant not in {r["user_speaker"] for r in records}


def test_an_interruption_cuts_the_assistant_off_and_a_backchannel_does_not(dialogues):
    interruptions = backchannels = 0
    for r in load_dialogues(dialogues):
        audio, rate = stereo(dialogues, r), r["sample_rate"]
        turns = r["turns"]
        answers = [t for t in turns if t["channel"] == "assistant"]
        for n, answer in enumerate(answers):
            if not answer["interrupted"]:
                continue
            interruptions += 1
            cut_in = next(t for t in turns if t["channel"] == "user" and t["start"] > answer["start"])
            assert cut_in["interjected"] and cut_in["text"].split()[0] in INTERJECTIONS
            frames = (answer["end"] - cut_in["start"]) / FRAME_SECONDS
            assert REACTION_FRAMES[0] - 0.01 < frames < REACTION_FRAMES[1] + 0.01
            assert abs(frames - round(frames)) < 0.01  # a whole number of 80 ms frames after the user starts
            silent = slice(span(answer, rate).stop + 2, span(answers[n + 1], rate, margin=2).start)
            assert np.abs(audio[1, silent]).max() < SILENCE_PEAK
            heard, meant = normalize_text(answer["heard_text"]).split(), normalize_text(answer["text"]).split()
            assert 0 < len(heard) < len(meant) and meant[:len(heard)] == heard
            assert [w["word"] for w in answer["words"]] == answer["heard_text"].split()
            assert all(w["end"] <= answer["end"] for w in answer["words"])
        for nod in (t for t in turns if t["kind"] == "backchannel"):
            backchannels += 1
            answer = next(a for a in answers if a["start"] < nod["start"] and nod["end"] < a["end"])
            assert not answer["interrupted"]
            assert rms(audio[1, round(nod["end"] * rate):round(answer["end"] * rate)]) > SPEECH_RMS  # it goes on
            assert any(w["end"] > nod["end"] + 0.1 for w in answer["words"])  # still in a word after the nod
        for turn in (t for t in turns if t["channel"] == "user"):  # "Sorry, ..." is marked, cut answer or not
            assert turn["interjected"] == (turn["text"].split()[0] in INTERJECTIONS)
    assert interruptions >= 2 and backchannels >= 2


def test_turns_change_with_varied_gaps_some_a_long_silence_some_a_slight_overlap(dialogues):
    gaps = []
    for r in load_dialogues(dialogues):
        said = [t for t in r["turns"] if t["kind"] != "backchannel"]
        gaps += [b["start"] - a["end"] for a, b in zip(said, said[1:]) if not a["interrupted"]]
    assert min(gaps) < 0 and max(gaps) > 1.0
    assert min(gaps) >= -OVERLAP_SECONDS[1] - 1e-3


def test_word_timings_lie_inside_their_turns_and_spell_its_text(dialogues):
    for r in load_dialogues(dialogues):
        for turn in r["turns"]:
            words = turn["words"]
            assert words and all(turn["start"] <= w["start"] < w["end"] <= turn["end"] for w in words)
            assert [w["start"] for w in words] == sorted(w["start"] for w in words)
            said = turn["heard_text"] if turn["interrupted"] else turn["text"]
            assert normalize_text(" ".join(w["word"] for w in words)) == normalize_text(said)


def test_speaking_frames_lay_the_turns_on_the_80_ms_clock(dialogues):
    r = load_dialogues(dialogues)[0]
    speaking = speaking_frames(r)
    assert speaking.shape == (2, math.ceil(r["duration"] / FRAME_SECONDS - 1e-9)) and speaking.dtype == bool
    first = min(t["start"] for t in r["turns"])
    assert not speaking[:, : int(first / FRAME_SECONDS)].any()
    for turn in r["turns"]:
        middle = int((turn["start"] + turn["end"]) / 2 / FRAME_SECONDS)
        assert speaking[CHANNELS.index(turn["channel"]), middle]
    for row, channel in enumerate(CHANNELS):
        seconds = sum(t["end"] - t["start"] for t in r["turns"] if t["channel"] == channel)
        turns = sum(t["channel"] == channel for t in r["turns"])
        assert seconds / FRAME_SECONDS <= speaking[row].sum() <= seconds / FRAME_SECONDS + 2 * turns


def planned_content(record: dict) -> tuple:
    """What the plan decides of a dialogue: all but the exact timing, which espeak-ng jitters by milliseconds
    from one call to the next whatever is seeded (and a few ms can move a backchannel's room or a cut word)."""
    said = tuple((t["channel"], t["kind"], t["text"]) for t in record["turns"] if t["kind"] != "backchannel")
    return record["id"], record["split"], record["voice_split"], record["user_voice"], record["rag"], said


def test_rerunning_skips_finished_dialogues_and_a_killed_build_resumes_to_the_same_result(dialogues, tmp_path):
    folder = tmp_path / "dialogues"
    shutil.copytree(dialogues, folder)
    manifest = folder / "manifest.jsonl"
    before = manifest.read_text()
    records = [json.loads(line) for line in before.splitlines()]
    stamps = {r["id"]: (folder / r["path"]).stat().st_mtime_ns for r in records}

    main(["data", "dialogues", "--preset", "tiny", "--out", str(folder)])
    assert manifest.read_text() == before
    assert {r["id"]: (folder / r["path"]).stat().st_mtime_ns for r in records} == stamps  # nothing spoken again

    # killed in the sixth dialogue: its line cut short, the last two never made, the final manifest not written
    partial = folder / "manifest.partial.jsonl"
    lines = partial.read_text().splitlines(keepends=True)
    partial.write_text("".join(lines[:5]) + lines[5][:40])
    lost = records[5:]
    for r in lost:
        (folder / r["path"]).unlink()
    manifest.unlink()
    main(["data", "dialogues", "--preset", "tiny", "--out", str(folder)])
    after = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert after[:5] == records[:5]  # the finished dialogues as they were, not spoken again
    assert all((folder / r["path"]).stat().st_mtime_ns == stamps[r["id"]] for r in records[:5])
    assert [planned_content(r) for r in after] == [planned_content(r) for r in records]
    for old, new in zip(lost, after[5:]):
        assert abs(new["duration"] - old["duration"]) < 0.5
        assert abs(stereo(folder, new).shape[1] - new["duration"] * new["sample_rate"]) <= 1  # duration to 0.1 ms


def test_a_build_will_not_mix_answer_sources(dialogues, tmp_path):
    shutil.copyfile(dialogues / "manifest.partial.jsonl", tmp_path / "manifest.partial.jsonl")
    (tmp_path / "audio").mkdir()
    first = json.loads((dialogues / "manifest.partial.jsonl").read_text().splitlines()[0])
    shutil.copyfile(dialogues / first["path"], tmp_path / first["path"])
    cfg = get_config("tiny")
    with pytest.raises(ValueError, match="answered by templates, not llm"):
        dialogues_module.build_dialogues(replace(cfg, dialogues=replace(cfg.dialogues, answers="llm")), tmp_path)


def test_a_build_will_not_resume_a_directory_built_with_another_plan(dialogues, tmp_path):
    folder = tmp_path / "dialogues"
    shutil.copytree(dialogues, folder)
    cfg = get_config("tiny")
    reseeded = replace(cfg, dialogues=replace(cfg.dialogues, seed=1))
    problem = rf"{re.escape(str(folder))} was built with another plan or config: its dialogue .*another --out"
    with pytest.raises(ValueError, match=problem):
        dialogues_module.build_dialogues(reseeded, folder)


def break_turn_end(record: dict) -> None:
    record["turns"][-1]["end"] = record["duration"] + 1.0


def overlap_user_turns(record: dict) -> None:
    first, second = [t for t in record["turns"] if t["channel"] == "user"][:2]
    first["end"] = second["start"] + 0.2


def drop_assistant(record: dict) -> None:
    record["turns"] = [t for t in record["turns"] if t["channel"] == "user"]


def words_past_turn(record: dict) -> None:
    record["turns"][0]["words"][-1]["end"] = record["turns"][0]["end"] + 0.5


def first_answer(record: dict) -> dict:
    return next(t for t in record["turns"] if t["channel"] == "assistant")


@pytest.mark.parametrize("breaking, problem", [
    (lambda r: r.pop("turns"), "no 'turns' field"),
    (lambda r: r["turns"][0].pop("words"), r"turn 0: no 'words' field"),
    (lambda r: r.update(split="holdout"), "'split' should be one of train, val, test"),
    (break_turn_end, "outside the clip"),
    (overlap_user_turns, "the user starts at .* while still speaking"),
    (drop_assistant, "no assistant turn: a dialogue needs both channels"),
    (words_past_turn, "turn 0: words outside the turn"),
    (lambda r: r.pop("user_speaker"), "no 'user_speaker' field"),
    (lambda r: r.update(user_engine=3), "'user_engine' should be a string"),
    (lambda r: r["turns"][0].update(kind="answer"), "turn 0: kind 'answer' does not fit the user channel"),
    (lambda r: first_answer(r).update(kind="question"), "kind 'question' does not fit the assistant channel"),
    (lambda r: r["turns"][0].pop("interjected"), "turn 0: a user turn must say whether it is 'interjected'"),
    (lambda r: first_answer(r).pop("answer_source"), "an answer must say its 'answer_source'"),
    (lambda r: first_answer(r).update(answer_source="gpt"), "'answer_source' should be one of llm, templates"),
    (lambda r: r["turns"][0].update(heard_text="Hi"), "turn 0: a turn that is not interrupted has no 'heard_text'"),
    (lambda r: first_answer(r).update(interrupted=True), "an interrupted turn must be the assistant's and say its"),
    ("mono", r"has 1 channel\(s\), not 2"),
    ("missing", "its audio audio/000000.flac is missing"),
])
def test_a_bad_manifest_line_is_refused_with_the_file_line_and_problem(dialogues, tmp_path, breaking, problem):
    record = json.loads((dialogues / "manifest.jsonl").read_text().splitlines()[0])
    (tmp_path / "audio").mkdir()
    if breaking == "mono":
        sf.write(str(tmp_path / record["path"]), stereo(dialogues, record)[0], record["sample_rate"])
    elif breaking != "missing":
        shutil.copyfile(dialogues / record["path"], tmp_path / record["path"])
        breaking(record)
    (tmp_path / "manifest.jsonl").write_text(json.dumps(record) + "\n")
    with pytest.raises(ValueError, match=rf"manifest\.jsonl line 1\b.*{problem}"):
        load_dialogues(tmp_path)


def test_the_plan_is_deterministic_holds_voices_out_and_draws_events_at_the_named_rates():
    cfg = replace(get_config("lite"), dialogues=replace(get_config("lite").dialogues, max_dialogues=600))
    voices = all_voices()
    planned = list(plan_dialogues(cfg, voices))
    assert planned == list(plan_dialogues(cfg, voices))
    reseeded = replace(cfg, dialogues=replace(cfg.dialogues, seed=1))
    assert [d.exchanges for d in plan_dialogues(reseeded, voices)] != [d.exchanges for d in planned]

    unseen = {d.user_voice.speaker for d in planned if d.voice_split == "unseen"}
    assert len(unseen) == cfg.dialogues.unseen_user_voices
    assert all(d.split == "test" for d in planned if d.user_voice.speaker in unseen)
    assert {d.user_voice.engine for d in planned} >= {"espeak", "flite", "festival"}

    events = [(e.event, i + 1 < len(d.exchanges)) for d in planned for i, e in enumerate(d.exchanges)]
    followed = [event for event, has_next in events if has_next]
    assert abs(followed.count("interrupted") / len(followed) - INTERRUPTION_RATE) < 0.03
    assert abs(sum(event == "backchannel" for event, _ in events) / len(events) - BACKCHANNEL_RATE) < 0.03
    for d in planned:  # a dialogue's rag prefix holds every fact its questions ask about
        assert all(e.line.fact in d.rag for e in d.exchanges if e.line.fact)
    # a question with one right answer asked in val or test is never asked in train: its answer is not learnt
    asked = {split: {e.line.text for d in planned if d.split == split for e in d.exchanges
                     if e.line.kind == "question" and e.line.key} for split in ("train", "val", "test")}
    assert asked["test"] and asked["val"] and not (asked["test"] | asked["val"]) & asked["train"]
    for pool in (FACT_BASE, GENERAL_QUESTIONS):  # a quarter of each pool, rounded up, is kept for val and test
        assert sum(map(is_held_out, pool)) == math.ceil(len(pool) / HELD_OUT_QUESTIONS)
    assert sum(map(is_held_out, GENERAL_QUESTIONS)) >= 2
    assert not any(is_held_out(e.line) for d in planned if d.split == "train" for e in d.exchanges)


def test_every_template_answer_says_what_its_question_asks_for():
    rng = np.random.default_rng(0)
    memories = [line for _ in range(50) for line in memory_lines(rng)]
    lines = [*FACT_BASE, *GENERAL_QUESTIONS, *memories]
    assert all(line.key for line in lines if line.kind in ("question", "recall"))
    assert all(dialogues_module.mentions(line.answer, line.key) for line in lines)
    assert len({line.fact for line in FACT_BASE}) >= 24  # a few dozen facts


def test_llm_answers_are_made_speakable_or_replaced_by_the_template(monkeypatch):
    assert speakable_answer("**Sure!** The library opens at nine.\nMore below.") == "Sure! The library opens at nine."
    assert speakable_answer("It\u2019s a lovely day \u2014 enjoy it\u2026") == "It's a lovely day, enjoy it."
    assert speakable_answer("The pool closes at nine in the evening. It also has a") == \
        "The pool closes at nine in the evening."
    assert speakable_answer("Yes.") is None and speakable_answer(" ".join(["word"] * 30) + ".") is None

    cfg = get_config("tiny")
    dialogue = next(d for d in plan_dialogues(cfg, all_voices()) if d.rag)
    exchange = next(e for e in dialogue.exchanges if e.line.fact)
    asked: list[list[dict]] = []
    llm = LlmAnswers()

    def reply_with(text: str):
        def generate(messages):
            asked.append(messages)
            return text
        return generate

    monkeypatch.setattr(llm, "generate", reply_with("I think it is somewhere in town, honestly."))
    assert llm(dialogue, [("Hello there.", "Hi, how can")], exchange) == (exchange.line.answer, "templates")
    assert dialogue.rag in asked[-1][0]["content"] and asked[-1][2] == {"role": "assistant", "content": "Hi, how can"}
    assert asked[-1][-1] == {"role": "user", "content": exchange.text}
    monkeypatch.setattr(llm, "generate", reply_with(f"Well, {exchange.line.answer} Have a nice day!"))
    answer, source = llm(dialogue, [], exchange)
    assert source == "llm" and answer == f"Well, {exchange.line.answer} Have a nice day!" and llm.fallbacks == 1
    assert dialogues_module.answer_source("templates")(dialogue, [], exchange) == (exchange.line.answer, "templates")
