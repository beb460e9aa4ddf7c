"""Peer exchange bookkeeping: whom we asked, whom we answered, and what a response may hold.

We ask only peers we dialed ourselves (an inbound stranger is the cheapest thing an attacker
has), each at most once per `request_interval`, and accept exactly one response per request,
of at most `max_addrs` entries. We answer each peer at most once per `answer_interval`.
Anything else (an unsolicited or oversized response, requests too often) is ignored and
costs the peer misbehaviour points. Sans-I/O: `now` is passed in.
"""
from __future__ import annotations

from dataclasses import dataclass

from .netaddr import parse_peer


@dataclass(frozen=True)
class PexConfig:
    max_addrs: int = 32
    request_interval: float = 60.0
    answer_interval: float = 30.0
    response_timeout: float = 30.0
    unsolicited_penalty: int = 10
    oversized_penalty: int = 25
    malformed_penalty: int = 20
    bad_entry_penalty: int = 5
    early_request_penalty: int = 5


@dataclass(frozen=True)
class Verdict:
    """What to do with one PEX message: accept (entries to learn / answer it) and any penalty."""
    ok: bool
    penalty: int = 0
    reason: str = ""
    entries: tuple[tuple[bytes, str], ...] = ()


class PexGuard:
    def __init__(self, config: PexConfig = PexConfig()):
        self.cfg = config
        self._pending: dict[bytes, float] = {}     # peer -> when we asked it (one response due)
        self._last_ask: dict[bytes, float] = {}
        self._last_answer: dict[bytes, float] = {}

    def may_ask(self, peer_id: bytes, now: float) -> bool:
        """Whether to send this peer a request now; if so it is recorded as pending."""
        last = self._last_ask.get(peer_id)
        if last is not None and now - last < self.cfg.request_interval:
            return False
        self._last_ask[peer_id] = self._pending[peer_id] = now
        return True

    def on_request(self, peer_id: bytes, now: float) -> Verdict:
        last = self._last_answer.get(peer_id)
        if last is not None and now - last < self.cfg.answer_interval:
            return Verdict(False, self.cfg.early_request_penalty,
                           f"pex request {now - last:.0f}s after the last (one per {self.cfg.answer_interval:.0f}s)")
        self._last_answer[peer_id] = now
        return Verdict(True)

    def on_response(self, peer_id: bytes, payload, now: float) -> Verdict:
        asked = self._pending.pop(peer_id, None)
        if asked is None or now - asked > self.cfg.response_timeout:
            return Verdict(False, self.cfg.unsolicited_penalty, "unsolicited pex")
        if type(payload) is not list:
            return Verdict(False, self.cfg.malformed_penalty, "pex must be a list")
        if len(payload) > self.cfg.max_addrs:
            return Verdict(False, self.cfg.oversized_penalty,
                           f"pex of {len(payload)} addresses (limit {self.cfg.max_addrs})")
        entries, bad = [], 0
        for item in payload:
            try:
                entries.append(parse_peer(item))
            except ValueError:
                bad += 1
        if bad:
            return Verdict(True, self.cfg.bad_entry_penalty, f"{bad} malformed pex entries", tuple(entries))
        return Verdict(True, entries=tuple(entries))

    def forget(self, peer_id: bytes) -> None:
        """The peer left: a new connection starts with a clean slate, except that the
        answer and ask intervals still hold for its key (reconnecting does not reset them)."""
        self._pending.pop(peer_id, None)

    def expire(self, now: float) -> None:
        keep = max(self.cfg.request_interval, self.cfg.answer_interval, self.cfg.response_timeout)
        for table in (self._pending, self._last_ask, self._last_answer):
            for peer_id in [p for p, t in table.items() if now - t > keep]:
                del table[peer_id]
