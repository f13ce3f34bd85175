"""The files inference loads: safetensors of one model's weights, its preset and its config.

Every model module saves and loads its weights through these (``save_vocoder``,
``load_listener``, ...), so inference needs no trainer: ``write_weights``
writes atomically, ``read_weights`` refuses a missing, foreign, truncated or
other-preset file with an error naming it, ``saved_config`` reads the config
the file was saved with, and ``fitting_weights`` turns tensors that do not fit
today's module into the same kind of error. ``load_shaped_weights`` is all of
them for a model whose config is its shape.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

# the reference weights committed with the project (a source checkout's data/)
REFERENCE_DATA = Path(__file__).resolve().parent.parent / "data"
REFERENCE_LISTENER = REFERENCE_DATA / "listener" / "lite_listener.safetensors"
REFERENCE_VOCODER = REFERENCE_DATA / "vocoder" / "lite_vocoder.safetensors"
REFERENCE_VOICE = REFERENCE_DATA / "speaker" / "voice_prompt.flac"
REFERENCE_ACOUSTIC = REFERENCE_DATA / "acoustic" / "lite_acoustic.safetensors"
REFERENCE_ACOUSTIC_VOICE = REFERENCE_DATA / "acoustic" / "voice_prompt.flac"
REFERENCE_ALIGNER = REFERENCE_DATA / "aligner" / "lite_aligner.safetensors"
REFERENCE_SPEAKER = REFERENCE_DATA / "speaker" / "lite_speaker.safetensors"
REFERENCE_JOINT = REFERENCE_DATA / "joint" / "lite_joint.safetensors"  # an adapter stacked on REFERENCE_SPEAKER
REFERENCE_CONVERSATION = REFERENCE_DATA / "duplex" / "demo_user.flac"  # a held-out user's side, for the demo


def write_weights(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Safetensors with string metadata, written to a temporary name and renamed: a reader never sees half, and
    processes writing the same file (each its own temporary name) leave one of theirs whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk or a kill: no half-written file left beside
        raise
    return path


def weights_file(path: str | os.PathLike, what: str) -> Path:
    """The file of a ``what``'s weights: ``path`` itself, or ``{what}.safetensors`` in a run's directory.

    A missing file raises FileNotFoundError.
    """
    path = Path(path)
    if path.is_dir():
        path = path / f"{what}.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {what} checkpoint here")
    return path


def file_digest(path: str | os.PathLike) -> str:
    """A file's SHA-256, hex: what names the exact weights another file builds on."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_weights(path: str | os.PathLike, what: str, file_format: str | tuple[str, ...],
                 preset: str) -> tuple[Path, dict, dict]:
    """Open a ``write_weights`` file of a ``what`` (or the run directory holding ``{what}.safetensors``), of
    ``file_format`` (or one of several).

    Returns (path, metadata, tensors). A missing file raises
    FileNotFoundError; a foreign or truncated one, or weights made for
    another preset, ValueError saying which. The file is only read.
    """
    path = weights_file(path, what)
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as error:  # safetensors raises its own error types for a truncated or foreign file
        raise ValueError(f"{path}: not a michi_lite {what} checkpoint ({error})") from error
    if metadata.get("format") not in ((file_format,) if isinstance(file_format, str) else file_format):
        raise ValueError(f"{path}: not a michi_lite {what} checkpoint (format {metadata.get('format')!r})")
    if metadata.get("preset") != preset:
        raise ValueError(f"{path}: this {what} was trained for preset {metadata.get('preset')!r}, but preset "
                         f"{preset!r} was asked for; pass --preset {metadata.get('preset')}")
    return path, metadata, tensors


def saved_config(path: Path, metadata: dict, what: str) -> dict:
    """The config a ``read_weights`` file was saved with; ValueError if it has none that reads as a JSON object."""
    try:
        config = json.loads(metadata["config"])
    except (KeyError, json.JSONDecodeError):
        config = None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: not a michi_lite {what} checkpoint (no readable config)")
    return config


@contextmanager
def fitting_weights(path: Path, what: str) -> Iterator[None]:
    """Around loading a file's tensors into a module: tensors that do not fit it raise ValueError naming the file.

    Torch says so with a RuntimeError of many lines, a loader's own checks
    with a KeyError or ValueError. A file with today's config but other
    tensors was made by other code, or damaged.
    """
    try:
        yield
    except (RuntimeError, KeyError, ValueError) as error:
        reason = " ".join(str(error).split())[:200]
        raise ValueError(f"{path}: its tensors do not fit a {what} of today's code ({reason})") from error


def load_shaped_weights(model: nn.Module, path: str | os.PathLike, what: str, file_format: str,
                        preset: str) -> nn.Module:
    """``model`` (with a ``cfg``) given a ``write_weights`` file's tensors, once the file's config is its shape.

    Raises as ``read_weights`` does, and ValueError for another shape or
    tensors that do not fit.
    """
    path, metadata, tensors = read_weights(path, what, file_format, preset)
    if saved_config(path, metadata, what) != json.loads(json.dumps(model.cfg.to_dict())):
        raise ValueError(f"{path}: this {what} has another shape than preset {preset!r} now has")
    with fitting_weights(path, what):
        model.load_state_dict({k: v.float() for k, v in tensors.items()})
    return model
