import itertools
import json
from collections import Counter
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from michi_lite.cli import main
from michi_lite.config import CorpusConfig, get_config
from michi_lite.data import corpus as corpus_module
from michi_lite.data.corpus import (build_corpus, choose_voices, load_manifest, plan, split_sequence, subset_corpus,
                                    turns)
from michi_lite.data.engines import SpeechEngine, Synthesis, Voice, all_voices
from michi_lite.data.words import Word

FIELDS = {"id", "path", "text", "voice", "speaker", "engine", "sample_rate", "duration", "split", "voice_split",
          "category", "alignment", "words"}


def test_tiny_corpus_has_the_promised_size_and_schema(tiny_corpus):
    records = load_manifest(tiny_corpus)
    assert len(records) >= 20
    assert len({r["voice"] for r in records}) >= 4
    for r in records:
        assert FIELDS <= set(r)
        info = sf.info(str(Path(tiny_corpus) / r["path"]))
        assert info.samplerate == r["sample_rate"] == 16_000
        assert abs(info.frames / info.samplerate - r["duration"]) < 1e-3
        assert r["words"], r["id"]
        starts = [w["start"] for w in r["words"]]
        assert starts == sorted(starts)
        assert all(0 <= w["start"] < w["end"] <= r["duration"] for w in r["words"]), r["id"]
    summary = json.loads((Path(tiny_corpus) / "corpus.json").read_text())
    assert summary["utterances"] == len(records) and set(summary["engines"]) == {r["engine"] for r in records}


def test_test_sentences_are_never_spoken_in_train(tiny_corpus):
    records = load_manifest(tiny_corpus)
    by_split = {s: {r["text"] for r in records if r["split"] == s} for s in ("train", "val", "test")}
    assert by_split["train"] and by_split["val"] and by_split["test"]
    assert not by_split["test"] & by_split["train"]
    assert not by_split["val"] & by_split["train"]
    assert not by_split["test"] & by_split["val"]


def test_unseen_voices_speak_only_test_sentences(tiny_corpus):
    records = load_manifest(tiny_corpus)
    unseen = {r["voice"] for r in records if r["voice_split"] == "unseen"}
    seen = {r["voice"] for r in records if r["voice_split"] == "seen"}
    assert unseen and not unseen & seen
    assert all(r["split"] == "test" for r in records if r["voice"] in unseen)
    # the same test sentences are spoken by seen voices too, so the two can be compared
    unseen_texts = {r["text"] for r in records if r["voice"] in unseen}
    assert unseen_texts <= {r["text"] for r in records if r["voice_split"] == "seen"}


def test_rebuilding_skips_what_exists_and_finishes_a_killed_build(tiny_corpus, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_corpus, corpus)
    manifest = corpus / "manifest.jsonl"
    before = manifest.read_text()
    partial = corpus / "manifest.partial.jsonl"
    lines = partial.read_text().splitlines(keepends=True)
    # simulate a kill: the last utterance and half a line of the next are lost
    victim = json.loads(lines[-1])
    (corpus / victim["path"]).unlink()
    partial.write_text("".join(lines[:-1]) + lines[-1][:20])
    kept = corpus / json.loads(lines[0])["path"]
    mtime = kept.stat().st_mtime_ns
    main(["data", "build", "--preset", "tiny", "--out", str(corpus)])
    assert kept.stat().st_mtime_ns == mtime  # not re-synthesised
    assert (corpus / victim["path"]).exists()
    after = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [r["id"] for r in after] == [json.loads(line)["id"] for line in before.splitlines()]


class CountingEngine(SpeechEngine):
    """A fast stand-in engine: one second of noise per word, timed word by word."""

    name = "counting"
    gives_word_timings = True

    def __init__(self):
        self.calls = 0

    def available(self):
        return True, ""

    def voices(self):
        return [Voice(self.name, f"counting-{i}", (), speaker=f"counter-{i}") for i in range(4)]

    def synthesize(self, text, voice):
        self.calls += 1
        words = text.split()
        noise = np.random.default_rng(len(text)).uniform(-0.5, 0.5, 16_000 * len(words)).astype(np.float32)
        return Synthesis(noise, 16_000, [Word(w, i, i + 0.9) for i, w in enumerate(words)])


def test_an_hours_based_build_resumes_and_reruns_without_losing_utterances(tmp_path, monkeypatch):
    engine = CountingEngine()
    monkeypatch.setattr(corpus_module, "available_engines", lambda: [engine])
    cfg = replace(get_config("lite"), corpus=CorpusConfig(
        min_hours=60 / 3600, max_utterances=100, seen_voices=3, unseen_voices=1, whisper_sample=0))
    first = [json.loads(line) for line in build_corpus(cfg, tmp_path).read_text().splitlines()]
    assert sum(r["duration"] for r in first) >= 60 and engine.calls == len(first)

    partial = tmp_path / "manifest.partial.jsonl"
    partial.write_text("".join(partial.read_text().splitlines(keepends=True)[:-2]))  # killed two short
    again = [json.loads(line) for line in build_corpus(cfg, tmp_path).read_text().splitlines()]
    assert again == first and engine.calls == len(first) + 2  # only the lost two were spoken again

    rerun = [json.loads(line) for line in build_corpus(cfg, tmp_path).read_text().splitlines()]
    assert rerun == first and engine.calls == len(first) + 2  # a finished build is left as it is


def test_plan_is_the_same_in_another_process():
    code = (
        "from michi_lite.config import get_config\n"
        "from michi_lite.data.corpus import plan\n"
        "from michi_lite.data.engines import all_voices\n"
        "print([(u.id, u.split) for _, u in zip(range(40), plan(get_config('tiny'), all_voices()))])\n"
    )
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            for _ in range(2)]
    ours = str([(u.id, u.split) for _, u in zip(range(40), plan(get_config("tiny"), all_voices()))])
    assert runs[0] == runs[1] and runs[0].strip() == ours


@pytest.mark.parametrize("val, test", [(0.05, 0.05), (0.1, 0.2), (0.15, 0.15)])
def test_splits_take_the_asked_fractions(val, test):
    splits = list(itertools.islice(split_sequence(val, test), 1000))
    assert abs(splits.count("val") - 1000 * val) <= 1 and abs(splits.count("test") - 1000 * test) <= 1
    assert splits.index("val") <= 1 / val + 1 and splits.index("test") <= 1 / test + 1  # early, not bunched at the end


def test_unseen_speakers_are_new_people_from_engines_that_are_also_seen():
    voices = all_voices()
    seen, unseen = choose_voices(voices, 36, 6, seed=0)
    assert len(seen) == 36 and len(unseen) == 6
    assert not {v.speaker for v in seen} & {v.speaker for v in unseen}
    assert len({v.speaker for v in seen}) == 36
    assert {v.engine for v in unseen} <= {v.engine for v in seen}


def test_engine_turns_give_every_engine_an_equal_share_of_the_seen_sentences():
    cfg = get_config("lite")
    engine_turns = replace(cfg, corpus=replace(cfg.corpus, turns="engine"))
    by_voice = list(itertools.islice(plan(cfg, all_voices()), 2000))
    by_engine = list(itertools.islice(plan(engine_turns, all_voices()), 2000))
    seen = [u for u in by_engine if u.voice_split == "seen"]
    for split in ("val", "test"):  # every split hears every engine: val and test in equal shares
        shares = Counter(u.voice.engine for u in seen if u.split == split)
        assert len(shares) >= 4 and max(shares.values()) - min(shares.values()) <= 1, (split, shares)
    # train's voice follows the plan's sentence (val and test take their turn out of it), so within 25%
    shares = Counter(u.voice.engine for u in seen if u.split == "train")
    assert len(shares) >= 4 and max(shares.values()) < 1.25 * sum(shares.values()) / len(shares)
    # a train sentence's voice follows its place in the plan, whichever splits the others fall in
    c = cfg.corpus
    train_turn = turns(choose_voices(all_voices(), c.seen_voices, c.unseen_voices, c.seed)[0], "engine")
    for utterance in seen:  # one seen utterance a sentence
        voice = next(train_turn)
        assert utterance.split != "train" or utterance.voice == voice
    assert Counter(u.voice.engine for u in by_voice if u.voice_split == "seen")["espeak"] > 0.6 * len(seen)
    # the same sentences, splits and voices either way: only who speaks which sentence changes
    assert [(u.sentence, u.split, u.voice_split) for u in by_engine] == [
        (u.sentence, u.split, u.voice_split) for u in by_voice]
    more = itertools.islice(plan(engine_turns, all_voices()), 4000)
    assert {u.voice for u in more} == {u.voice for u in by_voice}  # espeak-ng's 31 voices take a while to come round
    with pytest.raises(ValueError, match="turns"):
        replace(cfg.corpus, turns="speaker")


def test_a_subset_takes_every_speaker_in_turn_and_keeps_the_test_split_out(tiny_corpus, tmp_path):
    train = load_manifest(tiny_corpus, "train")
    hours = sum(r["duration"] for r in train) / 3600 / 2
    main(["data", "subset", "--data", str(tiny_corpus), "--out", str(tmp_path / "half"), "--hours", str(hours)])
    subset = load_manifest(tmp_path / "half")
    assert {r["split"] for r in subset} == {"train"}
    assert {r["speaker"] for r in subset} == {r["speaker"] for r in train}  # every speaker, though only half
    kept = sum(r["duration"] for r in subset) / 3600
    assert hours <= kept < hours + max(r["duration"] for r in train) / 3600  # stops at the first utterance past it
    assert all((tmp_path / "half" / r["path"]).is_file() for r in subset)
    summary = json.loads((tmp_path / "half" / "corpus.json").read_text())
    assert summary["utterances"] == len(subset) and summary["subset_of"]["hours"] == hours
    with pytest.raises(ValueError, match="another directory"):
        subset_corpus(tiny_corpus, tiny_corpus, 1.0)


def test_whisper_words_are_never_empty_nor_past_the_audio(monkeypatch):
    from types import SimpleNamespace

    from michi_lite.data import alignment

    heard = [SimpleNamespace(word=" you", start=0.8, end=0.8), SimpleNamespace(word=" there", start=0.9, end=1.3),
             SimpleNamespace(word=" ", start=1.3, end=1.3), SimpleNamespace(word=" end", start=1.0, end=1.0)]
    monkeypatch.setattr(alignment, "_whisper_segments", lambda *args, **kwargs: [SimpleNamespace(words=heard)])
    words = alignment.whisper_words(np.zeros(16_000), 16_000)  # one second
    assert [(w.word, w.start, w.end) for w in words] == [("you", 0.8, 0.82), ("there", 0.9, 1.0), ("end", 0.98, 1.0)]
