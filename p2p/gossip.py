"""Peers and flooding: connect, exchange hellos, dedup, relay, rate-limit, score and ban.

This layer knows nothing of chain rules. The node hands it an ``App`` that builds hellos,
judges messages and says which keys are validators; a message the app accepts is relayed to
every other peer (never back to its sender), and a message the app blames raises
``Misbehaviour``, which adds to the peer's score until the peer's key is banned for a while.

Who gets a connection slot, who is evicted, whom to dial and what peer exchange may add to
the address book is decided in peerpolicy.py / addrbook.py / pex.py (sans-I/O); the
``Gossip`` class is the socket shell that reports events to that policy and carries out
its answers.
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from dataclasses import dataclass, field
from typing import Protocol

from consensus import codec
from consensus.crypto import PrivateKey, format_address, sha256

from .netaddr import parse_peer, split_addr
from .peerpolicy import Admit, PeerLimits, PeerPolicy, Refuse
from .ratelimit import TokenBucket
from .sendqueue import SendQueue
from .transport import DEFAULT_FRAME_LIMIT, Session, TransportError, exchange_hello, handshake, keep_frame_buffers

log = logging.getLogger("stepchain.p2p")

FLOODED = {"txs", "proposal", "vote", "evidence"}
SEEN_TTL = 120.0
BAN_SCORE = 100
RATE_PER_S = 400.0
RATE_BURST = 2000.0
OUTBOUND_QUEUE = 2000
PING_INTERVAL = 10.0
# Bytes a connection reads ahead before pausing its socket. A frame is read whole anyway (up to
# the frame limit), so this only sets how often the socket is paused and resumed within one:
# at 64 KiB that was every 128 KiB, two epoll calls and a task wake-up each, per 1 MiB blob chunk.
READ_BUFFER = 1 << 20


class Misbehaviour(Exception):
    def __init__(self, points: int, reason: str):
        super().__init__(reason)
        self.points, self.reason = points, reason


class App(Protocol):
    def hello(self) -> dict: ...
    async def handle(self, peer: "Peer", kind: str, payload) -> bool: ...
    def on_peer(self, peer: "Peer") -> None: ...
    def is_validator(self, peer_id: bytes) -> bool: ...


@dataclass
class Peer:
    session: Session
    hello: dict
    ip: str = "?"
    direction: str = "in"  # "in": it dialed us; "out": we dialed it
    outbound: SendQueue = field(default_factory=lambda: SendQueue(OUTBOUND_QUEUE))
    score: int = 0
    messages: TokenBucket = field(default_factory=lambda: TokenBucket(RATE_PER_S, RATE_BURST))
    tasks: list = field(default_factory=list)
    ping: tuple[int, float] | None = None  # (nonce, sent at) of the ping awaiting its pong

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
        return self.outbound.put(kind, payload, time.monotonic())

    def take_token(self) -> bool:
        return self.messages.take(1, time.monotonic()) == 1


class Gossip:
    def __init__(self, key: PrivateKey, app: App, listen: str, seeds: list[str],
                 frame_limit: int = DEFAULT_FRAME_LIMIT, limits: PeerLimits = PeerLimits(),
                 rng: random.Random | None = None):
        self.key = key
        self.app = app
        self.listen = listen
        self.frame_limit = frame_limit
        self.peers: dict[bytes, Peer] = {}
        self.seen: dict[bytes, float] = {}
        self.server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()
        self._half_open: dict[int, asyncio.StreamWriter] = {}
        self._handshakes: set[asyncio.Task] = set()  # inbound, not yet peers: stop() waits for them
        persistent = dict(parse_peer(s) for s in seeds)
        self.policy = PeerPolicy(key.address, persistent, app.is_validator, os.urandom(32),
                                 rng or random.Random(os.urandom(16)), limits)

    @property
    def bans(self) -> dict[bytes, float]:
        return self.policy.bans

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        keep_frame_buffers()
        host, _, port = self.listen.rpartition(":")
        self.server = await asyncio.start_server(self._inbound, host, int(port), limit=READ_BUFFER)
        self._spawn(self._dial_loop())
        self._spawn(self._housekeeping())

    async def stop(self) -> None:
        if self.server:
            self.server.close()
        for peer in list(self.peers.values()):
            self._drop(peer, "shutting down")
            peer.session.writer.transport.abort()  # a peer that stopped reading holds unsent data: drop it
        self._close_half_open()
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
        self.policy.isolate(time.monotonic(), seconds)
        for peer in list(self.peers.values()):
            self._drop(peer, "isolated by operator")
        self._close_half_open()

    def banned(self, ident: bytes) -> bool:
        return self.policy.banned(ident, time.monotonic())

    def summary(self) -> dict:
        """Slot and address-book counts for /peers."""
        return self.policy.summary()

    # -- connections ----------------------------------------------------------------------

    def _close_half_open(self) -> None:
        for token, writer in list(self._half_open.items()):
            self.policy.close_half_open(token)
            writer.transport.abort()  # a handshake in progress has nothing worth flushing
        self._half_open.clear()

    async def _inbound(self, reader, writer) -> None:
        peername = writer.get_extra_info("peername")
        ip = peername[0] if peername else "?"
        decision = self.policy.open_inbound(ip, time.monotonic())
        if isinstance(decision, Refuse):
            writer.close()
            return
        for token in decision.evict:  # the policy already forgot them
            old = self._half_open.pop(token, None)
            if old is not None:
                old.close()
        self._half_open[decision.token] = writer
        task = asyncio.current_task()
        self._handshakes.add(task)  # stop() closes it and waits (cancelling asyncio's task logs a traceback)
        try:
            await self._establish(reader, writer, initiator=False, expect=None, ip=ip)
        finally:
            self._handshakes.discard(task)
            self._half_open.pop(decision.token, None)
            self.policy.close_half_open(decision.token)

    async def _dial(self, ident: bytes, addr: str) -> None:
        reachable, ip = False, None
        try:
            host, port = split_addr(addr)
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, limit=READ_BUFFER), 5)
            peername = writer.get_extra_info("peername")
            ip = peername[0] if peername else host
            reachable = await self._establish(reader, writer, initiator=True, expect=ident, ip=ip)
        except (OSError, asyncio.TimeoutError, ValueError):
            pass
        finally:
            self.policy.dial_done(ident, addr, reachable, ip, time.monotonic())

    async def _establish(self, reader, writer, initiator: bool, expect: bytes | None, ip: str) -> bool:
        """Handshake, hello, then ask the policy for a slot. True when the handshake and hello
        passed (the address is real and on our chain), whether or not the peer was kept."""
        try:
            session = await handshake(reader, writer, self.key, initiator, expect, self.frame_limit)
            if self.policy.precheck(session.peer_id, time.monotonic()) is not None:
                session.close()  # banned, already connected, or isolated: not even a hello
                return True
            hello = await exchange_hello(session, self.app.hello())
        except Exception as exc:  # whatever a stranger sends, close and carry on
            if not writer.is_closing():  # (a half-open socket the policy closed is not news)
                log.warning("p2p session with %s closed: %s", self._remote(writer), exc)
            writer.close()
            return False
        decision = self.policy.admit(session.peer_id, ip, initiator, time.monotonic())
        if isinstance(decision, Refuse):
            log.info("refused peer %s (%s): %s", format_address(session.peer_id)[:14], ip, decision.reason)
            self._spawn(self._refuse(session, decision.reason))
            return True
        self._connected(Peer(session, hello, ip=ip, direction="out" if initiator else "in"), decision)
        return True

    def _connected(self, peer: Peer, decision: Admit) -> None:
        for victim in decision.evict:
            if victim in self.peers:
                self._drop(self.peers[victim], f"evicted for {peer.name}")
        self.peers[peer.id] = peer
        now = time.monotonic()
        self.policy.on_hello(peer.id, peer.hello["listen"], peer.ip, peer.direction == "out", now)
        log.info("peer %s connected (%s, %s, height %d)", peer.name, peer.direction, peer.hello["listen"],
                 peer.height)
        peer.tasks = [self._spawn(self._reader(peer)), self._spawn(self._writer(peer))]
        if self.policy.want_pex(peer.id, now):
            peer.send("pex_req", None)
        self._ping(peer, now)
        self.app.on_peer(peer)

    async def _refuse(self, session: Session, reason: str) -> None:
        try:
            await asyncio.wait_for(session.send(["disconnect", reason]), 2)
        except (TransportError, OSError, asyncio.TimeoutError):
            pass
        finally:
            session.close()

    @staticmethod
    def _remote(writer) -> str:
        peer = writer.get_extra_info("peername")
        return f"{peer[0]}:{peer[1]}" if peer else "?"

    def _drop(self, peer: Peer, reason: str) -> None:
        if self.peers.get(peer.id) is peer:
            del self.peers[peer.id]
            self.policy.disconnected(peer.id)
            log.info("peer %s disconnected: %s", peer.name, reason)
        peer.session.close()
        for t in peer.tasks:
            t.cancel()

    def penalize(self, peer: Peer, points: int, reason: str) -> None:
        peer.score += points
        log.warning("peer %s misbehaved (+%d, score %d): %s", peer.name, points, peer.score, reason)
        if peer.score >= BAN_SCORE:
            self.policy.ban(peer.id, time.monotonic())
            self._drop(peer, f"banned for {self.policy.limits.ban_seconds:.0f}s: {reason}")

    def credit(self, peer: Peer, kind: str) -> None:
        """The peer gave us something new and valid (txs, a block, a vote): eviction spares it."""
        self.policy.on_useful(peer.id, kind, time.monotonic())

    async def _dial_loop(self) -> None:
        while True:
            for dial in self.policy.plan_dials(time.monotonic()):
                self._spawn(self._dial(dial.peer_id, dial.addr))
            await asyncio.sleep(0.25)

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(PING_INTERVAL)
            now = time.monotonic()
            self.seen = {k: t for k, t in self.seen.items() if t > now}
            self.policy.housekeeping(now)
            for peer in self.peers.values():
                peer.score = max(0, peer.score - 5)  # old offences fade
                self._ping(peer, now)
                if len(self.policy.book) < self.policy.limits.max_outbound and self.policy.want_pex(peer.id, now):
                    peer.send("pex_req", None)

    def _ping(self, peer: Peer, now: float) -> None:
        if peer.ping is None or now - peer.ping[1] > 3 * PING_INTERVAL:  # a lost pong is not waited on forever
            peer.ping = (random.getrandbits(63), now)
            peer.send("ping", peer.ping[0])

    # -- messages -------------------------------------------------------------------------

    async def _writer(self, peer: Peer) -> None:
        try:
            while True:
                kind, payload = await peer.outbound.get(time.monotonic)
                if callable(payload):  # read only now (a blob chunk): a queue of these holds no data
                    payload = payload()
                    if payload is None:
                        continue
                await peer.session.send([kind, payload])
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
        if kind in ("pex_req", "pex", "ping", "pong"):
            self._on_link_message(peer, kind, payload)
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
                self.credit(peer, kind)
                self.relay(kind, payload, exclude=peer.id)
        else:
            try:
                await self.app.handle(peer, kind, payload)
            except Misbehaviour as exc:
                self.penalize(peer, exc.points, exc.reason)

    def _on_link_message(self, peer: Peer, kind: str, payload) -> None:
        """Messages about the link itself, answered here and never shown to the app."""
        now = time.monotonic()
        if kind == "ping":
            if type(payload) is not int or not 0 <= payload < 2**64:
                raise Misbehaviour(50, "ping must carry a 64-bit nonce")
            peer.send("pong", payload)
        elif kind == "pong":
            if peer.ping is not None and payload == peer.ping[0]:
                self.policy.on_ping(peer.id, now - peer.ping[1])
                peer.ping = None
        elif kind == "pex_req":
            verdict, addrs = self.policy.on_pex_request(peer.id, now)
            if verdict.penalty:
                self.penalize(peer, verdict.penalty, verdict.reason)
            if verdict.ok:
                peer.send("pex", addrs)
        else:
            verdict = self.policy.on_pex(peer.id, peer.ip, payload, now)
            if verdict.penalty:
                self.penalize(peer, verdict.penalty, verdict.reason)

    def relay(self, kind: str, payload, exclude: bytes | None = None, skip: frozenset = frozenset()) -> None:
        for pid, peer in list(self.peers.items()):
            if pid != exclude and pid not in skip:
                peer.send(kind, payload)

    def broadcast(self, kind: str, payload, skip: frozenset = frozenset()) -> None:
        """Send our own message to every peer (but those in `skip`, which have it), and
        remember it so an echo is ignored."""
        self.seen[sha256(codec.encode([kind, payload]))] = time.monotonic() + SEEN_TTL
        self.relay(kind, payload, skip=skip)

    def send_status(self, height: int) -> None:
        for peer in self.peers.values():
            peer.send("status", height)


__all__ = ["App", "BAN_SCORE", "Gossip", "Misbehaviour", "Peer", "PeerLimits", "parse_peer"]
