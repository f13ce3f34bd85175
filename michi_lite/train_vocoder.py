"""The vocoder's training recipe (``michi-lite train vocoder``), on the shared loop of ``train.py``.

``AudioSegments`` cuts random fixed-length crops of a corpus's train
utterances (with the acoustic model's mels in a share of them, and a
teacher's audio of those, if asked); ``VocoderTrainer`` is one HiFi-GAN step
on a batch of them, discriminators then generator, for any generator of
``vocoder.py`` and with the losses its config weights; ``train_vocoder`` runs
it with checkpoints, resuming and the log, and exports the generator
``load_vocoder`` reads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrize import is_parametrized

from .audio import SILENCE_MEL, MelSpectrogram, frame_count, load_audio, normalize_mel
from .data.corpus import load_manifest
from .train import ShuffledBatches, fit, loader_workers, started_config, training_device
from .vocoder import (
    CausalVocoder,
    IstftGenerator,
    MultiPeriodDiscriminator,
    MultiResolutionDiscriminator,
    MultiScaleMelLoss,
    VocoderConfig,
    adversarial_loss,
    build_generator,
    discriminator_loss,
    feature_matching_loss,
    load_vocoder,
    magnitude_loss,
    phase_advance_loss,
    save_vocoder,
    stft_loss,
)
from .weights import weights_file

logger = logging.getLogger(__name__)


class AudioSegments(torch.utils.data.Dataset):
    """Random fixed-length crops of the corpus's train utterances, starting on a mel hop.

    An item is the crop (segment,). With ``cfg.acoustic_mel_share``, it is
    (crop, mel (n_mels, segment / hop), whether that mel is the acoustic
    model's): each crop of an utterance in ``cfg.acoustic_mels`` takes the
    acoustic model's columns under it with that probability (else zeros,
    and the trainer computes the real mel). With ``cfg.acoustic_mel_teacher``
    such a crop is the teacher's audio of those columns, not the real audio:
    the teacher speaks every acoustic mel once, here, and its waves are kept
    (fp16, about 700 MB for six hours of speech).
    """

    def __init__(self, data_dir: str | os.PathLike, cfg: VocoderConfig, split: str = "train") -> None:
        self.data_dir = Path(data_dir)
        self.records = load_manifest(data_dir, split)
        if not self.records:
            raise ValueError(f"{data_dir}: the {split} split is empty")
        self.audio = cfg.audio
        self.segment = cfg.segment_samples
        self.share, self.acoustic_mels = cfg.acoustic_mel_share, {}
        if self.share:
            from .acoustic import read_acoustic_mels

            # kept as the file has them (fp16: 300 MB for six hours of speech), each crop made fp32
            self.acoustic_mels = read_acoustic_mels(cfg.acoustic_mels, cfg.preset, torch.float16)
            if not any(r["id"] in self.acoustic_mels for r in self.records):
                raise ValueError(f"{cfg.acoustic_mels}: no mels of the {split} utterances of {data_dir}; make them "
                                 f"with `michi-lite data acoustic-mels --data {data_dir}`")
        self.teacher_waves = self.teacher_speaks(cfg) if cfg.acoustic_mel_teacher else {}

    def teacher_speaks(self, cfg: VocoderConfig) -> dict[str, torch.Tensor]:
        """The teacher's audio of each acoustic mel of this split (fp16), aligned with it as ``vocode`` aligns."""
        teacher = load_vocoder(cfg.acoustic_mel_teacher, cfg.preset)
        ids = [r["id"] for r in self.records if r["id"] in self.acoustic_mels]
        logger.info("vocoder: %s speaks the %d acoustic mels", cfg.acoustic_mel_teacher, len(ids))
        with torch.inference_mode(), torch.random.fork_rng():  # the data order does not depend on the teacher
            return {i: teacher.vocode(self.acoustic_mels[i].T.float()).half() for i in ids}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, bool]:
        record, hop = self.records[index], self.audio.hop_length
        wave = torch.from_numpy(load_audio(self.data_dir / record["path"], self.audio.sample_rate))
        spoken = self.acoustic_mels.get(record["id"])
        if spoken is not None and len(spoken) != frame_count(len(wave), self.audio) * self.audio.mels_per_frame:
            raise ValueError(f"{record['id']}: its acoustic mel has {len(spoken)} columns, not those of its audio "
                             f"({len(wave)} samples); were the mels made from another corpus?")
        wave = F.pad(wave, (0, max(0, self.segment - len(wave))))  # short utterances: pad with silence
        hops = (len(wave) - self.segment) // hop
        start = int(torch.randint(hops + 1, ())) * hop
        crop = wave[start:start + self.segment]  # (segment,)
        if not self.share:
            return crop
        columns = self.segment // hop
        if spoken is None or float(torch.rand(())) >= self.share:
            return crop, torch.zeros(self.audio.n_mels, columns), False
        # (n_mels, columns, or fewer: padded as the wave is)
        spoken = spoken[start // hop:start // hop + columns].T.float()
        if self.teacher_waves:
            taught = self.teacher_waves[record["id"]][start:start + self.segment].float()
            crop = F.pad(taught, (0, self.segment - len(taught)))
        return crop, F.pad(spoken, (0, columns - spoken.shape[-1]), value=SILENCE_MEL), True


# the training log's columns
LOSSES = ["generator_loss", "mel_loss", "stft_loss", "multiscale_mel_loss", "phase_loss", "magnitude_loss",
          "feature_loss", "adversarial_loss", "discriminator_loss"]


class VocoderTrainer:
    """The generator, both discriminators and their optimizers: what one training step updates."""

    def __init__(self, cfg: VocoderConfig, device: torch.device) -> None:
        self.cfg, self.device, self.preset = cfg, device, cfg.preset
        self.generator = build_generator(cfg).to(self.device)
        self.mpd = MultiPeriodDiscriminator(cfg).to(self.device)
        self.mrd = MultiResolutionDiscriminator(cfg).to(self.device)
        self.mel = MelSpectrogram(cfg.audio).to(self.device)
        self.multiscale_mel = (MultiScaleMelLoss(cfg.audio, cfg.multiscale_mel_windows).to(self.device)
                               if cfg.multiscale_mel_loss_weight else None)
        adam = dict(lr=cfg.learning_rate, betas=cfg.adam_betas)
        self.opt_g = torch.optim.AdamW(self.generator.parameters(), **adam)
        self.opt_d = torch.optim.AdamW([*self.mpd.parameters(), *self.mrd.parameters()], **adam)
        self.sched_g = torch.optim.lr_scheduler.ExponentialLR(self.opt_g, cfg.lr_decay)
        self.sched_d = torch.optim.lr_scheduler.ExponentialLR(self.opt_d, cfg.lr_decay)
        # bf16 on a GPU: same range as fp32, so no loss scaling; a CPU stays in fp32
        self.autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else nullcontext()
        )

    @property
    def warming_up(self) -> bool:
        """Whether the next step trains the generator alone (before ``discriminator_start``)."""
        return self.sched_g.last_epoch < self.cfg.discriminator_start

    @property
    def generator_waiting(self) -> bool:
        """Whether the next step trains the discriminators alone (the first ``discriminator_warmup`` of theirs)."""
        return not self.warming_up and self.sched_d.last_epoch < self.cfg.discriminator_warmup

    def step(self, batch: torch.Tensor | list[torch.Tensor]) -> dict[str, float]:
        """One HiFi-GAN step on a batch of real audio (batch, samples): discriminators, then generator.

        With acoustic mels (``AudioSegments``) the batch is (audio, mels,
        which are given), and the generator hears the given mels in place of
        the audio's own; every loss still compares with the audio (the real
        audio, or a teacher's of the given mel).

        While ``warming_up``, the generator alone learns from its mel loss (and
        the STFT and multi-scale mel losses, if weighted) and the discriminators
        wait; then, while ``generator_waiting``, the discriminators alone learn.
        What it returns leaves out the losses not computed (empty in the log).
        """
        wave, spoken, given = (batch, None, None) if isinstance(batch, torch.Tensor) else batch
        wave = wave.to(self.device)
        with self.autocast, torch.set_grad_enabled(not self.generator_waiting):
            # under bf16 the waveform carries about 8 bits of mantissa: fine for the losses, whose
            # mel L1 works on log magnitudes, and the generator itself stays in fp32 for inference
            mel = normalize_mel(self.mel(wave))
            if spoken is not None:
                mel = torch.where(given.to(self.device)[:, None, None], spoken.to(self.device), mel)
            head_losses = {}  # losses on the istft head's own outputs, beside the wave's
            if self.cfg.phase_loss_weight or self.cfg.magnitude_loss_weight:
                log_magnitude, phase = self.generator.spectra(self.generator.trunk(mel))
                if self.cfg.phase_loss_weight:
                    head_losses["phase_loss"] = phase_advance_loss(phase.float(), wave, self.cfg)
                    # the phases learn from the phase loss alone: through the sum over frames, every later
                    # frame's share of the other losses piles onto each advance, and in a paired probe that
                    # pulled the advances away from the real ones (phase loss 1.60 against 1.17, first 250 steps)
                    phase = phase.detach()
                if self.cfg.magnitude_loss_weight:
                    head_losses["magnitude_loss"] = magnitude_loss(log_magnitude, wave, self.cfg)
                fake = self.generator.waveform(log_magnitude, phase).float()  # (batch, frames * hop)
            else:
                fake = self.generator(mel).float()
        # The output lags its mel by the look-ahead: line the two waves up by dropping
        # the generator's first samples (answers to frames before the segment) and the
        # real wave's last ones (not answered yet).
        lag = self.cfg.lookahead_samples
        fake, wave = fake[:, lag:], wave[:, :wave.shape[-1] - lag]  # (batch, segment - lag)
        mel_real = self.mel(wave)  # (batch, n_mels, frames - lookahead_hops)
        if self.warming_up:
            return self.generator_alone_step(fake, wave, mel_real, head_losses)

        # Discriminators: tell real from generated (the generator is not updated here).
        with self.autocast:
            d_loss = sum(
                discriminator_loss(disc(wave)[0], disc(fake.detach())[0]) for disc in (self.mpd, self.mrd)
            )
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        if self.generator_waiting:  # the generator's weights, moments and learning rate stay as they are
            self.sched_d.step()
            mel_loss = F.l1_loss(self.mel(fake), mel_real)  # for the log: fake was made without a graph
            return {"mel_loss": mel_loss.item(), "discriminator_loss": d_loss.item()}

        # Generator: sound like the mel says, and fool the discriminators.
        reconstruction, g_loss = self.reconstruction_loss(fake, wave, mel_real, head_losses)
        adv_loss = fm_loss = 0.0
        with self.autocast:
            for disc in (self.mpd, self.mrd):
                with torch.no_grad():  # the real audio's features are targets here, not trained
                    _, real_features = disc(wave)
                fake_scores, fake_features = disc(fake)
                adv_loss = adv_loss + adversarial_loss(fake_scores)
                fm_loss = fm_loss + feature_matching_loss(real_features, fake_features)
        g_loss = g_loss + adv_loss + self.cfg.feature_loss_weight * fm_loss
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()

        self.sched_g.step()
        self.sched_d.step()
        losses = {"generator_loss": g_loss, **reconstruction,
                  "feature_loss": fm_loss, "adversarial_loss": adv_loss, "discriminator_loss": d_loss}
        return {name: loss.item() for name, loss in losses.items()}

    def reconstruction_loss(
        self, fake: torch.Tensor, wave: torch.Tensor, mel_real: torch.Tensor,
        head_losses: dict[str, torch.Tensor] | None = None,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Each reconstruction loss by name, and their weighted sum.

        The mel L1 always (at weight 0 for the log only, without a gradient); the STFT and multi-scale
        mel losses only while weighted (not computed at 0); the istft head's phase and magnitude
        losses, computed by ``step`` where the head's outputs are at hand, if given.
        """
        with torch.set_grad_enabled(torch.is_grad_enabled() and bool(self.cfg.mel_loss_weight)):
            losses = {"mel_loss": F.l1_loss(self.mel(fake), mel_real)}
        total = self.cfg.mel_loss_weight * losses["mel_loss"]
        if self.cfg.stft_loss_weight:
            losses["stft_loss"] = stft_loss(fake, wave, self.cfg.stft_loss_resolutions)
            total = total + self.cfg.stft_loss_weight * losses["stft_loss"]
        if self.cfg.multiscale_mel_loss_weight:
            losses["multiscale_mel_loss"] = self.multiscale_mel(fake, wave)
            total = total + self.cfg.multiscale_mel_loss_weight * losses["multiscale_mel_loss"]
        for name, loss in (head_losses or {}).items():
            losses[name] = loss
            total = total + getattr(self.cfg, f"{name}_weight") * loss
        return losses, total

    def generator_alone_step(
        self, fake: torch.Tensor, wave: torch.Tensor, mel_real: torch.Tensor, head_losses: dict[str, torch.Tensor]
    ) -> dict[str, float]:
        """The generator's update from its reconstruction losses alone, without the discriminators."""
        reconstruction, g_loss = self.reconstruction_loss(fake, wave, mel_real, head_losses)
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        self.sched_g.step()
        losses = {"generator_loss": g_loss, **reconstruction}  # no discriminators' yet
        return {name: loss.item() for name, loss in losses.items()}

    def start_generator_from(self, plain: CausalVocoder) -> None:
        """Copy an exported generator (HiFi-GAN's weight norm folded in) into this run's.

        Assigning a weight to a weight-normed conv splits it back into
        direction and magnitude, so the outputs are the same as ``plain``'s.
        """
        if plain.cfg.generator_fields() != self.cfg.generator_fields():
            raise ValueError("the generator to start from has another architecture, shape or audio config "
                             "than this run's")
        if isinstance(plain, IstftGenerator):  # no weight norm: the weights are the same tensors
            self.generator.load_state_dict(plain.state_dict())
            return
        plain_convs = dict(plain.named_modules())
        with torch.no_grad():
            for name, module in self.generator.named_modules():
                if is_parametrized(module, "weight"):
                    module.weight = plain_convs[name].weight.detach().to(self.device)
                    module.bias.copy_(plain_convs[name].bias)

    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "mpd": self.mpd, "mrd": self.mrd}

    def optimizer_state(self) -> dict:
        return {
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "sched_g": self.sched_g.state_dict(), "sched_d": self.sched_d.state_dict(),
        }

    def load_optimizer_state(self, state: dict) -> None:
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.sched_g.load_state_dict(state["sched_g"])
        self.sched_d.load_state_dict(state["sched_d"])
        for schedule in (self.sched_g, self.sched_d):  # the decay is this run's config's, not the checkpoint's
            schedule.gamma = self.cfg.lr_decay

    def learning_rate(self) -> float:
        return self.sched_g.get_last_lr()[0]

    def config(self) -> dict:
        return json.loads(self.cfg.to_json())

    def shape(self) -> dict:
        return self.cfg.generator_fields()

    def export(self, out_dir: Path) -> None:
        save_vocoder(out_dir / "vocoder.safetensors", self.generator, self.preset)


def teacher_digest(path: str | os.PathLike | None) -> str | None:
    """The SHA-256 of a teacher vocoder's file (of ``vocoder.safetensors`` in a run's directory); None for none."""
    return None if path is None else hashlib.sha256(weights_file(path, "vocoder").read_bytes()).hexdigest()


def train_vocoder(
    cfg: VocoderConfig,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    steps: int,
    resume: bool = False,
    batch_size: int | None = None,
    segment_seconds: float | None = None,
    checkpoint_every: int = 1000,
    log_every: int = 10,
    device: str | torch.device | None = None,
    seed: int = 0,
    max_minutes: float | None = None,
    init: str | os.PathLike | None = None,
    discriminator_start: int | None = None,
    lr_decay: float | None = None,
    stft_loss_weight: float | None = None,
    multiscale_mel_loss_weight: float | None = None,
    discriminator_warmup: int | None = None,
    upsampler: str | None = None,
    arch: str | None = None,
    istft_phase: str | None = None,
    phase_loss_weight: float | None = None,
    magnitude_loss_weight: float | None = None,
    mel_loss_weight: float | None = None,
    acoustic_mels: str | os.PathLike | None = None,
    acoustic_mel_share: float | None = None,
    acoustic_mel_teacher: str | os.PathLike | None = None,
) -> Path:
    """Train the vocoder on random segments of the corpus's train split; returns the run directory.

    ``out_dir`` gets ``checkpoints/step_N/`` (the last two kept), ``vocoder.safetensors``
    (the latest generator, ready for ``load_vocoder``) and ``train_log.csv``.
    With ``resume=True`` training continues from the newest checkpoint, so a
    killed run loses at most ``checkpoint_every`` steps, and keeps the batch
    size and segment length it was started with unless they are given again.
    Weights, optimizer moments, learning-rate schedules, RNG states and the
    data order are restored (``train.fit``): on a CPU, where segments are
    cropped in the training process, a resumed run draws the batches and
    crops an uninterrupted one would have. ``max_minutes`` ends
    this call early, with a checkpoint, once it has trained that long.

    ``init`` starts a new run's generator from an exported one (a
    ``save_vocoder`` file or a run) of the same preset and shape; the
    discriminators, optimizers and learning-rate schedules start afresh.
    This is how training goes on when only the exported generator is left.

    ``discriminator_start`` (default: the config's, 0) is the step at which
    the discriminators join; before it the generator learns alone from its
    mel loss, at about a fifteenth of a full step's cost on a CPU. A resumed
    run keeps the value it was started with unless it is given again.

    ``discriminator_warmup`` (default: the config's, 0) is how many steps,
    from ``discriminator_start`` on, the discriminators learn alone against
    the generator as it stands: fresh ones judge at random at first, and a
    trained generator need not follow them then. A resumed run keeps its own
    unless it is given again.

    ``lr_decay`` (default: the config's) is the factor both learning rates
    are multiplied by after every step; from a resumed step on, a new one
    takes over where the rate has got to. A last stretch of training with a
    faster decay anneals the rate towards a smaller one. A resumed run keeps
    its own unless it is given again.

    ``stft_loss_weight`` (default: the config's, 0) adds a multi-resolution
    STFT loss to the mel loss, in both phases, and ``multiscale_mel_loss_weight``
    (default: the config's, 0) a multi-scale mel loss (``MultiScaleMelLoss``);
    a resumed run keeps each of its own unless it is given again.

    ``upsampler`` (default: the config's, ``"transposed"``) is the
    generator's ``CausalUpsample`` kind, part of its shape: a resumed run
    keeps its own and refuses another, and ``init`` must match it. So is
    ``arch`` (default: the config's, ``"hifigan"``): ``"istft"`` trains an
    ``IstftGenerator`` with the same discriminators and losses, and
    ``istft_phase`` (default: the config's, ``"frame"``) is its head's kind,
    part of its shape too. ``phase_loss_weight`` (default: the config's, 0)
    weights ``phase_advance_loss`` for an "advance" head, and
    ``magnitude_loss_weight`` (default: the config's, 0) ``magnitude_loss``
    for any istft head (a "pghi" head's one teacher); ``mel_loss_weight``
    (default: the config's, 45) the mel L1, logged at 0 but not learnt from.
    A resumed run keeps each of its own unless it is given again.

    ``acoustic_mels`` (a ``michi-lite data acoustic-mels`` file of the same
    corpus) and ``acoustic_mel_share`` (default: the config's, 0) let the
    generator hear the acoustic model's mels in that share of segments, the
    losses still against the real audio: a vocoder fine-tuned this way
    (from ``init``) learns to play the smoother mels the speaking path
    makes. ``acoustic_mel_teacher`` (a vocoder file) makes those segments'
    losses compare with its audio of the acoustic mel instead: the real
    audio's harmonics cannot be told from a smooth mel, and a head that
    learns them from it learns their blur, while a teacher's harmonics are
    one answer it can learn. A resumed run keeps all three unless they are
    given again; a share of 0 drops the teacher, and a resumed run refuses
    a teacher file that changed since it started (``teacher_digest``).
    """
    started_with = started_config(out_dir) if resume else None
    if started_with is not None:
        batch_size = batch_size or started_with["batch_size"]
        segment_seconds = segment_seconds or started_with["segment_seconds"]
        for field, asked, default in (("upsampler", upsampler, "transposed"), ("arch", arch, "hifigan"),
                                      ("istft_phase", istft_phase, "frame")):
            started = started_with.get(field, default)  # runs from before a field existed lack it
            if asked is not None and asked != started:
                raise ValueError(f"{out_dir} was started with {field} {started!r}; it cannot resume with {asked!r}")
    # given, else the resumed run's own, else the config's (an explicit 0 is a value, not "not given")
    recipe = {"discriminator_start": discriminator_start, "discriminator_warmup": discriminator_warmup,
              "lr_decay": lr_decay, "stft_loss_weight": stft_loss_weight,
              "multiscale_mel_loss_weight": multiscale_mel_loss_weight, "upsampler": upsampler, "arch": arch,
              "istft_phase": istft_phase, "phase_loss_weight": phase_loss_weight,
              "magnitude_loss_weight": magnitude_loss_weight, "mel_loss_weight": mel_loss_weight,
              "acoustic_mels": None if acoustic_mels is None else str(acoustic_mels),
              "acoustic_mel_share": acoustic_mel_share,
              "acoustic_mel_teacher": None if acoustic_mel_teacher is None else str(acoustic_mel_teacher)}
    for field, value in recipe.items():
        if value is None and started_with is not None:
            value = started_with.get(field)  # runs from before a field existed lack it
        recipe[field] = getattr(cfg, field) if value is None else value
    if not recipe["acoustic_mel_share"]:
        recipe["acoustic_mel_teacher"] = None  # no segment hears an acoustic mel: there is nothing to teach
    recipe["acoustic_mel_teacher_digest"] = teacher_digest(recipe["acoustic_mel_teacher"])
    if started_with is not None and started_with.get("acoustic_mel_teacher") == recipe["acoustic_mel_teacher"]:
        started = started_with.get("acoustic_mel_teacher_digest")
        if started is not None and started != recipe["acoustic_mel_teacher_digest"]:
            raise ValueError(f"{out_dir} was started with another file at {recipe['acoustic_mel_teacher']}: its "
                             f"segments would hear other targets; put the teacher back, or name a new one")
    cfg = replace(cfg, batch_size=batch_size or cfg.batch_size, segment_seconds=segment_seconds or cfg.segment_seconds,
                  **recipe)
    device = training_device(device)
    torch.manual_seed(seed)
    trainer = VocoderTrainer(cfg, device)
    if init is not None and not resume:
        trainer.start_generator_from(load_vocoder(init, cfg.preset, device))
        logger.info("vocoder: generator starts from %s", init)
    n_params = sum(p.numel() for p in trainer.generator.parameters())
    logger.info("vocoder %s: %s generator, %.2fM parameters, %d steps of batch %d x %d samples on %s",
                cfg.preset, cfg.arch, n_params / 1e6, steps, cfg.batch_size, cfg.segment_samples, device)
    if cfg.discriminator_start:
        logger.info("vocoder: the generator learns alone until step %d, then with the discriminators",
                    cfg.discriminator_start)
    if cfg.discriminator_warmup:
        logger.info("vocoder: the discriminators learn alone from step %d to %d, then with the generator",
                    cfg.discriminator_start, cfg.discriminator_start + cfg.discriminator_warmup)
    workers = loader_workers(device)
    segments = AudioSegments(data_dir, cfg)
    loader = torch.utils.data.DataLoader(
        segments, batch_sampler=ShuffledBatches(len(segments), cfg.batch_size, seed), num_workers=workers,
        persistent_workers=workers > 0, pin_memory=device.type == "cuda",
    )
    return fit(trainer, loader, out_dir, steps, LOSSES, resume=resume, checkpoint_every=checkpoint_every,
               log_every=log_every, max_minutes=max_minutes, desc="vocoder")
