"""The listener's words from Whisper's decoder: ported exactly, and a stream that decides what training taught."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from michi_lite.backbone import whisper_model_dir
from michi_lite.data.words import Word
from michi_lite.listen import (
    Listener,
    StreamingWhisperEncoder,
    clip_frames,
    listener_config,
    load_listener,
    quantized_for_cpu,
    save_listener,
    token_embeddings,
    transcribe_stream,
    whisper_encoder_state,
)
from michi_lite.listen_text import (
    PROMPT,
    TextStream,
    TextTargets,
    ends_a_sentence,
    text_decoder,
    text_queries,
    text_targets,
    whisper_text_tokenizer,
)

TINY = replace(listener_config("tiny"), text_rank=4)
PER_FRAME = TINY.positions_per_frame

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def whisper_tokenizer():
    return whisper_text_tokenizer()


def tiny_decoder():
    torch.manual_seed(0)
    return text_decoder(TINY.width, TINY.heads, TINY.layers, TINY.ffn, TINY.text_rank, None).eval()


def test_the_ported_decoder_writes_what_ctranslate2_writes(whisper_tokenizer):
    """Whisper tiny.en's decoder read from its CTranslate2 file, decoding greedily, gives CTranslate2's tokens."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    from faster_whisper.feature_extractor import FeatureExtractor

    from michi_lite.audio import prepare_waveform
    from michi_lite.data.engines import get_engine

    flite = get_engine("flite")
    spoken = flite.synthesize("The table is twelve centimetres wide.", flite.voices()[0])
    wave = prepare_waveform(spoken.waveform, spoken.sample_rate, 16000)
    features = FeatureExtractor(feature_size=80)(np.pad(wave, (0, 30 * 16000 - len(wave))))
    features = np.ascontiguousarray(features[None, :, :3000], dtype=np.float32)
    model = ctranslate2.models.Whisper(str(whisper_model_dir("tiny.en", "packaged")), compute_type="float32")
    expected = model.generate(ctranslate2.StorageView.from_array(features), [list(PROMPT)], beam_size=1)
    expected = expected[0].sequences_ids[0]

    encoder = StreamingWhisperEncoder(listener_config("lite"))
    encoder.load_state_dict(whisper_encoder_state("tiny.en", "packaged"))
    decoder = text_decoder(384, 6, 4, 1536, 4, "tiny.en").eval()
    with torch.no_grad():
        encoded = encoder.eval()(torch.from_numpy(features), whisper=True)
    assert decoder.greedy(encoded, limit=40) == expected
    assert "table" in whisper_tokenizer.decode(expected)


def test_each_token_commits_on_the_frame_its_word_is_heard_plus_the_delay(whisper_tokenizer):
    words = [Word("Henry", 0.0, 0.30), Word("owes", 0.30, 0.50), Word("twenty", 0.55, 0.90),
             Word("three", 0.90, 1.20), Word("dollars", 1.20, 1.60)]
    targets = text_targets("Henry owes $23.", words, whisper_tokenizer, delay_frames=2)
    assert whisper_tokenizer.decode(targets.tokens) == " Henry owes $23."
    owes = whisper_tokenizer.encode(" owes", add_special_tokens=False)[0]
    # "Henry" ends in frame 3 (0.24-0.32 s): frame 5 with the delay; "owes" in frame 6: frame 8;
    # "$23." is spoken as "twenty three dollars", which ends in frame 19: frame 21
    assert targets.frames[0] == 5 and targets.frames[targets.tokens.index(owes)] == 8
    assert targets.frames[-1] == 21 and targets.frames == sorted(targets.frames)


class ScriptedGate(nn.Module):
    """Stands in for the gate: commits on the calls listed, and records what each call was asked."""

    def __init__(self, commits: set[int]) -> None:
        super().__init__()
        self.commits, self.asked = commits, []

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        self.asked.append(states.clone())
        return torch.full((*states.shape[:-1], 1), 10.0 if len(self.asked) - 1 in self.commits else -10.0)


def run_stream(stream: TextStream, gate: ScriptedGate, encoded: torch.Tensor) -> tuple[list, list[int], list[int]]:
    """Push ``encoded`` a frame at a time: each gate call's (position, frame), and the tokens and their frames,
    counted since the stream last started over."""
    asked_at, committed, frames = [], [], []
    for frame in range(len(encoded) // PER_FRAME):
        before, restarts = len(gate.asked), stream.sequence == list(PROMPT) and committed
        tokens = stream.push(encoded[frame * PER_FRAME:(frame + 1) * PER_FRAME])
        if restarts:  # the stream started over at the end of the last frame
            asked_at, committed, frames = [], [], []
        positions = len(PROMPT) - 1 + len(committed) + np.arange(len(gate.asked) - before)
        asked_at += [(int(p), frame) for p in positions]
        committed += tokens
        frames += [frame] * len(tokens)
    return asked_at, committed, frames


def assert_taught(decoder, gate, asked_at: list, targets: TextTargets, encoded: torch.Tensor) -> None:
    """Every state the gate was asked about, at ``asked_at``'s (position, frame), equals the training query for
    the same (position, frame) of ``targets`` on ``encoded``."""
    queries = text_queries([(targets, len(encoded) // PER_FRAME)], PER_FRAME, probes=10_000,
                           generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        states = decoder(queries.tokens, queries.positions, queries.self_mask, encoded[None], queries.cross_mask)[0]
    limits = queries.cross_mask[0, 0].sum(-1) // PER_FRAME - 1  # the frame each query hears up to
    taught = {(int(p), int(f)): states[i] for i, (p, f) in enumerate(zip(queries.positions[0], limits))}
    for (position, frame), asked in zip(asked_at, gate.asked[-len(asked_at):]):
        assert torch.allclose(taught[(position, frame)], asked[0], atol=1e-5), (position, frame)
    # and it commits the token the decoder ranks first at the committing queries, taught as targets there
    assert queries.targets[0, 1:len(targets.tokens) + 1].tolist() == targets.tokens


@pytest.mark.parametrize("max_per_frame, commit_frames", [(8, [2, 2, 4, 6]), (1, [2, 3, 6, 9])])
def test_a_stream_asks_the_decoder_exactly_what_training_teaches(max_per_frame, commit_frames):
    """Every state a stream's decisions are made on equals the training query for the same (position, frame).

    The gate commits on its calls 2, 3, 6 and 9: eight tokens a frame commit two on frame 2; one a frame
    asks again on the next frame, with more heard, as the late probes teach."""
    decoder = tiny_decoder()
    encoded = torch.randn(12 * PER_FRAME, TINY.width, generator=torch.Generator().manual_seed(1))
    gate = decoder.gate = ScriptedGate(commits={2, 3, 6, 9})
    asked_at, committed, frames = run_stream(TextStream(decoder, PER_FRAME, max_per_frame=max_per_frame), gate,
                                             encoded)
    assert len(committed) == 4 and frames == commit_frames
    assert_taught(decoder, gate, asked_at, TextTargets(committed, frames), encoded)


def test_a_stream_that_starts_over_asks_what_training_teaches_after_a_sentence():
    """After a restart the decoder hears the kept frames and what follows: training's ``start`` and cropped
    states teach exactly those questions."""
    decoder = tiny_decoder()
    encoded = torch.randn(14 * PER_FRAME, TINY.width, generator=torch.Generator().manual_seed(3))
    # frames 0-2 wait, frame 3 commits a sentence's last token and waits: the stream starts over keeping
    # frames 2 and 3; then frames 4-5 wait, frame 6 commits two tokens, frame 9 one
    gate = decoder.gate = ScriptedGate(commits={3, 7, 8, 12})
    sentences = iter([True])
    stream = TextStream(decoder, PER_FRAME, ends_sentence=lambda tokens: next(sentences, False), keep_frames=2,
                        max_per_frame=8)
    asked_at, committed, frames = run_stream(stream, gate, encoded)
    assert len(committed) == 3 and frames == [6, 6, 9] and asked_at[0] == (1, 4)
    kept_from = 2  # training crops the states at the first kept frame and starts the decoder after them
    shifted = [(position, frame - kept_from) for position, frame in asked_at]
    targets = TextTargets(committed, [frame - kept_from for frame in frames], start=2)
    assert_taught(decoder, gate, shifted, targets, encoded[kept_from * PER_FRAME:])


def test_a_long_stream_starts_over_and_holds_a_bounded_state():
    decoder = tiny_decoder()
    decoder.gate = ScriptedGate(commits=set(range(0, 10_000, 2)))
    stream = TextStream(decoder, PER_FRAME, window=6 * PER_FRAME, max_tokens=10)
    sizes = []
    for frame in range(60):
        stream.push(torch.randn(PER_FRAME, TINY.width))
        sizes.append(stream.numel())
    assert len(stream.sequence) < 10 and max(sizes[30:]) <= max(sizes[:30])


def test_after_a_sentence_a_stream_starts_over_hearing_the_frames_it_keeps():
    """A restart is a fresh stream that began with the kept frame: it asks the decoder what that one would."""
    decoder = tiny_decoder()
    n_frames = 9
    encoded = torch.randn(n_frames * PER_FRAME, TINY.width, generator=torch.Generator().manual_seed(2))
    frames = encoded.split(PER_FRAME)
    gate = decoder.gate = ScriptedGate(commits={1})  # frame 0 waits; frame 1 commits, then waits: a sentence ends
    stream = TextStream(decoder, PER_FRAME, ends_sentence=lambda tokens: True, keep_frames=1, max_per_frame=8)
    committed = [stream.push(frame) for frame in frames]
    assert [len(c) for c in committed] == [0, 1] + [0] * (n_frames - 2) and stream.sequence == list(PROMPT)
    after_restart = gate.asked[3:]

    fresh_gate = decoder.gate = ScriptedGate(commits=set())
    fresh = TextStream(decoder, PER_FRAME)
    fresh.push(torch.cat(frames[1:3]))  # the kept frame and the next: what the restarted stream first heard
    for frame in frames[3:]:
        fresh.push(frame)
    assert len(fresh_gate.asked) == len(after_restart) == n_frames - 2
    for restarted, new in zip(after_restart, fresh_gate.asked):
        assert torch.allclose(restarted, new, atol=1e-6)


def test_a_stream_that_lost_its_place_starts_over_after_waiting_stall_frames():
    decoder = tiny_decoder()
    decoder.gate = ScriptedGate(commits={2})  # frames 0-1 wait, frame 2 commits (not a sentence's end), then waits
    stream = TextStream(decoder, PER_FRAME, ends_sentence=lambda tokens: False, stall_frames=3)
    lengths = []
    for _ in range(12):
        stream.push(torch.randn(PER_FRAME, TINY.width))
        lengths.append(len(stream.sequence))
    # the token stays in the sequence while the gate waits frames 3 and 4; the third wait, frame 5, starts over;
    # with nothing committed since, waiting on is no stall
    assert lengths == [2, 2, 3, 3, 3] + [2] * 7


@pytest.mark.parametrize("text, ends", [(" It is late.", True), (" Is it?", True), (' He said "go!"', True),
                                        (" It is late", False), (" I saw Dr.", False), (" Wait...", False)])
def test_a_sentence_ends_at_its_full_stop_not_at_an_abbreviation(whisper_tokenizer, text, ends):
    assert ends_a_sentence(whisper_tokenizer.encode(text, add_special_tokens=False)) is ends


@pytest.fixture(scope="module")
def tiny_text_listener(tokenizer):
    torch.manual_seed(0)
    return Listener(TINY, token_embeddings("tiny", len(tokenizer))).eval()


def test_a_listener_file_keeps_the_decoders_adapters_only_and_loads_back_equal(tiny_text_listener, tokenizer,
                                                                              tmp_path):
    path = save_listener(tmp_path / "listener.safetensors", tiny_text_listener, "tiny")
    saved = load_file(str(path))
    assert any(k.startswith("text.") for k in saved) and not any(".base." in k for k in saved)
    loaded = load_listener(path, "tiny", len(tokenizer))
    assert loaded.cfg.text_rank == TINY.text_rank
    for name, value in tiny_text_listener.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[name]), name
    del saved[next(k for k in saved if k.startswith("text."))]  # a file with an adapter missing
    with safe_open(str(path), "pt") as f:
        save_file(saved, str(tmp_path / "short.safetensors"), metadata=f.metadata())
    with pytest.raises(ValueError, match="do not fit"):
        load_listener(tmp_path / "short.safetensors", "tiny", len(tokenizer))


@pytest.mark.parametrize("sentences", [False, True])
def test_only_a_decoder_taught_with_silence_around_its_clips_starts_over_after_a_sentence(tiny_text_listener,
                                                                                        tokenizer, tmp_path,
                                                                                        sentences):
    listener = Listener(replace(TINY, text_sentences=sentences), tiny_text_listener.token_table)
    listener.load_state_dict(tiny_text_listener.state_dict())
    loaded = load_listener(save_listener(tmp_path / "listener.safetensors", listener, "tiny"), "tiny", len(tokenizer))
    assert loaded.cfg.text_sentences is sentences
    assert (loaded.stream(tokenizer).text.ends_sentence is not None) is sentences


def test_a_text_listener_streams_words_in_the_backbones_tokens_one_a_frame(tiny_text_listener, tokenizer):
    listener = tiny_text_listener
    listener.text.gate = ScriptedGate(commits=set(range(0, 10_000, 3)))
    wave = torch.randn(16_000, generator=torch.Generator().manual_seed(0)) * 0.1
    stream = listener.stream(tokenizer)
    frames = stream.push(wave) + stream.flush()
    said = whisper_text_tokenizer().decode(stream.text.sequence[len(PROMPT):])
    emitted = [f.token_id for f in frames if f.token_id != stream.pad_id]
    assert emitted and tokenizer.decode(emitted) == said
    assert not stream.queue  # flush waits until every committed token has had its frame
    int8 = quantized_for_cpu(listener)
    assert transcribe_stream(int8, wave, tokenizer) is not None


@pytest.mark.parametrize("encoder_layers, word_teacher", [(0, 0), (1, 0), (0, 0.5)])
def test_a_resumed_text_run_ends_with_the_adapters_of_an_uninterrupted_one(tiny_corpus, tmp_path, encoder_layers,
                                                                           word_teacher):
    from michi_lite.cli import main

    main(["train", "listener", "--preset", "tiny", "--data", str(tiny_corpus), "--out", str(tmp_path / "ears"),
          "--steps", "1", "--batch-size", "2"])

    def train(out, steps, *extra):
        main(["train", "listener-text", "--preset", "tiny", "--data", str(tiny_corpus), "--out", str(out),
              "--listener", str(tmp_path / "ears"), "--steps", str(steps), "--batch-size", "2",
              "--checkpoint-every", "1", "--encoder-layers", str(encoder_layers),
              "--word-teacher", str(word_teacher), *extra])

    train(tmp_path / "whole", 3)
    train(tmp_path / "parts", 2)
    train(tmp_path / "parts", 3, "--resume")  # same clips, draws, probes and order as the whole run's
    whole, parts = (load_file(str(tmp_path / run / "listener.safetensors")) for run in ("whole", "parts"))
    assert whole.keys() == parts.keys() and all(torch.equal(whole[name], parts[name]) for name in whole)
    log = (tmp_path / "parts" / "train_log.csv").read_text().split()
    assert log[0].startswith("step,loss,token_loss,gate_loss") and ("distill_loss" in log[0]) == bool(encoder_layers)
    assert ("teacher_loss" in log[0]) == bool(word_teacher)
    ears = load_file(str(tmp_path / "ears" / "listener.safetensors"))
    changed = {name for name in ears if name.startswith("encoder.") and not torch.equal(ears[name], whole[name])}
    if encoder_layers:  # the last layer and the norm learnt, the first did not
        assert changed and all(name.startswith(("encoder.layers.1.", "encoder.norm.")) for name in changed)
    else:
        assert not changed


def test_a_dialogue_corpus_is_heard_turn_by_turn_each_from_its_own_channel(tiny_corpus, tiny_dialogues,
                                                                           tiny_text_listener):
    import soundfile as sf

    from michi_lite.data.dialogues import load_dialogues
    from michi_lite.train_listener import EncodedUtterances, load_clip, spoken_clips

    dialogues = load_dialogues(tiny_dialogues, "train")
    turns = [t for d in dialogues for t in d["turns"] if not t["interrupted"]]
    clips = spoken_clips(tiny_dialogues)
    assert len(clips) == len(turns) and any(t["interrupted"] for d in dialogues for t in d["turns"])
    for clip, turn in zip(clips, turns):
        dialogue = next(d for d in dialogues if clip["id"].startswith(d["id"]))
        assert clip["text"] == turn["text"] and clip["voice"] == dialogue[f"{turn['channel']}_voice"]
        assert 0 <= clip["words"][0]["start"] and clip["words"][-1]["end"] <= clip["duration"] + 1e-6
        stereo, rate = sf.read(clip["path"], dtype="float32")
        start = round(turn["start"] * rate)
        wave = load_clip(clip, rate)
        assert np.array_equal(wave, stereo[start:start + len(wave), clip["channel"]])
        assert abs(len(wave) - clip["duration"] * rate) <= 1
    corpus = spoken_clips(tiny_corpus)
    both = EncodedUtterances([tiny_corpus, tiny_dialogues], tiny_text_listener, draws=1, max_seconds=60)
    assert len(both) == len(corpus) + len(clips)


def test_the_word_teacher_is_whispers_decoder_and_expects_each_token_from_the_ones_before():
    adapted = tiny_decoder()
    for p in adapted.parameters():
        if p.requires_grad:
            p.data.normal_(0, 0.5)  # adapters that have learnt something
    plain = adapted.without_adapters()
    whisper = tiny_decoder()  # the same frozen weights, its adapters at their start (no change)
    encoded, tokens = torch.randn(1, 12 * PER_FRAME, TINY.width), [11, 22, 33, 44, 55]
    n = len(PROMPT) + len(tokens)
    args = (torch.tensor([[*PROMPT, *tokens]]), torch.arange(n)[None], torch.ones(n, n, dtype=torch.bool).tril(),
            encoded, None)
    with torch.no_grad():
        torch.testing.assert_close(plain(*args), whisper(*args))
        assert not torch.allclose(adapted(*args), whisper(*args))  # the copy left the adapters out, not the original
    assert not any(p.requires_grad for p in plain.parameters())
    ids, probs = plain.next_tokens(encoded, tokens, 3)
    assert ids.shape == probs.shape == (len(tokens), 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(len(tokens)))
    assert (probs[:, :-1] >= probs[:, 1:]).all()  # likeliest first
    with torch.no_grad():
        expected = plain.logits(plain(*args)[0, len(PROMPT) - 1]).argmax()  # the prompt's last position: token 1
    assert ids[0, 0] == expected
    first_ids, first_probs = plain.next_tokens(encoded, tokens[:2], 3)  # a token's row never sees those after it
    assert torch.equal(first_ids, ids[:2]) and torch.allclose(first_probs, probs[:2])


def test_each_clip_keeps_the_word_teachers_rows_for_its_targets_and_its_queries_get_theirs(tiny_corpus,
                                                                                          tiny_text_listener):
    from michi_lite.train_listener import EncodedUtterances

    teacher = tiny_text_listener.text.without_adapters()
    torch.manual_seed(0)  # tiny's offline encoder is a random one
    whole = EncodedUtterances(tiny_corpus, tiny_text_listener, draws=1, word_teacher=teacher)
    torch.manual_seed(0)
    joined = EncodedUtterances(tiny_corpus, tiny_text_listener, draws=1, joins=1.0, word_teacher=teacher)
    for clip, cut in zip(whole.items, joined.items):
        assert clip.words.ids.shape[0] == len(clip.targets.tokens)
        rest = len(cut.targets.tokens)  # a restart inside the clip: the rows of the tokens after it
        assert torch.equal(cut.words.ids, clip.words.ids[-rest:]) and torch.equal(cut.words.probs,
                                                                                  clip.words.probs[-rest:])
    batch = whole.collate([(*whole.items[i], 5) for i in range(3)])
    q = batch.queries
    for b in range(3):
        for n in range(q.targets.shape[1]):
            if q.targets[b, n] >= 0:  # taught the clip's token at position p: its row p - 1
                assert torch.equal(batch.words.ids[b, n], whole.items[b].words.ids[q.positions[b, n] - 1])
            else:
                assert not batch.words.probs[b, n].any()
    assert whole.collate([(*whole.items[0], 5)]).words is not None
    assert EncodedUtterances(tiny_corpus, tiny_text_listener, draws=1).collate([(*whole.items[0], 5)]).words is None


def test_an_encoders_last_layers_go_on_from_the_first_ones_output(tiny_text_listener):
    encoder = tiny_text_listener.encoder
    features = torch.randn(2, TINY.audio.n_mels, 40 * TINY.audio.mels_per_frame)
    with torch.no_grad():
        whole = encoder(features, start=7)
        torch.testing.assert_close(encoder.finish(encoder(features, start=7, layers=1), 1), whole)


def test_a_clip_for_the_encoders_last_layers_keeps_their_input_from_as_far_back_as_they_look(tiny_corpus,
                                                                                          tiny_text_listener):
    """With ``encoder_layers``, the kept input (context included) gives the states the frozen encoder gives."""
    from michi_lite.train_listener import EncodedUtterances

    shares = {"follows": 0.5, "joins": 0.3, "draws": 2}
    frozen = EncodedUtterances(tiny_corpus, tiny_text_listener, **shares)
    layered = EncodedUtterances(tiny_corpus, tiny_text_listener, encoder_layers=1, **shares)
    most = (TINY.window_frames - 1) * PER_FRAME  # one layer looks this far back
    contexts = []
    for clip, inputs in zip(frozen.items, layered.items):
        assert inputs.targets == clip.targets and inputs.frames == clip.frames
        assert inputs.teacher.shape == clip.states.shape and 0 <= inputs.context <= most
        with torch.no_grad():
            states = tiny_text_listener.encoder.finish(inputs.states[None].float(), 1)[0, inputs.context:]
        torch.testing.assert_close(states, clip.states.float(), atol=1e-2, rtol=0)
        contexts.append(inputs.context)
    assert max(contexts) == most and min(contexts) == 0  # restarts late enough to have a whole window, and fresh starts
    batch = layered.collate([(*layered.items[i], 0) for i in range(4)])
    assert batch.teacher.shape[1] == max(layered.items[i].frames for i in range(4)) * PER_FRAME
    with pytest.raises(ValueError, match="layers"):
        EncodedUtterances(tiny_corpus, tiny_text_listener, encoder_layers=3)


def test_the_corpus_is_heard_with_silence_around_each_clip(tiny_corpus, tiny_text_listener):
    from michi_lite.train_listener import EncodedUtterances

    plain, quiet = (EncodedUtterances(tiny_corpus, tiny_text_listener, draws=1, quiet_seconds=quiet_seconds)
                    for quiet_seconds in ((0.0, 0.0), (1.0, 3.0)))
    leads = []
    for (states, before, frames, *_), (quiet_states, after, quiet_frames, *_) in zip(plain.items, quiet.items):
        assert after.tokens == before.tokens and quiet_states.shape[0] == quiet_frames * PER_FRAME
        shift = np.array(after.frames) - np.array(before.frames)  # the silence before, in frames (rounded per word)
        assert shift.min() >= 0 and shift.max() - shift.min() <= 1 and shift.max() <= round(1.0 / 0.08) + 1
        assert quiet_frames - after.frames[-1] >= frames - before.frames[-1]  # and at least as much after
        leads.append(shift.min())
    assert len(set(leads)) > 1  # drawn clip by clip


def test_a_clip_is_heard_after_another_sentence_as_a_restarted_stream_hears_it(tiny_corpus, tiny_text_listener):
    """``follows``: the previous sentence and a gap before the clip, the states from the restart's kept frames on,
    the decoder starting after them, the clip's words alone its targets."""
    from michi_lite.data.corpus import load_manifest
    from michi_lite.train_listener import EncodedUtterances

    delay, gap = TINY.delay_frames, 1.0
    alone = EncodedUtterances(tiny_corpus, tiny_text_listener, draws=1, quiet_seconds=(0.0, 0.0))
    after = EncodedUtterances(tiny_corpus, tiny_text_listener, draws=1, quiet_seconds=(0.0, 0.0), follows=1.0,
                              gap_seconds=(gap, gap))
    records = load_manifest(tiny_corpus, "train")
    trailing = max(r["duration"] - r["words"][-1]["end"] for r in records)  # silence after a clip's last word
    followed = 0
    for (_, targets, *_), (states, heard, frames, *_) in zip(alone.items, after.items):
        assert heard.tokens == targets.tokens and states.shape[0] == frames * PER_FRAME
        if heard.start == 0:  # no other sentence of its voice to follow
            assert heard.frames == targets.frames
            continue
        followed += 1
        assert heard.start == delay and min(heard.frames) >= heard.start
        # from the previous sentence's last commit to this clip's first: its trailing silence and the gap, less the
        # frames kept and up to two frames of a late restart
        lead = heard.frames[0] - targets.frames[0]
        assert gap / 0.08 - 4 <= lead <= (gap + trailing) / 0.08 + 2
    assert followed >= len(records) // 2


def test_a_clip_is_heard_from_a_word_inside_it_as_a_stream_restarted_mid_sentence_hears_it(tiny_corpus,
                                                                                          tiny_text_listener):
    from michi_lite.train_listener import EncodedUtterances

    alone = EncodedUtterances(tiny_corpus, tiny_text_listener, draws=1)
    joined = EncodedUtterances(tiny_corpus, tiny_text_listener, draws=1, joins=1.0)
    cut = 0
    for (states, targets, frames, *_), (cut_states, rest, cut_frames, *_) in zip(alone.items, joined.items):
        assert rest.tokens == targets.tokens[len(targets.tokens) - len(rest.tokens):]  # the words after the cut
        if rest.tokens == targets.tokens:
            continue  # a clip of one word (or one frame): nothing to start inside
        cut += 1
        said = targets.frames[len(targets.tokens) - len(rest.tokens) - 1]  # the last word before the cut
        dropped = frames - cut_frames  # the frames before the ones the restart keeps
        assert rest.start == TINY.delay_frames and cut_states.shape[0] == cut_frames * PER_FRAME
        assert said - TINY.delay_frames + 1 <= dropped <= said - TINY.delay_frames + 3
        assert np.array_equal(np.array(rest.frames) + dropped, targets.frames[-len(rest.frames):])
        assert torch.equal(cut_states, states[dropped * PER_FRAME:])  # the same draw, encoded the same
    assert cut >= len(alone.items) // 2
    with pytest.raises(ValueError, match="shares"):
        EncodedUtterances(tiny_corpus, tiny_text_listener, follows=0.6, joins=0.6)


def test_a_clip_heard_whole_gives_the_frames_its_stream_gives(tiny_text_listener, tokenizer):
    listener = tiny_text_listener
    listener.text.gate = ScriptedGate(commits=set(range(0, 10_000, 2)))
    wave = torch.randn(12_000, generator=torch.Generator().manual_seed(1)) * 0.1
    embeddings, tokens = clip_frames(listener, wave, 12, tokenizer)
    listener.text.gate = ScriptedGate(commits=set(range(0, 10_000, 2)))
    frames = listener.stream(tokenizer).push(torch.cat([wave, torch.zeros(12 * 1280 - len(wave))]))
    assert tokens.tolist() == [f.token_id for f in frames] and (tokens != frames[0].token_id).any()
    assert torch.equal(embeddings, torch.stack([f.embedding for f in frames])) and not embeddings.is_inference()
