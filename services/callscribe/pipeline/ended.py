"""A call that ended stays ended: the worker's memory of ended calls.

Once a call's summary is published and the commit has passed its records, each of its
channels' table records is replaced by a small retired record (``ChannelRecord.retired``:
``ended``, ``summary``, ``last_offset``; the options only until the channel's revised
transcript is out).  That record is the memory: it lives in the worker table, so it moves
with the partition and survives restarts, and a late record finds it on whichever worker
owns the partition.  A record for a call whose summary is out
(a second end_of_stream, a late seq, a seq after the end, a channel the call did not have)
is counted ``after_end`` and dead-lettered as ``CallEnded``; a replay of the call's own
records (at or before its last offset, after a restart) is counted and acknowledged.

:class:`~callscribe.pipeline.calls.EndedCalls` indexes the retired records a worker owns,
oldest first; a timer tombstones those older than ``kafka_worker_ended_retention_s`` or
beyond ``kafka_worker_ended_max``.  Past that bound a record for the call would open it again.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING


from callscribe.pipeline.calls import ChannelRecord, EndedCalls
from callscribe.pipeline.codec import AudioChunk
from callscribe.pipeline.dead_letters import CallEnded
from callscribe.pipeline.publisher import MAX_CHANNELS

if TYPE_CHECKING:
    from callscribe.pipeline.worker import PipelineWorker


class EndedCallKeeper:
    def __init__(self, worker: PipelineWorker) -> None:
        self.worker = worker
        s = worker.settings
        self.index = EndedCalls(int(s.kafka_worker_ended_retention_s * 1000),
                                s.kafka_worker_ended_max)

    def record_of(self, call_id: str) -> ChannelRecord | None:
        """A record of the call if the call is over (its summary published), else None."""
        w = self.worker
        for ch in range(MAX_CHANNELS):
            proc = w.channels.get(f"{call_id}:{ch}")
            rec = proc.state.record if proc is not None else \
                ChannelRecord.from_json(w.table.data.get(f"{call_id}:{ch}"))
            if rec is not None and rec.summary:
                return rec
        return None

    def after_end(self, chunk: AudioChunk, rec: ChannelRecord, p: int, offset: int,
                  raw: bytes) -> None:
        """Count it; acknowledge a replay, dead-letter anything newer."""
        w = self.worker
        w.metrics.chunks.add(1, {"outcome": "after_end"})
        if offset <= rec.last_offset:
            w.release(p, [offset])
            return
        what = "end_of_stream" if chunk.end_of_stream else f"seq {chunk.seq}"
        w.reject(CallEnded(
            f"call {chunk.call_id!r} is over ({rec.ended or 'closed'}); channel "
            f"{chunk.channel} {what} came after its end (offset {offset})"),
            chunk, p, offset, raw)

    async def retire(self, key: str, partition: int, rec: ChannelRecord) -> None:
        retired = rec.retired(partition, revising=self.worker.revisions.enabled)
        await self.worker.sink.put_record(key, partition, retired)
        self.index.add(key, partition, retired.updated_at_ms)

    async def sweep(self) -> None:
        """Forget ended calls past the retention or the bound: tombstone their records."""
        w = self.worker
        mine = {tp.partition for tp in w.app.consumer.assignment()
                if tp.topic == w.audio_topic}
        for key, partition in self.index.due(int(time.time() * 1000)):
            if partition in mine or partition in w.trackers:
                await w.sink.put_record(key, partition, None)

    async def on_recovered(self) -> None:
        """After the table's recovery: index the retired records of my partitions (oldest
        first), a slice at a time."""
        w = self.worker
        mine = {tp.partition for tp in w.app.consumer.assignment()
                if tp.topic == w.audio_topic}
        for p in self.index.partitions() - mine:
            self.index.forget_partition(p)
        found = []
        for i, key in enumerate(list(w.table.data.keys())):
            rec = ChannelRecord.from_json(w.table.data.get(key))
            if rec is not None and rec.summary and rec.partition in mine:
                found.append((rec.updated_at_ms, key, rec.partition))
            if i % 1000 == 999:
                await asyncio.sleep(0)
        for at, key, part in sorted(found):
            self.index.add(key, part, at)

    def forget_partitions(self, keep: set[int]) -> None:
        for p in self.index.partitions() - keep:
            self.index.forget_partition(p)
