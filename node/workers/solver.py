"""`stepchain solver run`: train the shards the chain assigns to this key, publish, commit.

An RPC client of any node. Finished work is kept on disk by (job, round, shard), so a
restart of the worker or of the node loses nothing: the worker re-uploads and re-commits.
A `--cheat` strategy exists to demonstrate and test that the protocol catches fraud.
"""
from __future__ import annotations

import logging
from pathlib import Path

from consensus import codec, merkle
from consensus.crypto import PrivateKey, format_address, sha256

from ..client import Client, make_tx
from .common import expected_start, load_data, poll, train_spec

log = logging.getLogger("stepchain.solver")


class Solver:
    def __init__(self, client: Client, key: PrivateKey, workdir: Path, device: str = "cpu",
                 cheat: str | None = None, progress: bool = True):
        self.client, self.key = client, key
        self.me = format_address(key.address)
        self.workdir = workdir
        self.device = device
        self.cheat = cheat
        self.progress = progress
        workdir.mkdir(parents=True, exist_ok=True)

    def fetch(self, digest_hex: str) -> bytes | None:
        return self.client.get_blob(digest_hex)

    def assigned(self) -> list[tuple[dict, int]]:
        out = []
        for job_id in self.client.get("/jobs")["active"]:
            job = self.client.get(f"/job/{job_id}")
            for i, shard in enumerate(job["shards"]):
                if shard["solver"] == self.me and shard["status"] == "assigned":
                    out.append((job, i))
        return out

    def run(self, once: bool = False) -> None:
        log.info("solver %s watching for assigned shards", self.me)
        poll(self.step, log, once)

    def step(self) -> None:
        for job, index in self.assigned():
            self.solve(job, index)

    def _train(self, job: dict, index: int) -> list[bytes]:
        from verifier import adversary, checkpoint, training
        from verifier.work import RoundShard, ShardWork
        spec = train_spec(job["spec"])
        train, _ = load_data(job["spec"], self.fetch)
        start = expected_start(job, job["round"], self.fetch)
        if start is None:
            raise LookupError("previous round's checkpoints are unavailable")
        work = ShardWork(spec, train, RoundShard(bytes.fromhex(job["id"]), job["round"], index, job["spec"]["shards"]),
                         self.device)
        bar = _progress(f"job {job['id'][:8]} r{job['round']} shard {index}", spec.steps) if self.progress else None
        try:
            if self.cheat:
                return adversary.cheat(self.cheat, work, checkpoint.decode(start))
            return training.train_shard(work, checkpoint.decode(start), progress=bar.update if bar else None)
        finally:
            if bar:
                bar.close()

    def solve(self, job: dict, index: int) -> None:
        cache = self.workdir / f"{job['id']}-{job['round']}-{index}.ckpts"
        if cache.exists():
            checkpoints = codec.decode(cache.read_bytes(), max_size=1 << 31)
        else:
            checkpoints = self._train(job, index)
            cache.write_bytes(codec.encode(checkpoints))
        leaves = [sha256(c) for c in checkpoints]
        if self.cheat != "withhold":
            for c in checkpoints:
                self.client.put_blob(c)
        manifest = codec.encode(leaves)
        self.client.put_blob(manifest)
        body = {"job": bytes.fromhex(job["id"]), "round": job["round"], "shard": index,
                "root": merkle.root(leaves), "leaves": len(leaves), "manifest": sha256(manifest),
                "start": leaves[0], "start_proof": merkle.proof(leaves, 0),
                "final": leaves[-1], "final_proof": merkle.proof(leaves, len(leaves) - 1)}
        status = self.client.status()
        acct = self.client.account(self.me)
        tx = make_tx(self.key, status["chain_id"], "commit_shard", body, acct["next_nonce"], 1)
        self.client.broadcast(tx)
        info = self.client.wait_for_tx(tx.hash.hex())
        log.info("committed job %s round %d shard %d at height %d (root %s)", job["id"][:8], job["round"],
                 index, info["height"], body["root"].hex()[:16])


def _progress(desc: str, total: int):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="step", leave=False)
