"""Speaking text aloud, 80 ms at a time through the vocoder: the acoustic model, or the speech model in TTS mode.

``AcousticSpeaker`` (what ``michi-lite say`` runs by default) reads each
sentence's phonemes and makes its patches in one pass of the acoustic model
(``michi_lite.acoustic``). ``Speaker`` runs the first speech model, below.
Both stream their patches through the vocoder the same way
(``StreamedSpeech``).

In the speech model's TTS mode the text stream is forced: the words are given, and the model
only decides *when* each token comes. On every frame the text head is asked
whether a new token starts here, by sampling PAD or not-PAD from it; if not
PAD, the next token of the text is fed, so the model paces
the words and the text cannot drift from what was asked. When the text is
used up, the model's next "new token" is taken as the end of speech
(``<|im_end|>``), and the audio stream, which runs ``text_lead_frames``
behind, is spoken out to that point.

The phonemes the speaking head reads follow from the tokens fed, through
the same ``VoicedChunks`` training lays them out with.

Each frame then costs one backbone step (KV-cached, ``FrameDecoder``), one
speaking-head sample of a few Euler steps and one vocoder chunk, and its
80 ms of audio can be played at once.

Long text is split into sentences, each spoken with a fresh KV cache after
the same voice, so memory stays flat however long the text is; the vocoder
streams on across the joins.
"""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .audio import mel_from_patches
from .frame_decoder import FrameCache
from .vocoder import CausalVocoder

if TYPE_CHECKING:  # the speech model's imports (transformers, peft) cost seconds that speaking acoustically need not
    from .acoustic import AcousticModel
    from .model import SpeechModel

logger = logging.getLogger(__name__)

MAX_SEGMENT_WORDS = 40  # a sentence longer than this is cut at a comma, or else between words
MAX_PAUSE_FRAMES = 25  # a model that waits 2 s for the next word is moved on to it


def split_text(text: str, max_words: int = MAX_SEGMENT_WORDS) -> list[str]:
    """Sentences of at most ``max_words`` words: the segments ``say`` speaks one after another."""
    if not text or not text.strip():
        raise ValueError("nothing to say: the text is empty")
    segments = []
    for sentence in re.split(r"(?<=[.!?;:])\s+", text.strip()):
        words = sentence.split()
        while len(words) > max_words:
            commas = [i + 1 for i, w in enumerate(words[:max_words]) if w.endswith(",")]
            cut = commas[-1] if commas and commas[-1] > max_words // 3 else max_words
            segments.append(" ".join(words[:cut]))
            words = words[cut:]
        if words:
            segments.append(" ".join(words))
    return segments


@dataclass(frozen=True)
class SpokenFrame:
    """One 80 ms frame of speech as the model made it."""

    index: int  # the frame of the audio stream, from the start of its segment
    token_id: int  # the text stream's token for this audio frame: a word starting here, PAD, or the end
    patch: torch.Tensor  # (patch_dim,) normalised log-mel


class StreamedSpeech(ABC):
    """What every speaker shares: its ``patches`` of a text, streamed through its vocoder 80 ms at a time.

    A subclass sets ``model`` (with ``cfg.audio``) and ``vocoder``, and
    yields the text's patches (patch_dim,) from ``patches``.
    """

    model: SpeechModel | AcousticModel
    vocoder: CausalVocoder

    @abstractmethod
    def patches(self, text: str) -> Iterator[torch.Tensor]:
        """The whole text's audio patches (patch_dim,), one per 80 ms frame."""

    @torch.inference_mode()
    def stream(self, text: str) -> Iterator[np.ndarray]:
        """The text as audio, 80 ms of float32 samples at a time (the vocoder's look-ahead comes last)."""
        vocoder = self.vocoder.stream()
        audio = self.model.cfg.audio
        for patch in self.patches(text):
            mel = mel_from_patches(patch[None].to(next(self.vocoder.parameters()).dtype), audio)  # (n_mels, 8)
            yield vocoder.push(mel).float().cpu().numpy()
        yield vocoder.flush().float().cpu().numpy()

    def say(self, text: str) -> np.ndarray:
        """The whole waveform at once, lag removed: ``stream`` minus the vocoder's leading silence."""
        wave = np.concatenate(list(self.stream(text)))
        return wave[self.vocoder.cfg.lookahead_samples:]


class Speaker(StreamedSpeech):
    """A speech model, a vocoder and one voice, ready to speak text frame by frame.

    ``model`` has its adapters merged (``load_speaker`` merges them);
    ``voice_patches`` are a voice prompt's speech patches (``michi_lite.audio.voice_prompt``).
    """

    def __init__(self, model: SpeechModel, vocoder: CausalVocoder, tokenizer, voice_patches: torch.Tensor,
                 steps: int = 4, seed: int = 0) -> None:
        if steps < 1:
            raise ValueError(f"steps must be at least 1, not {steps}")
        self.model, self.vocoder, self.tokenizer, self.steps = model.eval(), vocoder.eval(), tokenizer, steps
        self.device = model.token_embedding.weight.device
        self.decoder = model.frame_decoder()
        self.generator = torch.Generator(self.device).manual_seed(seed)
        with torch.inference_mode():
            self.voice = model.prompt_voice(voice_patches)  # (1, hidden)

    def _step(self, inputs: torch.Tensor, cache: FrameCache) -> torch.Tensor:
        """One backbone position (1, hidden) -> its hidden state (1, hidden), extending the cache."""
        return self.decoder(inputs[:, None], cache)[:, -1]

    @torch.inference_mode()
    def segment_frames(self, text: str) -> Iterator[SpokenFrame]:
        """One segment's speech, frame by frame, as the model makes it."""
        from .model import VoicedChunks, tokens_and_chunks

        model = self.model
        queue = tokens_and_chunks(text, self.tokenizer, model.cfg.max_phonemes)  # (token, phonemes or None)
        lead = model.cfg.text_lead_frames
        voiced = VoicedChunks(model.cfg)
        cache = FrameCache()
        hidden = self._step(self.voice, cache)
        tokens_fed: list[int] = []
        frame, end_frame, quiet = 0, None, 0
        while True:
            token, chunk = model.pad_id, None
            if end_frame is None:
                # sampled, as a free-running text stream would be: a token with the probability of not-PAD
                no_token = model.text_logits(hidden).softmax(-1)[0, model.pad_id]
                wants_token = torch.rand((), generator=self.generator, device=self.device) > no_token
                if wants_token or quiet >= MAX_PAUSE_FRAMES:
                    token, chunk = queue.pop(0) if queue else (model.end_id, None)
                    end_frame = frame + lead if token == model.end_id else None
                quiet = 0 if token != model.pad_id else quiet + 1
            tokens_fed.append(token)
            tokens = torch.tensor([token], device=self.device)
            phonemes, since = (torch.tensor([x], device=self.device) for x in voiced.push(chunk))
            cond = model.head_condition(hidden, tokens, self.voice, phonemes, since)
            patch = model.speaking_head.sample(cond, self.steps, generator=self.generator)  # (1, patch_dim)
            if frame >= lead:  # the audio stream's first frames are the lead's silence
                yield SpokenFrame(frame - lead, tokens_fed[frame - lead], patch[0])
            if end_frame is not None and frame >= end_frame:
                return
            hidden = self._step(model.frame_inputs(tokens, patch), cache)
            frame += 1

    def frames(self, text: str) -> Iterator[SpokenFrame]:
        """The whole text's speech, segment after segment."""
        for segment in split_text(text):
            yield from self.segment_frames(segment)

    def patches(self, text: str) -> Iterator[torch.Tensor]:
        """The whole text's audio patches (patch_dim,), one per 80 ms frame."""
        for frame in self.frames(text):
            yield frame.patch


class AcousticSpeaker(StreamedSpeech):
    """The acoustic model (``michi_lite.acoustic``), a vocoder and one voice, ready to speak text.

    Each sentence (``split_text``) is read as espeak-ng's phonemes; the model
    lays them out with its own durations and makes the sentence's patches in
    one pass, which the vocoder then streams 80 ms at a time, so the first
    audio waits for one sentence's pass, not for the whole text.
    ``voice_patches`` are a voice prompt's speech patches.
    """

    def __init__(self, model: AcousticModel, vocoder: CausalVocoder, voice_patches: torch.Tensor, steps: int = 4,
                 seed: int = 0) -> None:
        if steps < 0:
            raise ValueError(f"steps must be 0 (the regressed mel) or more, not {steps}")
        self.model, self.vocoder, self.steps = model.eval(), vocoder.eval(), steps
        self.device = next(model.parameters()).device
        self.generator = torch.Generator(self.device).manual_seed(seed)
        audio = model.cfg.audio
        with torch.inference_mode():
            self.voice = model.voice(voice_patches.reshape(1, -1, audio.n_mels).to(self.device))  # (1, width)

    def patches(self, text: str) -> Iterator[torch.Tensor]:
        """The whole text's audio patches (patch_dim,), one per 80 ms frame."""
        from .acoustic import text_phoneme_ids

        for segment in split_text(text):
            patches, _ = self.model.speak(text_phoneme_ids(segment).to(self.device), self.voice, self.steps,
                                          self.generator)
            yield from patches
