"""Peers and flooding: connect, exchange hellos, dedup, relay, rate-limit, score and ban.

This layer knows nothing of chain rules. The node hands it an ``App`` that builds hellos and
judges messages; a message the app accepts is relayed to every other peer (never back to
its sender), and a message the app blames raises ``Misbehaviour``, which adds to the peer's
score until the peer's key is banned for a while.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Protocol

from consensus import codec
from consensus.crypto import PrivateKey, format_address, parse_address, sha256

from .transport import DEFAULT_FRAME_LIMIT, Session, TransportError, exchange_hello, handshake

log = logging.getLogger("stepchain.p2p")

FLOODED = {"txs", "proposal", "vote", "evidence"}
SEEN_TTL = 120.0
BAN_SCORE = 100
BAN_SECONDS = 60.0
RATE_PER_S = 400.0
RATE_BURST = 2000.0
OUTBOUND_QUEUE = 2000
MAX_PEX = 32


class Misbehaviour(Exception):
    def __init__(self, points: int, reason: str):
        super().__init__(reason)
        self.points, self.reason = points, reason


class App(Protocol):
    def hello(self) -> dict: ...
    async def handle(self, peer: "Peer", kind: str, payload) -> bool: ...
    def on_peer(self, peer: "Peer") -> None: ...


def parse_peer(text: str) -> tuple[bytes, str]:
    """`ID@HOST:PORT` (ID is the node's sc1 address) → (id, "HOST:PORT")."""
    ident, sep, addr = text.strip().partition("@")
    if not sep or ":" not in addr:
        raise ValueError(f"bad peer {text!r}: expected ID@HOST:PORT")
    return parse_address(ident), addr


@dataclass
class Peer:
    session: Session
    hello: dict
    outbound: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(OUTBOUND_QUEUE))
    score: int = 0
    tokens: float = RATE_BURST
    refill_at: float = field(default_factory=time.monotonic)
    tasks: list = field(default_factory=list)

    @property
    def id(self) -> bytes:
        return self.session.peer_id

    @property
    def name(self) -> str:
        return format_address(self.id)[:14]

    @property
    def height(self) -> int:
        return self.hello["height"]

    def send(self, kind: str, payload) -> bool:
        try:
            self.outbound.put_nowait([kind, payload])
            return True
        except asyncio.QueueFull:
            return False

    def take_token(self) -> bool:
        now = time.monotonic()
        self.tokens = min(RATE_BURST, self.tokens + (now - self.refill_at) * RATE_PER_S)
        self.refill_at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class Gossip:
    def __init__(self, key: PrivateKey, app: App, listen: str, seeds: list[str],
                 frame_limit: int = DEFAULT_FRAME_LIMIT, max_peers: int = 16):
        self.key = key
        self.app = app
        self.listen = listen
        self.frame_limit = frame_limit
        self.max_peers = max_peers
        self.peers: dict[bytes, Peer] = {}
        self.known: dict[bytes, str] = {}
        self.backoff: dict[bytes, tuple[float, float]] = {}  # id -> (next try at, delay)
        self.bans: dict[bytes, float] = {}
        self.seen: dict[bytes, float] = {}
        self.isolated_until = 0.0
        self.server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()
        self._handshakes: dict[asyncio.Task, asyncio.StreamWriter] = {}  # inbound, not yet peers
        for s in seeds:
            ident, addr = parse_peer(s)
            self.known[ident] = addr

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        host, _, port = self.listen.rpartition(":")
        self.server = await asyncio.start_server(self._inbound, host, int(port), limit=2**16)
        self._spawn(self._dial_loop())
        self._spawn(self._housekeeping())

    async def stop(self) -> None:
        if self.server:
            self.server.close()
        for peer in list(self.peers.values()):
            self._drop(peer, "shutting down")
            peer.session.writer.transport.abort()  # a peer that stopped reading holds unsent data: drop it
        for writer in self._handshakes.values():
            writer.transport.abort()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, *self._handshakes, return_exceptions=True)

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def isolate(self, seconds: float) -> None:
        """Drop every peer and refuse all connections for a while (an operator's partition)."""
        self.isolated_until = time.monotonic() + seconds
        for peer in list(self.peers.values()):
            self._drop(peer, "isolated by operator")

    def banned(self, ident: bytes) -> bool:
        return self.bans.get(ident, 0) > time.monotonic()

    # -- connections ----------------------------------------------------------------------

    async def _inbound(self, reader, writer) -> None:
        if time.monotonic() < self.isolated_until or len(self.peers) >= self.max_peers:
            writer.close()
            return
        task = asyncio.current_task()
        self._handshakes[task] = writer  # stop() closes it and waits (cancelling asyncio's task logs a traceback)
        try:
            await self._establish(reader, writer, initiator=False, expect=None)
        finally:
            self._handshakes.pop(task, None)

    async def _dial(self, ident: bytes, addr: str) -> None:
        host, _, port = addr.rpartition(":")
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port), limit=2**16), 5)
        except (OSError, asyncio.TimeoutError, ValueError):
            return
        await self._establish(reader, writer, initiator=True, expect=ident)

    async def _establish(self, reader, writer, initiator: bool, expect: bytes | None) -> None:
        try:
            session = await handshake(reader, writer, self.key, initiator, expect, self.frame_limit)
            if (self.banned(session.peer_id) or session.peer_id in self.peers
                    or time.monotonic() < self.isolated_until):
                session.close()
                return
            hello = await exchange_hello(session, self.app.hello())
        except Exception as exc:  # whatever a stranger sends, close and carry on
            peer = writer.get_extra_info("peername")
            log.warning("p2p session with %s closed: %s", f"{peer[0]}:{peer[1]}" if peer else "?", exc)
            writer.close()
            return
        if session.peer_id in self.peers or time.monotonic() < self.isolated_until:
            session.close()  # both sides dialed at once (keep the first), or we were isolated meanwhile
            return
        peer = Peer(session, hello)
        self.peers[peer.id] = peer
        self.known[peer.id] = hello["listen"]
        self.backoff.pop(peer.id, None)
        log.info("peer %s connected (%s, height %d)", peer.name, hello["listen"], peer.height)
        peer.tasks = [self._spawn(self._reader(peer)), self._spawn(self._writer(peer))]
        peer.send("pex_req", None)
        self.app.on_peer(peer)

    def _drop(self, peer: Peer, reason: str) -> None:
        if self.peers.get(peer.id) is peer:
            del self.peers[peer.id]
            log.info("peer %s disconnected: %s", peer.name, reason)
        peer.session.close()
        for t in peer.tasks:
            t.cancel()

    def penalize(self, peer: Peer, points: int, reason: str) -> None:
        peer.score += points
        log.warning("peer %s misbehaved (+%d, score %d): %s", peer.name, points, peer.score, reason)
        if peer.score >= BAN_SCORE:
            self.bans[peer.id] = time.monotonic() + BAN_SECONDS
            self._drop(peer, f"banned for {BAN_SECONDS:.0f}s: {reason}")

    async def _dial_loop(self) -> None:
        while True:
            now = time.monotonic()
            if now >= self.isolated_until and len(self.peers) < self.max_peers:
                for ident, addr in list(self.known.items()):
                    if ident in self.peers or ident == self.key.address or self.banned(ident):
                        continue
                    at, delay = self.backoff.get(ident, (0.0, 0.5))
                    if now >= at:
                        self.backoff[ident] = (now + delay + random.random() * 0.2, min(delay * 2, 10.0))
                        self._spawn(self._dial(ident, addr))
            await asyncio.sleep(0.25)

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(10)
            now = time.monotonic()
            self.seen = {k: t for k, t in self.seen.items() if t > now}
            self.bans = {k: t for k, t in self.bans.items() if t > now}
            for peer in self.peers.values():
                peer.score = max(0, peer.score - 5)  # old offences fade

    # -- messages -------------------------------------------------------------------------

    async def _writer(self, peer: Peer) -> None:
        try:
            while True:
                await peer.session.send(await peer.outbound.get())
        except (TransportError, OSError) as exc:
            self._drop(peer, str(exc))

    async def _reader(self, peer: Peer) -> None:
        try:
            while True:
                msg = await peer.session.recv()
                if type(msg) is not list or len(msg) != 2 or type(msg[0]) is not str:
                    raise Misbehaviour(BAN_SCORE, "message is not [kind, payload]")
                if not peer.take_token():
                    self.penalize(peer, 1, "rate limit exceeded")
                    continue
                await self._dispatch(peer, msg[0], msg[1])
        except Misbehaviour as exc:
            self.penalize(peer, exc.points, exc.reason)
            if exc.points >= BAN_SCORE:
                self._drop(peer, exc.reason)
        except TransportError as exc:
            if "closed" not in str(exc):
                self.penalize(peer, BAN_SCORE, str(exc))
            self._drop(peer, str(exc))
        except OSError as exc:
            self._drop(peer, str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or a message we failed to anticipate: drop, never stall
            log.exception("dropping peer %s after an unexpected error", peer.name)
            self.penalize(peer, BAN_SCORE // 2, f"unexpected error: {exc!r}")
            self._drop(peer, "unexpected error")

    async def _dispatch(self, peer: Peer, kind: str, payload) -> None:
        if kind == "pex_req":
            addrs = [f"{format_address(i)}@{a}" for i, a in self.known.items() if i != peer.id][:MAX_PEX]
            peer.send("pex", addrs)
        elif kind == "pex":
            self._learn(payload)
        elif kind == "disconnect":
            self._drop(peer, f"peer said: {payload}")
        elif kind in FLOODED:
            msg_id = sha256(codec.encode([kind, payload]))
            if msg_id in self.seen:
                return
            try:
                relay = await self.app.handle(peer, kind, payload)
            except Misbehaviour as exc:
                self.seen[msg_id] = time.monotonic() + SEEN_TTL
                self.penalize(peer, exc.points, exc.reason)
                return
            # Only what we used is remembered: a message that came too early for us
            # (a vote for a height we have not reached) is welcome again when re-sent.
            if relay:
                self.seen[msg_id] = time.monotonic() + SEEN_TTL
                self.relay(kind, payload, exclude=peer.id)
        else:
            try:
                await self.app.handle(peer, kind, payload)
            except Misbehaviour as exc:
                self.penalize(peer, exc.points, exc.reason)

    def _learn(self, payload) -> None:
        if type(payload) is not list:
            return
        for entry in payload[:MAX_PEX]:
            try:
                ident, addr = parse_peer(entry)
            except (ValueError, AttributeError):
                continue
            if ident != self.key.address:
                self.known.setdefault(ident, addr)

    def relay(self, kind: str, payload, exclude: bytes | None) -> None:
        for pid, peer in list(self.peers.items()):
            if pid != exclude:
                peer.send(kind, payload)

    def broadcast(self, kind: str, payload) -> None:
        """Send our own message to every peer, and remember it so an echo is ignored."""
        self.seen[sha256(codec.encode([kind, payload]))] = time.monotonic() + SEEN_TTL
        self.relay(kind, payload, exclude=None)

    def send_status(self, height: int) -> None:
        for peer in self.peers.values():
            peer.send("status", height)
