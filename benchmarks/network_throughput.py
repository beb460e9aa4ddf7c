"""Finalized tx/s and submit-to-finality latency with 4 validators; sync speed of a new node.

1. Four validator processes on 127.0.0.1 (one shared genesis funding many accounts). A
   bounded load of pre-signed transfers is offered at a fixed rate for `--seconds`, spread
   over the four nodes' RPC. Each tx's finality time is the moment a block containing it
   is seen on node0 minus the moment its batch was submitted.
2. In the same run, the single-node figure of benchmarks/tx_throughput.py, for the ratio.
3. A single-validator chain is run to `--sync-blocks` blocks, then a fresh full node joins
   and syncs it over P2P; blocks/s is measured from its start to reaching the tip.

Prints one JSON object as the last line of stdout.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.tx_throughput import presign, single_node_throughput  # noqa: E402
from consensus.crypto import PrivateKey, format_address  # noqa: E402
from node.client import Client  # noqa: E402
from tests.nodes import NodeProcess, init_full_node, init_network, p2p_id  # noqa: E402


def fund_all(nodes: list[NodeProcess], keys: list[PrivateKey]) -> None:
    """The same extra genesis accounts in every home (before first start)."""
    for n in nodes:
        path = n.home / "genesis.json"
        g = json.loads(path.read_text())
        g["accounts"] += [{"address": format_address(k.address), "balance": 10**9} for k in keys]
        path.write_text(json.dumps(g))


class BlockWatcher(threading.Thread):
    """Polls node0 and records when each tx hash is first seen in a finalized block."""

    def __init__(self, client: Client, start_height: int):
        super().__init__(daemon=True)
        self.client, self.height = client, start_height
        self.seen: dict[str, float] = {}
        self.stop_flag = threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            tip = self.client.status()["height"]
            while self.height < tip:
                self.height += 1
                block = self.client.get(f"/block/{self.height}")
                now = time.perf_counter()
                for tx in block["txs"]:
                    self.seen[tx["hash"]] = now
            time.sleep(0.02)


def network_load(base: Path, rate: int, seconds: int) -> dict:
    total = rate * seconds
    per_sender = 10
    keys = [PrivateKey.generate() for _ in range(max(1, total // per_sender))]
    nodes = init_network(base, 4, block_interval_ms=1000, idle_interval_ms=1000)
    fund_all(nodes, keys)
    for n in nodes:
        n.start(wait=False)
    try:
        for n in nodes:
            n.wait_rpc()
        clients = [Client(n.url, timeout=60) for n in nodes]
        chain_id = clients[0].status()["chain_id"]
        txs = presign(keys, per_sender, chain_id)[:total]
        hashes = [_hash(t) for t in txs]
        watcher = BlockWatcher(clients[0], clients[0].status()["height"])
        watcher.start()
        submitted: dict[str, float] = {}
        tick, per_tick = 0.1, max(1, rate // 10)
        start = time.perf_counter()
        for i in range(0, len(txs), per_tick):
            target = start + (i // per_tick) * tick
            time.sleep(max(0.0, target - time.perf_counter()))
            now = time.perf_counter()
            clients[(i // per_tick) % 4].post("/broadcast_txs", {"txs": txs[i:i + per_tick]})
            for h in hashes[i:i + per_tick]:
                submitted[h] = now
        deadline = time.perf_counter() + 60
        while len(watcher.seen) < len(submitted) and time.perf_counter() < deadline:
            time.sleep(0.1)
        watcher.stop_flag.set()
        watcher.join()
        lat = sorted(watcher.seen[h] - submitted[h] for h in submitted if h in watcher.seen)
        last = max(watcher.seen.values())
    finally:
        for n in nodes:
            n.stop()
    return {"validators": 4, "offered_tx_per_s": rate, "load_s": seconds, "txs": len(txs),
            "finalized": len(lat), "finalized_tx_per_s": round(len(lat) / (last - start), 1),
            "median_finality_s": round(statistics.median(lat), 3),
            "p99_finality_s": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 3)}


def _hash(tx_hex: str) -> str:
    from consensus.crypto import sha256
    return sha256(bytes.fromhex(tx_hex)).hex()


def sync_speed(base: Path, blocks: int) -> dict:
    source = NodeProcess.init_dev(base, "source", block_interval_ms=5, idle_interval_ms=5)
    source.start()
    try:
        source.wait_height(blocks, timeout=600)
        source.rpc.post("/admin/isolate", {"seconds": 0.5})
        time.sleep(1)
        full = init_full_node(base, "syncer", source.home / "genesis.json", [p2p_id(source)])
        tip = source.rpc.status()["height"]
        start = time.perf_counter()
        full.start(wait=False)
        full.wait_rpc()
        full.wait_height(tip, timeout=600)
        elapsed = time.perf_counter() - start
        same = full.rpc.get(f"/block/{tip}")["app_hash"] == source.rpc.get(f"/block/{tip}")["app_hash"]
        full.stop()
    finally:
        source.stop()
    return {"sync_blocks": tip, "sync_s": round(elapsed, 3), "sync_blocks_per_s": round(tip / elapsed, 1),
            "sync_same_app_hash": same}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=int, default=1200, help="offered tx/s")
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--sync-blocks", type=int, default=1000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        net = network_load(Path(tmp) / "net", args.rate, args.seconds)
        single = single_node_throughput(2000, 10)
        sync = sync_speed(Path(tmp) / "sync", args.sync_blocks)
    result = {"benchmark": "network_throughput", **net,
              "single_node_committed_tx_per_s": single["committed_tx_per_s"],
              "ratio_network_to_single": round(net["finalized_tx_per_s"] / single["committed_tx_per_s"], 3),
              **sync, "target_finalized_tx_per_s": 1000, "target_p99_finality_s": 3.0}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
