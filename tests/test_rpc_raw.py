"""The RPC as raw bytes on a socket, against a real node: requests that aiohttp itself refuses
(a broken request line, headers, framing or encoding) get a JSON 4xx like every other error,
each costs one log line and no traceback, a client that vanishes mid-body is one log line,
and every value a committed tx can hold reads back over /tx, /block and /job."""
from __future__ import annotations

import base64
import json
import socket
import struct
import time

import msgpack
import pytest

from node.client import make_tx
from node.wallet import Keystore
from tests.chainfactory import job_spec
from tests.nodes import PASSWORD, NodeProcess

pytestmark = pytest.mark.slow

POST = b"POST /broadcast_tx HTTP/1.1\r\nHost: 127.0.0.1\r\n"


def connect(node: NodeProcess, timeout: float = 10) -> socket.socket:
    return socket.create_connection(("127.0.0.1", node.rpc_port), timeout=timeout)


def read_response(sock: socket.socket) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one HTTP/1.x response; the body by Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body[:length]


def raw(node: NodeProcess, *parts: bytes, pause: float = 0.0) -> tuple[int, dict, bytes]:
    """Send the parts (with a pause between them, so the node sees them as separate reads)."""
    with connect(node) as sock:
        for i, part in enumerate(parts):
            if i and pause:
                time.sleep(pause)
            sock.sendall(part)
        return read_response(sock)


def expect_json_error(node: NodeProcess, status: int, *parts: bytes, words=(), pause: float = 0.0) -> str:
    code, headers, body = raw(node, *parts, pause=pause)
    assert code == status, f"{parts[0][:60]!r}: {code} {body[:200]!r}"
    assert headers.get("content-type", "").startswith("application/json"), headers
    doc = json.loads(body)
    assert isinstance(doc, dict) and set(doc) == {"error"} and isinstance(doc["error"], str), doc
    assert "\n" not in doc["error"] and len(doc["error"]) < 200, doc
    for word in words:
        assert word.lower() in doc["error"].lower(), f"{doc['error']!r} does not mention {word!r}"
    return doc["error"]


def log_lines(node: NodeProcess) -> list[str]:
    return node.log_path.read_text().splitlines()


def assert_serving(node: NodeProcess) -> None:
    height = node.rpc.status()["height"]
    node.wait_height(height + 1, timeout=30)
    text = node.log_path.read_text()
    assert "Traceback" not in text and "internal error" not in text and " ERROR " not in text, text[-3000:]


MALFORMED = [
    # (raw request, expected status, words in the error)
    (b"GARBAGE\r\n\r\n", 400, ("bad HTTP request", "method")),
    (b"G@T / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400, ("method",)),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, 400, ("bad HTTP request",)),  # TLS on HTTP
    (b"GET /status HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n", 400, ("status line",)),
    (b"GET /status\x00 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400, ("url",)),
    (b"GET /status HTTP/1.1\r\n\r\n", 400, ("host",)),
    (b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header\r\n\r\n", 400, ("header",)),
    (b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n", 400, ("longer than 8190",)),
    (b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400, ("longer than 8190",)),
    (b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(200)) + b"\r\n",
     400, ("too many headers",)),
    (POST + b"Content-Length: abc\r\n\r\n{}", 400, ("content-length",)),
    (POST + b"Content-Length: -5\r\n\r\n{}", 400, ("content-length",)),
    (POST + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400, ("content-length",)),
    (POST + b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 400, ("transfer-encoding",)),
    (POST + b"Transfer-Encoding: gzip\r\n\r\n{}", 400, ("transfer-encoding",)),
    (POST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", 400, ("chunk",)),
    (POST + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}XX0\r\n\r\n", 400, ("chunk",)),
    (POST + b"Content-Encoding: gzip\r\nContent-Length: 4\r\n\r\nabcd", 400, ("content-encoding",)),
    (POST + b"Content-Type: application/json; charset=no-such-codec\r\nContent-Length: 11\r\n\r\n{\"tx\": \"z\"}",
     400, ("tx must be hex",)),
    (b"DELETE /status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 405, ("method not allowed",)),
    (b"GET /no/such/path HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 404, ("not found",)),
    (b"GET /%zz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 404, ("not found",)),
    (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n", 400, ("version",)),
    (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400, ("websocket",)),
]


def test_malformed_http_gets_json_4xx_and_one_log_line_each(dev_node):
    n = dev_node
    n.wait_height(1)
    before = len(log_lines(n))
    parser_errors = 0
    for request, status, words in MALFORMED:
        message = expect_json_error(n, status, request, words=words)
        parser_errors += message.startswith("bad HTTP request")
    # the same framing errors arriving after the handler started reading the body
    expect_json_error(n, 400, POST + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n", b"zz\r\n", pause=0.3,
                      words=("chunk",))
    expect_json_error(n, 400, POST + b"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"tx\"", b"XXXX\r\n0\r\n\r\n", pause=0.3,
                      words=("chunk",))
    parser_errors += 2
    time.sleep(0.5)
    new = log_lines(n)[before:]
    rejected = [ln for ln in new if "rejected a malformed HTTP request" in ln]
    assert len(rejected) == parser_errors, "\n".join(new)
    assert all(" INFO " in ln for ln in rejected), rejected
    assert_serving(n)


def test_client_that_vanishes_mid_body_is_one_log_line(dev_node):
    n = dev_node
    n.wait_height(1)
    for path, how in ((b"/broadcast_tx", "close"), (b"/blob", "reset"), (b"/broadcast_txs", "close")):
        before = len(log_lines(n))
        sock = connect(n)
        sock.sendall(b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n" + b"{" * 1000)
        time.sleep(0.3)  # the handler is now waiting for the rest of the body
        if how == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        deadline = time.monotonic() + 10
        while not any("went away" in ln for ln in log_lines(n)[before:]):
            assert time.monotonic() < deadline, "\n".join(log_lines(n)[before:])
            time.sleep(0.1)
        time.sleep(0.3)
        new = [ln for ln in log_lines(n)[before:] if "committed" not in ln]
        assert len(new) == 1 and path.decode() in new[0], "\n".join(new)
        assert n.rpc.status()["chain_id"]  # and the next request is served
    # a block subscriber that vanishes: the next blocks' events to it are dropped quietly
    for _ in range(3):
        sock = connect(n)
        sock.sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + base64.b64encode(b"k" * 16) + b"\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 101")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    assert_serving(n)


# -- every committed value reads back --------------------------------------------------------

def nested(depth: int):
    value = [1]
    for _ in range(depth - 1):
        value = [value]
    return value


def test_every_committed_tx_reads_back(dev_node):
    """A committed tx reads back the same from /tx, /block and /job, integers at the ends of
    their ranges exact. Free-form values (bytes keys, deep nesting, out-of-schema arguments)
    never get that far: the tx schema refuses them at the door as a 400, not a 500."""
    n = dev_node
    key = Keystore(n.home / "keystore").unlock("dev", PASSWORD)
    chain_id = n.rpc.status()["chain_id"]
    odd = {"max_u64": 2**64 - 1, "bytes_keys": {b"\x00" * 20: b"\x01" * 20}, "deep": nested(20)}
    hostile = make_tx(key, chain_id, "submit_job", {"spec": job_spec(model_args=odd)}, 0, 1)
    code, body = n.http("POST", "/broadcast_tx", json.dumps({"tx": hostile.wire.hex()}).encode())
    assert code == 400 and "tx rejected" in json.loads(body)["error"], body

    spec = job_spec(data={"generator": "spirals", "args": {"n": 60, "classes": 3}, "seed": 2**63 - 1},
                    seed=2**63 - 1)
    tx = make_tx(key, chain_id, "submit_job", {"spec": spec}, 0, 1)
    assert n.rpc.broadcast(tx) == tx.hash.hex()
    info = n.rpc.wait_for_tx(tx.hash.hex(), timeout=30)
    assert info["status"] == "committed", info
    got = n.rpc.get(f"/tx/{tx.hash.hex()}")
    block = n.rpc.get(f"/block/{info['height']}")
    job = n.rpc.get(f"/job/{tx.hash.hex()}")
    in_block = next(t for t in block["txs"] if t["hash"] == tx.hash.hex())
    assert {k: v for k, v in got.items() if k not in ("status", "height", "index")} == in_block
    assert job["spec"]["data"]["seed"] == 2**63 - 1 == got["body"]["spec"]["seed"]
    assert got["body"]["spec"]["model_args"] == spec["model_args"]

    # past what the canonical codec can encode at all: refused at the door as a 400, not a 500
    body = b"\x81" + msgpack.packb("memo") + b"\x91" * 599 + b"\x01"  # {"memo": [[[...[1]...]]]}, 600 deep
    wire = (b"\x97" + msgpack.packb(chain_id) + msgpack.packb("transfer") + msgpack.packb(key.pubkey, use_bin_type=True)
            + b"\x01\x01" + body + msgpack.packb(b"\x00" * 64, use_bin_type=True))
    code, body = n.http("POST", "/broadcast_tx", json.dumps({"tx": wire.hex()}).encode())
    assert code == 400 and "malformed tx" in json.loads(body)["error"], body
    assert_serving(n)
