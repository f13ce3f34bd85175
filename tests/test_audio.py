"""Audio loading, validation, the causal mel frontend and 80 ms framing."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import soundfile as sf
import torch

from michi_lite.audio import (
    AudioError,
    MelSpectrogram,
    denormalize_mel,
    frame_count,
    load_audio,
    mel_filterbank,
    mel_from_patches,
    mel_patches,
    normalize_mel,
    pad_to_frames,
    save_audio,
    split_frames,
    validate_waveform,
)
from michi_lite.config import AudioConfig

CFG = AudioConfig()  # 16 kHz, hop 160, 80 mels: 1280 samples and 8 mel columns per frame


def sine(freq: float, seconds: float, sample_rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(waveform: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(waveform))
    return float(np.fft.rfftfreq(len(waveform), 1 / sample_rate)[spectrum.argmax()])


# --- loading and saving ----------------------------------------------------------


def test_save_then_load_at_another_rate_keeps_the_frequency(tmp_path):
    path = save_audio(tmp_path / "sub" / "tone.wav", sine(440.0, 1.0, 22_050), 22_050)
    assert sf.info(str(path)).subtype == "PCM_16"

    audio = load_audio(path, 16_000)

    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == 16_000
    assert peak_hz(audio, 16_000) == pytest.approx(440.0, abs=1.0)
    assert np.abs(audio).max() == pytest.approx(0.5, abs=0.01)


def test_save_flac_by_suffix(tmp_path):
    path = save_audio(tmp_path / "tone.flac", sine(440.0, 0.5, 16_000), 16_000)
    assert sf.info(str(path)).format == "FLAC"
    assert len(load_audio(path, 16_000)) == 8_000


def test_stereo_file_is_mixed_to_mono(tmp_path):
    tone = sine(300.0, 0.5, 16_000, amplitude=1.0)
    sf.write(str(tmp_path / "stereo.wav"), np.stack([0.5 * tone, 0.3 * tone], axis=1), 16_000)

    audio = load_audio(tmp_path / "stereo.wav", 16_000)

    np.testing.assert_allclose(audio, 0.4 * tone, atol=1e-3)


def test_int16_pcm_is_scaled_to_float():
    pcm = np.array([0, 16_384, -32_768, 100], dtype=np.int16)
    audio = validate_waveform(pcm, 16_000)
    np.testing.assert_allclose(audio, [0.0, 0.5, -1.0, 100 / 32_768])
    assert audio.dtype == np.float32


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_torch_tensor_is_accepted(dtype):
    tone = torch.from_numpy(sine(440.0, 0.1, 16_000)).to(dtype).requires_grad_()
    audio = validate_waveform(tone, 16_000)
    assert isinstance(audio, np.ndarray) and audio.dtype == np.float32
    np.testing.assert_allclose(audio, tone.detach().float().numpy())


# --- every bad input raises AudioError naming the file ---------------------------


def test_empty_file_is_refused(tmp_path):
    sf.write(str(tmp_path / "empty.wav"), np.zeros(0, dtype=np.float32), 16_000)
    with pytest.raises(AudioError, match=r"empty\.wav.*empty"):
        load_audio(tmp_path / "empty.wav", 16_000)


def test_silent_file_is_refused(tmp_path):
    sf.write(str(tmp_path / "quiet.wav"), np.zeros(16_000, dtype=np.float32), 16_000)
    with pytest.raises(AudioError, match=r"quiet\.wav.*silent"):
        load_audio(tmp_path / "quiet.wav", 16_000)


def test_text_file_named_wav_is_refused(tmp_path):
    (tmp_path / "x.wav").write_text("this is not audio\n")
    with pytest.raises(AudioError, match=r"x\.wav.*not a readable audio file"):
        load_audio(tmp_path / "x.wav", 16_000)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(AudioError, match=r"nowhere\.wav.*not found"):
        load_audio(tmp_path / "nowhere.wav", 16_000)


def test_unsupported_format_is_refused(tmp_path):
    sf.write(str(tmp_path / "tone.aiff"), sine(440.0, 0.5, 16_000), 16_000, format="AIFF")
    with pytest.raises(AudioError, match=r"tone\.aiff.*unsupported format AIFF"):
        load_audio(tmp_path / "tone.aiff", 16_000)


def test_too_long_file_is_refused_from_the_header(tmp_path, monkeypatch):
    sf.write(str(tmp_path / "long.wav"), sine(440.0, 1.05, 16_000), 16_000)

    def never_read(*args, **kwargs):
        raise AssertionError("the samples were read; the header should have refused the file")

    monkeypatch.setattr(sf, "read", never_read)
    with pytest.raises(AudioError, match=r"long\.wav.*too long"):
        load_audio(tmp_path / "long.wav", 16_000, max_seconds=1.0)


def test_too_long_array_is_refused():
    with pytest.raises(AudioError, match=r"<array>.*too long"):
        validate_waveform(sine(440.0, 1.05, 16_000), 16_000, max_seconds=1.0)


@pytest.mark.parametrize(
    "waveform, problem",
    [
        (np.array([0.1, np.nan, 0.2], dtype=np.float32), "NaN or inf"),
        (np.array([0.1, np.inf, 0.2], dtype=np.float32), "NaN or inf"),
        (np.zeros(16_000, dtype=np.float32), "silent"),
        (np.zeros(0, dtype=np.float32), "empty"),
        (np.full(100, 1000.0, dtype=np.float32), "far outside"),
        ([0.1, 0.2, 0.3], "got list"),
        (np.array([0.1 + 1j, 0.2], dtype=np.complex64), "unsupported dtype complex64"),
        (np.zeros((4, 4, 4), dtype=np.float32), "expected a 1-D mono waveform"),
    ],
    ids=["nan", "inf", "zeros", "empty", "unscaled", "list", "complex", "3d"],
)
def test_bad_arrays_are_refused(waveform, problem):
    with pytest.raises(AudioError, match=rf"^<array>: .*{problem}"):
        validate_waveform(waveform, 16_000)


@pytest.mark.parametrize("axis", [0, 1])
def test_stereo_array_is_refused_with_a_mixing_hint(axis):
    stereo = np.stack([sine(440.0, 0.1, 16_000)] * 2, axis=axis)  # (2, n) or (n, 2)
    with pytest.raises(AudioError, match=r"<array>.*channel axis.*mix the channels.*load_audio"):
        validate_waveform(stereo, 16_000)


def test_source_name_is_in_the_message():
    with pytest.raises(AudioError, match=r"^take_3\.wav: "):
        validate_waveform(np.zeros(10, dtype=np.float32), 16_000, source="take_3.wav")


def test_clipped_audio_warns_and_passes(caplog):
    clipped = np.clip(sine(440.0, 0.5, 16_000, amplitude=1.5), -1.0, 1.0)
    with caplog.at_level(logging.WARNING, logger="michi_lite.audio"):
        audio = validate_waveform(clipped, 16_000, source="loud.wav")
    np.testing.assert_array_equal(audio, clipped)
    assert "loud.wav" in caplog.text and "clipped" in caplog.text


def test_clean_audio_does_not_warn(caplog):
    with caplog.at_level(logging.WARNING, logger="michi_lite.audio"):
        validate_waveform(sine(440.0, 0.5, 16_000), 16_000)
    assert caplog.text == ""


# --- the mel frontend ------------------------------------------------------------


def test_mel_filterbank_rows_are_nonnegative_bands_in_rising_order():
    filters = mel_filterbank(16_000, 1024, 80, 0.0, 8_000.0)

    assert filters.shape == (80, 513)
    assert (filters >= 0).all()
    assert ((filters > 0).sum(dim=1) >= 1).all()  # every band covers some FFT bin
    centers = filters.argmax(dim=1)
    assert (centers[1:] >= centers[:-1]).all() and centers[-1] > centers[0]
    # Slaney normalisation: each triangle has peak 2 / (its width in Hz), so the
    # wide high bands are lower than the narrow low ones.
    assert filters[-1].max() < filters[10].max()


def test_mel_frame_count_is_samples_over_hop():
    mel = MelSpectrogram(CFG)
    for n_samples in [0, 159, 160, 1000, 1280, 16_000, 16_123]:
        out = mel(torch.randn(n_samples))
        assert out.shape == (CFG.n_mels, n_samples // CFG.hop_length)


def test_mel_is_causal():
    mel = MelSpectrogram(CFG)
    torch.manual_seed(0)
    audio = 0.1 * torch.randn(16_000)
    t = 8_037  # change everything from sample t on
    changed = audio.clone()
    changed[t:] = 0.1 * torch.randn(16_000 - t)

    before, after = mel(audio), mel(changed)

    done = t // CFG.hop_length  # frames 0..done-1 end at or before sample t
    torch.testing.assert_close(before[:, :done], after[:, :done], rtol=0, atol=0)
    assert not torch.allclose(before[:, done], after[:, done])


def test_mel_batched_matches_unbatched():
    mel = MelSpectrogram(CFG)
    batch = 0.1 * torch.randn(3, 4_000)
    out = mel(batch)  # (batch, n_mels, frames)
    assert out.shape == (3, CFG.n_mels, 25)
    torch.testing.assert_close(out[1], mel(batch[1]))


def test_1khz_sine_peaks_in_the_band_containing_1khz():
    mel = MelSpectrogram(CFG)
    out = mel(torch.from_numpy(sine(1_000.0, 1.0, CFG.sample_rate)))
    bin_1khz = round(1_000.0 * CFG.n_fft / CFG.sample_rate)
    band_1khz = int(mel.filters[:, bin_1khz].argmax())

    assert int(out[:, 10:].mean(dim=1).argmax()) == band_1khz
    assert out.max() > -1.0 and out.min() < -6.0  # a loud peak over a quiet floor


def test_normalize_mel_round_trips():
    log_mel = MelSpectrogram(CFG)(0.1 * torch.randn(4_000))
    torch.testing.assert_close(denormalize_mel(normalize_mel(log_mel)), log_mel)


# --- the 80 ms frame clock -------------------------------------------------------


def test_frame_count_rounds_up():
    assert [frame_count(n, CFG) for n in [0, 1, 1280, 1281, 12_800]] == [0, 1, 1, 2, 10]


def test_split_frames_pads_the_last_frame_with_zeros():
    audio = np.ones(1_300, dtype=np.float32)

    frames = split_frames(audio, CFG)

    assert frames.shape == (2, 1280)
    assert frames[1, :20].sum() == 20 and frames[1, 20:].sum() == 0
    assert split_frames(torch.ones(2, 2_560), CFG).shape == (2, 2, 1280)
    assert pad_to_frames(torch.ones(1_300), CFG).shape == (2_560,)


def test_mel_patches_round_trip_exactly():
    torch.manual_seed(0)
    audio = pad_to_frames(0.1 * torch.randn(2, 3_000), CFG)  # (2, 3840): 3 frames
    mel = MelSpectrogram(CFG)(audio)  # (2, 80, 24)

    patches = mel_patches(mel, CFG)

    assert patches.shape == (2, 3, CFG.mels_per_frame * CFG.n_mels)
    # patch 1 holds mel columns 8..15, one after another
    torch.testing.assert_close(patches[0, 1, : CFG.n_mels], mel[0, :, 8])
    torch.testing.assert_close(patches[0, 1, CFG.n_mels : 2 * CFG.n_mels], mel[0, :, 9])
    torch.testing.assert_close(mel_from_patches(patches, CFG), mel, rtol=0, atol=0)
    unbatched = mel_from_patches(mel_patches(mel[0], CFG), CFG)
    torch.testing.assert_close(unbatched, mel[0], rtol=0, atol=0)


def test_mel_patches_refuse_a_partial_frame():
    with pytest.raises(ValueError, match="pad_to_frames"):
        mel_patches(torch.zeros(80, 10), CFG)
