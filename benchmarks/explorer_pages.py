"""Explorer pages stay fast as the chain grows: page latency at a small and at a large chain.

A real dev node (one validator, fast blocks) grows a chain; at two sizes (by default about
300 blocks and 30 jobs, then 3,000 blocks and 300 jobs, with a few hundred transfers from one
account) this times, over real HTTP on 127.0.0.1, the explorer's paginated endpoints: the
first page and a page 5 cursors deep of /blocks, /jobs/all and /account/{a}/txs, a job page's
curves and txs, and /validators/detail; and in the same run the node's /status, the cheapest
request it answers (the baseline). An endpoint that scanned the chain would grow with it; a
page read from the indexes should not. Median of `--repeats` requests each; one JSON line.

    .venv/bin/python benchmarks/explorer_pages.py [--blocks 300,3000] [--jobs-per-block 0.1]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import run_benchmark, say  # noqa: E402
from node.client import make_tx  # noqa: E402
from node.wallet import Keystore  # noqa: E402
from tests.chainfactory import job_spec  # noqa: E402
from tests.nodes import PASSWORD, NodeProcess  # noqa: E402

BATCH = 30  # jobs submitted (then cancelled) at once: below the genesis max_active_jobs


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def latency_ms(url: str, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        get(url)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1e3, 3)


class Grower:
    """Signs and sends the dev account's txs: job submissions (cancelled again) and transfers."""

    def __init__(self, node: NodeProcess):
        self.node, self.rpc = node, node.rpc
        self.key = Keystore(node.home / "keystore").unlock("dev", PASSWORD)
        self.chain_id = self.rpc.status()["chain_id"]
        self.nonce = self.rpc.account(_address(self.key))["next_nonce"]
        self.jobs: list[str] = []

    def send(self, kind: str, body: dict) -> str:
        tx = make_tx(self.key, self.chain_id, kind, body, self.nonce, 1)
        self.nonce += 1
        self.rpc.broadcast(tx)
        return tx.hash.hex()

    def jobs_and_transfers(self, n_jobs: int, n_transfers: int, to: bytes) -> None:
        while n_jobs > 0:
            batch = [self.send("submit_job", {"spec": job_spec(seed=len(self.jobs) + i)}) for i in range(min(BATCH, n_jobs))]
            self.rpc.wait_for_tx(batch[-1])
            for job in batch:
                self.send("cancel_job", {"job": bytes.fromhex(job)})
            self.jobs += batch
            n_jobs -= len(batch)
        last = None
        for i in range(n_transfers):
            last = self.send("transfer", {"to": to, "amount": 1})
        if last:
            self.rpc.wait_for_tx(last)


def _address(key) -> str:
    from consensus.crypto import format_address
    return format_address(key.address)


def deep(url: str, path: str, pages: int) -> str | None:
    """The cursor `pages` pages into a listing (None if it is shorter)."""
    cursor = None
    for _ in range(pages):
        page = get(url + path + (f"{'&' if '?' in path else '?'}before={cursor}" if cursor else ""))
        cursor = page.get("next")
        if cursor is None:
            return None
    return cursor


def measure(url: str, addr: str, job: str, repeats: int) -> dict:
    out = {"status_baseline_ms": latency_ms(url + "/status", repeats)}
    for name, path in (("blocks", "/blocks?limit=20"), ("jobs", "/jobs/all?limit=20"),
                       ("account_txs", f"/account/{addr}/txs?limit=20")):
        out[f"{name}_first_ms"] = latency_ms(url + path, repeats)
        cursor = deep(url, path, 5)
        if cursor is not None:
            out[f"{name}_deep_ms"] = latency_ms(f"{url}{path}&before={cursor}", repeats)
    out["job_curves_ms"] = latency_ms(f"{url}/job/{job}/curves", repeats)
    out["job_txs_ms"] = latency_ms(f"{url}/job/{job}/txs?limit=20", repeats)
    out["validators_ms"] = latency_ms(url + "/validators/detail", repeats)
    return out


def body(result: dict) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", default="300,3000", help="chain sizes to measure at")
    ap.add_argument("--jobs-per-block", type=float, default=0.1)
    ap.add_argument("--transfers-per-block", type=float, default=0.2)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    import tempfile
    with tempfile.TemporaryDirectory(prefix="stepchain-explorer-bench-") as tmp:
        node = NodeProcess.init_dev(Path(tmp), block_interval_ms=20, idle_interval_ms=20).start()
        try:
            grower, sink = Grower(node), bytes(range(20))
            result.update(repeats=args.repeats, sizes=[])
            for target in (int(b) for b in args.blocks.split(",")):
                have = len(grower.jobs)
                grower.jobs_and_transfers(int(target * args.jobs_per_block) - have,
                                          int((target - node.rpc.status()["height"]) * args.transfers_per_block), sink)
                while node.rpc.status()["height"] < target:
                    time.sleep(0.5)
                height = node.rpc.status()["height"]
                say(f"measuring at height {height}, {len(grower.jobs)} jobs")
                row = {"height": height, "jobs": len(grower.jobs),
                       **measure(node.url, _address(grower.key), grower.jobs[0], args.repeats)}
                result["sizes"].append(row)
            small, large = result["sizes"][0], result["sizes"][-1]
            result["growth_large_over_small"] = {k: round(large[k] / small[k], 2) for k in large
                                                 if k.endswith("_ms") and k in small and small[k] > 0}
        finally:
            node.stop()


if __name__ == "__main__":
    run_benchmark("explorer_pages", body, timeout_s=900)
