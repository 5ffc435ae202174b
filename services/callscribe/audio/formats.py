"""Format names, aliases and content sniffing."""

from __future__ import annotations

from ..errors import UnsupportedFormat

#: canonical format names accepted by :func:`callscribe.audio.open_decoder`
SUPPORTED_FORMATS: frozenset[str] = frozenset(
    {"pcm", "wav", "mp3", "opus", "speex", "aac", "m4a", "amr", "flac", "mulaw", "alaw"}
)

#: alias -> canonical name ("ogg" is resolved from the stream: Opus or Speex)
ALIASES: dict[str, str] = {
    "s16le": "pcm",
    "wave": "wav",
    "ulaw": "mulaw",
    "pcmu": "mulaw",
    "g711u": "mulaw",
    "pcma": "alaw",
    "g711a": "alaw",
    "ogg": "ogg",
    "spx": "speex",
    "adts": "aac",
    "mp4": "m4a",
}

#: formats without a header: the caller must give the sample rate
RAW_FORMATS: frozenset[str] = frozenset({"pcm", "mulaw", "alaw"})


def canonical_format(fmt: str) -> str:
    """Return the canonical name for ``fmt`` ("ogg" stays "ogg" until the stream says which).

    Raises :class:`UnsupportedFormat` for anything else.
    """
    if not isinstance(fmt, str):
        raise UnsupportedFormat(f"audio format must be a string, got {type(fmt).__name__}")
    name = fmt.strip().lower()
    if name in SUPPORTED_FORMATS:
        return name
    if name in ALIASES:
        return ALIASES[name]
    supported = ", ".join(sorted(SUPPORTED_FORMATS))
    aliases = ", ".join(sorted(ALIASES))
    raise UnsupportedFormat(
        f"unknown audio format {fmt!r}; supported: {supported} (aliases: {aliases})"
    )


def _is_adts(head: bytes) -> bool:
    return len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xF6) == 0xF0


def _is_mpeg_audio(head: bytes) -> bool:
    if len(head) < 3 or head[0] != 0xFF or (head[1] & 0xE0) != 0xE0:
        return False
    version = (head[1] >> 3) & 3
    layer = (head[1] >> 1) & 3
    bitrate = head[2] >> 4
    rate = (head[2] >> 2) & 3
    return version != 1 and layer != 0 and bitrate != 15 and rate != 3


def sniff_format(head: bytes) -> str | None:
    """Guess the canonical format from the first bytes of a stream (64+ bytes is plenty).

    Returns None when nothing matches; raw pcm/mulaw/alaw cannot be sniffed.
    """
    head = bytes(head[:4096])
    if head.startswith((b"RIFF", b"RF64")) and head[8:12] == b"WAVE":
        return "wav"
    if head.startswith(b"OggS"):
        if b"OpusHead" in head:
            return "opus"
        if b"Speex   " in head:
            return "speex"
        return None
    if head.startswith(b"#!AMR"):
        return "amr"
    if head.startswith(b"fLaC"):
        return "flac"
    if head.startswith(b"ID3"):
        return "mp3"
    if head[4:8] == b"ftyp":
        return "m4a"
    if _is_adts(head):
        return "aac"
    if _is_mpeg_audio(head):
        return "mp3"
    return None
