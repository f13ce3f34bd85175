import json

import soundfile as sf

from michi_lite.cli import main


def test_demo_synthesises_aligns_frames_and_saves_its_outputs(tmp_path, capsys):
    main(["demo", "--preset", "tiny", "--out", str(tmp_path)])
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert summary["grid_round_trip_exact"] is True
    audio, rate = sf.read(tmp_path / "demo.wav")
    assert rate == 16_000 and abs(len(audio) / rate - summary["seconds"]) < 1e-3
    assert summary["frames"] >= summary["seconds"] / 0.08
    assert (tmp_path / "demo_alignment.png").stat().st_size > 10_000
    assert "synthesised" in capsys.readouterr().out
