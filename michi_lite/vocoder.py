"""Causal vocoders that stream 80 ms at a time (HiFi-GAN, and an inverse-STFT head), their GAN losses,
and a Griffin-Lim baseline. The recipe that trains them is ``train_vocoder.py``.

The model says a normalised log-mel patch per 80 ms frame; the vocoder turns it
into sound. It has to do so *as the frames arrive*, so every convolution here is
causal: output sample n depends on mel frames up to the one just received,
never on later ones.

**Look-ahead.** ``MelSpectrogram``'s frame i sees the 40 ms ending at
(i + 1) * hop through a Hann window, which weighs those newest samples least:
the window's centre is two hops back. A vocoder asked for samples
[i * hop, (i + 1) * hop) from frames up to i would have to guess audio that
frame i barely shows. So the generator answers frame i with the samples
``lookahead_hops`` hops earlier (2 hops, 20 ms, in every preset), where the
window has seen them fully. That fixed delay is the vocoder's only look-ahead:
``vocode`` and ``StreamingVocoder.flush`` take it back out, so the waveform
lines up with the mel.

1. ``HiFiGANGenerator``: mel (batch, n_mels, frames) -> wave (batch, frames * hop),
   HiFi-GAN's layout (Kong et al. 2020) with left-only padding, upsampling by
   transposed convs or, as an option, by nearest-neighbour repetition and a conv.
2. ``StreamingVocoder``: the same generator's layers run one chunk at a time,
   each by a step of its own (``ConvStream``, ``UpsampleStream``) that keeps
   the last (kernel - 1) * dilation samples of its input, so a chunk costs the
   same however long the stream is, and the samples equal the offline ones.
3. ``IstftGenerator`` and ``IstftStream``: ConvNeXt blocks at the frame rate
   predict each frame's magnitude and phase, and an inverse STFT whose window
   the look-ahead bounds makes the samples (Vocos's design, made causal); the
   same interface, lag, training and checkpoints (``cfg.arch``). Its head can
   give the phases' advances instead, or magnitudes alone, taught directly
   (``magnitude_loss``), with the phases computed from them
   (``phase_from_magnitude``, phase-gradient integration).
4. ``MultiPeriodDiscriminator`` and ``MultiResolutionDiscriminator`` with the
   least-squares GAN, feature-matching and mel L1 losses (and, if weighted,
   a multi-resolution STFT loss and a multi-scale mel loss), which
   ``train_vocoder.py`` trains with.
5. ``GriffinLim``: the classic baseline through the same interface.
6. ``save_vocoder`` / ``load_vocoder``: safetensors with the preset and the
   config in the metadata; a file loads as the architecture it was trained as.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm
from torch.nn.utils.parametrize import is_parametrized, remove_parametrizations

from michi_lite.audio import (
    MEL_FLOOR,
    SILENCE_MEL,
    MelSpectrogram,
    check_mel,
    denormalize_mel,
    mel_filterbank,
    silent_mel,
)
from michi_lite.config import AudioConfig, get_config
from michi_lite.weights import fitting_weights, read_weights, saved_config, write_weights

logger = logging.getLogger(__name__)

LRELU_SLOPE = 0.1
CHECKPOINT_FORMAT = "michi_lite.vocoder/1"
UPSAMPLERS = ("transposed", "nearest")
ARCHS = ("hifigan", "istft")
ISTFT_PHASES = ("frame", "advance", "pghi")


# --- configuration ----------------------------------------------------------------


@dataclass(frozen=True)
class VocoderConfig:
    """Generator and discriminator shapes plus the training recipe, for one preset."""

    preset: str
    audio: AudioConfig
    upsample_rates: tuple[int, ...]  # their product is the mel hop
    upsample_initial_channel: int  # halved after every upsampling
    # "hifigan": ``HiFiGANGenerator``, upsampling at the sample rate; "istft": ``IstftGenerator``,
    # ConvNeXt blocks at the frame rate and an inverse STFT. The upsample_* and resblock_* fields
    # shape the first, the istft_* fields the second; discriminators and recipe serve both.
    arch: str = "hifigan"
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilations: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    resblock_plain_convs: bool = True  # True: HiFi-GAN's ResBlock1; False: the lighter ResBlock2
    # "transposed": HiFi-GAN's transposed convs; "nearest": nearest-neighbour upsampling and a conv
    # (``CausalUpsample``), free of the tone at each stage's input rate (Pons et al. 2021)
    upsampler: str = "transposed"
    lookahead_hops: int = 2  # frame i is answered with the samples this many hops before its own
    istft_channels: int = 256  # the ConvNeXt blocks' width
    istft_blocks: int = 8
    istft_kernel_size: int = 7  # each block's causal depthwise conv, in frames
    # "frame": the head gives each frame's phases (Vocos's); "advance": how far each bin's phase
    # turns since the frame before, summed over frames as a phase vocoder does; "pghi": the head
    # gives magnitudes only, and the phases follow from them (``phase_from_magnitude``)
    istft_phase: str = "frame"
    # Frames a "pghi" head's phases look ahead: 0, each frame's time slope of the log-magnitude is
    # the step from the frame before; 1, it is centred (the frames before and after), and each frame
    # waits for the next, one hop more lag. A setting of synthesis, not of the weights.
    phase_lookahead_hops: int = 0
    mpd_periods: tuple[int, ...] = (2, 3, 5, 7, 11)
    mpd_channels: tuple[int, ...] = (32, 128, 512, 1024, 1024)
    # (n_fft, hop, win) of each STFT the resolution discriminator looks at (BigVGAN's)
    mrd_resolutions: tuple[tuple[int, int, int], ...] = ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240))
    mrd_channels: int = 32
    # training recipe: HiFi-GAN's, with the decay applied per step instead of per epoch
    batch_size: int = 16
    segment_seconds: float = 0.512
    learning_rate: float = 2e-4
    adam_betas: tuple[float, float] = (0.8, 0.99)
    lr_decay: float = 0.99999  # per step: the rate falls to 37% over 100k steps
    mel_loss_weight: float = 45.0
    feature_loss_weight: float = 2.0
    # A multi-resolution STFT loss beside the mel L1 (Parallel WaveGAN's, Yamamoto et al. 2020):
    # it sees the detail between mel bands that the mel loss averages away. 0 is HiFi-GAN's recipe.
    stft_loss_weight: float = 0.0
    stft_loss_resolutions: tuple[tuple[int, int, int], ...] = ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240))
    # A multi-scale mel loss beside them (DAC's, Kumar et al. 2023): the log-mel L1 at windows from
    # 2 ms to 128 ms, each with a hop of a quarter window and a mel band for every 6.4 samples of it.
    # 0 is HiFi-GAN's recipe.
    multiscale_mel_loss_weight: float = 0.0
    multiscale_mel_windows: tuple[int, ...] = (32, 64, 128, 256, 512, 1024, 2048)
    # Steps in which the generator learns alone, from the mel L1, before the discriminators
    # join (a warm-up as in Parallel WaveGAN, Yamamoto et al. 2020). 0 is HiFi-GAN's recipe.
    # Without the discriminators a lite step costs about a fifteenth on a CPU.
    discriminator_start: int = 0
    # Steps, from discriminator_start on, in which only the fresh discriminators learn, against
    # the generator as it stands, before it hears their verdicts (Parallel WaveGAN's trainer holds
    # its generator back the same way, with generator_train_start_steps). 0 is HiFi-GAN's recipe.
    discriminator_warmup: int = 0
    # An L1 on the phase advance of each bin from frame to frame (the instantaneous frequency,
    # wrapped, APNet's, Ai and Ling 2023), against the real wave's, weighted by how loud the bin
    # is: the one direct supervision the phase can have. Only for istft_phase "advance"; 0 is off.
    phase_loss_weight: float = 0.0
    # An L1 on the head's log-magnitudes against the real wave's, in the generator's own frames
    # (``magnitude_loss``): what a "pghi" head learns from, since its phases follow from them.
    # Only for arch "istft"; 0 is off.
    magnitude_loss_weight: float = 0.0
    # The share of training segments whose mel is the acoustic model's instead of the real wave's
    # (``acoustic.speak_on_engine_timing``: columns laid on the engine's timing, so they line up with
    # the wave the losses compare against), from the file ``acoustic_mels``. 0 is off.
    acoustic_mels: str | None = None
    acoustic_mel_share: float = 0.0
    # A vocoder file whose audio of each acoustic mel those segments are compared against, in place
    # of the real audio. The acoustic model's mels are smooth where real ones show harmonics, and no
    # real wave says which harmonics a smooth mel should get: against the real audio a head learns
    # their average, breath. A teacher's audio is one fixed answer it can learn. None: the real audio.
    acoustic_mel_teacher: str | None = None
    # The teacher file's SHA-256, recorded when a run starts: a resumed run whose teacher is another
    # file under the same name would hear other targets, and refuses to.
    acoustic_mel_teacher_digest: str | None = None

    def __post_init__(self) -> None:
        if math.prod(self.upsample_rates) != self.audio.hop_length:
            raise ValueError(
                f"upsample rates {self.upsample_rates} multiply to {math.prod(self.upsample_rates)}, "
                f"not the hop length {self.audio.hop_length}"
            )
        if self.upsample_initial_channel % 2 ** len(self.upsample_rates):
            raise ValueError("upsample_initial_channel must halve cleanly at every upsampling")
        if self.upsampler not in UPSAMPLERS:
            raise ValueError(f"upsampler must be one of {UPSAMPLERS}, not {self.upsampler!r}")
        if self.lookahead_hops < 0:
            raise ValueError(f"lookahead_hops must be 0 or more, not {self.lookahead_hops}")
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, not {self.arch!r}")
        if not 0 <= self.acoustic_mel_share <= 1:
            raise ValueError(f"acoustic_mel_share must be between 0 and 1, not {self.acoustic_mel_share}")
        if self.acoustic_mel_share and not self.acoustic_mels:
            raise ValueError("acoustic_mel_share needs acoustic_mels, a file of `michi-lite data acoustic-mels`")
        if self.acoustic_mel_teacher and not self.acoustic_mel_share:
            raise ValueError("acoustic_mel_teacher speaks the acoustic mels: give acoustic_mels and a share above 0")
        if self.phase_lookahead_hops not in (0, 1):
            raise ValueError(f"phase_lookahead_hops must be 0 or 1, not {self.phase_lookahead_hops}")
        if self.phase_lookahead_hops and (self.arch, self.istft_phase) != ("istft", "pghi"):
            raise ValueError("phase_lookahead_hops is for an istft generator with pghi phases, computed from "
                             "its magnitudes; other heads have no phase to look ahead for")
        if self.arch == "istft" and self.lookahead_hops < 1:
            raise ValueError("the istft generator's window is lookahead_hops + 1 hops long, and a one-hop "
                             "window cannot overlap its neighbours: give lookahead_hops 1 or more")
        if self.istft_phase not in ISTFT_PHASES:
            raise ValueError(f"istft_phase must be one of {ISTFT_PHASES}, not {self.istft_phase!r}")
        if not self.phase_loss_weight >= 0:
            raise ValueError(f"phase_loss_weight must be 0 or more, not {self.phase_loss_weight}")
        if self.phase_loss_weight and (self.arch, self.istft_phase) != ("istft", "advance"):
            raise ValueError("the phase loss trains the istft generator's phase advances: give arch 'istft' "
                             "and istft_phase 'advance'")
        if not self.magnitude_loss_weight >= 0:
            raise ValueError(f"magnitude_loss_weight must be 0 or more, not {self.magnitude_loss_weight}")
        if self.magnitude_loss_weight and self.arch != "istft":
            raise ValueError("the magnitude loss trains the istft generator's magnitudes: give arch 'istft'")
        if min(self.istft_channels, self.istft_blocks, self.istft_kernel_size) < 1:
            raise ValueError("istft_channels, istft_blocks and istft_kernel_size must be 1 or more")
        if len(self.resblock_dilations) != len(self.resblock_kernel_sizes) or not all(self.resblock_dilations):
            raise ValueError("give every ResBlock kernel size its own non-empty tuple of dilations")
        if self.segment_samples <= self.lookahead_samples:
            raise ValueError("training segments must be longer than the look-ahead")
        if self.discriminator_start < 0:
            raise ValueError(f"discriminator_start must be 0 or more, not {self.discriminator_start}")
        if self.discriminator_warmup < 0:
            raise ValueError(f"discriminator_warmup must be 0 or more, not {self.discriminator_warmup}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1], not {self.lr_decay}")
        if not self.stft_loss_weight >= 0:  # NaN too
            raise ValueError(f"stft_loss_weight must be 0 or more, not {self.stft_loss_weight}")
        if not self.multiscale_mel_loss_weight >= 0:
            raise ValueError(f"multiscale_mel_loss_weight must be 0 or more, not {self.multiscale_mel_loss_weight}")
        if not self.multiscale_mel_windows or min(self.multiscale_mel_windows) < 32:
            raise ValueError("multiscale_mel_windows must be one or more windows of at least 32 samples "
                             "(5 mel bands, DAC's shortest)")

    @property
    def delay_hops(self) -> int:
        """How many hops the generator's output lags the mel it is given: its look-ahead and its phases'."""
        return self.lookahead_hops + self.phase_lookahead_hops

    @property
    def lookahead_samples(self) -> int:
        """How far the generator's output lags the mel it is given, in samples."""
        return self.delay_hops * self.audio.hop_length

    @property
    def istft_n_fft(self) -> int:
        """The inverse STFT's frame: the look-ahead and the hop of the frame itself (``IstftGenerator``)."""
        return (self.lookahead_hops + 1) * self.audio.hop_length

    @property
    def segment_samples(self) -> int:
        """Training segment length, a whole number of mel hops."""
        hop = self.audio.hop_length
        return round(self.segment_seconds * self.audio.sample_rate / hop) * hop

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def generator_fields(self) -> dict:
        """What a generator checkpoint must agree on to load: the audio and the generator's shape."""
        fields = json.loads(self.to_json())
        shape = (("upsample_rates", "upsample_initial_channel", "resblock_kernel_sizes", "resblock_dilations",
                  "resblock_plain_convs", "upsampler") if self.arch == "hifigan" else
                 ("istft_channels", "istft_blocks", "istft_kernel_size", "istft_phase"))
        return {k: fields[k] for k in ("audio", "arch", "lookahead_hops", *shape)}


def vocoder_config(preset_name: str) -> VocoderConfig:
    """The vocoder for a preset: its sizes follow the preset's audio and speed budget.

    * ``tiny``: about 29k parameters, so the tests train it in seconds.
    * ``lite``: 16 kHz, hop 160 = 5 * 4 * 4 * 2, HiFi-GAN V3's layout
      (ResBlock2 with kernels 3, 5, 7) at 128 channels: 0.34M parameters, 30
      convs. Sized by the RTF 0.1 budget (8 ms per 80 ms chunk) on two shared
      CPU cores, where the time per chunk swings by half between runs. Each
      of the four stages costs about the same arithmetic (channels halve
      while time grows 4x), so the width sets the speed. Measured there (one
      thread, three interleaved runs each, ms per chunk): 128 channels
      4.5-7.5, 160 channels 5.3-8.7, 192 channels 5.8-10; three stages
      (8 * 5 * 4) at 192 channels do more arithmetic, not less. 128 is the
      width that stays under the budget on a slow run.
      Its period discriminators are a quarter of HiFi-GAN's width (2.7M
      parameters instead of 41M: still eight times the generator), the
      resolution ones 16 channels wide, so that a full checkpoint with its
      optimizer moments is under 40 MB and training costs little.
    * ``michi``: 24 kHz, hop 240 = 5 * 4 * 4 * 3, HiFi-GAN V1's layout at 384
      channels: 7.4M parameters (MichiAI's scale), full-width discriminators.
    """
    audio = get_config(preset_name).audio
    if preset_name == "tiny":
        return VocoderConfig(
            preset="tiny", audio=audio,
            upsample_rates=(5, 4, 4, 2),
            upsample_initial_channel=32, resblock_kernel_sizes=(3,), resblock_dilations=((1, 3),),
            istft_channels=16, istft_blocks=2,
            mpd_periods=(2, 3), mpd_channels=(4, 8, 8), mrd_resolutions=((256, 64, 256),),
            mrd_channels=4, batch_size=2, segment_seconds=0.16, stft_loss_resolutions=((256, 64, 256),),
        )
    if preset_name == "lite":
        return VocoderConfig(
            preset="lite", audio=audio,
            upsample_rates=(5, 4, 4, 2), upsample_initial_channel=128,
            resblock_kernel_sizes=(3, 5, 7), resblock_dilations=((1, 2), (2, 6), (3, 12)),
            resblock_plain_convs=False,
            mpd_channels=(32, 64, 128, 256, 256), mrd_channels=16,
        )
    if preset_name == "michi":
        return VocoderConfig(
            preset="michi", audio=audio,
            upsample_rates=(5, 4, 4, 3),
            upsample_initial_channel=384, istft_channels=512, segment_seconds=0.4,
        )
    raise ValueError(f"no vocoder for preset {preset_name!r}")


# --- causal layers ---------------------------------------------------------------------


class CausalConv1d(nn.Module):
    """A Conv1d padded on the left only: output t sees inputs t - (k-1)*d .. t."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1) -> None:
        super().__init__()
        self.kernel_size, self.dilation = kernel_size, dilation
        self.context = (kernel_size - 1) * dilation  # input samples of the past each output needs
        conv = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation)
        nn.init.normal_(conv.weight, 0.0, 0.01)  # HiFi-GAN's init: the generator starts near silence
        self.conv = weight_norm(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (self.context, 0)))  # (batch, out_channels, time)


class CausalUpsample(nn.Module):
    """Upsample by ``rate`` with a transposed conv of kernel 2 * rate, trimmed to be causal.

    Input frame j spreads over outputs [j*rate, (j+2)*rate). Keeping the first
    T*rate outputs (dropping the rate that spill past the end) makes the
    output hop of frame j depend on frames j and j - 1 only: no look-ahead,
    and a stream keeps one input frame.

    ``nearest=True`` is nearest-neighbour upsampling followed by a causal conv
    of rate + 1 taps, written as the same transposed conv: repeating each
    frame ``rate`` times and convolving with w is a transposed conv whose
    kernel is w smoothed by a box of ``rate`` ones, 2 * rate taps long. The
    box puts a zero of the kernel's response at every multiple of the input
    rate, so a steady input gives a steady output. A free 2 * rate kernel
    need not, and its uneven sum over the output phases is a tone at the
    input rate and its multiples: the "tonal artifacts" of Pons et al. 2021,
    "Upsampling artifacts in neural audio synthesis". Both have the same
    cost and the same stream; the nearest kernel has rate - 1 fewer free taps.
    """

    def __init__(self, in_channels: int, out_channels: int, rate: int, nearest: bool = False) -> None:
        super().__init__()
        self.rate, self.nearest = rate, nearest
        conv = nn.ConvTranspose1d(in_channels, out_channels, rate + 1 if nearest else 2 * rate, rate)
        nn.init.normal_(conv.weight, 0.0, 0.01)
        self.conv = weight_norm(conv)

    @property
    def kernel(self) -> torch.Tensor:
        """The transposed conv's (in_channels, out_channels, 2 * rate) kernel."""
        weight = self.conv.weight
        if not self.nearest:
            return weight
        return sum(F.pad(weight, (shift, self.rate - 1 - shift)) for shift in range(self.rate))  # the box

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv_transpose1d(x, self.kernel, self.conv.bias, self.rate)
        return y[:, :, :x.shape[-1] * self.rate]  # (batch, out_channels, time * rate)


class ResBlock(nn.Module):
    """HiFi-GAN's residual block: a dilated conv per dilation, each with a residual add.

    ResBlock1 (``plain_convs=True``, HiFi-GAN V1/V2) follows every dilated
    conv with an undilated one; ResBlock2 (V3) has the dilated convs only:
    a third of the layers, for a fast generator.
    """

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...], plain_convs: bool) -> None:
        super().__init__()
        self.dilated = nn.ModuleList(CausalConv1d(channels, channels, kernel_size, d) for d in dilations)
        self.plain = nn.ModuleList(CausalConv1d(channels, channels, kernel_size) for _ in dilations if plain_convs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, dilated in enumerate(self.dilated):
            h = dilated(F.leaky_relu(x, LRELU_SLOPE))
            if self.plain:
                h = self.plain[i](F.leaky_relu(h, LRELU_SLOPE))
            x = x + h
        return x


class CausalVocoder(nn.Module):
    """What every generator here shares: ``forward`` is the causal network, lagging the mel by
    ``cfg.lookahead_samples``; ``vocode`` gives whole clips' waveforms aligned with their mel."""

    cfg: VocoderConfig
    n_mels: int

    def vocode(self, mel: torch.Tensor) -> torch.Tensor:
        """A whole mel -> its waveform, aligned: frames * hop samples, sample n under mel frame n // hop.

        Runs the generator over the mel plus ``delay_hops`` frames of
        silence (which flush out the last samples) and drops the lag.
        """
        check_mel(mel, self.n_mels)
        wave = self(torch.cat([mel, silent_mel(mel, self.cfg.delay_hops)], dim=-1))
        return wave[..., self.cfg.lookahead_samples:]

    def vocode_streaming(self, mel: torch.Tensor, chunk_frames: int) -> torch.Tensor:
        """``vocode``'s samples as a live stream gives them: the mel pushed ``chunk_frames`` at a time, flushed,
        its lag dropped. Equal to ``vocode(mel)`` but for rounding."""
        stream = self.stream(batch_size=1 if mel.dim() == 2 else mel.shape[0])
        pieces = [stream.push(mel[..., i:i + chunk_frames]) for i in range(0, mel.shape[-1], chunk_frames)]
        return torch.cat([*pieces, stream.flush()], dim=-1)[..., stream.latency_samples:]


class HiFiGANGenerator(CausalVocoder):
    """Normalised log-mel (batch, n_mels, frames) -> waveform (batch, frames * hop).

    conv_pre, then per upsampling stage: a causal upsampler (``CausalUpsample``) and a
    multi-receptive-field fusion (the mean of ResBlocks of different kernel
    sizes); then conv_post and tanh. The input is ``normalize_mel(MelSpectrogram(wave))``:
    the same patches the speaking head predicts. A 2-D mel gives a 1-D wave.

    ``forward`` is the causal network itself: its output lags the mel by
    ``cfg.lookahead_samples`` (see the module docstring).
    """

    def __init__(self, cfg: VocoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_mels, self.hop_length = cfg.audio.n_mels, cfg.audio.hop_length
        channels = cfg.upsample_initial_channel
        self.conv_pre = CausalConv1d(self.n_mels, channels, 7)
        self.ups = nn.ModuleList()
        self.mrfs = nn.ModuleList()
        for rate in cfg.upsample_rates:
            self.ups.append(CausalUpsample(channels, channels // 2, rate, cfg.upsampler == "nearest"))
            channels //= 2
            self.mrfs.append(nn.ModuleList(
                ResBlock(channels, k, d, cfg.resblock_plain_convs)
                for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilations)
            ))
        self.conv_post = CausalConv1d(channels, 1, 7)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        check_mel(mel, self.n_mels)
        unbatched = mel.dim() == 2
        x = self.conv_pre(mel.unsqueeze(0) if unbatched else mel)  # (batch, channels, frames)
        for up, mrf in zip(self.ups, self.mrfs):
            x = up(F.leaky_relu(x, LRELU_SLOPE))  # (batch, channels / 2, time * rate)
            x = sum(block(x) for block in mrf) / len(mrf)
        # HiFi-GAN's final leaky_relu uses the default slope 0.01, not 0.1
        x = torch.tanh(self.conv_post(F.leaky_relu(x)))  # (batch, 1, frames * hop)
        return x[0, 0] if unbatched else x[:, 0]

    def remove_weight_norm(self) -> HiFiGANGenerator:
        """Fold weight norm into plain weights: same outputs, less work per call. Returns self."""
        for module in self.modules():
            if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)) and is_parametrized(module, "weight"):
                remove_parametrizations(module, "weight")
        return self

    def stream(self, batch_size: int = 1) -> StreamingVocoder:
        return StreamingVocoder(self, batch_size)


# --- streaming ---------------------------------------------------------------------------
#
# A stream runs the generator's layers one chunk at a time. Each causal layer
# keeps the tail of its input so far: the last (k - 1) * d samples for a conv,
# the last frame for an upsampler. A stream starts with that tail all zeros,
# the same zeros offline padding adds, which is why streaming reproduces the
# offline samples exactly, and the tail's size never changes, so neither does
# the cost of a chunk.
#
# A chunk is a few milliseconds of work spread over 30-odd layers, so the
# stream is written for few calls per layer:
# * a conv is one matrix multiply over its kernel's taps (for inputs this
#   short, ``F.conv1d`` on a CPU takes a slow generic path, dilated kernels
#   most of all), and an upsampler one multiply and a shifted add;
# * activations are laid out (channels, batch, time), so the whole batch
#   meets a layer's weights in that one 2-D multiply;
# * the layers' weights are copied into plain matrices once, when the stream
#   opens, and the residual sums are done in place.
# Together these took about 30% off a ``lite`` chunk on a CPU, against the same
# arithmetic run through the layers' ``nn.Module`` calls with a state dict
# (commit b0cceba against its parent, ``michi-lite bench vocoder``;
# data/vocoder/README.md has the runs).


class ConvStream:
    """One ``CausalConv1d`` in a stream: (in_channels, batch, time) -> (out_channels, batch, time)."""

    def __init__(self, layer: CausalConv1d, batch_size: int) -> None:
        conv = layer.conv
        self.weight = conv.weight.detach().flatten(1).clone()  # (out, in * k), the taps of each input channel together
        self.bias = conv.bias.detach()[:, None].clone()
        self.kernel_size, self.dilation = layer.kernel_size, layer.dilation
        self.past = self.weight.new_zeros(conv.in_channels, batch_size, layer.context)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        channels, batch, time = x.shape
        x = torch.cat([self.past, x], dim=-1)  # (in, batch, context + time)
        self.past = x[..., time:].clone()  # the last ``context`` columns, apart from this call's buffer
        taps = x.unfold(-1, time, self.dilation)  # (in, batch, k, time): taps[..., j, t] = x[..., t + j*d]
        taps = taps.transpose(1, 2).reshape(channels * self.kernel_size, batch * time)
        return torch.addmm(self.bias, self.weight, taps).view(-1, batch, time)


class UpsampleStream:
    """One ``CausalUpsample`` in a stream: (in_channels, batch, time) -> (out_channels, batch, time * rate).

    Each frame becomes 2 * rate samples per channel; the output hop of frame
    j is the first half of frame j's plus the second half of frame j - 1's.
    """

    def __init__(self, layer: CausalUpsample, batch_size: int) -> None:
        conv = layer.conv
        weight = layer.kernel.detach().flatten(1).T  # (out * 2 * rate, in)
        self.weight = weight.clone(memory_format=torch.contiguous_format)
        self.bias = conv.bias.detach()[:, None, None].clone()
        self.rate = layer.rate
        self.past = self.weight.new_zeros(conv.in_channels, batch_size, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        channels, batch, time = x.shape
        x = torch.cat([self.past, x], dim=-1)  # (in, batch, 1 + time)
        self.past = x[..., time:].clone()  # the last frame
        spread = self.weight @ x.view(channels, -1)  # (out * 2 * rate, batch * (1 + time))
        spread = spread.view(-1, 2, self.rate, batch, time + 1)  # (out, half, rate, batch, 1 + time)
        hops = spread[:, 0, :, :, 1:] + spread[:, 1, :, :, :-1]  # (out, rate, batch, time)
        return hops.permute(0, 2, 3, 1).reshape(-1, batch, time * self.rate).add_(self.bias)


class VocoderStream:
    """What every generator's stream shares: its opening, the check of each chunk, its lag, and
    ``flush`` at the end of a stream. A stream says how it ``reset``s and how it ``push``es."""

    def __init__(self, generator: CausalVocoder, batch_size: int = 1) -> None:
        self.generator = generator
        self.batch_size = batch_size
        self.reset()

    def start_chunk(self, mel_chunk: torch.Tensor) -> None:
        """Refuse a chunk that is not a finite mel of this stream's batch size; mark the stream started."""
        check_mel(mel_chunk, self.generator.n_mels)
        batch = 1 if mel_chunk.dim() == 2 else mel_chunk.shape[0]
        if batch != self.batch_size:
            raise ValueError(f"this stream was opened for batch size {self.batch_size}, got a chunk of {batch}")
        self.started = True

    @property
    def latency_samples(self) -> int:
        return self.generator.cfg.lookahead_samples

    @torch.inference_mode()
    def flush(self) -> torch.Tensor:
        """End the stream: the ``latency_samples`` still owed, for a mel that falls silent here."""
        delay = self.generator.cfg.delay_hops
        weight = next(self.generator.parameters())
        if not self.started or delay == 0:
            return weight.new_zeros(self.batch_size, 0).squeeze(0)
        tail = weight.new_full((self.batch_size, self.generator.n_mels, delay), SILENCE_MEL)
        return self.push(tail if self.batch_size > 1 else tail[0])


class StreamingVocoder(VocoderStream):
    """Feed a generator one chunk of mel at a time; get exactly that chunk's samples.

    ``push(mel_chunk)`` takes (n_mels, k) or (batch, n_mels, k) columns (one
    80 ms frame is ``mels_per_frame`` of them) and returns k * hop samples,
    equal to what the generator gives for the whole mel at once. The state is
    one tensor per causal layer of fixed size, so every chunk costs the same.

    The samples lag the mel by ``latency_samples`` (the generator's fixed
    look-ahead): a stream starts with that much silence, and ``flush()`` at
    its end returns the last of the audio. The pushed samples after the
    first ``latency_samples``, followed by ``flush()``, are ``vocode(mel)``.

    The stream copies the generator's weights when it opens and on
    ``reset``: later changes to them (training, moving the generator to
    another device) reach it after a ``reset``.
    """

    @torch.inference_mode()
    def reset(self) -> None:
        """Start a new stream: every layer's past back to zeros, the generator's weights copied afresh."""
        generator, batch = self.generator, self.batch_size
        self.conv_pre = ConvStream(generator.conv_pre, batch)
        self.ups = [UpsampleStream(up, batch) for up in generator.ups]
        # self.dilated[stage][block][i] and self.plain[stage][block][i]: each ResBlock's convs
        stages = generator.mrfs
        self.dilated = [[[ConvStream(conv, batch) for conv in block.dilated] for block in mrf] for mrf in stages]
        self.plain = [[[ConvStream(conv, batch) for conv in block.plain] for block in mrf] for mrf in stages]
        self.conv_post = ConvStream(generator.conv_post, batch)
        self.started = False

    @property
    def layers(self) -> list[ConvStream | UpsampleStream]:
        """Every layer's step (not in the order they run): for counting what the stream keeps."""
        nested = [conv for stage in self.dilated + self.plain for block in stage for conv in block]
        return [self.conv_pre, *self.ups, *nested, self.conv_post]

    @torch.inference_mode()
    def push(self, mel_chunk: torch.Tensor) -> torch.Tensor:
        self.start_chunk(mel_chunk)
        mel = mel_chunk.unsqueeze(1) if mel_chunk.dim() == 2 else mel_chunk.transpose(0, 1)  # (n_mels, batch, time)
        x = self.conv_pre(mel)  # (channels, batch, time)
        # HiFiGANGenerator.forward, layer by layer; each ResBlock is its lists of dilated and plain convs
        for up, blocks_dilated, blocks_plain in zip(self.ups, self.dilated, self.plain):
            x = up(F.leaky_relu(x, LRELU_SLOPE))  # (channels / 2, batch, time * rate)
            fused = None  # the multi-receptive-field mean, summed in place
            for dilated, plain in zip(blocks_dilated, blocks_plain):
                h = x
                for i, conv in enumerate(dilated):
                    y = conv(F.leaky_relu(h, LRELU_SLOPE))
                    if plain:
                        y = plain[i](F.leaky_relu(y, LRELU_SLOPE))
                    h = y.add_(h)  # y is a new tensor of this call's, so adding into it is safe
                fused = h if fused is None else fused.add_(h)
            x = fused.div_(len(blocks_dilated))
        wave = torch.tanh(self.conv_post(F.leaky_relu(x)))[0]  # (batch, time * hop); slope 0.01, as in forward
        return wave[0] if mel_chunk.dim() == 2 else wave

    def cache_numel(self) -> int:
        """How many numbers the stream keeps between chunks (the same for every chunk)."""
        return sum(layer.past.numel() for layer in self.layers)


# --- the ISTFT generator -------------------------------------------------------------------
#
# HiFi-GAN spends its work at the sample rate: its last stage runs 16,000 steps
# a second. Yet a normalised log-mel already gives most of each frame's short-time
# spectrum, its magnitude blurred across the mel bands; what it leaves out is the
# phase. Vocos (Siuzdak 2023) and iSTFTNet (Kaneko et al. 2022) let a network at
# the frame rate predict each frame's complex spectrum, magnitude and phase, and
# an inverse STFT turn the frames into samples: 100 network steps a second.
#
# Made causal: the inverse STFT's frames are ``lookahead_hops + 1`` hops long
# (``cfg.istft_n_fft``), and frame i is laid on output samples
# [i * hop, (i + lookahead_hops + 1) * hop). Output hop k is then the sum of
# frames k - lookahead_hops .. k, complete when frame k arrives, and it answers
# the wave ``lookahead_hops`` hops back, HiFi-GAN's lag. Frame i's window covers
# wave [(i - lookahead_hops) * hop, (i + 1) * hop): nothing the mel frame i has
# not shown (its window ends at (i + 1) * hop). That is the longest window the
# look-ahead allows: 30 ms at 16 kHz, a frequency bin every 33 Hz.

MAX_LOG_MAGNITUDE = math.log(100.0)  # Vocos clips the predicted magnitude at 100


def synthesis_window(n_fft: int, hop: int) -> torch.Tensor:
    """A Hann window divided by the overlap-add's sum of squared windows (torch.istft's envelope).

    Frames cut from a wave by this Hann window and overlap-added through the
    returned one give the wave back, so the head's magnitudes are an STFT's.
    """
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
    envelope = window.square().view(-1, hop).sum(0)  # (hop,): the same at every hop of the output
    return (window.view(-1, hop) / envelope).flatten().float()  # (n_fft,)


def overlap_add(frames: torch.Tensor, hop: int) -> torch.Tensor:
    """Frames (batch, time, k * hop), frame i starting at sample i * hop -> (batch, (time + k - 1) * hop)."""
    batch, time, n_fft = frames.shape
    parts = frames.view(batch, time, n_fft // hop, hop)
    out = frames.new_zeros(batch, time + parts.shape[2] - 1, hop)
    for r in range(parts.shape[2]):
        out[:, r:r + time] += parts[:, :, r]
    return out.flatten(1)


def int8_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, weight.flatten(1), bias)`` in int8: each row of ``x`` and of the weight scaled to [-127, 127]
    by its own largest value, their products summed as integers, the sums scaled back.

    Integer sums are exact in any order, and each row's scale is its own, so a
    row gets the same floats whatever rows are around it: a stream's chunks and
    a whole clip give bit-identical frames. A matrix product of floats need not
    (a library may add a product of 3 rows up in another order than one of 40).
    It is also the faster product at a stream's 8 rows, where reading the
    weights is most of the work: int8 weights (``int8_weight`` keeps them)
    are a quarter of float32's bytes (data/vocoder/README.md has the timings),
    on a CPU with integer dot-product instructions (``integer_sums``).
    """
    return Int8Linear.of(weight, bias)(x)


EXACT_FLOAT_TERMS = 1040  # this many products of int8 values (each at most 127^2) sum below 2^24: exact in float32
# torch's int8 matrix product is fast on CPUs with VNNI (AVX-512's integer dot products); without them (AVX2 alone)
# it loops, 25 times slower than the float product of the same sizes (measured at 8 x 384 x 1536 on AMD EPYC, AVX2)
FAST_INT8_PRODUCTS = bool(getattr(torch.cpu, "_is_vnni_supported", lambda: False)())


def integer_sums(q: torch.Tensor, weight: torch.Tensor, weight_float: torch.Tensor | None = None) -> torch.Tensor:
    """``q @ weight`` for int8 ``q`` (rows, in) and ``weight`` (in, out), as the exact integer sums, in float32.

    ``torch._int_mm`` where the CPU has fast kernels for it; elsewhere (and on
    a GPU) float32 products of at most ``EXACT_FLOAT_TERMS`` terms, exact in
    any order, added as integers: the same bits either way.
    ``weight_float`` is ``weight`` in float32, if kept.
    """
    if q.is_cpu and FAST_INT8_PRODUCTS:
        return torch._int_mm(q, weight).float()
    weight_float = weight.float() if weight_float is None else weight_float
    rows, sums = q.float(), None
    for start in range(0, q.shape[-1], EXACT_FLOAT_TERMS):
        part = (rows[:, start:start + EXACT_FLOAT_TERMS] @ weight_float[start:start + EXACT_FLOAT_TERMS]).int()
        sums = part if sums is None else sums + part
    return sums.float()


class Int8Linear(NamedTuple):
    """A linear layer's weights as ``int8_linear`` multiplies by them, read once (``of``), then called on inputs."""

    weight: torch.Tensor  # (in, out), int8
    scale: torch.Tensor  # (out,): each weight row's
    bias: torch.Tensor  # (out,)
    weight_float: torch.Tensor | None = None  # ``weight`` in float32, where the product is a float one

    @classmethod
    def of(cls, weight: torch.Tensor, bias: torch.Tensor) -> Int8Linear:
        q, scale = int8_weight(weight)
        return cls(q, scale, bias.float(), None if weight.is_cpu and FAST_INT8_PRODUCTS else q.float())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1]).float()
        row_scale = rows.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / 127
        q = (rows / row_scale).round().to(torch.int8)
        sums = integer_sums(q, self.weight, self.weight_float)
        out = sums * (row_scale * self.scale) + self.bias
        return out.to(x.dtype).reshape(*x.shape[:-1], -1)


def int8_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight (out, ...) -> its rows in int8, transposed (in, out), and each row's scale (out,).

    Made once per weight and kept on it while it is unchanged (a training
    step or a load changes its version, and it is made again).
    """
    stamp = (weight.data_ptr(), weight._version)
    kept = getattr(weight, "_int8", None)
    if kept is not None and kept[0] == stamp:
        return kept[1]
    with torch.no_grad():
        rows = weight.detach().flatten(1).float()
        scale = rows.abs().amax(dim=-1).clamp(min=1e-12) / 127
        made = (rows / scale[:, None]).round().to(torch.int8).T.contiguous(), scale
    weight._int8 = (stamp, made)
    return made


class ConvNeXtBlock(nn.Module):
    """A causal depthwise conv over frames, then LayerNorm and a pointwise MLP, scaled, added back.

    ConvNeXt's block (Liu et al. 2022) as Vocos uses it, padded on the left
    only. It is called on a window of frames, the ``kernel_size - 1`` before
    and the ones it answers for, so offline (zeros before) and a stream
    (the frames kept from the chunk before) run the same code.
    """

    def __init__(self, channels: int, kernel_size: int, layer_scale: float) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.depthwise = nn.Conv1d(channels, channels, kernel_size, groups=channels)
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.expand = nn.Linear(channels, 3 * channels)
        self.project = nn.Linear(3 * channels, channels)
        self.scale = nn.Parameter(torch.full((channels,), layer_scale))  # small: each block starts near identity

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        """(batch, channels, kernel_size - 1 + time) -> (batch, channels, time).

        In eval mode it is ``convnext_frames`` on the frames' rows. Training
        keeps the conv and plain products.
        """
        if not self.training:
            return convnext_frames(window.transpose(1, 2), self.inference_weights()).transpose(1, 2)
        h = self.norm(self.depthwise(window).transpose(1, 2))  # (batch, time, channels)
        h = self.project(F.gelu(self.expand(h)))
        return window[..., self.kernel_size - 1:] + (self.scale * h).transpose(1, 2)

    def inference_weights(self) -> ConvNeXtWeights:
        """The block's weights as ``convnext_frames`` uses them, copied: later changes to the block do not reach
        them."""
        with torch.no_grad():
            return ConvNeXtWeights(
                taps=self.depthwise.weight[:, 0].T.clone(), depthwise_bias=self.depthwise.bias.clone(),
                norm_weight=self.norm.weight.clone(), norm_bias=self.norm.bias.clone(),
                expand=Int8Linear.of(self.expand.weight, self.expand.bias.clone()),
                project=Int8Linear.of(self.project.weight, self.project.bias.clone()), scale=self.scale.clone())


class ConvNeXtWeights(NamedTuple):
    """A ``ConvNeXtBlock``'s weights as eval mode uses them, read once, so a stream's chunk pays no module calls."""

    taps: torch.Tensor  # (kernel, channels): the depthwise conv's weight at each tap
    depthwise_bias: torch.Tensor
    norm_weight: torch.Tensor
    norm_bias: torch.Tensor
    expand: Int8Linear
    project: Int8Linear
    scale: torch.Tensor


def convnext_frames(window: torch.Tensor, w: ConvNeXtWeights) -> torch.Tensor:
    """A ConvNeXt block in eval mode, on rows of frames: (batch, kernel - 1 + time, channels) -> (batch, time,
    channels).

    The depthwise conv is the sum of its taps' shifted copies in a fixed
    order and the MLP's products are ``int8_linear``'s: every step is done
    frame by frame, so each frame's value is the same float whatever frames
    are computed with it (a conv routine's need not be).
    """
    kernel = w.taps.shape[0]
    time = window.shape[1] - kernel + 1
    h = w.depthwise_bias.expand(time, -1)
    for j, tap in enumerate(w.taps):
        h = torch.addcmul(h, tap, window[:, j:j + time])
    h = F.layer_norm(h, w.norm_weight.shape, w.norm_weight, w.norm_bias, eps=1e-6)
    return window[:, kernel - 1:] + w.scale * w.project(F.gelu(w.expand(h)))


class IstftGenerator(CausalVocoder):
    """Normalised log-mel (batch, n_mels, frames) -> waveform (batch, frames * hop), through an inverse STFT.

    A causal conv, ``istft_blocks`` ConvNeXt blocks and a linear head giving
    each frame's log-magnitude and phase for ``istft_n_fft // 2 + 1`` bins;
    then the inverse FFT, the synthesis window and the overlap-add. Same
    interface, lag and look-ahead as ``HiFiGANGenerator``.

    With ``istft_phase`` "advance" the head's second half is how far each
    bin's phase turns since the frame before, and the phases are their sum
    over frames (``integrate_phase``). The frames overlap by two hops, so a
    steady tone needs its phase to turn by its frequency times the hop from
    one frame to the next; a head that only sees the mel cannot tell where
    in that turn a frame is, and with "frame" phases it must learn to wobble
    its input into one, while with "advance" a steady mel is a steady tone
    at any frequency. Its spectra are taken about the window's centre
    (every other bin's sign flipped), where the bins under one tone share
    its phase: bins that start together and turn together stay together.

    With "pghi" the head gives log-magnitudes alone, taught directly by the
    real wave's in the same frames (``magnitude_loss``), and the phases are
    computed from them (``phase_from_magnitude``): nothing about the phase
    is learnt.

    It trains in float32. In eval mode its matrix products run in int8
    (``int8_linear``; the reference's log-magnitudes are 0.24 dB from
    float32's on average over a test utterance) and its depthwise convs as
    sums of shifted copies (``convnext_frames``), on rows of frames, with
    the weights read once (``inference_weights``): each frame's numbers then
    do not depend on the frames computed with it, so a
    stream gives the offline magnitudes to the last bit, which a pghi head's
    peak picking needs (a near-tie tips on a last-bit difference).
    """

    def __init__(self, cfg: VocoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_mels, self.hop_length, self.n_fft = cfg.audio.n_mels, cfg.audio.hop_length, cfg.istft_n_fft
        self.phase_kind = cfg.istft_phase
        channels, kernel = cfg.istft_channels, cfg.istft_kernel_size
        self.conv_pre = nn.Conv1d(self.n_mels, channels, kernel)
        self.blocks = nn.ModuleList(ConvNeXtBlock(channels, kernel, 1 / cfg.istft_blocks)
                                    for _ in range(cfg.istft_blocks))
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        bins = self.n_fft // 2 + 1
        # log-magnitudes, then (but for "pghi") phases or their advances
        self.head = nn.Linear(channels, bins if self.phase_kind == "pghi" else 2 * bins)
        self.register_buffer("window", synthesis_window(self.n_fft, self.hop_length), persistent=False)
        bins = torch.arange(bins)
        signs = torch.ones(len(bins)) if self.phase_kind == "frame" else 1.0 - 2.0 * (bins % 2)  # about the centre
        self.register_buffer("signs", signs, persistent=False)

    def trunk(self, mel: torch.Tensor) -> torch.Tensor:
        """Normalised log-mel (batch, n_mels, frames) -> the blocks' output (batch, frames, channels)."""
        context = self.cfg.istft_kernel_size - 1
        if not self.training:
            weights = self.inference_weights()
            return self.trunk_frames(F.pad(mel, (context, 0)), weights, self.trunk_start(len(mel), weights))[0]
        x = self.conv_pre(F.pad(mel, (context, 0)))  # (batch, channels, frames)
        for block in self.blocks:
            x = block(F.pad(x, (context, 0)))
        return x.transpose(1, 2)

    def inference_weights(self) -> IstftWeights:
        """The weights as eval mode computes with them (int8 products; copies, see ``ConvNeXtBlock``'s)."""
        with torch.no_grad():
            return IstftWeights(pre=Int8Linear.of(self.conv_pre.weight, self.conv_pre.bias.clone()),
                                blocks=[block.inference_weights() for block in self.blocks],
                                head=Int8Linear.of(self.head.weight, self.head.bias.clone()))

    def trunk_start(self, batch: int, weights: IstftWeights) -> list[torch.Tensor]:
        """What ``trunk_frames`` starts from: each block's past frames as zeros (batch, kernel - 1, channels)."""
        context, channels = self.cfg.istft_kernel_size - 1, self.cfg.istft_channels
        return [weights.pre.bias.new_zeros(batch, context, channels) for _ in weights.blocks]

    def trunk_frames(
        self, mel: torch.Tensor, weights: IstftWeights, pasts: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The trunk in eval mode: (batch, n_mels, kernel - 1 + time) -> (batch, time, channels), and each block's
        last ``kernel - 1`` input frames, to give back as ``pasts`` on the next call (``trunk_start``'s first).

        Offline and a stream's chunks run this same code.
        """
        time = mel.shape[-1] - self.cfg.istft_kernel_size + 1
        taps = mel.unfold(-1, self.cfg.istft_kernel_size, 1).transpose(1, 2).flatten(2)  # (batch, time, n_mels * k)
        x = weights.pre(taps)
        ends = []
        for block, past in zip(weights.blocks, pasts):
            window = torch.cat([past, x], dim=1)  # (batch, kernel - 1 + time, channels)
            ends.append(window[:, time:])
            x = convnext_frames(window, block)
        return x, ends

    def spectra(
        self, x: torch.Tensor, head: Int8Linear | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The blocks' output -> each frame's log-magnitudes and phases (or advances), (batch, time, bins) each.

        A "pghi" head's phases are None: ``frames`` computes them. In eval mode
        the head's product is ``int8_linear``'s, as the blocks' are (``head``:
        its weights as ``inference_weights`` read them; None: read now).
        """
        if head is None:
            head = self.head if self.training else Int8Linear.of(self.head.weight, self.head.bias)
        out = head(self.norm(x))
        if self.phase_kind == "pghi":
            return out, None
        log_magnitude, phase = out.chunk(2, dim=-1)
        return log_magnitude, phase

    def frames(
        self, log_magnitude: torch.Tensor, phase: torch.Tensor | None, start: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``spectra``'s output -> windowed waveform frames (batch, time, n_fft), and where the phases stand.

        For "advance" and "pghi", ``start`` is where the phases stood before
        the first frame (float64; None: as after silence) and the second
        result where they stand after the last, to carry into the next call
        (``integrate_phase``, ``pghi_phases``); for "frame" it is None. With
        phase look-ahead the frames are the ones ``pghi_phases`` synthesises.
        A "pghi" head's phases come from its magnitudes without a gradient:
        the magnitudes learn from their own loss, not through the phases.
        """
        if self.phase_kind == "advance":
            phase, start = integrate_phase(phase, start)
        elif self.phase_kind == "pghi":
            log_magnitude, phase, start = self.pghi_phases(log_magnitude, start)
        spectrum = torch.polar(log_magnitude.clamp(max=MAX_LOG_MAGNITUDE).exp(), phase) * self.signs
        frames = torch.fft.irfft(spectrum, n=self.n_fft) * self.window
        return frames, start

    def pghi_phases(
        self, log_magnitude: torch.Tensor, start: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A "pghi" head's log-magnitudes -> those to synthesise, their phases, and the state to carry on.

        Without phase look-ahead the frames are synthesised as they come.
        With it (``phase_lookahead_hops`` 1) each frame is held back until
        the next gives its centred time slope: the frames synthesised are
        the one held from before (silence at first) and all given but the
        last, which is held in the state's last row.
        """
        if not self.cfg.phase_lookahead_hops:
            phase, state = phase_from_magnitude(log_magnitude.detach(), self.hop_length, start)
            return log_magnitude, phase.to(log_magnitude.dtype), state
        if start is None:
            held = torch.full_like(log_magnitude[:, :1], LOG_MAGNITUDE_FLOOR)
        else:
            held, start = start[:, 3:].to(log_magnitude.dtype), start[:, :3]
        magnitudes = torch.cat([held, log_magnitude], dim=1)
        now, following = magnitudes[:, :-1], magnitudes[:, 1:].detach()
        phase, state = phase_from_magnitude(now.detach(), self.hop_length, start, following)
        return now, phase.to(log_magnitude.dtype), torch.cat([state, following[:, -1:].double()], dim=1)

    def waveform(self, log_magnitude: torch.Tensor, phase: torch.Tensor | None) -> torch.Tensor:
        """``spectra``'s output for a whole utterance -> its waveform (batch, frames * hop)."""
        wave = overlap_add(self.frames(log_magnitude, phase)[0], self.hop_length)
        return wave[:, :log_magnitude.shape[1] * self.hop_length]  # the last frames' tails belong to later hops

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        check_mel(mel, self.n_mels)
        unbatched = mel.dim() == 2
        mel = mel.unsqueeze(0) if unbatched else mel
        wave = self.waveform(*self.spectra(self.trunk(mel)))
        return wave[0] if unbatched else wave

    def stream(self, batch_size: int = 1) -> IstftStream:
        return IstftStream(self, batch_size)


class IstftWeights(NamedTuple):
    """An ``IstftGenerator``'s weights as eval mode uses them (``IstftGenerator.inference_weights``)."""

    pre: Int8Linear  # the first conv as a product of each frame's taps
    blocks: list[ConvNeXtWeights]
    head: Int8Linear


def integrate_phase(advance: torch.Tensor, start: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame phase advances (batch, time, bins) -> the phases they sum to, and where the sum ends.

    Frame t's phase is ``start`` plus the advances of frames 0 to t, wrapped
    to [-pi, pi). The sum runs in float64 and the end is returned wrapped
    (batch, bins), so a stream that carries it from chunk to chunk gives the
    offline phases to about 1e-12 however long it runs.
    """
    total = advance.double().cumsum(dim=1)
    if start is not None:
        total = total + start.unsqueeze(1)
    wrapped = torch.remainder(total + math.pi, 2 * math.pi) - math.pi
    return wrapped.to(advance.dtype), wrapped[:, -1].detach()


# A Hann window of L samples is close to the Gaussian exp(-pi t^2 / (HANN_GAUSSIAN * L^2)) (Prusa,
# Balazs and Sondergaard 2017, Table 1), whose STFT ties phase to log-magnitude exactly.
HANN_GAUSSIAN = 0.25645
# Log-magnitudes below this are flat ground to the phase (and to ``magnitude_loss``): about 100 dB
# under a loud harmonic's, where the slopes are noise.
LOG_MAGNITUDE_FLOOR = math.log(1e-4)


def phase_from_magnitude(
    log_magnitude: torch.Tensor, hop: int, start: torch.Tensor | None = None, following: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Phases for log-magnitudes (batch, time, bins) of spectra about a Hann window's centre, frame by frame.

    Through a Gaussian window an STFT's log-magnitude s and phase phi are
    the real and imaginary parts of one analytic function, so each gives
    the other's slopes: a bin's phase turns per hop by
    ``hop * (2 pi m / N + N / gamma * ds/dm)`` (its own frequency, pulled
    towards the peak it sits beside), and from bin to bin it steps by
    ``-gamma / (N * hop) * ds/dn`` (N the frame, gamma = HANN_GAUSSIAN *
    N^2). Phase-gradient heap integration (PGHI; Prusa, Balazs and
    Sondergaard 2017, real-time form Prusa and Holighaus 2017) adds those
    slopes up from the loudest coefficients outwards. Here, vectorised:
    each frame's peaks (bins no quieter than their neighbours) turn on
    from the frame before (the trapezoid of the two frames' turns), and
    every other bin takes the phase of the peak its magnitude climbs to,
    stepped bin by bin down the slope, so the bins under one harmonic move
    as one, which the head's summed advances could not keep
    (``integrate_phase``). ds/dn looks back one frame only: causal; given
    ``following``, each frame's next frame's log-magnitudes (batch, time,
    bins), it is centred on the frame, as the paper's offline form has it.

    ``start`` (batch, 3, bins, float64) is the previous frame's floored
    log-magnitudes, phases and turns (None: as after silence); the second
    result is the same after the last frame, so a stream that carries it
    gives the offline phases exactly. Returns float64 phases wrapped to
    [-pi, pi).
    """
    batch, time, bins = log_magnitude.shape
    if time == 0:
        raise ValueError("phase_from_magnitude needs one frame or more")
    n_fft = 2 * (bins - 1)
    gamma = HANN_GAUSSIAN * n_fft ** 2
    s = log_magnitude.double().clamp(min=LOG_MAGNITUDE_FLOOR)
    frequency = 2 * math.pi * torch.arange(bins, dtype=torch.float64, device=s.device) / n_fft
    if start is None:  # silence: floored magnitudes, no phase yet, each bin turning at its own frequency
        start = torch.stack([torch.full_like(s[:, 0], LOG_MAGNITUDE_FLOOR), torch.zeros_like(s[:, 0]),
                             (hop * frequency).expand_as(s[:, 0])], dim=1)
    before, phase, turn_before = start.unbind(1)
    turn = hop * (frequency + n_fft / gamma * F.pad((s[..., 2:] - s[..., :-2]) / 2, (1, 1)))
    previous = torch.cat([before.unsqueeze(1), s[:, :-1]], dim=1)
    if following is None:
        slope = -gamma / (n_fft * hop) * (s - previous)
    else:
        slope = -gamma / (n_fft * hop) * (following.double().clamp(min=LOG_MAGNITUDE_FLOOR) - previous) / 2
    # each bin climbs to the peak (a bin no quieter than its neighbours) its louder neighbour leads to, always
    # the nearest on that side, and knows its phase relative to it: the slope summed over the bins between
    left = F.pad(s[..., :-1], (1, 0), value=-math.inf)
    right = F.pad(s[..., 1:], (0, 1), value=-math.inf)
    peak = (s >= left) & (s >= right)
    position = torch.arange(bins, device=s.device)
    peak_below = torch.where(peak, position, -1).cummax(-1).values
    peak_above = torch.where(peak, position, bins).flip(-1).cummin(-1).values.flip(-1)
    index = torch.where(peak | (left >= right), peak_below, peak_above)
    climbed = F.pad(((slope[..., :-1] + slope[..., 1:]) / 2).cumsum(-1), (1, 0))  # bin m's phase less bin 0's
    # every bin turned on from the frame before (the trapezoid of the two frames' turns), then set by its peak's
    turned = (torch.cat([turn_before.unsqueeze(1), turn[:, :-1]], dim=1) + turn) / 2
    steps = turned.gather(-1, index) + (climbed - climbed.gather(-1, index))
    phases = []
    for peak_index, step in zip(index.unbind(1), steps.unbind(1)):
        phase = torch.remainder(phase.gather(-1, peak_index) + step + math.pi, 2 * math.pi) - math.pi
        phases.append(phase)
    return torch.stack(phases, dim=1), torch.stack([s[:, -1], phase, turn[:, -1]], dim=1)


def generator_frame_spectra(wave: torch.Tensor, cfg: VocoderConfig) -> torch.Tensor:
    """A wave (batch, frames * hop) -> its STFT in an ``IstftGenerator``'s frames (batch, frames, bins), complex.

    Frame i is cut where the generator's frame i lies, [(i - lookahead) * hop,
    (i + 1) * hop), zeros before the wave's start, under a Hann window: the
    spectra whose magnitudes and phases give the wave back through the
    generator's synthesis (about the frame's start; an "advance" or "pghi"
    head's, about its centre, are these times its ``signs``).
    """
    reach = cfg.istft_n_fft - cfg.audio.hop_length  # how far frame 0 reaches back before the wave
    frames = F.pad(wave, (reach, 0)).unfold(-1, cfg.istft_n_fft, cfg.audio.hop_length)
    return torch.fft.rfft(frames * torch.hann_window(cfg.istft_n_fft, device=wave.device), dim=-1)


def phase_advance_loss(advance: torch.Tensor, wave: torch.Tensor, cfg: VocoderConfig) -> torch.Tensor:
    """How far a generator's phase advances are from the real wave's, wrapped, weighted by loudness.

    ``advance`` (batch, frames, bins) is an "advance" generator's for the mel
    of ``wave`` (batch, frames * hop). The real advance is the angle from each
    bin of the wave's ``generator_frame_spectra`` to the next frame's. The
    wrapped difference's magnitude is averaged with weights
    (|X_t| |X_t-1|) ** 0.15 (magnitudes compressed to the power 0.3, as
    speech enhancement does): a bin's phase matters as much as it is heard,
    and the loud low harmonics do not drown the rest. The first
    ``lookahead_hops`` frames, cut partly from before the segment, are left out.
    """
    skip = cfg.lookahead_hops
    spectrum = generator_frame_spectra(wave, cfg)[:, skip:]
    real = torch.angle(spectrum[:, 1:]) - torch.angle(spectrum[:, :-1])
    difference = advance[:, skip + 1:] - real
    error = torch.atan2(torch.sin(difference), torch.cos(difference)).abs()  # wrapped to [0, pi]
    weight = (spectrum[:, 1:].abs() * spectrum[:, :-1].abs()).pow(0.15)
    return (weight * error).sum() / weight.sum().clamp(min=1e-8)


def magnitude_loss(log_magnitude: torch.Tensor, wave: torch.Tensor, cfg: VocoderConfig) -> torch.Tensor:
    """The mean L1 between a generator's log-magnitudes (batch, frames, bins) and those of ``wave``'s own frames.

    Both are floored at ``LOG_MAGNITUDE_FLOOR`` (and the prediction capped
    at ``MAX_LOG_MAGNITUDE``, as synthesis caps it). The first
    ``lookahead_hops`` frames, cut partly from before the segment, are left out.
    """
    skip = cfg.lookahead_hops
    target = generator_frame_spectra(wave, cfg)[:, skip:].abs().clamp(min=math.exp(LOG_MAGNITUDE_FLOOR)).log()
    predicted = log_magnitude[:, skip:].float().clamp(LOG_MAGNITUDE_FLOOR, MAX_LOG_MAGNITUDE)
    return F.l1_loss(predicted, target)


class IstftStream(VocoderStream):
    """``StreamingVocoder``'s interface for an ``IstftGenerator``: push mel chunks, get their samples.

    It keeps each causal conv's last ``kernel - 1`` input frames, the
    ``lookahead_hops`` hops of overlap-add that later frames still add to
    and, for "advance" and "pghi" phases, where each bin's phase stands (and
    the frame a pghi head looking ahead holds back), all starting as offline
    padding does, so the samples equal the offline ones and every chunk
    costs the same.
    """

    @torch.inference_mode()
    def reset(self) -> None:
        g, batch, context = self.generator, self.batch_size, self.generator.cfg.istft_kernel_size - 1
        self.weights = g.inference_weights()  # read once: a chunk pays no module calls
        self.mel_past = self.weights.pre.bias.new_zeros(batch, g.n_mels, context)
        self.block_pasts = g.trunk_start(batch, self.weights)
        self.tail = self.mel_past.new_zeros(batch, g.n_fft - g.hop_length)  # overlap-add still owed to later hops
        # where the phases stand between chunks: zeros for "advance"; None for "pghi", whose
        # phase_from_magnitude starts as after silence, and for "frame", which keeps none
        advancing = g.phase_kind == "advance"
        self.phase = self.mel_past.new_zeros(batch, g.n_fft // 2 + 1, dtype=torch.float64) if advancing else None
        self.started = False

    @torch.inference_mode()
    def push(self, mel_chunk: torch.Tensor) -> torch.Tensor:
        g = self.generator
        self.start_chunk(mel_chunk)
        mel = mel_chunk.unsqueeze(0) if mel_chunk.dim() == 2 else mel_chunk  # (batch, n_mels, time)
        time = mel.shape[-1]
        mel = torch.cat([self.mel_past, mel], dim=-1)  # (batch, n_mels, context + time)
        self.mel_past = mel[..., time:]
        x, self.block_pasts = g.trunk_frames(mel, self.weights, self.block_pasts)
        frames, self.phase = g.frames(*g.spectra(x, self.weights.head), self.phase)
        wave = overlap_add(frames, g.hop_length)  # (batch, (time + lookahead) * hop)
        wave[:, :self.tail.shape[-1]] += self.tail
        samples = time * g.hop_length
        self.tail = wave[:, samples:]
        wave = wave[:, :samples]
        return wave[0] if mel_chunk.dim() == 2 else wave

    def cache_numel(self) -> int:
        """How many numbers the stream keeps between chunks (the same for every chunk)."""
        phase = 0 if self.phase is None else self.phase.numel()
        return self.mel_past.numel() + sum(p.numel() for p in self.block_pasts) + self.tail.numel() + phase


def build_generator(cfg: VocoderConfig) -> HiFiGANGenerator | IstftGenerator:
    """A fresh generator of ``cfg.arch``."""
    return HiFiGANGenerator(cfg) if cfg.arch == "hifigan" else IstftGenerator(cfg)


def inference_ready(generator: CausalVocoder) -> CausalVocoder:
    """The generator as inference runs it: HiFi-GAN's weight norm folded into plain weights. Returns it."""
    return generator.remove_weight_norm() if isinstance(generator, HiFiGANGenerator) else generator


# --- Griffin-Lim baseline ------------------------------------------------------------


class GriffinLim(nn.Module):
    """The baseline vocoder: invert the mel filterbank, then guess the phase.

    Same interface as ``HiFiGANGenerator``: normalised log-mel in, frames * hop
    samples out. The magnitude spectrogram is recovered with the pseudo-inverse
    of the mel filterbank (clamped at zero), and the phase by fast Griffin-Lim
    (Perraudin et al. 2013, momentum 0.99). Its STFT is ``MelSpectrogram``'s own,
    so frame i sits on the samples ending at (i + 1) * hop. Not causal: every
    iteration touches the whole signal; it is here to be compared against.
    """

    def __init__(self, audio: AudioConfig, n_iter: int = 32, momentum: float = 0.99, seed: int = 0) -> None:
        super().__init__()
        self.n_mels, self.hop_length, self.n_fft = audio.n_mels, audio.hop_length, audio.n_fft
        self.n_iter, self.momentum, self.seed = n_iter, momentum, seed
        frontend = MelSpectrogram(audio)
        self.register_buffer("window", frontend.window, persistent=False)  # right-aligned Hann
        self.register_buffer("inverse_filters", torch.linalg.pinv(frontend.filters), persistent=False)

    def stft(self, wave: torch.Tensor) -> torch.Tensor:
        """(batch, samples) -> (batch, n_fft // 2 + 1, samples // hop), as MelSpectrogram frames it."""
        padded = F.pad(wave, (self.n_fft - self.hop_length, 0))
        return torch.stft(padded, self.n_fft, self.hop_length, window=self.window, center=False, return_complex=True)

    def istft(self, spec: torch.Tensor) -> torch.Tensor:
        """Least-squares inverse of ``stft``: windowed overlap-add over the summed squared window.

        ``torch.istft`` refuses this framing (its window envelope is zero over
        the left padding), so the overlap-add is written out with ``F.fold``.
        """
        n_frames = spec.shape[-1]
        frames = torch.fft.irfft(spec, n=self.n_fft, dim=1) * self.window[:, None]  # (batch, n_fft, frames)
        length = (n_frames - 1) * self.hop_length + self.n_fft
        fold = dict(output_size=(1, length), kernel_size=(1, self.n_fft), stride=(1, self.hop_length))
        wave = F.fold(frames, **fold)[:, 0, 0]  # (batch, length)
        envelope = F.fold((self.window**2)[None, :, None].expand(1, -1, n_frames), **fold)[:, 0, 0]
        # The last hop is seen only by the tail of one window, where the envelope
        # falls to zero: a floor keeps the division from blowing those samples up.
        wave = wave / envelope.clamp(min=0.1 * float(envelope.max()))
        return wave[:, self.n_fft - self.hop_length:]  # (batch, frames * hop)

    @torch.inference_mode()
    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        check_mel(mel, self.n_mels)
        unbatched = mel.dim() == 2
        mel = mel.unsqueeze(0) if unbatched else mel
        mel_magnitude = torch.exp(denormalize_mel(mel.float()))  # (batch, n_mels, frames)
        magnitude = (self.inverse_filters @ mel_magnitude).clamp(min=0.0)  # (batch, n_fft // 2 + 1, frames)
        generator = torch.Generator(device=mel.device).manual_seed(self.seed)
        phase = torch.rand(magnitude.shape, generator=generator, device=mel.device) * 2 * math.pi
        spec = magnitude * torch.exp(1j * phase)
        previous = torch.zeros_like(spec)
        for _ in range(self.n_iter):
            rebuilt = self.stft(self.istft(spec))  # the nearest spectrogram a real signal has
            accelerated = rebuilt + self.momentum * (rebuilt - previous)  # fast Griffin-Lim
            previous = rebuilt
            spec = magnitude * accelerated / accelerated.abs().clamp(min=1e-8)
        wave = self.istft(spec).clamp(-1.0, 1.0)  # (batch, frames * hop)
        return wave[0] if unbatched else wave

    def vocode(self, mel: torch.Tensor) -> torch.Tensor:
        """The same as calling it: its output is already aligned with the mel."""
        return self(mel)


# --- discriminators --------------------------------------------------------------------


def score_with_features(
    x: torch.Tensor, convs: nn.ModuleList, conv_post: nn.Module
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run a discriminator's conv stack: its scores (batch, -1) and every layer's output, for feature matching."""
    features = []
    for conv in convs:
        x = F.leaky_relu(conv(x), LRELU_SLOPE)
        features.append(x)
    x = conv_post(x)
    features.append(x)
    return x.flatten(1), features


class PeriodDiscriminator(nn.Module):
    """Looks at every p-th sample: the wave folded into (time / p, p), 2-D convs along time."""

    def __init__(self, period: int, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.period = period
        widths = (1, *channels)
        self.convs = nn.ModuleList(
            weight_norm(nn.Conv2d(c_in, c_out, (5, 1), (3 if i < len(channels) - 1 else 1, 1), padding=(2, 0)))
            for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:]))
        )
        self.conv_post = weight_norm(nn.Conv2d(channels[-1], 1, (3, 1), padding=(1, 0)))

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = wave.unsqueeze(1)  # (batch, 1, samples)
        x = F.pad(x, (0, -x.shape[-1] % self.period), mode="reflect")
        x = x.view(x.shape[0], 1, -1, self.period)  # (batch, 1, samples / period, period)
        return score_with_features(x, self.convs, self.conv_post)


class MultiPeriodDiscriminator(nn.Module):
    def __init__(self, cfg: VocoderConfig) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(PeriodDiscriminator(p, cfg.mpd_channels) for p in cfg.mpd_periods)

    def forward(self, wave: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        scores, features = zip(*(d(wave) for d in self.discriminators))
        return list(scores), list(features)


class ResolutionDiscriminator(nn.Module):
    """Looks at one STFT magnitude (UnivNet / BigVGAN): 2-D convs over (time, frequency)."""

    def __init__(self, resolution: tuple[int, int, int], channels: int) -> None:
        super().__init__()
        self.n_fft, self.hop, self.win = resolution
        self.register_buffer("window", torch.hann_window(self.win), persistent=False)
        self.convs = nn.ModuleList([
            weight_norm(nn.Conv2d(1, channels, (3, 9), padding=(1, 4))),
            weight_norm(nn.Conv2d(channels, channels, (3, 9), stride=(1, 2), padding=(1, 4))),
            weight_norm(nn.Conv2d(channels, channels, (3, 9), stride=(1, 2), padding=(1, 4))),
            weight_norm(nn.Conv2d(channels, channels, (3, 9), stride=(1, 2), padding=(1, 4))),
            weight_norm(nn.Conv2d(channels, channels, (3, 3), padding=(1, 1))),
        ])
        self.conv_post = weight_norm(nn.Conv2d(channels, 1, (3, 3), padding=(1, 1)))

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        with torch.autocast(wave.device.type, enabled=False):  # FFTs stay in fp32 under bf16 autocast
            spec = torch.stft(wave.float(), self.n_fft, self.hop, self.win, self.window,
                              center=True, return_complex=True).abs()  # (batch, freq, time)
        x = spec.transpose(1, 2).unsqueeze(1)  # (batch, 1, time, freq)
        return score_with_features(x, self.convs, self.conv_post)


class MultiResolutionDiscriminator(nn.Module):
    def __init__(self, cfg: VocoderConfig) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(
            ResolutionDiscriminator(r, cfg.mrd_channels) for r in cfg.mrd_resolutions
        )

    def forward(self, wave: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        scores, features = zip(*(d(wave) for d in self.discriminators))
        return list(scores), list(features)


# --- losses ------------------------------------------------------------------------------


def discriminator_loss(real_scores: list[torch.Tensor], fake_scores: list[torch.Tensor]) -> torch.Tensor:
    """Least-squares GAN: push real scores to 1 and generated ones to 0."""
    return sum(torch.mean((1 - r.float()) ** 2) + torch.mean(f.float() ** 2) for r, f in zip(real_scores, fake_scores))


def adversarial_loss(fake_scores: list[torch.Tensor]) -> torch.Tensor:
    """Least-squares GAN, generator side: push the scores of generated audio to 1."""
    return sum(torch.mean((1 - f.float()) ** 2) for f in fake_scores)


def feature_matching_loss(
    real_features: list[list[torch.Tensor]], fake_features: list[list[torch.Tensor]]
) -> torch.Tensor:
    """L1 between the discriminators' inner activations on real and generated audio."""
    return sum(
        torch.mean(torch.abs(r.float() - f.float()))
        for real, fake in zip(real_features, fake_features)
        for r, f in zip(real, fake)
    )


def stft_loss(
    predicted: torch.Tensor, target: torch.Tensor, resolutions: tuple[tuple[int, int, int], ...]
) -> torch.Tensor:
    """Multi-resolution STFT loss (Yamamoto et al. 2020): lower is closer, differentiable.

    At each (n_fft, hop, win): spectral convergence ||T| - |P||_F / ||T||_F
    plus the mean L1 of log magnitudes; averaged over the resolutions. Both
    waves are cut to the shorter one.
    """
    n = min(predicted.shape[-1], target.shape[-1])
    predicted, target = predicted[..., :n].float(), target[..., :n].float()
    total = 0.0
    for n_fft, hop, win in resolutions:
        window = torch.hann_window(win, device=target.device)
        mags = [
            torch.stft(w, n_fft, hop, win, window, return_complex=True).abs().clamp(min=1e-7)
            for w in (predicted, target)
        ]
        convergence = torch.linalg.norm(mags[1] - mags[0]) / torch.linalg.norm(mags[1])
        log_distance = torch.mean(torch.abs(torch.log(mags[1]) - torch.log(mags[0])))
        total = total + convergence + log_distance
    return total / len(resolutions)


class MultiScaleMelLoss(nn.Module):
    """The log-mel L1 at several windows (DAC's mel loss, Kumar et al. 2023): lower is closer, differentiable.

    Each window of ``win`` samples has a hop of ``win // 4`` and ``win * 5 // 32``
    mel bands (5 at 2 ms, 320 at 128 ms, at 16 kHz): the short windows
    resolve time to a millisecond or two, the long ones frequency finer than
    the pitch harmonics' spacing, and every window gives the bands below
    1 kHz a third of its mel bands, against an eighth of its FFT bins.
    Magnitudes are clamped at ``MEL_FLOOR`` before the natural log, as in the
    model's own mels. The L1 is averaged over the windows; both waves are cut
    to the shorter one.
    """

    def __init__(self, audio: AudioConfig, windows: tuple[int, ...]) -> None:
        super().__init__()
        self.windows = windows
        for win in windows:
            filters = mel_filterbank(audio.sample_rate, win, win * 5 // 32, audio.f_min, audio.f_max)
            self.register_buffer(f"filters_{win}", filters, persistent=False)
            self.register_buffer(f"window_{win}", torch.hann_window(win), persistent=False)

    def forward(self, predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n = min(predicted.shape[-1], target.shape[-1])
        predicted, target = predicted[..., :n].float(), target[..., :n].float()
        total = 0.0
        for win in self.windows:
            filters, window = getattr(self, f"filters_{win}"), getattr(self, f"window_{win}")
            spectra = [torch.stft(w, win, win // 4, window=window, return_complex=True).abs()
                       for w in (predicted, target)]  # (batch, win // 2 + 1, frames)
            mels = [torch.log(torch.clamp(filters @ spectrum, min=MEL_FLOOR)) for spectrum in spectra]
            total = total + F.l1_loss(mels[0], mels[1])
        return total / len(self.windows)


# the evaluation's resolutions: not the ones a generator may have been trained on (the config's)
EVAL_STFT_RESOLUTIONS = ((512, 128, 512), (1024, 256, 1024), (2048, 512, 2048))


@torch.no_grad()
def stft_distance(
    predicted: torch.Tensor,
    target: torch.Tensor,
    resolutions: tuple[tuple[int, int, int], ...] = EVAL_STFT_RESOLUTIONS,
) -> float:
    """``stft_loss`` as a number, for evaluation: lower is closer."""
    return float(stft_loss(predicted, target, resolutions))


# --- save and load ---------------------------------------------------------------------


def save_vocoder(
    path: str | os.PathLike, generator: CausalVocoder, preset: str, dtype: torch.dtype = torch.float32
) -> Path:
    """Write the generator for inference (weight norm folded in) as safetensors, atomically.

    The metadata holds the preset and the full config, so ``load_vocoder`` can
    refuse a checkpoint made for something else.
    """
    if dtype not in (torch.float32, torch.float16):
        raise ValueError(f"save in float32 or float16, not {dtype}")
    if preset != generator.cfg.preset:
        raise ValueError(f"this generator was built for preset {generator.cfg.preset!r}, not {preset!r}")
    plain = build_generator(generator.cfg)
    if isinstance(generator, HiFiGANGenerator) and not is_parametrized(generator.conv_pre.conv):
        plain.remove_weight_norm()  # weight norm already folded in
    plain.load_state_dict(generator.state_dict())
    tensors = {k: v.to(dtype) for k, v in inference_ready(plain).state_dict().items()}
    return write_weights(path, tensors, {"format": CHECKPOINT_FORMAT, "preset": preset,
                                         "config": generator.cfg.to_json()})


def with_phase_lookahead(generator: CausalVocoder, hops: int) -> CausalVocoder:
    """The same weights, their "pghi" phases looking ``hops`` frames ahead (``phase_lookahead_hops``)."""
    changed = build_generator(replace(generator.cfg, phase_lookahead_hops=hops))
    changed.load_state_dict(generator.state_dict())
    return changed.to(next(generator.parameters()).device).train(generator.training)


def load_vocoder(path: str | os.PathLike, preset: str, device: str | torch.device = "cpu") -> CausalVocoder:
    """Read a ``save_vocoder`` file (or a training run's directory) into an eval-mode fp32 generator.

    Raises FileNotFoundError for a missing file and ValueError for a foreign,
    truncated or mismatched one (``read_weights``), or one of another
    architecture or shape than the preset's today.
    """
    path, metadata, tensors = read_weights(path, "vocoder", CHECKPOINT_FORMAT, preset)
    saved = saved_config(path, metadata, "vocoder")
    saved.setdefault("arch", "hifigan")  # files from before the choice existed
    saved.setdefault("upsampler", "transposed")
    saved.setdefault("istft_phase", "frame")
    saved.setdefault("phase_lookahead_hops", 0)
    if saved["arch"] not in ARCHS:
        raise ValueError(f"{path}: a vocoder of architecture {saved['arch']!r}, which this version does not know")
    # the architecture, the upsampler and the phases' look-ahead are choices of the run's, not the preset's
    try:
        cfg = replace(vocoder_config(preset), arch=saved["arch"], upsampler=saved["upsampler"],
                      istft_phase=saved["istft_phase"], phase_lookahead_hops=saved["phase_lookahead_hops"])
    except (TypeError, ValueError) as error:  # a damaged or hand-edited config: say which file
        raise ValueError(f"{path}: its config makes no vocoder ({error})") from error
    if {k: saved.get(k) for k in cfg.generator_fields()} != cfg.generator_fields():
        raise ValueError(
            f"{path}: made for preset {preset!r} but with another generator shape or audio config "
            "than today's; retrain it or restore the old config"
        )
    generator = inference_ready(build_generator(cfg))
    with fitting_weights(path, "vocoder"):
        generator.load_state_dict({k: v.float() for k, v in tensors.items()})
    return generator.to(device).eval()
