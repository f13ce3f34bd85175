"""Real recordings from packages: transcripts as said, sources read from where they lie, absent ones skipped."""

import io
import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from michi_lite.data.corpus import load_eval_manifest
from michi_lite.data.recordings import SOURCES, asterisk_text, gather_recordings

ALSA = Path("/usr/share/sounds/alsa/Front_Left.wav")


def test_asterisk_text_writes_digits_and_keypad_signs_as_said():
    assert asterisk_text("press * to pause, press # to exit") == "Press star to pause, press pound to exit"
    assert asterisk_text("To speak with us, press 2. For 4 or 6, umute.") == \
        "To speak with us, press two. For four or six, unmute."
    assert asterisk_text("at [@]") == "At"
    assert asterisk_text("... callers waiting") == "Callers waiting"
    assert asterisk_text("(10 seconds of silence)") == ""
    assert asterisk_text("[ascending tones]") == ""


def test_absent_sources_are_skipped_with_a_note(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="michi_lite.data.recordings"):
        records = gather_recordings(tmp_path / "out", debian_root=tmp_path / "empty", sdist_dir=tmp_path / "none")
    assert records == []
    assert (tmp_path / "out" / "manifest.jsonl").read_text() == ""
    skipped = {s.package for s in SOURCES if f"skipping {s.package} " in caplog.text}
    assert skipped == {s.package for s in SOURCES}


def test_a_clip_is_read_from_inside_its_sdist_and_written_at_16k(tmp_path):
    # a stand-in for pysptk's sdist: its example file's path, a 1 s 220 Hz tone at 48 kHz
    tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(48_000) / 48_000)
    wav = io.BytesIO()
    sf.write(wav, tone, 48_000, format="WAV", subtype="PCM_16")
    sdists = tmp_path / "sdists"
    sdists.mkdir()
    with tarfile.open(sdists / "pysptk-1.0.1.tar.gz", "w:gz") as archive:
        member = tarfile.TarInfo("pysptk-1.0.1/pysptk/example_audio_data/arctic_a0007.wav")
        member.size = len(wav.getvalue())
        archive.addfile(member, io.BytesIO(wav.getvalue()))

    records = gather_recordings(tmp_path / "out", debian_root=tmp_path, sdist_dir=sdists, sources=["pysptk"])

    assert [r["id"] for r in records] == ["cmu-arctic-awb-a0007"]
    record = records[0]
    assert record["text"] == "And you always want to see it in the superlative degree."
    assert (record["source"], record["registry"], record["speaker"]) == ("pysptk", "pypi", "cmu-arctic-awb")
    assert (record["sample_rate"], record["original_sample_rate"], record["duration"]) == (16_000, 48_000, 1.0)
    audio, rate = sf.read(tmp_path / "out" / record["path"])
    assert rate == 16_000 and audio.ndim == 1 and len(audio) == 16_000


@pytest.mark.skipif(not ALSA.is_file(), reason="alsa-utils is not installed (apt-get install alsa-utils)")
def test_alsa_channel_names_become_a_manifest_eval_reads(tmp_path):
    records = gather_recordings(tmp_path, sources=["alsa-utils"])

    assert [r["text"] for r in records] == ["Front left", "Front right", "Front center", "Rear left",
                                           "Rear right", "Rear center", "Side left", "Side right"]
    for record in records:
        info = sf.info(str(tmp_path / record["path"]))
        assert (info.samplerate, info.channels, info.format) == (16_000, 1, "FLAC")
        assert 1.2 < record["duration"] < 1.7
    lines = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert lines == records
    assert len(load_eval_manifest(tmp_path)) == 8
