"""The vocoder benchmark times what it says, on the machine at hand, and writes plain JSON."""

import json

import pytest
import torch

from michi_lite.bench import bench_vocoder
from michi_lite.cli import main
from michi_lite.vocoder import HiFiGANGenerator, save_vocoder, vocoder_config


@pytest.fixture(scope="module")
def report():
    return bench_vocoder("tiny", seconds=0.8)


def test_bench_vocoder_times_both_streaming_generators_and_griffin_lim(report):
    assert report["random_weights"] and report["audio_seconds"] == pytest.approx(0.8)
    assert report["threads"] == 1 and report["run"]["preset"] == "tiny"
    cpu = report["cpu"]
    assert report["istft_parameters"] > 0 and report["hifigan_parameters"] > 0
    assert report["istft_lag_ms"] == report["hifigan_lag_ms"] == 20  # two hops of look-ahead
    for name in ("hifigan_streaming", "istft_streaming", "griffin_lim_sliding_window"):
        numbers = cpu[name]
        assert numbers["n_chunks"] == 10  # 0.8 s of 80 ms chunks
        assert 0 < numbers["chunk_latency_ms_median"] <= numbers["chunk_latency_ms_p95"]
        # the RTF is the mean chunk latency over 80 ms; at least half the chunks take the median or
        # longer, so the mean is at least half the median, however busy the machine
        assert numbers["rtf"] * report["chunk_ms"] >= numbers["chunk_latency_ms_median"] / 2
    assert cpu["griffin_lim_offline"]["rtf"] > 0
    assert cpu["griffin_lim_sliding_window"]["window_seconds"] == pytest.approx(0.48)


def test_bench_vocoder_command_writes_json_and_loads_a_checkpoint(tmp_path):
    ckpt = save_vocoder(tmp_path / "tiny.safetensors", HiFiGANGenerator(vocoder_config("tiny")), "tiny")
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    asked = 2 if threads == 1 else 1
    main(["bench", "vocoder", "--preset", "tiny", "--ckpt", str(ckpt), "--seconds", "0.4", "--json", str(out),
          "--threads", str(asked)])
    written = json.loads(out.read_text())
    assert not written["random_weights"] and written["checkpoint"] == str(ckpt)
    assert written["threads"] == asked and torch.get_num_threads() == threads  # put back after the run
    assert written["cpu"]["hifigan_streaming"]["n_chunks"] == 5 and "istft_streaming" not in written["cpu"]


def test_bench_joint_measures_a_training_step_beside_the_memory_model(tmp_path):
    out = tmp_path / "joint.json"
    main(["bench", "joint", "--preset", "tiny", "--seconds", "4", "--steps", "1", "--json", str(out)])
    report = json.loads(out.read_text())
    assert report["checkpointing"] and not report["bf16"] and report["frames_per_dialogue"] == 50
    assert report["positions_per_second"] > 0 and report["peak_rss_gb"] > 0
    estimate = report["estimate_gb"]
    assert estimate["total"] > sum(v for k, v in estimate.items() if k != "total") > 0


def test_the_memory_model_saves_activations_by_checkpointing_and_fits_fewer_dialogues_in_less_memory():
    from michi_lite.memory import StepShape, estimate, largest_batch

    shape = StepShape(parameters=400_000_000, trained_parameters=20_000_000, layers=32, hidden_size=960,
                      intermediate_size=2560, vocab_size=49152, batch_size=4, frames=375, text_tokens=400)
    kept, recomputed = estimate(shape, bf16=True, checkpointing=False), estimate(shape, bf16=True, checkpointing=True)
    assert recomputed["activations"] < kept["activations"] / 5 and recomputed["weights"] == kept["weights"]
    assert estimate(shape, bf16=False, checkpointing=False)["activations"] == 2 * kept["activations"]
    assert 0 < largest_batch(shape, 10.0) < largest_batch(shape, 22.0)


def test_bench_duplex_times_every_stage_with_the_acoustic_voice(tmp_path):
    from michi_lite.acoustic import AcousticModel, acoustic_config, save_acoustic
    from michi_lite.duplex import STAGES

    acoustic = save_acoustic(tmp_path / "acoustic.safetensors", AcousticModel(acoustic_config("tiny")), "tiny")
    out = tmp_path / "duplex.json"
    main(["bench", "duplex", "--preset", "tiny", "--seconds", "0.8", "--threads", "1", "--acoustic", str(acoustic),
          "--steps", "2", "--json", str(out)])
    report = json.loads(out.read_text())
    assert report["frames"] == 10 and report["acoustic"] == str(acoustic) and 0 <= report["word_token_share"] <= 1
    assert report["steps"] == 2
    assert set(report["stages_ms"]) == set(STAGES) and report["step_ms_p95"] >= report["step_ms_median"] > 0
