"""A token bucket: units per second with a burst. The clock is passed in.

One limiter for every per-peer allowance: messages a peer may send us (p2p/gossip.py) and
signature checks its txs may cost us (node/network.py).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TokenBucket:
    """Units per second with a burst; full at the first take."""
    rate: float
    burst: float
    tokens: float = -1.0
    at: float = 0.0

    def take(self, want: int, now: float) -> int:
        """How many of `want` units may go now (all or some), taking them."""
        if self.tokens < 0:
            self.tokens, self.at = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        got = min(want, int(self.tokens))
        self.tokens -= got
        return got
