"""`stepchain verifier run`: re-run the intervals the chain drew for this key; attest or challenge.

A drawn verifier's intervals come from its own hash-chain secret (registered on first start,
kept in its work directory), the commit root and the beacon that drew it, plus the last
interval. With `--whistleblower` it also checks shards it was not drawn for (the start, the
last interval and one more chosen locally) and challenges any fault it finds.

Every check fails closed: a blob that cannot be fetched is never attested. If it stays
missing for GRACE_SCANS scans, the verifier opens an availability challenge naming it (the
solver must serve it within the chain's response deadline); if a check cannot be decided
for another reason (the previous round's finals are not reachable), it waits and retries.
A computation challenge carries both checkpoints, which the verifier also uploads to its
node, so referees can always get them. In an exact profile the challenge opens a bisection
game: the verifier answers each of the solver's midpoints from its own recomputation, and
uploads the state the game ends on for the referees.

A shard whose solver revealed a forced error (answering a challenge of that interval) is
looked at again: its forced interval must end on exactly the planted change (else it is
challenged: the solver passed other work off as a forced error), and the rest is attested as
usual.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from consensus import merkle
from consensus.crypto import PrivateKey, format_address
from consensus.jobs import Challenge, Job, Shard, ShardStatus
from consensus.sampling import verifier_intervals

from ..client import Client, RpcError, make_tx
from .blobcache import BlobCache, upload
from .common import (JobContext, SecretStore, Unavailable, Verdict, check_interval, check_revealed, check_start,
                     ensure_registered, poll)

log = logging.getLogger("stepchain.verifier")
GRACE_SCANS = 3
RESEND_SCANS = 5  # a game move not on chain after this many scans (dropped somewhere) is sent again


class Task(NamedTuple):
    """One check a verifier owes, done once: a new draw or a reveal makes it a new task."""
    job: bytes
    round: int
    shard: int
    root: bytes
    selected: bool
    revealed_at: int


def check_task(job: Job, index: int, shard: Shard, me: bytes, whistleblower: bool) -> Task | None:
    """What verifier `me` owes a shard now, as a key to do it once. `selected` is part of the
    key: a whistleblower may check a commit before verifiers are drawn; if it is then drawn,
    only an attestation sent as a drawn verifier counts. So is the reveal of a forced error:
    a verifier whose challenge it answered checks the shard again, and attests."""
    if shard.status not in (ShardStatus.COMMITTED, ShardStatus.VERIFYING, ShardStatus.DISPUTED):
        return None
    sel = shard.selection(me)
    selected = sel is not None and not sel.attested and shard.status != ShardStatus.COMMITTED
    if not selected and not (whistleblower and shard.solver != me):
        return None
    if shard.open_challenge(me) is not None:
        return None
    return Task(job.id, job.round, index, shard.commit.root, selected, shard.revealed_at)


@dataclass(frozen=True)
class Finding:
    """What inspecting a shard found: a challenge body to send, or nothing (sound), or None
    for the body when it could not be decided yet."""
    verdict: Verdict
    why: str
    challenge: dict | None = None


class Verifier:
    def __init__(self, client: Client, key: PrivateKey, workdir: Path, whistleblower: bool = False,
                 lazy: bool = False, extra_checks: int = 1, device: str = "cpu"):
        self.client, self.key = client, key
        self.me = format_address(key.address)
        self.secrets = SecretStore(workdir / "secrets.json")
        self.whistleblower = whistleblower
        self.extra_checks = extra_checks  # whistleblower: random intervals checked besides the last
        self.lazy = lazy  # test-only: attest without checking (to show that it gets slashed)
        self.done: set[tuple] = set()
        self.sent: dict[tuple, str] = {}  # task -> hash of the tx that should settle it
        self.missing: dict[tuple, int] = {}
        self.games: dict[tuple, list[bytes]] = {}  # challenge -> our hash after each step of its interval
        self.moved: dict[tuple, int] = {}          # game moves sent (challenge, moves then) -> scans since
        self.blobs = BlobCache(client, workdir / "blobs")
        self.device = device

    def fetch(self, digest: bytes) -> Path | None:
        return self.blobs.fetch(digest)

    def run(self, once: bool = False) -> None:
        log.info("verifier %s watching for shards to check%s", self.me,
                 " (whistleblower)" if self.whistleblower else "")
        poll(self.scan, log, once)

    def ensure_registered(self) -> None:
        ensure_registered(self.client, self.secrets, self.me, "verifier",
                          lambda kind, body: self.send(kind, None, body, wait=True), log)

    def scan(self) -> None:
        self.ensure_registered()
        samples = self.client.get("/params")["samples_per_shard"]
        self.settle_sent()
        games = set()
        for job_id in self.client.get("/jobs")["active"]:
            job = self.client.job(job_id)
            for i, shard in enumerate(job.shards):
                self.blobs.release()  # what the last shard's checks fetched may be trimmed now
                ch = shard.open_challenge(self.key.address)
                if ch is not None and ch.game is not None:
                    games.add((job.id, job.round, i, ch.opened))
                    self.play(job, i, ch)
                task = check_task(job, i, shard, self.key.address, self.whistleblower)
                if task is not None and task not in self.done and task not in self.sent:
                    tx_hash = self.check_shard(job, i, shard, samples, selected=task.selected)
                    if tx_hash is not None:
                        self.sent[task] = tx_hash
        self.games = {g: hashes for g, hashes in self.games.items() if g in games}  # bounded memory
        self.moved = {m: n for m, n in self.moved.items() if m[0] in games}

    def settle_sent(self) -> None:
        """A task is done once its tx is on chain. One the chain dropped (its shard moved on
        before it landed) is forgotten, so the shard is looked at afresh."""
        for task, tx_hash in list(self.sent.items()):
            try:
                status = self.client.get(f"/tx/{tx_hash}").get("status")
            except RpcError as exc:
                if "not found" not in str(exc):
                    raise
                status = "dropped"
            if status == "committed":
                self.done.add(task)
            if status != "pending":
                del self.sent[task]

    def intervals(self, shard: Shard, samples: int, selected: bool) -> list[int]:
        """What to re-run: a drawn verifier's intervals, or a whistleblower's own sample (a
        revealed forced interval among them is checked against the planted change)."""
        n = shard.commit.leaves - 1
        if selected:
            secret = self.secrets.element(shard.selection(self.key.address).secret_index)
            chosen = verifier_intervals(secret, shard.commit.root, shard.beacon, n, samples,
                                        shard.commit.diverged_leaf or None)
        elif self.extra_checks >= n - 1:
            chosen = list(range(n))
        else:
            chosen = sorted({n - 1, *random.sample(range(n - 1), self.extra_checks)})
        return chosen

    def play(self, job: Job, index: int, ch: Challenge) -> None:
        """Our move in the bisection game of our challenge: answer the solver's midpoint from our
        own recomputation, or, once one step is left, upload the state it starts from."""
        game, key = ch.game, (job.id, job.round, index, ch.opened)
        if not (game.mid_hash or game.narrowed):
            return
        if (key, game.moves) in self.moved:  # sent; sent again if the chain has not seen it by now
            self.moved[(key, game.moves)] += 1
            if game.narrowed or self.moved[(key, game.moves)] < RESEND_SCANS:
                return
        ctx = JobContext(job, self.fetch)
        start = ctx.fetch(ch.start_leaf)
        if start is None:
            return  # we uploaded it with the challenge; the node is catching up
        first = ch.interval * ctx.spec.k
        from verifier import training
        from verifier.checkpoint import CheckpointError, checkpoint_hash
        if key not in self.games:
            try:
                self.games[key] = [ch.start_leaf] + training.step_hashes(ctx.work(index), start, ctx.spec.k)
            except CheckpointError:  # the start leaf is not a state of this job: no step after it is
                self.games[key] = []  # right, so disagree all the way down to it (the referees see it)
        ours = self.games[key]
        if game.narrowed:
            if ours:
                state = start if game.lo == first else training.run_interval(
                    ctx.work(index), start, first, game.lo - first, save_to=self.blobs.dir / f".step-{game.lo}")
                if checkpoint_hash(state) == game.lo_hash:
                    upload(self.client, state)
            self.moved[(key, game.moves)] = 0
            return
        agree = bool(ours) and ours[game.mid - first] == game.mid_hash
        sent = self.send("answer", job, {"shard": index, "challenger": self.key.address, "opened": ch.opened,
                                         "agree": agree})
        if sent is not None:
            self.moved[(key, game.moves)] = 0
            log.info("job %s shard %d: %s with the solver at step %d", job.id.hex()[:8], index,
                     "agreed" if agree else "disagreed", game.mid)

    def check_shard(self, job: Job, index: int, shard: Shard, samples: int, selected: bool) -> str | None:
        """Inspect, then attest or challenge: the hash of the tx that settles the task, or None
        when nothing could be decided yet (or an availability challenge leaves the shard to be
        checked again once it is answered)."""
        where = f"job {job.id.hex()[:8]} r{job.round} shard {index}"
        if self.lazy and selected:
            return self.attest(job, index, shard)
        finding = self.inspect(JobContext(job, self.fetch), index, shard, self.intervals(shard, samples, selected))
        log.info("%s: %s", where, finding.why)
        if finding.challenge is not None:
            tx_hash = self.send("challenge", job, {"shard": index, **finding.challenge})
            return None if "unavailable" in finding.challenge else tx_hash
        if finding.verdict == Verdict.SOUND:
            if selected:
                return self.attest(job, index, shard)
            self.done.add(check_task(job, index, shard, self.key.address, self.whistleblower))
        return None

    def inspect(self, ctx: JobContext, index: int, shard: Shard, intervals: list[int]) -> Finding:
        try:
            leaves = ctx.manifest(shard.commit)
        except Unavailable as exc:
            return self._missing(ctx, index, -1, shard.commit.manifest, [], str(exc))
        if not leaves:
            return Finding(Verdict.FAULT, "manifest does not match the root", {"interval": -1})
        start = check_start(ctx, shard)
        if start.verdict == Verdict.UNDECIDED:
            if ctx.fetch(shard.commit.start) is None:
                return self._missing(ctx, index, 0, leaves[0], leaves, start.why)
            return Finding(Verdict.UNDECIDED, start.why)
        if start.verdict == Verdict.FAULT:
            return Finding(Verdict.FAULT, start.why, {"interval": -1})
        for i in intervals:
            for leaf in (i, i + 1):
                if ctx.fetch(leaves[leaf]) is None:
                    return self._missing(ctx, index, leaf, leaves[leaf], leaves, f"checkpoint {leaf} is not served")
            if shard.revealed_at and i == shard.forced:  # wrong on purpose: by exactly the planted change?
                judged = check_revealed(ctx, index, i, leaves[i], leaves[i + 1])
            else:
                judged = check_interval(ctx, index, i, leaves[i], leaves[i + 1], self.device)
            if judged.verdict == Verdict.UNDECIDED:
                return Finding(Verdict.UNDECIDED, judged.why)
            if judged.verdict == Verdict.FAULT:
                for leaf in (i, i + 1):  # so referees can fetch them whatever the solver does
                    upload(self.client, ctx.fetch(leaves[leaf]))
                unplanted = {"unplanted": True} if shard.revealed_at and i == shard.forced else {}
                return Finding(Verdict.FAULT, f"interval {i}: {judged.why}", {
                    "interval": i, "start_leaf": leaves[i], "start_proof": merkle.proof(leaves, i),
                    "end_leaf": leaves[i + 1], "end_proof": merkle.proof(leaves, i + 1), **unplanted})
        return Finding(Verdict.SOUND, f"intervals {intervals} check out")

    def _missing(self, ctx: JobContext, index: int, leaf: int, blob: bytes, leaves: list[bytes], why: str) -> Finding:
        """A blob is not served: wait GRACE_SCANS scans, then challenge its availability."""
        key = (ctx.job.id, ctx.job.round, index, blob)
        self.missing[key] = self.missing.get(key, 0) + 1
        if self.missing[key] < GRACE_SCANS:
            return Finding(Verdict.UNDECIDED, f"{why}; retrying")
        proof = merkle.proof(leaves, leaf) if leaf >= 0 else []
        return Finding(Verdict.UNDECIDED, f"{why}: challenging its availability",
                       {"unavailable": blob, "leaf": leaf, "proof": proof})

    def attest(self, job: Job, index: int, shard: Shard) -> str | None:
        secret = self.secrets.element(shard.selection(self.key.address).secret_index)
        return self.send("attest", job, {"shard": index, "secret": secret})

    def send(self, kind: str, job: Job | None, body: dict, wait: bool = False) -> str | None:
        """Sign and broadcast; the tx's hash, or None if the node refused it."""
        if job is not None:
            body = {"job": job.id, "round": job.round, **body}
        status = self.client.status()
        nonce = self.client.account(self.me)["next_nonce"]
        tx = make_tx(self.key, status["chain_id"], kind, body, nonce, 1)
        try:  # no waiting for inclusion: the next shard's window is running too
            self.client.broadcast(tx)
            if wait:
                self.client.wait_for_tx(tx.hash.hex())
            log.info("%s sent (tx %s)", kind, tx.hash.hex()[:16])
            return tx.hash.hex()
        except RpcError as exc:
            log.warning("%s not accepted: %s", kind, exc)
            return None
