"""Blobs between peers: serving chunks and leaf lists, and fetches carried out to disk.

The policy of a fetch (whom to ask for what, what to accept, whom to blame) is
p2p/blobfetch.py; the partial file and its resumable state are p2p/blobpartial.py. This is
the asyncio shell: it turns the planner's decisions into messages, writes accepted chunks at
their offsets as they arrive (never a whole blob in memory) and raises ``Misbehaviour`` for
what the planner blames.

Serving: a chunk is queued as a reference and read from disk only when the peer's writer is
ready to send it (p2p/gossip.py), and each peer has at most ``SERVE_QUEUE`` queued, so a
slow or greedy peer holds neither our memory nor our other peers' bandwidth.

Wire messages (all payloads bounded by the frame limit and checked here):
  blob_leaves_get  id                          -> blob_leaves [id, size, leaf hashes (32 B each)]
  blob_get         [id, first] | [id, first, count <= MAX_RANGE]  -> blob_chunk [id, i, total, data]
  blob_missing     id                          (we do not have it, or the range is out of bounds)
"""
from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from consensus.blobid import CHUNK, chunk_count
from consensus.crypto import format_address
from p2p.blobfetch import Accept, AskChunks, AskLeaves, Blame, Check, FetchConfig, FetchPlanner, LeavesOk, leaf_of
from p2p.blobpartial import PartialBlob, prune_partials
from p2p.blobs import BlobError, BlobStore
from p2p.gossip import Gossip, Misbehaviour, Peer

from .blobgc import StorageFull

log = logging.getLogger("stepchain.blobs")
MALFORMED = 50
MAX_RANGE = 16            # chunks one blob_get may ask for
SERVE_QUEUE = 64          # chunks (and leaf lists) queued for one peer; more requests wait for a retry
MAX_FETCHES = 4           # blobs fetched at once; more wait their turn
STALL_S = 30.0            # a fetch with no new chunk for this long stops (its state stays on disk)
POLL_S = 0.25
SLOW_SERVE_S = 0.05       # misbehave = "slow-blobs": one chunk per 50 ms per peer (tests of resuming)
HISTORY = 16
LEAVES_CACHE = 8          # verified leaf lists kept in memory (128 KiB each for 4 GiB blobs)
SYNC_EVERY = 32           # chunks between two fdatasyncs of a partial file (in a checker thread)
CHECKERS = 2              # threads hashing and writing arriving chunks (sha256 and pwrite free the GIL)


@dataclass
class _Fetch:
    digest: bytes
    done: asyncio.Future
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    planner: FetchPlanner | None = None
    partial: PartialBlob | None = None
    failure: str = ""
    cause: BaseException | None = None  # what ended it, when it was ours (the disk, the disk bound)
    pending: set = field(default_factory=set)       # chunks being hashed and written in a worker
    unsynced: int = 0                                # chunks written since the last fdatasync
    syncing: bool = False
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None


class BlobTransfers:
    def __init__(self, gossip: Gossip, store: BlobStore, frame_limit: int, misbehave: str = "",
                 cfg: FetchConfig = FetchConfig()):
        self.gossip, self.store, self.frame_limit, self.cfg = gossip, store, frame_limit, cfg
        self.slow = misbehave == "slow-blobs"
        self.active: dict[bytes, _Fetch] = {}
        self.history: deque[_Fetch] = deque(maxlen=HISTORY)
        self.served: dict[bytes, int] = {}          # chunks sent, by peer (for /debug/blob_fetches)
        self.count_bytes = lambda direction, n: None  # the node's metrics: verified bytes "in", sent "out"
        self.reserve = lambda size: None  # the node's disk bound (blobgc.BlobKeeper): raises StorageFull
        self._slots = asyncio.Semaphore(MAX_FETCHES)
        self._queued: dict[bytes, tuple[Peer, int]] = {}   # peer id -> (that session, refs queued)
        self._next_slow: dict[bytes, float] = {}
        self._leaves_jobs: dict[bytes, asyncio.Task] = {}
        self._leaves_cache: OrderedDict[bytes, bytes] = OrderedDict()
        self._checker = ThreadPoolExecutor(CHECKERS, thread_name_prefix="blob-check")

    # -- fetching -------------------------------------------------------------------------

    async def fetch_file(self, digest: bytes, timeout: float) -> Path | None:
        """The blob on disk, verified: ours, or fetched from peers (None if none has it in time)."""
        if self.store.has(digest):
            return self.store.path(digest)
        fetch = self.active.get(digest)
        if fetch is None:
            if not self.gossip.peers:
                return None
            fetch = self.active[digest] = _Fetch(digest, asyncio.get_running_loop().create_future())
            self.gossip._spawn(self._run(fetch))
        try:
            return await asyncio.wait_for(asyncio.shield(fetch.done), timeout)
        except asyncio.TimeoutError:
            return None

    def close(self) -> None:
        """After the network stopped: the checker threads end (their jobs are milliseconds)."""
        self._checker.shutdown(wait=True)

    def end_all(self) -> None:
        """Shutting down: every caller still waiting gets None now (state stays for a resume)."""
        for fetch in self.active.values():
            if not fetch.done.done():
                fetch.done.set_result(None)

    async def _run(self, fetch: _Fetch) -> None:
        result = None
        try:
            async with self._slots:
                planner = FetchPlanner(fetch.digest, self.store.max_bytes, self.cfg)
                fetch.partial = PartialBlob(self.store, fetch.digest)
                await asyncio.to_thread(self._resume, planner, fetch.partial)
                fetch.planner = planner  # from now on messages about this blob are heeded
                await self._drive(fetch)
                if fetch.planner.done:
                    synced = time.monotonic()
                    result = await asyncio.to_thread(fetch.partial.finish)
                    log.info("blob %s fetched: %s (the last fsync %.2f s)", fetch.digest.hex()[:16],
                             self._summary(fetch), time.monotonic() - synced)
        except OSError as exc:
            fetch.failure = f"disk: {exc}"
            log.warning("blob %s fetch failed: %s", fetch.digest.hex()[:16], fetch.failure)
        except Exception as exc:  # a bug: this fetch ends, the node keeps running
            fetch.failure = f"unexpected error: {exc!r}"
            log.exception("blob %s fetch failed", fetch.digest.hex()[:16])
        finally:
            if fetch.pending:  # no worker may write through a file descriptor that is closed (or reused)
                await asyncio.wait(list(fetch.pending))
            if fetch.partial is not None and result is None:
                fetch.partial.close()
            if result is None and not fetch.failure and fetch.planner is not None:
                fetch.failure = "stalled" if not fetch.planner.stalled else "no peer could serve it"
            fetch.ended = time.monotonic()
            self.active.pop(fetch.digest, None)
            self.history.append(fetch)
            if not fetch.done.done():
                fetch.done.set_result(result)

    def _resume(self, planner: FetchPlanner, partial: PartialBlob) -> None:
        """In a thread: what an earlier attempt left on disk, re-checked, goes into the planner."""
        prune_partials(self.store, spare=set(self.active))
        verified = partial.load()
        if partial.opened:
            planner.resume(partial.size, partial.leaves, verified)

    async def _drive(self, fetch: _Fetch) -> None:
        planner = fetch.planner
        progress, since = -1, time.monotonic()
        while not planner.done and not fetch.failure:
            now = time.monotonic()
            for pid in self.gossip.peers:
                planner.add_peer(pid)
            for pid, p in planner.peers.items():
                if p.state != "dropped" and pid not in self.gossip.peers:
                    planner.peer_gone(pid)
            self._execute(fetch, planner.poll(now))
            if planner.stalled:
                return
            if planner.verified != progress:
                progress, since = planner.verified, now
            elif now - since > STALL_S:
                return
            try:
                await asyncio.wait_for(fetch.wake.wait(), POLL_S)
            except asyncio.TimeoutError:
                pass
            fetch.wake.clear()

    def _execute(self, fetch: _Fetch, actions) -> None:
        for act in actions:
            peer = self.gossip.peers.get(act.peer)
            if peer is None:
                fetch.planner.peer_gone(act.peer)
            elif isinstance(act, AskLeaves):
                peer.send("blob_leaves_get", fetch.digest)
            elif isinstance(act, AskChunks):
                peer.send("blob_get", [fetch.digest, act.first, act.count])

    @staticmethod
    def _fail(fetch: _Fetch, exc: BaseException) -> None:
        fetch.failure, fetch.cause = f"disk: {exc}", exc
        log.warning("blob %s fetch failed: %s", fetch.digest.hex()[:16], fetch.failure)
        fetch.wake.set()

    def _fetch_for(self, digest) -> _Fetch | None:
        fetch = self.active.get(digest) if type(digest) is bytes else None
        return fetch if fetch is not None and fetch.planner is not None and not fetch.failure else None

    def on_leaves(self, peer: Peer, payload) -> None:
        if type(payload) is not list or len(payload) != 3:
            raise Misbehaviour(MALFORMED, "blob_leaves must be [hash, size, leaf hashes]")
        fetch = self._fetch_for(payload[0])
        if fetch is None:
            return  # not asked, or the fetch is over
        verdict = fetch.planner.on_leaves(peer.id, payload[1], payload[2])
        if isinstance(verdict, LeavesOk) and not fetch.partial.opened:
            size = fetch.planner.size
            try:
                free = shutil.disk_usage(self.store.dir).free
                if free < size:
                    raise OSError(f"{size} bytes do not fit on disk ({free} free)")
                self.reserve(size)  # a fetch counts against max_blob_disk_bytes like an upload
                fetch.partial.start(size, fetch.planner.leaves)
            except (OSError, StorageFull) as exc:  # ours, not the peer's: the fetch ends, nobody is blamed
                self._fail(fetch, exc)
                return
        self._after(fetch, peer, verdict)

    def on_missing(self, peer: Peer, payload) -> None:
        fetch = self._fetch_for(payload)
        if fetch is not None:
            fetch.planner.on_missing(peer.id)
            self._after(fetch, peer, None)

    def on_chunk(self, peer: Peer, payload) -> None:
        if type(payload) is not list or len(payload) != 4:
            raise Misbehaviour(MALFORMED, "blob_chunk must be [hash, index, total, data]")
        fetch = self._fetch_for(payload[0])
        if fetch is None:
            return  # unsolicited, or another peer was faster
        data = payload[3]
        verdict = fetch.planner.on_chunk(peer.id, payload[1], data)
        if isinstance(verdict, Check):  # hashed (and written if good) in a worker, off the event loop
            job = self._in_worker(fetch, _check_and_write, fetch.partial, verdict, data)
            job.add_done_callback(lambda j: self._checked(fetch, peer, verdict.index, j))
            return
        self._after(fetch, peer, verdict)

    def _sync(self, fetch: _Fetch) -> None:
        """One fdatasync at a time, in its own thread: a slow disk never holds up the checks."""
        fetch.syncing, fetch.unsynced = True, 0
        job = self._in_worker(fetch, fetch.partial.sync_data, pool=None)
        job.add_done_callback(lambda _: setattr(fetch, "syncing", False))

    def _in_worker(self, fetch: _Fetch, fn, *args, pool="checker") -> asyncio.Future:
        """Run fn in a checker thread (or asyncio's default pool); the fetch's file stays open
        until every such job is done."""
        job = asyncio.get_running_loop().run_in_executor(self._checker if pool else None, fn, *args)
        fetch.pending.add(job)
        job.add_done_callback(fetch.pending.discard)
        return job

    def _checked(self, fetch: _Fetch, peer: Peer, index: int, job: asyncio.Future) -> None:
        if job.cancelled() or fetch.failure or fetch.ended is not None:
            return
        if job.exception() is not None:
            self._fail(fetch, job.exception())
            return
        verdict = fetch.planner.on_checked(peer.id, index, job.result())
        if isinstance(verdict, Accept):
            try:
                fetch.partial.mark(index)
            except OSError as exc:
                self._fail(fetch, exc)
                return
            self.count_bytes("in", min(CHUNK, fetch.partial.size - index * CHUNK))
            fetch.unsynced += 1
            if fetch.unsynced >= SYNC_EVERY and not fetch.syncing and not fetch.planner.done:
                self._sync(fetch)
            bucket = peer.messages  # a chunk we asked for is not a flood: its token is given back
            bucket.tokens = min(bucket.burst, bucket.tokens + 1)
        try:
            self._after(fetch, peer, verdict)
        except Misbehaviour as exc:
            self.gossip.penalize(peer, exc.points, exc.reason)

    def _after(self, fetch: _Fetch, peer: Peer, verdict) -> None:
        """Refill the windows at once (a chunk in is a slot free); blame when the planner did."""
        planner = fetch.planner
        if not planner.done:
            self._execute(fetch, planner.poll(time.monotonic()))
        if planner.done or planner.stalled or isinstance(verdict, Blame):
            fetch.wake.set()
        if isinstance(verdict, Blame):
            raise Misbehaviour(verdict.points, f"blob {fetch.digest.hex()[:16]}: {verdict.reason}")

    # -- serving --------------------------------------------------------------------------

    def on_get(self, peer: Peer, payload) -> None:
        if (type(payload) is not list or len(payload) not in (2, 3) or type(payload[0]) is not bytes
                or not all(type(x) is int for x in payload[1:])):
            raise Misbehaviour(MALFORMED, "blob_get must be [hash, first chunk] or [hash, first, count]")
        digest, first = payload[0], payload[1]
        count = payload[2] if len(payload) == 3 else 1
        if not 1 <= count <= MAX_RANGE:
            raise Misbehaviour(MALFORMED, f"blob_get may ask for 1 to {MAX_RANGE} chunks")
        try:
            size = self.store.size(digest)
        except BlobError as exc:
            raise Misbehaviour(MALFORMED, str(exc)) from None
        if size is None or not 0 <= first or first + count > chunk_count(size):
            peer.send("blob_missing", digest)
            return
        for index in range(first, first + count):
            if not self._reserve(peer):
                return  # over its queue: the fetcher times the rest out and asks again
            self._queue(peer, "blob_chunk", _ChunkRef(self, peer, digest, index))

    def _reserve(self, peer: Peer) -> bool:
        session, queued = self._queued.get(peer.id, (peer, 0))
        if session is not peer:  # a new connection of the same key starts afresh
            queued = 0
        if queued >= SERVE_QUEUE:
            return False
        if len(self._queued) > 4 * len(self.gossip.peers) + 64:  # forget peers that left
            self._queued = {p: q for p, q in self._queued.items() if p in self.gossip.peers}
        self._queued[peer.id] = (peer, queued + 1)
        return True

    def _release(self, peer: Peer) -> None:
        session, queued = self._queued.get(peer.id, (None, 0))
        if session is peer and queued > 0:
            self._queued[peer.id] = (peer, queued - 1)

    def _queue(self, peer: Peer, kind: str, ref) -> None:
        if not self.slow:
            if not peer.send(kind, ref):
                self._release(peer)
            return
        loop = asyncio.get_running_loop()
        at = max(loop.time(), self._next_slow.get(peer.id, 0.0)) + SLOW_SERVE_S
        self._next_slow[peer.id] = at
        loop.call_at(at, lambda: peer.send(kind, ref) or self._release(peer))

    def read_chunk(self, peer: Peer, digest: bytes, index: int):
        """At send time: the chunk message, or None (the blob went away meanwhile)."""
        self._release(peer)
        try:
            part = self.store.chunk(digest, index)
        except OSError as exc:
            log.warning("could not read chunk %d of blob %s: %s", index, digest.hex()[:16], exc)
            return None
        if part is None:
            return None
        if len(self.served) > 4 * len(self.gossip.peers) + 64:  # forget peers that left
            self.served = {p: n for p, n in self.served.items() if p in self.gossip.peers}
        self.served[peer.id] = self.served.get(peer.id, 0) + 1
        self.count_bytes("out", len(part[0]))
        return [digest, index, part[1], part[0]]

    def on_leaves_get(self, peer: Peer, payload) -> None:
        if type(payload) is not bytes or len(payload) != 32:
            raise Misbehaviour(MALFORMED, "blob_leaves_get must be a blob hash")
        if not self.store.has(payload):
            peer.send("blob_missing", payload)
        elif self._cached_leaves(payload) is not None:
            if self._reserve(peer):
                self._queue(peer, "blob_leaves", _LeavesRef(self, peer, payload))
        elif payload not in self._leaves_jobs:  # hashed once, in a thread; then the sidecar serves
            job = self.gossip._spawn(self._compute_leaves(peer, payload))
            self._leaves_jobs[payload] = job
            job.add_done_callback(lambda _: self._leaves_jobs.pop(payload, None))

    def _cached_leaves(self, digest: bytes) -> bytes | None:
        """A blob's verified leaf list; the last few are kept in memory, so a peer asking again
        and again costs no re-reading and re-hashing (4 ms for 4 GiB) of the sidecar."""
        leaves = self._leaves_cache.get(digest)
        if leaves is None:
            leaves = self.store.stored_leaves(digest)
            if leaves is not None:
                self._leaves_cache[digest] = leaves
                while len(self._leaves_cache) > LEAVES_CACHE:
                    self._leaves_cache.popitem(last=False)
        return leaves

    async def _compute_leaves(self, peer: Peer, digest: bytes) -> None:
        leaves = await asyncio.to_thread(self.store.leaves, digest)
        if leaves is None:
            peer.send("blob_missing", digest)
        elif self._reserve(peer):
            self._queue(peer, "blob_leaves", _LeavesRef(self, peer, digest))

    def read_leaves(self, peer: Peer, digest: bytes):
        self._release(peer)
        size, leaves = self.store.size(digest), self._cached_leaves(digest)
        if size is None or leaves is None:
            return None
        if len(leaves) + 128 > self.frame_limit:
            log.warning("blob %s has too many chunks to list in one frame", digest.hex()[:16])
            return None
        return [digest, size, leaves]

    # -- reporting ------------------------------------------------------------------------

    def full_storage(self, digest: bytes) -> str | None:
        """Why the last fetch of `digest` ended, if it was this node's disk bound."""
        for f in reversed(self.history):
            if f.digest == digest:
                return f.failure if isinstance(f.cause, StorageFull) else None
        return None

    def report(self) -> dict:
        """Recent and running fetches, per peer (for GET /debug/blob_fetches)."""
        rows = [self._row(f) for f in [*self.history, *self.active.values()]]
        return {"fetches": rows, "served": {format_address(p): n for p, n in sorted(self.served.items())}}

    def _row(self, f: _Fetch) -> dict:
        p = f.planner
        state = "running" if f.ended is None else ("done" if p is not None and p.done else "failed")
        row = {"blob": f.digest.hex(), "state": state, "failure": f.failure,
               "seconds": round((f.ended or time.monotonic()) - f.started, 3)}
        if p is not None:
            row.update(size=p.size, chunks=p.total, verified=p.verified, resumed=p.resumed,
                       peers={format_address(pid): {"chunks": q.received, "state": q.state, "why": q.why}
                              for pid, q in sorted(p.peers.items())})
        return row

    def _summary(self, f: _Fetch) -> str:
        p = f.planner
        per = ", ".join(f"{format_address(pid)[:14]}: {q.received}" for pid, q in sorted(p.peers.items()) if q.received)
        return f"{p.total} chunks ({p.resumed} resumed from disk; {per}) in {time.monotonic() - f.started:.2f} s"


@dataclass(frozen=True)
class _ChunkRef:
    """A queued chunk: read from disk when the writer sends it (gossip.py calls it)."""
    owner: BlobTransfers
    peer: Peer
    digest: bytes
    index: int

    def __call__(self):
        return self.owner.read_chunk(self.peer, self.digest, self.index)


@dataclass(frozen=True)
class _LeavesRef:
    owner: BlobTransfers
    peer: Peer
    digest: bytes

    def __call__(self):
        return self.owner.read_leaves(self.peer, self.digest)


def _check_and_write(partial: PartialBlob, check: Check, data: bytes) -> bytes:
    """In a worker: the chunk's leaf hash; its bytes go to disk only when it is the right one."""
    leaf = leaf_of(data)
    if leaf == check.leaf:
        partial.write(check.offset, data)
    return leaf
