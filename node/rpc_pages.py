"""Paginated JSON endpoints for the explorer (and for scripts).

Each answers one page, newest first, and reads at most `limit` index entries (<= MAX_LIMIT)
plus the records they name: nothing scans the chain. Lists come from the node-local
indexes in explorer_index.py; a page's ``next`` is an opaque cursor (hex) to pass back as
``before``, or null on the last page. Bad input (an address, a cursor, a limit) is a 400
with a one-line JSON error.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from consensus import codec
from consensus.crypto import address_of, format_address
from consensus.jobs import k_escrow, k_job
from consensus.ledger import get_params, get_stake, k_candidates, k_liveness
from consensus.staking import jail_status

from . import explorer_index as ix

if TYPE_CHECKING:
    from .rpc import Rpc

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_CURSOR_BYTES = 64


def _bad(message: str) -> Exception:
    from .rpc import BadRequest
    return BadRequest(message)


def _limit(request: web.Request) -> int:
    text = request.query.get("limit", str(DEFAULT_LIMIT))
    if not (text.isascii() and text.isdigit() and len(text) <= 6) or not 1 <= int(text) <= MAX_LIMIT:
        raise _bad(f"limit must be an integer from 1 to {MAX_LIMIT}")
    return int(text)


def _cursor(request: web.Request) -> bytes | None:
    text = request.query.get("before")
    if text is None:
        return None
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise _bad("before must be a cursor (hex) from an earlier page") from None
    if not raw or len(raw) > MAX_CURSOR_BYTES:
        raise _bad("before must be a cursor (hex) from an earlier page")
    return raw


def _address(request: web.Request) -> bytes:
    from .rpc import _parse_address
    return _parse_address(request.match_info["address"])


def _job_id(request: web.Request) -> bytes:
    from .rpc import _parse_hex
    return _parse_hex(request.match_info["id"], "job id", 32)


def _next(rows: list, limit: int) -> str | None:
    return rows[-1][0].hex() if len(rows) == limit else None


class Pages:
    def __init__(self, rpc: "Rpc"):
        self.rpc = rpc

    @property
    def chain(self):
        return self.rpc.node.chain

    def routes(self) -> list:
        return [web.get("/blocks", self.blocks), web.get("/jobs/all", self.jobs),
                web.get("/account/{address}/txs", self.account_txs),
                web.get("/account/{address}/events", self.account_events),
                web.get("/job/{id}/txs", self.job_txs), web.get("/validators/detail", self.validators)]

    def _txs(self, rows: list[tuple[bytes, bytes]]) -> list[dict]:
        out, blocks = [], {}  # each block decoded once: a page's txs often share one
        for suffix, tx_hash in rows:
            height, index = int.from_bytes(suffix[-12:-4], "big"), int.from_bytes(suffix[-4:], "big")
            if height not in blocks:
                blocks[height] = self.chain.store.block(height)
            block = blocks[height]
            if block is None or index >= len(block.txs):
                continue
            tx = block.txs[index]
            out.append({"hash": tx_hash.hex(), "kind": tx.kind, "height": height, "index": index,
                        "sender": format_address(address_of(tx.sender)), "fee": tx.fee,
                        "time_ms": block.header.time_ms})
        return out

    async def blocks(self, request: web.Request) -> web.Response:
        """Block headers below `before` (a height; default: the tip and down)."""
        limit, tip = _limit(request), self.chain.height
        text = request.query.get("before", str(tip + 1))
        if not (text.isascii() and text.isdigit() and len(text) <= 20):
            raise _bad("before must be a block height")
        top = min(int(text) - 1, tip)
        out = []
        for height in range(top, max(0, top - limit), -1):
            b = self.chain.store.block(height)
            out.append({"height": height, "hash": b.hash.hex(), "time_ms": b.header.time_ms,
                        "proposer": format_address(b.header.proposer), "num_txs": len(b.txs),
                        "evidence": len(b.evidence)})
        last = out[-1]["height"] if out else 0
        return web.json_response({"height": tip, "blocks": out, "next": str(last) if last > 1 else None})

    async def account_txs(self, request: web.Request) -> web.Response:
        addr, limit, before = _address(request), _limit(request), _cursor(request)
        rows = ix.page(self.chain.store.db, ix.P_ACCOUNT_TX + addr, limit, before)
        return web.json_response({"address": format_address(addr), "txs": self._txs(rows),
                                  "next": _next(rows, limit)})

    async def job_txs(self, request: web.Request) -> web.Response:
        job_id, limit, before = _job_id(request), _limit(request), _cursor(request)
        rows = ix.page(self.chain.store.db, ix.P_JOB_TX + job_id, limit, before)
        return web.json_response({"job": job_id.hex(), "txs": self._txs(rows), "next": _next(rows, limit)})

    async def account_events(self, request: web.Request) -> web.Response:
        """Job events naming the account (paid, slashed ...) and its validator jailings."""
        addr, limit, before = _address(request), _limit(request), _cursor(request)
        rows = ix.page(self.chain.store.db, ix.P_EVENT + addr, limit, before)
        events = []
        for suffix, raw in rows:
            job_id, kind, amount, note = codec.decode(raw)
            events.append({"height": int.from_bytes(suffix[:8], "big"), "job": job_id.hex(), "kind": kind,
                           "amount": amount, "note": note})
        return web.json_response({"address": format_address(addr), "events": events, "next": _next(rows, limit),
                                  "validator": self._jailings(addr, 10)})

    def _jailings(self, addr: bytes, limit: int) -> list[dict]:
        out = []
        for suffix, raw in ix.page(self.chain.store.db, ix.P_VALIDATOR + addr, limit):
            reason, amount, until = codec.decode(raw)
            out.append({"height": int.from_bytes(suffix, "big"), "reason": reason, "slashed": amount,
                        "jailed_until": until})
        return out

    async def jobs(self, request: web.Request) -> web.Response:
        """Every job ever submitted, newest first, with its status."""
        limit, before = _limit(request), _cursor(request)
        rows = ix.page(self.chain.store.db, ix.P_JOB, limit, before)
        v, out = self.chain.view(), []
        for suffix, _ in rows:
            job_id = suffix[8:]
            record = v.read(k_job(job_id))
            if record is None:
                continue
            spec = record.get("spec") or {}
            out.append({"id": job_id.hex(), "status": record.get("status"), "round": record.get("round"),
                        "rounds": spec.get("rounds"), "shards": spec.get("shards"), "model": spec.get("model"),
                        "submitter": format_address(record["submitter"]), "submitted_at": record.get("submitted_at"),
                        "escrow": v.read(k_escrow(job_id), 0), "events": len(record.get("events") or [])})
        return web.json_response({"height": self.chain.height, "jobs": out, "next": _next(rows, limit)})

    async def validators(self, request: web.Request) -> web.Response:
        """Everyone staked as a validator (jailed ones too), by address, after `after`."""
        limit, v = _limit(request), self.chain.view()
        after = request.query.get("after")
        start = None
        if after is not None:
            from .rpc import _parse_address
            start = _parse_address(after)
        power = {val.address: val.power for val in self.chain.validators()}
        staked = sorted(set(v.read(k_candidates("validator"), [])) | set(power))
        staked = [a for a in staked if start is None or a > start]
        window = get_params(v)["downtime_window"]
        out = []
        for addr in staked[:limit]:
            jail = jail_status(v, addr)
            out.append({"address": format_address(addr), "power": power.get(addr, 0),
                        "stake": get_stake(v, addr, "validator"), "missed": len(v.read(k_liveness(addr), [])),
                        "window": window, "jailed": None if jail is None else {"until": jail[0], "tombstoned": jail[1]},
                        "slashes": self._jailings(addr, 5)})
        more = len(staked) > limit
        return web.json_response({"height": self.chain.height, "validators": out,
                                  "next": out[-1]["address"] if more and out else None})
