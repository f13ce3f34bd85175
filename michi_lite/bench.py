"""Speed benchmarks: how fast each piece runs on the machine at hand, as JSON.

A frame of the model's clock is 80 ms, so a piece that streams must turn out
80 ms of work in well under 80 ms. Two numbers say whether it does:

* **real-time factor** (RTF): compute seconds / audio seconds. Below 1 keeps
  up; the ``lite`` vocoder must stream at 0.1 or less on 2 CPU cores.
* **per-chunk latency**: the time one 80 ms chunk takes, median and 95th
  percentile. Their sum is the RTF's numerator; the p95 is what a player's
  buffer must absorb.

Warm-up calls (first-call allocations, lazy kernel choices) are run and
thrown away before anything is timed. On a GPU every timed call ends with a
synchronise, since kernels launch asynchronously.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch

from .config import FRAME_SECONDS, AudioConfig
from .provenance import run_info
from .vocoder import (ARCHS, CausalVocoder, GriffinLim, HiFiGANGenerator, build_generator, inference_ready,
                      load_vocoder, vocoder_config)

logger = logging.getLogger(__name__)

WARMUP_CHUNKS = 5
# Griffin-Lim online: each new chunk re-runs it on this much of the latest mel
SLIDING_WINDOW_SECONDS = 0.48  # 6 frames: about half a second


def timed(fn: Callable[[], torch.Tensor], device: torch.device) -> float:
    """Seconds ``fn`` takes, waiting for a GPU to finish what it launched."""
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def resident_gb() -> float:
    """This process's resident memory now, GB (Linux)."""
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024 ** 3


def latency_summary(seconds: list[float], audio_seconds: float) -> dict:
    """RTF and per-chunk latency (ms) of one chunk-by-chunk run."""
    compute = float(np.sum(seconds))
    return {
        "rtf": compute / audio_seconds,
        "compute_seconds": compute,
        "chunk_latency_ms_median": float(np.median(seconds) * 1000),
        "chunk_latency_ms_p95": float(np.percentile(seconds, 95) * 1000),
        "n_chunks": len(seconds),
    }


def bench_streaming(generator: CausalVocoder, mel: torch.Tensor, audio: AudioConfig) -> dict:
    """Push ``mel`` (n_mels, frames) through the generator's stream one 80 ms chunk at a time."""
    device = mel.device
    chunk = audio.mels_per_frame
    stream = generator.stream()
    for _ in range(WARMUP_CHUNKS):
        stream.push(mel[:, :chunk])
    stream.reset()  # the timed stream starts from silence, as a real one does
    seconds = [
        timed(lambda i=i: stream.push(mel[:, i:i + chunk]), device)
        for i in range(0, mel.shape[-1], chunk)
    ]
    return latency_summary(seconds, mel.shape[-1] * audio.hop_length / audio.sample_rate)


def bench_griffin_lim_offline(griffin_lim: GriffinLim, mel: torch.Tensor, audio: AudioConfig) -> dict:
    """Griffin-Lim's own way: the whole clip at once, after it has been heard to the end."""
    device = mel.device
    timed(lambda: griffin_lim(mel[:, :WARMUP_CHUNKS * audio.mels_per_frame]), device)
    seconds = timed(lambda: griffin_lim(mel), device)
    return {"rtf": seconds / (mel.shape[-1] * audio.hop_length / audio.sample_rate), "compute_seconds": seconds}


def bench_griffin_lim_sliding_window(griffin_lim: GriffinLim, mel: torch.Tensor, audio: AudioConfig) -> dict:
    """Griffin-Lim run online: for each new 80 ms chunk, redo the last ~0.5 s window, keep its newest chunk.

    Griffin-Lim is not causal: every iteration touches the whole signal, so it
    cannot carry a state from chunk to chunk. The only way to use it online is
    to re-run it on a short window of the most recent mel each time a chunk
    arrives and play that window's last chunk: the window's cost is paid per
    chunk, and the phase is re-guessed every time, so the chunks don't join
    smoothly (a quality cost this benchmark does not measure).
    """
    device = mel.device
    chunk = audio.mels_per_frame
    window = round(SLIDING_WINDOW_SECONDS / FRAME_SECONDS) * chunk  # mel columns

    def newest_chunk(end: int) -> torch.Tensor:
        return griffin_lim(mel[:, max(0, end - window):end])[-chunk * audio.hop_length:]  # (chunk * hop,)

    timed(lambda: newest_chunk(window), device)
    seconds = [timed(lambda end=end: newest_chunk(end), device) for end in range(chunk, mel.shape[-1] + 1, chunk)]
    return {**latency_summary(seconds, mel.shape[-1] * audio.hop_length / audio.sample_rate),
            "window_seconds": window * audio.hop_length / audio.sample_rate}


def bench_vocoder(preset: str, ckpt: str | os.PathLike | None = None, seconds: float = 10.0,
                  threads: int = 1) -> dict:
    """RTF and per-80 ms-chunk latency of the streaming generators and of Griffin-Lim, on the CPU and any GPU.

    Without ``ckpt`` both architectures are timed, each with random weights:
    the arithmetic, and so the speed, does not depend on their values. With
    ``ckpt``, that generator (``hifigan_streaming`` or ``istft_streaming``). The input is a random
    normalised mel of ``seconds`` of audio (a whole number of 80 ms frames),
    for the same reason. ``threads`` sets torch's CPU threads for the run
    (on 2 shared cores, 1 was measured fastest: a second thread spin-waits).
    """
    cfg = vocoder_config(preset)
    audio = cfg.audio
    n_frames = max(1, round(seconds / FRAME_SECONDS)) * audio.mels_per_frame
    mel = torch.randn(audio.n_mels, n_frames, generator=torch.Generator().manual_seed(0))  # (n_mels, frames)
    if ckpt is None:
        with torch.random.fork_rng():  # seeded weights, without touching the caller's random state
            torch.manual_seed(0)
            # as load_vocoder returns them
            generators = {arch: inference_ready(build_generator(replace(cfg, arch=arch))).eval() for arch in ARCHS}
    else:
        generator = load_vocoder(ckpt, preset)
        generators = {generator.cfg.arch: generator}
    griffin_lim = GriffinLim(audio)

    report: dict = {
        "audio_seconds": n_frames * audio.hop_length / audio.sample_rate,
        "chunk_ms": FRAME_SECONDS * 1000,
        **{f"{arch}_parameters": sum(p.numel() for p in g.parameters()) for arch, g in generators.items()},
        # how far each stream's samples lag its mel: the look-ahead, and a pghi head's phases' if it looks ahead
        **{f"{arch}_lag_ms": g.cfg.lookahead_samples / audio.sample_rate * 1000 for arch, g in generators.items()},
        "random_weights": ckpt is None,  # speed does not depend on the weights' values
        "checkpoint": None if ckpt is None else str(ckpt),
        "griffin_lim_iterations": griffin_lim.n_iter,
        "threads": threads,
    }
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for device in devices:
            logger.info("timing the %s vocoders on %s", preset, device)
            griffin_lim, mel = griffin_lim.to(device), mel.to(device)
            with torch.inference_mode():
                streams = {f"{arch}_streaming": bench_streaming(g.to(device), mel, audio)
                           for arch, g in generators.items()}
                report[device.type] = {
                    **streams,
                    "griffin_lim_offline": bench_griffin_lim_offline(griffin_lim, mel, audio),
                    "griffin_lim_sliding_window": bench_griffin_lim_sliding_window(griffin_lim, mel, audio),
                }
    finally:
        torch.set_num_threads(previous_threads)
    report["run"] = run_info(preset)
    return report


def bench_listener(preset: str, ckpt: str | os.PathLike | None = None, seconds: float = 10.0,
                   threads: int = 1) -> dict:
    """Per-80 ms-frame compute of the streaming listening head: fp32, int8 token scorer, all int8.

    The stream is fed one frame of audio at a time, as a microphone would,
    after ``WARMUP_CHUNKS`` + ``window_frames`` frames, so that the attention
    window is full and every timed frame costs what a long stream's do.
    Without ``ckpt`` the weights are the ones training starts from (Whisper's
    encoder, random for ``tiny``) and an untrained head: the same arithmetic
    as a trained one. A listener with a text decoder does more work on the
    frames it commits words on than on the others, so it hears speech
    (flite reading sentences, over and over) rather than noise, and the
    slowest frame is reported too.
    """
    from .backbone import load_tokenizer
    from .listen import build_listener, listener_config, load_listener, quantized_for_cpu

    vocab = len(load_tokenizer())
    listener = build_listener(preset, vocab) if ckpt is None else load_listener(ckpt, preset, vocab)
    listener = listener.eval()
    cfg = listener_config(preset)
    frame = cfg.audio.samples_per_frame
    warmup = WARMUP_CHUNKS + cfg.window_frames
    n_frames = max(1, round(seconds / FRAME_SECONDS))
    if listener.text is None:
        wave = torch.randn((warmup + n_frames) * frame, generator=torch.Generator().manual_seed(0)) * 0.1
    else:
        wave = spoken_sentences((warmup + n_frames) * frame, cfg.audio.sample_rate)
    report: dict = {
        "audio_seconds": n_frames * FRAME_SECONDS,
        "frame_ms": FRAME_SECONDS * 1000,
        "parameters": sum(p.numel() for p in listener.parameters()),
        "vocabulary": vocab,
        "window_frames": cfg.window_frames,
        "checkpoint": None if ckpt is None else str(ckpt),
        "threads": threads,
    }
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        versions = (("fp32", listener), ("int8_scorer", quantized_for_cpu(listener, encoder=False)),
                    ("int8", quantized_for_cpu(listener)))
        for name, model in versions:
            stream = model.stream()
            for i in range(warmup):
                stream.push(wave[i * frame:(i + 1) * frame])
            seconds_per_frame = [timed(lambda i=i: stream.push(wave[i * frame:(i + 1) * frame]), torch.device("cpu"))
                                 for i in range(warmup, warmup + n_frames)]
            summary = latency_summary(seconds_per_frame, n_frames * FRAME_SECONDS)
            report[name] = {"frame_ms_median": summary["chunk_latency_ms_median"],
                            "frame_ms_p95": summary["chunk_latency_ms_p95"],
                            "frame_ms_max": 1000 * max(seconds_per_frame), "rtf": summary["rtf"],
                            "n_frames": n_frames}
    finally:
        torch.set_num_threads(previous_threads)
    report["run"] = run_info(preset)
    return report


def spoken_sentences(samples: int, sample_rate: int) -> torch.Tensor:
    """``samples`` of speech: flite's first voice reading the corpus's sentences, again and again."""
    from .audio import prepare_waveform
    from .data.engines import get_engine
    from .data.text import sentences

    flite = get_engine("flite")
    voice = flite.voices()[0]
    pieces, total = [], 0
    for sentence in sentences(40):
        spoken = flite.synthesize(sentence.text, voice)
        pieces.append(prepare_waveform(spoken.waveform, spoken.sample_rate, sample_rate))
        total += len(pieces[-1])
        if total >= samples:
            break
    wave = np.concatenate(pieces)
    return torch.from_numpy(np.tile(wave, -(-samples // len(wave)))[:samples].astype(np.float32))


def bench_speaker(preset: str, ckpt: str | os.PathLike | None = None, vocoder_ckpt: str | os.PathLike | None = None,
                  frames: int = 50, context_frames: int = 50, runs: int = 7, threads: int = 2) -> dict:
    """Per-80 ms-frame compute of speaking, piece by piece, and ``say``'s time to first audio.

    After ``context_frames`` of context (4 s, a typical sentence) each of
    ``frames`` frames is timed, in fp32 and (on a CPU) in the int8 copy
    ``say`` runs (``quantized_for_cpu``): the backbone step as ``say`` runs
    it (``FrameDecoder``) and, beside it, the same layers as
    ``transformers`` runs them with its own cache; the text head, the
    speaking head's condition (the phoneme reader), the speaking head at 1,
    4 and 8 Euler steps; then one vocoder chunk, and the whole frame step
    ``say`` runs (backbone, text head, 4-step head, vocoder). Time to first
    audio is from calling ``Speaker.stream`` to holding its first samples,
    over ``runs`` calls. Without checkpoints the weights are untrained: the
    same arithmetic.
    """
    from transformers import DynamicCache

    from .backbone import load_tokenizer
    from .data.phonemes import chunk_phoneme_ids
    from .frame_decoder import FrameCache
    from .model import VoicedChunks, build_speech_model, load_speaker, quantized_for_cpu
    from .say import Speaker

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer()
    model = (build_speech_model(preset, tokenizer).merge_adapters() if ckpt is None
             else load_speaker(ckpt, preset, tokenizer)).to(device).eval()
    vocoder = (HiFiGANGenerator(vocoder_config(preset)).remove_weight_norm() if vocoder_ckpt is None
               else load_vocoder(vocoder_ckpt, preset)).to(device).eval()
    cfg = model.cfg
    generator = torch.Generator(device).manual_seed(0)
    voice = torch.randn(1, cfg.hidden_size, device=device, generator=generator)
    context = torch.randn(1, context_frames, cfg.hidden_size, device=device, generator=generator)
    versions = {"fp32": model}
    if device.type == "cpu":
        versions["int8"] = quantized_for_cpu(model)
    say_version = "int8" if device.type == "cpu" else "fp32"
    report: dict = {"frames": frames, "context_frames": context_frames, "frame_ms": FRAME_SECONDS * 1000,
                    "backbone_parameters": sum(p.numel() for p in model.decoder.parameters()),
                    "speaking_head_parameters": sum(p.numel() for p in model.speaking_head.parameters()),
                    "checkpoint": None if ckpt is None else str(ckpt),
                    "vocoder": None if vocoder_ckpt is None else str(vocoder_ckpt), "threads": threads,
                    "device": device.type, "say_runs": say_version}

    def per_frame(step: Callable[[], object]) -> dict:
        for _ in range(WARMUP_CHUNKS):
            step()
        ms = [timed(step, device) * 1000 for _ in range(frames)]
        return {"ms_median": float(np.median(ms)), "ms_p95": float(np.percentile(ms, 95))}

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            stream = vocoder.stream()
            mel = torch.zeros(cfg.audio.n_mels, cfg.audio.mels_per_frame, device=device)
            report["vocoder_chunk"] = per_frame(lambda: stream.push(mel))
            # what the phoneme reader looks through on a frame: one word's phonemes, a frame into its audio
            voiced = VoicedChunks(cfg)
            for chunk in [chunk_phoneme_ids("speaking", cfg.max_phonemes)] + [None] * (cfg.text_lead_frames + 1):
                row = voiced.push(chunk)
            phonemes, since = (torch.tensor([x], device=device) for x in row)
            token = torch.tensor([model.pad_id], device=device)
            cond = model.head_condition(voice, token, voice, phonemes, since)
            for name, version in versions.items():
                cache, hf_cache = FrameCache(), DynamicCache()
                version.frame_decoder()(context, cache)
                version.decode(context, hf_cache)

                def backbone_step(version=version, cache=cache):
                    version.frame_decoder()(voice[:, None], cache)
                    cache.crop(-1)  # every timed step sees the same context

                def backbone_step_transformers(version=version, cache=hf_cache):
                    version.decode(voice[:, None], cache)
                    cache.crop(-1)

                def frame_step(version=version, cache=cache):
                    hidden = version.frame_decoder()(voice[:, None], cache)[:, -1]
                    cache.crop(-1)
                    version.text_logits(hidden).softmax(-1)
                    cond = version.head_condition(hidden, token, voice, phonemes, since)
                    patch = version.speaking_head.sample(cond, 4)
                    return stream.push(patch.reshape(cfg.audio.mels_per_frame, cfg.audio.n_mels).T)

                pieces = {"backbone_step": per_frame(backbone_step),
                          "backbone_step_transformers": per_frame(backbone_step_transformers),
                          "text_head": per_frame(lambda version=version: version.text_logits(voice).softmax(-1)),
                          "head_condition": per_frame(lambda version=version: version.head_condition(
                              voice, token, voice, phonemes, since))}
                for k in (1, 4, 8):
                    pieces[f"speaking_head_{k}_steps"] = per_frame(
                        lambda version=version, k=k: version.speaking_head.sample(cond, k))
                pieces["frame_step_4_steps"] = per_frame(frame_step)
                report[name] = pieces
            frame_ms = report[say_version]["frame_step_4_steps"]["ms_median"]
            report["frame_step_faster_than_real_time"] = frame_ms < FRAME_SECONDS * 1000

        prompt = torch.randn(40, cfg.patch_dim, generator=torch.Generator().manual_seed(1)).to(device)
        speaker = Speaker(versions[say_version], vocoder, tokenizer, prompt, steps=4)
        first_audio = []
        for _ in range(runs + 1):
            started = time.perf_counter()
            chunks = speaker.stream("Hello, this is how quickly I start speaking.")
            next(chunks)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            first_audio.append((time.perf_counter() - started) * 1000)
            chunks.close()
        first_audio = first_audio[1:]  # the first call warms up
        report["time_to_first_audio_ms"] = {"median": float(np.median(first_audio)),
                                            "p95": float(np.percentile(first_audio, 95)),
                                            "lead_frames": cfg.text_lead_frames,
                                            "vocoder_lookahead_ms": vocoder.cfg.lookahead_samples
                                            / cfg.audio.sample_rate * 1000}
    finally:
        torch.set_num_threads(previous_threads)
    report["run"] = run_info(preset)
    return report


SAY_SENTENCE = "Hello, this is how quickly I start speaking."


def bench_acoustic(preset: str, ckpt: str | os.PathLike | None = None, vocoder_ckpt: str | os.PathLike | None = None,
                   runs: int = 7, threads: int = 2, new_process: bool = True) -> dict:
    """Speaking with the acoustic model: per frame, per sentence, to first audio, and in a new process.

    ``say`` makes a sentence's patches in one pass of the acoustic model,
    then streams them through the vocoder. Timed over ``runs`` calls (one
    more before, thrown away): the pass (regressed mel, 1 and 4 Euler
    steps) per sentence and per 80 ms frame of it, one vocoder chunk, the
    real-time factor of the whole of ``AcousticSpeaker.say``, and the time
    from calling ``stream`` to its first samples. ``new_process`` also runs
    ``michi-lite say`` in a fresh Python process, imports and loading
    included, and reports its whole wall time: the most a user waits for
    the first audio. Without checkpoints the weights are untrained: the
    same arithmetic.
    """
    import subprocess
    import sys
    import tempfile

    from .acoustic import AcousticModel, acoustic_config, load_acoustic, save_acoustic, text_phoneme_ids
    from .say import AcousticSpeaker
    from .vocoder import save_vocoder

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = (AcousticModel(acoustic_config(preset)) if ckpt is None else load_acoustic(ckpt, preset)).to(device).eval()
    vocoder = (HiFiGANGenerator(vocoder_config(preset)).remove_weight_norm() if vocoder_ckpt is None
               else load_vocoder(vocoder_ckpt, preset)).to(device).eval()
    audio = model.cfg.audio
    prompt = torch.randn(300, audio.n_mels, generator=torch.Generator().manual_seed(1)).to(device)
    phonemes = text_phoneme_ids(SAY_SENTENCE).to(device)
    report: dict = {"parameters": sum(p.numel() for p in model.parameters()), "sentence": SAY_SENTENCE,
                    "checkpoint": None if ckpt is None else str(ckpt),
                    "vocoder": None if vocoder_ckpt is None else str(vocoder_ckpt), "threads": threads,
                    "device": device.type, "frame_ms": FRAME_SECONDS * 1000}

    def repeated(fn: Callable[[], object]) -> list[float]:
        fn()
        return [timed(fn, device) * 1000 for _ in range(runs)]

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            voice = model.voice(prompt[None])
            patches, _ = model.speak(phonemes, voice, 0)
            report["sentence_frames"] = len(patches)
            for k in (0, 1, 4):
                ms = repeated(lambda k=k: model.speak(phonemes, voice, k, torch.Generator(device).manual_seed(0)))
                report[f"sentence_pass_{k}_steps"] = {"ms_median": float(np.median(ms)),
                                                      "ms_per_frame": float(np.median(ms)) / len(patches)}
            stream = vocoder.stream()
            mel = torch.zeros(audio.n_mels, audio.mels_per_frame, device=device)
            ms = repeated(lambda: stream.push(mel))
            report["vocoder_chunk"] = {"ms_median": float(np.median(ms)), "ms_p95": float(np.percentile(ms, 95))}
        speaker = AcousticSpeaker(model, vocoder, prompt, steps=4)
        ms = repeated(lambda: speaker.say(SAY_SENTENCE))
        report["say_real_time_factor"] = float(np.median(ms)) / 1000 / (len(patches) * FRAME_SECONDS)

        def first_chunk() -> None:
            chunks = speaker.stream(SAY_SENTENCE)
            next(chunks)
            chunks.close()

        ms = repeated(first_chunk)
        report["time_to_first_audio_ms"] = {"median": float(np.median(ms)), "p95": float(np.percentile(ms, 95))}
    finally:
        torch.set_num_threads(previous_threads)
    if new_process:
        with tempfile.TemporaryDirectory() as tmp:
            model_file = ckpt or save_acoustic(f"{tmp}/acoustic.safetensors", model, preset)
            vocoder_file = vocoder_ckpt or save_vocoder(f"{tmp}/vocoder.safetensors", vocoder, preset)
            command = [sys.executable, "-m", "michi_lite.cli", "say", SAY_SENTENCE, "--out", f"{tmp}/say.wav",
                       "--preset", preset, "--ckpt", str(model_file), "--vocoder", str(vocoder_file)]
            if ckpt is None:  # an untrained model has no voice of its own to be prompted with
                from .audio import save_audio

                save_audio(f"{tmp}/voice.wav", np.random.default_rng(0).standard_normal(48_000) * 0.3, 16_000)
                command += ["--voice-prompt", f"{tmp}/voice.wav"]
            seconds = []
            for _ in range(3):
                started = time.perf_counter()
                subprocess.run(command, check=True, capture_output=True)
                seconds.append(time.perf_counter() - started)
        report["new_process_say_seconds"] = {"median": float(np.median(seconds)), "max": float(max(seconds)),
                                             "sentence_seconds": len(patches) * FRAME_SECONDS}
    report["run"] = run_info(preset)
    return report


def bench_duplex(preset: str, ckpt: str | os.PathLike | None = None, listener_ckpt: str | os.PathLike | None = None,
                 vocoder_ckpt: str | os.PathLike | None = None, seconds: float = 60.0, warmup: int = 10,
                 threads: int = 2, acoustic_ckpt: str | os.PathLike | None = None,
                 context_frames: int | None = None, steps: int | None = None) -> dict:
    """The duplex engine's frame step, stage by stage, over ``seconds`` of conversation, and its memory.

    The user's side is noise at speech level (the engine's work does not
    depend on what it hears); without checkpoints the weights are untrained
    (the same arithmetic). On a CPU the speech model and the listener run as
    int8 copies, as ``chat`` runs them. After ``warmup`` frames every frame
    is timed; resident memory is read after the warm-up and at the end, and
    the step's p95 is given for the first and the last fifth of the run, and
    for its first and last 5 minutes when it is 25 minutes or longer. With
    ``acoustic_ckpt`` the acoustic model voices the text stream (as ``chat``
    does by default); its cost depends on how much the model talks.
    ``context_frames``: the backbone's window (None: the engine's own, ``duplex.CONTEXT_FRAMES``);
    ``steps``: the speaking head's Euler steps (None: the engine's own, as ``chat`` takes them).
    """
    from .acoustic import load_acoustic
    from .backbone import load_tokenizer
    from .duplex import CONTEXT_FRAMES, STAGES, DuplexEngine
    from .listen import build_listener, load_listener
    from .listen import quantized_for_cpu as listener_for_cpu
    from .model import build_speech_model, load_speaker, quantized_for_cpu

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        tokenizer = load_tokenizer()
        torch.manual_seed(0)
        model = (build_speech_model(preset, tokenizer).merge_adapters() if ckpt is None
                 else load_speaker(ckpt, preset, tokenizer)).to(device)
        listener = (build_listener(preset, len(tokenizer)) if listener_ckpt is None
                    else load_listener(listener_ckpt, preset, len(tokenizer))).to(device)
        vocoder = (inference_ready(build_generator(replace(vocoder_config(preset), arch="istft")))
                   if vocoder_ckpt is None else load_vocoder(vocoder_ckpt, preset)).to(device)
        if device.type == "cpu":
            model, listener = quantized_for_cpu(model), listener_for_cpu(listener)
        voice = torch.randn(40, model.cfg.patch_dim)
        acoustic = None if acoustic_ckpt is None else load_acoustic(acoustic_ckpt, preset, device)
        engine = DuplexEngine(model, listener, vocoder, tokenizer, voice, acoustic=acoustic,
                              context_frames=context_frames or CONTEXT_FRAMES, steps=steps)
        frames = warmup + round(seconds / FRAME_SECONDS)
        rng = np.random.default_rng(0)
        user = (0.05 * rng.standard_normal((frames, engine.samples_in))).astype(np.float32)
        for i in range(warmup):
            engine.step(user[i])
        rss_start = resident_gb()
        step_seconds = [timed(lambda i=i: engine.step(user[i]), device) for i in range(warmup, frames)]
        rss_end = resident_gb()
    finally:
        torch.set_num_threads(previous_threads)
    records = engine.log[warmup:]
    per_stage = {stage: [r.seconds[stage] * 1000 for r in records] for stage in STAGES}
    steps_ms = np.array(step_seconds) * 1000
    fifth = max(1, len(steps_ms) // 5)
    five_minutes = round(300 / FRAME_SECONDS)
    report = {
        "device": device.type, "threads": threads, "frames": len(steps_ms), "frame_ms": FRAME_SECONDS * 1000,
        "checkpoint": None if ckpt is None else str(ckpt), "int8": device.type == "cpu",
        "acoustic": None if acoustic_ckpt is None else str(acoustic_ckpt), "context_frames": engine.context_frames,
        "steps": engine.steps,
        "word_token_share": float(np.mean([r.model_token not in (model.pad_id, model.end_id) for r in records])),
        "step_ms_median": float(np.median(steps_ms)), "step_ms_p95": float(np.percentile(steps_ms, 95)),
        "step_ms_p95_first_fifth": float(np.percentile(steps_ms[:fifth], 95)),
        "step_ms_p95_last_fifth": float(np.percentile(steps_ms[-fifth:], 95)),
        **({"step_ms_p95_first_5_minutes": float(np.percentile(steps_ms[:five_minutes], 95)),
            "step_ms_p95_last_5_minutes": float(np.percentile(steps_ms[-five_minutes:], 95))}
           if len(steps_ms) >= 5 * five_minutes else {}),
        "stages_ms": {stage: {"median": float(np.median(v)), "p95": float(np.percentile(v, 95))}
                      for stage, v in per_stage.items()},
        "rss_gb_start": rss_start, "rss_gb_end": rss_end,
    }
    report["run"] = run_info(preset)
    return report
