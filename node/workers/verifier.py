"""`stepchain verifier run`: re-run the intervals the chain picked for this key; attest or challenge.

With `--whistleblower` it also checks shards it was not picked for (the start checkpoint,
the last interval and one more drawn locally) and challenges any fault it finds. A
challenge puts the verifier stake at risk, so it is only sent for a fault seen here.
"""
from __future__ import annotations

import logging
import random

from consensus import merkle
from consensus.crypto import PrivateKey, format_address

from ..client import Client, RpcError, make_tx
from .common import check_interval, check_start, fetch_checked, manifest_ok, poll

log = logging.getLogger("stepchain.verifier")


def check_task(job: dict, index: int, shard: dict, me: str, whistleblower: bool) -> tuple | None:
    """What this verifier owes a shard now, as a key to do it once: (job, round, shard, root,
    selected). `selected` is part of the key because a whistleblower may check a commitment
    before the chain draws its verifiers; if it is then drawn, only an attestation (or a
    challenge) sent as a drawn verifier counts, so that check is a different task."""
    if shard["status"] not in ("committed", "verifying"):
        return None
    selected = me in shard["verifiers"] and shard["status"] == "verifying"
    if not selected and not (whistleblower and shard["solver"] != me):
        return None
    return job["id"], job["round"], index, shard["commit"]["root"], selected


class Verifier:
    def __init__(self, client: Client, key: PrivateKey, whistleblower: bool = False, lazy: bool = False):
        self.client, self.key = client, key
        self.me = format_address(key.address)
        self.whistleblower = whistleblower
        self.lazy = lazy  # test-only: attest without checking (to show that it gets slashed)
        self.done: set[tuple] = set()

    def fetch(self, digest_hex: str) -> bytes | None:
        return self.client.get_blob(digest_hex)

    def run(self, once: bool = False) -> None:
        log.info("verifier %s watching for shards to check%s", self.me,
                 " (whistleblower)" if self.whistleblower else "")
        poll(self.scan, log, once)

    def scan(self) -> None:
        for job_id in self.client.get("/jobs")["active"]:
            job = self.client.get(f"/job/{job_id}")
            for i, shard in enumerate(job["shards"]):
                task = check_task(job, i, shard, self.me, self.whistleblower)
                if task is not None and task not in self.done:
                    self.done.add(task)
                    self.check_shard(job, i, shard, selected=task[-1])

    def _intervals(self, shard: dict, selected: bool) -> list[int]:
        if selected:
            return shard["intervals"]
        n = shard["commit"]["leaves"] - 1
        return sorted({n - 1, random.randrange(n)})

    def check_shard(self, job: dict, index: int, shard: dict, selected: bool) -> None:
        commit, rnd = shard["commit"], job["round"]
        where = f"job {job['id'][:8]} r{rnd} shard {index}"
        if self.lazy and selected:
            return self.send("attest", job, index, {})
        leaves = manifest_ok(fetch_checked(self.fetch, commit["manifest"]), commit)
        start_ok, detail = (False, "manifest not served or not matching the root") if leaves is None else \
            check_start(job, rnd, fetch_checked(self.fetch, commit["start"]), self.fetch)
        if not start_ok:
            log.warning("%s: %s: challenging", where, detail)
            return self.send("challenge", job, index, {"interval": -1})
        for i in self._intervals(shard, selected):
            ok, detail = check_interval(job, rnd, index, i, fetch_checked(self.fetch, leaves[i]),
                                        fetch_checked(self.fetch, leaves[i + 1]), self.fetch)
            log.info("%s interval %d: %s", where, i, detail)
            if not ok:
                raw = [bytes.fromhex(x) for x in leaves]
                return self.send("challenge", job, index, {
                    "interval": i, "start_leaf": raw[i], "start_proof": merkle.proof(raw, i),
                    "end_leaf": raw[i + 1], "end_proof": merkle.proof(raw, i + 1)})
        if selected:
            self.send("attest", job, index, {})

    def send(self, kind: str, job: dict, index: int, extra: dict) -> None:
        body = {"job": bytes.fromhex(job["id"]), "round": job["round"], "shard": index, **extra}
        status = self.client.status()
        nonce = self.client.account(self.me)["next_nonce"]
        tx = make_tx(self.key, status["chain_id"], kind, body, nonce, 1)
        try:  # no waiting for inclusion: the next shard's window is running too
            self.client.broadcast(tx)
            log.info("%s job %s r%d shard %d sent (tx %s)", kind, job["id"][:8], job["round"], index, tx.hash.hex()[:16])
        except RpcError as exc:
            log.warning("%s for job %s shard %d not accepted: %s", kind, job["id"][:8], index, exc)
