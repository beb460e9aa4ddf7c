"""What solvers, verifiers and referees share: one view of a job, its data, and the checks.

Everything here works from the chain's own job record (`consensus.jobs.Job`, parsed from the
stored bytes whether they come from a node's state or from the RPC) and a `fetch(digest) ->
bytes | None` for blobs, so the same code serves an RPC client (workers) and a validator
node (referee).

Checks answer with a `Judgement`: FAULT and SOUND are decisions; UNDECIDED means something
needed could not be fetched, and a careful party neither attests, challenges nor votes on it
until it can (every check fails closed).
"""
from __future__ import annotations

import enum
import json
import logging
import os
import secrets as pysecrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from consensus import codec, forced, hashchain, merkle
from consensus.blobid import blob_id
from consensus.crypto import sha256
from consensus.jobs import Commit, Job, Shard

Fetch = Callable[[bytes], "bytes | Path | None"]  # a blob's bytes, or a verified file holding them
MAX_MANIFEST_BYTES = 64 << 20
POLL_S = 1.0
SECRET_LENGTH = 10_000


class Unavailable(LookupError):
    """A blob a check needs cannot be fetched right now."""


class Verdict(enum.Enum):
    FAULT = "fault"
    SOUND = "sound"
    UNDECIDED = "undecided"


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    why: str

    @classmethod
    def of(cls, ok: bool, why: str) -> "Judgement":
        return cls(Verdict.SOUND if ok else Verdict.FAULT, why)


def poll(step: Callable[[], None], log: logging.Logger, once: bool = False) -> None:
    """Run `step` every POLL_S seconds for ever. A node that is down or restarting, or one
    job that cannot be handled, is logged and retried; it never stops the worker."""
    from ..client import RpcError
    while True:
        try:
            step()
        except RpcError as exc:
            log.warning("node unavailable (%s); retrying", exc)
        except Exception:
            log.exception("could not handle a shard; will retry")
        if once:
            return
        time.sleep(POLL_S)


def checked(fetch: Fetch) -> Fetch:
    """`fetch` that returns a blob only when its id is the digest asked for. A file comes from
    a store that names what it writes by the id it hashed on the way in (blobcache.BlobCache,
    p2p.blobs.BlobStore): it is not hashed again here, at a second of sha256 per GB."""
    def get(digest: bytes) -> bytes | Path | None:
        raw = fetch(digest)
        if isinstance(raw, Path):
            return raw if raw.name == digest.hex() else None
        return raw if raw is not None and blob_id(raw) == digest else None
    return get


def small_blob(raw: bytes | Path, limit: int = MAX_MANIFEST_BYTES) -> bytes | None:
    """The bytes of a blob that must be small to be valid (a manifest): None past `limit`."""
    if isinstance(raw, Path):
        if raw.stat().st_size > limit:
            return None
        return raw.read_bytes()
    return raw if len(raw) <= limit else None


_DATA_CACHE: dict[bytes, tuple] = {}
_SPEC_CACHE: dict[bytes, object] = {}


class JobContext:
    """A job as the compute side sees it: the record, its TrainSpec and its data, each made
    once however many checks use them."""

    def __init__(self, job: Job, fetch: Fetch):
        self.job, self.fetch = job, checked(fetch)

    @property
    def spec(self):
        if self.job.id not in _SPEC_CACHE:
            _SPEC_CACHE[self.job.id] = train_spec(self.job.spec)
        return _SPEC_CACHE[self.job.id]

    def data(self):
        """(train, holdout); Unavailable when the dataset blob cannot be fetched."""
        from verifier import data as vdata
        d, spec = self.job.spec["data"], self.job.spec
        key = sha256(codec.encode([d, spec["holdout_ppm"]]))
        if key not in _DATA_CACHE:
            if "generator" in d:
                ds = vdata.generate(d["generator"], d["args"], d["seed"])
            else:
                raw = self.fetch(d["blob"])
                if raw is None:
                    raise Unavailable("the job's dataset blob is not available")
                ds = vdata.load_npz(raw)
            _DATA_CACHE[key] = vdata.split_holdout(ds, spec["holdout_ppm"])
        return _DATA_CACHE[key]

    def work(self, index: int, device: str = "cpu"):
        """The work on shard `index` of the current round."""
        from verifier.work import RoundShard, ShardWork
        train, _ = self.data()
        return ShardWork(self.spec, train, RoundShard(self.job.id, self.job.round, index, len(self.job.shards)),
                         device)

    def previous_finals(self) -> list[bytes]:
        """The previous round's final checkpoints (none in round 0); Unavailable if one is missing."""
        if not self.job.round:
            return []
        finals = [self.fetch(h) for h in self.job.finals[self.job.round - 1]]
        if any(f is None for f in finals):
            raise Unavailable("a final checkpoint of the previous round is not available")
        return finals

    def expected_start(self):
        """The state every shard of the current round must start from: the job's initial
        state, or the average of the previous round's finals."""
        from verifier import replay
        return replay.expected_round_state(self.spec, self.previous_finals())

    def manifest(self, commit: Commit) -> list[bytes]:
        """The leaf hashes of a commit; Unavailable if the manifest is not served, and an
        empty list if the served manifest does not match the committed root (a fault)."""
        raw = self.fetch(commit.manifest)
        if raw is None:
            raise Unavailable("the manifest is not served")
        raw = small_blob(raw)
        return manifest_leaves(raw, commit) if raw is not None else []


def manifest_leaves(raw: bytes, commit: Commit) -> list[bytes]:
    try:
        leaves = codec.decode(raw)
    except codec.CodecError:
        return []
    if type(leaves) is not list or len(leaves) != commit.leaves or not all(type(x) is bytes for x in leaves):
        return []
    return leaves if merkle.root(leaves) == commit.root else []


def train_spec(spec: dict):
    from verifier.training import TrainSpec
    return TrainSpec(model=spec["model"], model_args=spec["model_args"], optimizer=spec["optimizer"],
                     lr_ppm=spec["lr_ppm"], batch_size=spec["batch_size"], steps=spec["steps"], k=spec["k"],
                     profile=spec["profile"], seed=spec["seed"], tolerance_ppm=spec["tolerance_ppm"])


def check_start(ctx: JobContext, shard: Shard) -> Judgement:
    """The manifest matches the root, and the first checkpoint is the round's expected start."""
    from verifier import replay
    try:
        if not ctx.manifest(shard.commit):
            return Judgement(Verdict.FAULT, "the manifest does not match the committed root")
        start = ctx.fetch(shard.commit.start)
        if start is None:
            raise Unavailable("the start checkpoint is not served")
        finals = ctx.previous_finals()
    except Unavailable as exc:
        return Judgement(Verdict.UNDECIDED, str(exc))
    ok = replay.verify_round_start(ctx.spec, finals, start)
    return Judgement.of(ok, "start checkpoint matches" if ok else "start checkpoint is not the expected round start")


def check_forced(ctx: JobContext, index: int, shard: Shard, interval: int) -> Judgement:
    """The chain's FORCED check: FAULT ("planted") when the interval the solver revealed as its
    forced error ends on exactly the planted change of the honest end (so its attesters cannot
    have computed it); SOUND when it does not (the honest end, or a model of the solver's
    choosing: no forced error at all); undecided when its leaves cannot be fetched."""
    try:
        leaves = ctx.manifest(shard.commit)
    except Unavailable as exc:
        return Judgement(Verdict.UNDECIDED, str(exc))
    if not leaves:  # the solver's own manifest: no grounds to blame an attester on
        return Judgement(Verdict.UNDECIDED, "the manifest does not match the committed root")
    judged = check_revealed(ctx, index, interval, leaves[interval], leaves[interval + 1])
    planted = {Verdict.FAULT: Verdict.SOUND, Verdict.SOUND: Verdict.FAULT}  # the opposite question
    return Judgement(planted.get(judged.verdict, judged.verdict), judged.why)


def check_revealed(ctx: JobContext, index: int, interval: int, start_leaf: bytes, end_leaf: bytes) -> Judgement:
    """A challenge of a revealed forced interval says its end is not the planted change:
    FAULT when that is so."""
    from verifier import replay
    start, end = ctx.fetch(start_leaf), ctx.fetch(end_leaf)
    if start is None or end is None:
        return Judgement(Verdict.UNDECIDED, f"checkpoints of interval {interval} are not served")
    try:
        work = ctx.work(index)
    except Unavailable as exc:
        return Judgement(Verdict.UNDECIDED, str(exc))
    planted, why = replay.verify_forced(work, interval, start, end, ctx.job.shards[index].commit.losses)
    return Judgement(Verdict.SOUND if planted else Verdict.FAULT, why)


def check_interval(ctx: JobContext, index: int, interval: int, start_leaf: bytes, end_leaf: bytes,
                   device: str = "cpu") -> Judgement:
    """Recompute one interval of shard `index` from its first checkpoint and judge its last."""
    from verifier import replay
    start, end = ctx.fetch(start_leaf), ctx.fetch(end_leaf)
    if start is None or end is None:
        return Judgement(Verdict.UNDECIDED, f"checkpoints of interval {interval} are not served")
    try:
        work = ctx.work(index, device)
    except Unavailable as exc:
        return Judgement(Verdict.UNDECIDED, str(exc))
    commit = ctx.job.shards[index].commit
    return Judgement.of(*replay.verify_interval(work, interval, start, end, commit.diverged_leaf or None,
                                                commit.losses))


# -- hash-chain secrets ------------------------------------------------------------------------

class SecretStore:
    """This verifier's hash-chain seed (file mode 0600, never logged) and the elements it gives."""

    def __init__(self, path: Path):
        self.path = path
        if path.exists():
            raw = json.loads(path.read_text())
            self.seed, self.length = bytes.fromhex(raw["seed"]), raw["length"]
        else:
            self.renew()

    def renew(self) -> None:
        self.seed, self.length = pysecrets.token_bytes(32), SECRET_LENGTH
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"seed": self.seed.hex(), "length": self.length}, f)

    @property
    def tip(self) -> bytes:
        return hashchain.tip(self.seed, self.length)

    def element(self, index: int) -> bytes:
        return hashchain.element(self.seed, self.length, index)

    def matches(self, registered: dict | None) -> bool:
        """Is the chain registered on chain this seed's, with elements left (and not so far past
        the last revealed one that the chain refuses to draw it)?"""
        if not registered or registered["length"] != self.length or registered["next"] > self.length \
                or registered["next"] - registered["index"] > hashchain.MAX_GAP:
            return False
        return self.element(registered["index"]).hex() == registered["anchor"]


class SecretTree(SecretStore):
    """A solver's secrets: independent values H(seed, i) under one registered Merkle root
    (consensus/forced.py), so that revealing one exposes no other. Same seed file as a chain."""

    def element(self, index: int) -> bytes:
        if not 1 <= index <= self.length:
            raise ValueError(f"secret {index} is outside 1..{self.length}")
        return sha256(b"stepchain/solver-secret" + self.seed + index.to_bytes(8, "big"))

    def _all(self) -> list[bytes]:
        if getattr(self, "_cache", (None,))[0] != self.seed:
            self._cache = (self.seed, [self.element(i) for i in range(1, self.length + 1)])
        return self._cache[1]

    @property
    def tip(self) -> bytes:
        return forced.secret_root(self._all())

    def proof(self, index: int) -> list[bytes]:
        return forced.secret_proof(self._all(), index)

    def matches(self, registered: dict | None) -> bool:
        if not registered or registered["length"] != self.length or registered["next"] > self.length:
            return False
        return self.tip.hex() == registered["anchor"]


def ensure_registered(client, store: SecretStore, me: str, role: str, send, log: logging.Logger) -> None:
    """Register `store`'s chain for `role` unless the chain already holds it (with elements
    left). A new chain cannot replace one while collateral is locked: then wait."""
    acct = client.account(me)
    if store.matches(acct["secrets"][role]):
        return
    if acct["locked"][role] or (role == "solver" and acct.get("open_shards")):
        log.warning("the registered %s secrets are not this key's (or are used up) and collateral is locked or "
                    "a shard is held: waiting before registering new ones (the seed kept answers them)", role)
        return
    if acct["secrets"][role]:
        store.renew()
    send("register_secrets", {"role": role, "tip": store.tip, "length": store.length})
    log.info("registered %d %s secrets", store.length, role)


# -- the end of a bisection game -----------------------------------------------------------------

def check_game(ctx: JobContext, index: int, ch, height: int) -> Judgement:
    """A referee's one step at the end of `ch`'s bisection game (verifier.replay.verify_step).

    The agreed state (and the interval's leaves) may be uploaded by either party; a challenger
    that lets none of them be served by the game's serve_by has not made its case."""
    from verifier import replay
    game = ch.game
    blobs = [ctx.fetch(h) for h in (ch.start_leaf, ch.end_leaf, game.lo_hash)]
    if any(b is None for b in blobs):
        if height > game.serve_by:
            return Judgement(Verdict.SOUND, "the state the game ended on was not served in time: no fault shown")
        return Judgement(Verdict.UNDECIDED, "the state the game ended on is not served yet")
    try:
        work = ctx.work(index)
    except Unavailable as exc:
        return Judgement(Verdict.UNDECIDED, str(exc))
    commit = ctx.job.shards[index].commit
    return Judgement.of(*replay.verify_step(work, ch.interval, blobs[0], blobs[1], commit.diverged_leaf or None,
                                            blobs[2], game.lo, game.hi_hash, commit.losses))
