"""Connection slots: who may connect, who is evicted to make room, and whom to dial next.

Node keys cost nothing, so a slot must never be had just for asking. The rules, sans-I/O
(the socket code in gossip.py reports events with `now` and carries out the answers):

* Inbound and outbound slots are counted apart; inbound peers never take the outbound slots,
  which stay reserved for peers we chose ourselves from the address book.
* Protected peers (our configured persistent peers, and current validators: in stepchain the
  node key is the validator key) are always admitted: when their side is full an unprotected
  peer is evicted for them, and if every peer there is protected they go over the limit
  (their number is bounded by the config and the validator set).
* When inbound slots are full, a newcomer may take the slot of an existing inbound peer chosen
  like Bitcoin Core's SelectNodeToEvict: peers that are hard for an attacker to imitate are
  set aside (distinct network groups, lowest ping, most recent novel blocks, votes and txs,
  the longest connected), and the youngest peer of the network group with the most remaining
  peers is evicted. If nobody is left to evict the newcomer is refused.
* Unprotected inbound peers are limited per IP; inbound connections still in the handshake
  (half-open) are capped, overall and per IP, by closing the oldest one of the IP that has
  the most, so holding sockets open cannot lock anyone out.
* Outbound dials prefer network groups we have no outbound peer in yet, and are paced.
* Misbehaving keys are banned for a while; a banned key is refused and leaves the book.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Callable

from consensus.crypto import format_address

from .addrbook import AddrBook, BookConfig
from .netaddr import addr_group, netgroup
from .pex import PexConfig, PexGuard, Verdict


@dataclass(frozen=True)
class PeerLimits:
    # Bitcoin Core keeps 8 full-relay outbound slots (and ~117 inbound); CometBFT 10 and 40. A
    # Python node relays every vote to every peer, so fewer inbound; 8 outbound peers we picked
    # ourselves are what makes eclipsing us expensive.
    max_outbound: int = 8
    max_inbound: int = 24
    max_inbound_per_ip: int = 4        # one host (or NAT) cannot take more than 1/6 of inbound
    max_half_open: int = 16            # a handshake is a few ms; 16 covers any honest burst
    max_half_open_per_ip: int = 4
    max_dialing: int = 4               # book dials in flight at once
    dial_interval: float = 0.5         # between two book dials: all 8 slots fill in ~4 s, and
                                       # a poisoned book makes us dial at most 2 addresses a second
    persistent_backoff_base: float = 0.5
    persistent_backoff_max: float = 2.0  # a validator back from a crash or a partition is
                                         # redialled within 2 s; a few dials a second is cheap
    ban_seconds: float = 60.0
    # eviction: how many inbound peers each merit spares (Bitcoin: 4 netgroup, 8 ping, 4 tx,
    # 4 block, then half by age; scaled to 24 slots, so 5 or more candidates remain when full)
    protect_netgroups: int = 4
    protect_ping: int = 4
    protect_blocks: int = 2
    protect_votes: int = 2
    protect_txs: int = 2


@dataclass(frozen=True)
class Refuse:
    reason: str


@dataclass(frozen=True)
class Accept:
    """An inbound socket may start its handshake under `token`; close the half-open ones in `evict`."""
    token: int
    evict: tuple[int, ...] = ()


@dataclass(frozen=True)
class Admit:
    """The peer gets a slot; close the peers in `evict` (the policy has already let them go)."""
    evict: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class Dial:
    peer_id: bytes
    addr: str


USEFUL = {"txs": "tx", "proposal": "block", "blocks": "block", "vote": "vote", "evidence": "vote"}


@dataclass
class PeerState:
    peer_id: bytes
    ip: str
    group: str
    outbound: bool
    connected_at: float
    min_ping: float | None = None
    last: dict = field(default_factory=dict)   # "tx" / "block" / "vote" -> when it last gave us a novel one


class PeerPolicy:
    def __init__(self, self_id: bytes, persistent: dict[bytes, str], is_validator: Callable[[bytes], bool],
                 secret: bytes, rng: random.Random, limits: PeerLimits = PeerLimits(),
                 book: BookConfig = BookConfig(), pex: PexConfig = PexConfig()):
        self.self_id, self.limits, self.rng = self_id, limits, rng
        self.persistent = {p: a for p, a in persistent.items() if p != self_id}
        self.is_validator = is_validator
        self.secret = secret
        self.book = AddrBook(secret, rng, book)
        self.pex = PexGuard(pex)
        self.peers: dict[bytes, PeerState] = {}
        self.bans: dict[bytes, float] = {}
        self.half_open: dict[int, str] = {}          # token -> ip, oldest first
        self.dialing: dict[bytes, bool] = {}         # peer -> whether it is a protected (priority) dial
        self._backoff: dict[bytes, tuple[float, float]] = {}   # persistent peer -> (next try, delay)
        self._next_token = 0
        self._next_book_dial = 0.0
        self.isolated_until = 0.0

    # -- bans and isolation -----------------------------------------------------------------

    def protected(self, peer_id: bytes) -> bool:
        return peer_id in self.persistent or self.is_validator(peer_id)

    def banned(self, peer_id: bytes, now: float) -> bool:
        return self.bans.get(peer_id, 0.0) > now

    def ban(self, peer_id: bytes, now: float) -> None:
        self.bans[peer_id] = now + self.limits.ban_seconds
        self.book.remove(peer_id)

    def isolate(self, now: float, seconds: float) -> None:
        self.isolated_until = now + seconds

    def isolated(self, now: float) -> bool:
        return now < self.isolated_until

    # -- half-open inbound sockets ----------------------------------------------------------

    def open_inbound(self, ip: str, now: float) -> Accept | Refuse:
        """A TCP connection arrived; it may handshake, at the cost of the oldest half-open
        socket of whichever IP holds the most (its own, when it is at its per-IP cap)."""
        if self.isolated(now):
            return Refuse("isolated by operator")
        evict = []
        mine = [t for t, i in self.half_open.items() if i == ip]
        if len(mine) >= self.limits.max_half_open_per_ip:
            evict.append(mine[0])
        elif len(self.half_open) >= self.limits.max_half_open:
            evict.append(self._crowded_half_open())
        for token in evict:
            del self.half_open[token]
        self._next_token += 1
        self.half_open[self._next_token] = ip
        return Accept(self._next_token, tuple(evict))

    def _crowded_half_open(self) -> int:
        by_ip: dict[str, list[int]] = {}
        for token, ip in self.half_open.items():
            by_ip.setdefault(ip, []).append(token)
        # the most sockets; among equals the IP whose oldest socket is oldest
        tokens = max(by_ip.values(), key=lambda ts: (len(ts), -ts[0]))
        return tokens[0]

    def close_half_open(self, token: int) -> None:
        self.half_open.pop(token, None)

    # -- admission and eviction -------------------------------------------------------------

    def precheck(self, peer_id: bytes, now: float) -> Refuse | None:
        """Right after the handshake (before the hello): keys that get no further."""
        if peer_id == self.self_id:
            return Refuse("connected to ourselves")
        if self.banned(peer_id, now):
            return Refuse("banned")
        if peer_id in self.peers:
            return Refuse("already connected")
        if self.isolated(now):
            return Refuse("isolated by operator")
        return None

    def admit(self, peer_id: bytes, ip: str, outbound: bool, now: float) -> Admit | Refuse:
        """After the hello: a slot for the peer (evicting someone if needed), or a refusal."""
        why = self.precheck(peer_id, now)
        if why is not None:
            return why
        protected = self.protected(peer_id)
        side = [p for p in self.peers.values() if p.outbound == outbound]
        if not protected and not outbound:
            same_ip = sum(p.ip == ip and not self.protected(p.peer_id) for p in side)
            if same_ip >= self.limits.max_inbound_per_ip:
                return Refuse(f"too many peers from {ip}")
        evict: tuple[bytes, ...] = ()
        if len(side) >= (self.limits.max_outbound if outbound else self.limits.max_inbound):
            victim = self._victim(outbound, protected)
            if victim is not None:
                evict = (victim,)
            elif not protected:
                return Refuse(f"{'outbound' if outbound else 'inbound'} slots full")
        for victim in evict:  # gone as of this decision, whenever the shell closes its socket
            self.disconnected(victim)
        self.peers[peer_id] = PeerState(peer_id, ip, netgroup(ip), outbound, now)
        if protected:
            self._backoff.pop(peer_id, None)
        return Admit(evict)

    def _victim(self, outbound: bool, for_protected: bool) -> bytes | None:
        if not outbound:
            victim = self.select_to_evict()
            if victim is not None or not for_protected:
                return victim
        if not for_protected:
            return None  # outbound slots full: a dial raced another; keep what we have
        # a protected newcomer takes the youngest unprotected slot of its side
        others = [p for p in self.peers.values() if p.outbound == outbound and not self.protected(p.peer_id)]
        return max(others, key=lambda p: (p.connected_at, p.peer_id)).peer_id if others else None

    def select_to_evict(self) -> bytes | None:
        """The inbound peer to disconnect for a newcomer, or None when all are worth keeping."""
        lim = self.limits
        cands = sorted((p for p in self.peers.values() if not p.outbound and not self.protected(p.peer_id)),
                       key=lambda p: p.peer_id)
        cands = self._spare_netgroups(cands, lim.protect_netgroups)
        cands = _spare_best(cands, lim.protect_ping, lambda p: p.min_ping is not None,
                            lambda p: (p.min_ping, p.peer_id))
        for kind, count in (("block", lim.protect_blocks), ("vote", lim.protect_votes), ("tx", lim.protect_txs)):
            cands = _spare_best(cands, count, lambda p, k=kind: k in p.last,
                                lambda p, k=kind: (-p.last[k], p.peer_id))
        cands = _spare_best(cands, len(cands) // 2, lambda p: True, lambda p: (p.connected_at, p.peer_id))
        if not cands:
            return None
        groups: dict[str, list[PeerState]] = {}
        for p in cands:
            groups.setdefault(p.group, []).append(p)
        youngest = {g: max(ps, key=lambda p: (p.connected_at, p.peer_id)) for g, ps in groups.items()}
        group = max(groups, key=lambda g: (len(groups[g]), youngest[g].connected_at, youngest[g].peer_id))
        return youngest[group].peer_id

    def _spare_netgroups(self, cands: list[PeerState], count: int) -> list[PeerState]:
        """Set aside the longest-connected peer of `count` distinct groups, the groups chosen by a
        keyed hash so an attacker cannot know which group of its own would be spared."""
        def keyed(group: str) -> bytes:
            return hashlib.sha256(self.secret + b"evict-group" + group.encode()).digest()

        groups = sorted({p.group for p in cands}, key=keyed)[:count]
        spared = {min((p for p in cands if p.group == g), key=lambda p: (p.connected_at, p.peer_id)).peer_id
                  for g in groups}
        return [p for p in cands if p.peer_id not in spared]

    def disconnected(self, peer_id: bytes) -> None:
        self.peers.pop(peer_id, None)
        self.pex.forget(peer_id)

    # -- what connected peers do -------------------------------------------------------------

    def on_hello(self, peer_id: bytes, listen: str, ip: str, outbound: bool, now: float) -> None:
        """An inbound peer's own word for its address goes into "new" (we have not reached it)."""
        if not outbound and peer_id not in self.persistent:
            self.book.add(peer_id, listen, netgroup(ip), now, replace=True)

    def on_ping(self, peer_id: bytes, rtt: float) -> None:
        p = self.peers.get(peer_id)
        if p is not None and rtt >= 0:
            p.min_ping = rtt if p.min_ping is None else min(p.min_ping, rtt)

    def on_useful(self, peer_id: bytes, kind: str, now: float) -> None:
        p = self.peers.get(peer_id)
        if p is not None and kind in USEFUL:
            p.last[USEFUL[kind]] = now

    def want_pex(self, peer_id: bytes, now: float) -> bool:
        """Ask this peer for addresses? Only peers we dialed, and not too often."""
        p = self.peers.get(peer_id)
        return p is not None and p.outbound and self.pex.may_ask(peer_id, now)

    def on_pex_request(self, peer_id: bytes, now: float) -> tuple[Verdict, list[str]]:
        verdict = self.pex.on_request(peer_id, now)
        if not verdict.ok:
            return verdict, []
        pool = [(p, a) for p, a in self.persistent.items() if p != peer_id]
        pool += [(e.peer_id, e.addr) for e in self.book.sample(self.pex.cfg.max_addrs, now, exclude=peer_id)
                 if e.peer_id not in self.persistent]
        return verdict, [f"{format_address(p)}@{a}" for p, a in pool[:self.pex.cfg.max_addrs]]

    def on_pex(self, peer_id: bytes, ip: str, payload, now: float) -> Verdict:
        """A PEX response: the entries it may add go into "new" with its IP's group as source."""
        verdict = self.pex.on_response(peer_id, payload, now)
        source = netgroup(ip)
        for ident, addr in verdict.entries:
            if ident != self.self_id and ident not in self.persistent and not self.banned(ident, now):
                self.book.add(ident, addr, source, now)
        return verdict

    # -- dialing ----------------------------------------------------------------------------

    def plan_dials(self, now: float) -> list[Dial]:
        """Whom to dial now: persistent peers and known validators as soon as their backoff
        allows; book entries only into free outbound slots, a few at a time, paced."""
        if self.isolated(now):
            return []
        dials = list(self._priority_dials(now))
        busy = sum(not prio for prio in self.dialing.values())
        outbound = sum(p.outbound for p in self.peers.values()) + busy
        if (outbound < self.limits.max_outbound and busy < self.limits.max_dialing
                and now >= self._next_book_dial):
            entry = self._pick_from_book(now)
            if entry is not None:
                self.book.attempt(entry.peer_id, now)
                self.dialing[entry.peer_id] = False
                self._next_book_dial = now + self.limits.dial_interval
                dials.append(Dial(entry.peer_id, entry.addr))
        return dials

    def _pick_from_book(self, now: float):
        """Preferably an address in a network group we have no outbound peer in yet (so one
        cheap range cannot hold all our outbound slots); any dialable one otherwise."""
        used = {p.group for p in self.peers.values() if p.outbound}
        used |= {addr_group(self.book.entries[p].addr) for p in self.dialing if p in self.book.entries}
        fresh = self.book.select(now, lambda peer_id: self._dialable(peer_id, now)
                                 and addr_group(self.book.entries[peer_id].addr) not in used)
        return fresh or self.book.select(now, lambda peer_id: self._dialable(peer_id, now))

    def _priority_dials(self, now: float):
        for peer_id, addr in self.persistent.items():
            if self._dialable(peer_id, now) and self._backoff.get(peer_id, (0.0, 0.0))[0] <= now:
                _, delay = self._backoff.get(peer_id, (0.0, self.limits.persistent_backoff_base))
                jitter = self.rng.random() * delay / 4
                self._backoff[peer_id] = (now + delay + jitter, min(delay * 2, self.limits.persistent_backoff_max))
                self.dialing[peer_id] = True
                yield Dial(peer_id, addr)
        for e in list(self.book.entries.values()):
            if e.next_try <= now and self._dialable(e.peer_id, now) and self.is_validator(e.peer_id):
                self.book.attempt(e.peer_id, now)
                self.dialing[e.peer_id] = True
                yield Dial(e.peer_id, e.addr)

    def _dialable(self, peer_id: bytes, now: float) -> bool:
        return (peer_id != self.self_id and peer_id not in self.peers and peer_id not in self.dialing
                and not self.banned(peer_id, now))

    def dial_done(self, peer_id: bytes, addr: str, reachable: bool, ip: str | None, now: float) -> None:
        """A dial ended; `reachable`: the handshake and hello passed (whether or not we kept it)."""
        self.dialing.pop(peer_id, None)
        if peer_id in self.persistent:
            return
        if reachable:
            self.book.good(peer_id, addr, netgroup(ip or addr.rpartition(":")[0]), now)
        else:
            self.book.failed(peer_id, now)

    def housekeeping(self, now: float) -> None:
        self.bans = {p: t for p, t in self.bans.items() if t > now}
        self.book.expire(now)
        self.pex.expire(now)

    def summary(self) -> dict:
        new, tried = self.book.counts()
        return {"inbound": sum(not p.outbound for p in self.peers.values()),
                "outbound": sum(p.outbound for p in self.peers.values()),
                "half_open": len(self.half_open), "dialing": len(self.dialing),
                "addrbook": {"new": new, "tried": tried, "capacity": self.book.capacity}}


def _spare_best(cands: list[PeerState], count: int, eligible, key) -> list[PeerState]:
    """Set aside up to `count` eligible candidates that rank best by `key`."""
    if count <= 0:
        return cands
    spared = {p.peer_id for p in sorted((p for p in cands if eligible(p)), key=key)[:count]}
    return [p for p in cands if p.peer_id not in spared]
