"""Blobs bigger than the RPC body cap: uploaded and downloaded as streams, stored as they
arrive (hashed on the way), never held whole in memory by the node. A real node on
127.0.0.1; the node's peak memory is read from /proc while a 1 GiB blob moves."""
from __future__ import annotations

import hashlib
import os

import pytest

from consensus.blobid import BlobHasher
from node.client import RpcError
from p2p.blobs import CHUNK, BlobError, BlobStore
from tests.nodes import init_network, set_genesis_params

GiB = 1 << 30


def _write(path, size: int, seed: int) -> str:
    """A file of `size` pseudo-random bytes (1 MiB pieces); its blob id in hex."""
    h = BlobHasher()
    piece = hashlib.sha256(bytes([seed])).digest() * (CHUNK // 32)
    with open(path, "wb") as f:
        for i in range(0, size, CHUNK):
            part = (piece[:8] + i.to_bytes(8, "big") + piece[16:])[:min(CHUNK, size - i)]
            h.update(part)
            f.write(part)
    return h.digest().hex()


def _peak_rss(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _rss(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def big_node(tmp_path):
    nodes = init_network(tmp_path, 1)
    set_genesis_params(nodes, max_blob_bytes=GiB + CHUNK)
    node = nodes[0].start()
    yield node
    assert node.stop() == 0, node.log()


@pytest.mark.slow
def test_a_1_gib_blob_streams_up_and_down_in_bounded_node_memory(big_node, tmp_path):
    node = big_node
    src, dst = tmp_path / "big.bin", tmp_path / "back.bin"
    digest = _write(src, GiB, 1)
    baseline = _rss(node.proc.pid)
    up = node.rpc.put_blob_file(src)
    assert up == {"hash": digest, "size": GiB}
    assert node.rpc.get_blob_file(digest, dst) == GiB
    assert os.path.getsize(dst) == GiB
    src.unlink()
    with open(dst, "rb") as f:
        h = BlobHasher()
        while piece := f.read(CHUNK * 8):
            h.update(piece)
    assert h.digest().hex() == digest
    grew = _peak_rss(node.proc.pid) - baseline
    assert grew < 128 * (1 << 20), f"the node's peak memory grew by {grew >> 20} MiB moving a 1 GiB blob"


def test_a_blob_over_the_body_cap_streams_and_one_over_the_blob_cap_is_refused(tmp_path):
    nodes = init_network(tmp_path, 1)
    set_genesis_params(nodes, max_blob_bytes=24 << 20)
    node = nodes[0].start()
    try:
        src = tmp_path / "blob.bin"
        digest = _write(src, 20 << 20, 2)                    # above the 8 MiB RPC body cap
        assert node.rpc.put_blob_file(src)["hash"] == digest
        assert node.rpc.get_blob(digest) is not None and node.rpc.get_blob_file(digest, tmp_path / "b") == 20 << 20
        _write(src, (24 << 20) + 1, 3)
        with pytest.raises(RpcError, match="blob cap"):
            node.rpc.put_blob_file(src)                       # refused before a byte is sent
        status, body = node.http("POST", "/blob", b"x" * ((24 << 20) + 1))
        assert status == 400 and b"exceeds the limit" in body  # and by the node, mid-stream
        status, body = node.http("POST", "/broadcast_txs", b"[" + b" " * (9 << 20) + b"]")
        assert status == 413                                  # everything else keeps the small cap
        blobs = node.home / "blobs"
        leftovers = [p.name for p in blobs.rglob(".part-*")] if blobs.exists() else []
        assert leftovers == []                                # a refused upload leaves nothing behind
    finally:
        assert node.stop() == 0, node.log()


def test_the_store_serves_a_chunk_by_reading_that_chunk_and_an_aborted_write_leaves_nothing(tmp_path):
    store = BlobStore(tmp_path, max_bytes=8 * CHUNK)
    data = os.urandom(3 * CHUNK + 17)
    digest = store.put(data)
    assert store.size(digest) == len(data)
    assert store.chunk(digest, 3) == (data[3 * CHUNK:], 4) and store.chunk(digest, 4) is None
    with pytest.raises(BlobError, match="does not match"):
        with store.writer(expect=b"\x00" * 32) as w:
            w.write(b"abc")
            w.commit()
    with pytest.raises(BlobError, match="exceeds the limit"):
        with store.writer() as w:
            w.write(b"\x00" * (9 * CHUNK))
    assert sorted(p.name for p in tmp_path.iterdir()) == [digest.hex(), f"{digest.hex()}.leaves"]  # and its leaf hashes
