"""`stepchain solver run`: train the shards the chain assigns to this key, publish, commit.

An RPC client of any node. Finished work is kept on disk by (job, round, shard), so a
restart of the worker or of the node loses nothing: the worker re-uploads and re-commits.
A solver that cannot run a shard (its dataset or its start is not served) declines it after
DECLINE_AFTER tries instead of missing the deadline: a decline is not slashed.
A `--cheat` strategy exists to demonstrate and test that the protocol catches fraud.

Forced errors: each assignment reserves the next of this solver's secrets (a Merkle root of
them registered on first start, the seed kept in the work directory). With the assignment
beacon it says whether the shard must carry a forced error and where (consensus/forced.py);
the solver then plants it (verifier/forced.py). It reveals the secret when a challenge names that interval
(the challenger wins the jackpot, nobody is slashed) or when the chain asks after the window.

Disputes: in an exact profile a challenge opens a bisection game; the solver posts its state
hash at each midpoint, recomputed from its own leaf (it keeps leaves, not every step), and
uploads the state the game ends on for the referees.

Memory: leaves are written to disk as training makes them (verifier/leaves.py) and uploaded
as streams; blobs this worker needs are fetched into files (blobcache.py). A shard's leaves
are kept until it is settled (or no longer ours), then deleted.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from consensus import codec, merkle
from consensus.blobid import blob_id
from consensus.crypto import PrivateKey, format_address
from consensus.forced import forced_interval
from consensus.jobs import Challenge, ChallengeKind, Job, JobStatus, Shard, ShardStatus
from verifier.leaves import LeafDir

from ..client import Client, make_tx
from .blobcache import BlobCache, upload
from .common import JobContext, SecretTree, Unavailable, ensure_registered, poll

log = logging.getLogger("stepchain.solver")
DECLINE_AFTER = 20  # tries, one a second: a node restarting is not a missing dataset
WITHHOLDING = ("withhold", "withhold-then-serve")


class Solver:
    def __init__(self, client: Client, key: PrivateKey, workdir: Path, device: str = "cpu",
                 cheat: str | None = None, progress: bool = True):
        self.client, self.key = client, key
        self.me = format_address(key.address)
        self.workdir = workdir
        self.device = device
        self.cheat = cheat
        self.progress = progress
        self.failures: dict[tuple, int] = {}
        workdir.mkdir(parents=True, exist_ok=True)
        self.secrets = SecretTree(workdir / "secrets.json")
        self.sent: set[tuple] = set()   # defence moves sent: (shard key, what, state of the dispute)
        self.games: dict[tuple, list[bytes]] = {}  # challenge -> our hash after each step of its interval
        self.roots: dict[tuple, bytes] = {}  # shard -> the root of the checkpoints we keep for it
        self.blobs = BlobCache(client, workdir / "blobs")

    def fetch(self, digest: bytes) -> Path | None:
        return self.blobs.fetch(digest)

    def jobs(self) -> list[Job]:
        return [self.client.job(j) for j in self.client.get("/jobs")["active"]]

    def run(self, once: bool = False) -> None:
        log.info("solver %s watching for assigned shards", self.me)
        poll(self.step, log, once)

    def step(self) -> None:
        ensure_registered(self.client, self.secrets, self.me, "solver", self.send, log)
        rate = self.client.get("/params")["forced_error_ppm"]
        shards, games = set(), set()
        for job in self.jobs():
            for i, shard in enumerate(job.shards):
                if shard.solver != self.key.address:
                    continue
                self.blobs.release()  # what the last shard fetched may be trimmed now
                shards.add((job.id, job.round, i))
                games |= {(job.id, job.round, i, ch.challenger, ch.opened) for ch in shard.challenges}
                if shard.status == ShardStatus.ASSIGNED:
                    self.solve(job, i)
                elif shard.commit is not None and shard.status != ShardStatus.PASSED:
                    self.defend(job, i, shard, rate)
                elif shard.status == ShardStatus.PASSED:
                    shards.discard((job.id, job.round, i))  # settled: nothing can ask for its leaves
        self.forget(shards, games)

    def forget(self, shards: set, games: set) -> None:
        """Drop what we kept for shards no longer ours, or settled, and games no longer open
        (bounded memory and disk). Leaves go only on the chain's word that nothing can ask
        for them again: a node still catching up (or briefly listing no jobs) loses us nothing."""
        for d in self.workdir.glob("shard-*"):
            key = _shard_key(d.name)
            if d.is_dir() and key is not None and key[:3] not in shards and self._finished(*key):
                shutil.rmtree(d, ignore_errors=True)
        self.sent = {s for s in self.sent if s[0] in shards}
        self.games = {g: hashes for g, hashes in self.games.items() if g in games}
        self.failures = {f: n for f, n in self.failures.items() if f in shards}
        self.roots = {r: root for r, root in self.roots.items() if r in shards}

    def _finished(self, job_id: bytes, round_: int, index: int, secret: int) -> bool:
        """Is this assignment of ours over: its job closed or past its round, or the shard
        passed or held by another assignment? Unknown (the node cannot say): not finished."""
        from ..client import RpcError
        try:
            job = self.client.job(job_id.hex())
        except (RpcError, ValueError):
            return False
        if job.status != JobStatus.ACTIVE or job.round > round_:
            return True
        if job.round < round_ or not 0 <= index < len(job.shards):
            return False
        shard = job.shards[index]
        return shard.status == ShardStatus.PASSED or shard.solver != self.key.address or shard.secret_index != secret

    def forced(self, job: Job, shard: Shard, rate: int, diverged_leaf: int = 0) -> int | None:
        """The interval this shard must carry a forced error in (None: none), from our secret."""
        n = job.spec["steps"] // job.spec["k"]
        return forced_interval(self.secrets.element(shard.secret_index), shard.assign_beacon, n, rate, diverged_leaf)

    def shard_dir(self, job: Job, index: int) -> Path:
        """Per assignment: a shard reassigned to us later (another secret, maybe another forced
        error) is trained afresh, never answered from the leaves of the first assignment."""
        secret = job.shards[index].secret_index
        return self.workdir / f"shard-{job.id.hex()}-{job.round}-{index}-{secret}"

    def _train(self, job: Job, index: int, leaves: LeafDir) -> tuple[int, list[int]]:
        """Train the shard into `leaves`: honest (with its forced error, if it carries one), or
        what the cheat publishes; the diverged leaf (0: none) and the interval losses to declare."""
        from verifier import adversary, forced
        ctx = JobContext(job, self.fetch)
        work = ctx.work(index, self.device)
        if self.cheat and self.cheat not in WITHHOLDING:
            published = adversary.publish(self.cheat, work, ctx.expected_start())
            for i, raw in enumerate(published.leaves):
                leaves.put_raw(i, raw)
            return published.diverged_leaf or 0, published.declared_losses(ctx.spec.k)
        planted = self.forced(job, job.shards[index], self.client.get("/params")["forced_error_ppm"])
        if planted is not None:
            log.info("job %s r%d shard %d carries a forced error in interval %d", job.id.hex()[:8], job.round,
                     index, planted)
        bar = _progress(f"job {job.id.hex()[:8]} r{job.round} shard {index}", ctx.spec.steps) if self.progress else None
        try:
            # The start is handed over, not kept here: training happens in its tensors.
            forced.train_with_forced_error(work, ctx.expected_start(), planted, progress=bar.update if bar else None,
                                           store=leaves, own=True)
        finally:
            if bar:
                bar.close()
        count = work.intervals + 1
        return leaves.first_nonfinite(count) or 0, leaves.interval_losses(count, ctx.spec.k)

    def solve(self, job: Job, index: int) -> None:
        count = job.spec["steps"] // job.spec["k"] + 1
        store = LeafDir(self.shard_dir(job, index))
        if store.done is None:  # not trained yet, or interrupted: train (again) from the start
            try:
                store.finish(*self._train(job, index, store))
            except Unavailable as exc:
                return self._cannot_run(job, index, str(exc))
        diverged = store.done
        leaves = store.hashes(count)
        manifest = codec.encode(leaves)
        if self.cheat not in WITHHOLDING:
            for path in store.paths(count):
                upload(self.client, path)
            self.client.put_blob(manifest)
        body = {"job": job.id, "round": job.round, "shard": index,
                "root": merkle.root(leaves), "leaves": len(leaves), "manifest": blob_id(manifest),
                "start": leaves[0], "start_proof": merkle.proof(leaves, 0),
                "final": leaves[-1], "final_proof": merkle.proof(leaves, len(leaves) - 1),
                "diverged_leaf": diverged, "losses": store.declared_losses}
        info = self.send("commit_shard", body)
        log.info("committed job %s round %d shard %d at height %d (root %s%s)", job.id.hex()[:8], job.round,
                 index, info["height"], body["root"].hex()[:16], f", diverged at leaf {diverged}" if diverged else "")

    def _cannot_run(self, job: Job, index: int, why: str) -> None:
        key = (job.id, job.round, index)
        self.failures[key] = self.failures.get(key, 0) + 1
        log.warning("job %s shard %d cannot be run (%s), try %d of %d", job.id.hex()[:8], index, why,
                    self.failures[key], DECLINE_AFTER)
        if self.failures[key] >= DECLINE_AFTER:
            self.send("decline", {"job": job.id, "round": job.round, "shard": index})
            log.warning("declined job %s round %d shard %d", job.id.hex()[:8], job.round, index)

    def checkpoints(self, job: Job, index: int) -> LeafDir | None:
        """The leaves we trained for a shard, on disk (None if we have none)."""
        d = self.shard_dir(job, index)
        if not d.is_dir():
            return None
        store = LeafDir(d)
        return store if store.done is not None else None

    def our_root(self, job: Job, index: int) -> bytes | None:
        """The root of the checkpoints we keep for a shard (it is asked every poll)."""
        key = (job.id, job.round, index)
        if key not in self.roots:
            store = self.checkpoints(job, index)
            if store is None:
                return None
            self.roots[key] = merkle.root(store.hashes(job.spec["steps"] // job.spec["k"] + 1))
        return self.roots[key]

    def defend(self, job: Job, index: int, shard: Shard, rate: int) -> None:
        """Answer what the chain asks of a committed shard: the reveal, game moves, served blobs.
        The checkpoints are read from disk only when a move or a served blob needs them."""
        if self.our_root(job, index) != shard.commit.root:
            return  # not our commit (another worker's, or a lost work directory)
        body = {"job": job.id, "round": job.round, "shard": index}
        key = (job.id, job.round, index)
        if self.cheat == "withhold-then-serve" and any(c.kind == ChallengeKind.AVAILABLE for c in shard.challenges):
            self.serve_all(self.checkpoints(job, index))
        planted = self.forced(job, shard, rate, shard.commit.diverged_leaf)
        asked = shard.status == ShardStatus.REVEALING or any(
            ch.kind == ChallengeKind.COMPUTE and ch.interval == planted for ch in shard.challenges)
        if not shard.revealed_at and asked and (key, "reveal") not in self.sent:
            self.send("reveal", {**body, "secret": self.secrets.element(shard.secret_index),
                                 "proof": self.secrets.proof(shard.secret_index)})
            self.sent.add((key, "reveal"))
            log.info("revealed the forced-error secret of job %s r%d shard %d", job.id.hex()[:8], job.round, index)
            return
        ours = [ch for ch in shard.challenges if ch.game is not None and (ch.game.solver_to_move or ch.game.narrowed)
                and (key, ch.challenger, ch.opened, ch.game.moves) not in self.sent]
        if ours:
            checkpoints = self.checkpoints(job, index)
            for ch in ours:
                self.play(job, index, ch, checkpoints, body)

    def play(self, job: Job, index: int, ch: Challenge, checkpoints: LeafDir, body: dict) -> None:
        """Post our midpoint hash, or upload the state a finished game starts its last step from."""
        from verifier import checkpoint, training
        game = ch.game
        work = JobContext(job, self.fetch).work(index, self.device)
        first, leaf = ch.interval * job.spec["k"], checkpoints.path(ch.interval)
        gkey = (job.id, job.round, index, ch.challenger, ch.opened)  # games opened in one block differ
        if game.narrowed:
            state = leaf if game.lo == first else training.run_interval(
                work, leaf, first, game.lo - first, save_to=checkpoints.dir / f"step-{game.lo}.ckpt")
            if checkpoint.checkpoint_hash(state) == game.lo_hash:
                upload(self.client, state)
        else:
            if gkey not in self.games:
                self.games[gkey] = [checkpoints.ids[ch.interval]] + training.step_hashes(work, leaf, job.spec["k"])
            self.send("midpoint", {**body, "challenger": ch.challenger, "opened": ch.opened,
                                   "hash": self.games[gkey][game.mid - first]})
            log.info("job %s shard %d: posted the midpoint at step %d", job.id.hex()[:8], index, game.mid)
        self.sent.add(((job.id, job.round, index), ch.challenger, ch.opened, game.moves))

    def serve_all(self, checkpoints: LeafDir) -> None:
        """Test cheat withhold-then-serve: once an availability challenge names a blob, serve
        everything (the challenger should lose only its fee)."""
        count = len(checkpoints.ids)
        for path in checkpoints.paths(count):
            upload(self.client, path)
        self.client.put_blob(codec.encode(checkpoints.hashes(count)))

    def send(self, kind: str, body: dict) -> dict:
        status = self.client.status()
        acct = self.client.account(self.me)
        tx = make_tx(self.key, status["chain_id"], kind, body, acct["next_nonce"], 1)
        self.client.broadcast(tx)
        return self.client.wait_for_tx(tx.hash.hex())


def _shard_key(name: str) -> tuple | None:
    """(job id, round, shard, secret index) from a shard directory's name, None if it is not one."""
    try:
        _, job, round_, index, secret = name.split("-")
        return bytes.fromhex(job), int(round_), int(index), int(secret)
    except ValueError:
        return None


def _progress(desc: str, total: int):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="step", leave=False)
