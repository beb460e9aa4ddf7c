"""Bad input against a real node: every malformed request gets a 4xx JSON error that names the
problem (never a 500), every user mistake on the command line gets one line on stderr and exit
code 1 (2 for usage), and the node keeps serving and producing blocks afterwards."""
from __future__ import annotations

import http.server
import json
import threading

import msgpack
import pytest

from consensus.crypto import PrivateKey, format_address
from node.client import make_tx
from node.wallet import Keystore
from tests.nodes import PASSWORD, NodeProcess, run_cli

pytestmark = pytest.mark.slow

MAX_BODY = 8 * 1024 * 1024


# -- helpers -------------------------------------------------------------------------------

def expect_error(node: NodeProcess, method: str, path: str, data: bytes | None, status: int, *words: str) -> str:
    """Send one raw request; the answer must be `status` with a JSON {"error": ...} naming `words`."""
    code, body = node.http(method, path, data)
    assert code == status, f"{method} {path} {data[:80] if data else b''!r}: {code} {body[:300]!r}"
    try:
        doc = json.loads(body)
    except ValueError:
        raise AssertionError(f"{method} {path}: error body is not JSON: {body[:300]!r}") from None
    assert isinstance(doc, dict) and isinstance(doc.get("error"), str), doc
    message = doc["error"].lower()
    for word in words:
        assert word.lower() in message, f"{method} {path}: {doc['error']!r} does not mention {word!r}"
    return doc["error"]


def post_tx(node: NodeProcess, wire: bytes, status: int, *words: str) -> str:
    return expect_error(node, "POST", "/broadcast_tx", json.dumps({"tx": wire.hex()}).encode(), status, *words)


def assert_still_healthy(node: NodeProcess) -> None:
    """The node answers /status, keeps producing blocks, and logged no traceback."""
    height = node.rpc.status()["height"]
    node.wait_height(height + 2, timeout=30)
    log = node.log_path.read_text()
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]


def dev_key(node: NodeProcess) -> PrivateKey:
    return Keystore(node.home / "keystore").unlock("dev", PASSWORD)


def raw_tx(chain_id, kind, sender: bytes, nonce, fee, body, signature: bytes = b"\x00" * 64) -> bytes:
    """msgpack bytes of a tx laid out by hand, so that it can break the canonical rules."""
    return msgpack.packb([chain_id, kind, sender, nonce, fee, body, signature], use_bin_type=True)


def assert_user_error(proc, code: int, *words: str) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == code, f"exit {proc.returncode}, wanted {code}:\n{out}"
    assert "Traceback" not in out, out
    err = proc.stderr.strip()
    if code == 1:
        assert len(err.splitlines()) == 1 and err.startswith("error: "), f"not one error line:\n{proc.stderr}"
    else:
        assert "usage:" in err, proc.stderr
    for word in words:
        assert word.lower() in err.lower(), f"{err!r} does not mention {word!r}"
    return err


# -- RPC -----------------------------------------------------------------------------------

def test_rpc_rejects_malformed_bodies(dev_node):
    n = dev_node
    for body in (b"{bad", b"", b"\xff\xfe{}", b'{"tx": ' + b"1" * 5000 + b"}", b"[" * 100_000 + b"]" * 100_000):
        expect_error(n, "POST", "/broadcast_tx", body, 400, "not valid JSON")
    for body in (b"[1, 2]", b'"tx"', b"null", b"42"):
        expect_error(n, "POST", "/broadcast_tx", body, 400, "JSON object")
    for body in (b"{}", b'{"tx": 5}', b'{"tx": null}', b'{"tx": ["ab"]}'):
        expect_error(n, "POST", "/broadcast_tx", body, 400, "tx must be a hex string")
    for text in ("zz", "abc", "0xdead", "\u00e9\u00e9"):
        expect_error(n, "POST", "/broadcast_tx", json.dumps({"tx": text}).encode(), 400, "tx must be hex")
    # hex, but of bytes that are not a tx
    for garbage in (b"\xde\xad\xbe\xef", b"\xc1", b"\x91" * 5000 + b"\x01", b"\x93\x01\x02\x03", b"\xa3abc"):
        post_tx(n, garbage, 400, "malformed tx")
    # a list or a map used as a map key: msgpack cannot even build the value
    post_tx(n, b"\x81\x91\x01\x01", 400, "malformed tx")
    post_tx(n, b"\x81\x80\x01", 400, "malformed tx")
    # too big for a tx (64 KiB), though well under the body limit
    post_tx(n, raw_tx("c", "transfer", b"\x01" * 32, 0, 1, {"pad": b"\x00" * 70_000}), 400, "malformed tx", "exceeds")
    assert_still_healthy(n)


def test_rpc_rejects_non_canonical_and_invalid_txs(dev_node):
    n = dev_node
    key = dev_key(n)
    chain_id = n.rpc.status()["chain_id"]
    to = PrivateKey.generate().address

    # a float anywhere is non-canonical
    post_tx(n, raw_tx(chain_id, "transfer", key.pubkey, 0, 1.5, {"amount": 5, "to": to}), 400, "malformed tx", "float")
    post_tx(n, raw_tx(chain_id, "transfer", key.pubkey, 0, 1, {"amount": 5.0, "to": to}), 400, "malformed tx", "float")
    # map keys out of order, and an int written in a longer form than needed: same value, other bytes
    unsorted = b"\x82" + msgpack.packb("to") + msgpack.packb(to, use_bin_type=True) + msgpack.packb("amount") + b"\x05"
    wire = (b"\x97" + msgpack.packb(chain_id) + msgpack.packb("transfer") + msgpack.packb(key.pubkey, use_bin_type=True)
            + b"\x00\x01" + unsorted + msgpack.packb(b"\x00" * 64, use_bin_type=True))
    post_tx(n, wire, 400, "malformed tx", "non-canonical")
    long_nonce = raw_tx(chain_id, "transfer", key.pubkey, 0, 1, {"amount": 5, "to": to}).replace(
        msgpack.packb(key.pubkey, use_bin_type=True) + b"\x00", msgpack.packb(key.pubkey, use_bin_type=True) + b"\xcc\x00", 1)
    post_tx(n, long_nonce, 400, "malformed tx", "non-canonical")
    # right shape, wrong field types or sizes
    post_tx(n, raw_tx(chain_id, "transfer", b"\x01" * 31, 0, 1, {}), 400, "malformed tx", "sender")
    post_tx(n, raw_tx(chain_id, "transfer", key.pubkey, -1, 1, {}), 400, "malformed tx", "nonce")
    post_tx(n, raw_tx(chain_id, "transfer", key.pubkey, 0, 1, {}, b"\x00" * 10), 400, "malformed tx", "signature")

    def signed(**kw):
        args = dict(key=key, chain_id=chain_id, kind="transfer", body={"to": to, "amount": 5}, nonce=0, fee=1)
        args.update(kw)
        return make_tx(**args)

    good = signed()
    forged = bytearray(good.signature)
    forged[0] ^= 1
    post_tx(n, raw_tx(chain_id, "transfer", key.pubkey, 0, 1, {"amount": 5, "to": to}, bytes(forged)), 400, "bad signature")
    # good's valid signature (over amount 5) on a tx that says amount 6
    post_tx(n, raw_tx(chain_id, "transfer", key.pubkey, 0, 1, {"amount": 6, "to": to}, good.signature),
            400, "bad signature")
    post_tx(n, signed(chain_id="other-chain").wire, 400, "chain_id")
    post_tx(n, signed(kind="mint").wire, 400, "unknown tx kind")
    post_tx(n, signed(fee=0).wire, 400, "fee", "minimum")
    post_tx(n, signed(nonce=10_000).wire, 400, "nonce", "too far ahead")
    poor = PrivateKey.generate()
    post_tx(n, make_tx(poor, chain_id, "transfer", {"to": to, "amount": 5}, 0, 1).wire, 400, "insufficient funds")
    post_tx(n, signed(body={"to": to, "amount": 10**15}).wire, 400, "insufficient funds")

    # the good tx goes in once; the same bytes again after commit are a replay
    assert n.rpc.broadcast(good) == good.hash.hex()
    info = n.rpc.wait_for_tx(good.hash.hex(), timeout=30)
    assert info["status"] == "committed"
    post_tx(n, good.wire, 400, "replay")
    post_tx(n, signed(body={"to": to, "amount": 7}).wire, 400, "replay")  # other content, used nonce
    assert n.rpc.account(format_address(to))["balance"] == 5
    assert_still_healthy(n)


def test_rpc_rejects_bad_paths_and_oversized_bodies(dev_node):
    n = dev_node
    n.wait_height(1)
    for path in ("/block/abc", "/block/-1", "/block/1.0", "/block/%C2%B2", "/block/%D9%A1", "/block/0x10"):
        expect_error(n, "GET", path, None, 400, "height")
    expect_error(n, "GET", "/block/" + "9" * 30, None, 400, "height")
    for path in ("/block/999999", "/block/18446744073709551615", "/block/9999999999999999999"):
        expect_error(n, "GET", path, None, 404, "no block at height")
    expect_error(n, "GET", "/tx/nothex", None, 400, "tx hash must be hex")
    expect_error(n, "GET", "/tx/abcd", None, 400, "32 bytes")
    expect_error(n, "GET", "/tx/" + "00" * 32, None, 404, "not found")
    for path in ("/account/garbage", "/account/sc1", "/account/sc1" + "zz" * 20, "/account/sc1" + "ab" * 21):
        expect_error(n, "GET", path, None, 400, "not an address")
    expect_error(n, "GET", "/job/nothex", None, 400, "job id must be hex")
    expect_error(n, "GET", "/job/abcd", None, 400, "32 bytes")
    expect_error(n, "GET", "/job/" + "00" * 32, None, 404, "no such job")
    expect_error(n, "GET", "/blob/nothex", None, 400, "blob hash must be hex")
    expect_error(n, "GET", "/no/such/path", None, 404)
    expect_error(n, "POST", "/no/such/path", b"{}", 404)
    expect_error(n, "GET", "/broadcast_tx", None, 405)

    # a body over max_body_bytes (8 MiB) is refused with 413, not read into memory
    big = b'{"tx": "' + b"ab" * ((MAX_BODY + 1024 * 1024) // 2) + b'"}'
    expect_error(n, "POST", "/broadcast_tx", big, 413, "too large")
    expect_error(n, "POST", "/broadcast_txs", big, 413, "too large")

    # batches: wrong shape, too many items, and per-item errors in an otherwise fine batch
    for body in (b'{"txs": "ab"}', b'{"txs": {"a": 1}}', b"{}"):
        expect_error(n, "POST", "/broadcast_txs", body, 400, "txs must be a list")
    expect_error(n, "POST", "/broadcast_txs", json.dumps({"txs": ["00"] * 5001}).encode(), 400, "at most 5000")
    key = dev_key(n)
    good = make_tx(key, n.rpc.status()["chain_id"], "transfer", {"to": b"\x07" * 20, "amount": 3}, 0, 1)
    code, body = n.http("POST", "/broadcast_txs", json.dumps({"txs": [good.wire.hex(), "zz", 5, "dead"]}).encode())
    assert code == 200, body
    doc = json.loads(body)
    assert doc["accepted"] == 1
    assert doc["results"][0] == {"hash": good.hash.hex()}
    assert "hex" in doc["results"][1]["error"] and "hex" in doc["results"][2]["error"]
    assert "malformed tx" in doc["results"][3]["error"]
    n.rpc.wait_for_tx(good.hash.hex(), timeout=30)
    assert_still_healthy(n)


# -- CLI -----------------------------------------------------------------------------------

def test_cli_user_mistakes(dev_node):
    n = dev_node
    home = ["--home", str(n.home)]
    stranger = format_address(PrivateKey.generate().address)

    wrong = {"STEPCHAIN_PASSWORD": "wrong"}
    assert_user_error(n.cli("transfer", "--from", "dev", "--to", stranger, "--amount", "5", check=False,
                            json_out=False, extra_env=wrong), 1, "wrong password")
    assert_user_error(n.cli("wallet", "export", "dev", "--secret", check=False, json_out=False, extra_env=wrong),
                      1, "wrong password")
    exported = n.home.parent / "dev-export.json"
    exported.write_text(n.cli("wallet", "export", "dev", json_out=False).stdout)
    assert_user_error(n.cli("wallet", "import", "dev2", "--file", str(exported), check=False, json_out=False,
                            extra_env=wrong), 1, "wrong password")

    for to in ("sc1zz", "sc1" + "ab" * 19, "sc1" + "g" * 40, "sc1" + "ab" * 21):
        assert_user_error(n.cli("transfer", "--from", "dev", "--to", to, "--amount", "5", check=False,
                                json_out=False), 1, "not an address")
    assert_user_error(n.cli("transfer", "--from", "dev", "--to", "no/such", "--amount", "5", check=False,
                            json_out=False), 1, "bad key name")
    for amount in ("-5", "0", "1.5", "abc", "", "1e3"):
        assert_user_error(run_cli("transfer", *home, "--from", "dev", "--to", stranger, f"--amount={amount}",
                                  check=False), 2, "amount")
    assert_user_error(run_cli("stake", *home, "--from", "dev", "--role", "miner", "--amount", "5", check=False),
                      2, "role")
    assert_user_error(run_cli("transfer", *home, "--from", "dev", "--to", stranger, "--amount", "5", "--fee", "0",
                              check=False), 2, "fee")

    for args in (("transfer", "--from", "nobody", "--to", stranger, "--amount", "5"),
                 ("transfer", "--from", "dev", "--to", "nobody", "--amount", "5"),
                 ("balance", "nobody"), ("wallet", "show", "nobody"), ("wallet", "export", "nobody")):
        assert_user_error(n.cli(*args, check=False, json_out=False), 1, "no key named 'nobody'")
    assert_user_error(n.cli("wallet", "new", "dev", check=False, json_out=False), 1, "already exists")
    assert_user_error(n.cli("wallet", "import", "seedless", check=False, json_out=False, input="not hex\n"),
                      1, "64 hex digits")
    assert_user_error(n.cli("wallet", "import", "short", check=False, json_out=False, input="abcd\n"),
                      1, "64 hex digits")
    assert_user_error(n.cli("wallet", "import", "nofile", "--file", str(n.home / "missing.json"), check=False,
                            json_out=False), 1, "cannot read keystore file")

    # the chain says no: nothing to spend, nothing bonded
    n.cli("wallet", "new", "pauper")
    assert_user_error(n.cli("transfer", "--from", "pauper", "--to", stranger, "--amount", "5", check=False,
                            json_out=False), 1, "insufficient funds")
    assert_user_error(n.cli("unstake", "--from", "dev", "--role", "solver", "--amount", "5", check=False,
                            json_out=False), 1)
    assert_user_error(n.cli("block", "abc", check=False, json_out=False), 1, "height")
    assert_user_error(n.cli("block", "999999", check=False, json_out=False), 1, "no block at height 999999")
    assert_user_error(n.cli("tx", "nothex", check=False, json_out=False), 1, "hex")
    assert_user_error(n.cli("tx", "00" * 32, check=False, json_out=False), 1, "not found")
    assert_user_error(n.cli("balance", "sc1zz", check=False, json_out=False), 1, "not an address")

    assert_user_error(run_cli("init", *home, "--dev", check=False), 1, "already a node home")
    # a second node on the same home must refuse (the database is locked), not start a twin
    assert_user_error(run_cli("node", "run", *home, check=False, timeout=30), 1, "another node")
    assert_user_error(run_cli("node", "verify", *home, check=False), 1, "another node")
    assert_still_healthy(n)


def test_cli_without_a_node(tmp_path):
    node = NodeProcess.init_dev(tmp_path)  # never started
    stranger = format_address(PrivateKey.generate().address)
    for args in (("status",), ("balance", "dev"), ("block", "1"), ("tx", "00" * 32),
                 ("transfer", "--from", "dev", "--to", stranger, "--amount", "5"),
                 ("stake", "--from", "dev", "--role", "solver", "--amount", "5")):
        assert_user_error(node.cli(*args, check=False, json_out=False), 1, "cannot reach the node")
    for url in ("notaurl", "ftp://127.0.0.1:1", "http://127.0.0.1:99999"):
        assert_user_error(run_cli("status", "--rpc", url, check=False), 1)

    # something that answers HTTP but is not a stepchain node
    class NotANode(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html>hello</html>")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotANode)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert_user_error(run_cli("status", "--rpc", url, check=False), 1, "not JSON")
        assert_user_error(run_cli("balance", stranger, "--rpc", url, check=False), 1, "not JSON")
    finally:
        server.shutdown()
        server.server_close()
    assert_user_error(run_cli("status", "--home", str(tmp_path / "nowhere"), "--rpc", "http://127.0.0.1:9",
                              check=False), 1, "cannot reach the node")
