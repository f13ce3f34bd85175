"""Fuzzing what comes in from outside: audio files, manifests, checkpoints.

Whatever a file holds, its loader either returns what it promises or raises
its documented error (``AudioError``; ValueError naming the manifest line;
ValueError or FileNotFoundError naming the checkpoint), and leaves the file
as it was.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from michi_lite.audio import AudioError, load_audio
from michi_lite.data.corpus import CORPUS_FIELDS, load_eval_manifest, load_manifest

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# --- audio ---------------------------------------------------------------------------------

PCM = {"int16": "PCM_16", "int32": "PCM_32", "float32": "FLOAT", "float64": "DOUBLE"}


@st.composite
def audio_files(draw) -> dict:
    """How to write an audio file: format, sample type, channels, rate, length, level, a poisoned sample, a cut."""
    file_format = draw(st.sampled_from(["WAV", "FLAC"]))
    dtype = draw(st.sampled_from(list(PCM) if file_format == "WAV" else ["int16"]))
    rate = draw(st.integers(1_000, 96_000 if file_format == "WAV" else 65_535))  # libsndfile writes FLAC to 64 kHz
    return {
        "format": file_format, "dtype": dtype, "rate": rate, "channels": draw(st.integers(1, 3)),
        "frames": draw(st.integers(0, 2 * rate)), "level": draw(st.floats(0, 2.5)),
        "poison": draw(st.sampled_from([None, math.nan, math.inf, -math.inf])) if dtype.startswith("float") else None,
        "cut": draw(st.none() | st.floats(0, 1, exclude_max=True)), "seed": draw(st.integers(0, 2**32 - 1)),
    }


def write_audio(path, spec: dict) -> None:
    rng = np.random.default_rng(spec["seed"])
    wave = rng.uniform(-1, 1, (spec["frames"], spec["channels"])) * spec["level"]
    if spec["dtype"].startswith("int"):
        full = np.iinfo(spec["dtype"]).max
        wave = (np.clip(wave, -1, 1) * full).astype(spec["dtype"])
    else:
        wave = wave.astype(spec["dtype"])
        if spec["poison"] is not None and spec["frames"]:
            wave[rng.integers(spec["frames"]), rng.integers(spec["channels"])] = spec["poison"]
    sf.write(str(path), wave, spec["rate"], subtype=PCM[spec["dtype"]], format=spec["format"])
    if spec["cut"] is not None:
        path.write_bytes(path.read_bytes()[:int(spec["cut"] * path.stat().st_size)])


@FUZZ
@given(spec=audio_files(), sample_rate=st.sampled_from([16_000, 24_000]))
def test_load_audio_gives_clean_mono_at_the_rate_asked_or_an_audio_error(tmp_path, spec, sample_rate):
    path = tmp_path / f"clip.{spec['format'].lower()}"
    write_audio(path, spec)
    before = path.read_bytes()
    try:
        wave = load_audio(path, sample_rate)
    except AudioError as error:
        assert str(path) in str(error)
    else:
        assert wave.dtype == np.float32 and wave.ndim == 1 and wave.flags.c_contiguous
        assert np.isfinite(wave).all() and 0 < np.abs(wave).max() <= 1
        assert spec["poison"] is None or spec["cut"] is not None  # a NaN or inf sample is never let through
        if spec["cut"] is None:
            assert abs(len(wave) - spec["frames"] * sample_rate / spec["rate"]) <= 1
    assert path.read_bytes() == before


# --- manifests -----------------------------------------------------------------------------


def record(i: int) -> dict:
    """A manifest line as ``data build`` writes it."""
    words = [{"word": "hello", "start": 0.1, "end": 0.5}, {"word": "there", "start": 0.6, "end": 0.9}]
    return {"id": f"{i:06d}-v", "path": f"audio/{i}.flac", "text": "Hello there.", "voice": f"v{i % 2}",
            "speaker": f"s{i % 2}", "engine": "espeak", "sample_rate": 16_000, "duration": 1.0,
            "split": ["train", "test", "test", "val"][i % 4], "voice_split": "seen", "category": "plain",
            "alignment": "engine", "words": words, "phonemes": [["h", 0.0, 0.2], ["@", 0.2, 1.0]]}


RECORDS = [record(i) for i in range(6)]
NUMBERS = st.integers() | st.floats() | st.just(10**400)  # json reads NaN, Infinity and too big for a float
JSON_VALUES = st.recursive(st.none() | st.booleans() | NUMBERS | st.text(max_size=10),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                       max_size=3),
                           max_leaves=6)


@st.composite
def manifests(draw) -> bytes:
    """A built manifest, cut short, a field's value swapped for any JSON, a field dropped or a line replaced."""
    lines = [json.dumps(r) for r in RECORDS]
    change = draw(st.sampled_from(["cut", "value", "drop", "line"]))
    i = draw(st.integers(0, len(lines) - 1))
    field = draw(st.sampled_from(sorted(RECORDS[i])))
    if change == "value":
        lines[i] = json.dumps({**RECORDS[i], field: draw(JSON_VALUES)})
    elif change == "drop":
        lines[i] = json.dumps({k: v for k, v in RECORDS[i].items() if k != field})
    elif change == "line":
        lines[i] = draw(st.text(max_size=30) | JSON_VALUES.map(json.dumps))
    text = ("\n".join(lines) + "\n").encode()
    return text[:draw(st.integers(0, len(text)))] if change == "cut" else text


@FUZZ
@given(text=manifests())
def test_a_mangled_manifest_reads_whole_or_is_refused_naming_its_line(tmp_path, text):
    path = tmp_path / "manifest.jsonl"
    path.write_bytes(text)
    for load, needed in ((load_manifest, CORPUS_FIELDS), (load_eval_manifest, ("path", "text", "voice", "split"))):
        try:
            records = load(tmp_path)
        except ValueError as error:
            assert f"{path} line " in str(error)
        else:
            assert all(isinstance(r, dict) and set(needed) <= set(r) for r in records)
            assert all(isinstance(r["text"], str) and isinstance(r["path"], str) for r in records)
        assert path.read_bytes() == text


@FUZZ
@given(cut=st.integers(0, 2_000))
def test_a_manifest_cut_short_keeps_its_whole_lines_or_is_refused_naming_the_cut_one(tmp_path, cut):
    path = tmp_path / "manifest.jsonl"
    text = "".join(json.dumps(r) + "\n" for r in RECORDS).encode()[:cut]
    path.write_bytes(text)
    whole_lines, rest = text.count(b"\n"), text.split(b"\n")[-1]
    if not rest or rest == json.dumps(RECORDS[whole_lines]).encode():  # cut at a line's end, or before its newline
        assert load_manifest(tmp_path) == RECORDS[:whole_lines + bool(rest)]
    else:
        with pytest.raises(ValueError, match=f"line {whole_lines + 1}: not a JSON object"):
            load_manifest(tmp_path)


# --- checkpoints ---------------------------------------------------------------------------

STAGES = ("vocoder", "listener", "speaker", "acoustic", "aligner")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tokenizer):
    """A real tiny file of every stage (random weights: the format is what matters) and its loader."""
    from michi_lite.acoustic import AcousticModel, acoustic_config, load_acoustic, save_acoustic
    from michi_lite.aligner import PhonemeClassifier, aligner_config, load_aligner, save_aligner
    from michi_lite.listen import build_listener, load_listener, save_listener
    from michi_lite.model import build_speech_model, load_speaker, save_speaker
    from michi_lite.vocoder import HiFiGANGenerator, load_vocoder, save_vocoder, vocoder_config

    out = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    files = {
        "vocoder": save_vocoder(out / "vocoder.safetensors", HiFiGANGenerator(vocoder_config("tiny")), "tiny"),
        "listener": save_listener(out / "listener.safetensors", build_listener("tiny", len(tokenizer)), "tiny"),
        "speaker": save_speaker(out / "speaker.safetensors", build_speech_model("tiny", tokenizer), "tiny"),
        "acoustic": save_acoustic(out / "acoustic.safetensors", AcousticModel(acoustic_config("tiny")), "tiny"),
        "aligner": save_aligner(out / "aligner.safetensors", PhonemeClassifier(aligner_config("tiny")), "tiny"),
    }
    loaders = {
        "vocoder": load_vocoder, "acoustic": load_acoustic, "aligner": load_aligner,
        "listener": lambda path, preset: load_listener(path, preset, len(tokenizer)),
        "speaker": lambda path, preset: load_speaker(path, preset, tokenizer),
    }
    return files, loaders


def assert_refused(load, path, preset: str = "tiny", may_load: bool = False) -> None:
    """``load`` raises ValueError or FileNotFoundError naming the file (or loads it, if it ``may_load``).

    Either way the file is as it was.
    """
    before = path.read_bytes() if path.is_file() else None
    try:
        load(path, preset)
    except (ValueError, FileNotFoundError) as error:
        assert path.name in str(error)
    else:
        assert may_load, f"{path} loaded"
    assert (path.read_bytes() if path.is_file() else None) == before


@pytest.mark.parametrize("stage", STAGES)
@settings(FUZZ, max_examples=20)
@given(damage=st.sampled_from(["cut", "bytes", "header", "other", "preset", "none"]), data=st.data())
def test_a_damaged_foreign_or_misplaced_checkpoint_is_refused_naming_it(checkpoints, tmp_path, stage, damage, data):
    files, loaders = checkpoints
    good = files[stage].read_bytes()
    path = tmp_path / f"{stage}.safetensors"
    preset = "tiny"
    if damage == "cut":
        path.write_bytes(good[:data.draw(st.integers(0, len(good) - 1))])
    elif damage == "bytes":
        path.write_bytes(data.draw(st.binary(max_size=1_000)))
    elif damage == "header":  # a byte of the length or of the JSON header changed
        header = 8 + int.from_bytes(good[:8], "little")
        at, byte = data.draw(st.integers(0, header - 1)), data.draw(st.integers(0, 255))
        path.write_bytes(good[:at] + bytes([byte]) + good[at + 1:])
    elif damage == "other":
        path.write_bytes(files[data.draw(st.sampled_from([s for s in STAGES if s != stage]))].read_bytes())
    elif damage == "preset":
        path.write_bytes(good)
        preset = data.draw(st.sampled_from(["lite", "michi"]))
    else:  # no file at all
        path = tmp_path / "nowhere" / path.name
    # a changed header byte may leave a header that says the same (the byte it was, or other whitespace
    # for a space that pads it): such a file may load
    assert_refused(loaders[stage], path, preset, may_load=damage == "header")


def rewritten(path, out, metadata: dict | None = None, drop: str | None = None, reshape: str | None = None):
    """A copy of a checkpoint with other metadata, a tensor left out or a tensor of another shape."""
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        metadata = metadata if metadata is not None else f.metadata()
    if drop:
        del tensors[drop]
    if reshape:
        tensors[reshape] = torch.zeros(tensors[reshape].numel() + 1)
    save_file(tensors, str(out), metadata=metadata)
    return out


@FUZZ
@given(stage=st.sampled_from(STAGES), change=st.sampled_from(["no config", "config", "format"]),
       config=st.sampled_from(["{", "[]", "3", '"tiny"', "null"]))
def test_a_checkpoint_with_other_metadata_is_refused_naming_it(checkpoints, tmp_path, stage, change, config):
    files, loaders = checkpoints
    with safe_open(str(files[stage]), framework="pt") as f:
        metadata = dict(f.metadata())
    if change == "no config":
        del metadata["config"]
    elif change == "config":
        metadata["config"] = config
    else:
        metadata["format"] = config
    assert_refused(loaders[stage], rewritten(files[stage], tmp_path / f"{stage}.safetensors", metadata))


@pytest.mark.parametrize("stage", STAGES)
def test_a_checkpoint_whose_tensors_do_not_fit_is_refused_naming_it(checkpoints, tmp_path, stage):
    """A tensor of each module (the speaker's adapters too) left out, or of another shape."""
    files, loaders = checkpoints
    first_of_each_module = {}
    for name in sorted(load_file(str(files[stage]))):
        first_of_each_module.setdefault(name.split(".")[0], name)
    for name in first_of_each_module.values():
        for change in ("drop", "reshape"):
            out = rewritten(files[stage], tmp_path / f"{stage}.safetensors", **{change: name})
            assert_refused(loaders[stage], out)
