"""What the listener hears in training: each change does what it says, and the same seed makes the same clip."""

from __future__ import annotations

import numpy as np
import pytest

from michi_lite.data.augment import Augmenter, add_noise, band_limit, change_speed, coloured_noise, reverberate

RATE = 16_000


def tone(hz: float, seconds: float = 1.0) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * hz * np.arange(int(seconds * RATE)) / RATE)).astype(np.float32)


def power_at(wave: np.ndarray, hz: float) -> float:
    spectrum = np.abs(np.fft.rfft(wave)) ** 2
    return float(spectrum[int(round(hz * len(wave) / RATE))])


def test_a_faster_clip_is_shorter_and_higher_by_the_factor_it_reports():
    faster, factor = change_speed(tone(400), 1.1)
    assert factor == pytest.approx(1.1, abs=0.01)
    assert len(faster) == pytest.approx(RATE / factor, abs=2)
    peak = np.argmax(np.abs(np.fft.rfft(faster))) * RATE / len(faster)
    assert peak == pytest.approx(400 * factor, abs=3)
    with pytest.raises(ValueError, match="positive"):
        change_speed(tone(400), 0.0)


@pytest.mark.parametrize("snr_db", [20.0, 5.0])
def test_noise_is_added_at_the_signal_to_noise_ratio_asked_for(snr_db):
    clean = tone(300)
    noisy = add_noise(clean, snr_db, np.random.default_rng(0), "pink")
    measured = 10 * np.log10(np.mean(clean ** 2) / np.mean((noisy - clean) ** 2))
    assert measured == pytest.approx(snr_db, abs=0.2)


def test_pink_and_brown_noise_put_more_power_low_than_white():
    rng = np.random.default_rng(0)
    ratios = {}
    for colour in ("white", "pink", "brown"):
        spectrum = np.abs(np.fft.rfft(coloured_noise(RATE, colour, rng))) ** 2
        ratios[colour] = spectrum[100:500].mean() / spectrum[4000:8000].mean()
    assert ratios["white"] < 2 < ratios["pink"] < ratios["brown"]
    with pytest.raises(ValueError, match="colour"):
        coloured_noise(10, "purple", rng)


def test_a_room_keeps_the_length_and_peak_and_leaves_a_tail():
    click = np.zeros(RATE, dtype=np.float32)
    click[100] = 0.9
    wet = reverberate(click, RATE, 0.5, np.random.default_rng(0))
    assert len(wet) == len(click) and np.abs(wet).max() == pytest.approx(0.9, rel=1e-5)
    assert np.abs(wet[2000:4000]).max() > 1e-3  # the tail, 0.1-0.25 s after the click


def test_a_telephone_band_keeps_1_khz_and_drops_6_khz():
    mixed = tone(1000) + tone(6000)
    narrow = band_limit(mixed, RATE)
    assert len(narrow) == len(mixed)
    assert power_at(narrow, 1000) == pytest.approx(power_at(mixed, 1000), rel=0.05)
    assert power_at(narrow, 6000) < 1e-4 * power_at(mixed, 6000)


def test_the_augmenter_draws_the_same_clip_from_the_same_seed_and_keeps_clean_and_heard_aligned():
    augment = Augmenter(RATE, p_speed=1.0, p_noise=1.0, p_reverb=1.0, p_band_limit=1.0)
    wave = tone(200, 2.0)
    first = augment(wave, np.random.default_rng([0, 5, 7]))
    again = augment(wave, np.random.default_rng([0, 5, 7]))
    other = augment(wave, np.random.default_rng([0, 6, 7]))
    assert all(np.array_equal(a, b) for a, b in zip(first[:2], again[:2])) and first[2] == again[2]
    assert not np.array_equal(first[1], other[1])
    clean, heard, factor = first
    assert len(clean) == len(heard) == pytest.approx(len(wave) / factor, abs=2)
    assert np.abs(heard).max() <= 1.0
