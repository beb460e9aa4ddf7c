"""JSON RPC over HTTP (aiohttp), bound to 127.0.0.1 by default.

Every error is a JSON object ``{"error": "..."}`` with a 4xx status that names the problem,
including requests aiohttp itself refuses (see rpc_http.py); a bug in a handler becomes a
500 with a generic message and a log line, never a traceback sent to the client. A client
that goes away mid-request is one log line. Request bodies are capped by ``client_max_size``.

Chain values in JSON (``jsonable``): bytes are hex (20-byte values as sc1 addresses), maps
with bytes keys have hex keys, and integers are exact JSON numbers: the codec bounds them to
[-2**63, 2**64), past JavaScript's 2**53, so a JavaScript client must parse big integers
(as Python's json does). Every committed block and tx renders: a body nested deeper than
MAX_JSON_DEPTH shows a placeholder there, and its tx's JSON carries the tx's canonical
bytes as ``wire``, so nothing is lost.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from typing import TYPE_CHECKING

from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from consensus.crypto import format_address, parse_address
from consensus.genesis import ROLES
from consensus.jobs import K_ACTIVE_JOBS, K_POOL, Job, k_escrow, k_job, k_load, k_secrets, locked
from p2p.blobs import BlobError

BLOB_PIECE = 1 << 20  # an upload is read and written this much at a time
from consensus.ledger import get_account, get_params, get_stake
from consensus.staking import jail_status, unbonding_entries
from consensus.types import Block, Tx

from .blobgc import StorageFull
from .jobview import curves_json, rounds_json
from .mempool import MempoolError
from .metrics import admit
from .lifecycle import where
from .rpc_http import client_error, one_line

if TYPE_CHECKING:
    from .daemon import Node

log = logging.getLogger("stepchain.rpc")
MAX_BATCH = 5_000
WS_CLOSE_S = 0.5
MAX_SOCKETS = 64  # websocket subscribers (explorer pages) at once
MAX_JSON_DEPTH = 64
TOO_DEEP = f"<nested deeper than {MAX_JSON_DEPTH} levels: decode the tx's wire bytes>"


class BadRequest(ValueError):
    pass


def jsonable(value, depth: int = 0):
    """Render chain values for JSON: 20-byte values as addresses, other bytes as hex, bytes map
    keys as hex; containers deeper than MAX_JSON_DEPTH become the TOO_DEEP placeholder."""
    if isinstance(value, bytes):
        return format_address(value) if len(value) == 20 else value.hex()
    if isinstance(value, (dict, list, tuple)) and depth >= MAX_JSON_DEPTH:
        return TOO_DEEP
    if isinstance(value, dict):
        return {k if isinstance(k, str) else k.hex(): jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, depth + 1) for v in value]
    return value


def deeper_than(value, limit: int) -> bool:
    """Whether containers nest more than `limit` levels (iterative: no recursion on client data)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list, tuple)):
            if depth >= limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def tx_json(tx: Tx) -> dict:
    from consensus.crypto import address_of
    out = {"hash": tx.hash.hex(), "kind": tx.kind, "sender": format_address(address_of(tx.sender)),
           "nonce": tx.nonce, "fee": tx.fee, "body": jsonable(tx.body)}
    if deeper_than(tx.body, MAX_JSON_DEPTH):
        out["wire"] = tx.wire.hex()
    return out


def block_json(block: Block) -> dict:
    h = block.header
    return {"height": h.height, "hash": block.hash.hex(), "time_ms": h.time_ms, "prev_hash": h.prev_hash.hex(),
            "app_hash": h.app_hash.hex(), "proposer": format_address(h.proposer), "beacon": h.beacon.hex(),
            "validators_hash": h.validators_hash.hex(), "num_txs": len(block.txs),
            "txs": [tx_json(t) for t in block.txs], "evidence": len(block.evidence),
            "last_commit": None if block.last_commit is None else {
                "round": block.last_commit.round, "signatures": len(block.last_commit.signatures)}}


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def same_origin(request: web.Request, handler):
    """Refuse what another site's page sends: a browser that opens the explorer here can be
    made by any page it opens elsewhere to send simple requests (no preflight) to this port,
    and it names that page's origin. The explorer's own origin, and clients that send no
    Origin (the CLI, workers, scripts), pass."""
    origin = request.headers.get("Origin")
    if origin is not None and origin.split("://", 1)[-1] != request.host:
        return _error(403, "cross-origin requests are refused (origin is not this node)")
    if request.app["loopback"] and not is_loopback(_hostname(request.host)):
        # DNS rebinding: a hostile name that resolves to 127.0.0.1 passes the Origin check (its
        # page is same-origin with itself), but its requests name that host, not ours
        return _error(403, "a node bound to loopback answers only requests addressed to a loopback name")
    return await handler(request)


def is_loopback(name: str) -> bool:
    """A name that can only mean this machine: localhost, 127.0.0.0/8, ::1 (bracketed or not)."""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


def _hostname(host: str) -> str:
    """The Host header's name without its port ('[::1]:80' -> '[::1]')."""
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


@web.middleware
async def errors_as_json(request: web.Request, handler):
    try:
        return await handler(request)
    except BadRequest as exc:
        return _error(400, str(exc))
    except web.HTTPException as exc:
        if exc.status == 413:
            return _error(413, f"request body too large (limit {request.app['max_body']} bytes)")
        detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else ""
        return _error(exc.status, f"{exc.reason}: {one_line(detail)}" if detail else exc.reason)
    except (HttpProcessingError, RequestPayloadError) as exc:  # the body broke HTTP framing (chunks, encoding)
        cause = exc.__cause__ if isinstance(exc, RequestPayloadError) else exc
        status, text = client_error(cause) if isinstance(cause, HttpProcessingError) else (400, "bad request body")
        log.info("rejected a malformed HTTP request from %s: %s", request.remote, text)
        resp = _error(status, text)
        resp.force_close()  # the rest of the stream cannot be framed
        return resp
    except ConnectionError as exc:  # the client went away mid-request: nobody to answer
        log.info("client %s went away during %s %s: %s", request.remote, request.method, request.path,
                 type(exc).__name__)
        return _error(400, "connection lost")
    except Exception as exc:  # a bug: one log line here, tell the client nothing internal
        log.error("RPC handler failed for %s %s: %s: %s (at %s)", request.method, request.path,
                  type(exc).__name__, one_line(str(exc)), where(exc))
        return _error(500, "internal error")


def _parse_address(text: str) -> bytes:
    try:
        return parse_address(text)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def _parse_hex(text: str, what: str, size: int | None = None) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except (ValueError, TypeError):
        raise BadRequest(f"{what} must be hex") from None
    if size is not None and len(raw) != size:
        raise BadRequest(f"{what} must be {size} bytes")
    return raw


async def _json_body(request: web.Request) -> dict:
    raw = await request.read()  # JSON is UTF-8 (RFC 8259): a Content-Type charset does not change that
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, a huge int, deep nesting
        raise BadRequest("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def _decode_tx(hex_text) -> Tx:
    if not isinstance(hex_text, str):
        raise BadRequest("tx must be a hex string")
    raw = _parse_hex(hex_text, "tx")
    try:
        return Tx.decode(raw)
    except ValueError as exc:  # CodecError, DecodeError, and msgpack's own for a value nested past its limit
        raise BadRequest(f"malformed tx: {exc}") from None
    except TypeError:  # codec.decode lets msgpack's "unhashable type" through for a list/map used as a map key
        raise BadRequest("malformed tx: malformed msgpack: a map key must be a string or bytes") from None


class Rpc:
    def __init__(self, node: "Node"):
        self.node = node
        self.sockets: set[web.WebSocketResponse] = set()
        self._sends: set[asyncio.Task] = set()
        self._sending: set[web.WebSocketResponse] = set()

    def app(self, max_body: int, loopback: bool = True) -> web.Application:
        """`loopback`: the RPC listens on a loopback address, so every request must name one."""
        app = web.Application(client_max_size=max_body, middlewares=[same_origin, errors_as_json])
        app["max_body"], app["loopback"] = max_body, loopback
        app.add_routes([
            web.get("/status", self.status),
            web.get("/block/{height}", self.block),
            web.get("/tx/{hash}", self.tx),
            web.get("/account/{address}", self.account),
            web.get("/validators", self.validators),
            web.post("/broadcast_tx", self.broadcast_tx),
            web.post("/broadcast_txs", self.broadcast_txs),
            web.get("/metrics", self.metrics),
            web.get("/peers", self.peers),
            web.post("/blob", self.put_blob),
            web.get("/blob/{hash}", self.get_blob),
            web.get("/debug/blob_fetches", self.blob_fetches),
            web.get("/jobs", self.jobs),
            web.get("/params", self.params),
            web.get("/job/{id}", self.job),
            web.get("/job/{id}/curves", self.job_curves),
            web.post("/admin/isolate", self.isolate),
            web.get("/ws", self.websocket),
        ])
        from . import explorer, rpc_pages  # the explorer's page and its paginated endpoints
        app.add_routes(explorer.routes() + rpc_pages.Pages(self).routes())
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _on_shutdown(self, app: web.Application) -> None:
        """Before in-flight requests are drained: answer blob fetches now, close websockets."""
        self.node.network.end_fetches()
        sockets = [ws.close(code=WSCloseCode.GOING_AWAY, message=b"node shutting down") for ws in self.sockets]
        if sockets:
            await asyncio.wait([asyncio.ensure_future(c) for c in sockets], timeout=WS_CLOSE_S)

    @property
    def chain(self):
        return self.node.chain

    async def status(self, request: web.Request) -> web.Response:
        c = self.chain
        return web.json_response({
            "chain_id": c.chain_id, "height": c.height, "block_hash": c.tip_hash.hex(),
            "app_hash": c.app_hash.hex(), "genesis_hash": c.genesis.hash.hex(),
            "mempool_size": len(c.mempool), "validators": len(c.validators()),
            "jackpot_pool": c.view().read(K_POOL, 0),
            "node_address": format_address(self.node.key.address), "moniker": self.node.config.moniker,
            "blob_storage": self.node.storage.report()})

    async def block(self, request: web.Request) -> web.Response:
        text = request.match_info["height"]
        if text == "latest":
            height = self.chain.height
        elif text.isascii() and text.isdigit():  # not str.isdigit alone: it accepts '²', which int() refuses
            if len(text) > 20:  # more digits than any 64-bit height (and int() refuses > 4300)
                raise BadRequest("height is out of range")
            height = int(text)
        else:
            raise BadRequest("height must be a non-negative integer or 'latest'")
        block = self.chain.store.block(height) if height <= self.chain.height else None
        if block is None:
            return _error(404, f"no block at height {height} (tip is {self.chain.height})")
        return web.json_response(block_json(block))

    async def tx(self, request: web.Request) -> web.Response:
        tx_hash = _parse_hex(request.match_info["hash"], "tx hash", 32)
        loc = self.chain.store.tx_location(tx_hash)
        if loc is None:
            if tx_hash in self.chain.mempool.by_hash:
                return web.json_response({"hash": tx_hash.hex(), "status": "pending"})
            reason = self.chain.mempool.rejected.get(tx_hash)
            if reason is not None:
                return _error(404, f"tx not found: dropped from a block: {reason}")
            return _error(404, "tx not found (never received, rejected, or evicted)")
        height, index = loc
        tx = self.chain.store.block(height).txs[index]
        return web.json_response(dict(tx_json(tx), status="committed", height=height, index=index))

    async def account(self, request: web.Request) -> web.Response:
        addr = _parse_address(request.match_info["address"])
        v = self.chain.view()
        acct = get_account(v, addr)
        pending = self.chain.mempool.by_sender.get(addr, {})
        next_nonce = acct.nonce
        while next_nonce in pending:
            next_nonce += 1
        jail = jail_status(v, addr)
        return web.json_response({
            "address": format_address(addr), "balance": acct.balance, "nonce": acct.nonce,
            "next_nonce": next_nonce, "stake": {r: get_stake(v, addr, r) for r in ROLES},
            "unbonding": [{"release_height": e[0], "role": e[1], "amount": e[2]} for e in unbonding_entries(v, addr)],
            "jailed": None if jail is None else {"until": jail[0], "tombstoned": jail[1]},
            "locked": {r: locked(v, addr, r) for r in ("solver", "verifier")},
            "secrets": {r: jsonable(v.read(k_secrets(addr, r))) for r in ("solver", "verifier")},
            "open_shards": v.read(k_load(addr), 0),  # held as solver: each still owes its reserved secret
            "height": self.chain.height})

    async def validators(self, request: web.Request) -> web.Response:
        v = self.chain.view()
        out = []
        for val in self.chain.validators():
            jail = jail_status(v, val.address)
            out.append({"address": format_address(val.address), "pubkey": val.pubkey.hex(),
                        "power": val.power, "jailed": jail is not None})
        return web.json_response({"height": self.chain.height, "validators": out})

    def _admit(self, tx: Tx) -> None:
        admit(self.chain, self.node.metrics, tx)
        self.node.on_new_tx(tx)

    async def broadcast_tx(self, request: web.Request) -> web.Response:
        tx = _decode_tx((await _json_body(request)).get("tx"))
        try:
            self._admit(tx)
        except MempoolError as exc:
            raise BadRequest(f"tx rejected: {exc}") from None
        return web.json_response({"hash": tx.hash.hex(), "status": "pending"})

    async def broadcast_txs(self, request: web.Request) -> web.Response:
        items = (await _json_body(request)).get("txs")
        if not isinstance(items, list) or len(items) > MAX_BATCH:
            raise BadRequest(f"txs must be a list of at most {MAX_BATCH} hex strings")
        results = []
        for i, item in enumerate(items):
            try:
                tx = _decode_tx(item)
                self._admit(tx)
                results.append({"hash": tx.hash.hex()})
            except (BadRequest, MempoolError) as exc:
                results.append({"error": str(exc)})
            if i % 500 == 499:
                await asyncio.sleep(0)  # let consensus run during a large batch
        return web.json_response({"accepted": sum("hash" in r for r in results), "results": results})

    async def put_blob(self, request: web.Request) -> web.Response:
        """Streamed to disk as it arrives and hashed on the way: a blob is bounded by the
        network's blob cap, not by the RPC body cap, and never held whole in memory. Every
        byte is charged against the node's blob disk bound (507 once it is full)."""
        keeper, blobs = self.node.storage, self.node.network.blobs
        try:
            keeper.admit()
            with blobs.writer() as w:
                async for piece in request.content.iter_chunked(BLOB_PIECE):
                    keeper.charge(len(piece))  # before writing: refused bytes never reach the disk
                    w.write(piece)
                digest = w.commit()
            self.node.metrics.blob_in(w.size)
            blobs.touch(digest)  # uploaded again: its grace period starts over
        except BlobError as exc:
            raise BadRequest(str(exc)) from None
        except StorageFull as exc:
            return _error(507, str(exc))
        return web.json_response({"hash": digest.hex(), "size": w.size})

    async def get_blob(self, request: web.Request) -> web.Response:
        digest = _parse_hex(request.match_info["hash"], "blob hash", 32)
        if self.node.network.blobs.has(digest):  # ours: streamed from disk
            self.node.metrics.blob_out(self.node.network.blobs.size(digest) or 0)
            return web.FileResponse(self.node.network.blobs.path(digest),
                                    headers={"Content-Type": "application/octet-stream"})
        path = await self.node.network.fetch_blob_file(digest)  # to disk from peers, then streamed
        if path is None and self.node.stopping:
            return _error(503, "node is shutting down")
        if path is None and digest in self.node.network.transfers.active:  # slow peers: it goes on
            return _error(504, "blob still being fetched from peers: ask again later")
        full = self.node.network.transfers.full_storage(digest) if path is None else None
        if full is not None:
            return _error(507, full)
        if path is None:
            return _error(404, "blob not found on this node or its peers")
        self.node.metrics.blob_out(path.stat().st_size)
        return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})

    async def blob_fetches(self, request: web.Request) -> web.Response:
        return web.json_response(self.node.network.transfers.report())

    async def params(self, request: web.Request) -> web.Response:
        return web.json_response(get_params(self.chain.view()))

    async def jobs(self, request: web.Request) -> web.Response:
        v = self.chain.view()
        return web.json_response({"active": [j.hex() for j in v.read(K_ACTIVE_JOBS, [])],
                                  "height": self.chain.height})

    async def job(self, request: web.Request) -> web.Response:
        job_id = _parse_hex(request.match_info["id"], "job id", 32)
        v = self.chain.view()
        record = v.read(k_job(job_id))
        if record is None:
            return _error(404, "no such job")
        # `record` is the stored map's codec bytes: workers parse those into the same typed
        # record the chain uses (consensus.jobs.Job), the rest is for people and scripts
        return web.json_response(dict(jsonable(record), escrow=v.read(k_escrow(job_id), 0), height=self.chain.height,
                                      record=v.get(k_job(job_id)).hex()))

    async def job_curves(self, request: web.Request) -> web.Response:
        """Loss curves, and each closed round's finals and model, apart from the job record: they
        decode up to rounds x shards x 256 points, which workers polling /job/{id} never need."""
        job_id = _parse_hex(request.match_info["id"], "job id", 32)
        v = self.chain.view()
        record = v.read(k_job(job_id))
        if record is None:
            return _error(404, "no such job")
        parsed = Job.from_map(record)
        return web.json_response({"job": job_id.hex(), "height": self.chain.height,
                                  "curves": curves_json(v, parsed), "rounds": rounds_json(v, parsed)})

    async def peers(self, request: web.Request) -> web.Response:
        g = self.node.network.gossip
        return web.json_response({"peers": [{"id": format_address(p.id), "listen": p.hello["listen"],
                                             "height": p.height, "score": p.score,
                                             "direction": p.direction} for p in g.peers.values()],
                                  "banned": [format_address(b) for b in g.bans if g.banned(b)], **g.summary()})

    async def isolate(self, request: web.Request) -> web.Response:
        """Operator tool (RPC is local-only): drop all peers and refuse them for N seconds."""
        seconds = (await _json_body(request)).get("seconds")
        if type(seconds) not in (int, float) or not 0 < seconds <= 3600:
            raise BadRequest("seconds must be a number between 0 and 3600")
        self.node.network.gossip.isolate(float(seconds))
        return web.json_response({"isolated_for": seconds})

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus text, from node/metrics.py; the gauges are read from the chain now."""
        c, store = self.chain, self.node.storage.report()
        values = {"height": c.height, "mempool_size": len(c.mempool), "validators": len(c.validators()),
                  "peers": len(self.node.network.gossip.peers), "blob_bytes": store["bytes"],
                  "blob_count": store["blobs"], "blob_pinned_bytes": store["pinned_bytes"],
                  "blob_limit_bytes": store["limit"]}
        body, content_type = self.node.metrics.render(values)
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        if len(self.sockets) >= MAX_SOCKETS:
            return _error(503, f"too many websocket subscribers (at most {MAX_SOCKETS})")
        ws = web.WebSocketResponse(heartbeat=30, max_msg_size=4096)
        await ws.prepare(request)
        self.sockets.add(ws)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            self.sockets.discard(ws)
        return ws

    def publish_block(self, block: Block) -> None:
        event = {"type": "block", "height": block.height, "hash": block.hash.hex(), "num_txs": len(block.txs),
                 "app_hash": block.header.app_hash.hex(), "time_ms": block.header.time_ms,
                 "proposer": format_address(block.header.proposer), "evidence": len(block.evidence)}
        for ws in list(self.sockets):
            if ws in self._sending:  # still writing an older block to it: it skips this one
                continue
            self._sending.add(ws)
            task = asyncio.get_running_loop().create_task(self._send(ws, event))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)

    async def _send(self, ws: web.WebSocketResponse, event: dict) -> None:
        """A subscriber that went away between two blocks is dropped, not a traceback; one that
        does not read holds at most one pending send (the page reloads what it shows anyway)."""
        try:
            await ws.send_json(event)
        except (ConnectionError, RuntimeError):
            self.sockets.discard(ws)
        finally:
            self._sending.discard(ws)
