"""The speech model: its streams, training, checkpoints, and speaking frame by frame."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from michi_lite.audio import SILENCE_MEL, AudioError, save_audio, voice_prompt
from michi_lite.cli import main
from michi_lite.data.frames import PAD_TOKEN
from michi_lite.data.phonemes import PAD_PHONEME, chunk_phoneme_ids
from michi_lite.data.words import Word
from michi_lite.frame_decoder import FrameCache
from michi_lite.model import (
    END_TOKEN,
    SpeakerStreams,
    UserStreams,
    VoicedChunks,
    build_speech_model,
    load_speaker,
    speaker_streams,
    speech_model_config,
    tokens_and_chunks,
)
from michi_lite.say import MAX_SEGMENT_WORDS, Speaker, split_text
from michi_lite.train import latest_checkpoint
from michi_lite.train_speaker import SpeakerUtterances
from michi_lite.vocoder import HiFiGANGenerator, save_vocoder, vocoder_config

TINY = speech_model_config("tiny")
RATE = TINY.audio.sample_rate

pytestmark = pytest.mark.usefixtures("one_thread")


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise shaped like speech for the voice prompt's checks: loud enough, in 200 ms bursts."""
    rng = np.random.default_rng(seed)
    wave = rng.standard_normal(int(seconds * RATE)).astype(np.float32) * 0.3
    bursts = (np.arange(len(wave)) // (RATE // 5)) % 2 == 0
    return wave * np.where(bursts, 1.0, 0.3).astype(np.float32)


@pytest.fixture(scope="module")
def speaker_run(tiny_corpus, tmp_path_factory):
    run = tmp_path_factory.mktemp("speaker_run")
    main(["train", "speaker", "--preset", "tiny", "--data", str(tiny_corpus), "--out", str(run),
          "--steps", "2", "--batch-size", "2", "--checkpoint-every", "1"])
    return run


@pytest.fixture(scope="module")
def vocoder_file(tmp_path_factory):
    torch.manual_seed(0)
    return save_vocoder(tmp_path_factory.mktemp("vocoder") / "vocoder.safetensors",
                        HiFiGANGenerator(vocoder_config("tiny")), "tiny")


@pytest.fixture(scope="module")
def speaker(speaker_run, vocoder_file, tokenizer):
    from michi_lite.vocoder import load_vocoder

    model = load_speaker(speaker_run, "tiny", tokenizer)
    return Speaker(model, load_vocoder(vocoder_file, "tiny"), tokenizer, voice_prompt(speech_like(2.0), TINY.audio),
                   steps=2)


def test_the_streams_put_text_ahead_of_audio_and_end_where_speech_ends(tokenizer):
    words = [Word("Hello", 0.0, 0.40), Word("world", 0.45, 0.90)]
    patches = torch.randn(12, TINY.patch_dim)  # 0.96 s of audio
    streams = speaker_streams("Hello world", words, patches, tokenizer, TINY)
    tokens, audio = streams.tokens, streams.patches
    pad, end = (tokenizer.convert_tokens_to_ids(t) for t in (PAD_TOKEN, END_TOKEN))
    said = [t for t in tokens.tolist() if t != pad]
    assert said == tokenizer("Hello world", add_special_tokens=False)["input_ids"] + [end]
    assert tokens.tolist().index(end) == 11  # the frame holding 0.90 s, the last word's end
    assert len(tokens) == len(audio) == 12 + 2
    assert (audio[:2] == SILENCE_MEL).all() and torch.equal(audio[2:], patches)
    first_word = tokens.tolist().index(said[0])
    assert first_word == 0  # "Hello" starts on frame 0 of the text stream, and its audio on frame 2


def test_each_audio_frame_is_shown_the_phonemes_of_the_word_it_voices(tokenizer):
    words = [Word("Hello", 0.0, 0.40), Word("world", 0.45, 0.90)]
    streams = speaker_streams("Hello world", words, torch.randn(12, TINY.patch_dim), tokenizer, TINY)
    hello, world = (chunk_phoneme_ids(w, TINY.max_phonemes) for w in ("Hello", "world"))
    second = streams.tokens.tolist().index(tokenizer(" world", add_special_tokens=False)["input_ids"][0])
    rows = [[p for p in row if p != PAD_PHONEME] for row in streams.phonemes.tolist()]
    lead = TINY.text_lead_frames
    # before the first word's audio: no phonemes, and the count of frames since a word began is at its cap
    assert rows[:lead] == [[]] * lead and streams.since[:lead].tolist() == [TINY.max_voiced_frames] * lead
    # "Hello" from its audio's first frame (``lead`` after its token) until "world"'s audio begins
    assert rows[lead:second + lead] == [hello] * second
    assert streams.since[lead:second + lead].tolist() == list(range(second))
    assert rows[second + lead:] == [world] * (len(rows) - second - lead)
    assert streams.since[second + lead] == 0


def test_say_lays_out_the_phonemes_as_training_does(speaker, tokenizer):
    """The phonemes ``say`` shows the head come from the tokens it fed, through the same VoicedChunks."""
    text = "Twelve apples"
    shown = []
    hook = speaker.model.phoneme_reader.register_forward_hook(
        lambda module, args, out: shown.append((args[1][0].tolist(), args[2].item())))
    try:
        frames = list(speaker.segment_frames(text))
    finally:
        hook.remove()
    starts = dict(tokens_and_chunks(text, tokenizer, TINY.max_phonemes))  # its tokens are all different
    fed = [f.token_id for f in frames] + [speaker.model.pad_id] * TINY.text_lead_frames  # one per position
    voiced = VoicedChunks(TINY)
    assert shown == [voiced.push(starts.get(token)) for token in fed]
    twelve = chunk_phoneme_ids("Twelve", TINY.max_phonemes)
    assert shown[TINY.text_lead_frames][0][:len(twelve)] == twelve  # the first word from its audio's first frame


def test_the_phoneme_reader_starts_silent_and_reads_only_the_chunk(tokenizer):
    from michi_lite.model import PhonemeReader

    torch.manual_seed(0)
    reader = PhonemeReader(TINY)
    hidden = torch.randn(5, TINY.hidden_size)
    phonemes = torch.randint(2, 20, (5, TINY.max_phonemes))
    phonemes[:, 3:] = PAD_PHONEME
    since = torch.arange(5)
    assert reader(hidden, phonemes, since).abs().max() == 0  # a model trained without it is unchanged
    torch.nn.init.normal_(reader.out[-1].weight)
    read = reader(hidden, phonemes, since)
    other = phonemes.clone()
    other[:, 1] = 30  # another phoneme in the chunk changes what is read
    assert (reader(hidden, other, since) - read).abs().max() > 1e-4
    with torch.no_grad():
        reader.place[4:] += 1.0  # the padding's places are masked: only the chunk's own phonemes are keys
    assert torch.equal(reader(hidden, phonemes, since), read)
    nothing = torch.full_like(phonemes, PAD_PHONEME)
    assert torch.isfinite(reader(hidden, nothing, since)).all()  # before the first word: the "nothing" key


def heard_user(batch: int, frames: int, tokenizer, seed: int = 0) -> UserStreams:
    """What a listener might hear of a user: random embeddings, a word token every third frame, PAD elsewhere."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.full((batch, frames), tokenizer.convert_tokens_to_ids(PAD_TOKEN))
    tokens[:, ::3] = torch.randint(100, 1000, (batch, len(range(0, frames, 3))), generator=generator)
    return UserStreams(torch.randn(batch, frames, TINY.hidden_size, generator=generator), tokens)


def test_the_user_streams_start_unheard_and_each_frame_reaches_only_later_positions(tiny_corpus, tokenizer):
    torch.manual_seed(0)
    model = build_speech_model("tiny", tokenizer).eval()
    data = SpeakerUtterances(tiny_corpus, TINY, tokenizer)
    batch = SpeakerUtterances.collate([data[0], data[1]])
    voice = model.voice(batch.prompt, batch.prompt_mask)
    frames = batch.tokens.shape[1]
    with torch.no_grad():
        alone, _ = model.teacher_forced(batch, voice)
        batch.user = heard_user(2, frames, tokenizer)
        heard, _ = model.teacher_forced(batch, voice)
        assert torch.equal(heard, alone)  # a model trained without a user hears none (and old files load so)
        torch.nn.init.normal_(model.user_in.weight, std=0.05)
        heard, _ = model.teacher_forced(batch, voice)
        changed = heard_user(2, frames, tokenizer, seed=1)
        changed.embeddings[:, :4], changed.tokens[:, :4] = batch.user.embeddings[:, :4], batch.user.tokens[:, :4]
        batch.user = changed  # the user's frames from 4 on are other than before
        other, _ = model.teacher_forced(batch, voice)
    # position p + 1 holds frame p: positions up to 4 heard the same user, position 5 on heard another
    assert (heard - alone).abs().amax((0, 2))[1:].min() > 1e-4
    assert torch.allclose(other[:, :5], heard[:, :5], atol=1e-6)
    assert (other[:, 5:] - heard[:, 5:]).abs().amax((0, 2)).min() > 1e-4
    with pytest.raises(ValueError, match="must be the same frames"):
        model.frame_inputs(batch.tokens, batch.patches, heard_user(2, frames - 1, tokenizer))


def test_a_speaker_file_from_before_the_user_streams_loads_hearing_no_user(speaker_run, tokenizer, tmp_path):
    from safetensors.torch import load_file

    from michi_lite.weights import write_weights

    older = {k: v for k, v in load_file(speaker_run / "speaker.safetensors").items() if not k.startswith("user_in.")}
    assert len(older) < len(load_file(speaker_run / "speaker.safetensors"))
    config = json.dumps(speech_model_config("tiny").to_dict())
    write_weights(tmp_path / "older.safetensors", older,
                  {"format": "michi_lite.speaker/1", "preset": "tiny", "config": config})
    model = load_speaker(tmp_path / "older.safetensors", "tiny", tokenizer, merge=False)
    assert model.user_in.weight.abs().max() == 0 and model.user_in.bias.abs().max() == 0


def test_a_batch_with_a_user_teaches_the_user_projection(tiny_corpus, tokenizer):
    torch.manual_seed(0)
    model = build_speech_model("tiny", tokenizer)
    data = SpeakerUtterances(tiny_corpus, TINY, tokenizer)
    batch = SpeakerUtterances.collate([data[0], data[1]])
    batch.user = heard_user(2, batch.tokens.shape[1], tokenizer)
    losses = model(batch.to(torch.device("cpu")))
    losses["text_loss"].backward()
    assert model.user_in.weight.grad.abs().max() > 0
    assert "user_in.weight" in model.trained_state()


def test_training_prompts_come_from_another_utterance_of_the_same_voice(tiny_corpus, tokenizer):
    data = SpeakerUtterances(tiny_corpus, TINY, tokenizer)
    record = data.records[0]
    others = [i for i in data.by_voice[record["voice"]] if i != 0]
    assert others, "the tiny corpus has several utterances per voice"
    _, prompt = data[0]
    batch = SpeakerUtterances.collate([data[0], data[1]])
    assert batch.tokens.shape == batch.mask.shape == batch.since.shape and batch.patches.shape[:2] == batch.tokens.shape
    assert batch.phonemes.shape == (*batch.tokens.shape, TINY.max_phonemes)
    assert len(prompt) <= round(5.0 / 0.08) and prompt.shape[1] == TINY.patch_dim
    assert batch.prompt_mask.sum(1).tolist() == [len(data[0][1]), len(data[1][1])] or batch.prompt_mask.any()


def test_a_few_steps_on_one_batch_lower_both_losses(tiny_corpus, tokenizer):
    from michi_lite.train_speaker import SpeakerTrainer

    torch.manual_seed(0)
    model = build_speech_model("tiny", tokenizer)
    data = SpeakerUtterances(tiny_corpus, TINY, tokenizer)
    batch = SpeakerUtterances.collate([data[i] for i in range(4)])
    trainer = SpeakerTrainer(model, "tiny", torch.device("cpu"), total_steps=1000, learning_rate=3e-3,
                             warmup_steps=1)
    first = trainer.step(batch)
    for _ in range(25):
        last = trainer.step(batch)
    assert last["text_loss"] < first["text_loss"] - 0.5
    assert last["flow_loss"] < first["flow_loss"]


def test_a_step_in_bf16_autocast_keeps_the_weights_and_losses_in_fp32(tiny_corpus, tokenizer):
    from michi_lite.train_speaker import SpeakerTrainer

    torch.manual_seed(0)
    model = build_speech_model("tiny", tokenizer)
    data = SpeakerUtterances(tiny_corpus, TINY, tokenizer)
    batch = SpeakerUtterances.collate([data[i] for i in range(2)])
    trainer = SpeakerTrainer(model, "tiny", torch.device("cpu"), total_steps=10, bf16=True)  # a GPU's default
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    losses = trainer.step(batch)
    assert all(np.isfinite(v) for v in losses.values())
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert all(p.dtype == torch.float32 for p in trained.values())
    assert any(not torch.equal(p, before[n]) for n, p in trained.items())


def test_the_text_keeping_loss_is_zero_until_the_adapters_drift_and_pulls_only_on_them(tiny_corpus, tokenizer):
    torch.manual_seed(0)
    model = build_speech_model("tiny", tokenizer)
    data = SpeakerUtterances(tiny_corpus, TINY, tokenizer)
    batch = SpeakerUtterances.collate([data[i] for i in range(3)])
    assert tokenizer.decode(batch.text[0][batch.text_mask[0]]) == data.records[0]["text"]  # its words, plain
    assert model(batch)["keep_loss"].item() < 1e-6  # fresh LoRA adapters change nothing
    with torch.no_grad():
        for name, p in model.backbone.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    keep = model.text_keeping_loss(batch.text, batch.text_mask)
    assert keep.item() > 1e-3
    keep.backward()
    moved = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert moved and all("lora_" in n for n in moved)  # not the heads, and never SmolLM2's own weights
    # right padding changes nothing: a sentence scores the same alone and beside a longer one
    i = int(batch.text_mask.sum(1).argmin())
    n = int(batch.text_mask[i].sum())
    assert n < batch.text.shape[1], "the shortest sentence is padded"
    alone = model.text_keeping_loss(batch.text[i:i + 1, :n], batch.text_mask[i:i + 1, :n])
    assert torch.allclose(alone, model.text_keeping_loss(batch.text[i:i + 1], batch.text_mask[i:i + 1]), atol=1e-5)
    with pytest.raises(ValueError, match="merged"):
        model.merge_adapters().text_keeping_loss(batch.text, batch.text_mask)


def silent_text_streams(patches: torch.Tensor, tokenizer) -> SpeakerStreams:
    """Streams of the given audio patches under a text stream of PAD alone (no phonemes voiced)."""
    frames = len(patches)
    return SpeakerStreams(torch.full((frames,), tokenizer.convert_tokens_to_ids(PAD_TOKEN)), patches,
                          torch.zeros(frames, TINY.max_phonemes, dtype=torch.long),
                          torch.full((frames,), TINY.max_voiced_frames), torch.zeros(0, dtype=torch.long))


def test_next_patch_errors_score_the_head_against_the_real_patch_and_repeating_the_last_column(tokenizer):
    from michi_lite.eval import next_patch_errors

    torch.manual_seed(0)
    model = build_speech_model("tiny", tokenizer).eval()
    column = torch.randn(TINY.audio.n_mels)
    steady = column.repeat(12, TINY.audio.mels_per_frame)  # (12, patch_dim): the same column throughout
    voice = torch.zeros(1, TINY.hidden_size)
    guess, repeat = next_patch_errors(model, silent_text_streams(steady, tokenizer), voice)
    # a new head guesses the all-zero patch; repeating is exact on a steady sound
    assert repeat == 0.0 and abs(guess - column.pow(2).mean().item()) < 1e-5
    assert next_patch_errors(model, silent_text_streams(torch.randn(12, TINY.patch_dim), tokenizer), voice)[1] > 1.0


def test_teacher_forced_patches_are_each_made_from_the_real_past_alone(tokenizer):
    from michi_lite.eval import teacher_forced_patches

    torch.manual_seed(0)
    model = build_speech_model("tiny", tokenizer).eval()
    for p in model.speaking_head.parameters():  # a new head's output layer starts at zero: wake it
        torch.nn.init.normal_(p, std=0.1)
    patches = torch.randn(12, TINY.patch_dim)
    voice = torch.zeros(1, TINY.hidden_size)

    def forced(patches: torch.Tensor) -> torch.Tensor:
        return teacher_forced_patches(model, silent_text_streams(patches, tokenizer), voice, 2,
                                      torch.Generator().manual_seed(0))

    before = forced(patches)
    assert before.shape == (12, TINY.patch_dim)
    changed = patches.clone()
    changed[6] += 1.0  # the real patch of frame 6 is heard from frame 7 on
    after = forced(changed)
    torch.testing.assert_close(after[:7], before[:7])
    assert not torch.allclose(after[7:], before[7:])


def test_train_speaker_checkpoints_only_what_it_trains_and_resumes(tiny_corpus, speaker_run, tokenizer):
    assert latest_checkpoint(speaker_run).name == "step_00000002"
    main(["train", "speaker", "--preset", "tiny", "--data", str(tiny_corpus), "--out", str(speaker_run),
          "--steps", "3", "--batch-size", "2", "--resume"])
    steps = [int(line.split(",")[0]) for line in (speaker_run / "train_log.csv").read_text().split()[1:]]
    assert steps[-1] == 3
    from safetensors import safe_open

    with safe_open(str(speaker_run / "speaker.safetensors"), "pt") as f:
        names = list(f.keys())
    assert any(".lora_A." in n for n in names) and "text_bias" in names
    assert not any("embed_tokens" in n or n.endswith("q_proj.weight") for n in names)  # SmolLM2's own stay out
    with pytest.raises(ValueError, match="preset"):
        load_speaker(speaker_run, "lite", tokenizer)


def test_training_can_start_from_a_model_that_lacks_a_newer_module(tiny_corpus, speaker_run, tokenizer, tmp_path):
    from safetensors.torch import load_file

    from michi_lite.weights import write_weights

    older = {k: v for k, v in load_file(speaker_run / "speaker.safetensors").items()
             if not k.startswith("phoneme_reader.")}
    name = "speaking_head.cond_in.weight"
    older[name] = older[name] + 0.5  # far from where a fresh start (same seed) would put it
    config = json.dumps(speech_model_config("tiny").to_dict())
    write_weights(tmp_path / "older.safetensors", older,
                  {"format": "michi_lite.speaker/1", "preset": "tiny", "config": config})
    run = tmp_path / "run"
    main(["train", "speaker", "--preset", "tiny", "--data", str(tiny_corpus), "--out", str(run), "--steps", "1",
          "--batch-size", "2", "--init", str(tmp_path / "older.safetensors")])
    # one step moved the head a little from where the older model left it, not from a fresh start
    new = load_file(run / "speaker.safetensors")
    assert (new[name] - older[name]).abs().max() < 0.05
    assert any(k.startswith("phoneme_reader.") for k in new)


def test_the_learning_rate_warms_up_then_falls_to_a_tenth():
    from michi_lite.train import warmup_cosine

    factor = warmup_cosine(10, 110)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.55) and factor(110) == pytest.approx(0.1) == factor(500)


def test_foreign_and_truncated_speaker_checkpoints_are_refused(speaker_run, vocoder_file, tmp_path, tokenizer):
    with pytest.raises(ValueError, match="not a michi_lite speaker"):
        load_speaker(vocoder_file, "tiny", tokenizer)
    truncated = tmp_path / "speaker.safetensors"
    truncated.write_bytes((speaker_run / "speaker.safetensors").read_bytes()[:1000])
    with pytest.raises(ValueError, match="not a michi_lite speaker"):
        load_speaker(truncated, "tiny", tokenizer)


def test_merged_adapters_compute_what_the_adapted_backbone_does(speaker_run, tokenizer):
    adapted = load_speaker(speaker_run, "tiny", tokenizer, merge=False)
    merged = load_speaker(speaker_run, "tiny", tokenizer)
    inputs = torch.randn(1, 7, TINY.hidden_size)
    with torch.no_grad():
        a, b = (m.decoder(inputs_embeds=inputs).last_hidden_state for m in (adapted, merged))
    assert (a - b).abs().max() < 1e-4


def test_cached_frame_steps_equal_one_pass_over_the_whole_sequence(speaker):
    inputs = torch.randn(1, 9, TINY.hidden_size)
    with torch.no_grad():
        whole = speaker.model.decoder(inputs_embeds=inputs).last_hidden_state[0]
        cache = FrameCache()
        steps = torch.stack([speaker._step(inputs[:, i], cache)[0] for i in range(9)])
    assert (whole - steps).abs().max() < 1e-4


def test_speaking_forces_the_text_in_order_and_ends_after_it(speaker, tokenizer):
    text = "Twelve apples, please."
    frames = list(speaker.frames(text))
    fed = [f.token_id for f in frames if f.token_id != speaker.model.pad_id]
    assert fed == tokenizer(text, add_special_tokens=False)["input_ids"] + [speaker.model.end_id]
    assert frames[-1].token_id == speaker.model.end_id  # the audio stops on the frame speech ends
    assert [f.index for f in frames] == list(range(len(frames)))
    wave = speaker.say(text)
    assert len(wave) == len(frames) * TINY.audio.samples_per_frame


def test_the_stream_equals_say_with_the_vocoder_lag(speaker):
    chunks = list(speaker.stream("Hello there."))
    lag = speaker.vocoder.cfg.lookahead_samples
    assert all(len(c) == TINY.audio.samples_per_frame for c in chunks[:-1]) and len(chunks[-1]) == lag
    assert np.allclose(np.concatenate(chunks)[lag:], speaker.say("Hello there."), atol=1e-5)


def test_long_text_streams_sentence_by_sentence(speaker):
    text = " ".join(["This is one sentence of a very long text."] * 400)  # 3,600 words
    segments = split_text(text)
    assert len(segments) == 400 and max(len(s.split()) for s in split_text("word " * 1000)) <= MAX_SEGMENT_WORDS
    chunks = speaker.stream(text)
    first = [next(chunks) for _ in range(3)]  # audio starts before the rest of the text is looked at
    assert all(len(c) == TINY.audio.samples_per_frame for c in first)


def test_empty_text_and_bad_voice_prompts_are_refused(speaker_run, vocoder_file, tmp_path):
    common = ["--preset", "tiny", "--ckpt", str(speaker_run), "--vocoder", str(vocoder_file)]
    save_audio(tmp_path / "short.wav", speech_like(0.5), RATE)
    save_audio(tmp_path / "silent.wav", np.zeros(RATE * 2, dtype=np.float32), RATE)
    for text, prompt in ((" ", "short.wav"), ("Hello.", "short.wav"), ("Hello.", "silent.wav")):
        with pytest.raises(SystemExit):
            main(["say", text, "--out", str(tmp_path / "out.wav"), "--voice-prompt", str(tmp_path / prompt), *common])
    assert not (tmp_path / "out.wav").exists()
    with pytest.raises(AudioError, match="at least 1 s"):
        voice_prompt(speech_like(0.5), TINY.audio)
    with pytest.raises(ValueError, match="empty"):
        split_text("   ")


def test_say_writes_speech_in_a_voice_given_at_another_rate(speaker_run, vocoder_file, tmp_path, capsys):
    import soundfile as sf

    save_audio(tmp_path / "voice_44k.wav", speech_like(3.0), 44_100)  # resampled on load
    main(["say", "Good morning.", "--out", str(tmp_path / "out.wav"), "--voice-prompt", str(tmp_path / "voice_44k.wav"),
          "--preset", "tiny", "--ckpt", str(speaker_run), "--vocoder", str(vocoder_file), "--steps", "1"])
    wave, rate = sf.read(str(tmp_path / "out.wav"))
    assert rate == RATE and len(wave) > 0 and "first audio after" in capsys.readouterr().out


def test_export_writes_an_fp16_speaker_that_loads_and_agrees(speaker_run, tmp_path, tokenizer):
    out = tmp_path / "speaker_fp16.safetensors"
    main(["export", "speaker", "--preset", "tiny", "--ckpt", str(speaker_run), "--out", str(out)])
    full, half = (load_speaker(p, "tiny", tokenizer) for p in (speaker_run, out))
    inputs = torch.randn(1, 5, TINY.hidden_size)
    with torch.no_grad():
        a, b = (m.decoder(inputs_embeds=inputs).last_hidden_state for m in (full, half))
    assert (a - b).abs().max() < 1e-2


def test_bench_speaker_times_every_piece_of_a_frame(tmp_path):
    out = tmp_path / "bench.json"
    main(["bench", "speaker", "--preset", "tiny", "--json", str(out), "--threads", "1"])
    report = json.loads(out.read_text())
    assert 0 < report["vocoder_chunk"]["ms_median"] <= report["vocoder_chunk"]["ms_p95"]
    for version in ("fp32", "int8"):
        for piece in ("backbone_step", "backbone_step_transformers", "text_head", "head_condition",
                      "speaking_head_1_steps", "speaking_head_4_steps", "speaking_head_8_steps", "frame_step_4_steps"):
            assert 0 < report[version][piece]["ms_median"] <= report[version][piece]["ms_p95"]
    assert report["time_to_first_audio_ms"]["median"] > 0


def test_eval_speaker_judges_generated_speech_against_the_real_audio(tiny_corpus, speaker_run, vocoder_file,
                                                                     tmp_path):
    out = tmp_path / "speaker.json"
    main(["eval", "speaker", "--preset", "tiny", "--ckpt", str(speaker_run), "--data", str(tiny_corpus),
          "--vocoder", str(vocoder_file), "--json", str(out), "--max-utterances", "1"])
    report = json.loads(out.read_text())
    assert report["perplexity"]["pretrained"] > 1 and report["perplexity"]["speech_model"] > 1
    assert "unseen" in report["groups"]  # the tiny corpus's seen voices have one test utterance each: skipped
    for group in report["groups"].values():
        result = group["all"]
        assert result["n_utterances"] == 1 and set(result["by_steps"]) == {"1", "2", "4", "8"}
        # an untrained model babbles: the judge hears the real audio far better than the generated
        assert result["judge_wer_real"] < result["judge_wer"]
        assert result["next_patch_error"] > 0 and result["next_patch_error_repeat"] > 0
        assert all(isinstance(result[f"judge_wer_{k}"], float) for k in ("resynthesized", "teacher_forced"))
        assert -1 <= result["speaker_similarity"] <= 1 and result["speaker_id_accuracy"] in (0.0, 1.0)
        assert 1 <= result["dnsmos_ovrl_real"] <= 5
        assert group["stress"]["n_utterances"] + group["plain"]["n_utterances"] == 1


def test_the_int8_copy_for_cpus_computes_nearly_what_fp32_does(speaker_run, tokenizer):
    from michi_lite.model import quantized_for_cpu

    model = load_speaker(speaker_run, "tiny", tokenizer)
    fast = quantized_for_cpu(model)
    inputs = torch.randn(1, 6, TINY.hidden_size)
    with torch.no_grad():
        a, b = (m.decode(inputs) for m in (model, fast))
        stepped = fast.frame_decoder()(inputs, FrameCache())
        logits = [m.text_logits(a[0]) for m in (model, fast)]
    assert torch.nn.functional.cosine_similarity(a, b, dim=-1).min() > 0.99
    assert torch.nn.functional.cosine_similarity(a, stepped, dim=-1).min() > 0.99
    assert torch.nn.functional.cosine_similarity(*logits, dim=-1).min() > 0.99
    assert sum(p.numel() for p in fast.backbone.parameters()) < sum(p.numel() for p in model.backbone.parameters())
    assert not any(p.dtype.is_floating_point and p.dim() == 2 for p in fast.frame_decoder().parameters())
