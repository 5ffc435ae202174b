"""``callscribe produce``: stream a recording into Kafka as AudioChunk records.

    callscribe produce --call-id C123 call.wav                       # as fast as Kafka takes it
    callscribe produce --call-id C123 call.mp3 --realtime            # at the speed of speech
    callscribe produce --call-id C123 stereo.wav --channels agent,customer --language en

Each channel of the file is its own stream (never mixed).  The audio topic must exist
(``callscribe topics create``).  Prints one JSON line (what was sent) on success; exit status
2 with a message on an error, e.g. when the broker did not answer within the deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
from pathlib import Path

from callscribe.errors import ConfigurationError
from callscribe.settings import Settings


def add_produce_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "produce", help="stream a recording into Kafka (the audio topic) as ~100 ms chunks",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", metavar="FILE", help="recording in any supported format")
    p.add_argument("--call-id", required=True, help="the call's id (the Kafka key)")
    p.add_argument("--realtime", action="store_true",
                   help="pace the chunks at the speed of speech, like a live call")
    p.add_argument("--channels", default=None, metavar="ROLES",
                   help="role of each channel in order, comma separated; an empty role or '-' "
                        "skips a channel (--channels ,customer or --channels=-,customer); "
                        "default: mono 'mixed', stereo 'agent,customer'; for headerless "
                        "pcm/mulaw/alaw also the number of interleaved channels")
    p.add_argument("--bootstrap", default=None, metavar="HOST:PORT[,...]",
                   help="Kafka bootstrap servers (default CALLSCRIBE_KAFKA_BOOTSTRAP)")
    p.add_argument("--topic", default=None,
                   help="audio topic (default CALLSCRIBE_KAFKA_TOPIC_AUDIO)")
    p.add_argument("--audio-format", default=None,
                   help="input format when it cannot be sniffed (pcm, mulaw, alaw, ...)")
    p.add_argument("--sample-rate", type=int, default=None,
                   help="sample rate of headerless input (pcm, mulaw, alaw); default 16000")
    p.add_argument("--language", default=None, help="language hint(s), comma separated")
    p.add_argument("--vocabulary-id", default=None,
                   help="vocabulary id recorded with the call (workers apply --hotword and "
                        "--vocabulary: they have no vocabulary database)")
    p.add_argument("--hotword", action="append", metavar="TEXT[:WEIGHT]",
                   help="bias recognition toward TEXT (weight 1..5, default 4); repeatable")
    p.add_argument("--vocabulary", metavar="FILE",
                   help='hotwords: a JSON list of {"text", "weight", "lang"} or '
                        'text[:weight] lines')
    p.add_argument("--max-sentence-silence", type=int, default=None, metavar="MS",
                   help="silence that ends a sentence, 200..6000 ms")
    p.add_argument("--redact", default=None, metavar="TYPES",
                   help="PII this call redacts, comma separated (CARD, PHONE, EMAIL, IBAN, "
                        "BANK_ACCOUNT, CN_ID, SSN), all or none; default: the worker's "
                        "CALLSCRIBE_REDACT_ENTITIES")
    p.add_argument("--redact-mode", choices=["mask", "drop"], default=None,
                   help="mask PII with a [TYPE] tag or drop it (default: the worker's)")
    p.add_argument("--deadline", type=float, default=None, metavar="S",
                   help="seconds Kafka may take to acknowledge a chunk (default "
                        "CALLSCRIBE_KAFKA_DEADLINE_S)")
    p.add_argument("--no-create-topics", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_produce)
    return p


def cmd_produce(args: argparse.Namespace, settings: Settings) -> int:
    from callscribe.pipeline.codec import AudioOptions

    path = Path(args.file)
    if not path.is_file():
        raise ConfigurationError(f"{path}: no such file")
    if args.deadline is not None and args.deadline <= 0:
        raise ConfigurationError("--deadline must be more than 0 seconds")
    roles = [r.strip() for r in args.channels.split(",")] if args.channels else None
    hints = tuple(h.strip() for h in args.language.split(",") if h.strip()) if args.language else ()
    from callscribe.pipeline.codec import HotwordOption
    from callscribe.recognition.vocabulary import load_hotwords

    hotwords = tuple(HotwordOption(h.text, int(h.weight), h.lang or None)
                     for h in load_hotwords(args.vocabulary, args.hotword or ()))
    options = AudioOptions(language_hints=hints, vocabulary_id=args.vocabulary_id,
                           max_sentence_silence_ms=args.max_sentence_silence,
                           hotwords=hotwords or None, redaction=_redaction(args))
    if options == AudioOptions():
        options = None
    report = asyncio.run(_produce(args, settings, path, roles, options))
    print(json.dumps(dataclasses.asdict(report)), flush=True)
    return 0


def _redaction(args: argparse.Namespace):
    """``--redact`` / ``--redact-mode`` as the call's ``options.redaction`` (None: unset)."""
    from callscribe.analytics.redact import parse_entities
    from callscribe.pipeline.codec import RedactionOption

    if args.redact is None and args.redact_mode is None:
        return None
    ents = None if args.redact is None else tuple(sorted(parse_entities(args.redact)))
    return RedactionOption(entities=ents, mode=args.redact_mode)


async def _produce(args: argparse.Namespace, settings: Settings, path: Path, roles, options):
    from callscribe.pipeline.producer import AudioProducer, produce_file
    from callscribe.pipeline.topics import check_topics

    if args.deadline is not None:
        settings = settings.model_copy(update={"kafka_deadline_s": args.deadline})
    if args.topic:
        settings = settings.model_copy(update={"kafka_topic_audio": args.topic})
    await check_topics(args.bootstrap, settings, roles=("audio",))
    async with AudioProducer(settings, bootstrap=args.bootstrap) as producer:
        return await produce_file(path, args.call_id, roles, args.realtime, settings=settings,
                                  audio_format=args.audio_format, sample_rate=args.sample_rate,
                                  options=options, producer=producer)
