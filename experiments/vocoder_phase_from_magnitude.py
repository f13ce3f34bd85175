"""How much of an ISTFT vocoder's quality is its magnitudes, how much its phases, and what PGHI gives back.

On validation utterances of seen voices, each wave's STFT in the ISTFT
generator's own frames (30 ms Hann windows, 10 ms hops, about the window's
centre) is put back together from:

- its real magnitudes with its real phases (the ceiling: the synthesis itself),
- its real magnitudes with phases computed from them (``phase_from_magnitude``),
- its real magnitudes with random phases (the floor);

and, for every ISTFT vocoder given, from its own predicted log-magnitudes
with the real phases, with phases computed from them, and as the vocoder
itself plays them, beside how far its log-magnitudes are from the real
ones (mean absolute difference in nats, each floored at
``LOG_MAGNITUDE_FLOOR``, over all bins and over the bins within 40 dB of
their frame's loudest). PESQ-wb against the original, without the judge:
about a second an utterance on 2 CPU cores.

data/vocoder/README.md reports the advance head (the reference then) and the
pghi head::

    cp data/vocoder/lite_advance.safetensors runs/advance_reference.safetensors
    python experiments/vocoder_phase_from_magnitude.py --data corpus/lite_6h_engines --max-utterances 40 \\
        --json data/vocoder/lite_phase_from_magnitude.json \\
        runs/advance_reference.safetensors data/vocoder/lite_pghi.safetensors
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from michi_lite.audio import MelSpectrogram, load_audio, normalize_mel
from michi_lite.eval import pesq_wideband, voice_groups
from michi_lite.provenance import run_info
from michi_lite.vocoder import (LOG_MAGNITUDE_FLOOR, IstftGenerator, generator_frame_spectra, load_vocoder,
                                overlap_add, phase_from_magnitude, vocoder_config)


def rebuild(generator: IstftGenerator, magnitude: torch.Tensor, phase: torch.Tensor, length: int) -> np.ndarray:
    """Spectra about the window centre (1, frames, bins) -> the wave they make, lined up with the original."""
    frames = torch.fft.irfft(torch.polar(magnitude, phase.to(magnitude.dtype)) * generator.signs, n=generator.n_fft)
    out = overlap_add(frames * generator.window, generator.hop_length)[0]
    lag = generator.cfg.lookahead_samples
    return out[lag:lag + length].numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("vocoders", nargs="*", help="ISTFT vocoders (save_vocoder files or runs) to take apart")
    parser.add_argument("--data", required=True, help="the corpus directory")
    parser.add_argument("--preset", default="lite")
    parser.add_argument("--max-utterances", type=int, default=40)
    parser.add_argument("--json", required=True)
    args = parser.parse_args()

    systems = {path: load_vocoder(path, args.preset) for path in args.vocoders}
    for path, system in systems.items():
        if not isinstance(system, IstftGenerator):
            parser.error(f"{path} is a {system.cfg.arch} vocoder: only ISTFT generators have magnitudes to take apart")
    # the frames' window, hop and signs are the preset's, whatever the head
    framer = IstftGenerator(replace(vocoder_config(args.preset), arch="istft", istft_phase="pghi"))
    audio = framer.cfg.audio
    frontend = MelSpectrogram(audio)
    scores: dict[str, list[float]] = {}
    distances: dict[str, list[float]] = {}
    records = voice_groups(args.data, "val")["seen"][:args.max_utterances]
    generator = torch.Generator().manual_seed(0)
    for record in records:
        wave = load_audio(Path(args.data) / record["path"], audio.sample_rate)
        reference = wave[:len(wave) // audio.hop_length * audio.hop_length]
        length = len(reference) - framer.cfg.lookahead_samples
        spectrum = generator_frame_spectra(torch.from_numpy(reference)[None].double(), framer.cfg) * framer.signs
        magnitude = spectrum.abs()
        log_magnitude = magnitude.clamp(min=1e-12).log()
        kept = reference[:length]

        def score(name: str, out: np.ndarray) -> None:
            scores.setdefault(name, []).append(pesq_wideband(kept, out.astype(np.float32), audio.sample_rate))

        computed = phase_from_magnitude(log_magnitude, audio.hop_length)[0]
        random = (torch.rand(magnitude.shape, generator=generator, dtype=torch.float64) - 0.5) * 2 * math.pi
        score("real magnitudes, real phases", rebuild(framer, magnitude, spectrum.angle(), length))
        score("real magnitudes, phases from them", rebuild(framer, magnitude, computed, length))
        score("real magnitudes, random phases", rebuild(framer, magnitude, random, length))
        mel = normalize_mel(frontend(torch.from_numpy(reference)))
        for path, system in systems.items():
            with torch.inference_mode():
                predicted, _ = system.spectra(system.trunk(mel[None]))
                own = system.vocode(mel)[:length].numpy()
            predicted = predicted.double().clamp(max=math.log(100))
            score(f"{path}: its magnitudes, real phases", rebuild(framer, predicted.exp(), spectrum.angle(), length))
            score(f"{path}: its magnitudes, phases from them",
                  rebuild(framer, predicted.exp(), phase_from_magnitude(predicted, audio.hop_length)[0], length))
            score(f"{path}: as it plays", own)
            error = (predicted.clamp(min=LOG_MAGNITUDE_FLOOR) - log_magnitude.clamp(min=LOG_MAGNITUDE_FLOOR)).abs()
            loud = log_magnitude > log_magnitude.amax(-1, keepdim=True) - math.log(100)  # within 40 dB
            distances.setdefault(f"{path}: all bins", []).append(float(error.mean()))
            distances.setdefault(f"{path}: loud bins", []).append(float(error[loud].mean()))
    report = {
        "split": "val", "voices": "seen", "n_utterances": len(records),
        "pesq_wb": {name: float(np.nanmean(values)) for name, values in scores.items()},
        "log_magnitude_error_nats": {name: float(np.mean(values)) for name, values in distances.items()},
        "run": run_info(args.preset),
    }
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    for name, value in report["pesq_wb"].items():
        print(f"{value:.3f}  {name}")
    for name, value in report["log_magnitude_error_nats"].items():
        print(f"{value:.3f} nats  {name}")


if __name__ == "__main__":
    main()
