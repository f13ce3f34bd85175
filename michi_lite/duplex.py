"""Full duplex: 80 ms of the user's audio in, 80 ms of the model's audio out, on every frame.

``DuplexEngine.step`` runs the whole model once per frame of the clock:

1. **listen**: the listening head hears the user's 80 ms (``ListenerStream``):
   an embedding and the token it emits (PAD for none);
2. **text**: the text head reads the backbone's last hidden state and says
   this frame's token: PAD, a word's next token, or ``<|im_end|>`` (it stops);
3. **speak**: the speaking head makes this frame's mel patch from the same
   hidden state, the token, the voice and the phonemes of the word being
   voiced (the audio stream runs ``text_lead_frames`` behind the text); or,
   given an acoustic model, that model voices the text stream's words
   (``voicing.AcousticVoice``) and the speech model's head rests;
4. **vocode**: the vocoder streams the patch into 80 ms of samples;
5. **backbone**: the frame's streams, the model's own token and patch and
   what it heard of the user, go in as the next position
   (``SpeechModel.frame_inputs``): one step of the merged backbone.

Frame p of both sides enters at position p + 1, as in training
(``train_joint``), so the model answers frame p's user audio from frame p + 1
on. What lasts from frame to frame has a fixed size: the listener's state,
the backbone's ``WindowCache`` (the last ``context_frames`` positions), the
vocoder's stream and the word being voiced; nothing is recomputed over the
conversation. Each frame leaves a ``FrameRecord`` (both sides' tokens and
each stage's seconds) in ``log``, the one thing that grows: a small record
a frame.

Beside listening and answering: ``reset(prefix)`` has the model read text
first (a rag prefix: facts it may be asked about), the voice prompt sets the
voice it answers in, ``say(text)`` forces what it says next (its text head
still paces the words) before it goes on freely, and ``max_talk_frames``
caps a turn. Stopping when the user talks over it, and going on through a
backchannel, are what joint training teaches; the engine only logs them.

The model's words are free text, so the phonemes the speaking head reads
(``VoicedChunks``) are filled in as the word's tokens come: a word's first
token starts its chunk, and each further token rewrites the chunk's phonemes
in place; the head reads them ``text_lead_frames`` later, by when most
words are whole (``SpokenWord``).

Two ways to speak: the speech model's own speaking head (MichiAI's design:
the backbone's state decides how each frame sounds; the lite reference's
does not speak intelligibly yet), or the acoustic model behind the text
stream (``acoustic``: each whole word's phonemes, laid out with the acoustic
model's durations, voiced a frame at a time; what ``michi-lite say`` speaks
with). Either way the patch the frame sounds is what the backbone hears of
itself on the next position.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .acoustic import AcousticModel
from .audio import mel_from_patches
from .config import FRAME_SECONDS
from .data.phonemes import chunk_phoneme_ids
from .frame_decoder import WindowCache
from .listen import Listener
from .model import SpeechModel, UserStreams, VoicedChunks
from .vocoder import CausalVocoder
from .voicing import AcousticVoice

STAGES = ("listen", "text", "speak", "vocode", "backbone")
# the backbone's window, 80 s: more than joint training ever showed it (its longest dialogue, 64 s, and its
# prefix: 835 positions); a longer one only attends further back than it learned to, and reads more every frame
CONTEXT_FRAMES = 1000
WORD_TEMPERATURE = 0.7  # the text stream's words: sharper than the model's own odds, from the likeliest few
WORD_TOP_K = 25
NO_REPEAT_TOKENS = 3  # no run of this many tokens said twice in one turn (0: any may be)
REPEAT_WINDOW = 100  # how far back in the turn a run counts as said: the turn's last so many tokens
HEAD_STEPS = 4  # Euler steps of the speech model's own speaking head, as ``say`` takes
# an acoustic voice's: one step costs a voiced frame 3 ms against 12 for four (2 CPU threads), and is heard as well:
# judge WER 0.235 / 0.222 (1 / 4 steps) on the seen voices' test sentences, 0.242 / 0.246 held out, 0.229 / 0.239 on
# the validation ones (data/acoustic/README.md)
VOICE_STEPS = 1


@dataclass(frozen=True)
class FrameRecord:
    """One frame of a conversation as the engine lived it."""

    index: int
    user_token: int  # what the listener emitted (the PAD id for nothing)
    model_token: int  # what the model's text stream said
    seconds: dict[str, float] = field(default_factory=dict)  # each stage's time, by ``STAGES`` name
    sounding: bool | None = None  # whether the acoustic voice voiced a phoneme (None: the speech model's head spoke)

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())


class SpokenWord:
    """The phonemes of the word the model is saying, filled in as its tokens come.

    ``start`` is called on a word's first token and returns the list
    ``VoicedChunks`` keeps; ``extend`` adds a later token's text and rewrites
    that same list, so the speaking head, which reads it a few frames later,
    sees the word as far as it has been said.
    """

    def __init__(self, max_phonemes: int) -> None:
        self.max_phonemes = max_phonemes
        self.text = ""
        self.ids: list[int] = []

    def start(self, text: str) -> list[int]:
        self.text = text.strip()
        self.ids = chunk_phoneme_ids(self.text, self.max_phonemes) if self.text else []  # a new list: a new chunk
        return self.ids

    def extend(self, text: str) -> None:
        self.text += text
        self.ids[:] = chunk_phoneme_ids(self.text, self.max_phonemes)


class DuplexEngine:
    """A speech model that hears through ``listener`` and speaks through ``vocoder``, one frame a ``step``.

    ``model`` has its adapters merged (``load_speaker`` merges them);
    ``voice_patches`` are a voice prompt's speech patches
    (``audio.voice_prompt``). The text stream is sampled in two draws
    (``sampled``): whether to say a word on this frame, at the model's
    own odds, then which word, among the ``top_k`` likeliest at
    ``temperature`` (0: the likeliest), none that would say a run of
    ``no_repeat`` tokens a second time in the turn; ``max_talk_frames``
    caps a turn: that many frames after its first word the model is made to
    end it. ``acoustic``:
    an acoustic model to voice the text stream with, in the voice prompt's
    voice, instead of the speech model's speaking head; ``steps`` are either
    head's Euler steps (None: ``HEAD_STEPS`` for the speech model's,
    ``VOICE_STEPS`` for the acoustic model's).
    """

    def __init__(self, model: SpeechModel, listener: Listener, vocoder: CausalVocoder, tokenizer,
                 voice_patches: torch.Tensor, steps: int | None = None, temperature: float = WORD_TEMPERATURE,
                 top_k: int | None = WORD_TOP_K, no_repeat: int = NO_REPEAT_TOKENS,
                 max_talk_frames: int | None = None, context_frames: int = CONTEXT_FRAMES, seed: int = 0,
                 acoustic: AcousticModel | None = None) -> None:
        if listener.cfg.audio.samples_per_frame * model.cfg.audio.sample_rate \
                != model.cfg.audio.samples_per_frame * listener.cfg.audio.sample_rate:
            raise ValueError("the listener and the speech model must share the 80 ms frame")
        if acoustic is not None and acoustic.cfg.audio != model.cfg.audio:
            raise ValueError("the acoustic model and the speech model must share their audio settings (the preset)")
        if steps is None:
            steps = HEAD_STEPS if acoustic is None else VOICE_STEPS
        if steps < 1:
            raise ValueError(f"steps must be at least 1, not {steps}")
        if temperature < 0 or (top_k is not None and top_k < 1) or no_repeat < 0:
            raise ValueError(f"temperature and no_repeat must be 0 or more and top_k at least 1, not {temperature}, "
                             f"{no_repeat} and {top_k}")
        self.model, self.listener, self.vocoder = model.eval(), listener.eval(), vocoder.eval()
        self.tokenizer, self.steps, self.temperature, self.top_k = tokenizer, steps, temperature, top_k
        self.no_repeat = no_repeat
        self.max_talk_frames, self.context_frames, self.seed = max_talk_frames, context_frames, seed
        self.device = model.token_embedding.weight.device
        self.vocoder_dtype = next(vocoder.parameters()).dtype
        self.decoder = model.frame_decoder()
        self.acoustic = None if acoustic is None else acoustic.eval()
        with torch.inference_mode():
            self.voice = model.prompt_voice(voice_patches)  # (1, hidden)
            if self.acoustic is not None:  # its own voice vector, from the same prompt (1, width)
                prompt = voice_patches.reshape(1, -1, model.cfg.audio.n_mels).to(self.device)
                self.acoustic_voice = self.acoustic.voice(prompt)
        self.reset()

    @property
    def samples_in(self) -> int:
        """User samples a step takes: 80 ms at the listener's rate."""
        return self.listener.cfg.audio.samples_per_frame

    @torch.inference_mode()
    def reset(self, prefix: str | None = None) -> None:
        """Start a new conversation: every state back to its beginning, the log emptied.

        ``prefix`` is text the model reads first (a rag prefix: facts it may
        be asked about), as joint training lays it out: before the voice.
        """
        self.hearing = self.listener.stream(self.tokenizer)
        self.speaking = self.vocoder.stream()
        self.cache = WindowCache(self.context_frames)
        if prefix:
            ids = self.tokenizer(prefix, add_special_tokens=False)["input_ids"]
            if len(ids) + 1 > self.context_frames:
                raise ValueError(f"the prefix is {len(ids)} tokens: more than the {self.context_frames}-position "
                                 "window holds with the voice")
            self.decoder(self.model.token_embedding(torch.tensor([ids], device=self.device)), self.cache)
        self.hidden = self.decoder(self.voice[:, None], self.cache)[:, -1]  # (1, hidden): what frame 0 says
        self.voiced = VoicedChunks(self.model.cfg)
        self.word = SpokenWord(self.model.cfg.max_phonemes)
        self.generator = torch.Generator(self.device).manual_seed(self.seed)
        self.voicer = None if self.acoustic is None else AcousticVoice(
            self.acoustic, self.acoustic_voice, self.steps, self.model.cfg.text_lead_frames, self.generator)
        self.talked = None  # frames since the turn's first word; None while silent
        self.turn: deque[int] = deque(maxlen=REPEAT_WINDOW)  # the turn's last tokens said, PAD left out
        self.forced: list[tuple[int, list[int] | None]] = []  # text to say next: (token, the chunk it starts)
        self.was_forced = False  # whether this frame's token came from ``forced``
        self.forced_chunk: list[int] | None = None  # and the chunk it starts (None: it goes on with a word)
        self.log: list[FrameRecord] = []

    def say(self, text: str) -> None:
        """Have the model say ``text`` next (forced TTS): on each frame where its text head asks for a token
        (samples not-PAD), the text's next token is fed instead of its own, with the phonemes the text has;
        once the text is said it goes on freely."""
        from .model import tokens_and_chunks

        self.forced += tokens_and_chunks(text, self.tokenizer, self.model.cfg.max_phonemes)

    @torch.inference_mode()
    def step(self, samples: np.ndarray | torch.Tensor) -> np.ndarray:
        """The user's next 80 ms (``samples_in`` mono float samples) -> the model's next 80 ms (float32)."""
        samples = torch.as_tensor(samples, dtype=torch.float32)
        if samples.shape != (self.samples_in,):
            raise ValueError(f"a step takes {self.samples_in} mono samples (80 ms at "
                             f"{self.listener.cfg.audio.sample_rate} Hz), not an array of shape {tuple(samples.shape)}")
        model, seconds = self.model, {}
        clock = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            seconds[stage], clock = now - clock, now

        (heard,) = self.hearing.push(samples)
        lap("listen")
        token = self.next_token()
        lap("text")
        tokens = torch.tensor([token], device=self.device)
        patch = self.speak(token, tokens)  # (1, patch_dim)
        lap("speak")
        mel = mel_from_patches(patch.to(self.vocoder_dtype), model.cfg.audio)  # (n_mels, 8)
        out = self.speaking.push(mel).float().cpu().numpy()
        lap("vocode")
        user = UserStreams(heard.embedding[None, None].to(self.device),
                           torch.tensor([[heard.token_id]], device=self.device))
        inputs = model.frame_inputs(tokens[None], patch[None], user)  # (1, 1, hidden)
        self.hidden = self.decoder(inputs, self.cache)[:, -1]
        lap("backbone")
        sounding = None if self.voicer is None else self.voicer.sounding
        self.log.append(FrameRecord(len(self.log), heard.token_id, token, seconds, sounding))
        return out

    def next_token(self) -> int:
        """This frame's text token, from the last hidden state (or the end, when the turn is over its cap)."""
        model = self.model
        self.was_forced = False
        if self.talked is not None and self.max_talk_frames is not None and self.talked >= self.max_talk_frames:
            token = model.end_id
        elif self.forced:  # as ``say`` paces forced text: a token where the head would rather say one than not
            no_token = model.text_logits(self.hidden).float().softmax(-1)[0, model.pad_id]
            token = model.pad_id
            if torch.rand((), generator=self.generator, device=self.device) > no_token \
                    and not self.voice_holds(self.forced[0][0]):
                (token, self.forced_chunk), self.was_forced = self.forced.pop(0), True
        else:
            token = self.sampled(model.text_logits(self.hidden)[0].float())
            if self.voice_holds(token):  # the acoustic voice is behind: the word waits, the model says PAD
                token = model.pad_id
        if token == model.end_id:
            self.talked = None
            self.turn.clear()
        elif token != model.pad_id:
            self.turn.append(token)
            if self.talked is None:
                self.talked = 0
        if self.talked is not None:
            self.talked += 1
        return token

    def sampled(self, logits: torch.Tensor) -> int:
        """A token from the text head's scores (vocab,): PAD, the end or a word as often as the model says, the
        word itself from the ``top_k`` likeliest at ``temperature``.

        The first draw keeps the model's timing (a sharpened distribution
        would say PAD on every frame where it is the likeliest token, and
        never speak); the second sharpens its choice of words, where a weak
        model's long tail at temperature 1 strings unrelated words together,
        and leaves out what would repeat a run of the turn (``repeats``): a
        weak model sharpened goes round a phrase it likes.
        """
        token = int(torch.multinomial(logits.softmax(-1), 1, generator=self.generator))
        if token in (self.model.pad_id, self.model.end_id):
            return token
        logits = logits.clone()
        logits[[self.model.pad_id, self.model.end_id]] = -torch.inf
        if self.top_k is not None and self.top_k < len(logits):
            logits[logits < logits.topk(self.top_k).values[-1]] = -torch.inf
        repeats = self.repeats()
        if repeats:
            fresh = logits.index_fill(0, torch.tensor(repeats, device=logits.device), -torch.inf)
            logits = logits if torch.isinf(fresh).all() else fresh  # unless nothing else is left to say
        if self.temperature <= 0:
            return int(logits.argmax())
        return int(torch.multinomial((logits / self.temperature).softmax(-1), 1, generator=self.generator))

    def repeats(self) -> list[int]:
        """The tokens that would end a run of ``no_repeat`` tokens said before in this turn (its last
        ``REPEAT_WINDOW`` tokens: the work stays bounded however long it talks; none for 0)."""
        n, turn = self.no_repeat, list(self.turn)
        if n < 1 or len(turn) < n - 1:
            return []
        last = turn[len(turn) - n + 1:]
        return sorted({turn[i + n - 1] for i in range(len(turn) - n + 1) if turn[i:i + n - 1] == last})

    def voice_holds(self, token: int) -> bool:
        """Whether the acoustic voice is too far behind the text to take ``token``'s word yet."""
        return self.voicer is not None and token not in (self.model.pad_id, self.model.end_id) \
            and not self.voicer.admits(self.tokenizer.decode([token]))

    def speak(self, token: int, tokens: torch.Tensor) -> torch.Tensor:
        """This frame's patch (1, patch_dim), from the speech model's speaking head or the acoustic voice."""
        if self.voicer is not None:
            if token == self.model.end_id:
                self.voicer.end()
            elif token != self.model.pad_id:
                self.voicer.token(self.tokenizer.decode([token]))
            return self.voicer.next_patch()[None]
        model = self.model
        phonemes, since = (torch.tensor([x], device=self.device) for x in self.voiced.push(self.voicing(token)))
        condition = model.head_condition(self.hidden, tokens, self.voice, phonemes, since)
        return model.speaking_head.sample(condition, self.steps, generator=self.generator)

    def voicing(self, token: int) -> list[int] | None:
        """The chunk ``token`` starts for ``VoicedChunks`` (None if it starts none); a word's later token fills
        in the chunk it continues."""
        if token == self.model.end_id:
            self.word = SpokenWord(self.model.cfg.max_phonemes)  # the next turn's first token starts a word
        if token in (self.model.pad_id, self.model.end_id):
            return None
        if self.was_forced:  # the text's own phonemes, where the text starts a word
            self.word.text = self.tokenizer.decode([token]).strip() or self.word.text
            return self.forced_chunk
        text = self.tokenizer.decode([token])
        if text[:1].isspace() or not self.word.text:
            return self.word.start(text)
        self.word.extend(text)
        return None

    def token_text(self, token: int) -> str:
        """A frame's token as text: "" for PAD and for the end of a turn."""
        return "" if token in (self.model.pad_id, self.model.end_id) else self.tokenizer.decode([token])

    def said(self, side: str = "model", first: int = 0, last: int | None = None) -> str:
        """What one side (``side`` "model" or "user") said on frames [first, last) of the log, as text: its
        turns (ended by END) decoded one by one and joined by a space, as a turn's first word often has none."""
        pad, end = self.model.pad_id, self.model.end_id
        turns = [[]]
        for record in self.log[first:last]:
            token = record.model_token if side == "model" else record.user_token
            if token == end:
                turns.append([])
            elif token != pad:
                turns[-1].append(token)
        return " ".join(text for text in (self.tokenizer.decode(t).strip() for t in turns) if text)


def load_engine(preset: str, speaker: str | os.PathLike, listener: str | os.PathLike, vocoder: str | os.PathLike,
                voice_prompt: str | os.PathLike, device: str | None = None, acoustic: str | os.PathLike | None = None,
                **options) -> DuplexEngine:
    """A ``DuplexEngine`` from files: a speech model (a ``train joint`` or ``train speaker`` run, or its
    export), a listener, a vocoder, a voice prompt and, to voice the text stream with, an acoustic model (a
    ``train acoustic`` run or its export; None: the speech model's speaking head); on a CPU the speech model
    and the listener run as int8 copies (``quantized_for_cpu``). ``options`` go to ``DuplexEngine``."""
    from .audio import load_voice_prompt
    from .backbone import load_tokenizer
    from .listen import load_listener
    from .listen import quantized_for_cpu as listener_for_cpu
    from .model import load_speaker, quantized_for_cpu
    from .vocoder import load_vocoder

    files = [(speaker, "speech model"), (listener, "listener"), (vocoder, "vocoder"), (voice_prompt, "voice prompt")]
    for path, what in files + ([(acoustic, "acoustic model")] if acoustic is not None else []):
        if not Path(path).exists():
            raise FileNotFoundError(f"{path}: no {what} there")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer()
    model = load_speaker(speaker, preset, tokenizer, device)
    heard_by = load_listener(listener, preset, len(tokenizer), device)
    if device == "cpu":
        model, heard_by = quantized_for_cpu(model), listener_for_cpu(heard_by)
    if acoustic is not None:
        from .acoustic import load_acoustic

        options["acoustic"] = load_acoustic(acoustic, preset, device)
    return DuplexEngine(model, heard_by, load_vocoder(vocoder, preset, device), tokenizer,
                        load_voice_prompt(voice_prompt, model.cfg.audio), **options)


def converse(engine: DuplexEngine, user: np.ndarray, tail_seconds: float = 3.0,
             prefix: str | None = None) -> tuple[np.ndarray, dict]:
    """Stream ``user`` (mono, at the listener's rate) through ``engine`` from a fresh start (``prefix`` read
    first), then ``tail_seconds`` of silence for the model to answer in -> both sides as (2, samples) at the
    model's rate (user, model), lined up, and a timeline: every frame's tokens and stage times, and what each
    side said."""
    from .audio import prepare_waveform

    frame = engine.samples_in
    n_frames = math.ceil(len(user) / frame) + round(tail_seconds / FRAME_SECONDS)
    padded = np.zeros(n_frames * frame, dtype=np.float32)
    padded[:len(user)] = user
    engine.reset(prefix)
    model_audio = np.concatenate([engine.step(padded[i * frame:(i + 1) * frame]) for i in range(n_frames)])
    model_audio = model_audio[engine.vocoder.cfg.lookahead_samples:]  # the vocoder's look-ahead, taken out
    rate_in, rate_out = engine.listener.cfg.audio.sample_rate, engine.model.cfg.audio.sample_rate
    user_out = prepare_waveform(padded, rate_in, rate_out) if rate_in != rate_out else padded
    both = np.zeros((2, len(user_out)), dtype=np.float32)
    both[0] = user_out
    both[1, :len(model_audio)] = model_audio[:len(user_out)]
    decode = engine.tokenizer.decode
    timeline = {
        "frame_seconds": FRAME_SECONDS, "frames": len(engine.log),
        "user_said": engine.said("user"), "model_said": engine.said("model"),
        "log": [{"frame": r.index, "user": decode([r.user_token]), "model": decode([r.model_token]),
                 "seconds": {k: round(v, 6) for k, v in r.seconds.items()}} for r in engine.log],
    }
    return both, timeline
