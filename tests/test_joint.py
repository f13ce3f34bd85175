"""The joint stage's data: a spoken dialogue laid out as the speech model's streams, the user as heard."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from michi_lite.cli import main
from michi_lite.data.frames import PAD_TOKEN
from michi_lite.listen import build_listener, clip_logits
from michi_lite.model import (END_TOKEN, build_speech_model, load_speaker, save_speaker, speech_model_config,
                              text_frame_kinds)
from michi_lite.train_joint import JointDialogues, frame_of, listener_key

TINY = speech_model_config("tiny")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dialogues(tiny_dialogues):
    return tiny_dialogues


@pytest.fixture(scope="module")
def listener(tokenizer):
    torch.manual_seed(0)
    return build_listener("tiny", len(tokenizer), pretrained=False).eval()


@pytest.fixture(scope="module")
def joint(dialogues, tokenizer, listener):
    return JointDialogues(dialogues, TINY, tokenizer, listener)


def test_the_assistant_says_each_answer_as_heard_and_ends_it_where_it_stops(joint, tokenizer):
    pad, end = tokenizer.convert_tokens_to_ids(PAD_TOKEN), tokenizer.convert_tokens_to_ids(END_TOKEN)
    for record, streams in zip(joint.records, joint.streams):
        tokens = streams.tokens.tolist()
        answers = [t for t in record["turns"] if t["channel"] == "assistant"]
        ends = [i for i, token in enumerate(tokens) if token == end]
        assert len(ends) == len(answers)
        start = 0
        for answer, stop in zip(answers, ends):
            said = tokenizer.decode([t for t in tokens[start:stop] if t != pad])
            heard = answer["heard_text"] if answer["interrupted"] else answer["text"]
            assert said.split() == heard.split()
            said_on = [i for i in range(start, stop) if tokens[i] != pad]
            assert said_on[0] == frame_of(answer["words"][0]["start"])  # the first word on its own start frame
            assert stop == max(frame_of(answer["end"]), said_on[-1] + 1)  # where it stops (cut, or done)
            start = stop + 1
        assert all(token == pad for token in tokens[start:])
    assert any(t["interrupted"] for r in joint.records for t in r["turns"])  # cut answers were among them


def test_the_streams_line_up_the_audio_behind_the_text_and_the_user_as_the_listener_hears(
        joint, dialogues, listener):
    lead = TINY.text_lead_frames
    record, streams = joint.records[0], joint.streams[0]
    frames = len(streams.tokens)
    assert streams.patches.shape == (frames, TINY.patch_dim)
    assert streams.phonemes.shape == (frames, TINY.max_phonemes) and streams.since.shape == (frames,)
    assert streams.user.embeddings.shape == (frames, TINY.hidden_size) and streams.user.tokens.shape == (frames,)
    stereo, rate = sf.read(dialogues / record["path"], dtype="float32", always_2d=True)
    assert frames == int(np.ceil(len(stereo) / (rate * 0.08))) + lead
    assert (streams.patches[:lead] == streams.patches[:lead].min()).all()  # silence before the audio starts
    logits = clip_logits(listener, stereo[:, 0], frames)  # the listener's own stream of the user's channel
    assert torch.equal(streams.user.tokens, logits.argmax(-1))


def test_a_batch_of_dialogues_trains_the_speech_model_to_hear_the_user(joint, tokenizer):
    torch.manual_seed(0)
    model = build_speech_model("tiny", tokenizer)
    batch = joint.collate([joint[0], joint[1], joint[2]])
    assert batch.user.tokens.shape == batch.tokens.shape
    assert batch.user.embeddings.shape == (*batch.tokens.shape, TINY.hidden_size)
    losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values())
    counts = {kind: where.sum() for kind, where in text_frame_kinds(batch.tokens[batch.mask], model.pad_id,
                                                                     model.end_id).items()}
    assert all(counts.values())  # words, pauses and the answers' ends
    by_kind = sum(n * losses[f"{kind}_loss"] for kind, n in counts.items()) / sum(counts.values())
    assert torch.allclose(by_kind, losses["text_loss"])  # the kinds' losses split the text loss
    losses["text_loss"].backward()
    assert model.user_in.weight.grad.abs().max() > 0  # the projection learns from what the user said


def test_outside_text_is_mixed_in_at_the_ratio_asked_the_same_for_the_same_item_and_batch(
        dialogues, tokenizer, listener, joint):
    mixed = JointDialogues(dialogues, TINY, tokenizer, listener, text_ratio=1.5)
    drawn = [len(mixed[(i % len(mixed), n)][2]) for n in range(100) for i in range(2)]
    assert set(drawn) == {1, 2} and abs(np.mean(drawn) - 1.5) < 0.15
    again, first = mixed[(1, 7)], mixed[(1, 7)]
    assert all(torch.equal(a, b) for a, b in zip(again[2], first[2])) and torch.equal(again[1], first[1])
    assert torch.equal(first[1], joint[(1, 7)][1])  # the passages leave the voice prompt's draw as it was
    batch = mixed.collate([mixed[(i, 3)] for i in range(3)])
    answers = sum(len(s.text) for s in mixed.streams[:3])
    assert batch.text.shape[0] == 3 + sum(len(mixed[(i, 3)][2]) for i in range(3))
    assert batch.text_mask.sum() > answers  # the keep loss reads the passages after the answers


def test_what_the_listener_heard_is_kept_for_the_next_run_by_listener_and_read_back_as_heard(
        dialogues, tokenizer, listener, tmp_path, monkeypatch):
    import shutil

    import michi_lite.train_joint as train_joint

    corpus = tmp_path / "dialogues"
    shutil.copytree(dialogues, corpus, ignore=shutil.ignore_patterns("heard"))
    first = JointDialogues(corpus, TINY, tokenizer, listener)
    kept = list((corpus / "heard").glob("train-*.safetensors"))
    assert len(kept) == 1 and kept[0].stem == f"train-{listener_key(listener)}"
    fresh = JointDialogues(corpus, TINY, tokenizer, listener, cache=False)

    def deaf(*args):
        raise AssertionError("heard again")

    with monkeypatch.context() as patched:
        patched.setattr(train_joint, "heard_user", deaf)
        again = JointDialogues(corpus, TINY, tokenizer, listener)  # read back, the listener not run
    for a, b, c in zip(first.streams, again.streams, fresh.streams):
        assert torch.equal(a.user.tokens, b.user.tokens) and torch.equal(a.user.embeddings, b.user.embeddings)
        assert torch.equal(a.user.embeddings, c.user.embeddings)  # the same as heard without keeping

    paths = [corpus / record["path"] for record in first.records] * train_joint.DIALOGUES_PER_WORKER
    frames = [len(streams.tokens) for streams in first.streams] * train_joint.DIALOGUES_PER_WORKER
    apart = train_joint.hear_dialogues(listener, paths, frames, tokenizer, workers=2)  # in two processes
    for a, b in zip(first.streams * train_joint.DIALOGUES_PER_WORKER, apart):
        assert torch.equal(a.user.tokens, b.tokens)
        assert torch.allclose(a.user.embeddings, b.embeddings, atol=1e-5)  # one thread's sums, not two's

    torch.manual_seed(5)
    other = build_listener("tiny", len(tokenizer), pretrained=False).eval()
    assert listener_key(other) != listener_key(listener)
    JointDialogues(corpus, TINY, tokenizer, other)  # another listener hears for itself
    assert len(list((corpus / "heard").glob("train-*.safetensors"))) == 2

    kept[0].write_bytes(kept[0].read_bytes()[:-100])  # truncated (a run killed while writing, a full disk)
    heard = []
    with monkeypatch.context() as patched:
        patched.setattr(train_joint, "heard_user", lambda *args: heard.append(1) or train_joint.UserStreams(
            *train_joint.clip_frames(*args)))  # (listener, wave, frames, tokenizer)
        mended = JointDialogues(corpus, TINY, tokenizer, listener)
    assert len(heard) == len(mended.records)  # heard again, and kept whole again
    assert torch.equal(mended.streams[0].user.embeddings, first.streams[0].user.embeddings)
    assert train_joint.read_hearing(kept[0], train_joint.records_key(mended.records, [
        len(s.tokens) for s in mended.streams]), len(mended.records)) is not None


def test_a_split_without_dialogues_is_refused(dialogues, tokenizer, listener, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "manifest.jsonl").write_text("")
    with pytest.raises(ValueError, match="no train dialogues"):
        JointDialogues(empty, TINY, tokenizer, listener)


def test_train_joint_learns_to_hear_the_user_and_resumes_where_it_stopped(dialogues, tokenizer, tmp_path, capsys):
    import csv

    torch.manual_seed(1)
    init = save_speaker(tmp_path / "speaker.safetensors", build_speech_model("tiny", tokenizer), "tiny")
    run = tmp_path / "run"
    command = ["train", "joint", "--preset", "tiny", "--data", str(dialogues), "--out", str(run),
               "--batch-size", "2", "--checkpoint-every", "1", "--init", str(init), "--keep-loss-weight", "2.5"]
    main(command + ["--steps", "2"])
    main(command + ["--steps", "3", "--resume"])
    rows = list(csv.DictReader((run / "train_log.csv").open()))
    assert [int(r["step"]) for r in rows][-1] == 3 and all(float(r["text_loss"]) > 0 for r in rows)
    for r in rows:  # the keep loss weighs as asked
        losses = {k: float(r[k]) for k in ("loss", "text_loss", "flow_loss", "keep_loss")}
        assert losses["loss"] == pytest.approx(losses["text_loss"] + losses["flow_loss"] + 2.5 * losses["keep_loss"])
    model = load_speaker(run, "tiny", tokenizer, merge=False)
    assert model.user_in.weight.abs().max() > 0  # it learnt to hear the user
    with pytest.raises(SystemExit):
        main(["train", "joint", "--preset", "lite", "--data", str(dialogues), "--out", str(run), "--steps", "4",
              "--resume"])
    assert "trained with preset 'tiny', not 'lite'" in capsys.readouterr().err


def test_a_stacked_stage_trains_a_small_adapter_of_its_own_and_loads_on_the_file_beneath(dialogues, tokenizer,
                                                                                           tmp_path, capsys):
    import shutil

    from safetensors import safe_open

    torch.manual_seed(1)
    base = build_speech_model("tiny", tokenizer)
    for name, p in base.backbone.named_parameters():
        if "lora_B" in name:  # adapters that change something, as a trained speaker's do
            p.data.normal_(0, 0.05)
    init = save_speaker(tmp_path / "speaker.safetensors", base, "tiny")
    inputs = torch.randn(1, 7, TINY.hidden_size)

    def hidden(model):
        with torch.no_grad():
            return model.decoder(inputs_embeds=inputs).last_hidden_state

    stacked = load_speaker(init, "tiny", tokenizer, merge=False).stack_adapters(2, 4, init)
    assert (hidden(stacked) - hidden(base)).abs().max() < 1e-5  # fresh adapters on top change nothing
    text, mask = torch.tensor([[5, 9, 13, 2, 7, 11]]), torch.ones(1, 6, dtype=torch.bool)
    kept = load_speaker(init, "tiny", tokenizer, merge=False).text_keeping_loss(text, mask)
    assert stacked.text_keeping_loss(text, mask).item() == pytest.approx(kept.item(), rel=1e-4)  # held to SmolLM2
    assert kept > 0
    trained = {n for n, p in stacked.named_parameters() if p.requires_grad}
    assert trained and all(".lora_" in n or n.startswith("user_in.") or n == "text_bias" for n in trained)

    run = tmp_path / "run"
    command = ["train", "joint", "--preset", "tiny", "--data", str(dialogues), "--out", str(run), "--batch-size", "2",
               "--checkpoint-every", "1", "--init", str(init), "--stack-rank", "2"]
    main(command + ["--steps", "2"])
    main(command + ["--steps", "3", "--resume"])
    with safe_open(str(run / "speaker.safetensors"), "pt") as f:
        names, metadata = list(f.keys()), f.metadata()
        shapes = {f.get_slice(n).get_shape()[0] for n in names if ".lora_A." in n}
    assert metadata["format"] == "michi_lite.speaker_stack/1" and shapes == {2}
    assert all(".lora_" in n or n.startswith("user_in.") or n == "text_bias" for n in names)
    assert (run / "speaker.safetensors").stat().st_size < init.stat().st_size / 2
    model = load_speaker(run, "tiny", tokenizer, merge=False)
    learnt = [p for n, p in model.backbone.named_parameters() if "lora_B" in n]
    assert model.user_in.weight.abs().max() > 0 and max(p.abs().max() for p in learnt) > 0  # both trained
    assert torch.equal(model.speaking_head.cond_in.weight, base.speaking_head.cond_in.weight)  # the base's own

    moved = tmp_path / "elsewhere" / "speaker.safetensors"
    moved.parent.mkdir()
    shutil.move(init, moved)
    with pytest.raises(ValueError, match="stack on the speaker file"):
        load_speaker(run, "tiny", tokenizer)
    again = load_speaker(run, "tiny", tokenizer, merge=False, base=moved)
    assert torch.equal(hidden(again), hidden(model))
    changed = save_speaker(tmp_path / "speaker.safetensors", build_speech_model("tiny", tokenizer), "tiny")
    with pytest.raises(ValueError, match="SHA-256"):  # a file of that name, other weights
        load_speaker(run, "tiny", tokenizer)
    with pytest.raises(SystemExit):  # nor does the run resume on it
        main(["train", "joint", "--preset", "tiny", "--data", str(dialogues), "--out", str(run), "--batch-size", "2",
              "--init", str(changed), "--stack-rank", "2", "--steps", "4", "--resume"])
    assert "stacked on another file" in capsys.readouterr().err


def test_two_processes_take_the_steps_one_process_takes_on_the_same_batches(dialogues, tokenizer, tmp_path):
    """``accelerate launch`` with 2 CPU processes (gloo), killed and resumed, against one process uninterrupted.

    The flow loss is off: its noise is drawn per process, for the frames each
    has, so with it the two runs' steps agree in expectation, not to the bit.
    """
    import csv
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    torch.manual_seed(1)
    init = save_speaker(tmp_path / "speaker.safetensors", build_speech_model("tiny", tokenizer), "tiny")
    command = ["train", "joint", "--preset", "tiny", "--data", str(dialogues), "--batch-size", "4",
               "--checkpoint-every", "1", "--init", str(init), "--flow-loss-weight", "0"]
    main(command + ["--out", str(tmp_path / "one"), "--steps", "3"])  # 5 train dialogues: batches of 4, then 1
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "michi_lite.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "CUDA_VISIBLE_DEVICES": ""}
    for steps, resume in (("2", []), ("3", ["--resume"])):
        subprocess.run(launch + command + ["--out", str(tmp_path / "two"), "--steps", steps, *resume], env=env,
                       check=True, capture_output=True)
    one, two = ({r["step"]: r for r in csv.DictReader((tmp_path / run / "train_log.csv").open())}
                for run in ("one", "two"))
    assert list(one) == ["3"] and list(two) == ["2", "3"]  # a row at each call's end
    for name in ("text_loss", "word_loss", "pad_loss", "keep_loss", "timing_accuracy"):
        assert float(two["3"][name]) == pytest.approx(float(one["3"][name]), rel=1e-5, abs=1e-7)
    runs = (init, tmp_path / "one" / "speaker.safetensors", tmp_path / "two" / "speaker.safetensors")
    start, alone, together = (load_file(str(path)) for path in runs)
    moved = max((alone[k].float() - start[k].float()).abs().max() for k in start)
    assert moved > 1e-6
    assert max((alone[k].float() - together[k].float()).abs().max() for k in alone) < 1e-3 * moved
    assert all(torch.equal(start[k], alone[k]) for k in start if k.startswith("speaking_head."))  # no flow loss


def test_recomputing_activations_gives_the_same_losses_and_gradients(joint, tokenizer):
    batch = joint.collate([joint[0], joint[1]])
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = build_speech_model("tiny", tokenizer).train()
        if checkpointing:
            model.checkpoint_activations()
        torch.manual_seed(1)  # the flow loss's noise
        losses = model(batch)
        (losses["text_loss"] + losses["flow_loss"]).backward()
        grads.append((losses["text_loss"].detach(), model.user_in.weight.grad.clone()))
    assert torch.allclose(grads[0][0], grads[1][0]) and torch.allclose(grads[0][1], grads[1][1], atol=1e-6)


def test_the_rag_prefix_is_read_before_the_first_frame_whatever_the_other_rows_read(joint, tokenizer):
    torch.manual_seed(0)
    model = build_speech_model("tiny", tokenizer).eval()
    lengths = [len(s.prefix) for s in joint.streams]
    assert len({n for n in lengths if n}) > 1  # dialogues with facts to answer from, of several lengths
    by_length = sorted((n, i) for i, n in enumerate(lengths) if n)
    shorter, longer = by_length[0][1], by_length[-1][1]
    items = [joint[shorter], joint[longer]]
    with torch.no_grad():
        batch = joint.collate(items)
        assert batch.prefix_mask[0, 0].item() is False and batch.prefix_mask[:, -1].all()  # left-padded
        voice = model.voice(batch.prompt, batch.prompt_mask)
        together, _ = model.teacher_forced(batch, voice)
        alone, _ = model.teacher_forced(joint.collate(items[:1]), voice[:1])
        frames = len(joint.streams[shorter].tokens)
    assert together.shape[1] == batch.tokens.shape[1]
    assert torch.allclose(together[0, :frames], alone[0, :frames], atol=1e-4)
