"""The causal HiFi-GAN vocoder: streaming, causality, GAN training, Griffin-Lim, checkpoints, bad input."""

from __future__ import annotations

import copy
import csv
import json
import math
import shutil
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from michi_lite.audio import MelSpectrogram, normalize_mel
from michi_lite.train import latest_checkpoint, load_checkpoint, save_checkpoint, started_config
from michi_lite.train_vocoder import LOSSES, AudioSegments, VocoderTrainer, train_vocoder
from michi_lite.vocoder import (
    CausalUpsample,
    GriffinLim,
    HiFiGANGenerator,
    IstftGenerator,
    MultiPeriodDiscriminator,
    MultiResolutionDiscriminator,
    MultiScaleMelLoss,
    adversarial_loss,
    discriminator_loss,
    feature_matching_loss,
    generator_frame_spectra,
    int8_linear,
    integrate_phase,
    load_vocoder,
    magnitude_loss,
    overlap_add,
    phase_advance_loss,
    phase_from_magnitude,
    save_vocoder,
    stft_distance,
    stft_loss,
    synthesis_window,
    vocoder_config,
)

TINY = vocoder_config("tiny")
# lite's generator uses HiFi-GAN's ResBlock2, tiny's ResBlock1: test both
TINY_RESBLOCK2 = replace(
    TINY, resblock_kernel_sizes=(3, 5), resblock_dilations=((1, 2), (2, 6)), resblock_plain_convs=False
)
TINY_NEAREST = replace(TINY, upsampler="nearest")
# the losses of HiFi-GAN's recipe: the others are computed only while weighted
HIFIGAN_LOSSES = sorted(set(LOSSES) - {"stft_loss", "multiscale_mel_loss", "phase_loss", "magnitude_loss"})
HOP = TINY.audio.hop_length
CHUNK = TINY.audio.mels_per_frame  # mel columns in one 80 ms frame


pytestmark = pytest.mark.usefixtures("one_thread")


def loud_generator(cfg=TINY, seed: int = 0) -> HiFiGANGenerator:
    """A generator whose output is far from silence (HiFi-GAN's init starts near it), for comparisons.

    Weight-norm magnitudes of 1 make each conv roughly keep its input's scale:
    the output then has a standard deviation of about 0.2, without clipping.
    """
    torch.manual_seed(seed)
    generator = HiFiGANGenerator(cfg)
    for module in generator.modules():
        if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)):
            module.parametrizations.weight.original0.data.fill_(1.0)
    return generator.eval()


def random_mel(frames: int, batch: int | None = None, seed: int = 1) -> torch.Tensor:
    shape = (TINY.audio.n_mels, frames) if batch is None else (batch, TINY.audio.n_mels, frames)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def stream_in_chunks(generator: HiFiGANGenerator, mel: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
    stream = generator.stream(batch_size=1 if mel.dim() == 2 else mel.shape[0])
    chunks = [stream.push(mel[..., i:i + chunk]) for i in range(0, mel.shape[-1], chunk)]
    return torch.cat(chunks, dim=-1)


@pytest.mark.parametrize("cfg", [TINY, TINY_RESBLOCK2, TINY_NEAREST], ids=["resblock1", "resblock2", "nearest"])
@pytest.mark.parametrize("batch", [None, 2])
def test_streaming_vocoder_matches_offline(cfg, batch):
    generator = loud_generator(cfg)
    mel = random_mel(12 * CHUNK, batch)
    with torch.no_grad():
        offline = generator(mel)
    given = mel.clone()
    streamed = stream_in_chunks(generator, mel)
    assert torch.equal(mel, given)  # the chunks pushed are left as they were
    assert streamed.shape == offline.shape
    assert offline.std() > 0.05  # a real signal, not near-silence where any two outputs agree
    assert (streamed - offline).abs().max() < 1e-4


@pytest.mark.parametrize("chunk", [1, 3, 13])
def test_streaming_in_chunks_shorter_than_a_layers_context_matches_offline(chunk):
    generator = loud_generator(TINY_RESBLOCK2)
    mel = random_mel(39)
    with torch.no_grad():
        offline = generator(mel)
    assert (stream_in_chunks(generator, mel, chunk) - offline).abs().max() < 1e-4


def test_nearest_upsampler_is_nearest_neighbour_repetition_then_a_causal_conv():
    torch.manual_seed(0)
    rate = 4
    up = CausalUpsample(3, 2, rate, nearest=True)
    x = torch.randn(2, 3, 6)
    taps = up.conv.weight.detach()  # (in, out, rate + 1)
    repeated = F.pad(x.repeat_interleave(rate, dim=-1), (rate, 0))
    expected = F.conv1d(repeated, taps.transpose(0, 1).flip(-1), up.conv.bias.detach())  # y[t] = sum_k w[k] x[t - k]
    with torch.no_grad():
        assert up.kernel.shape == (3, 2, 2 * rate)
        assert (up(x) - expected).abs().max() < 1e-6


@pytest.mark.parametrize("nearest", [False, True], ids=["transposed", "nearest"])
def test_only_the_nearest_upsampler_turns_a_steady_input_into_a_steady_output(nearest):
    """A free transposed-conv kernel sums unevenly over the output phases: a tone at the input rate."""
    torch.manual_seed(0)
    rate = 5
    up = CausalUpsample(4, 3, rate, nearest=nearest)
    with torch.no_grad():
        y = up(torch.ones(1, 4, 8))[..., rate:]  # past the first hop, which sees the zero before the input
    ripple = (y - y.mean(-1, keepdim=True)).abs().max() / y.abs().mean()
    assert ripple < 1e-5 if nearest else ripple > 0.1


def test_a_stream_and_its_flush_give_vocode_after_the_lookahead():
    generator = loud_generator()
    mel = random_mel(5 * CHUNK)
    stream = generator.stream()
    streamed = torch.cat([stream.push(mel[:, i:i + CHUNK]) for i in range(0, mel.shape[-1], CHUNK)])
    lag = TINY.lookahead_samples
    assert lag == stream.latency_samples == TINY.lookahead_hops * HOP > 0
    streamed = torch.cat([streamed, stream.flush()])[lag:]
    with torch.no_grad():
        aligned = generator.vocode(mel)
    assert aligned.shape == (mel.shape[-1] * HOP,)
    assert (streamed - aligned).abs().max() < 1e-4


def test_vocode_answers_each_frame_with_the_samples_under_it():
    """Sample n of ``vocode`` depends on mel frames up to n // hop + lookahead_hops, never later ones."""
    generator = loud_generator()
    mel = random_mel(30)
    changed = mel.clone()
    changed[:, 20:] += 1.0
    with torch.no_grad():
        before, after = generator.vocode(mel), generator.vocode(changed)
    first_changed = int(torch.nonzero((before - after).abs() > 1e-6)[0])
    assert first_changed == (20 - TINY.lookahead_hops) * HOP


def test_flush_of_a_stream_that_never_started_is_empty():
    assert loud_generator().stream().flush().numel() == 0


def test_streaming_matches_offline_without_weight_norm():
    generator = loud_generator()
    mel = random_mel(6 * CHUNK)
    with torch.no_grad():
        with_norm = generator(mel)
        generator.remove_weight_norm()
        without = generator(mel)
    assert not any("parametrizations" in name for name, _ in generator.named_parameters())
    assert (with_norm - without).abs().max() < 1e-5
    assert (stream_in_chunks(generator, mel) - without).abs().max() < 1e-4


def test_streaming_cache_size_is_constant():
    generator = loud_generator()
    stream = generator.stream()
    sizes, shapes = [], []
    for i in range(60):
        samples = stream.push(random_mel(CHUNK, seed=i))
        assert samples.shape == (TINY.audio.samples_per_frame,)
        sizes.append(stream.cache_numel())
        shapes.append([tuple(layer.past.shape) for layer in stream.layers])
    assert len(set(sizes)) == 1 and sizes[0] > 0
    assert all(s == shapes[0] for s in shapes)
    # one cache per causal layer: conv_pre, an upsampler and its ResBlock convs per stage, conv_post
    convs_per_stage = 1 + 2 * len(TINY.resblock_dilations[0]) * len(TINY.resblock_kernel_sizes)
    assert len(stream.layers) == 2 + convs_per_stage * len(TINY.upsample_rates)
    assert any(layer.past.abs().max() > 0 for layer in stream.layers)
    stream.reset()
    assert stream.cache_numel() == sizes[0]
    assert all(layer.past.abs().max() == 0 for layer in stream.layers)


@pytest.mark.parametrize("weight_norm", [True, False], ids=["weight_norm", "folded"])
def test_a_stream_copies_the_generators_weights_when_it_opens_and_on_reset(weight_norm):
    generator = loud_generator() if weight_norm else loud_generator().remove_weight_norm()
    mel = random_mel(CHUNK)
    stream = generator.stream()
    with torch.no_grad():
        original = generator(mel)
        conv = generator.conv_post.conv
        (conv.parametrizations.weight.original0 if weight_norm else conv.weight).mul_(0.5)
        generator.conv_pre.conv.bias.add_(0.3)
        changed = generator(mel)
    assert (changed - original).abs().max() > 1e-3
    assert (stream.push(mel) - original).abs().max() < 1e-5  # opened before the change
    stream.reset()
    assert (stream.push(mel) - changed).abs().max() < 1e-5


@pytest.mark.parametrize("frames", [1, 7, 24])
def test_output_length_is_frames_times_hop(frames):
    generator = HiFiGANGenerator(TINY).eval()
    with torch.no_grad():
        assert generator(random_mel(frames)).shape == (frames * HOP,)
        assert generator(random_mel(frames, batch=3)).shape == (3, frames * HOP)


def test_generator_is_causal():
    generator = loud_generator()
    mel = random_mel(40)
    changed = mel.clone()
    changed[:, 25:] = torch.randn(TINY.audio.n_mels, 15)
    with torch.no_grad():
        before, after = generator(mel), generator(changed)
    # zero look-ahead: the samples of frames 0..24 do not move when frames 25.. change
    assert torch.equal(before[:25 * HOP], after[:25 * HOP])
    assert (before[25 * HOP:] - after[25 * HOP:]).abs().max() > 1e-3


def test_discriminators_give_one_score_per_subdiscriminator_and_finite_losses():
    torch.manual_seed(0)
    real, fake = 0.3 * torch.randn(2, 2560), 0.3 * torch.randn(2, 2560)
    mpd, mrd = MultiPeriodDiscriminator(TINY), MultiResolutionDiscriminator(TINY)
    for disc, n_subs in ((mpd, len(TINY.mpd_periods)), (mrd, len(TINY.mrd_resolutions))):
        real_scores, real_features = disc(real)
        fake_scores, fake_features = disc(fake)
        assert len(real_scores) == len(real_features) == n_subs
        assert all(score.dim() == 2 and score.shape[0] == 2 for score in real_scores)
        for scores in (discriminator_loss(real_scores, fake_scores), adversarial_loss(fake_scores),
                       feature_matching_loss(real_features, fake_features)):
            assert scores.dim() == 0 and torch.isfinite(scores)
    # period discriminators: one feature map per conv plus the score map, folded by period
    _, features = mpd(real)
    assert len(features[0]) == len(TINY.mpd_channels) + 1
    assert features[0][0].shape[-1] == TINY.mpd_periods[0]
    # the least-squares losses have their known values at the optimum
    perfect = [torch.ones(2, 5)]
    assert discriminator_loss(perfect, [torch.zeros(2, 5)]) == 0.0
    assert adversarial_loss(perfect) == 0.0


def test_training_overfits_one_fixed_batch():
    torch.manual_seed(0)
    t = torch.arange(TINY.segment_samples) / TINY.audio.sample_rate

    def buzz(f0: float, phase: float) -> torch.Tensor:  # a voice-like harmonic tone, below 7.5 kHz
        return 0.3 * sum(torch.sin(2 * math.pi * f0 * h * t + phase * h) / h for h in range(1, 30) if f0 * h < 7500)

    wave = torch.stack([buzz(150, 0.0), buzz(220, 1.0)])  # (batch, samples)
    trainer = VocoderTrainer(replace(TINY, learning_rate=2e-3), torch.device("cpu"))  # 10x: fast enough to see
    history = [trainer.step(wave) for _ in range(20)]
    first, last = history[0], history[-1]
    assert all(math.isfinite(v) for losses in history for v in losses.values())
    assert last["generator_loss"] < 0.8 * first["generator_loss"]
    assert last["mel_loss"] < 0.8 * first["mel_loss"]


def weights(*modules: nn.Module) -> list[torch.Tensor]:
    """A copy of the modules' parameters, to tell later whether a step changed them."""
    return [p.detach().clone() for module in modules for p in module.parameters()]


def test_the_generator_learns_alone_until_the_discriminators_start():
    torch.manual_seed(0)
    trainer = VocoderTrainer(replace(TINY, discriminator_start=2), torch.device("cpu"))
    wave = 0.1 * torch.randn(2, TINY.segment_samples)

    discriminators, generator = weights(trainer.mpd, trainer.mrd), weights(trainer.generator)
    for _ in range(2):
        assert trainer.warming_up
        losses = trainer.step(wave)
        assert sorted(losses) == ["generator_loss", "mel_loss"]  # the only ones computed
        assert all(math.isfinite(v) for v in losses.values())
    assert all(torch.equal(a, b) for a, b in zip(discriminators, weights(trainer.mpd, trainer.mrd)))
    assert not all(torch.equal(a, b) for a, b in zip(generator, weights(trainer.generator)))
    assert trainer.sched_d.last_epoch == 0  # the discriminators' learning rate waits for them

    assert not trainer.warming_up
    losses = trainer.step(wave)  # step 3: HiFi-GAN's, which has no STFT loss
    assert sorted(losses) == HIFIGAN_LOSSES and all(math.isfinite(v) for v in losses.values())
    assert not all(torch.equal(a, b) for a, b in zip(discriminators, weights(trainer.mpd, trainer.mrd)))

    with pytest.raises(ValueError, match="discriminator_start"):
        replace(TINY, discriminator_start=-1)


def test_the_discriminators_warm_up_alone_against_a_held_generator():
    torch.manual_seed(0)
    trainer = VocoderTrainer(replace(TINY, discriminator_start=1, discriminator_warmup=2), torch.device("cpu"))
    wave = 0.1 * torch.randn(2, TINY.segment_samples)

    assert trainer.warming_up and not trainer.generator_waiting
    trainer.step(wave)  # step 1: the generator alone
    generator, moments = weights(trainer.generator), copy.deepcopy(trainer.opt_g.state_dict())
    for _ in range(2):
        assert trainer.generator_waiting and not trainer.warming_up
        discriminators = weights(trainer.mpd, trainer.mrd)
        losses = trainer.step(wave)
        assert sorted(losses) == ["discriminator_loss", "mel_loss"] and all(map(math.isfinite, losses.values()))
        assert not all(torch.equal(a, b) for a, b in zip(discriminators, weights(trainer.mpd, trainer.mrd)))
        assert all(torch.equal(a, b) for a, b in zip(generator, weights(trainer.generator)))
    assert trainer.opt_g.state_dict()["state"].keys() == moments["state"].keys()
    assert all(torch.equal(trainer.opt_g.state_dict()["state"][k]["exp_avg"], v["exp_avg"])
               for k, v in moments["state"].items())

    assert not trainer.generator_waiting and (trainer.sched_g.last_epoch, trainer.sched_d.last_epoch) == (1, 2)
    losses = trainer.step(wave)  # step 4: both learn
    assert sorted(losses) == HIFIGAN_LOSSES
    assert not all(torch.equal(a, b) for a, b in zip(generator, weights(trainer.generator)))

    with pytest.raises(ValueError, match="discriminator_warmup"):
        replace(TINY, discriminator_warmup=-1)


@pytest.mark.parametrize("weight, column", [("stft_loss_weight", "stft_loss"),
                                            ("multiscale_mel_loss_weight", "multiscale_mel_loss")])
def test_a_weighted_reconstruction_loss_joins_the_mel_loss_in_both_phases(weight, column):
    torch.manual_seed(0)
    plain = VocoderTrainer(replace(TINY, discriminator_start=1), torch.device("cpu"))
    torch.manual_seed(0)  # the same starting weights
    weighted = VocoderTrainer(replace(TINY, discriminator_start=1, **{weight: 2.0}), torch.device("cpu"))
    wave = 0.1 * torch.randn(2, TINY.segment_samples)
    for phase in ("generator alone", "with the discriminators"):
        without, with_extra = plain.step(wave), weighted.step(wave)
        assert column not in without, phase
        assert with_extra[column] > 0, phase
        if phase == "generator alone":  # same weights, same batch: the loss differs by the weighted term
            extra = with_extra["generator_loss"] - without["generator_loss"]
            assert extra == pytest.approx(2.0 * with_extra[column], rel=1e-4)
    assert sorted(with_extra) == sorted([*HIFIGAN_LOSSES, column])
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match=weight):
            replace(TINY, **{weight: bad})


@pytest.mark.parametrize("name", ["stft", "multiscale mel"])
def test_a_reconstruction_loss_is_differentiable_and_pulls_towards_the_target(name):
    if name == "stft":
        def loss_of(predicted, target):
            return stft_loss(predicted, target, TINY.stft_loss_resolutions)
    else:
        loss_of = MultiScaleMelLoss(TINY.audio, TINY.multiscale_mel_windows)
    torch.manual_seed(0)
    target = 0.3 * torch.randn(4000)
    predicted = (target + 0.1 * torch.randn(4000)).requires_grad_()
    loss = loss_of(predicted, target)
    loss.backward()
    with torch.no_grad():
        nearer = loss_of(predicted - 0.01 * predicted.grad / predicted.grad.abs().max(), target)
    assert 0 < nearer < loss
    assert loss_of(target, target) < 1e-6


def test_the_multiscale_mel_loss_refuses_windows_too_short_for_its_bands():
    with pytest.raises(ValueError, match="multiscale_mel_windows"):
        replace(TINY, multiscale_mel_windows=(16, 64))  # 16 samples: 2 mel bands, under DAC's shortest window's 5
    with pytest.raises(ValueError, match="multiscale_mel_windows"):
        replace(TINY, multiscale_mel_windows=())


def test_a_resumed_run_keeps_its_discriminator_start(tiny_corpus, tmp_path):
    from michi_lite.cli import main

    run = tmp_path / "run"
    args = train_command(tiny_corpus, run)
    main(args + ["--steps", "1", "--discriminator-start", "2"])
    main(args + ["--steps", "3", "--resume"])  # not given again: the run's own 2
    state = json.loads((latest_checkpoint(run) / "state.json").read_text())
    assert state["config"]["discriminator_start"] == 2
    rows = read_log(run)
    assert [int(r["step"]) for r in rows] == [1, 3]  # each call logs its last step
    assert rows[0]["discriminator_loss"] == "" and rows[0]["mel_loss"]  # not computed: an empty cell
    assert math.isfinite(float(rows[1]["discriminator_loss"]))
    main(args + ["--steps", "4", "--resume", "--discriminator-start", "5"])  # given again: it wins
    state = json.loads((latest_checkpoint(run) / "state.json").read_text())
    assert state["config"]["discriminator_start"] == 5
    assert read_log(run)[-1]["discriminator_loss"] == ""
    with pytest.raises(SystemExit):
        main(args + ["--steps", "1", "--discriminator-start", "-1"])


def test_a_resumed_run_keeps_its_discriminator_warmup(tiny_corpus, tmp_path):
    from michi_lite.cli import main

    run = tmp_path / "run"
    args = train_command(tiny_corpus, run)
    main(args + ["--steps", "1", "--discriminator-warmup", "2"])
    main(args + ["--steps", "3", "--resume"])  # not given again: the run's own 2
    assert json.loads((latest_checkpoint(run) / "state.json").read_text())["config"]["discriminator_warmup"] == 2
    first, last = read_log(run)
    assert first["generator_loss"] == "" and math.isfinite(float(first["discriminator_loss"]))  # the generator held
    assert math.isfinite(float(last["generator_loss"]))  # step 3: both learn
    with pytest.raises(SystemExit):
        main(args + ["--steps", "1", "--discriminator-warmup", "-1"])


def test_lr_decay_sets_the_schedule_and_a_resumed_run_keeps_or_changes_it(tiny_corpus, tmp_path):
    from michi_lite.cli import main

    run = tmp_path / "run"
    args = train_command(tiny_corpus, run)
    main(args + ["--steps", "2", "--lr-decay", "0.5"])
    main(args + ["--steps", "3", "--resume"])  # not given again: the run's own 0.5
    main(args + ["--steps", "4", "--resume", "--lr-decay", "0.25"])  # given again: on from where the rate got
    rates = [float(r["lr"]) for r in read_log(run)]
    base = TINY.learning_rate
    assert rates == pytest.approx([base * 0.5 ** 2, base * 0.5 ** 3, base * 0.5 ** 3 * 0.25])
    assert json.loads((latest_checkpoint(run) / "state.json").read_text())["config"]["lr_decay"] == 0.25
    with pytest.raises(SystemExit):
        main(args + ["--steps", "5", "--resume", "--lr-decay", "0"])
    with pytest.raises(ValueError, match="lr_decay"):  # refused, not read as "no value given"
        train_vocoder(TINY, tiny_corpus, run, steps=5, resume=True, lr_decay=0.0)


@pytest.mark.parametrize("flag, field, column", [
    ("--stft-loss", "stft_loss_weight", "stft_loss"),
    ("--multiscale-mel", "multiscale_mel_loss_weight", "multiscale_mel_loss"),
])
def test_a_resumed_run_keeps_or_changes_a_reconstruction_loss_weight(tiny_corpus, tmp_path, flag, field, column):
    from michi_lite.cli import main

    run = tmp_path / "run"
    args = train_command(tiny_corpus, run)

    def weight() -> float:
        return json.loads((latest_checkpoint(run) / "state.json").read_text())["config"][field]

    main(args + ["--steps", "1", flag, "3"])
    main(args + ["--steps", "2", "--resume"])  # not given again: the run's own 3
    assert weight() == 3.0
    main(args + ["--steps", "3", "--resume", flag, "0"])  # an explicit 0 turns it off
    assert weight() == 0.0
    rows = read_log(run)
    assert [bool(r[column]) for r in rows] == [True, True, False]  # not computed: an empty cell
    for bad in ("-1", "nan"):
        with pytest.raises(SystemExit):
            main(args + ["--steps", "4", "--resume", flag, bad])


def test_griffin_lim_round_trip_keeps_a_sine():
    audio = TINY.audio
    t = torch.arange(audio.sample_rate) / audio.sample_rate
    wave = 0.5 * torch.sin(2 * math.pi * 440 * t)
    mel = normalize_mel(MelSpectrogram(audio)(wave))
    rebuilt = GriffinLim(audio)(mel)
    assert rebuilt.shape == wave.shape
    assert rebuilt.abs().max() < 0.9  # no blow-up at the causal edges

    def magnitude(w: torch.Tensor) -> torch.Tensor:
        return torch.stft(w, 1024, 256, window=torch.hann_window(1024), return_complex=True).abs().flatten()

    correlation = torch.corrcoef(torch.stack([magnitude(wave), magnitude(rebuilt)]))[0, 1]
    assert correlation > 0.95
    assert GriffinLim(audio)(mel.unsqueeze(0)).shape == (1, len(wave))


def test_stft_distance_is_zero_for_identical_audio_and_grows_with_noise():
    torch.manual_seed(0)
    wave = 0.3 * torch.randn(8000)
    assert stft_distance(wave, wave) < 1e-6
    slightly = stft_distance(wave + 0.01 * torch.randn(8000), wave)
    very = stft_distance(wave + 0.3 * torch.randn(8000), wave)
    assert 0 < slightly < very


@pytest.mark.parametrize(
    ("mel", "message"),
    [
        (torch.zeros(TINY.audio.n_mels), "shape"),
        (torch.zeros(1, 1, TINY.audio.n_mels, 8), "shape"),
        (torch.zeros(64, 8), "64 mel bins"),
        (torch.zeros(8, TINY.audio.n_mels), "transposed"),
        (torch.zeros(TINY.audio.n_mels, 0), "no frames"),
        (torch.full((TINY.audio.n_mels, 8), float("nan")), "NaN"),
        (torch.zeros(TINY.audio.n_mels, 8).index_fill_(1, torch.tensor([3]), float("inf")), "NaN or inf"),
    ],
)
def test_bad_mel_raises_value_error(mel, message):
    generator = HiFiGANGenerator(TINY)
    for vocode in (generator, generator.stream().push, GriffinLim(TINY.audio)):
        with pytest.raises(ValueError, match=message):
            vocode(mel)


def test_a_resblock_without_dilations_is_refused():
    with pytest.raises(ValueError, match="non-empty tuple of dilations"):
        replace(TINY, resblock_dilations=((),))
    with pytest.raises(ValueError, match="its own"):
        replace(TINY_RESBLOCK2, resblock_dilations=((1, 2),))


def test_stream_refuses_a_chunk_of_another_batch_size():
    with pytest.raises(ValueError, match="batch size 1"):
        HiFiGANGenerator(TINY).stream().push(random_mel(CHUNK, batch=2))


def test_saved_vocoder_loads_back(tmp_path):
    generator = loud_generator()
    mel = random_mel(16)
    with torch.no_grad():
        expected = generator(mel)
    fp32 = load_vocoder(save_vocoder(tmp_path / "v32.safetensors", generator, "tiny"), "tiny")
    fp16 = load_vocoder(save_vocoder(tmp_path / "v16.safetensors", generator, "tiny", torch.float16), "tiny")
    with torch.no_grad():
        assert (fp32(mel) - expected).abs().max() < 1e-5
        assert (fp16(mel) - expected).abs().max() < 0.05
    assert next(iter(load_file(tmp_path / "v16.safetensors").values())).dtype == torch.float16
    # a generator whose weight norm is already folded in saves the same way
    folded = load_vocoder(save_vocoder(tmp_path / "folded.safetensors", fp32, "tiny"), "tiny")
    with torch.no_grad():
        assert torch.equal(folded(mel), fp32(mel))
    assert (tmp_path / "v16.safetensors").stat().st_size < (tmp_path / "v32.safetensors").stat().st_size


def test_checkpoint_from_another_preset_raises(tmp_path):
    path = save_vocoder(tmp_path / "lite.safetensors", HiFiGANGenerator(vocoder_config("lite")), "lite")
    with pytest.raises(ValueError, match="trained for preset 'lite'.*'tiny' was asked for"):
        load_vocoder(path, "tiny")
    with pytest.raises(ValueError, match="built for preset 'tiny', not 'lite'"):
        save_vocoder(tmp_path / "x.safetensors", HiFiGANGenerator(TINY), "lite")


def test_checkpoint_with_another_config_or_format_raises(tmp_path):
    path = save_vocoder(tmp_path / "tiny.safetensors", HiFiGANGenerator(TINY), "tiny")
    tensors = load_file(path)
    config = json.loads(TINY.to_json()) | {"upsample_initial_channel": 64}
    save_file(tensors, tmp_path / "changed.safetensors",
              metadata={"format": "michi_lite.vocoder/1", "preset": "tiny", "config": json.dumps(config)})
    with pytest.raises(ValueError, match="another generator shape"):
        load_vocoder(tmp_path / "changed.safetensors", "tiny")
    save_file(tensors, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="not a michi_lite vocoder checkpoint"):
        load_vocoder(tmp_path / "other.safetensors", "tiny")


def test_a_nearest_upsampling_generator_saves_and_loads_as_itself(tmp_path):
    generator = loud_generator(TINY_NEAREST)
    path = save_vocoder(tmp_path / "nearest.safetensors", generator, "tiny")
    loaded = load_vocoder(path, "tiny")
    assert loaded.cfg.upsampler == "nearest"
    mel = random_mel(3 * CHUNK)
    with torch.no_grad():
        assert (loaded(mel) - generator(mel)).abs().max() < 1e-5


def test_a_checkpoint_from_before_the_upsampler_choice_loads_as_transposed(tmp_path):
    path = save_vocoder(tmp_path / "tiny.safetensors", loud_generator(), "tiny")
    config = json.loads(TINY.to_json())
    del config["upsampler"]
    save_file(load_file(path), tmp_path / "older.safetensors",
              metadata={"format": "michi_lite.vocoder/1", "preset": "tiny", "config": json.dumps(config)})
    assert load_vocoder(tmp_path / "older.safetensors", "tiny").cfg.upsampler == "transposed"


def test_bad_upsampler_is_refused():
    with pytest.raises(ValueError, match="upsampler must be one of"):
        replace(TINY, upsampler="linear")


def test_a_resumed_run_keeps_its_upsampler_and_init_must_match_it(tiny_corpus, tmp_path):
    from michi_lite.cli import main

    run = tmp_path / "run"
    args = train_command(tiny_corpus, run)
    main(args + ["--steps", "1", "--upsampler", "nearest"])
    main(args + ["--steps", "2", "--resume"])  # not given again: the run's own
    assert json.loads((latest_checkpoint(run) / "state.json").read_text())["config"]["upsampler"] == "nearest"
    assert load_vocoder(run, "tiny").cfg.upsampler == "nearest"
    with pytest.raises(ValueError, match="started with upsampler 'nearest'"):
        train_vocoder(TINY, tiny_corpus, run, steps=3, resume=True, upsampler="transposed")
    with pytest.raises(ValueError, match="another architecture, shape"):  # a run of the preset's transposed convs
        train_vocoder(TINY, tiny_corpus, tmp_path / "other", steps=1, init=run)
    with pytest.raises(SystemExit):
        main(args + ["--steps", "3", "--upsampler", "linear"])


# --- the ISTFT generator ----------------------------------------------------------------

TINY_ISTFT = replace(TINY, arch="istft")
TINY_ADVANCE = replace(TINY_ISTFT, istft_phase="advance")
TINY_PGHI = replace(TINY_ISTFT, istft_phase="pghi")
TINY_PGHI_AHEAD = replace(TINY_PGHI, phase_lookahead_hops=1)
ISTFT_HEADS = dict(argvalues=[TINY_ISTFT, TINY_ADVANCE, TINY_PGHI, TINY_PGHI_AHEAD],
                   ids=["frame", "advance", "pghi", "pghi_ahead"])


def istft_generator(cfg=TINY_ISTFT, seed: int = 0) -> IstftGenerator:
    torch.manual_seed(seed)
    return IstftGenerator(cfg).eval()


@pytest.mark.parametrize("chunk", [1, 3, CHUNK, 13])
@pytest.mark.parametrize("batch", [None, 2])
@pytest.mark.parametrize("cfg", **ISTFT_HEADS)
def test_istft_stream_matches_offline(chunk, batch, cfg):
    generator = istft_generator(cfg)
    mel = random_mel(39, batch)
    with torch.no_grad():
        offline = generator(mel)
    streamed = stream_in_chunks(generator, mel, chunk)
    assert streamed.shape == offline.shape == (*mel.shape[:-2], 39 * HOP)
    assert offline.std() > 0.02  # a real signal, not near-silence where any two outputs agree
    assert (streamed - offline).abs().max() < 1e-5


def test_int8_products_give_each_row_the_same_bits_wherever_it_sits():
    torch.manual_seed(0)
    layer = torch.nn.Linear(256, 768)
    x = torch.randn(2, 40, 256)
    with torch.no_grad():
        whole = int8_linear(x, layer.weight, layer.bias)
        exact = layer(x)
        assert (whole - exact).abs().max() < 0.02 * exact.abs().max()  # int8 rounding, no worse
        for start, stop in ((0, 1), (3, 6), (5, 18), (39, 40)):  # a stream's chunks, of any size, anywhere
            assert torch.equal(int8_linear(x[:, start:stop], layer.weight, layer.bias), whole[:, start:stop])


def test_int8_products_in_float32_give_the_integer_kernel_s_sums_to_the_bit(monkeypatch):
    import michi_lite.vocoder as vocoder

    generator = torch.Generator().manual_seed(0)
    for inner in (7, 300, 1536, 2100):  # past EXACT_FLOAT_TERMS: a float32 sum of one product would round
        q = torch.randint(-127, 128, (8, inner), dtype=torch.int8, generator=generator)
        weight = torch.randint(-127, 128, (inner, 24), dtype=torch.int8, generator=generator)
        q[0], weight[:, 0] = 127, 127  # the largest sum there can be: 127^2 per term
        exact = torch._int_mm(q, weight)
        assert exact[0, 0] == inner * 127 ** 2
        monkeypatch.setattr(vocoder, "FAST_INT8_PRODUCTS", False)
        floats = vocoder.integer_sums(q, weight)
        monkeypatch.setattr(vocoder, "FAST_INT8_PRODUCTS", True)
        assert torch.equal(floats, vocoder.integer_sums(q, weight)) and torch.equal(floats, exact.float())


def test_int8_weights_are_made_again_when_the_weight_changes():
    layer = torch.nn.Linear(16, 8)
    x = torch.randn(3, 16)
    with torch.no_grad():
        before = int8_linear(x, layer.weight, layer.bias)
        layer.weight.mul_(2)  # as an optimizer step or a load would
        after = int8_linear(x, layer.weight, layer.bias)
    assert torch.allclose(after - layer.bias, 2 * (before - layer.bias), atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 3, CHUNK, 13])
def test_in_eval_mode_a_stream_gives_the_offline_magnitudes_to_the_last_bit(chunk):
    """What a pghi head's peaks are picked from: a last-bit difference could tip a near-tie."""
    generator = istft_generator(TINY_PGHI)
    seen: list[torch.Tensor] = []
    frames = generator.frames
    generator.frames = lambda log_magnitude, *rest: (seen.append(log_magnitude), frames(log_magnitude, *rest))[1]
    mel = random_mel(5 * CHUNK, batch=2)
    with torch.no_grad():
        generator(mel)
        stream_in_chunks(generator, mel, chunk)
    offline, streamed = seen[0], torch.cat(seen[1:], dim=1)
    assert torch.equal(streamed, offline)


def test_an_istft_generator_in_eval_mode_computes_what_it_trains_with_to_int8_rounding():
    generator = istft_generator(TINY_PGHI)
    mel = random_mel(3 * CHUNK).unsqueeze(0)
    with torch.no_grad():
        evaluated = generator.spectra(generator.trunk(mel))[0]
        trained = generator.train().spectra(generator.trunk(mel))[0]
    assert trained.std() > 0.3
    assert (evaluated - trained).abs().max() < 0.05  # log-magnitudes: under 0.5 dB apart


def test_an_istft_stream_keeps_the_weights_it_opened_with_until_reset():
    generator = istft_generator(TINY_PGHI)
    mel = random_mel(CHUNK)
    stream = generator.stream()
    with torch.no_grad():
        original = generator(mel)
        generator.blocks[0].expand.weight.mul_(2.0)  # in place, as an optimizer step would
        generator.blocks[-1].depthwise.weight.add_(0.1)
        generator.head.bias.add_(0.3)
        changed = generator(mel)
    assert (changed - original).abs().max() > 1e-3
    assert (stream.push(mel) - original).abs().max() < 1e-5  # opened before the change
    stream.reset()
    assert (stream.push(mel) - changed).abs().max() < 1e-5


@pytest.mark.parametrize("cfg", **ISTFT_HEADS)
def test_istft_stream_and_flush_give_vocode_with_a_constant_cache(cfg):
    generator = istft_generator(cfg)
    mel = random_mel(5 * CHUNK)
    stream = generator.stream()
    pushed, sizes = [], []
    for i in range(0, mel.shape[-1], CHUNK):
        pushed.append(stream.push(mel[:, i:i + CHUNK]))
        sizes.append(stream.cache_numel())
    lag = stream.latency_samples
    assert lag == (cfg.lookahead_hops + cfg.phase_lookahead_hops) * HOP and len(set(sizes)) == 1
    with torch.no_grad():
        aligned = generator.vocode(mel)
    assert (torch.cat([*pushed, stream.flush()])[lag:] - aligned).abs().max() < 1e-5
    assert (generator.vocode_streaming(mel, 3) - aligned).abs().max() < 1e-5
    stream.reset()
    phase = [] if stream.phase is None else [stream.phase]
    assert all(p.abs().max() == 0 for p in [stream.mel_past, stream.tail, *stream.block_pasts, *phase])


def test_istft_generator_answers_each_frame_with_the_samples_under_it():
    generator = istft_generator()
    mel = random_mel(30)
    changed = mel.clone()
    changed[:, 20:] += 1.0
    with torch.no_grad():
        before, after = generator(mel), generator(changed)
        aligned_before, aligned_after = generator.vocode(mel), generator.vocode(changed)
    assert torch.equal(before[:20 * HOP], after[:20 * HOP])  # causal: frame 20 first sounds in hop 20
    assert (before[20 * HOP:] - after[20 * HOP:]).abs().max() > 1e-3
    first_changed = int(torch.nonzero((aligned_before - aligned_after).abs() > 1e-6)[0])
    assert first_changed // HOP == 20 - TINY_ISTFT.lookahead_hops  # the hop the Hann window starts on at 0


def test_the_synthesis_window_gives_a_stft_its_wave_back():
    n_fft, hop = TINY_ISTFT.istft_n_fft, HOP
    wave = torch.randn(40 * hop, generator=torch.Generator().manual_seed(0))
    # frame i cut from wave[i * hop : i * hop + n_fft] through a Hann window, as an STFT does
    frames = wave.unfold(0, n_fft, hop) * torch.hann_window(n_fft, periodic=True)  # (frames, n_fft)
    rebuilt = overlap_add((frames * synthesis_window(n_fft, hop))[None], hop)[0]
    covered = slice(n_fft - hop, len(rebuilt) - (n_fft - hop))  # the hops every frame window overlaps
    assert (rebuilt[covered] - wave[covered]).abs().max() < 1e-5


def test_phases_summed_chunk_by_chunk_equal_the_offline_sum_however_long():
    advance = 3 * torch.randn(1, 20_000, 9, generator=torch.Generator().manual_seed(0))  # 200 s of frames
    offline, _ = integrate_phase(advance)
    parts, start = [], None
    for i in range(0, advance.shape[1], 8):
        phase, start = integrate_phase(advance[:, i:i + 8], start)
        parts.append(phase)
    assert (torch.cat(parts, dim=1) - offline).abs().max() < 1e-5
    assert offline.abs().max() <= math.pi


def steady_spectra(generator: IstftGenerator, frequency: float, phase_kind: str, frames: int = 60):
    """log-magnitudes loud at the bins around ``frequency`` and the same phases (or advances) every frame."""
    bins = generator.n_fft // 2 + 1
    centre = frequency * generator.n_fft / TINY.audio.sample_rate
    distance = (torch.arange(bins) - centre).abs()
    log_magnitude = torch.where(distance < 2, 0.0, -30.0).expand(1, frames, bins)
    advance = 2 * math.pi * frequency * HOP / TINY.audio.sample_rate  # how far a tone turns in one hop
    phase = torch.full((1, frames, bins), advance if phase_kind == "advance" else 0.0)
    return log_magnitude, phase


def test_a_steady_advance_head_plays_a_steady_tone_at_any_frequency():
    """What "advance" is for: frames that all look the same add up to a tone between the hop's harmonics.

    Identical frames one hop apart repeat every hop, so a "frame" head that
    sees a steady mel plays the hop rate's harmonics (multiples of 100 Hz at
    16 kHz), whatever the tone; summed advances turn each frame on by the hop.
    """
    rate, frequency = TINY.audio.sample_rate, 1234.0  # between two multiples of rate / hop
    peaks = {}
    for kind in ("frame", "advance"):
        generator = istft_generator(replace(TINY_ISTFT, istft_phase=kind))
        wave = generator.waveform(*steady_spectra(generator, frequency, kind))[0, 10 * HOP:]  # past the start
        spectrum = torch.fft.rfft(wave * torch.hann_window(len(wave))).abs()
        peaks[kind] = float(spectrum.argmax()) * rate / len(wave)
    assert abs(peaks["advance"] - frequency) < 10
    harmonic = rate / HOP
    assert abs(peaks["frame"] / harmonic - round(peaks["frame"] / harmonic)) * harmonic < 10


def test_a_real_stft_through_an_advance_head_gives_the_wave_back_and_no_phase_loss():
    generator = istft_generator(TINY_ADVANCE)
    wave = torch.randn(2, 40 * HOP, generator=torch.Generator().manual_seed(0))
    n_fft, lag = TINY_ADVANCE.istft_n_fft, TINY_ADVANCE.lookahead_samples
    frames = F.pad(wave, (lag, 0)).unfold(-1, n_fft, HOP)  # frame i: wave[(i - lookahead) * hop, (i + 1) * hop)
    spectrum = torch.fft.rfft(frames * torch.hann_window(n_fft), dim=-1) * generator.signs  # about the centre
    phase = torch.angle(spectrum)
    advance = torch.cat([phase[:, :1], phase[:, 1:] - phase[:, :-1]], dim=1)
    rebuilt = generator.waveform(spectrum.abs().log(), advance)
    assert (rebuilt[:, lag:] - wave[:, :-lag]).abs().max() < 1e-4  # the generator's lag
    assert phase_advance_loss(advance, wave, TINY_ADVANCE) < 1e-5
    assert phase_advance_loss(advance + 0.5, wave, TINY_ADVANCE) == pytest.approx(0.5, abs=1e-4)


def test_phases_from_magnitudes_chunk_by_chunk_equal_the_offline_ones():
    log_magnitude = 2 * torch.randn(2, 300, 41, generator=torch.Generator().manual_seed(0))
    offline, end = phase_from_magnitude(log_magnitude, HOP)
    parts, start = [], None
    for i in range(0, log_magnitude.shape[1], 8):
        phase, start = phase_from_magnitude(log_magnitude[:, i:i + 8], HOP, start)
        parts.append(phase)
    assert torch.equal(torch.cat(parts, dim=1), offline) and torch.equal(start, end)
    assert offline.abs().max() <= math.pi and offline.dtype == torch.float64


def two_tone_convergence(cfg) -> dict[str, float]:
    """Phases computed from a real STFT's magnitudes rebuild a gliding two-tone wave: pitch and spectrum.

    Returns the spectral convergence (relative error of the magnitudes of
    the rebuilt wave) through ``cfg``'s pghi phases and through random ones.
    """
    generator = istft_generator(cfg)
    rate, lag = TINY.audio.sample_rate, cfg.lookahead_samples
    t = torch.arange(60 * HOP) / rate
    wave = (torch.sin(2 * math.pi * (300 * t + 100 * t ** 2)) + 0.5 * torch.sin(2 * math.pi * 1234 * t))[None]
    log_magnitude = generator_frame_spectra(wave, TINY_PGHI).abs().log().float()
    rebuilt = generator.waveform(log_magnitude, None)[:, lag:]
    scrambled = torch.rand(log_magnitude.shape, generator=torch.Generator().manual_seed(0)) * 2 * math.pi
    noisy = overlap_add(torch.fft.irfft(torch.polar(log_magnitude.exp(), scrambled), n=generator.n_fft)
                        * generator.window, HOP)[:, lag:wave.shape[-1]]
    def magnitudes(w):  # past the start, where the first frames are cut from silence
        return torch.stft(w[0, 10 * HOP:], 512, 128, window=torch.hann_window(512), return_complex=True).abs()

    original = magnitudes(wave[:, :-lag])
    spectrum = torch.fft.rfft(rebuilt[0, -20 * HOP:] * torch.hann_window(20 * HOP)).abs()
    assert abs(float(spectrum[int(1100 * 20 * HOP / rate):].argmax()) * rate / (20 * HOP) + 1100 - 1234) < 15
    return {name: float(torch.linalg.norm(magnitudes(out) - original) / torch.linalg.norm(original))
            for name, out in (("pghi", rebuilt), ("random", noisy))}


def test_a_pghi_head_gives_a_wave_back_from_its_magnitudes_alone():
    """The same magnitudes with random phases do far worse: the phases carry the wave, and the magnitudes tell them.

    Looking a frame ahead, the time slope centred on each frame, rebuilds it closer still.
    """
    causal, ahead = two_tone_convergence(TINY_PGHI), two_tone_convergence(TINY_PGHI_AHEAD)
    assert causal["pghi"] < 0.25 and causal["random"] > 0.5
    assert ahead["pghi"] < causal["pghi"]


def test_only_a_pghi_head_looks_ahead_for_its_phases(tmp_path):
    from michi_lite.cli import main

    with pytest.raises(ValueError, match="phase_lookahead_hops is for an istft generator with pghi"):
        replace(TINY_ADVANCE, phase_lookahead_hops=1)
    with pytest.raises(ValueError, match="0 or 1"):
        replace(TINY_PGHI, phase_lookahead_hops=2)
    causal = save_vocoder(tmp_path / "causal.safetensors", istft_generator(TINY_PGHI), "tiny")
    main(["export", "vocoder", "--preset", "tiny", "--ckpt", str(causal), "--out", str(tmp_path / "ahead.safetensors"),
          "--phase-lookahead-hops", "1"])
    before, after = load_vocoder(causal, "tiny"), load_vocoder(tmp_path / "ahead.safetensors", "tiny")
    assert before.cfg.lookahead_samples == TINY.lookahead_hops * HOP  # a file without the field looks back
    assert after.cfg.phase_lookahead_hops == 1 and after.cfg.lookahead_samples == before.cfg.lookahead_samples + HOP
    weights = zip(before.state_dict().values(), after.state_dict().values())
    assert all(torch.equal(a.half().float(), b) for a, b in weights)  # the same weights, in fp16


def test_the_magnitude_loss_is_zero_for_the_real_magnitudes():
    wave = torch.randn(2, 40 * HOP, generator=torch.Generator().manual_seed(0))
    log_magnitude = generator_frame_spectra(wave, TINY_PGHI).abs().log()
    assert magnitude_loss(log_magnitude, wave, TINY_PGHI) < 1e-5
    assert magnitude_loss(log_magnitude + 0.5, wave, TINY_PGHI) == pytest.approx(0.5, abs=1e-3)
    with pytest.raises(ValueError, match="arch 'istft'"):
        replace(TINY, magnitude_loss_weight=1.0)


def test_a_pghi_head_learns_from_its_magnitudes(tiny_corpus, tmp_path):
    from michi_lite.cli import main

    run = tmp_path / "run"
    main(train_command(tiny_corpus, run) + ["--steps", "2", "--arch", "istft", "--istft-phase", "pghi",
                                            "--magnitude-loss", "1", "--mel-loss", "0", "--discriminator-start", "10"])
    assert started_config(run)["mel_loss_weight"] == 0 and started_config(run)["magnitude_loss_weight"] == 1
    log = read_log(run)
    assert all(float(row["magnitude_loss"]) > 0 and float(row["mel_loss"]) > 0 for row in log)
    assert float(log[0]["generator_loss"]) == pytest.approx(float(log[0]["magnitude_loss"]), rel=1e-5)
    loaded = load_vocoder(run, "tiny")
    assert loaded.cfg.istft_phase == "pghi" and loaded.head.out_features == loaded.n_fft // 2 + 1
    advance = save_vocoder(tmp_path / "advance.safetensors", istft_generator(TINY_ADVANCE), "tiny")
    with pytest.raises(ValueError, match="another architecture, shape"):
        train_vocoder(TINY, tiny_corpus, tmp_path / "other", steps=1, arch="istft", istft_phase="pghi", init=advance)


@pytest.fixture(scope="module")
def acoustic_mels_file(tiny_corpus, tmp_path_factory):
    """A random tiny acoustic model's mels of the tiny corpus's train utterances (`data acoustic-mels`)."""
    from michi_lite.acoustic import AcousticModel, acoustic_config, save_acoustic
    from michi_lite.cli import main

    tmp = tmp_path_factory.mktemp("acoustic_mels")
    torch.manual_seed(0)
    acoustic = save_acoustic(tmp / "acoustic.safetensors", AcousticModel(acoustic_config("tiny")), "tiny")
    made = tmp / "mels.safetensors"
    main(["data", "acoustic-mels", "--preset", "tiny", "--data", str(tiny_corpus), "--acoustic", str(acoustic),
          "--out", str(made), "--steps", "1"])
    return made


def test_a_vocoder_hears_the_acoustic_models_mels_against_the_real_audio(tiny_corpus, acoustic_mels_file, tmp_path,
                                                                         one_thread):
    from michi_lite.acoustic import read_acoustic_mels
    from michi_lite.cli import main

    made = acoustic_mels_file
    mels = read_acoustic_mels(made, "tiny")
    cfg = replace(TINY_PGHI, acoustic_mels=str(made), acoustic_mel_share=1.0)
    segments = AudioSegments(tiny_corpus, cfg)
    index = next(i for i, r in enumerate(segments.records) if r["id"] in mels)
    crop, mel, given = segments[index]
    full = mels[segments.records[index]["id"]].T  # (n_mels, columns): the crop's columns are a stretch of it
    assert given and any(torch.equal(mel, full[:, k:k + mel.shape[1]]) for k in range(full.shape[1] - mel.shape[1] + 1))

    # the trainer plays the given mels in place of the real ones, the loss still against the real audio
    wave = torch.stack([segments[i][0] for i in range(2)])
    real = normalize_mel(MelSpectrogram(TINY.audio)(wave))
    losses = {}
    for name, spoken, flags in (("real", real, [True, True]), ("not given", real + 3, [False, False]),
                                ("given", real + 3, [True, False])):
        torch.manual_seed(0)
        recipe = replace(TINY_PGHI, magnitude_loss_weight=1.0, discriminator_start=10)
        trainer = VocoderTrainer(recipe, torch.device("cpu"))
        losses[name] = trainer.step((wave, spoken, torch.tensor(flags)))["magnitude_loss"]
    assert losses["real"] == losses["not given"] != losses["given"]

    run = tmp_path / "run"
    main(train_command(tiny_corpus, run) + ["--steps", "2", "--arch", "istft", "--istft-phase", "pghi",
                                            "--magnitude-loss", "1", "--acoustic-mels", str(made),
                                            "--acoustic-mel-share", "0.5"])
    main(train_command(tiny_corpus, run) + ["--steps", "3", "--resume"])
    assert started_config(run)["acoustic_mel_share"] == 0.5 and int(read_log(run)[-1]["step"]) == 3
    with pytest.raises(ValueError, match="acoustic_mel_share needs acoustic_mels"):
        replace(TINY_PGHI, acoustic_mel_share=0.5)
    some_id = next(iter(mels))
    save_file({some_id: torch.zeros(3, TINY.audio.n_mels, dtype=torch.float16)}, str(tmp_path / "other.safetensors"),
              metadata={"format": "michi_lite.acoustic_mels/1", "preset": "tiny"})
    other = AudioSegments(tiny_corpus, replace(cfg, acoustic_mels=str(tmp_path / "other.safetensors")))
    with pytest.raises(ValueError, match="another corpus"):
        other[next(i for i, r in enumerate(other.records) if r["id"] == some_id)]
    save_file({"nobody": torch.zeros(3, 2)}, str(tmp_path / "nobody.safetensors"),
              metadata={"format": "michi_lite.acoustic_mels/1", "preset": "tiny"})
    with pytest.raises(ValueError, match="no mels of the train utterances"):
        AudioSegments(tiny_corpus, replace(cfg, acoustic_mels=str(tmp_path / "nobody.safetensors")))


def test_a_teachers_audio_of_the_acoustic_mels_replaces_the_real_audio(tiny_corpus, acoustic_mels_file, tmp_path,
                                                                       one_thread, capsys):
    from michi_lite.acoustic import read_acoustic_mels
    from michi_lite.cli import main

    torch.manual_seed(0)
    teacher_file = save_vocoder(tmp_path / "teacher.safetensors", istft_generator(TINY_ADVANCE), "tiny")
    mels = read_acoustic_mels(acoustic_mels_file, "tiny")
    plain = replace(TINY_PGHI, acoustic_mels=str(acoustic_mels_file), acoustic_mel_share=0.5)
    taught = replace(plain, acoustic_mel_teacher=str(teacher_file))
    segments = {"plain": AudioSegments(tiny_corpus, plain), "taught": AudioSegments(tiny_corpus, taught)}
    items = {}
    for name, dataset in segments.items():  # the same seed draws the same crops and shares, teacher or not
        torch.manual_seed(3)
        items[name] = [dataset[i % len(dataset)] for i in range(12)]
    teacher = load_vocoder(teacher_file, "tiny")
    hop = TINY.audio.hop_length
    n_given = 0
    for i, ((real, mel, given), (crop, same_mel, same_given)) in enumerate(zip(items["plain"], items["taught"])):
        assert torch.equal(mel, same_mel) and given == same_given
        if not given:
            assert torch.equal(crop, real)
            continue
        n_given += 1  # the crop is the teacher's audio of the mel's stretch of the utterance, fp16
        full = mels[segments["taught"].records[i % len(segments["taught"])]["id"]].T
        k = next(k for k in range(full.shape[1] - mel.shape[1] + 1) if torch.equal(mel, full[:, k:k + mel.shape[1]]))
        spoken = teacher.vocode(full).detach()[k * hop:k * hop + len(crop)]
        assert not torch.allclose(crop, real, atol=1e-3)
        torch.testing.assert_close(crop[:len(spoken)], spoken.half().float())
    assert 0 < n_given < 12

    run = tmp_path / "run"
    main(train_command(tiny_corpus, run) + ["--steps", "2", "--arch", "istft", "--istft-phase", "pghi",
                                            "--magnitude-loss", "1", "--acoustic-mels", str(acoustic_mels_file),
                                            "--acoustic-mel-share", "0.5", "--acoustic-mel-teacher", str(teacher_file)])
    main(train_command(tiny_corpus, run) + ["--steps", "3", "--resume"])
    assert started_config(run)["acoustic_mel_teacher"] == str(teacher_file) and int(read_log(run)[-1]["step"]) == 3
    # another file under the teacher's name would give other targets: refused; a share of 0 needs no teacher
    save_vocoder(teacher_file, istft_generator(TINY_ADVANCE, seed=1), "tiny")
    with pytest.raises(SystemExit):
        main(train_command(tiny_corpus, run) + ["--steps", "4", "--resume"])
    assert "started with another file at" in capsys.readouterr().err
    main(train_command(tiny_corpus, run) + ["--steps", "4", "--resume", "--acoustic-mel-share", "0"])
    assert started_config(run)["acoustic_mel_teacher"] is None and int(read_log(run)[-1]["step"]) == 4
    with pytest.raises(ValueError, match="acoustic_mel_teacher speaks the acoustic mels"):
        replace(TINY_PGHI, acoustic_mel_teacher=str(teacher_file))
    with pytest.raises(ValueError, match="not a michi_lite vocoder checkpoint"):
        AudioSegments(tiny_corpus, replace(taught, acoustic_mel_teacher=str(acoustic_mels_file)))


def test_the_phase_loss_needs_an_advance_head(tiny_corpus, tmp_path):
    with pytest.raises(ValueError, match="istft_phase 'advance'"):
        replace(TINY_ISTFT, phase_loss_weight=1.0)
    with pytest.raises(ValueError, match="istft_phase must be one of"):
        replace(TINY_ISTFT, istft_phase="group_delay")
    run = tmp_path / "run"
    train_vocoder(TINY, tiny_corpus, run, steps=2, batch_size=2, arch="istft", istft_phase="advance",
                  phase_loss_weight=1.0)
    log = read_log(run)
    assert float(log[-1]["phase_loss"]) > 0 and started_config(run)["phase_loss_weight"] == 1
    assert load_vocoder(run, "tiny").cfg.istft_phase == "advance"
    with pytest.raises(ValueError, match="started with istft_phase 'advance'"):
        train_vocoder(TINY, tiny_corpus, run, steps=3, resume=True, istft_phase="frame")


def test_an_istft_generator_trains_saves_and_refuses_the_other_arch(tiny_corpus, tmp_path):
    from michi_lite.cli import main

    run = tmp_path / "run"
    args = train_command(tiny_corpus, run)
    main(args + ["--steps", "2", "--arch", "istft"])
    main(args + ["--steps", "3", "--resume"])  # not given again: the run's own
    assert int(read_log(run)[-1]["step"]) == 3
    loaded = load_vocoder(run, "tiny")
    assert isinstance(loaded, IstftGenerator) and loaded.cfg.arch == "istft"
    assert torch.isfinite(loaded.vocode(random_mel(CHUNK))).all()
    with pytest.raises(ValueError, match="started with arch 'istft'"):
        train_vocoder(TINY, tiny_corpus, run, steps=4, resume=True, arch="hifigan")
    with pytest.raises(ValueError, match="another architecture"):
        train_vocoder(TINY, tiny_corpus, tmp_path / "hifigan", steps=1, init=run)
    main(train_command(tiny_corpus, tmp_path / "from_istft") + ["--steps", "1", "--arch", "istft", "--init", str(run)])
    assert isinstance(load_vocoder(tmp_path / "from_istft", "tiny"), IstftGenerator)


@pytest.mark.parametrize("generator", [dict(arch="hifigan"), dict(arch="istft"),
                                       dict(arch="istft", istft_phase="advance", phase_loss_weight=1.0),
                                       dict(arch="istft", istft_phase="pghi", magnitude_loss_weight=1.0,
                                            mel_loss_weight=0.0)],
                         ids=["hifigan", "istft", "istft_advance", "istft_pghi"])
def test_a_resumed_run_trains_as_an_uninterrupted_one(tiny_corpus, tmp_path, generator):
    """Weights, optimizers, crops and batch order all carry over: the same losses, step for step."""
    recipe = dict(batch_size=2, checkpoint_every=2, log_every=1, **generator)
    train_vocoder(TINY, tiny_corpus, tmp_path / "straight", steps=4, **recipe)
    train_vocoder(TINY, tiny_corpus, tmp_path / "cut", steps=2, **recipe)
    train_vocoder(TINY, tiny_corpus, tmp_path / "cut", steps=4, resume=True, **recipe)
    straight, cut = read_log(tmp_path / "straight"), read_log(tmp_path / "cut")
    assert [r["step"] for r in cut] == ["1", "2", "3", "4"]
    for a, b in zip(straight, cut):
        assert float(a["generator_loss"]) == pytest.approx(float(b["generator_loss"]), rel=1e-5)


def test_istft_needs_a_lookahead_to_overlap_its_frames():
    with pytest.raises(ValueError, match="lookahead_hops 1 or more"):
        replace(TINY_ISTFT, lookahead_hops=0)
    with pytest.raises(ValueError, match="arch must be one of"):
        replace(TINY, arch="wavenet")


def read_log(run) -> list[dict]:
    with (run / "train_log.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def train_command(corpus, run) -> list[str]:
    """`michi-lite train vocoder` on the tiny corpus, batch 2, a checkpoint every step; add --steps and the rest."""
    return ["train", "vocoder", "--preset", "tiny", "--data", str(corpus), "--out", str(run),
            "--batch-size", "2", "--checkpoint-every", "1"]


def test_train_vocoder_checkpoints_logs_and_resumes(tiny_corpus, tmp_path):
    run = tmp_path / "run"
    # a batch size other than the preset's is a training choice: the generator still loads as "tiny"
    train_vocoder(TINY, tiny_corpus, run, steps=3, batch_size=3, checkpoint_every=2, log_every=1, device="cpu")
    assert latest_checkpoint(run).name == "step_00000003"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000002", "step_00000003"]
    rows = read_log(run)
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert all(math.isfinite(float(r["mel_loss"])) and float(r["seconds"]) > 0 for r in rows)
    with torch.no_grad():
        assert load_vocoder(run, "tiny")(random_mel(8)).shape == (8 * HOP,)

    with pytest.raises(ValueError, match="resume"):
        train_vocoder(TINY, tiny_corpus, run, steps=5, device="cpu")

    # a kill after step 3 but before its checkpoint: resume goes back to step 2 and logs 3.. again once
    shutil.rmtree(run / "checkpoints" / "step_00000003")
    train_vocoder(TINY, tiny_corpus, run, steps=5, resume=True, checkpoint_every=2, log_every=1, device="cpu")
    assert [int(r["step"]) for r in read_log(run)] == [1, 2, 3, 4, 5]
    state = json.loads((latest_checkpoint(run) / "state.json").read_text())
    assert state["step"] == 5 and state["preset"] == "tiny"
    assert state["config"]["batch_size"] == 3  # the resumed run kept the batch size it started with
    assert not list((run / "checkpoints").glob(".tmp*"))


def test_a_time_limit_stops_with_a_checkpoint_that_resumes(tiny_corpus, tmp_path):
    run = tmp_path / "run"
    train_vocoder(TINY, tiny_corpus, run, steps=50, batch_size=2, checkpoint_every=100, max_minutes=0.0,
                  device="cpu")
    assert latest_checkpoint(run).name == "step_00000001"  # one step, then out of time, checkpointed
    assert [int(r["step"]) for r in read_log(run)] == [1]
    train_vocoder(TINY, tiny_corpus, run, steps=3, resume=True, checkpoint_every=100, log_every=1, device="cpu")
    assert latest_checkpoint(run).name == "step_00000003"


def test_train_vocoder_command_trains_and_resumes(tiny_corpus, tmp_path):
    from michi_lite.cli import main

    run = tmp_path / "run"
    args = train_command(tiny_corpus, run)
    main(args + ["--steps", "2"])
    main(args + ["--steps", "3", "--resume"])
    steps = [int(row["step"]) for row in csv.DictReader((run / "train_log.csv").open())]
    assert steps[-1] == 3 and steps == sorted(set(steps))  # resumed at 2, no step logged twice
    with torch.no_grad():
        assert load_vocoder(run, "tiny")(random_mel(4)).shape == (4 * HOP,)


def test_init_starts_a_new_run_from_an_exported_generator(tiny_corpus, tmp_path):
    first = train_vocoder(TINY, tiny_corpus, tmp_path / "first", steps=2, batch_size=2, device="cpu")
    exported = save_vocoder(tmp_path / "g.safetensors", load_vocoder(first, "tiny"), "tiny")
    trainer = VocoderTrainer(TINY, torch.device("cpu"))
    trainer.start_generator_from(load_vocoder(exported, "tiny"))
    mel = random_mel(6)
    with torch.no_grad():  # weight norm split back out of the folded weights: the same generator
        torch.testing.assert_close(trainer.generator(mel), load_vocoder(exported, "tiny")(mel), atol=1e-5, rtol=0)

    from michi_lite.cli import main

    run = tmp_path / "second"
    main(["train", "vocoder", "--preset", "tiny", "--data", str(tiny_corpus), "--out", str(run),
          "--batch-size", "2", "--steps", "1", "--init", str(exported)])
    assert [int(r["step"]) for r in read_log(run)] == [1]  # a new run, counted from 0

    lite = save_vocoder(tmp_path / "lite.safetensors", HiFiGANGenerator(vocoder_config("lite")), "lite")
    with pytest.raises(ValueError, match="preset"):  # another preset's generator is refused, not half-loaded
        train_vocoder(TINY, tiny_corpus, tmp_path / "third", steps=1, device="cpu", init=lite)


def test_a_checkpoint_restores_optimizers_schedules_and_random_state(tmp_path):
    trainer = VocoderTrainer(TINY, torch.device("cpu"))
    trainer.step(torch.randn(2, TINY.segment_samples) * 0.1)
    at_checkpoint = torch.get_rng_state()
    save_checkpoint(tmp_path, trainer, step=1, seconds=1.0)
    expected_draw = torch.rand(3, generator=torch.Generator().set_state(at_checkpoint))

    torch.manual_seed(123)  # a fresh process would start from another random state
    restored = VocoderTrainer(TINY, torch.device("cpu"))
    assert load_checkpoint(latest_checkpoint(tmp_path), restored) == (1, 1.0)
    assert torch.equal(torch.rand(3), expected_draw)
    assert restored.sched_g.last_epoch == trainer.sched_g.last_epoch == 1
    for name, module in trainer.modules().items():
        for key, value in module.state_dict().items():
            assert torch.equal(value, restored.modules()[name].state_dict()[key]), (name, key)
    moment = next(iter(trainer.opt_g.state.values()))["exp_avg"]
    assert torch.equal(moment, next(iter(restored.opt_g.state.values()))["exp_avg"])
