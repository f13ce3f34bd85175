"""LibriTTS-R rows become manifest records and 16 kHz files; without the hub it fails fast and clearly."""

from __future__ import annotations

import io
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from michi_lite.backbone import hub_is_reachable
from michi_lite.data.libritts import LibriTTSUnavailable, load_libritts_r

HUB_RATE = 24_000  # LibriTTS-R's own rate
SECONDS = 0.3


def _wav_bytes(waveform: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, waveform, HUB_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def _hub_like_rows(n: int = 3, seconds: float = SECONDS) -> list[dict]:
    """Rows in the hub's schema: a tone or noise per utterance, stored as wav file bytes."""
    rng = np.random.default_rng(0)
    t = np.arange(round(seconds * HUB_RATE)) / HUB_RATE
    rows = []
    for i in range(n):
        waveform = 0.3 * np.sin(2 * np.pi * 220 * (i + 1) * t) if i % 2 == 0 else 0.1 * rng.standard_normal(t.size)
        utterance = f"{19 + i}_198_000000_00000{i}"
        rows.append({
            "audio": {"bytes": _wav_bytes(waveform), "path": f"{utterance}.wav"},
            "text_normalized": f"Chapter {['one', 'two', 'three'][i % 3]} begins here.",
            "text_original": f"Chapter {i + 1} begins  here.",
            "speaker_id": str(19 + i),
            "path": f"{utterance}.wav",
            "chapter_id": "198",
            "id": utterance,
        })
    return rows


@pytest.fixture
def mini_parquet(tmp_path):
    """A three-row LibriTTS-R shard (about 40 KB), made fresh instead of committed."""
    path = tmp_path / "libritts_r_mini" / "dev.clean-00000-of-00001.parquet"
    path.parent.mkdir()
    pq.write_table(pa.Table.from_pylist(_hub_like_rows()), path)
    return path


def test_loader_writes_16khz_audio_and_fills_the_manifest_schema(tmp_path, mini_parquet):
    out = tmp_path / "corpus"
    records = load_libritts_r(out, 16_000, "train.clean.100", data_files=mini_parquet.parent, align=False)

    assert [r["id"] for r in records] == [
        "libritts-r-19_198_000000_000000", "libritts-r-20_198_000000_000001", "libritts-r-21_198_000000_000002",
    ]
    first = records[0]
    assert first == {
        "id": "libritts-r-19_198_000000_000000",
        "path": "audio/libritts-r-19_198_000000_000000.flac",
        "text": "Chapter 1 begins here.",  # text_original, whitespace tidied
        "voice": "libritts-r-19",
        "speaker": "libritts-r-19",
        "engine": "libritts-r",
        "sample_rate": 16_000,
        "duration": SECONDS,
        "split": "train",
        "voice_split": "seen",
        "category": "libritts",
        "alignment": "none",
        "words": [],
    }
    for record in records:
        info = sf.info(str(out / record["path"]))
        assert info.samplerate == 16_000 and info.channels == 1
        assert info.frames == round(SECONDS * 16_000)
    # a 220 Hz tone is still a 220 Hz tone after resampling
    tone, _ = sf.read(str(out / first["path"]))
    peak_hz = np.argmax(np.abs(np.fft.rfft(tone))) * 16_000 / len(tone)
    assert abs(peak_hz - 220) < 1 / SECONDS


def test_real_speech_rows_get_whisper_word_timings_and_frame_like_the_corpus(tmp_path, tokenizer):
    from michi_lite.data.engines import get_engine
    from michi_lite.data.frames import frame_tokens, text_from_grid
    from michi_lite.data.words import Word

    try:
        flite = get_engine("flite")
    except RuntimeError as missing:
        pytest.skip(str(missing))
    text = "The quick brown fox jumps over the lazy dog."
    speech = flite.synthesize(text, flite.voices()[1])
    row = _hub_like_rows(1)[0] | {"text_original": text}
    row["audio"] = {"array": speech.waveform, "sampling_rate": speech.sample_rate}

    [record] = load_libritts_r(tmp_path, 16_000, "test.clean", rows=[row])
    assert record["alignment"] == "whisper" and len(record["words"]) == 9
    words = [Word.from_dict(w) for w in record["words"]]
    assert text_from_grid(frame_tokens(record["text"], words, tokenizer), tokenizer) == text


def test_decoded_rows_from_a_dev_split_are_unseen_voices_and_long_ones_are_skipped(tmp_path):
    long, short = _hub_like_rows(1, seconds=1.0)[0], _hub_like_rows(2)[1]
    for row in (long, short):  # the decoded form that datasets' Audio feature gives
        waveform, rate = sf.read(io.BytesIO(row["audio"]["bytes"]), dtype="float32")
        row["audio"] = {"array": waveform, "sampling_rate": rate}

    records = load_libritts_r(tmp_path, 16_000, "dev.clean", rows=[long, short, short], max_seconds=0.5,
                              max_utterances=1, text_column="text_normalized", align=False)

    assert [(r["id"], r["split"], r["voice_split"]) for r in records] == [
        ("libritts-r-20_198_000000_000001", "val", "unseen"),
    ]
    assert records[0]["text"] == "Chapter two begins here."


def test_missing_local_copy_raises_libritts_unavailable(tmp_path):
    with pytest.raises(LibriTTSUnavailable, match="no parquet files"):
        load_libritts_r(tmp_path, 16_000, data_files=tmp_path / "nowhere")


def test_hub_offline_and_uncached_raises_libritts_unavailable_quickly(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    # Both libraries read HF_HUB_OFFLINE once, when imported, so patch what they read too.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(LibriTTSUnavailable, match="network"):
        load_libritts_r(tmp_path / "out", 16_000, "dev.clean", cache_dir=tmp_path / "empty_cache")
    assert time.perf_counter() - start < 10


def test_unreachable_hub_raises_libritts_unavailable_quickly(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "https://hub.invalid")  # .invalid never resolves
    hub_is_reachable.cache_clear()  # asked once per process: ask again, of the fake hub
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    start = time.perf_counter()
    with pytest.raises(LibriTTSUnavailable, match="cannot be reached"):
        load_libritts_r(tmp_path / "out", 16_000, "dev.clean", cache_dir=tmp_path / "empty_cache")
    assert time.perf_counter() - start < 10
    hub_is_reachable.cache_clear()  # forget the fake hub's answer
