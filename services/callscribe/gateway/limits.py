"""Admission control: concurrent sessions overall and per API key, decided at the handshake."""

from __future__ import annotations

from collections import Counter


class Slot:
    """One admitted session; :meth:`release` is idempotent."""

    def __init__(self, admission: "Admission", key_id: str) -> None:
        self._admission = admission
        self.key_id = key_id
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._admission._release(self.key_id)


class Admission:
    """Counts sessions; not thread-safe (the event loop is the only caller)."""

    def __init__(self, max_sessions: int, max_per_key: int) -> None:
        self.max_sessions = max_sessions
        self.max_per_key = max_per_key
        self.active = 0
        self.per_key: Counter[str] = Counter()

    def try_acquire(self, key_id: str) -> tuple[Slot | None, str]:
        """(slot, "") when admitted, else (None, reason for the 503 body)."""
        if self.per_key[key_id] >= self.max_per_key:
            return None, (f"too many sessions for this API key: {self.per_key[key_id]} of "
                          f"{self.max_per_key} (CALLSCRIBE_MAX_SESSIONS_PER_KEY); retry later")
        if self.active >= self.max_sessions:
            return None, (f"server busy: {self.active} of {self.max_sessions} sessions in use "
                          "(CALLSCRIBE_MAX_SESSIONS); retry later")
        self.active += 1
        self.per_key[key_id] += 1
        return Slot(self, key_id), ""

    def _release(self, key_id: str) -> None:
        self.active -= 1
        self.per_key[key_id] -= 1
        if self.per_key[key_id] <= 0:
            del self.per_key[key_id]
