"""The listening head: Whisper's weights ported exactly, then made causal, windowed and streaming."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from michi_lite.backbone import read_ctranslate2_weights, whisper_model_dir
from michi_lite.listen import (
    EncoderState,
    StreamingWhisperEncoder,
    block_causal_mask,
    build_listener,
    clip_features,
    listener_config,
    sinusoids,
    whisper_encoder_state,
)

TINY = listener_config("tiny")
FRAME = TINY.audio.samples_per_frame


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
