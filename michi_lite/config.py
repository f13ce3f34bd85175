"""Presets: one dataclass tree, three named configurations.

Every entry point takes ``--preset {tiny,lite,michi}`` and reads everything
else from here. ``tiny`` runs the tests in seconds on 2 CPU cores, ``lite``
is the learner's model (SmolLM2-135M + Whisper tiny.en, 16 kHz) and ``michi``
is MichiAI's scale (SmolLM-360M, 24 kHz).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

FRAME_SECONDS = 0.08  # one frame of the model's clock: 80 ms, 12.5 Hz


@dataclass(frozen=True)
class AudioConfig:
    sample_rate: int = 16_000
    hop_length: int = 160  # mel hop in samples: 10 ms at 16 kHz
    n_fft: int = 1024
    win_length: int = 640
    n_mels: int = 80
    f_min: float = 0.0
    f_max: float | None = 8_000.0

    @property
    def samples_per_frame(self) -> int:
        return round(self.sample_rate * FRAME_SECONDS)

    @property
    def mels_per_frame(self) -> int:
        return self.samples_per_frame // self.hop_length


@dataclass(frozen=True)
class BackboneConfig:
    hub_id: str | None  # None: a randomly initialised Llama of the shape below
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 128
    num_kv_heads: int | None = None  # grouped-query attention's key/value heads (None: as many as num_heads)


@dataclass(frozen=True)
class ListenerConfig:
    whisper: str | None  # None: a randomly initialised small encoder


TURNS = ("voice", "engine")


@dataclass(frozen=True)
class CorpusConfig:
    """What ``michi-lite data build`` makes for this preset."""

    min_hours: float  # the builder keeps adding sentences until it has this much audio
    max_utterances: int  # and never more than this many utterances
    seen_voices: int  # voice identities heard in train, val and test
    unseen_voices: int  # voice identities kept out of train and val entirely
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    whisper_sample: int = 100  # utterances per engine also aligned by Whisper, for the comparison
    seed: int = 0
    turns: str = "voice"  # train and val sentences go round the seen voices, or round the engines ("engine")

    def __post_init__(self) -> None:
        if self.turns not in TURNS:
            raise ValueError(f"corpus turns must be one of {', '.join(TURNS)}, not {self.turns!r}")


ANSWER_SOURCES = ("llm", "templates")


@dataclass(frozen=True)
class DialogueConfig:
    """What ``michi-lite data dialogues`` makes for this preset: two-party conversations, user and assistant."""

    hours: float  # dialogues are added until there is this much conversation (0: max_dialogues decides)
    max_dialogues: int  # and never more than this many
    min_exchanges: int  # user turns per dialogue (each answered by the assistant), drawn from min to max
    max_exchanges: int
    seen_user_voices: int  # user voice identities heard in train, val and test dialogues
    unseen_user_voices: int  # user voice identities kept out of train and val entirely
    # who writes the assistant's answers: SmolLM2-135M-Instruct ("llm": the lite build, 3 hours of dialogue,
    # took 68 minutes on one core) or the fact base's own answers ("templates", instant and deterministic)
    answers: str = "llm"
    assistant_voice: str = "flite-awb"  # the one voice the assistant speaks in (see data.dialogues)
    user_engines: tuple[str, ...] = ()  # the engines whose voices play the user; () for every installed one
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        if self.answers not in ANSWER_SOURCES:
            raise ValueError(f"dialogue answers must be one of {', '.join(ANSWER_SOURCES)}, not {self.answers!r}")
        if not 1 <= self.min_exchanges <= self.max_exchanges:
            raise ValueError(f"dialogue exchanges must satisfy 1 <= min <= max, not "
                             f"{self.min_exchanges}..{self.max_exchanges}")


@dataclass(frozen=True)
class Config:
    name: str
    audio: AudioConfig
    backbone: BackboneConfig
    listener: ListenerConfig
    corpus: CorpusConfig
    dialogues: DialogueConfig


PRESETS: dict[str, Config] = {
    "tiny": Config(
        name="tiny",
        audio=AudioConfig(),
        backbone=BackboneConfig(hub_id=None),
        listener=ListenerConfig(whisper=None),
        corpus=CorpusConfig(
            min_hours=0.0, max_utterances=24, seen_voices=4, unseen_voices=1,
            val_fraction=0.15, test_fraction=0.15, whisper_sample=2,
        ),
        # engines with their own word timings only, so no Whisper loads: the whole build takes seconds
        dialogues=DialogueConfig(
            hours=0.0, max_dialogues=8, min_exchanges=3, max_exchanges=4, seen_user_voices=4, unseen_user_voices=1,
            answers="templates", user_engines=("espeak", "flite", "festival"), val_fraction=0.15, test_fraction=0.25,
        ),
    ),
    "lite": Config(
        name="lite",
        audio=AudioConfig(),
        backbone=BackboneConfig(
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            hidden_size=576, num_layers=30, num_heads=9, intermediate_size=1536, num_kv_heads=3,
        ),
        listener=ListenerConfig(whisper="tiny.en"),
        corpus=CorpusConfig(min_hours=10.0, max_utterances=40_000, seen_voices=36, unseen_voices=6),
        dialogues=DialogueConfig(hours=3.0, max_dialogues=20_000, min_exchanges=4, max_exchanges=8,
                                 seen_user_voices=36, unseen_user_voices=6),
    ),
    "michi": Config(
        name="michi",
        audio=AudioConfig(sample_rate=24_000, hop_length=240, n_fft=1024, win_length=960,
                          n_mels=100, f_max=12_000.0),
        backbone=BackboneConfig(
            hub_id="HuggingFaceTB/SmolLM-360M",
            hidden_size=960, num_layers=32, num_heads=15, intermediate_size=2560, num_kv_heads=5,
        ),
        listener=ListenerConfig(whisper="base.en"),
        corpus=CorpusConfig(min_hours=100.0, max_utterances=400_000, seen_voices=80, unseen_voices=8),
        dialogues=DialogueConfig(hours=30.0, max_dialogues=200_000, min_exchanges=4, max_exchanges=10,
                                 seen_user_voices=80, unseen_user_voices=8),
    ),
}


def get_config(preset: str, **overrides) -> Config:
    """The named preset, with top-level fields replaced by ``overrides``."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[preset], **overrides)
