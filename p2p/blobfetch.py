"""Fetching one blob from several peers, chunk by chunk: the policy, sans-I/O.

Events go in (a peer connected or left, a leaf list, a chunk, "I do not have it", the clock),
decisions come out (``AskLeaves``, ``AskChunks``), like consensus/bft.py: no sockets, no
asyncio, no disk. node/blobxfer.py carries the decisions out and writes accepted chunks.

Why a leaf list and not a proof per chunk: the id is the Merkle root over the chunks' leaf
hashes (consensus/blobid.py), so the list of leaf hashes, 32 bytes per MiB (128 KiB for a
4 GiB blob, one message), is checked against the id once with ``root_of_leaf_hashes``; after
that each chunk is checked with one sha256 the moment it arrives and nothing else. Per-chunk
proofs would add log2(chunks) hashes (12 for 4 GiB) to every chunk message and to every check,
and the fetcher would still want the whole list to keep on disk for resuming. It is what
BitTorrent does with its piece hashes (the info dict); BitTorrent v2 adds proofs only because
its torrents name files by a root without shipping the piece list.

The flow: every candidate peer is asked for the leaf list (which also tells who has the blob:
a peer that answers ``blob_missing``, sends a wrong list, a bad chunk, or times out too often
is dropped from this fetch). Peers that gave the right list are asked for chunks, lowest
index first, up to ``window`` in flight per peer and ``max_in_flight`` overall, in ranges of
at least ``batch`` so a fast transfer costs few request messages. A chunk not delivered in
time goes back to the pool and preferably to another peer. Only a chunk that was asked of
that very peer is accepted; anything else is ignored, so a hostile peer cannot grow state.
"""
from __future__ import annotations

import hashlib
import heapq
from dataclasses import dataclass, field
from typing import Iterable

from consensus import merkle
from consensus.blobid import CHUNK, chunk_count

LEAF = 32
BAD_DATA = 50        # a forged chunk or leaf list: deliberate (or a corrupt disk), half a ban
OUT_OF_RANGE = 50    # a chunk index no request could have named


@dataclass(frozen=True)
class FetchConfig:
    window: int = 16             # chunks in flight per peer (16 MiB: ~0.1 s at 150 MiB/s)
    batch: int = 8               # ask a peer for more only when this many slots are free
    max_in_flight: int = 64      # over all peers of one fetch
    chunk_timeout: float = 15.0  # a chunk asked this long ago goes back to the pool
    leaves_timeout: float = 15.0
    max_strikes: int = 3         # timeouts before a peer is dropped from the fetch
    max_range: int = 16          # chunks in one request (what a serving peer accepts: blobxfer.MAX_RANGE)


@dataclass(frozen=True)
class AskLeaves:
    peer: bytes


@dataclass(frozen=True)
class AskChunks:
    peer: bytes
    first: int
    count: int


@dataclass(frozen=True)
class Accept:
    index: int
    offset: int


@dataclass(frozen=True)
class Check:
    """Hash the chunk; if its leaf hash is `leaf` it may be written at `offset` (then on_checked)."""
    index: int
    offset: int
    leaf: bytes


@dataclass(frozen=True)
class LeavesOk:
    peer: bytes


@dataclass(frozen=True)
class Ignore:
    reason: str


@dataclass(frozen=True)
class Blame:
    points: int
    reason: str


Verdict = Accept | Check | LeavesOk | Ignore | Blame

PENDING, IN_FLIGHT, VERIFIED = 0, 1, 2


def leaf_of(data) -> bytes:
    """merkle.leaf_hash without copying a 1 MiB chunk behind a prefix byte."""
    h = hashlib.sha256(b"\x00")
    h.update(data)
    return h.digest()


def id_of_leaves(size: int, leaves: bytes) -> bytes:
    """The blob id a (size, leaf list) pair stands for (consensus/blobid.py's rule)."""
    if size == 0:
        return merkle.EMPTY_ROOT
    return merkle.root_of_leaf_hashes([leaves[i:i + LEAF] for i in range(0, len(leaves), LEAF)])


def check_leaves(digest: bytes, size, leaves, max_bytes: int) -> str | None:
    """Why a leaf list for `digest` is unacceptable, or None. Bounded before any hashing."""
    if type(size) is not int or not 0 <= size <= max_bytes:
        return f"blob size {size!r} outside 0..{max_bytes}"
    if type(leaves) is not bytes or len(leaves) != LEAF * chunk_count(size):
        return f"a {size}-byte blob has {chunk_count(size)} leaf hashes"
    if size == 0 and leaves != merkle.leaf_hash(b""):
        return "an empty blob has the leaf hash of no bytes"
    if id_of_leaves(size, leaves) != digest:
        return "leaf hashes do not match the blob id"
    return None


@dataclass
class PeerFetch:
    state: str = "new"           # new -> asked -> ready, or dropped
    asked_at: float = 0.0
    in_flight: int = 0
    strikes: int = 0
    received: int = 0
    why: str = ""


@dataclass
class FetchPlanner:
    digest: bytes
    max_bytes: int
    cfg: FetchConfig = FetchConfig()
    size: int | None = None
    leaves: bytes | None = None
    peers: dict[bytes, PeerFetch] = field(default_factory=dict)
    resumed: int = 0             # chunks verified before this fetch started (from disk)

    def __post_init__(self) -> None:
        self._state = bytearray()
        self._owner: dict[int, tuple[bytes, float]] = {}   # in flight: index -> (peer, asked at)
        self._avoid: dict[int, bytes] = {}                 # a chunk that timed out: not that peer again
        self._returned: list[int] = []                     # heap of chunks back in the pool
        self._checking: set[int] = set()                   # arrived, being hashed by the caller
        self._cursor = 0                                   # every index below is not PENDING-unvisited
        self.verified = 0

    # -- state ----------------------------------------------------------------------------

    @property
    def total(self) -> int | None:
        return None if self.size is None else chunk_count(self.size)

    @property
    def done(self) -> bool:
        return self.total is not None and self.verified == self.total

    @property
    def stalled(self) -> bool:
        """No peer left that could still help (every one dropped): the fetch cannot finish."""
        return not self.done and all(p.state == "dropped" for p in self.peers.values())

    def in_flight(self) -> int:
        return len(self._owner)

    def is_verified(self, index: int) -> bool:
        return index < len(self._state) and self._state[index] == VERIFIED

    # -- events ---------------------------------------------------------------------------

    def add_peer(self, peer: bytes) -> None:
        self.peers.setdefault(peer, PeerFetch())

    def peer_gone(self, peer: bytes) -> None:
        self._drop(peer, "disconnected")

    def resume(self, size: int, leaves: bytes, verified: Iterable[int]) -> None:
        """Start from what an earlier attempt left on disk (leaves and chunks already checked)."""
        why = check_leaves(self.digest, size, leaves, self.max_bytes)
        if why is not None:
            raise ValueError(why)
        self._learn(size, leaves)
        for i in verified:
            if 0 <= i < len(self._state) and self._state[i] == PENDING:
                self._state[i] = VERIFIED
                self.verified += 1
        self.resumed = self.verified

    def on_leaves(self, peer: bytes, size, leaves) -> Verdict:
        p = self.peers.get(peer)
        if p is None or p.state != "asked":
            return Ignore("leaf list not asked of this peer")
        if self.leaves is not None:
            if size != self.size or leaves != self.leaves:
                return self._blame(peer, "leaf list differs from the verified one")
        else:
            why = check_leaves(self.digest, size, leaves, self.max_bytes)
            if why is not None:
                return self._blame(peer, why)
            self._learn(size, leaves)
        p.state = "ready"
        return LeavesOk(peer)

    def on_missing(self, peer: bytes) -> None:
        if peer in self.peers:
            self._drop(peer, "does not have the blob")

    def on_chunk(self, peer: bytes, index, data) -> Verdict:
        """A chunk arrived: Check it (hash it and report with on_checked), Ignore it, or Blame.
        Only the hashing is left to the caller, so it can run off the event loop."""
        if self.total is None or type(index) is not int:
            return Ignore("no leaf list yet")
        if not 0 <= index < self.total:
            p = self.peers.get(peer)
            if p is None or p.state != "ready":
                return Ignore("chunk from a peer not serving this fetch")
            return self._blame(peer, f"chunk {index} out of range 0..{self.total - 1}", OUT_OF_RANGE)
        owner = self._owner.get(index)
        if owner is None or owner[0] != peer or index in self._checking:
            return Ignore("chunk not asked of this peer")
        expect = min(CHUNK, self.size - index * CHUNK)
        if type(data) is not bytes or len(data) != expect:
            return self._blame(peer, f"chunk {index} is not {expect} bytes")
        self._checking.add(index)
        return Check(index, index * CHUNK, self.leaves[index * LEAF:(index + 1) * LEAF])

    def on_checked(self, peer: bytes, index: int, leaf: bytes) -> Verdict:
        """The leaf hash of the chunk that on_chunk said to Check: Accept (keep it) or Blame."""
        self._checking.discard(index)
        owner = self._owner.get(index)
        if owner is None or owner[0] != peer:
            return Ignore("chunk no longer asked of this peer")
        if leaf != self.leaves[index * LEAF:(index + 1) * LEAF]:
            return self._blame(peer, f"chunk {index} does not match its leaf hash")
        del self._owner[index]
        self._state[index] = VERIFIED
        self.verified += 1
        p = self.peers[peer]
        p.in_flight -= 1
        p.received += 1
        p.strikes = 0
        return Accept(index, index * CHUNK)

    # -- decisions ------------------------------------------------------------------------

    def poll(self, now: float) -> list[AskLeaves | AskChunks]:
        """What to send now: leaf-list requests to new peers, chunk requests into free windows;
        first, whatever has been waiting too long is taken back."""
        self._expire(now)
        out: list[AskLeaves | AskChunks] = []
        for pid in sorted(self.peers):
            p = self.peers[pid]
            if p.state == "new":
                p.state, p.asked_at = "asked", now
                out.append(AskLeaves(pid))
        if self.total is None or self.done:
            return out
        ready = sorted((p.in_flight, pid) for pid, p in self.peers.items() if p.state == "ready")
        for _, pid in ready:
            out.extend(self._assign(pid, now))
        return out

    def _assign(self, pid: bytes, now: float) -> list[AskChunks]:
        p = self.peers[pid]
        free = min(self.cfg.window - p.in_flight, self.cfg.max_in_flight - len(self._owner))
        left = self.total - self.verified - len(self._owner)
        if free <= 0 or (free < self.cfg.batch and left > free):
            return []
        picked = self._pick(pid, free)
        for i in picked:
            self._state[i] = IN_FLIGHT
            self._owner[i] = (pid, now)
        p.in_flight += len(picked)
        return [AskChunks(pid, first, count) for first, count in _ranges(picked, self.cfg.max_range)]

    def _pick(self, pid: bytes, want: int) -> list[int]:
        """Lowest pending indices first: chunks given back, then the untouched rest."""
        got, skipped = [], []
        others = sum(1 for q, p in self.peers.items() if q != pid and p.state == "ready")
        while self._returned and len(got) < want:
            i = heapq.heappop(self._returned)
            if self._state[i] != PENDING:
                continue
            (skipped if others and self._avoid.get(i) == pid else got).append(i)
        for i in skipped:
            heapq.heappush(self._returned, i)
        while self._cursor < self.total and len(got) < want:
            if self._state[self._cursor] == PENDING:
                got.append(self._cursor)
            self._cursor += 1
        return sorted(got)

    # -- internals ------------------------------------------------------------------------

    def _learn(self, size: int, leaves: bytes) -> None:
        self.size, self.leaves = size, leaves
        self._state = bytearray(chunk_count(size))

    def _expire(self, now: float) -> None:
        for pid, p in self.peers.items():
            if p.state == "asked" and now - p.asked_at > self.cfg.leaves_timeout:
                p.state, p.why = "dropped", "no leaf list in time"
        late = sorted(i for i, (_, at) in self._owner.items() if now - at > self.cfg.chunk_timeout)
        struck: set[bytes] = set()
        for i in late:
            pid = self._owner[i][0]
            self._give_back(i)
            self._avoid[i] = pid
            struck.add(pid)
        for pid in sorted(struck):
            p = self.peers[pid]
            p.strikes += 1
            if p.strikes >= self.cfg.max_strikes:
                self._drop(pid, "too many chunks not delivered in time")

    def _give_back(self, index: int) -> None:
        pid, _ = self._owner.pop(index)
        self.peers[pid].in_flight -= 1
        self._checking.discard(index)
        self._state[index] = PENDING
        heapq.heappush(self._returned, index)

    def _drop(self, peer: bytes, why: str) -> None:
        p = self.peers.get(peer)
        if p is None or p.state == "dropped":
            return
        p.state, p.why = "dropped", why
        for i in sorted(i for i, (owner, _) in self._owner.items() if owner == peer):
            self._give_back(i)

    def _blame(self, peer: bytes, why: str, points: int = BAD_DATA) -> Blame:
        self._drop(peer, why)
        return Blame(points, why)


def _ranges(indices: list[int], longest: int) -> list[tuple[int, int]]:
    """Sorted indices as (first, count) runs of consecutive ones, none longer than `longest`."""
    out: list[tuple[int, int]] = []
    for i in indices:
        if out and out[-1][0] + out[-1][1] == i and out[-1][1] < longest:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((i, 1))
    return out
