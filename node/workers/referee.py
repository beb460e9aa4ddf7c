"""A validator's referee duty: recompute a disputed interval and vote on chain.

Runs inside the validator's node. torch is imported only when there is a dispute, and the
recomputation runs in a daemon worker thread so consensus keeps its timers and a node told
to stop does not wait for it. The vote is an ordinary tx signed with the node key, admitted
to our own mempool and gossiped.
"""
from __future__ import annotations

import asyncio
import logging
import time

from consensus.jobs import K_ACTIVE_JOBS, k_job
from consensus.ledger import get_account

from ..client import make_tx
from ..lifecycle import in_daemon_thread
from ..rpc import jsonable
from .common import check_interval, check_start, fetch_checked, manifest_ok

log = logging.getLogger("stepchain.referee")


def judge(job: dict, index: int, fetch) -> tuple[bool, str]:
    """(fault, why) for the open challenge on shard `index` of a job rendered as JSON."""
    shard = job["shards"][index]
    ch, commit = shard["challenge"], shard["commit"]
    if ch["interval"] == -1:
        if manifest_ok(fetch_checked(fetch, commit["manifest"]), commit) is None:
            return True, "manifest not served or not matching the root"
        ok, why = check_start(job, job["round"], fetch_checked(fetch, commit["start"]), fetch)
        return not ok, why
    ok, why = check_interval(job, job["round"], index, ch["interval"], fetch_checked(fetch, ch["start_leaf"]),
                             fetch_checked(fetch, ch["end_leaf"]), fetch)
    return not ok, why


class Referee:
    def __init__(self, node):
        self.node = node
        self.judging: set[tuple] = set()

    def on_commit(self) -> None:
        chain = self.node.chain
        me = self.node.key.address
        if me not in {v.address for v in chain.validators()}:
            return
        v = chain.view()
        for job_id in v.read(K_ACTIVE_JOBS, []):
            job = v.read(k_job(job_id))
            for i, shard in enumerate(job["shards"]):
                ch = shard["challenge"]
                if shard["status"] != "disputed" or any(a == me for a, _ in ch["votes"]):
                    continue
                key = (job_id, job["round"], i, ch["opened"])
                if key not in self.judging:
                    self.judging.add(key)
                    asyncio.get_running_loop().create_task(self._judge(jsonable(job), i, key))

    async def _judge(self, job: dict, index: int, key: tuple) -> None:
        loop = asyncio.get_running_loop()

        def fetch(digest_hex: str):
            future = asyncio.run_coroutine_threadsafe(self.node.network.fetch_blob(bytes.fromhex(digest_hex)), loop)
            return future.result()

        try:
            fault, why = await in_daemon_thread(judge, job, index, fetch)
        except Exception:
            log.exception("could not judge the dispute on job %s shard %d", job["id"][:8], index)
            self.judging.discard(key)
            return
        log.info("dispute on job %s shard %d: %s (%s)", job["id"][:8], index, "FAULT" if fault else "no fault", why)
        self._vote(job, index, fault)

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

    def _vote(self, job: dict, index: int, fault: bool) -> None:
        chain, key = self.node.chain, self.node.key
        pending = chain.mempool.by_sender.get(key.address, {})
        nonce = get_account(chain.view(), key.address).nonce
        while nonce in pending:
            nonce += 1
        body = {"job": bytes.fromhex(job["id"]), "round": job["round"], "shard": index, "fault": fault}
        tx = make_tx(key, chain.chain_id, "dispute_vote", body, nonce, 1)
        try:
            chain.mempool.add(tx, chain.view())
            self.node.on_new_tx(tx)
        except ValueError as exc:
            log.warning("dispute vote not admitted: %s", exc)
