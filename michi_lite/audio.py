"""Audio in and out: load, resample, validate, the mel frontend and 80 ms framing.

Everything the model hears or says passes through here:

1. ``load_audio`` / ``validate_waveform`` turn a file or an array into one
   clean float32 mono waveform at the model's sample rate, or raise
   ``AudioError`` saying what is wrong and with which file.
2. ``MelSpectrogram`` turns a waveform into a causal log-mel spectrogram
   (plain ``torch.stft`` and our own Slaney mel filterbank; no torchaudio).
3. ``normalize_mel`` scales log-mel to roughly zero mean, unit variance.
4. The 80 ms helpers cut waveforms into model frames and group the 8 mel
   columns of one frame into one patch: the model's audio embedding.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
import torch.nn.functional as F

from michi_lite.config import FRAME_SECONDS, AudioConfig

logger = logging.getLogger(__name__)

SUPPORTED_FORMATS = {"WAV", "WAVEX", "FLAC", "OGG"}  # soundfile's names for wav/flac/ogg
SILENCE_PEAK = 1e-4  # a peak below this (-80 dBFS) is silence, not speech
MAX_FLOAT_PEAK = 2.0  # float audio louder than this was never scaled to [-1, 1]
CLIP_LEVEL = 0.999  # a sample this close to full scale counts as clipped
CLIP_WARN_FRACTION = 0.01  # warn when more than 1% of samples are clipped


class AudioError(ValueError):
    """Bad audio input; the message names the problem and the file (or ``<array>``)."""


# --- loading, validating, saving -------------------------------------------------


def load_audio(path: str | Path, sample_rate: int, max_seconds: float = 600.0) -> np.ndarray:
    """Read a wav/flac/ogg file as float32 mono in [-1, 1] at ``sample_rate``.

    Channels are averaged to mono and the signal is resampled with soxr (HQ).
    The duration is checked from the header first, so an hours-long file is
    refused without being read into memory. Anything wrong (no file, not
    audio, empty, silent, too long, NaN or inf samples, ...) raises
    ``AudioError`` (a ValueError) naming the file, which is only read.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: file not found")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(f"{path}: not a readable audio file ({err})") from err
    if info.format not in SUPPORTED_FORMATS:
        raise AudioError(f"{path}: unsupported format {info.format}; use wav, flac or ogg")
    if info.frames == 0:
        raise AudioError(f"{path}: empty audio (0 samples)")
    seconds = info.frames / info.samplerate
    if seconds > max_seconds:
        raise AudioError(f"{path}: too long ({seconds:.1f} s > max_seconds={max_seconds:g} s)")

    try:
        data, file_rate = sf.read(str(path), dtype="float32", always_2d=True)
        # data: (samples, channels)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(f"{path}: could not decode audio ({err})") from err
    mono = data.mean(axis=1)  # (samples,)
    if file_rate != sample_rate:
        mono = soxr.resample(mono, file_rate, sample_rate, quality="HQ")
    return validate_waveform(mono, sample_rate, source=str(path), max_seconds=max_seconds)


def validate_waveform(
    waveform: np.ndarray | torch.Tensor,
    sample_rate: int,
    source: str = "<array>",
    max_seconds: float = 600.0,
) -> np.ndarray:
    """Check a mono waveform and return it as contiguous float32 in [-1, 1].

    Integer PCM (int16, int32, ...) is scaled to [-1, 1]. Raises ``AudioError``
    for a wrong type, a non-mono shape, empty, NaN/inf, silent or too-long
    input. Clipped audio is *not* an error: clipping is a quality problem, not
    an invalid input, so it is logged as a warning and passed through (float
    samples beyond full scale are clipped to [-1, 1] on the way).
    """
    audio = _as_float_mono(waveform, source)
    peak = float(np.abs(audio).max())
    if peak < SILENCE_PEAK:
        raise AudioError(f"{source}: audio is silent (peak {peak:.2e} < {SILENCE_PEAK:g})")
    seconds = len(audio) / sample_rate
    if seconds > max_seconds:
        raise AudioError(f"{source}: too long ({seconds:.1f} s > max_seconds={max_seconds:g} s)")

    audio = np.clip(audio, -1.0, 1.0)
    clipped = float(np.mean(np.abs(audio) >= CLIP_LEVEL))
    if clipped > CLIP_WARN_FRACTION:
        logger.warning(
            "%s: %.1f%% of samples are clipped; quality may suffer", source, 100 * clipped
        )
    return np.ascontiguousarray(audio, dtype=np.float32)


def prepare_waveform(
    waveform: np.ndarray | torch.Tensor, sample_rate: int, target_rate: int, source: str = "<array>"
) -> np.ndarray:
    """Validate an in-memory waveform and resample it (soxr, HQ) to ``target_rate``."""
    audio = validate_waveform(waveform, sample_rate, source=source)
    if sample_rate != target_rate:
        audio = soxr.resample(audio, sample_rate, target_rate, quality="HQ").astype(np.float32)
    return audio


MAX_SAVED_CHANNELS = 8  # a 2-D waveform with at most this many rows is (channels, samples)


def save_audio(path: str | Path, waveform: np.ndarray | torch.Tensor, sample_rate: int) -> Path:
    """Write a waveform as 16-bit PCM: FLAC for a ``.flac`` suffix, else WAV.

    Mono is (samples,). Several channels, such as a dialogue's user and
    assistant, are (channels, samples), channel 0 first: time last, as every
    array in this package holds it (soundfile wants it the other way round).
    Each channel passes the same checks a mono waveform does.
    """
    path = Path(path)
    if getattr(waveform, "ndim", None) == 2 and waveform.shape[0] <= MAX_SAVED_CHANNELS:  # a list: refused below
        channels = [np.clip(_as_float_mono(channel, f"{path} channel {i}"), -1.0, 1.0)
                    for i, channel in enumerate(waveform)]
        audio = np.stack(channels, axis=1)  # (samples, channels)
    else:
        audio = np.clip(_as_float_mono(waveform, str(path)), -1.0, 1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    file_format = "FLAC" if path.suffix.lower() == ".flac" else "WAV"
    sf.write(str(path), audio, sample_rate, subtype="PCM_16", format=file_format)
    return path


def _as_float_mono(waveform: np.ndarray | torch.Tensor, source: str) -> np.ndarray:
    """The type, shape and finiteness checks shared by validating and saving."""
    if isinstance(waveform, torch.Tensor):
        waveform = waveform.detach().cpu()
        # numpy has no bfloat16: bring any float tensor to float32 first
        waveform = (waveform.float() if waveform.is_floating_point() else waveform).numpy()
    if not isinstance(waveform, np.ndarray):
        kind = type(waveform).__name__
        raise AudioError(f"{source}: expected a numpy array or torch tensor, got {kind}")

    dtype = waveform.dtype
    if np.issubdtype(dtype, np.signedinteger):
        audio = waveform.astype(np.float32) / (np.iinfo(dtype).max + 1)  # int16: / 32768
    elif np.issubdtype(dtype, np.floating):
        audio = waveform.astype(np.float32)
    else:
        raise AudioError(
            f"{source}: unsupported dtype {dtype}; expected float or signed integer PCM"
        )

    if audio.ndim == 2 and min(audio.shape) <= 8:
        raise AudioError(
            f"{source}: got shape {audio.shape}, which looks like audio with a channel axis; "
            "mono audio is 1-D: mix the channels first (e.g. waveform.mean(axis=channel_axis)) "
            "or use load_audio, which does it for you"
        )
    if audio.ndim != 1:
        raise AudioError(f"{source}: expected a 1-D mono waveform, got shape {audio.shape}")
    if audio.size == 0:
        raise AudioError(f"{source}: empty audio (0 samples)")
    if not np.isfinite(audio).all():
        raise AudioError(f"{source}: audio contains NaN or inf samples")
    peak = float(np.abs(audio).max())
    if peak > MAX_FLOAT_PEAK:
        raise AudioError(
            f"{source}: peak {peak:.3g} is far outside [-1, 1]; "
            "float audio must be scaled (integer PCM stored as float?)"
        )
    return audio


# --- the mel frontend ------------------------------------------------------------


def hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    """Slaney's mel scale: linear up to 1 kHz (= 15 mel), logarithmic above."""
    log_step = math.log(6.4) / 27.0
    linear = hz / (200.0 / 3.0)
    log = 15.0 + torch.log(torch.clamp(hz, min=1000.0) / 1000.0) / log_step
    return torch.where(hz >= 1000.0, log, linear)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    """The inverse of ``hz_to_mel``."""
    log_step = math.log(6.4) / 27.0
    linear = mel * (200.0 / 3.0)
    log = 1000.0 * torch.exp(log_step * (mel - 15.0))
    return torch.where(mel >= 15.0, log, linear)


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None
) -> torch.Tensor:
    """Triangular mel filters, shape (n_mels, n_fft // 2 + 1).

    The Slaney mel scale with Slaney area normalisation (each triangle is
    scaled by 2 / its width in Hz), which is librosa's default and what
    HiFi-GAN's mel loss was built on.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    fft_hz = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    mel_min, mel_max = hz_to_mel(torch.tensor([f_min, f_max], dtype=torch.float64)).tolist()
    mel_edges = torch.linspace(mel_min, mel_max, n_mels + 2, dtype=torch.float64)
    hz_edges = mel_to_hz(mel_edges)  # band i rises on [edge i, edge i+1], falls on [i+1, i+2]
    lower, center, upper = hz_edges[:-2, None], hz_edges[1:-1, None], hz_edges[2:, None]
    rising = (fft_hz - lower) / (center - lower)
    falling = (upper - fft_hz) / (upper - center)
    triangles = torch.clamp(torch.minimum(rising, falling), min=0.0)  # (n_mels, n_fft // 2 + 1)
    return (triangles * 2.0 / (upper - lower)).float()


MEL_FLOOR = 1e-5  # mel magnitudes are clamped here before the log: digital silence's value


class MelSpectrogram(torch.nn.Module):
    """Causal log-mel spectrogram: (samples,) -> (n_mels, frames), batched or not.

    Mel frame i sees only the ``win_length`` samples ending at (i + 1) * hop:
    the waveform is padded on the left by ``n_fft - hop_length`` zeros, and
    the Hann window sits at the right end of each n_fft-long STFT frame (the
    zeros to its left only zero-pad the FFT). So a waveform of n samples gives
    exactly ``n // hop_length`` frames, trailing samples that fill no whole hop
    are left for the next call, and no frame waits for future audio: what the
    streaming engine and the causal vocoder need. Values are
    ``log(max(mel magnitude, MEL_FLOOR))``.
    """

    def __init__(self, cfg: AudioConfig) -> None:
        super().__init__()
        if cfg.win_length > cfg.n_fft:
            raise ValueError(f"win_length {cfg.win_length} is longer than n_fft {cfg.n_fft}")
        self.n_fft, self.hop_length, self.n_mels = cfg.n_fft, cfg.hop_length, cfg.n_mels
        window = torch.zeros(cfg.n_fft)
        window[-cfg.win_length:] = torch.hann_window(cfg.win_length)  # right-aligned: causal
        self.register_buffer("window", window, persistent=False)
        filters = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.f_min, cfg.f_max)
        self.register_buffer("filters", filters, persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        unbatched = waveform.dim() == 1
        audio = waveform.unsqueeze(0) if unbatched else waveform  # (batch, samples)
        n_frames = audio.shape[-1] // self.hop_length
        if n_frames == 0:
            empty = audio.new_zeros(audio.shape[0], self.n_mels, 0)
            return empty[0] if unbatched else empty
        audio = F.pad(audio, (self.n_fft - self.hop_length, 0))
        spec = torch.stft(
            audio, self.n_fft, hop_length=self.hop_length, window=self.window,
            center=False, return_complex=True,
        ).abs()  # (batch, n_fft // 2 + 1, frames)
        mel = torch.log(torch.clamp(self.filters @ spec, min=MEL_FLOOR))  # (batch, n_mels, frames)
        return mel[0] if unbatched else mel


# Log-mel statistics of speech: mean and standard deviation over every bin and
# frame (pauses included) of 56 synthetic utterances, 8 sentences spoken by
# espeak-ng (3 voices), flite (3 voices) and piper (joe), each peak-normalised to
# 0.9, through the ``lite`` frontend: mean -5.24, std 2.59. The ``michi``
# frontend gives -5.82, 2.98 on the same audio, close enough to share them.
# Fixed constants, not per-dataset statistics, so a checkpoint and its inputs
# always agree.
LOG_MEL_MEAN = -5.2
LOG_MEL_STD = 2.6


def normalize_mel(log_mel: torch.Tensor) -> torch.Tensor:
    """Log-mel -> roughly zero mean, unit variance: (x - LOG_MEL_MEAN) / LOG_MEL_STD."""
    return (log_mel - LOG_MEL_MEAN) / LOG_MEL_STD


def denormalize_mel(normalized: torch.Tensor) -> torch.Tensor:
    """The inverse of ``normalize_mel``."""
    return normalized * LOG_MEL_STD + LOG_MEL_MEAN


SILENCE_MEL = (math.log(MEL_FLOOR) - LOG_MEL_MEAN) / LOG_MEL_STD  # every bin of a silent frame, normalised


# --- the 80 ms frame clock -------------------------------------------------------


def check_mel(mel: torch.Tensor, n_mels: int) -> None:
    """Raise ValueError unless ``mel`` is a finite (n_mels, frames) or (batch, n_mels, frames) tensor."""
    if not isinstance(mel, torch.Tensor):
        raise ValueError(f"mel must be a torch.Tensor, got {type(mel).__name__}")
    if mel.dim() not in (2, 3):
        raise ValueError(
            f"mel must have shape (n_mels, frames) or (batch, n_mels, frames), got {tuple(mel.shape)}"
        )
    if mel.shape[-2] != n_mels:
        hint = " (is it transposed? mel is (n_mels, frames))" if mel.shape[-1] == n_mels else ""
        raise ValueError(f"mel has {mel.shape[-2]} mel bins on axis -2, this vocoder expects {n_mels}{hint}")
    if mel.shape[-1] == 0:
        raise ValueError("mel has no frames")
    if not torch.isfinite(mel).all():
        raise ValueError("mel contains NaN or inf values")


def silent_mel(like: torch.Tensor, frames: int) -> torch.Tensor:
    """``frames`` columns of the normalised mel of digital silence, shaped and placed like ``like``."""
    return like.new_full((*like.shape[:-1], frames), SILENCE_MEL)


def frame_count(n_samples: int, cfg: AudioConfig) -> int:
    """How many 80 ms frames ``n_samples`` fill, the last one possibly partly."""
    return math.ceil(n_samples / cfg.samples_per_frame)


def pad_to_frames(
    waveform: np.ndarray | torch.Tensor, cfg: AudioConfig
) -> np.ndarray | torch.Tensor:
    """Right-pad the last axis with zeros to a whole number of 80 ms frames."""
    n_samples = waveform.shape[-1]
    pad = frame_count(n_samples, cfg) * cfg.samples_per_frame - n_samples
    if isinstance(waveform, torch.Tensor):
        return F.pad(waveform, (0, pad))
    return np.pad(waveform, [(0, 0)] * (waveform.ndim - 1) + [(0, pad)])


def split_frames(
    waveform: np.ndarray | torch.Tensor, cfg: AudioConfig
) -> np.ndarray | torch.Tensor:
    """(..., samples) -> (..., n_frames, samples_per_frame), zero-padding the last frame."""
    padded = pad_to_frames(waveform, cfg)
    n_frames = padded.shape[-1] // cfg.samples_per_frame
    return padded.reshape(tuple(padded.shape[:-1]) + (n_frames, cfg.samples_per_frame))


def mel_patches(mel: torch.Tensor, cfg: AudioConfig) -> torch.Tensor:
    """(..., n_mels, mel_frames) -> (..., frames, mels_per_frame * n_mels).

    Each 80 ms patch is its ``mels_per_frame`` mel columns laid out one after
    another in time order. ``mel_frames`` must be a whole number of patches:
    pad the waveform with ``pad_to_frames`` before the mel frontend.
    """
    n_mels, mel_frames = mel.shape[-2:]
    if mel_frames % cfg.mels_per_frame:
        raise ValueError(
            f"{mel_frames} mel frames are not a whole number of "
            f"{cfg.mels_per_frame}-frame patches; pad the waveform with pad_to_frames first"
        )
    columns = mel.transpose(-1, -2)  # (..., mel_frames, n_mels)
    n_frames = mel_frames // cfg.mels_per_frame
    return columns.reshape(*mel.shape[:-2], n_frames, cfg.mels_per_frame * n_mels)


def mel_from_patches(patches: torch.Tensor, cfg: AudioConfig) -> torch.Tensor:
    """The inverse of ``mel_patches``.

    (..., frames, mels_per_frame * n_mels) -> (..., n_mels, mel_frames)
    """
    n_frames = patches.shape[-2]
    columns = patches.reshape(*patches.shape[:-2], n_frames * cfg.mels_per_frame, cfg.n_mels)
    return columns.transpose(-1, -2)


# --- voice prompts ------------------------------------------------------------------

MIN_PROMPT_SECONDS = 1.0
MAX_PROMPT_SECONDS = 10.0
SPEECH_MARGIN = 1.0  # a patch is speech if its mean normalised log-mel is this far above silence's


def audio_patches(wave: torch.Tensor, audio: AudioConfig) -> torch.Tensor:
    """(samples,) -> (frames, patch_dim): normalised log-mel, one 80 ms patch per frame."""
    frontend = MelSpectrogram(audio).to(wave.device)
    return mel_patches(normalize_mel(frontend(pad_to_frames(wave, audio))), audio)


def speech_patches(patches: torch.Tensor) -> torch.Tensor:
    """The patches of a voice prompt that hold speech: pauses say nothing about a voice."""
    return patches[patches.mean(-1) > SILENCE_MEL + SPEECH_MARGIN]


def voice_prompt(wave: np.ndarray | torch.Tensor, audio: AudioConfig, source: str = "voice prompt") -> torch.Tensor:
    """A waveform at ``audio.sample_rate`` -> its speech patches (frames, patch_dim), checked.

    The first ``MAX_PROMPT_SECONDS`` are used. Fewer than ``MIN_PROMPT_SECONDS``
    of speech (after pauses are dropped) is an ``AudioError``: a voice cannot
    be told from less.
    """
    wave = torch.as_tensor(wave, dtype=torch.float32)[:round(MAX_PROMPT_SECONDS * audio.sample_rate)]
    patches = speech_patches(audio_patches(wave, audio))
    have = len(patches) * FRAME_SECONDS
    if have < MIN_PROMPT_SECONDS:
        raise AudioError(f"{source}: {have:.2f} s of speech; a voice prompt needs at least "
                         f"{MIN_PROMPT_SECONDS:g} s (ideally 3-10 s) of one person speaking")
    return patches


def load_voice_prompt(path: str | os.PathLike, audio: AudioConfig) -> torch.Tensor:
    """A voice prompt file (any rate or channel count: it is resampled and mixed to mono) -> speech patches."""
    return voice_prompt(load_audio(path, audio.sample_rate, max_seconds=600.0), audio, source=str(path))
