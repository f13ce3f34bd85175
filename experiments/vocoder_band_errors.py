"""Where in the spectrum a vocoder's sound departs from the original: log-magnitude error by frequency band.

Validation utterances of seen voices are resynthesised from their mels by
each vocoder given (``save_vocoder`` files or runs) and by Griffin-Lim, as
``eval vocoder`` does. Each output and its original go through one STFT
(a 0.1 s Hann window, so bins 10 Hz apart, and a quarter of it as hop)
with magnitudes floored at 1e-5, and the difference of their natural logs
is averaged per band of frequencies:

* ``loud_abs``: mean |log P - log T| over the frames of the utterance within
  30 dB of its loudest (speech, mostly);
* ``loud_signed``: the mean of log P - log T there (above 0: too much energy,
  below: too little);
* ``loud_power_signed``: the same frames, but each band's power summed over its
  bins first, then half the log ratio (so in the same units): how far the
  band's energy is off, whatever its fine structure;
* ``loud_spread``: in the output alone, how unevenly a loud frame's energy
  lies over the band's bins: the log of their RMS magnitude less the mean of
  their log magnitudes (0 when all are equal; 0.29, half of Euler's
  constant, for Gaussian noise under a flat envelope; more for harmonics,
  peaks with valleys between them). ``original`` gives the same for the
  originals;
* ``quiet_abs``: mean |log P - log T| over all bins of the other frames.

Per band, ``loud_signed`` = ``loud_power_signed`` - ``loud_spread`` +
the original's ``loud_spread``, exactly: a band off in ``loud_signed`` has
either the wrong energy or the right energy spread differently.

And one measure across the whole spectrum, ``comb_depth``: the mean of
log P - log T over the loud frames at the multiples of the mel frame rate
(100 Hz), less the same halfway between them. The generator makes each
10 ms of its output from one mel frame, through transposed convolutions,
and a transposed convolution of stride r leaves images of its input's
spectrum at the multiples of its input's rate unless its kernels learn to
cancel them (Pons et al. 2021, "Upsampling artifacts in neural audio
synthesis"); the first one's input is the 100 Hz frames. Speech has
nothing tied to that grid, so for a vocoder without such a comb the depth
is near 0 (Griffin-Lim's is).
``loud_signed_per_bin`` keeps the mean of log P - log T over the loud
frames for every STFT bin, to plot the comb.

data/vocoder/README.md reports a run on the generators of every part of
the reference (each taken from the commit that made it the reference)::

    python experiments/vocoder_band_errors.py --data corpus/lite --max-utterances 40 \\
        --json data/vocoder/lite_band_errors.json runs/parts/part{1,2,3,4,5,6}.safetensors
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from michi_lite.audio import MelSpectrogram, load_audio, normalize_mel
from michi_lite.config import get_config
from michi_lite.eval import voice_groups
from michi_lite.provenance import run_info
from michi_lite.vocoder import GriffinLim, load_vocoder

BIN_HZ = 10.0  # STFT bins this far apart: the comb's teeth, 100 Hz apart, fall on bins
FLOOR = 1e-5
LOUD_DB = 30.0
BAND_EDGES_HZ = (0, 250, 500, 1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000)


def stft_size(sample_rate: int) -> tuple[int, int]:
    """The STFT's (n_fft, hop) at this sample rate: bins ``BIN_HZ`` apart, 75% overlap."""
    n_fft = round(sample_rate / BIN_HZ)
    return n_fft, n_fft // 4


def log_magnitude(wave: torch.Tensor, sample_rate: int) -> np.ndarray:
    """(frequency bins, frames) natural log of the STFT magnitude."""
    n_fft, hop = stft_size(sample_rate)
    spec = torch.stft(wave, n_fft, hop, n_fft, torch.hann_window(n_fft), return_complex=True)
    return spec.abs().clamp(min=FLOOR).log().numpy()


def log_rms(log_mag: np.ndarray, bins: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Per frame, the log of the RMS magnitude over the given bins."""
    return 0.5 * np.log(np.exp(2 * log_mag[bins][:, frames]).mean(axis=0))


def spread(log_mag: np.ndarray, bins: np.ndarray, frames: np.ndarray) -> float:
    """Mean over the frames of log RMS magnitude less mean log magnitude, over the bins (``loud_spread``)."""
    return float((log_rms(log_mag, bins, frames) - log_mag[bins][:, frames].mean(axis=0)).mean())


def loud_frames(target: np.ndarray) -> np.ndarray:
    """The frames of an original's log magnitudes (bins, frames) within ``LOUD_DB`` of its loudest."""
    energy_db = 10 * np.log10(np.exp(2 * target).sum(axis=0))
    return energy_db > energy_db.max() - LOUD_DB


def band_masks(sample_rate: int) -> list[np.ndarray]:
    """For each band of ``BAND_EDGES_HZ``, which STFT bins it holds."""
    frequencies = np.fft.rfftfreq(stft_size(sample_rate)[0], 1 / sample_rate)
    return [(frequencies >= low) & (frequencies < high) for low, high in zip(BAND_EDGES_HZ[:-1], BAND_EDGES_HZ[1:])]


def band_errors(
    predicted: np.ndarray, target: np.ndarray, loud: np.ndarray, sample_rate: int, comb_hz: float
) -> dict[str, list[float] | float]:
    """One output's errors per band, and its comb depth (see the module's docstring).

    ``predicted`` and ``target`` are the log magnitudes (bins, frames) of the
    output and of its original, which are the same length; ``loud`` is
    ``loud_frames(target)``.
    """
    difference = predicted - target  # (bins, frames)
    errors: dict[str, list[float] | float] = defaultdict(list)
    for in_band in band_masks(sample_rate):
        band = difference[in_band][:, loud]
        errors["loud_abs"].append(float(np.abs(band).mean()))
        errors["loud_signed"].append(float(band.mean()))
        power_error = log_rms(predicted, in_band, loud) - log_rms(target, in_band, loud)
        errors["loud_power_signed"].append(float(power_error.mean()))
        errors["loud_spread"].append(spread(predicted, in_band, loud))
    errors["quiet_abs"] = float(np.abs(difference[:, ~loud]).mean()) if (~loud).any() else float("nan")
    per_bin = difference[:, loud].mean(axis=1)
    teeth = np.arange(1, int(sample_rate / 2 / comb_hz - 0.5) + 1) * comb_hz  # below the Nyquist frequency
    at = per_bin[np.rint(teeth / BIN_HZ).astype(int)]
    between = per_bin[np.rint((teeth - comb_hz / 2) / BIN_HZ).astype(int)]
    errors["comb_depth"] = float(at.mean() - between.mean())
    errors["loud_signed_per_bin"] = per_bin.tolist()
    return dict(errors)


def mean(values: list) -> list[float] | float:
    """Average over utterances, per band where the values are per band."""
    return np.nanmean(np.array(values), axis=0).round(4).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("vocoders", nargs="+", help="save_vocoder files or runs to compare")
    parser.add_argument("--data", required=True, help="the corpus directory")
    parser.add_argument("--preset", default="lite")
    parser.add_argument("--max-utterances", type=int, default=20)
    parser.add_argument("--json", required=True)
    args = parser.parse_args()

    audio = get_config(args.preset).audio
    comb_hz = audio.sample_rate / audio.hop_length
    systems = {path: load_vocoder(path, args.preset) for path in args.vocoders}
    systems["griffin_lim"] = GriffinLim(audio)
    frontend = MelSpectrogram(audio)
    records = voice_groups(args.data, "val")["seen"][:args.max_utterances]
    per_system: dict[str, dict[str, list]] = {name: defaultdict(list) for name in systems}
    original_spreads = []
    for record in records:
        wave = load_audio(Path(args.data) / record["path"], audio.sample_rate)
        original = torch.from_numpy(wave[:len(wave) // audio.hop_length * audio.hop_length])  # frames * hop
        target = log_magnitude(original, audio.sample_rate)
        loud = loud_frames(target)
        original_spreads.append([spread(target, in_band, loud) for in_band in band_masks(audio.sample_rate)])
        with torch.inference_mode():
            mel = normalize_mel(frontend(original))
            for name, system in systems.items():
                predicted = log_magnitude(system.vocode(mel).float(), audio.sample_rate)  # frames * hop too
                for measure, values in band_errors(predicted, target, loud, audio.sample_rate, comb_hz).items():
                    per_system[name][measure].append(values)
    report = {
        "split": "val", "voices": "seen", "n_utterances": len(records),
        "bands_hz": [list(edges) for edges in zip(BAND_EDGES_HZ[:-1], BAND_EDGES_HZ[1:])],
        "stft": dict(zip(("n_fft", "hop"), stft_size(audio.sample_rate)), floor=FLOOR, loud_within_db=LOUD_DB),
        "comb_hz": comb_hz,
        "systems": {name: {measure: mean(values) for measure, values in measures.items()}
                    for name, measures in per_system.items()},
        "original": {"loud_spread": mean(original_spreads)},
        "run": run_info(args.preset),
    }
    for name, measures in {**report["systems"], "original": report["original"]}.items():
        print(name, json.dumps({k: v for k, v in measures.items() if k != "loud_signed_per_bin"}), flush=True)
    Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
