"""Blob throughput between real nodes over P2P, against this machine's one-core limit.

1. Two nodes (then three) on 127.0.0.1 (tests/nodes.py). A blob of `--size-mib` MiB is put on
   one node (on two, for three nodes) through the RPC, and `GET /blob` on the other node is
   timed from the request to the last byte: that node fetches it over P2P (leaf list, then
   chunks, each verified, written to disk) and then streams the file. `--runs` different
   blobs per network (the disk synced before each); median and spread are reported.
2. In the same run (before and after the networks; the higher), the raw limit of one core: SecretBox sealing of each
   1 MiB chunk (what the sender's transport does) plus the blob hash (BlobHasher, the leaf
   hashing the receiver does). The P2P path does both, plus framing, msgpack, TCP on loopback
   and disk, split over two processes; `fraction_of_limit` is p2p / raw.

`measure(size_mib, runs)` returns the result dict (benchmarks/scale.py imports it). Prints one
JSON object as the last line of stdout, with "error" on failure; every node process is stopped
or killed whatever happens (benchmarks/common.py).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nacl.secret  # noqa: E402

from benchmarks.common import run_benchmark, say  # noqa: E402
from consensus.blobid import CHUNK, BlobHasher  # noqa: E402
from tests.nodes import NodeProcess, init_network, set_genesis_params, stop_all  # noqa: E402

MiB = 1 << 20


def raw_limit(size_mib: int, repeats: int = 3) -> float:
    """MiB/s of SecretBox sealing + BlobHasher over the same 1 MiB chunks, one core, best of `repeats`."""
    chunks = [os.urandom(CHUNK) for _ in range(min(size_mib, 64))]  # reused: the cost is per byte
    box, nonce = nacl.secret.SecretBox(os.urandom(32)), bytes(24)
    best = 0.0
    for _ in range(repeats):
        h = BlobHasher()
        start = time.perf_counter()
        for i in range(size_mib):
            chunk = chunks[i % len(chunks)]
            box.encrypt(chunk, nonce)
            h.update(chunk)
        h.digest()
        best = max(best, size_mib / (time.perf_counter() - start))
    return best


def _write_blob(path: Path, size: int, seed: int) -> str:
    """Pseudo-random bytes, different per seed and per chunk; the blob id in hex."""
    h = BlobHasher()
    block = os.urandom(CHUNK)
    with open(path, "wb") as f:
        for i in range(0, size, CHUNK):
            part = (seed.to_bytes(4, "big") + i.to_bytes(8, "big") + block[12:])[:min(CHUNK, size - i)]
            h.update(part)
            f.write(part)
    return h.digest().hex()


def _timed_get(node: NodeProcess, digest: str, size: int) -> float:
    """Seconds from the request to the last byte (read and dropped)."""
    start = time.perf_counter()
    got = 0
    with urllib.request.urlopen(f"{node.url}/blob/{digest}", timeout=600) as resp:
        while piece := resp.read(4 * MiB):
            got += len(piece)
    elapsed = time.perf_counter() - start
    if got != size:
        raise RuntimeError(f"GET /blob returned {got} bytes, expected {size}")
    return elapsed


def _same_blob(node: NodeProcess, digest: str) -> bool:
    """Untimed: the copy the fetching node now serves from its disk has the right id."""
    h = BlobHasher()
    with urllib.request.urlopen(f"{node.url}/blob/{digest}", timeout=600) as resp:
        while piece := resp.read(4 * MiB):
            h.update(piece)
    return h.digest().hex() == digest


def _wait_peers(node: NodeProcess, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while len(node.rpc.get("/peers")["peers"]) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{node.home.name} did not connect to {count} peers")
        time.sleep(0.1)


def network_runs(base: Path, size_mib: int, runs: int, servers: int) -> dict:
    """`servers` nodes hold each blob; the last node fetches it. One network, `runs` blobs."""
    nodes = init_network(base, servers + 1, block_interval_ms=1000, idle_interval_ms=2000)
    set_genesis_params(nodes, max_blob_bytes=max(size_mib * MiB, 64 * MiB))
    size = size_mib * MiB
    try:
        for n in nodes:
            n.start(wait=False)
        for n in nodes:
            n.wait_rpc()
        fetcher = nodes[-1]
        _wait_peers(fetcher, servers)
        base_rss = proc_memory(fetcher.proc.pid, "VmRSS")
        speeds, ok = [], True
        for run in range(runs):
            path = base / f"blob{run}.bin"
            digest = _write_blob(path, size, run)
            for s in nodes[:servers]:
                s.rpc.put_blob_file(path)
            path.unlink()
            os.sync()  # the previous run's writes are on disk: no writeback backlog slows this one
            seconds = _timed_get(fetcher, digest, size)
            speeds.append(round(size_mib / seconds, 1))
            ok = ok and _same_blob(fetcher, digest)
            say(f"{servers} server(s), run {run}: {speeds[-1]} MiB/s")
        per_peer = _per_peer_chunks(fetcher)
        peak_rss = proc_memory(fetcher.proc.pid, "VmHWM")
    finally:
        stop_all(nodes)
    return {"servers": servers, "runs_mib_per_s": speeds, "median_mib_per_s": statistics.median(speeds),
            "spread_mib_per_s": [min(speeds), max(speeds)], "same_blob": ok, "last_fetch_chunks_by_peer": per_peer,
            "fetcher_base_rss_bytes": base_rss, "fetcher_peak_rss_bytes": peak_rss}


def proc_memory(pid: int, field: str) -> int:
    """A /proc/PID/status memory field (VmRSS, VmHWM) in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for process {pid}")


def _per_peer_chunks(node: NodeProcess):
    """How many chunks each serving peer gave in the last fetch (None on a node without the report)."""
    status, body = node.http("GET", "/debug/blob_fetches")
    if status != 200:
        return None
    import json
    fetches = json.loads(body)["fetches"]
    return {p[:14]: v["chunks"] for p, v in fetches[-1]["peers"].items()} if fetches else None


def measure(size_mib: int = 256, runs: int = 3, three_nodes: bool = True) -> dict:
    """The whole benchmark as a dict: p2p_mib_per_s (two nodes, median), raw_limit_mib_per_s,
    fraction_of_limit, and with `three_nodes` the same with two serving peers."""
    result: dict = {"size_mib": size_mib, "runs": runs}
    raw_before = raw_limit(size_mib)
    with tempfile.TemporaryDirectory() as tmp:
        two = network_runs(Path(tmp) / "two", size_mib, runs, servers=1)
        three = network_runs(Path(tmp) / "three", size_mib, runs, servers=2) if three_nodes else None
    raw = max(raw_before, raw_limit(size_mib))  # measured before and after: a busy moment lowers one
    result.update(p2p_mib_per_s=two["median_mib_per_s"], p2p_spread_mib_per_s=two["spread_mib_per_s"],
                  raw_limit_mib_per_s=round(raw, 1), fraction_of_limit=round(two["median_mib_per_s"] / raw, 3),
                  two_nodes=two)
    if three is not None:
        result.update(p2p_two_servers_mib_per_s=three["median_mib_per_s"],
                      fraction_of_limit_two_servers=round(three["median_mib_per_s"] / raw, 3), three_nodes=three)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--two-nodes-only", action="store_true", help="skip the three-node network")
    ap.add_argument("--timeout", type=float, default=900, help="seconds before the run is abandoned")
    args = ap.parse_args()

    def body(result: dict) -> None:
        result["target_fraction_of_limit"] = 0.5
        result.update(measure(args.size_mib, args.runs, not args.two_nodes_only))

    run_benchmark("blob_p2p", body, args.timeout)


if __name__ == "__main__":
    main()
