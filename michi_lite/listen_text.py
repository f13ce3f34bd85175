"""The listener's words: Whisper's own decoder, adapted to write while the audio is still coming.

A frame head that names a word from one 80 ms state has no language model:
it knows only the words the corpus taught it, and on voices it never heard
it mostly says nothing. Whisper's decoder learnt English from hundreds of
thousands of hours of transcribed speech; here it reads the causal encoder's states as they arrive and commits words
one frame at a time:

* **cross-attention up to now**: a decoder position attends to the encoder
  positions heard so far, never later ones;
* **a gate** on the newest position says *commit* (the next word has been
  heard, and ``delay_frames`` more) or *wait*. On commit the next token is
  the decoder's choice among text tokens, its position's keys and values
  are kept, and the gate is asked again (a word of several tokens comes in
  one frame); on wait, the newest position is run again next frame with the
  new audio;
* **low-rank adapters** (``LowRank``) on every linear layer and the gate are
  all that is trained; Whisper's weights stay as they are, so a file stores
  only the adapters (1.3 MB for tiny.en).

Training teaches exactly what a stream will ask (``text_queries``). Every
committed position is run with the audio up to the frame it committed on;
the wait probes run the newest position at frames before its word was heard,
and late probes at frames after (a missed frame must be made up for, not
waited out). Targets come from the engines' word timings: a word's tokens
commit ``delay_frames`` after the frame in which it ends (``text_targets``).

* ``TextDecoder``, ``whisper_decoder_state``, ``text_decoder`` (build one);
* ``text_targets`` and ``text_queries``: what one utterance teaches;
* ``TextStream``: the frame-by-frame decoder a ``ListenerStream`` runs.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import FRAME_SECONDS
from .data.frames import chunk_end_times, token_chunks
from .data.words import Word

# Whisper's special tokens (English-only models): the prompt is start-of-transcript, no-timestamps
START_OF_TRANSCRIPT, NO_TIMESTAMPS, END_OF_TEXT = 50257, 50362, 50256
PROMPT = (START_OF_TRANSCRIPT, NO_TIMESTAMPS)
WHISPER_VOCAB, WHISPER_TEXT_POSITIONS = 51864, 448
STALL_FRAMES = 25  # a stream that starts over after sentences also does after 2 s without a word (``TextStream``)


@functools.cache
def whisper_text_tokenizer():
    """Whisper's byte-level BPE tokenizer (tiny.en's, shared by every English Whisper), read once."""
    from transformers import PreTrainedTokenizerFast

    from .backbone import whisper_model_dir

    return PreTrainedTokenizerFast(tokenizer_file=str(whisper_model_dir("tiny.en") / "tokenizer.json"))


ABBREVIATIONS = ("Mr.", "Mrs.", "Ms.", "Dr.", "St.", "Jr.", "Sr.", "vs.", "No.", "a.m.", "p.m.", "e.g.", "i.e.")


def ends_a_sentence(tokens: list[int]) -> bool:
    """Whether Whisper tokens end a sentence: their text ends in ".", "?" or "!" (a closing quote or bracket
    after it allowed), not in an abbreviation such as "Dr."."""
    text = whisper_text_tokenizer().decode(tokens[-4:]).rstrip().rstrip("\"')]")
    return text.endswith((".", "?", "!")) and not text.endswith(("..", *ABBREVIATIONS))


class LowRank(nn.Module):
    """A frozen linear layer plus a trained low-rank change: ``base(x) + up(down(x))``, ``up`` starting at zero."""

    def __init__(self, base: nn.Linear, rank: int) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.down = nn.Parameter(torch.randn(rank, base.in_features) / math.sqrt(base.in_features))
        self.up = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.down.T) @ self.up.T


class DecoderLayer(nn.Module):
    """Whisper's decoder layer: pre-norm self-attention, cross-attention to the encoder, MLP."""

    def __init__(self, width: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.heads = heads
        self.self_norm, self.qkv = nn.LayerNorm(width), nn.Linear(width, 3 * width)
        self.self_out = nn.Linear(width, width)
        self.cross_norm, self.cross_q = nn.LayerNorm(width), nn.Linear(width, width)
        self.cross_kv, self.cross_out = nn.Linear(width, 2 * width), nn.Linear(width, width)
        self.mlp_norm, self.fc1, self.fc2 = nn.LayerNorm(width), nn.Linear(width, ffn), nn.Linear(ffn, width)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # (batch, n, width) -> (batch, heads, n, head_dim)
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def cross_keys(self, encoded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder states (batch, n, width) -> the cross-attention's keys and values, computed once per state."""
        keys, values = self.cross_kv(encoded).chunk(2, dim=-1)
        return self._heads(keys), self._heads(values)

    def forward(self, x: torch.Tensor, self_mask: torch.Tensor | None, cross: tuple[torch.Tensor, torch.Tensor],
                cross_mask: torch.Tensor | None, past: tuple[torch.Tensor, torch.Tensor] | None = None,
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Returns the new states and the self-attention's keys and values (``past``'s and these positions')."""
        q, k, v = (self._heads(t) for t in self.qkv(self.self_norm(x)).chunk(3, dim=-1))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=self_mask)
        x = x + self.self_out(attended.transpose(1, 2).flatten(2))
        q = self._heads(self.cross_q(self.cross_norm(x)))
        attended = F.scaled_dot_product_attention(q, *cross, attn_mask=cross_mask)
        x = x + self.cross_out(attended.transpose(1, 2).flatten(2))
        return x + self.fc2(F.gelu(self.fc1(self.mlp_norm(x)))), (k, v)


class TextDecoder(nn.Module):
    """Whisper's decoder (token and position tables frozen, logits tied to the tokens) plus the commit gate.

    ``forward(tokens, positions, self_mask, encoded, cross_mask)`` runs any
    set of queries at once (training's, ``text_queries``); ``TextStream``
    runs it one frame at a time.
    """

    def __init__(self, width: int, heads: int, layers: int, ffn: int, rank: int) -> None:
        super().__init__()
        self.register_buffer("tokens", torch.zeros(WHISPER_VOCAB, width), persistent=False)
        self.register_buffer("positions", torch.zeros(WHISPER_TEXT_POSITIONS, width), persistent=False)
        self.layers = nn.ModuleList(DecoderLayer(width, heads, ffn) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.gate = nn.Sequential(nn.Linear(width, 256), nn.GELU(), nn.Linear(256, 1))
        self.rank = rank
        self.scorer: nn.Module | None = None  # set by ``listen.quantized_for_cpu``: the same logits in int8

    def adapt(self) -> TextDecoder:
        """Freeze Whisper's weights and wrap every linear layer in a ``LowRank`` change: what training trains."""
        self.requires_grad_(False)
        for layer in self.layers:
            for name in ("qkv", "self_out", "cross_q", "cross_kv", "cross_out", "fc1", "fc2"):
                setattr(layer, name, LowRank(getattr(layer, name), self.rank))
        self.gate.requires_grad_(True)
        return self

    def _adapters(self) -> list[tuple[nn.Module, str, LowRank]]:
        """Every ``LowRank`` change: (its layer, its name there, it)."""
        return [(layer, name, module) for layer in self.layers for name, module in layer.named_children()
                if isinstance(module, LowRank)]

    def merge_adapters(self) -> TextDecoder:
        """Fold each ``LowRank`` change into its layer's weight (in place, for inference): one product, not three."""
        for layer, name, module in self._adapters():
            merged = module.base
            merged.weight.data = merged.weight.data + module.up.data @ module.down.data
            setattr(layer, name, merged)
        return self

    def without_adapters(self) -> TextDecoder:
        """A frozen copy with every ``LowRank`` change left out: Whisper's own decoder (``next_tokens``'s teacher)."""
        plain = copy.deepcopy(self)
        for layer, name, module in plain._adapters():
            setattr(layer, name, module.base)
        return plain.requires_grad_(False).eval()

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, self_mask: torch.Tensor | None,
                encoded: torch.Tensor, cross_mask: torch.Tensor | None) -> torch.Tensor:
        """Queries (batch, n) of token ids at text positions -> their final states (batch, n, width)."""
        x = self.tokens[tokens] + self.positions[positions]
        for layer in self.layers:
            x, _ = layer(x, self_mask, layer.cross_keys(encoded), cross_mask)
        return self.norm(x)

    @torch.inference_mode()
    def greedy(self, encoded: torch.Tensor, limit: int = 448) -> list[int]:
        """Whisper's own way, no streaming: encoder states (1, n, width) all in view, the most likely text token
        each step until end-of-text or ``limit`` tokens (prompt included). Returns the tokens after the prompt."""
        tokens = list(PROMPT)
        while len(tokens) < limit:
            n = len(tokens)
            states = self(torch.tensor([tokens]), torch.arange(n)[None], torch.ones(n, n, dtype=torch.bool).tril(),
                          encoded, None)
            token = int(self.logits(states[0, -1]).argmax())
            if token == END_OF_TEXT:
                break
            tokens.append(token)
        return tokens[len(PROMPT):]

    @torch.inference_mode()
    def next_tokens(self, encoded: torch.Tensor, tokens: list[int], top: int) -> tuple[torch.Tensor, torch.Tensor]:
        """What this decoder expects each of ``tokens`` to be, given the prompt and the ones before it, hearing
        ``encoded`` (1, n, width) all at once: its ``top`` likeliest ids (len(tokens), top) and their
        probabilities, scaled to sum to 1."""
        sequence = [*PROMPT, *tokens]
        n = len(sequence)
        states = self(torch.tensor([sequence]), torch.arange(n)[None], torch.ones(n, n, dtype=torch.bool).tril(),
                      encoded, None)
        probs = self.logits(states[0, len(PROMPT) - 1:-1]).softmax(-1)  # position p predicts token p (PROMPT first)
        best, ids = probs.topk(top, dim=-1)
        return ids, best / best.sum(-1, keepdim=True)

    def logits(self, states: torch.Tensor) -> torch.Tensor:
        """States (..., width) -> logits over Whisper's vocabulary (..., vocab), tied to the token table."""
        if self.scorer is not None:
            return self.scorer(states)
        return states @ self.tokens.T

    def commit_logit(self, states: torch.Tensor) -> torch.Tensor:
        """The gate: states (..., width) -> (...,) logit of "the next word has been heard: commit it"."""
        return self.gate(states).squeeze(-1)


def whisper_decoder_state(name: str = "tiny.en") -> dict[str, torch.Tensor]:
    """Whisper's pretrained decoder under ``TextDecoder``'s names (before ``adapt``), float32, tables included."""
    from .backbone import read_ctranslate2_weights, whisper_model_dir

    ct2 = read_ctranslate2_weights(whisper_model_dir(name), prefix="decoder/")
    state = {"tokens": ct2["embeddings/weight"], "positions": ct2["position_encodings/encodings"],
             "norm.weight": ct2["layer_norm/gamma"], "norm.bias": ct2["layer_norm/beta"]}
    names = {"self_norm": "self_attention/layer_norm", "qkv": "self_attention/linear_0",
             "self_out": "self_attention/linear_1", "cross_norm": "attention/layer_norm",
             "cross_q": "attention/linear_0", "cross_kv": "attention/linear_1", "cross_out": "attention/linear_2",
             "mlp_norm": "ffn/layer_norm", "fc1": "ffn/linear_0", "fc2": "ffn/linear_1"}
    n_layers = sum(1 for key in ct2 if key.endswith("self_attention/linear_0/weight"))
    for i in range(n_layers):
        for ours, theirs in names.items():
            norm = ours.endswith("norm")
            state[f"layers.{i}.{ours}.weight"] = ct2[f"layer_{i}/{theirs}/{'gamma' if norm else 'weight'}"]
            state[f"layers.{i}.{ours}.bias"] = ct2[f"layer_{i}/{theirs}/{'beta' if norm else 'bias'}"]
    return {key: value.float() for key, value in state.items()}


def text_decoder(width: int, heads: int, layers: int, ffn: int, rank: int, whisper: str | None) -> TextDecoder:
    """Whisper ``whisper``'s decoder, adapted; ``None``: a seeded random decoder of the shape (tests).

    Only the adapters and the gate are trained and saved, so the frozen
    weights must come back the same on load: Whisper's, or the same seed's.
    """
    decoder = TextDecoder(width, heads, layers, ffn, rank)
    if whisper is not None:
        state = whisper_decoder_state(whisper)
        decoder.tokens.copy_(state.pop("tokens"))
        decoder.positions.copy_(state.pop("positions"))
        decoder.load_state_dict(state, strict=False)  # the gate is new
    else:
        generator = torch.Generator().manual_seed(0)
        linears = [m for m in decoder.layers.modules() if isinstance(m, nn.Linear)]
        for tensor in (decoder.tokens, decoder.positions, *(m.weight for m in linears)):
            tensor.data.copy_(torch.randn(tensor.shape, generator=generator) * 0.05)
        for linear in linears:
            linear.bias.data.zero_()
    return decoder.adapt()


def trained_keys(decoder: TextDecoder) -> list[str]:
    """The state-dict keys training changes (adapters, gate): all a listener file keeps of the decoder."""
    return [name for name, p in decoder.named_parameters() if p.requires_grad]


# --- what one utterance teaches ------------------------------------------------------------


@dataclass
class TextTargets:
    """An utterance's Whisper tokens and the frame each is committed on (never decreasing).

    ``start`` is the first frame the decoder runs on: 0 where a stream
    begins; after a restart (``TextStream.restart``), the frame after the
    frames it kept.
    """

    tokens: list[int]
    frames: list[int]
    start: int = 0


def text_targets(text: str, words: list[Word], tokenizer, delay_frames: int) -> TextTargets:
    """Each token of ``text`` (Whisper-tokenized, with its leading space) on the frame its word is heard.

    That is the frame in which the word ends, plus ``delay_frames``; a chunk
    of text spoken as several words ("$23.10") is heard when the last of
    them ends (``chunk_end_times``).
    """
    frame_ms = round(FRAME_SECONDS * 1000)
    text = " " + text.strip()
    token_ids, chunk_of = token_chunks(text, tokenizer)
    ends = chunk_end_times(text, words)
    heard = [math.ceil(round(end * 1000) / frame_ms) - 1 + delay_frames for end in ends]
    return TextTargets(tokens=token_ids, frames=[max(heard[chunk], delay_frames) for chunk in chunk_of])


@dataclass
class TextQueries:
    """One forward's queries for a batch of utterances (``text_queries``), and what each is taught."""

    tokens: torch.Tensor  # (batch, n) input token ids
    positions: torch.Tensor  # (batch, n) text positions
    self_mask: torch.Tensor  # (batch, 1, n, n) True where a query may attend
    cross_mask: torch.Tensor  # (batch, 1, n, encoder positions)
    targets: torch.Tensor  # (batch, n) the token to commit, -100 where none is taught
    commit: torch.Tensor  # (batch, n) 1 commit, 0 wait, -1 no gate loss


def text_queries(utterances: list[tuple[TextTargets, int]], per_frame: int, probes: int,
                 generator: torch.Generator) -> TextQueries:
    """The queries that teach a stream's every decision, for (targets, frames of audio) per utterance.

    With the prompt and tokens y_1..y_K as the sequence, position p >= 1
    predicts y_p (position 0, start-of-transcript, predicts the
    no-timestamps prompt and is taught nothing). The **committed** positions 0..K each see
    the audio up to the frame their prediction was committed on (position 0,
    the decoder's first frame, ``targets.start``): in a stream that is when
    its keys and values were kept. Each attends to the positions before it.
    The **probes** rerun position p at other frames, seeing the committed
    positions before it and itself: wait (gate 0) at frames from the first
    to its token's, commit (gate 1, and the token) at frames after. Up to
    ``probes`` wait probes and ``probes // 3`` late ones per utterance,
    drawn from ``generator``.
    """
    rows = []
    for targets, n_frames in utterances:
        y, c = targets.tokens, targets.frames
        k = len(y)
        sequence = [*PROMPT, *y]
        # committed positions: (token, position, frame of the audio it sees, target, gate)
        queries = [(sequence[0], 0, targets.start, -100, -1.0)]
        queries += [(sequence[p], p, c[p - 1], y[p - 1], 1.0) for p in range(1, k + 1)]
        bounds = [targets.start, *c, n_frames]
        waits = [(p, t) for p in range(1, k + 2) for t in range(bounds[p - 1], min(bounds[p], n_frames))]
        lates = [(p, t) for p in range(1, k + 1) for t in range(c[p - 1] + 1, n_frames)]
        for pairs, limit, late in ((waits, probes, False), (lates, probes // 3, True)):
            if len(pairs) > limit:
                pairs = [pairs[i] for i in sorted(torch.randperm(len(pairs), generator=generator)[:limit].tolist())]
            queries += [(sequence[min(p, k + 1)], p, t, y[p - 1] if late else -100, float(late)) for p, t in pairs]
        rows.append((queries, k + 1, n_frames))

    batch, n = len(rows), max(len(q) for q, _, _ in rows)
    n_encoded = max(frames for _, _, frames in rows) * per_frame
    out = TextQueries(tokens=torch.zeros(batch, n, dtype=torch.long), positions=torch.zeros(batch, n, dtype=torch.long),
                      self_mask=torch.zeros(batch, 1, n, n, dtype=torch.bool),
                      cross_mask=torch.zeros(batch, 1, n, n_encoded, dtype=torch.bool),
                      targets=torch.full((batch, n), -100), commit=torch.full((batch, n), -1.0))
    for b, (queries, committed, _) in enumerate(rows):
        tokens, positions, frames, targets, commit = (torch.tensor(column) for column in zip(*queries))
        m = len(queries)
        out.tokens[b, :m], out.positions[b, :m] = tokens, positions
        out.targets[b, :m], out.commit[b, :m] = targets, commit
        out.cross_mask[b, 0, :m] = torch.arange(n_encoded) < per_frame * (frames[:, None] + 1)
        out.self_mask[b, 0, :committed, :committed] = torch.ones(committed, committed, dtype=torch.bool).tril()
        out.self_mask[b, 0, committed:m, :committed] = torch.arange(committed) < positions[committed:, None]
        out.self_mask[b, 0, torch.arange(committed, m), torch.arange(committed, m)] = True
        out.self_mask[b, 0, m:, 0] = out.cross_mask[b, 0, m:, 0] = True  # padding queries attend somewhere
    return out


# --- streaming ------------------------------------------------------------------------------


class TextStream:
    """Run a ``TextDecoder`` on a stream of encoder states, ``per_frame`` at a time: the tokens it commits.

    Holds the cross-attention's keys and values of the last ``window``
    encoder positions, in a ring (the cross-attention has no order: the
    states carry their positions), and the self-attention's of the
    committed positions.
    When ``max_tokens`` are committed (Whisper's decoder has 448 positions),
    the decoder starts over from the prompt, hearing from that frame on.

    A frame commits at most ``max_per_frame`` tokens: the rest of a word
    waits for the gate on the frames after, with more audio heard (training
    teaches those late commits). Each token costs a decoder step and a
    scoring of Whisper's 51,864 tokens, so one a frame keeps every frame's
    work to about one token's; it also heard better than eight a frame, on
    the reference's test clips (seen 0.205 against 0.228, held out 0.343
    against 0.348, data/listener/README.md).

    Given ``ends_sentence`` (a test on the tokens committed since the start,
    such as ``ends_a_sentence``), it starts over after a sentence too: when
    the committed tokens end one and the gate waits, keeping the last
    ``keep_frames`` frames of encoder states. The decoder learns from clips
    of one sentence each, which end where the sentence does: left to go on,
    it waits for good after the first full stop. A word is committed
    ``delay_frames`` after it ends, so the frames kept are the silence after
    it, or the start of what follows. Given ``stall_frames`` too, it starts
    over when the gate has waited that many frames since the last token it
    committed: a decoder that lost its place mid-sentence (a word it could
    not make out) waits for good otherwise. Training teaches the decoder what
    a restart hears, after a sentence and inside one (``TextTargets.start``,
    ``train_listener.EncodedUtterances``'s ``follows`` and ``joins``).
    """

    def __init__(self, decoder: TextDecoder, per_frame: int, window: int = 1500, max_tokens: int = 224,
                 threshold: float = 0.5, max_per_frame: int = 1,
                 ends_sentence: Callable[[list[int]], bool] | None = None, keep_frames: int = 2,
                 stall_frames: int | None = None) -> None:
        self.decoder, self.per_frame, self.window = decoder, per_frame, window
        self.max_tokens, self.threshold, self.max_per_frame = max_tokens, threshold, max_per_frame
        self.ends_sentence, self.keep, self.stall = ends_sentence, keep_frames * per_frame, stall_frames
        device = decoder.tokens.device
        self.text_only = torch.zeros(decoder.tokens.shape[0], dtype=torch.bool, device=device)
        self.text_only[END_OF_TEXT:] = True  # the special tokens are never committed
        self.rings: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer, allocated on the first frame
        self.filled = self.written = 0  # ring slots holding a state; states written since the start
        self.restart()

    def restart(self, keep: int = 0) -> None:
        """Start over: the prompt again, hearing only the last ``keep`` encoder states and what comes next (what
        was committed stays said)."""
        keep = min(keep, self.filled)
        if keep:  # the kept states move to the ring's first slots, in order
            slots = (self.written - keep + torch.arange(keep)) % self.window
            for keys, values in self.rings:
                keys[:, :, :keep], values[:, :, :keep] = keys[:, :, slots].clone(), values[:, :, slots].clone()
        self.filled = self.written = keep
        self.sequence = list(PROMPT)
        self.unchecked = False
        self.waited = 0  # frames since the last commit
        self.past: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.decoder.layers)
        self.kept = 0  # positions whose keys and values are final
        self.fresh = True

    @torch.inference_mode()
    def push(self, encoded: torch.Tensor) -> list[int]:
        """One frame's encoder states (per_frame, width) -> the Whisper tokens it commits (often none)."""
        slots = (self.written + torch.arange(len(encoded))) % self.window
        for i, layer in enumerate(self.decoder.layers):
            keys, values = layer.cross_keys(encoded[None])  # (1, heads, per_frame, head_dim)
            if len(self.rings) == i:
                self.rings.append((keys.new_zeros(*keys.shape[:2], self.window, keys.shape[-1]),
                                   values.new_zeros(*values.shape[:2], self.window, values.shape[-1])))
            self.rings[i][0][:, :, slots], self.rings[i][1][:, :, slots] = keys, values
        self.written += len(encoded)
        self.filled = min(self.filled + len(encoded), self.window)
        if self.fresh:  # the prompt's first position is final on the frame it starts
            self._keep(self._run(end=1)[1], 1)
            self.fresh = False
        committed, waits = [], True
        for _ in range(self.max_per_frame):
            state, past = self._run()
            if torch.sigmoid(self.decoder.commit_logit(state)).item() < self.threshold:
                break
            token = int(self.decoder.logits(state).masked_fill(self.text_only, -torch.inf).argmax())
            self._keep(past, len(self.sequence))  # the positions it came from are final now, as just run
            self.sequence.append(token)
            committed.append(token)
        else:  # the most a frame commits, and maybe more to come: not the time to start over
            waits = False
        self.unchecked |= bool(committed)  # tokens committed whose sentence end is still to be checked
        self.waited = 0 if committed else self.waited + 1
        if len(self.sequence) >= self.max_tokens:
            self.restart()
        elif self.unchecked and waits and self.ends_sentence:
            self.unchecked = False
            if self.ends_sentence(self.sequence[len(PROMPT):]):
                self.restart(self.keep)
        elif self.stall and self.waited >= self.stall and len(self.sequence) > len(PROMPT):
            self.restart(self.keep)
        return committed

    def numel(self) -> int:
        """Numbers held: the cross-attention's window and the committed positions' keys and values."""
        kept = [t for pair in (*self.rings, *self.past) if pair is not None for t in pair]
        return sum(t.numel() for t in kept)

    def _run(self, end: int | None = None) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Run the positions not yet kept, up to ``end`` (all): the last one's state (1, width), each layer's keys
        and values."""
        end = len(self.sequence) if end is None else end
        positions = torch.arange(self.kept, end, device=self.decoder.tokens.device)
        tokens = torch.tensor(self.sequence, device=positions.device)[positions]
        x = (self.decoder.tokens[tokens] + self.decoder.positions[positions])[None]
        mask = torch.ones(len(positions), end, dtype=torch.bool, device=x.device).tril(self.kept)
        past = []
        for i, layer in enumerate(self.decoder.layers):
            cross = self.rings[i][0][:, :, :self.filled], self.rings[i][1][:, :, :self.filled]
            x, layer_past = layer(x, mask, cross, None, past=self.past[i])
            past.append(layer_past)
        return self.decoder.norm(x)[0, -1:], past  # (1, width): int8 layers take matrices

    def _keep(self, past: list[tuple[torch.Tensor, torch.Tensor]], kept: int) -> None:
        self.past, self.kept = past, kept
