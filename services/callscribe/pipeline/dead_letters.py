"""Dead letters: the worker's rules for records it will not use, and the size of a dead letter.

The codes the worker adds to the codec's (``NotMsgpack`` ... ``WrongRecordType``):
``KeyMismatch`` (the Kafka key is not the record's call_id), ``PartitionMismatch`` (a call's
record on another partition than the one the call is open on), ``CallEnded`` (a record after
the call's end, see :mod:`~callscribe.pipeline.ended`).

:func:`fit_dead_letter` keeps a dead letter under the broker's record size: the original value
is truncated and its sha256 and size recorded; its topic, partition, offset and key stay.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import msgpack

from callscribe.errors import CallscribeError
from callscribe.pipeline.codec import DeadLetter


class KeyMismatch(CallscribeError):
    """An audio record whose Kafka key is not its call_id (or that has no key): the calls'
    records would not meet in one partition."""

    code = "KeyMismatch"


class PartitionMismatch(CallscribeError):
    """An audio record of a call that is open on another partition (a producer that picks
    partitions by hand): a call's records must all be in one partition."""

    code = "PartitionMismatch"


class CallEnded(CallscribeError):
    """An audio record for a call that ended (its summary is out): late or duplicate."""

    code = "CallEnded"


#: a Kafka record batch's own overhead (headers, lengths, CRC), with room to spare
_BATCH_OVERHEAD = 1024
_KEY_MAX = 16384


def fit_dead_letter(record: DeadLetter, max_bytes: int, *, value_bytes: int | None = None
                    ) -> DeadLetter:
    """The dead letter cut to fit in a Kafka record of ``max_bytes`` (its value plus its key,
    the original key): a longer original value is truncated (to ``value_bytes`` when given)
    and its sha256 and size kept; the source topic, partition, offset and key (at most
    16 KiB of it) always stay."""
    value, key = record.source_value, record.source_key
    if key is not None and len(key) > _KEY_MAX:
        record = replace(record, source_key=key[:_KEY_MAX])
        key = record.source_key
    note = " [value truncated; sha256 and size of the original kept]"
    shell = replace(record, source_value=b"", reason=record.reason[: 4000 - len(note)] + note,
                    source_value_sha256="0" * 64, source_value_size=len(value))
    fixed = len(msgpack.packb(shell.to_dict(), use_bin_type=True)) + len(key or b"")
    room = max(0, max_bytes - fixed - _BATCH_OVERHEAD - 8)  # 8: the bin's length header
    if value_bytes is not None:
        room = min(room, value_bytes)
    if len(value) <= room:
        return record
    return replace(shell, source_value=value[:room],
                   source_value_sha256=hashlib.sha256(value).hexdigest())
