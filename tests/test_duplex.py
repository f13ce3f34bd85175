"""The duplex engine: 80 ms in, 80 ms out, every stage timed, in constant memory however long it runs."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from michi_lite.duplex import HEAD_STEPS, STAGES, VOICE_STEPS, DuplexEngine, FrameRecord, SpokenWord
from michi_lite.listen import build_listener
from michi_lite.model import build_speech_model
from michi_lite.vocoder import IstftGenerator, vocoder_config
from michi_lite.voicing import MAX_LAG_FRAMES

pytestmark = pytest.mark.usefixtures("one_thread")

ISTFT = replace(vocoder_config("tiny"), arch="istft")


def engine(tokenizer, steps: int | None = 1, **options) -> DuplexEngine:
    torch.manual_seed(0)
    model = build_speech_model("tiny", tokenizer).merge_adapters()
    listener = build_listener("tiny", len(tokenizer), pretrained=False)
    vocoder = IstftGenerator(ISTFT)
    voice = torch.randn(30, model.cfg.patch_dim)
    return DuplexEngine(model, listener, vocoder, tokenizer, voice, steps=steps, **options)


@pytest.fixture(scope="module")
def duplex(tokenizer):
    return engine(tokenizer, context_frames=8)


def test_each_step_turns_80_ms_of_the_user_into_80_ms_of_the_model_and_logs_every_stage(duplex):
    duplex.reset()
    rng = np.random.default_rng(0)
    outs = [duplex.step(0.1 * rng.standard_normal(duplex.samples_in).astype(np.float32)) for _ in range(5)]
    assert all(o.shape == (duplex.model.cfg.audio.samples_per_frame,) and o.dtype == np.float32 for o in outs)
    assert [r.index for r in duplex.log] == list(range(5))
    assert all(r.sounding is None for r in duplex.log)  # the speech model's own head: no phonemes to say it by
    assert all(set(r.seconds) == set(STAGES) and r.total_seconds > 0 for r in duplex.log)
    assert isinstance(duplex.said("model"), str) and isinstance(duplex.said("user"), str)


def test_what_a_side_said_joins_its_turns_with_a_space(duplex, tokenizer):
    duplex.reset()
    pad, end = duplex.model.pad_id, duplex.model.end_id
    model = [pad, *tokenizer.encode("It opens at ten."), end, pad, *tokenizer.encode("I'm glad."), end, end]
    duplex.log = [FrameRecord(i, pad, token) for i, token in enumerate(model)]
    assert duplex.said("model") == "It opens at ten. I'm glad."
    assert duplex.said("model", first=len(model) - 4) == "glad."
    assert duplex.said("user") == ""
    duplex.reset()


def test_a_long_conversation_keeps_its_state_the_same_size(duplex):
    duplex.reset()
    silence = np.zeros(duplex.samples_in, dtype=np.float32)
    sizes = []
    for i in range(30):  # past the 8-frame window several times
        duplex.step(silence)
        if i in (9, 29):
            sizes.append((duplex.cache.keys.shape, duplex.hearing.cache_numel(), duplex.speaking.cache_numel()))
    assert sizes[0] == sizes[1] and duplex.cache.keys.shape[3] == 8


def test_the_same_seed_says_the_same_and_a_reset_starts_again(tokenizer):
    rng = np.random.default_rng(1)
    first = engine(tokenizer)
    frames = [0.1 * rng.standard_normal(first.samples_in).astype(np.float32) for _ in range(6)]
    once = [first.step(f) for f in frames]
    first.reset()
    again = [first.step(f) for f in frames]
    assert all(np.array_equal(a, b) for a, b in zip(once, again))


def test_the_text_stream_speaks_at_the_model_s_odds_and_draws_its_words_from_the_likeliest(tokenizer):
    sampler = engine(tokenizer)
    pad, end = sampler.model.pad_id, sampler.model.end_id
    vocab = len(tokenizer)
    odds = torch.full((vocab,), 1e-9)
    odds[pad], odds[end] = 0.5, 0.1
    odds[100:140] = torch.linspace(0.02, 0.0, 40) + 1e-9  # a tail of words, the likeliest first
    odds /= odds.sum()
    logits, tally = odds.log(), {}

    def draws(n: int, **settings) -> torch.Tensor:
        sampler.temperature, sampler.top_k = settings["temperature"], settings["top_k"]
        sampler.generator.manual_seed(0)
        return torch.tensor([sampler.sampled(logits) for _ in range(n)])

    for settings in ({"temperature": 0.7, "top_k": 5}, {"temperature": 0.0, "top_k": 5},
                     {"temperature": 1.0, "top_k": None}):
        tally[settings["temperature"]] = drawn = draws(4000, **settings)
        assert abs((drawn == pad).float().mean() - 0.5) < 0.03  # when to speak: the model's odds, however words
        assert abs((drawn == end).float().mean() - 0.1) < 0.02  # are drawn
    words = tally[0.7][(tally[0.7] != pad) & (tally[0.7] != end)]
    assert set(words.tolist()) <= set(range(100, 105)) and len(set(words.tolist())) > 1  # the 5 likeliest
    assert set(tally[0.0].tolist()) == {pad, end, 100}  # 0: the likeliest word
    whole = tally[1.0]
    assert abs((whole >= 120).float().mean() - odds[120:140].sum()) < 0.02  # 1, from all: the model's own odds


def test_no_word_is_drawn_that_would_say_a_run_of_the_turn_again(tokenizer):
    sampler = engine(tokenizer, temperature=0.0, top_k=3)
    pad, end = sampler.model.pad_id, sampler.model.end_id
    logits = torch.full((len(tokenizer),), -30.0)
    logits[[102, 103, 104]] = torch.tensor([5.0, 4.0, 3.0])  # 102 the likeliest word; the model always speaks

    def drawn(turn: list[int], **settings) -> int:
        sampler.turn.clear()
        sampler.turn.extend(turn)
        sampler.no_repeat, sampler.top_k = settings.get("no_repeat", 3), settings.get("top_k", 3)
        return sampler.sampled(logits)

    said = [100, 101, 102, 7, 100, 101]  # "100 101" came before, followed by 102
    assert drawn(said) == 103 and drawn(said, no_repeat=0) == 102  # 0: repeats allowed
    assert drawn(said[:-1] + [9]) == 102  # not the same run
    assert drawn(said, top_k=1) == 102  # nothing else left to say: the repeat rather than nothing
    assert drawn([102, 102], no_repeat=2) == 103 and drawn([102], no_repeat=1) == 103
    sampler.reset()
    sampler.model.text_bias.data[pad] = -1e4  # this random model would rather say anything than nothing
    sampler.model.text_bias.data[end] = -1e4
    for _ in range(6):
        sampler.step(np.zeros(sampler.samples_in, dtype=np.float32))
    assert list(sampler.turn) == [r.model_token for r in sampler.log]  # what the turn has said, as logged
    sampler.model.text_bias.data[end] = 1e4
    sampler.step(np.zeros(sampler.samples_in, dtype=np.float32))
    assert sampler.log[-1].model_token == end and not sampler.turn  # a new turn may say anything


def test_a_turn_longer_than_the_cap_is_ended(tokenizer):
    talker = engine(tokenizer, max_talk_frames=3, temperature=1.0)
    end, pad = talker.model.end_id, talker.model.pad_id
    talker.model.text_bias.data[pad] = -1e4  # this random model would rather say anything than nothing
    talker.model.text_bias.data[end] = -1e4
    for _ in range(12):
        talker.step(np.zeros(talker.samples_in, dtype=np.float32))
    said = [r.model_token for r in talker.log]
    assert said.count(end) >= 2 and all(t != pad for t in said)
    turns = "".join("e" if t == end else "w" for t in said).split("e")
    assert max(len(turn) for turn in turns) <= 3


def test_bad_input_is_refused_with_a_clear_error(duplex):
    with pytest.raises(ValueError, match="mono samples"):
        duplex.step(np.zeros((2, duplex.samples_in), dtype=np.float32))
    with pytest.raises(ValueError, match="mono samples"):
        duplex.step(np.zeros(duplex.samples_in + 1, dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        duplex.step(np.full(duplex.samples_in, np.nan, dtype=np.float32))


def test_a_word_s_phonemes_are_filled_in_as_its_tokens_come():
    word = SpokenWord(max_phonemes=24)
    kept = word.start(" inter")
    before = list(kept)
    word.extend("ruption")
    assert kept is word.ids and len(kept) > len(before)  # the list the head reads was rewritten in place


def test_chat_writes_both_sides_lined_up_and_a_timeline(tokenizer, tiny_corpus, tmp_path, capsys):
    import json

    import soundfile as sf

    from michi_lite.cli import main
    from michi_lite.data.corpus import load_manifest
    from michi_lite.acoustic import AcousticModel, acoustic_config, save_acoustic
    from michi_lite.listen import save_listener
    from michi_lite.model import save_speaker
    from michi_lite.vocoder import save_vocoder

    torch.manual_seed(0)
    speaker = save_speaker(tmp_path / "speaker.safetensors", build_speech_model("tiny", tokenizer), "tiny")
    acoustic = save_acoustic(tmp_path / "acoustic.safetensors", AcousticModel(acoustic_config("tiny")), "tiny")
    listener = save_listener(tmp_path / "listener.safetensors",
                             build_listener("tiny", len(tokenizer), pretrained=False), "tiny")
    vocoder = save_vocoder(tmp_path / "vocoder.safetensors", IstftGenerator(ISTFT), "tiny")
    record = load_manifest(tiny_corpus)[0]
    said = tiny_corpus / record["path"]
    main(["chat", str(said), "--out", str(tmp_path / "chat.wav"), "--preset", "tiny", "--ckpt", str(speaker),
          "--listener", str(listener), "--vocoder", str(vocoder), "--voice-prompt", str(said),
          "--acoustic", str(acoustic), "--tail-seconds", "0.4", "--max-talk-seconds", "1"])
    both, rate = sf.read(tmp_path / "chat.wav", always_2d=True)
    timeline = json.loads((tmp_path / "chat.json").read_text())
    assert both.shape[1] == 2 and rate == 16000
    assert timeline["frames"] == len(timeline["log"]) == round(record["duration"] / 0.08 + 0.5) + 5
    assert abs(both.shape[0] - timeline["frames"] * 1280) <= 1280
    assert "frame step took" in capsys.readouterr().out


@pytest.fixture(scope="module")
def dialogues(tiny_dialogues):
    return tiny_dialogues


def test_eval_joint_reads_answers_gaps_and_stops_off_the_frame_log(duplex, tokenizer):
    from michi_lite.duplex import FrameRecord
    from michi_lite.eval_joint import read_dialogue

    model = duplex.model
    pad, end = model.pad_id, model.end_id
    answer = tokenizer(" The museum is on River Road", add_special_tokens=False)["input_ids"]
    tokens = [pad] * 60
    tokens[20:20 + len(answer)] = answer  # answered on frame 20, after a question that ended at 1.0 s
    tokens[40:43] = tokenizer(" I think", add_special_tokens=False)["input_ids"][:2] + [pad]
    tokens[45] = end  # cut in on at frame 42 (3.36 s): stops 3 frames later
    duplex.log = [FrameRecord(i, pad, t, {}) for i, t in enumerate(tokens)]
    record = {"id": "x", "turns": [
        {"channel": "user", "kind": "question", "text": "Where is the museum?", "start": 0.2, "end": 1.0,
         "interjected": False},
        {"channel": "user", "kind": "question", "text": "Sorry, what is your name?", "start": 3.36, "end": 4.0,
         "interjected": True}]}
    first, second = read_dialogue(duplex, record)["events"]
    lag = model.cfg.text_lead_frames * 0.08 + duplex.vocoder.cfg.lookahead_samples / 16000
    assert first["correct"] and first["gap_seconds"] == pytest.approx(21 * 0.08 + lag - 1.0)
    assert second["talking_at_start"] and second["stop_frames"] == 3 and "correct" not in second
    # an acoustic voice logs the frames it sounds in: the answer's audio starts on the first after its token
    duplex.log = [FrameRecord(i, pad, t, {}, sounding=i in (24, 25, 26)) for i, t in enumerate(tokens)]
    duplex.voicer, voicer = object(), duplex.voicer
    try:
        first, _ = read_dialogue(duplex, record)["events"]
    finally:
        duplex.voicer = voicer
    vocoder_lag = duplex.vocoder.cfg.lookahead_samples / 16000
    assert first["gap_seconds"] == pytest.approx(25 * 0.08 + vocoder_lag - 1.0)
    assert first["answer_seconds"][0] == pytest.approx(24 * 0.08)


def test_eval_joint_streams_the_held_out_dialogues_and_summarizes_them(dialogues, tokenizer):
    from michi_lite.eval_joint import evaluate_joint

    full_model = build_speech_model("tiny", tokenizer)
    report = evaluate_joint(engine(tokenizer, context_frames=256), dialogues, full_model=full_model,
                            text_baseline=False, tail_seconds=0.5)
    assert report["dialogues"] == len(report["per_dialogue"]) > 0 and report["turns"] > 0
    assert report["spoken_qa_questions"] >= 0 and report["text_qa_accuracy"] is None
    assert report["far_text_perplexity"]["ratio"] == pytest.approx(1.0)  # fresh adapters change nothing
    judged = [e for d in report["per_dialogue"] for e in d["events"] if "answer_heard" in e]
    assert report["answers_judged"] == len(judged)
    assert report["judge_wer"] is None if not judged else report["judge_wer"] >= 0
    assert report["answers_repeating_a_run"] is None or 0 <= report["answers_repeating_a_run"] <= 1


def test_an_answer_repeats_itself_when_it_says_a_run_of_three_words_twice():
    from michi_lite.eval_joint import repeats_a_run

    assert repeats_a_run("It opens on Wednesdays. It opens on Wednesdays.")
    assert repeats_a_run("the sea, The Sea the sea")  # case and punctuation aside
    assert not repeats_a_run("the sea and the sky, the sea")  # two words again, not three
    assert not repeats_a_run("") and not repeats_a_run("the the")


def test_the_judge_hears_each_answer_where_it_sounds_and_scores_it_against_the_text_stream(monkeypatch):
    from michi_lite.data import alignment
    from michi_lite.eval_joint import judge_answers

    rate = 16_000
    wave = np.zeros(4 * rate, dtype=np.float32)
    wave[rate:2 * rate] = 0.1 * np.sin(np.arange(rate) / 5.0)  # the answer sounds in its second second
    clips = []

    def heard(clip, sample_rate, model=None, language="en"):
        clips.append(clip)
        return "the museum opens at nine"

    monkeypatch.setattr(alignment, "transcribe", heard)
    monkeypatch.setattr("michi_lite.backbone.load_whisper", lambda: None)
    events = [{"answer": "The museum opens at ten.", "answer_seconds": [1.0, 2.0]},
              {"answer": "", "answer_seconds": [2.0, 3.0]},  # no words: nothing to judge
              {"answer": "Hello.", "answer_seconds": [3.9, 4.2]},  # cut by the dialogue's end: too short
              {"answer": "Unanswered."}]
    report = judge_answers([{"events": events}], [wave], rate)
    assert report["answers_judged"] == 1 and len(clips) == 1 and np.array_equal(clips[0], wave[rate:2 * rate])
    assert report["judge_wer"] == pytest.approx(1 / 5) and events[0]["answer_heard"] == "the museum opens at nine"
    assert 1 <= report["dnsmos_ovrl"] <= 5 and "answer_dnsmos" in events[0] and "answer_heard" not in events[1]
    json.dumps([report, events])  # what `eval joint --json` writes


def test_a_rag_prefix_is_read_first_and_changes_what_frame_0_says(duplex):
    duplex.reset()
    plain = duplex.hidden.clone()
    duplex.reset("The museum is on River Road.")
    assert duplex.cache.length == 1 + len(duplex.tokenizer("The museum is on River Road.")["input_ids"])
    assert not torch.allclose(plain, duplex.hidden)
    with pytest.raises(ValueError, match="window"):
        duplex.reset("word " * 20)  # this engine's window holds 8 positions


def test_forced_text_is_said_token_by_token_then_the_model_goes_on_freely(tokenizer):
    talker = engine(tokenizer, temperature=1.0)
    pad = talker.model.pad_id
    talker.model.text_bias.data[pad] = -1e4  # a token on every frame: the forced text takes its first frames
    forced = tokenizer("Hello there, friend.", add_special_tokens=False)["input_ids"]
    talker.say("Hello there, friend.")
    for _ in range(len(forced) + 3):
        talker.step(np.zeros(talker.samples_in, dtype=np.float32))
    said = [r.model_token for r in talker.log]
    assert said[:len(forced)] == forced and not talker.forced  # then three frames of its own


def test_the_speech_model_s_head_takes_its_euler_steps_and_an_acoustic_voice_fewer(tokenizer):
    from michi_lite.acoustic import AcousticModel, acoustic_config

    assert engine(tokenizer, steps=None).steps == HEAD_STEPS
    voiced = engine(tokenizer, steps=None, acoustic=AcousticModel(acoustic_config("tiny")))
    assert voiced.voicer.steps == VOICE_STEPS < HEAD_STEPS
    assert engine(tokenizer, steps=3, acoustic=AcousticModel(acoustic_config("tiny"))).voicer.steps == 3
    with pytest.raises(ValueError, match="steps must be at least 1"):
        engine(tokenizer, steps=0)


def test_an_acoustic_model_voices_the_text_stream_and_the_speech_model_s_head_rests(tokenizer, monkeypatch):
    from michi_lite.acoustic import AcousticModel, acoustic_config
    from michi_lite.config import get_config

    torch.manual_seed(0)
    acoustic = AcousticModel(acoustic_config("tiny"))
    acoustic.durations.out[-1].bias.data.fill_(2.5)  # about 11 columns a phoneme, as speech has: a word in frames
    talker = engine(tokenizer, acoustic=acoustic)
    talker.model.text_bias.data[talker.model.pad_id] = -1e4  # a token on every frame: the forced text first
    monkeypatch.setattr(talker.model.speaking_head, "sample", None)  # never called
    talker.say("Hello there, friend.")
    outs = [talker.step(np.zeros(talker.samples_in, dtype=np.float32)) for _ in range(8)]
    assert list(talker.voicer.words)[:2] == ["Hello", "there,"]  # each word laid as its tokens are out
    assert all(o.shape == (talker.model.cfg.audio.samples_per_frame,) for o in outs)
    assert all(set(r.seconds) == set(STAGES) for r in talker.log)
    sounding = [r.sounding for r in talker.log]
    assert sounding[:2] == [False, False] and any(sounding)  # silent for the voice's delay, then speech
    waiting = 0
    for _ in range(40):  # on its own, this model says a token every frame: faster than anyone speaks
        talker.step(np.zeros(talker.samples_in, dtype=np.float32))
        voicer = talker.voicer  # a word is let in while the voice is at most MAX_LAG_FRAMES behind
        if voicer.word_starts and voicer.word_starts[-1] > voicer.column:  # the last word not begun: it waits
            waiting += 1
            assert voicer.word_starts[-1] - voicer.column <= (MAX_LAG_FRAMES + 1) * voicer.per_frame
    assert waiting > 0
    assert any(r.model_token == talker.model.pad_id for r in talker.log[8:])  # the text waited for the voice
    with pytest.raises(ValueError, match="audio settings"):
        engine(tokenizer, acoustic=AcousticModel(replace(acoustic_config("tiny"), audio=get_config("michi").audio)))
