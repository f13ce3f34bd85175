import json
import math

import numpy as np
import soundfile as sf
from test_duplex import engine

from michi_lite.cli import main
from michi_lite.config import FRAME_SECONDS
from michi_lite.demo import converse_demo
from michi_lite.duplex import STAGES


def test_demo_synthesises_aligns_frames_and_saves_its_outputs(tmp_path, capsys):
    main(["demo", "--preset", "tiny", "--out", str(tmp_path)])
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert summary["grid_round_trip_exact"] is True
    audio, rate = sf.read(tmp_path / "demo.wav")
    assert rate == 16_000 and abs(len(audio) / rate - summary["seconds"]) < 1e-3
    assert summary["frames"] >= summary["seconds"] / 0.08
    assert (tmp_path / "demo_alignment.png").stat().st_size > 10_000
    assert "synthesised" in capsys.readouterr().out


def test_the_tiny_demo_says_where_the_conversation_part_runs(tmp_path, capsys):
    main(["demo", "--preset", "tiny", "--out", str(tmp_path)])
    assert "conversation" not in json.loads((tmp_path / "demo.json").read_text())
    assert "michi-lite demo --preset lite" in capsys.readouterr().out


def test_a_conversation_is_saved_as_stereo_audio_a_timeline_and_two_figures(tmp_path, tokenizer):
    duplex = engine(tokenizer, context_frames=8)
    rate = duplex.listener.cfg.audio.sample_rate
    user = (0.1 * np.random.default_rng(0).standard_normal(rate)).astype(np.float32)  # 1 s
    summary = converse_demo(duplex, user, tmp_path, prefix="The bakery opens at eight.")
    frames = math.ceil(rate / duplex.samples_in) + round(3.0 / FRAME_SECONDS)  # the user, then 3 s to answer in
    audio, out_rate = sf.read(tmp_path / "conversation.wav")
    assert audio.shape == (frames * duplex.model.cfg.audio.samples_per_frame, 2)
    assert np.abs(audio[:rate, 0] - user).max() < 1e-4  # the user's side, as heard (16-bit)
    timeline = json.loads((tmp_path / "conversation.json").read_text())
    assert timeline["frames"] == summary["frames"] == frames == len(timeline["log"])
    assert all((tmp_path / name).stat().st_size > 10_000 for name in ("conversation.png", "conversation_latency.png"))
    assert set(summary["stage_ms_median"]) == set(STAGES) and 0 < summary["step_ms_median"] <= summary["step_ms_p95"]
