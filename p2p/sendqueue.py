"""A peer's outgoing messages: consensus votes first, and nothing sent that has gone stale.

One FIFO per peer let a backlog of block data (a 1.6 MB proposal re-sent every second, a
burst of txs, sync replies) hold back the small votes that decide a height, and after a
partition a node first sent everything it had queued while cut off. So:
- urgent kinds (votes, status, pings, requests) jump ahead of bulk kinds (proposals, txs,
  blocks, blob chunks and leaf lists);
- a consensus message or tx batch that waited longer than its kind's shelf life is dropped
  on its way out: the engine re-sends the current height's proposal and votes every second
  while a height is undecided, so only fresh copies go on the wire.
Pure policy plus an asyncio wake-up; the clock is passed in.
"""
from __future__ import annotations

import asyncio
from collections import deque

URGENT = frozenset({"vote", "status", "ping", "pong", "pex_req", "pex", "disconnect", "get_blocks",
                    "blob_get", "blob_leaves_get", "blob_missing", "evidence"})
# Kinds not named never go stale. Tx batches are sent once and never re-sent, so they keep.
SHELF_LIFE_S = {"vote": 4.0, "proposal": 4.0}


class SendQueue:
    def __init__(self, max_items: int):
        self.max_items = max_items
        self._urgent: deque = deque()
        self._bulk: deque = deque()
        self._ready = asyncio.Event()
        self.dropped_stale = 0
        self.dropped_full = 0

    def __len__(self) -> int:
        return len(self._urgent) + len(self._bulk)

    def put(self, kind: str, payload, now: float) -> bool:
        """Queue a message; False (dropped) when the peer already has max_items waiting."""
        urgent = kind in URGENT
        if len(self) >= self.max_items:
            if not urgent or not self._bulk:
                return False
            self._bulk.popleft()  # a vote or a request is worth more than the oldest block data
            self.dropped_full += 1
        (self._urgent if urgent else self._bulk).append((now, kind, payload))
        self._ready.set()
        return True

    def pop(self, now: float) -> list | None:
        """The next message worth sending, or None if nothing is waiting."""
        while self._urgent or self._bulk:
            at, kind, payload = (self._urgent or self._bulk).popleft()
            if now - at <= SHELF_LIFE_S.get(kind, float("inf")):
                return [kind, payload]
            self.dropped_stale += 1
        self._ready.clear()
        return None

    async def get(self, clock) -> list:
        """Wait for the next message worth sending; `clock()` gives the time."""
        while True:
            msg = self.pop(clock())
            if msg is not None:
                return msg
            await self._ready.wait()
