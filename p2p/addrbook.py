"""A bounded, bucketed address book, after Bitcoin Core's addrman and CometBFT's addrbook.

Addresses we have only heard of live in the "new" table; addresses we have connected to live
in the "tried" table. Both are fixed grids of buckets × slots, so the book never grows past
its capacity however many addresses peers send. Which bucket an address lands in is a keyed
hash (a secret drawn per node) of the address's network group and, for "new", the group of
the peer that told us: one source group can only ever reach a few buckets of "new", and an
attacker who cannot compute the hash cannot aim at the buckets honest addresses live in. A
slot that is taken is only given to a newcomer when its occupant is terrible (expired, or
failing and never reached), so a flood cannot push out addresses that work.

Dialing picks a table (tried most of the time), then a random bucket that has a dialable
entry, then a random entry in it: an attacker who owns many entries of a few buckets still
gets only its share of buckets. Failed dials back off exponentially and entries that keep
failing are dropped. Sans-I/O: the caller passes `now`, the secret and the random source.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Callable

from .netaddr import addr_group


@dataclass(frozen=True)
class BookConfig:
    new_buckets: int = 64
    tried_buckets: int = 16
    bucket_size: int = 16
    new_buckets_per_source_group: int = 8   # one source group fills at most 8 * 16 = 128 "new" slots
    tried_buckets_per_group: int = 4        # one address group fills at most 4 * 16 = 64 "tried" slots
    new_ttl: float = 3600.0                 # heard of, never re-advertised for an hour: forgotten
    tried_ttl: float = 7 * 86400.0          # not reached for a week: forgotten
    max_new_failures: int = 3               # an address we never reached gets three tries
    max_tried_failures: int = 5             # a once-good address gets five, then goes back to "new"
    backoff_base: float = 2.0
    backoff_max: float = 600.0
    tried_bias_percent: int = 75            # how often dialing draws from "tried" when both have entries


@dataclass
class Entry:
    peer_id: bytes
    addr: str
    source_group: str
    seen: float                     # when someone last told us of it, or we last reached it
    failures: int = 0               # consecutive failed dials
    next_try: float = 0.0
    last_success: float | None = None
    tried: bool = False
    bucket: int = -1
    slot: int = -1

    def terrible(self, now: float, cfg: BookConfig) -> bool:
        """Worth giving its slot to a newcomer."""
        if self.tried:
            return self.failures >= cfg.max_tried_failures or now - (self.last_success or 0.0) > cfg.tried_ttl
        return self.failures > 0 or now - self.seen > cfg.new_ttl


class AddrBook:
    def __init__(self, secret: bytes, rng: random.Random, config: BookConfig = BookConfig()):
        self.secret, self.rng, self.cfg = secret, rng, config
        self.entries: dict[bytes, Entry] = {}
        self._new: list[list[bytes | None]] = [[None] * config.bucket_size for _ in range(config.new_buckets)]
        self._tried: list[list[bytes | None]] = [[None] * config.bucket_size for _ in range(config.tried_buckets)]

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, peer_id: bytes) -> bool:
        return peer_id in self.entries

    @property
    def capacity(self) -> int:
        return (self.cfg.new_buckets + self.cfg.tried_buckets) * self.cfg.bucket_size

    def counts(self) -> tuple[int, int]:
        """(entries in "new", entries in "tried")."""
        tried = sum(e.tried for e in self.entries.values())
        return len(self.entries) - tried, tried

    # -- placement ------------------------------------------------------------------------

    def _hash(self, *parts: bytes | str | int) -> int:
        h = hashlib.sha256(self.secret)
        for p in parts:
            raw = p if isinstance(p, bytes) else str(p).encode()
            h.update(len(raw).to_bytes(4, "big") + raw)
        return int.from_bytes(h.digest()[:8], "big")

    def _new_position(self, e: Entry) -> tuple[int, int]:
        spread = self._hash("new1", addr_group(e.addr), e.source_group) % self.cfg.new_buckets_per_source_group
        bucket = self._hash("new2", e.source_group, spread) % self.cfg.new_buckets
        return bucket, self._hash("slot", "new", bucket, e.peer_id, e.addr) % self.cfg.bucket_size

    def _tried_position(self, e: Entry) -> tuple[int, int]:
        spread = self._hash("tried1", e.peer_id, e.addr) % self.cfg.tried_buckets_per_group
        bucket = self._hash("tried2", addr_group(e.addr), spread) % self.cfg.tried_buckets
        return bucket, self._hash("slot", "tried", bucket, e.peer_id, e.addr) % self.cfg.bucket_size

    def _unplace(self, e: Entry) -> None:
        table = self._tried if e.tried else self._new
        if 0 <= e.bucket and table[e.bucket][e.slot] == e.peer_id:
            table[e.bucket][e.slot] = None
        e.bucket = e.slot = -1

    def _place_new(self, e: Entry, now: float) -> bool:
        """Into its "new" slot, if free or held by a terrible entry; else False."""
        bucket, slot = self._new_position(e)
        occupant = self._new[bucket][slot]
        if occupant is not None and occupant != e.peer_id:
            if not self.entries[occupant].terrible(now, self.cfg):
                return False
            self.remove(occupant)
        e.tried, e.bucket, e.slot = False, bucket, slot
        self._new[bucket][slot] = e.peer_id
        return True

    # -- what we learn --------------------------------------------------------------------

    def add(self, peer_id: bytes, addr: str, source_group: str, now: float, replace: bool = False) -> bool:
        """Someone told us `peer_id` listens at `addr`. `replace`: the peer itself said so, which
        may update an address we have not reached yet. True when the book holds it afterwards."""
        try:
            addr_group(addr)
        except ValueError:
            return False
        e = self.entries.get(peer_id)
        if e is not None:
            if e.addr == addr:
                e.seen = max(e.seen, now)
                return True
            if not replace or e.tried:
                return False
            self.remove(peer_id)
        e = Entry(peer_id, addr, source_group, now)
        if not self._place_new(e, now):
            return False
        self.entries[peer_id] = e
        return True

    def good(self, peer_id: bytes, addr: str, source_group: str, now: float) -> None:
        """We reached `peer_id` at `addr` (handshake and hello passed): it belongs in "tried"."""
        e = self.entries.get(peer_id)
        if e is not None and e.addr != addr:
            self.remove(peer_id)
            e = None
        if e is None:
            e = Entry(peer_id, addr, source_group, now)
        else:
            self._unplace(e)
        e.failures, e.last_success, e.seen, e.next_try = 0, now, now, now
        bucket, slot = self._tried_position(e)
        occupant = self._tried[bucket][slot]
        if occupant is not None and occupant != peer_id:
            self._demote(self.entries[occupant], now)
        e.tried, e.bucket, e.slot = True, bucket, slot
        self._tried[bucket][slot] = peer_id
        self.entries[peer_id] = e

    def _demote(self, e: Entry, now: float) -> None:
        """Back from "tried" to "new" (its slot was wanted, or it kept failing), or out."""
        self._unplace(e)
        e.tried = False
        if not self._place_new(e, now):
            del self.entries[e.peer_id]

    def backoff(self, failures: int) -> float:
        delay = min(self.cfg.backoff_base * 2 ** min(failures, 32), self.cfg.backoff_max)
        return delay + self.rng.random() * delay / 4

    def attempt(self, peer_id: bytes, now: float) -> None:
        """A dial starts: no second one before the backoff for its failures so far has passed."""
        e = self.entries.get(peer_id)
        if e is not None:
            e.next_try = now + self.backoff(e.failures)

    def failed(self, peer_id: bytes, now: float) -> None:
        e = self.entries.get(peer_id)
        if e is None:
            return
        e.failures += 1
        e.next_try = now + self.backoff(e.failures)
        if not e.tried and e.failures >= self.cfg.max_new_failures:
            self.remove(peer_id)
        elif e.tried and e.failures >= self.cfg.max_tried_failures:
            self._demote(e, now)

    def remove(self, peer_id: bytes) -> None:
        e = self.entries.pop(peer_id, None)
        if e is not None:
            self._unplace(e)

    def expire(self, now: float) -> int:
        """Forget entries not heard of (new) or not reached (tried) for their TTL."""
        old = [e.peer_id for e in self.entries.values()
               if (now - (e.last_success or 0.0) > self.cfg.tried_ttl if e.tried else now - e.seen > self.cfg.new_ttl)]
        for peer_id in old:
            self.remove(peer_id)
        return len(old)

    # -- what we do with it ---------------------------------------------------------------

    def select(self, now: float, usable: Callable[[bytes], bool]) -> Entry | None:
        """An entry to dial: "tried" most of the time, then a random bucket, then a random entry."""
        def ready(peer_id: bytes | None) -> bool:
            return peer_id is not None and self.entries[peer_id].next_try <= now and usable(peer_id)

        choices = []
        for table in (self._tried, self._new):
            buckets = [[p for p in bucket if ready(p)] for bucket in table]
            choices.append([b for b in buckets if b])
        tried, new = choices
        if tried and new:
            pool = tried if self.rng.randrange(100) < self.cfg.tried_bias_percent else new
        else:
            pool = tried or new
        if not pool:
            return None
        return self.entries[self.rng.choice(self.rng.choice(pool))]

    def sample(self, n: int, now: float, exclude: bytes | None = None) -> list[Entry]:
        """Up to n entries worth telling a peer about: tried ones first, never terrible ones."""
        good = [e for e in self.entries.values() if e.peer_id != exclude and not e.terrible(now, self.cfg)]
        tried = [e for e in good if e.tried]
        new = [e for e in good if not e.tried]
        self.rng.shuffle(tried)
        self.rng.shuffle(new)
        return (tried + new)[:n]
