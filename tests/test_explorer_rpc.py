"""The explorer's HTTP side against a real node: the page and its assets from the package,
the paginated endpoints read from node-local indexes (newest first, cursors that give every
item once), one-line 400s for bad input, and a chain that `node verify` still agrees with
(the indexes are not app state)."""
from __future__ import annotations

import json
import re

import pytest

from tests.nodes import new_funded_key

pytestmark = pytest.mark.slow


def _get(node, path):
    status, body = node.http("GET", path)
    return status, json.loads(body)


def test_page_and_assets_are_served_from_the_package_with_a_strict_policy(dev_node):
    import urllib.request
    with urllib.request.urlopen(dev_node.url + "/", timeout=10) as resp:
        html = resp.read().decode()
        csp = resp.headers["Content-Security-Policy"]
        assert resp.headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assets = re.findall(r'(?:src|href)="(/explorer/[^"]+)"', html)
    assert "/explorer/app.js" in assets and "/explorer/vendor/uPlot.iife.min.js" in assets
    for path in assets + ["/explorer/dom.js", "/explorer/pages.js", "/explorer/job.js",
                          "/explorer/vendor/uPlot.LICENSE"]:
        status, body = dev_node.http("GET", path)
        assert status == 200 and body, path
    assert "https://" not in html and "http://" not in html  # nothing from elsewhere: works offline
    for path in ("/explorer/nope.js", "/explorer/../rpc.py", "/explorer/%2e%2e/explorer.py"):
        status, body = dev_node.http("GET", path)
        assert status == 404, (path, body)
        assert "error" in json.loads(body)


def test_account_txs_and_blocks_paginate_newest_first(dev_node):
    node = dev_node
    alice = new_funded_key(node, "alice", 1_000)
    for amount in (11, 12, 13, 14):
        node.cli("transfer", "--from", "dev", "--to", alice, "--amount", str(amount))
    seen, cursor, pages = [], None, 0
    while pages < 10:
        status, page = _get(node, f"/account/{alice}/txs?limit=2" + (f"&before={cursor}" if cursor else ""))
        assert status == 200, page
        assert len(page["txs"]) <= 2
        seen += page["txs"]
        pages += 1
        cursor = page["next"]
        if cursor is None:
            break
    assert pages == 3 and len(seen) == 5
    positions = [(t["height"], t["index"]) for t in seen]
    assert positions == sorted(positions, reverse=True) and len(set(positions)) == 5
    assert {t["kind"] for t in seen} == {"transfer"}
    for t in seen:  # the index names the committed tx the tx endpoint knows
        status, tx = _get(node, f"/tx/{t['hash']}")
        assert status == 200 and tx["height"] == t["height"] and tx["body"]["to"] == alice
    status, dev_txs = _get(node, f"/account/{seen[0]['sender']}/txs?limit=100")
    assert {t["hash"] for t in seen} <= {t["hash"] for t in dev_txs["txs"]}  # the sender's list has them too

    node.wait_height(8)  # two pages of three blocks below the tip, whatever the machine's pace
    tip = node.rpc.status()["height"]
    status, first = _get(node, "/blocks?limit=3")
    assert status == 200 and [b["height"] for b in first["blocks"]][:1] in ([tip], [tip + 1], [tip + 2])
    status, second = _get(node, f"/blocks?limit=3&before={first['next']}")
    heights = [b["height"] for b in first["blocks"] + second["blocks"]]
    assert heights == list(range(heights[0], heights[0] - 6, -1))
    status, last = _get(node, "/blocks?limit=5&before=3")
    assert [b["height"] for b in last["blocks"]] == [2, 1] and last["next"] is None
    status, jobs = _get(node, "/jobs/all")
    assert status == 200 and jobs["jobs"] == [] and jobs["next"] is None
    status, vals = _get(node, "/validators/detail")
    assert status == 200 and len(vals["validators"]) == 1
    v = vals["validators"][0]
    assert v["power"] > 0 and v["jailed"] is None and v["missed"] == 0 and v["slashes"] == []


BAD = [
    "/blocks?limit=0", "/blocks?limit=101", "/blocks?limit=-1", "/blocks?limit=abc", "/blocks?before=x",
    "/blocks?limit=99999999999999999999", "/jobs/all?limit=1000000", "/jobs/all?before=zz",
    "/account/sc1nope/txs", "/account/sc1nope/events", "/job/00/txs", "/job/zz/txs",
    "/validators/detail?after=nope", "/validators/detail?limit=500",
]


def test_bad_input_is_a_one_line_400_and_the_node_keeps_running(dev_node):
    for path in BAD:
        status, body = _get(dev_node, path)
        assert status == 400, (path, body)
        assert set(body) == {"error"} and body["error"] and "\n" not in body["error"], (path, body)
    addr = dev_node.rpc.status()["node_address"]
    for cursor in ("zz", "", "f" * 130):
        status, body = _get(dev_node, f"/account/{addr}/txs?before={cursor}")
        assert status == 400 and "cursor" in body["error"], (cursor, body)
    status, body = _get(dev_node, f"/account/{addr}/txs?before=00")
    assert status == 200 and body["txs"] == [] and body["next"] is None  # before everything: an empty page


def test_indexes_are_not_state_node_verify_agrees(dev_node):
    node = dev_node
    bob = new_funded_key(node, "bob", 500)
    status, page = _get(node, f"/account/{bob}/txs")
    assert status == 200 and len(page["txs"]) == 1
    assert node.stop() == 0
    v = node.cli("node", "verify")  # re-executes every block; fails on any app hash or state difference
    assert v["height"] >= page["txs"][0]["height"]
    node.start()  # the index is on disk: a restarted node still answers from it
    status, again = _get(node, f"/account/{bob}/txs")
    assert status == 200 and again["txs"] == page["txs"]
    assert node.rpc.get(f"/block/{v['height']}")["app_hash"] == v["app_hash"]


def _cross_site(node, method, path, body=None, content_type="text/plain;charset=UTF-8",
                origin="http://evil.example"):
    """A request as a browser sends it for another site's page (fetch, mode no-cors: a simple
    request, no preflight): the page cannot read the answer, but the node acts on it."""
    import urllib.error
    import urllib.request
    headers = {"Origin": origin, **({"Content-Type": content_type} if body is not None else {})}
    req = urllib.request.Request(node.url + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_another_sites_page_cannot_drive_the_local_rpc(dev_node):
    """The explorer brings a browser to the RPC port; any page that browser opens elsewhere may
    send simple requests to 127.0.0.1 as well. A request from another origin is refused before
    any handler runs (here: cutting the node off its peers for an hour, filling blob storage),
    while the explorer's own origin and clients that send no Origin (the CLI, workers) work."""
    status, body = _cross_site(dev_node, "POST", "/admin/isolate", b'{"seconds": 3600}')
    assert status == 403, body
    assert "origin" in json.loads(body)["error"]
    status, body = _cross_site(dev_node, "POST", "/blob", b"x" * 1000, "application/x-www-form-urlencoded")
    assert status == 403, body
    status, _ = _cross_site(dev_node, "GET", "/status")
    assert status == 403
    own = dev_node.url  # http://127.0.0.1:<port>, as the explorer's page sends it
    status, body = _cross_site(dev_node, "POST", "/admin/isolate", b'{"seconds": 1}', "application/json", own)
    assert status == 200, body
    status, _ = dev_node.http("GET", "/status")  # no Origin at all
    assert status == 200


def test_a_rebound_hostname_cannot_drive_the_local_rpc(dev_node):
    """DNS rebinding: a hostile page's name re-pointed at 127.0.0.1 is same-origin with itself,
    so its Origin matches its Host; but a node bound to loopback answers only requests that
    name a loopback address."""
    import http.client
    port = int(dev_node.url.rsplit(":", 1)[1])

    def ask(host: str, origin: str | None = None, seconds: int = 3600) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("POST", "/admin/isolate", body=b'{"seconds": %d}' % seconds,
                         headers={"Host": host, "Content-Type": "text/plain", **({"Origin": origin} if origin else {})})
            return conn.getresponse().status
        finally:
            conn.close()
    assert ask(f"evil.example:{port}", f"http://evil.example:{port}") == 403
    assert ask(f"evil.example:{port}") == 403
    status, _ = dev_node.http("GET", "/status")
    assert status == 200 and dev_node.rpc.get("/peers")["peers"] is not None
    assert ask(f"localhost:{port}", f"http://localhost:{port}", 1) == 200  # a loopback name: the node's own page


def test_websocket_subscribers_are_bounded(dev_node):
    """At most MAX_SOCKETS pages follow /ws; the next is told so (503) and the node goes on."""
    import asyncio

    import aiohttp

    from node.rpc import MAX_SOCKETS

    async def run() -> tuple[int, dict]:
        async with aiohttp.ClientSession() as session:
            sockets = [await session.ws_connect(dev_node.url + "/ws") for _ in range(MAX_SOCKETS)]
            try:
                async with session.get(dev_node.url + "/ws", headers={"Upgrade": "websocket", "Connection": "Upgrade",
                                                                       "Sec-WebSocket-Version": "13",
                                                                       "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) as r:
                    refused = r.status
                event = await asyncio.wait_for(sockets[0].receive_json(), 30)  # the others still get blocks
            finally:
                for ws in sockets:
                    await ws.close()
            return refused, event
    refused, event = asyncio.run(run())
    assert refused == 503
    assert event["type"] == "block" and event["height"] >= 1
    status, _ = dev_node.http("GET", "/status")
    assert status == 200


def test_loopback_names_are_every_loopback_address_and_nothing_else():
    from node.rpc import _hostname, is_loopback
    for host in ("127.0.0.1:80", "127.0.0.2:26657", "localhost:1", "[::1]:80", "[::1]"):
        assert is_loopback(_hostname(host)), host
    for host in ("evil.example:80", "127.0.0.1.evil.example", "10.0.0.1:80", "[::2]:80", "0.0.0.0:80", ""):
        assert not is_loopback(_hostname(host)), host
