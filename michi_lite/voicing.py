"""Voicing a text stream as it comes: the acoustic model says the duplex model's words, 80 ms at a time.

The speech model's own speaking head does not speak intelligibly yet
(``data/speaker/README.md``); the acoustic model does, from phonemes and how
long each lasts (``michi_lite.acoustic``). ``AcousticVoice`` puts it on the
frame clock behind any text stream:

1. **words**: the stream's tokens are gathered into words. A word is whole
   when a token with a leading space starts the next one, or when a frame
   passes with no token (a word's tokens come on consecutive frames, as
   joint training lays them out).
2. **columns**: each whole word's phonemes (espeak-ng's, a pause after a
   clause's last word) and their durations (the acoustic model's duration
   predictor, reading the phonemes before them; a word's last phonemes are
   predicted again when the next word comes, unless the voice has reached
   them) are laid on a stream of 10 ms mel columns.
3. **patches**: each frame the next eight columns are voiced: the acoustic
   model's convolutions over the columns around them (those of the columns
   before are kept from earlier frames), its attention over as many columns
   back as it reads, then its speaking head. Columns not laid yet count as
   the utterance's end, as they do at the end of a sentence that ``say``
   speaks whole; with every word laid before it is voiced, the patches are
   ``AcousticModel.speak``'s.

Timing: a turn's voice starts ``delay_frames`` after its first token (the
speech model's audio runs ``text_lead_frames`` behind its text, as it was
trained) and then keeps the acoustic model's durations. When the voice
catches up with the text, it pauses until the next word is whole (the pause
grows a frame at a time; after ``MAX_PAUSE_FRAMES`` the voice falls silent
and the next word starts afresh). ``end`` (the text stream's
``<|im_end|>``: the turn is over, or cut short) finishes the word being said
and any that would start within ``delay_frames``, drops the rest, and closes
with a pause.

A voice cannot speak faster than its durations, and a text stream can run
ahead of it (a model that was not trained to pace its words does: one token
a frame). ``admits`` tells the engine to keep a word back while the voice is
more than ``MAX_LAG_FRAMES`` behind the text; the engine feeds PAD instead,
so the text stream waits for the voice and the two never drift apart.

What it keeps has a fixed size: the convolutions' result for the columns
its attention reaches back to, the phonemes from a little before the voice
to at most ``MAX_LAG_FRAMES`` and a word ahead of it, and those the
duration predictor reads.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch

from .acoustic import SAMPLING_TEMPERATURE, AcousticModel, phoneme_stream
from .audio import SILENCE_MEL
from .data.phonemes import PAD_PHONEME, chunk_phonemes, phoneme_id

CLAUSE_ENDS = frozenset(",.!?;:")  # a word ending so ends a clause: a pause after it, as ``sentence_phonemes`` has
DURATION_REACH = 3  # phonemes on either side that a phoneme's predicted duration reads (three convolutions of 3)
CONTEXT_PHONEMES = 2 * DURATION_REACH  # phonemes before a word that the duration predictor reads with it
MAX_PAUSE_FRAMES = 6  # a pause this long between words ends the utterance: the next word starts a new one
MAX_LAG_FRAMES = 8  # the voice's most frames laid and not yet voiced before a new word is held back (640 ms)
MAX_WORD_PHONEMES = 48  # a longer word (a long number, a run of symbols) is cut: its end is rarely reached
MAX_WORD_CHARACTERS = 64  # tokens with no space between them are laid as a word once this long


def word_phoneme_ids(word: str) -> list[int]:
    """A word's phoneme ids as the acoustic model reads them, a pause after a clause's end ([] if silent)."""
    ids = [phoneme_id(name) for name in chunk_phonemes(word)[:MAX_WORD_PHONEMES]]
    return ids + [PAD_PHONEME] if ids and word.rstrip()[-1:] in CLAUSE_ENDS else ids


class AcousticVoice:
    """The acoustic model speaking a text stream in one voice, a frame at a time.

    Each frame: ``token`` with the text of the stream's token if it said one
    (and ``admits`` it: else the engine holds it back), or ``end`` for its
    end of a turn, then ``next_patch`` for the frame's normalised log-mel
    patch (patch_dim,). ``voice`` is the acoustic model's voice vector
    (1, width) (``AcousticModel.voice``).
    """

    def __init__(self, model: AcousticModel, voice: torch.Tensor, steps: int = 4, delay_frames: int = 2,
                 generator: torch.Generator | None = None, temperature: float = SAMPLING_TEMPERATURE) -> None:
        if steps < 0:
            raise ValueError(f"steps must be 0 (the regressed mel) or more, not {steps}")
        self.model, self.voice, self.steps, self.delay_frames = model.eval(), voice, steps, delay_frames
        self.generator, self.temperature = generator, temperature
        cfg = model.cfg
        self.per_frame = cfg.audio.mels_per_frame
        self.reach = cfg.attention_layers * (cfg.window - 1)  # columns back that a column's attention reads
        if self.reach < cfg.lookahead_columns:
            raise ValueError("the acoustic model's attention must look back further than its convolutions ahead")
        self.silence = torch.full((cfg.patch_dim,), SILENCE_MEL, device=voice.device)
        self.pending = ""  # the word whose tokens are coming
        self.token_said = False  # whether this frame's token came
        self.sounding = False  # whether the last patch voiced a phoneme (not a pause, not silence)
        self.wait: int | None = None  # frames until a new turn's voice starts
        self._clear()

    def _clear(self) -> None:
        """An empty stream: nothing laid, nothing to say."""
        self.phonemes: list[int] = []
        self.durations: list[int] = []  # columns of each phoneme
        self.first_column = 0  # the column ``phonemes[0]`` starts on (earlier ones are let go)
        self.column = 0  # the next column to voice
        self.word_firsts: list[int] = []  # each word's first phoneme, as an index into ``phonemes``
        self.settled = 0  # the phonemes before this index keep their durations (given, or an opening pause)
        self.paused = 0  # frames the voice has waited for the next word
        self.closed = False  # whether the utterance has ended (``end``)
        self.words: deque[str] = deque(maxlen=64)  # the utterance's words laid (its last 64), for a log or a test
        self.convolved: torch.Tensor | None = None  # ``AcousticModel.convolved`` of columns convolved_from on
        self.convolved_from = 0

    @property
    def laid_to(self) -> int:
        """The column after the last one laid."""
        return self.first_column + sum(self.durations)

    @property
    def word_starts(self) -> list[int]:
        """The column each word still kept starts on."""
        starts = np.cumsum([self.first_column] + self.durations)
        return [int(starts[i]) for i in self.word_firsts]

    @property
    def lag_frames(self) -> float:
        """Frames laid and not yet voiced."""
        return (self.laid_to - self.column) / self.per_frame

    def admits(self, text: str) -> bool:
        """Whether the voice takes a token of ``text`` now. One that starts a word waits while the voice is
        more than ``MAX_LAG_FRAMES`` behind; the word before it is whole either way, and is laid first."""
        self.lay_pending_before(text)
        return bool(self.pending.strip()) or self.lag_frames <= MAX_LAG_FRAMES

    def token(self, text: str) -> None:
        """The text stream said a token (its text, a leading space where it starts a word)."""
        if not self.phonemes and not self.pending.strip() and self.wait is None:  # a new utterance
            self.wait = self.delay_frames
        self.lay_pending_before(text)
        self.pending += text
        self.token_said = True

    def lay_pending_before(self, text: str) -> None:
        """The word being gathered is whole if a token of ``text`` starts the next (or it has grown too long):
        lay it."""
        if text[:1].isspace() or len(self.pending) > MAX_WORD_CHARACTERS:
            self.lay_pending()

    def lay_pending(self) -> None:
        """Lay the word being gathered, if there is one, and start gathering the next."""
        if self.pending.strip():
            self.lay(self.pending)
        self.pending = ""

    def end(self) -> None:
        """The turn is over: the word being voiced, and those starting within ``delay_frames``, are said."""
        self.lay_pending()  # a voice still waiting to start keeps its delay
        if not self.phonemes:
            return
        keep = self.column + self.delay_frames * self.per_frame
        dropped = [k for k, start in enumerate(self.word_starts) if start > keep]
        if dropped:
            cut = self.word_firsts[dropped[0]]
            del self.phonemes[cut:], self.durations[cut:], self.word_firsts[dropped[0]:]
            for _ in dropped[:len(self.words)]:
                self.words.pop()
        if self.phonemes[-1] != PAD_PHONEME:
            self.phonemes.append(PAD_PHONEME)
            self.durations.append(0)
        self.durations[-1] = max(self.durations[-1], self.per_frame)
        self.durations[-1] += -self.laid_to % self.per_frame  # the stream ends on a frame's edge
        self.closed = True

    def lay(self, word: str, phonemes: list[int] | None = None, durations: list[int] | None = None) -> None:
        """Lay a whole word on the stream: its phonemes (``word_phoneme_ids`` unless given) and their columns
        (the duration predictor's unless given); a new utterance starts with a pause of at most a frame."""
        phonemes = word_phoneme_ids(word) if phonemes is None else phonemes
        if not phonemes:
            return
        starting = not self.phonemes
        if starting and phonemes[0] != PAD_PHONEME:
            phonemes = [PAD_PHONEME] + phonemes
            durations = None if durations is None else [self.per_frame] + durations
        given = durations is not None
        if not given:
            context = self.phonemes[-CONTEXT_PHONEMES:]
            with torch.inference_mode():
                ids = torch.tensor([context + phonemes], device=self.voice.device)
                predicted = self.model.durations.columns(ids, self.voice)[0].tolist()
            durations = predicted[len(context):]
            if starting:
                durations[0] = min(durations[0], self.per_frame)
            self.reconsider(predicted[max(0, len(context) - DURATION_REACH):len(context)])
        if len(durations) != len(phonemes):
            raise ValueError(f"{len(phonemes)} phonemes and {len(durations)} durations")
        self.word_firsts.append(len(self.phonemes))
        self.phonemes += phonemes
        self.durations += durations
        if given or starting:
            self.settled = len(self.phonemes) if given else len(self.phonemes) - len(phonemes) + 1
        self.words.append(word.strip())
        self.paused, self.closed = 0, False

    def reconsider(self, durations: list[int]) -> None:
        """The last ``DURATION_REACH`` phonemes' durations predicted again, now with the next word in view:
        those the voice has not reached take them, unless ``settled``. A phoneme's duration is final once as
        many phonemes follow it as the predictor reads, as ``speak``'s is."""
        first = len(self.phonemes) - len(durations)
        start = self.laid_to - sum(self.durations[first:])
        for i, duration in enumerate(durations, first):
            if start >= self.column and i >= self.settled:
                self.durations[i] = duration
            start += self.durations[i]

    @torch.inference_mode()
    def next_patch(self) -> torch.Tensor:
        """This frame's patch (patch_dim,): the next eight columns voiced, a pause, or silence."""
        if not self.token_said:  # a frame with no token: the word is whole
            self.lay_pending()
        self.token_said, self.sounding = False, False
        if self.wait:
            self.wait -= 1
            return self.silence
        self.wait = None
        if self.laid_to - self.column < self.per_frame:
            if not self.phonemes or self.closed or self.paused >= MAX_PAUSE_FRAMES:
                self._clear()  # nothing to say: silence, and the next word starts an utterance
                return self.silence
            self.pause()
        patch = self.voiced(self.column)
        self.column += self.per_frame
        self.let_go()
        return patch

    def pause(self) -> None:
        """The next word is not out yet: the stream pauses to the next frame's end."""
        if self.phonemes[-1] != PAD_PHONEME:
            self.phonemes.append(PAD_PHONEME)
            self.durations.append(0)
        self.durations[-1] += self.column + self.per_frame - self.laid_to
        self.paused += 1

    def voiced(self, column: int) -> torch.Tensor:
        """The patch of the frame starting at ``column`` (patch_dim,), from the columns laid around it.

        The convolutions run over the frame's columns and the
        ``lookahead_columns`` before it (whose look-ahead reached into this
        frame, maybe before it was laid), reading as many around them; the
        columns before keep what the convolutions made of them. The attention
        then runs over the ``reach`` columns up to the frame's last.
        """
        model, cfg = self.model, self.model.cfg
        ahead, end = cfg.lookahead_columns, column + self.per_frame
        ids, since, until = phoneme_stream(torch.tensor(self.phonemes), torch.tensor(self.durations), cfg.max_count)
        self.sounding = bool((ids[column - self.first_column:end - self.first_column] != PAD_PHONEME).any())
        low = max(self.first_column, column - 2 * ahead)
        high = min(self.laid_to, end + ahead)
        window = slice(low - self.first_column, high - self.first_column)
        device = self.voice.device
        fresh = model.convolved(ids[window][None].to(device), since[window][None].to(device),
                                until[window][None].to(device), self.voice)
        valid = low + ahead if low > 0 else 0  # the first column whose convolution read no made-up edge
        fresh = fresh[:, valid - low:]
        if self.convolved is None:
            self.convolved, self.convolved_from = fresh, valid
        else:
            self.convolved = torch.cat([self.convolved[:, :valid - self.convolved_from], fresh], dim=1)
        start = max(self.convolved_from, column - self.reach)
        hidden = model.attended(self.convolved[:, start - self.convolved_from:end - self.convolved_from],
                                last=self.per_frame)  # (1, 8, width)
        keep = max(self.convolved_from, end - self.reach)  # what the next frame's attention reads
        self.convolved, self.convolved_from = self.convolved[:, keep - self.convolved_from:], keep
        prior = model.prior(model.mel(hidden))[0]  # (1, patch_dim)
        if self.steps == 0:
            return prior[0]
        condition = model.condition(hidden)[0]
        prior = prior if cfg.flow_prior else None
        return model.speaking_head.sample(condition, self.steps, self.generator, self.temperature, prior)[0]

    def let_go(self) -> None:
        """Forget the phonemes that end before the next frame's convolutions read."""
        start = self.column - 2 * self.model.cfg.lookahead_columns
        while len(self.phonemes) > 1 and self.first_column + self.durations[0] <= start:
            self.first_column += self.durations.pop(0)
            self.phonemes.pop(0)
            self.word_firsts = [i - 1 for i in self.word_firsts if i > 0]
            self.settled = max(0, self.settled - 1)
