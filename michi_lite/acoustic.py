"""The acoustic model: phonemes and their timing -> mel patches in a voice, learnable on a CPU.

The first speaking head read only the backbone's state and had to learn, from
10 hours of speech, which sound each of SmolLM2's 49k tokens makes and when;
in 5.6 CPU-hours it did not (``data/speaker/README.md``). This model is told
what the corpus's engines already know exactly: which phoneme sounds under
every 10 ms mel column. What is left to learn is how each phoneme sounds in
context, in a voice, and how long it lasts: a small network learns that in
minutes (FastSpeech 2 trains from external durations in under 10k steps).

Two parts, each supervised densely:

* ``DurationPredictor``: the phonemes of the text (``sentence_phonemes``,
  pauses between clauses) -> how many 10 ms columns each lasts. Trained on
  the engine's timings (log-duration MSE); at inference it lays out the
  phoneme stream, so espeak-ng gives the model symbols, never durations.
* ``AcousticModel``: the phoneme stream, one entry per column (which phoneme,
  columns since it began, columns until it ends) and a voice vector pooled
  from a few seconds of audio -> a mel column each (L1, the dense target),
  and per 80 ms frame the condition of the speaking head, the rectified flow
  of ``flow.py``, which samples the frame's patch by refining those columns
  (their regression is its prior: ``AcousticConfig.flow_prior``).

It streams on the frame clock: convolutions over the phoneme stream look
``lookahead_columns`` ahead (the stream is laid out before it is voiced),
attention looks back over a window, and no layer reads audio it has made, so
nothing drifts when it speaks on. Shapes: B batch, C mel columns (10 ms), F
frames (80 ms, C = 8 F), P phonemes.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .audio import SILENCE_MEL, audio_patches, load_audio, speech_patches, voice_prompt
from .config import FRAME_SECONDS, AudioConfig, get_config
from .data.phonemes import N_PHONEME_IDS, PAD_PHONEME, phoneme_id, sentence_phonemes
from .flow import SpeakingHead
from .weights import load_shaped_weights, read_weights, write_weights

ACOUSTIC_FORMAT = "michi_lite.acoustic/1"
ACOUSTIC_MELS_FORMAT = "michi_lite.acoustic_mels/1"
# the speaking head's noise scale at inference (``AcousticModel.speak``), chosen on the validation split: the lite
# reference's 4-step speech was heard at judge WER 0.261 from no noise, 0.269 at 0.3 and 0.292 at 0.6 on the same
# 103 seen-voice sentences (1 step: 0.232 to 0.236 at all three; data/acoustic/lite_val_temperature.json)
SAMPLING_TEMPERATURE = 0.0


@dataclass(frozen=True)
class AcousticConfig:
    audio: AudioConfig
    width: int = 128
    conv_layers: int = 4
    kernel: int = 5  # each convolution sees kernel // 2 columns ahead: 4 layers, 80 ms
    attention_layers: int = 1  # each costs as much as the four convolutions on a CPU
    heads: int = 4
    window: int = 200  # columns attention looks back over: 2 s
    max_count: int = 32  # columns since / until a phoneme's edge are counted up to this
    voice_width: int = 128
    duration_width: int = 128
    head_width: int = 256
    head_depth: int = 3
    flow_prior: bool = True  # the head refines the regressed mel (``flow.py``, PRIOR) instead of starting from zero

    @property
    def patch_dim(self) -> int:
        return self.audio.mels_per_frame * self.audio.n_mels

    @property
    def lookahead_columns(self) -> int:
        return self.conv_layers * (self.kernel // 2)

    def to_dict(self) -> dict:
        return asdict(self)


def acoustic_config(preset: str) -> AcousticConfig:
    audio = get_config(preset).audio
    if preset == "tiny":
        return AcousticConfig(audio, width=32, conv_layers=2, attention_layers=1, heads=2, window=40,
                              max_count=8, voice_width=16, duration_width=16, head_width=32, head_depth=1)
    return AcousticConfig(audio)


# --- the phoneme stream ----------------------------------------------------------------------


def column_centres(n_columns: int, audio: AudioConfig) -> np.ndarray:
    """Seconds at the centre of each causal mel column's window (``audio.MelSpectrogram``): it ends at (c+1) hops."""
    hop, window = audio.hop_length / audio.sample_rate, audio.win_length / audio.sample_rate
    return (np.arange(n_columns) + 1) * hop - window / 2


def columns_per_phoneme(ends: np.ndarray, n_columns: int, audio: AudioConfig) -> np.ndarray:
    """How many columns each timed phoneme covers: those whose window's centre falls in its span. (P,)

    Columns past the last phoneme's end go to the last phoneme (the
    utterance's closing pause), so the counts sum to ``n_columns``.
    """
    owner = np.searchsorted(ends, column_centres(n_columns, audio), side="right").clip(max=len(ends) - 1)
    return np.bincount(owner, minlength=len(ends))


def phoneme_stream(phonemes: torch.Tensor, durations: torch.Tensor, max_count: int) -> tuple[torch.Tensor, ...]:
    """Phoneme ids (P,) and their columns (P,) -> per column (C,): id, columns since its start, columns to its end."""
    ids = torch.repeat_interleave(phonemes, durations)
    starts = torch.repeat_interleave(torch.cumsum(durations, 0) - durations, durations)
    since = torch.arange(len(ids), device=ids.device) - starts
    until = torch.repeat_interleave(durations, durations) - 1 - since
    return ids, since.clamp(max=max_count), until.clamp(max=max_count)


def lay_out(durations: torch.Tensor, mels_per_frame: int) -> torch.Tensor:
    """Durations (P,) with the last phoneme's (a pause) stretched to fill a whole number of frames."""
    durations = durations.clone()
    durations[-1] += -int(durations.sum()) % mels_per_frame
    return durations


# --- the networks -------------------------------------------------------------------------


class VoiceEncoder(nn.Module):
    """A few seconds of speech (B, C', n_mels) with its mask (B, C') -> one normalised voice vector (B, width)."""

    def __init__(self, n_mels: int, width: int, out: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(nn.Conv1d(n_mels, width, 3, padding=1), nn.GELU(),
                                   nn.Conv1d(width, width, 3, padding=1), nn.GELU())
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, out))

    def forward(self, columns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.convs(columns.transpose(1, 2)).transpose(1, 2)  # (B, C', width)
        weights = mask.float().unsqueeze(-1)
        return self.out((x * weights).sum(1) / weights.sum(1).clamp(min=1))


class ConvBlock(nn.Module):
    """Pre-norm residual convolution over columns, ``kernel // 2`` on each side."""

    def __init__(self, width: int, kernel: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.conv = nn.Conv1d(width, 2 * width, kernel, padding=kernel // 2)
        self.out = nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(self.norm(x).transpose(1, 2)).transpose(1, 2)
        return x + self.dropout(self.out(F.glu(h, dim=-1)))


class WindowedAttentionBlock(nn.Module):
    """Pre-norm self-attention over the last ``window`` columns (itself included), then an MLP."""

    def __init__(self, width: int, heads: int, window: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads, self.window = heads, window
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, last: int | None = None) -> torch.Tensor:
        """Columns (B, C, width) -> the block's output for all of them, or for the ``last`` few (B, last, width)."""
        b, c, w = x.shape
        n = c if last is None else last
        q, k, v = self.qkv(self.norm1(x)).view(b, c, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        i = torch.arange(c, device=x.device)
        rows = i[c - n:, None]
        allowed = (i[None, :] <= rows) & (rows - i[None, :] < self.window)  # (n, C)
        h = F.scaled_dot_product_attention(q[:, :, c - n:], k, v, attn_mask=allowed)  # (B, heads, n, w / heads)
        x = x[:, c - n:] + self.dropout(self.proj(h.transpose(1, 2).reshape(b, n, w)))
        return x + self.dropout(self.mlp(self.norm2(x)))


class DurationPredictor(nn.Module):
    """Phoneme ids (B, P) and a voice (B, width) -> log(1 + columns) of each phoneme (B, P)."""

    def __init__(self, cfg: AcousticConfig, dropout: float = 0.0) -> None:
        super().__init__()
        w = cfg.duration_width
        self.embedding = nn.Embedding(N_PHONEME_IDS, w)
        self.voice = nn.Linear(cfg.width, w)
        self.blocks = nn.ModuleList(ConvBlock(w, 3, dropout) for _ in range(3))
        self.out = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, 1))

    def forward(self, phonemes: torch.Tensor, voice: torch.Tensor) -> torch.Tensor:
        x = self.embedding(phonemes) + self.voice(voice)[:, None]
        for block in self.blocks:
            x = block(x)
        return self.out(x).squeeze(-1)

    def columns(self, phonemes: torch.Tensor, voice: torch.Tensor) -> torch.Tensor:
        """Whole columns per phoneme (B, P), at least one for a phoneme that is not a pause."""
        columns = torch.expm1(self.forward(phonemes, voice)).round().clamp(min=0).long()
        return torch.where(phonemes == PAD_PHONEME, columns, columns.clamp(min=1))


class AcousticModel(nn.Module):
    """The phoneme stream and a voice -> mel columns, and per frame the speaking head's patch.

    ``dropout`` and ``duration_dropout`` (the duration predictor's; training
    only, not part of the shape) drop each residual branch's output: without
    them the lite model learnt its train sentences' durations by heart
    (``data/acoustic/README.md``).
    """

    def __init__(self, cfg: AcousticConfig, dropout: float = 0.0, duration_dropout: float = 0.0) -> None:
        super().__init__()
        self.cfg = cfg
        w, audio = cfg.width, cfg.audio
        self.voice_encoder = VoiceEncoder(audio.n_mels, cfg.voice_width, w)
        self.durations = DurationPredictor(cfg, duration_dropout)
        self.phoneme = nn.Embedding(N_PHONEME_IDS, w)
        self.since = nn.Embedding(cfg.max_count + 1, w)
        self.until = nn.Embedding(cfg.max_count + 1, w)
        self.convs = nn.ModuleList(ConvBlock(w, cfg.kernel, dropout) for _ in range(cfg.conv_layers))
        self.attention = nn.ModuleList(WindowedAttentionBlock(w, cfg.heads, cfg.window, dropout)
                                       for _ in range(cfg.attention_layers))
        self.norm = nn.LayerNorm(w)
        self.mel_out = nn.Linear(w, audio.n_mels)
        self.frame_norm = nn.LayerNorm(audio.mels_per_frame * w)
        self.speaking_head = SpeakingHead(cfg.patch_dim, audio.mels_per_frame * w, cfg.head_width, cfg.head_depth)

    def voice(self, prompt: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Prompt mel columns (B, C', n_mels) -> voice vectors (B, width)."""
        if mask is None:
            mask = torch.ones(prompt.shape[:2], dtype=torch.bool, device=prompt.device)
        return self.voice_encoder(prompt, mask)

    def hidden(self, ids: torch.Tensor, since: torch.Tensor, until: torch.Tensor,
               voice: torch.Tensor) -> torch.Tensor:
        """The phoneme stream (B, C) each, a voice (B, width) -> column features (B, C, width)."""
        return self.attended(self.convolved(ids, since, until, voice))

    def convolved(self, ids: torch.Tensor, since: torch.Tensor, until: torch.Tensor,
                  voice: torch.Tensor) -> torch.Tensor:
        """``hidden``'s first part: the stream's embeddings through the convolutions (B, C, width).

        A column's result reads ``lookahead_columns`` on either side of it.
        """
        x = self.phoneme(ids) + self.since(since) + self.until(until) + voice[:, None]
        for block in self.convs:
            x = block(x)
        return x

    def attended(self, x: torch.Tensor, last: int | None = None) -> torch.Tensor:
        """``hidden``'s second part: ``convolved``'s columns through the attention (B, C, width), or the ``last``
        few columns' result alone (B, last, width).

        Each layer reads the ``window`` columns up to a column.
        """
        for i, block in enumerate(self.attention):
            x = block(x, last if i == len(self.attention) - 1 else None)
        return self.norm(x)

    def mel(self, hidden: torch.Tensor) -> torch.Tensor:
        """Column features -> the regressed normalised log-mel (B, C, n_mels)."""
        return self.mel_out(hidden)

    def prior(self, mel: torch.Tensor) -> torch.Tensor:
        """The regressed mel (B, C, n_mels) as the speaking head's prior: per frame (B, F, patch_dim).

        Not detached: the flow loss's error of the head's guess (the prior
        plus the head's change to it) trains the regression too, as it
        trained the column features when the head guessed whole patches.
        """
        return mel.reshape(mel.shape[0], -1, self.cfg.patch_dim)

    def condition(self, hidden: torch.Tensor) -> torch.Tensor:
        """Column features (B, C, width) -> each frame's speaking-head condition (B, F, mels_per_frame * width)."""
        b, c, w = hidden.shape
        return self.frame_norm(hidden.reshape(b, c // self.cfg.audio.mels_per_frame, -1))

    def forward(self, batch: AcousticBatch, flow_frames: int = 256) -> dict[str, torch.Tensor]:
        """The three training losses on a batch: mel L1, the speaking head's flow loss, log-duration MSE."""
        voice = self.voice(batch.prompt, batch.prompt_mask)
        hidden = self.hidden(batch.ids, batch.since, batch.until, voice)
        mask = batch.column_mask.unsqueeze(-1)
        mel = self.mel(hidden)
        mel_loss = ((mel - batch.mel).abs() * mask).sum() / (mask.sum() * batch.mel.shape[-1])
        cond = self.condition(hidden)[batch.frame_mask]  # (frames in the batch, cond)
        patches = batch.mel.reshape(*batch.frame_mask.shape, -1)[batch.frame_mask]  # (frames, patch_dim)
        pick = torch.randperm(len(patches), device=patches.device)[:flow_frames]  # the head is per frame
        prior = self.prior(mel)[batch.frame_mask][pick] if self.cfg.flow_prior else None
        flow_loss = self.speaking_head.loss(patches[pick], cond[pick], prior=prior)
        predicted = self.durations(batch.phonemes, voice)
        target = torch.log1p(batch.durations.float())
        duration_loss = ((predicted - target) ** 2 * batch.phoneme_mask).sum() / batch.phoneme_mask.sum()
        return {"mel_loss": mel_loss, "flow_loss": flow_loss, "duration_loss": duration_loss}

    @torch.inference_mode()
    def speak(self, phonemes: torch.Tensor, voice: torch.Tensor, steps: int = 4,
              generator: torch.Generator | None = None, durations: torch.Tensor | None = None,
              temperature: float = SAMPLING_TEMPERATURE) -> tuple[torch.Tensor, torch.Tensor]:
        """One utterance's phoneme ids (P,) in a voice (1, width) -> (patches (F, patch_dim), durations (P,)).

        Durations are the model's own unless given (an engine's, to compare).
        ``steps`` Euler steps of the speaking head per frame from noise
        scaled by ``temperature`` (centred on the regressed mel if the head
        refines it, ``flow_prior``); 0 steps gives the regressed mel itself.
        """
        if durations is None:
            durations = self.durations.columns(phonemes[None], voice)[0]
        durations = lay_out(durations, self.cfg.audio.mels_per_frame)
        ids, since, until = phoneme_stream(phonemes, durations, self.cfg.max_count)
        hidden = self.hidden(ids[None], since[None], until[None], voice)
        mel = self.mel(hidden)
        if steps == 0:
            return self.prior(mel)[0], durations
        prior = self.prior(mel)[0] if self.cfg.flow_prior else None
        return self.speaking_head.sample(self.condition(hidden)[0], steps, generator, temperature, prior), durations


def text_phoneme_ids(text: str) -> torch.Tensor:
    """What the model reads for ``text``: its phoneme ids, pauses included. (P,)"""
    return torch.tensor([phoneme_id(name) for name in sentence_phonemes(text)])


# --- the training data -----------------------------------------------------------------------


@dataclass
class AcousticBatch:
    phonemes: torch.Tensor  # (B, P) ids
    durations: torch.Tensor  # (B, P) columns
    phoneme_mask: torch.Tensor  # (B, P)
    ids: torch.Tensor  # (B, C) the phoneme stream
    since: torch.Tensor  # (B, C)
    until: torch.Tensor  # (B, C)
    mel: torch.Tensor  # (B, C, n_mels) normalised log-mel
    column_mask: torch.Tensor  # (B, C)
    frame_mask: torch.Tensor  # (B, F)
    prompt: torch.Tensor  # (B, C', n_mels) another utterance of the same voice, speech only
    prompt_mask: torch.Tensor  # (B, C')

    def to(self, device: torch.device) -> AcousticBatch:
        return AcousticBatch(**{k: v.to(device) for k, v in vars(self).items()})


class AcousticUtterances(torch.utils.data.Dataset):
    """A corpus's utterances with phoneme timings: their log-mel, computed once and kept in memory.

    Timings are the engine's where it gave them, else the aligner's
    (``aligner.align_corpus``), unless ``engine_timed_only``.

    An item is one utterance and a voice prompt: a random stretch of
    ``prompt_seconds`` of speech from another utterance of the same voice,
    chosen with the global torch RNG, which checkpoints keep and restore.
    """

    def __init__(self, data_dir: str | os.PathLike, cfg: AcousticConfig, split: str = "train",
                 voices: list[str] | None = None, max_seconds: float = 12.0,
                 prompt_seconds: tuple[float, float] = (2.0, 6.0), engine_timed_only: bool = False) -> None:
        from tqdm.auto import tqdm

        from .aligner import read_aligned
        from .data.corpus import load_manifest

        self.cfg, self.prompt_seconds = cfg, prompt_seconds
        data_dir = Path(data_dir)
        aligned = {} if engine_timed_only else read_aligned(data_dir)
        records = [{**r, "phonemes": aligned.get(r["id"])} if r.get("phonemes") is None else r
                   for r in load_manifest(data_dir, split)]
        self.records = [r for r in records if r.get("phonemes")
                        and r["duration"] <= max_seconds and (voices is None or r["voice"] in voices)]
        if not self.records:
            raise ValueError(f"{data_dir}: no {split} utterances of at most {max_seconds} s with phoneme timings "
                             "(espeak voices give them, `michi-lite data align` the others)")
        self.mels, self.streams = [], []
        for record in tqdm(self.records, desc=f"log-mel, {split}", unit="utt"):
            wave = torch.from_numpy(load_audio(data_dir / record["path"], cfg.audio.sample_rate))
            patches = audio_patches(wave, cfg.audio)  # (F, patch_dim)
            mel = patches.reshape(-1, cfg.audio.n_mels)  # (C, n_mels)
            names = [row[0] for row in record["phonemes"]]
            ends = np.array([row[2] for row in record["phonemes"]])
            durations = torch.from_numpy(columns_per_phoneme(ends, len(mel), cfg.audio))
            self.mels.append(mel)
            self.streams.append((torch.tensor([phoneme_id(n) for n in names]), durations))
        self.by_voice: dict[str, list[int]] = {}
        for i, r in enumerate(self.records):
            self.by_voice.setdefault(r["voice"], []).append(i)

    def __len__(self) -> int:
        return len(self.records)

    def lengths(self) -> list[float]:
        return [r["duration"] for r in self.records]

    def prompt(self, index: int) -> torch.Tensor:
        """Speech columns (C', n_mels) from another utterance of ``index``'s voice."""
        others = [i for i in self.by_voice[self.records[index]["voice"]] if i != index] or [index]
        other = others[int(torch.randint(len(others), ()))]
        speech = speech_patches(self.mels[other].reshape(-1, self.cfg.patch_dim))
        low, high = self.prompt_seconds
        frames = round((low + (high - low) * float(torch.rand(()))) / FRAME_SECONDS)
        start = int(torch.randint(max(1, len(speech) - frames + 1), ()))
        return speech[start:start + frames].reshape(-1, self.cfg.audio.n_mels)

    def __getitem__(self, index: int) -> tuple:
        phonemes, durations = self.streams[index]
        return phonemes, durations, self.mels[index], self.prompt(index)

    def collate(self, items: list[tuple]) -> AcousticBatch:
        n_p = max(len(p) for p, _, _, _ in items)
        n_c = max(len(m) for _, _, m, _ in items)
        n_prompt = max(1, max(len(q) for _, _, _, q in items))
        streams = [phoneme_stream(p, d, self.cfg.max_count) for p, d, _, _ in items]

        def pad(rows: list[torch.Tensor], length: int, value: float = 0) -> torch.Tensor:
            return torch.stack([F.pad(r, (0, 0) * (r.dim() - 1) + (0, length - len(r)), value=value) for r in rows])

        def mask(lengths: list[int], length: int) -> torch.Tensor:
            return torch.arange(length)[None] < torch.tensor(lengths)[:, None]

        per_frame = self.cfg.audio.mels_per_frame
        return AcousticBatch(
            phonemes=pad([p for p, _, _, _ in items], n_p), durations=pad([d for _, d, _, _ in items], n_p),
            phoneme_mask=mask([len(p) for p, _, _, _ in items], n_p),
            ids=pad([s[0] for s in streams], n_c), since=pad([s[1] for s in streams], n_c),
            until=pad([s[2] for s in streams], n_c), mel=pad([m for _, _, m, _ in items], n_c, SILENCE_MEL),
            column_mask=mask([len(m) for _, _, m, _ in items], n_c),
            frame_mask=mask([len(m) // per_frame for _, _, m, _ in items], n_c // per_frame),
            prompt=pad([q for _, _, _, q in items], n_prompt), prompt_mask=mask([len(q) for *_, q in items], n_prompt))


# --- files ------------------------------------------------------------------------------


def save_acoustic(path: str | os.PathLike, model: AcousticModel, preset: str,
                  dtype: torch.dtype = torch.float32) -> Path:
    """The model's weights (``dtype``) with its preset and shape, for ``load_acoustic``."""
    tensors = {k: v.to(dtype) for k, v in model.state_dict().items()}
    metadata = {"format": ACOUSTIC_FORMAT, "preset": preset, "config": json.dumps(model.cfg.to_dict())}
    return write_weights(path, tensors, metadata)


def is_acoustic(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a ``save_acoustic`` file, or a run directory holding one."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        return (path / "acoustic.safetensors").is_file()
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format") == ACOUSTIC_FORMAT
    except Exception:  # a missing, truncated or foreign file is not one; its loader says why
        return False


def load_acoustic(path: str | os.PathLike, preset: str, device: str | torch.device = "cpu") -> AcousticModel:
    """An ``AcousticModel`` from ``save_acoustic``'s file (or a training run's directory), in fp32, for inference."""
    model = load_shaped_weights(AcousticModel(acoustic_config(preset)), path, "acoustic", ACOUSTIC_FORMAT, preset)
    return model.to(device).eval()


# --- its mels on the engine's timing, for the vocoder ------------------------------------------


def speak_on_engine_timing(model: AcousticModel, data_dir: str | os.PathLike, split: str = "train",
                           steps: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """The model's mel (C, n_mels) for each utterance of ``split`` with phoneme timings, by utterance id.

    Each is spoken from its phonemes held as long as the engine held them
    (in the voice of a random other utterance of its speaker, ``steps``
    Euler steps at ``SAMPLING_TEMPERATURE``), so its columns line up with
    the real audio's: a vocoder can learn from these mels against the real
    wave ("ground-truth aligned" mels; HiFi-GAN is fine-tuned on Tacotron
    2's this way). The model's mels are smoother than real ones, and a
    vocoder that has only heard real ones plays that smoothness as breath.
    """
    from tqdm.auto import tqdm

    utterances = AcousticUtterances(data_dir, model.cfg, split, max_seconds=float("inf"))
    device = next(model.parameters()).device
    torch.manual_seed(seed)  # the voice prompts' draws
    mels = {}
    for index in tqdm(range(len(utterances)), desc=f"acoustic mels, {split}", unit="utt"):
        phonemes, durations, real, prompt = utterances[index]
        with torch.inference_mode():
            voice = model.voice(prompt.to(device)[None])
            patches, _ = model.speak(phonemes.to(device), voice, steps, torch.Generator(device).manual_seed(index),
                                     durations=durations.to(device))
        mels[utterances.records[index]["id"]] = patches.reshape(real.shape).cpu()
    return mels


def write_acoustic_mels(path: str | os.PathLike, mels: dict[str, torch.Tensor], preset: str,
                        acoustic: str | os.PathLike, steps: int) -> Path:
    """``speak_on_engine_timing``'s mels in fp16, with what made them, for ``train vocoder --acoustic-mels``."""
    metadata = {"format": ACOUSTIC_MELS_FORMAT, "preset": preset, "acoustic": str(acoustic), "steps": str(steps)}
    return write_weights(path, {k: v.half() for k, v in mels.items()}, metadata)


def read_acoustic_mels(path: str | os.PathLike, preset: str,
                       dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """``write_acoustic_mels``'s file -> mels (C, n_mels) by utterance id, as ``dtype`` (the file holds fp16).

    A foreign file raises ValueError.
    """
    _, _, mels = read_weights(path, "acoustic mels", ACOUSTIC_MELS_FORMAT, preset)
    return {k: v.to(dtype) for k, v in mels.items()}


def prompt_columns(wave: np.ndarray | torch.Tensor, audio: AudioConfig, source: str = "voice prompt") -> torch.Tensor:
    """A voice prompt's waveform -> its speech mel columns (C', n_mels), checked as ``audio.voice_prompt`` checks."""
    return voice_prompt(wave, audio, source).reshape(-1, audio.n_mels)
