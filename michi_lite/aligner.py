"""Phoneme timing for speech whose engine does not report it: a column classifier and forced alignment.

espeak-ng says when each of its phonemes sounds; flite, festival, piper and
hibari give words at best. The acoustic model needs every training voice's
phonemes timed to the 10 ms column, so their timing is recovered the way
speech recognisers align transcripts: a small network, trained on the
espeak-ng utterances' exact timings, scores every phoneme class under every
column of a recording (``PhonemeClassifier``), and a Viterbi pass
(``force_align``) finds the one monotone path through the text's known
phoneme sequence (``sentence_phonemes``) that scores best, each phoneme
lasting at least 30 ms. The sequence is
given, so the classifier need not recognise a voice's phonemes outright; it
only has to rank the next few candidates well enough to place the borders.

The same classifier is the speaking path's cheap judge: run on the mel of
generated speech, its accuracy against the phonemes that were asked for says
whether the right sounds came out, without Whisper's noise on babble.

    aligner = load_aligner("data/aligner/lite_aligner.safetensors", "lite")
    durations = aligner.align(mel_columns, phoneme_ids)  # columns per phoneme, (P,)

Classes are the phonemes without their stress (stress moves pitch and length
more than spectrum), a pause and an unknown phoneme: ``N_CLASSES``.
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

from .config import AudioConfig, get_config
from .data.phonemes import PHONEMES, UNKNOWN_PHONEME
from .weights import load_shaped_weights, write_weights

ALIGNER_FORMAT = "michi_lite.aligner/1"
N_CLASSES = 2 + len(PHONEMES)  # pause, unknown, then each phoneme of the table


def phoneme_classes(ids: torch.Tensor) -> torch.Tensor:
    """Phoneme ids (``data.phonemes.phoneme_id``) -> their classes: the stress dropped, PAD (a pause) 0, unknown 1."""
    return torch.where(ids <= UNKNOWN_PHONEME, ids, 2 + (ids - 2) // 3)


@dataclass(frozen=True)
class AlignerConfig:
    audio: AudioConfig
    width: int = 192
    conv_layers: int = 3
    kernel: int = 5
    recurrent_layers: int = 2

    def to_dict(self) -> dict:
        return asdict(self)


def aligner_config(preset: str) -> AlignerConfig:
    audio = get_config(preset).audio
    if preset == "tiny":
        return AlignerConfig(audio, width=32, conv_layers=1, recurrent_layers=1)
    return AlignerConfig(audio)


# Aligning voices of other engines than the one it learnt from, the classifier is
# unsure, and a plain Viterbi path then squeezes the phonemes it cannot place into one
# column each: 27% of flite's and festival's phonemes were 10 ms long (espeak-ng's own
# timings: 1.5%), and those words' ends were off by 38 ms (median; 218 ms p90) on
# festival. At least 30 ms a phoneme and the scores divided by the classes' prior
# (a hybrid recogniser's scaled likelihoods, Bourlard & Morgan 1994) took that to
# 28 ms (120 ms p90) on festival and from 25 to 17 ms (95 to 64 ms p90) on flite,
# over 160 sentences, with espeak-ng's own borders as close as before (98.6% within
# 20 ms, from 98.2%).
MIN_PHONEME_COLUMNS = 3


class PhonemeClassifier(nn.Module):
    """Normalised log-mel columns (B, C, n_mels) with their mask (B, C) -> phoneme class logits (B, C, N_CLASSES).

    It reads the whole recording (convolutions, then a bidirectional GRU):
    alignment happens after the fact, so nothing here need stream. Each
    recording's mean column is taken away first, which removes much of what
    a voice or a channel adds to every column alike.
    """

    def __init__(self, cfg: AlignerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.inp = nn.Linear(cfg.audio.n_mels, w)
        self.convs = nn.ModuleList(nn.Conv1d(w, w, cfg.kernel, padding=cfg.kernel // 2) for _ in range(cfg.conv_layers))
        self.norms = nn.ModuleList(nn.LayerNorm(w) for _ in range(cfg.conv_layers))
        self.rnn = nn.GRU(w, w // 2, num_layers=cfg.recurrent_layers, batch_first=True, bidirectional=True)
        self.out = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, N_CLASSES))

    def forward(self, mel: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.float().unsqueeze(-1)
        mean = (mel * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True).clamp(min=1)
        x = self.inp((mel - mean) * weights)
        for conv, norm in zip(self.convs, self.norms):
            x = x + F.gelu(conv(norm(x).transpose(1, 2)).transpose(1, 2))
        lengths = mask.sum(1).cpu().clamp(min=1)
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        x, _ = self.rnn(packed)
        x, _ = nn.utils.rnn.pad_packed_sequence(x, batch_first=True, total_length=mel.shape[1])
        return self.out(x)

    def loss(self, mel: torch.Tensor, mask: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of each column's class (B, C), the padding left out."""
        logits = self(mel, mask)
        return F.cross_entropy(logits[mask], classes[mask])

    @torch.no_grad()
    def log_probs(self, mel: torch.Tensor) -> torch.Tensor:
        """One recording's columns (C, n_mels) -> log-probabilities of each class (C, N_CLASSES)."""
        mask = torch.ones(1, len(mel), dtype=torch.bool, device=mel.device)
        return F.log_softmax(self(mel[None], mask)[0], dim=-1)

    def align(self, mel: torch.Tensor, phonemes: torch.Tensor, log_prior: np.ndarray | None = None,
              min_columns: int = MIN_PHONEME_COLUMNS) -> torch.Tensor:
        """One recording's columns (C, n_mels) and the phoneme ids it says (P,) -> columns per phoneme (P,).

        ``log_prior`` (K,), the classes' log share of the columns (``class_prior``),
        is taken from the scores first: see ``force_align``.
        """
        log_probs = self.log_probs(mel).cpu().numpy()
        if log_prior is not None:
            log_probs = log_probs - log_prior
        return torch.from_numpy(force_align(log_probs, phoneme_classes(phonemes).cpu().numpy(), min_columns))


def class_prior(log_probs: list[np.ndarray]) -> np.ndarray:
    """Each class's log share of the columns the classifier heard, from its scores (C, K) of each recording -> (K,).

    The mean posterior: what the classifier believes it hears, on this speech, where nothing tells it the text.
    """
    return np.log(np.exp(np.concatenate(log_probs)).mean(0) + 1e-6)


def force_align(log_probs: np.ndarray, classes: np.ndarray, min_columns: int = 1) -> np.ndarray:
    """The best monotone path of ``classes`` (P,) through ``log_probs`` (C, K): columns per class.

    Viterbi over P states visited in order: at each column the path stays in
    its state or moves to the next. Every phoneme gets at least
    ``min_columns`` (a pause, class 0, at least one), or one each when the
    audio is too short for that; the counts sum to C.
    """
    n_columns, n_states = len(log_probs), len(classes)
    if n_states > n_columns:
        raise ValueError(f"{n_states} phonemes cannot fit in {n_columns} columns of audio")
    repeats = np.where(classes == 0, 1, min_columns)
    if repeats.sum() > n_columns:
        repeats = np.ones_like(classes)
    if repeats.max() > 1:  # a phoneme is a chain of min_columns states, each visited at least once
        owner = np.repeat(np.arange(n_states), repeats)
        chained = force_align(log_probs, np.repeat(classes, repeats))
        return np.bincount(owner, weights=chained, minlength=n_states).astype(np.int64)
    emit = log_probs[:, classes]  # (C, P)
    score = np.full(n_states, -np.inf)
    score[0] = emit[0, 0]
    moved = np.zeros((n_columns, n_states), dtype=bool)
    for c in range(1, n_columns):
        advance = np.concatenate([[-np.inf], score[:-1]])
        moved[c] = advance > score
        score = np.maximum(score, advance) + emit[c]
    durations = np.zeros(n_states, dtype=np.int64)
    state = n_states - 1
    for c in range(n_columns - 1, -1, -1):
        durations[state] += 1
        if moved[c, state]:
            state -= 1
    return durations


# --- files ------------------------------------------------------------------------------


def save_aligner(path: str | os.PathLike, model: PhonemeClassifier, preset: str,
                 dtype: torch.dtype = torch.float32) -> Path:
    """The classifier's weights (``dtype``) with its preset and shape, for ``load_aligner``."""
    tensors = {k: v.to(dtype) for k, v in model.state_dict().items()}
    metadata = {"format": ALIGNER_FORMAT, "preset": preset, "config": json.dumps(model.cfg.to_dict())}
    return write_weights(path, tensors, metadata)


def load_aligner(path: str | os.PathLike, preset: str, device: str | torch.device = "cpu") -> PhonemeClassifier:
    """A ``PhonemeClassifier`` from ``save_aligner``'s file (or a training run's directory), in fp32."""
    model = load_shaped_weights(PhonemeClassifier(aligner_config(preset)), path, "aligner", ALIGNER_FORMAT, preset)
    return model.to(device).eval()


# --- a corpus's missing timings -------------------------------------------------------------

ALIGNED_FILE = "phonemes.aligned.jsonl"  # beside a corpus's manifest: {"id", "phonemes"} per aligned utterance
PRIOR_UTTERANCES = 200  # the class prior of a corpus's untimed speech is heard from this many of its utterances


def timed_rows(names: list[str], durations: np.ndarray, duration: float, audio: AudioConfig) -> list[list]:
    """Phoneme names and their columns -> manifest rows ``[name, start, end]`` tiling [0, duration].

    Each border falls half a hop past the centre of its phoneme's last column,
    so ``acoustic.columns_per_phoneme`` gives the same columns back.
    """
    hop, window = audio.hop_length / audio.sample_rate, audio.win_length / audio.sample_rate
    borders = (np.cumsum(durations) + 0.5) * hop - window / 2
    ends = np.clip(borders, 0.0, duration)
    ends[-1] = duration
    starts = np.concatenate([[0.0], ends[:-1]])
    return [[name, round(float(s), 4), round(float(e), 4)] for name, s, e in zip(names, starts, ends)]


def read_aligned(data_dir: str | os.PathLike) -> dict[str, list[list]]:
    """The aligned phoneme rows of a corpus, by utterance id ({} when none were made)."""
    from .data.corpus import read_records

    return {r["id"]: r["phonemes"] for r in read_records(Path(data_dir) / ALIGNED_FILE)}


def align_corpus(aligner: PhonemeClassifier, data_dir: str | os.PathLike, accent: str = "en-us") -> Path:
    """Time the phonemes of every utterance of ``data_dir`` whose engine did not, into ``ALIGNED_FILE``.

    The phonemes are espeak-ng's for the text (``sentence_phonemes`` in
    ``accent``), as the acoustic model reads them at inference. The scores
    are divided by the class prior of the corpus's untimed speech
    (``class_prior``) and every phoneme lasts ``MIN_PHONEME_COLUMNS`` or
    more (``force_align``). Each utterance is appended as it is done, so a
    killed run resumes where it stopped; the manifest is not touched
    (``data build`` may rewrite it).
    """
    from tqdm.auto import tqdm

    from .audio import audio_patches, load_audio
    from .data.corpus import load_manifest
    from .data.phonemes import phoneme_id, sentence_phonemes

    data_dir = Path(data_dir)
    out = data_dir / ALIGNED_FILE
    done = read_aligned(data_dir)
    if out.exists():  # drop a line a killed run cut short, so appending starts on a clean line
        out.write_text("".join(json.dumps({"id": k, "phonemes": v}) + "\n" for k, v in done.items()))
    audio = aligner.cfg.audio

    def columns(record: dict) -> torch.Tensor:
        wave = torch.from_numpy(load_audio(data_dir / record["path"], audio.sample_rate))
        return audio_patches(wave, audio).reshape(-1, audio.n_mels)  # (C, n_mels)

    untimed = [r for r in load_manifest(data_dir) if not r.get("phonemes")]
    todo = [r for r in untimed if r["id"] not in done]
    if not todo:
        return out
    # the same prior for a whole corpus, however many runs it takes: from its first untimed utterances
    log_prior = class_prior([aligner.log_probs(columns(r)).cpu().numpy() for r in untimed[:PRIOR_UTTERANCES]])
    with out.open("a") as log:
        for record in tqdm(todo, desc="aligning phonemes", unit="utt"):
            mel = columns(record)
            names = sentence_phonemes(record["text"], accent)
            ids = torch.tensor([phoneme_id(n) for n in names])
            if len(ids) > len(mel):
                continue  # more phonemes than columns: not this text's audio
            durations = aligner.align(mel, ids, log_prior).numpy()
            rows = timed_rows(names, durations, record["duration"], audio)
            log.write(json.dumps({"id": record["id"], "phonemes": rows}) + "\n")
            log.flush()
    return out
