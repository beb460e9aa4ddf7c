"""User-space link emulation for tests/netlab.py: delay, jitter, TCP-like loss and partitions.

Used where the kernel has no netem (and, for partitions, always). One process serves every
link of a lab: for each forwarded (host, port) it listens on the lab bridge and relays each
TCP connection to that host, so the source address says which host dialed and a partition
can be decided per pair of host groups.

Model, per direction of a connection (the policy part is sans-I/O: ``DelayLine``, ``Policy``,
``resume_at``):
- each chunk read is delivered ``delay ± jitter`` (uniform) later, never before an earlier
  chunk, so the stream stays in order as TCP keeps it;
- loss is what TCP makes of it for an application: with probability ``1-(1-loss)^segments``
  a chunk waits one retransmission timeout more (Linux's 200 ms minimum RTO), and, the stream
  being in order, so does everything behind it;
- a "blackhole" partition stops delivery across groups without closing anything (a link that
  went dark). Data waits; on heal it resumes at the sender's next retransmission, which TCP
  backs off exponentially (RTO, 2 RTO, 4 RTO ... after the first blocked send). New
  connections across groups are held until heal (or ``hold_max_s``, then closed);
- a "cut" partition resets connections across groups and refuses new ones (a host that
  answers with RST, a firewall that rejects).

Control: the first stdin line is the JSON config; the proxy answers one JSON line ``ready``
with its ports; then each stdin line is a command (``partition``, ``heal``, ``stats``) answered
by one JSON line. End of stdin (the lab closed the pipe or died) stops the proxy.
"""
from __future__ import annotations

import asyncio
import json
import math
import random
import signal
import sys
from dataclasses import dataclass, field

CHUNK = 65536
QUEUE_CHUNKS = 64
MAX_HELD = 64
EOF_LINGER_S = 30.0
MAX_BACKOFF_S = 120.0  # Linux TCP_RTO_MAX


# -- policy (sans-I/O) -----------------------------------------------------------------------

@dataclass(frozen=True)
class Impairment:
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0  # share of TCP segments lost
    rto_ms: float = 200.0
    mss: int = 1448

    def __post_init__(self):
        if not (self.delay_ms >= 0 and 0 <= self.jitter_ms <= self.delay_ms and 0 <= self.loss < 1
                and self.rto_ms > 0 and self.mss > 0):
            raise ValueError(f"bad impairment {self}: need 0 <= jitter <= delay, 0 <= loss < 1")


class DelayLine:
    """When each chunk of one direction may be delivered: in order, delayed, sometimes stalled."""

    def __init__(self, imp: Impairment, rng: random.Random):
        self.imp, self.rng = imp, rng
        self.last_at = 0.0
        self.stalls = 0

    def schedule(self, now: float, nbytes: int) -> float:
        imp = self.imp
        delay = imp.delay_ms + (self.rng.uniform(-imp.jitter_ms, imp.jitter_ms) if imp.jitter_ms else 0.0)
        segments = max(1, math.ceil(nbytes / imp.mss))
        if imp.loss and self.rng.random() < 1 - (1 - imp.loss) ** segments:
            delay += imp.rto_ms  # lost segments of one flight are resent together after one RTO
            self.stalls += 1
        self.last_at = max(self.last_at, now + delay / 1000)
        return self.last_at


def resume_at(blocked_since: float, healed_at: float, rto_s: float) -> float:
    """The first retransmission at or after the heal, for a sender that began retrying (RTO,
    then doubling) when delivery was first blocked."""
    t, step = blocked_since + rto_s, rto_s
    while t < healed_at:
        step = min(step * 2, MAX_BACKOFF_S)
        t += step
    return t


@dataclass
class Policy:
    """Which hosts may reach which: groups of host indices; hosts in no group are alone."""
    groups: dict[int, int] = field(default_factory=dict)  # host -> group; empty: fully connected
    mode: str = "blackhole"

    def set(self, groups: list[list[int]], mode: str) -> None:
        if mode not in ("blackhole", "cut"):
            raise ValueError("mode must be 'blackhole' or 'cut'")
        flat = [h for g in groups for h in g]
        if any(type(h) is not int for h in flat) or len(flat) != len(set(flat)):
            raise ValueError("groups must be disjoint lists of host indices")
        self.groups = {h: i for i, g in enumerate(groups) for h in g}
        self.mode = mode

    def heal(self) -> None:
        self.groups = {}

    def allowed(self, src: int, dst: int) -> bool:
        if not self.groups or src == dst:
            return True
        return self.groups.get(src, -1 - src) == self.groups.get(dst, -1 - dst)


# -- sockets ---------------------------------------------------------------------------------

class Conn:
    def __init__(self, src: int, dst: int):
        self.src, self.dst = src, dst
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: list[asyncio.Task] = []

    def abort(self) -> None:
        for w in self.writers:
            w.transport.abort()
        for t in self.tasks:
            t.cancel()


class Proxy:
    def __init__(self, cfg: dict):
        self.imp = Impairment(**cfg.get("impairment", {}))
        self.rng = random.Random(cfg.get("seed", 1))
        self.bind = cfg["bind"]
        self.hosts: dict[str, int] = {ip: int(i) for ip, i in cfg["hosts"].items()}
        self.links: list[dict] = cfg["links"]
        self.hold_max_s = float(cfg.get("hold_max_s", 10.0))
        self.policy = Policy()
        self.changed = asyncio.Event()
        self.conns: set[Conn] = set()
        self.held = 0
        self.stats = {"accepted": 0, "refused": 0, "held": 0, "cut": 0, "bytes": 0, "stalls": 0,
                      "blocked_chunks": 0}
        self.servers: list[asyncio.AbstractServer] = []

    async def start(self) -> list[int]:
        ports = []
        for link in self.links:
            server = await asyncio.start_server(lambda r, w, link=link: self._accept(link, r, w), self.bind, 0)
            self.servers.append(server)
            ports.append(server.sockets[0].getsockname()[1])
        return ports

    def _notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    async def _until_allowed(self, conn: Conn, limit: float | None = None) -> bool:
        loop = asyncio.get_running_loop()
        deadline = None if limit is None else loop.time() + limit
        while not self.policy.allowed(conn.src, conn.dst):
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return False
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except asyncio.TimeoutError:
                return False
        return True

    async def _accept(self, link: dict, reader, writer) -> None:
        peer = writer.get_extra_info("peername")
        src = self.hosts.get(peer[0]) if peer else None
        conn = Conn(src if src is not None else -1, int(link["host"]))
        if src is None or not await self._admit(conn):
            self.stats["refused"] += 1
            writer.transport.abort()
            return
        host, _, port = link["target"].rpartition(":")
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 5)
        except (OSError, asyncio.TimeoutError):
            self.stats["refused"] += 1
            writer.transport.abort()  # the host is down: the dialer sees a reset, as from a real host
            return
        self.stats["accepted"] += 1
        conn.writers = [writer, up_writer]
        self.conns.add(conn)
        loop = asyncio.get_running_loop()
        conn.tasks = [loop.create_task(self._pipe(conn, reader, up_writer)),
                      loop.create_task(self._pipe(conn, up_reader, writer))]
        try:
            done, pending = await asyncio.wait(conn.tasks, return_when=asyncio.FIRST_COMPLETED)
            if pending and all(not t.cancelled() and t.result() == "eof" for t in done):
                await asyncio.wait(pending, timeout=EOF_LINGER_S)  # the other side answers the FIN
        finally:
            self.conns.discard(conn)
            conn.abort()

    async def _admit(self, conn: Conn) -> bool:
        if self.policy.allowed(conn.src, conn.dst):
            return True
        if self.policy.mode == "cut" or self.held >= MAX_HELD:
            return False
        self.held += 1
        self.stats["held"] += 1
        try:
            return await self._until_allowed(conn, self.hold_max_s)
        finally:
            self.held -= 1

    async def _pipe(self, conn: Conn, reader, writer) -> str:
        """One direction: read, schedule, deliver in order. "eof" once the sender's FIN has been
        passed on after all its data, "error" when a socket failed."""
        line = DelayLine(self.imp, self.rng)
        queue: asyncio.Queue = asyncio.Queue(QUEUE_CHUNKS)
        loop = asyncio.get_running_loop()

        async def feed() -> None:
            while True:
                data = await reader.read(CHUNK)
                stalls = line.stalls
                at = line.schedule(loop.time(), len(data))
                self.stats["stalls"] += line.stalls - stalls
                await queue.put((at, data))
                if not data:
                    return

        feeder = loop.create_task(feed())
        try:
            while True:
                at, data = await self._next(queue, feeder)
                await asyncio.sleep(max(0.0, at - loop.time()))
                if not self.policy.allowed(conn.src, conn.dst):
                    self.stats["blocked_chunks"] += 1
                    since = loop.time()
                    await self._until_allowed(conn)
                    await asyncio.sleep(max(0.0, resume_at(since, loop.time(), self.imp.rto_ms / 1000) - loop.time()))
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return "eof"
                writer.write(data)
                self.stats["bytes"] += len(data)
                await writer.drain()
        except (ConnectionError, OSError):
            return "error"
        finally:
            feeder.cancel()
            if feeder.done() and not feeder.cancelled():
                feeder.exception()  # retrieved: a reset peer is expected here, not an error

    @staticmethod
    async def _next(queue: asyncio.Queue, feeder: asyncio.Task):
        """The next chunk; ConnectionError once the read side failed and nothing is left."""
        while not feeder.done():
            getter = asyncio.ensure_future(queue.get())
            try:
                await asyncio.wait([getter, feeder], return_when=asyncio.FIRST_COMPLETED)
            except BaseException:
                getter.cancel()  # we were cancelled: leave no task pending
                raise
            if getter.done():
                return getter.result()
            getter.cancel()
        if queue.empty():
            raise ConnectionError("read side failed")
        return queue.get_nowait()

    # -- control ---------------------------------------------------------------------------

    def command(self, msg: dict) -> dict:
        cmd = msg.get("cmd")
        if cmd == "partition":
            self.policy.set(msg["groups"], msg.get("mode", "blackhole"))
            cut = 0
            if self.policy.mode == "cut":
                for conn in list(self.conns):
                    if not self.policy.allowed(conn.src, conn.dst):
                        conn.abort()
                        cut += 1
                self.stats["cut"] += cut
            self._notify()
            return {"ok": True, "cut": cut}
        if cmd == "heal":
            self.policy.heal()
            self._notify()
            return {"ok": True}
        if cmd == "stats":
            return {"ok": True, "stats": dict(self.stats, open=len(self.conns))}
        raise ValueError(f"unknown command {cmd!r}")

    async def close(self) -> None:
        for s in self.servers:
            s.close()
        for c in list(self.conns):
            c.abort()


async def _stdin_lines():
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def _reply(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main() -> None:
    lines = await _stdin_lines()
    proxy = Proxy(json.loads(await lines.readline()))
    _reply({"ready": True, "ports": await proxy.start()})
    try:
        while raw := await lines.readline():
            try:
                _reply(proxy.command(json.loads(raw)))
            except (ValueError, KeyError, TypeError) as exc:
                _reply({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
    finally:
        await proxy.close()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the lab owns our lifetime: stdin EOF or SIGTERM
    asyncio.run(main())
