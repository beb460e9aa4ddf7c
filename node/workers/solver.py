"""`stepchain solver run`: train the shards the chain assigns to this key, publish, commit.

An RPC client of any node. Finished work is kept on disk by (job, round, shard), so a
restart of the worker or of the node loses nothing: the worker re-uploads and re-commits.
A solver that cannot run a shard (its dataset or its start is not served) declines it after
DECLINE_AFTER tries instead of missing the deadline: a decline is not slashed.
A `--cheat` strategy exists to demonstrate and test that the protocol catches fraud.
"""
from __future__ import annotations

import logging
from pathlib import Path

from consensus import codec, merkle
from consensus.crypto import PrivateKey, format_address, sha256
from consensus.jobs import ChallengeKind, Job, ShardStatus

from ..client import Client, make_tx
from .common import JobContext, Unavailable, poll

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

    def fetch(self, digest: bytes) -> bytes | None:
        return self.client.get_blob(digest.hex())

    def jobs(self) -> list[Job]:
        return [self.client.job(j) for j in self.client.get("/jobs")["active"]]

    def run(self, once: bool = False) -> None:
        log.info("solver %s watching for assigned shards", self.me)
        poll(self.step, log, once)

    def step(self) -> None:
        for job in self.jobs():
            for i, shard in enumerate(job.shards):
                if shard.solver != self.key.address:
                    continue
                if shard.status == ShardStatus.ASSIGNED:
                    self.solve(job, i)
                elif self.cheat == "withhold-then-serve":
                    self.serve_when_challenged(job, i)

    def _train(self, job: Job, index: int) -> tuple[list[bytes], int]:
        """(checkpoints, diverged_leaf) of the shard: honest, or what the cheat publishes."""
        from verifier import adversary, checkpoint, training
        ctx = JobContext(job, self.fetch)
        work = ctx.work(index, self.device)
        start = checkpoint.decode(ctx.expected_start())
        if self.cheat and self.cheat not in WITHHOLDING:
            published = adversary.publish(self.cheat, work, start)
            return published.leaves, published.diverged_leaf or 0
        bar = _progress(f"job {job.id.hex()[:8]} r{job.round} shard {index}", ctx.spec.steps) if self.progress else None
        try:
            leaves = training.train_shard(work, start, progress=bar.update if bar else None)
        finally:
            if bar:
                bar.close()
        return leaves, training.first_nonfinite_leaf(leaves) or 0

    def solve(self, job: Job, index: int) -> None:
        cache = self.workdir / f"{job.id.hex()}-{job.round}-{index}.ckpts"
        if cache.exists():
            checkpoints, diverged = codec.decode(cache.read_bytes(), max_size=1 << 31)
        else:
            try:
                checkpoints, diverged = self._train(job, index)
            except Unavailable as exc:
                return self._cannot_run(job, index, str(exc))
            cache.write_bytes(codec.encode([checkpoints, diverged]))
        leaves = [sha256(c) for c in checkpoints]
        manifest = codec.encode(leaves)
        if self.cheat not in WITHHOLDING:
            for c in checkpoints:
                self.client.put_blob(c)
            self.client.put_blob(manifest)
        body = {"job": job.id, "round": job.round, "shard": index,
                "root": merkle.root(leaves), "leaves": len(leaves), "manifest": sha256(manifest),
                "start": leaves[0], "start_proof": merkle.proof(leaves, 0),
                "final": leaves[-1], "final_proof": merkle.proof(leaves, len(leaves) - 1),
                "diverged_leaf": diverged}
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

    def serve_when_challenged(self, job: Job, index: int) -> None:
        """Test cheat: withhold every blob until an availability challenge names one, then
        serve everything (the challenger should lose only its fee)."""
        shard = job.shards[index]
        if not any(c.kind == ChallengeKind.AVAILABLE for c in shard.challenges):
            return
        cache = self.workdir / f"{job.id.hex()}-{job.round}-{index}.ckpts"
        checkpoints, _ = codec.decode(cache.read_bytes(), max_size=1 << 31)
        for c in checkpoints:
            self.client.put_blob(c)
        self.client.put_blob(codec.encode([sha256(c) for c in checkpoints]))

    def send(self, kind: str, body: dict) -> dict:
        status = self.client.status()
        acct = self.client.account(self.me)
        tx = make_tx(self.key, status["chain_id"], kind, body, acct["next_nonce"], 1)
        self.client.broadcast(tx)
        return self.client.wait_for_tx(tx.hash.hex())


def _progress(desc: str, total: int):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="step", leave=False)
