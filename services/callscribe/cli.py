"""``callscribe`` command line: transcribe | serve | produce | bench | models."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from callscribe.errors import CallscribeError, ConfigurationError
from callscribe.settings import Settings, load_settings


def _progress_factory(enabled: bool):
    @contextlib.contextmanager
    def factory(path: Path, size: int):
        # a bar only for long files (> ~30 s of 16 kHz pcm or ~1 MB of anything)
        if not enabled or size < (1 << 20):
            yield None
            return
        from tqdm import tqdm
        with tqdm(total=size, unit="B", unit_scale=True, desc=path.name, file=sys.stderr,
                  leave=False) as bar:
            yield bar
    return factory


def _hotwords(args: argparse.Namespace) -> list:
    from callscribe.recognition.vocabulary import load_hotwords

    return load_hotwords(args.vocabulary, args.hotword or ())


def cmd_transcribe(args: argparse.Namespace, settings: Settings) -> int:
    from callscribe.recognition.runtime import Runtime, StreamOptions
    from callscribe.transcribe import iter_outputs

    files = [Path(f) for f in args.files]
    for f in files:
        if not f.is_file():
            raise ConfigurationError(f"{f}: no such file")
    hints = tuple(args.language.split(",")) if args.language else ()
    opts = StreamOptions(format=args.audio_format or "pcm", sample_rate=args.sample_rate,
                         language_hints=hints, hotwords=tuple(_hotwords(args)),
                         itn=not args.no_itn, disfluency_removal=args.disfluency_removal,
                         max_sentence_silence_ms=args.max_sentence_silence, partials=False)
    runtime = Runtime.create(settings)
    try:
        analytics = roles = None
        if args.analytics:
            from callscribe.analytics.live import CallAnalytics

            analytics = CallAnalytics.from_settings(settings)
            roles = tuple(r.strip() for r in args.roles.split(",")) if args.roles else None
        for text in iter_outputs(runtime, files, opts, args.format, args.audio_format,
                                 _progress_factory(not args.no_progress), live=args.live,
                                 analytics=analytics, roles=roles):
            print(text, flush=True)
    finally:
        runtime.close()
    return 0


def cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    from callscribe.asr import models

    if args.action == "install":
        path = models.install_bundled(settings.cache_dir, force=args.force)
        print(f"installed {models.BUNDLED_NAME} at {path} (sha256 {models.BUNDLED_SHA256})")
    elif args.action == "verify":
        if settings.model_dir is not None:
            digest = models.verify_dir(settings.model_dir)
            print(f"{settings.model_dir}: model.bin sha256 {digest} (configured model, no "
                  "reference checksum)")
        else:
            path = models.bundled_dir(settings.cache_dir)
            models.verify_dir(path, models.BUNDLED_SHA256)
            print(f"{path}: OK, sha256 {models.BUNDLED_SHA256}")
    else:
        for m in models.list_models(settings.model_dir, settings.cache_dir):
            state = "verified" if m.verified else ("installed" if m.installed else "not installed")
            print(f"{m.name}\t{state}\t{m.size_bytes}\t{m.path}\t{m.detail}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="callscribe", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("transcribe", help="transcribe audio files (whole-file accuracy)")
    t.add_argument("files", nargs="+", metavar="FILE")
    t.add_argument("--live", action="store_true",
                   help="exactly what the live service would send for this audio (streaming "
                        "sessions in 100 ms steps) instead of whole-file decoding")
    t.add_argument("--format", choices=["json", "srt", "vtt", "text"], default="text")
    t.add_argument("--language", help="language hint(s), comma separated (e.g. en or zh,en)")
    t.add_argument("--sample-rate", type=int, default=None,
                   help="sample rate of headerless input (pcm, mulaw, alaw); default 16000")
    t.add_argument("--audio-format", default=None,
                   help="input format when it cannot be sniffed (pcm, mulaw, alaw, ...)")
    t.add_argument("--max-sentence-silence", type=int, default=None, metavar="MS",
                   help="with --live: silence that ends a sentence, 200..6000 ms")
    t.add_argument("--hotword", action="append", metavar="TEXT[:WEIGHT]",
                   help="bias recognition toward TEXT (weight 1..5, default 4); repeatable")
    t.add_argument("--vocabulary", metavar="FILE",
                   help='hotwords: a JSON list of {"text", "weight", "lang"} or '
                        'text[:weight] lines')
    t.add_argument("--no-itn", action="store_true",
                   help="keep numbers as words (no inverse text normalisation)")
    t.add_argument("--disfluency-removal", action="store_true", help="drop uh, um, 嗯, 呃 ...")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--analytics", action="store_true",
                   help="print the call analytics (talk, non-talk, interruptions, speed, "
                        "loudness, polarity, categories; redacted sentences) as JSON, as the "
                        "Kafka worker's CallSummary has them")
    t.add_argument("--roles", default=None, metavar="ROLES",
                   help="with --analytics: role of each channel (default: stereo "
                        "agent,customer)")
    t.set_defaults(func=cmd_transcribe)

    m = sub.add_parser("models", help="install, verify or list speech models")
    m.add_argument("action", choices=["install", "verify", "list"])
    m.add_argument("--force", action="store_true", help="rebuild even when installed")
    m.set_defaults(func=cmd_models)

    from callscribe.cli_bench import add_bench_parser
    from callscribe.cli_produce import add_produce_parser
    from callscribe.cli_serve import add_serve_parser
    from callscribe.cli_topics import add_topics_parser
    from callscribe.cli_worker import add_worker_parser  # the Kafka pipeline worker

    add_serve_parser(sub)
    add_produce_parser(sub)
    add_worker_parser(sub)
    add_topics_parser(sub)
    add_bench_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        # before CTranslate2 loads: see callscribe/asr/__init__.py
        os.environ.setdefault("OMP_NUM_THREADS", str(settings.cpu_threads))
        from callscribe.logs import configure_logging
        configure_logging(settings)
        return int(args.func(args, settings) or 0)
    except CallscribeError as exc:
        print(f"callscribe: error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
