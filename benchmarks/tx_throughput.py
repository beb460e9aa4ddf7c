"""Committed tx/s on one node, against the raw ed25519 verify rate of this machine.

Pre-signs N transfers from many funded accounts, submits them to a real node over RPC in
batches, and times until the last one is committed. In the same run it measures how many
ed25519 signatures one core verifies per second, so the ratio says how close the node's
hot path gets to the one unavoidable cost (each tx verified once per node).

Prints one JSON object as the last line of stdout, with an "error" field if the run failed
or overran --timeout; the node is always stopped (benchmarks/common.py).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import run_benchmark  # noqa: E402
from consensus.crypto import PrivateKey, format_address, verify  # noqa: E402
from node.client import Client, make_tx  # noqa: E402
from tests.nodes import NodeProcess, stop_all  # noqa: E402

COMMIT_TIMEOUT_S = 300


def ed25519_verify_rate(seconds: float = 2.0) -> float:
    key = PrivateKey.generate()
    msg = b"x" * 150
    sig = key.sign(msg)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(500):
            verify(key.pubkey, msg, sig)
        n += 500
    return n / (time.perf_counter() - start)


def fund_in_genesis(home: Path, keys: list[PrivateKey], amount: int) -> None:
    path = home / "genesis.json"
    g = json.loads(path.read_text())
    g["accounts"] += [{"address": format_address(k.address), "balance": amount} for k in keys]
    path.write_text(json.dumps(g))


def presign(keys: list[PrivateKey], per_sender: int, chain_id: str) -> list[str]:
    """Nonce-major order, so every batch carries ready-to-run txs from many senders."""
    sink = keys[0].address
    return [make_tx(k, chain_id, "transfer", {"to": sink, "amount": 1}, nonce, 1).wire.hex()
            for nonce in range(per_sender) for k in keys]


def submit_all(url: str, txs: list[str], batch: int) -> int:
    client = Client(url, timeout=120)
    batches = [txs[i:i + batch] for i in range(0, len(txs), batch)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda b: client.post("/broadcast_txs", {"txs": b})["accepted"], batches))
    return sum(results)


def committed(client: Client) -> int:
    for line in client.get_text("/metrics").splitlines():
        if line.startswith("stepchain_committed_txs_total "):
            return int(line.split()[1])
    raise RuntimeError("metrics lack stepchain_committed_txs_total")


def single_node_throughput(senders: int, per_sender: int, batch: int = 2000) -> dict:
    keys = [PrivateKey.generate() for _ in range(senders)]
    with tempfile.TemporaryDirectory() as tmp:
        node = NodeProcess.init_dev(Path(tmp), block_interval_ms=1000, idle_interval_ms=1000)
        fund_in_genesis(node.home, keys, 10**9)
        try:
            node.start()
            chain_id = node.rpc.status()["chain_id"]
            txs = presign(keys, per_sender, chain_id)
            client = Client(node.url, timeout=60)
            start_height = node.rpc.status()["height"]
            start = time.perf_counter()
            accepted = submit_all(node.url, txs, batch)
            submitted_at = time.perf_counter()
            deadline = submitted_at + COMMIT_TIMEOUT_S
            while committed(client) < accepted:
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"only {committed(client)} of {accepted} txs committed "
                                       f"{COMMIT_TIMEOUT_S} s after submitting")
                time.sleep(0.05)
            elapsed = time.perf_counter() - start
            blocks = node.rpc.status()["height"] - start_height
        finally:
            stop_all([node])
    return {"txs": len(txs), "accepted": accepted, "senders": senders, "blocks": blocks,
            "submit_s": round(submitted_at - start, 3), "elapsed_s": round(elapsed, 3),
            "committed_tx_per_s": round(accepted / elapsed, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--senders", type=int, default=3000)
    ap.add_argument("--per-sender", type=int, default=10)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--timeout", type=float, default=900, help="seconds before the run is abandoned")
    args = ap.parse_args()

    def body(result: dict) -> None:
        result["target_committed_tx_per_s"] = 3000
        verify_rate = ed25519_verify_rate()
        result["ed25519_verify_per_s"] = round(verify_rate, 1)
        result.update(single_node_throughput(args.senders, args.per_sender, args.batch))
        result["ratio_committed_to_verify"] = round(result["committed_tx_per_s"] / verify_rate, 3)

    run_benchmark("tx_throughput", body, args.timeout)


if __name__ == "__main__":
    main()
