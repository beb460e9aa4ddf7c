"""A validator's referee duty: judge each open challenge and vote on chain.

Runs inside the validator's node, on the chain's own job record. torch is imported only when
there is a dispute, and the recomputation runs in a daemon worker thread so consensus keeps
its timers and a node told to stop does not wait for it. The vote is an ordinary tx signed
with the node key, admitted to our own mempool and gossiped.

A referee that cannot decide (a blob it needs is not reachable yet) does not vote: it tries
again RETRY_BLOCKS later, until the dispute's deadline. It never votes by default.

In an exact profile a challenge is judged only once its bisection game is down to one step,
and then by that one step (`check_game`), whatever k is. A fault is voted only after the
solver's response deadline: until then the solver may still reveal that the interval carries
its forced error (the chain refuses an earlier fault vote).
"""
from __future__ import annotations

import asyncio
import logging
import time

from consensus.jobs import K_ACTIVE_JOBS, Challenge, ChallengeKind, Job, ShardStatus
from consensus.jobs.records import START
from consensus.jobs.txs import fault_vote_allowed
from consensus.ledger import get_account

from ..client import make_tx
from ..lifecycle import in_daemon_thread
from .common import (Judgement, JobContext, Verdict, check_forced, check_game, check_interval, check_revealed,
                     check_start)

FETCH_S = 120.0  # a 4 GiB blob at a modest 50 MiB/s; past it the dispute is retried later
log = logging.getLogger("stepchain.referee")
RETRY_BLOCKS = 2    # an undecided check is tried again this many blocks later
RESEND_BLOCKS = 10  # a vote not on chain by then (dropped somewhere) is sent again


def judge(job: Job, index: int, ch: Challenge, height: int, fetch) -> Judgement:
    """The referee's verdict on one open challenge of shard `index`, at chain height `height`."""
    ctx, shard = JobContext(job, fetch), job.shards[index]
    if ch.kind == ChallengeKind.AVAILABLE:
        if ctx.fetch(ch.start_leaf) is not None:
            return Judgement(Verdict.SOUND, "the challenged blob is served")
        if height > ch.respond_by:
            return Judgement(Verdict.FAULT, "the challenged blob was not served by the response deadline")
        return Judgement(Verdict.UNDECIDED, "the challenged blob is not served yet; the solver still has time")
    if ch.kind == ChallengeKind.FORCED:  # fault = the revealed forced interval is the planted change
        return check_forced(ctx, index, shard, ch.interval)
    if ch.interval == START:
        return check_start(ctx, shard)
    if ch.kind == ChallengeKind.UNPLANTED:
        return check_revealed(ctx, index, ch.interval, ch.start_leaf, ch.end_leaf)
    if ch.game is not None:
        if not ch.game.narrowed:
            return Judgement(Verdict.UNDECIDED, "the bisection game is still being played")
        return check_game(ctx, index, ch, height)
    return check_interval(ctx, index, ch.interval, ch.start_leaf, ch.end_leaf)


class Referee:
    def __init__(self, node):
        self.node = node
        self.judging: set[tuple] = set()
        self.retry_at: dict[tuple, int] = {}
        self.decided: dict[tuple, tuple[bool, int | None]] = {}  # key -> (fault, height sent; None: held)

    def on_commit(self) -> None:
        chain = self.node.chain
        me = self.node.key.address
        if me not in {v.address for v in chain.validators()}:
            return
        v, height = chain.view(), chain.height
        live: set[tuple] = set()
        for job_id in v.read(K_ACTIVE_JOBS, []):
            job = Job.load(v, job_id)
            for i, shard in enumerate(job.shards):
                if shard.status not in (ShardStatus.DISPUTED, ShardStatus.REVEALING):
                    continue
                for ch in shard.challenges:
                    key = (job_id, job.round, i, ch.challenger, ch.opened)
                    live.add(key)
                    if any(a == me for a, _ in ch.votes) or key in self.judging \
                            or (ch.game is not None and not ch.game.narrowed):
                        continue
                    if key in self.decided:
                        fault, sent = self.decided[key]
                        due = sent is None or height >= sent + RESEND_BLOCKS
                        if due and (not fault or fault_vote_allowed(v, shard, ch, height + 1)):  # lands next block
                            self._vote(job, i, ch, fault, height, key)
                    elif self.retry_at.get(key, 0) <= height:
                        self.judging.add(key)
                        asyncio.get_running_loop().create_task(self._judge(job, i, ch, height, key))
        for closed in (set(self.decided) | set(self.retry_at)) - live - self.judging:  # bounded memory
            self.decided.pop(closed, None)
            self.retry_at.pop(closed, None)

    async def _judge(self, job: Job, index: int, ch: Challenge, height: int, key: tuple) -> None:
        loop = asyncio.get_running_loop()

        def fetch(digest: bytes):  # a file in the node's store, never a checkpoint's bytes in memory
            return asyncio.run_coroutine_threadsafe(self.node.network.fetch_blob_file(digest, FETCH_S), loop).result()

        try:
            judgement = await in_daemon_thread(judge, job, index, ch, height, fetch)
        except Exception:
            log.exception("could not judge the dispute on job %s shard %d", job.id.hex()[:8], index)
            judgement = Judgement(Verdict.UNDECIDED, "the referee failed")
        finally:
            self.judging.discard(key)
        where = f"dispute on job {job.id.hex()[:8]} shard {index} ({ch.kind.value} {ch.interval})"
        if judgement.verdict == Verdict.UNDECIDED:
            log.info("%s: cannot decide yet (%s); retrying", where, judgement.why)
            self.retry_at[key] = height + RETRY_BLOCKS
            return
        fault = judgement.verdict == Verdict.FAULT
        log.info("%s: %s (%s)", where, "FAULT" if fault else "no fault", judgement.why)
        height = self.node.chain.height
        if fault and not fault_vote_allowed(self.node.chain.view(), job.shards[index], ch, height + 1):
            self.decided[key] = (fault, None)  # the solver may yet serve the blob or reveal a forced error
            return
        self._vote(job, index, ch, fault, height, key)

    def keep_busy(self, seconds: float = 600.0) -> None:
        """Test networks only (misbehave = "busy-referee"): a referee thread in torch for a long
        time, as during a big recomputation, to show that it does not hold up a stop."""
        def spin() -> None:
            import torch
            a = torch.randn(256, 256)
            log.warning("misbehaving on purpose: a referee thread is busy in torch for %.0f s", seconds)
            until = time.monotonic() + seconds
            while time.monotonic() < until:
                a = torch.tanh(a @ a / 256)
        self._busy = asyncio.get_running_loop().create_task(in_daemon_thread(spin))

    def _vote(self, job: Job, index: int, ch: Challenge, fault: bool, height: int, decided: tuple) -> None:
        self.decided[decided] = (fault, height)
        chain, key = self.node.chain, self.node.key
        pending = chain.mempool.by_sender.get(key.address, {})
        nonce = get_account(chain.view(), key.address).nonce
        while nonce in pending:
            nonce += 1
        body = {"job": job.id, "round": job.round, "shard": index, "challenger": ch.challenger,
                "opened": ch.opened, "fault": fault}
        tx = make_tx(key, chain.chain_id, "dispute_vote", body, nonce, 1)
        try:
            chain.mempool.add(tx, chain.view())
            self.node.on_new_tx(tx)
        except ValueError as exc:
            log.warning("dispute vote not admitted: %s", exc)
