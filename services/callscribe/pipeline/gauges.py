"""The worker's lag figures, read by :class:`~callscribe.pipeline.flow.WorkerMetrics` at
collection time (on the Prometheus exporter's thread: reads only, of copies).

- ``committed_lag``: records after the group's committed offset, by partition -- what KEDA's
  Kafka scaler and ``kafka-consumer-groups --describe`` call LAG.  The worker commits a record
  only once every sentence over it is final, so open sentences hold it back by design (5-14 s
  of records per live channel): an alert figure for stuck commits, not a scaling figure.
- ``fetch_lag`` (exported as ``consumer_lag``): records not yet read.
- ``backlog_s``: audio waiting for this worker, in flight (received, not recognised) plus the
  unread records at the chunks' mean length.  One decode step of audio per live call while
  the worker keeps up; it grows without bound only when recognition falls behind: the
  autoscaling figure.
- ``oldest_call_age_s``, ``sessions_held``: the unfinished (call, channel)s held.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from faust.types import TP

if TYPE_CHECKING:
    from callscribe.pipeline.worker import PipelineWorker


class WorkerGauges:
    def __init__(self, worker: PipelineWorker) -> None:
        self.worker = worker

    def _highwater(self, partition: int) -> int | None:
        """The partition's end as of the last fetch."""
        w = self.worker
        try:
            hw = int(w.app.consumer.highwater(TP(w.audio_topic, partition)))
        except Exception:  # not fetched yet, or no consumer
            hw = None
        end = w.paused_ends.get(partition)  # a paused partition's fetch position is stale
        return hw if end is None else max(end, hw or 0)

    def paused_count(self) -> int:
        return len(self.worker.paused)

    def inflight_ms(self) -> int:
        return self.worker.budget.total_ms

    def fetch_lag(self) -> dict[int, int]:
        out = {}
        for p, t in list(self.worker.trackers.items()):
            hw = self._highwater(p)
            if hw is not None and t.received is not None:
                out[p] = max(0, hw - t.received)
        return out

    def committed_lag(self) -> dict[int, int]:
        out = {}
        for p, t in list(self.worker.trackers.items()):
            hw = self._highwater(p)
            base = t.committed if t.committed is not None else t.start
            if hw is not None and base is not None:
                out[p] = max(0, hw - base)
        return out

    def backlog_s(self) -> float:
        unread = sum(self.fetch_lag().values())
        return (self.worker.budget.total_ms + unread * self.worker.chunk_ms) / 1000

    def oldest_call_age_s(self) -> float:
        now = time.monotonic()
        ages = [now - proc.opened_at for proc in list(self.worker.channels.values())
                if not proc.state.finished]
        return max(ages, default=0.0)

    def sessions_held(self) -> int:
        return sum(1 for proc in list(self.worker.channels.values())
                   if not proc.state.finished)
