"""Which blobs a node keeps: the pin set of the jobs on chain, and what garbage collection frees.

Sans-I/O, like consensus/bft.py: chain state and a listing of the blob directory go in,
decisions come out; node/blobgc.py reads the disk and executes them.

A job pins, while it is open and for ``retention_blocks`` blocks after it closed (done,
cancelled or diverged, so that its submitter can still fetch the results):

* its dataset blob (``spec.data.blob``, for uploaded datasets);
* every commit of its current round: the manifest, the start and final checkpoints, and the
  leaves listed in the manifest (when we hold it and it matches the committed root; a leaf
  under review or dispute is one of these);
* the finals of every round (the next round starts from their average);
* the checkpoints named by open challenges and their bisection games.

Everything else is collected once it is older than ``grace_s`` on local wall-clock time (GC
is local policy, never consensus): blobs nobody references (spam, an upload whose job was
never submitted), a closed job's blobs after its retention, checkpoints of a commit that was
thrown out, and stale ``.part-*`` temporaries of uploads that never finished. The grace
period covers the time between an upload and the tx that references it (a solver uploads
its checkpoints before it commits). A pinned blob is never collected, whatever its age.

Every result is sorted: nothing reported depends on dict or set order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from consensus import codec, merkle
from consensus.jobs import LIMITS, Commit, Job, JobError, JobStatus

JOB_PREFIX = b"job/"
# a manifest is a codec list of at most LIMITS["leaves"] 32-byte hashes (34 bytes each encoded)
MAX_MANIFEST_BYTES = LIMITS["leaves"] * 40 + 64


@dataclass(frozen=True)
class StoragePolicy:
    retention_blocks: int   # a closed job's blobs stay pinned this many blocks after it closed
    grace_s: float          # an unpinned blob or temporary file younger than this is kept


@dataclass(frozen=True)
class BlobFile:
    """One stored blob (with its sidecar files, if any)."""
    id: bytes
    size: int
    mtime: float


@dataclass(frozen=True)
class TempFile:
    """A file in the blob directory that is not a blob: an upload in progress or abandoned."""
    name: str
    size: int
    mtime: float


@dataclass(frozen=True)
class Pins:
    ids: frozenset[bytes]
    next_release: int | None  # the first height at which a closed job's pins lapse; None: no such job


@dataclass(frozen=True)
class Collection:
    """What one GC pass deletes, and what stays."""
    delete: tuple[bytes, ...]       # blob ids, sorted
    delete_temp: tuple[str, ...]    # temporary file names, sorted
    freed_bytes: int
    pinned_bytes: int               # on disk and pinned
    kept_bytes: int                 # on disk and kept (pinned, or within the grace period)


# -- chain state -> jobs ------------------------------------------------------------------------

def job_ids(state_keys: Iterable[bytes]) -> list[bytes]:
    """The ids of every job record among the state's keys, sorted."""
    return sorted(k[len(JOB_PREFIX):] for k in state_keys if k.startswith(JOB_PREFIX))


def parse_job(raw: bytes) -> Job | None:
    """A stored job record, or None if it does not parse (then it pins nothing)."""
    try:
        return Job.from_map(codec.decode(raw))
    except (codec.CodecError, JobError, TypeError, ValueError):
        return None


def closed_at(job: Job) -> int | None:
    """The height the job closed at; None while it is open. The close is the last event of
    the job's status (events after it, such as late votes, do not move it)."""
    if job.status == JobStatus.ACTIVE:
        return None
    heights = [e[0] for e in job.events if len(e) > 1 and e[1] == job.status.value and type(e[0]) is int]
    if heights:
        return heights[-1]
    # a closed job whose close event is gone: its latest event, else its submission
    return max([e[0] for e in job.events if e and type(e[0]) is int], default=job.submitted_at)


def release_height(job: Job, policy: StoragePolicy) -> int | None:
    """The height from which the job pins nothing; None while it is open."""
    closed = closed_at(job)
    return None if closed is None else closed + policy.retention_blocks


def holds_pins(job: Job, height: int, policy: StoragePolicy) -> bool:
    release = release_height(job, policy)
    return release is None or height < release


# -- one job's references -------------------------------------------------------------------------

def _commits(job: Job) -> list[Commit]:
    return [s.commit for s in job.shards if s.commit is not None]


def direct_refs(job: Job) -> set[bytes]:
    """The blob ids the job record names itself (no manifest needed)."""
    refs: set[bytes] = set()
    data = job.spec.get("data") if isinstance(job.spec, dict) else None
    if isinstance(data, dict) and type(data.get("blob")) is bytes:
        refs.add(data["blob"])
    for c in _commits(job):
        refs.update((c.manifest, c.start, c.final))
    for finals in job.finals:
        refs.update(f for f in finals if type(f) is bytes)
    for shard in job.shards:
        for ch in shard.challenges:
            refs.update((ch.start_leaf, ch.end_leaf))
            if ch.game is not None:
                refs.update((ch.game.lo_hash, ch.game.hi_hash, ch.game.mid_hash))
    return {r for r in refs if len(r) == 32}


def manifest_leaves(raw: bytes, commit: Commit) -> list[bytes]:
    """The leaf hashes a manifest lists, if it is the committed one; else nothing (a manifest
    that does not match its root must not pin blobs of its choosing)."""
    if len(raw) > MAX_MANIFEST_BYTES:
        return []
    try:
        leaves = codec.decode(raw, max_size=MAX_MANIFEST_BYTES)
    except codec.CodecError:
        return []
    if type(leaves) is not list or len(leaves) != commit.leaves or not leaves \
            or not all(type(x) is bytes and len(x) == 32 for x in leaves):
        return []
    return leaves if merkle.root(leaves) == commit.root else []


# -- the pin set ----------------------------------------------------------------------------------

def wanted_manifests(jobs: Iterable[Job], height: int, policy: StoragePolicy) -> list[bytes]:
    """The manifests whose leaves the pin set needs: those of jobs that still hold pins."""
    return sorted({c.manifest for j in jobs if holds_pins(j, height, policy) for c in _commits(j)})


def pin_set(jobs: Iterable[Job], height: int, policy: StoragePolicy, manifests: Mapping[bytes, bytes]) -> Pins:
    """Every blob some job pins at `height`; `manifests` maps manifest ids to the bytes we hold."""
    ids: set[bytes] = set()
    releases: list[int] = []
    for job in jobs:
        if not holds_pins(job, height, policy):
            continue
        release = release_height(job, policy)
        if release is not None:
            releases.append(release)
        ids |= direct_refs(job)
        for c in _commits(job):
            raw = manifests.get(c.manifest)
            if raw is not None:
                ids.update(manifest_leaves(raw, c))
    return Pins(frozenset(ids), min(releases, default=None))


# -- collection -----------------------------------------------------------------------------------

def collect(blobs: Iterable[BlobFile], temps: Iterable[TempFile], pins: Pins, now: float,
            grace_s: float) -> Collection:
    """Delete every unpinned blob and every temporary file at least `grace_s` old; never a
    pinned blob. A file dated in the future (a clock step) counts as new."""
    delete, freed, pinned, kept = [], 0, 0, 0
    for b in sorted(blobs, key=lambda b: b.id):
        if b.id in pins.ids:
            pinned += b.size
            kept += b.size
        elif now - b.mtime >= grace_s:
            delete.append(b.id)
            freed += b.size
        else:
            kept += b.size
    delete_temp = []
    for t in sorted(temps, key=lambda t: t.name):
        if now - t.mtime >= grace_s:
            delete_temp.append(t.name)
            freed += t.size
        else:
            kept += t.size
    return Collection(tuple(delete), tuple(delete_temp), freed, pinned, kept)
