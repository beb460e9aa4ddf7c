"""A real node's blob GC: what an active job pins stays, the rest goes (unreferenced uploads
after the grace period, a cancelled job's dataset after its retention), uploads past the
disk bound are refused with 507, and /metrics and `stepchain status` show the numbers.
One validator on 127.0.0.1 (tests/nodes.py); jobs with uploaded datasets and no solver, so
nothing trains."""
from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from consensus.blobid import blob_id
from node.home import Home
from tests.jobnet import SPEC
from tests.nodes import init_network, set_genesis_params

GRACE_S, RETENTION, LIMIT = 2, 6, 40_000


def _dataset(path, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    np.savez(path, x=rng.normal(size=(90, 2)).astype(np.float32), y=rng.integers(0, 3, 90))
    return path.read_bytes()


def _submit(node, tmp_path, name: str, seed: int) -> tuple[str, bytes]:
    """A one-shard job whose dataset is an uploaded file: (job id, dataset id)."""
    raw = _dataset(tmp_path / f"{name}.npz", seed)
    spec = SPEC.format(shards=1, commit_blocks=20, verify_blocks=5).replace(
        'generator = "blobs"\nseed = 3\nn = 900\ndim = 2\nclasses = 3', f'file = "{name}.npz"')
    (tmp_path / f"{name}.toml").write_text(spec)
    return node.cli("job", "submit", "--from", "dev", str(tmp_path / f"{name}.toml"))["job"], blob_id(raw)


def _metrics(node) -> dict[str, float]:
    status, body = node.http("GET", "/metrics")
    assert status == 200
    return {s.name: s.value for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}


def _on_disk(node, digest: bytes) -> bool:
    return (node.home / "blobs" / digest.hex()).exists()


@pytest.mark.slow
def test_gc_keeps_what_an_active_job_pins_and_frees_the_rest(tmp_path):
    (node,) = init_network(tmp_path, 1, block_interval_ms=200, idle_interval_ms=400)
    set_genesis_params([node], min_intervals=4)
    home = Home(node.home)
    home.write_config(dataclasses.replace(home.config(), blob_grace_s=GRACE_S, blob_retention_blocks=RETENTION,
                                          blob_gc_interval_s=1, max_blob_disk_bytes=LIMIT))
    node.start()
    try:
        kept_job, kept = _submit(node, tmp_path, "kept", 1)
        gone_job, gone = _submit(node, tmp_path, "gone", 2)
        spam = bytes.fromhex(node.rpc.put_blob(os.urandom(5_000)))
        assert all(_on_disk(node, d) for d in (kept, gone, spam))

        # over the bound, and nothing is old enough to collect: refused, one line
        status, body = node.http("POST", "/blob", os.urandom(LIMIT), "application/octet-stream")
        assert status == 507
        error = json.loads(body)["error"]
        assert error.startswith("blob storage is full: ") and "\n" not in error

        node.cli("job", "cancel", "--from", "dev", gone_job)
        closed = node.rpc.get(f"/job/{gone_job}")
        assert closed["status"] == "cancelled"
        deadline = time.monotonic() + 30
        while _on_disk(node, spam) or _on_disk(node, gone):
            assert time.monotonic() < deadline, f"GC did not collect:\n{node.log()}"
            time.sleep(0.2)
        height = node.rpc.status()["height"]
        closed_at = max(e[0] for e in closed["events"] if e[1] == "cancelled")
        assert height >= closed_at + RETENTION  # not before the retention ended
        assert _on_disk(node, kept) and node.rpc.get(f"/job/{kept_job}")["status"] == "active"
        time.sleep(GRACE_S + 1.5)  # a few more passes: the active job's dataset is never collected
        assert _on_disk(node, kept)

        size = sum((node.home / "blobs" / name).stat().st_size for name in (kept.hex(), f"{kept.hex()}.leaves"))
        assert node.rpc.status()["blob_storage"] == {"bytes": size, "blobs": 1, "pinned_bytes": size, "limit": LIMIT}
        m = _metrics(node)
        assert (m["stepchain_blob_bytes"], m["stepchain_blob_count"], m["stepchain_blob_pinned_bytes"],
                m["stepchain_blob_limit_bytes"]) == (size, 1, size, LIMIT)
        assert m["stepchain_height"] >= height  # the existing gauges still parse
        text = node.cli("status", json_out=False).stdout
        assert f"blob storage {size} bytes of {LIMIT} bytes in 1 blobs, {size} bytes pinned" in text

        # room again: the same upload that was refused fits now
        up = os.urandom(LIMIT - size - 100)
        assert node.rpc.put_blob(up) == blob_id(up).hex()
    finally:
        assert node.stop() == 0, node.log()
