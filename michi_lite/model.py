"""The speech model: the SmolLM2 backbone with its own text and audio streams, a text head and the speaking head.

One backbone position per 80 ms frame. Position 0 holds the voice: a vector
pooled from a few seconds of the speaker's audio. Every later position sums
the embeddings of what the model said on the frame before, its text token and
its audio patch; the hidden state there predicts this frame's text token
(the text head) and, given that token, this frame's audio patch (the
speaking head, a rectified flow):

    position   0          1                         2               ...
    input      voice      E(y[0]) + A(a[0])         E(y[1]) + A(a[1])
    predicts   y[0], a[0] y[1], a[1]                y[2], a[2]

The text stream ``y`` is the inner monologue: each token on the frame where
its word starts (``data.frames``), PAD elsewhere, and ``<|im_end|>`` on the
frame where speech ends. The audio stream ``a`` runs ``text_lead_frames``
behind it, so a word is chosen before it is voiced; its first frames are
silence.

The user's streams join the same positions: what the listening head heard
on frame p (its embedding and its text token or PAD, ``UserStreams``) is
summed into position p + 1 beside what the model said on frame p, through
one learnt projection of both (``user_in``: the user's token must not read
as the model's own). So position p + 1 holds all of frame p, both sides of
the conversation, and predicts the model's frame p + 1. Which streams are
filled says what the model is doing: its own alone, speaking (TTS); the
user's with the model's text, listening and answering (the joint stage).

A token says which word comes, not how it sounds. So the speaking head also
reads the phonemes of the chunk of text being voiced (``data.phonemes``),
which follow from the text stream alone: the latest chunk whose first token
came ``text_lead_frames`` ago or earlier, and the frames since
(``VoicedChunks``). A small attention (``PhonemeReader``), asked by the
hidden state and those frames, adds what it reads to the hidden state the
head is conditioned on.

The backbone is SmolLM2 with LoRA adapters (``peft``) on every linear layer
of every block, and its token embeddings stay frozen: the trained weights are
the adapters, the voice encoder, the audio projection, a text-head bias, the
phoneme reader and the speaking head, about 17M parameters in ``lite``, and
the user's projection (0.66M more), which only the joint stage teaches. At
inference the adapters are merged into the backbone, which then runs as a
plain Llama. A later stage may instead stack an adapter of its own on the
merged weights (``stack_adapters``): it trains that, the user's projection
and the text-head bias alone, and its file holds only those, naming the
speaker file it stacks on (``load_speaker`` finds that first).

So that the backbone stays a language model, every batch also holds its
sentences as plain text (a text-only sample, no audio streams), on which the
adapted backbone is pulled towards what the pretrained one predicts there
(``text_keeping_loss``): a distillation, not a fit to the corpus's sentences.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import warnings
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn
from transformers import Cache

from .audio import SILENCE_MEL
from .config import FRAME_SECONDS, AudioConfig, BackboneConfig, get_config
from .data.frames import PAD_TOKEN, frame_tokens, token_chunks
from .data.phonemes import N_PHONEME_IDS, PAD_PHONEME, chunk_phoneme_ids
from .data.words import Word
from .flow import SpeakingHead
from .frame_decoder import FrameDecoder
from .listen import int8_linears
from .weights import (REFERENCE_SPEAKER, file_digest, fitting_weights, read_weights, saved_config, weights_file,
                      write_weights)

logger = logging.getLogger(__name__)

END_TOKEN = "<|im_end|>"  # SmolLM2's end of a turn: here, the frame where speech ends
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# trained beside the adapters and text_bias
NEW_MODULES = ("voice", "audio_in", "user_in", "phoneme_reader", "speaking_head")
STACKED_MODULES = ("user_in",)  # what a stacked stage trains beside its adapters and text_bias (``stack_adapters``)


@dataclass(frozen=True)
class SpeechModelConfig:
    audio: AudioConfig
    hub_id: str | None  # None: a random small Llama of the shape below (the ``tiny`` preset)
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    text_lead_frames: int = 2  # the text stream runs this many 80 ms frames ahead of the audio
    lora_rank: int = 16
    lora_alpha: int = 32
    head_width: int = 512
    head_depth: int = 3
    voice_width: int = 256
    phoneme_width: int = 128
    max_phonemes: int = 24  # of the chunk being voiced; a longer one (a long number) is cut
    max_voiced_frames: int = 30  # frames since the chunk began are counted up to this

    @property
    def patch_dim(self) -> int:
        return self.audio.mels_per_frame * self.audio.n_mels

    def to_dict(self) -> dict:
        return asdict(self)


def speech_model_config(preset: str) -> SpeechModelConfig:
    cfg = get_config(preset)
    b = cfg.backbone
    shape = dict(audio=cfg.audio, hub_id=b.hub_id, hidden_size=b.hidden_size, num_layers=b.num_layers,
                 num_heads=b.num_heads, intermediate_size=b.intermediate_size)
    if b.hub_id is None:
        return SpeechModelConfig(**shape, lora_rank=4, lora_alpha=8, head_width=64, head_depth=2, voice_width=32,
                                 phoneme_width=16, max_phonemes=8, max_voiced_frames=10)
    return SpeechModelConfig(**shape)


def build_backbone(cfg: SpeechModelConfig, vocab_size: int, pretrained: bool = True) -> nn.Module:
    """SmolLM2's decoder (no LM head: the text head reuses its token embeddings), or a random small Llama."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    if cfg.hub_id is None:
        torch.manual_seed(0)
        return random_llama(BackboneConfig(None, cfg.hidden_size, cfg.num_layers, cfg.num_heads,
                                           cfg.intermediate_size), vocab_size)
    from .backbone import smollm_weights_dir

    folder = smollm_weights_dir(cfg.hub_id)
    if pretrained:
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).model
    from transformers import AutoConfig

    return LlamaForCausalLM(AutoConfig.from_pretrained(folder)).model


def random_llama(shape: BackboneConfig, vocab_size: int) -> nn.Module:
    """A randomly initialised Llama decoder of ``shape``: the ``tiny`` backbone, or a preset's backbone where
    only its cost matters (``bench joint``), with nothing to download."""
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaConfig(vocab_size=vocab_size, hidden_size=shape.hidden_size, num_hidden_layers=shape.num_layers,
                        num_attention_heads=shape.num_heads,
                        num_key_value_heads=shape.num_kv_heads or shape.num_heads,
                        intermediate_size=shape.intermediate_size, max_position_embeddings=8192,
                        tie_word_embeddings=True)
    return LlamaForCausalLM(llama).model


class VoiceEncoder(nn.Module):
    """A voice prompt's mel patches (batch, frames, patch_dim) -> one vector (batch, hidden): mean and std pooled."""

    def __init__(self, patch_dim: int, width: int, hidden_size: int) -> None:
        super().__init__()
        self.frame = nn.Sequential(nn.Linear(patch_dim, width), nn.GELU(), nn.Linear(width, width))
        self.out = nn.Linear(2 * width, hidden_size)

    def forward(self, patches: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.frame(patches)  # (batch, frames, width)
        weights = mask[..., None].to(x.dtype) / mask.sum(1).clamp(min=1)[:, None, None]
        mean = (x * weights).sum(1)
        std = (((x - mean[:, None]) ** 2 * weights).sum(1) + 1e-5).sqrt()
        return self.out(torch.cat([mean, std], dim=-1))


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., n, width) -> (..., heads, n, width / heads)."""
    return x.unflatten(-1, (heads, -1)).transpose(-2, -3)


class PhonemeReader(nn.Module):
    """The chunk being voiced -> a vector added to the hidden state the speaking head reads.

    The chunk's phonemes (``data.phonemes``) are keys, each with its place in
    the chunk; the query is the hidden state plus the number of frames since
    the chunk began, so the reader can look up the phoneme due now. A learned
    "nothing" key is always there to attend to (before the first word). The
    output layer starts at zero: a model trained without phonemes is unchanged
    until the reader learns.
    """

    def __init__(self, cfg: SpeechModelConfig, heads: int = 4) -> None:
        super().__init__()
        width, self.heads = cfg.phoneme_width, heads
        self.phoneme = nn.Embedding(N_PHONEME_IDS, width, padding_idx=PAD_PHONEME)
        self.place = nn.Parameter(torch.randn(cfg.max_phonemes + 1, width) * 0.02)  # 0 is the "nothing" key
        self.nothing = nn.Parameter(torch.randn(width) * 0.02)
        self.since = nn.Embedding(cfg.max_voiced_frames + 1, width)
        self.query = nn.Linear(cfg.hidden_size, width)
        self.out = nn.Sequential(nn.Linear(2 * width, width), nn.GELU(), nn.Linear(width, cfg.hidden_size))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, hidden: torch.Tensor, phonemes: torch.Tensor, since: torch.Tensor) -> torch.Tensor:
        """(..., hidden), phoneme ids (..., max_phonemes) and frames since (...,) -> (..., hidden)."""
        keys = torch.cat([self.nothing.expand(*phonemes.shape[:-1], 1, -1), self.phoneme(phonemes)], dim=-2)
        keys = keys + self.place  # (..., 1 + max_phonemes, width)
        since = self.since(since)
        query = self.query(hidden) + since
        missing = F.pad(phonemes == PAD_PHONEME, (1, 0), value=False)  # the "nothing" key is never masked
        query, keys = _split_heads(query[..., None, :], self.heads), _split_heads(keys, self.heads)
        read = F.scaled_dot_product_attention(query, keys, keys, attn_mask=~missing[..., None, None, :])
        read = read.transpose(-2, -3).flatten(-2)[..., 0, :]  # (..., width)
        return self.out(torch.cat([read, since], dim=-1))


def text_frame_kinds(targets: torch.Tensor, pad_id: int, end_id: int) -> dict[str, torch.Tensor]:
    """Which text-stream targets are a word's token, PAD (nothing new said) or ``<|im_end|>`` (speech stops
    here): one boolean mask per kind, the shape of ``targets``."""
    pad, end = targets == pad_id, targets == end_id
    return {"word": ~(pad | end), "pad": pad, "end": end}


class SpeechModel(nn.Module):
    """Backbone + stream embeddings + text head + speaking head (see the module docstring for the layout)."""

    def __init__(self, cfg: SpeechModelConfig, backbone: nn.Module, pad_id: int, end_id: int) -> None:
        super().__init__()
        self.cfg, self.pad_id, self.end_id = cfg, pad_id, end_id
        lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules=LORA_TARGETS)
        for p in backbone.parameters():
            p.requires_grad_(False)
        with warnings.catch_warnings():  # peft asks transformers a question it deprecated: nothing to act on here
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            self.backbone = get_peft_model(backbone, lora)
        self.voice = VoiceEncoder(cfg.patch_dim, cfg.voice_width, cfg.hidden_size)
        self.audio_in = nn.Sequential(nn.Linear(cfg.patch_dim, cfg.hidden_size), nn.GELU(),
                                      nn.Linear(cfg.hidden_size, cfg.hidden_size))
        # the user's embedding and token embedding -> the backbone; zero at first, so a model trained without a
        # user (and a speaker file from before the user streams) hears none until joint training teaches it
        self.user_in = nn.Linear(2 * cfg.hidden_size, cfg.hidden_size)
        nn.init.zeros_(self.user_in.weight)
        nn.init.zeros_(self.user_in.bias)
        self.text_bias = nn.Parameter(torch.zeros(backbone.embed_tokens.num_embeddings))
        self.phoneme_reader = PhonemeReader(cfg)
        self.speaking_head = SpeakingHead(cfg.patch_dim, 3 * cfg.hidden_size, cfg.head_width, cfg.head_depth)
        self.merged = False
        self.stacked: dict | None = None  # set by ``stack_adapters``: the adapters' shape and the file beneath
        self._pretrained: dict[str, nn.Module] = {}  # ``pretrained``'s copy, not among the weights
        self.scorer: nn.Module | None = None
        self._frame_decoder: FrameDecoder | None = None

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.decoder.embed_tokens

    @property
    def decoder(self) -> nn.Module:
        """The Llama decoder itself, with the adapters in place or merged."""
        return self.backbone if self.merged else self.backbone.base_model.model

    @property
    def trained_modules(self) -> tuple[str, ...]:
        """The new modules training changes: all of them, or a stacked stage's (``STACKED_MODULES``)."""
        return STACKED_MODULES if self.stacked else NEW_MODULES

    def trained_state(self) -> dict[str, torch.Tensor]:
        """What training changes: the adapters and the new modules trained (not the frozen SmolLM2 weights)."""
        state = {f"lora.{k}": v for k, v in get_peft_model_state_dict(self.backbone).items()}
        for name in self.trained_modules:
            state.update({f"{name}.{k}": v for k, v in getattr(self, name).state_dict().items()})
        state["text_bias"] = self.text_bias.data
        return state

    def load_trained_state(self, state: dict[str, torch.Tensor], fresh: tuple[str, ...] = ()) -> None:
        """Load ``trained_state``'s tensors; the modules named in ``fresh`` may be missing and keep their start.

        Every adapter's weights must be there: peft would leave a missing one
        as it starts, silently. Adapter weights missing or fitting no layer
        raise ValueError.
        """
        lora = {k.removeprefix("lora."): v for k, v in state.items() if k.startswith("lora.")}
        missing = sorted(set(get_peft_model_state_dict(self.backbone)) - set(lora))
        if missing:
            raise ValueError(f"adapter weights missing: {missing[:3]}")
        result = set_peft_model_state_dict(self.backbone, lora)
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"adapter weights that fit no layer: {result.unexpected_keys[:3]}")
        for name in self.trained_modules:
            prefix = f"{name}."
            weights = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            if weights or name not in fresh:
                getattr(self, name).load_state_dict(weights)
        self.text_bias.data.copy_(state["text_bias"])

    def stack_adapters(self, rank: int, alpha: int, base: str | os.PathLike,
                       base_sha256: str | None = None) -> SpeechModel:
        """Fold the adapters into the backbone and put fresh ones of ``rank`` on top (zero at first: the model is
        unchanged); from here only they, the user's projection and the text-head bias train.

        ``base`` is the speaker file the model was loaded from: a stacked
        file (``save_speaker``) names it and its digest (``base_sha256``,
        computed here unless given), to be loaded first.
        A stage that teaches little (the joint stage's listening and
        answering) so keeps a file of a few MB instead of a whole speaker's.
        """
        if self.merged or self.stacked:
            raise ValueError("stack adapters on a loaded, unmerged speech model, once")
        base = weights_file(base, "speaker")
        merged = self.backbone.merge_and_unload()
        for p in self.parameters():
            p.requires_grad_(False)
        lora = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=LORA_TARGETS)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            self.backbone = get_peft_model(merged, lora)
        for name in STACKED_MODULES:
            getattr(self, name).requires_grad_(True)
        self.text_bias.requires_grad_(True)
        self.stacked = {"rank": rank, "alpha": alpha, "base": str(base),
                        "base_sha256": base_sha256 or file_digest(base)}
        return self

    @contextmanager
    def pretrained(self) -> Iterator[nn.Module]:
        """SmolLM2's decoder as pretrained, for the ``with`` block: this one with its adapters switched off, or
        where they cannot be (merged, or stacked on others) a frozen copy loaded afresh on first use (kept
        outside the module's weights)."""
        if not (self.merged or self.stacked):
            with self.backbone.disable_adapter():
                yield self.decoder
            return
        if "decoder" not in self._pretrained:
            pretrained = build_backbone(self.cfg, self.token_embedding.num_embeddings).requires_grad_(False)
            self._pretrained["decoder"] = pretrained.to(self.text_bias.device).eval()
        yield self._pretrained["decoder"]

    def checkpoint_activations(self) -> SpeechModel:
        """Keep only each backbone layer's input for backward and recompute the rest there (about a third more
        compute for a fraction of the memory; ``memory.py``)."""
        self.decoder.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        self.decoder.config.use_cache = False  # training keeps no cache, and checkpointing cannot
        return self

    def merge_adapters(self) -> SpeechModel:
        """Fold LoRA into the backbone's weights: inference then runs a plain Llama, as fast as the original."""
        if not self.merged:
            self.backbone = self.backbone.merge_and_unload()
            self.merged = True
        return self

    def frame_decoder(self) -> FrameDecoder:
        """The merged backbone as speaking runs it, one frame a call with its own cache; made on first use."""
        if self._frame_decoder is None:
            if not self.merged:
                raise ValueError("merge the adapters first (load_speaker merges them)")
            self._frame_decoder = FrameDecoder(self.decoder)
        return self._frame_decoder

    # --- the streams ------------------------------------------------------------------------

    def decode(self, inputs: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        """Backbone positions (batch, n, hidden) -> hidden states (batch, n, hidden), extending ``cache``."""
        return self.decoder(inputs_embeds=inputs, cache=cache, use_cache=cache is not None).last_hidden_state

    def text_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., hidden) -> (..., vocab): scores against the frozen token embeddings, plus a learned bias."""
        if self.scorer is not None:  # the int8 copy ``quantized_for_cpu`` makes
            return self.scorer(hidden)
        return hidden @ self.token_embedding.weight.T + self.text_bias

    def frame_inputs(self, tokens: torch.Tensor, patches: torch.Tensor,
                     user: UserStreams | None = None) -> torch.Tensor:
        """What was said on frames: the model's (batch, frames) tokens and patches, and what it heard of the
        user on the same frames if ``user`` is given -> backbone positions (batch, frames, hidden)."""
        inputs = self.token_embedding(tokens) + self.audio_in(patches)
        if user is None:
            return inputs
        if user.tokens.shape != tokens.shape:
            raise ValueError(f"the user's streams cover {tuple(user.tokens.shape)} frames, the model's "
                             f"{tuple(tokens.shape)}: they must be the same frames")
        if user.embeddings.shape != inputs.shape:
            raise ValueError(f"the user's embeddings are {tuple(user.embeddings.shape)}, the backbone's positions "
                             f"{tuple(inputs.shape)}: a listener for another backbone?")
        heard = torch.cat([user.embeddings.to(inputs.dtype), self.token_embedding(user.tokens)], dim=-1)
        return inputs + self.user_in(heard)

    def head_condition(self, hidden: torch.Tensor, tokens: torch.Tensor, voice: torch.Tensor,
                       phonemes: torch.Tensor, since: torch.Tensor) -> torch.Tensor:
        """The speaking head's condition: the hidden state, this frame's text token and the voice vector.

        The phoneme reader first adds what it reads of the chunk being voiced
        to the hidden state. ``hidden`` (..., hidden), ``tokens`` (...),
        ``voice`` broadcastable to ``hidden``; ``phonemes`` (..., max_phonemes)
        and ``since`` (...) as ``VoicedChunks`` gives them.
        """
        voice = voice.expand(*hidden.shape[:-1], voice.shape[-1])
        hidden = hidden + self.phoneme_reader(hidden, phonemes, since)
        return torch.cat([hidden, self.token_embedding(tokens), voice], dim=-1)

    def prompt_voice(self, patches: torch.Tensor) -> torch.Tensor:
        """One voice prompt's speech patches (frames, patch_dim) -> its voice vector (1, hidden)."""
        patches = patches.to(self.token_embedding.weight.device)[None]
        return self.voice(patches, torch.ones(patches.shape[:2], dtype=torch.bool, device=patches.device))

    def teacher_forced(self, streams: SpeakerStreams | SpeakerBatch,
                       voice: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole streams given their real past -> hidden states (batch, frames, hidden) and head conditions.

        ``streams`` is a batch, or one utterance's streams (then batch 1);
        ``voice`` (batch, hidden). A ``prefix`` of text is read first, as
        token embeddings, then the voice and the frames (a batch's prefixes
        left-padded, so every row's real positions are contiguous and its
        frames start at the same index).
        """
        one = isinstance(streams, SpeakerStreams)
        tokens, patches, phonemes, since = (x[None] if one else x for x in (
            streams.tokens, streams.patches, streams.phonemes, streams.since))
        mask = None if one else streams.mask
        user = streams.user
        if user is not None:  # frame p is heard at position p + 1, as the model's own: the last frame at none
            user = UserStreams(user.embeddings[None], user.tokens[None]) if one else user
            user = UserStreams(user.embeddings[:, :-1], user.tokens[:, :-1])
        prefix = streams.prefix
        prefix = None if prefix is None else prefix[None] if one else prefix
        read = [] if prefix is None else [self.token_embedding(prefix)]
        inputs = torch.cat([*read, voice[:, None], self.frame_inputs(tokens[:, :-1], patches[:, :-1], user)], dim=1)
        attention = None
        if mask is not None:
            attention = torch.cat([*([] if prefix is None else [streams.prefix_mask]), mask], dim=1).long()
        hidden = self.decoder(inputs_embeds=inputs, attention_mask=attention).last_hidden_state
        hidden = hidden[:, 0 if prefix is None else prefix.shape[1]:]  # from the voice's position: frame 0's
        return hidden, self.head_condition(hidden, tokens, voice[:, None], phonemes, since)

    def text_keeping_loss(self, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """How far the adapted backbone's next-token guesses on plain text are from pretrained SmolLM2's.

        ``text`` (batch, n) token ids, right-padded; ``mask`` (batch, n) True on
        real tokens. The mean over real tokens of KL(pretrained || adapted),
        both with the tied token embeddings as the LM head (SmolLM2's own,
        without the text stream's bias). Zero while the adapters are the
        identity; the pretrained side is ``pretrained``'s.
        """
        if self.merged:
            raise ValueError("the adapters are merged: there is no pretrained backbone left to keep to")
        weight = self.token_embedding.weight
        with torch.no_grad(), self.pretrained() as decoder:
            pretrained = (decoder(input_ids=text).last_hidden_state[mask] @ weight.T).log_softmax(-1)
        adapted = (self.decoder(input_ids=text).last_hidden_state[mask] @ weight.T).log_softmax(-1)
        return F.kl_div(adapted, pretrained, log_target=True, reduction="batchmean")

    def forward(self, batch: SpeakerBatch, flow_samples: int = 2) -> dict[str, torch.Tensor]:
        """Teacher-forced training losses of a batch: text cross-entropy, the flow-matching loss, text keeping.

        The text cross-entropy is also given on each kind of frame alone
        (``text_frame_kinds``: word, pad, end), 0 for a kind the batch has none of.
        """
        voice = self.voice(batch.prompt, batch.prompt_mask)  # (batch, hidden)
        hidden, cond = self.teacher_forced(batch, voice)
        logits = self.text_logits(hidden)
        targets = batch.tokens[batch.mask]
        per_frame = F.cross_entropy(logits[batch.mask], targets, reduction="none")
        text_loss = per_frame.mean()
        kinds = text_frame_kinds(targets, self.pad_id, self.end_id)
        cond = cond[batch.mask]  # (n, 3 * hidden)
        targets = batch.patches[batch.mask]  # (n, patch_dim)
        # the head is small next to the backbone: several noise levels per frame cost little and steady the loss
        flow_loss = self.speaking_head.loss(targets.repeat(flow_samples, 1), cond.repeat(flow_samples, 1))
        with torch.no_grad():
            predicted = logits[batch.mask].argmax(-1)
            words = batch.tokens[batch.mask] != self.pad_id
            timing = ((predicted != self.pad_id) == words).float().mean()
        keep_loss = self.text_keeping_loss(batch.text, batch.text_mask)
        by_kind = {f"{kind}_loss": per_frame[where].sum() / where.sum().clamp(min=1) for kind, where in kinds.items()}
        return {"text_loss": text_loss, **by_kind, "flow_loss": flow_loss, "keep_loss": keep_loss,
                "timing_accuracy": timing}


# --- the training data ---------------------------------------------------------------------


@dataclass
class UserStreams:
    """What the listening head heard of the user on each frame: its embedding and its text token or PAD.

    Batched (batch, frames, ...) or one conversation's (frames, ...), as the
    model's own streams beside them.
    """

    embeddings: torch.Tensor  # (batch, frames, hidden) in the backbone's token-embedding space (``Listener``)
    tokens: torch.Tensor  # (batch, frames)

    def to(self, device: torch.device) -> UserStreams:
        return UserStreams(self.embeddings.to(device), self.tokens.to(device))


@dataclass
class SpeakerBatch:
    tokens: torch.Tensor  # (batch, frames) the text stream
    patches: torch.Tensor  # (batch, frames, patch_dim) the audio stream, text_lead_frames behind
    phonemes: torch.Tensor  # (batch, frames, max_phonemes) the chunk each audio frame voices
    since: torch.Tensor  # (batch, frames)
    mask: torch.Tensor  # (batch, frames) True on real frames
    prompt: torch.Tensor  # (batch, prompt_frames, patch_dim) another utterance of the same voice
    prompt_mask: torch.Tensor  # (batch, prompt_frames)
    text: torch.Tensor  # (batch, n) each utterance's words as plain text, token ids, right-padded
    text_mask: torch.Tensor  # (batch, n) True on real tokens
    user: UserStreams | None = None  # what the model heard on the same frames; None: no user (TTS)
    prefix: torch.Tensor | None = None  # (batch, n) text read before the voice (a rag prefix), left-padded
    prefix_mask: torch.Tensor | None = None  # (batch, n) True on real tokens

    def to(self, device: torch.device) -> SpeakerBatch:
        return SpeakerBatch(**{k: None if v is None else v.to(device) for k, v in vars(self).items()})


class VoicedChunks:
    """Which chunk of the text each audio frame voices: its phoneme ids and the frames since it began.

    Fed one backbone position at a time with the phoneme ids of the chunk
    whose first token the text stream puts there (None if none starts), it
    answers for the audio stream at that position, ``text_lead_frames``
    behind: the latest chunk started at or before that many positions ago.
    Before the first chunk the ids are all PAD and the count is at its cap.
    Training (``speaker_streams``) and ``say`` both lay out the phonemes
    through it; ``tokens_and_chunks`` says where chunks start.
    """

    def __init__(self, cfg: SpeechModelConfig) -> None:
        self.cfg = cfg
        self.recent: deque[list[int] | None] = deque(maxlen=cfg.text_lead_frames + 1)
        self.current: list[int] = [PAD_PHONEME] * cfg.max_phonemes
        self.since = cfg.max_voiced_frames

    def push(self, chunk: list[int] | None) -> tuple[list[int], int]:
        """The next position's chunk start (or None) -> (phoneme ids, frames since) for its audio frame."""
        self.recent.append(chunk)
        voiced = self.recent[0] if len(self.recent) == self.recent.maxlen else None
        if voiced is not None:
            ids = voiced[:self.cfg.max_phonemes]
            self.current, self.since = ids + [PAD_PHONEME] * (self.cfg.max_phonemes - len(ids)), 0
        else:
            self.since = min(self.since + 1, self.cfg.max_voiced_frames)
        return self.current, self.since


def tokens_and_chunks(text: str, tokenizer, max_phonemes: int,
                      known: dict[str, list[str]] | None = None) -> list[tuple[int, list[int] | None]]:
    """Each token of ``text``, with its chunk's phoneme ids if it is the chunk's first token (else None).

    ``known``: phonemes computed before, by chunk (``chunk_phoneme_ids``).
    """
    token_ids, chunk_of = token_chunks(text, tokenizer)
    chunks = text.split() or [""]  # whitespace alone still has tokens, and no sound
    return [(token, chunk_phoneme_ids(chunks[c], max_phonemes, known) if i == 0 or c != chunk_of[i - 1] else None)
            for i, (token, c) in enumerate(zip(token_ids, chunk_of))]


@dataclass
class SpeakerStreams:
    """One utterance's streams as the model sees them, one row per backbone position after the voice."""

    tokens: torch.Tensor  # (frames,) the text stream
    patches: torch.Tensor  # (frames, patch_dim) the audio stream, ``text_lead_frames`` behind
    phonemes: torch.Tensor  # (frames, max_phonemes) phoneme ids of the chunk each audio frame voices
    since: torch.Tensor  # (frames,) frames since that chunk began
    text: torch.Tensor  # (n,) the words as plain text (token ids): the text-only sample
    user: UserStreams | None = None  # (frames, ...) what the model heard on the same frames; None: no user
    prefix: torch.Tensor | None = None  # (n,) text read before the voice and the first frame (a rag prefix)

    def to(self, device: torch.device) -> SpeakerStreams:
        return SpeakerStreams(**{k: None if v is None else v.to(device) for k, v in vars(self).items()})


def speaker_streams(text: str, words: list[Word], patches: torch.Tensor, tokenizer, cfg: SpeechModelConfig,
                    known_phonemes: dict[str, list[str]] | None = None) -> SpeakerStreams:
    """One utterance's streams, aligned: the text, its audio and the phonemes being voiced.

    Tokens sit on their word's start frame, ``<|im_end|>`` on the frame of the
    last word's end; the audio is delayed by ``text_lead_frames`` (silence before).
    """
    pad, end = tokenizer.convert_tokens_to_ids(PAD_TOKEN), tokenizer.convert_tokens_to_ids(END_TOKEN)
    lead = cfg.text_lead_frames
    tokens = frame_tokens(text, words, tokenizer).tokens
    frame_ms = round(FRAME_SECONDS * 1000)
    end_frame = max(round(words[-1].end * 1000) // frame_ms, len(tokens))
    tokens = tokens + [pad] * (end_frame - len(tokens)) + [end]
    n_audio = max(len(patches), len(tokens))
    silence = torch.full((1, patches.shape[-1]), SILENCE_MEL)
    audio = torch.cat([silence.expand(lead, -1), patches, silence.expand(n_audio - len(patches), -1)])
    tokens = tokens + [pad] * (len(audio) - len(tokens))
    plain = tokens_and_chunks(text, tokenizer, cfg.max_phonemes, known_phonemes)  # the text's tokens, as plain text
    starts = iter(start for _, start in plain)
    voiced = VoicedChunks(cfg)
    phonemes, since = zip(*(voiced.push(next(starts) if t not in (pad, end) else None) for t in tokens))
    return SpeakerStreams(torch.tensor(tokens), audio, torch.tensor(phonemes), torch.tensor(since),
                          torch.tensor([token for token, _ in plain]))


# --- building, saving, loading -------------------------------------------------------------------

CHECKPOINT_FORMAT = "michi_lite.speaker/1"
STACKED_FORMAT = "michi_lite.speaker_stack/1"  # a stacked stage's file: its adapters and modules, and its base


def build_speech_model(preset: str, tokenizer, pretrained: bool = True) -> SpeechModel:
    """A speech model for ``preset``: pretrained SmolLM2 (or a random tiny Llama) with fresh adapters and heads."""
    cfg = speech_model_config(preset)
    backbone = build_backbone(cfg, len(tokenizer), pretrained)
    return SpeechModel(cfg, backbone, tokenizer.convert_tokens_to_ids(PAD_TOKEN),
                       tokenizer.convert_tokens_to_ids(END_TOKEN))


def save_speaker(path: str | os.PathLike, model: SpeechModel, preset: str, dtype: torch.dtype = torch.float32) -> Path:
    """The trained weights (adapters, voice encoder, audio and user projections, heads) as safetensors, written
    atomically; of a stacked model (``stack_adapters``), its own adapters and modules, and which file they stack on."""
    if model.merged:
        raise ValueError("the adapters are merged into the backbone; save before merge_adapters()")
    tensors = {k: v.to(dtype) for k, v in model.trained_state().items()}
    metadata = {"format": CHECKPOINT_FORMAT, "preset": preset, "config": json.dumps(model.cfg.to_dict())}
    if model.stacked:
        metadata.update(format=STACKED_FORMAT, stacked=json.dumps(model.stacked))
    return write_weights(path, tensors, metadata)


def read_speaker(path: str | os.PathLike, preset: str, tokenizer, fresh: tuple[str, ...] = ("user_in",),
                 base: str | os.PathLike | None = None) -> SpeechModel:
    """A ``save_speaker`` file (or a run's directory) on pretrained SmolLM2, adapters unmerged, in train mode.

    The modules named in ``fresh`` may be missing from the file and start
    fresh (a file from before the user streams has no ``user_in``: it hears
    none). A stacked file's base is loaded first (``stacked_base``; ``base``
    a copy of it elsewhere). Raises FileNotFoundError for a missing file and
    ValueError for a foreign, truncated or mismatched one (``read_weights``).
    """
    path, metadata, tensors = read_weights(path, "speaker", (CHECKPOINT_FORMAT, STACKED_FORMAT), preset)
    if metadata["format"] == STACKED_FORMAT:
        stacked = json.loads(metadata.get("stacked") or "{}")
        beneath = stacked_base(path, stacked, base)
        model = read_speaker(beneath, preset, tokenizer, fresh).stack_adapters(
            stacked["rank"], stacked["alpha"], beneath, stacked["base_sha256"])  # stacked_base checked those bytes
    else:
        model = build_speech_model(preset, tokenizer)
    if saved_config(path, metadata, "speaker") != json.loads(json.dumps(model.cfg.to_dict())):
        raise ValueError(f"{path}: made with another speech model shape than preset {preset!r} has now")
    with fitting_weights(path, "speaker"):
        model.load_trained_state({k: v.float() for k, v in tensors.items()}, fresh=fresh)
    return model


def stacked_base(path: Path, stacked: dict, base: str | os.PathLike | None = None) -> Path:
    """The speaker file a stacked file's adapters stack on: ``base``, the path it was trained from (as it was
    given, from the working directory), or the committed reference, whichever holds the bytes it names (its
    SHA-256)."""
    if not {"rank", "alpha", "base", "base_sha256"} <= set(stacked):
        raise ValueError(f"{path}: a stacked speaker file that does not say what it stacks on")
    candidates = [Path(p) for p in (base, stacked["base"], REFERENCE_SPEAKER) if p is not None]
    for candidate in candidates:
        if candidate.is_file() and file_digest(candidate) == stacked["base_sha256"]:
            return candidate
    raise ValueError(f"{path}: its adapters stack on the speaker file {stacked['base']} (SHA-256 "
                     f"{stacked['base_sha256'][:16]}...), which is at none of {[str(c) for c in candidates]}; "
                     f"put it back, or give its path as load_speaker's base")


def load_speaker(path: str | os.PathLike, preset: str, tokenizer, device: str | torch.device = "cpu",
                 merge: bool = True, base: str | os.PathLike | None = None) -> SpeechModel:
    """Read a ``save_speaker`` file (or a run's directory) onto pretrained SmolLM2; eval mode, adapters merged.

    Raises as ``read_speaker`` does.
    """
    model = read_speaker(path, preset, tokenizer, base=base)
    if merge:
        model.merge_adapters()
    return model.to(device).eval()


def quantized_for_cpu(model: SpeechModel) -> SpeechModel:
    """An inference copy with int8 linear layers (dynamic quantisation, a scale per output row), to speak on a CPU.

    One frame's work is matrix-vector products whose weights must all be
    read from memory: the backbone's 135M, the 49k x 576 token table the
    text head scores against, and the speaking head's, once per Euler step.
    int8 reads a quarter of the bytes (and CPUs without bf16 arithmetic
    gain nothing from bf16). ``michi-lite bench speaker`` times both
    versions; ``eval speaker`` measures this one, as ``say`` runs it.

    The backbone is quantised twice over: as ``transformers`` lays it out,
    for whole sequences, and as the ``frame_decoder`` speaking steps with
    (about 106 MB more in int8).
    """
    if not model.merged:
        raise ValueError("merge the adapters first (load_speaker merges them)")
    fast = copy.deepcopy(model).eval()
    fast._frame_decoder = int8_linears(FrameDecoder(fast.decoder))
    scorer = nn.Linear(*fast.token_embedding.weight.shape[::-1])
    scorer.weight.data, scorer.bias.data = fast.token_embedding.weight.clone(), fast.text_bias.detach().clone()
    fast.scorer = int8_linears(nn.Sequential(scorer))
    for name in ("backbone", "phoneme_reader", "speaking_head"):
        setattr(fast, name, int8_linears(getattr(fast, name)))
    return fast


