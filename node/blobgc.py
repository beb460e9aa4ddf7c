"""The node's blob keeper: executes node/storage.py's decisions on the blob directory.

A GC pass runs every ``blob_gc_interval_s`` seconds, at start-up, and after a block that
closes a job or ends a closed job's retention. RPC uploads are charged against
``max_blob_disk_bytes``: an upload that would take the directory past it gets a GC pass
first, and is refused (StorageFull, HTTP 507) if that does not make room. The pass runs
on the event loop between blocks, so the pin set it computes is the chain state's at that
moment: no commit lands between computing the pins and deleting.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Callable

from consensus.jobs import K_ACTIVE_JOBS, Job
from p2p.blobs import BlobError, BlobStore

from .lifecycle import where
from .storage import (JOB_PREFIX, MAX_MANIFEST_BYTES, BlobFile, Collection, Pins, StoragePolicy, TempFile, collect,
                      job_ids, parse_job, pin_set, wanted_manifests)

if TYPE_CHECKING:
    from .chain import Chain
    from .home import Config

log = logging.getLogger("stepchain.storage")


class StorageFull(Exception):
    """The blob directory is at its bound and a GC pass freed nothing that makes room."""


class BlobKeeper:
    def __init__(self, chain: "Chain", store: BlobStore, cfg: "Config", clock: Callable[[], float] = time.time):
        self.chain, self.store, self.clock = chain, store, clock
        self.policy = StoragePolicy(cfg.blob_retention_blocks, float(cfg.blob_grace_s))
        self.limit = cfg.max_blob_disk_bytes  # 0: no bound
        self.interval = cfg.blob_gc_interval_s
        self._jobs: dict[bytes, tuple[bytes, Job | None]] = {}  # id -> (stored record, parsed)
        self._manifests: dict[bytes, bytes] = {}                # content-addressed: never stale
        self._pins_at: tuple[int, Pins] | None = None           # for reports: the pins at one height
        self._active = frozenset(self._active_ids())
        self._next_release: int | None = None
        self._wake = asyncio.Event()
        self._wake.set()  # a pass at start-up
        self.used = store.used_bytes()
        self.last: Collection | None = None
        self.freed_total = 0

    # -- reading chain state and manifests --------------------------------------------------

    def _active_ids(self) -> list[bytes]:
        return self.chain.view().read(K_ACTIVE_JOBS, [])

    def jobs(self) -> list[Job]:
        """Every job on chain, sorted by id; a record is parsed again only when it changed."""
        state = self.chain.state
        ids = job_ids(state.keys())
        fresh: dict[bytes, tuple[bytes, Job | None]] = {}
        for jid in ids:
            raw = state[JOB_PREFIX + jid]
            cached = self._jobs.get(jid)
            fresh[jid] = cached if cached is not None and cached[0] == raw else (raw, parse_job(raw))
        self._jobs = fresh
        return [job for _, job in (fresh[jid] for jid in ids) if job is not None]

    def _manifest_bytes(self, wanted: list[bytes]) -> dict[bytes, bytes]:
        """The wanted manifests we hold (small reads, bounded); the cache keeps only those."""
        out = {}
        for mid in wanted:
            raw = self._manifests.get(mid)
            if raw is None:
                size = self.store.size(mid)
                raw = self.store.get(mid) if size is not None and size <= MAX_MANIFEST_BYTES else None
            if raw is not None:
                out[mid] = raw
        self._manifests = out
        return out

    def pins(self) -> Pins:
        """The pin set now (always recomputed: a manifest that just arrived pins its leaves)."""
        jobs, height = self.jobs(), self.chain.height
        pins = pin_set(jobs, height, self.policy, self._manifest_bytes(wanted_manifests(jobs, height, self.policy)))
        self._pins_at = (height, pins)
        return pins

    # -- collecting -------------------------------------------------------------------------

    def run_pass(self) -> Collection:
        """Compute the pins, delete what the policy says, and refresh the disk use."""
        pins = self.pins()
        blobs = [BlobFile(*b) for b in self.store.list_blobs()]
        temps = [TempFile(*t) for t in self.store.list_temp()]
        decision = collect(blobs, temps, pins, self.clock(), self.policy.grace_s)
        freed = sum(self.store.delete(d) for d in decision.delete)
        for name in decision.delete_temp:
            try:
                freed += self.store.delete_temp(name)
            except BlobError:  # became a sidecar of a blob that arrived meanwhile: keep it
                pass
        self._next_release = pins.next_release
        self.used = self.store.used_bytes()
        self.last, self.freed_total = decision, self.freed_total + freed
        if decision.delete or decision.delete_temp:
            log.info("blob GC freed %d bytes (%d blobs, %d temporary files); %d bytes stored, %d pinned",
                     freed, len(decision.delete), len(decision.delete_temp), self.used, decision.pinned_bytes)
        return decision

    def on_commit(self, height: int) -> None:
        """Wake the GC loop after a block that closed a job or ended a retention period."""
        active = frozenset(self._active_ids())
        closed = bool(self._active - active)
        self._active = active
        if closed or (self._next_release is not None and height >= self._next_release):
            self._wake.set()

    async def run(self) -> None:
        """The GC loop: a pass when woken or every `interval` seconds; a failing pass is one
        log line, and the loop goes on."""
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                self.run_pass()
            except Exception as exc:  # a disk error (or a bug) costs this pass, not the node
                log.error("blob GC pass failed: %s: %s (at %s)", type(exc).__name__, exc, where(exc))

    # -- the disk bound ---------------------------------------------------------------------

    def admit(self) -> None:
        """Before an upload: StorageFull if the store is at its bound even after a GC pass."""
        self.used = self.store.used_bytes()
        if self.limit and self.used >= self.limit:
            self.run_pass()
            if self.used >= self.limit:
                raise StorageFull(self._full())

    def charge(self, n: int) -> None:
        """`n` more bytes of an upload; StorageFull if they do not fit even after a GC pass."""
        if self.limit and self.used + n > self.limit:
            self.run_pass()  # refreshes `used` from disk, this upload's bytes so far included
            if self.used + n > self.limit:
                raise StorageFull(self._full())
        self.used += n

    def reserve(self, n: int) -> None:
        """A fetch from peers of `n` bytes is about to start: StorageFull if it does not fit
        even after a GC pass (the disk use is read afresh: fetches do not charge as they go)."""
        self.used = self.store.used_bytes()
        self.charge(n)

    def _full(self) -> str:
        return (f"blob storage is full: {self.used} of {self.limit} bytes used (max_blob_disk_bytes), "
                f"{self.last.pinned_bytes if self.last else 0} pinned by jobs; try again once jobs close "
                "and their blobs are collected")

    # -- reporting --------------------------------------------------------------------------

    def report(self) -> dict:
        """bytes: every file in the blob directory; pinned_bytes: the blobs jobs pin (as of
        this height); limit: max_blob_disk_bytes (0: none)."""
        height = self.chain.height
        pins = self._pins_at[1] if self._pins_at is not None and self._pins_at[0] == height else self.pins()
        blobs = self.store.list_blobs()
        return {"bytes": self.store.used_bytes(), "blobs": len(blobs),
                "pinned_bytes": sum(size for digest, size, _ in blobs if digest in pins.ids), "limit": self.limit}
