"""Finalized tx/s and submit-to-finality latency with 4 validators; sync speed of a new node.

1. Four validator processes on 127.0.0.1 (one shared genesis funding many accounts). A
   bounded load of pre-signed transfers is offered at a fixed rate for `--seconds`, spread
   over the four nodes' RPC. Each tx's finality time is the moment a block containing it
   is seen on node0 minus the moment its batch was submitted.
2. In the same run, the single-node figure of benchmarks/tx_throughput.py, for the ratio.
3. A single-validator chain is run to `--sync-blocks` blocks, then a fresh full node joins
   and syncs it over P2P; blocks/s is measured from its start to reaching the tip.

Prints one JSON object as the last line of stdout, with an "error" field (and whatever was
measured before it) if the run failed or overran --timeout; every node process is stopped,
or killed, whatever happens (benchmarks/common.py).
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

from benchmarks.common import run_benchmark  # noqa: E402
from benchmarks.tx_throughput import presign, single_node_throughput  # noqa: E402
from consensus.crypto import PrivateKey, format_address  # noqa: E402
from node.client import Client, RpcError  # noqa: E402
from tests.nodes import NodeProcess, init_full_node, init_network, p2p_id, stop_all  # noqa: E402

FINALITY_WAIT_S = 60


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
        self.error: str | None = None

    def run(self) -> None:
        try:
            while not self.stop_flag.is_set():
                tip = self.client.status()["height"]
                while self.height < tip:
                    block = self.client.get(f"/block/{self.height + 1}")
                    self.height += 1
                    now = time.perf_counter()
                    for tx in block["txs"]:
                        self.seen[tx["hash"]] = now
                time.sleep(0.02)
        except RpcError as exc:  # reported by network_load: a watcher that died silently would read as 0 tx/s
            self.error = str(exc)


def network_load(base: Path, rate: int, seconds: int) -> dict:
    total = rate * seconds
    per_sender = 10
    keys = [PrivateKey.generate() for _ in range(max(1, total // per_sender))]
    nodes = init_network(base, 4, block_interval_ms=1000, idle_interval_ms=1000)
    fund_all(nodes, keys)
    try:
        for n in nodes:
            n.start(wait=False)
        for n in nodes:
            n.wait_rpc()
        clients = [Client(n.url, timeout=60) for n in nodes]
        chain_id = clients[0].status()["chain_id"]
        txs = presign(keys, per_sender, chain_id)[:total]
        hashes = [_hash(t) for t in txs]
        watcher_start = clients[0].status()["height"]
        watcher = BlockWatcher(clients[0], watcher_start)
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
        deadline = time.perf_counter() + FINALITY_WAIT_S
        while len(watcher.seen) < len(submitted) and time.perf_counter() < deadline and watcher.is_alive():
            time.sleep(0.1)
        watcher.stop_flag.set()
        watcher.join(30)
        if watcher.error:
            raise RuntimeError(f"block watcher failed: {watcher.error}")
        lat = sorted(watcher.seen[h] - submitted[h] for h in submitted if h in watcher.seen)
        if not lat:
            raise RuntimeError(f"none of {len(submitted)} submitted txs was finalized within {FINALITY_WAIT_S} s")
        last = max(watcher.seen.values())
        blocks = where_time_went(clients[0], watcher_start, watcher.height)
    finally:
        stop_all(nodes)
    return {"validators": 4, "offered_tx_per_s": rate, "load_s": seconds, "txs": len(txs),
            "finalized": len(lat), "finalized_tx_per_s": round(len(lat) / (last - start), 1),
            "median_finality_s": round(statistics.median(lat), 3),
            "p99_finality_s": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 3), "blocks": blocks}


def where_time_went(client: Client, first: int, last: int) -> dict:
    """Per-block facts of the loaded stretch, from the chain itself: how long each block took
    after its parent (header times), how many txs it carried, and the round it was decided in
    (the next block's last_commit round: above 0 means a round timed out)."""
    rows = []
    prev_time = client.get(f"/block/{first}")["time_ms"] if first else None
    for h in range(first + 1, last + 1):
        b = client.get(f"/block/{h}")
        nxt = client.get(f"/block/{h + 1}") if h < last else None
        rows.append({"height": h, "interval_ms": b["time_ms"] - prev_time if prev_time else None,
                     "txs": b["num_txs"], "round": nxt["last_commit"]["round"] if nxt and nxt["last_commit"] else None})
        prev_time = b["time_ms"]
    timed = [r for r in rows if r["interval_ms"] is not None]
    intervals = sorted(r["interval_ms"] for r in timed)
    return {"count": len(rows), "decided_after_round_0": sum(1 for r in rows if (r["round"] or 0) > 0),
            "interval_ms_median": statistics.median(intervals) if intervals else None,
            "interval_ms_max": intervals[-1] if intervals else None,
            "txs_per_block_max": max((r["txs"] for r in rows), default=0),
            "slowest": sorted(timed, key=lambda r: -r["interval_ms"])[:3]}


def _hash(tx_hex: str) -> str:
    from consensus.crypto import sha256
    return sha256(bytes.fromhex(tx_hex)).hex()


def sync_speed(base: Path, blocks: int) -> dict:
    source = NodeProcess.init_dev(base, "source", block_interval_ms=5, idle_interval_ms=5)
    full = None
    try:
        source.start()
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
    finally:
        stop_all([n for n in (full, source) if n is not None])
    return {"sync_blocks": tip, "sync_s": round(elapsed, 3), "sync_blocks_per_s": round(tip / elapsed, 1),
            "sync_same_app_hash": same}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=int, default=1200, help="offered tx/s")
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--sync-blocks", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3, help="network runs; median and spread are reported")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds before the run is abandoned")
    args = ap.parse_args()

    def body(result: dict) -> None:
        result.update({"target_finalized_tx_per_s": 1000, "target_p99_finality_s": 3.0})
        with tempfile.TemporaryDirectory() as tmp:
            runs = result["runs"] = []
            for i in range(args.runs):
                runs.append(network_load(Path(tmp) / f"net{i}", args.rate, args.seconds))
            for name in ("finalized_tx_per_s", "median_finality_s", "p99_finality_s"):
                values = [r[name] for r in runs]
                result[name] = statistics.median(values)
                result[f"{name}_spread"] = [min(values), max(values)]
            single = single_node_throughput(2000, 10)
            result["single_node_committed_tx_per_s"] = single["committed_tx_per_s"]
            result["ratio_network_to_single"] = round(result["finalized_tx_per_s"] / single["committed_tx_per_s"], 3)
            result.update(sync_speed(Path(tmp) / "sync", args.sync_blocks))

    run_benchmark("network_throughput", body, args.timeout)


if __name__ == "__main__":
    main()
