"""/metrics is Prometheus text from prometheus_client: block and finality timings, admission
latency, txs by kind and result, blob bytes in and out, and gauges read from the chain; and
`--log-format json` makes every log line one JSON object. A real dev node."""
from __future__ import annotations

import dataclasses
import json

from prometheus_client.parser import text_string_to_metric_families

from consensus.crypto import PrivateKey
from node.client import make_tx
from tests.nodes import NodeProcess


def _samples(node) -> dict[tuple, float]:
    status, body = node.http("GET", "/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}


def test_metrics_count_and_time_what_the_node_does_and_logs_are_json(tmp_path):
    node = NodeProcess.init_dev(tmp_path).start(extra=("--log-format", "json"))
    try:
        to = node.cli("wallet", "new", "metrics")["address"]
        node.cli("transfer", "--from", "dev", "--to", to, "--amount", "5")
        digest = node.rpc.put_blob(b"m" * 5000)
        assert node.rpc.get_blob(digest) == b"m" * 5000
        key = PrivateKey.generate()
        good = make_tx(key, node.rpc.status()["chain_id"], "transfer", {"to": key.address, "amount": 1}, 0, 1)
        forged = dataclasses.replace(good, signature=bytes(64))
        status, _ = node.http("POST", "/broadcast_tx", data=json.dumps({"tx": forged.wire.hex()}).encode())
        assert status == 400  # a bad signature: counted as invalid
        height = node.rpc.status()["height"]
        node.wait_height(height + 3)
        m = _samples(node)
        status, body = node.http("GET", "/metrics")
    finally:
        assert node.stop() == 0, node.log()
    assert m[("stepchain_txs_total", (("kind", "transfer"), ("result", "accepted")))] >= 1
    assert m[("stepchain_txs_total", (("kind", "transfer"), ("result", "committed")))] >= 1
    assert m[("stepchain_committed_txs_total", ())] >= 1
    assert m[("stepchain_txs_total", (("kind", "transfer"), ("result", "invalid")))] == 1
    for timing in ("block_interval", "proposal_to_commit", "submit_to_finality", "mempool_admission"):
        assert m[(f"stepchain_{timing}_seconds_count", ())] >= 1, timing
        assert m[(f"stepchain_{timing}_seconds_sum", ())] > 0, timing
    assert m[("stepchain_block_interval_seconds_count", ())] >= 3
    assert m[("stepchain_blob_transfer_bytes_total", (("direction", "in"),))] == 5000
    assert m[("stepchain_blob_transfer_bytes_total", (("direction", "out"),))] == 5000
    assert m[("stepchain_height", ())] >= height + 3
    assert m[("stepchain_validators", ())] == 1 and m[("stepchain_peers", ())] == 0
    assert m[("stepchain_blob_count", ())] >= 1 and m[("stepchain_blob_bytes", ())] >= 5000
    assert m[("stepchain_jobs", (("status", "active"),))] == 0
    lines = [line for line in node.log().splitlines() if line.strip()]
    assert lines, "the node logged nothing"
    for line in lines:
        entry = json.loads(line)
        assert {"ts", "level", "logger", "msg"} <= set(entry), line
    assert any("RPC on http://" in json.loads(line)["msg"] for line in lines)


def test_json_log_lines_carry_the_traceback_of_an_exception():
    import logging

    from node.logs import JsonFormatter
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        import sys
        record = logging.LogRecord("stepchain.x", logging.ERROR, __file__, 1, "failed %s", ("here",), sys.exc_info())
    entry = json.loads(JsonFormatter().format(record))
    assert entry["msg"] == "failed here" and entry["level"] == "ERROR" and "RuntimeError: boom" in entry["exc"]


def test_jobs_by_status_survive_a_restart(tmp_path):
    """stepchain_jobs counts every job by status: kept from the blocks that write them, and
    rebuilt at start-up from the node's job index."""
    from pathlib import Path
    spec = Path(__file__).resolve().parents[1] / "examples" / "spirals.toml"
    node = NodeProcess.init_dev(tmp_path).start()
    try:
        first = node.cli("job", "submit", "--from", "dev", str(spec))["job"]
        node.cli("job", "submit", "--from", "dev", str(spec))
        node.cli("job", "cancel", "--from", "dev", first)  # no solver is staked: nothing is at work
        node.wait_height(node.rpc.status()["height"] + 1)
        before = _samples(node)
        assert node.stop() == 0, node.log()
        node.start()
        after = _samples(node)
    finally:
        assert node.stop() == 0, node.log()
    for m in (before, after):
        assert m[("stepchain_jobs", (("status", "active"),))] == 1
        assert m[("stepchain_jobs", (("status", "cancelled"),))] == 1
        assert m[("stepchain_jobs", (("status", "done"),))] == 0
