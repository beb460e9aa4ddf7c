"""Block catch-up: which range to ask which peer for, and serving ranges to others.

``SyncPlanner`` only decides (sans-I/O): given our height, the peers' heights and the time,
it names the next request, and it forgets a request that timed out so another peer is
tried. The node applies the blocks it receives, verifying each commit against the
validator set it computed itself; an interrupted sync simply resumes from our height.
"""
from __future__ import annotations

from dataclasses import dataclass

MAX_BLOCKS_PER_REQUEST = 50
MAX_RESPONSE_BYTES = 3 * 1024 * 1024
REQUEST_TIMEOUT = 10.0


@dataclass(frozen=True)
class Request:
    peer: bytes
    first: int
    last: int
    deadline: float


class SyncPlanner:
    def __init__(self):
        self.inflight: Request | None = None
        self.failed: dict[bytes, float] = {}  # peer -> until when we avoid it

    def next_request(self, our_height: int, peer_heights: dict[bytes, int], now: float) -> Request | None:
        if self.inflight is not None:
            if now < self.inflight.deadline:
                return None
            self.failed[self.inflight.peer] = now + 3 * REQUEST_TIMEOUT
            self.inflight = None
        ahead = sorted((h, p) for p, h in peer_heights.items()
                       if h > our_height and self.failed.get(p, 0) <= now)
        if not ahead:
            return None
        height, peer = ahead[-1]
        self.inflight = Request(peer, our_height + 1, min(height, our_height + MAX_BLOCKS_PER_REQUEST),
                                now + REQUEST_TIMEOUT)
        return self.inflight

    def done(self, peer: bytes, ok: bool, now: float) -> None:
        if self.inflight is not None and self.inflight.peer == peer:
            self.inflight = None
        if not ok:
            self.failed[peer] = now + 3 * REQUEST_TIMEOUT


def serve_range(get_block_bytes, get_commit_obj, first: int, last: int, tip: int) -> list:
    """[[block bytes, commit], ...] for first..last, bounded in count and bytes."""
    out, size = [], 0
    for h in range(max(1, first), min(last, tip, first + MAX_BLOCKS_PER_REQUEST - 1) + 1):
        raw = get_block_bytes(h)
        if raw is None or (out and size + len(raw) > MAX_RESPONSE_BYTES):
            break
        out.append([raw, get_commit_obj(h)])
        size += len(raw)
    return out
