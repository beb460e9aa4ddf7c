"""Blobs fetched over P2P between real node processes on 127.0.0.1 (tests/nodes.py): every chunk
checked against the blob's leaf hashes as it arrives, from several peers at once, written to
disk and resumed after a restart. A peer that forges a chunk or a leaf list is blamed and the
blob comes from an honest one. Who gave what is read from GET /debug/blob_fetches."""
from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from consensus.blobid import CHUNK, BlobHasher
from tests.nodes import init_network, set_genesis_params, stop_all
from tests.test_blob_streaming import _peak_rss, _rss, _write
from tests.test_hostile_peers import Attacker, banned, connected, eventually

MiB = 1 << 20
GiB = 1 << 30


def wait_peers(node, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while len(node.rpc.get("/peers")["peers"]) < count:
        assert time.monotonic() < deadline, f"{node.home.name} has fewer than {count} peers:\n{node.log()}"
        time.sleep(0.1)


def address(node) -> str:
    return node.rpc.status()["node_address"]


def last_fetch(node) -> dict:
    return node.rpc.get("/debug/blob_fetches")["fetches"][-1]


def start(nodes, links: int) -> None:
    for n in nodes:
        n.start(wait=False)
    for n in nodes:
        n.wait_rpc()
        wait_peers(n, links)


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    """Three nodes, all connected: two serve, node2 fetches."""
    nodes = init_network(tmp_path_factory.mktemp("trio"), 3, block_interval_ms=500, idle_interval_ms=1000)
    set_genesis_params(nodes, max_blob_bytes=64 * MiB)
    try:
        start(nodes, 2)
        yield nodes
    finally:
        stop_all(nodes)


def put_on(nodes, path) -> None:
    for n in nodes:
        n.rpc.put_blob_file(path)


def test_a_blob_on_two_peers_is_fetched_from_both(trio, tmp_path):
    src = tmp_path / "blob.bin"
    digest = _write(src, 32 * MiB + 5, 11)
    put_on(trio[:2], src)
    assert trio[2].rpc.get_blob_file(digest, tmp_path / "got") == 32 * MiB + 5   # the client checks the id
    row = last_fetch(trio[2])
    by_peer = {a: row["peers"][a]["chunks"] for a in map(address, trio[:2])}
    assert row["state"] == "done" and row["chunks"] == 33
    assert all(n > 0 for n in by_peer.values()) and sum(by_peer.values()) == 33, by_peer
    served = trio[0].rpc.get("/debug/blob_fetches")["served"]
    assert served[address(trio[2])] >= by_peer[address(trio[0])]
    # /metrics counts the verified bytes in, and what each server sent out
    got_in = blob_bytes(trio[2], "in")
    assert got_in >= 32 * MiB + 5, got_in
    assert blob_bytes(trio[0], "out") + blob_bytes(trio[1], "out") >= 32 * MiB + 5


def blob_bytes(node, direction: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families
    status, body = node.http("GET", "/metrics")
    assert status == 200
    return sum(s.value for fam in text_string_to_metric_families(body.decode()) for s in fam.samples
               if s.name == "stepchain_blob_transfer_bytes_total" and s.labels.get("direction") == direction)


def test_a_forged_chunk_is_refused_its_sender_blamed_and_the_blob_fetched_from_the_honest_peer(trio, tmp_path):
    src = tmp_path / "blob.bin"
    size = 24 * MiB
    digest = _write(src, size, 12)
    put_on(trio[:2], src)
    with open(trio[1].home / "blobs" / digest, "r+b") as f:  # node1's disk rots after the commit
        for i in range(size // CHUNK):                         # (its leaf-hash sidecar is still right)
            f.seek(i * CHUNK + 123)
            byte = f.read(1)
            f.seek(i * CHUNK + 123)
            f.write(bytes([byte[0] ^ 0xFF]))
    assert trio[2].rpc.get_blob_file(digest, tmp_path / "got") == size
    row = last_fetch(trio[2])
    forger, honest = row["peers"][address(trio[1])], row["peers"][address(trio[0])]
    assert forger["state"] == "dropped" and "does not match its leaf hash" in forger["why"]
    assert forger["chunks"] == 0 and honest["chunks"] == size // CHUNK
    score = connected(trio[2])[address(trio[1])]["score"]
    assert score >= 40, score                                  # blamed (50; fades 5 every 10 s)


def test_a_fetch_interrupted_by_a_restart_resumes_from_its_verified_chunks(tmp_path):
    nodes = init_network(tmp_path, 2, block_interval_ms=500, idle_interval_ms=1000)
    set_genesis_params(nodes, max_blob_bytes=64 * MiB)
    cfg = nodes[0].home / "config.toml"
    cfg.write_text(cfg.read_text().replace('misbehave = ""', 'misbehave = "slow-blobs"'))  # 20 chunks/s
    server, fetcher = nodes
    try:
        start(nodes, 1)
        src = tmp_path / "blob.bin"
        total = 40
        digest = _write(src, total * CHUNK, 13)
        server.rpc.put_blob_file(src)
        getter = threading.Thread(target=lambda: _quietly(fetcher.http, "GET", f"/blob/{digest}"), daemon=True)
        getter.start()
        state = fetcher.home / "blobs" / f".fetch-{digest}.have"
        deadline = time.monotonic() + 30
        while _bits(state) < 16:                               # flushed every 16 chunks
            assert time.monotonic() < deadline, fetcher.log()
            time.sleep(0.02)
        fetcher.kill()                                         # a crash mid-transfer
        before = _bits(state)
        assert 16 <= before < total
        fetcher.start()
        wait_peers(fetcher, 1)
        assert fetcher.rpc.get_blob_file(digest, tmp_path / "got") == total * CHUNK
        row = last_fetch(fetcher)
        assert row["state"] == "done" and row["resumed"] == before and row["verified"] == total
        fetched = sum(p["chunks"] for p in row["peers"].values())
        assert fetched == total - before                       # nothing verified before was asked again
        assert not state.exists() and not (fetcher.home / "blobs" / f".fetch-{digest}").exists()
    finally:
        stop_all(nodes)


def _quietly(fn, *args) -> None:
    try:
        fn(*args)
    except OSError:
        pass  # the node was killed under the request


def _bits(path) -> int:
    """Chunks marked verified in a fetch state file (after the magic, size and leaf list)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return 0
    size = int.from_bytes(raw[8:16], "big")
    n = max(1, -(-size // CHUNK))
    return sum(bin(b).count("1") for b in raw[16 + 32 * n:])


async def recv_kind(attacker: Attacker, kind: str, timeout: float = 10):
    """The next message of `kind` the node sends the attacker (pings, status, pex skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        msg = await asyncio.wait_for(attacker.session.recv(), max(0.1, deadline - time.monotonic()))
        if msg[0] == kind:
            return msg


async def test_forged_and_oversized_leaf_lists_are_refused_and_their_sender_blamed(tmp_path):
    nodes = init_network(tmp_path, 1)
    node = nodes[0].start()
    a = Attacker(node)
    try:
        await a.join()
        await eventually(lambda: a.name in connected(node), what="attacker connected")
        data = os.urandom(3 * CHUNK + 5)
        h = BlobHasher()
        h.update(data)
        digest, leaves = h.digest(), b"".join(h.chunk_hashes())
        get = asyncio.ensure_future(asyncio.to_thread(node.http, "GET", f"/blob/{digest.hex()}"))
        assert (await recv_kind(a, "blob_leaves_get"))[1] == digest
        await a.session.send(["blob_leaves", [digest, len(data), leaves[:-32] + bytes(32)]])
        status, body = await get
        assert status == 404, body                             # its only source lied: nothing stored
        score = await eventually(lambda: connected(node)[a.name]["score"], what="attacker blamed")
        assert score >= 40
        await a.session.send(["blob_chunk", [digest, 0, 4, data[:CHUNK]]])       # unsolicited: ignored
        await a.session.send(["blob_leaves", [digest, len(data), leaves]])       # unasked: ignored
        await asyncio.sleep(0.5)
        assert connected(node)[a.name]["score"] <= score
        get = asyncio.ensure_future(asyncio.to_thread(node.http, "GET", f"/blob/{digest.hex()}"))
        await recv_kind(a, "blob_leaves_get")
        await a.session.send(["blob_leaves", [digest, len(data), leaves + bytes(32) * 10_000]])
        status, _ = await get
        assert status == 404
        await eventually(lambda: a.name in banned(node), what="attacker banned after a second lie")
        assert not list((node.home / "blobs").glob(f"{digest.hex()}*"))
    finally:
        a.close()
        stop_all(nodes)


@pytest.mark.slow
def test_a_1_gib_blob_moves_between_two_nodes_in_bounded_memory(tmp_path):
    nodes = init_network(tmp_path, 2, block_interval_ms=500, idle_interval_ms=1000)
    set_genesis_params(nodes, max_blob_bytes=GiB + CHUNK)
    try:
        start(nodes, 1)
        src = tmp_path / "big.bin"
        digest = _write(src, GiB, 14)
        nodes[0].rpc.put_blob_file(src)
        src.unlink()
        baseline = [_rss(n.proc.pid) for n in nodes]
        assert nodes[1].rpc.get_blob_file(digest, tmp_path / "got") == GiB   # over P2P; the id checked
        grew = [_peak_rss(n.proc.pid) - b for n, b in zip(nodes, baseline)]
        assert max(grew) < 128 * MiB, f"peak memory grew by {[g >> 20 for g in grew]} MiB moving 1 GiB"
        assert last_fetch(nodes[1])["state"] == "done"
    finally:
        stop_all(nodes)


async def test_a_peer_is_served_chunk_ranges_and_leaf_lists_and_blamed_for_a_range_too_long(tmp_path):
    nodes = init_network(tmp_path, 1)
    set_genesis_params(nodes, max_blob_bytes=64 * MiB)
    node = nodes[0].start()
    a = Attacker(node)
    try:
        src = tmp_path / "blob.bin"
        digest = bytes.fromhex(_write(src, 20 * CHUNK + 7, 15))
        node.rpc.put_blob_file(src)
        data = src.read_bytes()
        await a.join()
        await eventually(lambda: a.name in connected(node), what="attacker connected")
        await a.session.send(["blob_leaves_get", digest])
        _, (got_id, size, leaves) = await recv_kind(a, "blob_leaves")
        h = BlobHasher()
        h.update(data)
        assert (got_id, size, leaves) == (digest, len(data), b"".join(h.chunk_hashes()))
        await a.session.send(["blob_get", [digest, 5, 16]])             # chunks 5..20, the last one short
        for i in range(5, 21):
            _, (d, index, total, chunk) = await recv_kind(a, "blob_chunk")
            assert (d, index, total, chunk) == (digest, i, 21, data[i * CHUNK:(i + 1) * CHUNK])
        await a.session.send(["blob_get", [digest, 20, 2]])              # past the end
        assert (await recv_kind(a, "blob_missing"))[1] == digest
        await a.session.send(["blob_get", [digest, 0, 17]])              # longer than any request may be
        score = await eventually(lambda: connected(node)[a.name]["score"], what="attacker blamed")
        assert score >= 40
    finally:
        a.close()
        stop_all(nodes)


def test_a_fetch_past_the_nodes_disk_bound_is_refused_and_writes_nothing(tmp_path):
    """Blobs fetched from peers count against max_blob_disk_bytes like uploads: a GET /blob of a
    blob that does not fit is a one-line 507, and no partial file is left behind."""
    import dataclasses

    from node.home import Home
    nodes = init_network(tmp_path, 2, block_interval_ms=500, idle_interval_ms=1000)
    set_genesis_params(nodes, max_blob_bytes=64 * MiB)
    home = Home(nodes[1].home)
    home.write_config(dataclasses.replace(home.config(), max_blob_disk_bytes=4 * MiB))
    try:
        start(nodes, 1)
        src = tmp_path / "big.bin"
        digest = _write(src, 6 * MiB, 5)
        nodes[0].rpc.put_blob_file(src)
        small = nodes[0].rpc.put_blob(b"s" * 1000)
        status, body = nodes[1].http("GET", f"/blob/{digest}")
        assert status == 507 and b"blob storage is full" in body, (status, body)
        assert not list((nodes[1].home / "blobs").glob(f"*{digest}*")), "a refused fetch left a file"
        assert nodes[1].rpc.get_blob(small) == b"s" * 1000  # what fits is still fetched
    finally:
        stop_all(nodes)
