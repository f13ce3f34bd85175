"""Ways a voice reaches a microphone: speed, loudness, noise, a room, a telephone line.

The listener trains on clean synthetic speech from a few dozen voices; a
user is one of billions, in a room, on a laptop microphone. These changes
widen what it hears at almost no cost (each is a few NumPy operations on one
clip), and ``eval listener`` uses the same functions, at fixed settings, for
its robustness table.

* ``change_speed``: resampled playback, so tempo and pitch move together (as
  Kaldi's speed perturbation does); returns the exact factor, by which word
  times are divided;
* ``add_noise``: white, pink or brown noise at a signal-to-noise ratio;
* ``reverberate``: a synthetic room, exponentially decaying noise of a given
  RT60 (the time the tail takes to fall 60 dB);
* ``band_limit``: down to 8 kHz and back, a telephone's 4 kHz band;
* ``Augmenter``: draws a random mix of them per clip from a seeded
  generator, so a training run's clips are the same when it resumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from scipy.signal import fftconvolve, resample_poly

NOISE_COLOURS = ("white", "pink", "brown")


def change_speed(wave: np.ndarray, factor: float) -> tuple[np.ndarray, float]:
    """Play ``wave`` ``factor`` times as fast (pitch up by as much); returns (wave, the exact factor used).

    The factor is rounded to a ratio of small integers (within 1%) for the
    polyphase resampler; the exact ratio is returned, to scale word timings.
    """
    if factor <= 0:
        raise ValueError(f"the speed factor must be positive, not {factor}")
    ratio = Fraction(factor).limit_denominator(100)
    faster = resample_poly(wave, ratio.denominator, ratio.numerator).astype(np.float32)
    return faster, float(ratio)


def coloured_noise(n: int, colour: str, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of unit-power noise whose power falls as 1/f^0 (white), 1/f (pink) or 1/f^2 (brown)."""
    if colour not in NOISE_COLOURS:
        raise ValueError(f"unknown noise colour {colour!r}; known: {', '.join(NOISE_COLOURS)}")
    spectrum = np.fft.rfft(rng.standard_normal(n))
    slope = NOISE_COLOURS.index(colour)  # the power's exponent
    frequencies = np.arange(len(spectrum), dtype=np.float64)
    frequencies[0] = 1.0
    noise = np.fft.irfft(spectrum / frequencies ** (slope / 2), n)
    return (noise / (noise.std() + 1e-12)).astype(np.float32)


def add_noise(wave: np.ndarray, snr_db: float, rng: np.random.Generator, colour: str = "white") -> np.ndarray:
    """``wave`` plus noise ``snr_db`` decibels below the speech's power (measured over the samples above -50 dBFS)."""
    loud = np.abs(wave) > 10 ** (-50 / 20)
    power = float(np.mean(wave[loud] ** 2)) if loud.any() else float(np.mean(wave ** 2))
    noise = coloured_noise(len(wave), colour, rng) * np.sqrt(power / 10 ** (snr_db / 10))
    return (wave + noise).astype(np.float32)


def reverberate(wave: np.ndarray, sample_rate: int, rt60: float, rng: np.random.Generator,
                wet: float = 0.5) -> np.ndarray:
    """``wave`` in a synthetic room: the direct sound plus a decaying noise tail (``wet``: its share of energy).

    The output has the input's length and peak loudness, so only the room changes.
    """
    n = int(rt60 * sample_rate)
    decay = np.exp(-6.9 * np.arange(n) / n)  # -60 dB at rt60
    tail = rng.standard_normal(n) * decay
    tail[: int(0.005 * sample_rate)] = 0.0  # the first reflections arrive after the direct sound
    tail *= np.sqrt(wet / (1 - wet) / (np.sum(tail ** 2) + 1e-12))
    response = np.concatenate([[1.0], tail[1:]])
    out = fftconvolve(wave, response)[: len(wave)]
    peak = np.abs(out).max()
    return (out * (np.abs(wave).max() / peak) if peak > 0 else out).astype(np.float32)


def band_limit(wave: np.ndarray, sample_rate: int, to_rate: int = 8000) -> np.ndarray:
    """``wave`` through a ``to_rate`` line (down and back up): nothing above ``to_rate / 2`` survives."""
    ratio = Fraction(to_rate, sample_rate)
    narrow = resample_poly(wave, ratio.numerator, ratio.denominator)
    return resample_poly(narrow, ratio.denominator, ratio.numerator)[: len(wave)].astype(np.float32)


@dataclass(frozen=True)
class Augmenter:
    """A random mix of the changes above per clip; each one's chance and range.

    ``__call__`` returns (the clip at its new speed, that clip as the
    microphone heard it, the speed factor): a teacher may hear the first
    while the student hears the second.
    """

    sample_rate: int
    speed: tuple[float, float] = (0.9, 1.1)
    p_speed: float = 0.5
    gain_db: tuple[float, float] = (-12.0, 6.0)
    p_noise: float = 0.5
    snr_db: tuple[float, float] = (3.0, 30.0)
    p_reverb: float = 0.3
    rt60: tuple[float, float] = (0.15, 0.8)
    p_band_limit: float = 0.15

    def __call__(self, wave: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
        factor = 1.0
        if rng.random() < self.p_speed:
            wave, factor = change_speed(wave, rng.uniform(*self.speed))
        clean = wave
        heard = wave * np.float32(10 ** (rng.uniform(*self.gain_db) / 20))
        if rng.random() < self.p_reverb:
            heard = reverberate(heard, self.sample_rate, rng.uniform(*self.rt60), rng)
        if rng.random() < self.p_band_limit:
            heard = band_limit(heard, self.sample_rate)
        if rng.random() < self.p_noise:
            heard = add_noise(heard, rng.uniform(*self.snr_db), rng, NOISE_COLOURS[rng.integers(3)])
        return clean, np.clip(heard, -1.0, 1.0).astype(np.float32), factor
